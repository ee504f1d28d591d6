//! The run summary printed when a run ends: counts per stage, top rejection reasons, wall time.

use std::time::Duration;

use serde::Serialize;
use webscale_rl_connectors::llm::UsageSnapshot;
use webscale_rl_dataflow::FunnelSnapshot;

#[derive(Serialize)]
pub struct Summary {
    pub mode: &'static str,
    pub wall_secs: f64,
    #[serde(flatten)]
    pub funnel: FunnelSnapshot,
    /// LLM tokens, requests and cost per stage and model (absent without the LLM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm: Option<UsageSnapshot>,
}

impl Summary {
    pub fn new(
        mode: &'static str,
        wall: Duration,
        funnel: FunnelSnapshot,
        llm: Option<UsageSnapshot>,
    ) -> Self {
        Summary {
            mode,
            wall_secs: wall.as_secs_f64(),
            funnel,
            llm,
        }
    }

    /// A table for people, on stderr so stdout stays clean for data.
    pub fn print_table(&self) {
        let f = &self.funnel;
        let rate = if self.wall_secs > 0.0 {
            f.consumed as f64 / self.wall_secs
        } else {
            0.0
        };
        eprintln!();
        eprintln!(
            "── webscale-rl {} summary ─────────────────────────────",
            self.mode
        );
        eprintln!("{:<28}{:>10}", "documents consumed", f.consumed);
        for (stage, outcomes) in &f.stages {
            let passed = outcomes.get("passed").copied().unwrap_or(0);
            let rejected: u64 = outcomes
                .iter()
                .filter(|(k, _)| k.as_str() != "passed")
                .map(|(_, v)| v)
                .sum();
            eprintln!("  {stage:<26}{passed:>10} passed {rejected:>8} rejected");
        }
        eprintln!("{:<28}{:>10}", "output records", f.emitted);
        eprintln!("{:<28}{:>10}", "dead letters", f.dead_lettered);
        let top = f.top_rejections(8);
        if !top.is_empty() {
            eprintln!("top rejection reasons:");
            for ((stage, reason), n) in top {
                eprintln!("  {n:>8}  {stage}: {reason}");
            }
        }
        eprintln!("wall time {:.2} s ({rate:.0} documents/s)", self.wall_secs);
    }

    pub fn print_json(&self) {
        println!(
            "{}",
            serde_json::to_string(self).expect("summary serializes")
        );
    }
}
