//! Domain + personas: one call labels the document with a domain from the configured taxonomy and
//! names 1–3 personas who would read it. An off-list domain is asked once more, then dropped
//! (`classify` / `off_list_domain`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use timely::dataflow::StreamVec;

use crate::llm_call::{LlmService, clip, document_prompt};
use crate::llm_filter::json_bool;
use crate::llm_stage::{Verdict, llm_stage};
use crate::verdicts::{Epoch, Verdicts};
use webscale_rl_records::{ClassifiedDocument, DeadLetter, Document, Stage};

const PROMPT: &str = include_str!("../../prompts/classify.md");
/// The task of a classification call that also asks the LLM filter's question (`with_filter`).
const PROMPT_WITH_FILTER: &str = include_str!("../../prompts/screen_and_label.md");

/// The paper's ten domains.
pub const DEFAULT_DOMAINS: [&str; 10] = [
    "Math",
    "Technology & Engineering",
    "Coding",
    "Social Science",
    "Natural Science",
    "Travel & Lifestyle",
    "Commerce & Economics",
    "Medicine & Health",
    "Education",
    "Other",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifyConfig {
    /// Model name; empty = `[llm] model`.
    pub model: String,
    pub temperature: f64,
    pub max_tokens: u32,
    /// A prompt file replacing the bundled one (same `{{placeholders}}`).
    pub prompt_file: Option<std::path::PathBuf>,
    pub domains: Vec<String>,
    pub max_personas: usize,
    pub max_document_chars: usize,
    /// Ask the LLM filter's question (is the document worth questions?) in the classification
    /// call, instead of a call of its own (`prompts/screen_and_label.md`, schema
    /// `screen_and_label`). A document the model does not qualify is an `llm_filter` /
    /// `not_qualified` dead letter, as with the separate filter. Used only while `[llm_filter]`
    /// is enabled.
    pub with_filter: bool,
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        ClassifyConfig {
            model: String::new(),
            temperature: 0.0,
            max_tokens: 256,
            prompt_file: None,
            domains: DEFAULT_DOMAINS.iter().map(|d| d.to_string()).collect(),
            max_personas: 3,
            max_document_chars: 12_000,
            with_filter: false,
        }
    }
}

/// Matches a label to the taxonomy, ignoring case, spacing and `&`/`and`.
pub fn match_domain<'a>(label: &str, domains: &'a [String]) -> Option<&'a String> {
    let key = |s: &str| {
        s.to_lowercase()
            .replace(" and ", " & ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let label = key(label);
    domains.iter().find(|d| key(d) == label)
}

/// Personas from the answer: a JSON list or a comma-separated string; trimmed, deduplicated, capped.
pub fn personas_of(value: &serde_json::Value, max: usize) -> Vec<String> {
    let raw: Vec<String> = match value.get("personas").or_else(|| value.get("persona")) {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|p| p.as_str().map(String::from))
            .collect(),
        Some(serde_json::Value::String(s)) => s.split(',').map(String::from).collect(),
        _ => Vec::new(),
    };
    let mut out: Vec<String> = Vec::new();
    for p in raw {
        let p = p.trim().trim_matches('"').trim().to_string();
        if !p.is_empty() && p.len() <= 120 && !out.iter().any(|o| o.eq_ignore_ascii_case(&p)) {
            out.push(p);
        }
    }
    out.truncate(max.max(1));
    out
}

/// The classify stage (an LLM stage: its calls run asynchronously, see [`crate::llm_stage`]).
pub trait Classify<'s> {
    /// Labels each document with one of the configured domains and up to `max_personas`
    /// personas who would read it; an off-list domain is asked again once.
    ///
    /// An error: the stage's prompt file could not be read or lacks a placeholder.
    ///
    /// ```
    /// use serde_json::json;
    /// use webscale_rl_operators::classify::{Classify, ClassifyConfig};
    /// use webscale_rl_operators::testing::{FakeLlm, answer, document, run_stage};
    ///
    /// let llm = FakeLlm::new(|_request| {
    ///     answer(json!({"domain": "natural science", "personas": ["a botany student", "a gardener"], "reason": ""}))
    /// });
    /// let input = vec![document("d", "Plants make sugar from light by photosynthesis.")];
    /// let (classified, _) = run_stage(input, move |docs| {
    ///     docs.classify(ClassifyConfig::default(), llm).unwrap()
    /// });
    /// // The label is matched to the taxonomy's spelling.
    /// assert_eq!(classified[0].domain, "Natural Science");
    /// assert_eq!(classified[0].personas, ["a botany student", "a gardener"]);
    /// ```
    fn classify(
        self,
        cfg: ClassifyConfig,
        llm: Arc<dyn LlmService>,
    ) -> Result<Verdicts<'s, ClassifiedDocument>, String>;
}

impl<'s> Classify<'s> for StreamVec<'s, Epoch, Document> {
    fn classify(
        self,
        cfg: ClassifyConfig,
        llm: Arc<dyn LlmService>,
    ) -> Result<Verdicts<'s, ClassifiedDocument>, String> {
        classify(self, cfg, llm)
    }
}

fn classify<'s>(
    docs: StreamVec<'s, Epoch, Document>,
    cfg: ClassifyConfig,
    service: Arc<dyn LlmService>,
) -> Result<Verdicts<'s, ClassifiedDocument>, String> {
    let with_filter = cfg.with_filter;
    let template = cfg.call().template(match with_filter {
        true => PROMPT_WITH_FILTER,
        false => PROMPT,
    })?;
    let domain_list = cfg
        .domains
        .iter()
        .map(|d| format!("- {d}"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut schema = json!({
        "type": "object",
        "properties": {
            "reason": {"type": "string"},
            "domain": {"type": "string", "enum": cfg.domains},
            "personas": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": cfg.max_personas}
        },
        "required": ["domain", "personas", "reason"]
    });
    let schema_name = match with_filter {
        true => {
            // The verdict first: a model that fills the schema in order decides before it labels.
            schema["properties"]["qualified"] = json!({"type": "boolean"});
            schema["required"] = json!(["qualified", "domain", "personas", "reason"]);
            "screen_and_label"
        }
        false => "classify",
    };
    let make = {
        let cfg = cfg.clone();
        move |doc: &Document, retry_note: Option<&str>| {
            let mut prompt = document_prompt(
                &template,
                clip(&doc.text, cfg.max_document_chars),
                &[
                    ("domains", &domain_list),
                    ("max_personas", &cfg.max_personas.to_string()),
                ],
            );
            if let Some(note) = retry_note {
                prompt.text.push_str(note);
            }
            cfg.call()
                .request(Stage::Classify, prompt, Some((schema_name, schema.clone())))
        }
    };
    let make2 = make.clone();
    Ok(llm_stage(
        docs,
        "Classify",
        service,
        move |doc: &Document| Ok(make(doc, None)),
        move |doc, reply, attempt| {
            let answer = match reply {
                Err(e) => {
                    return Verdict::Done(vec![Err(DeadLetter::for_document(
                        &doc,
                        Stage::Classify,
                        &e.kind,
                        e.message,
                    ))]);
                }
                Ok(a) => a,
            };
            if with_filter {
                let reason = answer
                    .value
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                match answer.value.get("qualified").and_then(json_bool) {
                    Some(true) => {}
                    Some(false) => {
                        return Verdict::Done(vec![Err(DeadLetter::for_document(
                            &doc,
                            Stage::LlmFilter,
                            "not_qualified",
                            reason,
                        ))]);
                    }
                    None => {
                        return Verdict::Done(vec![Err(DeadLetter::for_document(
                            &doc,
                            Stage::LlmFilter,
                            "malformed_answer",
                            format!("no boolean \"qualified\" in {}", answer.value),
                        ))]);
                    }
                }
            }
            let label = answer
                .value
                .get("domain")
                .and_then(|d| d.as_str())
                .unwrap_or("");
            let Some(domain) = match_domain(label, &cfg.domains).cloned() else {
                if attempt == 0 {
                    let note = format!(
                        "\n\nYour previous answer named the domain \"{label}\", which is not in the list. Choose one domain exactly as listed."
                    );
                    let req = make2(&doc, Some(&note));
                    return Verdict::Retry(doc, req);
                }
                return Verdict::Done(vec![Err(DeadLetter::for_document(
                    &doc,
                    Stage::Classify,
                    "off_list_domain",
                    format!("domain {label:?} is not in the taxonomy (asked twice)"),
                ))]);
            };
            let personas = personas_of(&answer.value, cfg.max_personas);
            if personas.is_empty() {
                return Verdict::Done(vec![Err(DeadLetter::for_document(
                    &doc,
                    Stage::Classify,
                    "no_personas",
                    format!("no persona in {}", answer.value),
                ))]);
            }
            let doc = match with_filter {
                // The model that qualified it, for the pairs' `models.filter`.
                true => Document {
                    filter_model: Some(answer.model.clone()),
                    ..doc
                },
                false => doc,
            };
            Verdict::Done(vec![Ok(ClassifiedDocument {
                doc,
                domain,
                personas,
                classifier_model: answer.model,
            })])
        },
    ))
}

crate::impl_stage_call!(ClassifyConfig);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeLlm, answer, document, run_stage};

    #[test]
    fn an_off_list_domain_is_asked_once_more_then_dead_lettered() {
        let llm = FakeLlm::new(|r| {
            let domain = if r.prompt.contains("not in the list") && r.prompt.contains("fixed") {
                "Coding"
            } else {
                "Cooking"
            };
            answer(serde_json::json!({"domain": domain, "personas": ["a cook"], "reason": ""}))
        });
        let input = vec![
            document("fixed", "a text, fixed"),
            document("stuck", "a text"),
        ];
        let (classified, dead) = run_stage(input, {
            let llm = llm.clone();
            move |docs| docs.classify(ClassifyConfig::default(), llm).unwrap()
        });
        assert_eq!(classified.len(), 1);
        assert_eq!(classified[0].domain, "Coding");
        assert_eq!(classified[0].classifier_model, "fake");
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].doc_id.as_deref(), dead[0].reason.as_str()),
            (Some("stuck"), "off_list_domain")
        );
        // Two calls per document: the second names the rejected label.
        let asked = llm.asked();
        assert_eq!(asked.len(), 4);
        assert_eq!(
            asked
                .iter()
                .filter(|r| r.prompt.contains("\"Cooking\""))
                .count(),
            2
        );
    }

    #[test]
    fn with_the_filter_one_call_screens_and_labels() {
        let llm = FakeLlm::new(|r| {
            let qualified = !r.prompt.contains("login");
            answer(serde_json::json!({
                "qualified": qualified, "reason": "no facts",
                "domain": "Math", "personas": ["a pupil"]
            }))
        });
        let cfg = ClassifyConfig {
            with_filter: true,
            ..Default::default()
        };
        let input = vec![
            document("facts", "Two plus two is four."),
            document("nav", "Home | menu | login"),
        ];
        let (classified, dead) = run_stage(input, {
            let llm = llm.clone();
            move |docs| docs.classify(cfg, llm).unwrap()
        });
        assert_eq!(llm.asked().len(), 2);
        assert!(
            llm.asked()
                .iter()
                .all(|r| r.schema.as_ref().unwrap().0 == "screen_and_label")
        );
        assert_eq!(classified.len(), 1);
        assert_eq!(classified[0].doc.filter_model.as_deref(), Some("fake"));
        assert_eq!(classified[0].domain, "Math");
        // Rejected as the separate filter would: the llm_filter stage, its reason.
        let d = &dead[0];
        assert_eq!(
            (d.stage, d.reason.as_str(), d.detail.as_str()),
            (Stage::LlmFilter, "not_qualified", "no facts")
        );
    }

    #[test]
    fn a_document_without_personas_is_a_dead_letter() {
        let llm = FakeLlm::new(|_| {
            answer(serde_json::json!({"domain": "Math", "personas": [], "reason": ""}))
        });
        let (classified, dead) = run_stage(vec![document("d", "a text")], move |docs| {
            docs.classify(ClassifyConfig::default(), llm).unwrap()
        });
        assert!(classified.is_empty());
        assert_eq!(dead[0].reason, "no_personas");
    }

    #[test]
    fn domains_match_loosely_and_personas_are_cleaned() {
        let domains: Vec<String> = DEFAULT_DOMAINS.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            match_domain("medicine and health", &domains).unwrap(),
            "Medicine & Health"
        );
        assert_eq!(match_domain(" Coding ", &domains).unwrap(), "Coding");
        assert!(match_domain("Sports", &domains).is_none());
        let v = json!({"personas": "a nurse, A Nurse , a patient,  ,a health journalist, extra"});
        assert_eq!(
            personas_of(&v, 3),
            vec!["a nurse", "a patient", "a health journalist"]
        );
        assert_eq!(personas_of(&json!({"personas": ["x"]}), 3), vec!["x"]);
    }
}
