//! The fence: one engine per group, the newest start wins.
//!
//! The engine assigns its input partitions itself (partition `p` to worker `p % peers`) instead of
//! joining a consumer-group rebalance, so the broker does not know who owns a partition and will
//! accept offset commits from two engines started on one group: both then read every partition,
//! each commit undoes the other's, both write every output, and each keeps its own dedup state.
//! Kafka's own fences do not apply to assigned partitions (a generation only exists for
//! subscribed members), and librdkafka's mock cluster, which the tests run against, implements
//! neither static membership nor transactional fencing.
//!
//! So each worker *claims* its partitions at start: it commits them, in the side group
//! `GROUP.fence`, with a claim (a random token, the time, the worker, host and process id) as the
//! commit's metadata. Claims are written only at start, so the claim stored for a partition is
//! always the newest engine's. Every [`FENCE_CHECK_INTERVAL`], and before each synchronous commit,
//! a worker reads its partitions' claims back; one that is not its own means a newer engine took
//! the partition over, and this one stops with an error that names it — before committing again.
//!
//! The newest start winning is what a restart needs: a process that crashed, or a machine that was
//! replaced, takes over at once, with no session timeout to wait for. The cost is that a second
//! engine started by mistake stops the running one; the error on both sides says so. Nothing is
//! lost either way: the older engine commits only what it made durable, and for at most one check
//! interval after the newer one started, which can only replay documents, never skip them. Two
//! engines that start in the same instant may each win some partitions, and then both stop.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::config::KafkaConfig;

/// How often a worker reads its claims back: how long an older engine may go on committing after
/// a newer one took its partitions.
pub const FENCE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often a running worker writes its claim again, so that the broker's retention of a
/// memberless group's commits (7 days by default) never expires it.
const CLAIM_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// The side group that holds the claims of the engine running as `group`.
pub fn fence_group(group: &str) -> String {
    format!("{group}.fence")
}

/// What a worker writes as the metadata of its claim on a partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Random, one per worker and start: the claim's identity.
    pub token: String,
    /// When the claim was made, milliseconds since the Unix epoch.
    pub claimed_ms: u64,
    pub worker: usize,
    pub workers: usize,
    pub host: String,
    pub pid: u32,
}

impl Claim {
    /// A new claim for worker `worker` of `workers`.
    pub fn new(worker: usize, workers: usize) -> Claim {
        Claim {
            token: format!("{:016x}", rand::random::<u64>()),
            claimed_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            worker,
            workers,
            host: host_name(),
            pid: std::process::id(),
        }
    }

    /// Who made the claim, for an error message.
    pub fn describe(&self) -> String {
        format!(
            "worker {} of {} on host '{}', pid {}, {} s after the Unix epoch",
            self.worker,
            self.workers,
            self.host,
            self.pid,
            self.claimed_ms / 1000
        )
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// One worker's claim on its input partitions, and the check that nobody took them since.
pub struct Fence {
    consumer: BaseConsumer,
    /// The engine's consumer group; the claims live in its [`fence_group`].
    group: String,
    topic: String,
    partitions: Vec<i32>,
    claim: Claim,
    timeout: Duration,
    last_check: Instant,
    /// When the claim was last written.
    claimed: Instant,
}

impl Fence {
    /// Claims `partitions` of `topic` for this worker: the claim is acknowledged before this
    /// returns, so that a check made after it sees it.
    pub fn claim(
        cfg: &KafkaConfig,
        topic: &str,
        partitions: &[i32],
        claim: Claim,
    ) -> anyhow::Result<Fence> {
        let group = cfg.group.clone();
        let consumer: BaseConsumer = cfg
            .client_config_with(&[
                ("group.id", fence_group(&group).as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
            ])?
            .create()
            .context("creating the Kafka client of the group's fence")?;
        let mut fence = Fence {
            consumer,
            group,
            topic: topic.to_string(),
            partitions: partitions.to_vec(),
            claim,
            timeout: cfg.connect_timeout(),
            last_check: Instant::now(),
            claimed: Instant::now(),
        };
        fence.write_claim(&fence.partitions.clone())?;
        Ok(fence)
    }

    /// Writes this worker's claim on `partitions`, acknowledged before it returns (a failed write is
    /// retried by the next check: the claim stays missing, or old).
    fn write_claim(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        let metadata = serde_json::to_string(&self.claim)?;
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            // The offset means nothing here; the claim is the metadata.
            let mut e = tpl.add_partition(&self.topic, p);
            e.set_offset(Offset::Offset(0))?;
            e.set_metadata(metadata.as_str());
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .with_context(|| {
                format!(
                    "claiming the input partitions in group '{}'",
                    fence_group(&self.group)
                )
            })?;
        self.claimed = Instant::now();
        Ok(())
    }

    /// [`Fence::check_now`], at most once per [`FENCE_CHECK_INTERVAL`].
    pub fn check(&mut self) -> anyhow::Result<()> {
        if self.last_check.elapsed() < FENCE_CHECK_INTERVAL {
            return Ok(());
        }
        self.check_now()
    }

    /// Fails when another engine claimed one of this worker's partitions after it did.
    pub fn check_now(&mut self) -> anyhow::Result<()> {
        self.last_check = Instant::now();
        if self.partitions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for &p in &self.partitions {
            tpl.add_partition(&self.topic, p);
        }
        let stored = match self.consumer.committed_offsets(tpl, self.timeout) {
            Ok(stored) => stored,
            Err(e) => {
                // A broker fault is the world's, not a rival's: look again at the next check
                // (the commits themselves wait for the broker meanwhile).
                tracing::warn!(group = %fence_group(&self.group), error = %e, "cannot read the partition claims; checking again soon");
                return Ok(());
            }
        };
        let mut unclaimed = Vec::new();
        for e in stored.elements() {
            if e.metadata().is_empty() {
                // Gone: the broker expires a memberless group's commits after
                // `offsets.retention.minutes` (7 days by default). Nobody claimed it since.
                unclaimed.push(e.partition());
                continue;
            }
            let theirs = serde_json::from_str::<Claim>(e.metadata()).ok();
            if theirs.as_ref().is_some_and(|c| c.token == self.claim.token) {
                continue;
            }
            let by = theirs.map_or_else(
                || "an engine whose claim cannot be read".to_string(),
                |c| c.describe(),
            );
            bail!(
                "fenced: input partition {} of '{}' was claimed by another engine ({by}) after this \
                 one started in consumer group '{}'; this engine stops, committing nothing more, \
                 so that two engines never process one partition. Run one engine per group: stop \
                 the other, or give each deployment its own [kafka] group",
                e.partition(),
                self.topic,
                self.group,
            );
        }
        let rewrite = if self.claimed.elapsed() >= CLAIM_REFRESH {
            // Written again well before the retention would expire it.
            self.partitions.clone()
        } else {
            unclaimed
        };
        if !rewrite.is_empty()
            && let Err(e) = self.write_claim(&rewrite)
        {
            tracing::warn!(group = %fence_group(&self.group), error = %format!("{e:#}"), "cannot write the partition claims; trying again soon");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_small_metadata_that_reads_back() {
        let claim = Claim::new(1, 4);
        let text = serde_json::to_string(&claim).unwrap();
        // Well under the broker's offset.metadata.max.bytes (4096 by default).
        assert!(text.len() < 512, "{text}");
        assert_eq!(serde_json::from_str::<Claim>(&text).unwrap(), claim);
        assert_ne!(Claim::new(1, 4).token, claim.token);
        assert!(claim.describe().contains("worker 1 of 4"));
        assert_eq!(fence_group("team"), "team.fence");
    }
}
