//! The asynchronous LLM operator that every LLM stage is built on.
//!
//! Requests go to an [`LlmService`] (a tokio runtime behind it) and the timely worker never waits:
//! the operator keeps, per epoch, a retained capability and the number of calls in flight; replies
//! come back through a channel and wake the operator with a `SyncActivator`. An epoch's capability
//! is released only when the input frontier has passed it and none of its calls is in flight, so
//! the durable frontier — and with it the offset commit — waits for the LLM.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::operator::Operator;

use crate::llm_call::{LlmReply, LlmRequest, LlmService};
use crate::record::DeadLetter;

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
    items: StreamVec<'s, u64, I>,
    name: &str,
    service: Arc<dyn LlmService>,
    mut request: Q,
    mut reply: R,
) -> (StreamVec<'s, u64, O>, StreamVec<'s, u64, DeadLetter>)
where
    I: 'static,
    O: 'static,
    Q: FnMut(&I) -> Result<LlmRequest, DeadLetter> + 'static,
    R: FnMut(I, LlmReply, u32) -> Verdict<I, O> + 'static,
{
    let scope = items.scope();
    let results = items.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<Result<O, DeadLetter>>>, _, _, _>(
        Pipeline,
        name,
        move |default_cap, info| {
            drop(default_cap);
            let activator = Arc::new(scope.worker().sync_activator_for(info.address.to_vec()));
            let replies: Arc<Mutex<Vec<(u64, LlmReply)>>> = Arc::default();
            // Calls in flight: ticket -> (epoch, item, attempt).
            let mut waiting: HashMap<u64, (u64, I, u32)> = HashMap::new();
            let mut epochs: BTreeMap<u64, (Capability<u64>, usize)> = BTreeMap::new();
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
                                Ok(req) => {
                                    let entry = epochs
                                        .entry(epoch)
                                        .or_insert_with(|| (cap.retain_least(0).expect("output 0"), 0));
                                    entry.1 += 1;
                                    let ticket = next_ticket;
                                    next_ticket += 1;
                                    waiting.insert(ticket, (epoch, item, 0));
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
                    let (epoch, item, attempt) = waiting.remove(&ticket).expect("a reply answers a call");
                    match reply(item, answer, attempt) {
                        Verdict::Done(results) => {
                            let entry = epochs.get_mut(&epoch).expect("epoch of a call in flight");
                            output.session(&entry.0).give_iterator(results.into_iter());
                            entry.1 -= 1;
                        }
                        Verdict::Retry(item, req) => {
                            waiting.insert(ticket, (epoch, item, attempt + 1));
                            submit(ticket, req);
                        }
                    }
                }
                epochs.retain(|epoch, (_, in_flight)| *in_flight > 0 || frontier.less_equal(epoch));
            }
        },
    );
    results.ok_err(|r| r)
}
