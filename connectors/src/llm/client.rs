//! The LLM client: OpenAI-compatible `/v1/chat/completions` over reqwest,
//! shared by all timely workers of a process.
//!
//! One [`LlmClient`] (cheap to clone) owns one `reqwest::Client` (keep-alive
//! pool sized to the concurrency), the concurrency semaphore, the rate limits,
//! the global 429 cool-down, the usage counters and the response cache.
//! Workers never block on it: [`LlmClient::submit`] spawns the call on the
//! process's tokio runtime and hands the result to a callback (which pushes it
//! into a channel and activates the operator); async code awaits
//! [`LlmClient::chat_json`].
//!
//! A call: cache lookup → concurrency permit → global cool-down → RPM/TPM
//! buckets → endpoint choice (fewest in flight, round-robin among equals,
//! endpoints in cool-down last) → HTTP → tolerant JSON parse → cache store.
//! 429, 5xx, 408, timeouts and connection errors are retried with exponential
//! backoff and full jitter (at least `Retry-After` when given; a 429 also
//! pauses every request of the process); a malformed answer is retried
//! without delay up to `max_malformed_retries` times; the permit is released
//! while waiting to retry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use super::cache::{CachedAnswer, ResponseCache};
use super::config::LlmConfig;
use super::error::{LlmError, Redactor, display_url};
use super::parse::parse_json_answer;
use super::rate_limit::{Backoff, CoolDown, TokenBucket, parse_retry_after};
use super::request::{ChatRequest, ChatResponse, Usage};
use super::usage::{UsageSnapshot, UsageTracker};

/// Longest prefix of a malformed answer kept in the error.
const MALFORMED_SNIPPET_CHARS: usize = 500;

/// Handle on the process-wide LLM client. Clones share everything.
#[derive(Clone)]
pub struct LlmClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field(
                "endpoints",
                &self
                    .inner
                    .endpoints
                    .iter()
                    .map(|e| &e.display)
                    .collect::<Vec<_>>(),
            )
            .field("concurrency", &self.inner.config.concurrency)
            .field("api_key", &self.inner.auth.as_ref().map(|_| "[redacted]"))
            .field("cache", &self.inner.cache.as_ref().map(|c| c.path()))
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: LlmConfig,
    handle: Handle,
    http: reqwest::Client,
    /// `Bearer <key>`, marked sensitive; `None` when no key is configured.
    auth: Option<HeaderValue>,
    redactor: Redactor,
    endpoints: Vec<Endpoint>,
    next_endpoint: AtomicUsize,
    permits: Semaphore,
    cooldown: CoolDown,
    rpm: Option<TokenBucket>,
    tpm: Option<TokenBucket>,
    backoff: Backoff,
    usage: UsageTracker,
    cache: Option<ResponseCache>,
}

/// One server, with its live state.
struct Endpoint {
    /// `<base>/chat/completions`.
    url: reqwest::Url,
    /// Base URL without credentials, for errors, logs and responses.
    display: String,
    in_flight: AtomicUsize,
    /// Set after rate limits and failures, to steer traffic elsewhere.
    cooldown: CoolDown,
    consecutive_failures: AtomicU32,
    /// The server rejected `response_format` once: send plain requests.
    schema_unsupported: AtomicBool,
    requests: AtomicU64,
}

/// Live counters of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    pub endpoint: String,
    pub requests: u64,
    pub in_flight: usize,
    pub supports_response_format: bool,
}

/// What one HTTP attempt produced.
enum Attempt {
    Answer(Completion),
    /// 400 about `response_format`: retry the same call without it.
    SchemaUnsupported,
    Failed {
        error: LlmError,
        retry_after: Option<Duration>,
    },
}

/// The parts of a chat completion the client reads.
#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<ChoiceMessage>,
    /// Legacy completions-style servers.
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

/// Calls `done` exactly once: with the call's result, or with
/// [`LlmError::Cancelled`] when the task is dropped unfinished (runtime
/// shutdown).
struct DoneGuard<F: FnOnce(Result<ChatResponse, LlmError>)> {
    done: Option<F>,
}

impl<F: FnOnce(Result<ChatResponse, LlmError>)> DoneGuard<F> {
    fn complete(mut self, r: Result<ChatResponse, LlmError>) {
        if let Some(done) = self.done.take() {
            done(r);
        }
    }
}

impl<F: FnOnce(Result<ChatResponse, LlmError>)> Drop for DoneGuard<F> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(Err(LlmError::Cancelled));
        }
    }
}

/// Decrements an endpoint's in-flight count when the attempt ends, however.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LlmClient {
    /// Builds the client; the API key is read now from the environment
    /// variable named by `config.api_key_env`. Calls run on `handle`'s
    /// runtime when submitted with [`LlmClient::submit`].
    pub fn new(config: LlmConfig, handle: Handle) -> Result<Self, LlmError> {
        config.validate().map_err(LlmError::Config)?;
        let key = if config.api_key_env.is_empty() {
            None
        } else {
            std::env::var(&config.api_key_env)
                .ok()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
        };
        let auth = match &key {
            None => None,
            Some(k) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                    LlmError::Config(format!(
                        "the value of ${} is not a valid HTTP header value",
                        config.api_key_env
                    ))
                })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let redactor = Redactor::new(key.as_deref());
        drop(key);

        let endpoints = config
            .endpoints
            .iter()
            .map(|base| {
                let url = reqwest::Url::parse(&format!(
                    "{}/chat/completions",
                    base.trim_end_matches('/')
                ))
                .map_err(|e| LlmError::Config(format!("endpoint {}: {e}", display_url(base))))?;
                Ok(Endpoint {
                    url,
                    display: display_url(base),
                    in_flight: AtomicUsize::new(0),
                    cooldown: CoolDown::default(),
                    consecutive_failures: AtomicU32::new(0),
                    schema_unsupported: AtomicBool::new(false),
                    requests: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>, LlmError>>()?;

        let http = {
            let _rt = handle.enter();
            reqwest::Client::builder()
                .pool_max_idle_per_host(config.concurrency)
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_nodelay(true)
                .connect_timeout(config.timeout().min(Duration::from_secs(10)))
                .user_agent(concat!("webscale-rl/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| LlmError::Config(format!("HTTP client: {e}")))?
        };

        let cache = match &config.cache_path {
            None => None,
            Some(p) => Some(ResponseCache::open(p).map_err(|e| LlmError::Config(e.to_string()))?),
        };

        Ok(LlmClient {
            inner: Arc::new(Inner {
                handle,
                http,
                auth,
                redactor,
                endpoints,
                next_endpoint: AtomicUsize::new(0),
                permits: Semaphore::new(config.concurrency),
                cooldown: CoolDown::default(),
                rpm: config.requests_per_minute.map(TokenBucket::per_minute),
                tpm: config.tokens_per_minute.map(TokenBucket::per_minute),
                backoff: Backoff {
                    base: Duration::from_millis(config.backoff_base_ms),
                    max: Duration::from_millis(config.backoff_max_ms),
                },
                usage: UsageTracker::new(config.prices.clone()),
                cache,
                config,
            }),
        })
    }

    /// The configuration the client was built with.
    pub fn config(&self) -> &LlmConfig {
        &self.inner.config
    }

    /// Asks `req` and parses the JSON in the answer. `stage` names the
    /// pipeline stage for usage accounting.
    pub async fn chat_json(&self, stage: &str, req: ChatRequest) -> Result<ChatResponse, LlmError> {
        let inner = &*self.inner;
        let model = if req.model.is_empty() {
            inner.config.model.clone().unwrap_or_default()
        } else {
            req.model.clone()
        };
        inner.usage.record_call(stage, &model);
        let start = Instant::now();
        let result = inner.call(stage, &model, &req).await;
        match &result {
            Ok(r) => inner.usage.record_success(
                stage,
                &model,
                r.cached,
                start.elapsed().as_secs_f64() * 1e3,
            ),
            Err(e) => inner.usage.record_failure(stage, &model, e.kind()),
        }
        result
    }

    /// Runs [`LlmClient::chat_json`] on the client's runtime and calls `done`
    /// with the result, from a runtime thread. Never blocks. `done` is called
    /// exactly once, with [`LlmError::Cancelled`] if the runtime shuts down
    /// first.
    pub fn submit<F>(&self, stage: &str, req: ChatRequest, done: F)
    where
        F: FnOnce(Result<ChatResponse, LlmError>) + Send + 'static,
    {
        let this = self.clone();
        let stage = stage.to_owned();
        let guard = DoneGuard { done: Some(done) };
        // If the runtime is already shut down the task is dropped at once,
        // and the guard reports the cancellation.
        drop(self.inner.handle.spawn(async move {
            let r = this.chat_json(&stage, req).await;
            guard.complete(r);
        }));
    }

    /// Usage and cost counters so far.
    pub fn usage(&self) -> UsageSnapshot {
        self.inner.usage.snapshot()
    }

    /// Live counters per endpoint.
    pub fn endpoint_stats(&self) -> Vec<EndpointStats> {
        self.inner
            .endpoints
            .iter()
            .map(|e| EndpointStats {
                endpoint: e.display.clone(),
                requests: e.requests.load(Ordering::Relaxed),
                in_flight: e.in_flight.load(Ordering::Relaxed),
                supports_response_format: !e.schema_unsupported.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Time left in the global rate-limit cool-down.
    pub fn cooldown_remaining(&self) -> Duration {
        self.inner.cooldown.remaining()
    }

    /// Blocks until every answer stored so far is committed to the cache file
    /// (no-op without a cache).
    pub fn flush_cache(&self) -> Result<(), LlmError> {
        match &self.inner.cache {
            None => Ok(()),
            Some(c) => c.flush().map_err(|e| LlmError::Config(e.to_string())),
        }
    }

    /// Stops accepting work: calls waiting for a concurrency permit or a
    /// retry, and all later calls, end with [`LlmError::Cancelled`]; requests
    /// already on the wire finish.
    pub fn close(&self) {
        self.inner.permits.close();
    }
}

impl Inner {
    async fn call(
        &self,
        stage: &str,
        model: &str,
        req: &ChatRequest,
    ) -> Result<ChatResponse, LlmError> {
        if model.is_empty() {
            return Err(LlmError::InvalidRequest(
                "no model: set it on the request or as llm.model".to_owned(),
            ));
        }
        req.check().map_err(LlmError::InvalidRequest)?;

        let cache_key = self.cache.as_ref().map(|_| req.cache_key(model));
        if let (Some(cache), Some(key)) = (&self.cache, cache_key) {
            match cache.get(key) {
                Ok(Some(hit)) => {
                    if let Some(value) = parse_json_answer(&hit.content) {
                        return Ok(ChatResponse {
                            value,
                            usage: Usage {
                                prompt_tokens: hit.prompt_tokens,
                                completion_tokens: hit.completion_tokens,
                            },
                            model: hit.model,
                            endpoint: None,
                            cached: true,
                            finish_reason: hit.finish_reason,
                            attempts: 0,
                            content: hit.content,
                        });
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(stage, "{e}"),
            }
        }

        let want_schema = self.config.json_schema && req.schema.is_some();
        let mut body_schema: Option<Vec<u8>> = None;
        let mut body_plain: Option<Vec<u8>> = None;
        let estimate = req.estimated_prompt_tokens() as f64;
        let mut retries = 0u32;
        let mut malformed_retries = 0u32;
        let mut attempts = 0u32;

        loop {
            let permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| LlmError::Cancelled)?;
            self.cooldown.wait().await;
            if let Some(b) = &self.rpm {
                b.acquire(1.0).await;
            }
            if let Some(b) = &self.tpm {
                b.acquire(estimate).await;
            }
            // A 429 may have arrived while waiting for the buckets.
            self.cooldown.wait().await;

            let ep = self.pick_endpoint();
            let use_schema = want_schema && !ep.schema_unsupported.load(Ordering::Relaxed);
            let slot = if use_schema {
                &mut body_schema
            } else {
                &mut body_plain
            };
            let body = match slot {
                Some(b) => b.clone(),
                None => {
                    let b = serde_json::to_vec(&req.body(model, use_schema))
                        .map_err(|e| LlmError::InvalidRequest(e.to_string()))?;
                    *slot = Some(b.clone());
                    b
                }
            };

            self.usage.record_attempt(stage, model, attempts > 0);
            attempts += 1;
            let outcome = self.attempt(ep, body, use_schema).await;
            drop(permit);

            match outcome {
                Attempt::Answer(c) => {
                    ep.consecutive_failures.store(0, Ordering::Relaxed);
                    let usage = c.usage.unwrap_or_default();
                    if let (Some(b), Some(u)) = (&self.tpm, &c.usage) {
                        b.adjust((u.prompt_tokens + u.completion_tokens) as f64 - estimate);
                    }
                    self.usage.record_tokens(
                        stage,
                        model,
                        usage.prompt_tokens,
                        usage.completion_tokens,
                    );
                    let answer_model = c.model.unwrap_or_else(|| model.to_owned());
                    let Some(choice) = c.choices.into_iter().next() else {
                        let e = LlmError::ServerError {
                            endpoint: ep.display.clone(),
                            status: 200,
                            message: "answer has no choices".to_owned(),
                        };
                        self.usage.record_error(stage, model, e.kind());
                        if retries >= self.config.max_retries {
                            return Err(e);
                        }
                        self.sleep_before_retry(retries, None).await?;
                        retries += 1;
                        continue;
                    };
                    let finish_reason = choice.finish_reason;
                    let content = choice
                        .message
                        .and_then(|m| m.content)
                        .or(choice.text)
                        .unwrap_or_default();
                    match parse_json_answer(&content) {
                        Some(value) => {
                            if let (Some(cache), Some(key)) = (&self.cache, cache_key) {
                                cache.put(
                                    key,
                                    CachedAnswer {
                                        content: content.clone(),
                                        model: answer_model.clone(),
                                        prompt_tokens: usage.prompt_tokens,
                                        completion_tokens: usage.completion_tokens,
                                        finish_reason: finish_reason.clone(),
                                    },
                                );
                            }
                            return Ok(ChatResponse {
                                content,
                                value,
                                usage,
                                model: answer_model,
                                endpoint: Some(ep.display.clone()),
                                cached: false,
                                finish_reason,
                                attempts,
                            });
                        }
                        None => {
                            let e = LlmError::MalformedAnswer {
                                content: self.redactor.message(
                                    &content
                                        .chars()
                                        .take(MALFORMED_SNIPPET_CHARS)
                                        .collect::<String>(),
                                ),
                                finish_reason,
                            };
                            self.usage.record_error(stage, model, e.kind());
                            if malformed_retries >= self.config.max_malformed_retries
                                || retries >= self.config.max_retries
                            {
                                return Err(e);
                            }
                            tracing::debug!(stage, model, "malformed answer, retrying");
                            malformed_retries += 1;
                            retries += 1;
                        }
                    }
                }
                Attempt::SchemaUnsupported => {
                    // Bounded: happens at most once per endpoint.
                    self.usage.record_error(stage, model, "client_error");
                    if !ep.schema_unsupported.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            endpoint = %ep.display,
                            "endpoint rejects response_format; sending plain requests to it"
                        );
                    }
                }
                Attempt::Failed { error, retry_after } => {
                    self.usage.record_error(stage, model, error.kind());
                    match &error {
                        LlmError::RateLimited { .. } => {
                            let pause = retry_after.unwrap_or(Duration::from_secs(
                                self.config.cooldown_secs_after_429,
                            ));
                            self.cooldown.extend(pause);
                            ep.cooldown.extend(pause);
                        }
                        LlmError::ServerError { .. }
                        | LlmError::Timeout { .. }
                        | LlmError::Connection { .. } => {
                            let n = ep.consecutive_failures.fetch_add(1, Ordering::Relaxed);
                            ep.cooldown.extend(self.backoff.ceiling(n));
                        }
                        _ => {}
                    }
                    if !error.is_retriable() || retries >= self.config.max_retries {
                        return Err(error);
                    }
                    tracing::debug!(stage, model, retry = retries + 1, "{error}");
                    self.sleep_before_retry(retries, retry_after).await?;
                    retries += 1;
                }
            }
        }
    }

    /// Backoff with full jitter, at least `retry_after`; fails fast when the
    /// client is closed.
    async fn sleep_before_retry(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
    ) -> Result<(), LlmError> {
        if self.permits.is_closed() {
            return Err(LlmError::Cancelled);
        }
        let mut delay = self.backoff.delay(retry);
        if let Some(ra) = retry_after {
            delay = delay.max(ra);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }

    /// Fewest requests in flight, endpoints in cool-down last; ties go
    /// round-robin.
    fn pick_endpoint(&self) -> &Endpoint {
        let n = self.endpoints.len();
        if n == 1 {
            return &self.endpoints[0];
        }
        let start = self.next_endpoint.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = &self.endpoints[start];
        let mut best_key = (
            !best.cooldown.remaining().is_zero(),
            best.in_flight.load(Ordering::Relaxed),
        );
        for i in 1..n {
            let ep = &self.endpoints[(start + i) % n];
            let key = (
                !ep.cooldown.remaining().is_zero(),
                ep.in_flight.load(Ordering::Relaxed),
            );
            if key < best_key {
                best = ep;
                best_key = key;
            }
        }
        best
    }

    async fn attempt(&self, ep: &Endpoint, body: Vec<u8>, use_schema: bool) -> Attempt {
        ep.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(&ep.in_flight);
        ep.requests.fetch_add(1, Ordering::Relaxed);

        let mut rb = self
            .http
            .post(ep.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .timeout(self.config.timeout())
            .body(body);
        if let Some(auth) = &self.auth {
            rb = rb.header(AUTHORIZATION, auth.clone());
        }
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => return self.transport_failure(ep, e),
        };
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return self.transport_failure(ep, e),
        };

        if status.is_success() {
            return match serde_json::from_slice::<Completion>(&bytes) {
                Ok(c) => Attempt::Answer(c),
                Err(e) => Attempt::Failed {
                    error: LlmError::ServerError {
                        endpoint: ep.display.clone(),
                        status: status.as_u16(),
                        message: format!("body is not a chat completion: {e}"),
                    },
                    retry_after: None,
                },
            };
        }

        let message = self.redactor.message(&String::from_utf8_lossy(&bytes));
        let endpoint = ep.display.clone();
        let error = match status {
            StatusCode::TOO_MANY_REQUESTS => LlmError::RateLimited {
                endpoint,
                retry_after,
                message,
            },
            StatusCode::REQUEST_TIMEOUT => LlmError::Timeout { endpoint },
            s if s.is_server_error() => LlmError::ServerError {
                endpoint,
                status: s.as_u16(),
                message,
            },
            StatusCode::BAD_REQUEST
                if use_schema
                    && (message.contains("response_format") || message.contains("json_schema")) =>
            {
                return Attempt::SchemaUnsupported;
            }
            s => LlmError::ClientError {
                endpoint,
                status: s.as_u16(),
                message,
            },
        };
        Attempt::Failed { error, retry_after }
    }

    fn transport_failure(&self, ep: &Endpoint, e: reqwest::Error) -> Attempt {
        let endpoint = ep.display.clone();
        let error = if e.is_timeout() {
            LlmError::Timeout { endpoint }
        } else {
            // The URL is ours (already shown without credentials); the
            // source chain says what went wrong.
            let e = e.without_url();
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            LlmError::Connection {
                endpoint,
                message: self.redactor.message(&text),
            }
        };
        Attempt::Failed {
            error,
            retry_after: None,
        }
    }
}

/// `retry-after-ms` (OpenAI) or `Retry-After` (seconds or HTTP date).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1e3).min(super::rate_limit::MAX_RETRY_AFTER));
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
    }

    #[test]
    fn submit_reports_cancelled_when_runtime_is_gone() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = LlmClient::new(
            LlmConfig {
                // Nothing listens there; the runtime is gone before any I/O.
                endpoints: vec!["http://127.0.0.1:9/v1".to_owned()],
                api_key_env: String::new(),
                ..LlmConfig::default()
            },
            rt.handle().clone(),
        )
        .unwrap();
        rt.shutdown_background();
        let (tx, rx) = std::sync::mpsc::channel();
        client.submit("s", ChatRequest::new("m").user("hi"), move |r| {
            tx.send(r.map(|_| ())).unwrap();
        });
        let r = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(r.unwrap_err().kind(), "cancelled");
    }

    #[test]
    fn config_errors_are_reported() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = LlmClient::new(
            LlmConfig {
                endpoints: vec![],
                ..LlmConfig::default()
            },
            rt.handle().clone(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), "config");
        assert!(e.to_string().contains("endpoints"));
    }
}
