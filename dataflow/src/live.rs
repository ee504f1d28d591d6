//! The live state of a run, beside the funnel's counts: what the runtime reports (Kafka positions
//! and watermarks, the durable frontier, documents in flight) and what the graph emitted (QA pairs
//! per domain and persona, the latest accepted records, throughput per minute). Every method is
//! cheap and never blocks on I/O; the metrics, the dashboard and the summary read it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;
use webscale_rl_records::{Document, QaPair, now_millis};

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
    /// Kafka mode with changelogs: the restores of this process's state partitions.
    restore: std::sync::OnceLock<
        std::sync::Arc<webscale_rl_connectors::kafka::changelog::RestoreProgress>,
    >,
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
            restore: std::sync::OnceLock::new(),
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

    /// The restores of this process's state partitions (Kafka mode with changelogs).
    pub fn set_restore_progress(
        &self,
        progress: std::sync::Arc<webscale_rl_connectors::kafka::changelog::RestoreProgress>,
    ) {
        let _ = self.restore.set(progress);
    }

    /// The restores, once started.
    pub fn restore_progress(
        &self,
    ) -> Option<&webscale_rl_connectors::kafka::changelog::RestoreProgress> {
        self.restore.get().map(|p| &**p)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Funnel;

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
}
