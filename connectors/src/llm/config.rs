//! Configuration of the LLM client (`[llm]` section of the engine config).
//!
//! Every field has a default, unknown fields are rejected. The API key is
//! never part of the configuration: only the *name* of the environment
//! variable that holds it ([`LlmConfig::api_key_env`]), read once when the
//! client is built.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Price of a model, in currency units (USD) per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Price of one million prompt (input) tokens.
    pub prompt_per_million: f64,
    /// Price of one million completion (output) tokens.
    pub completion_per_million: f64,
    /// Price of one million prompt tokens served from the server's prefix cache; unset: the
    /// prompt price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_prompt_per_million: Option<f64>,
}

impl Price {
    /// Cost of one call with the given token counts (`cached` of the `prompt_tokens` at the
    /// cached price).
    pub fn cost(&self, prompt_tokens: u64, cached: u64, completion_tokens: u64) -> f64 {
        let cached = cached.min(prompt_tokens);
        let cached_price = self
            .cached_prompt_per_million
            .unwrap_or(self.prompt_per_million);
        ((prompt_tokens - cached) as f64 * self.prompt_per_million
            + cached as f64 * cached_price
            + completion_tokens as f64 * self.completion_per_million)
            / 1_000_000.0
    }
}

/// How a JSON schema travels in the request: the structured-output dialects
/// of the servers in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StructuredOutput {
    /// Probe each endpoint at start-up, in the order of the variants below.
    Auto,
    /// OpenAI, vLLM, SGLang, llama.cpp's server:
    /// `response_format: {type: "json_schema", json_schema: {name, schema, strict}}`.
    JsonSchema,
    /// llama-cpp-python's server: `response_format: {type: "json_object", schema}`
    /// (it answers `json_schema` with HTTP 500).
    JsonObject,
    /// Older vLLM releases: `guided_json: schema` in the body.
    GuidedJson,
    /// No constraint: the schema is only described by the prompt and the
    /// answer is parsed tolerantly.
    None,
}

impl StructuredOutput {
    /// The dialects a probe tries, most specific first.
    pub const PROBE_ORDER: [StructuredOutput; 4] = [
        StructuredOutput::JsonSchema,
        StructuredOutput::JsonObject,
        StructuredOutput::GuidedJson,
        StructuredOutput::None,
    ];

    /// The name used in the configuration and on `/api/state`.
    pub fn name(self) -> &'static str {
        match self {
            StructuredOutput::Auto => "auto",
            StructuredOutput::JsonSchema => "json_schema",
            StructuredOutput::JsonObject => "json_object",
            StructuredOutput::GuidedJson => "guided_json",
            StructuredOutput::None => "none",
        }
    }
}

impl std::fmt::Display for StructuredOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of the OpenAI-compatible chat-completions client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Base URLs of the OpenAI-compatible servers, e.g. `http://host:8000/v1`;
    /// requests go to `<base>/chat/completions`, spread over all of them.
    pub endpoints: Vec<String>,
    /// Model used when a request leaves its model empty.
    pub model: Option<String>,
    /// Name of the environment variable holding the API key (sent as
    /// `Authorization: Bearer …`). Empty string: send no key. A variable that
    /// is unset or empty also means no key (local vLLM/SGLang servers).
    pub api_key_env: String,
    /// Maximum number of HTTP requests in flight for the whole process.
    pub concurrency: usize,
    /// Requests-per-minute limit (token bucket); none when unset.
    pub requests_per_minute: Option<u32>,
    /// Tokens-per-minute limit (prompt estimated as chars/4 before the call,
    /// corrected with the reported usage after); none when unset.
    pub tokens_per_minute: Option<u32>,
    /// Timeout of one HTTP request (connect + answer), in seconds.
    pub timeout_secs: u64,
    /// Retries of one call that fails with a 5xx or a timeout while the
    /// server answers other calls: past them the document itself is taken to
    /// be the cause (dead letter). Failures while no call succeeds (an
    /// outage) are retried without limit, never dead-lettered.
    pub max_retries: u32,
    /// Of those, at most this many for malformed answers (no JSON found).
    pub max_malformed_retries: u32,
    /// Base of the exponential backoff (full jitter), in milliseconds.
    pub backoff_base_ms: u64,
    /// Cap of one backoff delay, in milliseconds.
    pub backoff_max_ms: u64,
    /// Global pause after a 429 that carries no `Retry-After`, in seconds.
    pub cooldown_secs_after_429: u64,
    /// Longest wait a server's `Retry-After` / `retry-after-ms` may impose,
    /// in seconds. A longer one is cut to this and logged: a header of
    /// `999999999` must not stall the engine for an hour while it looks ready.
    pub max_retry_after_secs: u64,
    /// Largest answer body read, in bytes. A larger one (announced by
    /// `Content-Length` or found while reading) is refused before it is
    /// held in memory, and counts as a malformed answer.
    pub max_response_bytes: u64,
    /// The same document fault (for instance `client_error` 400, or a
    /// malformed answer) on this many different documents in a row is taken
    /// for a fault of the configuration or the server, not of the documents:
    /// the engine declares an outage (input paused, `/readyz` 503,
    /// `max_outage_secs` applies) and retries those calls instead of
    /// dead-lettering them, until an answer succeeds. 0: off.
    pub document_faults_before_outage: u32,
    /// No epoch completed for this many seconds while no outage is declared:
    /// something holds the pipeline that no retry will free, and the engine
    /// stops with an error (non-zero exit, nothing unfinished committed)
    /// instead of hanging silently. 0: no watchdog.
    pub max_stall_secs: u64,
    /// Part of every response-cache key. Unset: what identifies the model is
    /// taken from the servers (their `/models` entry for it, less volatile
    /// fields), so a second server serving another model under the same name
    /// never answers from the first one's cache. Set it to share (or to
    /// separate) caches explicitly.
    pub cache_namespace: Option<String>,
    /// How a request's JSON schema is sent (the server's structured-output
    /// dialect). `auto` probes each endpoint at start-up with one tiny request
    /// and remembers what works; the others force one dialect everywhere.
    pub structured_output: StructuredOutput,
    /// File mode: how long to wait at start for an endpoint to answer before
    /// giving up (Kafka mode waits, not ready, for as long as it takes).
    pub startup_timeout_secs: u64,
    /// Consecutive failures of the LLM side (connection, timeout, 5xx, 429,
    /// 401/403, unknown model) after which the engine declares an outage:
    /// the sources stop reading until an endpoint answers again.
    pub outage_after_failures: u32,
    /// Longest outage tolerated before the engine stops (non-zero exit,
    /// nothing unfinished committed). Unset: unlimited in Kafka mode, 600 s
    /// in file mode.
    pub max_outage_secs: Option<u64>,
    /// Price per model name, for cost accounting.
    pub prices: HashMap<String, Price>,
    /// Response cache (redb file). Unset: the engine's default location (a
    /// state directory per consumer group in Kafka mode, the user's cache
    /// directory in file mode; `--no-llm-cache` turns it off). For the client
    /// as a library, unset means no cache.
    pub cache_path: Option<PathBuf>,
    /// Bound of the response cache (key and value bytes); the oldest entries
    /// are evicted beyond it.
    pub cache_max_bytes: u64,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            endpoints: vec!["http://127.0.0.1:8000/v1".to_owned()],
            model: None,
            api_key_env: "OPENAI_API_KEY".to_owned(),
            concurrency: 64,
            requests_per_minute: None,
            tokens_per_minute: None,
            timeout_secs: 120,
            max_retries: 5,
            max_malformed_retries: 2,
            backoff_base_ms: 500,
            backoff_max_ms: 30_000,
            cooldown_secs_after_429: 10,
            max_retry_after_secs: 300,
            max_response_bytes: 16 << 20,
            document_faults_before_outage: 20,
            max_stall_secs: 1800,
            cache_namespace: None,
            structured_output: StructuredOutput::Auto,
            startup_timeout_secs: 60,
            outage_after_failures: 3,
            max_outage_secs: None,
            prices: HashMap::new(),
            cache_path: None,
            cache_max_bytes: 2 << 30,
        }
    }
}

impl LlmConfig {
    /// Checks the settings that have no meaningful value of zero and the
    /// endpoint URLs. The message names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("llm.endpoints: at least one endpoint is required".to_owned());
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let url = reqwest::Url::parse(e)
                .map_err(|err| format!("llm.endpoints[{i}]: not a URL ({err})"))?;
            if url.scheme() != "http" && url.scheme() != "https" {
                return Err(format!(
                    "llm.endpoints[{i}]: scheme must be http or https, not {}",
                    url.scheme()
                ));
            }
        }
        if self.concurrency == 0 {
            return Err("llm.concurrency must be at least 1".to_owned());
        }
        if self.requests_per_minute == Some(0) {
            return Err("llm.requests_per_minute must be at least 1 (or unset)".to_owned());
        }
        if self.tokens_per_minute == Some(0) {
            return Err("llm.tokens_per_minute must be at least 1 (or unset)".to_owned());
        }
        if self.cache_max_bytes == 0 {
            return Err("llm.cache_max_bytes must be at least 1 (or --no-llm-cache)".to_owned());
        }
        if self.timeout_secs == 0 {
            return Err("llm.timeout_secs must be at least 1".to_owned());
        }
        if self.startup_timeout_secs == 0 {
            return Err("llm.startup_timeout_secs must be at least 1".to_owned());
        }
        if self.outage_after_failures == 0 {
            return Err("llm.outage_after_failures must be at least 1".to_owned());
        }
        if self.max_outage_secs == Some(0) {
            return Err(
                "llm.max_outage_secs must be at least 1 (or unset: no limit in Kafka mode)"
                    .to_owned(),
            );
        }
        if self.max_response_bytes < 1024 {
            return Err("llm.max_response_bytes must be at least 1024".to_owned());
        }
        if self.backoff_max_ms < self.backoff_base_ms {
            return Err("llm.backoff_max_ms must be >= llm.backoff_base_ms".to_owned());
        }
        for (model, price) in &self.prices {
            if !(price.prompt_per_million >= 0.0 && price.completion_per_million >= 0.0) {
                return Err(format!("llm.prices.{model}: prices must be >= 0"));
            }
        }
        Ok(())
    }

    /// [`LlmConfig::timeout_secs`] as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_empty_toml_section() {
        let c: LlmConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, LlmConfig::default());
        assert_eq!(c.concurrency, 64);
        assert_eq!(c.api_key_env, "OPENAI_API_KEY");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_fields_rejected() {
        let err = serde_json::from_str::<LlmConfig>(r#"{"api_key": "sk-x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn structured_output_names_round_trip() {
        for d in [StructuredOutput::Auto]
            .into_iter()
            .chain(StructuredOutput::PROBE_ORDER)
        {
            let c: LlmConfig =
                serde_json::from_str(&format!(r#"{{"structured_output": "{d}"}}"#)).unwrap();
            assert_eq!(c.structured_output, d);
        }
        assert!(serde_json::from_str::<LlmConfig>(r#"{"structured_output": "xml"}"#).is_err());
    }

    #[test]
    fn prices_parse_and_cost() {
        let c: LlmConfig = serde_json::from_str(
            r#"{"prices": {"m": {"prompt_per_million": 2.0, "completion_per_million": 8.0}}}"#,
        )
        .unwrap();
        let p = c.prices["m"];
        assert!((p.cost(1_000_000, 0, 500_000) - 6.0).abs() < 1e-9);
        // Cached input at its own price; unset, at the prompt price.
        let c: LlmConfig = serde_json::from_str(
            r#"{"prices": {"m": {"prompt_per_million": 2.0, "completion_per_million": 8.0,
                "cached_prompt_per_million": 0.5}}}"#,
        )
        .unwrap();
        assert!((c.prices["m"].cost(1_000_000, 600_000, 0) - (0.8 + 0.3)).abs() < 1e-9);
        assert!((p.cost(1_000_000, 600_000, 0) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn validation_errors() {
        let bad = |f: fn(&mut LlmConfig)| {
            let mut c = LlmConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.endpoints.clear()).contains("endpoints"));
        assert!(bad(|c| c.endpoints = vec!["not a url".into()]).contains("endpoints[0]"));
        assert!(bad(|c| c.endpoints = vec!["ftp://x/v1".into()]).contains("scheme"));
        assert!(bad(|c| c.concurrency = 0).contains("concurrency"));
        assert!(bad(|c| c.requests_per_minute = Some(0)).contains("requests_per_minute"));
        assert!(bad(|c| c.tokens_per_minute = Some(0)).contains("tokens_per_minute"));
        assert!(bad(|c| c.timeout_secs = 0).contains("timeout_secs"));
        assert!(bad(|c| c.backoff_max_ms = 1).contains("backoff_max_ms"));
        assert!(bad(|c| c.startup_timeout_secs = 0).contains("startup_timeout_secs"));
        assert!(bad(|c| c.outage_after_failures = 0).contains("outage_after_failures"));
        assert!(bad(|c| c.max_outage_secs = Some(0)).contains("max_outage_secs"));
        assert!(bad(|c| c.max_response_bytes = 10).contains("max_response_bytes"));
    }
}
