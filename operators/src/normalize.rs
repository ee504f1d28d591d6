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
///
/// ASCII bytes take a table-driven path (most web text is mostly ASCII, and this function bounds
/// the throughput of both dedup stages); other characters go through the same rules by `char`.
pub fn normalize_into(text: &str, cfg: &NormalizeConfig, out: &mut String) {
    normalize_with(text, cfg, out, |_| {});
}

/// [`normalize_into`] that also records where each word starts in `out`, for shingling without a
/// second pass over the text (empty when `out` is).
pub fn normalize_words_into(
    text: &str,
    cfg: &NormalizeConfig,
    out: &mut String,
    word_starts: &mut Vec<usize>,
) {
    word_starts.clear();
    word_starts.push(0);
    normalize_with(text, cfg, out, |start| word_starts.push(start));
    if out.is_empty() {
        word_starts.clear();
    }
}

/// The one normalization loop; `word_start(offset)` is called after each space written, with the
/// offset of the word that follows it.
#[inline(always)]
fn normalize_with(
    text: &str,
    cfg: &NormalizeConfig,
    out: &mut String,
    mut word_start: impl FnMut(usize),
) {
    out.clear();
    out.reserve(text.len());
    let bytes = text.as_bytes();
    let mut pending_space = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii() {
            i += 1;
            let class = ASCII_CLASS[b as usize];
            if class == WHITESPACE {
                pending_space = !out.is_empty();
                continue;
            }
            if class == OTHER && cfg.strip_punctuation {
                continue;
            }
            if pending_space {
                out.push(' ');
                pending_space = false;
                word_start(out.len());
            }
            let c = if cfg.fold_digits && b.is_ascii_digit() {
                b'0'
            } else if cfg.lowercase {
                b.to_ascii_lowercase()
            } else {
                b
            };
            out.push(c as char);
            continue;
        }
        let c = text[i..].chars().next().expect("a char starts here");
        i += c.len_utf8();
        if let Some(start) = push_char(c, cfg, out, &mut pending_space) {
            word_start(start);
        }
    }
}

// Byte classes, shared with the one pass over the text (`crate::words`).
pub(crate) const WHITESPACE: u8 = 0;
pub(crate) const LETTER: u8 = 1;
pub(crate) const DIGIT: u8 = 2;
pub(crate) const OTHER: u8 = 3;

/// The class of every ASCII byte: `char::is_whitespace`, `is_alphabetic`, `is_numeric`.
pub(crate) static ASCII_CLASS: [u8; 128] = {
    let mut t = [OTHER; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = if matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
            WHITESPACE
        } else if c.is_ascii_alphabetic() {
            LETTER
        } else if c.is_ascii_digit() {
            DIGIT
        } else {
            OTHER
        };
        b += 1;
    }
    t
};

/// The rules of [`normalize_into`] for one character. Returns where the next word starts when it
/// wrote the space before it.
fn push_char(
    c: char,
    cfg: &NormalizeConfig,
    out: &mut String,
    pending_space: &mut bool,
) -> Option<usize> {
    if c.is_whitespace() {
        *pending_space = !out.is_empty();
        return None;
    }
    if cfg.strip_punctuation && !c.is_alphanumeric() {
        // Punctuation separates words ("end.Start" -> "end start") only when it is between
        // letters; "don't" stays one word.
        return None;
    }
    let mut started = None;
    if *pending_space {
        out.push(' ');
        *pending_space = false;
        started = Some(out.len());
    }
    if cfg.fold_digits && c.is_ascii_digit() {
        out.push('0');
    } else if cfg.lowercase {
        out.extend(c.to_lowercase());
    } else {
        out.push(c);
    }
    started
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
    fn the_ascii_path_follows_the_char_rules() {
        let texts = [
            "  Hello,\n\n  World!  ",
            "Caf\u{e9} \u{c9}T\u{c9}\u{a0}2024\u{2014}x \u{130}stanbul \u{1F600}!",
            "tab\tvt\u{b}ff\u{c}cr\r\u{85}nel\u{3000}ideographic",
            "a ! b\u{ff01}c d_e-f 'q' \u{feff}z",
            "",
            "   ",
        ];
        let every_ascii: String = (0u8..128).map(char::from).collect();
        let texts = texts.iter().copied().chain([every_ascii.as_str()]);
        for lowercase in [false, true] {
            for strip_punctuation in [false, true] {
                for fold_digits in [false, true] {
                    let cfg = NormalizeConfig {
                        lowercase,
                        strip_punctuation,
                        fold_digits,
                    };
                    for text in texts.clone() {
                        let mut expected = String::new();
                        let mut pending = false;
                        for c in text.chars() {
                            push_char(c, &cfg, &mut expected, &mut pending);
                        }
                        assert_eq!(normalize(text, &cfg), expected, "{text:?} {cfg:?}");
                        let (mut out, mut starts) = (String::new(), Vec::new());
                        normalize_words_into(text, &cfg, &mut out, &mut starts);
                        let mut words = Vec::new();
                        let mut at = 0;
                        for w in expected.split(' ').filter(|_| !expected.is_empty()) {
                            words.push(at);
                            at += w.len() + 1;
                        }
                        assert_eq!((out, starts), (expected, words), "{text:?} {cfg:?}");
                    }
                }
            }
        }
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
