//! Verification: cheap deterministic checks first (non-empty, not a fragment, answer length, answer not in the
//! question, no "according to the text"), then an LLM check against the source document that must
//! return has_context = true, answer_correct = true, leaks_answer = false.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::{Concat, OkErr};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;

use crate::epoch::EpochStash;
use crate::llm_call::{LlmService, clip, document_prompt};
use crate::llm_filter::json_bool;
use crate::llm_stage::{Verdict, llm_stage};
use crate::normalize::{NormalizeConfig, normalize};
use crate::verdicts::{Epoch, Verdicts};
use webscale_rl_records::{
    DeadLetter, Origin, PIPELINE_VERSION, QaCandidate, QaPair, Stage, now_millis, qa_id,
};

const PROMPT: &str = include_str!("../../prompts/verify.md");
/// The task of a verification call for all pairs of a document at once (`one_call`).
const PROMPT_ALL: &str = include_str!("../../prompts/verify_all.md");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// The LLM check; the deterministic checks always run.
    pub enabled: bool,
    /// Model name; empty = `[llm] model`.
    pub model: String,
    pub temperature: f64,
    pub max_tokens: u32,
    /// A prompt file replacing the bundled one (same `{{placeholders}}`).
    pub prompt_file: Option<std::path::PathBuf>,
    /// Longest answer, in words.
    pub max_answer_words: usize,
    /// Longest answer, in characters.
    pub max_answer_chars: usize,
    /// Phrases that betray a question that is not self-contained (case-insensitive).
    pub banned_phrases: Vec<String>,
    pub max_document_chars: usize,
    /// Attach the source text to each QA pair (`pretrain_text`); it can be large.
    pub include_source_text: bool,
    /// One LLM check per document for all its pairs, instead of one per pair
    /// (`prompts/verify_all.md`, schema `verifications`). The pairs of a document are gathered
    /// when their epoch is complete; the records are the same.
    pub one_call: bool,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            enabled: true,
            model: String::new(),
            temperature: 0.0,
            max_tokens: 256,
            prompt_file: None,
            max_answer_words: 10,
            max_answer_chars: 80,
            banned_phrases: [
                "the passage",
                "the text",
                "the article",
                "the document",
                "the excerpt",
                "according to the",
                "the above",
                "the given",
                "mentioned above",
                "the author",
            ]
            .map(String::from)
            .to_vec(),
            max_document_chars: 12_000,
            include_source_text: false,
            one_call: false,
        }
    }
}

/// The deterministic checks: `Err((reason, detail))` names the failed check.
pub fn check_pair(
    question: &str,
    answer: &str,
    cfg: &VerifyConfig,
) -> Result<(), (&'static str, String)> {
    if question.trim().is_empty() {
        return Err(("empty_question", String::new()));
    }
    if answer.trim().is_empty() {
        return Err(("empty_answer", String::new()));
    }
    // A model that copies the reply format instead of filling it (`"answer": "<the short
    // answer>"`): small models do, and the pair is no pair.
    if let Some(copied) = [question, answer].into_iter().find(|t| is_placeholder(t)) {
        return Err((
            "template_placeholder",
            format!("{copied:?} is the prompt's placeholder"),
        ));
    }
    if let Some(why) = degenerate(question, answer) {
        return Err(("degenerate_answer", format!("{answer:?}: {why}")));
    }
    let words = answer.split_whitespace().count();
    if words > cfg.max_answer_words || answer.chars().count() > cfg.max_answer_chars {
        return Err((
            "answer_too_long",
            format!(
                "{words} words / {} chars > {} / {}",
                answer.chars().count(),
                cfg.max_answer_words,
                cfg.max_answer_chars
            ),
        ));
    }
    let norm = NormalizeConfig::default();
    let (q, a) = (normalize(question, &norm), normalize(answer, &norm));
    // Whole-word containment: "4" inside "1945" is no leak.
    // An offered option's letter is in the question by construction.
    if !a.is_empty()
        && !offered_option(question, answer)
        && format!(" {q} ").contains(&format!(" {a} "))
    {
        return Err((
            "answer_in_question",
            format!("{answer:?} appears in the question"),
        ));
    }
    let lower = question.to_lowercase();
    if let Some(p) = cfg
        .banned_phrases
        .iter()
        .find(|p| lower.contains(&p.to_lowercase()))
    {
        return Err(("refers_to_source", format!("the question says {p:?}")));
    }
    Ok(())
}

/// A prompt's reply-format placeholder copied as content: `<the short answer>`, `<the question`
/// (cut by the token limit), `<one sentence>`.
fn is_placeholder(text: &str) -> bool {
    let t = text.trim();
    t.starts_with('<')
        && t[1..]
            .split_whitespace()
            .next()
            .is_some_and(|w| ["the", "one", "what", "a", "an"].contains(&w.to_lowercase().as_str()))
}

/// Words that are never an answer on their own.
const STOP_WORDS: [&str; 32] = [
    "the", "a", "an", "of", "and", "or", "to", "in", "on", "at", "by", "for", "with", "from", "as",
    "is", "are", "was", "were", "be", "it", "its", "this", "that", "these", "those", "he", "she",
    "they", "his", "her", "their",
];

/// English clitics a generator cuts out of a word (`Lloyd’s` → `’s`).
const CLITICS: [&str; 9] = ["s", "t", "d", "ll", "re", "ve", "m", "nt", "n"];

/// What in a question makes a one-letter answer legitimate: options to choose from, or a question
/// about a symbol, a unit, a letter, a grade, a vitamin, a blood type, a note, a variable.
const LETTER_CONTEXTS: [&str; 14] = [
    "option",
    "choice",
    "which of the following",
    "letter",
    "symbol",
    "unit",
    "grade",
    "vitamin",
    "blood type",
    "note",
    "variable",
    "class",
    "key",
    "type",
];

/// Why `answer` is a fragment rather than a checkable answer, if it is: no letter or digit at
/// all, a clitic (`’s`), a bare stop word, or a lone letter that nothing in the question calls
/// for. Numbers, years, units, chemical symbols (`O` for "the chemical symbol of oxygen") and a
/// letter among offered options (`B` after `(A) … (B) …`) are answers.
fn degenerate(question: &str, answer: &str) -> Option<&'static str> {
    let answer = answer.trim();
    if !answer.chars().any(char::is_alphanumeric) {
        return Some("no letter or digit");
    }
    let apostrophe = |c: char| matches!(c, '\'' | '’' | '‘' | '`' | '´');
    let core = answer.trim_matches(|c: char| !c.is_alphanumeric());
    let lower = core.to_lowercase();
    if answer.starts_with(apostrophe) && CLITICS.contains(&lower.as_str()) {
        return Some("a clitic");
    }
    if lower.split_whitespace().count() == 1 && STOP_WORDS.contains(&lower.as_str()) {
        // "A" may still be an offered option: judged with the lone letters below.
        if lower != "a" {
            return Some("a bare stop word");
        }
    }
    let mut chars = core.chars();
    if let (Some(c), None) = (chars.next(), chars.next())
        && c.is_alphabetic()
    {
        let q = question.to_lowercase();
        if !offered_option(question, answer) && !LETTER_CONTEXTS.iter().any(|k| q.contains(k)) {
            return Some("a lone letter the question does not ask for");
        }
    }
    None
}

/// Whether `answer` is one letter the question offers as an option: `(B)`, `B)` or `b)`.
fn offered_option(question: &str, answer: &str) -> bool {
    let core = answer
        .trim()
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    let mut chars = core.chars();
    let (Some(c), None) = (chars.next(), chars.next()) else {
        return false;
    };
    let q = question.to_lowercase();
    c.is_alphabetic()
        && (q.contains(&format!("({c})"))
            || q.contains(&format!(" {c})"))
            || q.starts_with(&format!("{c})")))
}

/// The verify stage (an LLM stage: its calls run asynchronously, see [`crate::llm_stage`]).
pub trait Verify<'s> {
    /// Checks each candidate pair: the deterministic checks first ([`check_pair`]), then (when
    /// `enabled`) the LLM verifier; passed pairs leave as `(origin, QaPair)`.
    ///
    /// An error: the stage's prompt file could not be read or lacks a placeholder.
    ///
    /// ```
    /// use serde_json::json;
    /// use webscale_rl_operators::testing::{FakeLlm, answer, document, run_stage};
    /// use webscale_rl_operators::verify::{Verify, VerifyConfig};
    /// use webscale_rl_records::QaCandidate;
    ///
    /// let llm = FakeLlm::new(|request| {
    ///     let correct = request.prompt.contains("Sugar");
    ///     answer(json!({"has_context": true, "answer_correct": correct, "leaks_answer": false, "reason": ""}))
    /// });
    /// let candidate = |answer: &str| QaCandidate {
    ///     doc: document("d", "Plants make sugar from light by photosynthesis."),
    ///     domain: "Natural Science".into(),
    ///     persona: "a gardener".into(),
    ///     question: "What do plants make from light by photosynthesis?".into(),
    ///     answer: answer.into(),
    ///     models: Default::default(),
    /// };
    /// let (pairs, rejected) = run_stage(vec![candidate("Sugar"), candidate("Salt")], move |c| {
    ///     c.verify(VerifyConfig::default(), llm).unwrap()
    /// });
    /// assert_eq!(pairs[0].1.answer, "Sugar");
    /// assert_eq!(rejected[0].reason, "answer_incorrect");
    /// ```
    fn verify(
        self,
        cfg: VerifyConfig,
        llm: Arc<dyn LlmService>,
    ) -> Result<Verdicts<'s, (Origin, QaPair)>, String>;
}

impl<'s> Verify<'s> for StreamVec<'s, Epoch, QaCandidate> {
    fn verify(
        self,
        cfg: VerifyConfig,
        llm: Arc<dyn LlmService>,
    ) -> Result<Verdicts<'s, (Origin, QaPair)>, String> {
        verify(self, cfg, llm)
    }
}

fn verify<'s>(
    candidates: StreamVec<'s, Epoch, QaCandidate>,
    cfg: VerifyConfig,
    service: Arc<dyn LlmService>,
) -> Result<Verdicts<'s, (Origin, QaPair)>, String> {
    let template = cfg.call().template(PROMPT)?;
    let checks = cfg.clone();
    let (checked, failed) = candidates.ok_err(move |c: QaCandidate| {
        match check_pair(&c.question, &c.answer, &checks) {
            Ok(()) => Ok(c),
            Err((reason, detail)) => Err(pair_dead_letter(&c, reason, detail)),
        }
    });
    let verdict_schema = json!({
        "type": "object",
        "properties": {
            "reason": {"type": "string"},
            "has_context": {"type": "boolean"},
            "answer_correct": {"type": "boolean"},
            "leaks_answer": {"type": "boolean"}
        },
        "required": ["has_context", "answer_correct", "leaks_answer", "reason"]
    });
    let model = cfg.call();
    let include_text = cfg.include_source_text;
    let max_chars = cfg.max_document_chars;
    let llm_verdicts = match (cfg.enabled, cfg.one_call) {
        (false, _) => Verdicts::all_passed(checked.map(move |c| into_pair(c, None, include_text))),
        (true, false) => llm_stage(
            checked,
            "Verify",
            service,
            move |c: &QaCandidate| {
                let prompt = document_prompt(
                    &template,
                    clip(&c.doc.text, max_chars),
                    &[("question", &c.question), ("answer", &c.answer)],
                );
                Ok(model.request(
                    Stage::Verify,
                    prompt,
                    Some(("verification", verdict_schema.clone())),
                ))
            },
            move |c, reply, _attempt| {
                Verdict::Done(vec![match reply {
                    Err(e) => Err(pair_dead_letter(&c, &e.kind, e.message)),
                    Ok(answer) => judge(c, &answer.value, &answer.model, include_text),
                }])
            },
        ),
        (true, true) => {
            let template = cfg.call().template(PROMPT_ALL)?;
            llm_stage(
                by_document(checked),
                "Verify",
                service,
                move |pairs: &Vec<QaCandidate>| {
                    let listed = pairs
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            format!(
                                "Pair {}:\nQuestion: {}\nAnswer: {}",
                                i + 1,
                                c.question,
                                c.answer
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n\n");
                    let prompt = document_prompt(
                        &template,
                        clip(&pairs[0].doc.text, max_chars),
                        &[("pairs", &listed)],
                    );
                    let mut verdict = verdict_schema.clone();
                    verdict["properties"]["pair"] = json!({"type": "integer"});
                    verdict["required"] = json!([
                        "pair",
                        "has_context",
                        "answer_correct",
                        "leaks_answer",
                        "reason"
                    ]);
                    let n = pairs.len();
                    let schema = json!({
                        "type": "object",
                        "properties": {"verdicts": {"type": "array", "items": verdict, "minItems": n, "maxItems": n}},
                        "required": ["verdicts"]
                    });
                    Ok(model.request(Stage::Verify, prompt, Some(("verifications", schema))))
                },
                move |pairs, reply, _attempt| {
                    let answer = match reply {
                        Err(e) => {
                            let dead = pairs
                                .iter()
                                .map(|c| Err(pair_dead_letter(c, &e.kind, e.message.clone())));
                            return Verdict::Done(dead.collect());
                        }
                        Ok(a) => a,
                    };
                    let verdicts: Vec<&Value> = answer
                        .value
                        .get("verdicts")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().collect())
                        .unwrap_or_default();
                    // The verdict that names the pair's number, else the one in its place if it
                    // names no pair (never another pair's verdict).
                    let of = |i: usize| {
                        verdicts
                            .iter()
                            .find(|v| v.get("pair").and_then(Value::as_u64) == Some(i as u64 + 1))
                            .or_else(|| verdicts.get(i).filter(|v| v.get("pair").is_none()))
                            .copied()
                    };
                    let results = pairs.into_iter().enumerate().map(|(i, c)| match of(i) {
                        Some(v) => judge(c, v, &answer.model, include_text),
                        None => {
                            let detail =
                                format!("no verdict for pair {} in {}", i + 1, answer.value);
                            Err(pair_dead_letter(&c, "malformed_answer", detail))
                        }
                    });
                    Verdict::Done(results.collect())
                },
            )
        }
    };
    Ok(Verdicts {
        passed: llm_verdicts.passed,
        rejected: failed.concat(llm_verdicts.rejected),
    })
}

/// A dead letter of the verify stage for one pair.
fn pair_dead_letter(c: &QaCandidate, reason: &str, detail: String) -> DeadLetter {
    DeadLetter::for_pair(
        &c.doc,
        &c.persona,
        &c.question,
        Stage::Verify,
        reason,
        detail,
    )
}

/// A pair's verdict (`has_context`, `answer_correct`, `leaks_answer`, `reason`) made into the
/// pair or its dead letter.
fn judge(
    c: QaCandidate,
    verdict: &Value,
    model: &str,
    include_text: bool,
) -> Result<(Origin, QaPair), DeadLetter> {
    let flag = |k: &str| verdict.get(k).and_then(json_bool);
    let reason = verdict
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match (
        flag("has_context"),
        flag("answer_correct"),
        flag("leaks_answer").or_else(|| flag("info_leakage")),
    ) {
        (Some(true), Some(true), Some(false)) => {
            Ok(into_pair(c, Some(model.to_string()), include_text))
        }
        (Some(false), _, _) => Err(pair_dead_letter(&c, "no_context", reason)),
        (_, Some(false), _) => Err(pair_dead_letter(&c, "answer_incorrect", reason)),
        (_, _, Some(true)) => Err(pair_dead_letter(&c, "leaks_answer", reason)),
        _ => Err(pair_dead_letter(
            &c,
            "malformed_answer",
            format!("missing verdict fields in {verdict}"),
        )),
    }
}

/// The candidates of each document, gathered once their epoch is complete (all of its
/// generation calls answered), in a fixed order.
fn by_document<'s>(
    candidates: StreamVec<'s, Epoch, QaCandidate>,
) -> StreamVec<'s, Epoch, Vec<QaCandidate>> {
    candidates.unary_frontier(Pipeline, "VerifyByDocument", |default_cap, _info| {
        drop(default_cap);
        let mut stash: EpochStash<Vec<QaCandidate>> = EpochStash::default();
        move |(input, frontier), output| {
            input.for_each_stamp(|cap, data| {
                let (_, held) = stash.entry(&cap);
                data.for_each(|batch| held.append(batch));
            });
            while let Some((cap, mut held)) = stash.pop_complete(|t| frontier.less_equal(t)) {
                held.sort_by(|a, b| {
                    (&a.doc.origin, &a.doc.id, &a.persona, &a.question).cmp(&(
                        &b.doc.origin,
                        &b.doc.id,
                        &b.persona,
                        &b.question,
                    ))
                });
                let mut session = output.session(&cap);
                let mut group: Vec<QaCandidate> = Vec::new();
                for c in held {
                    if group
                        .last()
                        .is_some_and(|g| g.doc.id != c.doc.id || g.doc.origin != c.doc.origin)
                    {
                        session.give(std::mem::take(&mut group));
                    }
                    group.push(c);
                }
                if !group.is_empty() {
                    session.give(group);
                }
            }
        }
    })
}

/// The verified pair, with the origin of its document (for accounting).
fn into_pair(c: QaCandidate, verifier: Option<String>, include_text: bool) -> (Origin, QaPair) {
    let mut models = c.models;
    models.verifier = verifier;
    let pair = QaPair {
        id: qa_id(&c.doc.id, &c.persona, &c.question),
        doc_id: c.doc.id,
        question: c.question,
        answer: c.answer,
        domain: c.domain,
        persona: c.persona,
        source: c.doc.source,
        url: c.doc.url,
        models,
        created_at: now_millis(),
        pipeline_version: PIPELINE_VERSION.to_string(),
        pretrain_text: None,
    };
    let pair = match include_text {
        true => pair.with_pretrain_text(c.doc.text),
        false => pair,
    };
    (c.doc.origin, pair)
}

crate::impl_stage_call!(VerifyConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_are_degenerate_and_short_answers_are_not() {
        let cfg = VerifyConfig::default();
        let reason = |q: &str, a: &str| check_pair(q, a, &cfg).err().map(|e| e.0);
        let q = "In which city did the market begin around 1688?";
        // What a misbehaving generator produced behind an approving verifier.
        for fragment in ["e", "o", "’s", "'s", "...", "—", "?!", "the", "of", "(it)"] {
            assert_eq!(
                reason(q, fragment),
                Some("degenerate_answer"),
                "{fragment:?}"
            );
        }
        // Short but real answers.
        let kept = [
            ("How many moons does Mars have?", "2"),
            ("In what year was the treaty signed?", "1648"),
            ("What is the SI unit of electric current?", "A"),
            ("What is the chemical symbol of oxygen?", "O"),
            ("Which vitamin is made in the skin under sunlight?", "D"),
            ("Which is correct? (A) iron (B) copper (C) zinc", "B"),
            ("Which option names a noble gas: a) neon b) iron", "a"),
            ("What is the chemical formula of water?", "H2O"),
            ("How far is it from the port to the lighthouse?", "5 km"),
            ("Who wrote the novel about the white whale?", "Melville"),
            ("Is the Moon larger than Mercury?", "No"),
        ];
        for (q, a) in kept {
            assert_eq!(reason(q, a), None, "{q} -> {a}");
        }
        let detail = check_pair(q, "’s", &cfg).unwrap_err().1;
        assert!(detail.contains("clitic"), "{detail}");
    }

    #[test]
    fn a_copied_format_placeholder_is_no_pair() {
        let cfg = VerifyConfig::default();
        let reason = |q: &str, a: &str| check_pair(q, a, &cfg).err().map(|e| e.0);
        assert_eq!(
            reason("Who built it?", "<the short answer>"),
            Some("template_placeholder")
        );
        assert_eq!(
            reason("Who built it?", "<the short answer"),
            Some("template_placeholder")
        );
        assert_eq!(
            reason("<the question>", "Ada"),
            Some("template_placeholder")
        );
        // Comparisons and markup-like answers that are real answers stay.
        assert_eq!(reason("Below what pH is a solution acidic?", "<7"), None);
        assert_eq!(reason("Which HTML tag breaks a line?", "<br>"), None);
    }

    #[test]
    fn deterministic_checks_name_the_failure() {
        let cfg = VerifyConfig::default();
        let reason = |q: &str, a: &str| check_pair(q, a, &cfg).err().map(|e| e.0);
        assert_eq!(
            reason(
                "In what year did the Apollo 11 crew land on the Moon?",
                "1969"
            ),
            None
        );
        assert_eq!(reason("", "x"), Some("empty_question"));
        assert_eq!(reason("Who?", " "), Some("empty_answer"));
        assert_eq!(
            reason("Which city hosts the 2024 Paris Olympics?", "Paris"),
            Some("answer_in_question")
        );
        assert_eq!(
            reason("What year did the war that began in 1939 end?", "39"),
            None,
            "whole words only"
        );
        assert_eq!(
            reason("According to the passage, who won?", "Smith"),
            Some("refers_to_source")
        );
        assert_eq!(
            reason(
                "Who won?",
                "a very long answer that goes on and on well past any short phrase"
            ),
            Some("answer_too_long")
        );
    }
}

#[cfg(test)]
mod stage_tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{FakeLlm, answer, document, run_stage};

    fn candidate(question: &str, answer: &str) -> QaCandidate {
        QaCandidate {
            doc: document("d", "Plants make sugar from light by photosynthesis."),
            domain: "Natural Science".into(),
            persona: "a gardener".into(),
            question: question.into(),
            answer: answer.into(),
            models: Default::default(),
        }
    }

    #[test]
    fn deterministic_checks_come_first_and_spare_the_call() {
        let llm = FakeLlm::new(|_| {
            answer(
                json!({"has_context": true, "answer_correct": true, "leaks_answer": true, "reason": "says it"}),
            )
        });
        let long = "a very long answer that goes on and on well past any short checkable form";
        let input = vec![
            candidate("What do plants make?", long),
            candidate("What do plants make?", "Sugar"),
        ];
        let (pairs, dead) = run_stage(input, {
            let llm = llm.clone();
            move |c| c.verify(VerifyConfig::default(), llm).unwrap()
        });
        assert!(pairs.is_empty());
        let mut reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
        reasons.sort();
        assert_eq!(reasons, ["answer_too_long", "leaks_answer"]);
        assert_eq!(
            llm.asked().len(),
            1,
            "the long answer never reached the verifier"
        );
    }

    #[test]
    fn one_call_checks_a_documents_pairs_together() {
        let llm = FakeLlm::new(|r| {
            assert_eq!(r.schema.as_ref().unwrap().0, "verifications");
            if !r.prompt.contains("Salt") {
                return answer(json!({"verdicts": [
                    {"pair": 1, "has_context": true, "answer_correct": true, "leaks_answer": false, "reason": ""},
                ]}));
            }
            // Pair 1 (Salt, first in the fixed order) is wrong; the verdicts come back out of
            // order and are matched by number; a verdict of a pair that does not exist is not
            // borrowed by another.
            answer(json!({"verdicts": [
                {"pair": 2, "has_context": true, "answer_correct": true, "leaks_answer": false, "reason": ""},
                {"pair": 1, "has_context": true, "answer_correct": false, "leaks_answer": false, "reason": "no salt"},
                {"pair": 3, "has_context": true, "answer_correct": true, "leaks_answer": false, "reason": ""},
            ]}))
        });
        let cfg = VerifyConfig {
            one_call: true,
            ..Default::default()
        };
        let mut other = candidate("What do leaves make?", "Oxygen");
        other.doc = document("e", "Leaves make oxygen.");
        let input = vec![
            candidate("What do plants make?", "Sugar"),
            other,
            candidate("What do plants make from light?", "Salt"),
        ];
        let (pairs, dead) = run_stage(input, {
            let llm = llm.clone();
            move |c| c.verify(cfg, llm).unwrap()
        });
        // One call per document, its pairs numbered in a fixed order.
        let asked = llm.asked();
        assert_eq!(asked.len(), 2);
        let two = asked.iter().find(|r| r.prompt.contains("Pair 2:")).unwrap();
        assert!(
            two.prompt
                .contains("Pair 1:\nQuestion: What do plants make from light?\nAnswer: Salt")
        );
        let mut kept: Vec<&str> = pairs.iter().map(|(_, p)| p.answer.as_str()).collect();
        kept.sort();
        assert_eq!(kept, ["Oxygen", "Sugar"]);
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].reason.as_str(), dead[0].detail.as_str()),
            ("answer_incorrect", "no salt")
        );
    }

    #[test]
    fn one_call_never_borrows_another_pairs_verdict() {
        // No verdict for pair 1; the one in its place is pair 2's, then one for a pair that
        // does not exist: pair 1 is malformed, pair 2 is judged by its own.
        let llm = FakeLlm::new(|_| {
            answer(json!({"verdicts": [
                {"pair": 2, "has_context": true, "answer_correct": true, "leaks_answer": false, "reason": ""},
                {"pair": 3, "has_context": true, "answer_correct": true, "leaks_answer": false, "reason": ""},
            ]}))
        });
        let cfg = VerifyConfig {
            one_call: true,
            ..Default::default()
        };
        let input = vec![
            candidate("What do plants make?", "Sugar"),
            candidate("What do plants make from light?", "Salt"),
        ];
        let (pairs, dead) = run_stage(input, move |c| c.verify(cfg, llm).unwrap());
        // Pair 1 in the fixed order is "... from light?" (Salt).
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].1.answer, "Sugar");
        assert_eq!(
            (
                dead[0].reason.as_str(),
                dead[0].payload_head.contains("Salt")
            ),
            ("malformed_answer", false)
        );
        assert!(
            dead[0].detail.contains("no verdict for pair 1"),
            "{}",
            dead[0].detail
        );
    }

    #[test]
    fn without_the_llm_check_pairs_pass_the_deterministic_checks_alone() {
        let llm = FakeLlm::new(|_| panic!("no call when the LLM check is off"));
        let cfg = VerifyConfig {
            enabled: false,
            ..Default::default()
        };
        let (pairs, dead) = run_stage(vec![candidate("What do plants make?", "Sugar")], move |c| {
            c.verify(cfg, llm).unwrap()
        });
        assert!(dead.is_empty());
        assert_eq!(pairs[0].1.models.verifier, None);
        assert_eq!(
            pairs[0].1.id,
            qa_id("d", "a gardener", "What do plants make?")
        );
    }
}

#[cfg(test)]
mod prefix_tests {
    use std::sync::Arc;

    use serde_json::json;

    use crate::classify::{Classify, ClassifyConfig};
    use crate::generate::{Generate, GenerateConfig};
    use crate::llm_filter::{LlmFilter, LlmFilterConfig};
    use crate::testing::{FakeLlm, answer, document, run_stage};
    use crate::verify::{Verify, VerifyConfig};

    #[test]
    fn every_call_about_a_document_starts_with_the_same_bytes_through_the_document() {
        let llm = FakeLlm::new(|r| match r.schema.as_ref().map(|s| s.0) {
            Some("llm_filter") => answer(json!({"qualified": true, "reason": ""})),
            Some("classify") => answer(json!({
                "domain": "Natural Science", "personas": ["a gardener", "a botanist"], "reason": ""
            })),
            Some("qa_pair") => answer(json!({
                "question": "What do plants make from light by photosynthesis?",
                "answer": "Sugar", "reason": ""
            })),
            _ => answer(json!({
                "has_context": true, "answer_correct": true, "leaks_answer": false, "reason": ""
            })),
        });
        let text = "Plants make sugar from light by photosynthesis. ".repeat(20);
        let service = llm.clone();
        let (pairs, dead) = run_stage(vec![document("d", &text)], move |docs| {
            let llm: Arc<FakeLlm> = service;
            docs.llm_filter(LlmFilterConfig::default(), llm.clone())
                .unwrap()
                .then(|d| d.classify(ClassifyConfig::default(), llm.clone()).unwrap())
                .then(|c| c.generate(GenerateConfig::default(), llm.clone()).unwrap())
                .then(|c| c.verify(VerifyConfig::default(), llm).unwrap())
        });
        assert!(dead.is_empty(), "{dead:?}");
        assert_eq!(pairs.len(), 2);
        let asked = llm.asked();
        // Filter, classify, a question per persona, a check per pair.
        assert_eq!(asked.len(), 6);
        let end = asked[0].document.clone().unwrap().end;
        assert!(asked[0].prompt[..end].ends_with(&text));
        for request in &asked {
            assert_eq!(request.document.clone().unwrap().end, end);
            assert_eq!(
                request.prompt[..end],
                asked[0].prompt[..end],
                "{:?}",
                request.stage
            );
        }
    }
}
