//! The stages of the webscale-rl pipeline, each a plain function over a timely stream that returns
//! what passed and what was rejected (as dead letters), plus the records they exchange.

// A dead letter is the `Err` side of every stage by design (it carries the rejection's origin and
// payload head); boxing it would add an allocation per rejection for nothing.
#![allow(clippy::result_large_err)]

pub mod benchmarks;
pub mod classify;
pub mod decontaminate;
pub mod exact_dedup;
pub mod generate;
pub mod llm_call;
pub mod llm_filter;
pub mod llm_stage;
pub mod lsh_index;
pub mod minhash;
pub mod near_dedup;
pub mod normalize;
pub mod parse;
pub mod qa_accounting;
pub mod quality_filter;
pub mod record;
pub mod replay;
pub mod reward;
pub mod route;
pub mod verify;

pub use record::{DeadLetter, Document, Emitted, Origin, QaPair, RawMessage, Stage};

/// What a stage returns: the records that passed, and dead letters for the rest.
pub type Split<'s, D> = (
    timely::dataflow::StreamVec<'s, u64, D>,
    timely::dataflow::StreamVec<'s, u64, DeadLetter>,
);
