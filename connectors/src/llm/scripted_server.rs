//! A scripted OpenAI-compatible chat-completions server for tests and
//! benchmarks (cargo feature `scripted-server`).
//!
//! It listens on `127.0.0.1:<free port>` and answers `POST /v1/chat/completions`
//! after a configurable latency. By default the answer is a deterministic
//! function of the request (see [`default_answer`], or supply your own with
//! [`ScriptedServerConfig::answer`]), with usage = characters / 4. Faults are
//! scripted per test:
//!
//! * [`ScriptedServer::push_reply`] queues replies for the next requests, in
//!   arrival order;
//! * [`ScriptedServer::on_prompt`] replies to requests whose messages contain
//!   a substring (deterministic under concurrency), a given number of times;
//! * [`ScriptedServerConfig::dialect`] chooses which structured-output
//!   dialects it honours, as real servers differ ([`ServerDialect`]);
//! * [`ScriptedServerConfig::models`] is what `GET /v1/models` lists;
//! * [`ScriptedServer::go_down`] / [`ScriptedServer::come_up`] stop and
//!   restart it on the same port (connections refused meanwhile), and
//!   [`ScriptedServer::set_status_override`] answers every request with one
//!   status (a server that is up but failing, e.g. 503 while loading).
//!
//! The server counts requests, the maximum number in flight at once, and
//! keeps a log of what it received (arrival time, `Authorization` header,
//! body, status returned). The engine's start-up probes (marked with
//! [`PROBE_MARKER`]) are logged but counted apart: [`ScriptedServer::requests`]
//! counts the pipeline's calls only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Response, StatusCode, header};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::startup::PROBE_MARKER;

/// Computes the answer text from the request body.
pub type AnswerFn = Arc<dyn Fn(&Value) -> String + Send + Sync>;

/// What the server does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// 200 with the configured answer for this request.
    Answer,
    /// 200 with this text as the answer.
    Content(String),
    /// 200 with the configured answer inside a ```` ```json ```` fence,
    /// between prose.
    Fenced,
    /// 200 with a text answer that holds no JSON.
    Malformed,
    /// 429, with this `Retry-After` header value when given.
    RateLimited { retry_after: Option<String> },
    /// This status code with this body.
    Status(u16, String),
    /// Waits this long (on top of the latency), then answers normally.
    Hang(Duration),
    /// 200 whose body is not a chat completion.
    InvalidBody,
    /// 200 with this text as the answer, cut by the token limit
    /// (`finish_reason: "length"`).
    Truncated(String),
}

/// Which structured-output requests a server honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerDialect {
    /// OpenAI, vLLM, SGLang: `response_format` `json_schema` (and anything else).
    OpenAi,
    /// llama-cpp-python's server: `response_format` `json_schema` fails with
    /// HTTP 500 (its request validation); `json_object` with a `schema` is
    /// honoured; without that grammar the (small) model answers in prose.
    LlamaCppPython,
    /// No structured output: any `response_format` gets a 400 naming it.
    Plain,
}

/// Settings of a [`ScriptedServer`].
#[derive(Clone)]
pub struct ScriptedServerConfig {
    /// Delay before every reply.
    pub latency: Duration,
    /// The structured-output dialect it speaks.
    pub dialect: ServerDialect,
    /// What `GET /v1/models` lists; `None`: that route answers 404.
    pub models: Option<Vec<String>>,
    /// Refuse (400, as OpenAI does above 2) any request whose `temperature` is above this.
    pub max_temperature: Option<f64>,
    /// A reasoning model that thinks this many tokens before it answers: a request whose
    /// `max_tokens` does not leave room gets `content: null` (the reasoning ate the budget,
    /// `finish_reason: "length"`), probes included.
    pub reasoning_tokens: Option<u32>,
    /// Fields added to every listed model's entry, as real servers describe their model
    /// (vLLM's `root` and `max_model_len`, llama.cpp's `meta`).
    pub model_card: Option<Value>,
    /// Answer text as a function of the request body; [`default_answer`]
    /// when unset.
    pub answer: Option<AnswerFn>,
    /// Keep request bodies in the log (off for long benchmark runs).
    pub log_bodies: bool,
    /// Share of the prompt tokens reported as served from a prefix cache
    /// (`usage.prompt_tokens_details.cached_tokens`), as vLLM and OpenAI report it.
    pub cached_prompt_fraction: f64,
    /// Simulate a block-wise prefix cache of this many blocks (0: off), as vLLM's automatic
    /// prefix caching and SGLang's radix cache keep one: see [`PrefixCache`]. When on, the
    /// `cached_tokens` reported are the prompt's leading blocks found in it.
    pub prefix_cache_blocks: usize,
}

impl Default for ScriptedServerConfig {
    fn default() -> Self {
        ScriptedServerConfig {
            latency: Duration::ZERO,
            dialect: ServerDialect::OpenAi,
            models: Some(vec!["scripted".to_owned()]),
            model_card: None,
            max_temperature: None,
            reasoning_tokens: None,
            answer: None,
            log_bodies: true,
            cached_prompt_fraction: 0.0,
            prefix_cache_blocks: 0,
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub received: Instant,
    pub authorization: Option<String>,
    /// Request body (`Value::Null` when bodies are not logged).
    pub body: Value,
    pub has_response_format: bool,
    pub status: u16,
}

struct Rule {
    needle: String,
    reply: Reply,
    remaining: usize,
}

struct Shared {
    config: ScriptedServerConfig,
    latency_us: AtomicU64,
    queue: Mutex<VecDeque<Reply>>,
    rules: Mutex<Vec<Rule>>,
    requests: AtomicU64,
    probes: AtomicU64,
    status_override: Mutex<Option<(u16, String)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    log: Mutex<Vec<LoggedRequest>>,
    prefix: Mutex<PrefixCache>,
}

/// Characters per prefix-cache block: 16 tokens (vLLM's default block size) at the 4 characters
/// per token this server counts.
pub const PREFIX_BLOCK_CHARS: usize = 64;

/// A block-wise prefix cache as an inference server keeps one: a prompt is cut into blocks of
/// [`PREFIX_BLOCK_CHARS`], each block's key is a hash chained over every block before it (so a
/// block is reused only behind the same whole prefix), and a prompt's leading blocks already
/// present are served from the cache; only the rest is prefilled. Least recently used blocks are
/// evicted beyond the capacity. The counts say how much of the prompt text a real server would
/// not have to prefill again.
#[derive(Default)]
pub struct PrefixCache {
    capacity: usize,
    clock: u64,
    /// Block key -> last use.
    blocks: HashMap<u64, u64>,
    /// Last use -> block key, for eviction.
    by_age: BTreeMap<u64, u64>,
    /// Prompt characters seen, and those served from the cache.
    pub prompt_chars: u64,
    pub cached_chars: u64,
}

impl PrefixCache {
    pub fn new(capacity: usize) -> Self {
        PrefixCache {
            capacity,
            ..Default::default()
        }
    }

    /// Looks `prompt` up and inserts its blocks; returns the characters served from the cache.
    pub fn serve(&mut self, prompt: &[u8]) -> u64 {
        let mut key = 0u64;
        let mut hit = true;
        let mut cached = 0u64;
        for block in prompt.chunks_exact(PREFIX_BLOCK_CHARS) {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&key.to_le_bytes());
            h.update(block);
            key = h.digest();
            self.clock += 1;
            match self.blocks.insert(key, self.clock) {
                Some(old) => {
                    self.by_age.remove(&old);
                    if hit {
                        cached += PREFIX_BLOCK_CHARS as u64;
                    }
                }
                None => hit = false,
            }
            self.by_age.insert(self.clock, key);
        }
        while self.blocks.len() > self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.blocks.remove(&oldest);
        }
        self.prompt_chars += prompt.len() as u64;
        self.cached_chars += cached;
        cached
    }
}

/// A running scripted server; stops when dropped.
pub struct ScriptedServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    serving: Mutex<Option<Serving>>,
    runtime: tokio::runtime::Handle,
}

/// The listener task and the switch that stops it gracefully.
struct Serving {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

/// Binds `addr` (port 0: a free one) with `SO_REUSEADDR`, so a restart can
/// take the same port back at once.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) -> Serving {
    let app = Router::new()
        .route("/v1/chat/completions", post(handle))
        .route("/v1/models", get(models))
        .with_state(shared);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        // Graceful: the listener closes and idle keep-alive connections are
        // dropped at once, as when a real server process stops.
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!("scripted LLM server stopped: {e}");
        }
    });
    Serving { task, stop }
}

impl ScriptedServer {
    /// Starts a server with default settings (no latency, answers by
    /// [`default_answer`]) on the current tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(ScriptedServerConfig::default()).await
    }

    /// Starts a server with `config` on the current tokio runtime.
    pub async fn start_with(config: ScriptedServerConfig) -> std::io::Result<Self> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            latency_us: AtomicU64::new(
                u64::try_from(config.latency.as_micros()).unwrap_or(u64::MAX),
            ),
            prefix: Mutex::new(PrefixCache::new(config.prefix_cache_blocks)),
            config,
            queue: Mutex::default(),
            rules: Mutex::default(),
            requests: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            status_override: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            log: Mutex::default(),
        });
        let serving = serve(listener, Arc::clone(&shared));
        Ok(ScriptedServer {
            addr,
            shared,
            serving: Mutex::new(Some(serving)),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Stops listening: new connections are refused, idle ones closed,
    /// requests in progress finish. Blocks until the listener is closed;
    /// call it from outside the server's runtime.
    pub fn go_down(&self) {
        if let Some(s) = lock(&self.serving).take() {
            let _ = s.stop.send(());
            let _ = self.runtime.block_on(s.task);
        }
    }

    /// Listens again on the same address after [`ScriptedServer::go_down`].
    pub fn come_up(&self) -> std::io::Result<()> {
        let mut serving = lock(&self.serving);
        if serving.is_none() {
            let _rt = self.runtime.enter();
            let listener = bind(self.addr)?;
            *serving = Some(serve(listener, Arc::clone(&self.shared)));
        }
        Ok(())
    }

    /// Answers every request (models list included) with this status and
    /// body until cleared with `None`.
    pub fn set_status_override(&self, status: Option<(u16, &str)>) {
        *lock(&self.shared.status_override) = status.map(|(s, b)| (s, b.to_owned()));
    }

    /// Base URL to configure as an endpoint: `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues `reply` for the next request not matched by a rule.
    pub fn push_reply(&self, reply: Reply) {
        lock(&self.shared.queue).push_back(reply);
    }

    /// Replies with `reply` to the next `times` requests whose messages
    /// contain `needle`.
    pub fn on_prompt(&self, needle: &str, reply: Reply, times: usize) {
        lock(&self.shared.rules).push(Rule {
            needle: needle.to_owned(),
            reply,
            remaining: times,
        });
    }

    pub fn set_latency(&self, latency: Duration) {
        self.shared.latency_us.store(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Chat requests received so far, start-up probes not counted.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Start-up probes received so far.
    pub fn probes(&self) -> u64 {
        self.shared.probes.load(Ordering::SeqCst)
    }

    /// The simulated prefix cache's counts: (prompt characters, characters served from it).
    pub fn prefix_cache_chars(&self) -> (u64, u64) {
        let cache = lock(&self.shared.prefix);
        (cache.prompt_chars, cache.cached_chars)
    }

    /// Most requests ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Every request answered so far, in arrival order.
    pub fn log(&self) -> Vec<LoggedRequest> {
        let mut log = lock(&self.shared.log).clone();
        log.sort_by_key(|l| l.received);
        log
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        if let Some(s) = lock(&self.serving).take() {
            s.task.abort();
        }
    }
}

async fn models(State(s): State<Arc<Shared>>) -> Response<Body> {
    let overridden = lock(&s.status_override).clone();
    let (status, text) = match (overridden, &s.config.models) {
        (Some((status, body)), _) => (status, body),
        (None, None) => (404, error_body("not found")),
        (None, Some(list)) => (
            200,
            json!({
                "object": "list",
                "data": list.iter().map(|m| {
                    let mut entry = json!({"id": m, "object": "model", "owned_by": "scripted",
                                           "created": now_secs()});
                    if let (Some(Value::Object(card)), Value::Object(e)) =
                        (&s.config.model_card, &mut entry)
                    {
                        e.extend(card.clone());
                    }
                    entry
                }).collect::<Vec<_>>(),
            })
            .to_string(),
        ),
    };
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(text))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Seconds since the epoch: vLLM stamps a model's `created` with the time of the listing.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The default answer: `{"echo": <last user message>, "digest": <hex>}` where
/// the digest is xxh3-64 of the messages' JSON.
pub fn default_answer(body: &Value) -> String {
    let messages = body.get("messages").cloned().unwrap_or(Value::Null);
    let last_user = messages
        .as_array()
        .and_then(|ms| {
            ms.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let digest = xxhash_rust::xxh3::xxh3_64(messages.to_string().as_bytes());
    json!({"echo": last_user, "digest": format!("{digest:016x}")}).to_string()
}

/// The token sequence a server's prefix cache sees, approximated as text: each message's role
/// marker and content, in order (a chat template puts the system message first).
fn prompt_for_cache(body: &Value) -> String {
    let mut text = String::new();
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        text.push_str("<|");
        text.push_str(m.get("role").and_then(Value::as_str).unwrap_or(""));
        text.push_str("|>");
        text.push_str(m.get("content").and_then(Value::as_str).unwrap_or(""));
    }
    text
}

/// A cooperative model for the engine's own stages (benchmarks of the whole pipeline): the stage
/// is read from the request's schema name (`llm_filter`, `classify`, `qa_pair`, `verification`,
/// and the merged calls' `screen_and_label`, `qa_pairs`, `verifications`). Every document
/// qualifies, is Natural Science with two personas, and gets one question per persona (unique per
/// prompt, so nothing downstream dedups them away) that passes verification.
pub fn pipeline_answer(body: &Value) -> String {
    let schema = body
        .pointer("/response_format/json_schema/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let prompt = prompt_text(body);
    let digest = xxhash_rust::xxh3::xxh3_64(prompt.as_bytes()) % 100_000;
    let personas = ["a curious student", "a science teacher"];
    let pair = |persona: &str| {
        json!({"persona": persona, "reason": "r", "answer": "Jupiter",
               "question": format!("Which planet did {persona} in survey number {digest} name first?")})
    };
    let verdict =
        json!({"reason": "r", "has_context": true, "answer_correct": true, "leaks_answer": false});
    match schema {
        "llm_filter" => json!({"reason": "facts", "qualified": true}),
        "classify" => json!({"reason": "r", "domain": "Natural Science", "personas": personas}),
        "screen_and_label" => json!({"reason": "facts", "qualified": true,
                                     "domain": "Natural Science", "personas": personas}),
        "qa_pair" => {
            let persona = if prompt.contains("asked by a science teacher") {
                personas[1]
            } else {
                personas[0]
            };
            pair(persona)
        }
        "qa_pairs" => json!({"pairs": personas.iter().map(|p| pair(p)).collect::<Vec<_>>()}),
        "verification" => verdict,
        "verifications" => {
            let n = prompt.matches("\nPair ").count().max(1);
            json!({"verdicts": (1..=n).map(|i| {
                let mut v = verdict.clone();
                v["pair"] = json!(i);
                v
            }).collect::<Vec<_>>()})
        }
        _ => return default_answer(body),
    }
    .to_string()
}

/// All message contents of a request, concatenated.
fn prompt_text(body: &Value) -> String {
    body.get("messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m.get("content").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

struct InFlightGuard<'a>(&'a Shared);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response<Body> {
    let received = Instant::now();
    let n = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = InFlightGuard(&s);
    s.max_in_flight.fetch_max(n, Ordering::SeqCst);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let prompt = prompt_text(&parsed);
    let has_response_format = parsed.get("response_format").is_some();
    let probe = prompt.contains(PROBE_MARKER);
    let id = if probe {
        s.probes.fetch_add(1, Ordering::SeqCst)
    } else {
        s.requests.fetch_add(1, Ordering::SeqCst)
    };
    let format_type = parsed
        .pointer("/response_format/type")
        .and_then(Value::as_str)
        .unwrap_or("");
    // What the dialect makes of the request: refused, or answered — in JSON,
    // or (llama-cpp-python's small model without its grammar) in prose.
    let (refusal, answers_json) = match s.config.dialect {
        ServerDialect::OpenAi => (None, true),
        ServerDialect::Plain if has_response_format => (
            Some((
                400,
                error_body("response_format of type json_schema is not supported by this server"),
            )),
            false,
        ),
        ServerDialect::Plain => (None, true),
        ServerDialect::LlamaCppPython if format_type == "json_schema" => (
            Some((
                500,
                error_body(
                    "1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  Input should be 'text' or 'json_object'",
                ),
            )),
            false,
        ),
        ServerDialect::LlamaCppPython => (
            None,
            format_type == "json_object" && parsed.pointer("/response_format/schema").is_some(),
        ),
    };
    let overridden = lock(&s.status_override).clone();

    // Scripted replies are for the pipeline's calls, never for probes.
    let reply = if probe {
        Reply::Answer
    } else {
        let mut rules = lock(&s.rules);
        let hit = rules
            .iter_mut()
            .find(|r| r.remaining > 0 && prompt.contains(&r.needle));
        match hit {
            Some(r) => {
                r.remaining -= 1;
                Some(r.reply.clone())
            }
            None => None,
        }
        .or_else(|| lock(&s.queue).pop_front())
        .unwrap_or(Reply::Answer)
    };

    let latency = Duration::from_micros(s.latency_us.load(Ordering::Relaxed));
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let answer = |body: &Value| match &s.config.answer {
        Some(f) => f(body),
        None => default_answer(body),
    };
    let (status, extra_header, text) = if let Some((status, body)) = overridden {
        (status, None, body)
    } else if parsed.is_null() {
        (400, None, error_body("request body is not JSON"))
    } else if let Some((status, body)) = refusal {
        (status, None, body)
    } else if let Some(max) = s.config.max_temperature
        && parsed["temperature"].as_f64().is_some_and(|t| t > max)
    {
        (
            400,
            None,
            error_body(&format!(
                "temperature: Input should be less than or equal to {max}"
            )),
        )
    } else if let Some(thinking) = s.config.reasoning_tokens
        && parsed["max_tokens"]
            .as_u64()
            .is_some_and(|m| m <= u64::from(thinking))
    {
        (200, None, null_content(&parsed, &prompt, id))
    } else if !answers_json && reply == Reply::Answer {
        // A small model without a grammar: prose around no JSON at all.
        (
            200,
            None,
            completion(&parsed, &prompt, "Sure! Here is what I think about it.", id),
        )
    } else {
        match reply {
            Reply::Answer => (
                200,
                None,
                completion(&parsed, &prompt, &answer(&parsed), id),
            ),
            Reply::Content(c) => (200, None, completion(&parsed, &prompt, &c, id)),
            Reply::Fenced => {
                let c = format!(
                    "Sure, here it is:\n```json\n{}\n```\nLet me know if you need more.",
                    answer(&parsed)
                );
                (200, None, completion(&parsed, &prompt, &c, id))
            }
            Reply::Malformed => (
                200,
                None,
                completion(&parsed, &prompt, "I am sorry, I cannot help with that.", id),
            ),
            Reply::RateLimited { retry_after } => (
                429,
                retry_after.map(|v| (header::RETRY_AFTER, v)),
                error_body("Rate limit reached, please slow down"),
            ),
            Reply::Status(code, text) => (code, None, text),
            Reply::Hang(d) => {
                tokio::time::sleep(d).await;
                (
                    200,
                    None,
                    completion(&parsed, &prompt, &answer(&parsed), id),
                )
            }
            Reply::InvalidBody => (200, None, "<html>bad gateway</html>".to_owned()),
            Reply::Truncated(c) => (
                200,
                None,
                completion(&parsed, &prompt, &c, id).replace(r#""stop""#, r#""length""#),
            ),
        }
    };

    // The prefix-cache report vLLM and OpenAI give: the simulated cache's hits, or a share of
    // the prompt tokens.
    let cached_chars = (s.config.prefix_cache_blocks > 0 && !probe && status == 200)
        .then(|| lock(&s.prefix).serve(prompt_for_cache(&parsed).as_bytes()));
    let text = match serde_json::from_str::<Value>(&text) {
        Ok(mut v)
            if status == 200
                && (s.config.cached_prompt_fraction > 0.0 || cached_chars.is_some()) =>
        {
            let prompt_tokens = v.pointer("/usage/prompt_tokens").and_then(Value::as_u64);
            if let (Some(p), Some(usage)) = (prompt_tokens, v.get_mut("usage")) {
                let cached = match cached_chars {
                    Some(chars) => (chars / 4).min(p),
                    None => (p as f64 * s.config.cached_prompt_fraction).floor() as u64,
                };
                usage["prompt_tokens_details"] = json!({"cached_tokens": cached});
            }
            v.to_string()
        }
        _ => text,
    };
    lock(&s.log).push(LoggedRequest {
        received,
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: if s.config.log_bodies {
            parsed
        } else {
            Value::Null
        },
        has_response_format,
        status,
    });

    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some((name, value)) = extra_header {
        builder = builder.header(name, value);
    }
    builder
        .body(Body::from(text))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn error_body(message: &str) -> String {
    json!({"error": {"message": message, "type": "invalid_request_error"}}).to_string()
}

/// A completion whose token budget went to reasoning: no content at all.
fn null_content(request: &Value, prompt: &str, id: u64) -> String {
    let mut answer: Value =
        serde_json::from_str(&completion(request, prompt, "", id)).expect("a completion is JSON");
    answer["choices"][0]["message"]["content"] = Value::Null;
    answer["choices"][0]["message"]["reasoning_content"] = json!("Let me think");
    answer["choices"][0]["finish_reason"] = json!("length");
    answer.to_string()
}

fn completion(request: &Value, prompt: &str, content: &str, id: u64) -> String {
    let prompt_tokens = (prompt.chars().count() as u64).div_ceil(4);
    let completion_tokens = (content.chars().count() as u64).div_ceil(4);
    let model = request.get("model").cloned().unwrap_or(json!("scripted"));
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    })
    .to_string()
}

#[cfg(test)]
mod prefix_tests {
    use super::*;

    #[test]
    fn the_prefix_cache_serves_leading_blocks_behind_the_same_prefix() {
        let mut cache = PrefixCache::new(1_000);
        let doc = "d".repeat(640);
        // The first prompt fills it; the second shares the document prefix (10 blocks), then
        // differs; a prompt with the document behind another head shares nothing.
        assert_eq!(cache.serve(format!("{doc}task one").as_bytes()), 0);
        assert_eq!(
            cache.serve(format!("{doc}task two, longer {}", "x".repeat(64)).as_bytes()),
            640
        );
        assert_eq!(cache.serve(format!("head{doc}").as_bytes()), 0);
        assert_eq!(cache.prompt_chars, 640 + 8 + 640 + 81 + 644);
        assert_eq!(cache.cached_chars, 640);
        // Bounded: the least recently used blocks go first.
        let mut small = PrefixCache::new(4);
        small.serve(&[b'a'; 64 * 4]);
        small.serve(&[b'b'; 64 * 4]);
        assert_eq!(small.serve(&[b'a'; 64 * 4]), 0, "evicted");
        assert_eq!(small.serve(&[b'a'; 64 * 4]), 256);
    }
}
