//! The LLM stages end to end: documents through Kafka (mock cluster), the real HTTP client, and a
//! scripted OpenAI-compatible server whose answers are derived from the prompt. Markers placed in
//! document texts steer each document down one rejection path.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use webscale_rl_connectors::llm::LlmConfig;
use webscale_rl_connectors::llm::scripted_server::{Reply, ScriptedServer};
use webscale_rl_dataflow::cluster::ClusterOptions;
use webscale_rl_dataflow::graph::Resources;
use webscale_rl_dataflow::llm_service::LlmBackend;
use webscale_rl_dataflow::runtime::{RunControl, run_kafka};
use webscale_rl_dataflow::{Funnel, PipelineConfig};

use crate::support::{JANET, Kafka, good_articles, oracle, scripted_server};
use webscale_rl_operators::benchmarks::BenchmarkSpec;
use webscale_rl_operators::decontaminate::{Benchmarks, DecontaminateConfig};

const BENCHMARKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/benchmarks");

struct Setup {
    kafka: Kafka,
    server: ScriptedServer,
    runtime: tokio::runtime::Runtime,
    cache: tempfile::TempDir,
    docs: Vec<(String, String)>,
    benchmarks: Option<Arc<Benchmarks>>,
}

/// 12 sample documents: 6 clean, one per marker.
fn setup(group: &str) -> Setup {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = scripted_server(&runtime, oracle, Duration::ZERO);
    let kafka = Kafka::start(2, group);
    let markers = [
        "",
        "",
        "",
        "",
        "",
        "",
        "[[boilerplate]]",
        "[[offlist]]",
        "[[leak]]",
        "[[wrong]]",
        "[[ratelimit]]",
        "[[flaky]]",
        "[[gsm8k-qa]]",
        "[[gsm8k-doc]]",
    ];
    let good: Vec<Value> = good_articles().take(markers.len()).collect();
    let mut docs = Vec::new();
    let lines = good
        .into_iter()
        .zip(markers)
        .map(|(mut d, m)| {
            // At the start: prompts show a clipped prefix of long documents.
            let mut text = format!("{m} {}", d["text"].as_str().unwrap());
            if m == "[[gsm8k-doc]]" {
                // A benchmark item pasted into a web page: dropped before any LLM call.
                text = text.replacen(". ", &format!(". {JANET} "), 1);
            }
            d["text"] = text.into();
            docs.push((d["id"].as_str().unwrap().to_string(), m.to_string()));
            serde_json::to_vec(&d).unwrap()
        })
        .collect();
    kafka.produce_lines(lines);
    // Faults: a 429 with Retry-After, a 500, a hang past the timeout, a malformed answer.
    server.on_prompt(
        "[[ratelimit]]",
        Reply::RateLimited {
            retry_after: Some("1".into()),
        },
        1,
    );
    server.on_prompt("[[flaky]]", Reply::Status(500, "boom".into()), 1);
    server.on_prompt("[[flaky]]", Reply::Hang(Duration::from_secs(5)), 1);
    server.on_prompt("[[flaky]]", Reply::Malformed, 1);
    let decontaminate = DecontaminateConfig {
        benchmarks: vec![BenchmarkSpec::path(
            BENCHMARKS.to_string() + "/gsm8k_test.jsonl",
        )],
        ..Default::default()
    };
    let benchmarks = Some(Arc::new(Benchmarks::load(&decontaminate).unwrap()));
    Setup {
        benchmarks,
        kafka,
        server,
        runtime,
        cache: tempfile::tempdir().unwrap(),
        docs,
    }
}

fn run(s: &Setup, group: &str) -> Funnel {
    run_with(s, group, |_| {})
}

/// [`run`] with the pipeline's settings changed by `tweak`.
fn run_with(s: &Setup, group: &str, tweak: impl Fn(&mut PipelineConfig)) -> Funnel {
    let mut cfg = PipelineConfig {
        kafka: s.kafka.cfg.clone(),
        ..Default::default()
    };
    tweak(&mut cfg);
    cfg.kafka.group = group.to_string();
    s.kafka.state_topics(group);
    let llm = LlmConfig {
        endpoints: vec![s.server.base_url()],
        model: Some("scripted".into()),
        timeout_secs: 2,
        backoff_base_ms: 50,
        backoff_max_ms: 200,
        cooldown_secs_after_429: 1,
        cache_path: Some(s.cache.path().join("cache.redb")),
        ..Default::default()
    };
    let backend = LlmBackend::start(&llm).unwrap();
    let funnel = Funnel::default();
    let control = RunControl {
        until_caught_up: true,
        ..Default::default()
    };
    let workers = ClusterOptions {
        workers: 2,
        ..Default::default()
    };
    run_kafka(
        cfg,
        workers.timely_config().unwrap(),
        control,
        funnel.clone(),
        Resources {
            llm: Some(backend.service()),
            benchmarks: s.benchmarks.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    drop(backend);
    let _ = &s.runtime;
    funnel
}

#[test]
fn documents_become_verified_qa_pairs_and_every_rejection_is_accounted_for() {
    let s = setup("llm-e2e");
    run(&s, "llm-e2e");
    let pairs = s.kafka.outputs();
    let dead = s.kafka.dead_letters();

    // Clean documents (and those whose faults were retried away) give two pairs each, one per persona.
    let by_doc: BTreeMap<String, Vec<&Value>> = pairs.iter().fold(BTreeMap::new(), |mut m, p| {
        m.entry(p["doc_id"].as_str().unwrap().to_string())
            .or_default()
            .push(p);
        m
    });
    for (id, marker) in &s.docs {
        if ["", "[[ratelimit]]", "[[flaky]]"].contains(&marker.as_str()) {
            let got = by_doc.get(id).map_or(0, Vec::len);
            assert_eq!(got, 2, "document {id} ({marker:?}) should give 2 pairs");
        }
    }
    for p in &pairs {
        assert_eq!(p["domain"], "Natural Science");
        assert!(p["persona"].as_str().unwrap().starts_with("a "));
        assert_eq!(p["answer"], "Jupiter");
        assert_eq!(p["models"]["generator"], "scripted");
        assert_eq!(p["models"]["filter"], "scripted", "{p}");
        assert_eq!(p["id"].as_str().unwrap().len(), 32);
    }

    // Each rejection path lands in dead-letter with its stage and reason.
    let reason_of = |marker: &str, stage: &str| -> BTreeSet<String> {
        let id = &s.docs.iter().find(|(_, m)| m == marker).unwrap().0;
        dead.iter()
            .filter(|d| d["doc_id"] == id.as_str() && d["stage"] == stage)
            .map(|d| d["reason"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        reason_of("[[boilerplate]]", "llm_filter"),
        BTreeSet::from(["not_qualified".into()])
    );
    assert_eq!(
        reason_of("[[offlist]]", "classify"),
        BTreeSet::from(["off_list_domain".into()])
    );
    assert_eq!(
        reason_of("[[leak]]", "verify"),
        BTreeSet::from(["answer_in_question".into(), "no_verified_pair".into()])
    );
    assert_eq!(
        reason_of("[[wrong]]", "verify"),
        BTreeSet::from(["answer_incorrect".into(), "no_verified_pair".into()])
    );

    // Decontamination: a pasted benchmark item drops the document before the LLM; a generated
    // question copying one drops the pair; both name the benchmark and the item.
    let contaminated = |marker: &str| {
        let id = &s.docs.iter().find(|(_, m)| m == marker).unwrap().0;
        dead.iter()
            .filter(|d| d["doc_id"] == id.as_str() && d["stage"] == "decontaminate")
            .map(|d| d["detail"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let doc_hit = contaminated("[[gsm8k-doc]]");
    assert_eq!(doc_hit.len(), 1, "{doc_hit:?}");
    assert!(
        doc_hit[0].contains("gsm8k") && doc_hit[0].contains("item=0"),
        "{doc_hit:?}"
    );
    let qa_hits = contaminated("[[gsm8k-qa]]");
    assert_eq!(qa_hits.len(), 2, "both personas' pairs: {qa_hits:?}");
    assert!(qa_hits.iter().all(|d| d.contains("gsm8k")));

    // The accounting invariant: every document is the doc_id of a pair or has a dead letter.
    let with_pairs: BTreeSet<&str> = pairs
        .iter()
        .map(|p| p["doc_id"].as_str().unwrap())
        .collect();
    let with_dead: BTreeSet<&str> = dead.iter().filter_map(|d| d["doc_id"].as_str()).collect();
    for (id, _) in &s.docs {
        assert!(
            with_pairs.contains(id.as_str()) || with_dead.contains(id.as_str()),
            "{id} vanished"
        );
    }
    assert_eq!(s.kafka.committed(), s.kafka.end_offsets());

    // A replay (a new group reads from the start) is served from the response cache.
    let before = s.server.requests();
    run(&s, "llm-e2e-replay");
    assert_eq!(
        s.server.requests(),
        before,
        "the replay made new LLM requests"
    );
    let replayed: BTreeSet<String> = s
        .kafka
        .outputs()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    let first: BTreeSet<String> = pairs
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(replayed, first, "the replay wrote the same QA ids");
}

#[test]
fn merged_calls_make_the_same_records_and_the_same_funnel_with_fewer_calls() {
    // Two identical setups: one with a call per stage, persona and pair; one with the filter asked
    // in the classification call, all personas' questions in one call, all pairs checked in one.
    let apart = setup("calls-apart");
    let merged = setup("calls-merged");
    let funnel_apart = run(&apart, "calls-apart");
    let funnel_merged = run_with(&merged, "calls-merged", |cfg| {
        cfg.classify.with_filter = true;
        cfg.generate.one_call = true;
        cfg.verify.one_call = true;
    });
    let pairs = |s: &Setup| -> BTreeSet<String> {
        s.kafka
            .outputs()
            .iter()
            .map(|p| {
                format!(
                    "{} {} {} {}",
                    p["doc_id"], p["persona"], p["question"], p["answer"]
                )
            })
            .collect()
    };
    let dead = |s: &Setup| -> BTreeSet<String> {
        s.kafka
            .dead_letters()
            .iter()
            .map(|d| format!("{} {} {}", d["doc_id"], d["stage"], d["reason"]))
            .collect()
    };
    assert!(!pairs(&apart).is_empty());
    assert_eq!(pairs(&merged), pairs(&apart));
    assert_eq!(dead(&merged), dead(&apart));
    let counts = |f: &Funnel| {
        let snap = f.snapshot();
        (
            snap.consumed,
            snap.emitted,
            snap.dead_lettered,
            snap.qa_pairs,
            snap.stages,
        )
    };
    assert_eq!(counts(&funnel_merged), counts(&funnel_apart));
    // Fewer calls: no filter call, one generation and one verification call per document.
    let (calls_apart, calls_merged) = (apart.server.requests(), merged.server.requests());
    assert!(
        calls_merged < calls_apart,
        "{calls_merged} calls, {calls_apart} apart"
    );
}
