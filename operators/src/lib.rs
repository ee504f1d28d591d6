//! The stages of the webscale-rl pipeline. Each is an extension trait on a timely stream of
//! records — `docs.quality_filter(cfg)`, `docs.exact_dedup(cfg)`, `docs.classify(cfg, llm)` — in
//! the manner of timely's `Filter` and `OkErr`, and returns one shape, [`Verdicts`]: what passed,
//! and a dead letter for each record it rejected. The stateful stages judge whole epochs through
//! one helper, [`epoch::EpochStash`]; the LLM stages share one asynchronous operator
//! ([`llm_stage`]). The records themselves live in the `webscale-rl-records` crate.

// A dead letter is the `Err` side of every stage by design (it carries the rejection's origin and
// payload head); boxing it would add an allocation per rejection for nothing.
#![allow(clippy::result_large_err)]

pub mod benchmarks;
pub mod classify;
pub mod decontaminate;
pub mod epoch;
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
pub mod replay;
pub mod reward;
pub mod route;
pub mod testing;
pub mod verdicts;
pub mod verify;
pub mod words;

pub use verdicts::{Epoch, Verdicts};
