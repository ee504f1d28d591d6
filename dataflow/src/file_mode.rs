//! File mode: the same graph from a JSONL file (plain, `.gz`, `.zst`) or stdin to JSONL files,
//! for back-fills and for users without Kafka. Outputs appear atomically when the run completes;
//! an interrupted run keeps what is durable and the next run with the same arguments resumes it
//! ([`crate::resume`]).

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use timely::dataflow::operators::core::Probe;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::{ProbeHandle, StreamVec};
use webscale_rl_connectors::export::{ExportFormat, ExportOptions, sharded_writer};
use webscale_rl_connectors::file::{JsonlInput, JsonlOutput, Progress};
use webscale_rl_connectors::file_sink::{
    FileOutput, FileRecord, SharedOutput, Written, file_sinks,
};
use webscale_rl_connectors::file_source::{FileProgress, FileSourceConfig, file_source};
use webscale_rl_records::DeadLetter;

use crate::config::PipelineConfig;
use crate::funnel::{DEAD_LETTERED, EMITTED, Funnel};
use crate::graph::{self, Resources, count};
use crate::operator_times::{OperatorTimes, labelled};
use crate::resume::{
    InputIdentity, PartialOutput, ProgressRecord, ResumeMode, settings_fingerprint,
};
use crate::runtime::RunControl;
use webscale_rl_operators::lsh_index::IndexSync;

/// Paths of a file-mode run.
#[derive(Clone, Debug)]
pub struct FileRun {
    /// Input JSONL (`-` for stdin).
    pub input: String,
    /// Output JSONL (`-` for stdout); `.gz`/`.zst` compress. With a shard `format`, a directory.
    pub output: String,
    /// `None`: one JSONL file. `Some(format)`: QA pairs as export shards in the `output` directory
    /// (`hf`/`verl` parquet for trainers; needs the LLM stages).
    pub format: Option<ExportFormat>,
    /// Dead letters; by default next to the output (`out.jsonl` -> `out.rejects.jsonl`).
    pub rejects: Option<String>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// What to do with an earlier, interrupted run of the same output.
    pub resume: ResumeMode,
}

/// `out.jsonl.gz` -> `out.rejects.jsonl.gz`; stdout's rejects go to `rejects.jsonl`.
pub fn default_rejects_path(output: &str) -> String {
    if output == "-" {
        return "rejects.jsonl".into();
    }
    let path = Path::new(output);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("output");
    let (stem, ext) = match name.find('.') {
        Some(i) => (&name[..i], &name[i..]),
        None => (name, ".jsonl"),
    };
    path.with_file_name(format!("{stem}.rejects{ext}"))
        .to_string_lossy()
        .into_owned()
}

/// Runs the pipeline over files. The input is opened before the workers start, so a missing or
/// unreadable file fails at once with its path in the error.
pub fn run_files(
    cfg: PipelineConfig,
    timely_config: timely::Config,
    run: FileRun,
    control: RunControl,
    funnel: Funnel,
    resources: Resources,
) -> anyhow::Result<()> {
    let mut cfg = cfg;
    cfg.source.resolve(resources.llm.is_some());
    let rejects = run
        .rejects
        .clone()
        .unwrap_or_else(|| default_rejects_path(&run.output));
    if let timely::CommunicationConfig::Cluster { process, .. } = &timely_config.communication
        && *process != 0
    {
        // Worker 0 reads the input and writes both outputs, their progress record and the
        // state's fate; this process only filters its share. Touching any of them here would
        // destroy the other process's work (each once re-created the other's partial files).
        return run_follower(cfg, timely_config, run, control, funnel, resources);
    }
    crate::paths::check_distinct(&run.input, &run.output, &rejects, run.format.is_some())?;
    // Held until the run ends: a second run writing the same output is refused.
    let _lock = crate::paths::OutputLock::take(&run.output, run.format.is_some())?;
    let max_line = cfg.parse.max_document_bytes + 64 * 1024;
    let input = JsonlInput::open(&run.input)?.with_max_line_bytes(max_line);
    let resumable =
        crate::resume::resumable(&run.input, &run.output, &rejects, run.format.is_some());
    let mut checkpoints = None;
    let mut index_sync_of_run = None;
    let mut skip_lines = 0;
    let (output, rejects_out) = if resumable {
        // Its checkpoints must never be ahead of what the dedup indexes remember. In one
        // process the indexes commit every epoch without syncing, and each checkpoint syncs them
        // all before it is stored. Across processes worker 0 cannot reach the other processes'
        // partitions, so there every epoch's commit is synced (interval 0, part of the settings'
        // fingerprint as before, so a run started by an earlier build still resumes).
        cfg.exact_dedup.sync_interval_ms = 0;
        cfg.near_dedup.sync_interval_ms = 0;
        let index_sync = IndexSync::default();
        index_sync_of_run = Some(index_sync.clone());
        // Only a state of the run's own (`OUTPUT.state/`) lives and dies with it: one in a
        // `state_dir` of the config's is kept after the run, and syncs as usual.
        let own = crate::resume::state_dir(&run.output);
        let own_state = [
            (cfg.exact_dedup.enabled, &cfg.exact_dedup.state_dir),
            (cfg.near_dedup.enabled, &cfg.near_dedup.state_dir),
        ]
        .iter()
        .all(|(enabled, dir)| !enabled || dir.as_deref() == Some(own.as_path()));
        if !matches!(
            timely_config.communication,
            timely::CommunicationConfig::Cluster { .. }
        ) {
            cfg.exact_dedup.index_sync = Some(index_sync.clone());
            cfg.near_dedup.index_sync = Some(index_sync.clone());
        }
        let identity = InputIdentity::of(&run.input)?;
        let settings = settings_fingerprint(&cfg, &rejects, resources.llm.is_some());
        let record = match run.resume {
            ResumeMode::Restart => None,
            _ => ProgressRecord::load(&run.output)?,
        };
        crate::resume::require(run.resume, record.as_ref(), &run.output)?;
        let outputs = match &record {
            Some(r) => {
                if let Some(why) = r.mismatch(&identity, &settings) {
                    anyhow::bail!(
                        "cannot resume '{}' from '{}': {why}; run with --restart to start over \
                         (it discards the earlier run's partial output)",
                        run.output,
                        crate::resume::record_path(&run.output).display()
                    );
                }
                if r.finishing {
                    // Stopped between its two renames: every output was complete.
                    crate::resume::complete_finish(r, &run.output)?;
                    if run.progress {
                        eprintln!(
                            "'{}' was complete: its earlier run stopped while putting the outputs \
                             in place, which is now done",
                            run.output
                        );
                    }
                    return Ok(());
                }
                skip_lines = r.lines_done;
                if run.progress {
                    eprintln!(
                        "resuming '{}' after line {} of '{}' (progress in '{}')",
                        run.output,
                        r.lines_done,
                        run.input,
                        crate::resume::record_path(&run.output).display()
                    );
                }
                (
                    JsonlOutput::resume(&run.output, r.output.bytes)?,
                    JsonlOutput::resume(&rejects, r.rejects.bytes)?,
                )
            }
            None => {
                // Whatever an earlier run left (partial files, dedup state) is not ours.
                crate::resume::discard(&run.output, &rejects)?;
                // Until the first checkpoint a crash starts over from nothing (and removes
                // the state), so the new indexes need not wait for the disk before it.
                if own_state {
                    index_sync.skip_syncs_until_checkpoint();
                }
                (
                    JsonlOutput::create(&run.output)?,
                    JsonlOutput::create(&rejects)?,
                )
            }
        };
        checkpoints = Some(Checkpoints {
            record: ProgressRecord {
                version: 1,
                input: identity,
                settings,
                lines_done: skip_lines,
                output: PartialOutput {
                    path: run.output.clone(),
                    bytes: 0,
                },
                rejects: PartialOutput {
                    path: rejects.clone(),
                    bytes: 0,
                },
                finishing: false,
            },
            epoch_lines: cfg.source.epoch_records() as u64,
            interval: Duration::from_millis(cfg.source.checkpoint_ms),
            discard_state: own_state,
            last: std::time::Instant::now(),
            index_sync,
        });
        (Output::Jsonl(Box::new(outputs.0)), outputs.1)
    } else {
        let output = match run.format {
            None => Output::Jsonl(Box::new(JsonlOutput::create(&run.output)?)),
            Some(format) => {
                if resources.llm.is_none() {
                    anyhow::bail!(
                        "--format {format} writes QA pairs: it needs the LLM stages (not --no-llm)"
                    );
                }
                Output::Shards(format, run.output.clone())
            }
        };
        (output, JsonlOutput::create(&rejects)?)
    };
    let outputs = (output, rejects_out);
    funnel.live().set_run("file", &run.output, &rejects);
    funnel.live().set_source_ready();
    // Handed to worker 0 only; the closure below runs on every worker thread.
    let worker0 = Arc::new(Mutex::new(Some((input, outputs, checkpoints))));
    let output_path = run.output.clone();
    let abort = control.abort.clone();
    crate::workers::execute(timely_config, abort, &[STOPPED], move |worker| {
        let mine = if worker.index() == 0 {
            worker0.lock().expect("worker 0 state").take()
        } else {
            None
        };
        file_worker(worker, &cfg, mine, &run, &control, &funnel, &resources)
    })?;
    if resumable {
        // Done: the outputs are in place; the record and the dedup state are of no more use.
        if let Some(sync) = index_sync_of_run {
            // The workers' partitions are gone: their databases close here, before their files.
            sync.release();
            tracing::debug!(
                syncs_skipped = sync.syncs_skipped(),
                "the run is complete; its indexes are closed"
            );
        }
        let _ = std::fs::remove_file(crate::resume::record_path(&output_path));
        let _ = std::fs::remove_dir_all(crate::resume::state_dir(&output_path));
    }
    Ok(())
}

/// A process of a multi-process file run that does not hold worker 0: its workers filter their
/// share of the lines and send the results to worker 0; it opens no input and no output.
fn run_follower(
    cfg: PipelineConfig,
    timely_config: timely::Config,
    run: FileRun,
    control: RunControl,
    funnel: Funnel,
    resources: Resources,
) -> anyhow::Result<()> {
    funnel.live().set_source_ready();
    let abort = control.abort.clone();
    crate::workers::execute(timely_config, abort, &[STOPPED], move |worker| {
        file_worker(worker, &cfg, None, &run, &control, &funnel, &resources)
    })
}

/// What the workers other than worker 0 return when the run is stopped (worker 0 says why).
const STOPPED: &str = "stopped";

/// Worker 0's checkpointing of a resumable run.
struct Checkpoints {
    /// The last record stored (or the one to store first).
    record: ProgressRecord,
    epoch_lines: u64,
    /// `[source] checkpoint_ms`.
    interval: Duration,
    last: std::time::Instant,
    /// The dedup indexes, synced before each record is stored: every epoch the record counts
    /// is committed in them (the sinks see an epoch only after the dedup stages judged it).
    index_sync: IndexSync,
    /// The state is the run's own, removed when it completes.
    discard_state: bool,
}

impl Checkpoints {
    /// Stores a new record when the outputs hold more epochs than the last one says (and, unless
    /// `now`, the interval has passed). Returns the lines done.
    fn maybe(
        &mut self,
        through: u64,
        out: &SharedOutput,
        rej: &SharedOutput,
        now: bool,
    ) -> anyhow::Result<u64> {
        // u64::MAX: everything written; the run is finishing and renames its outputs.
        if through == u64::MAX {
            return Ok(self.record.lines_done);
        }
        let lines_done = through.saturating_mul(self.epoch_lines);
        if lines_done <= self.record.lines_done || (!now && self.last.elapsed() < self.interval) {
            return Ok(self.record.lines_done);
        }
        let bytes = |shared: &SharedOutput| -> anyhow::Result<u64> {
            match shared.borrow_mut().as_mut() {
                Some(writer) => Ok(writer.checkpoint()?.unwrap_or(0)),
                None => Ok(0),
            }
        };
        self.record.output.bytes = bytes(out)?;
        self.record.rejects.bytes = bytes(rej)?;
        self.record.lines_done = lines_done;
        self.index_sync.sync_all()?;
        self.record.store(&self.record.output.path.clone())?;
        self.last = std::time::Instant::now();
        Ok(lines_done)
    }
}

impl Checkpoints {
    /// Stores the record of a run about to rename its outputs: both complete, at these lengths.
    fn finishing(&mut self, out: &SharedOutput, rej: &SharedOutput) -> anyhow::Result<()> {
        for (shared, part) in [
            (out, &mut self.record.output),
            (rej, &mut self.record.rejects),
        ] {
            if let Some(writer) = shared.borrow_mut().as_mut() {
                part.bytes = writer.checkpoint()?.unwrap_or(0);
            }
        }
        self.record.finishing = true;
        self.record.store(&self.record.output.path.clone())
    }
}

/// The main output as handed to worker 0: shard writers are not `Send`, so worker 0 opens them.
enum Output {
    Jsonl(Box<JsonlOutput>),
    Shards(ExportFormat, String),
}

impl Output {
    fn open(self) -> anyhow::Result<FileOutput> {
        Ok(match self {
            Output::Jsonl(out) => FileOutput::Jsonl(*out),
            Output::Shards(format, dir) => {
                // Replays are impossible within one file run: no dedup pass needed.
                let opts = ExportOptions {
                    dedup: false,
                    ..Default::default()
                };
                FileOutput::Shards(sharded_writer(format, std::path::Path::new(&dir), &opts)?)
            }
        })
    }
}

type Worker0 = (JsonlInput, (Output, JsonlOutput), Option<Checkpoints>);

/// What every file sink of a worker shares: the funnel it counts into, the first write error,
/// and the probe whose frontier says what is durable.
struct Sinks<'a> {
    funnel: &'a Funnel,
    error: &'a Rc<RefCell<Option<String>>>,
    durable: &'a ProbeHandle<u64>,
    /// The main output is JSONL (not shards): records are encoded before they cross.
    jsonl: bool,
    times: Option<&'a OperatorTimes>,
}

impl Sinks<'_> {
    /// Counts `records` as emitted and `dead_letters` as dead-lettered on their way into the
    /// sinks writing `out` and `rejects`.
    fn write<R: FileRecord>(
        &self,
        records: StreamVec<'_, u64, (i64, R)>,
        dead_letters: StreamVec<'_, u64, DeadLetter>,
        out: &SharedOutput,
        rejects: &SharedOutput,
    ) -> Written {
        let worker = records.scope().worker();
        labelled(self.times, worker, "file sink (encode, write)", || {
            let records = count(records, self.funnel, EMITTED.0, EMITTED.1);
            let dead_letters = count(dead_letters, self.funnel, DEAD_LETTERED.0, DEAD_LETTERED.1)
                .map(|dead| (dead.offset, dead));
            let written = Written::default();
            file_sinks(
                records,
                dead_letters,
                out.clone(),
                rejects.clone(),
                written.clone(),
                self.error.clone(),
                self.jsonl,
            )
            .probe_with(self.durable);
            written
        })
    }
}

fn file_worker(
    worker: &mut timely::worker::Worker,
    cfg: &PipelineConfig,
    mine: Option<Worker0>,
    run: &FileRun,
    control: &RunControl,
    funnel: &Funnel,
    resources: &Resources,
) -> anyhow::Result<()> {
    // Worker 0 holds the input and both writers; the others only process their share.
    let (input, out, rej, mut checkpoints) = match mine {
        Some((i, (o, r), c)) => (Some(i), Some(o.open()?), Some(FileOutput::Jsonl(r)), c),
        None => (None, None, None, None),
    };
    // A resumed run's reader reads past the lines its record says are done.
    let skip_lines = checkpoints.as_ref().map_or(0, |c| c.record.lines_done);
    let out = Rc::new(RefCell::new(out));
    let rej = Rc::new(RefCell::new(rej));
    let sink_error = Rc::new(RefCell::new(None));
    let progress = Rc::new(RefCell::new(FileProgress::default()));
    let durable = ProbeHandle::new();
    let source_cfg = FileSourceConfig {
        epoch_lines: cfg.source.epoch_records() as u64,
        batch_max: cfg.source.batch_max.max(1),
        // `max_in_flight_docs` is per worker, as in Kafka mode; the file's epochs are shared.
        max_open_epochs: (cfg.source.in_flight_docs() * worker.peers() / cfg.source.epoch_records())
            .max(2) as u64,
        skip_lines,
    };
    let is_reader = input.is_some();
    if let Some(times) = &resources.operator_times {
        times.register(worker);
    }
    let written = worker.dataflow::<u64, _, _>(|scope| -> anyhow::Result<Written> {
        let messages = file_source(
            scope,
            input,
            source_cfg,
            durable.clone(),
            progress.clone(),
            control.pause(),
        );
        let outs = graph::build(messages, cfg, funnel, resources).map_err(|e| anyhow!(e))?;
        // Counted on their way into the sinks: the funnel's `emitted` / `dead_lettered`.
        let sinks = Sinks {
            funnel,
            error: &sink_error,
            durable: &durable,
            jsonl: run.format.is_none(),
            times: resources.operator_times.as_ref(),
        };
        Ok(match outs.output {
            graph::Output::Documents(records) => {
                sinks.write(records, outs.dead_letters, &out, &rej)
            }
            graph::Output::QaPairs(records) => sinks.write(records, outs.dead_letters, &out, &rej),
        })
    })?;
    let with_llm = resources.llm.is_some();
    let mut bar = is_reader.then(|| {
        let bar = Progress::new(progress.borrow().total_bytes, run.progress);
        if with_llm {
            bar.counting_qa_pairs()
        } else {
            bar
        }
    });
    // Worker 0 waits for its sinks to have written everything, the others for the frontier.
    let finished = |durable: &ProbeHandle<u64>| match is_reader {
        true => written.get() == u64::MAX,
        false => durable.done(),
    };
    // On worker 0 only, which knows whether its input is merely idle: the frontier is the same on
    // every worker, and the others stop when worker 0 fails (the abort; a follower process when
    // the leader's connection closes).
    let mut watchdog = is_reader.then(|| crate::runtime::Watchdog::new(control));
    while !finished(&durable) {
        worker.step_or_park(Some(Duration::from_millis(50)));
        if control.abort.failed() {
            // Another worker failed and says why (worker 0's checkpoints stay as last stored).
            return Err(anyhow!(crate::workers::ABORTED));
        }
        if let Some(e) = sink_error.borrow().as_ref() {
            return Err(anyhow!("writing output: {e}"));
        }
        if let Some(e) = progress.borrow().error.as_ref() {
            return Err(anyhow!("{e}"));
        }
        if let Some(bar) = bar.as_mut() {
            let p = progress.borrow();
            bar.update(p.bytes_read, p.lines, funnel.get(EMITTED.0, EMITTED.1));
        }
        let stop = control.llm_stop_reason().or_else(|| {
            let watchdog = watchdog.as_mut()?;
            let frontier = durable.with_frontier(|f| f.first().copied());
            // A stdin or pipe whose writer pauses, with every epoch before the open one durable,
            // holds nothing back: the run waits for input, it is not stalled.
            let waiting_at = progress.borrow().waiting_at;
            if waiting_at.is_some_and(|at| frontier.is_none_or(|f| f >= at)) {
                watchdog.restart();
                return None;
            }
            watchdog.check(control, frontier)
        });
        let interrupted = control.stop.load(std::sync::atomic::Ordering::Relaxed);
        if (interrupted || stop.is_some()) && !is_reader {
            // Every worker stops (and drops its dataflows): one left waiting for a frontier that
            // worker 0 no longer advances would hold the process. Worker 0 says why.
            return Err(anyhow!(STOPPED));
        }
        if let Some(c) = checkpoints.as_mut() {
            let lines_done = c.maybe(written.get(), &out, &rej, stop.is_some() || interrupted)?;
            if stop.is_some() || interrupted {
                // Stops at once: what is durable is kept, the rest is redone by the next run
                // (the LLM cache answers what was already asked).
                let why = stop.unwrap_or_else(|| "interrupted".into());
                return Err(anyhow!(
                    "{why}; every output of input lines 1-{lines_done} is kept: run the same \
                     command again to resume (progress in '{}')",
                    crate::resume::record_path(&run.output).display()
                ));
            }
        }
        if let Some(reason) = stop {
            return Err(anyhow!("{reason}"));
        }
        if interrupted {
            return Err(anyhow!(
                "interrupted; no output written (a run from standard input, to standard output \
                 or to shards cannot be resumed)"
            ));
        }
    }
    if let Some(mut bar) = bar {
        bar.finish();
    }
    if let Some(c) = checkpoints.as_mut() {
        // Both files whole and synced, at lengths the record names, before the first rename: a
        // crash between the two renames leaves a record that says so, and the next run completes
        // them (`resume::complete_finish`) instead of finding one partial file gone.
        c.finishing(&out, &rej)?;
    }
    for shared in [out, rej] {
        if let Some(writer) = shared.borrow_mut().take() {
            writer.finish()?;
        }
    }
    if let Some(c) = checkpoints.as_ref().filter(|c| c.discard_state) {
        // The outputs are in place, and the run removes its state when the workers are done:
        // the indexes, which close after this, need not wait for the disk.
        c.index_sync.discard();
    }
    Ok(())
}
