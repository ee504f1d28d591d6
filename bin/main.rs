//! The `webscale-rl` command.

mod cli;
mod demo;
mod export;
mod llm_args;
mod local_llm;
mod monitoring;
mod replay;
mod score;
mod shutdown;
mod summary;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use webscale_rl_connectors::kafka::{KafkaConfig, tools};
use webscale_rl_dataflow::file_mode::{FileRun, run_files};
use webscale_rl_dataflow::graph::Resources;
use webscale_rl_dataflow::runtime::{RunControl, run_kafka};
use webscale_rl_dataflow::{Funnel, PipelineConfig};
use webscale_rl_operators::benchmarks::BenchmarkSpec;
use webscale_rl_operators::decontaminate::Benchmarks;

use cli::{Cli, Command, RunArgs};
use summary::Summary;

fn main() -> ExitCode {
    let cli = Cli::parse_from(help_for_bare_h(std::env::args_os().collect()));
    init_logging(cli.quiet);
    match dispatch(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `-h` is the host file of a timely cluster (`run`, `demo`), as in timely. A `-h` with no file
/// after it (last, or followed by another flag) can only be a request for help: read it as
/// `--help` instead of failing with "a value is required for '--hostfile'".
fn help_for_bare_h(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    for i in 1..args.len() {
        let next_is_value = args
            .get(i + 1)
            .is_some_and(|a| !a.to_string_lossy().starts_with('-'));
        if args[i] == "-h" && !next_is_value {
            args[i] = "--help".into();
        }
    }
    args
}

fn init_logging(quiet: bool) {
    let default = if quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn dispatch(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Run(args) => run(cli, args),
        Command::Demo(args) => demo::demo(cli, args),
        Command::Export(args) => export::export(args, cli.quiet, cli.json_summary),
        Command::Score(args) => score::score(args),
        Command::Replay(args) => replay::replay(args, cli.quiet),
        Command::Produce(args) => {
            let cfg = KafkaConfig {
                brokers: args.brokers.clone(),
                ..Default::default()
            };
            let input = webscale_rl_connectors::file::JsonlInput::open(&args.file)?;
            let n = tools::produce_lines(&cfg, &args.topic, lines(input))?;
            if !cli.quiet {
                eprintln!("produced {n} messages to '{}'", args.topic);
            }
            Ok(())
        }
        Command::Tail(args) => {
            let cfg = KafkaConfig {
                brokers: args.brokers.clone(),
                ..Default::default()
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            tools::tail(
                &cfg,
                &args.topic,
                args.max,
                Duration::from_secs(args.idle_secs),
                &mut out,
            )?;
            Ok(())
        }
    }
}

/// The lines of a JSONL input, for `produce`.
fn lines(mut input: webscale_rl_connectors::file::JsonlInput) -> impl Iterator<Item = Vec<u8>> {
    let mut buf = Vec::new();
    std::iter::from_fn(move || match input.next_line(&mut buf) {
        Ok(Some(_)) => Some(std::mem::take(&mut buf)),
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %e, "reading input");
            None
        }
    })
}

/// Loads the config file (or defaults) and applies the command-line overrides.
pub fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<PipelineConfig> {
    match path {
        Some(p) => PipelineConfig::load(p),
        None => Ok(PipelineConfig::default()),
    }
}

fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<()> {
    let mut cfg = load_config(args.config.as_deref())?;
    let k = &mut cfg.kafka;
    for (field, value) in [
        (&mut k.brokers, &args.brokers),
        (&mut k.input_topic, &args.input_topic),
        (&mut k.output_topic, &args.output_topic),
        (&mut k.dead_letter_topic, &args.dead_letter_topic),
        (&mut k.group, &args.group),
    ] {
        if let Some(v) = value {
            *field = v.clone();
        }
    }
    let timely_config = args.cluster.options().timely_config()?;
    if args.cluster.processes > 1 {
        webscale_rl_dataflow::cluster::exit_on_peer_loss(args.cluster.options().addresses()?);
    }
    let file_mode = args.input.is_some() && args.output.is_some();
    if cli.json_summary && args.output.as_deref() == Some("-") {
        bail!(
            "--json-summary prints on standard output, which --output - already uses for the \
             records: write the records to a file, or drop --json-summary"
        );
    }
    if !file_mode && cfg.kafka.brokers.is_empty() {
        bail!(
            "no input: give --brokers (Kafka mode) or --input FILE --output FILE (file mode); \
             try `webscale-rl demo` for a run with no setup"
        );
    }
    let _scratch = prepare_state(
        &mut cfg,
        if file_mode {
            StateHome::Scratch
        } else {
            StateHome::Group
        },
        cli.quiet,
    )?;
    let cache_home = if file_mode {
        llm_args::CacheHome::User
    } else {
        llm_args::CacheHome::Group(cfg.kafka.group.clone())
    };
    let llm = args.llm.setup(&mut cfg, false, cache_home)?;
    let resources = Resources {
        llm: llm.as_ref().map(|l| l.service()),
        benchmarks: load_benchmarks(&mut cfg, &args.benchmarks, cli.quiet)?,
    };
    let stop = shutdown::install()?;
    let funnel = Funnel::default();
    let _metrics = monitoring::start(
        cli,
        args.metrics_addr.as_deref(),
        !file_mode,
        &funnel,
        llm.as_ref(),
    )?;
    // Before anything is consumed: Kafka mode waits (not ready) for the LLM, file mode gives up.
    let llm_watch = match &llm {
        Some(l) => Some(l.check(&cfg, !file_mode, &stop, cli.quiet)?),
        None => None,
    };
    let control = RunControl {
        stop,
        until_caught_up: args.until_caught_up,
        llm: llm_watch,
    };
    let started = Instant::now();
    let mode = if let (Some(input), Some(output)) = (&args.input, &args.output) {
        let run = FileRun {
            input: input.clone(),
            output: output.clone(),
            rejects: args.rejects.clone(),
            format: args.format,
            progress: !cli.quiet,
        };
        run_files(cfg, timely_config, run, control, funnel.clone(), resources)?;
        "file"
    } else {
        run_kafka(cfg, timely_config, control, funnel.clone(), resources)
            .context("Kafka run failed")?;
        "kafka"
    };
    let usage = llm.as_ref().map(|l| l.backend.client.usage());
    report(
        cli,
        Summary::new(mode, started.elapsed(), funnel.snapshot(), usage)
            .of_process(args.cluster.process, args.cluster.processes),
    );
    Ok(())
}

/// Where the dedup stages keep their indexes unless `state_dir` says otherwise.
pub enum StateHome {
    /// Kafka mode: the consumer group's state directory, so a restart remembers what it saw.
    Group,
    /// File mode and the demo: a temporary directory for the run, removed at its end (on disk,
    /// so memory stays bounded however large the input).
    Scratch,
}

/// Start-up checks of the stateful stages: gives the dedup indexes their default directory (on
/// disk: a few bytes of memory per document instead of kilobytes), then checks each directory
/// (one clear error instead of a panic per worker) and prints the near-dedup parameters. Keep the
/// returned directory alive for the run.
pub fn prepare_state(
    cfg: &mut PipelineConfig,
    home: StateHome,
    quiet: bool,
) -> anyhow::Result<Option<tempfile::TempDir>> {
    let needs = (cfg.near_dedup.enabled && cfg.near_dedup.state_dir.is_none())
        || (cfg.exact_dedup.enabled && cfg.exact_dedup.state_dir.is_none());
    let mut scratch = None;
    let default_dir = match (needs, home) {
        (false, _) => None,
        (true, StateHome::Group) => Some(
            webscale_rl_connectors::dirs::group_state_dir(&cfg.kafka.group).context(
                "neither XDG_STATE_HOME nor HOME is set: set [near_dedup] and [exact_dedup] state_dir",
            )?,
        ),
        (true, StateHome::Scratch) => {
            let dir = tempfile::Builder::new()
                .prefix("webscale-rl-state-")
                .tempdir()
                .context("creating a temporary directory for the dedup indexes")?;
            let path = dir.path().to_path_buf();
            scratch = Some(dir);
            Some(path)
        }
    };
    if let Some(dir) = default_dir {
        cfg.near_dedup.state_dir.get_or_insert_with(|| dir.clone());
        cfg.exact_dedup.state_dir.get_or_insert(dir);
    }
    if cfg.near_dedup.enabled {
        webscale_rl_operators::lsh_index::check_state_dir(&cfg.near_dedup)
            .map_err(|e| anyhow::anyhow!("near_dedup: {e}"))?;
        if !quiet {
            eprintln!("{}", cfg.near_dedup.summary());
        }
    }
    if cfg.exact_dedup.enabled {
        cfg.exact_dedup
            .check()
            .map_err(|e| anyhow::anyhow!("exact_dedup: {e}"))?;
    }
    Ok(scratch)
}

/// Adds `--benchmarks` paths to the config and loads every configured test set, once per process.
pub fn load_benchmarks(
    cfg: &mut PipelineConfig,
    extra: &[std::path::PathBuf],
    quiet: bool,
) -> anyhow::Result<Option<Arc<Benchmarks>>> {
    let d = &mut cfg.decontaminate;
    d.benchmarks.extend(extra.iter().map(BenchmarkSpec::path));
    if !d.enabled || d.benchmarks.is_empty() {
        return Ok(None);
    }
    let started = Instant::now();
    let benchmarks = Benchmarks::load(d).map_err(|e| anyhow::anyhow!("loading benchmarks: {e}"))?;
    if !quiet {
        let s = benchmarks.stats();
        eprintln!(
            "decontamination: {} benchmark sets, {} items, {}-gram index loaded in {:.1} s",
            s.benchmarks,
            s.items,
            d.ngram,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(Some(Arc::new(benchmarks)))
}

pub fn report(cli: &Cli, summary: Summary) {
    if cli.json_summary {
        summary.print_json();
    }
    if !cli.quiet {
        summary.print_table();
    }
}
