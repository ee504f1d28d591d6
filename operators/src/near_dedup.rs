//! Near-duplicate detection: streaming MinHash LSH across workers.
//!
//! Three steps, feed-forward, each judging an epoch only once it is complete:
//! 1. On the document's worker (its "home"): the MinHash signature, one key per LSH band and a
//!    4-bit sketch of the signature ([`crate::minhash`]). The document stays parked at home; its
//!    band keys travel, one message per owning worker, to the workers that own the keys' index
//!    partitions ([`crate::lsh_index`]).
//! 2. An owner sorts the epoch's documents by (origin offset, origin hash, id), an order that does
//!    not depend on the number of workers, and asks its partitions about each key in that order: a
//!    key already held by an earlier document (of an earlier epoch, or earlier in this one) is a
//!    hit; a new key is inserted. With `verify_jaccard` a hit only counts when the Jaccard
//!    estimated from the two sketches reaches it. Hits go back to the document's home.
//! 3. At home, a document with a hit becomes a `near_duplicate` dead letter naming the earlier
//!    document and the estimated Jaccard (the best of its hits); the others pass.
//!
//! Every duplicate and every passing document leaves its new keys in the index, so verdicts are
//! those of a sequential pass in that order, whatever the worker count. A replay of the same
//! message (same origin and id) finds its own keys and is not a copy of itself.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;

use crate::epoch::EpochStash;
use crate::lsh_index::{IndexParams, Query, open_owned, partition_of};
use crate::minhash::{MinHasher, NearDedupConfig, sketch, sketch_jaccard};
use crate::verdicts::{Epoch, Verdicts};
use webscale_rl_records::{DeadLetter, Document, Stage};

/// A document's band keys owned by one worker, with what the index stores about the document.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DocBands {
    /// The worker owning every key in `bands`.
    owner: u32,
    home: u32,
    /// The document's number at its home.
    local: u64,
    offset: i64,
    origin: u64,
    id: String,
    sketch: Vec<u8>,
    /// (band index, key).
    bands: Vec<(u8, u64)>,
}

/// A band of a document collided with an earlier document.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Hit {
    home: u32,
    local: u64,
    band: u8,
    earlier: String,
    jaccard: f32,
}

impl Hit {
    /// The hit reported when a document has several: highest Jaccard, then lowest band.
    fn better_than(&self, other: &Hit) -> bool {
        (self.jaccard, std::cmp::Reverse(self.band))
            > (other.jaccard, std::cmp::Reverse(other.band))
    }
}

/// Identifies a message: a replay has the same one, a copy at another offset does not.
fn origin_hash(doc: &Document) -> u64 {
    let o = &doc.origin;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [
        o.topic.as_bytes(),
        &o.partition.to_le_bytes(),
        &o.offset.to_le_bytes(),
        doc.id.as_bytes(),
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.digest()
}

/// Epoch state at a document's home.
#[derive(Default)]
struct HomeEpoch {
    docs: Vec<(u64, Document)>,
    hits: HashMap<u64, Hit>,
}

/// The near-duplicate stage (MinHash signatures, LSH bands, a verified Jaccard estimate).
pub trait NearDedup<'s> {
    /// Drops documents that are near-duplicates of earlier ones (`near_duplicate` dead letters
    /// naming the earlier id and the estimated Jaccard similarity).
    ///
    /// The index lives in `cfg.state_dir` (or in memory when unset); each worker opens the
    /// partitions it owns when the dataflow is built, and panics if they cannot be opened: call
    /// [`crate::lsh_index::check_state_dir`] first to report a bad setting once. The stage holds
    /// an epoch until it is complete.
    ///
    /// ```
    /// use webscale_rl_operators::minhash::NearDedupConfig;
    /// use webscale_rl_operators::near_dedup::NearDedup;
    /// use webscale_rl_operators::testing::{document, run_stage};
    ///
    /// let text = "Rivers carry water from the hills down to the sea through valleys and plains, \
    ///             feeding farms, towns and forests along the way for many hundreds of miles.";
    /// let copy = format!("{text} Updated daily.");
    /// let input = vec![document("first", text), document("second", &copy)];
    /// let (kept, dropped) = run_stage(input, |docs| docs.near_dedup(NearDedupConfig::default()));
    /// assert_eq!(kept.len(), 1);
    /// assert_eq!(dropped[0].reason, "near_duplicate");
    /// ```
    fn near_dedup(self, cfg: NearDedupConfig) -> Verdicts<'s, Document>;
}

impl<'s> NearDedup<'s> for StreamVec<'s, Epoch, Document> {
    fn near_dedup(self, cfg: NearDedupConfig) -> Verdicts<'s, Document> {
        near_dedup(self, cfg)
    }
}

// The verdict `Result`s only live inside the stage, split at once.
#[allow(clippy::result_large_err)]
fn near_dedup<'s>(
    docs: StreamVec<'s, Epoch, Document>,
    cfg: NearDedupConfig,
) -> Verdicts<'s, Document> {
    if let Err(e) = cfg.validate() {
        panic!("{e}");
    }
    let scope = docs.scope();
    let worker = scope.index() as u32;
    let peers = scope.peers() as u32;
    let partitions = cfg.partitions();

    let mut hasher = MinHasher::new(&cfg);
    let mut sig = Vec::new();
    let mut next_local = 0u64;
    let mut by_owner: Vec<Vec<(u8, u64)>> = vec![Vec::new(); peers as usize];
    let signed = docs.flat_map(move |doc| {
        let local = next_local;
        next_local += 1;
        let mut out: Vec<Result<(u64, Document), DocBands>> = Vec::new();
        if hasher.signature_of(&doc, &mut sig) {
            for (band, key) in hasher.band_hashes(&sig).into_iter().enumerate() {
                let owner = partition_of(key, partitions) % peers;
                by_owner[owner as usize].push((band as u8, key));
            }
            let (origin, sketch) = (origin_hash(&doc), sketch(&sig));
            for (owner, bands) in by_owner.iter_mut().enumerate() {
                if !bands.is_empty() {
                    out.push(Err(DocBands {
                        owner: owner as u32,
                        home: worker,
                        local,
                        offset: doc.origin.offset,
                        origin,
                        id: doc.id.clone(),
                        sketch: sketch.clone(),
                        bands: std::mem::take(bands),
                    }));
                }
            }
        }
        out.push(Ok((local, doc)));
        out
    });
    let (parked, bands) = signed
        .container::<Vec<Result<(u64, Document), DocBands>>>()
        .ok_err(|v| v);

    let verify = cfg.verify_jaccard;
    let hashes = cfg.num_hashes();
    let hits = bands.unary_frontier(
        Exchange::new(|d: &DocBands| d.owner as u64),
        "NearDedupIndex",
        move |default_cap, _info| {
            drop(default_cap);
            let params = IndexParams::new(&cfg);
            // `slot[p]`: where partition p sits in `parts`, if this worker owns it.
            let (slot, mut parts) = open_owned(&params, worker, peers);
            let mut queued: Vec<Vec<(u32, u8, u64)>> = vec![Vec::new(); parts.len()];
            let mut stash: EpochStash<Vec<DocBands>> = EpochStash::default();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let (_, docs) = stash.entry(&cap);
                    data.for_each(|batch| docs.append(batch));
                });
                while let Some((cap, mut docs)) = stash.pop_complete(|t| frontier.less_equal(t)) {
                    let epoch = *cap.time();
                    docs.sort_by(|a, b| {
                        (a.offset, a.origin, &a.id).cmp(&(b.offset, b.origin, &b.id))
                    });
                    for (di, doc) in docs.iter().enumerate() {
                        for &(band, key) in &doc.bands {
                            let s = slot[partition_of(key, partitions) as usize];
                            queued[s].push((di as u32, band, key));
                        }
                    }
                    let mut session = output.session(&cap);
                    for (part, queue) in parts.iter_mut().zip(queued.iter_mut()) {
                        if queue.is_empty() {
                            continue;
                        }
                        let queries: Vec<Query<'_>> = queue
                            .iter()
                            .map(|&(di, _, key)| {
                                let d = &docs[di as usize];
                                Query {
                                    key,
                                    origin: d.origin,
                                    id: &d.id,
                                    sketch: &d.sketch,
                                }
                            })
                            .collect();
                        part.apply_epoch(epoch, &queries, |qi, earlier| {
                            let (di, band, _) = queue[qi];
                            let d = &docs[di as usize];
                            let jaccard = sketch_jaccard(&d.sketch, earlier.sketch, hashes);
                            // The same document sent again (a replay of a dead letter, a
                            // re-sent crawl record): itself, not a copy.
                            if jaccard >= verify && earlier.id != d.id {
                                session.give(Hit {
                                    home: d.home,
                                    local: d.local,
                                    band,
                                    earlier: earlier.id.to_string(),
                                    jaccard: jaccard as f32,
                                });
                            }
                        })
                        .unwrap_or_else(|e| panic!("near_dedup worker {worker}: {e}"));
                        queue.clear();
                    }
                }
                // Durability does not wait for the next epoch: an idle stream still syncs, and
                // the end of the input syncs everything.
                for part in &mut parts {
                    let synced = if frontier.is_empty() {
                        part.sync()
                    } else {
                        part.sync_if_due()
                    };
                    synced.unwrap_or_else(|e| panic!("near_dedup worker {worker}: {e}"));
                }
            }
        },
    );

    let verdicts = parked.binary_frontier(
        hits,
        Pipeline,
        Exchange::new(|h: &Hit| h.home as u64),
        "NearDedupVerdict",
        |default_cap, _info| {
            drop(default_cap);
            let mut stash: EpochStash<HomeEpoch> = EpochStash::default();
            move |(docs_in, docs_frontier), (hits_in, hits_frontier), output| {
                docs_in.for_each_stamp(|cap, data| {
                    let (_, entry) = stash.entry(&cap);
                    data.for_each(|batch| entry.docs.append(batch));
                });
                hits_in.for_each_stamp(|cap, data| {
                    let (_, entry) = stash.entry(&cap);
                    for batch in data {
                        for hit in batch.drain(..) {
                            match entry.hits.get(&hit.local) {
                                Some(best) if !hit.better_than(best) => {}
                                _ => {
                                    entry.hits.insert(hit.local, hit);
                                }
                            }
                        }
                    }
                });
                let open = |t: &Epoch| docs_frontier.less_equal(t) || hits_frontier.less_equal(t);
                while let Some((cap, HomeEpoch { docs, mut hits })) = stash.pop_complete(open) {
                    let mut session = output.session(&cap);
                    for (local, doc) in docs {
                        let verdict = match hits.remove(&local) {
                            Some(hit) => Err(DeadLetter::for_document(
                                &doc,
                                Stage::NearDedup,
                                "near_duplicate",
                                format!("{} jaccard={:.3}", hit.earlier, hit.jaccard),
                            )),
                            None => Ok(doc),
                        };
                        session.give(verdict);
                    }
                }
            }
        },
    );
    Verdicts::split(verdicts.container::<Vec<Result<Document, DeadLetter>>>())
}
