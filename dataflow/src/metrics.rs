//! Prometheus metrics and readiness of one process.
//!
//! There is one source of truth per number. The [`Funnel`] counts documents per (stage, outcome);
//! its [`crate::live::Live`] part holds what the runtime and the graph report; the LLM client
//! keeps its own usage counters. [`EngineMetrics`] reads all of them at scrape time through a
//! custom `prometheus-client` collector, so `/metrics`, the dashboard (`/api/state`, built in
//! [`crate::state`]) and the run summary never disagree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use webscale_rl_connectors::llm::UsageSnapshot;

use crate::funnel::Funnel;
use crate::llm_service::LlmHandle;
use crate::state::in_flight_requests;

/// The metrics of one process: a Prometheus registry whose only collector reads the funnel, the
/// live state and the LLM client at scrape time. Cheap to clone.
#[derive(Clone)]
pub struct EngineMetrics {
    pub(crate) funnel: Funnel,
    pub(crate) llm: Arc<OnceLock<LlmHandle>>,
    registry: Arc<Registry>,
}

impl EngineMetrics {
    /// Metrics over `funnel`.
    pub fn new(funnel: &Funnel) -> Self {
        let llm = Arc::new(OnceLock::new());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(EngineCollector {
            funnel: funnel.clone(),
            llm: llm.clone(),
        }));
        EngineMetrics {
            funnel: funnel.clone(),
            llm,
            registry: Arc::new(registry),
        }
    }

    /// Adds the LLM's usage, latency and readiness (once per run).
    pub fn attach_llm(&self, llm: LlmHandle) {
        let _ = self.llm.set(llm);
    }

    pub fn llm(&self) -> Option<&LlmHandle> {
        self.llm.get()
    }

    pub fn funnel(&self) -> &Funnel {
        &self.funnel
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// `Ok` when the source is connected and, with an LLM, the LLM side is up (start-up check
    /// passed, no outage); otherwise what is missing, e.g. `llm: LLM unavailable since T (Ns):
    /// connection to http://host/v1 failed: ...`.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        readiness(&self.funnel, self.llm.get())
    }
}

/// A rate-limit cool-down this long makes the engine not ready (shorter ones are routine).
const READY_COOLDOWN: std::time::Duration = std::time::Duration::from_secs(5);

type Labels = Vec<(&'static str, String)>;

/// Reads the funnel, the live state and the LLM usage on every scrape.
struct EngineCollector {
    funnel: Funnel,
    llm: Arc<OnceLock<LlmHandle>>,
}

impl std::fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineCollector").finish_non_exhaustive()
    }
}

/// One counter family. `name` is without `_total`: the encoder appends it.
fn counters<N: EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, N)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges<N: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, N)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn stage_model(stage: &str, model: &str) -> Labels {
    vec![("stage", stage.to_string()), ("model", model.to_string())]
}

impl Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = self.funnel.live();
        let snap = self.funnel.snapshot();
        let e = &mut enc;
        gauges(
            e,
            "webscale_start_time_seconds",
            "When the process started, seconds since the Unix epoch.",
            [(vec![], live.started_ms() as f64 / 1e3)],
        )?;
        gauges(
            e,
            "webscale_ready",
            "1 when the source is connected and the LLM (if any) is up.",
            [(vec![], i64::from(self.readiness_ok()))],
        )?;
        if let Some(llm) = self.llm.get() {
            let health = llm.client.health();
            gauges(
                e,
                "webscale_llm_up",
                "1 while the LLM side is up; 0 before the start-up check passes and during an outage (the input is paused).",
                [(vec![], i64::from(health.is_up()))],
            )?;
            gauges(
                e,
                "webscale_llm_outage_seconds",
                "How long the current LLM outage has lasted (0 while up).",
                [(vec![], health.outage().map_or(0.0, |d| d.as_secs_f64()))],
            )?;
        }
        counters(
            e,
            "webscale_documents_consumed",
            "Documents (messages or lines) read from the input.",
            [(vec![], snap.consumed)],
        )?;
        counters(
            e,
            "webscale_stage_documents",
            "Records leaving each stage: outcome=passed, or the rejection reason.",
            snap.stages.iter().flat_map(|(stage, outcomes)| {
                outcomes.iter().map(move |(outcome, &n)| {
                    (
                        vec![("stage", stage.clone()), ("outcome", outcome.clone())],
                        n,
                    )
                })
            }),
        )?;
        let (out_name, dead_name) = live
            .sinks()
            .unwrap_or_else(|| ("output".into(), "dead_letter".into()));
        counters(
            e,
            "webscale_output_records",
            "Records durably written: to the output topic (or file) and to the dead-letter topic.",
            [
                (
                    vec![("topic", out_name), ("kind", "output".into())],
                    snap.emitted,
                ),
                (
                    vec![("topic", dead_name), ("kind", "dead_letter".into())],
                    snap.dead_lettered,
                ),
            ],
        )?;
        counters(
            e,
            "webscale_qa_pairs",
            "QA pairs emitted, by domain.",
            live.domains()
                .into_iter()
                .map(|(domain, n)| (vec![("domain", domain)], n)),
        )?;
        gauges(
            e,
            "webscale_documents_in_flight",
            "Records read from Kafka whose outputs are not yet durable.",
            [(vec![], live.in_flight() as i64)],
        )?;
        gauges(
            e,
            "webscale_frontier_lag_seconds",
            "Wall-clock time minus the durable frontier (Kafka mode, while running).",
            live.frontier_lag_secs().map(|s| (vec![], s)),
        )?;
        if let Some(restore) = live.restore_progress() {
            use std::sync::atomic::Ordering::Relaxed;
            gauges(
                e,
                "webscale_state_restore_partitions",
                "State partitions of this process: expected to restore, and restored.",
                [
                    (
                        vec![("state", "expected".to_string())],
                        restore.expected.load(Relaxed) as i64,
                    ),
                    (
                        vec![("state", "restored".to_string())],
                        restore.finished.load(Relaxed) as i64,
                    ),
                ],
            )?;
            counters(
                e,
                "webscale_state_restored_records",
                "Changelog records replayed into this process's state partitions.",
                [(vec![], restore.records.load(Relaxed))],
            )?;
        }
        let partitions = live.partitions();
        let tp = |(topic, p): &(String, i32)| {
            vec![("topic", topic.clone()), ("partition", p.to_string())]
        };
        gauges(
            e,
            "webscale_kafka_consumer_lag",
            "Messages between the consumer's position and the partition's end offset.",
            partitions
                .iter()
                .filter_map(|(k, s)| s.lag().map(|l| (tp(k), l))),
        )?;
        gauges(
            e,
            "webscale_kafka_committed_offset",
            "The group's committed offset per input partition (committed behind durable output).",
            partitions
                .iter()
                .filter_map(|(k, s)| s.committed.map(|c| (tp(k), c))),
        )?;
        if let Some(llm) = self.llm.get() {
            encode_llm(e, llm, &llm.client.usage())?;
        }
        Ok(())
    }
}

impl EngineCollector {
    fn readiness_ok(&self) -> bool {
        readiness(&self.funnel, self.llm.get()).is_ok()
    }
}

/// What keeps the engine from being ready ([`EngineMetrics::readiness`]).
fn readiness(funnel: &Funnel, llm: Option<&LlmHandle>) -> Result<(), Vec<String>> {
    let mut missing = Vec::new();
    if !funnel.live().source_ready() {
        missing.push("source: not connected (Kafka partitions not assigned yet)".to_string());
    }
    if let Some((done, of)) = funnel.live().restore_progress().and_then(|p| p.restoring()) {
        missing.push(format!("state: restoring state: {done} of {of} partitions"));
    }
    if let Some(llm) = llm
        && !llm.up()
    {
        missing.push(format!("llm: {}", llm.client.health().status().describe()));
    }
    // A server's `Retry-After` pauses every call; a long one is a wait the orchestrator
    // should see (one 429 may not reach the outage threshold).
    if let Some(llm) = llm {
        let cooldown = llm.client.cooldown_remaining();
        if cooldown >= READY_COOLDOWN {
            missing.push(format!(
                "llm: rate-limited by the server, every call waits {:.0} s more",
                cooldown.as_secs_f64()
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

fn encode_llm(e: &mut DescriptorEncoder, llm: &LlmHandle, u: &UsageSnapshot) -> std::fmt::Result {
    let per = |f: &dyn Fn(&webscale_rl_connectors::llm::UsageCounters) -> u64| {
        u.stages
            .iter()
            .map(|s| (stage_model(&s.stage, &s.model), f(&s.counters)))
            .collect::<Vec<_>>()
    };
    counters(
        e,
        "webscale_llm_calls",
        "Logical LLM calls (cache hits included).",
        per(&|c| c.calls),
    )?;
    counters(
        e,
        "webscale_llm_requests",
        "HTTP requests sent to LLM endpoints (first attempts and retries).",
        per(&|c| c.http_requests),
    )?;
    counters(
        e,
        "webscale_llm_retries",
        "HTTP requests that were retries.",
        per(&|c| c.retries),
    )?;
    counters(
        e,
        "webscale_llm_cache_hits",
        "LLM calls answered from the response cache.",
        per(&|c| c.cache_hits),
    )?;
    let by_kind =
        |f: &dyn Fn(&webscale_rl_connectors::llm::UsageCounters) -> &BTreeMap<String, u64>| {
            u.stages
                .iter()
                .flat_map(|s| {
                    f(&s.counters).iter().map(|(kind, &n)| {
                        let mut l = stage_model(&s.stage, &s.model);
                        l.push(("kind", kind.clone()));
                        (l, n)
                    })
                })
                .collect::<Vec<_>>()
        };
    counters(
        e,
        "webscale_llm_errors",
        "Failed LLM attempts by error kind (retried or not).",
        by_kind(&|c| &c.errors),
    )?;
    counters(
        e,
        "webscale_llm_failed_calls",
        "LLM calls that ended in an error after retries, by error kind.",
        by_kind(&|c| &c.failures),
    )?;
    counters(
        e,
        "webscale_llm_tokens",
        "Tokens reported by the LLM servers; direction=input (prompt), cached_input (the part of the prompt served from the server's prefix cache) or output (completion).",
        u.stages.iter().flat_map(|s| {
            ["input", "cached_input", "output"].map(|d| {
                let mut l = stage_model(&s.stage, &s.model);
                l.push(("direction", d.to_string()));
                let n = match d {
                    "input" => s.counters.prompt_tokens,
                    "cached_input" => s.counters.cached_prompt_tokens,
                    _ => s.counters.completion_tokens,
                };
                (l, n)
            })
        }),
    )?;
    counters(
        e,
        "webscale_llm_cost_dollars",
        "Cost of the tokens at the configured prices, in US dollars.",
        u.stages
            .iter()
            .map(|s| (stage_model(&s.stage, &s.model), s.counters.cost)),
    )?;
    gauges(
        e,
        "webscale_llm_in_flight_requests",
        "HTTP requests to LLM endpoints in flight now.",
        [(vec![], in_flight_requests(&llm.client) as i64)],
    )?;
    let hist = &llm.latency.0;
    hist.encode(e.encode_descriptor(
        "webscale_llm_request_duration_seconds",
        "Latency of LLM calls (queueing and retries included, cache hits excluded).",
        None,
        hist.metric_type(),
    )?)?;
    Ok(())
}

/// Reads one sample from an exposition: `name{labels}` where every given label matches (tests
/// and the dashboard check use it). Sums all matching samples.
pub fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let all = labels.iter().all(|(k, v)| {
            let mut want = String::new();
            let _ = write!(want, "{k}=\"{v}\"");
            label_text.split(',').any(|l| l == want)
        });
        if all && let Ok(v) = value.parse::<f64>() {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::funnel::{CONSUMED, DEAD_LETTERED, EMITTED, QA_PAIRS};
    use crate::llm_service::LlmLatency;
    use serde_json::Value;
    use webscale_rl_connectors::llm::LlmClient;
    use webscale_rl_records::now_millis;

    #[test]
    fn the_exposition_reads_the_funnel_and_the_live_state() {
        let funnel = Funnel::default();
        let metrics = EngineMetrics::new(&funnel);
        funnel.add(CONSUMED.0, CONSUMED.1, 10);
        funnel.add("quality_filter", "passed", 7);
        funnel.add("quality_filter", "min_words", 3);
        funnel.add(EMITTED.0, EMITTED.1, 6);
        funnel.add(DEAD_LETTERED.0, DEAD_LETTERED.1, 4);
        funnel.add(QA_PAIRS.0, QA_PAIRS.1, 6);
        let live = funnel.live();
        live.set_run("kafka", "out", "dead");
        live.partitions_assigned("in", &[0, 1]);
        live.update_partition("in", 0, Some(5), Some(4), Some(9));
        live.set_in_flight(0, 3);
        live.set_frontier(Some(now_millis() - 2_000));
        let text = metrics.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE webscale_stage_documents counter"),
            "{text}"
        );
        let s = |n, l: &[(&str, &str)]| sample(&text, n, l);
        assert_eq!(s("webscale_documents_consumed_total", &[]), Some(10.0));
        assert_eq!(
            s(
                "webscale_stage_documents_total",
                &[("stage", "quality_filter"), ("outcome", "min_words")]
            ),
            Some(3.0)
        );
        assert_eq!(
            s("webscale_output_records_total", &[("topic", "out")]),
            Some(6.0)
        );
        assert_eq!(
            s("webscale_output_records_total", &[("kind", "dead_letter")]),
            Some(4.0)
        );
        assert_eq!(
            s(
                "webscale_kafka_consumer_lag",
                &[("topic", "in"), ("partition", "0")]
            ),
            Some(5.0),
            "end offset 9 minus committed 4, though the consumer has read up to 5"
        );
        assert_eq!(
            s("webscale_kafka_consumer_lag", &[("partition", "1")]),
            None,
            "unknown until the end offset is known"
        );
        assert_eq!(
            s("webscale_kafka_committed_offset", &[("partition", "0")]),
            Some(4.0)
        );
        assert_eq!(s("webscale_documents_in_flight", &[]), Some(3.0));
        let lag = s("webscale_frontier_lag_seconds", &[]).unwrap();
        assert!((1.5..60.0).contains(&lag), "{lag}");
        assert_eq!(s("webscale_ready", &[]), Some(1.0));
        let state = metrics.state();
        assert_eq!(state["funnel"][0]["count"], 10);
        assert_eq!(state["funnel"][1]["count"], 7);
        assert_eq!(state["funnel"][3]["count"], Value::Null, "no LLM");
        assert_eq!(state["funnel"][6]["count"], 6);
        assert_eq!(state["throughput"].as_array().unwrap().len(), 60);
        assert_eq!(state["throughput"][59]["consumed"], 10);
    }

    #[test]
    fn an_llm_outage_shows_on_readiness_metrics_and_state() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = LlmClient::new(
            webscale_rl_connectors::llm::LlmConfig {
                endpoints: vec!["http://user:pw@127.0.0.1:9/v1".into()],
                api_key_env: String::new(),
                ..Default::default()
            },
            rt.handle().clone(),
        )
        .unwrap();
        let funnel = Funnel::default();
        funnel.live().set_source_ready();
        let metrics = EngineMetrics::new(&funnel);
        metrics.attach_llm(LlmHandle {
            client: client.clone(),
            latency: LlmLatency::default(),
        });
        // Before the start-up check: not ready, the LLM named as the reason.
        let why = metrics.readiness().unwrap_err().join("; ");
        assert!(why.contains("no endpoint has answered yet"), "{why}");
        client.health().mark_up();
        assert!(metrics.readiness().is_ok());
        let s = |text: &str, n| sample(text, n, &[]);
        assert_eq!(s(&metrics.encode(), "webscale_llm_up"), Some(1.0));
        for _ in 0..3 {
            client
                .health()
                .record_failure("connection to http://127.0.0.1:9/v1 failed: refused");
        }
        let why = metrics.readiness().unwrap_err().join("; ");
        assert!(
            why.contains("LLM unavailable since") && why.contains("refused"),
            "{why}"
        );
        let text = metrics.encode();
        assert_eq!(s(&text, "webscale_llm_up"), Some(0.0));
        assert!(s(&text, "webscale_llm_outage_seconds").is_some_and(|v| (0.0..60.0).contains(&v)));
        assert_eq!(s(&text, "webscale_ready"), Some(0.0));
        let state = metrics.state();
        assert_eq!(state["llm"]["up"], false);
        assert!(
            state["llm"]["status"]
                .as_str()
                .unwrap()
                .contains("LLM unavailable")
        );
        assert_eq!(state["llm"]["endpoints"][0]["dialect"], "json_schema");
        assert!(
            !state.to_string().contains("pw@"),
            "no credentials in the state"
        );
    }

    #[test]
    fn restoring_state_shows_on_readiness_and_the_metrics() {
        use std::sync::atomic::Ordering;
        let funnel = Funnel::default();
        funnel.live().set_source_ready();
        let progress = std::sync::Arc::new(
            webscale_rl_connectors::kafka::changelog::RestoreProgress::default(),
        );
        progress.expected.store(4, Ordering::Release);
        progress.finished.store(1, Ordering::Release);
        progress.records.store(42, Ordering::Relaxed);
        funnel.live().set_restore_progress(progress.clone());
        let metrics = EngineMetrics::new(&funnel);
        let missing = metrics.readiness().unwrap_err();
        assert!(
            missing.contains(&"state: restoring state: 1 of 4 partitions".to_string()),
            "{missing:?}"
        );
        let text = metrics.encode();
        assert!(
            text.contains("webscale_state_restore_partitions{state=\"restored\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("webscale_state_restored_records_total 42"),
            "{text}"
        );
        progress.finished.store(4, Ordering::Release);
        assert!(metrics.readiness().is_ok());
    }

    #[test]
    fn a_long_retry_after_shows_on_readiness() {
        use std::io::{Read, Write};
        // A server that answers every request with a 429 asking for 60 s.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut buf = [0u8; 65536];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 60\r\n\
                      Content-Length: 2\r\nConnection: close\r\n\r\n{}",
                );
            }
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = LlmClient::new(
            webscale_rl_connectors::llm::LlmConfig {
                endpoints: vec![format!("http://{addr}/v1")],
                api_key_env: String::new(),
                outage_after_failures: 100,
                ..Default::default()
            },
            rt.handle().clone(),
        )
        .unwrap();
        client.health().mark_up();
        let funnel = Funnel::default();
        funnel.live().set_source_ready();
        let metrics = EngineMetrics::new(&funnel);
        metrics.attach_llm(LlmHandle {
            client: client.clone(),
            latency: LlmLatency::default(),
        });
        assert!(metrics.readiness().is_ok());
        let req = webscale_rl_connectors::llm::ChatRequest::new("m").user("hi");
        client.submit("s", req, |_| {});
        let started = std::time::Instant::now();
        while client.cooldown_remaining().is_zero() {
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // One 429 is below the outage threshold, yet every call now waits a minute.
        assert!(client.health().is_up());
        let why = metrics.readiness().unwrap_err().join("; ");
        assert!(why.contains("rate-limited"), "{why}");
        assert_eq!(sample(&metrics.encode(), "webscale_ready", &[]), Some(0.0));
        client.close();
    }

    #[test]
    fn sample_matches_labels_exactly() {
        let text = "# TYPE x counter\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"10\"} 4\n";
        assert_eq!(sample(text, "x_total", &[("a", "1")]), Some(3.0));
        assert_eq!(sample(text, "x_total", &[]), Some(7.0));
        assert_eq!(sample(text, "x_total", &[("a", "2")]), None);
    }
}
