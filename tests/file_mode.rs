//! File mode end to end: compressed JSONL in, JSONL out and rejects, nothing lost.

use std::collections::BTreeSet;
use std::io::Write;

use serde_json::Value;

use crate::support::sample_lines;

fn read_jsonl(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_gzipped_file_becomes_outputs_and_rejects_with_every_line_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&input).unwrap(),
        flate2::Compression::fast(),
    );
    let lines = sample_lines();
    for l in &lines {
        gz.write_all(l).unwrap();
        gz.write_all(b"\n").unwrap();
    }
    gz.write_all(b"{broken\n\n").unwrap();
    // A 10 MB document: cut by the reader, dead-lettered as too large, memory bounded.
    let huge = format!(
        "{{\"id\":\"huge\",\"text\":\"{}\"}}\n",
        "word ".repeat(2 << 20)
    );
    gz.write_all(huge.as_bytes()).unwrap();
    gz.finish().unwrap();
    let output = dir.path().join("out.jsonl");
    let out = crate::support::engine()
        .args(["run", "--no-llm", "-w", "2", "--json-summary", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outputs = read_jsonl(&output);
    let rejects = read_jsonl(&dir.path().join("out.rejects.jsonl"));
    assert_eq!(outputs.len() + rejects.len(), lines.len() + 3);
    // The summary table lists the stages in the order a document meets them.
    let table = String::from_utf8_lossy(&out.stderr);
    let at = |stage: &str| {
        table
            .find(&format!("  {stage} "))
            .unwrap_or_else(|| panic!("{stage} missing from the summary: {table}"))
    };
    assert!(
        at("parse") < at("quality_filter")
            && at("quality_filter") < at("exact_dedup")
            && at("exact_dedup") < at("near_dedup"),
        "{table}"
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["consumed"].as_u64().unwrap() as usize,
        lines.len() + 3
    );
    assert_eq!(summary["emitted"].as_u64().unwrap() as usize, outputs.len());
    assert_eq!(
        summary["dead_lettered"].as_u64().unwrap() as usize,
        rejects.len()
    );
    let parse: BTreeSet<&str> = rejects
        .iter()
        .filter(|r| r["stage"] == "parse")
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        parse,
        BTreeSet::from(["malformed_json", "empty_message", "too_large"])
    );
    // Rejects carry the file and line they came from.
    let broken = rejects
        .iter()
        .find(|r| r["reason"] == "malformed_json")
        .unwrap();
    assert_eq!(broken["offset"].as_u64().unwrap() as usize, lines.len() + 1);
    assert!(broken["topic"].as_str().unwrap().ends_with("in.jsonl.gz"));
}

#[test]
fn stdin_to_stdout_with_explicit_rejects_file() {
    let dir = tempfile::tempdir().unwrap();
    let rejects = dir.path().join("rej.jsonl.zst");
    let mut child = crate::support::engine()
        .args([
            "run",
            "--no-llm",
            "--quiet",
            "--input",
            "-",
            "--output",
            "-",
            "--rejects",
        ])
        .arg(&rejects)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = sample_lines();
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in &lines[..100] {
            stdin.write_all(l).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let outputs = String::from_utf8(out.stdout).unwrap().lines().count();
    let rejected = zstd::decode_all(std::fs::File::open(&rejects).unwrap()).unwrap();
    let rejected = String::from_utf8(rejected).unwrap().lines().count();
    assert!(outputs > 0 && rejected > 0);
    assert_eq!(outputs + rejected, 100);
}

/// A writer that pauses does not hold back what it already wrote: the outputs of the lines
/// read appear on stdout, epoch by epoch, while stdin is still open, and they are those of the
/// same lines read from a file.
#[test]
fn stdin_whose_writer_pauses_still_has_its_lines_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    // Three whole epochs of ten lines: each can close with its tenth line.
    std::fs::write(&config, "[source]\nepoch_max_records = 10\n").unwrap();
    let lines = &sample_lines()[..30];
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, [lines.join(&b'\n'), b"\n".to_vec()].concat()).unwrap();
    let from_file = dir.path().join("out.jsonl");
    let status = crate::support::engine()
        .args(["run", "--no-llm", "--quiet", "-w", "2", "--config"])
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&from_file)
        .status()
        .unwrap();
    assert!(status.success());
    let expected: Vec<String> = std::fs::read_to_string(&from_file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(!expected.is_empty());

    let mut child = crate::support::engine()
        .args(["run", "--no-llm", "--quiet", "-w", "2", "--config"])
        .arg(&config)
        .args(["--input", "-", "--output", "-", "--rejects"])
        .arg(dir.path().join("rej.jsonl"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&[lines.join(&b'\n'), b"\n".to_vec()].concat())
        .unwrap();
    stdin.flush().unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stdout) {
            let _ = tx.send(line.unwrap());
        }
    });
    // Well under a second here; without the reader thread, nothing until stdin closes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "{} of {} outputs on stdout while stdin stayed open",
                    seen.len(),
                    expected.len()
                );
            }
        }
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run waits for more input"
    );
    drop(stdin);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run did not end when stdin closed");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    assert!(status.success());
    assert_eq!(seen, expected, "the same outputs as from the file");
}

#[test]
fn operator_times_split_a_two_worker_run_by_stage() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines = sample_lines();
    std::fs::write(&input, lines[..200].join(&b'\n')).unwrap();
    let out = crate::support::engine()
        .args([
            "run",
            "--no-llm",
            "--quiet",
            "--operator-times",
            "-w",
            "2",
            "--input",
        ])
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("out.jsonl"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("operator times: 2 worker(s)"), "{stderr}");
    // One row per stage (however many operators it built), then the source and the sinks.
    for row in [
        "parse",
        "quality_filter",
        "exact_dedup",
        "near_dedup",
        "file sink (encode, write)",
        "FileSource",
    ] {
        let rows = stderr
            .lines()
            .filter(|l| l.starts_with(&format!("| {row} |")));
        assert_eq!(rows.count(), 1, "{row}: {stderr}");
    }
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let rejected = std::fs::read_to_string(dir.path().join("out.rejects.jsonl")).unwrap();
    assert_eq!(written.lines().count() + rejected.lines().count(), 200);
}

/// Runs 50 sample lines into `dir/out.jsonl` with `config`, checks every line is accounted for,
/// and returns how many index syncs the run skipped (its debug log says).
fn index_syncs_skipped(dir: &std::path::Path, config: &str) -> u64 {
    let input = dir.join("in.jsonl");
    std::fs::write(&input, sample_lines()[..50].join(&b'\n')).unwrap();
    let config_path = dir.join("pipeline.toml");
    std::fs::write(&config_path, config).unwrap();
    let output = dir.join("out.jsonl");
    let out = crate::support::engine()
        .env("RUST_LOG", "webscale_rl_dataflow::file_mode=debug")
        .env("NO_COLOR", "1")
        .args(["run", "--no-llm", "--quiet", "--config"])
        .arg(&config_path)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(out.status.success());
    let written = std::fs::read_to_string(&output).unwrap().lines().count();
    let rejected = std::fs::read_to_string(dir.join("out.rejects.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(written + rejected, 50);
    let stderr = String::from_utf8(out.stderr).unwrap();
    let line = stderr
        .lines()
        .find(|l| l.contains("the run is complete; its indexes are closed"))
        .unwrap_or_else(|| panic!("no closing line in: {stderr}"));
    line.split("syncs_skipped=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in: {line}"))
}

#[test]
fn a_runs_own_index_state_waits_for_the_disk_only_between_checkpoints() {
    // Its own state (`OUTPUT.state/`): created without syncs (a crash before the first
    // checkpoint starts over and removes it), closed without syncs once the outputs are in
    // place, then removed.
    let dir = tempfile::tempdir().unwrap();
    assert!(index_syncs_skipped(dir.path(), "") > 0);
    assert!(!dir.path().join("out.jsonl.state").exists());
    // A state directory of the config's outlives the run: every sync is made.
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("kept");
    let config = format!(
        "[exact_dedup]\nstate_dir = {kept:?}\n[near_dedup]\nstate_dir = {kept:?}\n",
        kept = kept.to_str().unwrap()
    );
    assert_eq!(index_syncs_skipped(dir.path(), &config), 0);
    assert!(kept.join("near_dedup").exists());
}

/// The records of a JSONL output without `created_at` (the wall clock of whichever run wrote
/// them), as text: what two runs over the same input must agree on, line for line.
fn lines_without_clock(path: &std::path::Path) -> Vec<String> {
    read_jsonl(path)
        .into_iter()
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("created_at");
            v.to_string()
        })
        .collect()
}

/// A 2-worker file run of `input` against the scripted LLM at `url` with its own response
/// `cache`; small epochs and a short read-ahead (a config written into `dir`) make it last
/// seconds and checkpoint often, so it can be interrupted part-way.
fn llm_file_run(
    dir: &std::path::Path,
    input: &std::path::Path,
    output: &std::path::Path,
    url: &str,
    cache: &std::path::Path,
) -> std::process::Command {
    let config = dir.join("pipeline.toml");
    std::fs::write(
        &config,
        "[source]\nepoch_max_records = 2\nmax_in_flight_docs = 4\ncheckpoint_ms = 50\n",
    )
    .unwrap();
    let mut cmd = crate::support::engine();
    cmd.args(["run", "-w", "2", "--config"])
        .arg(config)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--llm-url", url, "--llm-cache"])
        .arg(cache)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// The line count a progress record says is done, if there is one.
fn lines_done(record: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(record).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["lines_done"].as_u64()
}

#[test]
fn a_run_killed_at_several_points_resumes_to_the_outputs_of_an_uninterrupted_one() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Every chat request the server answers, by prompt: a repeat is a call paid twice.
    let asked: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let log = asked.clone();
    let server = crate::support::scripted_server(
        &runtime,
        move |body: &Value| {
            let prompt = body["messages"].to_string();
            *log.lock().unwrap().entry(prompt).or_default() += 1;
            crate::support::oracle(body)
        },
        Duration::from_millis(250),
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut text = String::new();
    for (i, mut doc) in crate::support::good_articles().take(36).enumerate() {
        // Some documents fail the LLM filter, some lose their pairs: rejects on both sides.
        if i % 5 == 0 {
            let t = doc["text"].as_str().unwrap().to_string();
            doc["text"] = Value::from(format!("{t} [[boilerplate]]"));
        }
        if i % 7 == 0 {
            let t = doc["text"].as_str().unwrap().to_string();
            doc["text"] = Value::from(format!("{t} [[wrong]]"));
        }
        text.push_str(&doc.to_string());
        text.push('\n');
    }
    std::fs::write(&input, text).unwrap();
    let run = |output: &str, cache: &str| {
        let (output, cache) = (dir.path().join(output), dir.path().join(cache));
        llm_file_run(dir.path(), &input, &output, &server.base_url(), &cache)
    };

    crate::support::succeed(&mut run("whole.jsonl", "whole-cache.redb"));
    let whole_calls: u32 = asked.lock().unwrap().values().sum();
    asked.lock().unwrap().clear();

    // The same run, killed (SIGKILL: no clean-up at all) twice as its progress advances.
    let record = dir.path().join("parts.jsonl.progress.json");
    let mut kills = 0;
    let mut done_before = 0;
    for _ in 0..2 {
        let at_least = done_before + 1;
        let mut child = run("parts.jsonl", "parts-cache.redb").spawn().unwrap();
        let started = Instant::now();
        while lines_done(&record).unwrap_or(0) < at_least {
            if child.try_wait().unwrap().is_some() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "the run ended before line {at_least} was recorded: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(started.elapsed() < Duration::from_secs(60), "no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        done_before = lines_done(&record).unwrap();
        assert!(dir.path().join("parts.jsonl.partial").exists());
        assert!(
            !dir.path().join("parts.jsonl").exists(),
            "no output before the end"
        );
    }
    let (_, stderr) = crate::support::succeed(&mut run("parts.jsonl", "parts-cache.redb"));
    assert!(stderr.contains("resuming"), "{stderr}");

    // Line for line the outputs of the uninterrupted run, and nothing left behind.
    for (whole, parts) in [
        ("whole.jsonl", "parts.jsonl"),
        ("whole.rejects.jsonl", "parts.rejects.jsonl"),
    ] {
        let expected = lines_without_clock(&dir.path().join(whole));
        assert!(!expected.is_empty(), "{whole} is empty");
        assert_eq!(
            lines_without_clock(&dir.path().join(parts)),
            expected,
            "{parts}"
        );
    }
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("parts.jsonl.") || n.starts_with("parts.rejects.jsonl."))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // The response cache answered what the killed runs had asked: a call is paid twice only if
    // it was in flight (or not yet cached) when its run was killed.
    let asked = asked.lock().unwrap();
    let repeats: u32 = asked.values().map(|n| n - 1).sum();
    let calls: u32 = asked.values().sum();
    assert!(
        repeats <= kills * 2 * 4 * 4,
        "{repeats} repeated calls after {kills} kills"
    );
    assert!(
        calls <= whole_calls + repeats,
        "{calls} calls, {whole_calls} for the whole run"
    );
}

#[test]
fn ctrl_c_stops_at_once_keeps_what_is_durable_and_the_next_run_finishes() {
    use std::time::{Duration, Instant};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = crate::support::scripted_server(
        &runtime,
        crate::support::oracle,
        Duration::from_millis(300),
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let docs: Vec<String> = crate::support::good_articles()
        .take(30)
        .map(|d| d.to_string())
        .collect();
    std::fs::write(&input, docs.join("\n")).unwrap();
    let output = dir.path().join("out.jsonl.gz");
    let cache = dir.path().join("cache.redb");
    let run = || llm_file_run(dir.path(), &input, &output, &server.base_url(), &cache);
    let record = dir.path().join("out.jsonl.gz.progress.json");
    let child = run().spawn().unwrap();
    let started = Instant::now();
    while lines_done(&record).unwrap_or(0) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no progress recorded"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let interrupted = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Promptly: no drain of the LLM calls in flight (each takes 300 ms, a document several).
    assert!(interrupted.elapsed() < Duration::from_secs(3), "{stderr}");
    assert!(!out.status.success());
    assert!(
        stderr.contains("run the same command again to resume"),
        "{stderr}"
    );
    let kept = lines_done(&record).unwrap();
    assert!(kept > 0 && kept < 30, "{kept}");
    assert!(dir.path().join("out.jsonl.gz.partial").exists());

    // The next run finishes the file; the outputs are whole, nothing is left beside them.
    let (_, stderr) = crate::support::succeed(&mut run());
    assert!(stderr.contains(&format!("after line {kept}")), "{stderr}");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cache.redb",
            "in.jsonl",
            "out.jsonl.gz",
            "out.rejects.jsonl.gz",
            "pipeline.toml"
        ]
    );
    let pairs = read_jsonl_gz(&output);
    let rejects = read_jsonl_gz(&dir.path().join("out.rejects.jsonl.gz"));
    // Every document has its pairs or a dead letter: none lost across the interruption.
    let mut accounted: BTreeSet<String> = pairs
        .iter()
        .map(|p| p["doc_id"].as_str().unwrap().to_string())
        .collect();
    accounted.extend(
        rejects
            .iter()
            .map(|r| r["doc_id"].as_str().unwrap().to_string()),
    );
    assert_eq!(accounted.len(), 30);
}

fn read_jsonl_gz(path: &std::path::Path) -> Vec<Value> {
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap()),
        &mut text,
    )
    .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The CPU stages' verdicts on the tests' web sample, pinned: which documents pass, and for every
/// rejection its stage, reason and detail (the id a duplicate copies, the near-duplicate's
/// Jaccard estimate, the rule's measured value). A change that alters any verdict — a speed-up of
/// the filters or of MinHash, say — fails here; if the change is meant, regenerate the file with
/// `WEBSCALE_BLESS=1 cargo test --all-features --test e2e cpu_verdicts` and review its diff.
#[test]
fn cpu_verdicts_on_the_sample_are_pinned() {
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cpu_verdicts.jsonl");
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.jsonl");
    // The sample, then copies of every 40th document under new ids: exact ones, and ones with a
    // sentence added (near duplicates), so the dedup stages have verdicts to pin too.
    let input = dir.path().join("in.jsonl");
    let mut lines: Vec<String> = sample_lines()
        .iter()
        .map(|l| String::from_utf8(l.clone()).unwrap())
        .collect();
    let originals: Vec<Value> = lines
        .iter()
        .step_by(40)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, mut doc) in originals.into_iter().enumerate() {
        doc["id"] = Value::from(format!("exact-copy-{i}"));
        lines.push(doc.to_string());
        let text = doc["text"].as_str().unwrap().to_string();
        doc["id"] = Value::from(format!("near-copy-{i}"));
        doc["text"] = Value::from(format!("{text} Updated on Monday."));
        lines.push(doc.to_string());
    }
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    for workers in ["1", "2"] {
        crate::support::succeed(
            crate::support::engine()
                .args(["run", "--no-llm", "--quiet", "-w", workers, "--input"])
                .arg(&input)
                .arg("--output")
                .arg(&output),
        );
        let mut verdicts: Vec<String> = read_jsonl(&output)
            .iter()
            .map(|d| serde_json::json!({"id": d["id"], "verdict": "passed"}).to_string())
            .chain(read_jsonl(&dir.path().join("out.rejects.jsonl")).iter().map(|d| {
                serde_json::json!({"id": d["doc_id"], "stage": d["stage"], "reason": d["reason"],
                                   "detail": d["detail"]})
                .to_string()
            }))
            .collect();
        verdicts.sort();
        let text = verdicts.join("\n") + "\n";
        if std::env::var_os("WEBSCALE_BLESS").is_some() {
            std::fs::write(golden, &text).unwrap();
        }
        let pinned = std::fs::read_to_string(golden).expect("tests/data/cpu_verdicts.jsonl");
        if text != pinned {
            let differ = text
                .lines()
                .zip(pinned.lines())
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("now  {a}\npinned {b}"))
                .unwrap_or_else(|| "the number of verdicts differs".into());
            panic!("CPU verdicts changed with {workers} worker(s):\n{differ}");
        }
    }
}
