//! Graph assembly: wires the stages between a source of raw messages and the two sinks.
//!
//! ```text
//! messages ─► parse ─► quality filter ─► exact dedup (⇄ text hash) ─► near dedup (⇄ LSH band)
//!   ─► decontaminate (⇄ n-gram hash) ─┬─► output (no LLM: documents)
//!                                     └─► LLM filter ─► classify ─► generate (per persona) ─► verify
//!                                          ─► decontaminate QA ─► accounting ─► output (QA pairs)
//! every stage's rejections ───────────────────────────────────────────────────────────────────► dead letters
//! ```
//! Without the LLM, every consumed message leaves as exactly one output or dead letter. With it,
//! every consumed document is the `doc_id` of at least one QA pair or has a dead letter.

use std::sync::Arc;

use timely::dataflow::StreamVec;
use timely::dataflow::operators::core::{Concat, Concatenate, Inspect};
use timely::dataflow::operators::vec::Map;
use webscale_rl_operators::classify::classify;
use webscale_rl_operators::decontaminate::{
    Benchmarks, NgramIndex, Overlap, decontaminate, decontaminate_documents,
};
use webscale_rl_operators::exact_dedup::exact_dedup;
use webscale_rl_operators::generate::generate;
use webscale_rl_operators::llm_call::LlmService;
use webscale_rl_operators::llm_filter::llm_filter;
use webscale_rl_operators::near_dedup::near_dedup;
use webscale_rl_operators::parse::parse;
use webscale_rl_operators::qa_accounting::qa_accounting;
use webscale_rl_operators::quality_filter::quality_filter;
use webscale_rl_operators::record::{
    AcceptedDocument, DeadLetter, Document, Emitted, Origin, PairOutcome, QaPair, RawMessage, Stage,
};
use webscale_rl_operators::verify::verify;

use crate::config::PipelineConfig;
use crate::funnel::{CONSUMED, Funnel, QA_PAIRS};

/// The two streams a pipeline produces, serialized and keyed for the sinks.
pub struct Outputs<'s> {
    pub output: StreamVec<'s, u64, Emitted>,
    pub dead_letters: StreamVec<'s, u64, Emitted>,
}

/// Counts the records of a stream into the funnel under (stage, outcome).
pub(crate) fn count<'s, D: 'static>(
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

/// What the graph needs besides its config: loaded once per process, shared by its workers.
#[derive(Clone, Default)]
pub struct Resources {
    /// The LLM; without it the surviving documents are the output.
    pub llm: Option<Arc<dyn LlmService>>,
    /// Benchmark test sets for decontamination; each worker indexes its share.
    pub benchmarks: Option<Arc<Benchmarks>>,
}

/// Builds the stage graph over `messages`. With an LLM, the LLM stages turn the surviving
/// documents into QA pairs; without, the surviving documents are the output.
pub fn build<'s>(
    messages: StreamVec<'s, u64, RawMessage>,
    cfg: &PipelineConfig,
    funnel: &Funnel,
    resources: &Resources,
) -> Result<Outputs<'s>, String> {
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
    if cfg.near_dedup.enabled {
        let (passed, bad) = near_dedup(docs, cfg.near_dedup.clone());
        rejected.push(bad);
        docs = count(passed, funnel, "near_dedup", "passed");
    }
    // Each worker keeps the benchmark n-grams whose hash it owns.
    let index = resources
        .benchmarks
        .as_ref()
        .map(|b| NgramIndex::build(b, scope.index(), scope.peers()));
    if let Some(index) = index.as_ref().filter(|_| cfg.decontaminate.check_documents) {
        let (passed, bad) = decontaminate_documents(docs, index.clone());
        rejected.push(bad);
        docs = count(passed, funnel, "decontaminate", "passed");
    }

    let output = match resources.llm.clone() {
        None => {
            // The dashboard lists the latest accepted records.
            let live = funnel.live().clone();
            docs.inspect(move |doc: &Document| live.record_document(doc))
                .map(|doc| {
                    let id = doc.id.clone();
                    Emitted::json(&id, &AcceptedDocument::from_document(doc))
                })
        }
        Some(service) => {
            let pairs = qa_stages(docs, cfg, funnel, service, index, &mut rejected)?;
            count(pairs, funnel, QA_PAIRS.0, QA_PAIRS.1)
        }
    };
    let funnel_dl = funnel.clone();
    let dead_letters = scope
        .concatenate(rejected)
        .inspect(move |dl: &DeadLetter| funnel_dl.add(dl.stage.as_str(), &dl.reason, 1))
        .map(|dl| Emitted::json(&dl.id, &dl));
    Ok(Outputs {
        output,
        dead_letters,
    })
}

/// LLM filter ─► classify ─► generate ─► verify ─► decontaminate (QA) ─► accounting.
/// Document-level rejections go straight to `rejected`; pair-level ones pass through accounting,
/// which adds a dead letter for every document left without a pair.
fn qa_stages<'s>(
    mut docs: StreamVec<'s, u64, Document>,
    cfg: &PipelineConfig,
    funnel: &Funnel,
    service: Arc<dyn LlmService>,
    index: Option<NgramIndex>,
    rejected: &mut Vec<StreamVec<'s, u64, DeadLetter>>,
) -> Result<StreamVec<'s, u64, Emitted>, String> {
    if cfg.llm_filter.enabled {
        let (passed, bad) = llm_filter(docs, cfg.llm_filter.clone(), service.clone())?;
        rejected.push(bad);
        docs = count(passed, funnel, "llm_filter", "passed");
    }
    let (classified, bad) = classify(docs, cfg.classify.clone(), service.clone())?;
    rejected.push(bad);
    let classified = count(classified, funnel, "classify", "passed");
    let (candidates, gen_failed) = generate(classified, cfg.generate.clone(), service.clone())?;
    let candidates = count(candidates, funnel, "generate", "passed");
    let (verified, verify_failed) = verify(candidates, cfg.verify.clone(), service)?;
    let mut verified = count(verified, funnel, "verify", "passed");
    let mut pair_failures = gen_failed.concat(verify_failed);
    if let Some(index) = index {
        let (clean, contaminated) = decontaminate(
            verified,
            index,
            // Pairs get the fragment rules: a copied question with a word blanked or replaced.
            true,
            |(_, pair): &(Origin, QaPair), out: &mut String| {
                out.push_str(&pair.question);
                out.push('\n');
                out.push_str(&pair.answer);
            },
            |(origin, pair): &(Origin, QaPair), overlap: &Overlap| {
                DeadLetter::for_qa(
                    origin,
                    pair,
                    Stage::Decontaminate,
                    "benchmark_overlap",
                    overlap.detail(),
                )
            },
        );
        verified = count(clean, funnel, "decontaminate_qa", "passed");
        pair_failures = pair_failures.concat(contaminated);
    }

    let outcomes = verified
        .map(|(origin, pair)| PairOutcome {
            doc_id: pair.doc_id.clone(),
            origin,
            result: Ok(pair),
        })
        .concat(pair_failures.map(|dead| PairOutcome {
            doc_id: dead.doc_id.clone().unwrap_or_default(),
            origin: Origin {
                topic: dead.topic.clone(),
                partition: dead.partition,
                offset: dead.offset,
            },
            result: Err(dead),
        }));
    let (pairs, bad) = qa_accounting(outcomes);
    rejected.push(bad);
    // Domain and persona distribution and the latest pairs, for the metrics and the dashboard.
    let live = funnel.live().clone();
    let pairs = pairs.inspect(move |pair: &QaPair| live.record_pair(pair));
    Ok(pairs.map(|pair| {
        let id = pair.id.clone();
        Emitted::json(&id, &pair)
    }))
}
