//! Sources and sinks of webscale-rl: Kafka topics, JSONL files, and (later) the LLM HTTP client.

pub mod file;
