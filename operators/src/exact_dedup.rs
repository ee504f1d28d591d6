//! Exact dedup: drops documents whose normalized text was already seen.
//!
//! Documents are exchanged by the hash of their normalized text to the worker that owns the
//! hash's partition, so that worker sees every copy. An epoch is judged only once it is complete,
//! with its documents in a fixed order (hash, id, origin): which copy wins does not depend on
//! arrival order or on the number of workers.
//!
//! The first-seen table is the same partitioned, append-only index the near-dedup stage uses
//! ([`crate::lsh_index`]) with one key per document and no sketch: in memory 4.4–6.7 bytes per
//! document (a tag and a record number), the ids on disk under `<state_dir>/exact_dedup/` —
//! or, without a `state_dir`, in an in-memory database (tests, short runs). The oldest entries
//! are evicted beyond `max_documents`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::vec::Map;

use crate::epoch::EpochStash;
use crate::lsh_index::{
    DEFAULT_PARTITIONS, IndexParams, MAX_KEYS_PER_PARTITION, Query, open_owned, partition_of,
};
use crate::normalize::{NormalizeConfig, content_hash};
use crate::verdicts::{Epoch, Verdicts, judge};
use crate::words::normalized;
use webscale_rl_records::{DeadLetter, Document, Stage};

/// Settings of the exact dedup stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExactDedupConfig {
    pub enabled: bool,
    pub normalize: NormalizeConfig,
    /// Where the first-seen index lives (`<state_dir>/exact_dedup/`); unset: in memory. The engine
    /// sets a default (see the README) so that memory stays bounded and a restart remembers.
    pub state_dir: Option<PathBuf>,
    /// Index files, each owned by one worker; fixed for a `state_dir`. Unset:
    /// [`DEFAULT_PARTITIONS`], except for a run's own state, which the engine sizes (README).
    pub partitions: Option<u32>,
    /// Documents remembered (in total), the oldest forgotten first; 0 = as many as the index
    /// holds (16.7 M per partition).
    pub max_documents: u64,
    /// The index is fsynced at least this often; 0 = every epoch (a resumable file run: its
    /// checkpoints must never be ahead of what the index remembers).
    pub sync_interval_ms: u64,
    /// Not a setting: set by a run that syncs the index itself ([`crate::lsh_index::IndexSync`]).
    #[serde(skip)]
    pub index_sync: Option<crate::lsh_index::IndexSync>,
    /// Not a setting: set by a Kafka run whose state has changelog topics ([`webscale_rl_records::changelog`]).
    #[serde(skip)]
    pub changelog: Option<webscale_rl_records::changelog::Changelog>,
    /// Not a setting: set by a Kafka run without changelogs whose group has history; a
    /// partition this process would create empty is then an error with this cause.
    #[serde(skip)]
    pub refuse_new_partitions: Option<String>,
}

impl Default for ExactDedupConfig {
    fn default() -> Self {
        ExactDedupConfig {
            enabled: true,
            normalize: NormalizeConfig::default(),
            state_dir: None,
            partitions: None,
            max_documents: 100_000_000,
            sync_interval_ms: 5000,
            index_sync: None,
            changelog: None,
            refuse_new_partitions: None,
        }
    }
}

impl ExactDedupConfig {
    /// The partition count: [`ExactDedupConfig::partitions`], or [`DEFAULT_PARTITIONS`].
    pub fn partitions(&self) -> u32 {
        self.partitions.unwrap_or(DEFAULT_PARTITIONS)
    }

    fn index_params(&self) -> IndexParams {
        let partitions = self.partitions().max(1);
        let max_keys = match self.max_documents {
            0 => MAX_KEYS_PER_PARTITION,
            n => n.div_ceil(partitions as u64).min(MAX_KEYS_PER_PARTITION),
        };
        let normalize = serde_json::to_string(&self.normalize).unwrap_or_default();
        IndexParams {
            name: "exact_dedup",
            state_dir: self.state_dir.clone(),
            partitions,
            // The content hash depends on the normalization: another one must not mix in.
            fingerprint: xxhash_rust::xxh3::xxh3_64(
                format!("exact_dedup/v1\n{normalize}").as_bytes(),
            ),
            sketch_len: 0,
            max_keys,
            ttl: 0,
            sync_interval: Duration::from_millis(self.sync_interval_ms),
            cache_bytes: (16 << 20) / partitions as usize,
            on_demand: self.index_sync.clone(),
            changelog: self.changelog.clone(),
            refuse_new: self.refuse_new_partitions.clone(),
        }
    }

    /// A bad setting or a `state_dir` written with other partitions, before workers start.
    pub fn check(&self) -> Result<(), String> {
        if self.partitions() == 0 {
            return Err("exact_dedup.partitions must be at least 1".into());
        }
        crate::lsh_index::check_layout(self.state_dir.as_deref(), "exact_dedup", self.partitions())
            .map_err(|e| e.to_string())
    }
}

fn origin_hash(doc: &Document) -> u64 {
    let o = &doc.origin;
    xxhash_rust::xxh3::xxh3_64(
        format!("{}\u{0}{}\u{0}{}", o.topic, o.partition, o.offset).as_bytes(),
    )
}

/// The exact dedup stage.
pub trait ExactDedup<'s> {
    /// Keeps the first copy of each normalized text; later copies become `duplicate_of` dead
    /// letters naming the id they copy. Each worker opens the index partitions it owns when the
    /// dataflow is built, and panics if they cannot be opened: call [`ExactDedupConfig::check`]
    /// first to report a bad setting once.
    ///
    /// ```
    /// use webscale_rl_operators::exact_dedup::{ExactDedup, ExactDedupConfig};
    /// use webscale_rl_operators::testing::{document, run_stage};
    ///
    /// let input = vec![document("b", "Same  TEXT."), document("a", "same text")];
    /// let (kept, copies) = run_stage(input, |docs| docs.exact_dedup(ExactDedupConfig::default()));
    /// // Within an epoch the order is fixed (text hash, then id): "a" wins though read second.
    /// assert_eq!(kept[0].id, "a");
    /// assert_eq!((copies[0].reason.as_str(), copies[0].detail.as_str()), ("duplicate_of", "a"));
    /// ```
    fn exact_dedup(self, cfg: ExactDedupConfig) -> Verdicts<'s, Document>;
}

impl<'s> ExactDedup<'s> for StreamVec<'s, Epoch, Document> {
    fn exact_dedup(self, cfg: ExactDedupConfig) -> Verdicts<'s, Document> {
        let scope = self.scope();
        let (worker, peers) = (scope.index() as u32, scope.peers() as u32);
        let params = cfg.index_params();
        let partitions = params.partitions;
        let norm = cfg.normalize.clone();
        // The quality filter's pass left the normalized text on the document (with the default
        // rules); other rules, or no filter before, normalize here.
        let hashed = self.map(move |doc| match normalized(&doc, &norm) {
            Some(words) => (xxhash_rust::xxh3::xxh3_64(words.text.as_bytes()), doc),
            None => (content_hash(&doc.text, &norm), doc),
        });
        let route =
            move |(hash, _): &(u64, Document)| (partition_of(*hash, partitions) % peers) as u64;
        judge(
            hashed,
            Exchange::new(route),
            "ExactDedup",
            move |default_cap, _info| {
                drop(default_cap);
                // `slot[p]`: where partition p sits in `parts`, if this worker owns it.
                let (slot, mut parts) = open_owned(&params, worker, peers);
                // Per open epoch: its (text hash, document) pairs.
                let mut stash: EpochStash<Vec<(u64, Document)>> = EpochStash::default();
                let mut queued: Vec<Vec<usize>> = vec![Vec::new(); parts.len()];
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| {
                        let (_, docs) = stash.entry(&cap);
                        data.for_each(|batch| docs.append(batch));
                    });
                    while let Some((cap, mut docs)) = stash.pop_complete(|t| frontier.less_equal(t))
                    {
                        let epoch = *cap.time();
                        docs.sort_by(|a, b| {
                            (a.0, &a.1.id, &a.1.origin).cmp(&(b.0, &b.1.id, &b.1.origin))
                        });
                        let origins: Vec<u64> = docs.iter().map(|(_, d)| origin_hash(d)).collect();
                        for (di, (hash, _)) in docs.iter().enumerate() {
                            queued[slot[partition_of(*hash, partitions) as usize]].push(di);
                        }
                        // Document index -> the id it duplicates.
                        let mut duplicate_of: Vec<Option<String>> = vec![None; docs.len()];
                        for (part, queue) in parts.iter_mut().zip(queued.iter_mut()) {
                            if queue.is_empty() {
                                continue;
                            }
                            let queries: Vec<Query<'_>> = queue
                                .iter()
                                .map(|&di| Query {
                                    key: docs[di].0,
                                    origin: origins[di],
                                    id: &docs[di].1.id,
                                    sketch: &[],
                                })
                                .collect();
                            part.apply_epoch(epoch, &queries, |qi, earlier| {
                                // The same document sent again (a replayed dead letter, a re-sent
                                // record) is itself, not a copy: same id, same text.
                                if earlier.id != docs[queue[qi]].1.id {
                                    duplicate_of[queue[qi]] = Some(earlier.id.to_string());
                                }
                            })
                            .unwrap_or_else(|e| panic!("exact_dedup worker {worker}: {e}"));
                            part.sync_if_due()
                                .unwrap_or_else(|e| panic!("exact_dedup worker {worker}: {e}"));
                            queue.clear();
                        }
                        let mut session = output.session(&cap);
                        for ((_, doc), dup) in docs.into_iter().zip(duplicate_of) {
                            session.give(match dup {
                                Some(first) => Err(DeadLetter::for_document(
                                    &doc,
                                    Stage::ExactDedup,
                                    "duplicate_of",
                                    first,
                                )),
                                None => Ok(doc),
                            });
                        }
                    }
                    if frontier.is_empty() {
                        for part in &mut parts {
                            part.sync()
                                .unwrap_or_else(|e| panic!("exact_dedup worker {worker}: {e}"));
                        }
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use timely::dataflow::InputHandleVec;
    use timely::dataflow::operators::{Inspect, Probe};

    use super::*;
    use crate::lsh_index::Partition;
    use webscale_rl_records::Origin;

    fn doc(id: &str, text: &str, offset: i64) -> Document {
        Document {
            id: id.into(),
            text: text.into(),
            url: None,
            source: None,
            meta: None,
            filter_model: None,
            origin: Origin {
                topic: "t".into(),
                partition: 0,
                offset,
            },
            words: Default::default(),
        }
    }

    /// Runs `epochs` of documents through the stage on `workers` threads: (kept ids, (dead id,
    /// duplicate of)).
    fn run(
        cfg: ExactDedupConfig,
        workers: usize,
        epochs: Vec<Vec<Document>>,
    ) -> (Vec<String>, Vec<(String, String)>) {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let dead = Arc::new(Mutex::new(Vec::new()));
        let (k, d) = (kept.clone(), dead.clone());
        timely::execute(timely::Config::process(workers), move |worker| {
            let mut input = InputHandleVec::<u64, Document>::new();
            let (k, d) = (k.clone(), d.clone());
            let probe = worker.dataflow(|scope| {
                let verdicts = input.to_stream(scope).exact_dedup(cfg.clone());
                verdicts
                    .passed
                    .inspect(move |doc| k.lock().unwrap().push(doc.id.clone()));
                verdicts
                    .rejected
                    .inspect(move |dl| {
                        d.lock()
                            .unwrap()
                            .push((dl.doc_id.clone().unwrap(), dl.detail.clone()))
                    })
                    .probe()
                    .0
            });
            if worker.index() == 0 {
                for (t, docs) in epochs.iter().enumerate() {
                    input.advance_to(t as u64);
                    for doc in docs {
                        input.send(doc.clone());
                    }
                }
            }
            input.advance_to(epochs.len() as u64);
            while probe.less_than(&(epochs.len() as u64)) {
                worker.step();
            }
        })
        .unwrap();
        let mut kept = kept.lock().unwrap().clone();
        let mut dead = dead.lock().unwrap().clone();
        kept.sort();
        dead.sort();
        (kept, dead)
    }

    #[test]
    fn the_first_copy_wins_in_a_fixed_order_and_a_replay_is_itself() {
        let epochs = vec![
            vec![
                doc("b", "Same  TEXT.", 1),
                doc("a", "same text", 2),
                doc("c", "other", 3),
            ],
            // A later copy, the replay of message 3 (same origin) and document "a" sent again
            // as a new message (a replayed dead letter): neither is a copy of itself.
            vec![
                doc("d", "SAME TEXT", 4),
                doc("c", "other", 3),
                doc("a", "same text", 9),
            ],
        ];
        for workers in [1, 3] {
            let (kept, dead) = run(ExactDedupConfig::default(), workers, epochs.clone());
            // Within an epoch the order is (hash, id, origin): "a" beats "b" although read later.
            assert_eq!(kept, vec!["a", "a", "c", "c"], "{workers} workers");
            assert_eq!(
                dead,
                vec![("b".into(), "a".into()), ("d".into(), "a".into())],
                "{workers} workers"
            );
        }
    }

    #[test]
    fn a_state_dir_remembers_across_runs_and_keeps_memory_small() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ExactDedupConfig {
            state_dir: Some(dir.path().to_path_buf()),
            partitions: Some(4),
            ..Default::default()
        };
        cfg.check().unwrap();
        let first = (0..500)
            .map(|i| doc(&format!("d{i}"), &format!("text number {i}"), i))
            .collect();
        let (kept, dead) = run(cfg.clone(), 2, vec![first]);
        assert_eq!((kept.len(), dead.len()), (500, 0));
        // Another run (another worker count) sees yesterday's documents.
        let again = vec![vec![doc("x", "TEXT number 7", 1_000)]];
        let (kept, dead) = run(cfg.clone(), 3, again);
        assert!(kept.is_empty());
        assert_eq!(dead, vec![("x".into(), "d7".into())]);
        assert!(
            dir.path()
                .join("exact_dedup/part-0000-of-0004.redb")
                .exists()
        );
        // Another partition count on the same directory: a clear error before starting.
        let other = ExactDedupConfig {
            partitions: Some(8),
            ..cfg
        };
        assert!(other.check().unwrap_err().contains("partitions"));
        // In memory: a few bytes per document for the whole index.
        let params = ExactDedupConfig::default().index_params();
        let mut part = Partition::open(
            0,
            &IndexParams {
                partitions: 1,
                ..params
            },
        )
        .unwrap();
        let queries: Vec<(u64, String)> = (0..100_000u64)
            .map(|i| {
                (
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    format!("document-{i}"),
                )
            })
            .collect();
        let q: Vec<Query<'_>> = queries
            .iter()
            .map(|(key, id)| Query {
                key: *key,
                origin: 0,
                id,
                sketch: &[],
            })
            .collect();
        part.apply_epoch(1, &q, |_, _| {}).unwrap();
        let per_doc = part.memory_bytes() as f64 / 100_000.0;
        assert!(per_doc <= 8.0, "{per_doc} bytes per document");
    }
}
