//! Kafka mode end to end: the shared sample plus bad inputs through two workers.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use webscale_rl_dataflow::cluster::ClusterOptions;
use webscale_rl_dataflow::runtime::{RunControl, run_kafka};
use webscale_rl_dataflow::{Funnel, PipelineConfig};

use crate::support::{Kafka, ids, sample_lines};

fn run_until_caught_up(kafka: &Kafka, workers: usize) -> Funnel {
    let cfg = PipelineConfig {
        kafka: kafka.cfg.clone(),
        ..Default::default()
    };
    run_with(cfg, workers)
}

fn run_with(cfg: PipelineConfig, workers: usize) -> Funnel {
    let cluster = ClusterOptions {
        workers,
        ..Default::default()
    };
    let funnel = Funnel::default();
    let control = RunControl {
        until_caught_up: true,
        ..Default::default()
    };
    run_kafka(
        cfg,
        cluster.timely_config().unwrap(),
        control,
        funnel.clone(),
        Default::default(),
    )
    .unwrap();
    funnel
}

fn reasons(dead: &[Value]) -> BTreeMap<String, String> {
    dead.iter()
        .filter_map(|d| {
            Some((
                d["doc_id"].as_str()?.to_string(),
                d["reason"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn sample_and_bad_inputs_are_all_accounted_for_with_two_workers() {
    let kafka = Kafka::start(4, "e2e-sample");
    let sample = sample_lines();
    let produced = kafka.produce_lines(sample.clone());
    // 3 MB: over the 1 MB document limit. (10 MB documents are tested in file mode: the mock
    // broker's log segments drop a partition's whole history for a message that large, and a
    // default Kafka broker refuses messages over 1 MB anyway.)
    let huge = format!(r#"{{"id":"huge","text":"{}"}}"#, "word ".repeat(600_000)).into_bytes();
    let bad: Vec<(Option<&str>, Option<Vec<u8>>)> = vec![
        (
            Some("malformed"),
            Some(b"{\"id\": \"malformed\", \"text\": ".to_vec()),
        ),
        (
            Some("not-utf8"),
            Some(b"{\"id\":\"not-utf8\",\"text\":\"caf\xe9\"}".to_vec()),
        ),
        (
            Some("no-text"),
            Some(br#"{"id":"no-text","url":"http://x"}"#.to_vec()),
        ),
        (
            Some("empty-text"),
            Some(br#"{"id":"empty-text","text":""}"#.to_vec()),
        ),
        (Some("empty-message"), None),
        (Some("huge"), Some(huge)),
    ];
    kafka.produce_raw(&bad);
    let consumed_expected = produced + bad.len() as u64;

    let funnel = run_until_caught_up(&kafka, 2);
    let outputs = kafka.outputs();
    let dead = kafka.dead_letters();
    // The invariant: input count = output count + dead-letter count.
    assert_eq!(funnel.snapshot().consumed, consumed_expected);
    assert_eq!(
        outputs.len() as u64 + dead.len() as u64,
        consumed_expected,
        "{} outputs + {} dead letters for {consumed_expected} inputs",
        outputs.len(),
        dead.len()
    );
    assert!(
        outputs.len() > 200,
        "most of the sample passes: {}",
        outputs.len()
    );
    assert_eq!(funnel.snapshot().emitted, outputs.len() as u64);

    // Each bad input is dead-lettered with its reason, origin and payload head.
    let by_offset: Vec<&Value> = dead.iter().filter(|d| d["stage"] == "parse").collect();
    let parse_reasons: BTreeSet<&str> = by_offset
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    for reason in [
        "malformed_json",
        "invalid_utf8",
        "missing_text",
        "empty_text",
        "empty_message",
        "too_large",
    ] {
        assert!(
            parse_reasons.contains(reason),
            "no dead letter for {reason}: {parse_reasons:?}"
        );
    }
    let huge = by_offset
        .iter()
        .find(|d| d["reason"] == "too_large")
        .unwrap();
    assert!(huge["payload_head"].as_str().unwrap().len() <= 1024);
    assert!(huge["topic"] == kafka.cfg.input_topic && huge["offset"].is_i64());

    // Quality rejections name the rule; every output is a sample document.
    let rules = reasons(&dead);
    assert!(rules.values().any(|r| r == "min_words"), "{rules:?}");
    let sample_ids: BTreeSet<String> = sample
        .iter()
        .map(|l| {
            serde_json::from_slice::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(ids(&outputs).is_subset(&sample_ids));

    // Offsets are committed exactly to the end: everything consumed is durable.
    assert_eq!(kafka.committed(), kafka.end_offsets());
}

#[test]
fn the_same_input_gives_the_same_verdicts_with_one_and_two_workers() {
    let mut verdicts = Vec::new();
    for workers in [1, 2] {
        let kafka = Kafka::start(3, "e2e-workers");
        let mut lines = sample_lines();
        lines.truncate(300);
        // Exact copies under new ids: the first one read (lowest offset order within an epoch)
        // must win whatever the worker count.
        let copies: Vec<Vec<u8>> = lines[..20]
            .iter()
            .map(|l| {
                let mut v: Value = serde_json::from_slice(l).unwrap();
                v["id"] = Value::from(format!("{}#copy", v["id"].as_str().unwrap()));
                serde_json::to_vec(&v).unwrap()
            })
            .collect();
        lines.extend(copies);
        kafka.produce_lines(lines);
        // One epoch for the whole input: "first seen" is then decided by the fixed order inside
        // an epoch, not by which partition happened to be read first.
        let mut cfg = PipelineConfig {
            kafka: kafka.cfg.clone(),
            ..Default::default()
        };
        cfg.source.epoch_ms = 600_000;
        cfg.source.epoch_max_records = Some(1_000_000);
        run_with(cfg, workers);
        verdicts.push((ids(&kafka.outputs()), reasons(&kafka.dead_letters())));
    }
    assert_eq!(verdicts[0], verdicts[1]);
    let dups = verdicts[0]
        .1
        .values()
        .filter(|r| *r == "duplicate_of")
        .count();
    assert!(dups >= 15, "copies are caught as exact duplicates: {dups}");
}

/// A config that makes the engine crawl, so a test can stop it mid-stream.
fn slow_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("slow.toml");
    std::fs::write(
        &path,
        "[source]\nbatch_max = 5\nepoch_ms = 50\nidle_poll_ms = 50\nmax_in_flight_docs = 5\n",
    )
    .unwrap();
    path
}

fn engine(kafka: &Kafka, config: &std::path::Path, extra: &[&str]) -> Command {
    let mut cmd = crate::support::engine();
    cmd.args([
        "run",
        "--no-llm",
        "--quiet",
        "--json-summary",
        "-w",
        "2",
        "--brokers",
        &kafka.cfg.brokers,
    ])
    .args(["--group", &kafka.cfg.group, "--config"])
    .arg(config)
    .args(extra)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

fn wait_for_outputs(kafka: &Kafka, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while kafka.outputs().len() < at_least {
        assert!(Instant::now() < deadline, "the engine produced nothing");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_crash_mid_stream_loses_nothing_and_the_replay_adds_no_new_ids() {
    let dir = tempfile::tempdir().unwrap();
    let config = slow_config(dir.path());
    let kafka = Kafka::start(4, "e2e-crash");
    let produced = kafka.produce_lines(sample_lines()) as usize;

    // A clean reference run on a separate cluster gives the ids a run must produce.
    let reference = Kafka::start(4, "e2e-crash-ref");
    reference.produce_lines(sample_lines());
    run_until_caught_up(&reference, 2);
    let (want_out, want_dead) = (ids(&reference.outputs()), ids(&reference.dead_letters()));
    assert_eq!(want_out.len() + want_dead.len(), produced);

    let mut child = engine(&kafka, &config, &[]).spawn().unwrap();
    wait_for_outputs(&kafka, 30);
    child.kill().unwrap(); // SIGKILL: no drain, no flush, no final commit
    child.wait().unwrap();
    let committed: i64 = kafka.committed().values().sum();
    assert!(
        committed < produced as i64,
        "the crash happened mid-stream ({committed} committed)"
    );
    // Everything below the committed offsets is in the output or dead-letter topic already.
    let durable = kafka.outputs().len() + kafka.dead_letters().len();
    assert!(
        durable as i64 >= committed,
        "{durable} durable records < {committed} committed offsets"
    );

    // The restart runs at full speed: only the crash needed a slow engine.
    let fast = dir.path().join("fast.toml");
    std::fs::write(&fast, "").unwrap();
    let out = engine(&kafka, &fast, &["--until-caught-up"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ids(&kafka.outputs()),
        want_out,
        "replay produced the same output ids"
    );
    assert_eq!(
        ids(&kafka.dead_letters()),
        want_dead,
        "replay produced the same dead-letter ids"
    );
    assert_eq!(kafka.committed(), kafka.end_offsets());

    // Each run had a disk of its own (`engine` gives each a fresh state home), so the restart
    // restored the state the killed run left in the changelog. One more process on an empty
    // disk must know every accepted document: their copies, under new ids, are all duplicates.
    let accepted = kafka.outputs();
    let copies: Vec<Vec<u8>> = accepted
        .iter()
        .map(|o| {
            serde_json::to_vec(&serde_json::json!({
                "id": format!("{}-copy", o["id"].as_str().unwrap()),
                "text": o["text"],
            }))
            .unwrap()
        })
        .collect();
    kafka.produce_lines(copies);
    crate::support::succeed(&mut engine(&kafka, &fast, &["--until-caught-up"]));
    assert_eq!(kafka.outputs().len(), accepted.len(), "no copy is accepted");
    let caught = kafka
        .dead_letters()
        .iter()
        .filter(|d| {
            d["doc_id"].as_str().is_some_and(|id| id.ends_with("-copy"))
                && d["stage"] == "exact_dedup"
        })
        .count();
    assert_eq!(caught, accepted.len(), "every copy is an exact duplicate");
}

#[test]
fn sigterm_drains_flushes_commits_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = slow_config(dir.path());
    let kafka = Kafka::start(2, "e2e-sigterm");
    let produced = kafka.produce_lines(sample_lines()) as i64;
    let child = engine(&kafka, &config, &["--operator-times"])
        .spawn()
        .unwrap();
    wait_for_outputs(&kafka, 20);
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    // A stopped service still says where its time went.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("operator times:"), "{stderr}");
    assert!(stderr.contains("| near_dedup |"), "{stderr}");
    let consumed = summary["consumed"].as_i64().unwrap();
    let committed: i64 = kafka.committed().values().sum();
    assert!(
        consumed < produced,
        "stopped before the end ({consumed} of {produced})"
    );
    // Everything consumed was written and committed before exit.
    assert_eq!(
        committed, consumed,
        "committed offsets cover exactly what was consumed"
    );
    assert_eq!(
        (kafka.outputs().len() + kafka.dead_letters().len()) as i64,
        consumed
    );
}

#[test]
fn two_processes_split_the_partitions_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = Kafka::start(4, "e2e-cluster");
    let produced = kafka.produce_lines(sample_lines()) as i64;
    let (hostfile, _) = hostfile(dir.path(), "hosts", 2);
    let config = dir.path().join("default.toml");
    std::fs::write(&config, "").unwrap();
    let children: Vec<_> = (0..2)
        .map(|p| {
            engine(
                &kafka,
                &config,
                &["--until-caught-up", "-n", "2", "-p", &p.to_string(), "-h"],
            )
            .arg(&hostfile)
            .spawn()
            .unwrap()
        })
        .collect();
    let mut consumed = Vec::new();
    let mut accounted = 0;
    for (p, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out.stdout)));
        consumed.push(summary["consumed"].as_i64().unwrap());
        // Each summary says which process it is; the invariant holds for the sums.
        assert_eq!(
            (summary["process"].as_u64(), summary["processes"].as_u64()),
            (Some(p as u64), Some(2))
        );
        accounted +=
            summary["emitted"].as_i64().unwrap() + summary["dead_lettered"].as_i64().unwrap();
    }
    assert_eq!(
        accounted, produced,
        "consumed = emitted + dead_lettered over the cluster"
    );
    assert!(
        consumed.iter().all(|c| *c > 0),
        "both processes read partitions: {consumed:?}"
    );
    assert_eq!(consumed.iter().sum::<i64>(), produced);
    assert_eq!(
        (kafka.outputs().len() + kafka.dead_letters().len()) as i64,
        produced
    );
    assert_eq!(kafka.committed(), kafka.end_offsets());
}

#[test]
fn a_dead_peer_stops_the_cluster_with_a_clear_error_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = Kafka::start(4, "e2e-peer-loss");
    let produced = kafka.produce_lines(sample_lines()) as usize;
    let (hostfile, ports) = hostfile(dir.path(), "hosts", 2);
    let config = slow_config(dir.path());
    let start = |p: usize, config: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["-n", "2", "-p"];
        let p = p.to_string();
        args.push(&p);
        args.extend_from_slice(extra);
        args.push("-h");
        engine(&kafka, config, &args)
            .arg(&hostfile)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let survivor = start(0, &config, &[]);
    let mut victim = start(1, &config, &[]);
    wait_for_outputs(&kafka, 20);
    victim.kill().unwrap();
    victim.wait().unwrap();
    let t0 = std::time::Instant::now();
    let out = survivor.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "lost the connection to cluster process 1 (127.0.0.1:{})",
            ports[1]
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let committed: i64 = kafka.committed().values().sum();
    let durable = kafka.outputs().len() + kafka.dead_letters().len();
    assert!(
        durable as i64 >= committed,
        "{durable} durable < {committed} committed"
    );

    // Restart both: everything is accounted for.
    let fast = dir.path().join("fast.toml");
    std::fs::write(&fast, "").unwrap();
    let children = [
        start(0, &fast, &["--until-caught-up"]),
        start(1, &fast, &["--until-caught-up"]),
    ];
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        ids(&kafka.outputs()).len() + ids(&kafka.dead_letters()).len(),
        produced
    );
    assert_eq!(kafka.committed(), kafka.end_offsets());
}

/// A host file `dir/name` for a cluster of `n` processes on this host, and their ports.
fn hostfile(dir: &std::path::Path, name: &str, n: usize) -> (std::path::PathBuf, Vec<u16>) {
    let ports: Vec<u16> = (0..n)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let hosts: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    let path = dir.join(name);
    std::fs::write(&path, hosts).unwrap();
    (path, ports)
}

/// Runs the cluster with one process per state home (`--until-caught-up`, 2 workers each) and
/// returns each process's stderr, insisting that every one succeeded.
fn run_cluster(
    kafka: &Kafka,
    dir: &std::path::Path,
    config: &std::path::Path,
    homes: &[std::path::PathBuf],
) -> Vec<String> {
    let n = homes.len().to_string();
    let (hosts, _) = hostfile(dir, &format!("hosts-{}", homes.len()), homes.len());
    let children: Vec<_> = homes
        .iter()
        .enumerate()
        .map(|(p, home)| {
            engine(
                kafka,
                config,
                &["--until-caught-up", "-n", &n, "-p", &p.to_string(), "-h"],
            )
            .arg(&hosts)
            .env("XDG_STATE_HOME", home)
            .spawn()
            .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "{stderr}");
            stderr
        })
        .collect()
}

/// Documents that reach the dedup stages, under new ids: exact copies and near copies (one word
/// in 100 changed) of `docs`.
fn copies(docs: &[Value], tag: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for d in docs {
        let id = d["id"].as_str().unwrap();
        let text = d["text"].as_str().unwrap();
        let near: Vec<String> = text
            .split_whitespace()
            .enumerate()
            .map(|(i, w)| {
                if i % 100 == 7 {
                    format!("zebra{tag}")
                } else {
                    w.to_string()
                }
            })
            .collect();
        out.push(
            serde_json::to_vec(
                &serde_json::json!({"id": format!("{id}-{tag}-exact"), "text": text}),
            )
            .unwrap(),
        );
        out.push(
            serde_json::to_vec(
                &serde_json::json!({"id": format!("{id}-{tag}-near"), "text": near.join(" ")}),
            )
            .unwrap(),
        );
    }
    out
}

/// Dedup verdicts by document id: (stage, reason, the id it copies).
fn dedup_verdicts(kafka: &Kafka) -> BTreeMap<String, (String, String, String)> {
    kafka
        .dead_letters()
        .iter()
        .filter(|d| {
            matches!(
                d["stage"].as_str(),
                Some("exact_dedup") | Some("near_dedup")
            )
        })
        .map(|d| {
            (
                d["doc_id"].as_str().unwrap_or_default().to_string(),
                (
                    d["stage"].as_str().unwrap_or_default().to_string(),
                    d["reason"].as_str().unwrap_or_default().to_string(),
                    d["detail"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect()
}

/// Issue 24: the dedup state belongs to the cluster. A batch is judged by 2 processes, then
/// copies of it by 3 (the third on an empty disk), then by 1 on another empty disk: the state
/// is restored from the changelog topics by each partition's new owner, and the verdicts are
/// those of a cluster that never changed shape — every exact and near copy caught.
#[test]
fn rescaling_and_new_disks_forget_nothing_that_was_deduplicated() {
    let originals: Vec<Value> = crate::support::good_articles().take(24).collect();
    let batch1: Vec<Vec<u8>> = originals
        .iter()
        .map(|d| serde_json::to_vec(d).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("default.toml");
    std::fs::write(&config, "").unwrap();
    let home = |name: &str| dir.path().join(name);

    // The reference: one process on one disk throughout.
    let reference = Kafka::start(8, "e2e-rescale-reference");
    reference.produce_lines(batch1.clone());
    run_cluster(&reference, dir.path(), &config, &[home("ref")]);
    for tag in ["b", "c"] {
        reference.produce_lines(copies(&originals, tag));
        run_cluster(&reference, dir.path(), &config, &[home("ref")]);
    }
    let expected = dedup_verdicts(&reference);
    // Every exact copy is caught; near copies as MinHash LSH finds them (deterministically:
    // the same ones in every run).
    let mut near = 0;
    for d in &originals {
        let id = d["id"].as_str().unwrap();
        for tag in ["b", "c"] {
            assert_eq!(expected[&format!("{id}-{tag}-exact")].2, id);
            if let Some(v) = expected.get(&format!("{id}-{tag}-near")) {
                // (A change the normalization drops leaves an exact copy.)
                // The original, or the earlier near copy (itself a copy of the original).
                let copied = v.2.split(' ').next().unwrap();
                assert!(copied == id || copied == format!("{id}-b-near"), "{v:?}");
                near += 1;
            }
        }
    }
    assert!(
        near * 10 >= 2 * originals.len() * 9,
        "{near} near copies caught"
    );

    let kafka = Kafka::start(8, "e2e-rescale");
    kafka.produce_lines(batch1);
    run_cluster(&kafka, dir.path(), &config, &[home("a"), home("b")]);
    kafka.produce_lines(copies(&originals, "b"));
    // 2 -> 3 processes, the third on an empty disk: most partitions move.
    run_cluster(
        &kafka,
        dir.path(),
        &config,
        &[home("a"), home("b"), home("c")],
    );
    kafka.produce_lines(copies(&originals, "c"));
    // 3 -> 1 process, on yet another empty disk.
    run_cluster(&kafka, dir.path(), &config, &[home("d")]);
    assert_eq!(
        dedup_verdicts(&kafka),
        expected,
        "the verdicts of a cluster that never changed"
    );
    assert_eq!(kafka.committed(), kafka.end_offsets());
}

/// Issue 24: with changelogs off, a process that would start a partition empty while its group
/// has committed offsets stops, naming the partitions and the cause, and commits nothing.
#[test]
fn without_changelogs_a_partition_missing_from_disk_stops_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("local.toml");
    std::fs::write(&config, "[state]\nchangelog = false\n").unwrap();
    let kafka = Kafka::start(4, "e2e-no-changelog");
    kafka.produce_lines(sample_lines()[..20].to_vec());
    run_cluster(&kafka, dir.path(), &config, &[dir.path().join("a")]);
    // Its own disk again: fine.
    kafka.produce_lines(sample_lines()[20..30].to_vec());
    run_cluster(&kafka, dir.path(), &config, &[dir.path().join("a")]);
    let committed = kafka.committed();
    kafka.produce_lines(sample_lines()[30..40].to_vec());
    let out = engine(&kafka, &config, &["--until-caught-up"])
        .env("XDG_STATE_HOME", dir.path().join("new"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("is not on this disk"), "{stderr}");
    assert!(stderr.contains("e2e-no-changelog"), "{stderr}");
    assert!(stderr.contains("changelog = false"), "{stderr}");
    assert_eq!(kafka.committed(), committed, "nothing is committed");
}
