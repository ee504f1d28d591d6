//! End-to-end tests through the real Kafka protocol (librdkafka's in-process mock cluster) and
//! through files: every consumed document ends in the output or in the dead-letter topic, offsets
//! are committed only behind durable outputs, and a crash loses nothing.

mod support;

mod cli;
mod file_mode;
mod hardening;
mod kafka;
mod llm;
mod llm_faults;
mod long_running;
mod observability;
mod tools;
