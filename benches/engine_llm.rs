//! The whole engine against the scripted LLM server: how busy it keeps the server, what its CPU
//! costs per call, and how much of its prompt text a server's prefix cache can serve.
//!
//! ```text
//! cargo bench --bench engine_llm [-- --copies 4 --concurrency 64 --latency-ms 200 --workers 2
//!                                  --dedup --config 'TOML']
//! ```
//!
//! The scripted server ([`pipeline_answer`]: every document qualifies, two personas, one pair each,
//! all verified) runs in a child process — this binary re-executed with `WEBSCALE_ENGINE_BENCH_SERVER`
//! — with a fixed latency L, and simulates a block-wise prefix cache (64-character blocks, about
//! 512 k tokens). The engine runs as another child, in file mode, over `--copies` copies of the
//! shared web sample (`../shared/data/web/sample.jsonl`; each copy after the first has its own ids
//! and a word of its own after every fourth, so even with `--dedup` it reaches the LLM), with
//! `[llm] concurrency = C` and no response cache. Reported:
//!
//! - requests per second over the server's busy window (first request received to last answered)
//!   against the bound C / L;
//! - the engine's CPU seconds (user + system, all threads, `wait4`) per 1,000 calls;
//! - prompt characters, the share the prefix cache served, and the characters prefilled anew per
//!   emitted QA pair.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use webscale_rl_connectors::llm::scripted_server::{
    ScriptedServer, ScriptedServerConfig, pipeline_answer,
};

// Only `shared` is used here; the other benches use the rest.
#[allow(dead_code)]
mod common;

const SERVER_ENV: &str = "WEBSCALE_ENGINE_BENCH_SERVER";

struct Args {
    copies: usize,
    concurrency: usize,
    latency_ms: u64,
    workers: usize,
    /// Extra TOML appended to the bench's config (e.g. a call-merging option).
    config: String,
    /// Keep the dedup stages on (then copies beyond the first are dropped before the LLM).
    dedup: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        copies: 4,
        concurrency: 64,
        latency_ms: 200,
        workers: 2,
        config: String::new(),
        dedup: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = || argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--copies" => a.copies = val().parse().expect("--copies N"),
            "--concurrency" => a.concurrency = val().parse().expect("--concurrency C"),
            "--latency-ms" => a.latency_ms = val().parse().expect("--latency-ms L"),
            "--workers" => a.workers = val().parse().expect("--workers W"),
            "--config" => a.config = val().replace("\\n", "\n"),
            "--dedup" => {
                a.dedup = true;
                i += 1;
                continue;
            }
            _ => {
                // `--bench` and filters passed by cargo.
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// Server mode: print the base URL, serve until stdin closes, then print the counters as JSON.
fn serve(latency_ms: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(ScriptedServer::start_with(ScriptedServerConfig {
            latency: Duration::from_millis(latency_ms),
            answer: Some(std::sync::Arc::new(pipeline_answer)),
            log_bodies: false,
            prefix_cache_blocks: 32_768,
            ..ScriptedServerConfig::default()
        }))
        .unwrap();
    println!("{}", server.base_url());
    std::io::stdout().flush().unwrap();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    let log = server.log();
    let window = match (log.first(), log.last()) {
        (Some(first), Some(last)) => {
            (last.received - first.received + Duration::from_millis(latency_ms)).as_secs_f64()
        }
        _ => 0.0,
    };
    let (prompt_chars, cached_chars) = server.prefix_cache_chars();
    println!(
        "{}",
        json!({
            "requests": server.requests(),
            "max_in_flight": server.max_in_flight(),
            "window_secs": window,
            "prompt_chars": prompt_chars,
            "cached_chars": cached_chars,
        })
    );
}

// The engine is reaped with `wait4`, which also reports its CPU time.
#[allow(clippy::zombie_processes)]
fn main() {
    let args = parse_args();
    if let Ok(latency) = std::env::var(SERVER_ENV) {
        serve(latency.parse().expect("latency ms"));
        return;
    }
    let sample = common::shared("WEBSCALE_SAMPLE", "web/sample.jsonl");
    let sample = std::fs::read_to_string(&sample)
        .unwrap_or_else(|e| panic!("reading {}: {e}", sample.display()));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for copy in 0..args.copies {
        for line in sample.lines() {
            let mut doc: Value = serde_json::from_str(line).unwrap();
            doc["id"] = json!(format!("{}#{copy}", doc["id"].as_str().unwrap_or("doc")));
            if copy > 0 {
                // A word of its own after every fourth: no 5-word shingle is shared, so with
                // `--dedup` the copies are new documents too.
                let text = doc["text"].as_str().unwrap_or_default();
                let varied: Vec<String> = text
                    .split(' ')
                    .enumerate()
                    .map(|(i, w)| match i % 4 {
                        3 => format!("{w} v{copy}x{i}"),
                        _ => w.to_string(),
                    })
                    .collect();
                doc["text"] = json!(varied.join(" "));
            }
            writeln!(out, "{doc}").unwrap();
        }
    }
    out.flush().unwrap();
    drop(out);
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[exact_dedup]\nenabled = {0}\n[near_dedup]\nenabled = {0}\n\
             [llm]\nconcurrency = {1}\n{2}\n",
            args.dedup, args.concurrency, args.config
        ),
    )
    .unwrap();

    let mut server = Command::new(std::env::current_exe().unwrap())
        .env(SERVER_ENV, args.latency_ms.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the scripted server process");
    let mut server_out = BufReader::new(server.stdout.take().unwrap());
    let mut url = String::new();
    server_out.read_line(&mut url).unwrap();

    let started = Instant::now();
    let engine = Command::new(env!("CARGO_BIN_EXE_webscale-rl"))
        .args(["run", "--quiet", "--json-summary", "--no-llm-cache", "-w"])
        .arg(args.workers.to_string())
        .arg("--config")
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("out.jsonl"))
        .args(["--llm-url", url.trim()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the engine");
    let pid = engine.id() as libc::pid_t;
    let mut summary = String::new();
    engine.stdout.unwrap().read_to_string(&mut summary).unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child and fills `usage`.
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    assert_eq!(status, 0, "the engine failed");
    let wall = started.elapsed().as_secs_f64();
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = secs(usage.ru_utime) + secs(usage.ru_stime);
    drop(server.stdin.take());
    let mut stats = String::new();
    server_out.read_to_string(&mut stats).unwrap();
    server.wait().unwrap();
    let stats: Value = serde_json::from_str(stats.trim()).expect("server counters");
    let summary: Value = serde_json::from_str(summary.trim()).expect("engine summary");

    let requests = stats["requests"].as_f64().unwrap();
    let window = stats["window_secs"].as_f64().unwrap();
    let bound = args.concurrency as f64 / (args.latency_ms as f64 / 1000.0);
    let prompt_chars = stats["prompt_chars"].as_f64().unwrap();
    let cached_chars = stats["cached_chars"].as_f64().unwrap();
    let pairs = summary["qa_pairs"].as_f64().unwrap();
    println!(
        "documents {} | calls {requests} | QA pairs {pairs} | wall {wall:.1} s | busy window {window:.1} s",
        summary["consumed"]
    );
    println!(
        "requests/s {:.1} = {:.1} % of C/L = {bound:.0} (C = {}, L = {} ms); server max in flight {}",
        requests / window,
        100.0 * requests / window / bound,
        args.concurrency,
        args.latency_ms,
        stats["max_in_flight"]
    );
    println!(
        "engine CPU {cpu:.2} s = {:.3} s per 1,000 calls",
        cpu / requests * 1000.0
    );
    println!(
        "prompt chars {prompt_chars:.0} ({:.0} per call); prefix cache served {:.1} %; \
         prefilled anew {:.0} chars per QA pair, {:.0} prompt chars per QA pair",
        prompt_chars / requests,
        100.0 * cached_chars / prompt_chars,
        (prompt_chars - cached_chars) / pairs,
        prompt_chars / pairs
    );
}
