//! Off the tested paths (issue 28): inputs, flags and peers that once lost data, halted or hung
//! the engine. Each test fails without its fix; BENCHMARKS.md ("Hardening") maps items to tests.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::{engine, sample_lines};

fn write_sample(path: &std::path::Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for l in sample_lines() {
        f.write_all(&l).unwrap();
        f.write_all(b"\n").unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for `child` at most `limit`; kills it and fails past that.
fn wait_bounded(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Item 1: two processes of one file run on one host, one output. Only the process holding
/// worker 0 touches the output, its rejects, its record and its state; the result equals a
/// one-process run's.
#[test]
fn a_two_process_file_run_writes_its_output_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_sample(&input);
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
    )
    .unwrap();
    let output = dir.path().join("out.jsonl");
    let children: Vec<_> = (0..2)
        .map(|p| {
            engine()
                .args(["run", "--no-llm", "--input"])
                .arg(&input)
                .arg("--output")
                .arg(&output)
                .args(["-n", "2", "-p", &p.to_string(), "-h"])
                .arg(&hosts)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = wait_bounded(child, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let single = dir.path().join("single.jsonl");
    crate::support::succeed(
        engine()
            .args(["run", "--no-llm", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&single),
    );
    let lines = |p: &std::path::Path| {
        let mut l: Vec<String> = std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                // Clock fields differ between any two runs.
                for clock in ["processed_at", "created_at"] {
                    v.as_object_mut().unwrap().remove(clock);
                }
                v.to_string()
            })
            .collect();
        l.sort();
        l
    };
    assert!(!lines(&single).is_empty());
    assert!(lines(&output) == lines(&single), "outputs differ");
    assert!(
        lines(&dir.path().join("out.rejects.jsonl"))
            == lines(&dir.path().join("single.rejects.jsonl")),
        "rejects differ"
    );
    for left in [
        "out.jsonl.partial",
        "out.jsonl.progress.json",
        "out.jsonl.state",
        "out.jsonl.lock",
    ] {
        assert!(!dir.path().join(left).exists(), "{left} left behind");
    }
}

/// Item 1: a second run writing the same output is refused by the first one's lock, and
/// leaves the first run's files alone.
#[test]
fn a_second_writer_of_the_same_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_sample(&input);
    let output = dir.path().join("out.jsonl");
    // A run that waits: its input is a FIFO nobody writes yet.
    let fifo = dir.path().join("slow.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let first = engine()
        .args(["run", "--no-llm", "--input"])
        .arg(&fifo)
        .arg("--output")
        .arg(&output)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = dir.path().join("out.jsonl.lock");
    let started = Instant::now();
    while !lock.exists() {
        assert!(started.elapsed() < Duration::from_secs(30), "no lock taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = engine()
        .args(["run", "--no-llm", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(err.contains("being written by another run"), "{err}");
    // The first run goes on and finishes with what it is given.
    std::fs::write(&fifo, std::fs::read(&input).unwrap()).unwrap();
    let out = wait_bounded(first, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!std::fs::read_to_string(&output).unwrap().is_empty());
}

/// Item 4: an error on worker 0 (a truncated gzip input) with `-w 2` ends the process at once,
/// non-zero and with the error (it once waited for a kill).
#[test]
fn a_worker_error_with_two_workers_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for _ in 0..20 {
        for l in sample_lines() {
            gz.write_all(&l).unwrap();
            gz.write_all(b"\n").unwrap();
        }
    }
    let bytes = gz.finish().unwrap();
    std::fs::write(&input, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let child = engine()
        .args(["run", "--no-llm", "-w", "2", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("out.jsonl"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_bounded(child, Duration::from_secs(15));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("in.jsonl.gz"),
        "the error names the input: {err}"
    );
    assert!(!err.contains("another worker failed"), "{err}");
}

/// Item 5: paths that name the same file are refused before anything is written, and the
/// input is left as it was.
#[test]
fn an_output_or_rejects_that_is_the_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_sample(&input);
    let before = std::fs::read(&input).unwrap();
    let named_like_rejects = dir.path().join("out.rejects.jsonl");
    std::fs::copy(&input, &named_like_rejects).unwrap();
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    let p = |n: &str| dir.path().join(n);
    let cases: [(
        &std::path::Path,
        std::path::PathBuf,
        Option<std::path::PathBuf>,
    ); 4] = [
        (&input, input.clone(), None),
        (&input, link.clone(), None),
        (&named_like_rejects, p("out.jsonl"), None),
        (&input, p("o.jsonl"), Some(p("o.jsonl"))),
    ];
    for (i, (from, to, rejects)) in cases.iter().enumerate() {
        let mut cmd = engine();
        cmd.args(["run", "--no-llm", "--input"])
            .arg(from)
            .arg("--output")
            .arg(to);
        if let Some(r) = rejects {
            cmd.arg("--rejects").arg(r);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} ran: {err}");
        assert!(err.contains("are the same file"), "case {i}: {err}");
    }
    assert_eq!(
        std::fs::read(&input).unwrap(),
        before,
        "the input is untouched"
    );
    assert_eq!(std::fs::read(&named_like_rejects).unwrap(), before);
    assert!(!p("o.jsonl").exists());
}

/// Item 2: a message whose dead letter grows past a default broker's limit once JSON-escaped
/// (700 KiB of control characters became 4.3 MB, 380 KiB of quotes 1.56 MB) is dead-lettered
/// within the limit, and the run commits past it. The engine's producers apply Kafka's default
/// `message.max.bytes`, so a record a default broker would refuse fails here as it would there.
#[test]
fn a_dead_letter_stays_under_the_default_broker_limit_once_encoded() {
    use webscale_rl_dataflow::cluster::ClusterOptions;
    use webscale_rl_dataflow::runtime::{RunControl, run_kafka};
    use webscale_rl_dataflow::{Funnel, PipelineConfig};
    let kafka = crate::support::Kafka::start(2, "e2e-escaped-dead-letters");
    let control_chars = vec![1u8; 700 * 1024];
    let quotes = serde_json::to_vec(&serde_json::json!({
        "id": "quotes", "text": "\"".repeat(380 * 1024)
    }))
    .unwrap();
    kafka.produce_raw(&[
        (Some("control"), Some(control_chars)),
        (Some("quotes"), Some(quotes)),
    ]);
    let produced = kafka.produce_lines(sample_lines().into_iter().take(20).collect()) as usize + 2;
    let cfg = PipelineConfig {
        kafka: kafka.cfg.clone(),
        ..Default::default()
    };
    let cluster = ClusterOptions::default();
    run_kafka(
        cfg,
        cluster.timely_config().unwrap(),
        RunControl {
            until_caught_up: true,
            ..Default::default()
        },
        Funnel::default(),
        Default::default(),
    )
    .expect("the run does not stop at the broker");
    let dead = kafka.dead_letters();
    assert_eq!(dead.len() + kafka.outputs().len(), produced);
    for d in &dead {
        let bytes = serde_json::to_vec(d).unwrap().len();
        assert!(
            bytes < webscale_rl_records::KAFKA_DEFAULT_MESSAGE_MAX_BYTES - 1024,
            "{bytes}"
        );
    }
    let by_key = |k: &str| {
        dead.iter()
            .find(|d| d["payload_head"].as_str().is_some() && d["doc_id"] == k)
            .cloned()
    };
    assert!(by_key("quotes").is_some_and(|d| d["payload"].is_null()));
    assert_eq!(
        kafka.committed().values().sum::<i64>(),
        produced as i64,
        "every offset is committed"
    );
}

/// Low item: a topic whose last offset is a transaction's commit marker (no message has it):
/// `--until-caught-up` and `tail` end on librdkafka's partition-end event. librdkafka's mock
/// cluster does not reproduce the original hang (it hands out a marker's offset, and even an
/// aborted transaction's records), so this guards the end-of-partition path against regressions;
/// the hang itself was seen on a real broker.
#[test]
fn until_caught_up_and_tail_end_on_a_transaction_marker() {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    use webscale_rl_dataflow::cluster::ClusterOptions;
    use webscale_rl_dataflow::runtime::{RunControl, run_kafka};
    use webscale_rl_dataflow::{Funnel, PipelineConfig};
    let kafka = crate::support::Kafka::start(1, "e2e-transaction-marker");
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.cfg.brokers)
        .set("transactional.id", "e2e-marker")
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(10)).unwrap();
    producer.begin_transaction().unwrap();
    let lines: Vec<Vec<u8>> = sample_lines().into_iter().take(5).collect();
    for l in &lines {
        producer
            .send(BaseRecord::<(), [u8]>::to(&kafka.cfg.input_topic).payload(l))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer
        .commit_transaction(Duration::from_secs(10))
        .unwrap();
    drop(producer);
    let (tx, rx) = std::sync::mpsc::channel();
    let cfg = PipelineConfig {
        kafka: kafka.cfg.clone(),
        ..Default::default()
    };
    std::thread::spawn(move || {
        let r = run_kafka(
            cfg,
            ClusterOptions::default().timely_config().unwrap(),
            RunControl {
                until_caught_up: true,
                ..Default::default()
            },
            Funnel::default(),
            Default::default(),
        );
        let _ = tx.send(r.map_err(|e| format!("{e:#}")));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("--until-caught-up ends on a topic ending in a marker")
        .unwrap();
    assert!(kafka.committed().values().sum::<i64>() > 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let cfg = kafka.cfg.clone();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let n = webscale_rl_connectors::kafka::tools::tail(
            &cfg,
            &cfg.input_topic,
            None,
            Duration::from_millis(200),
            &mut out,
        );
        let _ = tx.send(n.map_err(|e| format!("{e:#}")));
    });
    let n = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("tail ends on a topic ending in a marker")
        .unwrap();
    assert_eq!(n, lines.len() as u64);
}

/// Item 9: each LLM stage's own settings are probed at start. A parameter the server refuses
/// (`temperature` above its limit) or an answer without content (a reasoning model whose
/// `max_tokens` its thinking uses up) stops the engine before it reads a line, naming the stage;
/// both once dead-lettered every document, with exit 0.
#[test]
fn a_stage_setting_the_server_refuses_stops_the_start_naming_the_stage() {
    use webscale_rl_connectors::llm::scripted_server::{ScriptedServer, ScriptedServerConfig};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_sample(&input);
    let run = |server: &ScriptedServer, config: &str| {
        let cfg = dir.path().join("pipeline.toml");
        std::fs::write(&cfg, config).unwrap();
        let out = engine()
            .args(["run", "--llm-url", &server.base_url(), "--config"])
            .arg(&cfg)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(dir.path().join("out.jsonl"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let strict = rt
        .block_on(ScriptedServer::start_with(ScriptedServerConfig {
            max_temperature: Some(1.0),
            ..Default::default()
        }))
        .unwrap();
    let (ok, err) = run(&strict, "[generate]\ntemperature = 1.5\n");
    assert!(!ok, "{err}");
    assert!(
        err.contains("[generate]") && err.contains("temperature 1.5"),
        "{err}"
    );
    assert_eq!(strict.requests(), 0, "no document was sent");
    assert!(!dir.path().join("out.jsonl").exists());
    let thinking = rt
        .block_on(ScriptedServer::start_with(ScriptedServerConfig {
            reasoning_tokens: Some(300),
            ..Default::default()
        }))
        .unwrap();
    let (ok, err) = run(
        &thinking,
        "[classify]\nmax_tokens = 200\n[llm_filter]\nmax_tokens = 1024\n[generate]\nmax_tokens = 1024\n[verify]\nmax_tokens = 1024\n",
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains("[classify]") && err.contains("without any content"),
        "{err}"
    );
    assert_eq!(thinking.requests(), 0);
}

/// Low item: two engines started on one group. The newer one's claim fences the older one, which
/// stops with an error naming the cause, and the newer one goes on reading: every document
/// produced after the takeover is processed, and the run ends with every offset committed.
#[test]
fn a_second_engine_on_the_group_fences_the_first() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use webscale_rl_dataflow::cluster::ClusterOptions;
    use webscale_rl_dataflow::runtime::{RunControl, run_kafka};
    use webscale_rl_dataflow::{Funnel, PipelineConfig};
    let kafka = crate::support::Kafka::start(2, "e2e-fenced");
    let lines = sample_lines();
    kafka.produce_lines(lines[..10].to_vec());
    let engine = |until_caught_up: bool| {
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = PipelineConfig {
            kafka: kafka.cfg.clone(),
            ..Default::default()
        };
        let control = RunControl {
            stop: stop.clone(),
            until_caught_up,
            ..Default::default()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = run_kafka(
                cfg,
                ClusterOptions::default().timely_config().unwrap(),
                control,
                Funnel::default(),
                Default::default(),
            );
            let _ = tx.send(r.map_err(|e| format!("{e:#}")));
        });
        (stop, rx)
    };
    let (_first_stop, first) = engine(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while kafka.committed().values().sum::<i64>() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first engine commits"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (second_stop, second) = engine(false);
    let error = first
        .recv_timeout(Duration::from_secs(30))
        .expect("the first engine stops once fenced")
        .expect_err("a fenced engine fails");
    assert!(error.contains("fenced"), "{error}");
    assert!(error.contains("claimed by another engine"), "{error}");
    assert!(error.contains("e2e-fenced"), "names the group: {error}");
    kafka.produce_lines(lines[10..30].to_vec());
    while kafka.committed().values().sum::<i64>() < 30 {
        assert!(
            std::time::Instant::now() < deadline + Duration::from_secs(30),
            "the second engine goes on: {:?}",
            kafka.committed()
        );
        assert!(
            second.try_recv().is_err(),
            "the second engine keeps running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    second_stop.store(true, Ordering::Relaxed);
    second
        .recv_timeout(Duration::from_secs(30))
        .expect("the second engine stops when asked")
        .expect("and ends cleanly");
    let accounted = kafka.outputs().len() + kafka.dead_letters().len();
    assert!(
        accounted >= 30,
        "every document is accounted for: {accounted}"
    );
}
