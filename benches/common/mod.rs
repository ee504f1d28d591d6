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

/// splitmix64, for a reproducible choice of words.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The sample `copies` times, each copy after the first with about one word in seven replaced
/// by another word of the sample's own vocabulary (and `#copy` after its id): copies are new to
/// exact dedup and below near dedup's threshold, so neither shortcuts, and the text stays prose
/// to the quality filter.
#[allow(dead_code)] // not every bench builds a corpus
pub fn varied_sample(copies: usize) -> Vec<serde_json::Value> {
    let sample = shared("WEBSCALE_SAMPLE", "web/sample.jsonl");
    let text = std::fs::read_to_string(&sample)
        .unwrap_or_else(|e| panic!("reading {}: {e}", sample.display()));
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("sample is JSONL"))
        .collect();
    // The vocabulary: the sample's lowercase alphabetic words of 3 to 9 letters, sorted.
    let mut vocab: Vec<&str> = lines
        .iter()
        .flat_map(|v| v["text"].as_str().unwrap_or("").split(' '))
        .filter(|w| (3..=9).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase()))
        .collect();
    vocab.sort_unstable();
    vocab.dedup();
    let mut out = Vec::with_capacity(lines.len() * copies);
    for copy in 0..copies {
        for (i, v) in lines.iter().enumerate() {
            let mut v = v.clone();
            if copy > 0 {
                let text = v["text"].as_str().unwrap_or("");
                let varied: Vec<&str> = text
                    .split(' ')
                    .enumerate()
                    .map(|(j, w)| {
                        let r = mix(((copy as u64) << 48) ^ ((i as u64) << 24) ^ j as u64);
                        let plain = !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase());
                        if plain && r.is_multiple_of(7) {
                            vocab[(r >> 8) as usize % vocab.len()]
                        } else {
                            w
                        }
                    })
                    .collect();
                v["text"] = varied.join(" ").into();
                v["id"] = format!("{}#{copy}", v["id"].as_str().unwrap_or("")).into();
            }
            out.push(v);
        }
    }
    out
}
