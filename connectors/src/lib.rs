//! Sources and sinks of webscale-rl: Kafka topics, JSONL files, and the LLM HTTP client.

pub mod dirs;
pub mod export;
pub mod file;
pub mod file_sink;
pub mod file_source;
pub mod kafka;
pub mod llm;
