//! Tolerant extraction of a JSON answer from an LLM's text reply.
//!
//! Servers that honour `response_format` return bare JSON; the others (and
//! models that ignore the instruction) wrap it in Markdown code fences, put
//! prose before or after it, or prefix a `<think>…</think>` reasoning block.
//! [`parse_json_answer`] tries, in order:
//!
//! 1. the whole reply (after stripping reasoning blocks) as JSON;
//! 2. the body of each Markdown code fence (```` ```json ```` or bare ```` ``` ````);
//! 3. every balanced `{…}` / `[…]` span found by bracket matching that respects
//!    JSON strings and escapes, first one that parses wins.
//!
//! Each candidate that fails strict parsing gets one repair attempt that drops
//! trailing commas before `}` / `]` (a frequent model slip). Only objects and
//! arrays are accepted: a bare number or string is not an answer.
//!
//! An answer cut by the token limit (`finish_reason: length`) is a last case:
//! [`parse_truncated_object`] keeps the members of the top-level object that
//! were *complete* before the cut and drops the one being written. A small
//! model under a grammar writes the verdict first and then rambles in a free
//! `reason` until the limit: the verdict survives, a half-written field never
//! does (a cut question is dropped, so the stage sees it missing).

use serde_json::Value;

/// serde_json's recursion limit: a span nested deeper never parses, so bracket matching gives up
/// there. Matching every opener to its end was quadratic on deep nesting (40 000 levels of
/// `{"a":`: 10.9 s); bounded, a character is scanned once per enclosing bracket, at most this many
/// times.
const MAX_DEPTH: usize = 128;

/// Follows JSON's structure character by character: the nesting depth outside strings, with
/// escapes inside them skipped. Shared by the readers that must know where an object ends.
#[derive(Default)]
pub(crate) struct JsonDepth {
    pub depth: usize,
    in_string: bool,
    escaped: bool,
}

impl JsonDepth {
    /// Takes `c`; returns it when it is structure (outside a string), else `None`. `depth`
    /// counts the open `{`/`[` after it.
    pub fn step(&mut self, c: char) -> Option<char> {
        if self.in_string {
            match c {
                _ if self.escaped => self.escaped = false,
                '\\' => self.escaped = true,
                '"' => self.in_string = false,
                _ => {}
            }
            return None;
        }
        match c {
            '"' => self.in_string = true,
            '{' | '[' => self.depth += 1,
            '}' | ']' => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
        Some(c)
    }
}

/// The complete members of a top-level JSON object cut short: the object's
/// text up to its last member boundary, closed. `None` when no complete
/// member precedes the cut.
pub fn parse_truncated_object(text: &str) -> Option<Value> {
    let text = strip_reasoning(text.trim_start_matches('\u{feff}'));
    let start = text.find('{')?;
    let body = &text[start..];
    let mut json = JsonDepth::default();
    let mut cuts = Vec::new();
    for (i, c) in body.char_indices() {
        match json.step(c) {
            Some('}' | ']') if json.depth == 0 => return None, // complete: not a truncation
            Some(',') if json.depth == 1 => cuts.push(i),
            _ => {}
        }
    }
    cuts.iter().rev().find_map(|&cut| {
        let candidate = format!("{}}}", &body[..cut]);
        serde_json::from_str::<Value>(&candidate)
            .ok()
            .filter(Value::is_object)
    })
}

/// Parses the JSON object (or array) contained in `text`, tolerating code
/// fences, reasoning blocks, surrounding prose and trailing commas.
///
/// Returns `None` when no JSON object or array can be found.
pub fn parse_json_answer(text: &str) -> Option<Value> {
    let text = strip_reasoning(text.trim_start_matches('\u{feff}'));
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return None;
    }
    if let Some(v) = parse_candidate(trimmed) {
        return Some(v);
    }
    for body in code_fence_bodies(trimmed) {
        let body = body.trim();
        if let Some(v) = parse_candidate(body) {
            return Some(v);
        }
        if let Some(v) = first_balanced_json(body) {
            return Some(v);
        }
    }
    first_balanced_json(trimmed)
}

/// Strict parse of one candidate, then a retry with trailing commas removed.
fn parse_candidate(s: &str) -> Option<Value> {
    let first = s.as_bytes().first()?;
    if *first != b'{' && *first != b'[' {
        return None;
    }
    match serde_json::from_str::<Value>(s) {
        Ok(v) if v.is_object() || v.is_array() => Some(v),
        Ok(_) => None,
        Err(_) => {
            let repaired = remove_trailing_commas(s)?;
            match serde_json::from_str::<Value>(&repaired) {
                Ok(v) if v.is_object() || v.is_array() => Some(v),
                _ => None,
            }
        }
    }
}

/// Removes `<think>…</think>` (and `<thinking>…</thinking>`) blocks; an
/// unterminated block swallows the rest of the text.
fn strip_reasoning(text: &str) -> std::borrow::Cow<'_, str> {
    const TAGS: [(&str, &str); 2] = [("<think>", "</think>"), ("<thinking>", "</thinking>")];
    if !TAGS.iter().any(|(open, _)| text.contains(open)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'outer: loop {
        // Earliest opening tag of any kind.
        let next = TAGS
            .iter()
            .filter_map(|(open, close)| rest.find(open).map(|i| (i, *open, *close)))
            .min_by_key(|(i, _, _)| *i);
        match next {
            None => {
                out.push_str(rest);
                break 'outer;
            }
            Some((i, open, close)) => {
                out.push_str(&rest[..i]);
                let after = &rest[i + open.len()..];
                match after.find(close) {
                    Some(j) => rest = &after[j + close.len()..],
                    None => break 'outer,
                }
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Bodies of Markdown code fences (```` ``` ```` with an optional info string
/// such as `json`). An unterminated fence yields the rest of the text.
fn code_fence_bodies(text: &str) -> Vec<&str> {
    let mut bodies = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after_ticks = &rest[start + 3..];
        // The info string runs to the end of the line; a fence written on one
        // line (```{"a":1}```) has no info string.
        let body_start = match after_ticks.find('\n') {
            Some(nl) if !after_ticks[..nl].contains('{') && !after_ticks[..nl].contains('[') => {
                nl + 1
            }
            _ => after_ticks
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
                .count(),
        };
        let body = &after_ticks[body_start..];
        match body.find("```") {
            Some(end) => {
                bodies.push(&body[..end]);
                rest = &body[end + 3..];
            }
            None => {
                bodies.push(body);
                break;
            }
        }
    }
    bodies
}

/// Scans `text` for balanced `{…}` / `[…]` spans (bracket matching that skips
/// over JSON strings and their escapes) and returns the first one that
/// parses. Objects are preferred: arrays are only tried when no object span
/// parses, so `see [1] below: {"a": 1}` yields the object.
///
/// A bracket still open at the end of the text means the answer was cut off
/// (e.g. `finish_reason = "length"`): the scan stops there rather than return
/// a fragment nested inside the truncated value.
fn first_balanced_json(text: &str) -> Option<Value> {
    let bytes = text.as_bytes();
    let mut first_array: Option<Value> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'{' || b == b'[' {
            match matching_close(bytes, i) {
                Span::Closed(end) => {
                    if let Some(v) = parse_candidate(&text[i..=end]) {
                        if v.is_object() {
                            return Some(v);
                        }
                        if first_array.is_none() {
                            first_array = Some(v);
                        }
                        // Skip over the array: objects nested in it are part of it.
                        i = end + 1;
                        continue;
                    }
                }
                Span::Mismatched | Span::TooDeep => {}
                Span::Unterminated => break,
            }
        }
        i += 1;
    }
    first_array
}

/// Outcome of bracket matching from an opening bracket.
#[derive(Debug, PartialEq, Eq)]
enum Span {
    /// Index of the matching closing bracket.
    Closed(usize),
    /// A closing bracket of the wrong kind came first.
    Mismatched,
    /// The text ended with the bracket (or a string inside it) still open.
    Unterminated,
    /// Brackets nest deeper than [`MAX_DEPTH`] inside it: no parse could succeed.
    TooDeep,
}

/// Matches the bracket at `open`. Brackets inside strings do not count; a
/// backslash escapes the next character inside a string. Gives up past
/// [`MAX_DEPTH`] levels.
fn matching_close(bytes: &[u8], open: usize) -> Span {
    let mut stack: Vec<u8> = Vec::with_capacity(8);
    let mut in_string = false;
    let mut escaped = false;
    for (k, &b) in bytes.iter().enumerate().skip(open) {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' if stack.len() == MAX_DEPTH => return Span::TooDeep,
            b'{' => stack.push(b'}'),
            b'[' => stack.push(b']'),
            b'}' | b']' => {
                if stack.pop() != Some(b) {
                    return Span::Mismatched;
                }
                if stack.is_empty() {
                    return Span::Closed(k);
                }
            }
            _ => {}
        }
    }
    Span::Unterminated
}

/// Drops commas that are followed (after whitespace) by `}` or `]`, outside
/// strings. Returns `None` when there was nothing to remove.
fn remove_trailing_commas(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    let mut in_string = false;
    let mut escaped = false;
    let mut last = 0;
    for (k, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        if b == b'"' {
            in_string = true;
        } else if b == b',' {
            let next = bytes[k + 1..].iter().find(|c| !c.is_ascii_whitespace());
            if matches!(next, Some(b'}') | Some(b']')) {
                out.push_str(&s[last..k]);
                last = k + 1;
                changed = true;
            }
        }
    }
    if !changed {
        return None;
    }
    out.push_str(&s[last..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_objects_keep_their_complete_members_only() {
        let cut = r#"{ "qualified": true, "reason" : "1.1.1.1.1.1.1.1.1.1"#;
        assert_eq!(parse_json_answer(cut), None);
        assert_eq!(
            parse_truncated_object(cut),
            Some(serde_json::json!({"qualified": true}))
        );
        // A cut inside the question: the question is dropped, not kept half-written.
        let cut = r#"{"answer": "Jupiter", "question": "Which planet did the, ask"#;
        assert_eq!(
            parse_truncated_object(cut),
            Some(serde_json::json!({"answer": "Jupiter"}))
        );
        // Nested values that completed are kept; commas inside strings are not boundaries.
        let cut = r#"{"domain": "Math", "personas": ["a, b", "c"], "reason": "x, y"#;
        assert_eq!(
            parse_truncated_object(cut),
            Some(serde_json::json!({"domain": "Math", "personas": ["a, b", "c"]}))
        );
        // Nothing complete, or nothing cut.
        assert_eq!(parse_truncated_object(r#"{"reason": "long"#), None);
        assert_eq!(parse_truncated_object(r#"{"a": 1, "b": 2}"#), None);
        assert_eq!(parse_truncated_object("no json"), None);
    }
    use serde_json::json;

    fn p(s: &str) -> Option<Value> {
        parse_json_answer(s)
    }

    #[test]
    fn raw_object_and_array() {
        assert_eq!(p(r#"{"a": 1}"#), Some(json!({"a": 1})));
        assert_eq!(p("  \n{\"a\": [1, 2]}\n "), Some(json!({"a": [1, 2]})));
        assert_eq!(p(r#"[{"q": "x"}]"#), Some(json!([{"q": "x"}])));
        assert_eq!(p("\u{feff}{\"a\":1}"), Some(json!({"a": 1})));
    }

    #[test]
    fn scalars_and_empty_are_not_answers() {
        assert_eq!(p(""), None);
        assert_eq!(p("   "), None);
        assert_eq!(p("42"), None);
        assert_eq!(p("\"just a string\""), None);
        assert_eq!(p("true"), None);
        assert_eq!(p("I cannot answer that."), None);
    }

    #[test]
    fn fenced_json() {
        let s = "Here you go:\n```json\n{\"question\": \"2+2?\", \"answer\": \"4\"}\n```\nHope it helps!";
        assert_eq!(p(s), Some(json!({"question": "2+2?", "answer": "4"})));
        let s = "```\n{\"a\": 1}\n```";
        assert_eq!(p(s), Some(json!({"a": 1})));
        let s = "```JSON\r\n{\"a\": 1}\r\n```";
        assert_eq!(p(s), Some(json!({"a": 1})));
        // One-line fence without info string.
        assert_eq!(p("```{\"a\": 1}```"), Some(json!({"a": 1})));
        // Unterminated fence.
        assert_eq!(p("```json\n{\"a\": 1}\n"), Some(json!({"a": 1})));
    }

    #[test]
    fn second_fence_when_first_is_not_json() {
        let s = "```python\nprint('hi')\n```\nand\n```json\n{\"b\": 2}\n```";
        assert_eq!(p(s), Some(json!({"b": 2})));
    }

    #[test]
    fn fence_with_prose_inside() {
        let s = "```json\n// the answer\n{\"a\": 1}\n```";
        assert_eq!(p(s), Some(json!({"a": 1})));
    }

    #[test]
    fn prose_before_and_after() {
        let s = "Sure! The answer is {\"a\": {\"b\": [1, 2, {\"c\": null}]}} as requested.";
        assert_eq!(p(s), Some(json!({"a": {"b": [1, 2, {"c": null}]}})));
        let s = "{\"a\": 1}\n\nNote: I used the passage above.";
        assert_eq!(p(s), Some(json!({"a": 1})));
    }

    #[test]
    fn braces_and_escapes_inside_strings() {
        let s = r#"Result: {"text": "a } tricky { string with \"quotes\" and \\", "n": 1} done"#;
        assert_eq!(
            p(s),
            Some(json!({"text": "a } tricky { string with \"quotes\" and \\", "n": 1}))
        );
        let s = r#"x {"a": "\\\"}"} y"#;
        assert_eq!(p(s), Some(json!({"a": "\\\"}"})));
        let s = r#"{"a": "[not an array"}"#;
        assert_eq!(p(s), Some(json!({"a": "[not an array"})));
    }

    #[test]
    fn skips_non_json_brace_spans() {
        let s = "In set notation {x | x > 0}; the JSON: {\"answer\": 3}";
        assert_eq!(p(s), Some(json!({"answer": 3})));
        let s = "Use {placeholders} like {this}. {\"k\": \"v\"}";
        assert_eq!(p(s), Some(json!({"k": "v"})));
    }

    #[test]
    fn prefers_object_over_earlier_array() {
        let s = "See reference [1] and [2]. Answer: {\"a\": 1}";
        assert_eq!(p(s), Some(json!({"a": 1})));
        // An array alone is accepted.
        assert_eq!(p("The list: [1, 2, 3]."), Some(json!([1, 2, 3])));
    }

    #[test]
    fn first_of_several_objects() {
        let s = "{\"a\": 1} and then {\"b\": 2}";
        // Not valid as a whole; the first balanced object wins.
        assert_eq!(p(s), Some(json!({"a": 1})));
    }

    #[test]
    fn unbalanced_or_truncated_is_none() {
        assert_eq!(p("{\"a\": 1"), None);
        assert_eq!(p("{\"a\": [1, 2}"), None);
        assert_eq!(p("```json\n{\"a\": \"unterminated}\n```"), None);
    }

    #[test]
    fn truncated_answer_yields_no_inner_fragment() {
        // The outer object is cut off: its complete inner objects are fragments.
        let s = "{\"items\": [{\"a\": 1}, {\"b\": ";
        assert_eq!(p(s), None);
        // But a complete object before a cut-off one is fine.
        let s = "{\"a\": 1} {\"b\": ";
        assert_eq!(p(s), Some(json!({"a": 1})));
    }

    #[test]
    fn trailing_commas_are_repaired() {
        assert_eq!(p("{\"a\": [1, 2,], }"), Some(json!({"a": [1, 2]})));
        assert_eq!(p("text {\"a\": 1,\n} text"), Some(json!({"a": 1})));
        // Commas inside strings are untouched.
        assert_eq!(p("{\"a\": \"x,}\",}"), Some(json!({"a": "x,}"})));
    }

    #[test]
    fn reasoning_blocks_are_ignored() {
        let s = "<think>Maybe {\"a\": 0}? No wait...</think>\n{\"a\": 1}";
        assert_eq!(p(s), Some(json!({"a": 1})));
        let s = "<thinking>{\"draft\": true}</thinking>```json\n{\"final\": true}\n```";
        assert_eq!(p(s), Some(json!({"final": true})));
        // Unterminated reasoning: nothing after it is trusted.
        assert_eq!(p("<think>{\"a\": 1}"), None);
    }

    #[test]
    fn unicode_content() {
        let s = "Réponse : {\"question\": \"Qu'est-ce que π ?\", \"réponse\": \"≈ 3.14159\"} — fin";
        assert_eq!(
            p(s),
            Some(json!({"question": "Qu'est-ce que π ?", "réponse": "≈ 3.14159"}))
        );
    }

    /// 40 000 levels of nesting, balanced, unbalanced or mismatched: each opener is matched only
    /// as deep as serde_json could parse, so the scan is linear (it was quadratic: seconds here).
    #[test]
    fn deep_nesting_is_scanned_in_linear_time() {
        const N: usize = 40_000;
        let arrays = format!("{}{}", "[".repeat(N), "]".repeat(N));
        let objects = format!("{}1{}", "{\"a\":".repeat(N), "}".repeat(N));
        let mismatched = format!("{}}}", "[".repeat(N));
        let mixed = format!("{}]", "[{\"a\":".repeat(N));
        let fenced = format!("```json\n{objects}\n```");
        for text in [&arrays, &objects, &mismatched, &mixed, &fenced] {
            let v = parse_json_answer(text);
            // Only the innermost levels are within serde_json's recursion limit.
            assert!(v.is_none_or(|v| nesting(&v) <= MAX_DEPTH), "{text:.20}");
        }
        // The innermost arrays that do parse are found, as before.
        assert!(parse_json_answer(&arrays).is_some());
        assert_eq!(parse_json_answer(&mismatched), None);
        let unbalanced = "{".repeat(N);
        assert_eq!(parse_json_answer(&unbalanced), None);
        assert_eq!(parse_truncated_object(&unbalanced), None);
    }

    fn nesting(v: &Value) -> usize {
        match v {
            Value::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
            Value::Object(m) => 1 + m.values().map(nesting).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn matching_close_edge_cases() {
        assert_eq!(matching_close(b"{}", 0), Span::Closed(1));
        assert_eq!(matching_close(b"{[}]", 0), Span::Mismatched);
        assert_eq!(matching_close(b"{\"}\"}", 0), Span::Closed(4));
        assert_eq!(matching_close(b"{\"\\\\\"}", 0), Span::Closed(5));
        assert_eq!(matching_close(b"[[]", 0), Span::Unterminated);
        assert_eq!(matching_close(b"x{}", 1), Span::Closed(2));
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(
            matching_close(deep.as_bytes(), 0),
            Span::Closed(deep.len() - 1)
        );
        let deeper = format!("[{deep}]");
        assert_eq!(matching_close(deeper.as_bytes(), 0), Span::TooDeep);
    }

    #[test]
    fn remove_trailing_commas_only_when_needed() {
        assert_eq!(remove_trailing_commas("{\"a\": 1}"), None);
        assert_eq!(
            remove_trailing_commas("[1, 2 ,\n ]").as_deref(),
            Some("[1, 2 \n ]")
        );
    }
}
