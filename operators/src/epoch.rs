//! The per-epoch stash that every stateful stage keeps: what an epoch brought, held with a
//! capability for the epoch until the input frontier has passed it, then handed back — oldest
//! epoch first — to be judged as a whole.
//!
//! Judging an epoch only once it is complete, with its records in a fixed order, is what makes
//! the verdicts independent of arrival order and of the number of workers (which copy of a text
//! is "first", which pair a document keeps). Holding the capability is what keeps the durable
//! frontier — and with it the Kafka offset commit — behind every epoch still being judged.
//!
//! ```
//! use timely::dataflow::channels::pact::Pipeline;
//! use timely::dataflow::operators::generic::operator::Operator;
//! use timely::dataflow::operators::{Capture, ToStream, capture::Extract};
//! use webscale_rl_operators::epoch::EpochStash;
//!
//! // Sums each epoch's numbers, once the epoch is complete.
//! let sums = timely::example(|scope| {
//!     (1..=4u64)
//!         .to_stream(scope)
//!         .unary_frontier(Pipeline, "Sum", |_cap, _info| {
//!             let mut stash: EpochStash<Vec<u64>> = EpochStash::default();
//!             move |(input, frontier), output| {
//!                 input.for_each_stamp(|cap, data| {
//!                     let (_, numbers) = stash.entry(&cap);
//!                     data.for_each(|batch| numbers.append(batch));
//!                 });
//!                 while let Some((cap, numbers)) = stash.pop_complete(|t| frontier.less_equal(t)) {
//!                     output.session(&cap).give(numbers.iter().sum::<u64>());
//!                 }
//!             }
//!         })
//!         .capture()
//! });
//! assert_eq!(sums.extract(), vec![(0, vec![10])]);
//! ```

use std::collections::BTreeMap;

use timely::dataflow::operators::{Capability, InputCapability};

/// Per open epoch: a capability for output 0 and the stage's state `S` for that epoch.
pub struct EpochStash<S> {
    epochs: BTreeMap<u64, (Capability<u64>, S)>,
}

impl<S> Default for EpochStash<S> {
    fn default() -> Self {
        EpochStash {
            epochs: BTreeMap::new(),
        }
    }
}

impl<S: Default> EpochStash<S> {
    /// The state of the epoch `cap` stamps, created on first use, with the capability held for
    /// it (for output 0): records can be given at once under it, or when the epoch completes.
    pub fn entry(&mut self, cap: &InputCapability<u64>) -> (&Capability<u64>, &mut S) {
        let epoch = *cap.least().expect("a stamp has a time");
        let (held, state) = self
            .epochs
            .entry(epoch)
            .or_insert_with(|| (cap.retain_least(0).expect("output 0"), S::default()));
        (held, state)
    }
}

impl<S> EpochStash<S> {
    /// The oldest epoch, removed, if `open` (usually `|t| frontier.less_equal(t)`, for every
    /// input of the operator) says no record of it can still arrive.
    pub fn pop_complete(&mut self, open: impl Fn(&u64) -> bool) -> Option<(Capability<u64>, S)> {
        let entry = self.epochs.first_entry()?;
        if open(entry.key()) {
            return None;
        }
        Some(entry.remove())
    }

    /// The state of an open epoch.
    pub fn get_mut(&mut self, epoch: u64) -> Option<(&Capability<u64>, &mut S)> {
        self.epochs.get_mut(&epoch).map(|(cap, s)| (&*cap, s))
    }

    /// Releases every epoch that `keep` no longer wants (in any order): for stages whose epochs
    /// end on something besides the frontier, like calls still in flight.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, &S) -> bool) {
        self.epochs.retain(|epoch, (_, s)| keep(*epoch, s));
    }
}
