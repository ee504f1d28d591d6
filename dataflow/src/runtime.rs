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
use std::time::Duration;

use anyhow::{Context, anyhow};
use rdkafka::consumer::{BaseConsumer, CommitMode};
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::core::{Concat, Probe};
use webscale_rl_connectors::kafka::{
    KafkaSink, SourceProgress, assign_partitions, commit_offsets, kafka_sink, kafka_source,
};

use crate::config::PipelineConfig;
use crate::funnel::{DEAD_LETTERED, EMITTED, Funnel};
use crate::graph::{self, Resources};

/// How a run ends and what it may read.
#[derive(Clone, Default)]
pub struct RunControl {
    /// Set by a signal handler: stop reading, drain, flush, commit, return.
    pub stop: Arc<AtomicBool>,
    /// Stop once the input partitions reach the end offsets they had at start.
    pub until_caught_up: bool,
}

/// Runs the pipeline between Kafka topics until stopped (or caught up).
pub fn run_kafka(
    cfg: PipelineConfig,
    timely_config: timely::Config,
    control: RunControl,
    funnel: Funnel,
    resources: Resources,
) -> anyhow::Result<()> {
    // Fail fast, before the cluster starts, when the brokers or the input topic are unreachable.
    cfg.kafka.client_config()?;
    let guards = crate::cluster::with_stdout_on_stderr(|| {
        timely::execute(timely_config, move |worker| {
            kafka_worker(worker, &cfg, &control, &funnel, &resources).map_err(|e| format!("{e:#}"))
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
    errors.dedup();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}

fn kafka_worker(
    worker: &mut timely::worker::Worker,
    cfg: &PipelineConfig,
    control: &RunControl,
    funnel: &Funnel,
    resources: &Resources,
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
        ])?
        .create()
        .context("creating the Kafka consumer")?;
    let consumer = Rc::new(consumer);
    let assignment =
        assign_partitions(&consumer, &cfg.kafka, index, peers, control.until_caught_up)?;
    let topic = assignment.topic.clone();
    tracing::info!(worker = index, partitions = ?assignment.partitions, topic = %topic, "assigned input partitions");

    let output = Arc::new(KafkaSink::new(&cfg.kafka, &cfg.kafka.output_topic)?);
    let dead_letter = Arc::new(KafkaSink::new(&cfg.kafka, &cfg.kafka.dead_letter_topic)?);
    let progress = Rc::new(RefCell::new(SourceProgress::default()));
    let durable = ProbeHandle::new();

    worker.dataflow::<u64, _, _>(|scope| -> anyhow::Result<()> {
        let messages = kafka_source(
            scope,
            consumer.clone(),
            assignment,
            cfg.source.clone(),
            progress.clone(),
            control.stop.clone(),
        );
        let outs = graph::build(messages, cfg, funnel, resources).map_err(|e| anyhow!(e))?;
        let written = kafka_sink(outs.output, output.clone());
        let dead = kafka_sink(outs.dead_letters, dead_letter.clone());
        written.concat(dead).probe_with(&durable);
        Ok(())
    })?;

    let mut committed = std::collections::BTreeMap::new();
    loop {
        worker.step_or_park(Some(Duration::from_millis(20)));
        for sink in [&output, &dead_letter] {
            if let Some(failure) = sink.failure() {
                // Nothing past the failed epoch is committed: a restart replays it.
                return Err(anyhow!(
                    "{failure}; stopping without committing the affected offsets"
                ));
            }
        }
        let frontier = durable.with_frontier(|f| f.first().copied());
        let commits = progress.borrow_mut().take_durable(frontier);
        if !commits.is_empty() {
            commit_offsets(&consumer, &topic, &commits, CommitMode::Async)?;
            committed.extend(commits);
        }
        if frontier.is_none() {
            break;
        }
    }
    // Everything is acknowledged; make the last commit synchronous so that exit means committed.
    commit_offsets(&consumer, &topic, &committed, CommitMode::Sync)?;
    funnel.add(EMITTED.0, EMITTED.1, output.delivered());
    funnel.add(DEAD_LETTERED.0, DEAD_LETTERED.1, dead_letter.delivered());
    tracing::info!(
        worker = index,
        read = progress.borrow().records_read,
        emitted = output.delivered(),
        dead_lettered = dead_letter.delivered(),
        "worker finished"
    );
    let _ = control.stop.load(Ordering::Relaxed);
    Ok(())
}
