//! Small helpers for the stages' tests and doc examples: documents from text, a fake LLM that
//! answers from a closure, and a one-call way to run a stage over a few records.
//!
//! ```
//! use webscale_rl_operators::quality_filter::{QualityFilter, QualityFilterConfig};
//! use webscale_rl_operators::testing::{document, run_stage};
//!
//! let (passed, rejected) = run_stage(vec![document("short", "Too short.")], |docs| {
//!     docs.quality_filter(QualityFilterConfig::default())
//! });
//! assert!(passed.is_empty());
//! assert_eq!(rejected[0].doc_id.as_deref(), Some("short"));
//! ```

use std::sync::{Arc, Mutex};

use timely::dataflow::StreamVec;
use timely::dataflow::operators::capture::Event;
use timely::dataflow::operators::{Capture, ToStream};
use webscale_rl_records::{DeadLetter, Document, Origin};

use crate::llm_call::{LlmAnswer, LlmFailure, LlmReply, LlmRequest, LlmService};
use crate::verdicts::Verdicts;

/// A document with this id and text, from topic `test`, partition 0, at an offset derived from the
/// id: documents with different ids are different messages (the dedup stages tell a copy from
/// a replay of the same message by its origin).
pub fn document(id: &str, text: &str) -> Document {
    Document {
        id: id.to_string(),
        text: text.to_string(),
        url: None,
        source: None,
        meta: None,
        filter_model: None,
        origin: Origin {
            topic: "test".into(),
            partition: 0,
            offset: (xxhash_rust::xxh3::xxh3_64(id.as_bytes()) >> 1) as i64,
        },
        words: Default::default(),
    }
}

/// Runs `stage` over `input` (all in epoch 0, one worker) to completion; returns what passed and
/// what was rejected, in output order.
pub fn run_stage<D, O, F>(input: Vec<D>, stage: F) -> (Vec<O>, Vec<DeadLetter>)
where
    D: Clone + Send + Sync + 'static,
    O: Clone + Send + 'static,
    F: for<'s> FnOnce(StreamVec<'s, u64, D>) -> Verdicts<'s, O> + Send + Sync + 'static,
{
    let (passed, rejected) = timely::example(move |scope| {
        let verdicts = stage(input.to_stream(scope));
        (verdicts.passed.capture(), verdicts.rejected.capture())
    });
    (records(passed), records(rejected))
}

/// The records a captured stream carried, in order (`Extract` would sort them, which needs `Ord`).
fn records<R>(events: std::sync::mpsc::Receiver<Event<u64, Vec<R>>>) -> Vec<R> {
    events
        .try_iter()
        .flat_map(|event| match event {
            Event::Messages(_, batch) => batch,
            Event::Progress(_) => Vec::new(),
        })
        .collect()
}

type Answer = dyn Fn(&LlmRequest) -> LlmReply + Send + Sync;

/// An [`LlmService`] that answers every request at once, from the caller's thread, with what
/// `answer` returns for it, and keeps the requests it was sent.
///
/// ```
/// use webscale_rl_operators::testing::{FakeLlm, answer};
/// let llm = FakeLlm::new(|_request| answer(serde_json::json!({"qualified": true})));
/// assert!(llm.asked().is_empty());
/// ```
pub struct FakeLlm {
    answer: Box<Answer>,
    asked: Mutex<Vec<LlmRequest>>,
}

impl FakeLlm {
    pub fn new(answer: impl Fn(&LlmRequest) -> LlmReply + Send + Sync + 'static) -> Arc<FakeLlm> {
        Arc::new(FakeLlm {
            answer: Box::new(answer),
            asked: Mutex::new(Vec::new()),
        })
    }

    /// The requests sent so far, in order.
    pub fn asked(&self) -> Vec<LlmRequest> {
        self.asked.lock().expect("requests").clone()
    }
}

impl LlmService for FakeLlm {
    fn submit(&self, request: LlmRequest, done: Box<dyn FnOnce(LlmReply) + Send>) {
        let reply = (self.answer)(&request);
        self.asked.lock().expect("requests").push(request);
        done(reply);
    }
}

/// A successful reply of model `fake` with this JSON object.
pub fn answer(value: serde_json::Value) -> LlmReply {
    Ok(LlmAnswer {
        value,
        model: "fake".into(),
    })
}

/// A failed call: `transient` for a fault of the world (never a dead letter).
pub fn failure(kind: &str, transient: bool) -> LlmReply {
    Err(LlmFailure {
        kind: kind.into(),
        message: kind.into(),
        transient,
    })
}
