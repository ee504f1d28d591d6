//! Benchmark test sets for decontamination: which files, which of their fields are the text a
//! model is evaluated on, and how to read them.
//!
//! A [`BenchmarkSpec`] names a file or a folder. Files are read as JSONL, JSON (an array of
//! objects), CSV (a header row) or parquet (with the default `parquet` feature); every format
//! becomes rows of JSON objects, so field mapping is the same for all. The shared evaluation sets
//! are recognised by file name ([`builtin`]); any other file indexes the fields its spec lists or,
//! failing that, the usual prompt fields (`question`, `context`, `query`, `prompt`, `text`,
//! `problem`), or else every string field. Adding a benchmark is a config line, not code.
//!
//! Each indexed field of a row is one *segment*: n-grams never span two fields, so a question and
//! its answer choices are matched independently. An array of strings (MMLU/ARC choices) is one
//! segment, its elements in order. Prompt scaffolding that web pages do not carry, a leading
//! `Question:` and a trailing `Answer:` (ARC, TriviaQA), is trimmed.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How a benchmark file is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object a line (`.jsonl`, `.ndjson`).
    Jsonl,
    /// A JSON array of objects (`.json`); a `.json` file that is really JSONL is read as such.
    Json,
    /// Comma-separated with a header row (`.csv`).
    Csv,
    /// Apache Parquet (`.parquet`); needs the `parquet` feature (on by default).
    Parquet,
}

impl Format {
    /// The format a file name implies, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// One benchmark source in the config (`[[decontaminate.benchmarks]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkSpec {
    /// A file, or a folder whose supported files (by extension) are each loaded.
    pub path: PathBuf,
    /// The name dead letters report. Default: the built-in name for a known file, else the file
    /// stem. Only for a file: a folder's files keep their own names.
    #[serde(default)]
    pub name: Option<String>,
    /// Default: from the extension.
    #[serde(default)]
    pub format: Option<Format>,
    /// The text fields to index, each a segment. Default: the built-in mapping, else the usual
    /// prompt fields, else every string field.
    #[serde(default)]
    pub fields: Vec<String>,
    /// The field holding an item's id. Default: the built-in one, else the 0-based row number.
    #[serde(default)]
    pub id_field: Option<String>,
}

impl BenchmarkSpec {
    /// A spec with every setting at its default (what `--benchmarks PATH` gives).
    pub fn path(path: impl Into<PathBuf>) -> Self {
        BenchmarkSpec {
            path: path.into(),
            name: None,
            format: None,
            fields: Vec::new(),
            id_field: None,
        }
    }
}

/// The field mapping of a known benchmark file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Builtin {
    /// The file stem it is recognised by (`gsm8k_test` matches `gsm8k_test.jsonl`, `.csv`, ...).
    pub stem: &'static str,
    pub name: &'static str,
    pub fields: &'static [&'static str],
    pub id_field: Option<&'static str>,
}

/// The shared evaluation sets (`shared/data/benchmarks/`). Only what a model is prompted with is
/// indexed: the question (and the choices of multiple-choice sets), not reference solutions,
/// which pages quoting a solution also quote the question of.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        stem: "gsm8k_test",
        name: "gsm8k",
        fields: &["question"],
        id_field: None,
    },
    // MATH calls the problem `context`.
    Builtin {
        stem: "math_test",
        name: "math",
        fields: &["context"],
        id_field: None,
    },
    Builtin {
        stem: "mmlu_test",
        name: "mmlu",
        fields: &["question", "choices"],
        id_field: None,
    },
    Builtin {
        stem: "humaneval",
        name: "humaneval",
        fields: &["prompt"],
        id_field: Some("task_id"),
    },
    Builtin {
        stem: "mbpp",
        name: "mbpp",
        fields: &["text"],
        id_field: Some("task_id"),
    },
    Builtin {
        stem: "arc_challenge",
        name: "arc_challenge",
        fields: &["query", "choices"],
        id_field: None,
    },
    Builtin {
        stem: "arc_easy",
        name: "arc_easy",
        fields: &["query", "choices"],
        id_field: None,
    },
    Builtin {
        stem: "triviaqa_subset",
        name: "triviaqa",
        fields: &["context"],
        id_field: None,
    },
];

/// The fields indexed in a file no mapping names, the first of them present being used with
/// every other one present.
pub const COMMON_FIELDS: &[&str] = &["question", "context", "query", "prompt", "text", "problem"];

/// The built-in mapping for a file, by its stem.
pub fn builtin(path: &Path) -> Option<&'static Builtin> {
    let name = path.file_name()?.to_str()?;
    let stem = name.split('.').next()?;
    BUILTINS.iter().find(|b| b.stem == stem)
}

/// One evaluation item: its id and the texts indexed for it.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchmarkItem {
    pub id: String,
    /// One per indexed field present in the row (possibly none).
    pub segments: Vec<String>,
}

/// A loaded benchmark file.
#[derive(Clone, Debug)]
pub struct BenchmarkSet {
    pub name: String,
    pub path: PathBuf,
    /// The fields that were indexed (a generic file's may differ by row; this is their union).
    pub fields: Vec<String>,
    /// Every row, in file order.
    pub items: Vec<BenchmarkItem>,
}

/// A benchmark file that could not be read or mapped.
#[derive(Debug, thiserror::Error)]
#[error("benchmark {}: {msg}", path.display())]
pub struct BenchmarkError {
    pub path: PathBuf,
    pub msg: String,
}

fn err(path: &Path, msg: impl Into<String>) -> BenchmarkError {
    BenchmarkError {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Loads every spec, in order. Two specs naming the same file load it once; two different files
/// with the same name are an error (dead letters would not say which one matched).
pub fn load_all(specs: &[BenchmarkSpec]) -> Result<Vec<BenchmarkSet>, BenchmarkError> {
    let mut sets: Vec<BenchmarkSet> = Vec::new();
    let mut by_name: HashMap<String, PathBuf> = HashMap::new();
    let mut seen_paths = std::collections::HashSet::new();
    for spec in specs {
        for set in load_spec(spec)? {
            let canonical = std::fs::canonicalize(&set.path).unwrap_or_else(|_| set.path.clone());
            if !seen_paths.insert(canonical) {
                continue;
            }
            if let Some(other) = by_name.insert(set.name.clone(), set.path.clone()) {
                return Err(err(
                    &set.path,
                    format!(
                        "name `{}` is also used by {}; set `name` to tell them apart",
                        set.name,
                        other.display()
                    ),
                ));
            }
            sets.push(set);
        }
    }
    Ok(sets)
}

/// Loads a file or every supported file of a folder with default settings (`--benchmarks PATH`).
pub fn load_path(path: &Path) -> Result<Vec<BenchmarkSet>, BenchmarkError> {
    load_spec(&BenchmarkSpec::path(path))
}

/// Loads one spec: one set for a file, one per supported file (sorted by name) for a folder.
pub fn load_spec(spec: &BenchmarkSpec) -> Result<Vec<BenchmarkSet>, BenchmarkError> {
    let meta = std::fs::metadata(&spec.path).map_err(|e| err(&spec.path, e.to_string()))?;
    if !meta.is_dir() {
        return Ok(vec![load_file(spec, &spec.path)?]);
    }
    if spec.name.is_some() {
        return Err(err(
            &spec.path,
            "`name` is for a file; a folder's files keep their own names",
        ));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&spec.path)
        .map_err(|e| err(&spec.path, e.to_string()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && (spec.format.is_some() || Format::from_path(p).is_some()))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(err(
            &spec.path,
            "no .jsonl, .json, .csv or .parquet file in this folder",
        ));
    }
    files.iter().map(|f| load_file(spec, f)).collect()
}

fn load_file(spec: &BenchmarkSpec, path: &Path) -> Result<BenchmarkSet, BenchmarkError> {
    let format = spec
        .format
        .or_else(|| Format::from_path(path))
        .ok_or_else(|| {
            err(
                path,
                "unknown extension; set `format` (jsonl, json, csv, parquet)",
            )
        })?;
    let known = builtin(path);
    let name = spec
        .name
        .clone()
        .or_else(|| known.map(|b| b.name.to_string()))
        .unwrap_or_else(|| {
            let file = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("benchmark");
            file.split('.').next().unwrap_or(file).to_string()
        });
    let fields: Option<Vec<String>> = if !spec.fields.is_empty() {
        Some(spec.fields.clone())
    } else {
        known.map(|b| b.fields.iter().map(|f| f.to_string()).collect())
    };
    let id_field = spec
        .id_field
        .clone()
        .or_else(|| known.and_then(|b| b.id_field.map(str::to_string)));

    let rows = read_rows(path, format)?;
    let mut used: Vec<String> = Vec::new();
    let mut items = Vec::with_capacity(rows.len());
    for (row_no, row) in rows.iter().enumerate() {
        let id = match id_field.as_deref().and_then(|f| row.get(f)) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => row_no.to_string(),
        };
        let names: Vec<&str> = match &fields {
            Some(f) => f.iter().map(String::as_str).collect(),
            None => generic_fields(row, id_field.as_deref()),
        };
        let mut segments = Vec::new();
        for field in names {
            if let Some(text) = row.get(field).and_then(field_text) {
                if !used.iter().any(|u| u == field) {
                    used.push(field.to_string());
                }
                segments.push(text);
            }
        }
        items.push(BenchmarkItem { id, segments });
    }
    if !rows.is_empty() && used.is_empty() {
        let wanted = match &fields {
            Some(f) => format!("the fields {f:?}"),
            None => "any string field".to_string(),
        };
        return Err(err(
            path,
            format!("no row has {wanted}; set `fields` for this file"),
        ));
    }
    Ok(BenchmarkSet {
        name,
        path: path.to_path_buf(),
        fields: used,
        items,
    })
}

/// A row's fields to index when nothing maps them: the usual prompt fields present, else every
/// string field but the id.
fn generic_fields<'a>(row: &'a Map<String, Value>, id_field: Option<&str>) -> Vec<&'a str> {
    let common: Vec<&str> = row
        .keys()
        .map(String::as_str)
        .filter(|k| COMMON_FIELDS.contains(k))
        .collect();
    if !common.is_empty() {
        let mut ordered: Vec<&str> = COMMON_FIELDS
            .iter()
            .filter_map(|c| common.iter().find(|k| *k == c).copied())
            .collect();
        ordered.dedup();
        return ordered;
    }
    // Sorted: serde_json keeps a file's key order or sorts, depending on a feature (`preserve_order`)
    // another crate of the build may turn on; the indexed text must not depend on it.
    let mut fields: Vec<&str> = row
        .iter()
        .filter(|(k, v)| v.is_string() && Some(k.as_str()) != id_field)
        .map(|(k, _)| k.as_str())
        .collect();
    fields.sort_unstable();
    fields
}

/// The text of a field: a string, or the strings of an array in order, one per line; scaffolding
/// trimmed. None when there is no text.
fn field_text(value: &Value) -> Option<String> {
    let raw = match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect();
            parts.join("\n")
        }
        _ => return None,
    };
    let text = trim_scaffolding(&raw);
    (!text.is_empty()).then(|| text.to_string())
}

/// Drops a leading `Question:` and a trailing `Answer:`: prompt formatting of the evaluation
/// harness, not text a contaminated page would contain.
fn trim_scaffolding(text: &str) -> &str {
    let mut t = text.trim();
    if let Some(rest) = t.strip_prefix("Question:") {
        t = rest.trim_start();
    }
    if let Some(rest) = t.strip_suffix("Answer:") {
        t = rest.trim_end();
    }
    t
}

/// Every row of a file as a JSON object.
fn read_rows(path: &Path, format: Format) -> Result<Vec<Map<String, Value>>, BenchmarkError> {
    match format {
        Format::Jsonl => {
            let text = std::fs::read_to_string(path).map_err(|e| err(path, e.to_string()))?;
            jsonl_rows(path, &text)
        }
        Format::Json => {
            let text = std::fs::read_to_string(path).map_err(|e| err(path, e.to_string()))?;
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Array(values)) => values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        Value::Object(m) => Ok(m),
                        _ => Err(err(path, format!("element {i} is not an object"))),
                    })
                    .collect(),
                Ok(_) => Err(err(path, "expected an array of objects")),
                // Many `.json` dumps are JSON lines.
                Err(_) if text.trim_start().starts_with('{') => jsonl_rows(path, &text),
                Err(e) => Err(err(path, e.to_string())),
            }
        }
        Format::Csv => csv_rows(path),
        Format::Parquet => parquet_rows(path),
    }
}

fn jsonl_rows(path: &Path, text: &str) -> Result<Vec<Map<String, Value>>, BenchmarkError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => rows.push(m),
            Ok(_) => return Err(err(path, format!("line {}: not a JSON object", i + 1))),
            Err(e) => return Err(err(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(rows)
}

fn csv_rows(path: &Path) -> Result<Vec<Map<String, Value>>, BenchmarkError> {
    let file = File::open(path).map_err(|e| err(path, e.to_string()))?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(BufReader::new(file));
    let headers = reader
        .headers()
        .map_err(|e| err(path, e.to_string()))?
        .clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| err(path, e.to_string()))?;
        let row: Map<String, Value> = headers
            .iter()
            .zip(record.iter())
            .map(|(h, v)| (h.to_string(), Value::String(v.to_string())))
            .collect();
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(feature = "parquet")]
fn parquet_rows(path: &Path) -> Result<Vec<Map<String, Value>>, BenchmarkError> {
    use parquet::file::reader::SerializedFileReader;
    let file = File::open(path).map_err(|e| err(path, e.to_string()))?;
    let reader = SerializedFileReader::try_from(file).map_err(|e| err(path, e.to_string()))?;
    let mut rows = Vec::new();
    for row in reader {
        let row = row.map_err(|e| err(path, e.to_string()))?;
        match row.to_json_value() {
            Value::Object(m) => rows.push(m),
            _ => return Err(err(path, "a parquet row is not a record")),
        }
    }
    Ok(rows)
}

#[cfg(not(feature = "parquet"))]
fn parquet_rows(path: &Path) -> Result<Vec<Map<String, Value>>, BenchmarkError> {
    Err(err(
        path,
        "parquet support is off in this build (cargo feature `parquet`)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaffolding_is_trimmed() {
        assert_eq!(
            trim_scaffolding("Question: What is a dik-dik?\nAnswer:"),
            "What is a dik-dik?"
        );
        assert_eq!(trim_scaffolding("  plain  "), "plain");
    }

    #[test]
    fn arrays_are_one_segment_and_numbers_are_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custom.jsonl");
        std::fs::write(
            &path,
            "{\"num\": 7, \"prompt\": \"p one\", \"opts\": [\"a\", \"b\"]}\n\n{\"num\": 8, \"prompt\": \"p two\"}\n",
        )
        .unwrap();
        let spec = BenchmarkSpec {
            fields: vec!["prompt".into(), "opts".into()],
            id_field: Some("num".into()),
            ..BenchmarkSpec::path(&path)
        };
        let sets = load_spec(&spec).unwrap();
        assert_eq!(sets[0].name, "custom");
        assert_eq!(sets[0].items[0].id, "7");
        assert_eq!(sets[0].items[0].segments, vec!["p one", "a\nb"]);
        assert_eq!(sets[0].items[1].segments, vec!["p two"]);
    }

    #[test]
    fn generic_mapping_and_formats() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("a.json");
        std::fs::write(
            &json,
            r#"[{"problem": "x y", "answer": "z"}, {"other": "w"}]"#,
        )
        .unwrap();
        let csv = dir.path().join("b.csv");
        std::fs::write(&csv, "id,body\nq1,\"hello, world\"\n").unwrap();
        std::fs::write(dir.path().join("README.md"), "ignored").unwrap();
        let sets = load_path(dir.path()).unwrap();
        assert_eq!(sets.len(), 2);
        // `problem` is a usual prompt field: `answer` is not indexed.
        assert_eq!(sets[0].items[0].segments, vec!["x y"]);
        assert_eq!(sets[0].items[1].segments, vec!["w"]);
        // No usual field: every string field but the id.
        let spec = BenchmarkSpec {
            id_field: Some("id".into()),
            ..BenchmarkSpec::path(&csv)
        };
        let set = &load_spec(&spec).unwrap()[0];
        assert_eq!(set.items[0].id, "q1");
        assert_eq!(set.items[0].segments, vec!["hello, world"]);
    }

    /// A snappy-compressed parquet file with a string and an integer column, as HF exports are.
    #[cfg(feature = "parquet")]
    #[test]
    fn parquet_files_load() {
        use parquet::basic::Compression;
        use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use parquet::schema::parser::parse_message_type;
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gsm8k_test.parquet");
        let schema = parse_message_type(
            "message schema { REQUIRED BYTE_ARRAY question (UTF8); REQUIRED INT64 n; }",
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let file = File::create(&path).unwrap();
        let mut writer =
            SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).unwrap();
        let mut group = writer.next_row_group().unwrap();
        let mut column = group.next_column().unwrap().unwrap();
        let questions = [ByteArray::from("How many eggs?"), ByteArray::from("Why?")];
        column
            .typed::<ByteArrayType>()
            .write_batch(&questions, None, None)
            .unwrap();
        column.close().unwrap();
        let mut column = group.next_column().unwrap().unwrap();
        column
            .typed::<Int64Type>()
            .write_batch(&[7, 8], None, None)
            .unwrap();
        column.close().unwrap();
        group.close().unwrap();
        writer.close().unwrap();

        // Recognised by its stem as GSM8K, whatever the format.
        let sets = load_path(&path).unwrap();
        assert_eq!(sets[0].name, "gsm8k");
        let segments: Vec<_> = sets[0].items.iter().map(|i| i.segments.clone()).collect();
        assert_eq!(segments, vec![vec!["How many eggs?"], vec!["Why?"]]);
    }

    #[test]
    fn mapping_errors_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gsm8k_test.jsonl");
        std::fs::write(&path, "{\"q\": \"renamed field\"}\n").unwrap();
        let e = load_path(&path).unwrap_err().to_string();
        assert!(e.contains("question"), "{e}");
        let e = load_spec(&BenchmarkSpec {
            name: Some("x".into()),
            ..BenchmarkSpec::path(dir.path())
        })
        .unwrap_err();
        assert!(e.to_string().contains("folder"), "{e}");
    }
}
