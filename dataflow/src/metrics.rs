//! Observability: the live state of a run and its Prometheus metrics.
//!
//! There is one source of truth per number. The [`Funnel`] counts documents per (stage, outcome);
//! its [`Live`] part holds what the runtime reports (Kafka positions and watermarks, the durable
//! frontier, documents in flight) and what the graph emitted (QA pairs per domain and persona, the
//! latest accepted records, throughput per minute); the LLM client keeps its own usage counters.
//! [`EngineMetrics`] reads all of them at scrape time through a custom `prometheus-client`
//! collector, so `/metrics`, the dashboard (`/api/state`) and the run summary never disagree.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::{Value, json};
use webscale_rl_connectors::llm::{LlmClient, UsageSnapshot};
use webscale_rl_records::{Document, QaPair, now_millis};

use crate::funnel::{Funnel, FunnelSnapshot};

/// Accepted records kept for the dashboard.
pub const LATEST_RECORDS: usize = 10;
/// Minutes of throughput history.
const HISTORY_MINUTES: u64 = 60;
/// Personas come from the LLM as free text: past this many distinct ones, the rest are counted
/// as `(other)` so memory stays bounded on a run of many days.
const MAX_PERSONAS: usize = 1_000;
/// Characters of an accepted document's text shown on the dashboard (runs without the LLM).
const TEXT_HEAD_CHARS: usize = 240;

/// An accepted record as the dashboard lists it: a QA pair, or a document when there is no LLM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatestRecord {
    pub id: String,
    pub doc_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persona: Option<String>,
    /// The first characters of an accepted document (runs without the LLM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub url: Option<String>,
    pub created_at: u64,
}

/// [`Live`]'s frontier when there is none (not started, or all durable).
const FRONTIER_NONE: u64 = u64::MAX;

/// Documents consumed and records emitted during one wall-clock minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Minute {
    /// Minutes since the Unix epoch.
    pub minute: u64,
    pub consumed: u64,
    pub emitted: u64,
}

/// What the runtime knows about one input partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PartitionState {
    /// The next offset the consumer will fetch.
    pub position: Option<i64>,
    /// The offset committed for the group (the next one to consume after a restart).
    pub committed: Option<i64>,
    /// The partition's end offset, refreshed every few seconds.
    pub high_watermark: Option<i64>,
}

impl PartitionState {
    /// Messages not yet durably processed: end offset minus the group's committed offset (what
    /// a restart would read again), or minus the position before the first commit. Unknown
    /// until both are known. A backlog read but stuck in flight (an LLM outage) stays visible.
    pub fn lag(&self) -> Option<i64> {
        let high = self.high_watermark?;
        let at = self.committed.or(self.position)?;
        Some((high - at).max(0))
    }
}

#[derive(Default)]
struct EmittedStats {
    by_domain: BTreeMap<String, u64>,
    by_persona: BTreeMap<String, u64>,
    latest: VecDeque<LatestRecord>,
}

/// Live state of a run that the funnel's counts do not hold. Shared by all workers of a process
/// (inside [`Funnel`]); every method is cheap and never blocks on I/O.
pub struct Live {
    started_ms: u64,
    minutes: Mutex<VecDeque<Minute>>,
    emitted: Mutex<EmittedStats>,
    partitions: Mutex<BTreeMap<(String, i32), PartitionState>>,
    in_flight: Mutex<BTreeMap<usize, u64>>,
    /// The durable frontier in wall-clock ms (Kafka mode); [`FRONTIER_NONE`] before the run and
    /// once everything is durable.
    frontier_ms: AtomicU64,
    /// The source is connected: Kafka partitions assigned, or the input file opened.
    source_ready: AtomicBool,
    /// Names of the output and dead-letter destinations (topics, or files in file mode).
    sinks: Mutex<Option<(String, String)>>,
    mode: Mutex<Option<&'static str>>,
    /// Someone reads the metrics: worth refreshing the Kafka end offsets.
    watched: AtomicBool,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            started_ms: now_millis(),
            minutes: Mutex::default(),
            emitted: Mutex::default(),
            partitions: Mutex::default(),
            in_flight: Mutex::default(),
            frontier_ms: AtomicU64::new(FRONTIER_NONE),
            source_ready: AtomicBool::new(false),
            sinks: Mutex::default(),
            mode: Mutex::default(),
            watched: AtomicBool::new(false),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking worker must not take the metrics down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Live {
    /// Adds to the current minute's throughput; keeps the last hour.
    pub(crate) fn note_minute(&self, consumed: u64, emitted: u64) {
        let minute = now_millis() / 60_000;
        let mut minutes = lock(&self.minutes);
        match minutes.back_mut() {
            Some(m) if m.minute == minute => {
                m.consumed += consumed;
                m.emitted += emitted;
            }
            _ => minutes.push_back(Minute {
                minute,
                consumed,
                emitted,
            }),
        }
        while minutes
            .front()
            .is_some_and(|m| m.minute + HISTORY_MINUTES <= minute)
        {
            minutes.pop_front();
        }
    }

    /// The last hour, one entry per minute (zeros where nothing happened), oldest first.
    pub fn throughput(&self) -> Vec<Minute> {
        let now = now_millis() / 60_000;
        let minutes = lock(&self.minutes);
        (now + 1 - HISTORY_MINUTES..=now)
            .map(|minute| {
                minutes
                    .iter()
                    .find(|m| m.minute == minute)
                    .copied()
                    .unwrap_or(Minute {
                        minute,
                        ..Default::default()
                    })
            })
            .collect()
    }

    /// A QA pair on its way to the output.
    pub fn record_pair(&self, pair: &QaPair) {
        let mut e = lock(&self.emitted);
        *e.by_domain.entry(pair.domain.clone()).or_default() += 1;
        let persona =
            if e.by_persona.len() < MAX_PERSONAS || e.by_persona.contains_key(&pair.persona) {
                pair.persona.clone()
            } else {
                "(other)".to_string()
            };
        *e.by_persona.entry(persona).or_default() += 1;
        push_latest(
            &mut e.latest,
            LatestRecord {
                id: pair.id.clone(),
                doc_id: pair.doc_id.clone(),
                question: Some(pair.question.clone()),
                answer: Some(pair.answer.clone()),
                domain: Some(pair.domain.clone()),
                persona: Some(pair.persona.clone()),
                text: None,
                url: pair.url.clone(),
                created_at: pair.created_at,
            },
        );
    }

    /// An accepted document on its way to the output (runs without the LLM).
    pub fn record_document(&self, doc: &Document) {
        let mut e = lock(&self.emitted);
        push_latest(
            &mut e.latest,
            LatestRecord {
                id: doc.id.clone(),
                doc_id: doc.id.clone(),
                question: None,
                answer: None,
                domain: None,
                persona: None,
                text: Some(doc.text.chars().take(TEXT_HEAD_CHARS).collect()),
                url: doc.url.clone(),
                created_at: now_millis(),
            },
        );
    }

    /// QA pairs emitted per domain.
    pub fn domains(&self) -> BTreeMap<String, u64> {
        lock(&self.emitted).by_domain.clone()
    }

    /// QA pairs emitted per persona, most frequent first, at most `n`.
    pub fn top_personas(&self, n: usize) -> Vec<(String, u64)> {
        let mut all: Vec<_> = lock(&self.emitted)
            .by_persona
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// The latest accepted records, newest first.
    pub fn latest(&self) -> Vec<LatestRecord> {
        lock(&self.emitted).latest.iter().rev().cloned().collect()
    }

    /// A Kafka worker has its partitions assigned (`partitions` may be empty).
    pub fn partitions_assigned(&self, topic: &str, partitions: &[i32]) {
        let mut map = lock(&self.partitions);
        for &p in partitions {
            map.entry((topic.to_string(), p)).or_default();
        }
        drop(map);
        self.source_ready.store(true, Ordering::Relaxed);
    }

    /// Updates what is known about a partition; `None` leaves a field as it was.
    pub fn update_partition(
        &self,
        topic: &str,
        partition: i32,
        position: Option<i64>,
        committed: Option<i64>,
        high_watermark: Option<i64>,
    ) {
        let mut map = lock(&self.partitions);
        let s = map.entry((topic.to_string(), partition)).or_default();
        if position.is_some() {
            s.position = position;
        }
        if committed.is_some() {
            s.committed = committed;
        }
        if high_watermark.is_some() {
            s.high_watermark = high_watermark;
        }
    }

    /// Every known input partition.
    pub fn partitions(&self) -> BTreeMap<(String, i32), PartitionState> {
        lock(&self.partitions).clone()
    }

    /// Records a worker has read that are not yet durable.
    pub fn set_in_flight(&self, worker: usize, docs: u64) {
        lock(&self.in_flight).insert(worker, docs);
    }

    pub fn in_flight(&self) -> u64 {
        lock(&self.in_flight).values().sum()
    }

    /// The durable frontier, in wall-clock ms (`None`: everything is durable).
    pub fn set_frontier(&self, frontier_ms: Option<u64>) {
        self.frontier_ms
            .store(frontier_ms.unwrap_or(FRONTIER_NONE), Ordering::Relaxed);
    }

    /// How far the durable frontier trails the wall clock, in seconds (Kafka mode, while running).
    /// Epoch 0 is the first epoch of the run, which began when the process started: a backlog
    /// read before the first cut and stuck in flight (an LLM outage) shows its true age.
    pub fn frontier_lag_secs(&self) -> Option<f64> {
        match self.frontier_ms.load(Ordering::Relaxed) {
            FRONTIER_NONE => None,
            0 => Some(now_millis().saturating_sub(self.started_ms) as f64 / 1e3),
            f => Some(now_millis().saturating_sub(f) as f64 / 1e3),
        }
    }

    /// The run has started: its mode and the names of its output and dead-letter destinations.
    pub fn set_run(&self, mode: &'static str, output: &str, dead_letter: &str) {
        *lock(&self.mode) = Some(mode);
        *lock(&self.sinks) = Some((output.to_string(), dead_letter.to_string()));
    }

    pub fn mode(&self) -> Option<&'static str> {
        *lock(&self.mode)
    }

    /// Output and dead-letter destinations, once the run has started.
    pub fn sinks(&self) -> Option<(String, String)> {
        lock(&self.sinks).clone()
    }

    /// The input is open (file mode); Kafka mode sets this on partition assignment.
    pub fn set_source_ready(&self) {
        self.source_ready.store(true, Ordering::Relaxed);
    }

    pub fn source_ready(&self) -> bool {
        self.source_ready.load(Ordering::Relaxed)
    }

    /// A metrics endpoint reads this state from now on.
    pub fn set_watched(&self) {
        self.watched.store(true, Ordering::Relaxed);
    }

    /// Whether a metrics endpoint reads this state (the runtime then refreshes Kafka end offsets).
    pub fn watched(&self) -> bool {
        self.watched.load(Ordering::Relaxed)
    }

    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }
}

fn push_latest(latest: &mut VecDeque<LatestRecord>, record: LatestRecord) {
    if latest.len() == LATEST_RECORDS {
        latest.pop_front();
    }
    latest.push_back(record);
}

/// Latency of LLM calls per (stage, model), in seconds: queueing, retries and backoff included,
/// cache hits excluded. Observed by the LLM service, read by [`EngineMetrics`].
#[derive(Clone, Debug)]
pub struct LlmLatency(Family<StageModel, Histogram, fn() -> Histogram>);

/// `stage` and `model` labels.
type StageModel = [(&'static str, String); 2];

fn latency_histogram() -> Histogram {
    // From a cached-prefix answer on a local GPU to a long generation behind a busy queue.
    Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0])
}

impl Default for LlmLatency {
    fn default() -> Self {
        LlmLatency(Family::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        ))
    }
}

impl LlmLatency {
    pub fn observe(&self, stage: &str, model: &str, secs: f64) {
        self.0
            .get_or_create(&[("stage", stage.to_string()), ("model", model.to_string())])
            .observe(secs);
    }
}

/// The LLM as the metrics see it.
#[derive(Clone)]
pub struct LlmHandle {
    pub client: LlmClient,
    pub latency: LlmLatency,
}

impl LlmHandle {
    /// The LLM side is up: the start-up check passed and no outage is on.
    pub fn up(&self) -> bool {
        self.client.health().is_up()
    }
}

/// The metrics of one process: a Prometheus registry whose only collector reads the funnel, the
/// live state and the LLM client at scrape time. Cheap to clone.
#[derive(Clone)]
pub struct EngineMetrics {
    funnel: Funnel,
    llm: Arc<OnceLock<LlmHandle>>,
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
        let mut missing = Vec::new();
        if !self.funnel.live().source_ready() {
            missing.push("source: not connected (Kafka partitions not assigned yet)".to_string());
        }
        if let Some(llm) = self.llm.get()
            && !llm.up()
        {
            missing.push(format!("llm: {}", llm.client.health().status().describe()));
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }

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

fn in_flight_requests(client: &LlmClient) -> u64 {
    client
        .endpoint_stats()
        .iter()
        .map(|e| e.in_flight as u64)
        .sum()
}

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
        self.funnel.live().source_ready() && self.llm.get().is_none_or(LlmHandle::up)
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
    fn the_first_epoch_has_a_frontier_lag_too() {
        let funnel = Funnel::default();
        let live = funnel.live();
        assert_eq!(live.frontier_lag_secs(), None, "before the run");
        // A backlog read into epoch 0 and not yet durable: lagging since the start.
        live.set_frontier(Some(0));
        let lag = live.frontier_lag_secs().unwrap();
        assert!((0.0..60.0).contains(&lag), "{lag}");
        live.set_frontier(None);
        assert_eq!(live.frontier_lag_secs(), None, "everything durable");
    }

    #[test]
    fn latest_records_are_bounded_and_newest_first() {
        let live = Live::default();
        for i in 0..15 {
            let pair = QaPair {
                id: format!("q{i}"),
                doc_id: "d".into(),
                question: "Q?".into(),
                answer: "A".into(),
                domain: if i % 3 == 0 { "Math" } else { "History" }.into(),
                persona: "a student".into(),
                source: None,
                url: Some("https://example.org/".into()),
                models: Default::default(),
                created_at: i,
                pipeline_version: "t".into(),
                pretrain_text: None,
            };
            live.record_pair(&pair);
        }
        let latest = live.latest();
        assert_eq!(latest.len(), LATEST_RECORDS);
        assert_eq!(latest[0].id, "q14");
        assert_eq!(live.domains()["Math"], 5);
        assert_eq!(live.domains()["History"], 10);
        assert_eq!(live.top_personas(5), vec![("a student".to_string(), 15)]);
    }

    #[test]
    fn sample_matches_labels_exactly() {
        let text = "# TYPE x counter\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"10\"} 4\n";
        assert_eq!(sample(text, "x_total", &[("a", "1")]), Some(3.0));
        assert_eq!(sample(text, "x_total", &[]), Some(7.0));
        assert_eq!(sample(text, "x_total", &[("a", "2")]), None);
    }
}
