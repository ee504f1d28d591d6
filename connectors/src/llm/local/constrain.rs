//! Grammar-constrained decoding of the local model: a request's JSON schema
//! becomes a token mask at every decoding step, so the model can only write
//! an object of that schema.
//!
//! The 135M model follows a "reply in JSON" instruction poorly (it writes
//! prose, drops keys, opens strings it never closes); constrained, it writes
//! a well-formed object every time, as the same model does behind a
//! llama.cpp server given a schema. The engine is `llguidance` (the one
//! behind llama.cpp's and vLLM's structured outputs): it compiles the schema
//! to a grammar and, per step, computes the set of tokens whose bytes keep
//! the output a prefix of some valid object (tokenization-agnostic).
//!
//! * [`Grammars`] holds what every request shares: the vocabulary as bytes
//!   (a token trie, built here from our own tokenizer, since
//!   `toktrie_hf_tokenizers` pins another `tokenizers` release) and the
//!   parser factory. Built once when the model loads.
//! * [`Grammars::constraint`] compiles one request's `response_format` into
//!   a [`Constraint`], the per-generation state the generation loop asks for
//!   masks and feeds the sampled tokens.
//!
//! Two choices made for a small model, both in [`grammar_schema`]: the keys
//! are written in the order the schema lists them as `required` (the
//! verdict before the explanation: `qualified` before `reason`), with
//! `additionalProperties: false` unless the schema says otherwise (OpenAI's
//! strict structured outputs do the same), and with fixed separators (`", "`,
//! `": "`, no free whitespace), so no token goes to indentation. And a token
//! budget that is about to run out *closes* the object
//! ([`Constraint::mask`] with `closing`, for the last
//! [`Constraint::closing_reserve`] tokens): only tokens that end the current
//! string, object or array stay allowed where any does, so an answer cut by
//! `max_tokens` still parses.

use std::sync::Arc;

use anyhow::{Context, bail};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

use super::tokenizer::ChatTokenizer;

/// The vocabulary and parser factory every request's grammar is built on.
pub struct Grammars {
    factory: ParserFactory,
    /// Tokens whose bytes start with `"`, then those that start with `}` or
    /// `]`: the ones that end a string, and an object or array (see
    /// [`Constraint::mask`]).
    closers: [SimpleVob; 2],
    /// Tokens that end the answer: end of turn and the other control tokens
    /// the tokenizer stops at.
    eos: Vec<TokenId>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("vocab_size", &self.closers[0].len())
            .finish_non_exhaustive()
    }
}

/// The tokenizer as llguidance sees it: each token's bytes in a trie, and
/// our BPE for the rare text it tokenizes itself.
struct VocabEnv {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        })
    }
}

impl Grammars {
    /// Builds the token trie of `tokenizer`'s vocabulary. Logits past it
    /// (padding some models carry) are never allowed.
    pub fn new(tokenizer: &ChatTokenizer) -> anyhow::Result<Self> {
        let hf = tokenizer.hf_tokenizer();
        let n_vocab = tokenizer.vocab_size();
        let bytes_of = byte_level_decoder();
        let mut words: Vec<Vec<u8>> = Vec::with_capacity(n_vocab);
        for id in 0..n_vocab as u32 {
            let word = match hf.id_to_token(id) {
                // Control tokens are special: the grammar never produces them
                // as text; EOS is allowed by id where the object may end.
                Some(name) if tokenizer.is_control(id) => special(&name),
                Some(name) => name
                    .chars()
                    .map(&bytes_of)
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| special(&name)),
                None => special(&format!("<[{id}]>")),
            };
            words.push(word);
        }
        let im_end = tokenizer.im_end();
        let mut info = TokRxInfo::new(n_vocab as u32, im_end);
        info.tok_end_of_turn = Some(im_end);
        let mut eos = vec![im_end];
        eos.extend((0..n_vocab as u32).filter(|&id| id != im_end && tokenizer.is_stop_token(id)));
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
        let mut closers = [SimpleVob::alloc(n_vocab), SimpleVob::alloc(n_vocab)];
        for (id, w) in words.iter().enumerate() {
            match w.first() {
                Some(b'"') => closers[0].allow_token(id as TokenId),
                Some(b'}' | b']') => closers[1].allow_token(id as TokenId),
                _ => {}
            }
        }
        let env: TokEnv = Arc::new(VocabEnv {
            trie,
            tokenizer: hf.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env)?;
        // Errors come back as values; nothing on stderr.
        factory.quiet();
        Ok(Grammars {
            factory,
            closers,
            eos,
        })
    }

    /// The constraint for a request's `response_format`: `json_schema`
    /// (OpenAI: `{"type": "json_schema", "json_schema": {"schema": …}}`) or
    /// `json_object` (any object; llama-cpp-python's `schema` beside it is
    /// honoured). `None` for `text` or no format; an error for a schema the
    /// compiler rejects.
    pub fn constraint(&self, response_format: &Value) -> anyhow::Result<Option<Constraint>> {
        let Some(schema) = grammar_schema(response_format)? else {
            return Ok(None);
        };
        let reserve = closing_reserve(&schema);
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .context("the response schema cannot be compiled to a grammar")?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            bail!("the response schema cannot be compiled to a grammar: {e}");
        }
        Ok(Some(Constraint {
            matcher,
            closers: self.closers.clone(),
            eos: self.eos.clone(),
            reserve,
        }))
    }
}

/// The grammar state of one generation.
pub struct Constraint {
    matcher: Matcher,
    closers: [SimpleVob; 2],
    eos: Vec<TokenId>,
    reserve: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

impl Constraint {
    /// The tokens allowed next, `None` once the object is complete (the
    /// answer ends there). With `closing` (the token budget is nearly
    /// spent), only tokens that start with a quote where any is allowed
    /// (inside a string it ends the string; a `]` there would be text), else
    /// only those that start with `]` or `}` where any is: strings close,
    /// arrays and the object end as soon as the schema lets them.
    pub fn mask(&mut self, closing: bool) -> anyhow::Result<Option<SimpleVob>> {
        if self.matcher.is_stopped() {
            return Ok(None);
        }
        let mut mask = self.matcher.compute_mask().map_err(|e| self.error(e))?;
        // Only the end of turn left: the object is complete.
        if self.eos.iter().any(|&t| mask.is_allowed(t))
            && mask.num_set() == self.eos.iter().filter(|&&t| mask.is_allowed(t)).count()
        {
            return Ok(None);
        }
        if closing && let Some(closers) = self.closers.iter().find(|c| !mask.and_is_zero(c)) {
            mask.and(closers);
        }
        Ok(Some(mask))
    }

    /// Tokens to keep for closing the object: enough to write every required
    /// key with the shortest value, whatever is written already (see
    /// [`closing_reserve`]).
    pub fn closing_reserve(&self) -> usize {
        self.reserve
    }

    /// Advances the grammar by the sampled `token` (one the mask allowed).
    pub fn consume(&mut self, token: TokenId) -> anyhow::Result<()> {
        self.matcher.consume_token(token).map_err(|e| self.error(e))
    }

    /// Whether the output so far is a complete object.
    pub fn is_complete(&mut self) -> bool {
        self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false)
    }

    fn error(&self, e: anyhow::Error) -> anyhow::Error {
        match self.matcher.get_error() {
            Some(m) => anyhow::anyhow!("grammar: {m}"),
            None => e.context("grammar"),
        }
    }
}

/// The schema to compile for `response_format`, with the small-model
/// choices of the module doc (key order, closed objects, fixed
/// separators) as llguidance's `x-guidance` options.
pub fn grammar_schema(response_format: &Value) -> anyhow::Result<Option<Value>> {
    let schema = match response_format.get("type").and_then(Value::as_str) {
        None | Some("text") => return Ok(None),
        Some("json_schema") => response_format
            .get("json_schema")
            .and_then(|j| j.get("schema"))
            .cloned()
            .context("response_format json_schema has no `json_schema.schema`")?,
        Some("json_object") => response_format
            .get("schema")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object"})),
        Some(other) => bail!("response_format type `{other}` is not supported"),
    };
    let Value::Object(mut schema) = schema else {
        bail!("the response schema is not a JSON object");
    };
    if let Some(Value::Object(props)) = schema.get("properties") {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut ordered = serde_json::Map::new();
        for key in &required {
            if let Some(v) = props.get(*key) {
                ordered.insert((*key).to_owned(), v.clone());
            }
        }
        for (k, v) in props {
            if !ordered.contains_key(k) {
                ordered.insert(k.clone(), v.clone());
            }
        }
        schema.insert("properties".to_owned(), Value::Object(ordered));
        schema
            .entry("additionalProperties")
            .or_insert(Value::Bool(false));
    }
    schema.insert(
        "x-guidance".to_owned(),
        json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
    );
    Ok(Some(Value::Object(schema)))
}

/// Tokens that write every required key of `schema` with its shortest value
/// and close the object: per key about one token per 3 characters, its
/// quotes and separators, and an empty value (`""`, `[""]`, `true`), five
/// tokens; two for the braces. An over-estimate when keys are written
/// already: the last string closes a little early, never too late.
pub fn closing_reserve(schema: &Value) -> usize {
    let keys = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(|k| k.len().div_ceil(3) + 5)
                .sum::<usize>()
        })
        .unwrap_or(0);
    keys + 2
}

/// A special token's trie entry: its name behind llguidance's marker byte.
fn special(name: &str) -> Vec<u8> {
    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
    w.extend_from_slice(name.as_bytes());
    w
}

/// The inverse of GPT-2's byte-to-character table: the byte each
/// character of a byte-level BPE token stands for.
fn byte_level_decoder() -> impl Fn(char) -> Option<u8> {
    let mut table = std::collections::HashMap::with_capacity(256);
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        let c = b as char;
        let printable = matches!(c, '!'..='~' | '\u{A1}'..='\u{AC}' | '\u{AE}'..='\u{FF}');
        if printable {
            table.insert(c, b);
        } else {
            table.insert(char::from_u32(next).unwrap_or('\0'), b);
            next += 1;
        }
    }
    move |c| table.get(&c).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_required_order_and_objects_close() {
        // Built from a string so the order does not depend on serde_json's
        // `preserve_order` (llguidance turns it on).
        let format: Value = serde_json::from_str(
            r#"{"type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object",
                "properties": {"reason": {"type": "string"}, "qualified": {"type": "boolean"}},
                "required": ["qualified", "reason"]}}}"#,
        )
        .unwrap();
        let s = grammar_schema(&format).unwrap().unwrap();
        let keys: Vec<&String> = s["properties"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["qualified", "reason"]);
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["x-guidance"]["whitespace_flexible"], false);

        let open = json!({"type": "json_schema", "json_schema": {"schema": {
            "properties": {"a": {"type": "string"}}, "additionalProperties": true}}});
        assert_eq!(
            grammar_schema(&open).unwrap().unwrap()["additionalProperties"],
            true
        );
        let any = grammar_schema(&json!({"type": "json_object"}))
            .unwrap()
            .unwrap();
        assert_eq!(any["type"], "object");
        assert_eq!(grammar_schema(&json!({"type": "text"})).unwrap(), None);
        assert!(grammar_schema(&json!({"type": "json_schema"})).is_err());
        assert!(grammar_schema(&json!({"type": "grammar"})).is_err());
    }

    #[test]
    fn the_reserve_covers_the_required_keys() {
        let verdict = json!({"required": ["qualified", "reason"]});
        assert_eq!(closing_reserve(&verdict), 2 + (3 + 5) + (2 + 5));
        assert_eq!(closing_reserve(&json!({"type": "object"})), 2);
    }

    #[test]
    fn byte_level_table_is_gpt2s() {
        let byte = byte_level_decoder();
        assert_eq!(byte('a'), Some(b'a'));
        // GPT-2 maps the space to Ġ and the newline to Ċ.
        assert_eq!(byte('Ġ'), Some(b' '));
        assert_eq!(byte('Ċ'), Some(b'\n'));
        assert_eq!(byte('€'), None);
    }
}
