//! Near-duplicate detection benchmarks (`cargo bench --bench minhash`):
//! - normalize + shingle + MinHash signature (112 hashes, 5-word shingles) in MB/s on one core,
//!   over the texts of the shared web sample;
//! - the whole stage (signatures, exchange, LSH index, verdicts) in docs/s with 1 and 2 workers,
//!   with the index in memory and persisted in redb;
//! - the index's memory and disk bytes per indexed document;
//! - datasketch's MinHash on the same file and parameters (benches/minhash_datasketch.py), run
//!   from here so both figures come from the same run, and the ratio.
//!
//! The sample is `../shared/data/web/sample.jsonl` (or `$WEBSCALE_SAMPLE`).

mod common;

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use webscale_rl_operators::Verdicts;
use webscale_rl_operators::lsh_index::{IndexParams, Partition, Query, partition_of};
use webscale_rl_operators::minhash::{MinHasher, NearDedupConfig, sketch, sketch_len};
use webscale_rl_operators::near_dedup::NearDedup;
use webscale_rl_records::{Document, Origin};

/// Nanoseconds this thread has been on a CPU (Linux), so that MB/s per core is not diluted by
/// other processes sharing the machine.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// Signatures of every sample text on one thread, the best of `rounds` passes: (MB/s of wall
/// time, MB/s of this thread's CPU time).
fn signature_mbps(docs: &[Document], bytes: usize, rounds: usize) -> (f64, f64) {
    let mut hasher = MinHasher::new(&NearDedupConfig::default());
    let mut sig = Vec::new();
    let (mut wall, mut cpu) = (f64::MAX, f64::MAX);
    for _ in 0..rounds {
        let (start, cpu_start) = (Instant::now(), thread_cpu_ns());
        for d in docs {
            black_box(hasher.signature_into(&d.text, &mut sig));
        }
        wall = wall.min(start.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (cpu_start, thread_cpu_ns()) {
            cpu = cpu.min((b - a) as f64 / 1e9);
        }
    }
    let mb = bytes as f64 / 1e6;
    (mb / wall, if cpu < f64::MAX { mb / cpu } else { mb / wall })
}

/// The sample followed by an edited copy of each document (every 100th word replaced, a word
/// appended; Jaccard about 0.9): half of the stream is near-duplicates.
fn with_copies(docs: &[Document]) -> Vec<Document> {
    let copies = docs.iter().map(|d| {
        let mut words: Vec<&str> = d.text.split_whitespace().collect();
        for w in words.iter_mut().skip(50).step_by(100) {
            *w = "edited";
        }
        words.push("(copy)");
        Document {
            id: format!("{}#copy", d.id),
            text: words.join(" "),
            filter_model: None,
            origin: Origin {
                offset: d.origin.offset + 1_000_000,
                ..d.origin.clone()
            },
            ..d.clone()
        }
    });
    docs.iter().cloned().chain(copies).collect()
}

/// Runs the stage over `docs` (10 epochs, inputs spread over the workers). Returns how many
/// passed, and the time from the first document sent to the last epoch's verdicts on the slowest
/// worker: building the dataflow (opening the index) and the final sync are left out, they are
/// once per process, not per document (see `index_footprint` for their cost).
fn run_stage(workers: usize, docs: Arc<Vec<Document>>, cfg: NearDedupConfig) -> (usize, Duration) {
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mut input = InputHandle::new();
        let probe = ProbeHandle::new();
        let passed = std::rc::Rc::new(std::cell::Cell::new(0usize));
        let counter = passed.clone();
        worker.dataflow(|scope| {
            let stream = scope.input_from(&mut input).container::<Vec<Document>>();
            let Verdicts {
                passed: ok,
                rejected: dead,
            } = stream.near_dedup(cfg.clone());
            ok.inspect(move |_| counter.set(counter.get() + 1))
                .probe_with(&probe);
            dead.probe_with(&probe);
        });
        let start = Instant::now();
        let chunk = docs.len().div_ceil(10);
        let mut epoch = 0u64;
        for batch in docs.chunks(chunk) {
            epoch += 1;
            input.advance_to(epoch);
            for d in batch.iter().skip(index).step_by(peers) {
                input.send(d.clone());
            }
        }
        input.advance_to(epoch + 1);
        while probe.less_than(&(epoch + 1)) {
            worker.step();
        }
        let elapsed = start.elapsed();
        input.close();
        while worker.step() {}
        (passed.get(), elapsed)
    })
    .expect("timely runs");
    guards
        .join()
        .into_iter()
        .map(|r| r.expect("worker"))
        .fold((0, Duration::ZERO), |(n, t), (m, u)| (n + m, t.max(u)))
}

fn benches(c: &mut Criterion, docs: &Arc<Vec<Document>>, bytes: usize) {
    let cfg = NearDedupConfig::default();
    let mut group = c.benchmark_group("near_dedup");
    group.sample_size(10);

    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("signature/normalize+shingle+112 minhash", |b| {
        let mut hasher = MinHasher::new(&cfg);
        let mut sig = Vec::new();
        b.iter(|| {
            for d in docs.iter() {
                black_box(hasher.signature_into(&d.text, &mut sig));
            }
        })
    });
    group.bench_function("signature/band keys + sketch", |b| {
        let mut hasher = MinHasher::new(&cfg);
        let sigs: Vec<Vec<u32>> = docs
            .iter()
            .filter_map(|d| hasher.signature(&d.text))
            .collect();
        b.iter(|| {
            for sig in &sigs {
                black_box(hasher.band_hashes(sig));
                black_box(sketch(sig));
            }
        })
    });

    let stream = Arc::new(with_copies(docs));
    group.throughput(Throughput::Elements(stream.len() as u64));
    for workers in [1, 2] {
        for persisted in [false, true] {
            let name = if persisted { "redb" } else { "in-memory" };
            group.bench_function(
                format!("stage/sample+copies/{name} index/{workers} workers"),
                |b| {
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| {
                                let dir = tempfile::tempdir().expect("tempdir");
                                let cfg = NearDedupConfig {
                                    state_dir: persisted.then(|| dir.path().to_path_buf()),
                                    ..cfg.clone()
                                };
                                run_stage(workers, stream.clone(), cfg).1
                            })
                            .sum()
                    })
                },
            );
        }
    }
    group.finish();
}

/// splitmix64, for synthetic keys.
fn mix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Memory and disk bytes per indexed document: `docs` documents of 14 distinct band keys each,
/// inserted into the default persisted partitions in epochs of 5 000 (the Kafka source's default).
fn index_footprint(docs: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = NearDedupConfig {
        state_dir: Some(dir.path().to_path_buf()),
        ..NearDedupConfig::default()
    };
    let params = IndexParams::new(&cfg);
    let opening = Instant::now();
    let mut parts: Vec<Partition> = (0..cfg.partitions())
        .map(|p| Partition::open(p, &params).expect("open partition"))
        .collect();
    let opened = opening.elapsed();
    let mut state = 1u64;
    let sketch_bytes: Vec<u8> = (0..sketch_len(cfg.num_hashes())).map(|i| i as u8).collect();
    let ids: Vec<String> = (0..docs)
        .map(|i| format!("dclm/majority_data/{i}"))
        .collect();
    let start = Instant::now();
    for (epoch, chunk) in ids.chunks(5_000).enumerate() {
        let mut per_part: Vec<Vec<Query<'_>>> = vec![Vec::new(); parts.len()];
        for (i, id) in chunk.iter().enumerate() {
            for _ in 0..cfg.bands {
                let key = mix(&mut state);
                per_part[partition_of(key, cfg.partitions()) as usize].push(Query {
                    key,
                    origin: (epoch * 5_000 + i) as u64,
                    id,
                    sketch: &sketch_bytes,
                });
            }
        }
        for (part, queries) in parts.iter_mut().zip(&per_part) {
            part.apply_epoch(epoch as u64, queries, |_, _| {})
                .expect("apply");
        }
    }
    let elapsed = start.elapsed();
    let syncing = Instant::now();
    for part in &mut parts {
        part.sync().expect("sync");
    }
    let synced = syncing.elapsed();
    let memory: usize = parts.iter().map(Partition::memory_bytes).sum();
    let entries: u64 = parts.iter().map(Partition::entries).sum();
    let reopening = Instant::now();
    drop(parts);
    let parts: Vec<Partition> = (0..cfg.partitions())
        .map(|p| Partition::open(p, &params).expect("reopen partition"))
        .collect();
    let reopened = reopening.elapsed();
    assert_eq!(parts.iter().map(Partition::entries).sum::<u64>(), entries);
    drop(parts);
    let disk: u64 = std::fs::read_dir(dir.path().join("near_dedup"))
        .expect("index dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum();
    println!(
        "index footprint: {docs} documents, {entries} keys in {} partitions: memory {:.1} bytes/document \
         (the key table; redb's cache is capped at cache_mb = {} MiB), disk {:.0} bytes/document; \
         insert {:.0} docs/s on one core; create {:.0} ms, final sync {:.0} ms, reopen (rebuilds \
         the table) {:.0} ms",
        cfg.partitions(),
        memory as f64 / docs as f64,
        cfg.cache_mb,
        disk as f64 / docs as f64,
        docs as f64 / elapsed.as_secs_f64(),
        opened.as_secs_f64() * 1e3,
        synced.as_secs_f64() * 1e3,
        reopened.as_secs_f64() * 1e3,
    );
}

/// Runs benches/minhash_datasketch.py on the same file and prints the ratio to `ours` (MB/s).
fn python_comparison(ours: f64) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/minhash_datasketch.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(common::shared("WEBSCALE_SAMPLE", "web/sample.jsonl"))
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            print!("{stdout}");
            let theirs = stdout
                .lines()
                .find_map(|l| l.strip_prefix("datasketch_mb_per_s "))
                .and_then(|v| v.trim().parse::<f64>().ok());
            if let Some(theirs) = theirs {
                println!(
                    "ratio: webscale-rl {ours:.1} MB/s / datasketch {theirs:.2} MB/s = {:.0}x",
                    ours / theirs
                );
            }
        }
        Ok(out) => println!(
            "datasketch comparison skipped ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => println!("datasketch comparison skipped: python3: {e}"),
    }
}

fn main() {
    let docs = Arc::new(common::load_sample());
    let bytes: usize = docs.iter().map(|d| d.text.len()).sum();
    // `cargo test --benches` runs this with --test: check it works, skip the slow extras.
    let quick = std::env::args().any(|a| a == "--test");
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c, &docs, bytes);
    c.final_summary();

    let (passed, _) = run_stage(1, Arc::new(with_copies(&docs)), NearDedupConfig::default());
    println!(
        "stage: {} documents in, {passed} passed ({} dropped as near-duplicates)",
        2 * docs.len(),
        2 * docs.len() - passed
    );
    let (wall, cpu) = signature_mbps(&docs, bytes, if quick { 1 } else { 10 });
    println!(
        "signature: {} documents, {:.2} MB of text, one thread, best of 10 passes: \
         {wall:.1} MB/s wall, {cpu:.1} MB/s of CPU time (per core); load average {}",
        docs.len(),
        bytes as f64 / 1e6,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if quick {
        index_footprint(20_000);
        return;
    }
    index_footprint(200_000);
    python_comparison(cpu);
}
