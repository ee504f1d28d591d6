//! The dashboard's view of a run (`/api/state`): the funnel, the live state and the LLM's usage
//! and health as one JSON document, read from the same sources as the metrics.

use serde_json::{Value, json};
use webscale_rl_connectors::llm::LlmClient;
use webscale_rl_records::now_millis;

use crate::funnel::FunnelSnapshot;
use crate::metrics::EngineMetrics;

impl EngineMetrics {
    /// Everything the dashboard shows, as JSON (`/api/state`).
    pub fn state(&self) -> Value {
        let live = self.funnel.live();
        let snap = self.funnel.snapshot();
        let usage = self.llm.get().map(|l| l.client.usage());
        let qa_pairs = snap.qa_pairs;
        let llm = self.llm.get().zip(usage.as_ref()).map(|(handle, u)| {
            let per_1000 = (qa_pairs > 0).then(|| u.total.cost / qa_pairs as f64 * 1000.0);
            let health = handle.client.health().status();
            json!({
                "up": health.up,
                "status": health.describe(),
                "down_since_ms": health.down_since.map(|t| t
                    .duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64),
                "last_error": health.last_error,
                "model": handle.client.default_model(),
                "endpoints": handle.client.endpoint_stats().iter().map(|e| json!({
                    "endpoint": e.endpoint, "dialect": e.dialect.name(), "requests": e.requests,
                    "in_flight": e.in_flight, "consecutive_failures": e.consecutive_failures,
                })).collect::<Vec<_>>(),
                "cost_dollars": u.total.cost,
                "cost_per_1000_pairs": per_1000,
                "calls": u.total.calls,
                "requests": u.total.http_requests,
                "retries": u.total.retries,
                "failed_calls": u.total.failed_calls(),
                "cache_hits": u.total.cache_hits,
                "prompt_tokens": u.total.prompt_tokens,
                "cached_prompt_tokens": u.total.cached_prompt_tokens,
                "completion_tokens": u.total.completion_tokens,
                "in_flight": in_flight_requests(&handle.client),
                "stages": u.stages.iter().map(|s| json!({
                    "stage": s.stage, "model": s.model, "calls": s.counters.calls,
                    "prompt_tokens": s.counters.prompt_tokens,
                    "cached_prompt_tokens": s.counters.cached_prompt_tokens,
                    "completion_tokens": s.counters.completion_tokens,
                    "cost_dollars": s.counters.cost,
                })).collect::<Vec<_>>(),
            })
        });
        let partitions: Vec<Value> = live
            .partitions()
            .into_iter()
            .map(|((topic, partition), s)| {
                json!({"topic": topic, "partition": partition, "lag": s.lag(),
                       "committed": s.committed, "position": s.position,
                       "high_watermark": s.high_watermark})
            })
            .collect();
        let ready = self.readiness();
        json!({
            "mode": live.mode(),
            "now_ms": now_millis(),
            "started_ms": live.started_ms(),
            "ready": ready.is_ok(),
            "not_ready": ready.err().unwrap_or_default(),
            "funnel": funnel_steps(&snap, self.llm.get().is_some()),
            "consumed": snap.consumed,
            "emitted": snap.emitted,
            "dead_lettered": snap.dead_lettered,
            "qa_pairs": qa_pairs,
            "stages": snap.stages,
            "top_rejections": snap.top_rejections(10).into_iter()
                .map(|((stage, reason), count)| json!({"stage": stage, "reason": reason, "count": count}))
                .collect::<Vec<_>>(),
            "domains": live.domains(),
            "personas": live.top_personas(12).into_iter()
                .map(|(name, count)| json!({"persona": name, "count": count}))
                .collect::<Vec<_>>(),
            "throughput": live.throughput(),
            "llm": llm,
            "latest": live.latest(),
            "kafka": {"partitions": partitions},
            "in_flight": live.in_flight(),
            "frontier_lag_secs": live.frontier_lag_secs(),
        })
    }
}

/// The headline funnel: documents → filtered → deduplicated → classified → QA generated →
/// verified → emitted. `count` is null for the LLM steps of a run without the LLM.
pub fn funnel_steps(snap: &FunnelSnapshot, with_llm: bool) -> Vec<Value> {
    let passed = |stage: &str| {
        snap.stages
            .get(stage)
            .map(|o| o.get("passed").copied().unwrap_or(0))
    };
    let filtered = passed("quality_filter").or(passed("parse")).unwrap_or(0);
    let deduplicated = passed("near_dedup")
        .or(passed("exact_dedup"))
        .unwrap_or(filtered);
    let llm = |stage: &str| with_llm.then(|| passed(stage).unwrap_or(0));
    [
        ("documents", "Documents", Some(snap.consumed)),
        ("filtered", "Filtered", Some(filtered)),
        ("deduplicated", "Deduplicated", Some(deduplicated)),
        ("classified", "Classified", llm("classify")),
        ("generated", "QA generated", llm("generate")),
        ("verified", "Verified", llm("verify")),
        ("emitted", "Emitted", Some(snap.emitted)),
    ]
    .into_iter()
    .map(|(key, label, count)| json!({"key": key, "label": label, "count": count}))
    .collect()
}

pub(crate) fn in_flight_requests(client: &LlmClient) -> u64 {
    client
        .endpoint_stats()
        .iter()
        .map(|e| e.in_flight as u64)
        .sum()
}
