//! Kafka: the input source, the output and dead-letter sinks, and their shared connection settings.

pub mod changelog;
pub mod config;
pub mod fence;
pub mod sink;
pub mod source;

pub use changelog::{KafkaChangelog, StateConfig};
pub use config::KafkaConfig;
pub use fence::{Claim, Fence};
pub use sink::{KafkaSink, kafka_sink};
pub use source::{
    Assignment, SourceConfig, SourceProgress, assign_partitions, commit_offsets, kafka_source,
};
pub mod tools;
