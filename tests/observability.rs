//! Observability end to end: `/metrics` counts exactly the records written to the output and
//! dead-letter topics; the dashboard, loaded in headless Chromium while the engine runs, shows the
//! same funnel numbers as `/metrics` without a JavaScript error (screenshot in
//! `target/test-output/dashboard.png`); the run summary's counts equal the output files' lines.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use webscale_rl_connectors::llm::scripted_server::ScriptedServer;
use webscale_rl_connectors::llm::{LlmConfig, Price};
use webscale_rl_dataflow::cluster::ClusterOptions;
use webscale_rl_dataflow::graph::Resources;
use webscale_rl_dataflow::http::MetricsServer;
use webscale_rl_dataflow::llm_service::LlmBackend;
use webscale_rl_dataflow::metrics::{EngineMetrics, sample};
use webscale_rl_dataflow::runtime::{RunControl, run_kafka};
use webscale_rl_dataflow::{Funnel, PipelineConfig};

use crate::support::{Kafka, http_get, oracle};

/// The scripted server, reporting a third of each prompt as served from its prefix cache.
fn scripted_server(runtime: &tokio::runtime::Runtime) -> ScriptedServer {
    use webscale_rl_connectors::llm::scripted_server::ScriptedServerConfig;
    runtime
        .block_on(ScriptedServer::start_with(ScriptedServerConfig {
            answer: Some(Arc::new(oracle)),
            latency: Duration::from_millis(20),
            cached_prompt_fraction: 1.0 / 3.0,
            ..Default::default()
        }))
        .unwrap()
}

/// 10 documents that pass the CPU stages (markers steer them through the LLM stages) and 4 that
/// the quality filter or the parser drops.
fn corpus() -> Vec<Vec<u8>> {
    let markers = [
        "",
        "",
        "",
        "",
        "[[social]]",
        "[[social]]",
        "[[social]]",
        "[[boilerplate]]",
        "[[wrong]]",
        "",
    ];
    let mut lines: Vec<Vec<u8>> = crate::support::good_articles()
        .zip(markers)
        .enumerate()
        .map(|(i, (mut d, m))| {
            d["text"] = format!("{m} {}", d["text"].as_str().unwrap()).into();
            d["url"] = format!("https://example.org/doc/{i}").into();
            serde_json::to_vec(&d).unwrap()
        })
        .collect();
    assert_eq!(lines.len(), markers.len());
    lines.push(br#"{"id": "short", "text": "too short to keep"}"#.to_vec());
    lines.push(br#"{"id": "empty", "text": ""}"#.to_vec());
    lines.push(b"{not json".to_vec());
    lines.push(br#"{"id": "bullets", "text": "- a\n- b\n- c\n- d\n- e\n- f\n- g\n- h"}"#.to_vec());
    lines
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    sample(text, name, labels).unwrap_or(0.0) as u64
}

fn per_domain(records: &[Value]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(r["domain"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    m
}

/// The metrics of an in-process run (2 workers, mock Kafka, scripted LLM) against what the
/// topics actually hold.
#[test]
fn metrics_count_exactly_the_records_written() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = scripted_server(&runtime);
    let kafka = Kafka::start(3, "obs-metrics");
    let produced = kafka.produce_lines(corpus());

    let llm = LlmConfig {
        endpoints: vec![server.base_url()],
        model: Some("scripted".into()),
        prices: [(
            "scripted".to_string(),
            Price {
                prompt_per_million: 2.0,
                completion_per_million: 8.0,
                cached_prompt_per_million: None,
            },
        )]
        .into(),
        ..Default::default()
    };
    let backend = LlmBackend::start(&llm).unwrap();
    let funnel = Funnel::default();
    let metrics = EngineMetrics::new(&funnel);
    metrics.attach_llm(backend.metrics_handle());
    let http = MetricsServer::start("127.0.0.1:0", metrics).unwrap();
    let addr = http.local_addr().to_string();
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let (status, why) = http_get(&addr, "/readyz");
    assert_eq!(status, 503, "not ready before Kafka is connected: {why}");
    assert!(why.contains("source"), "{why}");

    let cfg = PipelineConfig {
        kafka: kafka.cfg.clone(),
        ..Default::default()
    };
    let workers = ClusterOptions {
        workers: 2,
        ..Default::default()
    };
    run_kafka(
        cfg,
        workers.timely_config().unwrap(),
        RunControl {
            until_caught_up: true,
            ..Default::default()
        },
        funnel.clone(),
        Resources {
            llm: Some(backend.service()),
            benchmarks: None,
            ..Default::default()
        },
    )
    .unwrap();

    let outputs = kafka.outputs();
    let dead = kafka.dead_letters();
    let (status, text) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);

    // Records: what the topics hold, by destination, by stage and reason, by domain.
    assert!(!outputs.is_empty() && !dead.is_empty());
    assert_eq!(m("webscale_documents_consumed_total", &[]), produced);
    assert_eq!(
        m(
            "webscale_output_records_total",
            &[("topic", &kafka.cfg.output_topic), ("kind", "output")]
        ),
        outputs.len() as u64
    );
    assert_eq!(
        m(
            "webscale_output_records_total",
            &[
                ("topic", &kafka.cfg.dead_letter_topic),
                ("kind", "dead_letter")
            ]
        ),
        dead.len() as u64
    );
    let mut dead_by_reason: BTreeMap<(String, String), u64> = BTreeMap::new();
    for d in &dead {
        *dead_by_reason
            .entry((
                d["stage"].as_str().unwrap().into(),
                d["reason"].as_str().unwrap().into(),
            ))
            .or_default() += 1;
    }
    for ((stage, reason), n) in &dead_by_reason {
        assert_eq!(
            m(
                "webscale_stage_documents_total",
                &[("stage", stage), ("outcome", reason)]
            ),
            *n,
            "{stage}/{reason}"
        );
    }
    assert!(dead_by_reason.contains_key(&("llm_filter".into(), "not_qualified".into())));
    let domains = per_domain(&outputs);
    assert_eq!(domains.len(), 2, "{domains:?}");
    for (domain, n) in &domains {
        assert_eq!(
            m("webscale_qa_pairs_total", &[("domain", domain)]),
            *n,
            "{domain}"
        );
    }

    // LLM: every HTTP request the server saw, tokens and cost, one latency sample per call.
    assert_eq!(m("webscale_llm_requests_total", &[]), server.requests());
    let calls = m("webscale_llm_calls_total", &[]);
    assert!(calls > 0);
    assert_eq!(
        m("webscale_llm_request_duration_seconds_count", &[]),
        calls - m("webscale_llm_cache_hits_total", &[])
    );
    assert!(
        m(
            "webscale_llm_calls_total",
            &[("stage", "classify"), ("model", "scripted")]
        ) > 0
    );
    assert!(m("webscale_llm_tokens_total", &[("direction", "input")]) > 0);
    assert!(m("webscale_llm_tokens_total", &[("direction", "output")]) > 0);
    // Cached prompt tokens, as the server reported them, flow into the metrics.
    let cached = m(
        "webscale_llm_tokens_total",
        &[("direction", "cached_input")],
    );
    let input = m("webscale_llm_tokens_total", &[("direction", "input")]);
    assert!(cached > 0 && cached * 2 < input, "{cached} of {input}");
    assert!(sample(&text, "webscale_llm_cost_dollars_total", &[]).unwrap() > 0.0);
    assert_eq!(m("webscale_llm_in_flight_requests", &[]), 0);

    // Kafka: everything read and committed, nothing in flight.
    for (p, end) in kafka.end_offsets() {
        let p = p.to_string();
        let labels = [("topic", kafka.cfg.input_topic.as_str()), ("partition", &p)];
        assert_eq!(
            sample(&text, "webscale_kafka_committed_offset", &labels),
            Some(end as f64),
            "partition {p}"
        );
        assert_eq!(
            sample(&text, "webscale_kafka_consumer_lag", &labels),
            Some(0.0),
            "partition {p}"
        );
    }
    assert_eq!(m("webscale_documents_in_flight", &[]), 0);

    // Health, and the dashboard's JSON agrees.
    let (status, why) = http_get(&addr, "/readyz");
    assert_eq!(status, 200, "{why}");
    assert_eq!(m("webscale_ready", &[]), 1);
    let (status, state) = http_get(&addr, "/api/state");
    assert_eq!(status, 200);
    let state: Value = serde_json::from_str(&state).unwrap();
    let emitted = state["funnel"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "emitted")
        .unwrap();
    assert_eq!(emitted["count"], outputs.len());
    let latest = state["latest"].as_array().unwrap();
    assert_eq!(latest.len(), outputs.len().min(10));
    assert!(latest.iter().all(|r| {
        r["url"]
            .as_str()
            .unwrap()
            .starts_with("https://example.org/doc/")
    }));
    assert!(state["llm"]["cost_per_1000_pairs"].as_f64().unwrap() > 0.0);
    assert_eq!(state["llm"]["cached_prompt_tokens"].as_u64(), Some(cached));
    drop(http);
    drop(backend);
}

/// Chromium, from Debian's `chromium` package (.ci/run installs it). Missing is a failure.
fn chromium() -> String {
    let candidates = std::env::var("WEBSCALE_CHROMIUM")
        .into_iter()
        .chain(["chromium".to_string(), "chromium-browser".to_string()]);
    for c in candidates {
        if Command::new(&c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c;
        }
    }
    panic!("chromium not found: install it (`apt-get install -y chromium`; .ci/run does)");
}

/// Runs headless Chromium with `args`, killed after a minute; returns its stdout.
fn run_chromium(args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap()
}

/// The value of the `data-value` attribute of the element with `id` in a dumped DOM.
fn data_value(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let tag_end = at + dom[at..].find('>')?;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..tag_end];
    let v = tag.find("data-value=\"")? + "data-value=\"".len();
    Some(tag[v..v + tag[v..].find('"')?].to_string())
}

/// The binary in Kafka mode, running (no --until-caught-up): its dashboard, loaded in headless
/// Chromium, shows the numbers of /metrics; SIGTERM ends it with a summary whose counts are the
/// topics' record counts.
#[test]
fn the_dashboard_shows_the_metrics_in_a_browser() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = scripted_server(&runtime);
    let kafka = Kafka::start(2, "obs-dashboard");
    let produced = kafka.produce_lines(corpus());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "[llm]\nendpoints = [\"{}\"]\nmodel = \"scripted\"\n\
             [llm.prices.scripted]\nprompt_per_million = 2.5\ncompletion_per_million = 10.0\n",
            server.base_url()
        ),
    )
    .unwrap();
    let mut engine = crate::support::engine()
        .args(["run", "--json-summary", "-w", "2", "--brokers"])
        .arg(&kafka.cfg.brokers)
        .args(["--group", "obs-dashboard", "--metrics-addr", "127.0.0.1:0"])
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr_lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = BufReader::new(engine.stderr.take().unwrap());
    let collected = stderr_lines.clone();
    let stderr_reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            collected.lock().unwrap().push(line);
        }
    });
    let dump = |lines: &Arc<Mutex<Vec<String>>>| lines.lock().unwrap().join("\n");

    // The dashboard's address is printed at start.
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let found = stderr_lines.lock().unwrap().iter().find_map(|l| {
            l.strip_prefix("dashboard: http://")
                .and_then(|rest| rest.split('/').next())
                .map(str::to_string)
        });
        if let Some(a) = found {
            break a;
        }
        assert!(
            Instant::now() < deadline && engine.try_wait().unwrap().is_none(),
            "no dashboard address printed: {}",
            dump(&stderr_lines)
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    // Wait until everything is consumed and durable; the engine keeps running.
    let deadline = Instant::now() + Duration::from_secs(90);
    let text = loop {
        let (_, text) = http_get(&addr, "/metrics");
        if metric(&text, "webscale_documents_consumed_total", &[]) == produced
            && metric(&text, "webscale_documents_in_flight", &[]) == 0
            && metric(&text, "webscale_kafka_consumer_lag", &[]) == 0
            && sample(&text, "webscale_kafka_consumer_lag", &[]).is_some()
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish: {text}\n{}",
            dump(&stderr_lines)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(http_get(&addr, "/readyz").0, 200);
    let outputs = kafka.outputs();
    let dead = kafka.dead_letters();
    let written = |kind: &str| metric(&text, "webscale_output_records_total", &[("kind", kind)]);
    assert_eq!(written("output"), outputs.len() as u64);
    assert_eq!(written("dead_letter"), dead.len() as u64);

    // The page as a browser renders it: its funnel is /metrics' funnel, and no script failed.
    let url = format!("http://{addr}/");
    let dom = run_chromium(&["--dump-dom", &url]);
    assert!(
        dom.contains("data-ok=\"1\""),
        "the page did not render: {dom}"
    );
    let errors_at = dom.find("id=\"errors\"").expect("an #errors element");
    let errors_tag = &dom[errors_at..errors_at + dom[errors_at..].find("</div>").unwrap()];
    assert!(
        errors_tag.contains("hidden") && errors_tag.ends_with('>'),
        "JavaScript errors on the page: {errors_tag}"
    );
    let passed = |stage: &str| {
        metric(
            &text,
            "webscale_stage_documents_total",
            &[("stage", stage), ("outcome", "passed")],
        )
    };
    let expected = [
        (
            "funnel-documents",
            metric(&text, "webscale_documents_consumed_total", &[]),
        ),
        ("funnel-filtered", passed("quality_filter")),
        ("funnel-deduplicated", passed("near_dedup")),
        ("funnel-classified", passed("classify")),
        ("funnel-generated", passed("generate")),
        ("funnel-verified", passed("verify")),
        ("funnel-emitted", written("output")),
        ("stat-dead-lettered", written("dead_letter")),
    ];
    for (id, want) in expected {
        assert_eq!(
            data_value(&dom, id).as_deref(),
            Some(want.to_string().as_str()),
            "#{id} on the page vs /metrics"
        );
    }
    assert!(passed("verify") > 0 && passed("classify") > 0);
    // The latest pairs link to their sources.
    assert!(dom.contains("href=\"https://example.org/doc/"), "{dom}");

    // A screenshot at a laptop's resolution, kept with the test output.
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-output");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    run_chromium(&[
        &format!("--screenshot={}", png.display()),
        "--window-size=1366,768",
        "--hide-scrollbars",
        &url,
    ]);
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{} bytes",
        bytes.len()
    );

    // SIGTERM: drain, commit, and a summary whose counts are the topics' counts.
    unsafe { libc::kill(engine.id() as i32, libc::SIGTERM) };
    let mut stdout = String::new();
    engine
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = engine.wait().unwrap();
    stderr_reader.join().unwrap();
    assert!(status.success(), "{}", dump(&stderr_lines));
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["mode"], "kafka");
    assert_eq!(summary["emitted"], outputs.len());
    assert_eq!(summary["dead_lettered"], dead.len());
    let domains: BTreeMap<String, u64> =
        serde_json::from_value(summary["qa_pairs_per_domain"].clone()).unwrap();
    assert_eq!(domains, per_domain(&outputs));
    let table = dump(&stderr_lines);
    for part in [
        "webscale-rl kafka summary",
        "QA pairs per domain:",
        "Social Science",
        "cost per 1,000 QA pairs",
    ] {
        assert!(table.contains(part), "{part} missing from: {table}");
    }
}

fn lines_of(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// File mode with the LLM: the summary's counts (per stage, per domain, written) are the output
/// files' line counts.
#[test]
fn the_file_mode_summary_counts_the_lines_written() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = scripted_server(&runtime);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines = corpus();
    let mut f = std::fs::File::create(&input).unwrap();
    for l in &lines {
        f.write_all(l).unwrap();
        f.write_all(b"\n").unwrap();
    }
    drop(f);
    let output = dir.path().join("out.jsonl");
    let rejects = dir.path().join("rejects.jsonl");
    let out = crate::support::engine()
        .args([
            "run",
            "--json-summary",
            "-w",
            "2",
            "--llm-model",
            "scripted",
        ])
        .args(["--llm-url", &server.base_url(), "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .arg("--rejects")
        .arg(&rejects)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("dashboard:"),
        "file mode serves no metrics by default: {stderr}"
    );
    let outputs = lines_of(&output);
    let dead = lines_of(&rejects);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["mode"], "file");
    assert_eq!(summary["consumed"], lines.len());
    assert_eq!(summary["emitted"], outputs.len());
    assert_eq!(summary["qa_pairs"], outputs.len());
    assert_eq!(summary["dead_lettered"], dead.len());
    let domains: BTreeMap<String, u64> =
        serde_json::from_value(summary["qa_pairs_per_domain"].clone()).unwrap();
    assert_eq!(domains, per_domain(&outputs));
    assert_eq!(domains.len(), 2, "{domains:?}");
    // Every rejection reason in the summary is the count of its dead letters.
    let mut rejected = 0;
    for (stage, outcomes) in summary["stages"].as_object().unwrap() {
        for (outcome, n) in outcomes.as_object().unwrap() {
            if outcome == "passed" {
                continue;
            }
            let in_file = dead
                .iter()
                .filter(|d| d["stage"] == stage.as_str() && d["reason"] == outcome.as_str())
                .count();
            assert_eq!(n.as_u64().unwrap() as usize, in_file, "{stage}/{outcome}");
            rejected += in_file;
        }
    }
    assert_eq!(rejected, dead.len());
    assert!(summary["llm"]["total"]["calls"].as_u64().unwrap() > 0);
}

/// An explicit metrics address that is taken fails at once, naming it.
#[test]
fn a_taken_metrics_address_is_an_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"id\": \"a\", \"text\": \"x\"}\n").unwrap();
    let out = crate::support::engine()
        .args(["run", "--no-llm", "--metrics-addr", &addr, "--input"])
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("out.jsonl"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("cannot listen on metrics address '{addr}'")),
        "{stderr}"
    );
}
