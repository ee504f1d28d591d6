//! What every stage returns: the records that passed, and a dead letter for each one it rejected.
//!
//! One shape for every stage — the CPU filters, the dedup stages, the LLM stages, accounting — so
//! the graph wires them all the same way (count the funnel, collect the rejections) and a new
//! stage has nothing to invent. All stages run on one time type, the epoch (`u64`), which the
//! sources assign and the sinks' durability frontier follows.

use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::ParallelizationContract;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::core::{Concat, OkErr};
use timely::dataflow::operators::generic::operator::{Operator, empty};
use timely::dataflow::operators::generic::{InputHandleCore, OperatorInfo, OutputBuilderSession};
use timely::progress::frontier::MutableAntichain;
use webscale_rl_records::DeadLetter;

/// The time of every stage: the epoch a source stamped the record's message with.
pub type Epoch = u64;

/// A stage's two outputs.
pub struct Verdicts<'s, D> {
    /// The records that go on to the next stage.
    pub passed: StreamVec<'s, Epoch, D>,
    /// One dead letter per rejected record (with its stage and reason).
    pub rejected: StreamVec<'s, Epoch, DeadLetter>,
}

impl<'s, D: 'static> Verdicts<'s, D> {
    /// Splits a stream of `Ok(record)` / `Err(dead letter)` verdicts.
    pub fn split(results: StreamVec<'s, Epoch, Result<D, DeadLetter>>) -> Self {
        let (passed, rejected) = results.ok_err(|r| r);
        Verdicts { passed, rejected }
    }

    /// Every record passes: a stage with nothing to check.
    pub fn all_passed(records: StreamVec<'s, Epoch, D>) -> Self {
        let scope = records.scope();
        let rejected = empty(scope);
        Verdicts {
            passed: records,
            rejected,
        }
    }

    /// The verdicts of a stage applied to what passed here; the rejections of both are kept.
    pub fn then<E: 'static>(
        self,
        stage: impl FnOnce(StreamVec<'s, Epoch, D>) -> Verdicts<'s, E>,
    ) -> Verdicts<'s, E> {
        let next = stage(self.passed);
        Verdicts {
            passed: next.passed,
            rejected: self.rejected.concat(next.rejected),
        }
    }
}

/// Builds a one-input operator (like timely's `unary_frontier`) whose output is a stream of verdicts
/// — `Ok` passes, `Err` is a dead letter — and splits it: the shape of every stage that judges
/// records one by one or an epoch at a time.
pub fn judge<'s, D, O, P, B, L>(
    records: StreamVec<'s, Epoch, D>,
    pact: P,
    name: &str,
    constructor: B,
) -> Verdicts<'s, O>
where
    D: 'static,
    O: 'static,
    P: ParallelizationContract<Epoch, Vec<D>>,
    B: FnOnce(Capability<Epoch>, OperatorInfo) -> L,
    L: FnMut(
            (
                &mut InputHandleCore<Epoch, Vec<D>, P::Puller>,
                &MutableAntichain<Epoch>,
            ),
            &mut OutputBuilderSession<
                '_,
                Epoch,
                CapacityContainerBuilder<Vec<Result<O, DeadLetter>>>,
            >,
        ) + 'static,
{
    Verdicts::split(
        records.unary_frontier::<CapacityContainerBuilder<Vec<Result<O, DeadLetter>>>, _, _, _>(
            pact,
            name,
            constructor,
        ),
    )
}
