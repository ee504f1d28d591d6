//! The asynchronous LLM operator that every LLM stage is built on.
//!
//! Requests go to an [`LlmService`] (a tokio runtime behind it) and the timely worker never waits:
//! the operator keeps, per epoch, a retained capability and the number of calls in flight; replies
//! come back through a channel and wake the operator with a `SyncActivator`. An epoch's capability
//! is released only when the input frontier has passed it and none of its calls is in flight, so
//! the durable frontier — and with it the offset commit — waits for the LLM.
//!
//! Two failures never reach the stage's reply handler:
//! * a *transient* failure (a fault of the world: shutdown, the LLM unreachable) keeps its call
//!   open for good — the epoch is never released, no offset passes the document, and the engine,
//!   which stops on such faults, redoes it after a restart. Never a dead letter.
//! * `context_too_long`, the first time: the call is retried once with the document cut to half
//!   ([`LlmRequest::cut_document`]); a second refusal reaches the handler (a dead letter).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;

use crate::epoch::EpochStash;
use crate::llm_call::{LlmReply, LlmRequest, LlmService};
use crate::verdicts::{Epoch, Verdicts, judge};
use webscale_rl_records::DeadLetter;
use webscale_rl_records::changelog::cache_partition;

/// What an LLM stage's item is about: the document whose response-cache partition its calls use
/// (the graph routes each document to the worker owning that partition, so a replay of it finds
/// its answers where the partition was restored).
pub trait AboutDocument {
    fn document_id(&self) -> &str;
}

impl AboutDocument for webscale_rl_records::Document {
    fn document_id(&self) -> &str {
        &self.id
    }
}

impl AboutDocument for webscale_rl_records::QaCandidate {
    fn document_id(&self) -> &str {
        &self.doc.id
    }
}

/// A document's candidates, judged in one call.
impl<T: AboutDocument> AboutDocument for Vec<T> {
    fn document_id(&self) -> &str {
        self.first().map_or("", AboutDocument::document_id)
    }
}

/// Tests: the text is its own document.
impl AboutDocument for String {
    fn document_id(&self) -> &str {
        self
    }
}

/// What a stage makes of a reply.
pub enum Verdict<I, O> {
    /// Final: outputs and/or dead letters.
    Done(Vec<Result<O, DeadLetter>>),
    /// Ask again (e.g. an off-list domain), with the item and the next attempt's request.
    Retry(I, LlmRequest),
}

/// Maps each item through one LLM call (plus retries the stage asks for).
/// `request` builds the first call; `reply` turns (item, reply, attempt) into a verdict.
pub fn llm_stage<'s, I, O, Q, R>(
    items: StreamVec<'s, Epoch, I>,
    name: &str,
    service: Arc<dyn LlmService>,
    mut request: Q,
    mut reply: R,
) -> Verdicts<'s, O>
where
    I: AboutDocument + 'static,
    O: 'static,
    Q: FnMut(&I) -> Result<LlmRequest, DeadLetter> + 'static,
    R: FnMut(I, LlmReply, u32) -> Verdict<I, O> + 'static,
{
    let scope = items.scope();
    judge(items, Pipeline, name, move |default_cap, info| {
        drop(default_cap);
        let activator = Arc::new(scope.worker().sync_activator_for(info.address.to_vec()));
        let replies: Arc<Mutex<Vec<(u64, LlmReply)>>> = Arc::default();
        // Calls in flight: ticket -> (epoch, item, attempt, request kept for one cut retry).
        let mut waiting: HashMap<u64, (u64, I, u32, Option<LlmRequest>)> = HashMap::new();
        // Calls that failed transiently: held (with their epochs) until the engine stops.
        let mut held: Vec<(u64, I)> = Vec::new();
        // Per open epoch: its calls in flight.
        let mut epochs: EpochStash<usize> = EpochStash::default();
        let mut next_ticket = 0u64;
        let submit = {
            let replies = replies.clone();
            let activator = activator.clone();
            let service = service.clone();
            move |ticket: u64, req: LlmRequest| {
                let replies = replies.clone();
                let activator = activator.clone();
                service.submit(
                    req,
                    Box::new(move |r| {
                        replies.lock().expect("replies").push((ticket, r));
                        let _ = activator.activate();
                    }),
                );
            }
        };
        move |(input, frontier), output| {
            input.for_each_stamp(|cap, data| {
                let epoch = *cap.least().expect("a stamp has a time");
                for batch in data {
                    for item in batch.drain(..) {
                        match request(&item) {
                            Ok(mut req) => {
                                req.cache_partition = Some(cache_partition(item.document_id()));
                                *epochs.entry(&cap).1 += 1;
                                let ticket = next_ticket;
                                next_ticket += 1;
                                let keep = req.document.is_some().then(|| req.clone());
                                waiting.insert(ticket, (epoch, item, 0, keep));
                                submit(ticket, req);
                            }
                            Err(dead) => {
                                output.session(&cap).give(Err(dead));
                            }
                        }
                    }
                }
            });
            let arrived = std::mem::take(&mut *replies.lock().expect("replies"));
            for (ticket, answer) in arrived {
                let (epoch, item, attempt, keep) =
                    waiting.remove(&ticket).expect("a reply answers a call");
                match &answer {
                    Err(f) if f.transient => {
                        held.push((epoch, item));
                        continue;
                    }
                    Err(f) if f.kind == "context_too_long" => {
                        if let Some(cut) = keep.as_ref().and_then(LlmRequest::cut_document) {
                            waiting.insert(ticket, (epoch, item, attempt, None));
                            submit(ticket, cut);
                            continue;
                        }
                    }
                    _ => {}
                }
                match reply(item, answer, attempt) {
                    Verdict::Done(results) => {
                        let (cap, in_flight) =
                            epochs.get_mut(epoch).expect("epoch of a call in flight");
                        output.session(cap).give_iterator(results.into_iter());
                        *in_flight -= 1;
                    }
                    Verdict::Retry(item, mut req) => {
                        req.cache_partition = Some(cache_partition(item.document_id()));
                        let keep = req.document.is_some().then(|| req.clone());
                        waiting.insert(ticket, (epoch, item, attempt + 1, keep));
                        submit(ticket, req);
                    }
                }
            }
            epochs.retain(|epoch, in_flight| *in_flight > 0 || frontier.less_equal(&epoch));
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use timely::dataflow::operators::Inspect;
    use timely::dataflow::operators::core::Probe;
    use timely::dataflow::{InputHandleVec, ProbeHandle};

    use super::*;
    use crate::llm_call::{Prompt, StageModel, prompt};
    use webscale_rl_records::Stage;

    use crate::testing::{FakeLlm, answer, failure};

    /// Runs `docs` through an `llm_stage` answering with `answer`; returns the outputs, the
    /// failure kinds the handler saw, the requests sent and whether epoch 0 completed.
    fn run(
        docs: &[&str],
        answer: impl Fn(&LlmRequest) -> LlmReply + Send + Sync + 'static,
    ) -> (Vec<String>, Vec<String>, Vec<LlmRequest>, bool) {
        let fake = FakeLlm::new(answer);
        let service: Arc<dyn LlmService> = fake.clone();
        let docs: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
        let outputs = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (out2, seen2) = (outputs.clone(), seen.clone());
        let done = timely::execute_directly(move |worker| {
            let mut input = InputHandleVec::<u64, String>::new();
            let probe = ProbeHandle::new();
            let (out3, seen3) = (out2.clone(), seen2.clone());
            let dataflow = worker.next_dataflow_index();
            worker.dataflow(|scope| {
                let items = input.to_stream(scope);
                let verdicts = llm_stage(
                    items,
                    "Test",
                    service.clone(),
                    |doc: &String| {
                        let p: Prompt = prompt("Document: {{text}} -- end", &[("text", doc)]);
                        Ok(StageModel::with(0.0, 8).request(Stage::Generate, p, None))
                    },
                    move |doc, reply, _attempt| {
                        if let Err(f) = &reply {
                            seen3.lock().unwrap().push(f.kind.clone());
                        }
                        Verdict::Done(vec![Ok(format!("{doc}: {}", reply.is_ok()))])
                    },
                );
                verdicts
                    .passed
                    .inspect(move |x| out3.lock().unwrap().push(x.clone()))
                    .probe_with(&probe);
            });
            for d in docs.clone() {
                input.send(d);
            }
            input.advance_to(1);
            for _ in 0..200 {
                worker.step();
            }
            let done = !probe.less_than(&1);
            // A held epoch never completes: drop the dataflow rather than wait for it.
            worker.drop_dataflow(dataflow);
            done
        });
        let asked = fake.asked();
        let outputs = outputs.lock().unwrap().clone();
        let seen = seen.lock().unwrap().clone();
        (outputs, seen, asked, done)
    }

    fn ok() -> LlmReply {
        answer(serde_json::json!({}))
    }

    #[test]
    fn answers_release_the_epoch() {
        let (out, seen, asked, done) = run(&["a", "b"], |_| ok());
        assert_eq!(out.len(), 2);
        assert!(seen.is_empty());
        assert_eq!(asked.len(), 2);
        assert!(done);
    }

    #[test]
    fn transient_failures_hold_the_epoch_and_never_reach_the_handler() {
        let (out, seen, _, done) = run(&["a", "b"], |r| {
            if r.prompt.contains(" b ") {
                failure("cancelled", true)
            } else {
                ok()
            }
        });
        assert_eq!(out, vec!["a: true".to_string()]);
        assert!(
            seen.is_empty(),
            "no dead letter for a world fault: {seen:?}"
        );
        assert!(!done, "the epoch of the held document must not complete");
    }

    #[test]
    fn context_too_long_is_retried_once_with_the_document_cut() {
        let long = "word ".repeat(100);
        // Refuses any prompt whose document is longer than 300 bytes.
        let (out, seen, asked, done) = run(&[long.as_str()], |r| {
            if r.document.clone().unwrap().len() > 300 {
                failure("context_too_long", false)
            } else {
                ok()
            }
        });
        assert_eq!(asked.len(), 2);
        assert_eq!(asked[1].document.clone().unwrap().len(), 250);
        assert!(asked[1].prompt.ends_with(" -- end"));
        assert!(seen.is_empty());
        assert_eq!(out.len(), 1);
        assert!(done);
        // Still too long after the cut: the handler gets it (a dead letter).
        let (_, seen, asked, done) = run(&[long.as_str()], |_| failure("context_too_long", false));
        assert_eq!(asked.len(), 2);
        assert_eq!(seen, vec!["context_too_long".to_string()]);
        assert!(done);
    }
}
