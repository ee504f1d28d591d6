//! Accounting: after verification, every document that reached generation has either at least one
//! QA pair or a dead letter saying that none survived. Pairs of a document stay on the worker and
//! in the epoch of the document, so an epoch's outcomes are complete once the frontier passes it.

use std::collections::{BTreeMap, HashMap};

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;

use crate::epoch::EpochStash;
use crate::verdicts::{Epoch, Verdicts, judge};
use webscale_rl_records::{DeadLetter, Origin, PairOutcome, QaPair, Stage};

/// Per document of an epoch: whether a pair survived, and the dead letters of those that did not.
type Tally = HashMap<(String, Origin), (bool, Vec<DeadLetter>)>;

/// The accounting stage, after verification and decontamination.
pub trait QaAccounting<'s> {
    /// Passes pairs and pair-level dead letters through, and adds one `verify` /
    /// `no_verified_pair` dead letter for each document none of whose pairs survived, carrying
    /// the document's message (for `replay`) and a count of what failed.
    ///
    /// ```
    /// use webscale_rl_operators::qa_accounting::QaAccounting;
    /// use webscale_rl_operators::testing::{document, run_stage};
    /// use webscale_rl_records::{DeadLetter, PairOutcome, Stage};
    ///
    /// let doc = document("d1", "A text.");
    /// let failed = DeadLetter::for_pair(&doc, "student", "Q?", Stage::Verify, "answer_incorrect", "");
    /// let outcome = PairOutcome { doc_id: doc.id.clone(), origin: doc.origin.clone(), result: Err(failed) };
    /// let (pairs, dead) = run_stage(vec![outcome], |outcomes| outcomes.qa_accounting());
    /// assert!(pairs.is_empty());
    /// assert_eq!(dead[1].reason, "no_verified_pair");
    /// assert_eq!(dead[1].detail, "1 pair(s) failed: verify/answer_incorrect x1");
    /// ```
    fn qa_accounting(self) -> Verdicts<'s, (Origin, QaPair)>;
}

impl<'s> QaAccounting<'s> for StreamVec<'s, Epoch, PairOutcome> {
    /// Pairs keep their document's origin: the file sink writes in input order.
    fn qa_accounting(self) -> Verdicts<'s, (Origin, QaPair)> {
        judge(self, Pipeline, "QaAccounting", |default_cap, _info| {
            drop(default_cap);
            let mut stash: EpochStash<Tally> = EpochStash::default();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let (held, docs) = stash.entry(&cap);
                    let mut session = output.session(held);
                    for outcome in data.flat_map(|batch| batch.drain(..)) {
                        let origin = outcome.origin;
                        let doc = docs.entry((outcome.doc_id, origin.clone())).or_default();
                        match outcome.result {
                            Ok(pair) => {
                                doc.0 = true;
                                session.give(Ok((origin, pair)));
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
                });
                while let Some((cap, docs)) = stash.pop_complete(|t| frontier.less_equal(t)) {
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
        })
    }
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
    dead.id = webscale_rl_records::stable_id(&[
        &first.topic,
        &first.partition.to_string(),
        &first.offset.to_string(),
        first.doc_id.as_deref().unwrap_or(""),
        "no_verified_pair",
    ]);
    dead
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{document, run_stage};

    fn pair(doc: &webscale_rl_records::Document, q: &str) -> QaPair {
        QaPair {
            id: webscale_rl_records::qa_id(&doc.id, "p", q),
            doc_id: doc.id.clone(),
            question: q.into(),
            answer: "a".into(),
            domain: "d".into(),
            persona: "p".into(),
            source: None,
            url: None,
            models: Default::default(),
            created_at: 0,
            pipeline_version: String::new(),
            pretrain_text: None,
        }
    }

    #[test]
    fn a_document_with_a_pair_gets_no_summary_and_one_without_gets_exactly_one() {
        let (kept, lost) = (document("kept", "text one"), document("lost", "text two"));
        let fail = |doc, q: &str, reason: &str| {
            DeadLetter::for_pair(doc, "p", q, Stage::Verify, reason, "")
        };
        let outcome = |doc: &webscale_rl_records::Document, result| PairOutcome {
            doc_id: doc.id.clone(),
            origin: doc.origin.clone(),
            result,
        };
        let outcomes = vec![
            outcome(&kept, Err(fail(&kept, "q1", "answer_incorrect"))),
            outcome(&kept, Ok(pair(&kept, "q2"))),
            outcome(&lost, Err(fail(&lost, "q1", "answer_incorrect"))),
            outcome(&lost, Err(fail(&lost, "q2", "not_self_contained"))),
            outcome(&lost, Err(fail(&lost, "q3", "answer_incorrect"))),
        ];
        let (pairs, dead) = run_stage(outcomes, |o| o.qa_accounting());
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].1.doc_id, "kept");
        assert_eq!(pairs[0].0, kept.origin);
        // Three pair-level dead letters pass through, plus one summary for "lost".
        let summaries: Vec<_> = dead
            .iter()
            .filter(|d| d.reason == "no_verified_pair")
            .collect();
        assert_eq!(dead.len(), 5);
        assert_eq!(summaries.len(), 1);
        let summary = summaries[0];
        assert_eq!(summary.doc_id.as_deref(), Some("lost"));
        assert_eq!(
            summary.detail,
            "3 pair(s) failed: verify/answer_incorrect x2, verify/not_self_contained x1"
        );
        // The document's message rides on the summary (for replay), on no pair-level letter.
        assert!(summary.payload.is_some());
        assert!(
            dead.iter()
                .filter(|d| d.reason != "no_verified_pair")
                .all(|d| d.payload.is_none())
        );
    }
}
