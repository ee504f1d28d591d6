//! The records that flow through the engine: raw input messages, parsed documents, the QA pairs
//! trainers read, and the dead-letter records that account for everything else.
//!
//! Every record that leaves the engine has a stable `id` (a content hash), so a replay after a
//! crash rewrites the same keys instead of adding new ones.
//!
//! This crate is the one every layer shares — sources and sinks (`webscale-rl-connectors`), the
//! stages (`webscale-rl-operators`), the graph (`webscale-rl-dataflow`) — the way Materialize keeps
//! its rows in `mz_repr`: so a sink does not pull in MinHash, and a stage does not pull in Kafka.

pub mod changelog;

use serde::{Deserialize, Serialize};

/// Version stamped on every emitted record, so consumers can tell outputs of different builds apart.
pub const PIPELINE_VERSION: &str = concat!("webscale-rl/", env!("CARGO_PKG_VERSION"));

/// Bytes of the raw payload kept in a dead-letter record.
pub const DEAD_LETTER_PAYLOAD_BYTES: usize = 1024;
/// Longest original message a dead letter carries for `replay`. Kept under the 1 MB a Kafka
/// broker accepts by default (`message.max.bytes`), with room for the rest of the record, so a
/// large document can never make its own dead letter undeliverable.
pub const DEAD_LETTER_MAX_REPLAY_BYTES: usize = 768 * 1024;

/// Largest record (its JSON, as a sink writes it) the engine writes. Under the 1,048,588 bytes a
/// Kafka broker accepts by default (`message.max.bytes`, which the engine's producers also apply),
/// with room for the key and the record's framing: a record that a default broker would refuse
/// would stop the engine, and, read again after the restart, stop it again forever. Every bound
/// above is taken on the encoded size, since JSON escaping can make text six times larger (a
/// control character becomes `\u0001`).
pub const MAX_RECORD_BYTES: usize = 1_000_000;

/// Kafka's default `message.max.bytes` (broker and librdkafka): what a record with its key and
/// framing must stay under.
pub const KAFKA_DEFAULT_MESSAGE_MAX_BYTES: usize = 1_048_588;

/// Bytes of `s` as a JSON string literal, quotes included, as serde_json writes it: `"` and `\`
/// and the short escapes (`\n`, `\t`, ...) take 2 bytes, other control characters 6.
pub fn json_escaped_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// `s` if its JSON literal is at most `max` bytes.
fn within_encoded(s: String, max: usize) -> Option<String> {
    // Escaping at most multiplies by 6: most texts need no scan.
    (s.len() * 6 + 2 <= max || json_escaped_len(&s) <= max).then_some(s)
}

/// Longest `detail` a dead letter keeps, in bytes (cut at a character boundary).
const DEAD_LETTER_DETAIL_BYTES: usize = 4096;

/// Where a message came from: a Kafka (topic, partition, offset), or a file (path, 0, line number).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A message as a source read it, before any parsing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RawMessage {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub origin: Origin,
    /// The source cut the payload short (a line over the file reader's limit): too large.
    pub truncated: bool,
}

/// A parsed input document. `meta` is kept as JSON text: the inter-worker encoding (bincode) cannot
/// carry self-describing values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub id: String,
    pub text: String,
    pub url: Option<String>,
    pub source: Option<String>,
    pub meta: Option<String>,
    /// The model that passed it through the LLM filter (set by that stage), for the QA pairs'
    /// `models.filter`.
    pub filter_model: Option<String>,
    pub origin: Origin,
    /// The text's words as dedup reads them, from the one pass over the text that the quality
    /// filter makes; exact and near dedup reuse them instead of normalizing again.
    #[serde(skip)]
    pub words: Derived<NormalizedWords>,
}

/// A document's text normalized (case folded, punctuation stripped, whitespace folded to one
/// space, as `rules` say) with where each word starts: what exact dedup hashes and near dedup
/// shingles.
#[derive(Clone, Debug, Default)]
pub struct NormalizedWords {
    /// The normalization rules that made `text` (their bits), so that a stage configured with
    /// other rules does not use it.
    pub rules: u8,
    /// The byte length of the text it was made from: a stage that changed the document's text
    /// since leaves words that no longer match it, and they are not used.
    pub source_len: usize,
    pub text: String,
    /// Byte offset in `text` of each word (words are separated by one space).
    pub starts: Vec<u32>,
}

impl NormalizedWords {
    /// The words, in order.
    pub fn words(&self) -> impl Iterator<Item = &str> {
        let ends = self.starts.iter().skip(1).map(|&s| s as usize - 1);
        let ends = ends.chain((!self.starts.is_empty()).then_some(self.text.len()));
        self.starts
            .iter()
            .zip(ends)
            .map(|(&start, end)| &self.text[start as usize..end])
    }
}

/// Data derived from a record's own fields and kept beside it to save recomputing it: shared
/// cheaply (`Arc`), never serialized (a record that crosses to another process arrives without
/// it, and the next stage that wants it derives it again), and ignored when records are compared.
#[derive(Clone, Default)]
pub struct Derived<T>(pub Option<std::sync::Arc<T>>);

impl<T> Derived<T> {
    pub fn new(value: T) -> Self {
        Derived(Some(std::sync::Arc::new(value)))
    }

    pub fn get(&self) -> Option<&T> {
        self.0.as_deref()
    }
}

impl<T> PartialEq for Derived<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for Derived<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Derived(..)"
        } else {
            "Derived(None)"
        })
    }
}

impl Document {
    /// The document as an input message (`{"id", "text", "url"?, "source"?, "meta"?}`), which
    /// parses back to the same document: what a dead letter keeps for a replay.
    pub fn to_message(&self) -> String {
        #[derive(Serialize)]
        struct Message<'a> {
            id: &'a str,
            text: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            url: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            source: Option<&'a str>,
            // Verbatim: the document's meta is JSON text already.
            #[serde(skip_serializing_if = "Option::is_none")]
            meta: Option<&'a serde_json::value::RawValue>,
        }
        serde_json::to_string(&Message {
            id: &self.id,
            text: &self.text,
            url: self.url.as_deref(),
            source: self.source.as_deref(),
            meta: self
                .meta
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok()),
        })
        .expect("a document serializes")
    }
}

/// The record emitted for a document that passed every stage, while the pipeline runs without
/// the LLM stages (`--no-llm`): the document itself, ready for a later QA pass.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AcceptedDocument {
    pub id: String,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Box<serde_json::value::RawValue>>,
    pub pipeline_version: String,
}

impl AcceptedDocument {
    pub fn from_document(doc: Document) -> Self {
        let meta = doc
            .meta
            .and_then(|m| serde_json::value::RawValue::from_string(m).ok());
        AcceptedDocument {
            id: doc.id,
            text: doc.text,
            url: doc.url,
            source: doc.source,
            meta,
            pipeline_version: PIPELINE_VERSION.to_string(),
        }
    }
}

/// A document with its domain and the personas who would read it (after `classify`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifiedDocument {
    pub doc: Document,
    pub domain: String,
    pub personas: Vec<String>,
    pub classifier_model: String,
}

/// A generated question-answer pair on its way to verification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QaCandidate {
    pub doc: Document,
    pub domain: String,
    pub persona: String,
    pub question: String,
    pub answer: String,
    pub models: Models,
}

/// The fate of one pair, grouped per document by the accounting stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairOutcome {
    pub doc_id: String,
    pub origin: Origin,
    pub result: Result<QaPair, DeadLetter>,
}

/// Names of the models that produced a QA pair, one per LLM stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Models {
    pub filter: Option<String>,
    pub classifier: Option<String>,
    pub generator: Option<String>,
    pub verifier: Option<String>,
}

/// A verifiable question–answer pair, the engine's product.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QaPair {
    /// `qa_id(doc_id, persona, question)`: stable across replays.
    pub id: String,
    pub doc_id: String,
    pub question: String,
    pub answer: String,
    pub domain: String,
    pub persona: String,
    pub source: Option<String>,
    pub url: Option<String>,
    pub models: Models,
    /// Unix milliseconds.
    pub created_at: u64,
    pub pipeline_version: String,
    /// The source text, only when configured (it can be large).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain_text: Option<String>,
}

/// The id of a QA pair: a hash of what makes it distinct, so a replay yields the same id.
pub fn qa_id(doc_id: &str, persona: &str, question: &str) -> String {
    stable_id(&[doc_id, persona, question])
}

/// A hex xxh3-128 of the parts, separated so that ("ab","c") and ("a","bc") differ.
pub fn stable_id(parts: &[&str]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    format!("{:032x}", h.digest128())
}

/// A stage of the pipeline, as named in dead-letter records and summaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Parse,
    QualityFilter,
    ExactDedup,
    NearDedup,
    Decontaminate,
    LlmFilter,
    Classify,
    Generate,
    Verify,
}

impl Stage {
    /// Every stage, in the order a document meets them.
    pub const ALL: [Stage; 9] = [
        Stage::Parse,
        Stage::QualityFilter,
        Stage::ExactDedup,
        Stage::NearDedup,
        Stage::Decontaminate,
        Stage::LlmFilter,
        Stage::Classify,
        Stage::Generate,
        Stage::Verify,
    ];

    /// Where the stage named `name` sits in [`Stage::ALL`] (unknown names last), for listing
    /// counts in pipeline order.
    pub fn rank(name: &str) -> usize {
        Stage::ALL
            .iter()
            .position(|s| s.as_str() == name)
            .unwrap_or(Stage::ALL.len())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::QualityFilter => "quality_filter",
            Stage::ExactDedup => "exact_dedup",
            Stage::NearDedup => "near_dedup",
            Stage::Decontaminate => "decontaminate",
            Stage::LlmFilter => "llm_filter",
            Stage::Classify => "classify",
            Stage::Generate => "generate",
            Stage::Verify => "verify",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a document (or a QA pair) left the pipeline. Every consumed document that produces no
/// output produces one of these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Stable over replays: a hash of the origin and the stage.
    pub id: String,
    pub doc_id: Option<String>,
    pub stage: Stage,
    /// A short machine-readable reason, e.g. `min_words` or `duplicate_of`.
    pub reason: String,
    /// Human-readable detail: the measured value and threshold, the id it duplicates, ...
    pub detail: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The first `DEAD_LETTER_PAYLOAD_BYTES` of the raw payload (lossy UTF-8).
    pub payload_head: String,
    /// The whole original message, for `webscale-rl replay`: the document as parsed (`{"id",
    /// "text", "url", "source", "meta"}`), or the raw message of one that never parsed (if it is
    /// UTF-8). `None` for a rejected pair (its document's `no_verified_pair` carries it) and for
    /// messages over [`DEAD_LETTER_MAX_REPLAY_BYTES`].
    pub payload: Option<String>,
    pub created_at: u64,
    pub pipeline_version: String,
}

impl DeadLetter {
    /// A dead letter for a message that never became a document.
    pub fn for_message(
        msg: &RawMessage,
        stage: Stage,
        reason: &str,
        detail: impl Into<String>,
    ) -> Self {
        let head = msg.payload.as_deref().map(payload_head).unwrap_or_default();
        let mut dl = Self::new(None, &msg.origin, stage, reason, detail.into(), head);
        dl.payload = msg
            .payload
            .as_deref()
            .filter(|p| p.len() <= DEAD_LETTER_MAX_REPLAY_BYTES && !msg.truncated)
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| within_encoded(p.to_owned(), DEAD_LETTER_MAX_REPLAY_BYTES));
        dl
    }

    /// A dead letter for one question-answer pair of a document (its id includes the pair, so
    /// several rejected pairs of one document do not collide).
    pub fn for_pair(
        doc: &Document,
        persona: &str,
        question: &str,
        stage: Stage,
        reason: &str,
        detail: impl Into<String>,
    ) -> Self {
        let mut dl = Self::for_document(doc, stage, reason, detail);
        dl.id = stable_id(&[&dl.id, persona, question]);
        // Kept until the accounting stage: a document none of whose pairs survived gets it on
        // its `no_verified_pair` dead letter, the pair-level ones go without.
        dl
    }

    /// A dead letter for a verified QA pair (e.g. dropped by decontamination).
    pub fn for_qa(
        origin: &Origin,
        pair: &QaPair,
        stage: Stage,
        reason: &str,
        detail: impl Into<String>,
    ) -> Self {
        let head = payload_head(format!("{}\n{}", pair.question, pair.answer).as_bytes());
        let mut dl = Self::new(
            Some(pair.doc_id.clone()),
            origin,
            stage,
            reason,
            detail.into(),
            head,
        );
        dl.id = stable_id(&[&dl.id, &pair.id]);
        dl
    }

    /// A dead letter for a parsed document that a stage rejected.
    pub fn for_document(
        doc: &Document,
        stage: Stage,
        reason: &str,
        detail: impl Into<String>,
    ) -> Self {
        let head = payload_head(doc.text.as_bytes());
        let mut dl = Self::new(
            Some(doc.id.clone()),
            &doc.origin,
            stage,
            reason,
            detail.into(),
            head,
        );
        dl.payload = within_encoded(doc.to_message(), DEAD_LETTER_MAX_REPLAY_BYTES);
        dl
    }

    fn new(
        doc_id: Option<String>,
        origin: &Origin,
        stage: Stage,
        reason: &str,
        detail: String,
        payload_head: String,
    ) -> Self {
        let id = stable_id(&[
            &origin.topic,
            &origin.partition.to_string(),
            &origin.offset.to_string(),
            doc_id.as_deref().unwrap_or(""),
            stage.as_str(),
            reason,
        ]);
        let mut detail = detail;
        if detail.len() > DEAD_LETTER_DETAIL_BYTES {
            let mut cut = DEAD_LETTER_DETAIL_BYTES;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        DeadLetter {
            id,
            doc_id,
            stage,
            reason: reason.to_string(),
            detail,
            topic: origin.topic.clone(),
            partition: origin.partition,
            offset: origin.offset,
            payload_head,
            payload: None,
            created_at: now_millis(),
            pipeline_version: PIPELINE_VERSION.to_string(),
        }
    }
}

/// The first bytes of a payload as text, cut at a character boundary.
pub fn payload_head(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(DEAD_LETTER_PAYLOAD_BYTES)];
    let text = String::from_utf8_lossy(cut);
    text.into_owned()
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A record a sink writes: serializable, keyed by its stable id. Sinks encode it themselves (JSON
/// on Kafka and in files, columns in parquet shards), so records travel between workers as
/// records, not as bytes.
pub trait Keyed: Serialize {
    /// The record's stable id: the Kafka message key, the same over replays.
    fn key(&self) -> &str;

    /// Drops what the record is complete without (a pair's `pretrain_text`, a dead letter's
    /// replay payload), for a sink whose encoding of it is over [`MAX_RECORD_BYTES`]. `false`
    /// when there is nothing to drop.
    fn shrink(&mut self) -> bool {
        false
    }
}

impl Keyed for QaPair {
    fn key(&self) -> &str {
        &self.id
    }

    fn shrink(&mut self) -> bool {
        self.pretrain_text.take().is_some()
    }
}

impl QaPair {
    /// Attaches the source text when the pair's record stays under [`MAX_RECORD_BYTES`] with it
    /// (a text that escapes to megabytes of JSON is left out, as if not configured).
    pub fn with_pretrain_text(mut self, text: String) -> Self {
        let room = MAX_RECORD_BYTES
            .saturating_sub(64 * 1024 + self.question.len() * 6 + self.answer.len() * 6);
        self.pretrain_text = within_encoded(text, room);
        self
    }
}

impl Keyed for AcceptedDocument {
    fn key(&self) -> &str {
        &self.id
    }
}

impl Keyed for DeadLetter {
    fn key(&self) -> &str {
        &self.id
    }

    fn shrink(&mut self) -> bool {
        // The message stays at its origin (topic, partition, offset) for a replay by hand.
        self.payload.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escaped_length_is_serde_jsons() {
        for s in [
            "",
            "plain",
            "a\"b\\c",
            "\n\t\r\u{8}\u{c}",
            "\u{1}\u{1f}\u{7f}",
            "café ü 😀",
        ] {
            assert_eq!(
                json_escaped_len(s),
                serde_json::to_string(s).unwrap().len(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_dead_letter_is_bounded_by_its_encoding_not_its_raw_bytes() {
        let origin = Origin {
            topic: "t".into(),
            partition: 0,
            offset: 1,
        };
        // 700 KiB of control characters (4.3 MB escaped) and 380 KiB of quotes (1.56 MB): both
        // under the raw bound, and once both made dead letters no default broker accepts.
        for payload in [vec![1u8; 700 * 1024], vec![b'"'; 380 * 1024]] {
            let msg = RawMessage {
                key: None,
                payload: Some(payload),
                origin: origin.clone(),
                truncated: false,
            };
            let dl =
                DeadLetter::for_message(&msg, Stage::Parse, "malformed_json", "x".repeat(1 << 20));
            let encoded = serde_json::to_vec(&dl).unwrap();
            assert!(encoded.len() <= MAX_RECORD_BYTES, "{}", encoded.len());
        }
        // A document's dead letter carries the document re-encoded: its text is escaped twice
        // (380 KiB of quotes became 1.56 MB).
        let doc = Document {
            id: "d".into(),
            text: "\"".repeat(380 * 1024),
            url: None,
            source: None,
            meta: None,
            filter_model: None,
            origin: Origin {
                topic: "t".into(),
                partition: 0,
                offset: 2,
            },
            words: Derived::default(),
        };
        let dl = DeadLetter::for_document(&doc, Stage::QualityFilter, "r", "");
        assert!(dl.payload.is_none());
        assert!(serde_json::to_vec(&dl).unwrap().len() <= MAX_RECORD_BYTES);
        // A payload whose encoding fits is kept.
        let origin = doc.origin;
        let msg = RawMessage {
            key: None,
            payload: Some(vec![b'"'; 100 * 1024]),
            origin,
            truncated: false,
        };
        assert!(
            DeadLetter::for_message(&msg, Stage::Parse, "r", "")
                .payload
                .is_some()
        );
    }

    #[test]
    fn ids_are_stable_and_separated() {
        assert_eq!(qa_id("d", "p", "q"), qa_id("d", "p", "q"));
        assert_ne!(stable_id(&["ab", "c"]), stable_id(&["a", "bc"]));
        assert_eq!(qa_id("d", "p", "q").len(), 32);
    }

    #[test]
    fn payload_head_is_bounded_and_lossy() {
        let big = vec![b'a'; 5000];
        assert_eq!(payload_head(&big).len(), DEAD_LETTER_PAYLOAD_BYTES);
        assert_eq!(payload_head(&[0xff, b'x']), "\u{fffd}x");
    }

    #[test]
    fn dead_letter_id_is_stable_over_replays() {
        let msg = RawMessage {
            key: None,
            payload: Some(b"{".to_vec()),
            origin: Origin {
                topic: "t".into(),
                partition: 1,
                offset: 7,
            },
            truncated: false,
        };
        let a = DeadLetter::for_message(&msg, Stage::Parse, "malformed_json", "x");
        let b = DeadLetter::for_message(&msg, Stage::Parse, "malformed_json", "y");
        assert_eq!(a.id, b.id);
        assert_eq!(a.payload_head, "{");
    }
}
