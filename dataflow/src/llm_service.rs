//! Backs the stages' [`LlmService`] with the OpenAI-compatible HTTP client, on the process's tokio
//! runtime.

use webscale_rl_connectors::llm::{ChatRequest, Fault, LlmClient, ResponseSchema};
use webscale_rl_operators::llm_call::{LlmAnswer, LlmFailure, LlmReply, LlmRequest, LlmService};

use crate::metrics::{LlmHandle, LlmLatency};

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
