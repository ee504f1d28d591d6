//! Memory of a long run with default settings: N distinct documents through the engine
//! (`run --no-llm`, file mode, the dedup indexes in their default on-disk place), peak RSS of the
//! process for two sizes, and the growth per further document.
//!
//! `cargo bench --bench memory` (1,000,000 documents; `WEBSCALE_MEMORY_DOCS=N` for another size).
//! The documents are random 70-word texts over the sample corpus's vocabulary (stop words kept,
//! so they pass the quality filter), distinct for exact and near dedup alike.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Instant;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = common::load_sample()
        .iter()
        .flat_map(|d| {
            d.text
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|w| w.len() >= 2 && w.chars().all(|c| c.is_ascii_alphabetic()))
        .map(|w| w.to_ascii_lowercase())
        .collect();
    words.sort();
    words.dedup();
    words
}

fn write_corpus(path: &std::path::Path, n: u64) {
    let vocab = vocabulary();
    let stop = ["the", "and", "of", "to", "in", "that", "is", "with"];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut text = String::new();
    for i in 0..n {
        text.clear();
        for w in 0..70 {
            let word = if w % 4 == 0 {
                stop[(rng.next() % stop.len() as u64) as usize]
            } else {
                &vocab[(rng.next() % vocab.len() as u64) as usize]
            };
            text.push_str(word);
            text.push(if w % 12 == 11 { '\n' } else { ' ' });
        }
        writeln!(
            out,
            "{}",
            serde_json::json!({"id": format!("doc-{i}"), "text": text.trim_end()})
        )
        .unwrap();
    }
    out.flush().unwrap();
}

/// Runs the engine over `input`; returns (peak RSS in bytes, wall seconds, the summary).
// The child is reaped with `wait4`, which also reports its peak RSS.
#[allow(clippy::zombie_processes)]
fn run(input: &std::path::Path, scratch: &std::path::Path) -> (u64, f64, serde_json::Value) {
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_webscale-rl"))
        .args(["run", "--no-llm", "--quiet", "--json-summary", "-w", "2"])
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(scratch.join("out.jsonl"))
        .env("TMPDIR", scratch)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut out = child.stdout.unwrap();
    let mut summary = String::new();
    std::io::Read::read_to_string(&mut out, &mut summary).unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child and fills `usage`.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    assert_eq!(status, 0, "the engine failed");
    let wall = started.elapsed().as_secs_f64();
    // ru_maxrss is in KiB on Linux.
    (
        usage.ru_maxrss as u64 * 1024,
        wall,
        serde_json::from_str(summary.trim()).unwrap(),
    )
}

fn main() {
    let n: u64 = std::env::var("WEBSCALE_MEMORY_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    for size in [n / 4, n] {
        let input = dir.path().join(format!("docs-{size}.jsonl"));
        write_corpus(&input, size);
        let (rss, wall, summary) = run(&input, dir.path());
        let emitted = summary["emitted"].as_u64().unwrap();
        println!(
            "memory: {size} documents, {emitted} passed every stage, peak RSS {:.1} MiB, {wall:.1} s ({:.0} docs/s)",
            rss as f64 / (1 << 20) as f64,
            size as f64 / wall
        );
        rows.push((size, rss));
        std::fs::remove_file(&input).unwrap();
    }
    let (small, large) = (rows[0], rows[1]);
    println!(
        "memory: peak RSS growth {:.0} bytes per further distinct document ({} -> {} documents)",
        (large.1 as f64 - small.1 as f64) / (large.0 - small.0) as f64,
        small.0,
        large.0
    );
}
