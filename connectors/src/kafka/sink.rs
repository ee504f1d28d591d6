//! The Kafka sink: produces records with an idempotent producer and holds each epoch's capability
//! until the broker has acknowledged every record of that epoch.
//!
//! The sink's output carries no data; its frontier is the *durable frontier*. A probe after the
//! sinks tells the worker loop which epochs' input offsets may be committed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::{Scope, StreamVec};
use timely::scheduling::SyncActivator;
use webscale_rl_records::{Keyed, MAX_RECORD_BYTES};

use super::config::KafkaConfig;

/// Delivery bookkeeping shared between the producer's delivery callbacks (on librdkafka's thread)
/// and the sink operator (on the worker).
#[derive(Default)]
struct Deliveries {
    /// Epoch -> records handed to the producer and not yet acknowledged.
    pending: BTreeMap<u64, usize>,
    /// Records acknowledged by the broker.
    delivered: u64,
    /// The first permanent delivery failure; the engine stops without committing past it.
    failure: Option<String>,
    activator: Option<SyncActivator>,
}

/// The producer's context: counts acknowledgements per epoch and wakes the sink.
#[derive(Clone, Default)]
pub struct DeliveryContext {
    state: Arc<Mutex<Deliveries>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, epoch: usize) {
        let mut state = self.state.lock().expect("delivery state");
        match result {
            Ok(_) => {
                state.delivered += 1;
                let epoch = epoch as u64;
                if let Some(n) = state.pending.get_mut(&epoch) {
                    *n -= 1;
                    if *n == 0 {
                        state.pending.remove(&epoch);
                    }
                }
            }
            Err((e, _)) => {
                // The idempotent producer already retried; what reaches here is permanent.
                state
                    .failure
                    .get_or_insert_with(|| format!("delivery failed: {e}"));
            }
        }
        if let Some(a) = &state.activator {
            let _ = a.activate();
        }
    }
}

/// A producer for one topic, shared by nothing: each worker has its own.
pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryContext>,
    context: DeliveryContext,
    topic: String,
}

impl KafkaSink {
    /// An idempotent producer (acks=all, ordered, no duplicates on retry) for `topic`.
    pub fn new(cfg: &KafkaConfig, topic: &str) -> anyhow::Result<Self> {
        let context = DeliveryContext::default();
        let client = cfg.client_config_with(&[
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            // Kafka's default, as a broker applies it: a record the engine could produce but a
            // default broker refuses would stop the engine for good (it is read again after
            // every restart). Records are bounded under it (`MAX_RECORD_BYTES`, `encode`).
            ("message.max.bytes", "1048588"),
        ])?;
        let producer: ThreadedProducer<DeliveryContext> = client
            .create_with_context(context.clone())
            .with_context(|| format!("creating a Kafka producer for topic '{topic}'"))?;
        Ok(KafkaSink {
            producer,
            context,
            topic: topic.to_string(),
        })
    }

    /// Records acknowledged by the broker so far.
    pub fn delivered(&self) -> u64 {
        self.context.state.lock().expect("delivery state").delivered
    }

    /// The first permanent delivery failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.context
            .state
            .lock()
            .expect("delivery state")
            .failure
            .clone()
    }

    /// Waits for every queued record to be acknowledged (shutdown).
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.producer
            .flush(timeout)
            .context("flushing the Kafka producer")?;
        Ok(())
    }
}

/// A record's JSON, under [`MAX_RECORD_BYTES`] where the record can shrink to fit (a pair
/// without its `pretrain_text`, a dead letter without its replay payload). The stages bound
/// what they make; this is the last line, so that no record can halt the engine at the broker.
fn encode<R: Keyed>(record: &mut R) -> Vec<u8> {
    let json = serde_json::to_vec(&*record).expect("records serialize to JSON");
    if json.len() <= MAX_RECORD_BYTES || !record.shrink() {
        return json;
    }
    tracing::warn!(
        key = record.key(),
        bytes = json.len(),
        "a record over {MAX_RECORD_BYTES} bytes of JSON is written without its optional text"
    );
    serde_json::to_vec(&*record).expect("records serialize to JSON")
}

/// Writes `records` to the sink's topic; the returned stream's frontier passes an epoch once all
/// of its records are acknowledged.
pub fn kafka_sink<'s, R: Keyed + 'static>(
    records: StreamVec<'s, u64, R>,
    sink: Arc<KafkaSink>,
) -> StreamVec<'s, u64, ()> {
    let scope: Scope<'s, u64> = records.scope();
    records.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "KafkaSink",
        move |default_cap, info| {
            drop(default_cap);
            let activator = scope.worker().sync_activator_for(info.address.to_vec());
            sink.context.state.lock().expect("delivery state").activator = Some(activator);
            let retry = scope.activator_for(info.address.clone());
            // Epochs with records not yet acknowledged (or not yet handed over): their capabilities.
            let mut held: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
            // Records, encoded (key, JSON), that wait for the producer's queue (QueueFull):
            // retried on the next activation.
            let mut backlog: VecDeque<(u64, String, Vec<u8>)> = VecDeque::new();
            move |(input, frontier), _output| {
                input.for_each_stamp(|cap, data| {
                    let epoch = *cap.least().expect("a stamp has a time");
                    held.entry(epoch)
                        .or_insert_with(|| cap.retain_least(0).expect("output 0"));
                    for batch in data {
                        backlog.extend(batch.drain(..).map(|mut r| {
                            let payload = encode(&mut r);
                            (epoch, r.key().to_string(), payload)
                        }));
                    }
                });
                while let Some((epoch, key, payload)) = backlog.pop_front() {
                    sink.context
                        .state
                        .lock()
                        .expect("delivery state")
                        .pending
                        .entry(epoch)
                        .and_modify(|n| *n += 1)
                        .or_insert(1);
                    let sent = sink.producer.send(
                        BaseRecord::with_opaque_to(&sink.topic, epoch as usize)
                            .key(key.as_bytes())
                            .payload(&payload),
                    );
                    if let Err((e, _)) = sent {
                        let mut state = sink.context.state.lock().expect("delivery state");
                        if let Some(n) = state.pending.get_mut(&epoch) {
                            *n -= 1;
                            if *n == 0 {
                                state.pending.remove(&epoch);
                            }
                        }
                        drop(state);
                        if matches!(
                            e,
                            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                        ) {
                            backlog.push_front((epoch, key, payload));
                            retry.activate_after(Duration::from_millis(2));
                            break;
                        }
                        sink.context
                            .state
                            .lock()
                            .expect("delivery state")
                            .failure
                            .get_or_insert_with(|| {
                                format!("cannot produce to '{}': {e}", sink.topic)
                            });
                    }
                }
                // Release every epoch that is complete at the input and fully acknowledged.
                let state = sink.context.state.lock().expect("delivery state");
                if state.failure.is_none() {
                    let unfinished = |epoch: &u64| {
                        frontier.less_equal(epoch)
                            || state.pending.contains_key(epoch)
                            || backlog.iter().any(|(e, _, _)| e == epoch)
                    };
                    held.retain(|epoch, _| unfinished(epoch));
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use webscale_rl_records::{DeadLetter, Origin, RawMessage, Stage};

    #[test]
    fn a_record_over_the_bound_is_written_without_its_optional_text() {
        let msg = RawMessage {
            key: None,
            payload: Some(vec![b'x'; 700 * 1024]),
            origin: Origin {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
            truncated: false,
        };
        let mut dl = DeadLetter::for_message(&msg, Stage::Parse, "malformed_json", "");
        // Under the bound: written whole.
        let whole = encode(&mut dl.clone());
        assert!(whole.len() < MAX_RECORD_BYTES && dl.payload.is_some());
        // Over it (a payload that grew past what the stages bound): the payload goes.
        dl.payload = Some("\u{1}".repeat(400 * 1024));
        let json = encode(&mut dl);
        assert!(json.len() <= MAX_RECORD_BYTES, "{}", json.len());
        assert!(dl.payload.is_none());
    }
}
