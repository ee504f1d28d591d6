//! The binary reward for RL on verifiable QA: 1 when a model's final answer matches the ground
//! truth, else 0.
//!
//! 1. Extract the final answer from the response ([`extract_final_answer`]): the last
//!    `\boxed{..}` (nested braces kept), else the last GSM8K `#### ..`, else the text after the
//!    last "final answer", "the answer is" or "answer:" (to the end of its sentence), else the last
//!    non-empty line. A ground truth is put through the same extraction when it carries a `####`
//!    or `\boxed` (a whole GSM8K solution can be given as the truth).
//! 2. Compare with each alias of the truth (`a|b|c`, or a JSON array; TriviaQA has many):
//!    - numbers ([`parse_number`]) compare by value: `1,000` = `1000` = `1e3` = `1000.0` =
//!      `$1,000` = `1000 km`; `\frac{1}{2}` = `1/2` = `0.5`; `1.5 \times 10^3` = `1500`. A
//!      response that is not a number as a whole is compared through the number in it (the first
//!      after an answer marker, else the last), as GSM8K graders do.
//!    - `%` is a unit like `km`: `50%` = `50` = `50 percent`, but `0.5` ≠ `50%`. Truths of "what
//!      percent" questions are written without the sign (GSM8K, MATH), and accepting a value 100
//!      times off would reward a wrong answer.
//!    - other answers compare after [`normalize_answer`]: case, LaTeX wrappers, and, for answers
//!      without digits, punctuation and the articles a/an/the (SQuAD's rule); answers with digits
//!      (`(1,2)`, `x^2+1`) keep their symbols and drop only whitespace.
//! 3. Optionally, a judge (an LLM behind the caller's client) decides answers that differ only in
//!    wording; it is never asked when both sides are numbers, whose comparison is exact.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// How a score was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Equal after [`normalize_answer`].
    Exact,
    /// Compared as numbers (match or not).
    Numeric,
    /// The judge decided.
    Judge,
    /// No rule matched and no judge decided.
    None,
    /// The input could not be read.
    Invalid,
}

/// The reward for one response, with what it was decided on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// 1 when the final answer matches the ground truth, else 0.
    pub score: u8,
    pub method: Method,
    /// The final answer taken from the response.
    pub extracted: String,
    pub normalized_response: String,
    /// The normalized alias that matched, or the first alias.
    pub normalized_truth: String,
    /// Why the input line could not be scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One input line of `webscale-rl score`: `{"response": "...", "ground_truth": "..."}`, where the
/// truth is a string (aliases separated by `|`), a number, or an array of them.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ScoreRequest {
    pub response: String,
    #[serde(deserialize_with = "truth_aliases")]
    pub ground_truth: Vec<String>,
}

/// A judge for answers that differ in wording: `(extracted response, ground truth)` ->
/// `Some(equivalent)`, or `None` when it could not decide (the score is then 0).
pub type Judge<'a> = dyn Fn(&str, &str) -> Option<bool> + 'a;

fn truth_aliases<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    fn one(v: &Value) -> Option<Vec<String>> {
        match v {
            Value::String(s) => Some(split_aliases(s)),
            Value::Number(n) => Some(vec![n.to_string()]),
            _ => None,
        }
    }
    let v = Value::deserialize(d)?;
    let aliases = match &v {
        Value::Array(items) => items.iter().map(one).try_fold(Vec::new(), |mut acc, a| {
            acc.extend(a?);
            Some(acc)
        }),
        other => one(other),
    };
    match aliases {
        Some(a) if !a.is_empty() => Ok(a),
        _ => Err(serde::de::Error::custom(
            "ground_truth must be a non-empty string, a number, or an array of them",
        )),
    }
}

/// Aliases of a truth written `a|b|c`. A `|` that would leave an empty alias (`|x|`, an absolute
/// value) does not separate.
pub fn split_aliases(truth: &str) -> Vec<String> {
    let parts: Vec<&str> = truth.split('|').map(str::trim).collect();
    if parts.len() > 1 && parts.iter().all(|p| !p.is_empty()) {
        parts.into_iter().map(str::to_string).collect()
    } else {
        vec![truth.trim().to_string()]
    }
}

/// Scores `response` against `ground_truth` (aliases separated by `|`), without a judge.
pub fn score(response: &str, ground_truth: &str) -> Score {
    score_aliases(response, &split_aliases(ground_truth), None)
}

/// Scores a request, asking `judge` when the rules find no match.
pub fn score_request(req: &ScoreRequest, judge: Option<&Judge<'_>>) -> Score {
    score_aliases(&req.response, &req.ground_truth, judge)
}

/// Scores one JSON input line; a line that is not a valid request scores 0 with `error` set, so
/// every input line has its output line.
pub fn score_line(line: &str, judge: Option<&Judge<'_>>) -> Score {
    match serde_json::from_str::<ScoreRequest>(line) {
        Ok(req) => score_request(&req, judge),
        Err(e) => Score {
            score: 0,
            method: Method::Invalid,
            extracted: String::new(),
            normalized_response: String::new(),
            normalized_truth: String::new(),
            error: Some(e.to_string()),
        },
    }
}

/// Where a final answer was found: a number inside it is the first after a marker, else the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Boxed,
    Hashes,
    Marker,
    LastLine,
}

/// Scores `response` against any of `truths`.
pub fn score_aliases(response: &str, truths: &[String], judge: Option<&Judge<'_>>) -> Score {
    let (extracted, source) = extract(response);
    let text = normalize_answer(&extracted);
    // Only numeric truths look for a number inside a prose answer.
    let number = parse_number(&extracted).or_else(|| embedded_number(&extracted, source));
    let shown = |method: Method| match (method, number) {
        (Method::Numeric, Some(n)) => format_number(n),
        _ => text.clone(),
    };
    let mut first: Option<(String, Method)> = None;
    let mut numbers_both_sides = false;
    for truth in truths {
        let truth = if truth.contains("####") || truth.contains("\\boxed") {
            extract(truth).0
        } else {
            truth.clone()
        };
        let (norm_truth, matched, method) = match parse_number(&truth) {
            Some(t) => {
                numbers_both_sides |= number.is_some();
                let hit = number.is_some_and(|r| same_number(r, t));
                (format_number(t), hit, Method::Numeric)
            }
            None => {
                let norm = normalize_answer(&truth);
                let hit = !norm.is_empty() && norm == text;
                (norm, hit, Method::Exact)
            }
        };
        if matched {
            return Score {
                score: 1,
                method,
                normalized_response: shown(method),
                extracted,
                normalized_truth: norm_truth,
                error: None,
            };
        }
        first.get_or_insert((norm_truth, method));
    }
    let (normalized_truth, method) = first.unwrap_or((String::new(), Method::None));
    let method = if method == Method::Numeric {
        Method::Numeric
    } else {
        Method::None
    };
    let mut score = Score {
        score: 0,
        method,
        normalized_response: shown(method),
        extracted,
        normalized_truth,
        error: None,
    };
    if let Some(judge) = judge
        && !numbers_both_sides
        && !score.extracted.is_empty()
        && let Some(verdict) = judge(&score.extracted, &truths.join(" | "))
    {
        score.score = verdict as u8;
        score.method = Method::Judge;
    }
    score
}

/// The final answer of a response (see the module doc for the rules).
pub fn extract_final_answer(response: &str) -> String {
    extract(response).0
}

fn extract(response: &str) -> (String, Source) {
    if let Some(b) = last_boxed(response) {
        return (b.trim().to_string(), Source::Boxed);
    }
    if let Some(i) = response.rfind("####") {
        let rest = response[i + 4..].trim_start();
        let line = rest.lines().next().unwrap_or("").trim();
        return (line.to_string(), Source::Hashes);
    }
    if let Some(after) = after_last_marker(response) {
        return (after, Source::Marker);
    }
    let line = response
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    (line.to_string(), Source::LastLine)
}

/// The content of the last `\boxed{..}` or `\fbox{..}` (braces balanced), or of `\boxed 5`.
fn last_boxed(text: &str) -> Option<String> {
    let start = ["\\boxed", "\\fbox"]
        .iter()
        .filter_map(|m| text.rfind(m).map(|i| i + m.len()))
        .max()?;
    let rest = &text[start..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut depth = 1;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(body[..i].to_string());
                    }
                }
                _ => {}
            }
        }
        return None;
    }
    let word = rest
        .trim_start()
        .split(|c: char| c.is_whitespace() || c == '$')
        .next()?;
    (!word.is_empty() && rest.starts_with(' ')).then(|| word.to_string())
}

/// The text after the last answer marker, to the end of its sentence; the next non-empty line
/// when the marker ends its line.
fn after_last_marker(text: &str) -> Option<String> {
    const MARKERS: &[&str] = &[
        "final answer:",
        "final answer is",
        "the answer is",
        "answer is",
        "answer:",
    ];
    // ASCII lowercasing keeps byte offsets.
    let lower = text.to_ascii_lowercase();
    let end = MARKERS
        .iter()
        .filter_map(|m| lower.rfind(m).map(|i| i + m.len()))
        .max()?;
    let rest = text[end..].trim_start_matches([' ', '\t', ':', '*']);
    let line = match rest.lines().next().map(str::trim) {
        Some(l) if !l.is_empty() => l,
        _ => rest.lines().map(str::trim).find(|l| !l.is_empty())?,
    };
    let sentence = first_sentence(line);
    let sentence = sentence.trim().trim_end_matches('.').trim();
    (!sentence.is_empty()).then(|| sentence.to_string())
}

/// Abbreviations whose period does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "mt", "ft", "vs", "no", "co", "inc", "ltd", "prof",
    "gen", "col", "capt", "lt", "sgt", "rev", "hon", "fr", "etc", "approx", "ca",
];

/// The first sentence of a line: "... is $42$. I hope it is correct." ends at ". " (a decimal
/// point has no space after it), but not after "Mr." or an initial ("J. K. Rowling").
fn first_sentence(line: &str) -> &str {
    let mut from = 0;
    while let Some(i) = line[from..].find(". ").map(|i| from + i) {
        let word = line[..i].rsplit(char::is_whitespace).next().unwrap_or("");
        let word = word.trim_start_matches(|c: char| !c.is_alphanumeric());
        let lower = word.to_lowercase();
        // "J" of "J. K. Rowling", "K.D" of "K.D. Lang".
        let initial = word.split('.').all(|p| {
            let mut chars = p.chars();
            chars.next().is_some_and(char::is_uppercase) && chars.next().is_none()
        });
        // A sentence starts with a capital or a digit, and does not end inside parentheses.
        let next_starts = line[i + 2..]
            .chars()
            .next()
            .is_some_and(|c| !c.is_lowercase());
        let open = line[..i].matches('(').count() > line[..i].matches(')').count();
        if next_starts && !open && !initial && !ABBREVIATIONS.contains(&lower.as_str()) {
            return &line[..i];
        }
        from = i + 2;
    }
    line
}

/// Replaces `\cmd{X}` by `X` for each command, braces balanced.
fn unwrap_commands(s: &str, commands: &[&str]) -> String {
    let mut out = s.to_string();
    for cmd in commands {
        let pat = format!("{cmd}{{");
        while let Some(i) = out.find(&pat) {
            let body_start = i + pat.len();
            let mut depth = 1;
            let mut close = None;
            for (j, c) in out[body_start..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            close = Some(body_start + j);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let Some(close) = close else { break };
            out = format!(
                "{}{}{}",
                &out[..i],
                &out[body_start..close],
                &out[close + 1..]
            );
        }
    }
    out
}

/// LaTeX that only presents an answer: math delimiters, `\text{..}`-style wrappers, spacing,
/// `\left`/`\right`, degree marks, `\dfrac` (as `\frac`). Lowercased.
fn strip_latex(s: &str) -> String {
    let mut t = unwrap_commands(
        s,
        &[
            "\\text", "\\textbf", "\\mathrm", "\\mathbf", "\\mbox", "\\textit",
        ],
    );
    for (from, to) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("\\%", "%"),
        ("\\$", "$"),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\ ", " "),
        ("{,}", ","),
        ("$", ""),
        ("°", ""),
    ] {
        t = t.replace(from, to);
    }
    t.trim().to_lowercase()
}

/// The comparable form of a non-numeric answer (see the module doc).
pub fn normalize_answer(s: &str) -> String {
    let t = strip_latex(s);
    if t.chars().any(|c| c.is_ascii_digit()) {
        let body = ["the ", "a ", "an "]
            .iter()
            .find_map(|article| t.strip_prefix(article))
            .unwrap_or(&t);
        let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        return compact.trim_end_matches('.').to_string();
    }
    let cleaned: String = t
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    let words: Vec<&str> = cleaned.split_whitespace().collect();
    // An answer that is only symbols ("£") keeps them.
    if words.is_empty() {
        return t.chars().filter(|c| !c.is_whitespace()).collect();
    }
    let content: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect();
    // A lone "a" is a choice letter, not an article.
    if content.is_empty() {
        words.join(" ")
    } else {
        content.join(" ")
    }
}

/// Units and symbols stripped around a number. Lowercase.
const UNITS: &[&str] = &[
    "%",
    "percent",
    "per cent",
    "km",
    "kg",
    "cm",
    "mm",
    "m",
    "g",
    "mg",
    "l",
    "ml",
    "s",
    "sec",
    "secs",
    "second",
    "seconds",
    "min",
    "mins",
    "minute",
    "minutes",
    "h",
    "hr",
    "hrs",
    "hour",
    "hours",
    "day",
    "days",
    "week",
    "weeks",
    "month",
    "months",
    "year",
    "years",
    "meter",
    "meters",
    "metre",
    "metres",
    "kilometers",
    "kilometres",
    "kilograms",
    "grams",
    "feet",
    "foot",
    "ft",
    "inch",
    "inches",
    "mile",
    "miles",
    "mph",
    "km/h",
    "pound",
    "pounds",
    "lb",
    "lbs",
    "ounce",
    "ounces",
    "oz",
    "dollar",
    "dollars",
    "usd",
    "euro",
    "euros",
    "cent",
    "cents",
    "degree",
    "degrees",
    "units",
    "sq ft",
    "square feet",
    "square meters",
    "liters",
    "litres",
];

/// The value of an answer that is a number as a whole, units and currency aside (see the module
/// doc); None for anything else.
pub fn parse_number(s: &str) -> Option<f64> {
    let mut t = strip_latex(s);
    t = t.trim().trim_end_matches('.').trim().to_string();
    // "x = 5", "n=5": a variable named before the value.
    if let Some((lhs, rhs)) = t.split_once('=') {
        let lhs = lhs.trim();
        if !lhs.is_empty() && lhs.len() <= 3 && lhs.chars().all(|c| c.is_alphabetic() || c == '_') {
            t = rhs.trim().to_string();
        }
    }
    let mut t = t.as_str();
    for symbol in ["$", "€", "£", "¥", "usd"] {
        if let Some(rest) = t.strip_prefix(symbol) {
            t = rest.trim_start();
        }
    }
    // A leading sign before a currency symbol: "-$5".
    let negative_currency = t.strip_prefix("-$").map(|rest| rest.trim_start());
    let (neg, mut t) = match negative_currency {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    // Longest unit first, so "per cent" wins over "cent" and "km/h" over "h".
    static BY_LENGTH: std::sync::OnceLock<Vec<&str>> = std::sync::OnceLock::new();
    let units = BY_LENGTH.get_or_init(|| {
        let mut units = UNITS.to_vec();
        units.sort_by_key(|u| std::cmp::Reverse(u.len()));
        units
    });
    for unit in units {
        if let Some(rest) = t.strip_suffix(unit) {
            let rest = rest.trim_end();
            // A unit is a word of its own or a symbol: "5 m" and "5m", not "5 mm" read as m.
            if rest.ends_with(|c: char| c.is_ascii_digit() || c == '}' || c == ' ')
                || rest.len() < t.len() - unit.len()
                || !unit.chars().all(|c| c.is_alphabetic())
            {
                t = rest;
                break;
            }
        }
    }
    let v = parse_plain(t.trim())?;
    Some(if neg { -v } else { v })
}

/// A number without units: decimal (thousands commas allowed), scientific (`1e3`,
/// `1.5 \times 10^{3}`), a fraction (`3/4`, `\frac{3}{4}`), with an optional sign.
fn parse_plain(t: &str) -> Option<f64> {
    if t.is_empty() {
        return None;
    }
    let t = t.replace('−', "-");
    let t = t.as_str();
    if let Some(rest) = t.strip_prefix('-') {
        return parse_plain(rest.trim_start()).map(|v| -v);
    }
    if let Some(rest) = t.strip_prefix('+') {
        return parse_plain(rest.trim_start());
    }
    if let Some(rest) = t.strip_prefix("\\frac") {
        let (num, after) = brace_group(rest)?;
        let (den, after) = brace_group(after)?;
        if !after.trim().is_empty() {
            return None;
        }
        return divide(parse_plain(num.trim())?, parse_plain(den.trim())?);
    }
    for times in ["\\times", "×", "*", "x", "\\cdot"] {
        if let Some((mantissa, power)) = t.split_once(times) {
            let power = power.trim();
            if let Some(exp) = power.strip_prefix("10^") {
                let exp = exp.trim_start_matches('{').trim_end_matches('}');
                let e: i32 = exp.trim().parse().ok()?;
                return Some(parse_decimal(mantissa.trim())? * 10f64.powi(e));
            }
        }
    }
    if let Some((num, den)) = t.split_once('/') {
        return divide(parse_decimal(num.trim())?, parse_decimal(den.trim())?);
    }
    parse_decimal(t)
}

fn divide(num: f64, den: f64) -> Option<f64> {
    (den != 0.0).then(|| num / den)
}

/// `{a}` or a single character `a` (as in `\frac12`) at the start of `s`, and what follows.
fn brace_group(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if let Some(body) = s.strip_prefix('{') {
        let mut depth = 1;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some((&body[..i], &body[i + 1..]));
                    }
                }
                _ => {}
            }
        }
        return None;
    }
    let c = s.chars().next()?;
    Some(s.split_at(c.len_utf8()))
}

/// Digits with an optional decimal point and exponent; commas only as thousands separators.
fn parse_decimal(t: &str) -> Option<f64> {
    let t = t.trim();
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let int = if int.contains(',') {
        let groups: Vec<&str> = int.split(',').collect();
        let ok = (1..=3).contains(&groups[0].len())
            && groups[1..].iter().all(|g| g.len() == 3)
            && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            return None;
        }
        groups.concat()
    } else {
        int.to_string()
    };
    let digits_ok = int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| f.bytes().all(|b| b.is_ascii_digit()))
        && (!int.is_empty() || frac.is_some_and(|f| !f.is_empty()));
    if !digits_ok {
        return None;
    }
    let mut text = int;
    if let Some(f) = frac {
        text.push('.');
        text.push_str(f);
    }
    if let Some(e) = exponent {
        let e = e.strip_prefix('+').unwrap_or(e);
        let digits = e.strip_prefix('-').unwrap_or(e);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.push('e');
        text.push_str(e);
    }
    text.parse().ok()
}

/// The number inside a prose answer ("She makes $18 every day."): the first after an answer
/// marker, else the last; after the last `=` when there is one ("9 * 2 = $18 a day"). None for
/// a boxed answer or math (`3x - 2`, `\sqrt{3}`): a number inside an expression is not its value.
fn embedded_number(text: &str, source: Source) -> Option<f64> {
    if source == Source::Boxed {
        return None;
    }
    let tail = text.rsplit('=').next().unwrap_or(text);
    let math = |c: char| "\\^{}[]()+*/<>|".contains(c);
    let prose = tail.split_whitespace().any(|w| {
        w.trim_matches(|c: char| !c.is_alphanumeric())
            .chars()
            .count()
            >= 2
            && w.chars()
                .all(|c| c.is_alphabetic() || ".,;:!?'\"".contains(c))
    });
    if !prose || tail.chars().any(math) {
        return None;
    }
    let mut numbers = tail.split_whitespace().filter_map(|w| {
        let w = w.trim_end_matches(['.', ',', ';', ':', '!', '?', '"', '\'']);
        let w = w.trim_start_matches(['"', '\'']);
        // "3x" or "v2" is not a number; "$18", "1,000", "-10", "50%" and "12km" are.
        w.starts_with(|c: char| c.is_ascii_digit() || "-$€£".contains(c))
            .then(|| parse_number(w))
            .flatten()
    });
    match source {
        Source::Marker | Source::Hashes => numbers.next(),
        Source::LastLine | Source::Boxed => numbers.next_back(),
    }
}

fn same_number(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// A number as shown in a score: integers without a fraction part.
fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_in_their_usual_forms() {
        for s in [
            "1000",
            "1,000",
            "1e3",
            "1000.0",
            "$1,000",
            "1000 km",
            "1000km",
            "1.0E+3",
            "x = 1000",
            "\\$1{,}000",
            "1 \\times 10^{3}",
            "\\text{1000 dollars}",
        ] {
            assert_eq!(parse_number(s), Some(1000.0), "{s}");
        }
        assert_eq!(parse_number("\\frac{1}{2}"), Some(0.5));
        assert_eq!(parse_number("-\\dfrac{3}{4}"), Some(-0.75));
        assert_eq!(parse_number("1/4"), Some(0.25));
        assert_eq!(parse_number("50%"), Some(50.0));
        assert_eq!(parse_number("-$5"), Some(-5.0));
        assert_eq!(parse_number("-5"), Some(-5.0));
        for s in ["1,00", "inf", "nan", "", "abc", "1.2.3", "(1,2)", "5 mm x"] {
            assert_eq!(parse_number(s), None, "{s}");
        }
    }

    #[test]
    fn boxed_answers_keep_nested_braces() {
        assert_eq!(
            extract_final_answer("so \\boxed{\\frac{625}{648}}."),
            "\\frac{625}{648}"
        );
        assert_eq!(extract_final_answer("\\boxed{1} then \\boxed{2}"), "2");
        assert_eq!(extract_final_answer("$\\boxed 5$"), "5");
    }

    #[test]
    fn markers_and_last_lines() {
        assert_eq!(
            extract_final_answer("Final Answer: The final answer is $42$. I hope it is correct."),
            "$42$"
        );
        assert_eq!(extract_final_answer("Reasoning\nAnswer:\n 7 \n"), "7");
        assert_eq!(extract_final_answer("a\n\nParis\n"), "Paris");
        assert_eq!(extract_final_answer("step\n#### 1,234\n"), "1,234");
    }

    #[test]
    fn text_answers_drop_articles_and_punctuation() {
        assert_eq!(normalize_answer("The  Onion."), "onion");
        assert_eq!(normalize_answer("(1, 2)"), "(1,2)");
        assert_eq!(score("It is the Eiffel Tower!", "eiffel tower").score, 0);
        assert_eq!(score("Answer: the Eiffel Tower!", "eiffel tower").score, 1);
    }

    #[test]
    fn aliases_split_only_when_every_part_has_text() {
        assert_eq!(split_aliases("a | b"), vec!["a", "b"]);
        assert_eq!(split_aliases("|x|"), vec!["|x|"]);
    }

    #[test]
    fn judge_is_asked_only_for_wording() {
        let yes = |_: &str, _: &str| Some(true);
        let s = score_aliases("Answer: H2O", &["water".into()], Some(&yes));
        assert_eq!((s.score, s.method), (1, Method::Judge));
        let s = score_aliases("Answer: 12", &["13".into()], Some(&yes));
        assert_eq!((s.score, s.method), (0, Method::Numeric));
        let undecided = |_: &str, _: &str| None;
        let s = score_aliases("Answer: H2O", &["water".into()], Some(&undecided));
        assert_eq!((s.score, s.method), (0, Method::None));
    }

    #[test]
    fn bad_lines_still_get_an_output() {
        let s = score_line("{\"response\": 1}", None);
        assert_eq!((s.score, s.method), (0, Method::Invalid));
        assert!(s.error.is_some());
        let s = score_line(r#"{"response": "42", "ground_truth": [41, "42"]}"#, None);
        assert_eq!((s.score, s.method), (1, Method::Numeric));
    }
}
