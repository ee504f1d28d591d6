//! Small Kafka clients behind `webscale-rl produce` and `webscale-rl tail`, also used by the demo
//! and the tests: write JSONL lines to a topic; read a topic from the beginning.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::config::KafkaConfig;

/// The client context of the command-line tools (`produce`, `tail`, `export`): librdkafka's
/// errors go to the debug log instead of `ERROR` lines. The end of a partition is an expected
/// event when reading a topic to its end, and a broker that cannot be reached is reported once,
/// by the tool's own error, not by a line per connection attempt.
pub struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(?level, fac, "librdkafka: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "librdkafka");
    }
}

impl ConsumerContext for Quiet {}

/// Checks that the brokers answer and `topic` exists; returns its partition ids.
pub fn topic_partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    cfg: &KafkaConfig,
    topic: &str,
) -> anyhow::Result<Vec<i32>> {
    let timeout = cfg.connect_timeout();
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| {
            format!(
                "cannot reach Kafka brokers '{}' within {timeout:?}",
                cfg.brokers
            )
        })?;
    match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().iter().map(|p| p.id()).collect())
        }
        _ => bail!("{}", missing_topic(topic, &cfg.brokers)),
    }
}

/// Whether the consumer group has committed an offset on any partition of `topic`: a group with
/// history, whose state was built before.
pub fn group_has_commits(cfg: &KafkaConfig, topic: &str) -> anyhow::Result<bool> {
    let consumer: BaseConsumer<Quiet> = cfg
        .client_config_with(&[
            ("group.id", cfg.group.as_str()),
            ("enable.auto.commit", "false"),
        ])?
        .create_with_context(Quiet)
        .context("creating the Kafka client")?;
    let partitions = topic_partitions(&consumer, cfg, topic)?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, cfg.connect_timeout())
        .context("reading the group's committed offsets")?;
    Ok(committed
        .elements()
        .iter()
        .any(|e| matches!(e.offset(), rdkafka::Offset::Offset(_))))
}

/// What to say about a topic the brokers do not have: the engine never creates topics (their
/// partition count and retention are the operator's choice), so say how to.
pub fn missing_topic(topic: &str, brokers: &str) -> String {
    format!(
        "topic '{topic}' does not exist on brokers '{brokers}'; create it first, e.g. \
         `kafka-topics.sh --bootstrap-server {brokers} --create --topic {topic} --partitions 8` \
         (partitions bound how many workers can read it)"
    )
}

/// Produces each line as one message (key = the line's `"id"` field when it has one) and waits
/// until all are acknowledged. Returns the number of messages.
pub fn produce_lines<I>(cfg: &KafkaConfig, topic: &str, lines: I) -> anyhow::Result<u64>
where
    I: IntoIterator<Item = Vec<u8>>,
{
    let producer: BaseProducer = cfg
        .client_config_with(&[
            ("enable.idempotence", "true"),
            ("message.max.bytes", "16777216"),
        ])?
        .create()
        .context("creating a Kafka producer")?;
    let probe: BaseConsumer<Quiet> = cfg.client_config()?.create_with_context(Quiet)?;
    topic_partitions(&probe, cfg, topic)?;
    let mut sent = 0u64;
    for line in lines {
        let key = serde_json::from_slice::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| match v.get("id") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            });
        loop {
            let mut record = BaseRecord::<str, [u8]>::to(topic).payload(&line[..]);
            if let Some(k) = key.as_deref() {
                record = record.key(k);
            }
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(e).context(format!("producing to '{topic}'")),
            }
        }
        sent += 1;
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(60))
        .with_context(|| format!("waiting for '{topic}' to acknowledge {sent} messages"))?;
    Ok(sent)
}

/// Reads `topic` from the beginning and writes each message's payload as one line to `out`.
/// Stops after `max` messages, or once no message arrived for `idle` after reaching the end
/// offsets the topic had when reading began. Returns the number of messages written.
pub fn tail(
    cfg: &KafkaConfig,
    topic: &str,
    max: Option<u64>,
    idle: Duration,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let consumer: BaseConsumer<Quiet> = cfg
        .client_config_with(&[
            ("group.id", "webscale-rl-tail"),
            ("enable.auto.commit", "false"),
            // The end of each partition is an event: counting messages never reaches a last
            // offset that holds a transaction marker or was compacted away.
            ("enable.partition.eof", "true"),
        ])?
        .create_with_context(Quiet)
        .context("creating a Kafka consumer")?;
    let partitions = topic_partitions(&consumer, cfg, topic)?;
    let mut at_end = std::collections::BTreeSet::new();
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        let (low, high) = consumer.fetch_watermarks(topic, p, cfg.connect_timeout())?;
        remaining += high - low;
    }
    consumer.assign(&tpl)?;
    let mut written = 0u64;
    let mut last = Instant::now();
    while max.is_none_or(|m| written < m) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.write_all(m.payload().unwrap_or_default())?;
                out.write_all(b"\n")?;
                written += 1;
                remaining -= 1;
                last = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "Kafka consumer error"),
            None if (remaining <= 0 || at_end.len() == partitions.len())
                && last.elapsed() >= idle =>
            {
                break;
            }
            None => {}
        }
    }
    out.flush()?;
    Ok(written)
}

/// One message handed to [`read_topic_to`]'s callback.
#[derive(Clone, Copy, Debug)]
pub struct TopicMessage<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

/// The end offset (high watermark: one past the last message) of each partition of `topic` now.
/// Reading up to these offsets, rather than until the topic goes quiet, gives a snapshot that can
/// be read twice with the same result while producers keep appending.
pub fn end_offsets(cfg: &KafkaConfig, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer<Quiet> = cfg
        .client_config()?
        .create_with_context(Quiet)
        .context("creating a Kafka consumer")?;
    let mut ends = BTreeMap::new();
    for p in topic_partitions(&consumer, cfg, topic)? {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, cfg.connect_timeout())
            .with_context(|| format!("fetching the end offset of '{topic}' partition {p}"))?;
        ends.insert(p, high);
    }
    Ok(ends)
}

/// Reads each partition of `topic` from its beginning up to (not including) its offset in
/// `ends`, handing every message to `f` in offset order within a partition; messages appended
/// after `ends` are not read. Commits nothing. Fails if `f` fails, or if no message arrives for
/// `max(connect timeout, 30 s)` while partitions are unfinished. Returns the messages read.
pub fn read_topic_to(
    cfg: &KafkaConfig,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    f: &mut dyn FnMut(TopicMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let consumer: BaseConsumer<Quiet> = cfg
        .client_config_with(&[
            ("group.id", "webscale-rl-export"),
            ("enable.auto.commit", "false"),
            // End of partition as an event: the end of a partition with gaps (compaction,
            // transaction markers) is found without a message at `end - 1`.
            ("enable.partition.eof", "true"),
        ])?
        .create_with_context(Quiet)
        .context("creating a Kafka consumer")?;
    let mut tpl = TopicPartitionList::new();
    let mut unfinished = BTreeMap::new();
    for (&p, &end) in ends {
        let (low, _) = consumer
            .fetch_watermarks(topic, p, cfg.connect_timeout())
            .with_context(|| format!("fetching the start offset of '{topic}' partition {p}"))?;
        if low < end {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            unfinished.insert(p, end);
        }
    }
    if unfinished.is_empty() {
        return Ok(0);
    }
    consumer.assign(&tpl)?;
    let stall = cfg.connect_timeout().max(Duration::from_secs(30));
    let mut read = 0u64;
    let mut last = Instant::now();
    let mut last_error = None;
    while !unfinished.is_empty() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let p = m.partition();
                let Some(&end) = unfinished.get(&p) else {
                    continue;
                };
                if m.offset() < end {
                    f(TopicMessage {
                        partition: p,
                        offset: m.offset(),
                        key: m.key(),
                        payload: m.payload(),
                    })?;
                    read += 1;
                }
                if m.offset() + 1 >= end {
                    unfinished.remove(&p);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                last = Instant::now();
                unfinished.remove(&p);
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Kafka consumer error");
                last_error = Some(e);
            }
            None if last.elapsed() >= stall => bail!(
                "reading '{topic}' stalled: no message for {stall:?} with partitions {:?} \
                 unfinished (last error: {})",
                unfinished.keys().collect::<Vec<_>>(),
                last_error.map_or_else(|| "none".to_string(), |e| e.to_string())
            ),
            None => {}
        }
    }
    Ok(read)
}
