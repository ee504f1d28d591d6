//! The stages of the webscale-rl pipeline, each a plain function over a timely stream that returns
//! what passed and what was rejected (as dead letters), plus the records they exchange.

pub mod benchmarks;
pub mod decontaminate;
pub mod exact_dedup;
pub mod lsh_index;
pub mod minhash;
pub mod near_dedup;
pub mod normalize;
pub mod parse;
pub mod quality_filter;
pub mod record;
pub mod reward;

pub use record::{DeadLetter, Document, Emitted, Origin, QaPair, RawMessage, Stage};
