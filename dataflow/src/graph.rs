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
use timely::dataflow::operators::Exchange;
use timely::dataflow::operators::core::{Concat, Concatenate, Inspect};
use timely::dataflow::operators::vec::Map;
use webscale_rl_operators::Verdicts;
use webscale_rl_operators::classify::{Classify, ClassifyConfig};
use webscale_rl_operators::decontaminate::{Benchmarks, Decontaminate, NgramIndex};
use webscale_rl_operators::exact_dedup::ExactDedup;
use webscale_rl_operators::generate::Generate;
use webscale_rl_operators::llm_call::LlmService;
use webscale_rl_operators::llm_filter::LlmFilter;
use webscale_rl_operators::near_dedup::NearDedup;
use webscale_rl_operators::parse::Parse;
use webscale_rl_operators::qa_accounting::QaAccounting;
use webscale_rl_operators::quality_filter::QualityFilter;
use webscale_rl_operators::verify::Verify;
use webscale_rl_records::{
    AcceptedDocument, DeadLetter, Document, Origin, PairOutcome, QaPair, RawMessage, Stage,
};

use crate::config::PipelineConfig;
use crate::funnel::{CONSUMED, Funnel, QA_PAIRS};
use crate::operator_times::{OperatorTimes, labelled};

/// What the pipeline emits: the surviving documents (no LLM) or the QA pairs, each with the
/// position of its message in the input (Kafka offset, file line), by which the file sink orders
/// an epoch's records.
pub enum Output<'s> {
    Documents(StreamVec<'s, u64, (i64, AcceptedDocument)>),
    QaPairs(StreamVec<'s, u64, (i64, QaPair)>),
}

/// The two streams a pipeline produces, as records: the sinks encode them.
pub struct Outputs<'s> {
    pub output: Output<'s>,
    pub dead_letters: StreamVec<'s, u64, DeadLetter>,
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
    /// Set by `--operator-times`: every worker logs its operators' busy time here.
    pub operator_times: Option<crate::operator_times::OperatorTimes>,
    /// The LLM client behind `llm`, whose response cache Kafka mode changelogs and restores.
    pub llm_client: Option<webscale_rl_connectors::llm::LlmClient>,
}

/// Wires stages one way: a stage switched off in the config passes its input through; a stage's
/// passed records are counted in the funnel under its name, its rejections collected for the
/// dead-letter sink.
struct Stages<'s, 'c> {
    cfg: &'c PipelineConfig,
    funnel: Funnel,
    rejected: Vec<StreamVec<'s, u64, DeadLetter>>,
    /// Rejections of single QA pairs, which go through accounting rather than straight out.
    pair_failures: Vec<StreamVec<'s, u64, DeadLetter>>,
    /// `--operator-times`: each stage's operators are labelled with its name.
    times: Option<OperatorTimes>,
}

impl<'s> Stages<'s, '_> {
    /// `stage` over `records` if the config enables it, else `records` untouched.
    fn filter<D: 'static>(
        &mut self,
        stage: Stage,
        records: StreamVec<'s, u64, D>,
        build: impl FnOnce(StreamVec<'s, u64, D>) -> Verdicts<'s, D>,
    ) -> StreamVec<'s, u64, D> {
        if !self.cfg.enabled(stage) {
            return records;
        }
        let verdicts = self.build(stage.as_str(), records, build);
        self.keep(stage.as_str(), verdicts)
    }

    /// `build(input)`, its operators labelled as `stage`'s in the operator times.
    fn build<I: 'static, T>(
        &self,
        stage: &str,
        input: StreamVec<'s, u64, I>,
        build: impl FnOnce(StreamVec<'s, u64, I>) -> T,
    ) -> T {
        let worker = input.scope().worker();
        labelled(self.times.as_ref(), worker, stage, || build(input))
    }

    /// Counts what passed under `funnel_stage` and collects the rejections.
    fn keep<D: 'static>(
        &mut self,
        funnel_stage: &'static str,
        verdicts: Verdicts<'s, D>,
    ) -> StreamVec<'s, u64, D> {
        self.rejected.push(verdicts.rejected);
        count(verdicts.passed, &self.funnel, funnel_stage, "passed")
    }

    /// [`Stages::keep`] for a stage whose rejections concern one QA pair, not its document.
    fn keep_pairs<D: 'static>(
        &mut self,
        funnel_stage: &'static str,
        verdicts: Verdicts<'s, D>,
    ) -> StreamVec<'s, u64, D> {
        self.pair_failures.push(verdicts.rejected);
        count(verdicts.passed, &self.funnel, funnel_stage, "passed")
    }
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
    let mut stages = Stages {
        cfg,
        funnel: funnel.clone(),
        rejected: Vec::new(),
        pair_failures: Vec::new(),
        times: resources.operator_times.clone(),
    };

    let parsed = stages.build(Stage::Parse.as_str(), messages, |m| {
        m.parse(cfg.parse.clone())
    });
    let docs = stages.keep(Stage::Parse.as_str(), parsed);
    let docs = stages.filter(Stage::QualityFilter, docs, |d| {
        d.quality_filter(cfg.quality_filter.clone())
    });
    let docs = stages.filter(Stage::ExactDedup, docs, |d| {
        d.exact_dedup(cfg.exact_dedup.clone())
    });
    let docs = stages.filter(Stage::NearDedup, docs, |d| {
        d.near_dedup(cfg.near_dedup.clone())
    });
    // The quality filter's normalized words served the dedup stages; the rest do without them.
    let docs = docs.map(|mut doc: Document| {
        doc.words = Default::default();
        doc
    });
    // Each worker keeps the benchmark n-grams whose hash it owns.
    let index = resources
        .benchmarks
        .as_ref()
        .map(|b| NgramIndex::build(b, scope.index(), scope.peers()));
    let docs = match &index {
        Some(index) => stages.filter(Stage::Decontaminate, docs, |d| {
            d.decontaminate(index.clone())
        }),
        None => docs,
    };

    let output = match resources.llm.clone() {
        None => {
            // The dashboard lists the latest accepted records.
            let live = funnel.live().clone();
            Output::Documents(
                docs.inspect(move |doc: &Document| live.record_document(doc))
                    .map(|doc| (doc.origin.offset, AcceptedDocument::from_document(doc))),
            )
        }
        Some(llm) => {
            // Each document to the worker owning its response-cache partition (Kafka mode
            // restores that partition there), so its calls are cached where a replay of it
            // will look, whatever machine the partition lives on now.
            let peers = docs.scope().peers() as u64;
            let docs = docs.exchange(move |d: &Document| {
                u64::from(webscale_rl_records::changelog::cache_partition(&d.id)) % peers
            });
            let pairs = qa_stages(docs, cfg, &mut stages, llm, index)?;
            Output::QaPairs(count(pairs, funnel, QA_PAIRS.0, QA_PAIRS.1))
        }
    };
    let funnel_dl = funnel.clone();
    let dead_letters = scope
        .concatenate(stages.rejected)
        .inspect(move |dl: &DeadLetter| funnel_dl.add(dl.stage.as_str(), &dl.reason, 1));
    Ok(Outputs {
        output,
        dead_letters,
    })
}

/// LLM filter ─► classify ─► generate ─► verify ─► decontaminate (QA) ─► accounting.
/// Document-level rejections go straight to the dead letters; pair-level ones pass through
/// accounting, which adds a dead letter for every document left without a pair.
fn qa_stages<'s>(
    docs: StreamVec<'s, u64, Document>,
    cfg: &PipelineConfig,
    stages: &mut Stages<'s, '_>,
    llm: Arc<dyn LlmService>,
    index: Option<NgramIndex>,
) -> Result<StreamVec<'s, u64, (i64, QaPair)>, String> {
    // With `[classify] with_filter` the filter's question is asked in the classification call.
    let merged = cfg.enabled(Stage::LlmFilter) && cfg.classify.with_filter;
    let docs = match cfg.enabled(Stage::LlmFilter) && !merged {
        true => {
            let verdicts = stages.build(Stage::LlmFilter.as_str(), docs, |d| {
                d.llm_filter(cfg.llm_filter.clone(), llm.clone())
            })?;
            stages.keep(Stage::LlmFilter.as_str(), verdicts)
        }
        false => docs,
    };
    let classify = ClassifyConfig {
        with_filter: merged,
        ..cfg.classify.clone()
    };
    let mut classified = stages.build(Stage::Classify.as_str(), docs, |d| {
        d.classify(classify, llm.clone())
    })?;
    if merged {
        // The funnel as with two calls: what classification passed or rejected for its own
        // reasons had passed the filter.
        let funnel = stages.funnel.clone();
        classified.rejected = classified.rejected.inspect(move |dead: &DeadLetter| {
            // Only the labels' own failures come after a `qualified: true`; a failed call
            // would have failed the filter's call as well.
            let labels = ["off_list_domain", "no_personas"];
            if dead.stage == Stage::Classify && labels.contains(&dead.reason.as_str()) {
                funnel.add(Stage::LlmFilter.as_str(), "passed", 1);
            }
        });
        classified.passed = count(
            classified.passed,
            &stages.funnel,
            Stage::LlmFilter.as_str(),
            "passed",
        );
    }
    let classified = stages.keep(Stage::Classify.as_str(), classified);
    // From here on a rejection concerns one pair, not its document: they are collected apart,
    // and accounting decides which documents are left without a pair.
    let candidates = stages.build(Stage::Generate.as_str(), classified, |c| {
        c.generate(cfg.generate.clone(), llm.clone())
    })?;
    let candidates = stages.keep_pairs(Stage::Generate.as_str(), candidates);
    let verified = stages.build(Stage::Verify.as_str(), candidates, |c| {
        c.verify(cfg.verify.clone(), llm)
    })?;
    let mut verified = stages.keep_pairs(Stage::Verify.as_str(), verified);
    if let Some(index) = index {
        let clean = stages.build("decontaminate_qa", verified, |v| v.decontaminate(index));
        verified = stages.keep_pairs("decontaminate_qa", clean);
    }
    let scope = verified.scope();
    let outcomes = verified
        .map(|(origin, pair)| PairOutcome {
            doc_id: pair.doc_id.clone(),
            origin,
            result: Ok(pair),
        })
        .concat(
            scope
                .concatenate(std::mem::take(&mut stages.pair_failures))
                .map(|dead| PairOutcome {
                    doc_id: dead.doc_id.clone().unwrap_or_default(),
                    origin: Origin {
                        topic: dead.topic.clone(),
                        partition: dead.partition,
                        offset: dead.offset,
                    },
                    result: Err(dead),
                }),
        );
    // Accounting passes pairs through uncounted: they are counted as the output's `qa_pairs`.
    let accounted = outcomes.qa_accounting();
    stages.rejected.push(accounted.rejected);
    let pairs = accounted.passed;
    // Domain and persona distribution and the latest pairs, for the metrics and the dashboard.
    let live = stages.funnel.live().clone();
    Ok(pairs
        .inspect(move |(_, pair): &(Origin, QaPair)| live.record_pair(pair))
        .map(|(origin, pair)| (origin.offset, pair)))
}

#[cfg(test)]
mod tests {
    use timely::dataflow::operators::capture::{Event, Extract};
    use timely::dataflow::operators::{Capture, ToStream};

    use super::*;

    fn message(offset: i64, text: &str) -> RawMessage {
        RawMessage {
            key: None,
            payload: Some(
                serde_json::json!({ "id": format!("d{offset}"), "text": text })
                    .to_string()
                    .into_bytes(),
            ),
            origin: Origin {
                topic: "t".into(),
                partition: 0,
                offset,
            },
            truncated: false,
        }
    }

    /// Runs the graph without an LLM over three copies of a text too short for the quality filter
    /// (the second exact, the third with a word more); returns how many documents were emitted, the dead letters'
    /// (stage, reason) and the funnel's stages.
    fn run(cfg: PipelineConfig) -> (usize, Vec<(String, String)>, Vec<String>) {
        let funnel = Funnel::default();
        let f = funnel.clone();
        let (out, dead) = timely::example(move |scope| {
            let text = "The river rises in the hills north of the town and runs for many miles \
                        through farms and forests before it reaches the sea";
            let again = format!("{text} again");
            let input = vec![message(0, text), message(1, text), message(2, &again)];
            let input = input.to_stream(scope);
            let outs = build(input, &cfg, &f, &Resources::default()).unwrap();
            let Output::Documents(docs) = outs.output else {
                panic!("no LLM: documents")
            };
            (
                docs.map(|(_, d)| d.id).capture(),
                outs.dead_letters
                    .map(|d| (d.stage.to_string(), d.reason))
                    .capture(),
            )
        });
        let emitted: usize = out
            .try_iter()
            .map(|e| match e {
                Event::Messages(_, batch) => batch.len(),
                Event::Progress(_) => 0,
            })
            .sum();
        let dead: Vec<(String, String)> = dead.extract().into_iter().flat_map(|(_, d)| d).collect();
        let stages = funnel.snapshot().stages.into_keys().collect();
        (emitted, dead, stages)
    }

    #[test]
    fn every_enabled_switch_takes_its_stage_out_of_the_graph() {
        let reasons = |dead: &[(String, String)]| {
            let mut r: Vec<String> = dead.iter().map(|(_, reason)| reason.clone()).collect();
            r.sort();
            r
        };
        let (emitted, dead, stages) = run(PipelineConfig::default());
        assert_eq!(
            (emitted, reasons(&dead)),
            (0, vec!["min_words".to_string(); 3])
        );
        assert!(stages.contains(&"quality_filter".to_string()));

        let mut cfg = PipelineConfig::default();
        cfg.quality_filter.enabled = false;
        let (emitted, dead, _) = run(cfg.clone());
        assert_eq!(
            (emitted, reasons(&dead)),
            (1, vec!["duplicate_of".into(), "near_duplicate".into()])
        );

        cfg.exact_dedup.enabled = false;
        let (emitted, dead, _) = run(cfg.clone());
        assert_eq!(
            (emitted, reasons(&dead)),
            (1, vec!["near_duplicate".to_string(); 2])
        );

        cfg.near_dedup.enabled = false;
        let (emitted, dead, stages) = run(cfg);
        assert_eq!((emitted, dead.len()), (3, 0));
        for off in ["quality_filter", "exact_dedup", "near_dedup"] {
            assert!(
                !stages.contains(&off.to_string()),
                "{off} still counted: {stages:?}"
            );
        }
    }
}
