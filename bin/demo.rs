//! `webscale-rl demo`: the whole engine with nothing installed. An in-process Kafka cluster
//! (librdkafka's mock cluster: the real Kafka protocol over TCP) receives the bundled corpus, the
//! pipeline runs until it has caught up, and a summary says what passed and why the rest was dropped.
//!
//! With no LLM named, the LLM is the local CPU model (SmolLM2-135M, answers constrained to each
//! stage's JSON schema) under [`tiny_model_config`]: what that model is trusted with, and what is
//! relaxed for it, is said on stderr. A progress line per LLM answer keeps the minutes of the LLM
//! phase from being silent, and the run ends with a few of its QA pairs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::mocking::MockCluster;
use webscale_rl_connectors::file::JsonlInput;
use webscale_rl_connectors::kafka::{KafkaConfig, tools};
use webscale_rl_dataflow::{Funnel, PipelineConfig};

use crate::cli::{Cli, DemoArgs};
use crate::setup::{Mode, Setup};

/// 100 documents from the shared web sample; sources and licences in data/demo/README.md.
const BUNDLED_CORPUS: &[u8] = include_bytes!("../data/demo/corpus.jsonl");

/// Documents the demo loads with the local model (`--max-docs` changes it): enough for several QA
/// pairs after the CPU filters, in minutes on 2 cores (BENCHMARKS.md, "The demo").
pub const LOCAL_MODEL_DOCS: usize = 20;

/// QA pairs shown at the end of the demo.
const SHOWN_PAIRS: u64 = 3;

/// What the stages relax for the local model, said at the start of the demo.
const TINY_MODEL_NOTE: &str = "LLM: SmolLM2-135M on the CPU, each answer constrained to its \
stage's JSON schema. Trusted with: classify and generate (1 persona, 1 pair per document). \
Relaxed: the LLM filter and the LLM verifier are off, because whether a document is informative \
or an answer correct is a judgement we expect a 135M model to make at about chance (not \
measured), and a judge at chance only drops good pairs at random. Still on: the heuristic quality filter, exact and near \
dedup, and the deterministic answer checks. Documents are clipped to 1,000 characters; \
answers get 48 tokens (classify) and 64 (generate), whose last ones close the JSON object, \
which keeps personas and answers short.";

/// The stages' settings for the local model: short prompts and budgets (a CPU model at tens of
/// tokens per second), one persona and one pair per document, and the two judgements a 135M model
/// cannot make switched off (see [`TINY_MODEL_NOTE`]). The budgets are tight on purpose: the
/// local server closes a constrained answer in its last tokens, so a persona or an answer that
/// rambles is cut short rather than rejected (`no_personas`, `answer_too_long`), and the
/// trailing `reason` costs nothing.
pub fn tiny_model_config(cfg: &mut PipelineConfig) {
    cfg.llm_filter.enabled = false;
    cfg.verify.enabled = false;
    cfg.classify.max_document_chars = 1_000;
    cfg.classify.max_personas = 1;
    cfg.classify.max_tokens = 48;
    cfg.generate.max_document_chars = 1_000;
    cfg.generate.examples_per_call = 1;
    cfg.generate.max_tokens = 64;
}

pub fn demo(cli: &Cli, args: &DemoArgs) -> anyhow::Result<()> {
    let mut cfg = crate::setup::load_config(args.pipeline.config.as_deref())?;
    let llm_args = &args.pipeline.llm;
    let local = llm_args.llm_url.is_empty() && !llm_args.no_llm && cfg.llm.is_none();
    if local {
        tiny_model_config(&mut cfg);
    }
    let mut run = Setup::start(cli, &args.pipeline, cfg, Mode::Demo)?;
    let cluster = MockCluster::new(1).context("starting the in-process Kafka cluster")?;
    let brokers = cluster.bootstrap_servers();
    let k = &mut run.cfg.kafka;
    k.brokers = brokers.clone();
    if run.llm.is_none() {
        // Without the LLM the output is the surviving documents, not QA pairs: name it so.
        k.output_topic = "webscale.documents.accepted".to_string();
    }
    for topic in [&k.input_topic, &k.output_topic, &k.dead_letter_topic] {
        cluster
            .create_topic(topic, args.partitions, 1)
            .with_context(|| format!("creating topic '{topic}'"))?;
    }
    // The dedup state's changelog topics, one partition per index partition (the mock cluster
    // does not implement CreateTopics, which the engine would otherwise use).
    if run.cfg.state.changelog {
        let with_cache = run.llm.is_some();
        for (_, topic, partitions) in
            webscale_rl_dataflow::runtime::changelog_topics(&run.cfg, with_cache)
        {
            cluster
                .create_topic(&topic, partitions as i32, 1)
                .with_context(|| format!("creating topic '{topic}'"))?;
        }
    }
    let say = |s: String| {
        if !cli.quiet {
            eprintln!("{s}");
        }
    };
    say(format!(
        "in-process Kafka cluster at {brokers} (any Kafka client can connect, e.g. `kcat -b {brokers} -L`)"
    ));

    let lines: Vec<Vec<u8>> = match &args.corpus {
        Some(path) => {
            let mut input = JsonlInput::open(&path.to_string_lossy())?;
            let mut lines = Vec::new();
            let mut buf = Vec::new();
            while input.next_line(&mut buf)?.is_some() {
                lines.push(std::mem::take(&mut buf));
            }
            lines
        }
        None => BUNDLED_CORPUS
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
    };
    let source = args
        .corpus
        .as_ref()
        .map_or("the bundled corpus".to_string(), |p| {
            format!("'{}'", p.display())
        });
    let max_docs = args
        .max_docs
        .or(local.then_some(LOCAL_MODEL_DOCS))
        .unwrap_or(usize::MAX);
    let lines: Vec<Vec<u8>> = lines.into_iter().take(max_docs).collect();
    if local && !cli.quiet {
        eprintln!("{TINY_MODEL_NOTE}");
        eprintln!(
            "The demo runs the first {} documents (--max-docs N for more); about 15 s per \
             document that reaches the LLM on 2 cores, a progress line after each answer.",
            lines.len()
        );
    }
    let kafka = run.cfg.kafka.clone();
    let n = tools::produce_lines(&kafka, &kafka.input_topic, lines)?;
    say(format!(
        "loaded {n} documents from {source} into topic '{}' ({} partitions)",
        kafka.input_topic, args.partitions
    ));

    let progress = (run.llm.is_some() && !cli.quiet).then(|| Progress::start(run.funnel.clone()));
    let result = run.run_kafka();
    drop(progress);
    result?;
    run.report(cli);

    if !cli.quiet {
        if run.llm.is_some() {
            show_pairs(&kafka, SHOWN_PAIRS)?;
        }
        show_samples(&kafka)?;
        eprintln!(
            "outputs: topic '{}' ({} records), dead letters: topic '{}' ({} records)",
            kafka.output_topic,
            run.funnel.snapshot().emitted,
            kafka.dead_letter_topic,
            run.funnel.snapshot().dead_lettered
        );
        if local {
            eprintln!(
                "These pairs come from a 135M-parameter model on the CPU: well formed (its \
                 answers are constrained to the schemas), not good. A real server gives real \
                 quality: `demo --llm-url http://localhost:8000/v1 --llm-model NAME` runs the \
                 whole corpus with every LLM stage on."
            );
        }
    }
    if args.keep_running {
        say(format!(
            "cluster stays up at {brokers}; try `webscale-rl tail --brokers {brokers} --topic {}`. Ctrl-C to exit.",
            kafka.output_topic
        ));
        while !run.control.stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    drop(cluster);
    Ok(())
}

/// Prints the first accepted record and the first dead letter, shortened.
fn show_samples(kafka: &KafkaConfig) -> anyhow::Result<()> {
    for (label, topic) in [
        ("first output record", &kafka.output_topic),
        ("first dead letter", &kafka.dead_letter_topic),
    ] {
        let mut buf = Vec::new();
        tools::tail(kafka, topic, Some(1), Duration::from_millis(200), &mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        if text.trim().is_empty() {
            eprintln!("{label}: (none)");
            continue;
        }
        let shown: String = text.trim().chars().take(400).collect();
        eprintln!(
            "{label}: {shown}{}",
            if text.trim().len() > 400 { "…" } else { "" }
        );
    }
    Ok(())
}

/// The LLM stages in the order a document meets them.
const LLM_STAGES: [&str; 4] = ["llm_filter", "classify", "generate", "verify"];

/// A line on stderr each time an LLM stage finishes a record (a document classified, a pair
/// generated or verified): what the stages have done so far, and the QA pairs. Stops when dropped.
struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(funnel: Funnel) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut last = None;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let snap = funnel.snapshot();
                let done: Vec<(&str, u64)> = LLM_STAGES
                    .iter()
                    .filter_map(|s| snap.stages.get(*s).map(|o| (*s, o.values().sum::<u64>())))
                    .collect();
                let state = (done.clone(), snap.qa_pairs);
                if done.is_empty() || last.as_ref() == Some(&state) {
                    continue;
                }
                last = Some(state);
                eprintln!("{}", progress_line(started.elapsed(), &done, snap.qa_pairs));
            }
        });
        Progress {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `[  1m05s] LLM: classify 4 · generate 3 → 2 QA pairs so far`
fn progress_line(elapsed: Duration, done: &[(&str, u64)], qa_pairs: u64) -> String {
    let secs = elapsed.as_secs();
    let stages = done
        .iter()
        .map(|(stage, n)| format!("{stage} {n}"))
        .collect::<Vec<_>>()
        .join(" · ");
    format!(
        "[{:>3}m{:02}s] LLM: {stages} → {qa_pairs} QA pair{} so far",
        secs / 60,
        secs % 60,
        if qa_pairs == 1 { "" } else { "s" }
    )
}

/// Prints up to `n` QA pairs of the output topic: question, answer, domain.
fn show_pairs(kafka: &KafkaConfig, n: u64) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    tools::tail(
        kafka,
        &kafka.output_topic,
        Some(n),
        Duration::from_millis(200),
        &mut buf,
    )?;
    for line in String::from_utf8_lossy(&buf).lines() {
        let Ok(pair) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let field = |k: &str| pair[k].as_str().unwrap_or_default().to_string();
        eprintln!(
            "QA pair ({}): Q: {}  A: {}",
            field("domain"),
            field("question"),
            field("answer")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tiny_model_config_relaxes_the_two_judgements_only() {
        let mut cfg = PipelineConfig::default();
        tiny_model_config(&mut cfg);
        assert!(!cfg.llm_filter.enabled && !cfg.verify.enabled);
        assert!(cfg.quality_filter.enabled && cfg.exact_dedup.enabled && cfg.near_dedup.enabled);
        assert_eq!(cfg.classify.max_personas, 1);
        assert_eq!(cfg.generate.max_tokens, 64);
    }

    #[test]
    fn progress_lines_name_the_stages_and_the_pairs() {
        let line = progress_line(
            Duration::from_secs(65),
            &[("classify", 4), ("generate", 3)],
            1,
        );
        assert_eq!(
            line,
            "[  1m05s] LLM: classify 4 · generate 3 → 1 QA pair so far"
        );
    }
}
