//! The worker runtime: runs the stage graph on timely workers between Kafka topics, and commits
//! input offsets only for epochs the durable frontier has passed.
//!
//! The durable frontier is a probe after both sinks; a sink holds an epoch until the broker has
//! acknowledged all of that epoch's records. So an offset is committed only after every record
//! derived from it (output or dead letter) is safely written: a crash at any moment loses nothing,
//! and the replay rewrites the same record ids.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::core::{Concat, Probe};
use timely::dataflow::operators::vec::Map;
use webscale_rl_connectors::kafka::changelog::{self, changelog_topic};
use webscale_rl_connectors::kafka::{
    Claim, Fence, KafkaChangelog, KafkaSink, SourceProgress, assign_partitions, commit_offsets,
    kafka_sink, kafka_source, tools,
};
use webscale_rl_connectors::llm::LlmHealth;
use webscale_rl_records::changelog::{Changelog, LLM_CACHE, LLM_CACHE_PARTITIONS, StateChangelog};

use crate::config::PipelineConfig;
use crate::funnel::{DEAD_LETTERED, EMITTED, Funnel};
use crate::graph::{self, Output, Resources};
use crate::live::Live;

/// How often a worker reports its partitions' positions, in-flight records and the frontier.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the end offsets of the input partitions are fetched (a broker round trip each).
const WATERMARK_INTERVAL: Duration = Duration::from_secs(5);

/// How a run ends and what it may read.
#[derive(Clone, Default)]
pub struct RunControl {
    /// Set by a signal handler: stop reading, drain, flush, commit, return.
    pub stop: Arc<AtomicBool>,
    /// Stop once the input partitions reach the end offsets they had at start.
    pub until_caught_up: bool,
    /// The LLM's health, with LLM stages: the sources pause during an outage, and the run stops
    /// (without committing what is unfinished) when it lasts too long.
    pub llm: Option<LlmWatch>,
    /// The first worker failure of the process: every worker loop stops on it.
    pub abort: crate::workers::Abort,
}

/// What the runtime watches of the LLM side.
#[derive(Clone)]
pub struct LlmWatch {
    pub health: LlmHealth,
    /// Longest outage before the run stops; `None`: wait as long as it takes.
    pub max_outage: Option<Duration>,
    /// Longest time without epoch progress, while no outage is declared, before the run stops
    /// (`llm.max_stall_secs`); `None`: no watchdog.
    pub max_stall: Option<Duration>,
}

impl RunControl {
    /// The flag the sources pause on (never set without an LLM).
    pub fn pause(&self) -> Arc<AtomicBool> {
        self.llm
            .as_ref()
            .map_or_else(Arc::default, |w| w.health.paused())
    }

    /// Why the run must stop now because of the LLM, if it must: an outage past its limit, or a
    /// stop request that cannot drain while the LLM is down. Unfinished documents are not
    /// committed either way; a rerun continues from the last commit.
    pub fn llm_stop_reason(&self) -> Option<String> {
        let w = self.llm.as_ref()?;
        if let Some(fatal) = w.health.fatal() {
            return Some(format!(
                "{fatal}. Unfinished documents were not committed: nothing is lost; please \
                 report this with the log"
            ));
        }
        let outage = w.health.outage()?;
        let status = w.health.status().describe();
        if let Some(max) = w.max_outage
            && outage > max
        {
            return Some(format!(
                "{status}; gave up after llm.max_outage_secs = {} s. Unfinished documents were not \
                 committed: run again once the LLM is back, nothing is lost",
                max.as_secs()
            ));
        }
        if self.stop.load(Ordering::Relaxed) {
            return Some(format!(
                "stopped during an LLM outage ({status}). Unfinished documents were not \
                 committed: run again once the LLM is back, nothing is lost"
            ));
        }
        None
    }
}

/// The watchdog of a worker loop: the durable frontier must move while the LLM is up. Timely
/// cannot tell a held epoch from a slow one, so an epoch held by something no retry frees (a call
/// that never returns) would otherwise hang the run silently, ready on `/readyz` all along.
pub(crate) struct Watchdog {
    limit: Option<Duration>,
    frontier: Option<u64>,
    since: Instant,
}

impl Watchdog {
    pub(crate) fn new(control: &RunControl) -> Self {
        Watchdog {
            limit: control.llm.as_ref().and_then(|w| w.max_stall),
            frontier: None,
            since: Instant::now(),
        }
    }

    /// Starts the clock again: nothing is held that the watchdog should count (file mode: the
    /// input waits for its writer with everything read through the pipeline).
    pub(crate) fn restart(&mut self) {
        self.since = Instant::now();
    }

    /// Why the run must stop, when the frontier has stood still for too long while the LLM side
    /// was up (an outage, or the wait for the start-up check, restarts the clock).
    pub(crate) fn check(&mut self, control: &RunControl, frontier: Option<u64>) -> Option<String> {
        let limit = self.limit?;
        let waiting = control.llm.as_ref().is_some_and(|w| !w.health.is_up());
        if frontier != self.frontier || waiting {
            self.frontier = frontier;
            self.since = Instant::now();
            return None;
        }
        (self.since.elapsed() > limit).then(|| {
            format!(
                "no epoch completed for {} s while the LLM side was up (llm.max_stall_secs): \
                 something holds the pipeline that no retry frees. Unfinished documents were \
                 not committed: run again, nothing is lost; please report this with the log",
                limit.as_secs()
            )
        })
    }
}

/// Runs the pipeline between Kafka topics until stopped (or caught up).
pub fn run_kafka(
    cfg: PipelineConfig,
    timely_config: timely::Config,
    control: RunControl,
    funnel: Funnel,
    resources: Resources,
) -> anyhow::Result<()> {
    // Fail fast, before the cluster starts, when the brokers or the input topic are unreachable:
    // with one clear error, not librdkafka's ERROR line per connection attempt of every client.
    let probe: BaseConsumer<tools::Quiet> = cfg
        .kafka
        .client_config()?
        .create_with_context(tools::Quiet)
        .context("creating the Kafka client")?;
    tools::topic_partitions(&probe, &cfg.kafka, &cfg.kafka.input_topic)
        .context("checking the input topic")?;
    drop(probe);
    let mut cfg = cfg;
    cfg.source.resolve(resources.llm.is_some());
    let (changelog, cache_changelog) = attach_state(&mut cfg, funnel.live(), &resources)?;
    funnel.live().set_run(
        "kafka",
        &cfg.kafka.output_topic,
        &cfg.kafka.dead_letter_topic,
    );
    // Consumer lag needs the partitions' end offsets: only fetched when someone reads metrics.
    let watermarks = if funnel.live().watched() {
        Some(WatermarkMonitor::start(&cfg.kafka, funnel.live().clone())?)
    } else {
        None
    };
    let abort = control.abort.clone();
    let result = crate::workers::execute(timely_config, abort, &[], move |worker| {
        kafka_worker(
            worker,
            &cfg,
            &control,
            &funnel,
            &resources,
            changelog.as_deref(),
            cache_changelog.as_deref(),
        )
    });
    // A last refresh of the end offsets, so the final lag reads what was left unread.
    drop(watermarks);
    result
}

/// The dedup stages' state in Kafka mode: with `[state] changelog` (the default) their changelog
/// topics are made sure of and every partition writes to and restores from them; without, a
/// partition this process would start empty while the group has committed offsets is refused
/// (its state is on another disk). Before any worker starts, so a missing topic is one error.
///
/// With changelogs on and a response cache, the cache gets its own changelog topic
/// (`GROUP.llm_cache.changelog`, [`LLM_CACHE_PARTITIONS`] partitions, keyed by the request hash):
/// documents are routed to the worker owning their cache partition, which restores it before it
/// starts, so a document replayed on another machine finds the answers the cluster paid for.
/// Its writes do not hold back the input offsets: losing a cache entry costs a call, not data.
fn attach_state(
    cfg: &mut PipelineConfig,
    live: &crate::live::Live,
    resources: &Resources,
) -> anyhow::Result<Attached> {
    let cache = resources
        .llm_client
        .as_ref()
        .and_then(|c| c.response_cache());
    let topics = changelog_topics(cfg, cache.is_some());
    if !cfg.state.changelog {
        let dedup = topics.iter().any(|(index, _, _)| *index != LLM_CACHE);
        if dedup && tools::group_has_commits(&cfg.kafka, &cfg.kafka.input_topic)? {
            let cause = format!(
                "consumer group '{}' has committed input offsets, so this state was written \
                 before, on another machine or by a cluster of another shape (-n, -w), and \
                 changelogs are off (`[state] changelog = false`). Starting it empty would \
                 silently forget what was deduplicated: run this process where its state is, \
                 with the same -n and -w, or switch changelogs on",
                cfg.kafka.group
            );
            cfg.exact_dedup.refuse_new_partitions = Some(cause.clone());
            cfg.near_dedup.refuse_new_partitions = Some(cause);
        }
        return Ok((None, None));
    }
    if topics.is_empty() {
        return Ok((None, None));
    }
    let wanted: Vec<(String, u32)> = topics
        .iter()
        .map(|(_, topic, partitions)| (topic.clone(), *partitions))
        .collect();
    changelog::ensure_topics(&cfg.kafka, &cfg.state, &wanted)?;
    // One restore progress for the indexes and the cache.
    let progress = Arc::default();
    let open = || KafkaChangelog::with_progress(&cfg.kafka, Arc::clone(&progress)).map(Arc::new);
    let cache_changelog = match cache {
        Some(c) => {
            let log = open()?;
            c.attach_changelog(Changelog(log.clone()));
            Some(log)
        }
        None => None,
    };
    let changelog = if topics.iter().any(|(index, _, _)| *index != LLM_CACHE) {
        let log = open()?;
        let handle = Changelog(log.clone());
        cfg.exact_dedup.changelog = Some(handle.clone());
        cfg.near_dedup.changelog = Some(handle);
        Some(log)
    } else {
        None
    };
    live.set_restore_progress(progress);
    Ok((changelog, cache_changelog))
}

/// The state's changelog topics for `cfg`: (state name, topic, partitions) for each enabled
/// dedup index and, `with_cache`, the response cache. Both the runtime (which makes sure of them)
/// and the demo (whose in-process cluster cannot create topics on request) list them here.
pub fn changelog_topics(
    cfg: &PipelineConfig,
    with_cache: bool,
) -> Vec<(&'static str, String, u32)> {
    [
        (
            cfg.exact_dedup.enabled,
            "exact_dedup",
            cfg.exact_dedup.partitions(),
        ),
        (
            cfg.near_dedup.enabled,
            "near_dedup",
            cfg.near_dedup.partitions(),
        ),
        (with_cache, LLM_CACHE, LLM_CACHE_PARTITIONS),
    ]
    .into_iter()
    .filter(|(on, _, _)| *on)
    .map(|(_, index, partitions)| {
        (
            index,
            changelog_topic(&cfg.kafka.group, index),
            partitions.max(1),
        )
    })
    .collect()
}

/// The changelogs of the dedup indexes and of the response cache, if on.
type Attached = (Option<Arc<KafkaChangelog>>, Option<Arc<KafkaChangelog>>);

/// Restores the response-cache partitions worker `index` of `peers` owns (`p % peers == index`)
/// before it reads anything: the documents of those partitions come to it.
fn restore_cache_partitions(
    resources: &Resources,
    cache_changelog: Option<&KafkaChangelog>,
    index: usize,
    peers: usize,
) -> anyhow::Result<()> {
    let (Some(log), Some(cache)) = (
        cache_changelog,
        resources
            .llm_client
            .as_ref()
            .and_then(|c| c.response_cache()),
    ) else {
        return Ok(());
    };
    let owned: Vec<u32> = (0..LLM_CACHE_PARTITIONS)
        .filter(|p| *p as usize % peers == index)
        .collect();
    log.restore_expected(owned.len());
    for p in owned {
        cache.restore_partition(p).map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}

/// The epoch before which input offsets may be committed: the sinks' durable frontier, held
/// back to the first epoch with a changelog record not yet acknowledged.
fn commit_frontier(durable: Option<u64>, changelog: Option<&KafkaChangelog>) -> Option<u64> {
    let waiting = changelog.and_then(|c| c.unacknowledged_from());
    match (durable, waiting) {
        (Some(d), Some(w)) => Some(d.min(w)),
        (None, w) => w,
        (d, None) => d,
    }
}

fn kafka_worker(
    worker: &mut timely::worker::Worker,
    cfg: &PipelineConfig,
    control: &RunControl,
    funnel: &Funnel,
    resources: &Resources,
    changelog: Option<&KafkaChangelog>,
    cache_changelog: Option<&KafkaChangelog>,
) -> anyhow::Result<()> {
    let (index, peers) = (worker.index(), worker.peers());
    let consumer: BaseConsumer = cfg
        .kafka
        .client_config_with(&[
            ("group.id", cfg.kafka.group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("fetch.message.max.bytes", "16777216"),
            // `--until-caught-up` ends on the partitions' end events: a topic whose last offset
            // is a transaction marker or a compaction gap has no message at its last offset.
            (
                "enable.partition.eof",
                if control.until_caught_up {
                    "true"
                } else {
                    "false"
                },
            ),
        ])?
        .create()
        .context("creating the Kafka consumer")?;
    let consumer = Rc::new(consumer);
    let assignment =
        assign_partitions(&consumer, &cfg.kafka, index, peers, control.until_caught_up)?;
    let topic = assignment.topic.clone();
    tracing::info!(worker = index, partitions = ?assignment.partitions, topic = %topic, "assigned input partitions");
    // Before anything is read: a newer engine on this group stops this one (see `fence`).
    let mut fence = Fence::claim(
        &cfg.kafka,
        &topic,
        &assignment.partitions,
        Claim::new(index, peers),
    )?;
    restore_cache_partitions(resources, cache_changelog, index, peers)?;
    let live = funnel.live().clone();
    live.partitions_assigned(&topic, &assignment.partitions);

    let output = Arc::new(KafkaSink::new(&cfg.kafka, &cfg.kafka.output_topic)?);
    let dead_letter = Arc::new(KafkaSink::new(&cfg.kafka, &cfg.kafka.dead_letter_topic)?);
    let progress = Rc::new(RefCell::new(SourceProgress::default()));
    let durable = ProbeHandle::new();
    if let Some(times) = &resources.operator_times {
        times.register(worker);
    }

    worker.dataflow::<u64, _, _>(|scope| -> anyhow::Result<()> {
        let messages = kafka_source(
            scope,
            consumer.clone(),
            assignment,
            cfg.source.clone(),
            progress.clone(),
            control.stop.clone(),
            control.pause(),
        );
        let outs = graph::build(messages, cfg, funnel, resources).map_err(|e| anyhow!(e))?;
        let written = match outs.output {
            Output::Documents(records) => kafka_sink(records.map(|(_, r)| r), output.clone()),
            Output::QaPairs(records) => kafka_sink(records.map(|(_, r)| r), output.clone()),
        };
        let dead = kafka_sink(outs.dead_letters, dead_letter.clone());
        written.concat(dead).probe_with(&durable);
        Ok(())
    })?;

    let mut committed = std::collections::BTreeMap::new();
    // Delivered records are added to the funnel as they are acknowledged, so that the metrics
    // and the dashboard count durable output live.
    let mut reported = (0u64, 0u64);
    let mut last_report: Option<Instant> = None;
    let mut watchdog = Watchdog::new(control);
    loop {
        worker.step_or_park(Some(Duration::from_millis(20)));
        if control.abort.failed() {
            // Another worker failed and says why; what is durable is committed already.
            return Err(anyhow!(crate::workers::ABORTED));
        }
        for sink in [&output, &dead_letter] {
            if let Some(failure) = sink.failure() {
                // Nothing past the failed epoch is committed: a restart replays it.
                return Err(anyhow!(
                    "{failure}; stopping without committing the affected offsets"
                ));
            }
        }
        if let Some(failure) = changelog.and_then(KafkaChangelog::failure) {
            return Err(anyhow!(
                "{failure}; stopping without committing the affected offsets"
            ));
        }
        report_delivered(funnel, &mut reported, &output, &dead_letter);
        fence.check()?;
        let frontier = commit_frontier(durable.with_frontier(|f| f.first().copied()), changelog);
        let commits = progress.borrow_mut().take_durable(frontier);
        if !commits.is_empty() {
            commit_offsets(&consumer, &topic, &commits, CommitMode::Async)?;
            committed.extend(commits);
        }
        if let Some(reason) = control
            .llm_stop_reason()
            .or_else(|| watchdog.check(control, frontier))
        {
            // What is durable stays committed; nothing past it is.
            fence.check_now()?;
            commit_offsets(&consumer, &topic, &committed, CommitMode::Sync)?;
            return Err(anyhow!("{reason}"));
        }
        if last_report.is_none_or(|t| t.elapsed() >= REPORT_INTERVAL) {
            last_report = Some(Instant::now());
            let in_flight = progress.borrow().in_flight() as u64;
            report_positions(&live, &consumer, &topic, &committed);
            live.set_in_flight(index, in_flight);
            live.set_frontier(frontier);
        }
        if frontier.is_none() {
            break;
        }
    }
    // Everything is acknowledged; make the last commit synchronous so that exit means committed.
    fence.check_now()?;
    commit_offsets(&consumer, &topic, &committed, CommitMode::Sync)?;
    report_delivered(funnel, &mut reported, &output, &dead_letter);
    report_positions(&live, &consumer, &topic, &committed);
    live.set_in_flight(index, 0);
    live.set_frontier(None);
    tracing::info!(
        worker = index,
        read = progress.borrow().records_read,
        emitted = output.delivered(),
        dead_lettered = dead_letter.delivered(),
        "worker finished"
    );
    Ok(())
}

/// After a worker gave up (an error), drops its dataflows: timely would otherwise step them until
/// they complete when the worker returns — forever, when LLM calls hold their epochs open.
/// Nothing past the durable frontier was committed, so dropping loses nothing.
pub(crate) fn abandon_on_error<T>(worker: &mut timely::worker::Worker, result: &anyhow::Result<T>) {
    if result.is_err() {
        for id in worker.installed_dataflows() {
            worker.drop_dataflow(id);
        }
    }
}

/// Adds the records acknowledged since the last call to the funnel's `emitted`/`dead_lettered`.
fn report_delivered(
    funnel: &Funnel,
    reported: &mut (u64, u64),
    output: &KafkaSink,
    dead_letter: &KafkaSink,
) {
    let (out, dead) = (output.delivered(), dead_letter.delivered());
    funnel.add(EMITTED.0, EMITTED.1, out - reported.0);
    funnel.add(DEAD_LETTERED.0, DEAD_LETTERED.1, dead - reported.1);
    *reported = (out, dead);
}

/// The consumer's positions (local state, no broker round trip) and what this worker committed.
fn report_positions(
    live: &Live,
    consumer: &BaseConsumer,
    topic: &str,
    committed: &std::collections::BTreeMap<i32, i64>,
) {
    if let Ok(positions) = consumer.position() {
        for e in positions.elements() {
            if let Offset::Offset(o) = e.offset() {
                live.update_partition(topic, e.partition(), Some(o), None, None);
            }
        }
    }
    for (&p, &o) in committed {
        live.update_partition(topic, p, None, Some(o), None);
    }
}

/// Fetches the end offsets of the input partitions the workers reported, every few seconds, on
/// a thread of its own with its own consumer: a slow broker never stalls a timely worker.
/// Dropping it does a last refresh and stops the thread.
struct WatermarkMonitor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WatermarkMonitor {
    fn start(
        cfg: &webscale_rl_connectors::kafka::KafkaConfig,
        live: Arc<Live>,
    ) -> anyhow::Result<Self> {
        // Quiet: a failed fetch is logged at debug; the workers' own clients report the brokers.
        let consumer: BaseConsumer<tools::Quiet> = cfg
            .client_config()?
            .create_with_context(tools::Quiet)
            .context("creating the watermark consumer")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("webscale-watermarks".into())
            .spawn(move || {
                loop {
                    let last = stopping.load(Ordering::Relaxed);
                    let timeout = Duration::from_millis(if last { 500 } else { 2_000 });
                    let started = Instant::now();
                    for (topic, p) in live.partitions().into_keys() {
                        match consumer.fetch_watermarks(&topic, p, timeout) {
                            Ok((_, high)) => live.update_partition(&topic, p, None, None, Some(high)),
                            Err(e) => tracing::debug!(topic = %topic, partition = p, error = %e, "fetching end offset"),
                        }
                        if last && started.elapsed() > Duration::from_secs(2) {
                            break;
                        }
                    }
                    if last {
                        return;
                    }
                    let wait = Instant::now();
                    while wait.elapsed() < WATERMARK_INTERVAL && !stopping.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })?;
        Ok(WatermarkMonitor {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for WatermarkMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_stops_a_run_whose_frontier_stands_still_while_the_llm_is_up() {
        let health = LlmHealth::new(1);
        health.mark_up();
        let control = RunControl {
            llm: Some(LlmWatch {
                health: health.clone(),
                max_outage: None,
                max_stall: Some(Duration::from_millis(50)),
            }),
            ..Default::default()
        };
        let mut dog = Watchdog::new(&control);
        assert_eq!(dog.check(&control, Some(1)), None);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(dog.check(&control, Some(2)), None, "the frontier moved");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(dog.check(&control, Some(2)), None, "within the limit");
        // An outage is a wait with a reason (and its own limit): the clock starts again after.
        health.record_failure("connection refused");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(dog.check(&control, Some(2)), None);
        health.mark_up();
        assert_eq!(dog.check(&control, Some(2)), None);
        std::thread::sleep(Duration::from_millis(60));
        let why = dog.check(&control, Some(2)).expect("stalled while up");
        assert!(why.contains("max_stall_secs"), "{why}");
        // No watchdog without a limit.
        let mut off = Watchdog::new(&RunControl::default());
        assert_eq!(off.check(&RunControl::default(), Some(2)), None);
    }

    #[test]
    fn the_llm_stops_a_run_only_past_its_limit_or_on_a_stop_during_an_outage() {
        let health = LlmHealth::new(1);
        health.mark_up();
        let control = RunControl {
            llm: Some(LlmWatch {
                health: health.clone(),
                max_outage: Some(Duration::from_millis(50)),
                max_stall: None,
            }),
            ..Default::default()
        };
        assert_eq!(control.llm_stop_reason(), None, "up");
        health.record_failure("connection refused");
        assert!(
            control.pause().load(Ordering::Relaxed),
            "an outage pauses the sources"
        );
        assert_eq!(
            control.llm_stop_reason(),
            None,
            "an outage within its limit"
        );
        control.stop.store(true, Ordering::Relaxed);
        let why = control.llm_stop_reason().unwrap();
        assert!(
            why.contains("stopped during an LLM outage") && why.contains("refused"),
            "{why}"
        );
        control.stop.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(60));
        let why = control.llm_stop_reason().unwrap();
        assert!(why.contains("max_outage_secs = 0 s"), "{why}");
        // Without an LLM nothing pauses and nothing stops.
        let plain = RunControl::default();
        assert!(!plain.pause().load(Ordering::Relaxed));
        assert_eq!(plain.llm_stop_reason(), None);
    }
}
