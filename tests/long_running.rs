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
        let out = engine()
            .env("XDG_CACHE_HOME", &cache_home)
            .env("XDG_STATE_HOME", &state_home)
            .args(["run", "--llm-url", &server.base_url(), "--input"])
            .arg(dir.path().join("in.jsonl"))
            .arg("--output")
            .arg(dir.path().join(out))
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
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

    // --no-llm-cache: every call goes to the server.
    let third = file_run("c.jsonl", &["--no-llm-cache"]);
    assert!(third.contains("LLM response cache: off"), "{third}");
    assert_eq!(server.requests(), 2 * paid);

    // Kafka mode: the consumer group's state directory.
    let kafka = Kafka::start(1, "cache-group");
    kafka.produce_lines(
        good_articles()
            .take(2)
            .map(|d| serde_json::to_vec(&d).unwrap())
            .collect(),
    );
    let out = engine()
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
        .args(["--brokers", &kafka.cfg.brokers, "--group", "cache-group"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
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
    let out = run(&reference, clean_state.path())
        .arg("--until-caught-up")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let mut committed = vec![0i64];
    for round in 0..4 {
        let mut child = run(&kafka, state.path()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(2_500 + 500 * round));
        child.kill().unwrap(); // SIGKILL: no drain, no flush, no final commit
        child.wait().unwrap();
        committed.push(kafka.committed().values().sum());
    }
    for pair in committed.windows(2) {
        assert!(
            pair[1] > pair[0] || pair[0] == end,
            "no progress between two kills: {committed:?} of {end}"
        );
    }
    let out = run(&kafka, state.path())
        .arg("--until-caught-up")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
