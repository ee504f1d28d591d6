//! Generation: one call per persona, with that domain's few-shot examples, asking for a
//! self-contained question and a short verifiable answer. Dead letters are per pair.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use timely::dataflow::StreamVec;
use timely::dataflow::operators::vec::Map;

use crate::llm_call::{LlmService, clip, prompt};
use crate::llm_stage::{Verdict, llm_stage};
use crate::record::{ClassifiedDocument, DeadLetter, Document, Models, QaCandidate, Stage};
use crate::route::{FewShotLibrary, format_examples};

const PROMPT: &str = include_str!("../../prompts/generate.md");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateConfig {
    pub enabled: bool,
    /// Model name; empty = `[llm] model`.
    pub model: String,
    pub temperature: f64,
    pub max_tokens: u32,
    /// A prompt file replacing the bundled one (same `{{placeholders}}`).
    pub prompt_file: Option<std::path::PathBuf>,
    /// Few-shot examples per call.
    pub examples_per_call: usize,
    /// Directory of `*.jsonl` few-shot libraries replacing the bundled ones.
    pub fewshot_dir: Option<PathBuf>,
    /// Seed of the example choice.
    pub seed: u64,
    pub max_document_chars: usize,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            enabled: true,
            model: String::new(),
            temperature: 0.7,
            max_tokens: 512,
            prompt_file: None,
            examples_per_call: 2,
            fewshot_dir: None,
            seed: 0,
            max_document_chars: 12_000,
        }
    }
}

/// One generation call's input.
struct Task {
    doc: Document,
    domain: String,
    persona: String,
    classifier_model: String,
}

pub fn generate<'s>(
    docs: StreamVec<'s, u64, ClassifiedDocument>,
    cfg: GenerateConfig,
    service: Arc<dyn LlmService>,
) -> Result<crate::Split<'s, QaCandidate>, String> {
    let template = cfg.call().template(PROMPT)?;
    let library = match &cfg.fewshot_dir {
        Some(dir) => FewShotLibrary::load_dir(dir)?,
        None => FewShotLibrary::bundled(),
    };
    let schema = json!({
        "type": "object",
        "properties": {"reason": {"type": "string"}, "question": {"type": "string"}, "answer": {"type": "string"}},
        "required": ["question", "answer", "reason"]
    });
    let tasks = docs.flat_map(|c: ClassifiedDocument| {
        let ClassifiedDocument {
            doc,
            domain,
            personas,
            classifier_model,
        } = c;
        personas
            .into_iter()
            .map(|persona| Task {
                doc: doc.clone(),
                domain: domain.clone(),
                persona,
                classifier_model: classifier_model.clone(),
            })
            .collect::<Vec<_>>()
    });
    let model = cfg.call();
    Ok(llm_stage(
        tasks,
        "Generate",
        service,
        move |t: &Task| {
            let examples = library.sample(
                &t.domain,
                &t.doc.id,
                &t.persona,
                cfg.seed,
                cfg.examples_per_call,
            );
            let prompt = prompt(
                &template,
                &[
                    ("persona", &t.persona),
                    ("domain", &t.domain),
                    ("examples", &format_examples(&examples)),
                    ("text", clip(&t.doc.text, cfg.max_document_chars)),
                ],
            );
            Ok(model.request(Stage::Generate, prompt, Some(("qa_pair", schema.clone()))))
        },
        |t, reply, _attempt| {
            let dead = |reason: &str, detail: String| {
                Verdict::Done(vec![Err(DeadLetter::for_pair(
                    &t.doc,
                    &t.persona,
                    "",
                    Stage::Generate,
                    reason,
                    detail,
                ))])
            };
            let answer = match reply {
                Err(e) => return dead(&e.kind, e.message),
                Ok(a) => a,
            };
            let field = |k: &str| {
                answer
                    .value
                    .get(k)
                    .and_then(|v| v.as_str())
                    .map(|s| s.trim().to_string())
            };
            let (Some(question), Some(ans)) = (
                field("question"),
                field("answer").or_else(|| {
                    // Numbers are fine answers even when the model wrote them as JSON numbers.
                    answer
                        .value
                        .get("answer")
                        .filter(|v| v.is_number())
                        .map(|v| v.to_string())
                }),
            ) else {
                return dead(
                    "malformed_answer",
                    format!("no \"question\"/\"answer\" strings in {}", answer.value),
                );
            };
            Verdict::Done(vec![Ok(QaCandidate {
                models: Models {
                    filter: t.doc.filter_model.clone(),
                    classifier: Some(t.classifier_model),
                    generator: Some(answer.model),
                    ..Default::default()
                },
                doc: t.doc,
                domain: t.domain,
                persona: t.persona,
                question,
                answer: ans,
            })])
        },
    ))
}

crate::impl_stage_call!(GenerateConfig);
