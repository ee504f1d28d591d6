//! The cost of the dedup state's changelog topics (issue 24), in Kafka mode against librdkafka's
//! in-process mock cluster (a real Kafka protocol peer; its log lives in memory):
//! * the CPU stages' throughput (`run --no-llm --until-caught-up`, 2 workers) with changelogs on
//!   and off, runs alternated, on a corpus built from the shared sample (each copy after the
//!   first with about one word in seven replaced, as in `cpu_stages`);
//! * the changelog's records and bytes per document, per index;
//! * the time a process on an empty disk takes to restore the whole state (every partition of
//!   both indexes) from the changelog before it judges anything.
//!
//! ```text
//! cargo bench --bench changelog                         # figures in BENCHMARKS.md
//! cargo bench --bench changelog -- --copies 100 --runs 1
//! ```

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rdkafka::mocking::MockCluster;
use webscale_rl_connectors::kafka::changelog::changelog_topic;
use webscale_rl_connectors::kafka::{KafkaConfig, tools};
use webscale_rl_dataflow::cluster::ClusterOptions;
use webscale_rl_dataflow::runtime::{RunControl, run_kafka};
use webscale_rl_dataflow::{Funnel, PipelineConfig};

/// The sample, `copies` times, varied as in `cpu_stages` ([`common::varied_sample`]).
fn corpus(copies: usize) -> Vec<Vec<u8>> {
    common::varied_sample(copies)
        .iter()
        .map(|v| serde_json::to_vec(v).unwrap())
        .collect()
}

/// A config for group `group` whose indexes live under `state`.
fn config(kafka: &KafkaConfig, group: &str, state: &Path, changelog: bool) -> PipelineConfig {
    let mut cfg = PipelineConfig {
        kafka: KafkaConfig {
            group: group.to_string(),
            ..kafka.clone()
        },
        ..Default::default()
    };
    cfg.state.changelog = changelog;
    cfg.exact_dedup.state_dir = Some(state.to_path_buf());
    cfg.near_dedup.state_dir = Some(state.to_path_buf());
    cfg
}

/// Runs to the end of the input with 2 workers; returns the seconds taken and the funnel.
fn run(cfg: PipelineConfig) -> (f64, Funnel) {
    let funnel = Funnel::default();
    let t = Instant::now();
    run_kafka(
        cfg,
        ClusterOptions {
            workers: 2,
            ..Default::default()
        }
        .timely_config()
        .unwrap(),
        RunControl {
            until_caught_up: true,
            ..Default::default()
        },
        funnel.clone(),
        Default::default(),
    )
    .expect("the run succeeds");
    (t.elapsed().as_secs_f64(), funnel)
}

/// (records, bytes of keys and values) of a topic.
fn topic_size(kafka: &KafkaConfig, topic: &str) -> (u64, u64) {
    let ends = tools::end_offsets(kafka, topic).unwrap();
    let mut bytes = 0u64;
    let records = tools::read_topic_to(kafka, topic, &ends, &mut |m| {
        bytes += (m.key.map_or(0, <[u8]>::len) + m.payload.map_or(0, <[u8]>::len)) as u64;
        Ok(())
    })
    .unwrap();
    (records, bytes)
}

fn main() {
    let mut copies = 24;
    let mut runs = 3;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--copies" => copies = it.next().unwrap().parse().unwrap(),
            "--runs" => runs = it.next().unwrap().parse().unwrap(),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let docs = corpus(copies);
    let input_bytes: usize = docs.iter().map(Vec::len).sum();
    let cluster = MockCluster::new(1).unwrap();
    let kafka = KafkaConfig {
        brokers: cluster.bootstrap_servers(),
        ..Default::default()
    };
    cluster.create_topic(&kafka.input_topic, 8, 1).unwrap();
    cluster.create_topic(&kafka.output_topic, 2, 1).unwrap();
    cluster
        .create_topic(&kafka.dead_letter_topic, 2, 1)
        .unwrap();
    tools::produce_lines(&kafka, &kafka.input_topic, docs.iter().cloned()).unwrap();
    println!(
        "corpus: {} documents, {:.1} MB, 8 input partitions, 2 workers",
        docs.len(),
        input_bytes as f64 / 1e6
    );
    let scratch = tempfile::tempdir().unwrap();
    let mut times = [Vec::new(), Vec::new()];
    let mut last_on = None;
    for r in 0..runs {
        for on in [false, true] {
            let group = format!("bench-{}-{r}", if on { "on" } else { "off" });
            if on {
                for index in ["exact_dedup", "near_dedup"] {
                    cluster
                        .create_topic(&changelog_topic(&group, index), 32, 1)
                        .unwrap();
                }
            }
            let state = scratch.path().join(&group);
            let (secs, funnel) = run(config(&kafka, &group, &state, on));
            // Every run reads the whole input: the output and dead letters account for it.
            let accounted = funnel.get("output", "emitted") + funnel.get("dead_letter", "written");
            println!(
                "run {r} changelog {}: {secs:.2} s ({:.0} docs/s; {accounted} records written)",
                if on { "on " } else { "off" },
                docs.len() as f64 / secs
            );
            times[on as usize].push(secs);
            if on {
                last_on = Some(group);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (median(&mut times[0]), median(&mut times[1]));
    println!(
        "median of {runs}: off {off:.2} s, on {on:.2} s: {:+.1} %",
        (on / off - 1.0) * 100.0
    );

    let group = last_on.expect("a run with changelogs");
    let mut total = 0;
    for index in ["exact_dedup", "near_dedup"] {
        let (records, bytes) = topic_size(&kafka, &changelog_topic(&group, index));
        total += bytes;
        println!(
            "{index}: {records} changelog records ({:.2} per document), {:.1} MB ({:.0} bytes per document)",
            records as f64 / docs.len() as f64,
            bytes as f64 / 1e6,
            bytes as f64 / docs.len() as f64
        );
    }

    // A process on an empty disk: every partition of both indexes comes from the changelog
    // before anything is judged (the input is consumed already, so this is the restore alone).
    let empty = scratch.path().join("empty-disk");
    let (secs, funnel) = run(config(&kafka, &group, &empty, true));
    let progress = funnel.live().restore_progress().expect("restores ran");
    let (records, bytes) = (
        progress.records.load(Ordering::Relaxed),
        progress.bytes.load(Ordering::Relaxed),
    );
    assert_eq!(bytes, total, "the whole changelog is restored");
    println!(
        "restore on an empty disk: {} partitions, {records} records, {:.1} MB in {secs:.2} s ({:.1} s per GB, {:.0} records/s)",
        progress.finished.load(Ordering::Relaxed),
        bytes as f64 / 1e6,
        secs / (bytes as f64 / 1e9),
        records as f64 / secs
    );
}
