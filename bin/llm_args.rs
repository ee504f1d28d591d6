//! Which LLM a run uses: `--llm-url URL` (an OpenAI-compatible server), `--llm local[:PATH]`
//! (a small GGUF model on the CPU, served in-process over the same API), `[llm]` in the config,
//! or `--no-llm` (CPU stages only; the output is the surviving documents).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use webscale_rl_connectors::llm::cache::ResponseCache;
use webscale_rl_connectors::llm::{LlmConfig, StageProbe, StartupError};
use webscale_rl_dataflow::PipelineConfig;
use webscale_rl_dataflow::llm_service::LlmBackend;
use webscale_rl_dataflow::runtime::LlmWatch;
use webscale_rl_operators::llm_call::LlmService;

#[derive(Args, Debug, Clone, Default)]
pub struct LlmArgs {
    /// OpenAI-compatible base URL(s), comma-separated (e.g. http://localhost:8000/v1).
    #[arg(
        long,
        value_delimiter = ',',
        env = "WEBSCALE_LLM_URL",
        hide_env_values = true
    )]
    pub llm_url: Vec<String>,
    /// `local` or `local:PATH.gguf`: a small chat model on the CPU (SmolLM2-135M by default).
    #[arg(long)]
    pub llm: Option<String>,
    /// Run only the CPU stages; the output is the surviving documents.
    #[arg(long, conflicts_with_all = ["llm_url", "llm"])]
    pub no_llm: bool,
    /// Model name sent to the server (default: [llm] model, else the one model the server lists
    /// at `GET /models`; with several listed the run stops and names them).
    #[arg(long)]
    pub llm_model: Option<String>,
    /// Most LLM requests in flight for the whole process.
    #[arg(long)]
    pub llm_concurrency: Option<usize>,
    /// Response cache file (redb): a replay never pays twice for the same call. Default: on, in
    /// ~/.local/state/webscale-rl/kafka/GROUP/ (Kafka mode) or ~/.cache/webscale-rl/ (file mode).
    #[arg(long)]
    pub llm_cache: Option<std::path::PathBuf>,
    /// Run without the response cache: every call goes to the server.
    #[arg(long, conflicts_with = "llm_cache")]
    pub no_llm_cache: bool,
}

/// Where a run keeps its LLM response cache unless told otherwise.
#[derive(Clone, Debug)]
pub enum CacheHome {
    /// Kafka mode: the consumer group's state directory, where a restart finds it.
    Group(String),
    /// File mode and the demo: the user's cache directory.
    User,
}

impl CacheHome {
    fn path(&self) -> Option<PathBuf> {
        match self {
            CacheHome::Group(group) => webscale_rl_connectors::dirs::group_state_dir(group),
            CacheHome::User => webscale_rl_connectors::dirs::cache_root(),
        }
        .map(|d| d.join("llm-cache.redb"))
    }
}

/// The LLM of a run, kept alive for its duration.
pub struct LlmSetup {
    pub backend: LlmBackend,
    /// The response cache file in use, if any.
    pub cache: Option<PathBuf>,
    /// The in-process server of a local model, stopped on drop.
    #[allow(dead_code)]
    pub local: Option<Box<dyn std::any::Any>>,
}

impl LlmSetup {
    pub fn service(&self) -> Arc<dyn LlmService> {
        self.backend.service()
    }

    /// The start-up check, before anything is consumed: the served models, the model to use,
    /// each endpoint's structured-output dialect. A mistake (unknown model, refused key) stops
    /// at once. Nobody answering: with `wait_forever` (Kafka mode) wait, not ready, logging at
    /// most once a minute, until an endpoint answers or a stop signal; otherwise give up after
    /// `llm.startup_timeout_secs`. Returns what the runtime watches of the LLM from then on.
    pub fn check(
        &self,
        cfg: &PipelineConfig,
        wait_forever: bool,
        stop: &AtomicBool,
        quiet: bool,
    ) -> anyhow::Result<LlmWatch> {
        let llm = cfg.llm.as_ref().expect("an LLM is configured");
        let stage_models: Vec<(String, String)> = [
            (
                "[llm_filter] model",
                cfg.llm_filter.enabled,
                &cfg.llm_filter.model,
            ),
            // Classification and generation are the method itself: always on.
            ("[classify] model", true, &cfg.classify.model),
            ("[generate] model", true, &cfg.generate.model),
            ("[verify] model", cfg.verify.enabled, &cfg.verify.model),
        ]
        .into_iter()
        .filter(|(_, enabled, m)| *enabled && !m.is_empty())
        .map(|(setting, _, m)| (setting.to_string(), m.clone()))
        .collect();
        // Each stage's own settings, probed once the check passed (see `probe_stages`).
        let calls = [
            ("llm_filter", cfg.llm_filter.enabled, cfg.llm_filter.call()),
            ("classify", true, cfg.classify.call()),
            ("generate", true, cfg.generate.call()),
            ("verify", cfg.verify.enabled, cfg.verify.call()),
        ];
        let probes: Vec<StageProbe> = calls
            .into_iter()
            .filter(|(_, enabled, _)| *enabled)
            .map(|(section, _, call)| StageProbe {
                section: section.to_string(),
                model: call.model,
                temperature: call.temperature,
                max_tokens: call.max_tokens,
            })
            .collect();
        let client = &self.backend.client;
        let started = Instant::now();
        let timeout = Duration::from_secs(llm.startup_timeout_secs);
        let mut last_said: Option<Instant> = None;
        loop {
            let checked = self.backend.block_on(async {
                let report = client.startup_check(&stage_models).await?;
                client.probe_stages(&probes).await?;
                Ok(report)
            });
            match checked {
                Ok(report) => {
                    if !quiet {
                        for line in report.lines() {
                            eprintln!("{line}");
                        }
                        match &self.cache {
                            Some(p) => eprintln!("LLM response cache: {}", p.display()),
                            None => eprintln!("LLM response cache: off"),
                        }
                    }
                    break;
                }
                Err(StartupError::Fatal(m)) => bail!("{m}"),
                Err(StartupError::Unreachable(m)) => {
                    if !wait_forever && started.elapsed() >= timeout {
                        bail!(
                            "{m}; no answer within llm.startup_timeout_secs = {} s. Start the \
                             server, check --llm-url, or run with --no-llm; nothing was consumed",
                            timeout.as_secs()
                        );
                    }
                    if last_said.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        last_said = Some(Instant::now());
                        let until = if wait_forever {
                            "until it answers (/readyz: 503)".to_string()
                        } else {
                            format!("up to {} s", timeout.as_secs())
                        };
                        eprintln!(
                            "waiting for the LLM, {until}; nothing is consumed meanwhile: {m}"
                        );
                    }
                    let pause = Instant::now();
                    while pause.elapsed() < STARTUP_RETRY {
                        if stop.load(Ordering::Relaxed) {
                            bail!("stopped while waiting for the LLM; nothing was consumed");
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
        Ok(LlmWatch {
            health: client.health().clone(),
            max_outage: llm
                .max_outage_secs
                .or((!wait_forever).then_some(DEFAULT_FILE_MAX_OUTAGE_SECS))
                .map(Duration::from_secs),
            max_stall: (llm.max_stall_secs > 0).then(|| Duration::from_secs(llm.max_stall_secs)),
        })
    }
}

/// Pause between start-up checks while no endpoint answers.
pub const STARTUP_RETRY: Duration = Duration::from_secs(2);
/// `llm.max_outage_secs` of file mode (and the demo) when unset: a batch job should not hang.
const DEFAULT_FILE_MAX_OUTAGE_SECS: u64 = 600;

pub const NO_LLM_HELP: &str = "no LLM configured: give --llm-url URL (an OpenAI-compatible server such as vLLM, \
     SGLang, llama.cpp or OpenAI), --llm local[:PATH] (a small model on the CPU), or --no-llm \
     (CPU stages only; outputs the surviving documents)";

impl LlmArgs {
    /// Applies the flags to `cfg.llm` and starts the client. `None`: run without the LLM stages.
    /// `default_local`: with no LLM named, use the local model (the demo) instead of failing.
    /// `quiet`: where the local model is cached (or its download's progress) is logged, not printed.
    pub fn setup(
        &self,
        cfg: &mut PipelineConfig,
        default_local: bool,
        cache_home: CacheHome,
        quiet: bool,
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
            let started = crate::local_llm::start(path.as_deref(), quiet)?;
            let llm = cfg.llm.get_or_insert_with(LlmConfig::default);
            llm.endpoints = vec![started.url];
            llm.model = Some(started.model);
            // The local server answers one request at a time, slowly: queueing more only makes
            // them time out (and their retries queue behind the abandoned ones).
            llm.concurrency = 1;
            llm.timeout_secs = llm.timeout_secs.max(900);
            // Its dialect is probed like any server's: it answers `json_schema` with an object
            // of the schema (grammar-constrained decoding), in about a second.
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
        if self.no_llm_cache {
            llm.cache_path = None;
        } else if llm.cache_path.is_none()
            && let Some(path) = cache_home.path()
        {
            // The default location: another run may hold it (redb locks the file), and that
            // must not stop this one.
            match ResponseCache::open(&path, llm.cache_max_bytes) {
                Ok(_) => llm.cache_path = Some(path),
                Err(e) => tracing::warn!(
                    "{e} ({}); running without a response cache — give --llm-cache FILE",
                    path.display()
                ),
            }
        }
        llm.validate()
            .map_err(|e| anyhow::anyhow!("invalid [llm] settings: {e}"))?;
        let backend = LlmBackend::start(llm)?;
        Ok(Some(LlmSetup {
            backend,
            cache: llm.cache_path.clone(),
            local,
        }))
    }
}
