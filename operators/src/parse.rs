//! Parse: raw messages into documents. Every malformed message becomes a dead letter with a reason
//! instead of stopping the engine.

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::operators::core::OkErr;

use crate::verdicts::{Epoch, Verdicts};
use webscale_rl_records::{
    DeadLetter, Document, MAX_RECORD_BYTES, RawMessage, Stage, json_escaped_len, stable_id,
};

/// Limits applied while parsing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParseConfig {
    /// Documents whose `text` is longer than this many bytes are dead-lettered (`too_large`).
    pub max_document_bytes: usize,
}

impl Default for ParseConfig {
    fn default() -> Self {
        ParseConfig {
            max_document_bytes: 1 << 20,
        }
    }
}

#[derive(Deserialize)]
struct InputDocument {
    #[serde(default)]
    id: Option<IdValue>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    meta: Option<Box<serde_json::value::RawValue>>,
}

/// Ids arrive as strings or numbers.
#[derive(Deserialize)]
#[serde(untagged)]
enum IdValue {
    Text(String),
    Number(serde_json::Number),
}

/// Room in a record for what is not the document's text, url or meta (ids, version, framing).
const RECORD_ROOM: usize = 16 * 1024;

/// Parses one message. The id is the `id` field, else the Kafka key, else a hash of the message's
/// origin (topic, partition, offset; in file mode the path and line).
pub fn parse_message(msg: &RawMessage, cfg: &ParseConfig) -> Result<Document, DeadLetter> {
    let reject =
        |reason: &str, detail: String| DeadLetter::for_message(msg, Stage::Parse, reason, detail);
    let payload = match msg.payload.as_deref() {
        None | Some([]) => {
            return Err(reject("empty_message", "the message has no payload".into()));
        }
        Some(p) => p,
    };
    // A size check before parsing keeps a huge message from costing a full JSON parse.
    if msg.truncated {
        return Err(reject(
            "too_large",
            format!(
                "the line exceeds the reader's limit; kept its first {} bytes",
                payload.len()
            ),
        ));
    }
    if payload.len() > cfg.max_document_bytes + 64 * 1024 {
        return Err(reject(
            "too_large",
            format!(
                "payload is {} bytes; max_document_bytes is {}",
                payload.len(),
                cfg.max_document_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|e| reject("invalid_utf8", format!("payload is not UTF-8: {e}")))?;
    let input: InputDocument = serde_json::from_str(text)
        .map_err(|e| reject("malformed_json", format!("not a JSON document object: {e}")))?;
    let body = match input.text {
        None => {
            return Err(reject(
                "missing_text",
                "the document has no \"text\" field".into(),
            ));
        }
        Some(t) if t.trim().is_empty() => {
            return Err(reject("empty_text", "the \"text\" field is empty".into()));
        }
        Some(t) => t,
    };
    if body.len() > cfg.max_document_bytes {
        return Err(reject(
            "too_large",
            format!(
                "text is {} bytes; max_document_bytes is {}",
                body.len(),
                cfg.max_document_bytes
            ),
        ));
    }
    let id = match input.id {
        Some(IdValue::Text(s)) if !s.is_empty() => s,
        Some(IdValue::Number(n)) => n.to_string(),
        _ => match msg.key.as_deref().map(std::str::from_utf8) {
            Some(Ok(k)) if !k.is_empty() => k.to_string(),
            // Where the message sits, not what it says: identical texts without an id are two
            // documents (dedup judges them), while a replay of this message keeps its id. A hash
            // of the text made every copy a "replay" of the first, so none was deduplicated.
            _ => stable_id(&[
                "origin",
                &msg.origin.topic,
                &msg.origin.partition.to_string(),
                &msg.origin.offset.to_string(),
            ]),
        },
    };
    // The record a sink writes must stay under the bound a default Kafka broker accepts, and
    // JSON escaping can make a text six times larger than its bytes. Most texts need no scan.
    let fields = [
        Some(body.as_str()),
        input.url.as_deref(),
        input.meta.as_ref().map(|m| m.get()),
    ];
    let raw: usize = fields.iter().flatten().map(|f| f.len()).sum();
    if raw * 6 + RECORD_ROOM > MAX_RECORD_BYTES {
        let encoded: usize = fields.iter().flatten().map(|f| json_escaped_len(f)).sum();
        if encoded + RECORD_ROOM > MAX_RECORD_BYTES {
            return Err(reject(
                "too_large",
                format!(
                    "the text encodes to {encoded} bytes of JSON; a record may have \
                     {MAX_RECORD_BYTES} (escaped characters count up to 6 bytes each)"
                ),
            ));
        }
    }
    Ok(Document {
        id,
        text: body,
        url: input.url,
        source: input.source,
        meta: input.meta.map(|m| m.get().to_string()),
        filter_model: None,
        origin: msg.origin.clone(),
        words: Default::default(),
    })
}

/// The parse stage: documents, and dead letters for what could not be parsed.
pub trait Parse<'s> {
    /// Parses each message into a [`Document`] ([`parse_message`]).
    ///
    /// ```
    /// use webscale_rl_operators::parse::{Parse, ParseConfig};
    /// use webscale_rl_operators::testing::run_stage;
    /// use webscale_rl_records::{Origin, RawMessage};
    ///
    /// let message = |payload: &str| RawMessage {
    ///     key: None,
    ///     payload: Some(payload.as_bytes().to_vec()),
    ///     origin: Origin { topic: "web".into(), partition: 0, offset: 0 },
    ///     truncated: false,
    /// };
    /// let input = vec![message(r#"{"id": "a", "text": "Some text."}"#), message("{not json")];
    /// let (docs, rejected) = run_stage(input, |messages| messages.parse(ParseConfig::default()));
    /// assert_eq!(docs[0].id, "a");
    /// assert_eq!(rejected[0].reason, "malformed_json");
    /// ```
    fn parse(self, cfg: ParseConfig) -> Verdicts<'s, Document>;
}

impl<'s> Parse<'s> for StreamVec<'s, Epoch, RawMessage> {
    fn parse(self, cfg: ParseConfig) -> Verdicts<'s, Document> {
        let (passed, rejected) = self.ok_err(move |msg| parse_message(&msg, &cfg));
        Verdicts { passed, rejected }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webscale_rl_records::Origin;

    #[test]
    fn dead_letters_keep_the_message_for_a_replay() {
        use webscale_rl_records::{
            DEAD_LETTER_MAX_REPLAY_BYTES, DEAD_LETTER_PAYLOAD_BYTES, DeadLetter, Stage,
        };
        let origin = Origin {
            topic: "t".into(),
            partition: 0,
            offset: 7,
        };
        let raw = |payload: Vec<u8>| RawMessage {
            key: Some(b"key-id".to_vec()),
            payload: Some(payload),
            origin: origin.clone(),
            truncated: false,
        };
        // A document (id from the Kafka key, meta kept) parses back to itself from its dead letter.
        let doc = parse_message(
            &raw(br#"{"text": "a long text", "url": "u", "meta": {"k": [1, 2]}}"#.to_vec()),
            &ParseConfig::default(),
        )
        .unwrap();
        let dl = DeadLetter::for_document(&doc, Stage::QualityFilter, "min_words", "");
        let again = parse_message(
            &raw(dl.payload.clone().unwrap().into_bytes()),
            &ParseConfig::default(),
        )
        .unwrap();
        assert_eq!(again, doc);
        assert_eq!(again.id, "key-id");
        // A message that never parsed: kept as it came, if it is text and not too large.
        let dl = DeadLetter::for_message(
            &raw(b"{broken".to_vec()),
            Stage::Parse,
            "malformed_json",
            "",
        );
        assert_eq!(dl.payload.as_deref(), Some("{broken"));
        let dl = DeadLetter::for_message(&raw(vec![0xff, 0xfe]), Stage::Parse, "invalid_utf8", "");
        assert_eq!(dl.payload, None);
        let huge = vec![b'x'; DEAD_LETTER_MAX_REPLAY_BYTES + 1];
        let dl = DeadLetter::for_message(&raw(huge), Stage::Parse, "too_large", "");
        assert_eq!(dl.payload, None);
        assert_eq!(dl.payload_head.len(), DEAD_LETTER_PAYLOAD_BYTES);
    }

    #[test]
    fn identical_texts_without_an_id_are_two_documents_and_a_replay_is_one() {
        let at = |offset| RawMessage {
            key: None,
            payload: Some(br#"{"text": "the same words"}"#.to_vec()),
            origin: Origin {
                topic: "t".into(),
                partition: 0,
                offset,
            },
            truncated: false,
        };
        let cfg = ParseConfig::default();
        let (a, b) = (
            parse_message(&at(1), &cfg).unwrap(),
            parse_message(&at(2), &cfg).unwrap(),
        );
        assert_ne!(
            a.id, b.id,
            "a copy is a duplicate for dedup to judge, not a replay"
        );
        assert_eq!(
            parse_message(&at(1), &cfg).unwrap().id,
            a.id,
            "a replay keeps its id"
        );
    }

    #[test]
    fn a_text_whose_json_exceeds_a_record_is_too_large() {
        let cfg = ParseConfig::default();
        let doc = |text: &str| RawMessage {
            key: None,
            payload: Some(
                serde_json::to_vec(&serde_json::json!({"id": "x", "text": text})).unwrap(),
            ),
            origin: Origin {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
            truncated: false,
        };
        // 170 KiB of control characters: 1.04 MB of JSON, in a payload under the document limit.
        let e = parse_message(&doc(&"\u{1}".repeat(170 * 1024)), &cfg).unwrap_err();
        assert_eq!(e.reason, "too_large");
        assert!(e.detail.contains("encodes to"), "{}", e.detail);
        // As many plain bytes fit.
        parse_message(&doc(&"a".repeat(200 * 1024)), &cfg).unwrap();
    }

    fn msg(key: Option<&str>, payload: Option<&[u8]>) -> RawMessage {
        RawMessage {
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: payload.map(|p| p.to_vec()),
            origin: Origin {
                topic: "in".into(),
                partition: 0,
                offset: 3,
            },
            truncated: false,
        }
    }

    fn reason(m: RawMessage) -> String {
        parse_message(&m, &ParseConfig::default())
            .unwrap_err()
            .reason
    }

    #[test]
    fn parses_fields_and_falls_back_to_key_then_origin() {
        let cfg = ParseConfig::default();
        let d = parse_message(
            &msg(
                Some("k"),
                Some(br#"{"id":"a","text":"hi","url":"u","meta":{"x":1}}"#),
            ),
            &cfg,
        )
        .unwrap();
        assert_eq!(
            (d.id.as_str(), d.url.as_deref(), d.meta.as_deref()),
            ("a", Some("u"), Some(r#"{"x":1}"#))
        );
        let d = parse_message(&msg(Some("k"), Some(br#"{"text":"hi"}"#)), &cfg).unwrap();
        assert_eq!(d.id, "k");
        let d = parse_message(&msg(None, Some(br#"{"id":17,"text":"hi"}"#)), &cfg).unwrap();
        assert_eq!(d.id, "17");
        let d = parse_message(&msg(None, Some(br#"{"text":"hi"}"#)), &cfg).unwrap();
        assert_eq!(d.id, stable_id(&["origin", "in", "0", "3"]));
    }

    #[test]
    fn bad_input_gets_a_reason() {
        assert_eq!(reason(msg(None, None)), "empty_message");
        assert_eq!(reason(msg(None, Some(b""))), "empty_message");
        assert_eq!(
            reason(msg(None, Some(b"{\"text\": \"a\xff\"}"))),
            "invalid_utf8"
        );
        assert_eq!(reason(msg(None, Some(b"{not json"))), "malformed_json");
        assert_eq!(reason(msg(None, Some(b"[1,2]"))), "malformed_json");
        assert_eq!(reason(msg(None, Some(br#"{"id":"x"}"#))), "missing_text");
        assert_eq!(
            reason(msg(None, Some(br#"{"id":"x","text":"  "}"#))),
            "empty_text"
        );
        let big = format!(r#"{{"id":"x","text":"{}"}}"#, "a".repeat(10 << 20));
        assert_eq!(reason(msg(None, Some(big.as_bytes()))), "too_large");
    }
}
