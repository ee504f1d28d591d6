//! Routing: each domain has its few-shot library (document excerpt, persona, question, answer);
//! a generation call gets `examples_per_call` of them, chosen by a hash of (seed, document,
//! persona) — deterministic, so a replay builds the same prompt and hits the response cache.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One demonstration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FewShotExample {
    pub domain: String,
    #[serde(default)]
    pub source_id: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    pub excerpt: String,
    pub persona: String,
    pub question: String,
    pub answer: String,
    #[serde(default)]
    pub computed: Option<bool>,
}

/// Domain -> examples.
#[derive(Clone, Debug, Default)]
pub struct FewShotLibrary {
    by_domain: BTreeMap<String, Vec<FewShotExample>>,
}

/// The bundled libraries (data/fewshot/, sources and licences in its README).
const BUNDLED: &[&str] = &[
    include_str!("../../data/fewshot/math.jsonl"),
    include_str!("../../data/fewshot/technology_engineering.jsonl"),
    include_str!("../../data/fewshot/coding.jsonl"),
    include_str!("../../data/fewshot/social_science.jsonl"),
    include_str!("../../data/fewshot/natural_science.jsonl"),
    include_str!("../../data/fewshot/travel_lifestyle.jsonl"),
    include_str!("../../data/fewshot/commerce_economics.jsonl"),
    include_str!("../../data/fewshot/medicine_health.jsonl"),
    include_str!("../../data/fewshot/education.jsonl"),
    include_str!("../../data/fewshot/other.jsonl"),
];

impl FewShotLibrary {
    pub fn bundled() -> Self {
        let mut lib = FewShotLibrary::default();
        for text in BUNDLED {
            lib.add_jsonl(text, "bundled few-shot library")
                .expect("bundled few-shot files are valid");
        }
        lib
    }

    /// Every `*.jsonl` file of `dir`; each line is one example naming its domain.
    pub fn load_dir(dir: &Path) -> Result<Self, String> {
        let mut lib = FewShotLibrary::default();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read few-shot directory '{}': {e}", dir.display()))?;
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read '{}': {e}", path.display()))?;
            lib.add_jsonl(&text, &path.display().to_string())?;
        }
        if lib.by_domain.is_empty() {
            return Err(format!("no few-shot examples in '{}'", dir.display()));
        }
        Ok(lib)
    }

    fn add_jsonl(&mut self, text: &str, name: &str) -> Result<(), String> {
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let ex: FewShotExample =
                serde_json::from_str(line).map_err(|e| format!("{name}, line {}: {e}", i + 1))?;
            self.by_domain
                .entry(ex.domain.clone())
                .or_default()
                .push(ex);
        }
        Ok(())
    }

    pub fn domains(&self) -> impl Iterator<Item = (&String, usize)> {
        self.by_domain.iter().map(|(d, v)| (d, v.len()))
    }

    /// `n` examples for (domain, doc), chosen by hash; falls back to "Other" when the domain has
    /// no library. The same for every persona of a document: the examples then sit in the prefix
    /// its generation calls share (before the persona), which a server's prefix cache serves.
    pub fn sample(&self, domain: &str, doc_id: &str, seed: u64, n: usize) -> Vec<&FewShotExample> {
        let pool = self
            .by_domain
            .get(domain)
            .or_else(|| self.by_domain.get("Other"))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut ranked: Vec<(u64, &FewShotExample)> = pool
            .iter()
            .enumerate()
            .map(|(i, ex)| {
                let key = format!("{seed}\u{0}{doc_id}\u{0}{i}");
                (xxhash_rust::xxh3::xxh3_64(key.as_bytes()), ex)
            })
            .collect();
        ranked.sort_by_key(|(h, _)| *h);
        ranked.into_iter().take(n).map(|(_, ex)| ex).collect()
    }
}

/// The examples as prompt text.
pub fn format_examples(examples: &[&FewShotExample]) -> String {
    examples
        .iter()
        .enumerate()
        .map(|(i, ex)| {
            format!(
                "Example {}\nDocument excerpt: {}\nPersona: {}\nQuestion: {}\nAnswer: {}",
                i + 1,
                ex.excerpt,
                ex.persona,
                ex.question,
                ex.answer
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::DEFAULT_DOMAINS;

    #[test]
    fn every_default_domain_has_at_least_three_examples() {
        let lib = FewShotLibrary::bundled();
        for d in DEFAULT_DOMAINS {
            let n = lib.by_domain.get(d).map_or(0, Vec::len);
            assert!(n >= 3, "domain {d} has {n} examples");
        }
    }

    #[test]
    fn sampling_is_deterministic_distinct_and_seeded() {
        let lib = FewShotLibrary::bundled();
        let a = lib.sample("Medicine & Health", "doc1", 7, 2);
        assert_eq!(a, lib.sample("Medicine & Health", "doc1", 7, 2));
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], a[1]);
        let varied = (0..20).any(|s| lib.sample("Medicine & Health", "doc1", s, 2) != a);
        assert!(varied, "the seed changes the choice");
        assert_eq!(
            lib.sample("Unknown", "d", 1, 2).len(),
            2,
            "falls back to Other"
        );
    }
}
