//! The local model behind `--llm local[:PATH]`.

/// Starts the local model's in-process server; returns its base URL and a handle that stops it.
pub fn start(_path: Option<&std::path::Path>) -> anyhow::Result<(String, Box<dyn std::any::Any>)> {
    anyhow::bail!("the local model is not available in this build; use --llm-url or --no-llm")
}
