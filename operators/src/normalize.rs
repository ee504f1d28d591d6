//! Text normalization shared by exact and near-duplicate detection, so both agree on what
//! "the same text" means.

use serde::{Deserialize, Serialize};

/// How text is normalized before hashing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NormalizeConfig {
    pub lowercase: bool,
    /// Drop every character that is neither alphanumeric nor whitespace.
    pub strip_punctuation: bool,
    /// Replace every digit with `0`, so pages differing only in dates/counters collide.
    pub fold_digits: bool,
}

impl Default for NormalizeConfig {
    fn default() -> Self {
        NormalizeConfig {
            lowercase: true,
            strip_punctuation: true,
            fold_digits: false,
        }
    }
}

/// Normalizes `text` into `out` (cleared first): characters mapped per `cfg`, runs of whitespace
/// folded to one space, no leading or trailing space. Reusing `out` avoids an allocation per document.
pub fn normalize_into(text: &str, cfg: &NormalizeConfig, out: &mut String) {
    out.clear();
    out.reserve(text.len());
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if cfg.strip_punctuation && !c.is_alphanumeric() {
            // Punctuation separates words ("end.Start" -> "end start") only when it is between
            // letters; "don't" stays one word.
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        if cfg.fold_digits && c.is_ascii_digit() {
            out.push('0');
        } else if cfg.lowercase {
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
}

/// Convenience form of [`normalize_into`].
pub fn normalize(text: &str, cfg: &NormalizeConfig) -> String {
    let mut out = String::new();
    normalize_into(text, cfg, &mut out);
    out
}

/// The 64-bit hash exact dedup keys on: xxh3 of the normalized text.
pub fn content_hash(text: &str, cfg: &NormalizeConfig) -> u64 {
    xxhash_rust::xxh3::xxh3_64(normalize(text, cfg).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_whitespace_and_punctuation() {
        let cfg = NormalizeConfig::default();
        assert_eq!(normalize("  Hello,\n\n  World!  ", &cfg), "hello world");
        assert_eq!(normalize("Don't stop", &cfg), "dont stop");
        assert_eq!(
            content_hash("The cat sat.", &cfg),
            content_hash("the   CAT sat", &cfg)
        );
        assert_ne!(
            content_hash("the cat sat", &cfg),
            content_hash("the dog sat", &cfg)
        );
    }

    #[test]
    fn options_are_honoured() {
        let cfg = NormalizeConfig {
            lowercase: false,
            strip_punctuation: false,
            fold_digits: true,
        };
        assert_eq!(normalize("Year 2024!", &cfg), "Year 0000!");
    }
}
