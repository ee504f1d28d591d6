//! Command-line interface: `run` (Kafka or file mode), `demo`, `produce`, `tail`, `export`,
//! `score`, `replay`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "webscale-rl",
    version,
    about = "Turns web-scale pre-training text into verifiable question-answer data for RL",
    propagate_version = true
)]
pub struct Cli {
    /// Print only errors (no progress bar, no summary table).
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Print the run summary as one JSON object on stdout.
    #[arg(long, global = true)]
    pub json_summary: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the pipeline: Kafka mode (--brokers ...) or file mode (--input FILE --output FILE).
    #[command(disable_help_flag = true)]
    Run(RunArgs),
    /// Start an in-process Kafka cluster, load the bundled corpus (or --corpus), run the pipeline
    /// and print a summary. Needs no Kafka installation.
    #[command(disable_help_flag = true)]
    Demo(DemoArgs),
    /// Write a JSONL file (or stdin, `-`) to a topic, one message per line, key = the "id" field.
    Produce(ProduceArgs),
    /// Print a topic's messages from the beginning, one per line.
    Tail(TailArgs),
    /// Export QA records (a topic or a JSONL file) as jsonl, hf or verl shards for trainers.
    Export(crate::export::ExportArgs),
    /// Score responses against ground truths: the binary RL reward, one JSON line per input.
    Score(crate::score::ScoreArgs),
    /// Send dead-lettered documents through the pipeline again (e.g. after switching to a better
    /// model): from a dead-letter topic to the input topic, or from a rejects file to a JSONL file.
    Replay(crate::replay::ReplayArgs),
}

/// Where timely workers run. `-h` is the host file, as in timely; help is `--help`.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Worker threads per process.
    #[arg(short = 'w', long = "workers", default_value_t = 1)]
    pub workers: usize,
    /// Number of processes in the cluster.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    pub processes: usize,
    /// Index of this process, 0..processes.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    pub process: usize,
    /// Host file: one host:port per line, line i is process i (default 127.0.0.1:2101+i).
    #[arg(short = 'h', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// The flags `run` and `demo` share: the pipeline's config, its LLM, its benchmarks, its
/// observability server and where its workers run.
#[derive(Args, Debug)]
pub struct PipelineArgs {
    /// Pipeline config file (TOML); see pipeline.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Benchmark test set (file or folder) to decontaminate against; repeatable.
    #[arg(long)]
    pub benchmarks: Vec<PathBuf>,
    /// Serve /metrics, the dashboard (/), /healthz and /readyz on HOST:PORT; `off` disables.
    /// Default: 127.0.0.1:9898 in Kafka mode and the demo, off in file mode.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// At the end, print each dataflow operator's busy time (summed over the workers) on stderr,
    /// even with --quiet: where a run's time goes, stage by stage.
    #[arg(long)]
    pub operator_times: bool,
    #[command(flatten)]
    pub llm: crate::llm_args::LlmArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Kafka bootstrap servers (host:port,...). Overrides [kafka] brokers.
    #[arg(long, env = "WEBSCALE_BROKERS", hide_env_values = true)]
    pub brokers: Option<String>,
    #[arg(long)]
    pub input_topic: Option<String>,
    #[arg(long)]
    pub output_topic: Option<String>,
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
    /// Consumer group whose committed offsets track progress.
    #[arg(long)]
    pub group: Option<String>,
    /// Exit once the input partitions are consumed to the end offsets they had at start.
    #[arg(long)]
    pub until_caught_up: bool,
    /// File mode: input JSONL (plain, .gz, .zst) or `-` for stdin.
    #[arg(long, conflicts_with_all = ["brokers", "until_caught_up"], requires = "output")]
    pub input: Option<String>,
    /// File mode: output JSONL (`.gz`/`.zst` compress; `-` for stdout).
    #[arg(long, requires = "input")]
    pub output: Option<String>,
    /// File mode: dead-letter JSONL (default: next to the output, `NAME.rejects.jsonl`).
    #[arg(long, requires = "input")]
    pub rejects: Option<String>,
    /// File mode: write QA pairs as export shards (jsonl | hf | verl) into the --output directory.
    #[arg(long, requires = "input")]
    pub format: Option<webscale_rl_connectors::export::ExportFormat>,
    /// File mode: resume an interrupted run of the same --output (an error if there is none). A
    /// run with the same arguments resumes on its own; this only insists.
    #[arg(long, requires = "input", conflicts_with = "restart")]
    pub resume: bool,
    /// File mode: discard what an interrupted run of the same --output left (its progress record,
    /// partial files and dedup state) and start over.
    #[arg(long, requires = "input")]
    pub restart: bool,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// JSONL corpus to load instead of the bundled one.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Partitions of the demo's input topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Keep the in-process Kafka cluster up after the run (for kcat / `tail`) until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// Documents to load (default: all; 20 with the local CPU model, which is slow).
    #[arg(long)]
    pub max_docs: Option<usize>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    #[arg(long, env = "WEBSCALE_BROKERS", hide_env_values = true)]
    pub brokers: String,
    #[arg(long)]
    pub topic: String,
    /// JSONL file (plain, .gz, .zst) or `-` for stdin.
    pub file: String,
}

#[derive(Args, Debug)]
pub struct TailArgs {
    #[arg(long, env = "WEBSCALE_BROKERS", hide_env_values = true)]
    pub brokers: String,
    #[arg(long)]
    pub topic: String,
    /// Stop after this many messages.
    #[arg(long)]
    pub max: Option<u64>,
    /// Stop after this many seconds without a message once the end is reached.
    #[arg(long, default_value_t = 2)]
    pub idle_secs: u64,
}

impl ClusterArgs {
    pub fn options(&self) -> webscale_rl_dataflow::cluster::ClusterOptions {
        webscale_rl_dataflow::cluster::ClusterOptions {
            workers: self.workers,
            processes: self.processes,
            process: self.process,
            hostfile: self.hostfile.clone(),
        }
    }
}
