//! What an LLM stage asks of a language model, independent of transport: the stages build
//! [`LlmRequest`]s and hand them to an [`LlmService`]; the engine backs the service with the
//! OpenAI-compatible HTTP client (connectors), tests with a fake.

use std::path::Path;

use serde_json::Value;

use crate::record::Stage;

/// One chat call whose answer is a JSON object.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmRequest {
    pub stage: Stage,
    /// Empty: the client's default model.
    pub model: String,
    pub prompt: String,
    pub temperature: f64,
    pub max_tokens: u32,
    /// JSON schema of the answer, sent as `response_format` where the server supports it. The
    /// stages list the verdict fields first in `required`: a server that prefills the answer
    /// from the schema (the local model) then starts with the decision instead of rambling in
    /// `reason` until its token limit.
    pub schema: Option<(&'static str, Value)>,
}

/// A parsed answer.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmAnswer {
    pub value: Value,
    /// The model that answered.
    pub model: String,
}

/// A call that failed after the client's retries. `kind` is a short label (`malformed_answer`,
/// `rate_limited`, `timeout`, ...) used as the dead-letter reason.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmFailure {
    pub kind: String,
    pub message: String,
}

pub type LlmReply = Result<LlmAnswer, LlmFailure>;

/// Runs LLM calls without blocking the caller: `done` is called exactly once, from any thread.
pub trait LlmService: Send + Sync + 'static {
    fn submit(&self, request: LlmRequest, done: Box<dyn FnOnce(LlmReply) + Send>);
}

/// Per-stage model settings, copied out of each stage's config section (whose fields
/// `enabled`, `model`, `temperature`, `max_tokens`, `prompt_file` have these meanings).
#[derive(Clone, Debug, PartialEq)]
pub struct StageModel {
    pub enabled: bool,
    /// Model name; empty = `[llm] model`.
    pub model: String,
    pub temperature: f64,
    pub max_tokens: u32,
    /// A prompt file replacing the bundled one (same `{{placeholders}}`).
    pub prompt_file: Option<std::path::PathBuf>,
}

impl StageModel {
    pub fn with(temperature: f64, max_tokens: u32) -> Self {
        StageModel {
            enabled: true,
            model: String::new(),
            temperature,
            max_tokens,
            prompt_file: None,
        }
    }

    /// The prompt template: the configured file, or the bundled default.
    pub fn template(&self, bundled: &'static str) -> Result<String, String> {
        match &self.prompt_file {
            Some(path) => read_template(path),
            None => Ok(bundled.to_string()),
        }
    }

    pub fn request(
        &self,
        stage: Stage,
        prompt: String,
        schema: Option<(&'static str, Value)>,
    ) -> LlmRequest {
        LlmRequest {
            stage,
            model: self.model.clone(),
            prompt,
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            schema,
        }
    }
}

/// Gives a stage config with the fields `enabled`, `model`, `temperature`, `max_tokens` and
/// `prompt_file` its `call()`: the [`StageModel`] those fields describe.
#[macro_export]
macro_rules! impl_stage_call {
    ($config:ty) => {
        impl $config {
            /// The call settings of this stage.
            pub fn call(&self) -> $crate::llm_call::StageModel {
                $crate::llm_call::StageModel {
                    enabled: self.enabled,
                    model: self.model.clone(),
                    temperature: self.temperature,
                    max_tokens: self.max_tokens,
                    prompt_file: self.prompt_file.clone(),
                }
            }
        }
    };
}

fn read_template(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read prompt file '{}': {e}", path.display()))
}

/// Fills `{{name}}` placeholders in one pass: inserted values are never scanned again, so a
/// document containing `{{question}}` stays as written. Unknown placeholders stay.
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + vars.iter().map(|v| v.1.len()).sum::<usize>());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let value = after.find("}}").and_then(|end| {
            vars.iter()
                .find(|(n, _)| *n == &after[..end])
                .map(|(_, v)| (end, v))
        });
        match value {
            Some((end, v)) => {
                out.push_str(v);
                rest = &after[end + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Cuts `text` to at most `max_chars` characters at a char boundary, so prompts stay within the
/// model's context.
pub fn clip(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_placeholders() {
        assert_eq!(
            render("a {{x}} b {{y}} {{x}} {{z}}", &[("x", "1"), ("y", "{{x}}")]),
            "a 1 b {{x}} 1 {{z}}"
        );
        assert_eq!(clip("héllo", 2), "hé");
        assert_eq!(clip("hi", 10), "hi");
    }
}
