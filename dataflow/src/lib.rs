//! Graph assembly, worker runtime and offset tracking of webscale-rl.
//!
//! [`graph`] wires the stages; [`runtime`] runs the graph on timely workers between Kafka (or
//! files) and commits input offsets only behind the durable frontier; [`funnel`] counts what each
//! stage passed and rejected and [`live`] what the run is doing; [`metrics`], [`state`] and [`http`]
//! expose it all to Prometheus, a live dashboard and orchestrators' health checks.

pub mod cluster;
pub mod config;
pub mod file_mode;
pub mod funnel;
pub mod graph;
pub mod http;
pub mod live;
pub mod llm_service;
pub mod metrics;
pub mod operator_times;
pub mod paths;
pub mod resume;
pub mod runtime;
pub mod state;
pub mod workers;

pub use config::PipelineConfig;
pub use funnel::{Funnel, FunnelSnapshot};
