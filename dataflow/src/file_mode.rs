//! File mode: the same graph from a JSONL file (plain, `.gz`, `.zst`) or stdin to JSONL files,
//! for back-fills and for users without Kafka. Outputs appear atomically when the run completes.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use timely::dataflow::operators::core::Probe;
use timely::dataflow::{ProbeHandle, StreamVec};
use webscale_rl_connectors::export::{ExportFormat, ExportOptions, sharded_writer};
use webscale_rl_connectors::file::{JsonlInput, JsonlOutput, Progress};
use webscale_rl_connectors::file_sink::{FileOutput, FileRecord, SharedOutput, file_sink};
use webscale_rl_connectors::file_source::{FileProgress, FileSourceConfig, file_source};

use crate::config::PipelineConfig;
use crate::funnel::{DEAD_LETTERED, EMITTED, Funnel};
use crate::graph::{self, Resources, count};
use crate::runtime::RunControl;

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
    let max_line = cfg.parse.max_document_bytes + 64 * 1024;
    let input = JsonlInput::open(&run.input)?.with_max_line_bytes(max_line);
    let rejects = run
        .rejects
        .clone()
        .unwrap_or_else(|| default_rejects_path(&run.output));
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
    let outputs = (output, JsonlOutput::create(&rejects)?);
    funnel.live().set_run("file", &run.output, &rejects);
    funnel.live().set_source_ready();
    // Handed to worker 0 only; the closure below runs on every worker thread.
    let worker0 = Arc::new(Mutex::new(Some((input, outputs))));
    let guards = crate::cluster::with_stdout_on_stderr(|| {
        timely::execute(timely_config, move |worker| {
            let mine = if worker.index() == 0 {
                worker0.lock().expect("worker 0 state").take()
            } else {
                None
            };
            let result = file_worker(worker, &cfg, mine, &run, &control, &funnel, &resources);
            crate::runtime::abandon_on_error(worker, &result);
            result.map_err(|e| format!("{e:#}"))
        })
    })
    .map_err(|e| anyhow!("starting timely workers: {e}"))?;
    let mut errors = Vec::new();
    for result in guards.join() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("worker panicked: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(errors.join("; ")))
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

type Worker0 = (JsonlInput, (Output, JsonlOutput));

/// What every file sink of a worker shares: the funnel it counts into, the first write error,
/// and the probe whose frontier says what is durable.
struct Sinks<'a> {
    funnel: &'a Funnel,
    error: &'a Rc<RefCell<Option<String>>>,
    durable: &'a ProbeHandle<u64>,
}

impl Sinks<'_> {
    /// Counts `records` as (stage, outcome) on their way into the sink writing `to`.
    fn write<R: FileRecord>(
        &self,
        records: StreamVec<'_, u64, R>,
        to: &SharedOutput,
        (stage, outcome): (&'static str, &'static str),
    ) {
        let counted = count(records, self.funnel, stage, outcome);
        file_sink(counted.clone(), to.clone(), self.error.clone());
        counted.probe_with(self.durable);
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
    let (input, out, rej) = match mine {
        Some((i, (o, r))) => (Some(i), Some(o.open()?), Some(FileOutput::Jsonl(r))),
        None => (None, None, None),
    };
    let out = Rc::new(RefCell::new(out));
    let rej = Rc::new(RefCell::new(rej));
    let sink_error = Rc::new(RefCell::new(None));
    let progress = Rc::new(RefCell::new(FileProgress::default()));
    let durable = ProbeHandle::new();
    let source_cfg = FileSourceConfig {
        epoch_lines: cfg.source.epoch_records() as u64,
        batch_max: cfg.source.batch_max.max(1),
        max_open_epochs: (cfg.source.in_flight_docs() / cfg.source.epoch_records()).max(2) as u64,
    };
    let is_reader = input.is_some();
    worker.dataflow::<u64, _, _>(|scope| -> anyhow::Result<()> {
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
        };
        match outs.output {
            graph::Output::Documents(records) => sinks.write(records, &out, EMITTED),
            graph::Output::QaPairs(records) => sinks.write(records, &out, EMITTED),
        }
        sinks.write(outs.dead_letters, &rej, DEAD_LETTERED);
        Ok(())
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
    while !durable.done() {
        worker.step_or_park(Some(Duration::from_millis(50)));
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
        if let Some(reason) = control.llm_stop_reason() {
            return Err(anyhow!("{reason}"));
        }
        if control.stop.load(std::sync::atomic::Ordering::Relaxed) && is_reader {
            // File mode has no offsets to resume from: a stop abandons the temp outputs.
            return Err(anyhow!("interrupted; no output written"));
        }
    }
    if let Some(mut bar) = bar {
        bar.finish();
    }
    for shared in [out, rej] {
        if let Some(writer) = shared.borrow_mut().take() {
            writer.finish()?;
        }
    }
    Ok(())
}
