//! The Kafka source: a timely source operator over a non-blocking rdkafka consumer.
//!
//! Each worker owns a fixed share of the input partitions (partition `p` goes to worker
//! `p % peers`), so partitions spread over all workers of all processes without a group rebalance
//! in the middle of an epoch. Timestamps are wall-clock milliseconds: every worker's epochs advance
//! together, an epoch closes after `epoch_ms` or `epoch_max_records`, and the highest offset read
//! per partition in each epoch is kept until the durable frontier passes it (see [`SourceProgress`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, StreamVec};
use webscale_rl_records::{Origin, RawMessage, now_millis};

use super::config::KafkaConfig;

/// How the source slices the stream into epochs and how far ahead of the durable frontier it reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// An epoch closes after this many milliseconds...
    pub epoch_ms: u64,
    /// ...or after this many records read by one worker, whichever comes first. An epoch is the
    /// unit of offset commits. Unset: [`CPU_EPOCH_RECORDS`], or 16 with the LLM stages (see
    /// [`SourceConfig::resolve`]).
    pub epoch_max_records: Option<usize>,
    /// Most messages read in one activation, so a busy topic cannot starve other operators.
    pub batch_max: usize,
    /// Milliseconds to wait before polling again when nothing arrived.
    pub idle_poll_ms: u64,
    /// Flow control: a worker stops reading while this many of its records are not yet durable.
    /// With the LLM stages this is also what a crash can cost: at most this many documents per
    /// worker of LLM work to redo (less what the response cache kept). Unset:
    /// [`CPU_IN_FLIGHT_DOCS`], or 64 with the LLM stages.
    pub max_in_flight_docs: Option<usize>,
    /// File mode: how often (milliseconds) a resumable run records its progress. Each record
    /// ends a compressed frame and syncs two files; an interruption costs about this much work.
    pub checkpoint_ms: u64,
}

/// Records per epoch and worker without the LLM stages. Small enough that the stages that wait
/// for a whole epoch (dedup, the file sink) start on it while the next is read, and that little
/// is held. With [`CPU_IN_FLIGHT_DOCS`], against the former 5,000 and 20,000: 1 worker 0.74 →
/// 0.66 s and 2 workers 0.55 → 0.40 s on the 37 MB bench corpus (BENCHMARKS.md, "Third round").
pub const CPU_EPOCH_RECORDS: usize = 1_000;

/// Read-ahead per worker without the LLM stages: a few epochs, about half a second of a worker's
/// work. More only holds more documents: every one in flight is memory the process touches fresh,
/// and fresh pages cost a fault and zeroing each.
pub const CPU_IN_FLIGHT_DOCS: usize = 5_000;

impl SourceConfig {
    /// Fills the unset limits with the defaults of the run's kind. Without the LLM the CPU
    /// stages take thousands of documents a second: epochs of [`CPU_EPOCH_RECORDS`] keep the
    /// stages pipelined and what is held small. With it a document takes seconds: small epochs
    /// and a short read-ahead let the committed offsets follow the documents as they finish,
    /// instead of waiting for a whole backlog read into one epoch (a crash then redoes a few
    /// dozen documents, not all of them).
    pub fn resolve(&mut self, llm_stages: bool) {
        let (epoch, in_flight) = if llm_stages {
            (16, 64)
        } else {
            (CPU_EPOCH_RECORDS, CPU_IN_FLIGHT_DOCS)
        };
        self.epoch_max_records.get_or_insert(epoch);
        self.max_in_flight_docs.get_or_insert(in_flight);
    }

    /// Records per epoch and worker ([`SourceConfig::epoch_max_records`], resolved).
    pub fn epoch_records(&self) -> usize {
        self.epoch_max_records.unwrap_or(CPU_EPOCH_RECORDS).max(1)
    }

    /// Read-ahead per worker ([`SourceConfig::max_in_flight_docs`], resolved).
    pub fn in_flight_docs(&self) -> usize {
        self.max_in_flight_docs.unwrap_or(CPU_IN_FLIGHT_DOCS).max(1)
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            epoch_ms: 250,
            epoch_max_records: None,
            batch_max: 500,
            idle_poll_ms: 5,
            max_in_flight_docs: None,
            checkpoint_ms: 2000,
        }
    }
}

/// What the source read and what is durable: shared between the source operator and the worker
/// loop that commits offsets.
#[derive(Default)]
pub struct SourceProgress {
    /// For each epoch not yet durable: the highest offset read per partition, and the record count.
    open: BTreeMap<u64, (HashMap<i32, i64>, usize)>,
    open_records: usize,
    /// The source has stopped reading (caught up, or asked to stop) and dropped its capability.
    pub finished: bool,
    /// Records read since start.
    pub records_read: u64,
}

impl SourceProgress {
    fn record(&mut self, epoch: u64, partition: i32, offset: i64) {
        let (offsets, count) = self.open.entry(epoch).or_default();
        let max = offsets.entry(partition).or_insert(offset);
        *max = (*max).max(offset);
        *count += 1;
        self.open_records += 1;
        self.records_read += 1;
    }

    /// Records read but not yet durable.
    pub fn in_flight(&self) -> usize {
        self.open_records
    }

    /// Removes the epochs the durable frontier has passed (`None`: everything is durable) and
    /// returns, per partition, the next offset to consume: the value to commit.
    pub fn take_durable(&mut self, frontier: Option<u64>) -> BTreeMap<i32, i64> {
        let mut commit = BTreeMap::new();
        while let Some(entry) = self.open.first_entry() {
            if frontier.is_some_and(|f| *entry.key() >= f) {
                break;
            }
            let (offsets, count) = entry.remove();
            self.open_records -= count;
            for (p, o) in offsets {
                let next = commit.entry(p).or_insert(o + 1);
                *next = (*next).max(o + 1);
            }
        }
        commit
    }
}

/// A worker's share of the input topic: assigned partitions and, for `--until-caught-up`, the end
/// offsets they had at start.
pub struct Assignment {
    pub topic: String,
    pub partitions: Vec<i32>,
    /// Partition -> high watermark at start, for partitions not yet consumed to it.
    pub stop_at: Option<HashMap<i32, i64>>,
}

/// Assigns this worker its partitions (`p % peers == index`) at the group's committed offsets
/// (or `auto.offset.reset` where none are committed).
pub fn assign_partitions(
    consumer: &BaseConsumer,
    cfg: &KafkaConfig,
    index: usize,
    peers: usize,
    until_caught_up: bool,
) -> anyhow::Result<Assignment> {
    let timeout = cfg.connect_timeout();
    let topic = cfg.input_topic.as_str();
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| {
            format!(
                "cannot reach Kafka brokers '{}' within {timeout:?}",
                cfg.brokers
            )
        })?;
    let missing = || super::tools::missing_topic(topic, &cfg.brokers);
    let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
        bail!("input {}", missing());
    };
    match meta.error() {
        None => {}
        Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
            bail!("input {}", missing())
        }
        Some(err) => bail!("input topic '{topic}' is not available: {err:?}"),
    }
    let mut partitions: Vec<i32> = meta
        .partitions()
        .iter()
        .map(|p| p.id())
        .filter(|p| (*p as usize) % peers == index)
        .collect();
    partitions.sort_unstable();

    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Stored)?;
    }
    consumer
        .assign(&tpl)
        .context("assigning input partitions")?;

    let stop_at = if until_caught_up && !partitions.is_empty() {
        let committed = consumer
            .committed_offsets(tpl.clone(), timeout)
            .context("reading committed offsets")?;
        let mut stop_at = HashMap::new();
        for &p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .with_context(|| format!("reading end offset of {topic}/{p}"))?;
            let start = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => low,
            };
            if start < high {
                stop_at.insert(p, high);
            }
        }
        Some(stop_at)
    } else if until_caught_up {
        Some(HashMap::new())
    } else {
        None
    };
    Ok(Assignment {
        topic: topic.to_string(),
        partitions,
        stop_at,
    })
}

/// The source operator. It reads until `stop` is set or, with `assignment.stop_at`, until its
/// partitions reach their start-time end offsets; then it drops its capability and the dataflow
/// drains. `progress` is shared with the worker loop, which commits what became durable. While
/// `pause` is set (the LLM side is down) it reads nothing but keeps advancing its epoch, so what
/// is in flight can finish.
pub fn kafka_source<'s>(
    scope: Scope<'s, u64>,
    consumer: Rc<BaseConsumer>,
    assignment: Assignment,
    cfg: SourceConfig,
    progress: Rc<RefCell<SourceProgress>>,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
) -> StreamVec<'s, u64, RawMessage> {
    source(scope, "KafkaSource", move |cap, info| {
        let activator = scope.activator_for(info.address.clone());
        // The first epoch is 0 on every worker (of every process), so that records read before
        // the first cut share one epoch whatever the worker count; later epochs are wall-clock ms.
        let mut cap = Some(cap);
        let mut epoch_started = now_millis();
        let (epoch_max_records, max_in_flight) = (cfg.epoch_records(), cfg.in_flight_docs());
        let mut epoch_records = 0usize;
        let Assignment {
            topic,
            partitions,
            mut stop_at,
        } = assignment;
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            let caught_up = stop_at.as_ref().is_some_and(|s| s.is_empty());
            if stop.load(Ordering::Relaxed)
                || caught_up
                || partitions.is_empty() && stop_at.is_some()
            {
                progress.borrow_mut().finished = true;
                cap = None;
                return;
            }
            // Close the epoch on time or volume. Time never goes backwards, and a volume cut
            // moves on by at least a millisecond.
            let now = now_millis();
            if now >= epoch_started + cfg.epoch_ms || epoch_records >= epoch_max_records {
                let next = now.max(*c.time() + 1);
                c.downgrade(&next);
                epoch_started = now;
                epoch_records = 0;
            }
            let epoch = *c.time();
            let mut read = 0;
            let throttled =
                progress.borrow().in_flight() >= max_in_flight || pause.load(Ordering::Relaxed);
            if !throttled && !partitions.is_empty() {
                let mut session = output.session(&*c);
                let mut progress = progress.borrow_mut();
                while read < cfg.batch_max && epoch_records < epoch_max_records {
                    match consumer.poll(Duration::ZERO) {
                        None => break,
                        // The fetcher reached the partition's end, past what no message marks
                        // (a transaction's commit marker, a compaction gap): with
                        // `--until-caught-up` it is done, even though no message had the last
                        // offset (`enable.partition.eof`, set for such a run only).
                        Some(Err(KafkaError::PartitionEOF(p))) => {
                            if let Some(stops) = stop_at.as_mut() {
                                stops.remove(&p);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, topic = %topic, "Kafka consumer error");
                            break;
                        }
                        Some(Ok(m)) => {
                            let origin = Origin {
                                topic: m.topic().to_string(),
                                partition: m.partition(),
                                offset: m.offset(),
                            };
                            progress.record(epoch, origin.partition, origin.offset);
                            if let Some(stops) = stop_at.as_mut()
                                && stops
                                    .get(&origin.partition)
                                    .is_some_and(|h| origin.offset + 1 >= *h)
                            {
                                stops.remove(&origin.partition);
                            }
                            session.give(RawMessage {
                                key: m.key().map(<[u8]>::to_vec),
                                payload: m.payload().map(<[u8]>::to_vec),
                                origin,
                                truncated: false,
                            });
                            read += 1;
                            epoch_records += 1;
                        }
                    }
                }
            }
            if read == cfg.batch_max {
                activator.activate();
            } else if partitions.is_empty() {
                // Nothing to read: wake only to move the epoch on.
                activator.activate_after(Duration::from_millis(cfg.epoch_ms));
            } else {
                activator.activate_after(Duration::from_millis(cfg.idle_poll_ms));
            }
        }
    })
}

/// Commits `offsets` (partition -> next offset) for the group.
pub fn commit_offsets(
    consumer: &BaseConsumer,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
    mode: rdkafka::consumer::CommitMode,
) -> anyhow::Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in offsets {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))?;
    }
    consumer
        .commit(&tpl, mode)
        .context("committing input offsets")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_by_the_kind_of_run_and_keep_what_is_set() {
        let mut cpu = SourceConfig::default();
        cpu.resolve(false);
        assert_eq!((cpu.epoch_records(), cpu.in_flight_docs()), (1_000, 5_000));
        let mut llm = SourceConfig::default();
        llm.resolve(true);
        assert_eq!((llm.epoch_records(), llm.in_flight_docs()), (16, 64));
        let mut set = SourceConfig {
            max_in_flight_docs: Some(7),
            ..Default::default()
        };
        set.resolve(true);
        assert_eq!((set.epoch_records(), set.in_flight_docs()), (16, 7));
    }

    #[test]
    fn durable_epochs_become_commits() {
        let mut p = SourceProgress::default();
        p.record(10, 0, 5);
        p.record(10, 0, 7);
        p.record(10, 1, 2);
        p.record(20, 0, 9);
        assert_eq!(p.in_flight(), 4);
        assert!(
            p.take_durable(Some(10)).is_empty(),
            "epoch 10 is not durable yet"
        );
        let c = p.take_durable(Some(11));
        assert_eq!(c, BTreeMap::from([(0, 8), (1, 3)]));
        assert_eq!(p.in_flight(), 1);
        assert_eq!(p.take_durable(None), BTreeMap::from([(0, 10)]));
        assert_eq!(p.in_flight(), 0);
    }
}
