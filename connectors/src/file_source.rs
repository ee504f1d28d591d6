//! The file source: a timely source operator over a JSONL file (plain, gzip, zstd) or stdin.
//!
//! Worker 0 reads; the lines are exchanged round-robin by line number so every worker parses and
//! filters its share. Epochs are line-number blocks (`(line - 1) / epoch_lines`), so a file yields
//! the same epochs — and the same dedup verdicts — whatever the number of workers.
//!
//! A regular file is read on worker 0 itself. An input whose reads wait for a writer (stdin, a
//! pipe) is read on a thread of its own ([`BackgroundInput`]): worker 0 takes what is there and
//! goes on, so while the writer pauses the lines already read go through the pipeline and their
//! epochs are written. An epoch's capability is given up with its last line, not when the next
//! epoch's first line arrives, so a complete epoch closes even if no line follows for a while.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::{Operator, source};
use timely::dataflow::{ProbeHandle, Scope, StreamVec};
use webscale_rl_records::{Origin, RawMessage};

use crate::file::{BackgroundInput, JsonlInput, LineInfo, NextLine};

/// Reading state visible to the worker loop (for the progress bar).
#[derive(Default)]
pub struct FileProgress {
    pub lines: u64,
    pub bytes_read: u64,
    pub total_bytes: Option<u64>,
    pub finished: bool,
    /// The first read error; the run fails with it.
    pub error: Option<String>,
    /// `Some(epoch)` while every line read so far is sent and the source waits for its writer
    /// (stdin, a pipe) with its capability at `epoch`: an idle input, not a stalled pipeline.
    pub waiting_at: Option<u64>,
}

/// The input as the source reads it: on the worker, or on a reader thread.
enum Lines {
    File(JsonlInput),
    Stream(BackgroundInput),
}

impl Lines {
    fn next(&mut self, buf: &mut Vec<u8>) -> std::io::Result<NextLine> {
        match self {
            Lines::File(input) => Ok(match input.next_line(buf)? {
                Some(info) => NextLine::Line(info, std::mem::take(buf)),
                None => NextLine::End,
            }),
            Lines::Stream(input) => input.try_next_line(),
        }
    }

    fn lines_read(&self) -> i64 {
        match self {
            Lines::File(input) => input.lines_read(),
            Lines::Stream(input) => input.lines_read(),
        }
    }

    fn bytes_read(&self) -> u64 {
        match self {
            Lines::File(input) => input.bytes_read(),
            Lines::Stream(input) => input.bytes_read(),
        }
    }
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
        if let Some(i) = input.as_ref() {
            progress.borrow_mut().total_bytes = i.total_bytes();
        }
        let topic: String = input
            .as_ref()
            .map(|i| i.path().to_string())
            .unwrap_or_default();
        let mut input = input.and_then(|i| {
            if !i.may_wait() {
                return Some(Lines::File(i));
            }
            // The reader thread wakes this operator when it has lines; none is polled for.
            let wake = scope.worker().sync_activator_for(info.address.to_vec());
            match i.read_in_background(cfg.batch_max, move || {
                let _ = wake.activate();
            }) {
                Ok(background) => Some(Lines::Stream(background)),
                Err(e) => {
                    progress.borrow_mut().error =
                        Some(format!("cannot start the reader of '{topic}': {e}"));
                    None
                }
            }
        });
        let mut buf = Vec::new();
        // A line read but not yet sent: its epoch was too far ahead of the durable frontier.
        let mut held: Option<(LineInfo, Vec<u8>)> = None;
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
            let mut waiting = false;
            for _ in 0..cfg.batch_max {
                let (line, payload) = match held.take() {
                    Some(line) => line,
                    None => match reader.next(&mut buf) {
                        Ok(NextLine::Line(line, payload)) => (line, payload),
                        Ok(NextLine::Pending) => {
                            waiting = true;
                            break;
                        }
                        Ok(NextLine::End) => {
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
                if (line.number as u64).is_multiple_of(cfg.epoch_lines) {
                    // The epoch's last line: it can close now, before the next line is read.
                    c.downgrade(&(epoch + 1));
                }
            }
            let mut p = progress.borrow_mut();
            p.lines = reader.lines_read() as u64;
            p.bytes_read = reader.bytes_read();
            p.waiting_at = waiting.then(|| *c.time());
            if done {
                p.finished = true;
                p.waiting_at = None;
                cap = None;
                input = None;
            } else if waiting {
                // The reader thread activates this operator when it has read more.
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
