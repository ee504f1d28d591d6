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
