//! What an LLM stage asks of a language model, independent of transport: the stages build
//! [`LlmRequest`]s and hand them to an [`LlmService`]; the engine backs the service with the
//! OpenAI-compatible HTTP client (connectors), tests with a fake.

use std::ops::Range;
use std::path::Path;

use serde_json::Value;

use webscale_rl_records::Stage;

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
    /// Where the document's text sits in `prompt` (byte range), so a prompt
    /// too long for the model's context can be retried once with the
    /// document cut ([`LlmRequest::cut_document`]).
    pub document: Option<Range<usize>>,
    /// The response-cache partition of the document the call is about
    /// ([`webscale_rl_records::changelog::cache_partition`]); set by [`crate::llm_stage`].
    pub cache_partition: Option<u32>,
}

/// Below this many characters a document is not cut further.
const MIN_CUT_CHARS: usize = 200;

impl LlmRequest {
    /// The same request with the document cut to half its characters, for a
    /// retry after `context_too_long`; `None` when there is no document span
    /// or it is already short.
    pub fn cut_document(&self) -> Option<LlmRequest> {
        let span = self.document.clone()?;
        let doc = self.prompt.get(span.clone())?;
        let chars = doc.chars().count();
        if chars < MIN_CUT_CHARS {
            return None;
        }
        let kept = clip(doc, chars / 2);
        let mut prompt = String::with_capacity(self.prompt.len());
        prompt.push_str(&self.prompt[..span.start]);
        prompt.push_str(kept);
        prompt.push_str(&self.prompt[span.end..]);
        Some(LlmRequest {
            prompt,
            document: Some(span.start..span.start + kept.len()),
            ..self.clone()
        })
    }
}

/// A rendered prompt and where the document (`{{text}}`) sits in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    pub text: String,
    pub document: Option<Range<usize>>,
}

/// A parsed answer.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmAnswer {
    pub value: Value,
    /// The model that answered.
    pub model: String,
}

/// A call that failed. `kind` is a short label (`malformed_answer`, `context_too_long`, ...) used
/// as the dead-letter reason.
///
/// `transient` failures are faults of the world around the document (the engine is shutting
/// down, the LLM is unreachable): they are **never** dead-lettered. The operator keeps the call
/// open — and with it the document's epoch, so no offset passes it — and a restart redoes it.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmFailure {
    pub kind: String,
    pub message: String,
    pub transient: bool,
}

pub type LlmReply = Result<LlmAnswer, LlmFailure>;

/// Runs LLM calls without blocking the caller: `done` is called exactly once, from any thread.
pub trait LlmService: Send + Sync + 'static {
    fn submit(&self, request: LlmRequest, done: Box<dyn FnOnce(LlmReply) + Send>);
}

/// Per-stage model settings, copied out of each stage's config section (whose fields
/// `model`, `temperature`, `max_tokens`, `prompt_file` have these meanings).
#[derive(Clone, Debug, PartialEq)]
pub struct StageModel {
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
            model: String::new(),
            temperature,
            max_tokens,
            prompt_file: None,
        }
    }

    /// Checks the values every OpenAI-compatible server refuses, so that they stop the engine at
    /// load with the setting's name instead of dead-lettering every document: `section` is the
    /// stage's config section (`generate`).
    pub fn validate(&self, section: &str) -> Result<(), String> {
        // The range OpenAI's API accepts; vLLM, SGLang and llama.cpp take it too.
        if !(self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature)) {
            return Err(format!(
                "[{section}] temperature = {}: must be a number from 0 to 2",
                self.temperature
            ));
        }
        if self.max_tokens == 0 {
            return Err(format!("[{section}] max_tokens must be at least 1"));
        }
        Ok(())
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
        prompt: Prompt,
        schema: Option<(&'static str, Value)>,
    ) -> LlmRequest {
        LlmRequest {
            stage,
            model: self.model.clone(),
            prompt: prompt.text,
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            schema,
            document: prompt.document,
            cache_partition: None,
        }
    }
}

/// Gives a stage config with the fields `model`, `temperature`, `max_tokens` and
/// `prompt_file` its `call()`: the [`StageModel`] those fields describe.
#[macro_export]
macro_rules! impl_stage_call {
    ($config:ty) => {
        impl $config {
            /// The call settings of this stage.
            pub fn call(&self) -> $crate::llm_call::StageModel {
                $crate::llm_call::StageModel {
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
    prompt(template, vars).text
}

/// [`render`], remembering where the first `{{text}}` (the document) landed.
pub fn prompt(template: &str, vars: &[(&str, &str)]) -> Prompt {
    let mut out =
        String::with_capacity(template.len() + vars.iter().map(|v| v.1.len()).sum::<usize>());
    let mut document = None;
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let value = after.find("}}").and_then(|end| {
            vars.iter()
                .find(|(n, _)| *n == &after[..end])
                .map(|(n, v)| (end, *n, v))
        });
        match value {
            Some((end, name, v)) => {
                if name == "text" && document.is_none() {
                    document = Some(out.len()..out.len() + v.len());
                }
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
    Prompt {
        text: out,
        document,
    }
}

/// The head every call about a document starts with: the pipeline's purpose, then the document.
const DOCUMENT_HEAD: &str = include_str!("../../prompts/document.md");

/// A stage's prompt about one document: the shared head with the document first, then the stage's
/// `task` with its `vars` filled in.
///
/// Every call about a document — the filter, the classification, a question per persona, a check
/// per pair — therefore starts with the same bytes up to the end of the document (given the same
/// clipped text), which a server's prefix cache (vLLM, SGLang) prefills once and an API bills as
/// cached input; what differs per call comes after it. A task that places `{{text}}` itself (a
/// `prompt_file` in the older layout) is used whole, as written.
pub fn document_prompt(task: &str, document: &str, vars: &[(&str, &str)]) -> Prompt {
    if task.contains("{{text}}") {
        let mut all: Vec<(&str, &str)> = vec![("text", document)];
        all.extend_from_slice(vars);
        return prompt(task, &all);
    }
    let mut head = prompt(DOCUMENT_HEAD, &[("text", document)]);
    head.text.push_str(&render(task, vars));
    head
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

    #[test]
    fn a_documents_calls_share_their_head_up_to_the_end_of_the_document() {
        let doc = "A text with {{question}} in it.";
        let a = document_prompt("Task: one {{x}}", doc, &[("x", "1")]);
        let b = document_prompt("Task: two, longer", doc, &[]);
        let end = a.document.clone().unwrap().end;
        assert_eq!(&a.text[a.document.clone().unwrap()], doc);
        assert_eq!(a.text[..end], b.text[..end]);
        assert!(a.text.ends_with("Task: one 1") && b.text.ends_with("Task: two, longer"));
        // An older prompt file that places the document itself is used whole.
        let old = document_prompt("Doc: {{text}} then {{x}}", doc, &[("x", "1")]);
        assert_eq!(old.text, format!("Doc: {doc} then 1"));
    }

    #[test]
    fn prompts_know_where_the_document_is_and_cut_it() {
        let doc = "é".repeat(300);
        let p = prompt("Doc:\n{{text}}\nQ: {{q}}", &[("text", &doc), ("q", "why?")]);
        let span = p.document.clone().unwrap();
        assert_eq!(&p.text[span], doc);
        let req = StageModel::with(0.0, 10).request(Stage::Generate, p, None);
        let cut = req.cut_document().unwrap();
        assert_eq!(cut.prompt, format!("Doc:\n{}\nQ: why?", "é".repeat(150)));
        assert_eq!(&cut.prompt[cut.document.clone().unwrap()], "é".repeat(150));
        // 150 characters are too few to cut again; no document, nothing to cut.
        assert_eq!(cut.cut_document(), None);
        let plain = prompt("no document {{q}}", &[("q", "x")]);
        assert_eq!(plain.document, None);
    }
}
