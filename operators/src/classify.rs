//! Domain + personas: one call labels the document with a domain from the configured taxonomy and
//! names 1–3 personas who would read it. An off-list domain is asked once more, then dropped
//! (`classify` / `off_list_domain`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use timely::dataflow::StreamVec;

use crate::llm_call::{LlmService, clip, prompt};
use crate::llm_stage::{Verdict, llm_stage};
use crate::record::{ClassifiedDocument, DeadLetter, Document, Stage};

const PROMPT: &str = include_str!("../../prompts/classify.md");

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
    pub enabled: bool,
    /// Model name; empty = `[llm] model`.
    pub model: String,
    pub temperature: f64,
    pub max_tokens: u32,
    /// A prompt file replacing the bundled one (same `{{placeholders}}`).
    pub prompt_file: Option<std::path::PathBuf>,
    pub domains: Vec<String>,
    pub max_personas: usize,
    pub max_document_chars: usize,
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        ClassifyConfig {
            enabled: true,
            model: String::new(),
            temperature: 0.0,
            max_tokens: 256,
            prompt_file: None,
            domains: DEFAULT_DOMAINS.iter().map(|d| d.to_string()).collect(),
            max_personas: 3,
            max_document_chars: 8_000,
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

pub fn classify<'s>(
    docs: StreamVec<'s, u64, Document>,
    cfg: ClassifyConfig,
    service: Arc<dyn LlmService>,
) -> Result<crate::Split<'s, ClassifiedDocument>, String> {
    let template = cfg.call().template(PROMPT)?;
    let domain_list = cfg
        .domains
        .iter()
        .map(|d| format!("- {d}"))
        .collect::<Vec<_>>()
        .join("\n");
    let schema = json!({
        "type": "object",
        "properties": {
            "reason": {"type": "string"},
            "domain": {"type": "string", "enum": cfg.domains},
            "personas": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": cfg.max_personas}
        },
        "required": ["domain", "personas", "reason"]
    });
    let make = {
        let cfg = cfg.clone();
        move |doc: &Document, retry_note: Option<&str>| {
            let mut prompt = prompt(
                &template,
                &[
                    ("text", clip(&doc.text, cfg.max_document_chars)),
                    ("domains", &domain_list),
                    ("max_personas", &cfg.max_personas.to_string()),
                ],
            );
            if let Some(note) = retry_note {
                prompt.text.push_str(note);
            }
            cfg.call()
                .request(Stage::Classify, prompt, Some(("classify", schema.clone())))
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
