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
use crate::route::{FewShotLibrary, format_examples};
use crate::verdicts::{Epoch, Verdicts};
use webscale_rl_records::{ClassifiedDocument, DeadLetter, Document, Models, QaCandidate, Stage};

const PROMPT: &str = include_str!("../../prompts/generate.md");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateConfig {
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

/// The generate stage (an LLM stage: its calls run asynchronously, see [`crate::llm_stage`]).
pub trait Generate<'s> {
    /// Writes, per persona of a classified document, one self-contained question with a short
    /// checkable answer, routed to the domain's few-shot examples.
    ///
    /// An error: the stage's prompt file could not be read or lacks a placeholder.
    ///
    /// ```
    /// use serde_json::json;
    /// use webscale_rl_operators::generate::{Generate, GenerateConfig};
    /// use webscale_rl_operators::testing::{FakeLlm, answer, document, run_stage};
    /// use webscale_rl_records::ClassifiedDocument;
    ///
    /// let llm = FakeLlm::new(|_request| {
    ///     answer(json!({"question": "What do plants make from light by photosynthesis?", "answer": "Sugar", "reason": ""}))
    /// });
    /// let input = vec![ClassifiedDocument {
    ///     doc: document("d", "Plants make sugar from light by photosynthesis."),
    ///     domain: "Natural Science".into(),
    ///     personas: vec!["a botany student".into(), "a gardener".into()],
    ///     classifier_model: "fake".into(),
    /// }];
    /// let (candidates, _) = run_stage(input, move |docs| {
    ///     docs.generate(GenerateConfig::default(), llm).unwrap()
    /// });
    /// // One call, and one candidate, per persona.
    /// assert_eq!(candidates.len(), 2);
    /// assert_eq!(candidates[0].answer, "Sugar");
    /// ```
    fn generate(
        self,
        cfg: GenerateConfig,
        llm: Arc<dyn LlmService>,
    ) -> Result<Verdicts<'s, QaCandidate>, String>;
}

impl<'s> Generate<'s> for StreamVec<'s, Epoch, ClassifiedDocument> {
    fn generate(
        self,
        cfg: GenerateConfig,
        llm: Arc<dyn LlmService>,
    ) -> Result<Verdicts<'s, QaCandidate>, String> {
        generate(self, cfg, llm)
    }
}

fn generate<'s>(
    docs: StreamVec<'s, Epoch, ClassifiedDocument>,
    cfg: GenerateConfig,
    service: Arc<dyn LlmService>,
) -> Result<Verdicts<'s, QaCandidate>, String> {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{FakeLlm, answer, document, run_stage};

    fn classified(personas: &[&str]) -> ClassifiedDocument {
        ClassifiedDocument {
            doc: document("d", "Plants make sugar from light by photosynthesis."),
            domain: "Math".into(),
            personas: personas.iter().map(|p| p.to_string()).collect(),
            classifier_model: "classifier".into(),
        }
    }

    #[test]
    fn each_persona_gets_its_call_with_the_domains_examples() {
        let llm = FakeLlm::new(|r| {
            // A number is a fine answer even as a JSON number.
            if r.prompt.contains("a teacher") {
                answer(json!({"question": "How many?", "answer": 7, "reason": ""}))
            } else {
                answer(json!({"question": "What?", "reason": ""}))
            }
        });
        let (candidates, dead) = run_stage(vec![classified(&["a teacher", "a pupil"])], {
            let llm = llm.clone();
            move |docs| docs.generate(GenerateConfig::default(), llm).unwrap()
        });
        assert_eq!(candidates.len(), 1);
        assert_eq!(
            (
                candidates[0].persona.as_str(),
                candidates[0].answer.as_str()
            ),
            ("a teacher", "7")
        );
        assert_eq!(
            candidates[0].models.classifier.as_deref(),
            Some("classifier")
        );
        assert_eq!(candidates[0].models.generator.as_deref(), Some("fake"));
        // The pupil's answer had no "answer": a pair-level dead letter.
        assert_eq!(
            (dead[0].stage, dead[0].reason.as_str()),
            (Stage::Generate, "malformed_answer")
        );
        let asked = llm.asked();
        assert_eq!(asked.len(), 2);
        // Routed to the domain's few-shot examples (the bundled Math library).
        let math = FewShotLibrary::bundled();
        let example = math.sample("Math", "d", "a teacher", 0, 1);
        assert!(
            asked
                .iter()
                .any(|r| r.prompt.contains(&example[0].question))
        );
    }
}
