//! Training-ready exports of the QA records (`webscale-rl export`): a Kafka output topic or a JSONL
//! QA file becomes a directory of shards a trainer can read.
//!
//! Formats ([`ExportFormat`]):
//! * `jsonl`: the [`QaPair`] record, one JSON object a line (`PREFIX-00000.jsonl`);
//! * `hf`: parquet with the Webscale-RL dataset's columns (`PREFIX-00000.parquet`);
//! * `verl`: parquet in verl's RL layout.
//!
//! The parquet schemas are documented in [`parquet`]; sharding and atomic visibility in
//! [`shards`].
//!
//! **Replays.** The output topic may hold the same QA id more than once (a crashed engine replays
//! its input and re-emits the same ids). With [`ExportOptions::dedup`] (the default) the export
//! keeps the *last* record of each id and reads its input twice: the first pass notes, per id,
//! where its last record is; the second writes each record found where its id's last one is.
//! "Last" is the highest offset within a partition (the sink keys by id, so all copies of an id
//! share a partition); should copies sit in different partitions (the topic was repartitioned),
//! the later `created_at` wins. A Kafka tombstone (a keyed message without payload, as a compacted
//! topic uses) that comes last deletes its id.
//!
//! **Memory** is bounded by the number of distinct ids, not by record sizes: no record is kept
//! between the passes, only a map from the id as 128 bits (ids are xxh3-128 hex; other ids are
//! hashed to 128 bits) to a 24-byte position, about 40–80 bytes per id with the hash table's slack
//! (10 million ids: under 1 GB). Without dedup the export is a single pass in constant memory.
//! Both Kafka passes read up to the same end offsets, taken when the export starts, so records
//! produced meanwhile are left for the next export.

pub mod parquet;
pub mod shards;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use webscale_rl_records::QaPair;

use crate::file::{JsonlInput, JsonlOutput};
use crate::kafka::{KafkaConfig, tools};
use parquet::{Layout, ParquetShard, VerlPrompt};
pub use shards::ShardedWriter;
use shards::{ShardFile, ShardLimits};

/// What an export writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExportFormat {
    /// The QA record as JSON lines.
    Jsonl,
    /// Parquet, Webscale-RL dataset columns.
    Hf,
    /// Parquet, verl's RL layout.
    Verl,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 3] = [ExportFormat::Jsonl, ExportFormat::Hf, ExportFormat::Verl];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Hf => "hf",
            ExportFormat::Verl => "verl",
        }
    }

    /// The shards' file extension.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Hf | ExportFormat::Verl => "parquet",
        }
    }
}

impl std::fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ExportFormat {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<ExportFormat> {
        ExportFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| anyhow::anyhow!("unknown export format '{s}' (jsonl, hf or verl)"))
    }
}

/// How an export shards and shapes its output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportOptions {
    /// Shard names: `PREFIX-00000.parquet`, `PREFIX-00001.parquet`, ...
    pub prefix: String,
    /// Records per shard.
    pub max_records: u64,
    /// Approximate bytes per shard (see [`ShardLimits::max_bytes`]).
    pub max_bytes: u64,
    /// Keep only the last record of each QA id (two passes over the input; see the module docs).
    pub dedup: bool,
    /// Keep the records' source text (`pretrain_text`) when they carry it; when false it is
    /// dropped (`hf`: a null column; `jsonl`: no field).
    pub include_pretrain_text: bool,
    /// Remove complete shards of an earlier export with the same prefix instead of failing.
    pub overwrite: bool,
    /// The `verl` format's `data_source` and prompt instruction.
    pub verl: VerlPrompt,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            prefix: "part".to_string(),
            max_records: 100_000,
            max_bytes: 256 << 20,
            dedup: true,
            include_pretrain_text: true,
            overwrite: false,
            verl: VerlPrompt::default(),
        }
    }
}

/// What an export did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Messages (Kafka) or non-blank lines (file) read, counted once however many passes.
    pub read: u64,
    /// Messages that are not a QA record (skipped; the first few are logged with their position).
    pub invalid: u64,
    /// Earlier copies of a QA id dropped, and records deleted by a later tombstone.
    pub duplicates: u64,
    /// Records written.
    pub written: u64,
    /// Ids whose last record the second pass no longer found (the topic's retention deleted it
    /// between the passes). Zero in a consistent export.
    pub missing: u64,
    /// The shards, in order.
    pub shards: Vec<PathBuf>,
}

/// A sharded writer of `format` into the directory `out`: the sink of an export, also usable by a
/// pipeline that writes training files directly. `opts.include_pretrain_text` and `opts.dedup`
/// are for the export loop and are not applied here.
pub fn sharded_writer(
    format: ExportFormat,
    out: &Path,
    opts: &ExportOptions,
) -> anyhow::Result<ShardedWriter> {
    let limits = ShardLimits {
        max_records: opts.max_records,
        max_bytes: opts.max_bytes,
    };
    let open: shards::OpenShard = match format {
        ExportFormat::Jsonl => {
            Box::new(|path: &Path| Ok(Box::new(JsonlShard::create(path)?) as Box<dyn ShardFile>))
        }
        ExportFormat::Hf => Box::new(|path: &Path| {
            Ok(Box::new(ParquetShard::create(path, Layout::Hf)?) as Box<dyn ShardFile>)
        }),
        ExportFormat::Verl => {
            let prompt = opts.verl.clone();
            Box::new(move |path: &Path| {
                let layout = Layout::Verl(prompt.clone());
                Ok(Box::new(ParquetShard::create(path, layout)?) as Box<dyn ShardFile>)
            })
        }
    };
    ShardedWriter::new(
        out,
        &opts.prefix,
        format.extension(),
        limits,
        opts.overwrite,
        open,
    )
}

/// Exports `topic` as it is when the export starts (up to its current end offsets) into the
/// directory `out`.
pub fn export_topic(
    cfg: &KafkaConfig,
    topic: &str,
    format: ExportFormat,
    out: &Path,
    opts: &ExportOptions,
) -> anyhow::Result<ExportReport> {
    let writer = sharded_writer(format, out, opts)?;
    let ends = tools::end_offsets(cfg, topic)?;
    let mut scan = |f: &mut dyn FnMut(Message<'_>) -> anyhow::Result<()>| {
        tools::read_topic_to(cfg, topic, &ends, &mut |m| {
            f(Message {
                partition: m.partition,
                offset: m.offset,
                key: m.key,
                payload: m.payload,
            })
        })
        .map(|_| ())
    };
    let report = export(&mut scan, writer, opts)
        .with_context(|| format!("exporting topic '{topic}' to '{}'", out.display()))?;
    log_report(&report, topic);
    Ok(report)
}

/// Exports a JSONL file of QA records (plain, gzip or zstd) into the directory `out`. With dedup
/// the file is read twice, so `-` (stdin) needs `dedup: false`.
pub fn export_file(
    input: &Path,
    format: ExportFormat,
    out: &Path,
    opts: &ExportOptions,
) -> anyhow::Result<ExportReport> {
    let name = input.to_string_lossy().into_owned();
    if name == "-" && opts.dedup {
        bail!("cannot export from stdin with dedup: it reads its input twice; disable dedup");
    }
    let writer = sharded_writer(format, out, opts)?;
    // The second pass stops where the first did, should the file grow meanwhile.
    let mut lines_seen: Option<i64> = None;
    let mut scan = |f: &mut dyn FnMut(Message<'_>) -> anyhow::Result<()>| {
        let mut input = JsonlInput::open(&name)?.with_max_line_bytes(MAX_RECORD_BYTES);
        let mut buf = Vec::new();
        while let Some(info) = input.next_line(&mut buf)? {
            if lines_seen.is_some_and(|n| info.number > n) {
                break;
            }
            if info.truncated {
                bail!(
                    "line {} of '{name}' is over {MAX_RECORD_BYTES} bytes: not a QA record",
                    info.number
                );
            }
            f(Message {
                partition: 0,
                offset: info.number,
                key: None,
                payload: Some(&buf),
            })?;
        }
        lines_seen.get_or_insert(input.lines_read());
        Ok(())
    };
    let report = export(&mut scan, writer, opts)
        .with_context(|| format!("exporting '{name}' to '{}'", out.display()))?;
    log_report(&report, &name);
    Ok(report)
}

fn log_report(report: &ExportReport, from: &str) {
    tracing::info!(
        from,
        read = report.read,
        written = report.written,
        duplicates = report.duplicates,
        invalid = report.invalid,
        missing = report.missing,
        shards = report.shards.len(),
        "export finished"
    );
    if report.missing > 0 {
        tracing::warn!(
            missing = report.missing,
            "records vanished from '{from}' during the export (retention?): those ids are absent"
        );
    }
}

/// The longest line of a JSONL QA file: a record with its source text is large but bounded.
const MAX_RECORD_BYTES: usize = 256 << 20;

/// A message of either input: Kafka (partition, offset) or file (0, line number).
struct Message<'a> {
    partition: i32,
    offset: i64,
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
}

/// Reads the whole input once per call, handing each message to the callback.
type Scan<'s> =
    dyn FnMut(&mut dyn FnMut(Message<'_>) -> anyhow::Result<()>) -> anyhow::Result<()> + 's;

/// Where the last record of an id is. 24 bytes: see the module docs on memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Latest {
    offset: i64,
    created_at: u64,
    partition: i32,
    /// The last message for the id deletes it.
    tombstone: bool,
}

impl Latest {
    /// Whether `self`, read after `earlier`, supersedes it.
    fn supersedes(&self, earlier: &Latest) -> bool {
        if self.partition == earlier.partition {
            self.offset > earlier.offset
        } else {
            (self.created_at, self.partition) > (earlier.created_at, earlier.partition)
        }
    }
}

/// How many invalid messages are logged one by one.
const LOGGED_INVALID: u64 = 10;

fn parse(m: &Message<'_>, report: &mut ExportReport, count: bool) -> Option<QaPair> {
    let payload = m.payload?;
    match serde_json::from_slice::<QaPair>(payload) {
        Ok(qa) => Some(qa),
        Err(e) => {
            if count {
                report.invalid += 1;
                if report.invalid <= LOGGED_INVALID {
                    tracing::warn!(
                        partition = m.partition,
                        offset = m.offset,
                        error = %e,
                        "skipping a message that is not a QA record"
                    );
                }
            }
            None
        }
    }
}

/// Blank lines and keyless empty messages carry nothing.
fn is_blank(m: &Message<'_>) -> bool {
    match m.payload {
        None => m.key.is_none(),
        Some(p) => p.iter().all(u8::is_ascii_whitespace),
    }
}

fn export(
    scan: &mut Scan<'_>,
    mut writer: ShardedWriter,
    opts: &ExportOptions,
) -> anyhow::Result<ExportReport> {
    let mut report = ExportReport::default();
    let mut latest: HashMap<u128, Latest> = HashMap::new();
    if opts.dedup {
        scan(&mut |m| {
            if is_blank(&m) {
                return Ok(());
            }
            report.read += 1;
            let here = |created_at, tombstone| Latest {
                offset: m.offset,
                created_at,
                partition: m.partition,
                tombstone,
            };
            let (key, pos) = match (m.payload, m.key) {
                (None, Some(key)) => (id_key(key), here(0, true)),
                _ => match parse(&m, &mut report, true) {
                    Some(qa) => (id_key(qa.id.as_bytes()), here(qa.created_at, false)),
                    None => return Ok(()),
                },
            };
            match latest.entry(key) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    if pos.supersedes(e.get()) {
                        e.insert(pos);
                    }
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(pos);
                }
            }
            Ok(())
        })?;
    }
    let mut found = 0u64;
    scan(&mut |m| {
        if is_blank(&m) {
            return Ok(());
        }
        if !opts.dedup {
            report.read += 1;
        }
        let Some(mut qa) = parse(&m, &mut report, !opts.dedup) else {
            return Ok(());
        };
        if opts.dedup {
            let Some(last) = latest.get(&id_key(qa.id.as_bytes())) else {
                bail!(
                    "the input changed during the export: QA id {} at {}:{} was not there before",
                    qa.id,
                    m.partition,
                    m.offset
                );
            };
            if (last.partition, last.offset) != (m.partition, m.offset) {
                report.duplicates += 1;
                return Ok(());
            }
            found += 1;
        }
        if !opts.include_pretrain_text {
            qa.pretrain_text = None;
        }
        writer.write(qa)?;
        report.written += 1;
        Ok(())
    })?;
    if opts.dedup {
        let live = latest.values().filter(|l| !l.tombstone).count() as u64;
        report.missing = live.saturating_sub(found);
    }
    report.shards = writer.finish()?;
    Ok(report)
}

/// The dedup key of a QA id: the id itself when it is 32 hex digits (an xxh3-128, as
/// `record::qa_id` makes), else its xxh3-128.
fn id_key(id: &[u8]) -> u128 {
    if id.len() == 32 && id.iter().all(u8::is_ascii_hexdigit) {
        // 32 hex digits always parse.
        let hex = std::str::from_utf8(id).expect("hex digits are ASCII");
        return u128::from_str_radix(hex, 16).expect("32 hex digits fit in u128");
    }
    xxhash_rust::xxh3::xxh3_128(id)
}

/// One JSONL shard: [`JsonlOutput`] writes it (itself via a temporary file renamed on finish).
struct JsonlShard {
    out: JsonlOutput,
    bytes: u64,
}

impl JsonlShard {
    fn create(path: &Path) -> anyhow::Result<JsonlShard> {
        let path = path
            .to_str()
            .with_context(|| format!("shard path '{}' is not UTF-8", path.display()))?;
        Ok(JsonlShard {
            out: JsonlOutput::create(path)?,
            bytes: 0,
        })
    }
}

impl ShardFile for JsonlShard {
    fn write(&mut self, qa: QaPair) -> anyhow::Result<()> {
        let line = serde_json::to_vec(&qa).context("serializing a QA record")?;
        self.out.write_record(&line)?;
        self.bytes += line.len() as u64 + 1;
        Ok(())
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn finish(self: Box<Self>) -> anyhow::Result<()> {
        self.out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_name() {
        for f in ExportFormat::ALL {
            assert_eq!(f.name().parse::<ExportFormat>().unwrap(), f);
        }
        assert_eq!("HF".parse::<ExportFormat>().unwrap(), ExportFormat::Hf);
        assert!("csv".parse::<ExportFormat>().is_err());
        assert_eq!(ExportFormat::Verl.extension(), "parquet");
        assert_eq!(ExportFormat::Jsonl.extension(), "jsonl");
    }

    #[test]
    fn id_keys_use_hex_ids_and_hash_others() {
        let id = webscale_rl_records::qa_id("d", "p", "q");
        assert_eq!(
            id_key(id.as_bytes()),
            u128::from_str_radix(&id, 16).unwrap()
        );
        assert_eq!(id_key(b"not-hex"), xxhash_rust::xxh3::xxh3_128(b"not-hex"));
        assert_ne!(id_key(b"a"), id_key(b"b"));
    }

    #[test]
    fn later_offsets_and_later_times_supersede() {
        let at = |partition, offset, created_at| Latest {
            offset,
            created_at,
            partition,
            tombstone: false,
        };
        // Same partition: the offset decides, whatever the clocks said.
        assert!(at(0, 5, 1).supersedes(&at(0, 3, 9)));
        assert!(!at(0, 3, 9).supersedes(&at(0, 5, 1)));
        // Different partitions: the later record wins.
        assert!(at(1, 0, 9).supersedes(&at(0, 5, 1)));
        assert!(!at(1, 9, 1).supersedes(&at(0, 0, 9)));
        assert_eq!(std::mem::size_of::<Latest>(), 24);
    }
}
