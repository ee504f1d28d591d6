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
        // A line read but not yet sent: its epoch was too far ahead of the durable frontier.
        let mut held: Option<(crate::file::LineInfo, Vec<u8>)> = None;
        move |output| {
            let Some(reader) = input.as_mut() else {
                cap = None;
                return;
            };
            let Some(c) = cap.as_mut() else { return };
            if pause.load(Ordering::Relaxed) {
                activator.activate_after(Duration::from_millis(1));
                return;
            }
            // Flow control, line by line: an epoch is sent only while fewer than
            // `max_open_epochs` epochs before it are not yet durable. Checked per line rather
            // than per batch, so reading never runs a batch ahead and then waits for the whole
            // pipeline to drain (which left the LLM server idle at the end of every batch): the
            // pipeline is topped up as each epoch becomes durable.
            let durable_from = durable.with_frontier(|f| f.first().copied());
            let allowed = |epoch: u64| {
                durable_from.is_none_or(|d| epoch < d.saturating_add(cfg.max_open_epochs))
            };
            let mut done = false;
            let mut blocked = false;
            for _ in 0..cfg.batch_max {
                let (line, payload) = match held.take() {
                    Some(line) => line,
                    None => match reader.next_line(&mut buf) {
                        Ok(Some(line)) => (line, std::mem::take(&mut buf)),
                        Ok(None) => {
                            done = true;
                            break;
                        }
                        Err(e) => {
                            progress.borrow_mut().error = Some(format!("reading '{topic}': {e}"));
                            done = true;
                            break;
                        }
                    },
                };
                if (line.number as u64) <= cfg.skip_lines {
                    continue;
                }
                let epoch = (line.number as u64 - 1) / cfg.epoch_lines;
                if !allowed(epoch) {
                    // The epochs before this line's are complete: let them close downstream
                    // (a stateful stage judges an epoch only then) while this one waits.
                    if epoch > *c.time() {
                        c.downgrade(&epoch);
                    }
                    held = Some((line, payload));
                    blocked = true;
                    break;
                }
                if epoch > *c.time() {
                    c.downgrade(&epoch);
                }
                output.session(&*c).give(RawMessage {
                    key: None,
                    payload: Some(payload),
                    origin: Origin {
                        topic: topic.clone(),
                        partition: 0,
                        offset: line.number,
                    },
                    truncated: line.truncated,
                });
            }
            let mut p = progress.borrow_mut();
            p.lines = reader.lines_read() as u64;
            p.bytes_read = reader.bytes_read();
            if done {
                p.finished = true;
                cap = None;
                input = None;
            } else if blocked {
                // The probe wakes no one: look again soon (cheap, and only while the pipeline is
                // full).
                activator.activate_after(Duration::from_millis(5));
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
