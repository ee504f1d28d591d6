//! The binary reward for RL on verifiable QA: 1 when a model's final answer matches the ground
//! truth, else 0. Each score names the rule that decided it (`method`).
//!
//! 1. Extract the final answer from the response ([`extract_final_answer`]): the last
//!    `\boxed{..}` (nested braces kept), else the last GSM8K `#### ..`, else the text after the
//!    last "final answer", "the answer is" or "answer:" (to the end of its sentence), else the last
//!    non-empty line. A ground truth is put through the same extraction when it carries a `####`
//!    or `\boxed` (a whole GSM8K solution can be given as the truth).
//! 2. Compare with each alias of the truth (`a|b|c`, or a JSON array; TriviaQA has many), in this
//!    order:
//!    - `numeric`: numbers ([`parse_number`]) compare by value: `1,000` = `1000` = `1e3` =
//!      `1000.0` = `$1,000` = `1000 km`; `\frac{1}{2}` = `1/2` = `0.5`; `1.5 \times 10^3` =
//!      `1500`; `10^6` = `1,000,000`; mixed numbers `2\frac{1}{2}` = `2 1/2` = `2.5` (a fraction
//!      after a whole number is how MATH and recipes write 2½; `2\sqrt{2}` stays a product); `3rd`
//!      = `3`. Within a relative 1e-9: `0.33` ≠ `1/3`, `1000001` ≠ `1000000`. A response that is
//!      not a number as a whole is compared through the quantity in it (the first after an answer
//!      marker, else the last), as GSM8K graders do.
//!    - `words`: numbers in words (`seven`, `twenty-one`, `one hundred and five`, `three
//!      million`, `a dozen`, ordinals `third` = `3rd`), on either side.
//!    - `percent`: a number with a percent sign (`50%`, `50 percent`, `50\%`) equals the same
//!      number without it (truths of "what percent" questions are written without the sign: GSM8K,
//!      MATH) and the fraction it stands for (`0.5`, `1/2`). The sign makes the scale explicit, so
//!      both readings are safe; two plain numbers never compare across a factor of 100 (`0.125`
//!      ≠ `12.5`, one of them would be a wrong answer), nor do two percentages (`0.5%` ≠ `50%`).
//!    - `unit`: when both sides carry a unit of length, mass, time, temperature, volume, speed,
//!      area or money, they compare converted (`5 km` = `5000 m`, `212°F` = `100°C`, `250 cents` =
//!      `$2.50`, `7 days` = `one week`), and units of different dimensions or currencies never
//!      match (`12 kg` ≠ `12 km`, `€5` ≠ `$5`: no exchange rates). Conversions are `uom`'s, within a
//!      relative 1e-6 (its imperial factors have seven digits). A unit on one side only is
//!      ignored, as before (`12 km` = `12`).
//!    - `exact`: other answers compare after [`normalize_answer`]: case, LaTeX wrappers, and, for
//!      answers without digits, punctuation and the articles a/an/the (SQuAD's rule); answers with
//!      digits (`(1,2)`, `2\pm\sqrt{3}`) keep their symbols and drop only whitespace.
//!    - `symbolic`: answers that read as math (LaTeX or plain: `\frac`, `\sqrt`, `\pi`, powers,
//!      implicit products like `2x` and `2\sqrt{2}`, single-letter variables) are evaluated with
//!      `evalexpr` at the same six pseudo-random points (fixed seed: a pair always scores the
//!      same) and match when they agree within a relative 1e-6 wherever both are defined:
//!      `x^2+2x+1` = `(x+1)^2`, `2\sqrt{2}` = `\sqrt{8}`. Random points decide polynomial and
//!      radical identities without a CAS: two different such functions agree on almost no point.
//!      Equations compare their right sides when the left sides are the same (`y = 2x+5` =
//!      `y=5+2x`); a numeric truth compares with an expression's value (`\sqrt{2}` =
//!      `1.4142135623730951`, but ≠ `1.414`: a rounded value is not the exact answer). Words of
//!      more than three letters, commas (tuples, intervals), `\pm` and relations are not math.
//!    - `name`: the truth may be the distinguishing part of a longer name in the response: the
//!      truth's words end it, after capitalized given names or titles (`George Washington`,
//!      `Queen Victoria`, `Mount Everest` for `Washington`, `Victoria`, `Everest`), or are followed
//!      by a geographic kind (`the Volga River` for `Volga`) or by a comma and a region (`Paris,
//!      France` for `Paris`). Never the reverse: a truth `George Washington` is not matched by
//!      `Washington`, which may mean another Washington; the truth's writer chose how much of the
//!      name identifies the answer, and a response must say at least that. Nor is another given
//!      name accepted (`Denzel Washington` ≠ `George Washington`), nor words after a name
//!      (`Paris Hilton` ≠ `Paris`).
//!    - `sentence`: without an answer marker, the last sentence of the last line states the answer
//!      as its final phrase after a verb or preposition: `It was the Eiffel Tower.`, `... the
//!      capital is Canberra.`, `written by Mark Twain.` (with the name rule's extensions). A
//!      negation before it (`not`, `never`, `n't`) rules it out: `Ottawa, not Toronto` is not
//!      `Toronto`.
//! 3. Optionally, a judge (an LLM behind the caller's client) decides answers that differ only in
//!    wording (`H2O` vs `water`, `7 days` in words the rules do not know); it is never asked when
//!    both sides are numbers or both are math, whose comparison is exact.
//!
//! Trainers call the reward in-process on whatever a policy wrote, so no response can crash it or
//! cost more than linear time: the parsers recurse at most `MAX_NESTING` levels (64) on any
//! thread's stack, an answer is math only within 4 KiB and 128 operators and parentheses
//! (evalexpr's trees recurse too), a number as a whole only within `MAX_NUMBER_LEN` (1 KiB), and
//! a prose answer's quantity is looked for in its first (after a marker) or last
//! `MAX_PROSE_WORDS` words (256). Real answers are far inside these bounds; what is outside still
//! compares as text.

mod expr;
mod quantity;
mod words;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use expr::Expr;
use quantity::{CURRENCY_SYMBOLS, Unit, compare_units, spellings};
pub use words::parse_number_words;

/// Deepest nesting the parsers follow (`\frac{\frac{..}{..}}{..}`, `((..))`, `\sqrt{\sqrt{..}}`):
/// they recurse once per level, and this bound, far above any real answer's, keeps a response of
/// 100 000 `(` from overflowing the stack of the thread that scores it. A deeper answer is neither
/// a number nor math (it still compares as text).
const MAX_NESTING: usize = 64;

/// Longest answer read as a number as a whole (`\text{1,000 dollars}`, `-\dfrac{3}{4}`), in
/// bytes; a longer one is prose, whose number, if any, is the embedded one.
const MAX_NUMBER_LEN: usize = 1024;

/// Most words of a number written in words (`nine hundred and ninety-nine thousand ...` has
/// fewer): a run of number words is read from each of its words in turn, so an unbounded run
/// (`one one one ...`) would be read in quadratic time.
const MAX_NUMBER_WORDS: usize = 32;

/// Most words of a prose answer searched for its quantity (see [`embedded_quantity`]).
const MAX_PROSE_WORDS: usize = 256;

/// How a score was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Equal after [`normalize_answer`].
    Exact,
    /// Compared as numbers (match or not).
    Numeric,
    /// A percentage against a plain number read as its fraction (`50%` = `0.5`).
    Percent,
    /// Quantities with units converted into a common unit (`5 km` = `5000 m`), or units of
    /// different dimensions or currencies (`12 kg` ≠ `12 km`).
    Unit,
    /// A number written in words on either side (`seven` = `7`, `third` = `3rd`).
    Words,
    /// Expressions evaluated at the same points (`x^2+2x+1` = `(x+1)^2`, `2\sqrt{2}` = `\sqrt{8}`).
    Symbolic,
    /// The truth is the distinguishing part of a longer name in the response (`George Washington`
    /// for `Washington`, `Paris, France` for `Paris`).
    Name,
    /// The truth ends the response's last sentence, after a verb or preposition (`It was the
    /// Eiffel Tower.`).
    Sentence,
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
        Err(e) => Score::invalid(e.to_string()),
    }
}

/// [`score_line`] of a line as read: one that is not UTF-8 (a rollout detokenized mid-character,
/// a corrupt file) is not JSON either, and scores 0 with `error` set like any bad line, so the
/// lines after it are still scored.
pub fn score_line_bytes(line: &[u8], judge: Option<&Judge<'_>>) -> Score {
    match std::str::from_utf8(line) {
        Ok(line) => score_line(line, judge),
        Err(e) => Score::invalid(format!("the line is not valid UTF-8: {e}")),
    }
}

impl Score {
    /// The score of an input line that could not be read.
    fn invalid(error: String) -> Score {
        Score {
            score: 0,
            method: Method::Invalid,
            extracted: String::new(),
            normalized_response: String::new(),
            normalized_truth: String::new(),
            error: Some(error),
        }
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
    let quantity = parse_quantity(&extracted).or_else(|| embedded_quantity(&extracted, source));
    let math = MathAnswer::parse(&extracted);
    // The span the name rule reads: the extracted answer, or the last sentence of a last line.
    let span = match source {
        Source::LastLine => last_sentence(&extracted),
        _ => extracted.as_str(),
    };
    let shown = |method: Method| match (method, quantity) {
        (Method::Numeric | Method::Percent | Method::Words, Some(q)) => format_number(q.value),
        _ => text.clone(),
    };
    let mut first: Option<(String, Method)> = None;
    // A judge is not asked where numbers or expressions on both sides already decided.
    let mut decided = false;
    for truth in truths {
        let truth = if truth.contains("####") || truth.contains("\\boxed") {
            extract(truth).0
        } else {
            truth.clone()
        };
        let truth_math = MathAnswer::parse(&truth);
        let (norm_truth, matched, method) = match parse_quantity(&truth) {
            Some(t) => {
                let verdict = match (quantity, &math) {
                    (Some(r), _) => Some(compare_quantities(t, r)),
                    // `\sqrt{2}`-style answers to a numeric truth: their value, within the
                    // evaluation tolerance.
                    (None, Some(m)) => m
                        .constant()
                        .map(|v| (expr::close(v, t.value), Method::Symbolic)),
                    (None, None) => None,
                };
                decided |= verdict.is_some();
                let (hit, method) = verdict.unwrap_or((false, Method::Numeric));
                (format_number(t.value), hit, method)
            }
            None => {
                let norm = normalize_answer(&truth);
                if !norm.is_empty() && norm == text {
                    (norm, true, Method::Exact)
                } else if let (Some(r), Some(t)) = (&math, &truth_math) {
                    let verdict = r.equivalent(t);
                    decided |= verdict.is_some();
                    (norm, verdict == Some(true), Method::Symbolic)
                } else {
                    match name_match(span, &truth) {
                        Some(method) => (norm, true, method),
                        None => (norm, false, Method::None),
                    }
                }
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
    let mut score = Score {
        score: 0,
        method,
        normalized_response: shown(method),
        extracted,
        normalized_truth,
        error: None,
    };
    if let Some(judge) = judge
        && !decided
        && !score.extracted.is_empty()
        && let Some(verdict) = judge(&score.extracted, &truths.join(" | "))
    {
        score.score = verdict as u8;
        score.method = Method::Judge;
    }
    score
}

/// A number with its unit, as written.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Quantity {
    value: f64,
    unit: Option<Unit>,
    /// Written in words (`seven`).
    words: bool,
}

/// Truth `t` against response `r`: whether they match, and by which rule (see the module doc).
fn compare_quantities(t: Quantity, r: Quantity) -> (bool, Method) {
    if let (Some(tu), Some(ru)) = (t.unit, r.unit)
        && let Some(equal) = compare_units((t.value, tu), (r.value, ru))
    {
        return (equal, Method::Unit);
    }
    let plain = if t.words || r.words {
        Method::Words
    } else {
        Method::Numeric
    };
    let percent = |q: Quantity| q.unit == Some(Unit::Percent);
    let plain_number = |q: Quantity| q.unit.is_none() || q.unit == Some(Unit::Label);
    let (p, other) = match (percent(t), percent(r)) {
        (true, false) if plain_number(r) => (t.value, r.value),
        (false, true) if plain_number(t) => (r.value, t.value),
        _ => return (same_number(t.value, r.value), plain),
    };
    if same_number(p, other) {
        (true, plain)
    } else {
        (same_number(p / 100.0, other), Method::Percent)
    }
}

/// An answer read as math: an expression, or an equation `lhs = rhs`.
struct MathAnswer {
    /// The left side of an equation, compacted (`y`, `f(x)`).
    lhs: Option<String>,
    rhs: Expr,
}

impl MathAnswer {
    fn parse(s: &str) -> Option<MathAnswer> {
        // Bounded as written, before any work on it (see `expr::MAX_LEN`).
        if s.len() > expr::MAX_LEN {
            return None;
        }
        let t = strip_latex(s);
        let t = t.trim().trim_end_matches('.').trim();
        match t.split_once('=') {
            Some((lhs, rhs)) if !rhs.contains('=') => {
                let lhs: String = lhs.chars().filter(|c| !c.is_whitespace()).collect();
                Some(MathAnswer {
                    lhs: (!lhs.is_empty()).then_some(lhs),
                    rhs: Expr::parse(rhs)?,
                })
            }
            Some(_) => None,
            None => Some(MathAnswer {
                lhs: None,
                rhs: Expr::parse(t)?,
            }),
        }
    }

    fn constant(&self) -> Option<f64> {
        self.rhs.constant()
    }

    /// `Some(equal)` when the two are comparable: expressions, equations with the same left side
    /// (`y = 2x+5` vs `y = 5+2x`), or an equation naming its variable (`f(x) = 2x+3`, at most six
    /// characters) against a bare expression.
    fn equivalent(&self, other: &MathAnswer) -> Option<bool> {
        match (&self.lhs, &other.lhs) {
            (Some(a), Some(b)) if a != b => None,
            (Some(l), None) | (None, Some(l)) if l.chars().count() > 6 => None,
            _ => Some(self.rhs.equivalent(&other.rhs)),
        }
    }
}

/// The last sentence of a line (see [`first_sentence`] for where sentences end).
fn last_sentence(line: &str) -> &str {
    let mut rest = line;
    loop {
        let first = first_sentence(rest);
        if first.len() >= rest.len() {
            return rest;
        }
        rest = &rest[first.len() + 2..];
    }
}

/// A word of a span, lowercase, with where it is and whether it was capitalized.
struct Word {
    lower: String,
    capital: bool,
    start: usize,
    end: usize,
}

fn words_of(s: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices().chain(std::iter::once((s.len(), ' '))) {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(st)) => {
                let w = &s[st..i];
                out.push(Word {
                    lower: w.to_lowercase(),
                    capital: w.chars().next().is_some_and(char::is_uppercase),
                    start: st,
                    end: i,
                });
                start = None;
            }
            _ => {}
        }
    }
    out
}

const ARTICLES: &[&str] = &["a", "an", "the"];

/// Words after which a sentence states its answer: "It was X", "written by X", "is in X".
const LEAD_INS: &[&str] = &[
    "is", "was", "are", "were", "be", "been", "s", "by", "called", "named", "titled", "as", "in",
    "at", "on", "from", "to",
];

/// Words that may follow a place's name without changing it ("the Volga River" for "Volga").
const FEATURES: &[&str] = &[
    "river",
    "desert",
    "ocean",
    "sea",
    "lake",
    "mountains",
    "mountain",
    "island",
    "islands",
    "bay",
    "falls",
    "canal",
    "strait",
    "gulf",
    "peninsula",
    "valley",
];

const NEGATIONS: &[&str] = &["not", "never", "no", "t", "nor", "neither"];

/// The name rule and the last-sentence rule (see the module doc): whether `span` states the
/// truth as its final phrase, possibly inside a longer name; None when it does not.
fn name_match(span: &str, truth: &str) -> Option<Method> {
    // A name has letters: `[2,5]` is not one, whatever its digits.
    if !truth.chars().any(char::is_alphabetic) {
        return None;
    }
    let truth: Vec<String> = words_of(truth)
        .into_iter()
        .map(|w| w.lower)
        .filter(|w| !ARTICLES.contains(&w.as_str()))
        .collect();
    let words = words_of(span);
    let n = truth.len();
    if n == 0 || words.len() < n {
        return None;
    }
    // The last occurrence of the truth's words, in order and adjacent.
    let j = (0..=words.len() - n)
        .rev()
        .find(|&j| (0..n).all(|k| words[j + k].lower == truth[k]))?;
    let after = &words[j + n..];
    let after_ok = after.is_empty()
        || after.iter().all(|w| FEATURES.contains(&w.lower.as_str()))
        || (span[words[j + n - 1].end..after[0].start].contains(',')
            && after.iter().all(|w| w.capital));
    if !after_ok {
        return None;
    }
    // Before it: capitalized name words (given names, titles), then an article.
    let mut i = j;
    while i > 0
        && words[i - 1].capital
        && !ARTICLES.contains(&words[i - 1].lower.as_str())
        && !LEAD_INS.contains(&words[i - 1].lower.as_str())
    {
        i -= 1;
    }
    let extended = i < j || !after.is_empty();
    if i > 0 && ARTICLES.contains(&words[i - 1].lower.as_str()) {
        i -= 1;
    }
    let stated = i == 0
        || (LEAD_INS.contains(&words[i - 1].lower.as_str())
            && !words[..i]
                .iter()
                .any(|w| NEGATIONS.contains(&w.lower.as_str())));
    match (stated, extended) {
        (false, _) => None,
        (true, true) => Some(Method::Name),
        (true, false) => Some(Method::Sentence),
    }
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
    // Parentheses open before `counted`, counted as the search moves on (counting from the start
    // of the line at each ". " was quadratic in their number).
    let (mut counted, mut open) = (0, 0i64);
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
        for b in line[counted..i].bytes() {
            match b {
                b'(' => open += 1,
                b')' => open -= 1,
                _ => {}
            }
        }
        counted = i;
        if next_starts && open <= 0 && !initial && !ABBREVIATIONS.contains(&lower.as_str()) {
            return &line[..i];
        }
        from = i + 2;
    }
    line
}

/// Replaces `\cmd{X}` by `X` for each command, braces balanced; a command whose brace never
/// closes is kept as written. One pass matches the braces (a stack), and the output is written
/// once without the dropped openers and closers: rewriting the string per command found was
/// quadratic on `\text{\text{…`.
fn unwrap_commands(s: &str, commands: &[&str]) -> String {
    // Byte ranges to drop: each unwrapped `\cmd{` and its `}`.
    let mut dropped: Vec<(usize, usize)> = Vec::new();
    // Open braces: each one's `\cmd{` when it came with a command, else None.
    let mut open: Vec<Option<(usize, usize)>> = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                let opener = commands.iter().find(|cmd| {
                    s[i..]
                        .strip_prefix(**cmd)
                        .is_some_and(|rest| rest.starts_with('{'))
                });
                if let Some(cmd) = opener {
                    let end = i + cmd.len() + 1;
                    open.push(Some((i, end)));
                    i = end;
                    continue;
                }
            }
            b'{' => open.push(None),
            b'}' => {
                if let Some(Some(opener)) = open.pop() {
                    dropped.push(opener);
                    dropped.push((i, i + 1));
                }
            }
            _ => {}
        }
        i += 1;
    }
    if dropped.is_empty() {
        return s.to_string();
    }
    dropped.sort_unstable();
    let mut out = String::with_capacity(s.len());
    let mut from = 0;
    for (start, end) in dropped {
        out.push_str(&s[from..start]);
        from = end;
    }
    out.push_str(&s[from..]);
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

/// The value of an answer that is a number as a whole, units and currency aside (see the module
/// doc); None for anything else.
pub fn parse_number(s: &str) -> Option<f64> {
    parse_quantity(s).map(|q| q.value)
}

/// An answer that is a number as a whole, with its unit or currency.
fn parse_quantity(s: &str) -> Option<Quantity> {
    if s.len() > MAX_NUMBER_LEN {
        return None;
    }
    // `strip_latex` drops `$` as a math delimiter; a lone `$` (or `\$`) is a dollar sign.
    let dollars = s.contains("\\$") || s.matches('$').count() % 2 == 1;
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
    // A leading sign before a currency symbol: "-$5".
    let mut neg = false;
    let mut unit = None;
    if let Some(rest) = t.strip_prefix('-')
        && CURRENCY_SYMBOLS
            .iter()
            .any(|(sym, _)| rest.starts_with(sym))
    {
        neg = true;
        t = rest;
    }
    if let Some((rest, code)) = CURRENCY_SYMBOLS
        .iter()
        .find_map(|(sym, code)| t.strip_prefix(sym).map(|rest| (rest.trim_start(), code)))
    {
        t = rest;
        unit = Some(Unit::Money(code, 1.0));
    }
    for (spelling, u) in spellings() {
        if let Some(rest) = t.strip_suffix(spelling) {
            let rest = rest.trim_end();
            // A unit is a word of its own or a symbol: "5 m" and "5m", not "5 mm" read as m.
            if rest.ends_with(|c: char| c.is_ascii_digit() || c == '}')
                || rest.len() < t.len() - spelling.len()
                || !spelling.chars().all(|c| c.is_alphabetic())
            {
                // "$5 dollars" keeps its currency; "$5 kg" is not an answer.
                match (unit, u) {
                    (None, _) => unit = Some(*u),
                    (Some(_), Unit::Money(..) | Unit::Label) => {}
                    (Some(_), _) => return None,
                }
                t = rest;
                break;
            }
        }
    }
    if dollars && unit.is_none() {
        unit = Some(Unit::Money("USD", 1.0));
    }
    let body = t.trim();
    let (v, words) = match parse_plain(body).or_else(|| scaled(body)) {
        Some(v) => (v, false),
        None => (parse_number_words(body)?, true),
    };
    Some(Quantity {
        value: if neg { -v } else { v },
        unit,
        words,
    })
}

/// Digits followed by a scale word: `2.5 million`, `3 dozen`.
fn scaled(t: &str) -> Option<f64> {
    let (num, word) = t.rsplit_once(' ')?;
    Some(parse_plain(num.trim())? * words::scale(word)?)
}

/// A number without units: decimal (thousands commas allowed), scientific (`1e3`,
/// `1.5 \times 10^{3}`), a power (`10^6`, `2^{-1}`), a fraction (`3/4`, `\frac{3}{4}`), a mixed
/// number (`2 1/2`, `2\frac{1}{2}`), an ordinal in digits (`3rd`), with an optional sign.
fn parse_plain(t: &str) -> Option<f64> {
    plain_within(&t.replace('−', "-"), 0)
}

/// [`parse_plain`] at `depth` fractions deep. Signs are read in a loop and fractions nest at most
/// [`MAX_NESTING`] deep: no answer (`-----…5`, `\frac{\frac{…`) recurses with its length.
fn plain_within(t: &str, depth: usize) -> Option<f64> {
    let mut t = t;
    let mut negative = false;
    while let Some(rest) = t.strip_prefix(['-', '+']) {
        negative ^= t.starts_with('-');
        t = rest.trim_start();
    }
    if t.is_empty() || depth > MAX_NESTING {
        return None;
    }
    let v = unsigned_plain(t, depth)?;
    Some(if negative { -v } else { v })
}

/// [`parse_plain`] of a number without a leading sign.
fn unsigned_plain(t: &str, depth: usize) -> Option<f64> {
    if let Some(rest) = t.strip_prefix("\\frac") {
        let (num, after) = brace_group(rest)?;
        let (den, after) = brace_group(after)?;
        if !after.trim().is_empty() {
            return None;
        }
        return divide(
            plain_within(num.trim(), depth + 1)?,
            plain_within(den.trim(), depth + 1)?,
        );
    }
    // A mixed number: a whole number, then a fraction of whole numbers. (`2\sqrt{2}` is a
    // product, but a fraction after an integer is how MATH and recipes write 2½.)
    if let Some(i) = t
        .find("\\frac")
        .or_else(|| t.find(' ').filter(|_| t.contains('/')))
    {
        let (whole, frac) = (t[..i].trim(), t[i..].trim());
        let is_int = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let frac_ints = frac
            .trim_start_matches("\\frac")
            .split(['{', '}', '/'])
            .filter(|p| !p.is_empty())
            .all(is_int);
        if is_int(whole)
            && frac_ints
            && let Some(f) = plain_within(frac, depth + 1).filter(|f| *f < 1.0)
        {
            return Some(whole.parse::<f64>().ok()? + f);
        }
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
    if let Some((base, exp)) = t.split_once('^') {
        let exp = exp.trim();
        let exp = exp
            .strip_prefix('{')
            .and_then(|e| e.strip_suffix('}'))
            .unwrap_or(exp);
        let e = match exp.trim().strip_prefix('-') {
            Some(e) => -parse_decimal(e)?,
            None => parse_decimal(exp)?,
        };
        let v = parse_decimal(base.trim())?.powf(e);
        return v.is_finite().then_some(v);
    }
    if let Some((num, den)) = t.split_once('/') {
        return divide(parse_decimal(num.trim())?, parse_decimal(den.trim())?);
    }
    // "3rd", "21st": a place, read as its number.
    for suffix in ["st", "nd", "rd", "th"] {
        if let Some(digits) = t.strip_suffix(suffix)
            && !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
        {
            return digits.parse().ok();
        }
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

/// The quantity inside a prose answer ("She makes $18 every day.", "The box weighs 2 kg.",
/// "he finished in third place"): the first after an answer marker, else the last; after the
/// last `=` when there is one ("9 * 2 = $18 a day"). A number takes the unit words after it
/// (up to three: "60 miles per hour") and a fraction after a whole number ("1 3/4 cups"); number
/// words count ("forty-two", "three million"). None for a boxed answer or math (`3x - 2`,
/// `\sqrt{3}`): a number inside an expression is not its value.
fn embedded_quantity(text: &str, source: Source) -> Option<Quantity> {
    if source == Source::Boxed {
        return None;
    }
    // An escaped dollar is prose, not math.
    let text = text.replace("\\$", "$");
    let tail = text.rsplit('=').next().unwrap_or(&text);
    let math = |c: char| "\\^{}[]()+*<>|".contains(c);
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
    // A long answer is read where its quantity is: its first words after a marker, the last
    // ones of a last line (each word costs a few readings).
    let words: Vec<&str> = tail.split_whitespace().collect();
    let words = match source {
        Source::Marker | Source::Hashes => &words[..words.len().min(MAX_PROSE_WORDS)],
        Source::LastLine | Source::Boxed => &words[words.len().saturating_sub(MAX_PROSE_WORDS)..],
    };
    let tokens: Vec<String> = words
        .iter()
        .map(|w| {
            w.trim_end_matches(['.', ',', ';', ':', '!', '?', '"', '\''])
                .trim_start_matches(['"', '\''])
                .to_string()
        })
        .collect();
    let lower: Vec<String> = tokens.iter().map(|t| t.to_lowercase()).collect();
    let is_fraction = |w: &str| {
        w.split_once('/').is_some_and(|(a, b)| {
            [a, b]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
        })
    };
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let w = tokens[i].as_str();
        // "3x" or "v2" is not a number; "$18", "1,000", "-10", "50%" and "12km" are.
        let head = if w.starts_with(|c: char| c.is_ascii_digit() || "-$€£".contains(c)) {
            let mixed = w.bytes().all(|b| b.is_ascii_digit())
                && tokens.get(i + 1).is_some_and(|n| is_fraction(n));
            1 + usize::from(mixed)
        } else {
            // A run of number words; "a" only before a scale ("a dozen"), "and" only inside.
            let mut j = i;
            while j < tokens.len() && j - i < MAX_NUMBER_WORDS {
                let l = lower[j].as_str();
                let next_scale = lower.get(j + 1).is_some_and(|n| words::scale(n).is_some());
                let inside = j > i && j + 1 < tokens.len() && words::is_number_word(&lower[j + 1]);
                if words::is_number_word(l)
                    || (l == "a" && j == i && next_scale)
                    || (l == "and" && inside)
                {
                    j += 1;
                } else {
                    break;
                }
            }
            j - i
        };
        if head == 0 {
            i += 1;
            continue;
        }
        // The longest reading with unit words after the number, else the number alone.
        let reading = (0..=3).rev().find_map(|k| {
            let end = i + head + k;
            if end > tokens.len() {
                return None;
            }
            let q = parse_quantity(&tokens[i..end].join(" "))?;
            (k == 0 || q.unit.is_some()).then_some((q, end))
        });
        match reading {
            Some((q, end)) => {
                found.push(q);
                if matches!(source, Source::Marker | Source::Hashes) {
                    break;
                }
                i = end;
            }
            None => i += 1,
        }
    }
    match source {
        Source::Marker | Source::Hashes => found.first().copied(),
        Source::LastLine | Source::Boxed => found.last().copied(),
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
        assert_eq!(score("Answer: the Eiffel Tower!", "eiffel tower").score, 1);
    }

    fn verdict(response: &str, truth: &str) -> (u8, Method) {
        let s = score(response, truth);
        (s.score, s.method)
    }

    #[test]
    fn percentages_equal_the_number_and_the_fraction() {
        use Method::{Numeric, Percent};
        assert_eq!(verdict("The answer is 50%.", "0.5"), (1, Percent));
        assert_eq!(verdict("\\boxed{0.5}", "50\\%"), (1, Percent));
        assert_eq!(verdict("Answer: 12.5%", "1/8"), (1, Percent));
        assert_eq!(verdict("The answer is 50%.", "50"), (1, Numeric));
        assert_eq!(verdict("Answer: 25 percent", "25%"), (1, Numeric));
        // Two plain numbers never compare across a factor of 100; two percentages neither.
        assert_eq!(verdict("Answer: 0.125", "12.5"), (0, Numeric));
        assert_eq!(verdict("\\boxed{0.5\\%}", "50%"), (0, Numeric));
        assert_eq!(verdict("Answer: 20%", "25%"), (0, Numeric));
        assert_eq!(verdict("Answer: 5%", "0.5"), (0, Percent));
    }

    #[test]
    fn number_formats_powers_and_mixed_numbers() {
        for (response, truth) in [
            ("\\boxed{10^6}", "1,000,000"),
            ("Final answer: 1000000", "10^{6}"),
            ("\\boxed{2^{-1}}", "0.5"),
            ("Answer: 3 \\times 10^8", "300,000,000"),
            ("\\boxed{2\\frac{1}{2}}", "5/2"),
            ("Answer: 1 3/4 cups", "1.75"),
            ("\\boxed{\\frac{7}{4}}", "1 3/4"),
            ("Answer: 2.5 million", "2,500,000"),
        ] {
            assert_eq!(verdict(response, truth).0, 1, "{response} = {truth}");
        }
        for (response, truth) in [
            ("\\boxed{-3}", "3"),
            ("\\boxed{0.33}", "1/3"),
            ("\\boxed{1898}", "1889"),
            ("\\boxed{10^5}", "1,000,000"),
            ("\\boxed{2\\frac{1}{3}}", "2.5"),
            ("Answer: 25 million", "2,500,000"),
            ("Answer: 1000001", "1,000,000"),
        ] {
            assert_eq!(verdict(response, truth).0, 0, "{response} != {truth}");
        }
        assert_eq!(parse_number("3 / 4"), Some(0.75));
        assert_eq!(parse_number("3rd"), Some(3.0));
    }

    #[test]
    fn number_words_both_ways() {
        use Method::Words;
        assert_eq!(verdict("The answer is seven.", "7"), (1, Words));
        assert_eq!(verdict("Answer: 7", "seven"), (1, Words));
        assert_eq!(verdict("He finished in third place.", "3rd"), (1, Words));
        assert_eq!(verdict("The final count is forty-two.", "42"), (1, Words));
        assert_eq!(
            verdict("There are three million people.", "3,000,000"),
            (1, Words)
        );
        assert_eq!(verdict("The answer is seventy.", "7"), (0, Words));
        assert_eq!(verdict("Answer: fifth", "15th"), (0, Words));
        assert_eq!(verdict("The count is twenty-four.", "42"), (0, Words));
    }

    #[test]
    fn units_convert_within_a_dimension_only() {
        use Method::{Numeric, Unit};
        assert_eq!(verdict("The answer is 5 km.", "5000 m"), (1, Unit));
        assert_eq!(verdict("The box weighs 2 kg.", "2000 g"), (1, Unit));
        assert_eq!(verdict("Water boils at 212°F.", "100^\\circ C"), (1, Unit));
        assert_eq!(
            verdict("The car travels at 60 mph.", "60 miles per hour"),
            (1, Unit)
        );
        assert_eq!(verdict("Answer: 250 cents", "$2.50"), (1, Unit));
        assert_eq!(verdict("Answer: 7 days", "one week"), (1, Unit));
        assert_eq!(verdict("Answer: 12 km", "12"), (1, Numeric));
        assert_eq!(verdict("Answer: 500 m", "5 km"), (0, Unit));
        assert_eq!(verdict("Answer: 12 kg", "12 km"), (0, Unit));
        assert_eq!(verdict("It costs €5.", "$5"), (0, Unit));
        assert_eq!(verdict("It costs \\$5.", "5 dollars"), (1, Unit));
        assert_eq!(verdict("So $x = 5$ apples.", "5"), (1, Numeric));
        assert_eq!(verdict("Answer: 100°F", "100°C"), (0, Unit));
    }

    #[test]
    fn expressions_compare_by_value() {
        use Method::Symbolic;
        assert_eq!(verdict("\\boxed{x^2+2x+1}", "(x+1)^2"), (1, Symbolic));
        assert_eq!(verdict("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"), (1, Symbolic));
        assert_eq!(verdict("\\boxed{y = 2x + 5}", "y=5+2x"), (1, Symbolic));
        assert_eq!(verdict("$f(x) = \\boxed{2x+3}$", "3+2x"), (1, Symbolic));
        assert_eq!(
            verdict("\\boxed{\\sqrt{2}}", "1.4142135623730951"),
            (1, Symbolic)
        );
        assert_eq!(verdict("\\boxed{x^2+2x-1}", "(x+1)^2"), (0, Symbolic));
        assert_eq!(verdict("\\boxed{4\\sqrt{2}}", "\\sqrt{8}"), (0, Symbolic));
        assert_eq!(verdict("\\boxed{y = 2x - 5}", "y=2x+5"), (0, Symbolic));
        assert_eq!(verdict("\\boxed{\\sqrt{2}}", "1.414"), (0, Symbolic));
        // Math decided: no judge is asked.
        let yes = |_: &str, _: &str| Some(true);
        let s = score_aliases("\\boxed{x^3}", &["x^2".into()], Some(&yes));
        assert_eq!((s.score, s.method), (0, Symbolic));
    }

    #[test]
    fn names_match_when_the_truth_is_the_distinguishing_part() {
        use Method::Name;
        assert_eq!(
            verdict("It was George Washington.", "Washington"),
            (1, Name)
        );
        assert_eq!(
            verdict(
                "Answer: Dr. Martin Luther King Jr.",
                "Martin Luther King Jr."
            ),
            (1, Name)
        );
        assert_eq!(verdict("Answer: Paris, France", "Paris"), (1, Name));
        assert_eq!(
            verdict("The longest river is the Volga River.", "Volga"),
            (1, Name)
        );
        assert_eq!(verdict("Answer: Mount Everest", "Everest"), (1, Name));
        // Never the reverse, and never another person of the same surname.
        assert_eq!(verdict("Answer: Washington", "George Washington").0, 0);
        assert_eq!(
            verdict("It was Denzel Washington.", "George Washington").0,
            0
        );
        assert_eq!(verdict("Answer: Ian Fleming", "Alexander Fleming").0, 0);
        assert_eq!(verdict("Answer: Paris Hilton", "Paris").0, 0);
        assert_eq!(
            verdict("Answer: the Eiffel tower in Paris", "Eiffel Tower").0,
            0
        );
        assert_eq!(verdict("Answer: Queen Elizabeth I", "Elizabeth II").0, 0);
        assert_eq!(verdict("The set is (2, 5).", "[2,5]").0, 0);
    }

    #[test]
    fn a_last_sentence_states_its_answer_after_a_verb() {
        use Method::Sentence;
        assert_eq!(
            verdict("It was the Eiffel Tower.", "Eiffel Tower"),
            (1, Sentence)
        );
        assert_eq!(
            verdict("It is the Eiffel Tower!", "eiffel tower"),
            (1, Sentence)
        );
        assert_eq!(
            verdict(
                "Long reasoning.\nMany guess Sydney, but the capital is Canberra.",
                "Canberra"
            ),
            (1, Sentence)
        );
        assert_eq!(
            verdict("Tom Sawyer was written by Mark Twain.", "Mark Twain"),
            (1, Sentence)
        );
        assert_eq!(
            verdict("It was the Statue of Liberty.", "Eiffel Tower").0,
            0
        );
        assert_eq!(
            verdict("The capital of Canada is Ottawa, not Toronto.", "Toronto").0,
            0
        );
        assert_eq!(verdict("It is definitely not Paris.", "Paris").0, 0);
        assert_eq!(
            verdict("Paris is lovely. The capital is Lyon.", "Paris").0,
            0
        );
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
    fn wrappers_unwrap_nested_and_an_unclosed_one_stays() {
        let cmds = ["\\text", "\\textbf"];
        assert_eq!(unwrap_commands("\\text{a \\textbf{b}} c", &cmds), "a b c");
        assert_eq!(unwrap_commands("{\\text{x}}", &cmds), "{x}");
        assert_eq!(unwrap_commands("\\text{a} \\text{b", &cmds), "a \\text{b");
        assert_eq!(
            first_sentence("It is (approx. 5). Next."),
            "It is (approx. 5)"
        );
    }

    /// Runs `f` on a thread with a 256 KiB stack (an eighth of a Rust thread's default): a
    /// trainer scores on threads of its own, so recursion that grows with the response must crash
    /// here.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(f)
            .unwrap()
            .join()
            .expect("the reward returned without crashing")
    }

    /// 200 KB responses built to nest, or to repeat what a rule rescans, and answers just inside
    /// the bounds (the deepest, longest math still evaluated): each is scored as a response and as
    /// a truth on a small stack. Every pass over them is linear: a quadratic one takes seconds at
    /// this size, where the whole test takes about one (unoptimized).
    #[test]
    fn deep_or_long_answers_score_on_a_small_stack() {
        const N: usize = 100_000;
        let nested = |open: &str, inner: &str, close: &str, k: usize| {
            format!("{}{inner}{}", open.repeat(k), close.repeat(k))
        };
        let answers = vec![
            "(".repeat(2 * N),
            nested("(", "x", ")", N),
            nested("{", "1", "}", N),
            nested("\\frac{", "1", "}{2}", N / 5),
            "\\frac{".repeat(N / 3),
            nested("\\sqrt{", "2", "}", N / 4),
            nested("\\sqrt[", "2", "]{2}", N / 5),
            nested("\\boxed{", "1", "}", N / 4),
            format!("\\boxed{{{}}}", nested("(", "1", ")", N)),
            format!("\\boxed{{{}}}", nested("\\frac{", "1", "}{2}", N / 5)),
            "\\boxed{".repeat(N / 4),
            nested("\\text{", "5", "}", N / 4),
            format!("{}5", "-".repeat(2 * N)),
            format!("Answer: {}5", "- ".repeat(N)),
            format!("The answer is {}", "one ".repeat(N / 2)),
            "He said no. ".repeat(N / 6),
            "(a. ".repeat(N / 2),
            format!("Answer: {}1", "1+".repeat(N)),
            format!("\\boxed{{{}x}}", "x^".repeat(N)),
        ];
        let n = answers.len();
        let scores = on_small_stack(move || {
            answers
                .iter()
                .flat_map(|a| [score(a, "1"), score("1", a)])
                .map(|s| s.score)
                .collect::<Vec<_>>()
        });
        assert_eq!(scores.len(), 2 * n);
        assert!(scores.iter().all(|s| *s <= 1));
    }

    /// Math just inside the bounds is still evaluated, on a small stack (evalexpr's trees are as
    /// deep as they get there); one step past them it is not math.
    #[test]
    fn math_at_the_bounds_evaluates_on_a_small_stack() {
        let boxed = |s: String| format!("\\boxed{{{s}}}");
        let nested = |open: &str, inner: &str, close: &str, k: usize| {
            boxed(format!("{}{inner}{}", open.repeat(k), close.repeat(k)))
        };
        let (nodes, depth) = (expr::MAX_NODES, MAX_NESTING);
        // (answer, truth, score): each operator and parenthesis is a node of evalexpr's tree.
        let cases = vec![
            (boxed(format!("{}1", "1+".repeat(nodes))), "129", 1),
            (boxed(format!("{}1", "1+".repeat(nodes + 1))), "130", 0),
            (boxed(format!("{}(1)", "-".repeat(nodes - 1))), "-1", 1),
            (boxed(format!("{}(1)", "-".repeat(nodes + 1))), "-1", 0),
            (boxed(format!("{}2", "2^".repeat(nodes / 2 - 1))), "x", 0),
            (nested("(", "1", ")", depth - 1), "1", 1),
            (nested("(", "1", ")", depth), "1", 0),
            (nested("-(", "1", ")", nodes / 2 - 1), "-1", 1),
            (nested("\\frac{", "1", "}{2}", nodes / 4 - 1), "2^{-31}", 1),
            (nested("\\sqrt[3]{", "x", "}", nodes / 6), "x", 0),
        ];
        let want: Vec<u8> = cases.iter().map(|c| c.2).collect();
        let got = on_small_stack(move || {
            cases
                .iter()
                .map(|(answer, truth, _)| score(answer, truth).score)
                .collect::<Vec<_>>()
        });
        assert_eq!(got, want);
    }

    #[test]
    fn bad_lines_still_get_an_output() {
        let s = score_line("{\"response\": 1}", None);
        assert_eq!((s.score, s.method), (0, Method::Invalid));
        assert!(s.error.is_some());
        let s = score_line(r#"{"response": "42", "ground_truth": [41, "42"]}"#, None);
        assert_eq!((s.score, s.method), (1, Method::Numeric));
        let s = score_line_bytes(
            b"{\"response\": \"4\xff2\", \"ground_truth\": \"42\"}",
            None,
        );
        assert_eq!((s.score, s.method), (0, Method::Invalid));
        assert!(s.error.unwrap().contains("not valid UTF-8"));
        let s = score_line_bytes(br#"{"response": "42", "ground_truth": "42"}"#, None);
        assert_eq!(s.score, 1);
    }
}
