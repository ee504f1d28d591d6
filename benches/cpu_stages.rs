//! Throughput of the CPU stages, whole process: `webscale-rl run --no-llm` (parse, quality filter,
//! exact dedup, near dedup; with `--benchmarks`, decontamination too) on a corpus of 30+ MB built
//! from the shared sample, at 1 and 2 workers; then the split of a run by stage (`run
//! --operator-times`, timed inside the real process at 1 and 2 workers); then the per-step split,
//! measured in this process on the same documents; then rensa's MinHash signatures alone on the
//! same texts
//! (`benches/rensa_minhash.py`, when `pip install rensa` has been run).
//!
//! ```text
//! cargo bench --bench cpu_stages                      # figures in BENCHMARKS.md
//! cargo bench --bench cpu_stages -- --copies 8 --runs 5 --benchmarks ../shared/data/benchmarks
//! ```
//!
//! The corpus is the sample repeated, each copy after the first with about one word in seven
//! replaced by another word of the sample's own vocabulary: copies are new to exact dedup and
//! below near dedup's threshold, so neither shortcuts, and the text stays prose to the quality
//! filter. Every run is checked: each input line ends in the output or the rejects, and the
//! verdicts (passed ids; rejected ids with stage, reason and detail) are digested, must agree
//! between 1 and 2 workers, and are printed so that a change in them shows.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use webscale_rl_operators::benchmarks::BenchmarkSpec;
use webscale_rl_operators::decontaminate::{
    Benchmarks, DecontaminateConfig, NgramIndex, find_overlap,
};
use webscale_rl_operators::minhash::{MinHasher, NearDedupConfig, sketch};
use webscale_rl_operators::normalize::content_hash;
use webscale_rl_operators::parse::{ParseConfig, parse_message};
use webscale_rl_operators::quality_filter::{QualityFilterConfig, check};
use webscale_rl_operators::words::{Words, normalized};
use webscale_rl_records::{AcceptedDocument, Document, Origin, RawMessage};
use xxhash_rust::xxh3::xxh3_64;

struct Args {
    copies: usize,
    runs: usize,
    benchmarks: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        copies: 8,
        runs: 3,
        benchmarks: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--copies" => args.copies = value().parse().expect("--copies N"),
            "--runs" => args.runs = value().parse().expect("--runs N"),
            "--benchmarks" => args.benchmarks = Some(PathBuf::from(value())),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// Writes the corpus (see the module doc) to `path`; returns its documents and bytes.
fn build_corpus(path: &Path, copies: usize) -> (usize, u64) {
    let mut out = String::new();
    let mut docs = 0;
    for v in common::varied_sample(copies) {
        out.push_str(&serde_json::to_string(&v).unwrap());
        out.push('\n');
        docs += 1;
    }
    std::fs::write(path, &out).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    (docs, out.len() as u64)
}

/// What a run decided: counts and a digest of every verdict, sorted (independent of order).
#[derive(Debug, PartialEq)]
struct Verdicts {
    passed: usize,
    rejected: usize,
    digest: u64,
}

fn verdicts(output: &Path, rejects: &Path) -> Verdicts {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let mut lines: Vec<String> = Vec::new();
    let out = read(output);
    for l in out.lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("output is JSONL");
        lines.push(format!("passed\t{}", v["id"].as_str().unwrap_or("")));
    }
    let passed = lines.len();
    for l in read(rejects).lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("rejects are JSONL");
        lines.push(format!(
            "{}\t{}\t{}\t{}",
            v["doc_id"].as_str().unwrap_or(""),
            v["stage"].as_str().unwrap_or(""),
            v["reason"].as_str().unwrap_or(""),
            v["detail"].as_str().unwrap_or("")
        ));
    }
    let rejected = lines.len() - passed;
    lines.sort_unstable();
    Verdicts {
        passed,
        rejected,
        digest: xxh3_64(lines.join("\n").as_bytes()),
    }
}

/// One whole-process run; its wall time (seconds) and its verdicts.
fn run_engine(
    corpus: &Path,
    dir: &Path,
    workers: usize,
    benchmarks: Option<&Path>,
) -> (f64, Verdicts) {
    let (secs, _) = run_process(corpus, dir, workers, benchmarks, &[]);
    (
        secs,
        verdicts(&dir.join("out.jsonl"), &dir.join("rejects.jsonl")),
    )
}

/// The split of a whole-process run by stage, as `run --operator-times` prints it: timed inside
/// the real run (one more run, untimed here), so it shows what the per-step split below cannot,
/// reading, the sinks and the waits included.
fn operator_split(corpus: &Path, dir: &Path, workers: usize, benchmarks: Option<&Path>) {
    let (_, stderr) = run_process(corpus, dir, workers, benchmarks, &["--operator-times"]);
    let table: Vec<&str> = stderr
        .lines()
        .skip_while(|l| !l.starts_with("operator times:"))
        .take_while(|l| l.starts_with("operator times:") || l.starts_with('|'))
        .collect();
    assert!(!table.is_empty(), "no operator times in: {stderr}");
    println!("\n{}", table.join("\n"));
}

/// Runs the engine over `corpus` with `extra` flags; its wall time and its standard error.
fn run_process(
    corpus: &Path,
    dir: &Path,
    workers: usize,
    benchmarks: Option<&Path>,
    extra: &[&str],
) -> (f64, String) {
    let (output, rejects) = (dir.join("out.jsonl"), dir.join("rejects.jsonl"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_webscale-rl"));
    cmd.args(["run", "--no-llm", "--quiet", "--restart", "-w"])
        .arg(workers.to_string())
        .arg("--input")
        .arg(corpus)
        .arg("--output")
        .arg(&output)
        .arg("--rejects")
        .arg(&rejects);
    if let Some(b) = benchmarks {
        cmd.arg("--benchmarks").arg(b);
    }
    cmd.args(extra).stderr(std::process::Stdio::piped());
    let started = Instant::now();
    let out = cmd.output().expect("starting webscale-rl");
    let secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "webscale-rl run failed: {}: {stderr}",
        out.status
    );
    (secs, stderr)
}

/// The documents of the corpus, parsed once, for the per-stage split.
fn messages(corpus: &Path) -> Vec<RawMessage> {
    std::fs::read_to_string(corpus)
        .expect("corpus")
        .lines()
        .enumerate()
        .map(|(i, l)| RawMessage {
            key: None,
            payload: Some(l.as_bytes().to_vec()),
            origin: Origin {
                topic: "bench".into(),
                partition: 0,
                offset: i as i64,
            },
            truncated: false,
        })
        .collect()
}

/// Best of `runs` timings of `f` over all documents, in seconds.
fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> f64 {
    (0..runs.max(1))
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(f());
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn stage_split(corpus: &Path, bytes: u64, runs: usize, benchmarks: Option<&Path>) {
    let msgs = messages(corpus);
    let parse_cfg = ParseConfig::default();
    let docs: Vec<Document> = msgs
        .iter()
        .filter_map(|m| parse_message(m, &parse_cfg).ok())
        .collect();
    let quality = QualityFilterConfig::default();
    let near = NearDedupConfig::default();
    let exact = webscale_rl_operators::exact_dedup::ExactDedupConfig::default();
    let index = benchmarks.map(|b| {
        let cfg = DecontaminateConfig {
            benchmarks: vec![BenchmarkSpec::path(b)],
            ..Default::default()
        };
        NgramIndex::build(&Benchmarks::load(&cfg).expect("benchmarks load"), 0, 1)
    });
    let mut hasher = MinHasher::new(&near);
    let mut sig = Vec::new();
    let mut words = Words::default();
    let scan = best(runs, || {
        let mut n = 0;
        for d in &docs {
            words.scan(&d.text, &exact.normalize);
            n += words.spans.len();
        }
        n
    });
    // What the quality filter's stage leaves on each document for dedup.
    let docs: Vec<Document> = docs
        .into_iter()
        .map(|mut d| {
            words.scan(&d.text, &exact.normalize);
            d.words = words.take_normalized();
            d
        })
        .collect();
    let mut rows: Vec<(&str, f64)> = vec![
        (
            "parse (JSON to document)",
            best(runs, || {
                msgs.iter()
                    .filter(|m| parse_message(m, &parse_cfg).is_ok())
                    .count()
            }),
        ),
        (
            "quality rules, with the shared pass over the text",
            best(runs, || {
                docs.iter()
                    .filter(|d| check(&d.text, &quality).is_ok())
                    .count()
            }),
        ),
        (
            "exact dedup: key of the carried normalized text",
            best(runs, || {
                docs.iter()
                    .map(|d| match normalized(d, &exact.normalize) {
                        Some(w) => xxh3_64(w.text.as_bytes()),
                        None => content_hash(&d.text, &exact.normalize),
                    })
                    .fold(0, u64::wrapping_add)
            }),
        ),
        (
            "near dedup: shingles, MinHash, bands from the carried words",
            best(runs, || {
                let mut n = 0;
                for d in &docs {
                    if hasher.signature_of(d, &mut sig) {
                        n += hasher.band_hashes(&sig).len() + sketch(&sig).len();
                    }
                }
                n
            }),
        ),
    ];
    if let Some(index) = &index {
        rows.push((
            "decontaminate: normalize + 13-gram keys + lookups",
            best(runs, || {
                docs.iter()
                    .filter(|d| find_overlap(&d.text, index).is_some())
                    .count()
            }),
        ));
    }
    rows.push((
        "encode the accepted document (JSON)",
        best(runs, || {
            let mut buf = Vec::new();
            for d in &docs {
                buf.clear();
                serde_json::to_writer(&mut buf, &AcceptedDocument::from_document(d.clone()))
                    .unwrap();
            }
            buf.len()
        }),
    ));
    println!("\nper-stage split, one thread, every document through every step (best of {runs}):");
    println!("| step | seconds | MB/s of the corpus |");
    println!("| --- | --- | --- |");
    let mut total = 0.0;
    for (name, secs) in &rows {
        total += secs;
        println!("| {name} | {secs:.3} | {:.0} |", bytes as f64 / 1e6 / secs);
    }
    println!("| sum | {total:.3} | {:.0} |", bytes as f64 / 1e6 / total);
    println!(
        "(of the quality rules' row, the shared pass over the text alone: {scan:.3} s, {:.0} MB/s)",
        bytes as f64 / 1e6 / scan
    );
}

fn rensa(corpus: &Path, bytes: u64) -> Option<f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/rensa_minhash.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(corpus)
        .output()
        .ok()?;
    if !out.status.success() {
        println!(
            "\nrensa: not measured ({}); `pip install rensa` to compare",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("python3 failed")
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("rensa's JSON line");
    let secs = v["seconds"].as_f64()?;
    let mbps = bytes as f64 / 1e6 / secs;
    println!(
        "\nrensa (Rust core, Python shingling) MinHash signatures only (112 permutations, 5-word shingles): {secs:.2} s, {mbps:.1} MB/s of the corpus"
    );
    Some(mbps)
}

fn main() {
    let args = parse_args();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cpu_stages");
    std::fs::create_dir_all(&dir).expect("bench directory");
    let corpus = dir.join("corpus.jsonl");
    let (docs, bytes) = build_corpus(&corpus, args.copies);
    println!(
        "corpus: {docs} documents, {:.1} MB (shared sample x{}, copies varied), {}",
        bytes as f64 / 1e6,
        args.copies,
        corpus.display()
    );
    let benchmarks = args.benchmarks.as_deref();
    let mut one_worker = 0.0;
    let mut first: Option<Verdicts> = None;
    for workers in [1, 2] {
        let mut times = Vec::new();
        for _ in 0..args.runs.max(1) {
            let (secs, v) = run_engine(&corpus, &dir, workers, benchmarks);
            assert_eq!(
                v.passed + v.rejected,
                docs,
                "every document in the output or the rejects"
            );
            match &first {
                None => first = Some(v),
                Some(f) => assert_eq!(f, &v, "verdicts differ between runs or worker counts"),
            }
            times.push(secs);
        }
        times.sort_by(f64::total_cmp);
        let secs = times[times.len() / 2];
        let mbps = bytes as f64 / 1e6 / secs;
        if workers == 1 {
            one_worker = mbps;
        }
        println!(
            "whole process, {workers} worker(s): median {secs:.3} s of {} runs (best {:.3}), {mbps:.1} MB/s, {:.0} documents/s{}",
            times.len(),
            times[0],
            docs as f64 / secs,
            if workers == 2 {
                format!(", {:.2}x the 1-worker speed", mbps / one_worker)
            } else {
                String::new()
            }
        );
    }
    let v = first.expect("a run");
    println!(
        "verdicts: {} passed, {} rejected, digest {:016x} (the same at 1 and 2 workers)",
        v.passed, v.rejected, v.digest
    );
    for workers in [1, 2] {
        operator_split(&corpus, &dir, workers, benchmarks);
    }
    stage_split(&corpus, bytes, args.runs, benchmarks);
    if let Some(r) = rensa(&corpus, bytes) {
        println!(
            "this engine's whole pipeline at 1 worker / rensa's signatures: {:.1}x",
            one_worker / r
        );
    }
}
