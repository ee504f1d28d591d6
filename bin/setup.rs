//! The one set-up path of `run` (Kafka and file mode) and `demo`, in the order that keeps rule 2
//! (mistakes fail before anything is consumed): the dedup indexes' directories, the LLM (its
//! configuration, then the start-up check), the benchmark sets, the observability server, the
//! signal handler, the cluster; then the run; then the summary.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use webscale_rl_dataflow::file_mode::{FileRun, run_files};
use webscale_rl_dataflow::graph::Resources;
use webscale_rl_dataflow::http::MetricsServer;
use webscale_rl_dataflow::operator_times::{OperatorTimes, table};
use webscale_rl_dataflow::runtime::{RunControl, run_kafka};
use webscale_rl_dataflow::{Funnel, PipelineConfig};
use webscale_rl_operators::benchmarks::BenchmarkSpec;
use webscale_rl_operators::decontaminate::Benchmarks;

use crate::cli::{Cli, ClusterArgs, PipelineArgs};
use crate::llm_args::{CacheHome, LlmSetup};
use crate::summary::Summary;

/// What kind of run is being set up: where its state lives, whether it waits for the LLM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `run --brokers`: state under the consumer group, waits (not ready) for the LLM, serves
    /// metrics by default.
    Kafka,
    /// `run --input --output`: gives up on an absent LLM, no metrics by default; its dedup state
    /// in `state_dir` (kept for a resume) or, for a run that cannot be resumed, a scratch one.
    File {
        state_dir: Option<std::path::PathBuf>,
    },
    /// `demo`: an in-process Kafka cluster; the local model when no LLM is named.
    Demo,
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::Kafka => "kafka",
            Mode::File { .. } => "file",
            Mode::Demo => "demo",
        }
    }
}

/// A run, set up and checked, ready to start.
pub struct Setup {
    pub cfg: PipelineConfig,
    pub llm: Option<LlmSetup>,
    pub resources: Resources,
    pub funnel: Funnel,
    pub control: RunControl,
    mode: Mode,
    cluster: ClusterArgs,
    started: Instant,
    /// Kept for the run: the dedup indexes' scratch directory, the observability server.
    _scratch: Option<tempfile::TempDir>,
    _metrics: Option<MetricsServer>,
}

impl Setup {
    /// Sets up a run of `cfg` (the config file with the command's overrides applied).
    pub fn start(
        cli: &Cli,
        args: &PipelineArgs,
        mut cfg: PipelineConfig,
        mode: Mode,
    ) -> anyhow::Result<Setup> {
        // Checked first: a bad worker count or host file is a mistake like any other.
        args.cluster.options().timely_config()?;
        if args.cluster.processes > 1 {
            webscale_rl_dataflow::cluster::exit_on_peer_loss(args.cluster.options().addresses()?);
        }
        let (state_home, cache_home) = match &mode {
            Mode::Kafka => (StateHome::Group, CacheHome::Group(cfg.kafka.group.clone())),
            Mode::File {
                state_dir: Some(dir),
            } => (StateHome::Dir(dir.clone()), CacheHome::User),
            Mode::File { state_dir: None } | Mode::Demo => (StateHome::Scratch, CacheHome::User),
        };
        let workers = args.cluster.workers * args.cluster.processes;
        let scratch = prepare_state(&mut cfg, state_home, workers, cli.quiet)?;
        let llm = args
            .llm
            .setup(&mut cfg, mode == Mode::Demo, cache_home, cli.quiet)?;
        let resources = Resources {
            llm: llm.as_ref().map(|l| l.service()),
            benchmarks: load_benchmarks(&mut cfg, &args.benchmarks, cli.quiet)?,
            operator_times: args.operator_times.then(OperatorTimes::default),
            llm_client: llm.as_ref().map(|l| l.backend.client.clone()),
        };
        let funnel = Funnel::default();
        let metrics = crate::monitoring::start(
            cli,
            args.metrics_addr.as_deref(),
            !matches!(mode, Mode::File { .. }),
            &funnel,
            llm.as_ref(),
        )?;
        let stop = crate::shutdown::install()?;
        // Before anything is consumed: Kafka mode waits (not ready) for the LLM, the others
        // give up after `startup_timeout_secs`.
        let llm_watch = match &llm {
            Some(l) => Some(l.check(&cfg, mode == Mode::Kafka, &stop, cli.quiet)?),
            None => None,
        };
        Ok(Setup {
            cfg,
            llm,
            resources,
            funnel,
            control: RunControl {
                stop,
                until_caught_up: mode == Mode::Demo,
                llm: llm_watch,
                abort: Default::default(),
            },
            mode,
            cluster: args.cluster.clone(),
            started: Instant::now(),
            _scratch: scratch,
            _metrics: metrics,
        })
    }

    /// Runs the pipeline on Kafka (the run's and the demo's).
    pub fn run_kafka(&mut self) -> anyhow::Result<()> {
        self.started = Instant::now();
        run_kafka(
            self.cfg.clone(),
            self.cluster.options().timely_config()?,
            self.control.clone(),
            self.funnel.clone(),
            self.resources.clone(),
        )
        .context("Kafka run failed")
    }

    /// Runs the pipeline over files.
    pub fn run_files(&mut self, files: FileRun) -> anyhow::Result<()> {
        self.started = Instant::now();
        run_files(
            self.cfg.clone(),
            self.cluster.options().timely_config()?,
            files,
            self.control.clone(),
            self.funnel.clone(),
            self.resources.clone(),
        )
    }

    /// The run's summary, as the flags ask (this process's share of a cluster).
    pub fn report(&self, cli: &Cli) {
        let usage = self.llm.as_ref().map(|l| l.backend.client.usage());
        let summary = Summary::new(
            self.mode.name(),
            self.started.elapsed(),
            self.funnel.snapshot(),
            usage,
        );
        let summary = match &self.mode {
            Mode::Demo => summary,
            _ => summary.of_process(self.cluster.process, self.cluster.processes),
        };
        print_summary(cli, summary);
        if let Some(times) = &self.resources.operator_times {
            let workers = self.cluster.workers;
            eprint!(
                "{}",
                table(&times.totals(), workers, self.started.elapsed())
            );
        }
    }
}

/// Loads the config file, or the defaults without one.
pub fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<PipelineConfig> {
    match path {
        Some(p) => PipelineConfig::load(p),
        None => Ok(PipelineConfig::default()),
    }
}

/// Partitions of each dedup index in a run's own state directory (at least one per worker),
/// unless the config sets others.
const RUN_STATE_PARTITIONS: u32 = 8;

/// Where the dedup stages keep their indexes unless `state_dir` says otherwise.
enum StateHome {
    /// Kafka mode: the consumer group's state directory, so a restart remembers what it saw.
    Group,
    /// A run that cannot be resumed and the demo: a temporary directory for the run, removed at
    /// its end (on disk, so memory stays bounded however large the input).
    Scratch,
    /// A resumable file run: beside its output, kept until the run completes.
    Dir(std::path::PathBuf),
}

/// Start-up checks of the stateful stages: gives the dedup indexes their default directory (on
/// disk: a few bytes of memory per document instead of kilobytes), then checks each directory
/// (one clear error instead of a panic per worker) and prints the near-dedup parameters. Keep the
/// returned directory alive for the run.
fn prepare_state(
    cfg: &mut PipelineConfig,
    home: StateHome,
    workers: usize,
    quiet: bool,
) -> anyhow::Result<Option<tempfile::TempDir>> {
    let needs = (cfg.near_dedup.enabled && cfg.near_dedup.state_dir.is_none())
        || (cfg.exact_dedup.enabled && cfg.exact_dedup.state_dir.is_none());
    let mut scratch = None;
    // A run's own state (file mode, the demo) lives and dies with the run: fewer partitions
    // than a long-lived group's mean fewer files to open, commit and close (measured: 8 instead
    // of 32 took a 37 MB run from 0.92 to 0.84 s). One per worker at least, so that every
    // worker owns some, unless the config sets a count. A resumed run keeps the count its state
    // was written with, whatever the config says now: the count changes no verdict, and an
    // earlier build chose it differently.
    let private = !matches!(home, StateHome::Group);
    let run_partitions = |dir: &std::path::Path, name: &str, configured: Option<u32>| {
        webscale_rl_operators::lsh_index::existing_partitions(dir, name)
            .or(configured)
            .unwrap_or(RUN_STATE_PARTITIONS.max(workers as u32))
    };
    let default_dir = match (needs, home) {
        (false, _) => None,
        (true, StateHome::Group) => Some(
            webscale_rl_connectors::dirs::group_state_dir(&cfg.kafka.group).context(
                "neither XDG_STATE_HOME nor HOME is set: set [near_dedup] and [exact_dedup] state_dir",
            )?,
        ),
        (true, StateHome::Dir(dir)) => Some(dir),
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
        let near = &mut cfg.near_dedup;
        if near.state_dir.is_none() {
            if private {
                near.partitions = Some(run_partitions(&dir, "near_dedup", near.partitions));
            }
            near.state_dir = Some(dir.clone());
        }
        let exact = &mut cfg.exact_dedup;
        if exact.state_dir.is_none() {
            if private {
                exact.partitions = Some(run_partitions(&dir, "exact_dedup", exact.partitions));
            }
            exact.state_dir = Some(dir);
        }
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
fn load_benchmarks(
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

/// Prints the summary as the flags ask: a JSON object on stdout, a table on stderr.
fn print_summary(cli: &Cli, summary: Summary) {
    if cli.json_summary {
        summary.print_json();
    }
    if !cli.quiet {
        summary.print_table();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state directory as a run with `partitions` per index leaves it (one file each suffices).
    fn state_written_with(dir: &std::path::Path, partitions: u32) -> std::path::PathBuf {
        for name in ["exact_dedup", "near_dedup"] {
            let file = format!("part-0000-of-{partitions:04}.redb");
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join(file), b"").unwrap();
        }
        dir.to_path_buf()
    }

    #[test]
    fn a_runs_own_state_gets_fewer_partitions_unless_the_config_says() {
        let dir = tempfile::tempdir().unwrap();
        let parts =
            |cfg: &PipelineConfig| (cfg.exact_dedup.partitions(), cfg.near_dedup.partitions());

        let mut cfg = PipelineConfig::default();
        let _scratch = prepare_state(&mut cfg, StateHome::Scratch, 1, true).unwrap();
        assert_eq!(parts(&cfg), (RUN_STATE_PARTITIONS, RUN_STATE_PARTITIONS));

        let mut cfg = PipelineConfig::default();
        prepare_state(&mut cfg, StateHome::Dir(dir.path().join("a")), 2, true).unwrap();
        assert_eq!(parts(&cfg), (RUN_STATE_PARTITIONS, RUN_STATE_PARTITIONS));

        // Set in the config: kept, the default's value too.
        let mut cfg = PipelineConfig::default();
        cfg.exact_dedup.partitions = Some(4);
        cfg.near_dedup.partitions = Some(32);
        prepare_state(&mut cfg, StateHome::Dir(dir.path().join("b")), 1, true).unwrap();
        assert_eq!(parts(&cfg), (4, 32));

        // A directory of the user's own: its layout is theirs.
        let mut cfg = PipelineConfig::default();
        cfg.near_dedup.state_dir = Some(dir.path().join("mine"));
        prepare_state(&mut cfg, StateHome::Dir(dir.path().join("c")), 1, true).unwrap();
        assert_eq!(parts(&cfg), (RUN_STATE_PARTITIONS, 32));

        // More workers than that: one each.
        let mut cfg = PipelineConfig::default();
        prepare_state(&mut cfg, StateHome::Dir(dir.path().join("d")), 12, true).unwrap();
        assert_eq!(parts(&cfg), (12, 12));

        // Resuming a state written with another count (an earlier build's 32): kept.
        let old = state_written_with(&dir.path().join("e"), 32);
        let mut cfg = PipelineConfig::default();
        prepare_state(&mut cfg, StateHome::Dir(old), 1, true).unwrap();
        assert_eq!(parts(&cfg), (32, 32));

        // Even over a count the config sets: the earlier build turned a configured 32 into 8.
        let eight = state_written_with(&dir.path().join("f"), 8);
        let mut cfg = PipelineConfig::default();
        cfg.near_dedup.partitions = Some(32);
        prepare_state(&mut cfg, StateHome::Dir(eight), 1, true).unwrap();
        assert_eq!(parts(&cfg), (8, 8));
    }
}
