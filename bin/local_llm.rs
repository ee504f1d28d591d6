//! The local model behind `--llm local[:PATH]` (and the demo's default): a small GGUF chat model
//! on the CPU, served in-process over the OpenAI-compatible API so the engine's one HTTP client
//! talks to it like to any server.

/// A running local model: its base URL, model name, and what keeps it alive.
pub struct LocalLlm {
    pub url: String,
    pub model: String,
    pub handle: Box<dyn std::any::Any>,
}

/// Starts the local model's server (downloading the model on first use). Unless `quiet`, says on
/// stderr where the model is cached, or what is downloaded from where, with its progress.
#[cfg(feature = "local-model")]
pub fn start(path: Option<&std::path::Path>, quiet: bool) -> anyhow::Result<LocalLlm> {
    use webscale_rl_connectors::llm::local;
    let model = local::resolve_model_reporting(path, &mut |line| {
        if quiet {
            tracing::info!("{line}");
        } else {
            eprintln!("{line}");
        }
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("webscale-local-llm")
        .enable_all()
        .build()?;
    let server = local::serve_local_blocking(&model, runtime.handle())?;
    let url = server.base_url();
    let name = server.model_name().to_string();
    tracing::info!(model = %model.display(), url = %url, "local model serving");
    // Drop order: the server (its task) before the runtime that runs it.
    Ok(LocalLlm {
        url,
        model: name,
        handle: Box::new((server, runtime)),
    })
}

#[cfg(not(feature = "local-model"))]
pub fn start(_path: Option<&std::path::Path>, _quiet: bool) -> anyhow::Result<LocalLlm> {
    anyhow::bail!(
        "this build has no local model (cargo feature `local-model`); use --llm-url URL or --no-llm"
    )
}
