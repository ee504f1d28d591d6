//! Safety for a service that runs for months: the LLM response cache is on by default where a
//! restart finds it, and a replay never pays twice.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Kafka, engine, good_articles, scripted_server};

fn oracle(body: &Value) -> String {
    crate::support::oracle(body)
}

#[test]
fn the_response_cache_is_on_by_default_and_a_replay_never_pays_twice() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = scripted_server(&runtime, oracle, Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let docs: String = good_articles().take(3).map(|d| format!("{d}\n")).collect();
    std::fs::write(dir.path().join("in.jsonl"), docs).unwrap();
    let (cache_home, state_home) = (dir.path().join("cache"), dir.path().join("state"));
    let file_run = |out: &str, extra: &[&str]| {
        let (_, stderr) = crate::support::succeed(
            engine()
                .env("XDG_CACHE_HOME", &cache_home)
                .env("XDG_STATE_HOME", &state_home)
                .args(["run", "--llm-url", &server.base_url(), "--input"])
                .arg(dir.path().join("in.jsonl"))
                .arg("--output")
                .arg(dir.path().join(out))
                .args(extra),
        );
        stderr
    };

    // File mode: the user's cache directory.
    let first = file_run("a.jsonl", &[]);
    let cache = cache_home.join("webscale-rl/llm-cache.redb");
    assert!(cache.exists(), "{first}");
    assert!(
        first.contains(&format!("LLM response cache: {}", cache.display())),
        "{first}"
    );
    let paid = server.requests();
    assert!(paid > 0);
    assert!(
        first.contains(&format!("0 of {paid} calls answered by the response cache")),
        "{first}"
    );

    // The same input again: every call is served by the cache.
    let second = file_run("b.jsonl", &[]);
    assert_eq!(server.requests(), paid, "the replay paid again: {second}");
    assert!(
        second.contains(&format!(
            "{paid} of {paid} calls answered by the response cache"
        )),
        "{second}"
    );
    let ids = |name: &str| {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        crate::support::ids(&records)
    };
    assert_eq!(
        ids("a.jsonl"),
        ids("b.jsonl"),
        "the same pairs, from the cache"
    );
    assert!(!ids("a.jsonl").is_empty());

    // Another run holding the default file (redb locks it): this run goes on without a cache.
    {
        let _held =
            webscale_rl_connectors::llm::cache::ResponseCache::open(&cache, u64::MAX).unwrap();
        let locked = file_run("locked.jsonl", &[]);
        assert!(locked.contains("LLM response cache: off"), "{locked}");
        assert_eq!(
            server.requests(),
            2 * paid,
            "without the cache every call is paid"
        );
    }
    let before = server.requests();

    // --no-llm-cache: every call goes to the server.
    let third = file_run("c.jsonl", &["--no-llm-cache"]);
    assert!(third.contains("LLM response cache: off"), "{third}");
    assert_eq!(server.requests(), before + paid);

    // Kafka mode: the consumer group's state directory.
    let kafka = Kafka::start(1, "cache-group");
    kafka.produce_lines(
        good_articles()
            .take(2)
            .map(|d| serde_json::to_vec(&d).unwrap())
            .collect(),
    );
    let (_, stderr) = crate::support::succeed(
        engine()
            .env("XDG_CACHE_HOME", &cache_home)
            .env("XDG_STATE_HOME", &state_home)
            .args([
                "run",
                "--until-caught-up",
                "--metrics-addr",
                "off",
                "--llm-url",
            ])
            .arg(server.base_url())
            .args(["--brokers", &kafka.cfg.brokers, "--group", "cache-group"]),
    );
    let group_cache = state_home.join("webscale-rl/kafka/cache-group/llm-cache.redb");
    assert!(group_cache.exists(), "{stderr}");
}

/// Kills the engine (SIGKILL) again and again while a slow LLM is mid-work, default flags: the
/// committed offsets advance from one kill to the next, the final QA and dead-letter id sets equal
/// a clean run's, and the LLM is paid for little more than a clean run's calls (the response
/// cache, on by default, serves what finished before a kill).
#[test]
fn repeated_crashes_keep_making_progress_and_barely_pay_twice() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = scripted_server(&runtime, oracle, Duration::from_millis(150));
    let lines = crate::support::sample_lines();

    // Each run has its own state (response cache) directory, as a deployment per group has.
    let run = |kafka: &Kafka, state: &std::path::Path| {
        let mut cmd = engine();
        cmd.env("XDG_STATE_HOME", state)
            .args(["run", "--quiet", "--metrics-addr", "off", "-w", "2"])
            .args(["--brokers", &kafka.cfg.brokers, "--group", &kafka.cfg.group])
            .args(["--llm-url", &server.base_url()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cmd
    };

    // A clean reference run.
    let reference = Kafka::start(4, "crash-ref");
    reference.produce_lines(lines.clone());
    let clean_state = tempfile::tempdir().unwrap();
    let before = server.requests();
    crate::support::succeed(run(&reference, clean_state.path()).arg("--until-caught-up"));
    let clean_requests = server.requests() - before;
    let (want_qa, want_dead) = (
        crate::support::ids(&reference.outputs()),
        crate::support::ids(&reference.dead_letters()),
    );
    assert!(want_qa.len() > 100, "{}", want_qa.len());

    // The same input, killed every few seconds.
    let kafka = Kafka::start(4, "crash");
    kafka.produce_lines(lines);
    let end: i64 = kafka.end_offsets().values().sum();
    let state = tempfile::tempdir().unwrap();
    let before = server.requests();
    // Each round: start, wait until the committed offsets move while the LLM is mid-work (the
    // property under test: progress before the backlog is done), then SIGKILL.
    let mut committed = vec![0i64];
    for _ in 0..4 {
        let last = *committed.last().unwrap();
        let mut child = run(&kafka, state.path()).spawn().unwrap();
        let t0 = std::time::Instant::now();
        let now = loop {
            let now: i64 = kafka.committed().values().sum();
            if now > last {
                break now;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "no offset committed while the engine worked: {committed:?} of {end}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        child.kill().unwrap(); // SIGKILL: no drain, no flush, no final commit
        child.wait().unwrap();
        committed.push(kafka.committed().values().sum::<i64>().max(now));
        if *committed.last().unwrap() == end {
            break;
        }
    }
    assert!(
        committed.len() >= 3 && committed[1] < end,
        "the kills happened mid-stream, after progress: {committed:?} of {end}"
    );
    crate::support::succeed(run(&kafka, state.path()).arg("--until-caught-up"));
    let crash_requests = server.requests() - before;

    assert_eq!(kafka.committed(), kafka.end_offsets());
    assert_eq!(crate::support::ids(&kafka.outputs()), want_qa);
    assert_eq!(crate::support::ids(&kafka.dead_letters()), want_dead);
    assert!(
        crash_requests as f64 <= 1.3 * clean_requests as f64,
        "{crash_requests} LLM requests with crashes vs {clean_requests} clean (committed: {committed:?})"
    );
    eprintln!(
        "crashes: committed {committed:?} of {end}; LLM requests {crash_requests} vs {clean_requests} clean"
    );
}

/// The scripted model: `bad` fails every answer at verification, `good` behaves.
fn two_models(body: &Value) -> String {
    let prompt = body["messages"][0]["content"].as_str().unwrap_or_default();
    if body["model"] == "bad" && prompt.contains("Task: check a question-answer pair") {
        return serde_json::json!({"reason": "r", "has_context": true, "answer_correct": false,
            "leaks_answer": false})
        .to_string();
    }
    oracle(body)
}

fn two_model_server(
    runtime: &tokio::runtime::Runtime,
) -> webscale_rl_connectors::llm::scripted_server::ScriptedServer {
    use webscale_rl_connectors::llm::scripted_server::{ScriptedServer, ScriptedServerConfig};
    runtime
        .block_on(ScriptedServer::start_with(ScriptedServerConfig {
            answer: Some(std::sync::Arc::new(two_models)),
            models: Some(vec!["bad".into(), "good".into()]),
            ..Default::default()
        }))
        .unwrap()
}

fn doc_ids(records: &[Value]) -> std::collections::BTreeSet<String> {
    records
        .iter()
        .filter_map(|r| r["doc_id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn dead_letters_replay_through_kafka_after_switching_models() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = two_model_server(&runtime);
    let kafka = Kafka::start(2, "replay");
    let docs: Vec<Value> = good_articles().take(5).collect();
    kafka.produce_lines(
        docs.iter()
            .map(|d| serde_json::to_vec(d).unwrap())
            .collect(),
    );
    let run = |model: &str| {
        crate::support::succeed(
            engine()
                .args([
                    "run",
                    "--until-caught-up",
                    "--metrics-addr",
                    "off",
                    "--quiet",
                ])
                .args(["--brokers", &kafka.cfg.brokers, "--group", "replay"])
                .args(["--llm-url", &server.base_url(), "--llm-model", model]),
        );
    };
    run("bad");
    assert!(kafka.outputs().is_empty());
    let dead = kafka.dead_letters();
    let failed = dead.iter().filter(|d| d["reason"] == "no_verified_pair");
    assert_eq!(failed.clone().count(), docs.len());
    // The document's message travels on its no_verified_pair dead letter, whole.
    for d in failed {
        let original: Value = serde_json::from_str(d["payload"].as_str().unwrap()).unwrap();
        let doc = docs.iter().find(|x| x["id"] == original["id"]).unwrap();
        assert_eq!(original["text"], doc["text"]);
        assert!(
            doc["text"].as_str().unwrap().len() > 1024,
            "longer than payload_head"
        );
    }
    assert!(
        dead.iter()
            .filter(|d| d["reason"] == "answer_incorrect")
            .all(|d| d["payload"].is_null()),
        "pair-level dead letters do not repeat the document"
    );

    let (_, stderr) = crate::support::succeed(
        engine()
            .args(["replay", "--brokers", &kafka.cfg.brokers])
            .args(["--dead-letter-topic", &kafka.cfg.dead_letter_topic])
            .args([
                "--to-topic",
                &kafka.cfg.input_topic,
                "--reason",
                "no_verified_pair",
            ])
            .args(["--since", "2020-01-01T00:00:00Z"]),
    );
    assert!(
        stderr.contains(&format!("replayed {} documents", docs.len())),
        "{stderr}"
    );

    // A better model: the replayed documents come out as pairs.
    run("good");
    let want: std::collections::BTreeSet<String> = docs
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(doc_ids(&kafka.outputs()), want);
    assert_eq!(kafka.committed(), kafka.end_offsets());
}

#[test]
fn a_rejects_file_replays_into_a_file_mode_rerun() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = two_model_server(&runtime);
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<Value> = good_articles().take(3).collect();
    let text: String = docs.iter().map(|d| format!("{d}\n")).collect();
    std::fs::write(dir.path().join("in.jsonl"), text).unwrap();
    let run = |input: &str, output: &str, model: &str| {
        crate::support::succeed(
            engine()
                .args([
                    "run",
                    "--quiet",
                    "--llm-url",
                    &server.base_url(),
                    "--llm-model",
                    model,
                ])
                .arg("--input")
                .arg(dir.path().join(input))
                .arg("--output")
                .arg(dir.path().join(output)),
        );
    };
    run("in.jsonl", "a.jsonl", "bad");
    let (_, stderr) = crate::support::succeed(
        engine()
            .args([
                "replay",
                "--stage",
                "verify",
                "--reason",
                "no_verified_pair",
                "--input",
            ])
            .arg(dir.path().join("a.rejects.jsonl"))
            .arg("--output")
            .arg(dir.path().join("again.jsonl")),
    );
    assert!(stderr.contains("replayed 3 documents"), "{stderr}");
    run("again.jsonl", "b.jsonl", "good");
    let pairs: Vec<Value> = std::fs::read_to_string(dir.path().join("b.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(doc_ids(&pairs).len(), 3);

    // A filter nothing matches: zero replayed, not an error; a bad --since is.
    let out = engine()
        .args(["replay", "--reason", "no_such_reason", "--input"])
        .arg(dir.path().join("a.rejects.jsonl"))
        .arg("--output")
        .arg(dir.path().join("none.jsonl"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = engine()
        .args([
            "replay",
            "--since",
            "yesterday",
            "--input",
            "x",
            "--output",
            "y",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
}
