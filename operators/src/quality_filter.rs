//! Heuristic quality filter (placeholder: being written).
use crate::record::{DeadLetter, Document, Stage};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::operators::core::OkErr;
use timely::progress::Timestamp;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QualityFilterConfig {
    pub min_words: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub rule: &'static str,
    pub detail: String,
}

pub fn check(text: &str, cfg: &QualityFilterConfig) -> Result<(), Rejection> {
    let n = text.split_whitespace().count();
    if n < cfg.min_words {
        return Err(Rejection {
            rule: "min_words",
            detail: format!("{n} words < {}", cfg.min_words),
        });
    }
    Ok(())
}

pub fn quality_filter<'s, T: Timestamp>(
    docs: StreamVec<'s, T, Document>,
    cfg: QualityFilterConfig,
) -> (StreamVec<'s, T, Document>, StreamVec<'s, T, DeadLetter>) {
    docs.ok_err(move |doc| match check(&doc.text, &cfg) {
        Ok(()) => Ok(doc),
        Err(r) => Err(DeadLetter::for_document(
            &doc,
            Stage::QualityFilter,
            r.rule,
            r.detail,
        )),
    })
}
