//! Graph assembly: wires the stages between a source of raw messages and the two sinks.
//!
//! ```text
//! messages ─► parse ─► quality filter ─► exact dedup (⇄ by text hash) ─► output
//!               └──────────┴──────────────────┴──── rejections ──────────► dead letters
//! ```
//! Every consumed message leaves as exactly one output record or one dead letter.

use timely::dataflow::StreamVec;
use timely::dataflow::operators::core::{Concatenate, Inspect};
use timely::dataflow::operators::vec::Map;
use webscale_rl_operators::exact_dedup::exact_dedup;
use webscale_rl_operators::parse::parse;
use webscale_rl_operators::quality_filter::quality_filter;
use webscale_rl_operators::record::{AcceptedDocument, DeadLetter, Document, Emitted, RawMessage};

use crate::config::PipelineConfig;
use crate::funnel::{CONSUMED, Funnel};

/// The two streams a pipeline produces, serialized and keyed for the sinks.
pub struct Outputs<'s> {
    pub output: StreamVec<'s, u64, Emitted>,
    pub dead_letters: StreamVec<'s, u64, Emitted>,
}

/// Counts the records of a stream into the funnel under (stage, outcome).
fn count<'s, D: 'static>(
    stream: StreamVec<'s, u64, D>,
    funnel: &Funnel,
    stage: &'static str,
    outcome: &'static str,
) -> StreamVec<'s, u64, D> {
    let funnel = funnel.clone();
    stream.inspect_core(move |event| {
        if let Ok((_, batch)) = event {
            funnel.add(stage, outcome, batch.len() as u64);
        }
    })
}

/// Builds the stage graph over `messages`.
pub fn build<'s>(
    messages: StreamVec<'s, u64, RawMessage>,
    cfg: &PipelineConfig,
    funnel: &Funnel,
) -> Outputs<'s> {
    let scope = messages.scope();
    let messages = count(messages, funnel, CONSUMED.0, CONSUMED.1);
    let mut rejected: Vec<StreamVec<'s, u64, DeadLetter>> = Vec::new();

    let (docs, bad) = parse(messages, cfg.parse.clone());
    rejected.push(bad);
    let mut docs: StreamVec<'s, u64, Document> = count(docs, funnel, "parse", "passed");

    if cfg.quality_filter.enabled {
        let (passed, bad) = quality_filter(docs, cfg.quality_filter.clone());
        rejected.push(bad);
        docs = count(passed, funnel, "quality_filter", "passed");
    }
    if cfg.exact_dedup.enabled {
        let (passed, bad) = exact_dedup(docs, cfg.exact_dedup.clone());
        rejected.push(bad);
        docs = count(passed, funnel, "exact_dedup", "passed");
    }

    let output = docs.map(|doc| {
        let id = doc.id.clone();
        Emitted::json(&id, &AcceptedDocument::from_document(doc))
    });
    let funnel_dl = funnel.clone();
    let dead_letters = scope
        .concatenate(rejected)
        .inspect(move |dl: &DeadLetter| funnel_dl.add(dl.stage.as_str(), &dl.reason, 1))
        .map(|dl| Emitted::json(&dl.id, &dl));
    Outputs {
        output,
        dead_letters,
    }
}
