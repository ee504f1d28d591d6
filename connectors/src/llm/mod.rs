//! LLM client for the pipeline's LLM stages: OpenAI-compatible
//! `/v1/chat/completions` (vLLM, SGLang, llama.cpp server, OpenAI, …).
//!
//! * [`client`]: [`LlmClient`] — endpoints with load spreading, concurrency
//!   and rate limits, retries with backoff, JSON answers, non-blocking
//!   [`LlmClient::submit`] for timely workers.
//! * [`config`]: [`LlmConfig`], the `[llm]` configuration section, and the
//!   structured-output dialects ([`StructuredOutput`]).
//! * [`startup`]: the start-up check (served models, dialect probe).
//! * [`health`]: [`LlmHealth`], the outage detector behind backpressure and
//!   `/readyz`.
//! * [`request`]: [`ChatRequest`] / [`ChatResponse`] and the cache key.
//! * [`parse`]: tolerant extraction of the JSON in an answer.
//! * [`rate_limit`]: token buckets, global cool-down, `Retry-After`, backoff.
//! * [`cache`]: the persistent (redb) response cache.
//! * [`usage`]: tokens, requests, errors and cost per (stage, model).
//! * [`error`]: [`LlmError`], its kinds and whose [`Fault`] it is.
//! * `scripted_server` (feature `scripted-server`): a scripted
//!   OpenAI-compatible server for tests and benchmarks.

pub mod cache;
pub mod client;
pub mod config;
pub mod error;
pub mod health;
#[cfg(feature = "local-model")]
pub mod local;
pub mod parse;
pub mod rate_limit;
pub mod request;
#[cfg(feature = "scripted-server")]
pub mod scripted_server;
pub mod startup;
pub mod usage;

pub use client::{EndpointStats, LlmClient};
pub use config::{LlmConfig, Price, StructuredOutput};
pub use error::{Fault, LlmError};
pub use health::{HealthStatus, LlmHealth};
pub use parse::parse_json_answer;
pub use request::{ChatMessage, ChatRequest, ChatResponse, ResponseSchema, Usage};
pub use startup::{EndpointReport, StageProbe, StartupError, StartupReport};
pub use usage::{StageUsage, UsageCounters, UsageSnapshot};
