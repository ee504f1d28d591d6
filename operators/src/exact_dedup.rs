//! Exact dedup: drops documents whose normalized text was already seen.
//!
//! Documents are exchanged by the hash of their normalized text, so the worker that owns a hash
//! sees every copy. An epoch is judged only once it is complete, with its documents in a fixed order
//! (hash, id, origin): which copy wins does not depend on arrival order or on the number of workers.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

use crate::normalize::{NormalizeConfig, content_hash};
use crate::record::{DeadLetter, Document, Stage};

/// Settings of the exact dedup stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExactDedupConfig {
    pub enabled: bool,
    pub normalize: NormalizeConfig,
}

impl Default for ExactDedupConfig {
    fn default() -> Self {
        ExactDedupConfig {
            enabled: true,
            normalize: NormalizeConfig::default(),
        }
    }
}

/// The first copy of a text: its id, and its origin's hash so that a replay of the same message
/// is recognised as itself rather than as a copy.
struct FirstSeen {
    id: Box<str>,
    origin: u64,
}

fn origin_hash(doc: &Document) -> u64 {
    let o = &doc.origin;
    xxhash_rust::xxh3::xxh3_64(
        format!("{}\u{0}{}\u{0}{}", o.topic, o.partition, o.offset).as_bytes(),
    )
}

/// Keeps the first copy of each normalized text; later copies become `duplicate_of` dead letters.
pub fn exact_dedup<'s, T: Timestamp + TotalOrder>(
    docs: StreamVec<'s, T, Document>,
    cfg: ExactDedupConfig,
) -> (StreamVec<'s, T, Document>, StreamVec<'s, T, DeadLetter>) {
    let norm = cfg.normalize.clone();
    let hashed = docs.map(move |doc| (content_hash(&doc.text, &norm), doc));
    let verdicts = hashed.unary_frontier(
        Exchange::new(|(hash, _): &(u64, Document)| *hash),
        "ExactDedup",
        |default_cap, _info| {
            drop(default_cap);
            let mut seen: HashMap<u64, FirstSeen> = HashMap::new();
            // Per open epoch: its capability and its (text hash, document) pairs.
            type Pending<T> = BTreeMap<T, (Capability<T>, Vec<(u64, Document)>)>;
            let mut pending: Pending<T> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let time = cap.least().expect("a stamp has a time").clone();
                    let entry = pending
                        .entry(time)
                        .or_insert_with(|| (cap.retain_least(0).expect("output 0"), Vec::new()));
                    for batch in data {
                        entry.1.append(batch);
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (cap, mut docs) = entry.remove();
                    docs.sort_by(|a, b| {
                        (a.0, &a.1.id, &a.1.origin).cmp(&(b.0, &b.1.id, &b.1.origin))
                    });
                    let mut session = output.session(&cap);
                    for (hash, doc) in docs {
                        let origin = origin_hash(&doc);
                        let verdict = match seen.get(&hash) {
                            Some(first) if first.origin != origin => Err(DeadLetter::for_document(
                                &doc,
                                Stage::ExactDedup,
                                "duplicate_of",
                                first.id.to_string(),
                            )),
                            Some(_) => Ok(doc),
                            None => {
                                seen.insert(
                                    hash,
                                    FirstSeen {
                                        id: doc.id.clone().into(),
                                        origin,
                                    },
                                );
                                Ok(doc)
                            }
                        };
                        session.give(verdict);
                    }
                }
            }
        },
    );
    verdicts
        .container::<Vec<Result<Document, DeadLetter>>>()
        .ok_err(|v| v)
}
