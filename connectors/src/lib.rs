//! Sources and sinks of webscale-rl: Kafka topics, JSONL files, and the LLM HTTP client.

pub mod file;
pub mod kafka;
pub mod file_sink;
pub mod file_source;
pub mod llm;
