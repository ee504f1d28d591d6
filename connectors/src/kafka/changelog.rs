//! The state changelog over Kafka: one compacted topic per index, one partition per index
//! partition (see `webscale_rl_records::changelog` for the design).
//!
//! Topics are named from the group, `GROUP.exact_dedup.changelog` and
//! `GROUP.near_dedup.changelog`, and created at start with the state's partition count and
//! `cleanup.policy=compact` ([`ensure_topics`]). An engine that may not create topics (or a
//! broker that does not implement CreateTopics) stops before reading anything and names the exact
//! topics to create.
//!
//! Writes go through one idempotent producer per process (`acks=all`, ordered per partition), and
//! the delivery reports keep, per epoch, how many records wait for the broker: the Kafka runtime
//! commits an epoch's input offsets only once none of its changelog records is unacknowledged,
//! as with its outputs. A restore reads a partition with a consumer of its own, from the offset
//! the local partition holds up to the end offset at the time it starts.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use webscale_rl_records::changelog::{Change, Restored, StateChangelog};

use super::config::KafkaConfig;

/// `[state]`: where the dedup indexes' state lives in Kafka mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// Write every index change to a compacted changelog topic and restore from it: a process
    /// moved to another disk, or another `-n`/`-w`, remembers what the cluster saw. Off: the
    /// state is only on each process's disk (a single-machine service), and a partition missing
    /// from it, while the group has committed offsets, stops the engine.
    pub changelog: bool,
    /// Replication factor of the changelog topics the engine creates; -1: the broker's default.
    pub replication_factor: i32,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            changelog: true,
            replication_factor: -1,
        }
    }
}

/// The changelog topic of index `index` for consumer group `group`.
pub fn changelog_topic(group: &str, index: &str) -> String {
    format!("{group}.{index}.changelog")
}

/// Makes sure each `(topic, partitions)` exists with that many partitions: creates the missing
/// ones (compacted), and otherwise fails naming what to create or what is wrong.
pub fn ensure_topics(
    cfg: &KafkaConfig,
    state: &StateConfig,
    topics: &[(String, u32)],
) -> anyhow::Result<()> {
    let missing = mismatched(cfg, topics)?;
    if missing.is_empty() {
        return Ok(());
    }
    let created = create(cfg, state, &missing);
    // Metadata follows a creation within moments; look a few times.
    let deadline = Instant::now() + cfg.connect_timeout();
    let mut left = mismatched(cfg, topics)?;
    while !left.is_empty() && Instant::now() < deadline && created.is_ok() {
        std::thread::sleep(Duration::from_millis(200));
        left = mismatched(cfg, topics)?;
    }
    if left.is_empty() {
        for (topic, partitions, _) in &missing {
            tracing::info!(%topic, partitions, "created the changelog topic");
        }
        return Ok(());
    }
    let mut wrong = Vec::new();
    let mut create_these = Vec::new();
    for (topic, want, have) in &left {
        match have {
            Some(have) => wrong.push(format!(
                "'{topic}' has {have} partitions, the state has {want}"
            )),
            None => create_these.push(format!(
                "kafka-topics.sh --bootstrap-server {} --create --topic {topic} --partitions \
                 {want} --config cleanup.policy=compact",
                cfg.brokers
            )),
        }
    }
    if !wrong.is_empty() {
        bail!(
            "changelog topics do not match the state: {}. A state's partition count is fixed \
             per group: delete and recreate the topic (the state is then forgotten), or set the \
             dedup stages' `partitions` to the topic's",
            wrong.join("; ")
        );
    }
    bail!(
        "the changelog topics of the dedup state are missing and could not be created ({}). \
         Create them, then start again:\n  {}\nor set `[state] changelog = false` for a \
         single-machine service whose state stays on its disk",
        created.err().map_or_else(
            || "the broker did not list them after creating".to_string(),
            |e| format!("{e:#}")
        ),
        create_these.join("\n  ")
    )
}

/// The topics of `topics` that are missing (`None`) or have another partition count.
fn mismatched(
    cfg: &KafkaConfig,
    topics: &[(String, u32)],
) -> anyhow::Result<Vec<(String, u32, Option<usize>)>> {
    let probe: BaseConsumer<super::tools::Quiet> = cfg
        .client_config()?
        .create_with_context(super::tools::Quiet)
        .context("creating the Kafka client")?;
    let metadata = probe
        .fetch_metadata(None, cfg.connect_timeout())
        .with_context(|| format!("cannot reach Kafka brokers '{}'", cfg.brokers))?;
    let have: HashMap<&str, usize> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name(), t.partitions().len()))
        .collect();
    Ok(topics
        .iter()
        .filter_map(|(t, want)| match have.get(t.as_str()) {
            Some(&n) if n == *want as usize => None,
            found => Some((t.clone(), *want, found.copied())),
        })
        .collect())
}

fn create(
    cfg: &KafkaConfig,
    state: &StateConfig,
    missing: &[(String, u32, Option<usize>)],
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = cfg
        .client_config()?
        .create()
        .context("creating the Kafka admin client")?;
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .filter(|(_, _, have)| have.is_none())
        .map(|(topic, partitions, _)| {
            NewTopic::new(
                topic,
                *partitions as i32,
                TopicReplication::Fixed(state.replication_factor),
            )
            // Keyed by the index's key: compaction keeps the newest record of each, and
            // drops an evicted one after its tombstone.
            .set("cleanup.policy", "compact")
        })
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let options = AdminOptions::new().operation_timeout(Some(cfg.connect_timeout()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let results = runtime
        .block_on(async {
            tokio::time::timeout(
                cfg.connect_timeout() * 2,
                admin.create_topics(new.iter(), &options),
            )
            .await
        })
        .map_err(|_| anyhow::anyhow!("CreateTopics timed out"))?
        .context("CreateTopics")?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("creating '{topic}': {code}"),
        }
    }
    Ok(())
}

/// Progress of the restores of this process's partitions, for logs, `/readyz` and the metrics.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// Partitions this process's workers will restore (each adds its own as it starts).
    pub expected: AtomicUsize,
    pub finished: AtomicUsize,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
}

impl RestoreProgress {
    /// `Some((finished, expected))` while restores are under way.
    pub fn restoring(&self) -> Option<(usize, usize)> {
        let (done, of) = (
            self.finished.load(Ordering::Acquire),
            self.expected.load(Ordering::Acquire),
        );
        (done < of).then_some((done, of))
    }
}

#[derive(Default)]
struct Acks {
    /// Epoch -> changelog records written and not yet acknowledged.
    pending: BTreeMap<u64, usize>,
    /// Topic -> partition -> the highest offset acknowledged.
    acked: HashMap<String, HashMap<i32, i64>>,
    failure: Option<String>,
}

#[derive(Clone, Default)]
struct AckContext(Arc<Mutex<Acks>>);

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, epoch: usize) {
        let mut acks = self.0.lock().expect("changelog acks");
        match result {
            Ok(m) => {
                // The topic's name is allocated once, not per acknowledgement.
                if !acks.acked.contains_key(m.topic()) {
                    acks.acked.insert(m.topic().to_string(), HashMap::new());
                }
                let topic = acks.acked.get_mut(m.topic()).expect("inserted");
                let at = topic.entry(m.partition()).or_insert(-1);
                *at = (*at).max(m.offset());
                if let Some(n) = acks.pending.get_mut(&(epoch as u64)) {
                    *n -= 1;
                    if *n == 0 {
                        acks.pending.remove(&(epoch as u64));
                    }
                }
            }
            Err((e, m)) => {
                // The idempotent producer retried already: this is permanent.
                tracing::warn!(topic = m.topic(), partition = m.partition(), error = %e, "a changelog record was not delivered");
                acks.failure
                    .get_or_insert_with(|| format!("changelog delivery failed: {e}"));
            }
        }
    }
}

/// The changelog of one engine process, over Kafka.
pub struct KafkaChangelog {
    producer: ThreadedProducer<AckContext>,
    acks: AckContext,
    cfg: KafkaConfig,
    progress: Arc<RestoreProgress>,
    /// Consumers for the watermark look-ups of restores, handed back after each.
    restorers: Mutex<Vec<BaseConsumer>>,
}

impl KafkaChangelog {
    pub fn new(cfg: &KafkaConfig) -> anyhow::Result<KafkaChangelog> {
        Self::with_progress(cfg, Arc::default())
    }

    /// A changelog whose restores count into `progress` (shared with another changelog of the
    /// same process, so that `/readyz` says how far all the restores are).
    pub fn with_progress(
        cfg: &KafkaConfig,
        progress: Arc<RestoreProgress>,
    ) -> anyhow::Result<KafkaChangelog> {
        let acks = AckContext::default();
        let producer = cfg
            .client_config_with(&[
                ("enable.idempotence", "true"),
                ("linger.ms", "5"),
                // Records are small (a key and one index record); the broker's default limit.
                ("message.max.bytes", "1048588"),
            ])?
            .create_with_context(acks.clone())
            .context("creating the changelog producer")?;
        Ok(KafkaChangelog {
            producer,
            acks,
            cfg: cfg.clone(),
            progress,
            restorers: Mutex::default(),
        })
    }

    pub fn progress(&self) -> Arc<RestoreProgress> {
        self.progress.clone()
    }

    /// The first permanent delivery failure: the engine stops, committing nothing past it.
    pub fn failure(&self) -> Option<String> {
        self.acks.0.lock().expect("changelog acks").failure.clone()
    }

    fn topic(&self, index: &str) -> String {
        changelog_topic(&self.cfg.group, index)
    }
}

impl StateChangelog for KafkaChangelog {
    fn write(&self, index: &str, partition: u32, epoch: u64, key: &[u8], value: Option<&[u8]>) {
        let topic = self.topic(index);
        {
            let mut acks = self.acks.0.lock().expect("changelog acks");
            *acks.pending.entry(epoch).or_default() += 1;
        }
        let mut record = BaseRecord::with_opaque_to(&topic, epoch as usize)
            .partition(partition as i32)
            .key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // The broker is slower than the index: wait for the queue, as a full sink
                    // does (the epoch's offsets wait for these records anyway).
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    let mut acks = self.acks.0.lock().expect("changelog acks");
                    acks.failure
                        .get_or_insert_with(|| format!("writing to '{topic}': {e}"));
                    return;
                }
            }
        }
    }

    fn acknowledged(&self, index: &str, partition: u32) -> Option<i64> {
        let acks = self.acks.0.lock().expect("changelog acks");
        acks.acked
            .get(&self.topic(index))
            .and_then(|t| t.get(&(partition as i32)))
            .copied()
            .filter(|o| *o >= 0)
    }

    fn unacknowledged_from(&self) -> Option<u64> {
        let acks = self.acks.0.lock().expect("changelog acks");
        acks.pending.keys().next().copied()
    }

    fn restore_expected(&self, partitions: usize) {
        self.progress
            .expected
            .fetch_add(partitions, Ordering::AcqRel);
    }

    fn restore_finished(&self, index: &str, partition: u32, restored: Restored) {
        let done = self.progress.finished.fetch_add(1, Ordering::AcqRel) + 1;
        self.progress
            .records
            .fetch_add(restored.records, Ordering::Relaxed);
        self.progress
            .bytes
            .fetch_add(restored.bytes, Ordering::Relaxed);
        let of = self.progress.expected.load(Ordering::Acquire);
        tracing::info!(
            index,
            partition,
            records = restored.records,
            bytes = restored.bytes,
            "restored state partition ({done} of {of})"
        );
    }

    fn restore(
        &self,
        index: &str,
        partition: u32,
        from: i64,
        apply: &mut dyn FnMut(Change<'_>) -> Result<(), String>,
    ) -> Result<Restored, String> {
        let topic = self.topic(index);
        let p = partition as i32;
        let (low, high) = self.watermarks(&topic, p).map_err(|e| format!("{e:#}"))?;
        let mut restored = Restored::default();
        let start = from.max(low);
        if start >= high {
            return Ok(restored);
        }
        // A consumer of its own for the reading: one reused after another partition's reading
        // was measured slower (64 partitions, 116,489 records: 17.9 s against 5.1 s).
        let consumer = self.new_consumer().map_err(|e| format!("{e:#}"))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, p, Offset::Offset(start))
            .map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let mut last_log = Instant::now();
        loop {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    if m.offset() >= high {
                        break;
                    }
                    let change = Change {
                        offset: m.offset(),
                        key: m.key().unwrap_or_default(),
                        value: m.payload(),
                    };
                    restored.count(&change);
                    apply(change)?;
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
                // The end of what the partition holds (a compaction gap may hide the last offset).
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => {
                    tracing::warn!(%topic, partition, error = %e, "reading the changelog; retrying");
                }
                None => {}
            }
            if last_log.elapsed() >= Duration::from_secs(10) {
                last_log = Instant::now();
                tracing::info!(%topic, partition, records = restored.records, "restoring state partition");
            }
        }
        Ok(restored)
    }
}

impl KafkaChangelog {
    /// The partition's low and high watermarks, through a consumer kept for these look-ups:
    /// most partitions of a new group are empty, and a consumer created for each cost the start
    /// of a run about 3 s (`benches/changelog.rs`: changelogs on 4.41 s, 1.46 s with the reuse).
    /// A broker that does not answer is waited for (a fault of the world, not of the state).
    fn watermarks(&self, topic: &str, partition: i32) -> anyhow::Result<(i64, i64)> {
        let consumer = match self.restorers.lock().expect("restore consumers").pop() {
            Some(c) => c,
            None => self.new_consumer()?,
        };
        let timeout = self.cfg.connect_timeout();
        let marks = loop {
            match consumer.fetch_watermarks(topic, partition, timeout) {
                Ok(w) => break w,
                Err(e) => {
                    tracing::warn!(%topic, partition, error = %e, "cannot read the changelog's end offset; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        };
        self.restorers
            .lock()
            .expect("restore consumers")
            .push(consumer);
        Ok(marks)
    }

    fn new_consumer(&self) -> anyhow::Result<BaseConsumer> {
        self.cfg
            .client_config_with(&[
                // Never commits: the position is the local partition's.
                ("group.id", &format!("{}.restore", self.cfg.group)),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
                ("fetch.message.max.bytes", "16777216"),
            ])?
            .create()
            .context("creating the restore consumer")
    }
}
