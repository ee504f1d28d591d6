//! `webscale-rl demo`: the whole engine with nothing installed. An in-process Kafka cluster
//! (librdkafka's mock cluster: the real Kafka protocol over TCP) receives the bundled corpus, the
//! pipeline runs until it has caught up, and a summary says what passed and why the rest was dropped.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::mocking::MockCluster;
use webscale_rl_connectors::file::JsonlInput;
use webscale_rl_connectors::kafka::{KafkaConfig, tools};
use webscale_rl_dataflow::Funnel;
use webscale_rl_dataflow::graph::Resources;
use webscale_rl_dataflow::runtime::{RunControl, run_kafka};

use crate::cli::{Cli, DemoArgs};
use crate::summary::Summary;

/// 100 documents from the shared web sample; sources and licences in data/demo/README.md.
const BUNDLED_CORPUS: &[u8] = include_bytes!("../data/demo/corpus.jsonl");

pub fn demo(cli: &Cli, args: &DemoArgs) -> anyhow::Result<()> {
    let mut cfg = crate::load_config(args.config.as_deref())?;
    let local = args.llm.llm_url.is_empty() && !args.llm.no_llm && cfg.llm.is_none();
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
    let _scratch = crate::prepare_state(&mut cfg, crate::StateHome::Scratch, cli.quiet)?;
    let llm = args
        .llm
        .setup(&mut cfg, true, crate::llm_args::CacheHome::User)?;
    let cluster = MockCluster::new(1).context("starting the in-process Kafka cluster")?;
    let brokers = cluster.bootstrap_servers();
    let k = &mut cfg.kafka;
    k.brokers = brokers.clone();
    if llm.is_none() {
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
    let n = tools::produce_lines(&cfg.kafka, &cfg.kafka.input_topic, lines)?;
    say(format!(
        "loaded {n} documents from {source} into topic '{}' ({} partitions)",
        cfg.kafka.input_topic, args.partitions
    ));

    let funnel = Funnel::default();
    // Kept until the demo exits: with --keep-running the dashboard stays up with the cluster.
    let _metrics = crate::monitoring::start(
        cli,
        args.metrics_addr.as_deref(),
        true,
        &funnel,
        llm.as_ref(),
    )?;
    let stop = crate::shutdown::install()?;
    let llm_watch = match &llm {
        Some(l) => Some(l.check(&cfg, false, &stop, cli.quiet)?),
        None => None,
    };
    let control = RunControl {
        stop,
        until_caught_up: true,
        llm: llm_watch,
    };
    let started = Instant::now();
    let kafka = cfg.kafka.clone();
    let resources = Resources {
        llm: llm.as_ref().map(|l| l.service()),
        benchmarks: crate::load_benchmarks(&mut cfg, &args.benchmarks, cli.quiet)?,
    };
    let timely_config = args.cluster.options().timely_config()?;
    run_kafka(
        cfg,
        timely_config,
        control.clone(),
        funnel.clone(),
        resources,
    )?;
    let usage = llm.as_ref().map(|l| l.backend.client.usage());
    crate::report(
        cli,
        Summary::new("demo", started.elapsed(), funnel.snapshot(), usage),
    );

    if !cli.quiet {
        show_samples(&kafka)?;
        eprintln!(
            "outputs: topic '{}' ({} records), dead letters: topic '{}' ({} records)",
            kafka.output_topic,
            funnel.snapshot().emitted,
            kafka.dead_letter_topic,
            funnel.snapshot().dead_lettered
        );
    }
    if args.keep_running {
        say(format!(
            "cluster stays up at {brokers}; try `webscale-rl tail --brokers {brokers} --topic {}`. Ctrl-C to exit.",
            kafka.output_topic
        ));
        while !control.stop.load(std::sync::atomic::Ordering::Relaxed) {
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
