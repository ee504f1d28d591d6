//! The run summary printed when a run ends: counts per stage, top rejection reasons, QA pairs
//! per domain, LLM tokens and cost per stage, wall time.

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
    /// This process's index and the cluster's process count: with several processes, records
    /// move between them at the dedup exchanges, so `consumed = emitted + dead_lettered` holds
    /// for the sums over all processes, not for each.
    pub process: usize,
    pub processes: usize,
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
            process: 0,
            processes: 1,
        }
    }

    /// The summary of process `process` of `processes`.
    pub fn of_process(mut self, process: usize, processes: usize) -> Self {
        self.process = process;
        self.processes = processes;
        self
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
        // In the order a document meets the stages, not alphabetically.
        let mut stages: Vec<_> = f.stages.iter().collect();
        stages.sort_by_key(|(stage, _)| (webscale_rl_records::Stage::rank(stage), *stage));
        for (stage, outcomes) in stages {
            let passed = outcomes.get("passed").copied().unwrap_or(0);
            let rejected: u64 = outcomes
                .iter()
                .filter(|(k, _)| k.as_str() != "passed")
                .map(|(_, v)| v)
                .sum();
            eprintln!("  {stage:<26}{passed:>10} passed {rejected:>8} rejected");
        }
        if f.qa_pairs > 0 {
            eprintln!("{:<28}{:>10}", "QA pairs", f.qa_pairs);
        }
        eprintln!("{:<28}{:>10}", "output records", f.emitted);
        eprintln!("{:<28}{:>10}", "dead letters", f.dead_lettered);
        if self.processes > 1 {
            eprintln!(
                "(process {} of {}: documents move between processes at the dedup exchanges, so \
                 consumed = output + dead letters holds for the sums over all processes)",
                self.process, self.processes
            );
        }
        let top = f.top_rejections(8);
        if !top.is_empty() {
            eprintln!("top rejection reasons:");
            for ((stage, reason), n) in top {
                eprintln!("  {n:>8}  {stage}: {reason}");
            }
        }
        if !f.qa_pairs_per_domain.is_empty() {
            eprintln!("QA pairs per domain:");
            let mut domains: Vec<_> = f.qa_pairs_per_domain.iter().collect();
            domains.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
            for (domain, n) in domains {
                eprintln!("  {n:>8}  {domain}");
            }
        }
        if let Some(llm) = self.llm.as_ref().filter(|u| !u.stages.is_empty()) {
            eprintln!(
                "LLM {:<23}{:>10} {:>12} {:>12} {:>12} {:>10}",
                "stage (model)", "calls", "tokens in", "cached in", "tokens out", "cost $"
            );
            for s in &llm.stages {
                let c = &s.counters;
                eprintln!(
                    "  {:<26}{:>10} {:>12} {:>12} {:>12} {:>10.4}",
                    format!("{} ({})", s.stage, s.model),
                    c.calls,
                    c.prompt_tokens,
                    c.cached_prompt_tokens,
                    c.completion_tokens,
                    c.cost
                );
            }
            let t = &llm.total;
            eprintln!(
                "  {:<26}{:>10} {:>12} {:>12} {:>12} {:>10.4}",
                "total",
                t.calls,
                t.prompt_tokens,
                t.cached_prompt_tokens,
                t.completion_tokens,
                t.cost
            );
            eprintln!(
                "  {} of {} calls answered by the response cache (not paid again)",
                t.cache_hits, t.calls
            );
            if f.qa_pairs > 0 {
                eprintln!(
                    "  cost per 1,000 QA pairs: ${:.4}",
                    t.cost / f.qa_pairs as f64 * 1000.0
                );
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
