//! The state changelog: where a stateful stage's partitions write every change, so that the
//! state belongs to the cluster and not to the disk of the machine that made it.
//!
//! This is Kafka Streams' design: each partition of an index has a partition of a compacted
//! changelog topic. Every record the index stores is also written there (key: the record's key,
//! value: the record), every eviction is a tombstone (so compaction bounds the topic), and the
//! local database stays a cache of the changelog that remembers the changelog offset it holds.
//! A worker that opens a partition first replays the changelog from that offset (from the
//! beginning on an empty disk) — so a partition moved to another worker, another process or a new
//! machine is restored, not started empty.
//!
//! The stages see only this trait; `webscale-rl-connectors` implements it over Kafka, and the
//! Kafka runtime gates the input offsets of an epoch behind the acknowledgement of its changelog
//! records ([`StateChangelog::unacknowledged_from`]), as behind its outputs.
//!
//! ```
//! use webscale_rl_records::changelog::{Change, MemoryChangelog, StateChangelog};
//!
//! let log = MemoryChangelog::default();
//! log.write("exact_dedup", 3, 7, b"key", Some(b"record"));
//! log.write("exact_dedup", 3, 8, b"key", None);
//! let mut seen = Vec::new();
//! log.restore("exact_dedup", 3, 0, &mut |c: Change<'_>| {
//!     seen.push((c.offset, c.value.map(|v| v.to_vec())));
//!     Ok(())
//! })
//! .unwrap();
//! assert_eq!(seen, vec![(0, Some(b"record".to_vec())), (1, None)]);
//! assert_eq!(log.acknowledged("exact_dedup", 3), Some(1));
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The LLM response cache's name as a changelogged state.
pub const LLM_CACHE: &str = "llm_cache";

/// Partitions of the LLM response cache: fixed, so that a document's partition never changes.
pub const LLM_CACHE_PARTITIONS: u32 = 32;

/// The response-cache partition of the document `doc_id`: every LLM call about the document is
/// cached there, and the document is routed to the worker that owns it (partition `p` to worker
/// `p % peers`), so a replay of it finds its answers wherever the partition was restored.
///
/// ```
/// use webscale_rl_records::changelog::{LLM_CACHE_PARTITIONS, cache_partition};
/// assert_eq!(cache_partition("doc-1"), cache_partition("doc-1"));
/// assert!(cache_partition("doc-2") < LLM_CACHE_PARTITIONS);
/// ```
pub fn cache_partition(doc_id: &str) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(doc_id.as_bytes()) % LLM_CACHE_PARTITIONS as u64) as u32
}

/// One record of a changelog partition, as a restore hands it over.
#[derive(Clone, Copy, Debug)]
pub struct Change<'a> {
    pub offset: i64,
    pub key: &'a [u8],
    /// `None`: a tombstone (the key was evicted).
    pub value: Option<&'a [u8]>,
}

/// Counts of one restore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub records: u64,
    pub bytes: u64,
}

impl Restored {
    /// Counts `change` (its key and value bytes).
    pub fn count(&mut self, change: &Change<'_>) {
        self.records += 1;
        self.bytes += (change.key.len() + change.value.map_or(0, <[u8]>::len)) as u64;
    }
}

/// Where the partitions of the stateful stages log their changes.
pub trait StateChangelog: Send + Sync {
    /// Appends a change of partition `partition` of the index `index`, made while judging
    /// `epoch`. The write is asynchronous: [`StateChangelog::unacknowledged_from`] says when it is
    /// durable.
    fn write(&self, index: &str, partition: u32, epoch: u64, key: &[u8], value: Option<&[u8]>);

    /// The highest offset of the partition's changelog acknowledged in this run, if any: every
    /// record up to it is durable in the changelog.
    fn acknowledged(&self, index: &str, partition: u32) -> Option<i64>;

    /// Replays the partition's changelog from offset `from` to its end at the time of the call.
    fn restore(
        &self,
        index: &str,
        partition: u32,
        from: i64,
        apply: &mut dyn FnMut(Change<'_>) -> Result<(), String>,
    ) -> Result<Restored, String>;

    /// The earliest epoch with a change not yet acknowledged (`None`: all are): input offsets of
    /// that epoch and later must wait.
    fn unacknowledged_from(&self) -> Option<u64> {
        None
    }

    /// A worker is about to open (and restore) this many partitions (for progress reports).
    fn restore_expected(&self, _partitions: usize) {}
    /// A partition has been restored (for progress reports).
    fn restore_finished(&self, _index: &str, _partition: u32, _restored: Restored) {}
}

/// A stage's handle on the run's changelog (a live handle in its config: never serialized).
#[derive(Clone)]
pub struct Changelog(pub Arc<dyn StateChangelog>);

impl std::fmt::Debug for Changelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Changelog")
    }
}

impl PartialEq for Changelog {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Partition -> its records (key, value); the offset is the position.
type Logs = BTreeMap<(String, u32), Vec<(Vec<u8>, Option<Vec<u8>>)>>;

/// A changelog in memory, acknowledged at once: for tests of the stages and their restore (the
/// Kafka one is tested against a Kafka protocol peer).
#[derive(Clone, Default)]
pub struct MemoryChangelog {
    logs: Arc<Mutex<Logs>>,
}

impl MemoryChangelog {
    /// Records in the partition's log, tombstones included.
    pub fn len(&self, index: &str, partition: u32) -> usize {
        let logs = self.logs.lock().expect("changelog");
        logs.get(&(index.to_string(), partition))
            .map_or(0, Vec::len)
    }

    /// Whether no partition has a record.
    pub fn is_empty(&self) -> bool {
        self.logs
            .lock()
            .expect("changelog")
            .values()
            .all(Vec::is_empty)
    }

    /// Tombstones in the partition's log.
    pub fn tombstones(&self, index: &str, partition: u32) -> usize {
        let logs = self.logs.lock().expect("changelog");
        logs.get(&(index.to_string(), partition))
            .map_or(0, |l| l.iter().filter(|(_, v)| v.is_none()).count())
    }

    /// The handle a stage's config takes.
    pub fn handle(&self) -> Changelog {
        Changelog(Arc::new(self.clone()))
    }
}

impl StateChangelog for MemoryChangelog {
    fn write(&self, index: &str, partition: u32, _epoch: u64, key: &[u8], value: Option<&[u8]>) {
        let mut logs = self.logs.lock().expect("changelog");
        logs.entry((index.to_string(), partition))
            .or_default()
            .push((key.to_vec(), value.map(<[u8]>::to_vec)));
    }

    fn acknowledged(&self, index: &str, partition: u32) -> Option<i64> {
        let n = self.len(index, partition);
        (n > 0).then(|| n as i64 - 1)
    }

    fn restore(
        &self,
        index: &str,
        partition: u32,
        from: i64,
        apply: &mut dyn FnMut(Change<'_>) -> Result<(), String>,
    ) -> Result<Restored, String> {
        let log = {
            let logs = self.logs.lock().expect("changelog");
            logs.get(&(index.to_string(), partition))
                .cloned()
                .unwrap_or_default()
        };
        let mut restored = Restored::default();
        for (offset, (key, value)) in log.iter().enumerate().skip(from.max(0) as usize) {
            let change = Change {
                offset: offset as i64,
                key,
                value: value.as_deref(),
            };
            restored.count(&change);
            apply(change)?;
        }
        Ok(restored)
    }
}
