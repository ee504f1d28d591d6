//! The file sink: every worker's records are exchanged to worker 0, which appends them to one
//! JSONL file (written atomically on finish).

use std::cell::RefCell;
use std::rc::Rc;

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use webscale_rl_operators::record::Emitted;

use crate::file::JsonlOutput;

/// A JSONL writer shared between the sink operator and the worker loop (which finishes it).
pub type SharedOutput = Rc<RefCell<Option<JsonlOutput>>>;

/// Appends `records` to `out` on worker 0. A write error is kept in `error` and fails the run.
pub fn file_sink(
    records: StreamVec<'_, u64, Emitted>,
    out: SharedOutput,
    error: Rc<RefCell<Option<String>>>,
) {
    records.sink(
        Exchange::new(|_: &Emitted| 0),
        "FileSink",
        move |(input, _frontier)| {
            input.for_each(|_cap, data| {
                let mut out = out.borrow_mut();
                let Some(writer) = out.as_mut() else { return };
                for record in data.drain(..) {
                    if let Err(e) = writer.write_record(&record.payload) {
                        error.borrow_mut().get_or_insert_with(|| format!("{e:#}"));
                        return;
                    }
                }
            });
        },
    );
}
