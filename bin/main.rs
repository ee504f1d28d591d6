//! The `webscale-rl` command.

mod cli;
mod demo;
mod export;
mod llm_args;
mod local_llm;
mod monitoring;
mod replay;
mod score;
mod setup;

mod shutdown;
mod summary;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use webscale_rl_connectors::kafka::{KafkaConfig, tools};
use webscale_rl_dataflow::file_mode::{FileRun, default_rejects_path};
use webscale_rl_dataflow::resume::{self, ResumeMode};

use cli::{Cli, Command, RunArgs};
use setup::{Mode, Setup};

// mimalloc (see Cargo.toml): the stages allocate many short-lived buffers on several threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<()> {
    let mut cfg = setup::load_config(args.pipeline.config.as_deref())?;
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
    let resume = match (args.resume, args.restart) {
        (true, _) => ResumeMode::Require,
        (_, true) => ResumeMode::Restart,
        _ => ResumeMode::Auto,
    };
    let mode = match (&args.input, &args.output) {
        (Some(input), Some(output)) => {
            let rejects = args
                .rejects
                .clone()
                .unwrap_or_else(|| default_rejects_path(output));
            let resumable = resume::resumable(input, output, &rejects, args.format.is_some());
            if resumable && resume == ResumeMode::Restart {
                resume::discard(output, &rejects)?;
            }
            Mode::File {
                state_dir: resumable.then(|| resume::state_dir(output)),
            }
        }
        _ => Mode::Kafka,
    };
    let mut run = Setup::start(cli, &args.pipeline, cfg, mode)?;
    run.control.until_caught_up = args.until_caught_up;
    match (&args.input, &args.output) {
        (Some(input), Some(output)) => run.run_files(FileRun {
            input: input.clone(),
            output: output.clone(),
            rejects: args.rejects.clone(),
            format: args.format,
            progress: !cli.quiet,
            resume,
        })?,
        _ => run.run_kafka()?,
    }
    run.report(cli);
    Ok(())
}
