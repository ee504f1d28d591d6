//! LLM client throughput and CPU cost against the scripted server.
//!
//! `cargo bench --bench llm_throughput [-- --n 2000 --concurrency 64 --latency-ms 200]`
//!
//! The scripted OpenAI-compatible server (fixed latency L) runs in a child
//! process (this same binary, re-executed with `WEBSCALE_LLM_BENCH_SERVER`
//! set), so the process CPU time measured here (`getrusage(RUSAGE_SELF)`,
//! user + system, all threads) is the client's alone: the submitting thread
//! (standing in for a timely worker), the tokio runtime threads doing HTTP,
//! JSON and accounting, and the callbacks. N requests are submitted at once
//! through `LlmClient::submit` with a concurrency cap C; the bound on
//! throughput is C / L requests per second.
//!
//! Phases: (1) no cache; (2) with the redb response cache, all misses
//! (answers written); (3) the same requests again, all cache hits.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use webscale_rl_connectors::llm::scripted_server::{ScriptedServer, ScriptedServerConfig};
use webscale_rl_connectors::llm::{ChatRequest, LlmClient, LlmConfig};

const SERVER_ENV: &str = "WEBSCALE_LLM_BENCH_SERVER";

struct Args {
    n: usize,
    concurrency: usize,
    latency_ms: u64,
    prompt_chars: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        n: 2000,
        concurrency: 64,
        latency_ms: 200,
        prompt_chars: 1500,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = || argv.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match argv[i].as_str() {
            "--n" => a.n = val().expect("--n N") as usize,
            "--concurrency" => a.concurrency = val().expect("--concurrency C") as usize,
            "--latency-ms" => a.latency_ms = val().expect("--latency-ms L"),
            "--prompt-chars" => a.prompt_chars = val().expect("--prompt-chars K") as usize,
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

/// Server mode: print the base URL, serve until stdin closes, then print the
/// server's counters.
fn serve(latency_ms: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(ScriptedServer::start_with(ScriptedServerConfig {
            latency: Duration::from_millis(latency_ms),
            log_bodies: false,
            ..ScriptedServerConfig::default()
        }))
        .unwrap();
    println!("{}", server.base_url());
    std::io::stdout().flush().unwrap();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    println!(
        "requests={} max_in_flight={}",
        server.requests(),
        server.max_in_flight()
    );
    std::io::stdout().flush().unwrap();
}

/// User + system CPU time of this process, all threads.
fn process_cpu() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is valid.
    let ru = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()), 0);
        ru.assume_init()
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn request(i: usize, prompt_chars: usize) -> ChatRequest {
    let mut passage = format!("Document {i}. ");
    while passage.len() < prompt_chars {
        passage.push_str("The quick brown fox jumps over the lazy dog near the river bank. ");
    }
    passage.truncate(prompt_chars);
    ChatRequest::new("bench-model")
        .system("Write one question and its answer about the passage, as JSON.")
        .user(passage)
        .temperature(0.0)
        .max_tokens(256)
}

struct Phase {
    wall: Duration,
    cpu: Duration,
    ok: usize,
    cached: usize,
    p50: Duration,
    p99: Duration,
}

/// Submits requests `range` at once (the client caps concurrency) and waits
/// for all callbacks.
fn run_phase(client: &LlmClient, range: std::ops::Range<usize>, prompt_chars: usize) -> Phase {
    let n = range.len();
    let (tx, rx) = mpsc::channel();
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    for i in range {
        let tx = tx.clone();
        let sent = Instant::now();
        client.submit("bench", request(i, prompt_chars), move |r| {
            let _ = tx.send((sent.elapsed(), r.map(|resp| resp.cached)));
        });
    }
    drop(tx);
    let mut lat = Vec::with_capacity(n);
    let (mut ok, mut cached) = (0, 0);
    for (l, r) in rx.iter() {
        lat.push(l);
        match r {
            Ok(c) => {
                ok += 1;
                cached += usize::from(c);
            }
            Err(e) => eprintln!("call failed: {e}"),
        }
    }
    let wall = t0.elapsed();
    let cpu = process_cpu() - cpu0;
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Phase {
        wall,
        cpu,
        ok,
        cached,
        p50: pct(0.5),
        p99: pct(0.99),
    }
}

fn report(name: &str, p: &Phase, n: usize, bound: f64) {
    let rps = n as f64 / p.wall.as_secs_f64();
    let of_bound = if p.cached == n {
        "no HTTP".to_owned()
    } else {
        format!("{:.1} % of C/L", 100.0 * rps / bound)
    };
    println!(
        "{name:<22} {n} calls ({} ok, {} cached) in {:.2} s: {rps:.1} req/s = {of_bound}; \
         CPU {:.3} s = {:.3} ms/call; submit-to-callback p50 {:.0} ms, p99 {:.0} ms",
        p.ok,
        p.cached,
        p.wall.as_secs_f64(),
        p.cpu.as_secs_f64(),
        p.cpu.as_secs_f64() * 1e3 / n as f64,
        p.p50.as_secs_f64() * 1e3,
        p.p99.as_secs_f64() * 1e3,
    );
}

fn main() {
    let args = parse_args();
    if let Ok(latency) = std::env::var(SERVER_ENV) {
        serve(latency.parse().expect("latency ms"));
        return;
    }

    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(SERVER_ENV, args.latency_ms.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the scripted server process");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    out.read_line(&mut url).unwrap();
    let url = url.trim().to_owned();

    // The engine's runtime: one per process, threads = cores.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = LlmConfig {
        endpoints: vec![url.clone()],
        api_key_env: String::new(),
        concurrency: args.concurrency,
        ..LlmConfig::default()
    };
    let bound = args.concurrency as f64 / (args.latency_ms as f64 / 1e3);
    println!(
        "llm_throughput: N={} C={} L={} ms prompt={} chars, server {url} (child process); \
         bound C/L = {bound:.0} req/s; {} CPU cores",
        args.n,
        args.concurrency,
        args.latency_ms,
        args.prompt_chars,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let client = LlmClient::new(base.clone(), rt.handle().clone()).unwrap();
    // Warm-up: open the C keep-alive connections.
    let w = args.concurrency;
    run_phase(&client, 1_000_000..1_000_000 + w, args.prompt_chars);
    let p1 = run_phase(&client, 0..args.n, args.prompt_chars);
    report("no cache", &p1, args.n, bound);
    drop(client);

    let dir = std::env::temp_dir().join(format!("llm-bench-{}", std::process::id()));
    let mut cfg = base;
    cfg.cache_path = Some(dir.join("cache.redb"));
    let client = LlmClient::new(cfg, rt.handle().clone()).unwrap();
    run_phase(&client, 2_000_000..2_000_000 + w, args.prompt_chars);
    let p2 = run_phase(&client, 0..args.n, args.prompt_chars);
    report("cache on, all misses", &p2, args.n, bound);
    client.flush_cache().unwrap();
    let p3 = run_phase(&client, 0..args.n, args.prompt_chars);
    report("cache on, all hits", &p3, args.n, bound);
    let usage = client.usage();
    drop(client);
    let _ = std::fs::remove_dir_all(&dir);

    drop(child.stdin.take());
    let mut tail = String::new();
    out.read_to_string(&mut tail).unwrap();
    child.wait().unwrap();
    println!("server: {}", tail.trim());
    println!(
        "client usage (cache phases): calls={} http_requests={} cache_hits={} retries={} failures={}",
        usage.total.calls,
        usage.total.http_requests,
        usage.total.cache_hits,
        usage.total.retries,
        usage.total.failed_calls()
    );
}
