//! The file sink: every worker's records are exchanged to worker 0, which writes them to one
//! output — a JSONL file, or training-ready shards (`hf`/`verl` parquet) — that appears atomically
//! when the run finishes.

use std::cell::RefCell;
use std::rc::Rc;

use timely::ExchangeData;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use webscale_rl_records::{AcceptedDocument, DeadLetter, Keyed, QaPair};

use crate::export::ShardedWriter;
use crate::file::JsonlOutput;

/// Where the file sink writes.
pub enum FileOutput {
    /// One JSONL file (plain, `.gz`, `.zst`), renamed into place on finish.
    Jsonl(JsonlOutput),
    /// QA pairs as export shards (`jsonl`/`hf`/`verl`), each renamed into place when closed.
    Shards(ShardedWriter),
}

/// A record the file sink writes: a JSON line, or (a QA pair) a row of a training shard.
pub trait FileRecord: Keyed + ExchangeData + Clone {
    /// The QA pair, for shard outputs; other records cannot go there.
    fn into_qa_pair(self) -> Option<QaPair> {
        None
    }
}

impl FileRecord for QaPair {
    fn into_qa_pair(self) -> Option<QaPair> {
        Some(self)
    }
}
impl FileRecord for AcceptedDocument {}
impl FileRecord for DeadLetter {}

impl FileOutput {
    pub fn write<R: FileRecord>(&mut self, record: R) -> anyhow::Result<()> {
        match self {
            FileOutput::Jsonl(out) => {
                let line = serde_json::to_vec(&record).expect("records serialize to JSON");
                out.write_record(&line)
            }
            FileOutput::Shards(out) => match record.into_qa_pair() {
                Some(pair) => out.write(pair),
                None => anyhow::bail!("shard outputs take QA pairs (run with an LLM)"),
            },
        }
    }

    pub fn finish(self) -> anyhow::Result<()> {
        match self {
            FileOutput::Jsonl(out) => out.finish(),
            FileOutput::Shards(out) => out.finish().map(|_| ()),
        }
    }
}

/// An output shared between the sink operator and the worker loop (which finishes it).
pub type SharedOutput = Rc<RefCell<Option<FileOutput>>>;

/// Writes `records` to `out` on worker 0. A write error is kept in `error` and fails the run.
pub fn file_sink<R: FileRecord>(
    records: StreamVec<'_, u64, R>,
    out: SharedOutput,
    error: Rc<RefCell<Option<String>>>,
) {
    records.sink(
        Exchange::new(|_: &R| 0),
        "FileSink",
        move |(input, _frontier)| {
            input.for_each(|_cap, data| {
                let mut out = out.borrow_mut();
                let Some(writer) = out.as_mut() else { return };
                for record in data.drain(..) {
                    if let Err(e) = writer.write(record) {
                        error.borrow_mut().get_or_insert_with(|| format!("{e:#}"));
                        return;
                    }
                }
            });
        },
    );
}
