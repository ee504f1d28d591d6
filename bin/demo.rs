//! `webscale-rl demo`: the whole engine with nothing installed. An in-process Kafka cluster
//! (librdkafka's mock cluster: the real Kafka protocol over TCP) receives the bundled corpus, the
//! pipeline runs until it has caught up, and a summary says what passed and why the rest was dropped.

use std::time::Duration;

use anyhow::Context;
use rdkafka::mocking::MockCluster;
use webscale_rl_connectors::file::JsonlInput;
use webscale_rl_connectors::kafka::{KafkaConfig, tools};

use crate::cli::{Cli, DemoArgs};
use crate::setup::{Mode, Setup};

/// 100 documents from the shared web sample; sources and licences in data/demo/README.md.
const BUNDLED_CORPUS: &[u8] = include_bytes!("../data/demo/corpus.jsonl");

pub fn demo(cli: &Cli, args: &DemoArgs) -> anyhow::Result<()> {
    let mut cfg = crate::setup::load_config(args.pipeline.config.as_deref())?;
    let llm_args = &args.pipeline.llm;
    let local = llm_args.llm_url.is_empty() && !llm_args.no_llm && cfg.llm.is_none();
    if local {
        // The local CPU model is slow and weak: short prompts, one persona, a few documents.
        cfg.llm_filter.max_document_chars = 1_200;
        cfg.classify.max_document_chars = 1_200;
        cfg.classify.max_personas = 1;
        cfg.generate.max_document_chars = 1_200;
        cfg.generate.examples_per_call = 1;
        cfg.verify.max_document_chars = 1_200;
        for max_tokens in [
            &mut cfg.llm_filter.max_tokens,
            &mut cfg.classify.max_tokens,
            &mut cfg.generate.max_tokens,
            &mut cfg.verify.max_tokens,
        ] {
            *max_tokens = 160;
        }
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
    let max_docs = args.max_docs.or(local.then_some(3)).unwrap_or(usize::MAX);
    let lines: Vec<Vec<u8>> = lines.into_iter().take(max_docs).collect();
    if local && !cli.quiet {
        eprintln!(
            "LLM: a small local model on the CPU (slow, weak at following instructions): \
             the demo runs {} documents through every stage. Use --llm-url URL for a real \
             server, or --no-llm for the CPU stages on the whole corpus.",
            lines.len()
        );
    }
    let kafka = run.cfg.kafka.clone();
    let n = tools::produce_lines(&kafka, &kafka.input_topic, lines)?;
    say(format!(
        "loaded {n} documents from {source} into topic '{}' ({} partitions)",
        kafka.input_topic, args.partitions
    ));

    run.run_kafka()?;
    run.report(cli);

    if !cli.quiet {
        show_samples(&kafka)?;
        eprintln!(
            "outputs: topic '{}' ({} records), dead letters: topic '{}' ({} records)",
            kafka.output_topic,
            run.funnel.snapshot().emitted,
            kafka.dead_letter_topic,
            run.funnel.snapshot().dead_lettered
        );
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
