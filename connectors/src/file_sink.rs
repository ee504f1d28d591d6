//! The file sink: every worker's records are exchanged to worker 0, which writes them to one
//! output — a JSONL file, or training-ready shards (`hf`/`verl` parquet) — that appears atomically
//! when the run finishes.
//!
//! Records are held per epoch and written when the epoch is complete, in input order (the line
//! of the document they come from, then their id): the file is the same whatever the number of
//! workers and however the LLM's answers interleave, and at any moment it holds exactly the
//! epochs below [`Written`] — which is what lets a checkpoint name the input line up to which the
//! output is complete, and an interrupted run resume there.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use timely::ExchangeData;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
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
    /// Makes what was written durable and returns the output's length in bytes (JSONL), for a
    /// progress record; shard outputs cannot be resumed and give `None`.
    pub fn checkpoint(&mut self) -> anyhow::Result<Option<u64>> {
        match self {
            FileOutput::Jsonl(out) => out.checkpoint().map(Some),
            FileOutput::Shards(_) => Ok(None),
        }
    }

    /// A stream output (stdout, a pipe) gets what was written now; see [`JsonlOutput::flush_stream`].
    pub fn flush_stream(&mut self) -> anyhow::Result<()> {
        match self {
            FileOutput::Jsonl(out) => out.flush_stream(),
            FileOutput::Shards(_) => Ok(()),
        }
    }

    pub fn write<R: FileRecord>(&mut self, record: Outgoing<R>) -> anyhow::Result<()> {
        match (self, record) {
            (FileOutput::Jsonl(out), Outgoing::Line { line, .. }) => out.write_record(&line),
            (FileOutput::Jsonl(out), Outgoing::Record(record)) => {
                out.write_record(&serde_json::to_vec(&record).expect("records serialize to JSON"))
            }
            (FileOutput::Shards(out), Outgoing::Record(record)) => match record.into_qa_pair() {
                Some(pair) => out.write(pair),
                None => anyhow::bail!("shard outputs take QA pairs (run with an LLM)"),
            },
            (FileOutput::Shards(_), Outgoing::Line { .. }) => {
                anyhow::bail!("shard outputs take whole records, not JSON lines")
            }
        }
    }

    pub fn finish(self) -> anyhow::Result<()> {
        match self {
            FileOutput::Jsonl(out) => out.finish(),
            FileOutput::Shards(out) => out.finish().map(|_| ()),
        }
    }
}

/// A record on its way to worker 0. Bound for a JSONL file it is encoded on the worker that
/// held it, so that every worker shares the encoding (worker 0 only writes the bytes); a shard
/// output needs the record itself.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Outgoing<R> {
    Line { key: String, line: Vec<u8> },
    Record(R),
}

impl<R: Keyed> Outgoing<R> {
    /// `record` encoded as its JSON line when `encode`, else as it is.
    pub fn new(record: R, encode: bool) -> Self {
        if encode {
            Outgoing::Line {
                key: record.key().to_string(),
                line: serde_json::to_vec(&record).expect("records serialize to JSON"),
            }
        } else {
            Outgoing::Record(record)
        }
    }

    fn key(&self) -> &str {
        match self {
            Outgoing::Line { key, .. } => key,
            Outgoing::Record(record) => record.key(),
        }
    }
}

/// An output shared between the sink operator and the worker loop (which finishes it).
pub type SharedOutput = Rc<RefCell<Option<FileOutput>>>;

/// Every epoch below this one is written to both outputs (`u64::MAX`: everything, the input is
/// complete). Shared between the sink and the worker loop.
pub type Written = Rc<Cell<u64>>;

/// Writes `records` to `out` and `dead_letters` to `rejects` on worker 0, an epoch at a time once
/// it is complete on both streams, each ordered by (position, key): a record's position is the
/// line (or offset) of the message it comes from. Both files therefore always hold exactly the
/// epochs below [`Written`], which a checkpoint can name. A write error is kept in `error` and
/// fails the run.
/// `encode_records`: the output is JSONL, so records travel as their JSON lines ([`Outgoing`]);
/// dead letters always do. The returned stream carries nothing; its frontier is that of what
/// reached the sinks (a probe there costs no copy of the records, as one on a stream the sinks
/// also read would).
pub fn file_sinks<'s, R: FileRecord>(
    records: StreamVec<'s, u64, (i64, R)>,
    dead_letters: StreamVec<'s, u64, (i64, DeadLetter)>,
    out: SharedOutput,
    rejects: SharedOutput,
    written: Written,
    error: Rc<RefCell<Option<String>>>,
    encode_records: bool,
) -> StreamVec<'s, u64, ()> {
    /// An epoch's records of both streams, each with its position.
    type Held<R> = (Vec<(i64, Outgoing<R>)>, Vec<(i64, Outgoing<DeadLetter>)>);
    let mut epochs: BTreeMap<u64, Held<R>> = BTreeMap::new();
    let records = records.map(move |(at, r)| (at, Outgoing::new(r, encode_records)));
    let dead_letters = dead_letters.map(|(at, d)| (at, Outgoing::new(d, true)));
    records.binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
        dead_letters,
        Exchange::new(|_: &(i64, Outgoing<R>)| 0),
        Exchange::new(|_: &(i64, Outgoing<DeadLetter>)| 0),
        "FileSinks",
        move |_cap, _info| {
            move |(records_in, records_frontier), (dead_in, dead_frontier), _output| {
                records_in.for_each(|cap, data| {
                    let epoch = *cap.least().expect("a stamp has a time");
                    epochs.entry(epoch).or_default().0.append(data);
                });
                dead_in.for_each(|cap, data| {
                    let epoch = *cap.least().expect("a stamp has a time");
                    epochs.entry(epoch).or_default().1.append(data);
                });
                let mut wrote = false;
                while let Some(entry) = epochs.first_entry() {
                    let epoch = entry.key();
                    if records_frontier.less_equal(epoch) || dead_frontier.less_equal(epoch) {
                        break;
                    }
                    let (records, dead) = entry.remove();
                    if let Err(e) =
                        write_epoch(&out, records).and_then(|()| write_epoch(&rejects, dead))
                    {
                        error.borrow_mut().get_or_insert_with(|| format!("{e:#}"));
                        return;
                    }
                    wrote = true;
                }
                // A stream's reader sees each complete epoch, whether or not more input follows.
                let flushed = [&out, &rejects].into_iter().try_for_each(|shared| {
                    match shared.borrow_mut().as_mut() {
                        Some(writer) if wrote => writer.flush_stream(),
                        _ => Ok(()),
                    }
                });
                if let Err(e) = flushed {
                    error.borrow_mut().get_or_insert_with(|| format!("{e:#}"));
                    return;
                }
                let next = epochs
                    .first_key_value()
                    .map(|(e, _)| *e)
                    .into_iter()
                    .chain(records_frontier.frontier().iter().copied())
                    .chain(dead_frontier.frontier().iter().copied())
                    .min()
                    .unwrap_or(u64::MAX);
                written.set(next);
            }
        },
    )
}

/// Writes one epoch's records of one stream, in (position, key) order.
fn write_epoch<R: FileRecord>(
    out: &SharedOutput,
    mut records: Vec<(i64, Outgoing<R>)>,
) -> anyhow::Result<()> {
    records.sort_by(|a, b| (a.0, a.1.key()).cmp(&(b.0, b.1.key())));
    let mut out = out.borrow_mut();
    let Some(writer) = out.as_mut() else {
        return Ok(());
    };
    for (_, record) in records {
        writer.write(record)?;
    }
    Ok(())
}
