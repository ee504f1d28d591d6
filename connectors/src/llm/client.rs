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
//! endpoints in cool-down last: a failing endpoint leaves the rotation and is
//! tried again when its cool-down ends) → HTTP with the schema in the
//! endpoint's structured-output dialect → tolerant JSON parse → cache store.
//!
//! Faults follow one rule: **a fault of the LLM side never fails a call.**
//! Connection errors, timeouts, 5xx, 429 and 401/403/404 are retried with
//! capped exponential backoff and full jitter (at least `Retry-After`; a 429
//! also pauses every request of the process), without a retry limit, and feed
//! the [`LlmHealth`] outage detector that pauses the sources. Only two things
//! end a call with an error: a fault of the request itself (a malformed answer
//! after `max_malformed_retries`, a prompt too long for the context, a content
//! filter, another 4xx), and a 5xx or timeout that keeps hitting *this* call
//! `max_retries` times while the server answers others (the document is the
//! cause). The permit is released while waiting to retry.
//!
//! [`LlmClient::startup_check`] runs before anything is consumed: it lists the
//! served models, resolves the model to use, and probes each endpoint's
//! structured-output dialect.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use super::cache::{CachedAnswer, ResponseCache};
use super::config::{LlmConfig, StructuredOutput};
use super::error::{Fault, LlmError, Redactor, display_url};
use super::health::LlmHealth;
use super::parse::{parse_json_answer, parse_truncated_object};
use super::rate_limit::{Backoff, CoolDown, TokenBucket, parse_retry_after};
use super::request::{ChatRequest, ChatResponse, Usage};
use super::usage::{UsageSnapshot, UsageTracker};

/// Longest prefix of a malformed answer kept in the error.
const MALFORMED_SNIPPET_CHARS: usize = 500;

/// Handle on the process-wide LLM client. Clones share everything.
#[derive(Clone)]
pub struct LlmClient {
    pub(crate) inner: Arc<Inner>,
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

pub(crate) struct Inner {
    pub(crate) config: LlmConfig,
    handle: Handle,
    pub(crate) http: reqwest::Client,
    /// `Bearer <key>`, marked sensitive; `None` when no key is configured.
    pub(crate) auth: Option<HeaderValue>,
    pub(crate) redactor: Redactor,
    pub(crate) endpoints: Vec<Endpoint>,
    next_endpoint: AtomicUsize,
    permits: Semaphore,
    cooldown: CoolDown,
    rpm: Option<TokenBucket>,
    tpm: Option<TokenBucket>,
    backoff: Backoff,
    usage: UsageTracker,
    pub(crate) cache: Option<ResponseCache>,
    pub(crate) health: LlmHealth,
    /// Answers received (any call); a call that keeps failing while this
    /// grows is failing because of its own request.
    answers: AtomicU64,
    /// Calls in a row that ended with the same document fault (see
    /// [`LlmConfig::document_faults_before_outage`]).
    fault_streak: std::sync::Mutex<(&'static str, u32)>,
    /// The model for requests that name none: `llm.model`, or the one model
    /// the servers list (set by the start-up check).
    pub(crate) default_model: RwLock<Option<String>>,
    /// Part of every response-cache key: what identifies the model (set by the start-up check;
    /// see `startup::model_identity`), or `llm.cache_namespace`.
    pub(crate) cache_namespace: RwLock<String>,
}

/// One server, with its live state.
pub(crate) struct Endpoint {
    /// `<base>/chat/completions`.
    pub(crate) url: reqwest::Url,
    /// `<base>/models`.
    pub(crate) models_url: reqwest::Url,
    /// Base URL without credentials, for errors, logs and responses.
    pub(crate) display: String,
    in_flight: AtomicUsize,
    /// Set after rate limits and failures, to steer traffic elsewhere.
    cooldown: CoolDown,
    consecutive_failures: AtomicU32,
    /// Structured-output dialect, an index into [`DIALECTS`]: set by the
    /// start-up probe (or the configuration), moved down the list when the
    /// server refuses the one in use.
    pub(crate) dialect: AtomicU8,
    requests: AtomicU64,
}

/// The dialects by index, for [`Endpoint::dialect`].
const DIALECTS: [StructuredOutput; 5] = [
    StructuredOutput::Auto,
    StructuredOutput::JsonSchema,
    StructuredOutput::JsonObject,
    StructuredOutput::GuidedJson,
    StructuredOutput::None,
];

pub(crate) fn dialect_index(d: StructuredOutput) -> u8 {
    DIALECTS.iter().position(|x| *x == d).unwrap_or(0) as u8
}

impl Endpoint {
    /// The dialect to send a schema in. `Auto` before a probe: the most
    /// common one, refusals move it down the list.
    pub(crate) fn dialect(&self) -> StructuredOutput {
        match DIALECTS[usize::from(self.dialect.load(Ordering::Relaxed)) % DIALECTS.len()] {
            StructuredOutput::Auto => StructuredOutput::JsonSchema,
            d => d,
        }
    }

    /// The server refused `refused`: use the next dialect (once per refusal).
    fn fall_back(&self, refused: StructuredOutput) {
        let order = StructuredOutput::PROBE_ORDER;
        let next = order
            .iter()
            .position(|d| *d == refused)
            .and_then(|i| order.get(i + 1))
            .copied()
            .unwrap_or(StructuredOutput::None);
        let (from, to) = (dialect_index(refused), dialect_index(next));
        let swapped = self
            .dialect
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            || (refused == StructuredOutput::JsonSchema
                && self
                    .dialect
                    .compare_exchange(0, to, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok());
        if swapped {
            tracing::warn!(
                endpoint = %self.display,
                "endpoint refuses structured output as {refused}; using {next} from now on"
            );
        }
    }
}

/// Live counters of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    pub endpoint: String,
    pub requests: u64,
    pub in_flight: usize,
    /// The structured-output dialect in use (`json_schema`, `json_object`,
    /// `guided_json`, `none`).
    pub dialect: StructuredOutput,
    /// Consecutive failed attempts (0 while it answers).
    pub consecutive_failures: u32,
}

/// What one HTTP attempt produced.
enum Attempt {
    Answer(Completion),
    /// The server refused the structured-output dialect: retry the same call
    /// in the next one.
    DialectRefused,
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

/// Retry bookkeeping of one call.
struct RetryState {
    /// Retries so far (the backoff grows with them, up to its cap).
    retries: u32,
    /// 5xx / timeouts of this call that came while other calls were answered.
    suspect_failures: u32,
    /// [`Inner::answers`] when the last suspect failure was counted.
    answers_seen: u64,
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

/// Runs `call` as a task of its own, watched by a second one that hands its result to `guard`.
/// A panic inside the call (a bug, or an answer no code foresaw) must stop the engine with an
/// error ([`LlmHealth::record_fatal`], which the worker loops read), not reach the stage as a
/// cancellation that it would hold forever. If the runtime is already shut down both tasks are
/// dropped at once, and the guard reports the cancellation.
fn spawn_watched<C, F>(handle: &Handle, call: C, guard: DoneGuard<F>, health: LlmHealth)
where
    C: std::future::Future<Output = Result<ChatResponse, LlmError>> + Send + 'static,
    F: FnOnce(Result<ChatResponse, LlmError>) + Send + 'static,
{
    let call = handle.spawn(call);
    drop(handle.spawn(async move {
        match call.await {
            Ok(r) => guard.complete(r),
            Err(e) if e.is_panic() => {
                let error = format!("a call panicked: {}", panic_message(e.into_panic()));
                health.record_fatal(&error);
                guard.complete(Err(LlmError::Internal(error)));
            }
            // Cancelled with the runtime: the guard says so.
            Err(_) => drop(guard),
        }
    }));
}

/// `<base>/<path>`, with `base`'s query string kept after the joined path (Azure OpenAI's
/// `?api-version=...`): appending text to the URL put the path inside the query.
fn endpoint_url(base: &str, path: &str) -> Result<reqwest::Url, LlmError> {
    let bad = |e: String| LlmError::Config(format!("endpoint {}: {e}", display_url(base)));
    let mut url = reqwest::Url::parse(base).map_err(|e| bad(e.to_string()))?;
    url.path_segments_mut()
        .map_err(|()| bad("not a base URL".to_owned()))?
        .pop_if_empty()
        .extend(path.split('/'));
    Ok(url)
}

/// The text of a panic's payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "(no message)".to_owned(), |s| (*s).to_owned()),
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
                let join = |path: &str| endpoint_url(base, path);
                Ok(Endpoint {
                    url: join("chat/completions")?,
                    models_url: join("models")?,
                    display: display_url(base),
                    in_flight: AtomicUsize::new(0),
                    cooldown: CoolDown::default(),
                    consecutive_failures: AtomicU32::new(0),
                    dialect: AtomicU8::new(dialect_index(config.structured_output)),
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
            Some(p) => Some(
                ResponseCache::open(p, config.cache_max_bytes)
                    .map_err(|e| LlmError::Config(e.to_string()))?,
            ),
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
                health: LlmHealth::new(config.outage_after_failures),
                answers: AtomicU64::new(0),
                fault_streak: std::sync::Mutex::new(("", 0)),
                cache_namespace: RwLock::new(
                    config
                        .cache_namespace
                        .as_ref()
                        .map(|ns| format!("namespace:{ns}"))
                        .unwrap_or_default(),
                ),
                default_model: RwLock::new(config.model.clone()),
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
            self.default_model().unwrap_or_default()
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
        let health = self.inner.health.clone();
        spawn_watched(
            &self.inner.handle,
            async move { this.chat_json(&stage, req).await },
            guard,
            health,
        );
    }

    /// The model used for requests that name none: `llm.model`, or the one
    /// model the servers list (after [`LlmClient::startup_check`]).
    pub fn default_model(&self) -> Option<String> {
        self.inner
            .default_model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The outage detector: whether the LLM side is up, and since when not.
    pub fn health(&self) -> &LlmHealth {
        &self.inner.health
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
                dialect: e.dialect(),
                consecutive_failures: e.consecutive_failures.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Time left in the global rate-limit cool-down.
    pub fn cooldown_remaining(&self) -> Duration {
        self.inner.cooldown.remaining()
    }

    /// The response cache, if on (Kafka mode attaches its changelog and restores its partitions).
    pub fn response_cache(&self) -> Option<&ResponseCache> {
        self.inner.cache.as_ref()
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

        let cache_key = self.cache.as_ref().map(|_| {
            let namespace = self
                .cache_namespace
                .read()
                .unwrap_or_else(|e| e.into_inner());
            req.cache_key_in(model, &namespace)
        });
        if let (Some(cache), Some(key)) = (&self.cache, cache_key) {
            match cache.get(key) {
                Ok(Some(hit)) => {
                    if let Some(value) = parse_answer(&hit.content, hit.finish_reason.as_deref()) {
                        return Ok(ChatResponse {
                            value,
                            usage: Usage {
                                prompt_tokens: hit.prompt_tokens,
                                completion_tokens: hit.completion_tokens,
                                cached_prompt_tokens: hit.cached_prompt_tokens,
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

        // One body per dialect tried, built once.
        let mut bodies: Vec<(StructuredOutput, Vec<u8>)> = Vec::with_capacity(1);
        let estimate = req.estimated_prompt_tokens() as f64;
        let mut retry = RetryState {
            retries: 0,
            suspect_failures: 0,
            answers_seen: self.answers.load(Ordering::Relaxed),
        };
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
            let dialect = if req.schema.is_some() {
                ep.dialect()
            } else {
                StructuredOutput::None
            };
            let body = match bodies.iter().find(|(d, _)| *d == dialect) {
                Some((_, b)) => b.clone(),
                None => {
                    let b = serde_json::to_vec(&req.body(model, dialect))
                        .map_err(|e| LlmError::InvalidRequest(e.to_string()))?;
                    bodies.push((dialect, b.clone()));
                    b
                }
            };

            self.usage.record_attempt(stage, model, attempts > 0);
            attempts += 1;
            let outcome = self.attempt(ep, body, dialect).await;
            drop(permit);

            let error = match outcome {
                Attempt::Answer(c) => {
                    // The health hears of it once the answer is usable (or a document fault):
                    // a server answering every call with `content: null` is not up.
                    ep.consecutive_failures.store(0, Ordering::Relaxed);
                    self.answers.fetch_add(1, Ordering::Relaxed);
                    let usage = c.usage.unwrap_or_default();
                    if let (Some(b), Some(u)) = (&self.tpm, &c.usage) {
                        b.adjust((u.prompt_tokens + u.completion_tokens) as f64 - estimate);
                    }
                    self.usage.record_tokens(stage, model, &usage);
                    let answer_model = c.model.unwrap_or_else(|| model.to_owned());
                    match c.choices.into_iter().next() {
                        None => LlmError::ServerError {
                            endpoint: ep.display.clone(),
                            status: 200,
                            message: "answer has no choices".to_owned(),
                        },
                        Some(choice) => {
                            let finish_reason = choice.finish_reason;
                            let content = choice
                                .message
                                .and_then(|m| m.content)
                                .or(choice.text)
                                .unwrap_or_default();
                            if finish_reason.as_deref() == Some("content_filter") {
                                let e = LlmError::ContentFilter {
                                    endpoint: ep.display.clone(),
                                    message: "finish_reason content_filter".to_owned(),
                                };
                                self.usage.record_error(stage, model, e.kind());
                                self.document_fault(e, &mut retry).await?;
                                continue;
                            }
                            match parse_answer(&content, finish_reason.as_deref()) {
                                Some(value) => {
                                    if let (Some(cache), Some(key)) = (&self.cache, cache_key) {
                                        cache.put(
                                            key,
                                            CachedAnswer {
                                                content: content.clone(),
                                                model: answer_model.clone(),
                                                prompt_tokens: usage.prompt_tokens,
                                                completion_tokens: usage.completion_tokens,
                                                cached_prompt_tokens: usage.cached_prompt_tokens,
                                                finish_reason: finish_reason.clone(),
                                                partition: req.cache_partition,
                                            },
                                        );
                                    }
                                    self.fault_streak_lock().1 = 0;
                                    self.health.record_success();
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
                                    if malformed_retries >= self.config.max_malformed_retries {
                                        self.document_fault(e, &mut retry).await?;
                                        continue;
                                    }
                                    tracing::debug!(stage, model, "malformed answer, retrying");
                                    malformed_retries += 1;
                                    continue;
                                }
                            }
                        }
                    }
                }
                Attempt::DialectRefused => {
                    // Bounded: each refusal moves the endpoint down a finite list.
                    self.usage.record_error(stage, model, "client_error");
                    self.health.record_success();
                    ep.fall_back(dialect);
                    continue;
                }
                Attempt::Failed { error, retry_after } => {
                    self.usage.record_error(stage, model, error.kind());
                    if error.fault() != Fault::World {
                        // The server answered: the request is at fault (unless it is every
                        // request's, see `document_fault`).
                        self.document_fault(error, &mut retry).await?;
                        continue;
                    }
                    self.world_fault(ep, error, retry_after, &mut retry).await?;
                    continue;
                }
            };
            // A 200 that is not a usable completion: a server fault, retried like a 5xx.
            self.usage.record_error(stage, model, error.kind());
            self.world_fault(ep, error, None, &mut retry).await?;
        }
    }

    fn fault_streak_lock(&self) -> std::sync::MutexGuard<'_, (&'static str, u32)> {
        self.fault_streak.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A call ends with a fault of its request: returns it as `Err` for the stage to
    /// dead-letter, as a document fault is. But the same kind of fault on
    /// `document_faults_before_outage` calls in a row, with no answer between, is no
    /// coincidence of the documents: a bad parameter (a 400 for every `temperature = 5`), a
    /// server answering `content: null`. Then it is a fault of the world: the outage detector
    /// hears of it (input paused, `/readyz` 503, `max_outage_secs` applies) and the call is
    /// retried after a backoff (`Ok`), so no more documents are dead-lettered for it.
    async fn document_fault(
        &self,
        error: LlmError,
        retry: &mut RetryState,
    ) -> Result<(), LlmError> {
        let limit = self.config.document_faults_before_outage;
        let streak = {
            let mut s = self.fault_streak_lock();
            if s.0 == error.kind() {
                s.1 = s.1.saturating_add(1);
            } else {
                *s = (error.kind(), 1);
            }
            s.1
        };
        if limit == 0 || streak < limit {
            // The server answered: it is up.
            self.health.record_success();
            return Err(error);
        }
        self.health.record_failure(&format!(
            "{error} — the same fault ({}) on {streak} calls in a row: taken for a fault of the \
             configuration or the server, not of the documents (llm.document_faults_before_outage)",
            error.kind()
        ));
        self.sleep_before_retry(retry.retries, None).await?;
        retry.retries = retry.retries.saturating_add(1);
        Ok(())
    }

    /// A fault of the LLM side: cool the endpoint down, tell the outage
    /// detector, wait (capped backoff, at least `retry_after`) and let the
    /// caller retry — without a limit, except for a 5xx or timeout that keeps
    /// hitting this call while others are answered (then the request is the
    /// cause: [`LlmError::Persistent`]). Fails only when the client is closed.
    async fn world_fault(
        &self,
        ep: &Endpoint,
        error: LlmError,
        retry_after: Option<Duration>,
        retry: &mut RetryState,
    ) -> Result<(), LlmError> {
        // A server's own wait, capped: no header may stall the engine past what the user allows.
        let cap = Duration::from_secs(self.config.max_retry_after_secs);
        if let Some(asked) = retry_after.filter(|d| *d > cap) {
            tracing::warn!(
                endpoint = %ep.display,
                "the server asked to wait {:.0} s before retrying; waiting {} s \
                 (llm.max_retry_after_secs)",
                asked.as_secs_f64(),
                cap.as_secs()
            );
        }
        let retry_after = retry_after.map(|d| d.min(cap));
        if let LlmError::RateLimited { .. } = &error {
            let pause = retry_after
                .unwrap_or(Duration::from_secs(self.config.cooldown_secs_after_429))
                .min(cap);
            self.cooldown.extend(pause);
            ep.cooldown.extend(pause);
        } else {
            let n = ep.consecutive_failures.fetch_add(1, Ordering::Relaxed);
            ep.cooldown.extend(self.backoff.ceiling(n));
        }
        self.health.record_failure(&error.to_string());
        if matches!(
            error,
            LlmError::ServerError { .. } | LlmError::Timeout { .. }
        ) {
            let answers = self.answers.load(Ordering::Relaxed);
            if answers > retry.answers_seen {
                retry.suspect_failures += 1;
                retry.answers_seen = answers;
            }
            if retry.suspect_failures > self.config.max_retries {
                return Err(LlmError::Persistent {
                    kind: error.kind(),
                    message: format!(
                        "{error} ({} attempts failed while the server answered other requests)",
                        retry.retries + 1
                    ),
                });
            }
        }
        tracing::debug!(retry = retry.retries + 1, "{error}");
        self.sleep_before_retry(retry.retries, retry_after).await?;
        retry.retries = retry.retries.saturating_add(1);
        Ok(())
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

    async fn attempt(&self, ep: &Endpoint, body: Vec<u8>, dialect: StructuredOutput) -> Attempt {
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
        let bytes = match read_bounded(resp, self.config.max_response_bytes).await {
            Ok(Ok(b)) => b,
            Ok(Err(read)) => {
                // Refused before it is held: a server (or a model that never stops) must not
                // take the process's memory, nor be retried forever. A document fault, so that
                // it ends; on many documents in a row it becomes an outage (see `chat_json`).
                return Attempt::Failed {
                    error: LlmError::MalformedAnswer {
                        content: format!(
                            "answer body of {read} bytes or more refused (llm.max_response_bytes \
                             = {})",
                            self.config.max_response_bytes
                        ),
                        finish_reason: None,
                    },
                    retry_after: None,
                };
            }
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
        match classify_refusal(status.as_u16(), &ep.display, message, retry_after, dialect) {
            None => Attempt::DialectRefused,
            Some(error) => Attempt::Failed { error, retry_after },
        }
    }

    fn transport_failure(&self, ep: &Endpoint, e: reqwest::Error) -> Attempt {
        let endpoint = ep.display.clone();
        let error = if e.is_timeout() {
            LlmError::Timeout { endpoint }
        } else {
            LlmError::Connection {
                endpoint,
                message: self.redactor.message(&error_chain(e)),
            }
        };
        Attempt::Failed {
            error,
            retry_after: None,
        }
    }
}

/// Reads an answer's body up to `max` bytes: `Ok(Err(n))` when it is larger (announced by its
/// `Content-Length`, or `n` bytes read so far), without reading the rest.
pub(crate) async fn read_bounded(
    mut resp: reqwest::Response,
    max: u64,
) -> Result<Result<Vec<u8>, u64>, reqwest::Error> {
    if let Some(len) = resp.content_length().filter(|&len| len > max) {
        return Ok(Err(len));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if (body.len() + chunk.len()) as u64 > max {
            return Ok(Err((body.len() + chunk.len()) as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body))
}

/// The JSON in an answer; for an answer cut by the token limit, the members
/// that were complete before the cut ([`parse_truncated_object`]).
fn parse_answer(content: &str, finish_reason: Option<&str>) -> Option<serde_json::Value> {
    parse_json_answer(content).or_else(|| {
        (finish_reason == Some("length"))
            .then(|| parse_truncated_object(content))
            .flatten()
    })
}

/// A transport error as one line: the error and its source chain, without the URL (ours, shown
/// elsewhere without credentials). Not yet redacted.
pub(crate) fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Phrases servers use when a prompt does not fit the context window (vLLM,
/// OpenAI's `context_length_exceeded`, llama.cpp, llama-cpp-python, SGLang).
const CONTEXT_PHRASES: [&str; 8] = [
    "context length",
    "context_length",
    "context window",
    "context size",
    "maximum context",
    "too many tokens",
    "prompt is too long",
    "exceed context",
];

/// Phrases of content-filter refusals (OpenAI, Azure, Anthropic-style gateways).
const FILTER_PHRASES: [&str; 4] = [
    "content_filter",
    "content management policy",
    "content_policy",
    "flagged by",
];

/// Words a server's refusal of a structured-output dialect mentions.
const DIALECT_PHRASES: [&str; 6] = [
    "response_format",
    "json_schema",
    "json_object",
    "guided_json",
    "schema",
    "grammar",
];

/// What an HTTP error answer means: `None` when the server refuses the
/// structured-output `dialect` the request used (servers say so with 400,
/// 422 or — llama-cpp-python — 500, naming the field in the body), else the
/// error. `message` is already redacted.
pub(crate) fn classify_refusal(
    status: u16,
    endpoint: &str,
    message: String,
    retry_after: Option<Duration>,
    dialect: StructuredOutput,
) -> Option<LlmError> {
    let lower = message.to_ascii_lowercase();
    let has = |phrases: &[&str]| phrases.iter().any(|p| lower.contains(p));
    let constrained = !matches!(dialect, StructuredOutput::None | StructuredOutput::Auto);
    if constrained && matches!(status, 400 | 422 | 500) && has(&DIALECT_PHRASES) {
        return None;
    }
    let endpoint = endpoint.to_owned();
    Some(match status {
        429 => LlmError::RateLimited {
            endpoint,
            retry_after,
            message,
        },
        408 => LlmError::Timeout { endpoint },
        400 | 413 | 422 if has(&CONTEXT_PHRASES) => LlmError::ContextTooLong { endpoint, message },
        400 | 403 | 422 if has(&FILTER_PHRASES) => LlmError::ContentFilter { endpoint, message },
        s if s >= 500 => LlmError::ServerError {
            endpoint,
            status: s,
            message,
        },
        s => LlmError::ClientError {
            endpoint,
            status: s,
            message,
        },
    })
}

/// `retry-after-ms` (OpenAI) or `Retry-After` (seconds or HTTP date).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        // Clamped before the conversion: `Duration::from_secs_f64` panics on a value past
        // `u64::MAX` seconds, and a peer's header is no reason to panic.
        let secs = (ms / 1e3).min(super::rate_limit::MAX_RETRY_AFTER.as_secs_f64());
        return Some(Duration::from_secs_f64(secs));
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
    fn a_panicking_call_is_an_internal_error_and_stops_the_engine() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let health = LlmHealth::new(1);
        let (tx, rx) = std::sync::mpsc::channel();
        let guard = DoneGuard {
            done: Some(move |r: Result<ChatResponse, LlmError>| tx.send(r).unwrap()),
        };
        spawn_watched(
            rt.handle(),
            async { panic!("Duration::from_secs_f64 overflow") },
            guard,
            health.clone(),
        );
        let r = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("done is called");
        let e = r.unwrap_err();
        assert_eq!(
            e.kind(),
            "internal",
            "not `cancelled`, which a stage holds forever"
        );
        assert!(e.to_string().contains("from_secs_f64 overflow"), "{e}");
        let fatal = health.fatal().expect("the engine is told to stop");
        assert!(fatal.contains("panicked"), "{fatal}");
    }

    #[test]
    fn an_endpoints_query_string_stays_after_the_path() {
        let u = endpoint_url(
            "https://x.example/openai/v1?api-version=2024-10-21",
            "chat/completions",
        )
        .unwrap();
        assert_eq!(
            u.as_str(),
            "https://x.example/openai/v1/chat/completions?api-version=2024-10-21"
        );
        for base in ["http://h:8000/v1", "http://h:8000/v1/"] {
            assert_eq!(
                endpoint_url(base, "models").unwrap().as_str(),
                "http://h:8000/v1/models"
            );
        }
    }

    #[test]
    fn retry_after_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        // A peer's absurd value is clamped, never a panic (1e300 ms overflowed `from_secs_f64`).
        for absurd in ["1e300", "1e20", "18446744073709551616000"] {
            h.insert("retry-after-ms", HeaderValue::from_str(absurd).unwrap());
            assert_eq!(
                retry_after(&h),
                Some(super::super::rate_limit::MAX_RETRY_AFTER),
                "{absurd}"
            );
        }
        h.remove("retry-after-ms");
        h.insert("retry-after", HeaderValue::from_static("1e300"));
        assert_eq!(
            retry_after(&h),
            Some(super::super::rate_limit::MAX_RETRY_AFTER)
        );
        h.insert(
            "retry-after",
            HeaderValue::from_static("999999999999999999999"),
        );
        assert_eq!(
            retry_after(&h),
            Some(super::super::rate_limit::MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn http_errors_are_classified() {
        let c = |status, msg: &str, d| {
            classify_refusal(status, "http://x/v1", msg.to_owned(), None, d).map(|e| e.kind())
        };
        use StructuredOutput as D;
        // llama-cpp-python answers json_schema with a 500 naming response_format.
        let lcp = "1 validation error for CreateChatCompletionRequest\nresponse_format.type: Input should be 'text' or 'json_object'";
        assert_eq!(c(500, lcp, D::JsonSchema), None);
        assert_eq!(c(400, "unknown field guided_json", D::GuidedJson), None);
        assert_eq!(c(422, "schema not supported", D::JsonObject), None);
        // Without a constraint, the same words are a plain error.
        assert_eq!(c(500, lcp, D::None), Some("server_error"));
        assert_eq!(
            c(500, "CUDA out of memory", D::JsonSchema),
            Some("server_error")
        );
        assert_eq!(c(503, "loading model", D::JsonSchema), Some("server_error"));
        assert_eq!(c(429, "slow down", D::None), Some("rate_limited"));
        assert_eq!(c(408, "", D::None), Some("timeout"));
        let vllm = "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens";
        assert_eq!(c(400, vllm, D::None), Some("context_too_long"));
        assert_eq!(
            c(
                400,
                "Requested tokens (9000) exceed context window of 8192",
                D::None
            ),
            Some("context_too_long")
        );
        assert_eq!(
            c(
                400,
                "the request exceeds the available context size",
                D::None
            ),
            Some("context_too_long")
        );
        assert_eq!(
            c(400, "{\"error\":{\"code\":\"content_filter\"}}", D::None),
            Some("content_filter")
        );
        assert_eq!(c(400, "bad temperature", D::None), Some("client_error"));
        assert_eq!(c(401, "invalid key", D::None), Some("client_error"));
    }

    #[test]
    fn endpoints_fall_back_down_the_dialect_list() {
        let ep = Endpoint {
            url: reqwest::Url::parse("http://x/v1/chat/completions").unwrap(),
            models_url: reqwest::Url::parse("http://x/v1/models").unwrap(),
            display: "http://x/v1".into(),
            in_flight: AtomicUsize::new(0),
            cooldown: CoolDown::default(),
            consecutive_failures: AtomicU32::new(0),
            dialect: AtomicU8::new(dialect_index(StructuredOutput::Auto)),
            requests: AtomicU64::new(0),
        };
        assert_eq!(ep.dialect(), StructuredOutput::JsonSchema);
        ep.fall_back(StructuredOutput::JsonSchema);
        assert_eq!(ep.dialect(), StructuredOutput::JsonObject);
        // A late refusal of the old dialect does not skip one.
        ep.fall_back(StructuredOutput::JsonSchema);
        assert_eq!(ep.dialect(), StructuredOutput::JsonObject);
        ep.fall_back(StructuredOutput::JsonObject);
        ep.fall_back(StructuredOutput::GuidedJson);
        assert_eq!(ep.dialect(), StructuredOutput::None);
        ep.fall_back(StructuredOutput::None);
        assert_eq!(ep.dialect(), StructuredOutput::None);
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
