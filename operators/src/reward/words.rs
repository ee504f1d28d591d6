//! Numbers written in words: `seven`, `twenty-one`, `one hundred and five`, `three million`,
//! `a dozen`, and ordinals (`third`, `fifteenth`, `twenty-first`), which count as their cardinal
//! (`third` = `3rd` = `3`: a place in a race is a number to a grader).

const UNITS: &[&str] = &[
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];

const TENS: &[&str] = &[
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

const ORDINAL_UNITS: &[&str] = &[
    "zeroth",
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
    "thirteenth",
    "fourteenth",
    "fifteenth",
    "sixteenth",
    "seventeenth",
    "eighteenth",
    "nineteenth",
];

const ORDINAL_TENS: &[&str] = &[
    "",
    "",
    "twentieth",
    "thirtieth",
    "fortieth",
    "fiftieth",
    "sixtieth",
    "seventieth",
    "eightieth",
    "ninetieth",
];

/// Scale words, each with its ordinal (`hundredth`).
const SCALES: &[(&str, &str, f64)] = &[
    ("hundred", "hundredth", 1e2),
    ("thousand", "thousandth", 1e3),
    ("million", "millionth", 1e6),
    ("billion", "billionth", 1e9),
    ("trillion", "trillionth", 1e12),
];

#[derive(Clone, Copy, PartialEq)]
enum Word {
    /// 0..=19.
    Unit(f64),
    /// 20, 30, .. 90.
    Tens(f64),
    Hundred,
    /// thousand and above.
    Scale(f64),
    Dozen,
}

/// A word of a number, and whether it is an ordinal (which must end the number).
fn word(w: &str) -> Option<(Word, bool)> {
    if let Some(i) = UNITS.iter().position(|u| *u == w) {
        return Some((Word::Unit(i as f64), false));
    }
    if let Some(i) = ORDINAL_UNITS.iter().position(|u| *u == w) {
        return Some((Word::Unit(i as f64), true));
    }
    if let Some(i) = TENS.iter().position(|t| !t.is_empty() && *t == w) {
        return Some((Word::Tens(10.0 * i as f64), false));
    }
    if let Some(i) = ORDINAL_TENS.iter().position(|t| !t.is_empty() && *t == w) {
        return Some((Word::Tens(10.0 * i as f64), true));
    }
    if w == "dozen" || w == "dozens" {
        return Some((Word::Dozen, false));
    }
    for (name, ordinal, v) in SCALES {
        if w == *name || w == *ordinal {
            let kind = if *v == 1e2 {
                Word::Hundred
            } else {
                Word::Scale(*v)
            };
            return Some((kind, w == *ordinal));
        }
    }
    None
}

/// Whether `w` (lowercase) is a word of a number (`forty-two` too), `a` and `and` aside.
pub(super) fn is_number_word(w: &str) -> bool {
    w.split('-').all(|part| word(part).is_some())
}

/// Whether `w` is a scale word that may follow digits: `2.5 million`.
pub(super) fn scale(w: &str) -> Option<f64> {
    SCALES
        .iter()
        .find(|(name, _, _)| *name == w || format!("{name}s") == w)
        .map(|(_, _, v)| *v)
        .or((w == "dozen").then_some(12.0))
}

/// The value of a number written in words (lowercase or not, hyphens or spaces); None unless
/// every word belongs to the number and they come in a valid order (`twenty one` but not
/// `one twenty`).
pub fn parse_number_words(s: &str) -> Option<f64> {
    let lower = s
        .trim()
        .trim_end_matches('.')
        .to_lowercase()
        .replace('-', " ");
    let words: Vec<&str> = lower.split_whitespace().collect();
    // "a dozen", "a hundred", "a million": the article stands for one.
    let words = match words.split_first() {
        Some((&"a", rest)) if rest.first().is_some_and(|w| scale(w).is_some()) => rest,
        _ => &words[..],
    };
    if words.is_empty() {
        return None;
    }
    let (mut total, mut current) = (0.0_f64, 0.0_f64);
    let mut last: Option<Word> = None;
    let mut ended = false;
    for (i, w) in words.iter().enumerate() {
        if *w == "and" && i > 0 && i + 1 < words.len() {
            continue;
        }
        let (kind, ordinal) = word(w)?;
        if ended {
            return None;
        }
        ended = ordinal;
        match kind {
            Word::Unit(v) => {
                // A unit after a unit or a teen ("one two") is two numbers; after tens it adds.
                if matches!(last, Some(Word::Unit(_))) {
                    return None;
                }
                if matches!(last, Some(Word::Tens(_))) && v >= 10.0 {
                    return None;
                }
                current += v;
            }
            Word::Tens(v) => {
                if matches!(last, Some(Word::Unit(_)) | Some(Word::Tens(_))) {
                    return None;
                }
                current += v;
            }
            Word::Hundred => {
                if matches!(last, Some(Word::Hundred)) {
                    return None;
                }
                current = current.max(1.0) * 100.0;
            }
            Word::Dozen => current = current.max(1.0) * 12.0,
            Word::Scale(v) => {
                if matches!(last, Some(Word::Scale(_))) {
                    return None;
                }
                total += current.max(1.0) * v;
                current = 0.0;
            }
        }
        last = Some(kind);
    }
    Some(total + current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_read_as_numbers() {
        for (s, v) in [
            ("seven", 7.0),
            ("Seven", 7.0),
            ("twenty-one", 21.0),
            ("one hundred and five", 105.0),
            ("one hundred fifty", 150.0),
            ("three million", 3e6),
            ("one thousand two hundred", 1200.0),
            ("a dozen", 12.0),
            ("zero", 0.0),
            ("third", 3.0),
            ("fifteenth", 15.0),
            ("twenty-first", 21.0),
            ("two hundredth", 200.0),
        ] {
            assert_eq!(parse_number_words(s), Some(v), "{s}");
        }
    }

    #[test]
    fn other_words_are_not_numbers() {
        for s in [
            "",
            "a",
            "seventy seven seven",
            "one two",
            "twelve twenty",
            "third fourth",
            "and",
            "one and",
            "Paris",
            "seven days",
            "first one",
        ] {
            assert_eq!(parse_number_words(s), None, "{s}");
        }
        assert_ne!(parse_number_words("seventy"), Some(7.0));
        assert!(is_number_word("forty-two") && !is_number_word("forty-ish"));
    }
}
