//! Training exports end to end: QA pairs built from the shared web sample go through each format
//! with small shard limits. Parquet shards are read back by pyarrow (`read_parquet.py`), a reader
//! independent of the writer, and must match the documented schemas exactly. A Kafka topic (mock
//! cluster) with a replayed id and a tombstone is exported to verl.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Value, json};
use webscale_rl_connectors::export::parquet::DEFAULT_VERL_INSTRUCTION;
use webscale_rl_connectors::export::{
    ExportFormat, ExportOptions, export_file, export_topic, sharded_writer,
};
use webscale_rl_connectors::kafka::{KafkaConfig, tools};
use webscale_rl_records::{Models, PIPELINE_VERSION, QaPair, qa_id};

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/data/web/sample.jsonl"
);
const READER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/read_parquet.py");

const PERSONAS: [&str; 3] = [
    "a high-school student preparing for an exam",
    "une journaliste de données",
    "a retired civil engineer",
];
const DOMAINS: [&str; 4] = ["Lifestyle", "History", "Science & Technology", "Education"];

/// `n` QA pairs from the sample's documents, three personas per document. Every third pair has no
/// source text and every fifth no source, so null columns are exercised.
fn qa_pairs(n: usize) -> Vec<QaPair> {
    let text = std::fs::read_to_string(SAMPLE).expect("the shared sample is readable");
    let docs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("sample lines are JSON"))
        .filter(|d: &Value| d["text"].as_str().unwrap().split_whitespace().count() > 40)
        .take(n.div_ceil(PERSONAS.len()))
        .collect();
    (0..n)
        .map(|i| {
            let doc = &docs[i / PERSONAS.len()];
            let doc_id = doc["id"].as_str().unwrap();
            let body = doc["text"].as_str().unwrap();
            let words: Vec<&str> = body.split_whitespace().collect();
            let k = 10 + 7 * (i % PERSONAS.len());
            let persona = PERSONAS[i % PERSONAS.len()];
            let question = format!(
                "In the passage that begins \"{}\", which word comes right after \"{}\"?",
                words[..6].join(" "),
                words[k]
            );
            QaPair {
                id: qa_id(doc_id, persona, &question),
                doc_id: doc_id.to_string(),
                answer: words[k + 1].to_string(),
                question,
                domain: DOMAINS[i % DOMAINS.len()].to_string(),
                persona: persona.to_string(),
                source: (i % 5 != 4).then(|| doc["source"].as_str().unwrap().to_string()),
                url: doc["url"].as_str().map(str::to_string),
                models: Models {
                    generator: Some("qwen2.5-7b-instruct".into()),
                    verifier: Some("qwen2.5-7b-instruct".into()),
                    ..Default::default()
                },
                created_at: 1_760_000_000_000 + i as u64,
                pipeline_version: PIPELINE_VERSION.to_string(),
                pretrain_text: (i % 3 != 2).then(|| body.to_string()),
            }
        })
        .collect()
}

fn write_jsonl(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn as_lines(pairs: &[QaPair]) -> Vec<String> {
    pairs
        .iter()
        .map(|p| serde_json::to_string(p).unwrap())
        .collect()
}

fn opts(max_records: u64) -> ExportOptions {
    ExportOptions {
        max_records,
        ..Default::default()
    }
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn expected_names(prefix: &str, count: usize, ext: &str) -> Vec<String> {
    (0..count)
        .map(|i| format!("{prefix}-{i:05}.{ext}"))
        .collect()
}

/// What `read_parquet.py` prints for `args`.
fn pyarrow(args: &[&Path]) -> Value {
    let out = Command::new("python3")
        .arg(READER)
        .args(args)
        .output()
        .expect("python3 runs (pyarrow is needed: pip install pyarrow)");
    assert!(
        out.status.success(),
        "read_parquet.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every file's description, and all rows in shard order.
fn read_shards(shards: &[PathBuf]) -> (Vec<Value>, Vec<Value>) {
    let paths: Vec<&Path> = shards.iter().map(PathBuf::as_path).collect();
    let files = pyarrow(&paths)["files"].as_array().unwrap().clone();
    let rows = files
        .iter()
        .flat_map(|f| f["rows"].as_array().unwrap().clone())
        .collect();
    (files, rows)
}

fn string(name: &str, nullable: bool) -> Value {
    json!({"name": name, "nullable": nullable, "type": "string"})
}

fn hf_schema() -> Value {
    json!([
        string("id", false),
        string("pretrain_text", true),
        string("question", false),
        string("answer", false),
        string("domain", false),
        string("persona", false),
        string("source", true),
    ])
}

fn verl_schema() -> Value {
    json!([
        string("data_source", false),
        {"name": "prompt", "nullable": false, "type": {"list":
            {"name": "item", "nullable": false, "type": {"struct": [
                string("role", false),
                string("content", false),
            ]}}
        }},
        string("ability", false),
        {"name": "reward_model", "nullable": false, "type": {"struct": [
            string("style", false),
            string("ground_truth", false),
        ]}},
        {"name": "extra_info", "nullable": false, "type": {"struct": [
            string("id", false),
            string("doc_id", false),
            string("persona", false),
            string("source", true),
        ]}},
    ])
}

fn hf_row(p: &QaPair) -> Value {
    json!({
        "id": p.id,
        "pretrain_text": p.pretrain_text,
        "question": p.question,
        "answer": p.answer,
        "domain": p.domain,
        "persona": p.persona,
        "source": p.source,
    })
}

fn verl_row(p: &QaPair, data_source: &str, content: &str) -> Value {
    json!({
        "data_source": data_source,
        "prompt": [{"role": "user", "content": content}],
        "ability": p.domain,
        "reward_model": {"style": "rule", "ground_truth": p.answer},
        "extra_info": {"id": p.id, "doc_id": p.doc_id, "persona": p.persona, "source": p.source},
    })
}

fn read_jsonl_shards(shards: &[PathBuf]) -> Vec<Vec<QaPair>> {
    shards
        .iter()
        .map(|s| {
            std::fs::read_to_string(s)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn jsonl_shards_roll_every_7_records_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = qa_pairs(40);
    let input = dir.path().join("qa.jsonl");
    write_jsonl(&input, &as_lines(&pairs));
    let out = dir.path().join("out");
    let options = ExportOptions {
        prefix: "train".into(),
        ..opts(7)
    };
    let report = export_file(&input, ExportFormat::Jsonl, &out, &options).unwrap();
    assert_eq!(
        (
            report.read,
            report.written,
            report.duplicates,
            report.invalid
        ),
        (40, 40, 0, 0)
    );
    assert_eq!(names(&out), expected_names("train", 6, "jsonl"));
    let shards = read_jsonl_shards(&report.shards);
    let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![7, 7, 7, 7, 7, 5]);
    assert_eq!(shards.concat(), pairs);
}

#[test]
fn jsonl_shards_roll_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = qa_pairs(30);
    let max_bytes = 9_000u64;
    // Where the shards must end: at the record whose line reaches the limit.
    let mut expected = vec![0usize];
    let mut bytes = 0u64;
    for line in as_lines(&pairs) {
        *expected.last_mut().unwrap() += 1;
        bytes += line.len() as u64 + 1;
        if bytes >= max_bytes {
            expected.push(0);
            bytes = 0;
        }
    }
    expected.retain(|&n| n > 0);
    assert!(expected.len() > 3, "the limit must cut several shards");

    let mut w = sharded_writer(
        ExportFormat::Jsonl,
        dir.path(),
        &ExportOptions {
            max_records: 1_000,
            max_bytes,
            ..Default::default()
        },
    )
    .unwrap();
    for p in pairs.clone() {
        w.write(p).unwrap();
    }
    let shards = w.finish().unwrap();
    let read = read_jsonl_shards(&shards);
    let sizes: Vec<usize> = read.iter().map(Vec::len).collect();
    assert_eq!(sizes, expected);
    assert_eq!(read.concat(), pairs);
    for s in &shards[..shards.len() - 1] {
        assert!(std::fs::metadata(s).unwrap().len() >= max_bytes);
    }
}

#[test]
fn hf_parquet_reads_back_with_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = qa_pairs(40);
    let input = dir.path().join("qa.jsonl");
    write_jsonl(&input, &as_lines(&pairs));
    let out = dir.path().join("hf");
    let report = export_file(&input, ExportFormat::Hf, &out, &opts(7)).unwrap();
    assert_eq!(report.written, 40);
    assert_eq!(names(&out), expected_names("part", 6, "parquet"));

    let (files, rows) = read_shards(&report.shards);
    for f in &files {
        assert_eq!(f["schema"], hf_schema(), "{}", f["path"]);
        assert_eq!(f["codecs"], json!(["ZSTD"]));
    }
    let counts: Vec<u64> = files
        .iter()
        .map(|f| f["num_rows"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![7, 7, 7, 7, 7, 5]);
    let expected: Vec<Value> = pairs.iter().map(hf_row).collect();
    assert_eq!(rows, expected);
    assert!(rows.iter().any(|r| r["pretrain_text"].is_null()));
    assert!(rows.iter().any(|r| r["source"].is_null()));
}

#[test]
fn hf_without_source_text_has_a_null_column() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = qa_pairs(9);
    let input = dir.path().join("qa.jsonl");
    write_jsonl(&input, &as_lines(&pairs));
    let options = ExportOptions {
        include_pretrain_text: false,
        ..opts(100)
    };
    let report = export_file(&input, ExportFormat::Hf, dir.path(), &options).unwrap();
    let (files, rows) = read_shards(&report.shards);
    assert_eq!(files[0]["schema"], hf_schema());
    assert_eq!(rows.len(), 9);
    assert!(rows.iter().all(|r| r["pretrain_text"].is_null()));
    assert_eq!(rows[0]["question"], json!(pairs[0].question));
}

#[test]
fn hf_shards_roll_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = qa_pairs(40);
    let options = ExportOptions {
        max_records: 1_000,
        max_bytes: 20_000,
        ..Default::default()
    };
    let mut w = sharded_writer(ExportFormat::Hf, dir.path(), &options).unwrap();
    for p in pairs.clone() {
        w.write(p).unwrap();
    }
    let shards = w.finish().unwrap();
    assert!(shards.len() > 2, "{} shards", shards.len());
    let (_, rows) = read_shards(&shards);
    assert_eq!(rows, pairs.iter().map(hf_row).collect::<Vec<_>>());
}

#[test]
fn verl_parquet_reads_back_with_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = qa_pairs(40);
    let input = dir.path().join("qa.jsonl");
    write_jsonl(&input, &as_lines(&pairs));
    let out = dir.path().join("verl");
    let report = export_file(&input, ExportFormat::Verl, &out, &opts(7)).unwrap();
    assert_eq!(names(&out), expected_names("part", 6, "parquet"));

    let (files, rows) = read_shards(&report.shards);
    for f in &files {
        assert_eq!(f["schema"], verl_schema(), "{}", f["path"]);
        assert_eq!(f["codecs"], json!(["ZSTD"]));
    }
    let expected: Vec<Value> = pairs
        .iter()
        .map(|p| {
            let content = format!("{}\n\n{DEFAULT_VERL_INSTRUCTION}", p.question);
            verl_row(p, "webscale-rl", &content)
        })
        .collect();
    assert_eq!(rows, expected);
    assert!(DEFAULT_VERL_INSTRUCTION.contains("Answer:"));
}

#[test]
fn verl_prompt_and_data_source_are_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = qa_pairs(5);
    let input = dir.path().join("qa.jsonl");
    write_jsonl(&input, &as_lines(&pairs));
    let mut options = opts(100);
    options.verl.data_source = "webscale-rl/sample".into();
    options.verl.instruction = String::new();
    let report = export_file(&input, ExportFormat::Verl, dir.path(), &options).unwrap();
    let (_, rows) = read_shards(&report.shards);
    let expected: Vec<Value> = pairs
        .iter()
        .map(|p| verl_row(p, "webscale-rl/sample", &p.question))
        .collect();
    assert_eq!(rows, expected);
}

/// Hidden temporary names are what keeps a half-written shard away from trainers.
fn is_hidden_temp(name: &str, shard: &str) -> bool {
    name.starts_with(&format!(".{shard}.tmp-{}", std::process::id()))
}

fn matches_final_glob(name: &str, prefix: &str, ext: &str) -> bool {
    name.starts_with(&format!("{prefix}-")) && name.ends_with(&format!(".{ext}"))
}

#[test]
fn a_shard_is_invisible_until_complete() {
    for format in ExportFormat::ALL {
        let dir = tempfile::tempdir().unwrap();
        let ext = format.extension();
        let mut w = sharded_writer(format, dir.path(), &opts(7)).unwrap();
        let mut pairs = qa_pairs(10).into_iter();
        for p in pairs.by_ref().take(7) {
            w.write(p).unwrap();
        }
        // Shard 0 is full and in place; shard 1 is being written.
        for p in pairs.by_ref().take(2) {
            w.write(p).unwrap();
        }
        let listed = names(dir.path());
        let visible: Vec<&String> = listed
            .iter()
            .filter(|n| matches_final_glob(n, "part", ext))
            .collect();
        assert_eq!(visible, vec![&format!("part-00000.{ext}")], "{format}");
        assert_eq!(listed.len(), 2, "{format}: {listed:?}");
        let temp = listed.iter().find(|n| !visible.contains(n)).unwrap();
        assert!(
            is_hidden_temp(temp, &format!("part-00001.{ext}")),
            "{format}: {temp}"
        );
        if ext == "parquet" {
            // A trainer reading the directory now gets the complete shard only.
            let seen = pyarrow(&[Path::new("--dir"), dir.path()]);
            assert_eq!(seen["num_rows"], 7, "{format}");
            assert_eq!(seen["files"].as_array().unwrap().len(), 1, "{format}");
        }
        // Abandoned: the partial shard disappears, the complete one stays.
        drop(w);
        assert_eq!(
            names(dir.path()),
            vec![format!("part-00000.{ext}")],
            "{format}"
        );
    }
}

#[test]
fn finished_exports_leave_no_temporary_files() {
    for format in ExportFormat::ALL {
        let dir = tempfile::tempdir().unwrap();
        let mut w = sharded_writer(format, dir.path(), &opts(7)).unwrap();
        for p in qa_pairs(15) {
            w.write(p).unwrap();
        }
        assert_eq!(w.shards().len(), 2);
        let shards = w.finish().unwrap();
        assert_eq!(shards.len(), 3);
        assert_eq!(
            names(dir.path()),
            expected_names("part", 3, format.extension()),
            "{format}"
        );
    }
}

#[test]
fn no_records_no_shards() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("empty.jsonl");
    std::fs::write(&input, "\n\n").unwrap();
    let out = dir.path().join("out");
    let report = export_file(&input, ExportFormat::Verl, &out, &opts(7)).unwrap();
    assert!(report.shards.is_empty());
    assert_eq!(report.read, 0);
    assert!(names(&out).is_empty());
}

#[test]
fn an_earlier_export_is_refused_unless_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("qa.jsonl");
    write_jsonl(&input, &as_lines(&qa_pairs(40)));
    let out = dir.path().join("out");
    export_file(&input, ExportFormat::Hf, &out, &opts(7)).unwrap();
    assert_eq!(names(&out).len(), 6);

    let err = export_file(&input, ExportFormat::Hf, &out, &opts(20)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("already holds 6 'part-*.parquet' shard(s)"),
        "{msg}"
    );
    // Another format's shards are no conflict.
    export_file(&input, ExportFormat::Jsonl, &out, &opts(20)).unwrap();

    let options = ExportOptions {
        overwrite: true,
        ..opts(20)
    };
    let report = export_file(&input, ExportFormat::Hf, &out, &options).unwrap();
    assert_eq!(report.shards.len(), 2);
    // The old shards 2..5 are gone: a trainer reading the directory sees the new export only.
    let mut expected = expected_names("part", 2, "jsonl");
    expected.extend(expected_names("part", 2, "parquet"));
    expected.sort();
    assert_eq!(names(&out), expected);
    let (_, rows) = read_shards(&report.shards);
    assert_eq!(rows.len(), 40);
}

#[test]
fn file_export_keeps_the_last_copy_of_each_id() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = qa_pairs(10);
    let mut replayed = pairs[3].clone();
    replayed.answer = "a corrected answer".into();
    replayed.created_at += 1_000;
    let mut lines = as_lines(&pairs);
    lines.insert(6, as_lines(&[pairs[5].clone()])[0].clone());
    lines.push(String::new());
    lines.push("not a QA record".into());
    lines.push(r#"{"id":"x","question":"missing fields"}"#.into());
    lines.push(as_lines(&[replayed.clone()])[0].clone());
    let input = dir.path().join("qa.jsonl.zst");
    std::fs::write(
        &input,
        zstd::encode_all((lines.join("\n") + "\n").as_bytes(), 3).unwrap(),
    )
    .unwrap();

    let out = dir.path().join("dedup");
    let report = export_file(&input, ExportFormat::Jsonl, &out, &opts(100)).unwrap();
    assert_eq!(report.read, 14);
    assert_eq!(report.invalid, 2);
    assert_eq!(report.duplicates, 2);
    assert_eq!(report.written, 10);
    assert_eq!(report.missing, 0);
    let written = read_jsonl_shards(&report.shards).concat();
    // Each id once, at the position of its last copy.
    let mut expected: Vec<QaPair> = pairs
        .iter()
        .filter(|p| p.id != pairs[3].id)
        .cloned()
        .collect();
    expected.push(replayed);
    assert_eq!(written, expected);

    let out = dir.path().join("all");
    let options = ExportOptions {
        dedup: false,
        ..opts(100)
    };
    let report = export_file(&input, ExportFormat::Jsonl, &out, &options).unwrap();
    assert_eq!(
        (
            report.read,
            report.invalid,
            report.duplicates,
            report.written
        ),
        (14, 2, 0, 12)
    );
}

#[test]
fn stdin_needs_dedup_off() {
    let dir = tempfile::tempdir().unwrap();
    let err = export_file(Path::new("-"), ExportFormat::Hf, dir.path(), &opts(7)).unwrap_err();
    assert!(err.to_string().contains("stdin"), "{err}");
}

#[test]
fn kafka_topic_exports_to_verl_with_replays_and_tombstones() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let cfg = KafkaConfig {
        brokers: cluster.bootstrap_servers(),
        connect_timeout_secs: 5,
        ..Default::default()
    };
    let topic = cfg.output_topic.clone();
    cluster.create_topic(&topic, 2, 1).unwrap();

    let pairs = qa_pairs(20);
    let mut replayed = pairs[4].clone();
    replayed.answer = "the replayed answer".into();
    replayed.created_at += 1_000;
    // Keyed by id, as the engine's sink writes them.
    let sent = tools::produce_lines(
        &cfg,
        &topic,
        as_lines(&pairs)
            .into_iter()
            .chain(as_lines(&[replayed.clone()]))
            .map(String::into_bytes),
    )
    .unwrap();
    assert_eq!(sent, 21);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .create()
        .unwrap();
    producer
        .send(BaseRecord::<str, [u8]>::to(&topic).key(&pairs[7].id))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let report = export_topic(&cfg, &topic, ExportFormat::Verl, dir.path(), &opts(7)).unwrap();
    assert_eq!(report.read, 22);
    assert_eq!(report.invalid, 0);
    assert_eq!(
        report.duplicates, 2,
        "the replayed id's first copy and the deleted record"
    );
    assert_eq!(report.written, 19);
    assert_eq!(names(dir.path()), expected_names("part", 3, "parquet"));

    let (files, rows) = read_shards(&report.shards);
    for f in &files {
        assert_eq!(f["schema"], verl_schema());
    }
    assert_eq!(rows.len(), 19, "one row per distinct live id");
    let mut ids: Vec<&str> = rows
        .iter()
        .map(|r| r["extra_info"]["id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 19);
    assert!(!ids.contains(&pairs[7].id.as_str()), "the tombstoned id");
    let row = rows
        .iter()
        .find(|r| r["extra_info"]["id"] == json!(pairs[4].id))
        .unwrap();
    assert_eq!(
        *row,
        verl_row(
            &replayed,
            "webscale-rl",
            &format!("{}\n\n{DEFAULT_VERL_INSTRUCTION}", replayed.question)
        )
    );

    // Records produced after the export are left for the next one; a new export sees them.
    tools::produce_lines(
        &cfg,
        &topic,
        as_lines(&qa_pairs(21)[20..])
            .into_iter()
            .map(String::into_bytes),
    )
    .unwrap();
    let again = ExportOptions {
        overwrite: true,
        ..opts(7)
    };
    let report = export_topic(&cfg, &topic, ExportFormat::Verl, dir.path(), &again).unwrap();
    assert_eq!(report.written, 20);
}
