//! LLM filter: keeps documents that are informative, self-contained and hold facts a question
//! could be answered from. Dead letters: `llm_filter` / `not_qualified` (with the model's
//! reason), or the call's failure kind.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use timely::dataflow::StreamVec;

use crate::llm_call::{LlmService, clip, document_prompt};
use crate::llm_stage::{Verdict, llm_stage};
use crate::verdicts::{Epoch, Verdicts};
use webscale_rl_records::{DeadLetter, Document, Stage};

const PROMPT: &str = include_str!("../../prompts/llm_filter.md");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmFilterConfig {
    pub enabled: bool,
    /// Model name; empty = `[llm] model`.
    pub model: String,
    pub temperature: f64,
    pub max_tokens: u32,
    /// A prompt file replacing the bundled one (same `{{placeholders}}`).
    pub prompt_file: Option<std::path::PathBuf>,
    /// Characters of the document shown to the model.
    pub max_document_chars: usize,
}

impl Default for LlmFilterConfig {
    fn default() -> Self {
        LlmFilterConfig {
            enabled: true,
            model: String::new(),
            temperature: 0.0,
            max_tokens: 256,
            prompt_file: None,
            max_document_chars: 12_000,
        }
    }
}

/// Reads a JSON boolean, accepting the "Y"/"N"/"yes"/"true" strings weaker models write.
pub fn json_bool(v: &serde_json::Value) -> Option<bool> {
    match v {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" | "true" => Some(true),
            "n" | "no" | "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// The llm_filter stage (an LLM stage: its calls run asynchronously, see [`crate::llm_stage`]).
pub trait LlmFilter<'s> {
    /// Asks the model whether each document is worth questions (`qualified`); the others become
    /// `not_qualified` dead letters with the model's reason.
    ///
    /// An error: the stage's prompt file could not be read or lacks a placeholder.
    ///
    /// ```
    /// use serde_json::json;
    /// use webscale_rl_operators::llm_filter::{LlmFilter, LlmFilterConfig};
    /// use webscale_rl_operators::testing::{FakeLlm, answer, document, run_stage};
    ///
    /// let llm = FakeLlm::new(|request| {
    ///     let qualified = request.prompt.contains("photosynthesis");
    ///     answer(json!({"qualified": qualified, "reason": "no checkable facts"}))
    /// });
    /// let input = vec![
    ///     document("science", "Plants make sugar from light by photosynthesis."),
    ///     document("advert", "Buy now! Best prices!"),
    /// ];
    /// let (passed, rejected) = run_stage(input, move |docs| {
    ///     docs.llm_filter(LlmFilterConfig::default(), llm).unwrap()
    /// });
    /// assert_eq!(passed[0].filter_model.as_deref(), Some("fake"));
    /// assert_eq!((rejected[0].reason.as_str(), rejected[0].detail.as_str()), ("not_qualified", "no checkable facts"));
    /// ```
    fn llm_filter(
        self,
        cfg: LlmFilterConfig,
        llm: Arc<dyn LlmService>,
    ) -> Result<Verdicts<'s, Document>, String>;
}

impl<'s> LlmFilter<'s> for StreamVec<'s, Epoch, Document> {
    fn llm_filter(
        self,
        cfg: LlmFilterConfig,
        llm: Arc<dyn LlmService>,
    ) -> Result<Verdicts<'s, Document>, String> {
        llm_filter(self, cfg, llm)
    }
}

fn llm_filter<'s>(
    docs: StreamVec<'s, Epoch, Document>,
    cfg: LlmFilterConfig,
    service: Arc<dyn LlmService>,
) -> Result<Verdicts<'s, Document>, String> {
    let template = cfg.call().template(PROMPT)?;
    let schema = json!({
        "type": "object",
        "properties": {"reason": {"type": "string"}, "qualified": {"type": "boolean"}},
        "required": ["qualified", "reason"]
    });
    let model = cfg.call();
    Ok(llm_stage(
        docs,
        "LlmFilter",
        service,
        move |doc: &Document| {
            let prompt = document_prompt(&template, clip(&doc.text, cfg.max_document_chars), &[]);
            Ok(model.request(
                Stage::LlmFilter,
                prompt,
                Some(("llm_filter", schema.clone())),
            ))
        },
        |doc, reply, _attempt| {
            let verdict = match reply {
                Err(e) => Err(DeadLetter::for_document(
                    &doc,
                    Stage::LlmFilter,
                    &e.kind,
                    e.message,
                )),
                Ok(answer) => match answer.value.get("qualified").and_then(json_bool) {
                    Some(true) => Ok(Document {
                        filter_model: Some(answer.model),
                        ..doc
                    }),
                    Some(false) => {
                        let reason = answer
                            .value
                            .get("reason")
                            .and_then(|r| r.as_str())
                            .unwrap_or("");
                        Err(DeadLetter::for_document(
                            &doc,
                            Stage::LlmFilter,
                            "not_qualified",
                            reason,
                        ))
                    }
                    None => Err(DeadLetter::for_document(
                        &doc,
                        Stage::LlmFilter,
                        "malformed_answer",
                        format!("no boolean \"qualified\" in {}", answer.value),
                    )),
                },
            };
            Verdict::Done(vec![verdict])
        },
    ))
}

crate::impl_stage_call!(LlmFilterConfig);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{FakeLlm, answer, document, failure, run_stage};

    fn filter(llm: Arc<FakeLlm>, texts: &[&str]) -> (Vec<Document>, Vec<DeadLetter>) {
        let input = texts
            .iter()
            .enumerate()
            .map(|(i, t)| document(&format!("d{i}"), t))
            .collect();
        run_stage(input, move |docs| {
            docs.llm_filter(LlmFilterConfig::default(), llm).unwrap()
        })
    }

    #[test]
    fn a_verdict_is_read_leniently_and_an_unreadable_one_is_a_dead_letter() {
        // "yes" as a string counts; an answer without the verdict is malformed, not a pass.
        let llm = FakeLlm::new(|r| {
            if r.prompt.contains("first") {
                answer(json!({"qualified": "yes", "reason": ""}))
            } else {
                answer(json!({"reason": "hmm"}))
            }
        });
        let (passed, dead) = filter(llm.clone(), &["the first text", "the second text"]);
        assert_eq!(passed.len(), 1);
        assert_eq!(dead[0].reason, "malformed_answer");
        assert_eq!(dead[0].stage, Stage::LlmFilter);
        // Every call asks for the verdict schema.
        assert!(
            llm.asked()
                .iter()
                .all(|r| r.schema.as_ref().unwrap().0 == "llm_filter")
        );
    }

    #[test]
    fn a_document_fault_is_a_dead_letter_named_by_its_kind() {
        let llm = FakeLlm::new(|_| failure("content_filter", false));
        let (passed, dead) = filter(llm, &["a text"]);
        assert!(passed.is_empty());
        assert_eq!(dead[0].reason, "content_filter");
        // The document itself rides on its dead letter, for a replay.
        assert!(dead[0].payload.as_deref().unwrap().contains("a text"));
    }
}
