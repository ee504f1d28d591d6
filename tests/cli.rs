//! The command line: clear errors for wrong flags, unreachable brokers and unreadable files.

use std::time::{Duration, Instant};

fn run(args: &[&str]) -> (bool, String) {
    let out = crate::support::engine().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_wrong_flag_is_named() {
    let (ok, err) = run(&["run", "--brokerz", "x"]);
    assert!(!ok);
    assert!(err.contains("--brokerz"), "{err}");
}

#[test]
fn an_unreachable_broker_fails_within_seconds() {
    // Nothing listens on port 1.
    let started = Instant::now();
    let (ok, err) = run(&[
        "run",
        "--no-llm",
        "--brokers",
        "127.0.0.1:1",
        "--until-caught-up",
    ]);
    assert!(!ok);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        err.contains("cannot reach Kafka brokers '127.0.0.1:1'"),
        "{err}"
    );
    let (ok, err) = run(&["tail", "--brokers", "127.0.0.1:1", "--topic", "t"]);
    assert!(!ok && err.contains("cannot reach Kafka brokers"), "{err}");
}

#[test]
fn an_unreadable_file_is_named() {
    let (ok, err) = run(&[
        "run",
        "--no-llm",
        "--input",
        "/nonexistent/in.jsonl",
        "--output",
        "/tmp/out.jsonl",
    ]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/in.jsonl"), "{err}");
}

#[test]
fn run_without_input_says_what_to_give() {
    let (ok, err) = run(&["run"]);
    assert!(!ok);
    assert!(
        err.contains("--brokers") && err.contains("--input"),
        "{err}"
    );
}

#[test]
fn the_demo_runs_with_nothing_installed() {
    let out = crate::support::engine()
        .args(["demo", "--no-llm", "-w", "2", "--json-summary"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("in-process Kafka cluster at 127.0.0.1:"),
        "{stderr}"
    );
    // Without the LLM the output topic holds documents, and is named for them.
    assert!(
        stderr.contains("outputs: topic 'webscale.documents.accepted'"),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let consumed = summary["consumed"].as_u64().unwrap();
    assert_eq!(consumed, 100, "the bundled corpus has 100 documents");
    assert_eq!(
        summary["emitted"].as_u64().unwrap() + summary["dead_lettered"].as_u64().unwrap(),
        consumed
    );
    // The bundled corpus holds exact copies and low-quality pages: both show up as reasons.
    assert!(
        summary["stages"]["exact_dedup"]["duplicate_of"]
            .as_u64()
            .unwrap()
            >= 2,
        "{summary}"
    );
    assert!(
        summary["stages"]["near_dedup"]["near_duplicate"]
            .as_u64()
            .unwrap()
            >= 1,
        "the truncated copy in the corpus is a near-duplicate: {summary}"
    );
    assert!(
        summary["stages"]["quality_filter"]["min_words"]
            .as_u64()
            .unwrap()
            >= 1,
        "{summary}"
    );
}

#[test]
fn a_demo_with_nothing_passing_says_so_instead_of_a_blank_line() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("bad.jsonl");
    std::fs::write(
        &corpus,
        "{broken\n{\"id\": \"x\", \"text\": \"too short\"}\n",
    )
    .unwrap();
    let out = crate::support::engine()
        .args(["demo", "--no-llm", "--corpus"])
        .arg(&corpus)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("first output record: (none)"), "{stderr}");
    assert!(stderr.contains("first dead letter: {"), "{stderr}");
}

#[test]
fn a_summary_and_records_cannot_share_stdout() {
    let (ok, err) = run(&[
        "run",
        "--no-llm",
        "--json-summary",
        "--input",
        "-",
        "--output",
        "-",
    ]);
    assert!(!ok);
    assert!(
        err.contains("--json-summary") && err.contains("--output -"),
        "{err}"
    );
}

#[test]
fn a_missing_topic_says_how_to_create_it() {
    let kafka = crate::support::Kafka::start(1, "missing-topic");
    let (ok, err) = run(&[
        "run",
        "--no-llm",
        "--brokers",
        &kafka.cfg.brokers,
        "--input-topic",
        "no.such.topic",
        "--metrics-addr",
        "off",
    ]);
    assert!(!ok);
    assert!(
        err.contains("topic 'no.such.topic' does not exist") && err.contains("kafka-topics.sh"),
        "{err}"
    );
    assert!(!err.contains("RD_KAFKA_RESP_ERR"), "{err}");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "{\"id\": \"a\", \"text\": \"x\"}\n").unwrap();
    let (ok, err) = run(&[
        "produce",
        "--brokers",
        &kafka.cfg.brokers,
        "--topic",
        "no.such.topic",
        file.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("kafka-topics.sh"), "{err}");
}

#[test]
fn unreachable_brokers_are_one_clear_error_not_a_page_of_librdkafka_lines() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(&config, "[kafka]\nconnect_timeout_secs = 2\n").unwrap();
    let (ok, err) = run(&[
        "run",
        "--no-llm",
        "--config",
        config.to_str().unwrap(),
        "--brokers",
        "kafka.invalid:9092",
        "--metrics-addr",
        "off",
    ]);
    assert!(!ok);
    assert!(
        err.contains("cannot reach Kafka brokers 'kafka.invalid:9092'"),
        "{err}"
    );
    assert!(!err.contains("ERROR"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
}

#[test]
fn a_bare_dash_h_asks_for_help() {
    for args in [
        &["run", "-h"][..],
        &["run", "-h", "--no-llm"],
        &["demo", "-h"],
    ] {
        let out = crate::support::engine().args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("Usage:") && text.contains("--hostfile"),
            "{args:?}: {text}"
        );
    }
    // With a file after it, -h is still the host file.
    let (ok, err) = run(&[
        "run",
        "--no-llm",
        "--input",
        "-",
        "--output",
        "x",
        "-n",
        "2",
        "-p",
        "0",
        "-h",
        "/no/such/hosts",
    ]);
    assert!(!ok);
    assert!(err.contains("/no/such/hosts"), "{err}");
}

#[test]
fn run_without_an_llm_names_the_flags() {
    let (ok, err) = run(&["run", "--brokers", "127.0.0.1:1"]);
    assert!(!ok);
    for flag in ["--llm-url", "--llm local", "--no-llm"] {
        assert!(err.contains(flag), "{flag} missing from: {err}");
    }
}

/// The demo as a new user runs it (`cargo run --release -- demo`: the local model, constrained to
/// the stages' schemas, on the bundled corpus) ends with QA pairs, shows some, and keeps the user
/// informed. Minutes on 2 cores, so ignored in CI: `benches/demo.sh` runs it and BENCHMARKS.md
/// ("The demo") records the figures.
#[cfg(feature = "local-model")]
#[test]
#[ignore = "minutes on the CPU: run by benches/demo.sh"]
fn the_demo_on_the_local_model_emits_qa_pairs() {
    let mut demo = crate::support::engine();
    // The model from the user's cache, as the connectors' tests fetch it (not once per test home);
    // no response cache, so every call reaches the model.
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
    {
        demo.env("XDG_CACHE_HOME", cache);
    }
    let started = Instant::now();
    let out = demo
        .args([
            "demo",
            "--no-llm-cache",
            "--metrics-addr",
            "off",
            "--json-summary",
        ])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pairs = summary["qa_pairs"].as_u64().unwrap();
    eprintln!(
        "demo on the local model: {pairs} QA pairs from {} documents in {:.0} s",
        summary["consumed"],
        elapsed.as_secs_f64()
    );
    assert!(pairs >= 5, "{pairs} QA pairs: {summary}\n{stderr}");
    assert!(elapsed < Duration::from_secs(600), "{elapsed:?}");
    // The model is probed like any server, what is relaxed is said, progress is shown, some
    // pairs are printed, and the note on quality ends it.
    for expected in [
        "structured output as json_schema (probed)",
        "Relaxed: the LLM filter and the LLM verifier are off",
        "] LLM: classify 1",
        "QA pair (",
        "A real server gives real quality",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in:\n{stderr}");
    }
}

/// `--help` names the environment variables but never shows their values: a URL in
/// `WEBSCALE_LLM_URL` may carry credentials.
#[test]
fn help_never_shows_the_environments_values() {
    for sub in ["run", "demo", "tail", "replay", "export"] {
        let out = crate::support::engine()
            .args([sub, "--help"])
            .env("WEBSCALE_LLM_URL", "http://user:hunter2@llm.internal/v1")
            .env("WEBSCALE_BROKERS", "broker-with-secret-name:9092")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{sub}");
        assert!(
            !text.contains("hunter2") && !text.contains("secret-name"),
            "{sub}: {text}"
        );
    }
}
