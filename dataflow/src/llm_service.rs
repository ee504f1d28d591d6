//! Backs the stages' [`LlmService`] with the OpenAI-compatible HTTP client, on the process's tokio
//! runtime.

use webscale_rl_connectors::llm::{ChatRequest, Fault, LlmClient, ResponseSchema};
use webscale_rl_operators::llm_call::{LlmAnswer, LlmFailure, LlmReply, LlmRequest, LlmService};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// The HTTP client as the stages see it.
pub struct HttpLlm {
    pub client: LlmClient,
    /// Call latency per (stage, model), for `/metrics`.
    pub latency: LlmLatency,
}

impl LlmService for HttpLlm {
    fn submit(&self, request: LlmRequest, done: Box<dyn FnOnce(LlmReply) + Send>) {
        // Labelled like the usage counters: an empty model means the configured default.
        let model = if request.model.is_empty() {
            self.client.config().model.clone().unwrap_or_default()
        } else {
            request.model.clone()
        };
        let (latency, stage, started) = (
            self.latency.clone(),
            request.stage.as_str(),
            std::time::Instant::now(),
        );
        let mut chat = ChatRequest::new(request.model)
            .user(request.prompt)
            .temperature(request.temperature)
            .max_tokens(request.max_tokens);
        if let Some((name, schema)) = request.schema {
            chat = chat.schema(ResponseSchema::new(name, schema));
        }
        chat.cache_partition = request.cache_partition;
        self.client.submit(stage, chat, move |result| {
            if !result.as_ref().is_ok_and(|r| r.cached) {
                latency.observe(stage, &model, started.elapsed().as_secs_f64());
            }
            done(match result {
                Ok(r) => Ok(LlmAnswer {
                    value: r.value,
                    model: r.model,
                }),
                Err(e) => Err(LlmFailure {
                    kind: e.kind().to_string(),
                    message: e.to_string(),
                    // The client returns faults of the world only when it is closed (the engine
                    // is stopping): the document stays unfinished, its offset uncommitted.
                    transient: e.fault() != Fault::Document,
                }),
            })
        });
    }
}

/// The process's tokio runtime and the client running on it. Dropping it closes the client
/// (flushing its cache) and stops the runtime.
pub struct LlmBackend {
    pub client: LlmClient,
    pub latency: LlmLatency,
    runtime: Option<tokio::runtime::Runtime>,
}

impl LlmBackend {
    /// Starts a small multi-threaded runtime: the calls are I/O-bound, two threads keep up with
    /// hundreds of requests in flight.
    pub fn start(cfg: &webscale_rl_connectors::llm::LlmConfig) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("webscale-llm")
            .enable_all()
            .build()?;
        let client = LlmClient::new(cfg.clone(), runtime.handle().clone())
            .map_err(|e| anyhow::anyhow!("LLM client: {e}"))?;
        Ok(LlmBackend {
            client,
            latency: LlmLatency::default(),
            runtime: Some(runtime),
        })
    }

    /// Runs `f` to completion on the backend's runtime (start-up checks, from the main thread).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the backend")
            .block_on(f)
    }

    pub fn service(&self) -> std::sync::Arc<dyn LlmService> {
        std::sync::Arc::new(HttpLlm {
            client: self.client.clone(),
            latency: self.latency.clone(),
        })
    }

    /// The LLM as [`crate::metrics::EngineMetrics`] reads it.
    pub fn metrics_handle(&self) -> LlmHandle {
        LlmHandle {
            client: self.client.clone(),
            latency: self.latency.clone(),
        }
    }
}

impl Drop for LlmBackend {
    fn drop(&mut self) {
        if let Err(e) = self.client.flush_cache() {
            tracing::warn!(error = %e, "flushing the LLM response cache");
        }
        self.client.close();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
        }
    }
}

/// Latency of LLM calls per (stage, model), in seconds: queueing, retries and backoff included,
/// cache hits excluded. Observed by the LLM service, read by [`EngineMetrics`].
#[derive(Clone, Debug)]
pub struct LlmLatency(pub(crate) Family<StageModel, Histogram, fn() -> Histogram>);

/// `stage` and `model` labels.
type StageModel = [(&'static str, String); 2];

fn latency_histogram() -> Histogram {
    // From a cached-prefix answer on a local GPU to a long generation behind a busy queue.
    Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0])
}

impl Default for LlmLatency {
    fn default() -> Self {
        LlmLatency(Family::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        ))
    }
}

impl LlmLatency {
    pub fn observe(&self, stage: &str, model: &str, secs: f64) {
        self.0
            .get_or_create(&[("stage", stage.to_string()), ("model", model.to_string())])
            .observe(secs);
    }
}

/// The LLM as the metrics see it.
#[derive(Clone)]
pub struct LlmHandle {
    pub client: LlmClient,
    pub latency: LlmLatency,
}

impl LlmHandle {
    /// The LLM side is up: the start-up check passed and no outage is on.
    pub fn up(&self) -> bool {
        self.client.health().is_up()
    }
}
