//! Which LLM a run uses: `--llm-url URL` (an OpenAI-compatible server), `--llm local[:PATH]`
//! (a small GGUF model on the CPU, served in-process over the same API), `[llm]` in the config,
//! or `--no-llm` (CPU stages only; the output is the surviving documents).

use std::sync::Arc;

use anyhow::bail;
use clap::Args;
use webscale_rl_connectors::llm::LlmConfig;
use webscale_rl_dataflow::PipelineConfig;
use webscale_rl_dataflow::llm_service::LlmBackend;
use webscale_rl_operators::llm_call::LlmService;

#[derive(Args, Debug, Clone, Default)]
pub struct LlmArgs {
    /// OpenAI-compatible base URL(s), comma-separated (e.g. http://localhost:8000/v1).
    #[arg(long, value_delimiter = ',', env = "WEBSCALE_LLM_URL")]
    pub llm_url: Vec<String>,
    /// `local` or `local:PATH.gguf`: a small chat model on the CPU (SmolLM2-135M by default).
    #[arg(long)]
    pub llm: Option<String>,
    /// Run only the CPU stages; the output is the surviving documents.
    #[arg(long, conflicts_with_all = ["llm_url", "llm"])]
    pub no_llm: bool,
    /// Model name sent to the server (default: [llm] model, or the server's own default).
    #[arg(long)]
    pub llm_model: Option<String>,
    /// Most LLM requests in flight for the whole process.
    #[arg(long)]
    pub llm_concurrency: Option<usize>,
    /// Response cache file (redb): a replay never pays twice for the same call.
    #[arg(long)]
    pub llm_cache: Option<std::path::PathBuf>,
}

/// The LLM of a run, kept alive for its duration.
pub struct LlmSetup {
    pub backend: LlmBackend,
    /// The in-process server of a local model, stopped on drop.
    #[allow(dead_code)]
    pub local: Option<Box<dyn std::any::Any>>,
}

impl LlmSetup {
    pub fn service(&self) -> Arc<dyn LlmService> {
        self.backend.service()
    }
}

pub const NO_LLM_HELP: &str = "no LLM configured: give --llm-url URL (an OpenAI-compatible server such as vLLM, \
     SGLang, llama.cpp or OpenAI), --llm local[:PATH] (a small model on the CPU), or --no-llm \
     (CPU stages only; outputs the surviving documents)";

impl LlmArgs {
    /// Applies the flags to `cfg.llm` and starts the client. `None`: run without the LLM stages.
    /// `default_local`: with no LLM named, use the local model (the demo) instead of failing.
    pub fn setup(
        &self,
        cfg: &mut PipelineConfig,
        default_local: bool,
    ) -> anyhow::Result<Option<LlmSetup>> {
        if self.no_llm {
            cfg.llm = None;
            return Ok(None);
        }
        let mut local = None;
        if !self.llm_url.is_empty() {
            let llm = cfg.llm.get_or_insert_with(LlmConfig::default);
            llm.endpoints = self.llm_url.clone();
        } else if let Some(spec) = self.llm.as_deref().or(default_local.then_some("local")) {
            let path = match spec.strip_prefix("local") {
                Some("") => None,
                Some(rest) if rest.starts_with(':') => Some(std::path::PathBuf::from(&rest[1..])),
                _ => bail!(
                    "--llm takes `local` or `local:PATH.gguf`, not '{spec}'; use --llm-url for servers"
                ),
            };
            let started = crate::local_llm::start(path.as_deref())?;
            let llm = cfg.llm.get_or_insert_with(LlmConfig::default);
            llm.endpoints = vec![started.url];
            llm.model = Some(started.model);
            // The local server answers one request at a time, slowly: queueing more only makes
            // them time out (and their retries queue behind the abandoned ones).
            llm.concurrency = 1;
            llm.timeout_secs = llm.timeout_secs.max(900);
            local = Some(started.handle);
        } else if cfg.llm.is_none() {
            bail!("{NO_LLM_HELP}");
        }
        let llm = cfg.llm.as_mut().expect("set above");
        if let Some(m) = &self.llm_model {
            llm.model = Some(m.clone());
        }
        if let Some(c) = self.llm_concurrency {
            llm.concurrency = c;
        }
        if let Some(p) = &self.llm_cache {
            llm.cache_path = Some(p.clone());
        }
        llm.validate()
            .map_err(|e| anyhow::anyhow!("invalid [llm] settings: {e}"))?;
        let backend = LlmBackend::start(llm)?;
        Ok(Some(LlmSetup { backend, local }))
    }
}
