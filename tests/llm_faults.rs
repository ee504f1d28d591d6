//! Faults of the LLM side never cost a document: start-up checks (served models, a server that
//! is down at start), an outage in the middle of a Kafka run (real protocol), and the dialect of
//! llama-cpp-python's server — through the binary and through `run_kafka`.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use webscale_rl_connectors::llm::LlmConfig;
use webscale_rl_connectors::llm::scripted_server::{
    ScriptedServer, ScriptedServerConfig, ServerDialect,
};
use webscale_rl_dataflow::cluster::ClusterOptions;
use webscale_rl_dataflow::graph::Resources;
use webscale_rl_dataflow::http::MetricsServer;
use webscale_rl_dataflow::llm_service::LlmBackend;
use webscale_rl_dataflow::metrics::EngineMetrics;
use webscale_rl_dataflow::runtime::{LlmWatch, RunControl, run_kafka};
use webscale_rl_dataflow::{Funnel, PipelineConfig};

use crate::support::{Kafka, good_articles, http_get, kafka_with_articles, oracle};

/// Reasons that would mean a fault of the world became a dead letter.
const WORLD_REASONS: [&str; 6] = [
    "connection",
    "timeout",
    "server_error",
    "rate_limited",
    "cancelled",
    "client_error",
];

fn server_with(
    runtime: &tokio::runtime::Runtime,
    dialect: ServerDialect,
    models: &[&str],
    latency: Duration,
) -> ScriptedServer {
    runtime
        .block_on(ScriptedServer::start_with(ScriptedServerConfig {
            answer: Some(Arc::new(oracle)),
            dialect,
            models: Some(models.iter().map(|m| m.to_string()).collect()),
            latency,
            ..Default::default()
        }))
        .unwrap()
}

/// An OpenAI-dialect server serving the model `scripted`.
fn scripted(runtime: &tokio::runtime::Runtime, latency: Duration) -> ScriptedServer {
    server_with(runtime, ServerDialect::OpenAi, &["scripted"], latency)
}

fn articles(n: usize) -> Vec<Value> {
    good_articles().take(n).collect()
}

fn write_jsonl(path: &std::path::Path, docs: &[Value]) {
    let text: String = docs.iter().map(|d| format!("{d}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn read_jsonl(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A file-mode run through the binary against `url`, with no `--llm-model`.
fn file_run(dir: &std::path::Path, url: &str, extra_config: &str) -> Command {
    let config = dir.join("pipeline.toml");
    std::fs::write(&config, format!("[llm]\n{extra_config}\n")).unwrap();
    let mut cmd = crate::support::engine();
    cmd.args(["run", "--config"])
        .arg(&config)
        .args(["--input"])
        .arg(dir.join("in.jsonl"))
        .args(["--output"])
        .arg(dir.join("out.jsonl"))
        .args(["--llm-url", url, "-w", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn the_model_comes_from_the_server_and_a_wrong_one_stops_before_reading() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("in.jsonl"), &articles(3));

    // One model served, none named: used, and said so.
    let one = scripted(&runtime, Duration::ZERO);
    let (_, stderr) = crate::support::succeed(&mut file_run(dir.path(), &one.base_url(), ""));
    assert!(
        stderr.contains("LLM model: scripted (the one model the server lists)"),
        "{stderr}"
    );
    let pairs = read_jsonl(&dir.path().join("out.jsonl"));
    assert!(!pairs.is_empty(), "{stderr}");
    assert!(pairs.iter().all(|p| p["models"]["generator"] == "scripted"));

    // Two served, none named: stop with the list, before anything is consumed or written.
    std::fs::remove_file(dir.path().join("out.jsonl")).unwrap();
    let two = server_with(&runtime, ServerDialect::OpenAi, &["a", "b"], Duration::ZERO);
    let out = file_run(dir.path(), &two.base_url(), "").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("serves several: a, b") && stderr.contains("--llm-model"),
        "{stderr}"
    );
    assert_eq!(two.requests(), 0, "no pipeline call was made");
    assert!(!dir.path().join("out.jsonl").exists());
}

#[test]
fn a_server_down_at_start_is_waited_for_and_nothing_is_lost() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let docs = articles(4);
    write_jsonl(&dir.path().join("in.jsonl"), &docs);
    let server = scripted(&runtime, Duration::ZERO);
    server.go_down();

    // Nobody answers within the start-up timeout: non-zero, the endpoint named, nothing written.
    let out = file_run(dir.path(), &server.base_url(), "startup_timeout_secs = 2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&server.base_url()) && stderr.contains("startup_timeout_secs"),
        "{stderr}"
    );
    assert!(!dir.path().join("out.jsonl").exists());

    // Down at start, up 20 s later: the run waits, then does everything.
    let child = file_run(dir.path(), &server.base_url(), "")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(20));
    server.come_up().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("waiting for the LLM"), "{stderr}");
    let pairs = read_jsonl(&dir.path().join("out.jsonl"));
    let rejects = read_jsonl(&dir.path().join("out.rejects.jsonl"));
    let with_pairs: BTreeSet<&str> = pairs.iter().filter_map(|p| p["doc_id"].as_str()).collect();
    assert_eq!(with_pairs.len(), docs.len(), "{rejects:?}");
    assert!(rejects.is_empty(), "{rejects:?}");
}

#[test]
fn llama_cpp_python_is_spoken_in_its_own_dialect() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let docs = articles(4);
    write_jsonl(&dir.path().join("in.jsonl"), &docs);
    // It answers json_schema with HTTP 500 and, without a grammar, prose.
    let server = server_with(
        &runtime,
        ServerDialect::LlamaCppPython,
        &["smollm2"],
        Duration::ZERO,
    );
    let (_, stderr) = crate::support::succeed(&mut file_run(dir.path(), &server.base_url(), ""));
    assert!(
        stderr.contains("structured output as json_object (probed)"),
        "{stderr}"
    );
    let rejects = read_jsonl(&dir.path().join("out.rejects.jsonl"));
    for r in &rejects {
        assert!(
            !["server_error", "malformed_answer"].contains(&r["reason"].as_str().unwrap()),
            "{r}"
        );
    }
    let pairs = read_jsonl(&dir.path().join("out.jsonl"));
    assert_eq!(
        pairs
            .iter()
            .filter_map(|p| p["doc_id"].as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        docs.len()
    );
    // Every pipeline call went out as json_object with the stage's schema.
    for l in server.log() {
        if l.body.to_string().contains("start-up probe") {
            continue;
        }
        assert_eq!(l.body["response_format"]["type"], "json_object");
        assert!(l.body["response_format"]["schema"].is_object());
        assert_eq!(l.status, 200);
    }
}

/// Runs the LLM stages over the Kafka topics into `output_topic`, with the start-up check, the
/// LLM watch and a metrics server, as `run` does. `during` runs on the test thread meanwhile.
fn kafka_run(
    kafka: &Kafka,
    server: &ScriptedServer,
    group: &str,
    output_topic: &str,
    during: impl FnOnce(&str),
) -> Funnel {
    let (funnel, result) = kafka_run_with(kafka, server, group, output_topic, None, during);
    result.expect("the run succeeds");
    funnel
}

fn kafka_run_with(
    kafka: &Kafka,
    server: &ScriptedServer,
    group: &str,
    output_topic: &str,
    max_outage: Option<Duration>,
    during: impl FnOnce(&str),
) -> (Funnel, anyhow::Result<()>) {
    let mut cfg = PipelineConfig {
        kafka: kafka.cfg.clone(),
        ..Default::default()
    };
    cfg.kafka.group = group.to_string();
    kafka.state_topics(group);
    cfg.kafka.output_topic = output_topic.to_string();
    let _ = kafka.cluster.create_topic(output_topic, 2, 1);
    let llm = LlmConfig {
        endpoints: vec![server.base_url()],
        timeout_secs: 5,
        backoff_base_ms: 50,
        backoff_max_ms: 1_000,
        ..Default::default()
    };
    let backend = LlmBackend::start(&llm).unwrap();
    backend
        .block_on(backend.client.startup_check(&[]))
        .expect("start-up check");
    let funnel = Funnel::default();
    let metrics = EngineMetrics::new(&funnel);
    metrics.attach_llm(backend.metrics_handle());
    let http = MetricsServer::start("127.0.0.1:0", metrics).unwrap();
    let addr = http.local_addr().to_string();
    let control = RunControl {
        until_caught_up: true,
        llm: Some(LlmWatch {
            health: backend.client.health().clone(),
            max_outage,
            max_stall: None,
        }),
        ..Default::default()
    };
    let workers = ClusterOptions {
        workers: 2,
        ..Default::default()
    };
    let engine = {
        let funnel = funnel.clone();
        let service = backend.service();
        std::thread::spawn(move || {
            run_kafka(
                cfg,
                workers.timely_config().unwrap(),
                control,
                funnel,
                Resources {
                    llm: Some(service),
                    benchmarks: None,
                    ..Default::default()
                },
            )
        })
    };
    during(&addr);
    let result = engine.join().unwrap();
    if result.is_ok() {
        assert_eq!(http_get(&addr, "/readyz").0, 200, "ready after the run");
    }
    (funnel, result)
}

#[test]
fn an_llm_outage_mid_run_pauses_and_loses_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = scripted(&runtime, Duration::from_millis(100));
    let kafka = kafka_with_articles(2, "outage", 16);

    // A clean reference run.
    kafka_run(&kafka, &server, "clean", "qa-clean", |_| {});
    let clean: BTreeSet<String> = crate::support::ids(&kafka.read("qa-clean"));
    assert!(clean.len() >= 16, "{}", clean.len());
    let clean_dead = kafka.dead_letters().len();

    // The same input, and the server dies for 30 s in the middle.
    let before = server.requests();
    kafka_run(&kafka, &server, "outage", "qa-outage", |addr| {
        let t0 = Instant::now();
        while server.requests() < before + 20 {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the run never got going"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server.go_down();
        let down = Instant::now();
        let mut saw_503 = false;
        while down.elapsed() < Duration::from_secs(30) {
            let (status, body) = http_get(addr, "/readyz");
            if status == 503 {
                assert!(body.contains("LLM unavailable since"), "{body}");
                saw_503 = true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(saw_503, "/readyz never reported the outage");
        let (_, metrics) = http_get(addr, "/metrics");
        assert!(metrics.contains("webscale_llm_up 0"), "{metrics}");
        server.come_up().unwrap();
    });
    let after: BTreeSet<String> = crate::support::ids(&kafka.read("qa-outage"));
    assert_eq!(after, clean, "the QA id set equals the clean run's");
    let dead = kafka.dead_letters();
    for d in &dead {
        assert!(
            !WORLD_REASONS.contains(&d["reason"].as_str().unwrap()),
            "a fault of the LLM side became a dead letter: {d}"
        );
    }
    assert_eq!(
        dead.len(),
        2 * clean_dead,
        "the outage run dead-lettered what the clean run did, no more"
    );
    assert_eq!(kafka.committed(), kafka.end_offsets());
}

#[test]
fn an_outage_past_max_outage_secs_stops_the_run_with_nothing_half_written() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("in.jsonl"), &articles(6));
    let server = scripted(&runtime, Duration::from_millis(300));
    let mut child = file_run(
        dir.path(),
        &server.base_url(),
        "max_outage_secs = 3\nbackoff_max_ms = 500",
    )
    .spawn()
    .unwrap();
    let t0 = Instant::now();
    while server.requests() < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the run never got going"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server.go_down();
    let down = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            down.elapsed() < Duration::from_secs(60),
            "the run did not give up on the outage"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        down.elapsed() >= Duration::from_secs(3),
        "gave up too early"
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("max_outage_secs = 3") && stderr.contains("LLM unavailable since"),
        "{stderr}"
    );
    // File mode has no offsets: nothing half-done is published; a rerun redoes it all.
    assert!(!dir.path().join("out.jsonl").exists());
    assert!(!dir.path().join("out.rejects.jsonl").exists());
}

#[test]
fn a_kafka_run_past_max_outage_commits_nothing_unfinished_and_a_rerun_completes() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = scripted(&runtime, Duration::from_millis(200));
    let kafka = kafka_with_articles(2, "gives-up", 12);
    let (_, result) = kafka_run_with(
        &kafka,
        &server,
        "gives-up",
        "qa-gives-up",
        Some(Duration::from_secs(2)),
        |_| {
            let t0 = Instant::now();
            while server.requests() < 5 {
                assert!(t0.elapsed() < Duration::from_secs(30));
                std::thread::sleep(Duration::from_millis(10));
            }
            server.go_down();
        },
    );
    let e = format!("{:#}", result.unwrap_err());
    assert!(e.contains("max_outage_secs = 2"), "{e}");
    let committed: i64 = kafka.committed().values().sum();
    let end: i64 = kafka.end_offsets().values().sum();
    assert!(committed < end, "unfinished documents were committed");
    assert!(
        kafka.dead_letters().is_empty(),
        "{:?}",
        kafka.dead_letters()
    );

    // The LLM is back: a rerun in the same group finishes the rest.
    server.come_up().unwrap();
    kafka_run(&kafka, &server, "gives-up", "qa-gives-up", |_| {});
    assert_eq!(kafka.committed(), kafka.end_offsets());
    let with_pairs: BTreeSet<String> = kafka
        .read("qa-gives-up")
        .iter()
        .map(|p| p["doc_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(with_pairs.len(), 12);
    assert!(kafka.dead_letters().is_empty());
}

#[test]
fn kafka_mode_waits_not_ready_for_an_llm_that_is_down_and_consumes_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = scripted(&runtime, Duration::ZERO);
    server.go_down();
    let kafka = kafka_with_articles(2, "waits", 3);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = crate::support::engine()
        .args(["run", "--until-caught-up", "--metrics-addr", &addr])
        .args(["--brokers", &kafka.cfg.brokers, "--group", "waits"])
        .args(["--llm-url", &server.base_url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Not ready, with the reason, and nothing consumed, for as long as the LLM is away.
    let t0 = Instant::now();
    let body = loop {
        if let Ok(stream) = std::net::TcpStream::connect(&addr) {
            drop(stream);
            let (status, body) = http_get(&addr, "/readyz");
            assert_eq!(status, 503, "{body}");
            if body.contains("not reachable") {
                break body;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no readiness answer"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.contains("LLM unavailable since"), "{body}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(kafka.committed().values().sum::<i64>(), 0);
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("webscale_documents_consumed_total 0"),
        "{metrics}"
    );
    assert!(metrics.contains("webscale_llm_up 0"), "{metrics}");

    server.come_up().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("waiting for the LLM, until it answers"),
        "{stderr}"
    );
    assert_eq!(kafka.committed(), kafka.end_offsets());
    assert_eq!(doc_ids_of(&kafka.outputs()).len(), 3);
}

fn doc_ids_of(records: &[Value]) -> BTreeSet<String> {
    records
        .iter()
        .filter_map(|r| r["doc_id"].as_str().map(str::to_string))
        .collect()
}
