//! Starting the timely workers and joining them: the one skeleton both runtimes (Kafka and file
//! mode) share.
//!
//! A worker that fails must stop the whole process at once, with its error. Timely gives no such
//! rule: the other workers of the process go on stepping a dataflow whose frontier the failed
//! worker no longer advances, and `join` waits for them forever (a truncated gzip input with
//! `-w 2` printed its error only when the process was killed). So every worker reports its
//! failure to a shared [`Abort`], the worker loops check it on every turn, and `join` keeps the
//! first worker's own error. Across processes the failed process exits, and its peers stop on the
//! lost connection (`cluster::exit_on_peer_loss`).

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use anyhow::anyhow;

/// What a worker returns when it stopped because another one failed.
pub(crate) const ABORTED: &str = "stopped: another worker failed";

/// The first failure among a process's workers. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct Abort(Arc<Mutex<Option<String>>>);

impl Abort {
    /// Records `error` unless an earlier failure is recorded.
    pub fn fail(&self, error: &str) {
        let mut first = self.0.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert_with(|| error.to_owned());
    }

    /// Whether a worker has failed.
    pub fn failed(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

/// Runs `work` on every worker of `config` and joins them. A worker's error or panic is recorded
/// in `abort` (which the worker loops watch), its dataflows are dropped, and the run's error is
/// the workers' own errors, without the echoes of those that stopped because of them (nor the
/// `quiet` ones, such as "stopped", which a failing worker 0 explains).
pub(crate) fn execute<F>(
    config: timely::Config,
    abort: Abort,
    quiet: &'static [&'static str],
    work: F,
) -> anyhow::Result<()>
where
    F: Fn(&mut timely::worker::Worker) -> anyhow::Result<()> + Send + Sync + 'static,
{
    let guards = crate::cluster::with_stdout_on_stderr(|| {
        timely::execute(config, move |worker| {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(worker)))
                .unwrap_or_else(|panic| Err(anyhow!("worker panicked: {}", panic_text(&*panic))));
            if let Err(e) = &result {
                let text = format!("{e:#}");
                // A quiet error is a worker that stops along with worker 0 (an interrupt), which
                // must get to say why itself, not find the abort set and echo it.
                if text != ABORTED && !quiet.contains(&text.as_str()) {
                    abort.fail(&text);
                }
            }
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
    let real = |e: &String| e != ABORTED && !quiet.contains(&e.as_str());
    if errors.iter().any(real) {
        errors.retain(real);
    }
    errors.dedup();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}

/// The text of a panic's payload.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A worker loop as the runtimes write it: steps until done, watching the abort.
    fn wait_for_frontier(worker: &mut timely::worker::Worker, abort: &Abort) -> anyhow::Result<()> {
        use timely::dataflow::operators::{Input, Probe};
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_input::<Vec<u64>>();
            (input, stream.probe().0)
        });
        input.advance_to(1);
        // Never closed by worker 0 once it failed: without the abort this waits forever.
        let index = worker.index();
        if index == 0 {
            anyhow::bail!("truncated gzip input");
        }
        let started = Instant::now();
        while !probe.done() {
            // Bounded, so that the test fails rather than hangs without the abort.
            if started.elapsed() > Duration::from_secs(10) {
                anyhow::bail!("worker {index} still waiting after 10 s");
            }
            worker.step_or_park(Some(Duration::from_millis(10)));
            if abort.failed() {
                anyhow::bail!(ABORTED);
            }
        }
        Ok(())
    }

    #[test]
    fn the_first_worker_error_stops_every_worker_at_once() {
        let abort = Abort::default();
        let watched = abort.clone();
        let started = Instant::now();
        let err = execute(timely::Config::process(2), abort, &[], move |worker| {
            wait_for_frontier(worker, &watched)
        })
        .unwrap_err();
        assert_eq!(format!("{err}"), "truncated gzip input");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_worker_panic_is_an_error_that_stops_the_others() {
        let abort = Abort::default();
        let watched = abort.clone();
        let err = execute(timely::Config::process(2), abort, &[], move |worker| {
            if worker.index() == 0 {
                panic!("index out of bounds");
            }
            while !watched.failed() {
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
            anyhow::bail!(ABORTED)
        })
        .unwrap_err();
        assert!(
            format!("{err}").contains("worker panicked: index out of bounds"),
            "{err}"
        );
    }
}
