//! The funnel: how many documents entered, passed and were rejected (by reason) at each stage.
//! Shared by all workers of a process; it feeds the run summary, the metrics and the dashboard,
//! together with the live state of the run it carries ([`Live`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::live::Live;

/// Counts per (stage, outcome). Outcome is `passed` or a rejection reason.
#[derive(Clone, Default)]
pub struct Funnel {
    counts: Arc<Mutex<BTreeMap<(String, String), u64>>>,
    live: Arc<Live>,
}

/// A point-in-time copy of the funnel.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FunnelSnapshot {
    pub consumed: u64,
    pub emitted: u64,
    pub dead_lettered: u64,
    /// QA pairs that left the LLM stages for the output (0 without the LLM).
    pub qa_pairs: u64,
    /// stage -> outcome -> count
    pub stages: BTreeMap<String, BTreeMap<String, u64>>,
    /// QA pairs that left for the output, per domain (empty without the LLM).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub qa_pairs_per_domain: BTreeMap<String, u64>,
}

pub const CONSUMED: (&str, &str) = ("source", "consumed");
pub const EMITTED: (&str, &str) = ("output", "emitted");
pub const DEAD_LETTERED: (&str, &str) = ("dead_letter", "written");
pub const QA_PAIRS: (&str, &str) = ("output", "qa_pairs");

impl Funnel {
    pub fn add(&self, stage: &str, outcome: &str, n: u64) {
        if n == 0 {
            return;
        }
        {
            let mut counts = self.counts.lock().expect("funnel");
            *counts
                .entry((stage.to_string(), outcome.to_string()))
                .or_default() += n;
        }
        match (stage, outcome) {
            CONSUMED => self.live.note_minute(n, 0),
            EMITTED => self.live.note_minute(0, n),
            _ => {}
        }
    }

    /// The live state of the run (Kafka positions, emitted pairs, throughput...).
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    pub fn get(&self, stage: &str, outcome: &str) -> u64 {
        let counts = self.counts.lock().expect("funnel");
        counts
            .get(&(stage.to_string(), outcome.to_string()))
            .copied()
            .unwrap_or(0)
    }

    pub fn snapshot(&self) -> FunnelSnapshot {
        let mut snap = FunnelSnapshot {
            qa_pairs_per_domain: self.live.domains(),
            ..Default::default()
        };
        let counts = self.counts.lock().expect("funnel");
        for ((stage, outcome), &n) in counts.iter() {
            match (stage.as_str(), outcome.as_str()) {
                CONSUMED => snap.consumed = n,
                EMITTED => snap.emitted = n,
                DEAD_LETTERED => snap.dead_lettered = n,
                QA_PAIRS => snap.qa_pairs = n,
                _ => {
                    snap.stages
                        .entry(stage.clone())
                        .or_default()
                        .insert(outcome.clone(), n);
                }
            }
        }
        snap
    }
}

impl FunnelSnapshot {
    /// Rejections across stages, most frequent first: ((stage, reason), count).
    pub fn top_rejections(&self, n: usize) -> Vec<((String, String), u64)> {
        let mut all: Vec<_> = self
            .stages
            .iter()
            .flat_map(|(stage, outcomes)| {
                outcomes
                    .iter()
                    .filter(|(o, _)| o.as_str() != "passed")
                    .map(move |(o, &c)| ((stage.clone(), o.clone()), c))
            })
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}
