//! Generation: one call per persona, with that domain's few-shot examples, asking for a
//! self-contained question and a short verifiable answer. Dead letters are per pair.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use timely::dataflow::StreamVec;
use timely::dataflow::operators::vec::Map;

use crate::llm_call::{LlmService, clip, document_prompt};
use crate::llm_stage::{Verdict, llm_stage};
use crate::route::{FewShotLibrary, format_examples};
use crate::verdicts::{Epoch, Verdicts};
use webscale_rl_records::{ClassifiedDocument, DeadLetter, Document, Models, QaCandidate, Stage};

const PROMPT: &str = include_str!("../../prompts/generate.md");
/// The task of a generation call for all personas of a document at once (`one_call`).
const PROMPT_ALL: &str = include_str!("../../prompts/generate_all.md");

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
    /// One call per document for the questions of all its personas, instead of one per persona
    /// (`prompts/generate_all.md`, schema `qa_pairs`). Fewer calls and prompt tokens; the same
    /// records (one candidate per persona, or a dead letter for a persona without a pair).
    pub one_call: bool,
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
            one_call: false,
        }
    }
}

/// One generation call's input: one persona, or (`one_call`) all of the document's.
struct Task {
    doc: Document,
    domain: String,
    personas: Vec<String>,
    classifier_model: String,
}

impl crate::llm_stage::AboutDocument for Task {
    fn document_id(&self) -> &str {
        &self.doc.id
    }
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
    let one_call = cfg.one_call;
    let template = cfg
        .call()
        .template(if one_call { PROMPT_ALL } else { PROMPT })?;
    let library = match &cfg.fewshot_dir {
        Some(dir) => FewShotLibrary::load_dir(dir)?,
        None => FewShotLibrary::bundled(),
    };
    let pair_schema = json!({
        "type": "object",
        "properties": {"reason": {"type": "string"}, "question": {"type": "string"}, "answer": {"type": "string"}},
        "required": ["question", "answer", "reason"]
    });
    let tasks = docs.flat_map(move |c: ClassifiedDocument| {
        let ClassifiedDocument {
            doc,
            domain,
            personas,
            classifier_model,
        } = c;
        let groups: Vec<Vec<String>> = match one_call {
            true => vec![personas],
            false => personas.into_iter().map(|p| vec![p]).collect(),
        };
        groups
            .into_iter()
            .map(|personas| Task {
                doc: doc.clone(),
                domain: domain.clone(),
                personas,
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
            let examples = library.sample(&t.domain, &t.doc.id, cfg.seed, cfg.examples_per_call);
            let listed = t
                .personas
                .iter()
                .enumerate()
                .map(|(i, p)| format!("{}. {p}", i + 1))
                .collect::<Vec<_>>()
                .join("\n");
            let prompt = document_prompt(
                &template,
                clip(&t.doc.text, cfg.max_document_chars),
                &[
                    ("persona", &t.personas[0]),
                    ("personas", &listed),
                    ("domain", &t.domain),
                    ("examples", &format_examples(&examples)),
                ],
            );
            let schema = match one_call {
                false => ("qa_pair", pair_schema.clone()),
                true => {
                    let mut pair = pair_schema.clone();
                    pair["properties"]["persona"] = json!({"type": "string"});
                    pair["required"] = json!(["persona", "question", "answer", "reason"]);
                    let n = t.personas.len();
                    let pairs =
                        json!({"type": "array", "items": pair, "minItems": n, "maxItems": n});
                    (
                        "qa_pairs",
                        json!({
                            "type": "object",
                            "properties": {"pairs": pairs},
                            "required": ["pairs"]
                        }),
                    )
                }
            };
            Ok(model.request(Stage::Generate, prompt, Some(schema)))
        },
        move |t, reply, _attempt| {
            let answer = match reply {
                Err(e) => {
                    let dead = t.personas.iter().map(|p| {
                        Err(DeadLetter::for_pair(
                            &t.doc,
                            p,
                            "",
                            Stage::Generate,
                            &e.kind,
                            e.message.clone(),
                        ))
                    });
                    return Verdict::Done(dead.collect());
                }
                Ok(a) => a,
            };
            // One pair per persona: the answer itself, or (one call) its `pairs`, matched to the
            // personas by name where the model repeated them, else by order.
            let pairs: Vec<&Value> = match one_call {
                false => vec![&answer.value],
                true => answer
                    .value
                    .get("pairs")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().collect())
                    .unwrap_or_default(),
            };
            // Each pair object serves one persona at most: the one it names, else (named
            // entries taken first) the next unused one in order.
            let mut used = vec![false; pairs.len()];
            let mut chosen: Vec<Option<usize>> = t
                .personas
                .iter()
                .map(|persona| {
                    let named = pairs.iter().position(|p| {
                        p.get("persona")
                            .and_then(Value::as_str)
                            .is_some_and(|n| n.trim().eq_ignore_ascii_case(persona))
                    });
                    named.filter(|&j| !std::mem::replace(&mut used[j], true))
                })
                .collect();
            for slot in chosen.iter_mut().filter(|c| c.is_none()) {
                *slot = used.iter().position(|u| !u);
                if let Some(j) = *slot {
                    used[j] = true;
                }
            }
            let results = t.personas.iter().zip(chosen).map(|(persona, j)| {
                match j.map(|j| pairs[j]).and_then(question_and_answer) {
                    Some((question, ans)) => Ok(QaCandidate {
                        models: Models {
                            filter: t.doc.filter_model.clone(),
                            classifier: Some(t.classifier_model.clone()),
                            generator: Some(answer.model.clone()),
                            ..Default::default()
                        },
                        doc: t.doc.clone(),
                        domain: t.domain.clone(),
                        persona: persona.clone(),
                        question,
                        answer: ans,
                    }),
                    None => Err(DeadLetter::for_pair(
                        &t.doc,
                        persona,
                        "",
                        Stage::Generate,
                        "malformed_answer",
                        format!(
                            "no \"question\"/\"answer\" strings for {persona:?} in {}",
                            answer.value
                        ),
                    )),
                }
            });
            Verdict::Done(results.collect())
        },
    ))
}

/// The question and answer of one pair object; a number is a fine answer even when the model
/// wrote it as a JSON number.
fn question_and_answer(pair: &Value) -> Option<(String, String)> {
    let text = |k: &str| {
        pair.get(k)
            .and_then(Value::as_str)
            .map(|s| s.trim().to_string())
    };
    let answer = text("answer").or_else(|| {
        pair.get("answer")
            .filter(|v| v.is_number())
            .map(|v| v.to_string())
    })?;
    Some((text("question")?, answer))
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
        let example = math.sample("Math", "d", 0, 1);
        assert!(
            asked
                .iter()
                .any(|r| r.prompt.contains(&example[0].question))
        );
    }

    #[test]
    fn one_call_asks_once_per_document_and_makes_the_same_records() {
        let llm = FakeLlm::new(|_| {
            answer(json!({"pairs": [
                // Named out of order: matched by name. The third persona gets nothing.
                {"persona": "A Pupil", "question": "Who?", "answer": "Ada", "reason": ""},
                {"persona": "a teacher", "question": "How many?", "answer": 7, "reason": ""},
            ]}))
        });
        let cfg = GenerateConfig {
            one_call: true,
            ..Default::default()
        };
        let (candidates, dead) =
            run_stage(vec![classified(&["a teacher", "a pupil", "a parent"])], {
                let llm = llm.clone();
                move |docs| docs.generate(cfg, llm).unwrap()
            });
        let asked = llm.asked();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].schema.as_ref().unwrap().0, "qa_pairs");
        assert!(
            asked[0]
                .prompt
                .contains("1. a teacher\n2. a pupil\n3. a parent")
        );
        let got: Vec<(&str, &str)> = candidates
            .iter()
            .map(|c| (c.persona.as_str(), c.answer.as_str()))
            .collect();
        assert_eq!(got, [("a teacher", "7"), ("a pupil", "Ada")]);
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].reason.as_str(), dead[0].stage),
            ("malformed_answer", Stage::Generate)
        );
        assert!(dead[0].detail.contains("a parent"), "{}", dead[0].detail);
    }

    #[test]
    fn one_call_never_gives_one_pair_to_two_personas() {
        // The teacher's pair is named; the unnamed one is the pupil's, not the teacher's again.
        let llm = FakeLlm::new(|_| {
            answer(json!({"pairs": [
                {"persona": "a teacher", "question": "How many?", "answer": "7", "reason": ""},
                {"question": "Who?", "answer": "Ada", "reason": ""},
            ]}))
        });
        let cfg = GenerateConfig {
            one_call: true,
            ..Default::default()
        };
        let (candidates, dead) =
            run_stage(vec![classified(&["a pupil", "a teacher"])], move |docs| {
                docs.generate(cfg, llm).unwrap()
            });
        assert!(dead.is_empty());
        let mut got: Vec<(&str, &str)> = candidates
            .iter()
            .map(|c| (c.persona.as_str(), c.answer.as_str()))
            .collect();
        got.sort();
        assert_eq!(got, [("a pupil", "Ada"), ("a teacher", "7")]);
    }
}
