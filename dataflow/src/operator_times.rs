//! Where a run's time goes, stage by stage: `run --operator-times` sums timely's schedule log
//! (each operator's start and stop) per worker and prints the totals when the run ends.
//!
//! A profiler sees functions; this sees the dataflow's own units, measured in the real run at its
//! real worker count: the stages, and apart from them reading, the exchanges' operators, the
//! sinks and progress tracking. The graph labels the operators each stage builds
//! ([`labelled`]), so that a stage made of several (`near_dedup` is a signature map, an index and
//! a verdict) is one row. The log costs two clock reads per operator activation, so it is off
//! unless asked for.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};

/// One operator's totals, summed over the workers that ran it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OperatorTime {
    /// The operator's name, as its builder gave it.
    pub name: String,
    /// The stage that built it, if the graph labelled it.
    pub stage: Option<String>,
    /// Its address in the dataflow (a dataflow's own address has one entry).
    pub addr: Vec<usize>,
    /// Time spent scheduled, per worker (by index).
    pub busy: Vec<Duration>,
    /// Times scheduled, all workers together.
    pub activations: u64,
}

/// Collects every worker's operator times; clones share them.
#[derive(Clone, Default)]
pub struct OperatorTimes {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    /// Operator address → totals.
    operators: HashMap<Vec<usize>, OperatorTime>,
    /// Operator identifiers → the stage that built them (identifiers are worker-local, but every
    /// worker builds the same graph, so they agree).
    stages: Vec<(Range<usize>, String)>,
}

/// One worker's tally, merged into the shared totals when timely drops the logger, that is when
/// the worker has finished.
struct Tally {
    shared: Arc<Mutex<Shared>>,
    worker: usize,
    /// Operator identifier → (address, name).
    names: HashMap<usize, (Vec<usize>, String)>,
    /// Operator identifier → when its current activation started.
    started: HashMap<usize, Duration>,
    /// Operator identifier → (busy, activations).
    totals: HashMap<usize, (Duration, u64)>,
}

impl Tally {
    fn record(&mut self, at: Duration, event: &TimelyEvent) {
        match event {
            TimelyEvent::Operates(op) => {
                self.names.insert(op.id, (op.addr.clone(), op.name.clone()));
            }
            TimelyEvent::Schedule(s) => match s.start_stop {
                StartStop::Start => {
                    self.started.insert(s.id, at);
                }
                StartStop::Stop => {
                    if let Some(start) = self.started.remove(&s.id) {
                        let total = self.totals.entry(s.id).or_default();
                        total.0 += at.saturating_sub(start);
                        total.1 += 1;
                    }
                }
            },
            _ => {}
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        // A worker that panicked poisoned nothing of ours that matters: keep what it counted.
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        for (id, (busy, activations)) in self.totals.drain() {
            let Some((addr, name)) = self.names.get(&id) else {
                continue;
            };
            let stage = shared
                .stages
                .iter()
                .find(|(ids, _)| ids.contains(&id))
                .map(|(_, stage)| stage.clone());
            let op = shared
                .operators
                .entry(addr.clone())
                .or_insert_with(|| OperatorTime {
                    name: name.clone(),
                    stage,
                    addr: addr.clone(),
                    ..Default::default()
                });
            if op.busy.len() <= self.worker {
                op.busy.resize(self.worker + 1, Duration::ZERO);
            }
            op.busy[self.worker] += busy;
            op.activations += activations;
        }
    }
}

impl OperatorTimes {
    /// Starts the log on `worker`: call before it builds its dataflows.
    pub fn register(&self, worker: &mut timely::worker::Worker) {
        let mut tally = Tally {
            shared: self.shared.clone(),
            worker: worker.index(),
            names: HashMap::new(),
            started: HashMap::new(),
            totals: HashMap::new(),
        };
        if let Some(mut registry) = worker.log_register() {
            registry.insert::<TimelyEventBuilder, _>("timely", move |_, batch| {
                if let Some(batch) = batch {
                    for (at, event) in batch.iter() {
                        tally.record(*at, event);
                    }
                }
            });
        }
    }

    /// Labels the operators with identifiers in `ids` as built by `stage`.
    pub fn label(&self, ids: Range<usize>, stage: &str) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if !shared.stages.iter().any(|(r, _)| *r == ids) {
            shared.stages.push((ids, stage.to_string()));
        }
    }

    /// The totals so far (complete once every worker has finished), in address order.
    pub fn totals(&self) -> Vec<OperatorTime> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<OperatorTime> = shared.operators.values().cloned().collect();
        all.sort_by(|a, b| a.addr.cmp(&b.addr));
        all
    }
}

/// Runs `build` and, when `times` is on, labels the operators it built as `stage`'s.
pub fn labelled<T>(
    times: Option<&OperatorTimes>,
    worker: &timely::worker::Worker,
    stage: &str,
    build: impl FnOnce() -> T,
) -> T {
    let first = worker.peek_identifier();
    let built = build();
    if let Some(times) = times {
        times.label(first..worker.peek_identifier(), stage);
    }
    built
}

/// One row of [`table`]: a stage's operators together, or one unlabelled operator.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub name: String,
    /// Time scheduled, per worker.
    pub busy: Vec<Duration>,
    pub activations: u64,
}

impl Row {
    /// All workers together.
    pub fn total(&self) -> Duration {
        self.busy.iter().sum()
    }

    /// The busiest worker's share: with more than one worker, what the stage costs the run.
    pub fn busiest(&self) -> Duration {
        self.busy.iter().copied().max().unwrap_or_default()
    }
}

/// Adds `b` into `a`, worker by worker.
fn add(a: &mut Vec<Duration>, b: &[Duration]) {
    if a.len() < b.len() {
        a.resize(b.len(), Duration::ZERO);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += *y;
    }
}

/// The rows of the table: a stage's operators summed into one row named after it, unlabelled
/// operators one row each, and for each dataflow the time it spent outside its operators
/// (progress tracking); busiest first.
pub fn rows(totals: &[OperatorTime]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut stages: HashMap<&str, usize> = HashMap::new();
    for op in totals {
        let (name, busy) = if op.addr.len() <= 1 {
            // A dataflow's activations include its operators': keep what is left.
            let mut own = op.busy.clone();
            for child in totals
                .iter()
                .filter(|c| c.addr.len() > op.addr.len() && c.addr.starts_with(&op.addr))
            {
                for (o, c) in own.iter_mut().zip(&child.busy) {
                    *o = o.saturating_sub(*c);
                }
            }
            let name = format!("{} (progress tracking, outside its operators)", op.name);
            (name, own)
        } else {
            (op.name.clone(), op.busy.clone())
        };
        let at = match &op.stage {
            Some(stage) => *stages.entry(stage).or_insert_with(|| {
                rows.push(Row {
                    name: stage.clone(),
                    busy: Vec::new(),
                    activations: 0,
                });
                rows.len() - 1
            }),
            None => {
                rows.push(Row {
                    name,
                    busy: Vec::new(),
                    activations: 0,
                });
                rows.len() - 1
            }
        };
        add(&mut rows[at].busy, &busy);
        rows[at].activations += op.activations;
    }
    rows.sort_by(|a, b| b.total().cmp(&a.total()).then(a.name.cmp(&b.name)));
    rows
}

/// The totals as a markdown table: each row's time over all workers and its busiest worker's,
/// with that worker's share of the run's wall time.
pub fn table(totals: &[OperatorTime], workers: usize, wall: Duration) -> String {
    let rows = rows(totals);
    let wall_s = wall.as_secs_f64().max(f64::MIN_POSITIVE);
    let mut per_worker = Vec::new();
    for row in &rows {
        add(&mut per_worker, &row.busy);
    }
    // Indexed by the worker's global index: in a cluster, the other processes' workers are the
    // zeros (every worker of this one runs operators).
    let per_worker: Vec<String> = per_worker
        .iter()
        .filter(|d| !d.is_zero())
        .map(|d| format!("{:.3}", d.as_secs_f64()))
        .collect();
    let mut out = format!(
        "operator times: {workers} worker(s), {:.3} s wall; seconds in operators per worker: {}\n",
        wall.as_secs_f64(),
        per_worker.join(", "),
    );
    out.push_str(
        "| stage or operator | seconds, all workers | busiest worker | its share of the wall time | activations |\n",
    );
    out.push_str("| --- | --- | --- | --- | --- |\n");
    for row in rows {
        out.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.1} % | {} |\n",
            row.name,
            row.total().as_secs_f64(),
            row.busiest().as_secs_f64(),
            100.0 * row.busiest().as_secs_f64() / wall_s,
            row.activations,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use timely::dataflow::operators::vec::Map;
    use timely::dataflow::operators::{Input, Inspect, Probe};
    use timely::dataflow::{InputHandle, ProbeHandle};

    fn op(addr: &[usize], name: &str, stage: Option<&str>, busy_ms: &[u64]) -> OperatorTime {
        OperatorTime {
            name: name.into(),
            stage: stage.map(String::from),
            addr: addr.to_vec(),
            busy: busy_ms
                .iter()
                .map(|&ms| Duration::from_millis(ms))
                .collect(),
            activations: 1,
        }
    }

    #[test]
    fn a_stage_is_one_row_and_the_dataflow_keeps_what_its_operators_did_not_use() {
        let totals = [
            op(&[0], "Dataflow", None, &[100, 90]),
            op(&[0, 1], "Source", None, &[10, 0]),
            op(&[0, 2], "FlatMap", Some("near_dedup"), &[30, 20]),
            op(&[0, 3], "Index", Some("near_dedup"), &[20, 50]),
            op(&[0, 4], "OkErr", Some("quality_filter"), &[25, 15]),
        ];
        let rows = rows(&totals);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "near_dedup",
                "quality_filter",
                "Dataflow (progress tracking, outside its operators)",
                "Source",
            ]
        );
        let near = &rows[0];
        assert_eq!(
            near.busy,
            [Duration::from_millis(50), Duration::from_millis(70)]
        );
        assert_eq!(
            (near.total(), near.busiest()),
            (Duration::from_millis(120), Duration::from_millis(70))
        );
        assert_eq!(near.activations, 2);
        // 100 - 10 - 30 - 20 - 25 on worker 0, 90 - 0 - 20 - 50 - 15 on worker 1.
        assert_eq!(
            rows[2].busy,
            [Duration::from_millis(15), Duration::from_millis(5)]
        );
        let table = table(&totals, 2, Duration::from_millis(100));
        assert!(
            table.contains("| near_dedup | 0.120 | 0.070 | 70.0 % | 2 |"),
            "{table}"
        );
        // Worker 0: 10 + 50 + 25 + 15 (its progress tracking); worker 1: 70 + 15 + 5.
        assert!(table.contains("per worker: 0.100, 0.090\n"), "{table}");
        // A cluster's process sees only its own workers (here the second of two processes).
        let theirs: Vec<OperatorTime> = totals
            .iter()
            .map(|op| OperatorTime {
                busy: [vec![Duration::ZERO; 2], op.busy.clone()].concat(),
                ..op.clone()
            })
            .collect();
        let table = super::table(&theirs, 2, Duration::from_millis(100));
        assert!(table.contains("per worker: 0.100, 0.090\n"), "{table}");
    }

    #[test]
    fn the_log_of_a_real_run_times_each_worker_and_labels_what_a_stage_built() {
        let times = OperatorTimes::default();
        let shared = times.clone();
        timely::execute(timely::Config::process(2), move |worker| {
            shared.register(worker);
            let mut input = InputHandle::new();
            let probe = ProbeHandle::new();
            let times = shared.clone();
            worker.dataflow::<u64, _, _>(|scope| {
                let stream = scope.input_from(&mut input);
                let slow = labelled(Some(&times), scope.worker(), "slow_stage", || {
                    stream.map(|x: u64| {
                        std::thread::sleep(Duration::from_millis(2));
                        x
                    })
                });
                slow.inspect(|_| {}).probe_with(&probe);
            });
            for round in 0..10u64 {
                input.send(round);
                input.advance_to(round + 1);
                while probe.less_than(input.time()) {
                    worker.step();
                }
            }
        })
        .unwrap();
        let totals = times.totals();
        let slow: Vec<&OperatorTime> = totals
            .iter()
            .filter(|o| o.stage.as_deref() == Some("slow_stage"))
            .collect();
        assert_eq!(slow.len(), 1, "{totals:?}");
        // Each worker sent 10 records, each slept 2 ms in the map.
        assert_eq!(slow[0].busy.len(), 2);
        for worker in &slow[0].busy {
            assert!(*worker >= Duration::from_millis(20), "{totals:?}");
        }
        assert!(
            totals
                .iter()
                .any(|o| o.name == "Inspect" && o.stage.is_none())
        );
        let rows = rows(&totals);
        assert_eq!(rows[0].name, "slow_stage");
    }
}
