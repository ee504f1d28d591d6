//! Chat request and response types, the OpenAI-compatible request body and
//! the canonical form a request is cached under.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::cache::{key_of, write_canonical_json};
use super::config::StructuredOutput;

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// JSON schema the answer must follow, sent as
/// `response_format: {type: "json_schema", json_schema: {name, schema, strict}}`
/// where the endpoint supports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseSchema {
    pub name: String,
    pub schema: Value,
    pub strict: bool,
}

impl ResponseSchema {
    /// A strict schema named `name`.
    pub fn new(name: impl Into<String>, schema: Value) -> Self {
        ResponseSchema {
            name: name.into(),
            schema,
            strict: true,
        }
    }
}

/// Parameters the client sets itself; `extra` may not override them.
const RESERVED_PARAMS: [&str; 6] = [
    "model",
    "messages",
    "response_format",
    "guided_json",
    "stream",
    "n",
];

/// A chat-completions request whose answer is expected to be JSON.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    /// Model name; empty means the configured `llm.model`.
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Schema of the answer (see [`ResponseSchema`]).
    pub schema: Option<ResponseSchema>,
    /// Other body parameters (e.g. `presence_penalty`, vLLM's `top_k`),
    /// sent as given and part of the cache key.
    pub extra: Map<String, Value>,
    /// The response-cache partition of the document the call is about: where its answer is
    /// changelogged (Kafka mode). Not sent, not part of the cache key.
    pub cache_partition: Option<u32>,
}

impl ChatRequest {
    /// A request to `model` (empty: the configured default) with no message.
    pub fn new(model: impl Into<String>) -> Self {
        ChatRequest {
            model: model.into(),
            ..Default::default()
        }
    }
    pub fn message(mut self, m: ChatMessage) -> Self {
        self.messages.push(m);
        self
    }
    pub fn system(self, content: impl Into<String>) -> Self {
        self.message(ChatMessage::system(content))
    }
    pub fn user(self, content: impl Into<String>) -> Self {
        self.message(ChatMessage::user(content))
    }
    pub fn temperature(mut self, t: f64) -> Self {
        self.temperature = Some(t);
        self
    }
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    pub fn schema(mut self, schema: ResponseSchema) -> Self {
        self.schema = Some(schema);
        self
    }
    pub fn param(mut self, key: impl Into<String>, value: Value) -> Self {
        self.extra.insert(key.into(), value);
        self
    }

    /// Rejects requests that cannot be sent.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.messages.is_empty() {
            return Err("no message".to_owned());
        }
        if let Some(k) = RESERVED_PARAMS
            .iter()
            .find(|k| self.extra.contains_key(**k))
        {
            return Err(format!("parameter `{k}` is set by the client"));
        }
        if self
            .temperature
            .into_iter()
            .chain(self.top_p)
            .any(|x| !x.is_finite())
        {
            return Err("temperature and top_p must be finite".to_owned());
        }
        Ok(())
    }

    /// The OpenAI-compatible request body for `model`, with the schema (if
    /// any) in the server's structured-output `dialect`.
    pub(crate) fn body(&self, model: &str, dialect: StructuredOutput) -> Value {
        let mut body = self.extra.clone();
        body.insert("model".to_owned(), Value::String(model.to_owned()));
        body.insert(
            "messages".to_owned(),
            serde_json::to_value(&self.messages).unwrap_or(Value::Null),
        );
        if let Some(t) = self.temperature {
            body.insert("temperature".to_owned(), json!(t));
        }
        if let Some(n) = self.max_tokens {
            body.insert("max_tokens".to_owned(), json!(n));
        }
        if let Some(p) = self.top_p {
            body.insert("top_p".to_owned(), json!(p));
        }
        if let Some(s) = self.seed {
            body.insert("seed".to_owned(), json!(s));
        }
        if !self.stop.is_empty() {
            body.insert("stop".to_owned(), json!(self.stop));
        }
        if let Some(s) = &self.schema {
            match dialect {
                StructuredOutput::JsonSchema => {
                    body.insert(
                        "response_format".to_owned(),
                        json!({
                            "type": "json_schema",
                            "json_schema": {"name": s.name, "schema": s.schema, "strict": s.strict},
                        }),
                    );
                }
                StructuredOutput::JsonObject => {
                    body.insert(
                        "response_format".to_owned(),
                        json!({"type": "json_object", "schema": s.schema}),
                    );
                }
                StructuredOutput::GuidedJson => {
                    body.insert("guided_json".to_owned(), s.schema.clone());
                }
                StructuredOutput::None | StructuredOutput::Auto => {}
            }
        }
        Value::Object(body)
    }

    /// Cache key: xxh3-128 of the canonical form of everything that shapes
    /// the answer (model, messages, parameters, schema, extra parameters).
    /// Whether `response_format` is actually sent is not part of it.
    pub fn cache_key(&self, model: &str) -> u128 {
        self.cache_key_in(model, "")
    }

    /// [`ChatRequest::cache_key`] within a namespace: what identifies the model beyond its name
    /// (empty: the name alone, as keys were before namespaces).
    pub fn cache_key_in(&self, model: &str, namespace: &str) -> u128 {
        let mut body = self.body(model, StructuredOutput::None);
        if let (Value::Object(map), Some(s)) = (&mut body, &self.schema) {
            map.insert(
                "\u{0}schema".to_owned(),
                json!({"name": s.name, "schema": s.schema, "strict": s.strict}),
            );
        }
        let mut canonical = String::with_capacity(256);
        canonical.push_str("webscale-rl/llm-cache/v1\n");
        if !namespace.is_empty() {
            canonical.push_str(namespace);
            canonical.push('\n');
        }
        write_canonical_json(&body, &mut canonical);
        key_of(&canonical)
    }

    /// Prompt size estimate for the tokens-per-minute limit: characters / 4.
    pub(crate) fn estimated_prompt_tokens(&self) -> u64 {
        let chars: usize = self
            .messages
            .iter()
            .map(|m| m.content.chars().count())
            .sum();
        (chars as u64).div_ceil(4).max(1)
    }
}

/// Tokens reported by the server for one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ReportedUsage")]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of the prompt tokens, those served from the server's prefix cache (billed at the cached
    /// price by APIs that discount them).
    pub cached_prompt_tokens: u64,
}

/// `usage` as servers report it: `prompt_tokens_details.cached_tokens` (OpenAI, vLLM, SGLang),
/// or `cache_read_input_tokens` (Anthropic-style gateways), or our own field when read back.
#[derive(Deserialize)]
struct ReportedUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    cached_prompt_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<ReportedUsage> for Usage {
    fn from(r: ReportedUsage) -> Usage {
        let cached = r
            .cached_prompt_tokens
            .or(r.prompt_tokens_details.and_then(|d| d.cached_tokens))
            .or(r.cache_read_input_tokens)
            .unwrap_or(0);
        Usage {
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cached_prompt_tokens: cached.min(r.prompt_tokens),
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The answer's text as returned by the server.
    pub content: String,
    /// The JSON found in it (see [`super::parse::parse_json_answer`]).
    pub value: Value,
    /// Tokens the answer cost (for a cached answer: what it cost originally;
    /// the usage counters do not count it again).
    pub usage: Usage,
    /// Model named by the server's answer.
    pub model: String,
    /// Endpoint that answered (without credentials); `None` when cached.
    pub endpoint: Option<String>,
    /// Whether the answer came from the response cache.
    pub cached: bool,
    pub finish_reason: Option<String>,
    /// HTTP requests made for this answer (0 when cached).
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> ChatRequest {
        ChatRequest::new("m")
            .system("You write questions.")
            .user("Passage: the sky is blue.")
            .temperature(0.0)
            .max_tokens(256)
    }

    #[test]
    fn body_has_openai_shape() {
        let r = req()
            .schema(ResponseSchema::new("qa", json!({"type": "object"})))
            .param("top_k", json!(20));
        let b = r.body("m", StructuredOutput::JsonSchema);
        assert_eq!(b["model"], "m");
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(b["messages"][1]["content"], "Passage: the sky is blue.");
        assert_eq!(b["temperature"], 0.0);
        assert_eq!(b["max_tokens"], 256);
        assert_eq!(b["top_k"], 20);
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(b["response_format"]["json_schema"]["name"], "qa");
        assert_eq!(b["response_format"]["json_schema"]["strict"], true);
        assert!(
            r.body("m", StructuredOutput::None)
                .get("response_format")
                .is_none()
        );
        assert!(b.get("seed").is_none() && b.get("stop").is_none());
    }

    #[test]
    fn cached_tokens_are_read_from_each_servers_field() {
        let u = |v: serde_json::Value| serde_json::from_value::<Usage>(v).unwrap();
        let openai = u(json!({"prompt_tokens": 100, "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 64}}));
        assert_eq!(openai.cached_prompt_tokens, 64);
        let gateway = u(json!({"prompt_tokens": 100, "completion_tokens": 5,
            "cache_read_input_tokens": 32}));
        assert_eq!(gateway.cached_prompt_tokens, 32);
        let plain = u(json!({"prompt_tokens": 100, "completion_tokens": 5}));
        assert_eq!(plain.cached_prompt_tokens, 0);
        // Never more than the prompt; our own serialization reads back.
        let odd = u(json!({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 64}}));
        assert_eq!(odd.cached_prompt_tokens, 10);
        let back = u(serde_json::to_value(openai).unwrap());
        assert_eq!(back, openai);
    }

    #[test]
    fn schema_in_each_dialect() {
        let schema = json!({"type": "object", "required": ["ok"]});
        let r = req().schema(ResponseSchema::new("qa", schema.clone()));
        let b = r.body("m", StructuredOutput::JsonObject);
        assert_eq!(
            b["response_format"],
            json!({"type": "json_object", "schema": schema})
        );
        let b = r.body("m", StructuredOutput::GuidedJson);
        assert_eq!(b["guided_json"], schema);
        assert!(b.get("response_format").is_none());
        for d in [StructuredOutput::None, StructuredOutput::Auto] {
            let b = r.body("m", d);
            assert!(b.get("response_format").is_none() && b.get("guided_json").is_none());
        }
        // Without a schema no dialect adds anything.
        let b = req().body("m", StructuredOutput::JsonSchema);
        assert!(b.get("response_format").is_none());
    }

    #[test]
    fn cache_key_depends_on_what_shapes_the_answer() {
        let base = req().cache_key("m");
        assert_eq!(base, req().cache_key("m"));
        assert_ne!(base, req().cache_key("other"));
        assert_ne!(base, req().temperature(0.7).cache_key("m"));
        assert_ne!(base, req().max_tokens(10).cache_key("m"));
        assert_ne!(base, req().seed(1).cache_key("m"));
        assert_ne!(base, req().user("more").cache_key("m"));
        assert_ne!(base, req().param("top_k", json!(5)).cache_key("m"));
        let s = req().schema(ResponseSchema::new("qa", json!({"type": "object"})));
        assert_ne!(base, s.cache_key("m"));
        let s2 = req().schema(ResponseSchema::new("qa", json!({"type": "array"})));
        assert_ne!(s.cache_key("m"), s2.cache_key("m"));
        // Role matters, not just content.
        let mut swapped = req();
        swapped.messages[0].role = "user".to_owned();
        assert_ne!(base, swapped.cache_key("m"));
        // Parameter insertion order does not matter.
        let a = req().param("a", json!(1)).param("b", json!(2));
        let b = req().param("b", json!(2)).param("a", json!(1));
        assert_eq!(a.cache_key("m"), b.cache_key("m"));
    }

    #[test]
    fn check_rejects_unsendable_requests() {
        assert!(
            ChatRequest::new("m")
                .check()
                .unwrap_err()
                .contains("no message")
        );
        let r = req().param("stream", json!(true));
        assert!(r.check().unwrap_err().contains("stream"));
        assert!(req().temperature(f64::NAN).check().is_err());
        assert!(req().check().is_ok());
    }

    #[test]
    fn prompt_estimate_is_chars_over_four() {
        let r = ChatRequest::new("m").user("abcdefgh").user("é");
        assert_eq!(r.estimated_prompt_tokens(), 3);
        assert_eq!(ChatRequest::new("m").user("").estimated_prompt_tokens(), 1);
    }
}
