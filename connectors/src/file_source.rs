//! The file source: a timely source operator over a JSONL file (plain, gzip, zstd) or stdin.
//!
//! Worker 0 reads; the lines are exchanged round-robin by line number so every worker parses and
//! filters its share. Epochs are line-number blocks (`(line - 1) / epoch_lines`), so a file yields
//! the same epochs — and the same dedup verdicts — whatever the number of workers.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::{Operator, source};
use timely::dataflow::{ProbeHandle, Scope, StreamVec};
use webscale_rl_records::{Origin, RawMessage};

use crate::file::JsonlInput;

/// Reading state visible to the worker loop (for the progress bar).
#[derive(Default)]
pub struct FileProgress {
    pub lines: u64,
    pub bytes_read: u64,
    pub total_bytes: Option<u64>,
    pub finished: bool,
    /// The first read error; the run fails with it.
    pub error: Option<String>,
}

/// Settings of the file source.
#[derive(Clone, Debug)]
pub struct FileSourceConfig {
    /// Lines per epoch.
    pub epoch_lines: u64,
    /// Lines read per activation.
    pub batch_max: usize,
    /// Flow control: stop reading while this many epochs are not yet through the pipeline.
    pub max_open_epochs: u64,
    /// Lines already done by an interrupted run (a resume): read past, not sent. Epochs stay
    /// numbered by line, so the rest of the file gets the epochs it had.
    pub skip_lines: u64,
}

/// Reads `input` on worker 0 (other workers pass `None`) and spreads its lines over all workers.
/// Reading stops while `pause` is set (the LLM side is down).
pub fn file_source<'s>(
    scope: Scope<'s, u64>,
    input: Option<JsonlInput>,
    cfg: FileSourceConfig,
    durable: ProbeHandle<u64>,
    progress: Rc<RefCell<FileProgress>>,
    pause: Arc<AtomicBool>,
) -> StreamVec<'s, u64, RawMessage> {
    let lines = source(scope, "FileSource", move |cap, info| {
        let activator = scope.activator_for(info.address.clone());
        let mut cap = Some(cap);
        let mut input = input;
        if let Some(i) = input.as_ref() {
            progress.borrow_mut().total_bytes = i.total_bytes();
        }
        let topic: String = input
            .as_ref()
            .map(|i| i.path().to_string())
            .unwrap_or_default();
        let mut buf = Vec::new();
        move |output| {
            let Some(reader) = input.as_mut() else {
                cap = None;
                return;
            };
            let Some(c) = cap.as_mut() else { return };
            // Flow control: let the pipeline catch up before reading further ahead.
            let behind = c.time().saturating_sub(cfg.max_open_epochs);
            if durable.less_than(&behind) || pause.load(Ordering::Relaxed) {
                activator.activate_after(Duration::from_millis(1));
                return;
            }
            let mut done = false;
            for _ in 0..cfg.batch_max {
                match reader.next_line(&mut buf) {
                    Ok(Some(line)) if (line.number as u64) <= cfg.skip_lines => {}
                    Ok(Some(line)) => {
                        let epoch = (line.number as u64 - 1) / cfg.epoch_lines;
                        if epoch > *c.time() {
                            c.downgrade(&epoch);
                        }
                        output.session(&*c).give(RawMessage {
                            key: None,
                            payload: Some(std::mem::take(&mut buf)),
                            origin: Origin {
                                topic: topic.clone(),
                                partition: 0,
                                offset: line.number,
                            },
                            truncated: line.truncated,
                        });
                    }
                    Ok(None) => {
                        done = true;
                        break;
                    }
                    Err(e) => {
                        progress.borrow_mut().error = Some(format!("reading '{topic}': {e}"));
                        done = true;
                        break;
                    }
                }
            }
            let mut p = progress.borrow_mut();
            p.lines = reader.lines_read() as u64;
            p.bytes_read = reader.bytes_read();
            if done {
                p.finished = true;
                cap = None;
                input = None;
            } else {
                activator.activate();
            }
        }
    });
    // Round-robin by line number: every worker gets its share of the parsing and filtering.
    lines.unary(
        Exchange::new(|m: &RawMessage| m.origin.offset as u64),
        "SpreadLines",
        |_, _| {
            move |input, output| {
                input.for_each(|cap, data| output.session(&cap).give_container(data));
            }
        },
    )
}
