//! Accounting: after verification, every document that reached generation has either at least one
//! QA pair or a dead letter saying that none survived. Pairs of a document stay on the worker and
//! in the epoch of the document, so an epoch's outcomes are complete once the frontier passes it.

use std::collections::{BTreeMap, HashMap};

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::operator::Operator;

use crate::record::{DeadLetter, Origin, PairOutcome, QaPair, Stage};

/// Passes pairs and pair-level dead letters through, and adds one `verify` /
/// `no_verified_pair` dead letter for each document none of whose pairs survived.
pub fn qa_accounting<'s>(
    outcomes: StreamVec<'s, u64, PairOutcome>,
) -> (StreamVec<'s, u64, QaPair>, StreamVec<'s, u64, DeadLetter>) {
    let results = outcomes.unary_frontier::<timely::container::CapacityContainerBuilder<
        Vec<Result<QaPair, DeadLetter>>,
    >, _, _, _>(Pipeline, "QaAccounting", |default_cap, _info| {
        drop(default_cap);
        type Tally = (
            Capability<u64>,
            HashMap<(String, Origin), (bool, Vec<DeadLetter>)>,
        );
        let mut epochs: BTreeMap<u64, Tally> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each_stamp(|cap, data| {
                let epoch = *cap.least().expect("a stamp has a time");
                let (held, docs) = epochs
                    .entry(epoch)
                    .or_insert_with(|| (cap.retain_least(0).expect("output 0"), HashMap::new()));
                let mut session = output.session(&*held);
                for batch in data {
                    for outcome in batch.drain(..) {
                        let doc = docs.entry((outcome.doc_id, outcome.origin)).or_default();
                        match outcome.result {
                            Ok(pair) => {
                                doc.0 = true;
                                session.give(Ok(pair));
                            }
                            Err(mut dead) => {
                                // The document's message goes on its summary dead letter
                                // (if none of its pairs survives), not on every pair's.
                                let payload = dead.payload.take();
                                if doc.1.is_empty() {
                                    doc.1.push(DeadLetter {
                                        payload,
                                        ..dead.clone()
                                    });
                                } else {
                                    doc.1.push(dead.clone());
                                }
                                session.give(Err(dead));
                            }
                        }
                    }
                }
            });
            while let Some(entry) = epochs.first_entry() {
                if frontier.less_equal(entry.key()) {
                    break;
                }
                let (cap, docs) = entry.remove();
                let mut session = output.session(&cap);
                let mut docs: Vec<_> = docs
                    .into_iter()
                    .filter(|(_, (any_ok, _))| !any_ok)
                    .collect();
                docs.sort_by(|a, b| a.0.cmp(&b.0));
                for (_, (_, failures)) in docs {
                    session.give(Err(no_verified_pair(&failures)));
                }
            }
        }
    });
    results.ok_err(|r| r)
}

/// Summarises a document's failed pairs: e.g. "3 pairs failed: verify/answer_incorrect x2, ...".
fn no_verified_pair(failures: &[DeadLetter]) -> DeadLetter {
    let first = &failures[0];
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for f in failures {
        *counts
            .entry(format!("{}/{}", f.stage, f.reason))
            .or_default() += 1;
    }
    let detail = format!(
        "{} pair(s) failed: {}",
        failures.len(),
        counts
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut dead = first.clone();
    dead.stage = Stage::Verify;
    dead.reason = "no_verified_pair".into();
    dead.detail = detail;
    dead.id = crate::record::stable_id(&[
        &first.topic,
        &first.partition.to_string(),
        &first.offset.to_string(),
        first.doc_id.as_deref().unwrap_or(""),
        "no_verified_pair",
    ]);
    dead
}
