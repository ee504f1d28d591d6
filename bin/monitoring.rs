//! `--metrics-addr`: the observability server of `run` and `demo` (/metrics, the dashboard at /,
//! /healthz, /readyz). On by default in Kafka mode, where the engine runs for days; off by
//! default in file mode, a batch job with its own progress bar and summary.

use webscale_rl_dataflow::Funnel;
use webscale_rl_dataflow::http::MetricsServer;
use webscale_rl_dataflow::metrics::EngineMetrics;

use crate::cli::Cli;
use crate::llm_args::LlmSetup;

/// Where a Kafka-mode run serves its metrics unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9898";

/// Starts the server when `flag` (or the Kafka-mode default) asks for one; keep the result alive
/// for as long as the endpoints should answer. A taken default port only warns, so that several
/// engines (or tests) can run side by side; a taken explicit address is an error.
pub fn start(
    cli: &Cli,
    flag: Option<&str>,
    kafka_mode: bool,
    funnel: &Funnel,
    llm: Option<&LlmSetup>,
) -> anyhow::Result<Option<MetricsServer>> {
    let (addr, explicit) = match flag {
        Some("off") => return Ok(None),
        Some(addr) => (addr, true),
        None if kafka_mode => (DEFAULT_ADDR, false),
        None => return Ok(None),
    };
    let metrics = EngineMetrics::new(funnel);
    if let Some(llm) = llm {
        metrics.attach_llm(llm.backend.metrics_handle());
    }
    match MetricsServer::start(addr, metrics) {
        Ok(server) => {
            if !cli.quiet {
                eprintln!(
                    "dashboard: http://{}/ (Prometheus: /metrics; health: /healthz, /readyz)",
                    server.local_addr()
                );
            }
            Ok(Some(server))
        }
        Err(e) if !explicit => {
            tracing::warn!(error = %format!("{e:#}"), "metrics server not started; choose a free --metrics-addr HOST:PORT, or off");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
