//! Decontamination benchmarks (`cargo bench --bench decontaminate`), over every file of
//! `../shared/data/benchmarks/` and the documents of `../shared/data/web/sample.jsonl`:
//! - loading the files and hashing their n-grams (once per process), building each worker's
//!   partition, with 1, 2 and 4 workers;
//! - the memory of each worker's partition, counted from its arrays and measured by a counting
//!   allocator, and of the shared catalog;
//! - the document stage (probes exchanged, lookups, verdicts) in docs/s and MB/s with 1 and 2
//!   workers, and the single-threaded reference scan;
//! - how many sample pages overlap a benchmark as `min_item_tokens` and `ngram` vary.
//!
//! Paths can be overridden with `$WEBSCALE_SAMPLE` and `$WEBSCALE_BENCHMARKS`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use webscale_rl_operators::Verdicts;
use webscale_rl_operators::benchmarks::{BenchmarkSet, load_path};
use webscale_rl_operators::decontaminate::{
    Benchmarks, Decontaminate, DecontaminateConfig, NgramIndex, decontaminate_with, find_overlap,
};
use webscale_rl_records::{Document, Origin};

/// Counts live heap bytes, so the index's memory is measured rather than only computed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The best of `rounds` runs of `f`, and its last result.
fn best<R>(rounds: usize, mut f: impl FnMut() -> R) -> (Duration, R) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..rounds {
        let start = Instant::now();
        let r = f();
        best = best.min(start.elapsed());
        out = Some(r);
    }
    (best, out.expect("at least one round"))
}

/// CPU seconds this process has used, all threads (`/proc/self/stat`, in USER_HZ = 100 ticks):
/// throughput per CPU-second is what stays comparable on a machine shared with other jobs.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs the document stage over `docs` (10 epochs, inputs spread over the workers) with
/// partitions built beforehand; returns (wall time, docs passed).
fn run_stage(docs: Arc<Vec<Document>>, indexes: Arc<Vec<NgramIndex>>) -> (Duration, usize) {
    let start = Instant::now();
    let workers = indexes.len();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let ngrams = indexes[index].clone();
        let mut input = InputHandle::new();
        let probe = ProbeHandle::new();
        let passed = std::rc::Rc::new(std::cell::Cell::new(0usize));
        let counter = passed.clone();
        worker.dataflow(|scope| {
            let stream = scope.input_from(&mut input).container::<Vec<Document>>();
            let Verdicts {
                passed: ok,
                rejected: dead,
            } = stream.decontaminate(ngrams);
            use timely::dataflow::operators::Inspect;
            ok.inspect(move |_| counter.set(counter.get() + 1))
                .probe_with(&probe);
            dead.probe_with(&probe);
        });
        let chunk = docs.len().div_ceil(10);
        for (epoch, batch) in docs.chunks(chunk).enumerate() {
            input.advance_to(epoch as u64 + 1);
            for d in batch.iter().skip(index).step_by(peers) {
                input.send(d.clone());
            }
        }
        input.close();
        while worker.step() {}
        passed.get()
    })
    .expect("timely runs");
    let passed = guards.join().into_iter().map(|r| r.expect("worker")).sum();
    (start.elapsed(), passed)
}

/// Texts through the stage as QA pairs are checked (`fragments`: the fragment rules on); returns
/// how many were dropped.
fn run_pairs(texts: Arc<Vec<String>>, bench: Arc<Benchmarks>, fragments: bool) -> usize {
    let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = dropped.clone();
    timely::execute(timely::Config::thread(), move |worker| {
        let mut input = timely::dataflow::InputHandle::new();
        let ngrams = NgramIndex::build(&bench, 0, 1);
        let count = count.clone();
        let probe = worker.dataflow(|scope| {
            let records = scope.input_from(&mut input).container::<Vec<String>>();
            let Verdicts {
                passed: ok,
                rejected: dead,
            } = decontaminate_with(
                records,
                ngrams,
                fragments,
                |t: &String, out: &mut String| out.push_str(t),
                |t: &String, o| {
                    let mut d = webscale_rl_records::DeadLetter::for_document(
                        &Document {
                            id: t.clone(),
                            text: String::new(),
                            url: None,
                            source: None,
                            meta: None,
                            filter_model: None,
                            origin: Origin {
                                topic: String::new(),
                                partition: 0,
                                offset: 0,
                            },
                            words: Default::default(),
                        },
                        webscale_rl_records::Stage::Decontaminate,
                        "benchmark_overlap",
                        o.detail(),
                    );
                    d.detail.clear();
                    d
                },
            );
            dead.inspect(move |_| {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            });
            ok.probe().0
        });
        input.advance_to(1u64);
        for t in texts.iter() {
            input.send(t.clone());
        }
        input.close();
        while !probe.done() {
            worker.step();
        }
    })
    .expect("timely runs");
    dropped.load(std::sync::atomic::Ordering::Relaxed)
}

/// Copies of benchmark questions as a generator might write them, one perturbation at a time.
fn perturbations(sets: &[BenchmarkSet]) -> Vec<(&'static str, Vec<String>)> {
    // The first field of up to 200 items per benchmark with 13 to 60 words: a question.
    let items: Vec<String> = sets
        .iter()
        .flat_map(|s| {
            s.items
                .iter()
                .filter_map(|i| i.segments.first())
                .filter(|t| (13..=60).contains(&t.split_whitespace().count()))
                .take(200)
                .cloned()
        })
        .collect();
    let words = |t: &str| t.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let map = |f: &dyn Fn(Vec<String>) -> Vec<String>| -> Vec<String> {
        items.iter().map(|t| f(words(t)).join(" ")).collect()
    };
    let number_words = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    ];
    vec![
        ("verbatim", items.clone()),
        (
            "one word blanked (middle)",
            map(&|mut w| {
                let m = w.len() / 2;
                w[m] = "___".into();
                w
            }),
        ),
        (
            "one word replaced (middle)",
            map(&|mut w| {
                let m = w.len() / 2;
                w[m] = "something".into();
                w
            }),
        ),
        (
            "every 10th word blanked",
            map(&|w| {
                w.into_iter()
                    .enumerate()
                    .map(|(i, x)| if i % 10 == 9 { "___".into() } else { x })
                    .collect()
            }),
        ),
        (
            "curly quotes, dashes for spaces",
            items
                .iter()
                .map(|t| t.replace('\'', "’").replacen(' ', "-", 3))
                .collect(),
        ),
        (
            "clitics split (Lloyd 's)",
            items.iter().map(|t| t.replace("'s", " 's")).collect(),
        ),
        (
            "digits as words",
            map(&|w| {
                w.into_iter()
                    .map(|x| match x.parse::<usize>() {
                        Ok(n) if n <= 10 => number_words[n].to_string(),
                        _ => x,
                    })
                    .collect()
            }),
        ),
    ]
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter here.
    let dir = common::shared("WEBSCALE_BENCHMARKS", "benchmarks");
    let (load_time, sets): (Duration, Vec<BenchmarkSet>) =
        best(3, || load_path(&dir).expect("benchmarks load"));
    let items: usize = sets.iter().map(|s| s.items.len()).sum();
    println!(
        "## decontaminate (shared benchmarks: {} files, {items} items)",
        sets.len()
    );
    println!(
        "load files (read + parse + map fields): {:.0} ms",
        load_time.as_secs_f64() * 1e3
    );

    let cfg = DecontaminateConfig::default();
    let before = live();
    let (hash_time, bench) = best(3, || Benchmarks::from_sets(&sets, &cfg));
    let bench = Arc::new(bench);
    let held = live().saturating_sub(before);
    let s = bench.stats();
    println!(
        "hash n-grams (ngram={}, min_item_tokens={}): {:.0} ms; {} segments: {} long, {} whole, {} skipped; {} keys, {} distinct",
        cfg.ngram,
        cfg.min_item_tokens,
        hash_time.as_secs_f64() * 1e3,
        s.segments,
        s.long_segments,
        s.whole_segments,
        s.skipped_segments,
        s.keys_total,
        s.keys_distinct,
    );
    println!(
        "hashed set, per process until the workers have built their partitions: {:.1} MiB counted, {:.1} MiB allocated",
        mib(bench.heap_bytes()),
        mib(held)
    );

    println!(
        "\n| workers | build per worker | entries per worker (max) | index per worker (counted) | index per worker (allocator) | catalog per process |"
    );
    println!("|---|---|---|---|---|---|");
    for peers in [1usize, 2, 4] {
        let mut worst = (Duration::ZERO, 0usize, 0usize, 0usize);
        let mut catalog = 0;
        for w in 0..peers {
            let before = live();
            let (t, ix) = best(3, || NgramIndex::build(&bench, w, peers));
            let allocated = live().saturating_sub(before);
            let st = ix.stats();
            catalog = st.catalog_bytes;
            worst = (
                worst.0.max(t),
                worst.1.max(st.entries),
                worst.2.max(st.index_bytes),
                worst.3.max(allocated),
            );
        }
        println!(
            "| {peers} | {:.1} ms | {} | {:.2} MiB | {:.2} MiB | {:.2} MiB |",
            worst.0.as_secs_f64() * 1e3,
            worst.1,
            mib(worst.2),
            mib(worst.3),
            mib(catalog)
        );
    }

    let docs = Arc::new(common::load_sample());
    let bytes: usize = docs.iter().map(|d| d.text.len()).sum();
    println!(
        "\nsample: {} documents, {:.1} MB",
        docs.len(),
        bytes as f64 / 1e6
    );
    let whole = NgramIndex::build(&bench, 0, 1);
    let cpu = cpu_seconds();
    let (t, hits) = best(3, || {
        docs.iter()
            .filter(|d| find_overlap(&d.text, &whole).is_some())
            .count()
    });
    let cpu = (cpu_seconds() - cpu) / 3.0;
    println!(
        "reference scan, 1 thread, no dataflow: {:.0} docs/s, {:.1} MB/s wall (best of 3); {:.0} docs per CPU-second ({hits} overlapping)",
        docs.len() as f64 / t.as_secs_f64(),
        bytes as f64 / 1e6 / t.as_secs_f64(),
        docs.len() as f64 / cpu
    );
    const ROUNDS: usize = 5;
    for workers in [1, 2] {
        let indexes: Arc<Vec<NgramIndex>> = Arc::new(
            (0..workers)
                .map(|w| NgramIndex::build(&bench, w, workers))
                .collect(),
        );
        let cpu = cpu_seconds();
        let runs: Vec<(Duration, usize)> = (0..ROUNDS)
            .map(|_| run_stage(docs.clone(), indexes.clone()))
            .collect();
        let cpu = (cpu_seconds() - cpu) / ROUNDS as f64;
        let (t, passed) = runs.into_iter().min().expect("rounds");
        println!(
            "document stage, {workers} worker(s): {:.0} docs/s, {:.1} MB/s wall (best of {ROUNDS}); {:.0} docs per CPU-second ({} dropped)",
            docs.len() as f64 / t.as_secs_f64(),
            bytes as f64 / 1e6 / t.as_secs_f64(),
            docs.len() as f64 / cpu,
            docs.len() - passed
        );
    }

    // How many sample pages overlap as the thresholds loosen: the sample is clean web text, so
    // every hit at the defaults would be a false positive unless the page really quotes an item.
    println!("\n| ngram | min_item_tokens | sample pages overlapping | example |");
    println!("|---|---|---|---|");
    for (ngram, min) in [(13, 8), (13, 6), (13, 4), (10, 8), (8, 8), (8, 5)] {
        let cfg = DecontaminateConfig {
            ngram,
            min_item_tokens: min,
            ..DecontaminateConfig::default()
        };
        let b = Benchmarks::from_sets(&sets, &cfg);
        let ix = NgramIndex::build(&b, 0, 1);
        let found: Vec<_> = docs
            .iter()
            .filter_map(|d| find_overlap(&d.text, &ix))
            .collect();
        let example = found
            .first()
            .map(|o| format!("{} {}: \"{}\"", o.benchmark, o.item, o.span))
            .unwrap_or_default();
        println!("| {ngram} | {min} | {} | {example} |", found.len());
    }

    // QA pairs: perturbed benchmark questions caught, by the 13-gram rule alone and with the
    // fragment rules; and false positives on clean text cut as pairs (each sample page's
    // first 40 words, then its next 40).
    println!(
        "\n| perturbation (QA pairs) | copies | caught, 13-gram rule | caught, + fragment rules |"
    );
    println!("|---|---|---|---|");
    for (kind, texts) in perturbations(&sets) {
        let n = texts.len();
        let texts = Arc::new(texts);
        let plain = run_pairs(texts.clone(), bench.clone(), false);
        let fragments = run_pairs(texts, bench.clone(), true);
        println!(
            "| {kind} | {n} | {:.1} % | {:.1} % |",
            100.0 * plain as f64 / n as f64,
            100.0 * fragments as f64 / n as f64
        );
    }
    let clean: Vec<String> = docs
        .iter()
        .flat_map(|d| {
            let w: Vec<&str> = d.text.split_whitespace().collect();
            w.chunks(40)
                .take(2)
                .map(|c| c.join(" "))
                .collect::<Vec<_>>()
        })
        .collect();
    let n = clean.len();
    let flagged = run_pairs(Arc::new(clean), bench.clone(), true);
    println!(
        "clean web text as pairs (40-word pieces of the sample): {flagged} of {n} flagged with the fragment rules"
    );
}
