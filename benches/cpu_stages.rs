//! Throughput of the CPU stages on the shared sample, with 1 and 2 timely workers: parse + quality
//! filter + exact dedup, then the same plus near dedup (in-memory MinHash LSH index). Inputs are fed from memory and outputs counted, so Kafka is out of the
//! measurement. Run: `cargo bench --bench cpu_stages` (figures in BENCHMARKS.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use timely::dataflow::operators::core::{Inspect, Probe};
use timely::dataflow::operators::vec::Input;
use timely::dataflow::{InputHandle, ProbeHandle};
use webscale_rl_dataflow::{Funnel, PipelineConfig, graph};
use webscale_rl_records::{Origin, RawMessage};

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/web/sample.jsonl"
);

/// The sample repeated `copies` times; each copy's texts get a distinct suffix so that exact
/// dedup sees new documents (a repeated sample would measure only the duplicate path).
fn corpus(copies: usize) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(SAMPLE).expect("shared sample");
    let mut out = Vec::new();
    for c in 0..copies {
        for line in text.lines() {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = v["text"].as_str().unwrap().to_string();
            v["text"] = format!("{t}\ncopy {c}").into();
            v["id"] = format!("{}#{c}", v["id"].as_str().unwrap()).into();
            out.push(serde_json::to_vec(&v).unwrap());
        }
    }
    out
}

fn run(workers: usize, docs: Arc<Vec<Vec<u8>>>, near_dedup: bool) -> (f64, u64) {
    let out = Arc::new(AtomicU64::new(0));
    let out2 = out.clone();
    let started = Instant::now();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mut input = InputHandle::new();
        let mut cfg = PipelineConfig::default();
        cfg.near_dedup.enabled = near_dedup;
        let funnel = Funnel::default();
        let out = out2.clone();
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            let outs = graph::build(
                scope.input_from(&mut input),
                &cfg,
                &funnel,
                &Default::default(),
            )
            .unwrap();
            let graph::Output::Documents(docs) = outs.output else {
                unreachable!("without an LLM the output is documents")
            };
            let (out, dead) = (out.clone(), out.clone());
            let probe = ProbeHandle::new();
            docs.inspect(move |_| {
                out.fetch_add(1, Ordering::Relaxed);
            })
            .probe_with(&probe);
            outs.dead_letters
                .inspect(move |_| {
                    dead.fetch_add(1, Ordering::Relaxed);
                })
                .probe_with(&probe);
            probe
        });
        // Each worker reads its share, in epochs of 1,000 documents.
        for (i, payload) in docs.iter().enumerate().filter(|(i, _)| i % peers == index) {
            input.send(RawMessage {
                key: None,
                payload: Some(payload.clone()),
                origin: Origin {
                    topic: "bench".into(),
                    partition: 0,
                    offset: i as i64,
                },
                truncated: false,
            });
            if i % 1000 == 999 {
                input.advance_to(i as u64 + 1);
                while probe.less_than(&(input.time().saturating_sub(5_000))) {
                    worker.step();
                }
            }
        }
        input.close();
        while !probe.done() {
            worker.step();
        }
    })
    .unwrap();
    (started.elapsed().as_secs_f64(), out.load(Ordering::Relaxed))
}

fn main() {
    let copies = std::env::var("COPIES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(10);
    let docs = Arc::new(corpus(copies));
    let bytes: usize = docs.iter().map(Vec::len).sum();
    println!(
        "corpus: {} documents, {:.1} MB (shared sample x{copies}, texts made distinct)",
        docs.len(),
        bytes as f64 / 1e6
    );
    for (near_dedup, stages) in [(false, "parse+filter+exact dedup"), (true, "+ near dedup")] {
        for workers in [1, 2] {
            // Best of three, after one warm-up run.
            run(workers, docs.clone(), near_dedup);
            let (secs, out) = (0..3)
                .map(|_| run(workers, docs.clone(), near_dedup))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap();
            assert_eq!(out as usize, docs.len(), "every document accounted for");
            println!(
                "{stages}, {workers} worker(s): {:.0} docs/s, {:.1} MB/s ({secs:.3} s)",
                docs.len() as f64 / secs,
                bytes as f64 / 1e6 / secs
            );
        }
    }
}
