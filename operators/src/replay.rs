//! Choosing dead letters to run again (`webscale-rl replay`): after a better model, a fixed
//! server or a changed threshold, the documents dead-lettered for a reason go back to the input.
//!
//! A [`Replay`] reads dead-letter records one by one and hands back, at most once per document,
//! the original message they carry (`payload`), filtered by stage, reason and age.
//!
//! ```
//! use webscale_rl_operators::replay::{Replay, ReplayFilter};
//!
//! let mut replay = Replay::new(ReplayFilter { reason: Some("not_qualified".into()), ..Default::default() });
//! let dead = br#"{"doc_id": "d1", "stage": "llm_filter", "reason": "not_qualified",
//!                 "created_at": 5, "payload": "{\"id\":\"d1\",\"text\":\"...\"}"}"#;
//! let (key, message) = replay.offer(dead).unwrap();
//! assert_eq!((key.as_str(), message.as_str()), ("d1", r#"{"id":"d1","text":"..."}"#));
//! // The same document again (another dead letter of it): once is enough.
//! assert!(replay.offer(dead).is_none());
//! assert_eq!(replay.stats().replayed, 1);
//! ```

use std::collections::HashSet;

use serde::Deserialize;

/// Which dead letters to replay; `None` fields match everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplayFilter {
    pub stage: Option<String>,
    pub reason: Option<String>,
    /// Only dead letters created at or after this time (ms since the Unix epoch).
    pub since_ms: Option<u64>,
}

/// What a replay did, for its report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Dead-letter records read.
    pub read: u64,
    /// Records the filter chose.
    pub matched: u64,
    /// Documents handed back.
    pub replayed: u64,
    /// Chosen records of a document already handed back.
    pub duplicates: u64,
    /// Chosen records without the original message (a rejected pair, a message over the size
    /// bound, a non-UTF-8 message).
    pub without_payload: u64,
    /// Lines that are not dead-letter records.
    pub unreadable: u64,
}

#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    doc_id: Option<String>,
    stage: String,
    reason: String,
    #[serde(default)]
    created_at: u64,
    #[serde(default)]
    payload: Option<String>,
}

/// The replay's state: the filter and the documents already handed back, as 128-bit hashes of
/// their keys: 16 bytes a document (plus the set's free room), not the ids themselves,
/// and no record is kept. (A collision, about 1 in 10^22 for a billion documents, would skip a
/// document.)
pub struct Replay {
    filter: ReplayFilter,
    seen: HashSet<u128>,
    stats: ReplayStats,
}

impl Replay {
    pub fn new(filter: ReplayFilter) -> Self {
        Replay {
            filter,
            seen: HashSet::new(),
            stats: ReplayStats::default(),
        }
    }

    /// The (key, original message) to produce for this dead-letter record, if it is chosen and
    /// its document was not handed back yet. The key is the document id (the dead letter's id for
    /// a message that never became a document).
    pub fn offer(&mut self, record: &[u8]) -> Option<(String, String)> {
        self.stats.read += 1;
        let Ok(r) = serde_json::from_slice::<Record>(record) else {
            self.stats.unreadable += 1;
            return None;
        };
        let f = &self.filter;
        if f.stage.as_ref().is_some_and(|s| *s != r.stage)
            || f.reason.as_ref().is_some_and(|s| *s != r.reason)
            || f.since_ms.is_some_and(|t| r.created_at < t)
        {
            return None;
        }
        self.stats.matched += 1;
        let Some(payload) = r.payload else {
            self.stats.without_payload += 1;
            return None;
        };
        let key = r.doc_id.or(r.id).unwrap_or_default();
        if !self
            .seen
            .insert(xxhash_rust::xxh3::xxh3_128(key.as_bytes()))
        {
            self.stats.duplicates += 1;
            return None;
        }
        self.stats.replayed += 1;
        Some((key, payload))
    }

    pub fn stats(&self) -> &ReplayStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(doc: &str, stage: &str, reason: &str, at: u64, payload: Option<&str>) -> Vec<u8> {
        serde_json::json!({"id": format!("dl-{doc}-{reason}"), "doc_id": doc, "stage": stage,
            "reason": reason, "created_at": at, "payload": payload})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn filters_by_stage_reason_and_age_once_per_document() {
        let mut r = Replay::new(ReplayFilter {
            stage: Some("verify".into()),
            reason: None,
            since_ms: Some(100),
        });
        assert!(
            r.offer(&record("a", "verify", "answer_incorrect", 150, None))
                .is_none()
        );
        let got = r.offer(&record("a", "verify", "no_verified_pair", 150, Some("A")));
        assert_eq!(got, Some(("a".into(), "A".into())));
        assert!(
            r.offer(&record("a", "verify", "no_verified_pair", 160, Some("A")))
                .is_none()
        );
        assert!(
            r.offer(&record("b", "verify", "no_verified_pair", 50, Some("B")))
                .is_none(),
            "too old"
        );
        assert!(
            r.offer(&record("c", "llm_filter", "not_qualified", 150, Some("C")))
                .is_none()
        );
        assert!(r.offer(b"not json").is_none());
        assert_eq!(
            *r.stats(),
            ReplayStats {
                read: 6,
                matched: 3,
                replayed: 1,
                duplicates: 1,
                without_payload: 1,
                unreadable: 1,
            }
        );
    }
}
