//! What the benchmarks share: the shared data's location and the web sample as documents.

use std::path::PathBuf;

use webscale_rl_records::{Document, Origin};

/// A file under `../shared/data`, or the path in environment variable `var` when set.
pub fn shared(var: &str, rel: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data")
            .join(rel)
    })
}

/// `../shared/data/web/sample.jsonl` (or `$WEBSCALE_SAMPLE`) as documents, origin = line number.
#[allow(dead_code)] // not every bench loads the sample as documents
pub fn load_sample() -> Vec<Document> {
    let path = shared("WEBSCALE_SAMPLE", "web/sample.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let v: serde_json::Value = serde_json::from_str(line).expect("sample is JSONL");
            Document {
                id: v["id"].as_str().expect("id").to_string(),
                text: v["text"].as_str().expect("text").to_string(),
                url: None,
                source: None,
                meta: None,
                filter_model: None,
                origin: Origin {
                    topic: "sample".into(),
                    partition: 0,
                    offset: i as i64,
                },
                words: Default::default(),
            }
        })
        .collect()
}
