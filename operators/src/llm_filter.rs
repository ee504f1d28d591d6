//! LLM filter: keeps documents that are informative, self-contained and hold facts a question
//! could be answered from. Dead letters: `llm_filter` / `not_qualified` (with the model's
//! reason), or the call's failure kind.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use timely::dataflow::StreamVec;

use crate::llm_call::{LlmService, clip, prompt};
use crate::llm_stage::{Verdict, llm_stage};
use crate::record::{DeadLetter, Document, Stage};

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

pub fn llm_filter<'s>(
    docs: StreamVec<'s, u64, Document>,
    cfg: LlmFilterConfig,
    service: Arc<dyn LlmService>,
) -> Result<crate::Split<'s, Document>, String> {
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
            let prompt = prompt(
                &template,
                &[("text", clip(&doc.text, cfg.max_document_chars))],
            );
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
