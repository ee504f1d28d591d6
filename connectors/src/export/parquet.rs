//! QA pairs as parquet, in the two layouts trainers read:
//!
//! * `hf`, the Webscale-RL dataset's columns (plus `id` and `source`), for Hugging Face
//!   `datasets`:
//!   `id: string`, `pretrain_text: string?`, `question: string`, `answer: string`,
//!   `domain: string`, `persona: string`, `source: string?` (`?` = nullable; `pretrain_text` is
//!   null when the record carries no source text).
//! * `verl`, verl's RL layout (as its `examples/data_preprocess` scripts write it):
//!   `data_source: string`, `prompt: list<struct<role: string, content: string>>` (one user
//!   message: the question, a blank line and [`VerlPrompt::instruction`]), `ability: string` (the
//!   domain), `reward_model: struct<style: string, ground_truth: string>` (`"rule"`, the answer),
//!   `extra_info: struct<id: string, doc_id: string, persona: string, source: string?>`.
//!
//! Pages are zstd-compressed (the zstd library is already linked for JSONL). Rows are buffered
//! [`BATCH_ROWS`] at a time and row groups hold at most [`ROW_GROUP_ROWS`] rows, which bounds the
//! writer's memory whatever the shard size.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use anyhow::Context;
use arrow_array::{ArrayRef, ListArray, RecordBatch, StringArray, StructArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use webscale_rl_records::{PIPELINE_VERSION, QaPair};

use super::shards::ShardFile;

/// Rows buffered before they are encoded as one record batch.
pub const BATCH_ROWS: usize = 1024;
/// Buffered text that forces a batch out early: source texts can be large.
pub const BATCH_BYTES: usize = 16 << 20;
/// Most rows in one row group: small enough for streaming readers and bounded writer memory.
pub const ROW_GROUP_ROWS: usize = 8192;

/// The default verl instruction: the reward function then reads the last `Answer:` line.
pub const DEFAULT_VERL_INSTRUCTION: &str = "Reason step by step, then give your final answer \
     on the last line, in the form \"Answer: <your answer>\".";

/// The default verl `data_source`: the name to register a reward function under.
pub const DEFAULT_VERL_DATA_SOURCE: &str = "webscale-rl";

/// How QA pairs become verl rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerlPrompt {
    /// The `data_source` column: verl picks the reward function by it.
    pub data_source: String,
    /// Appended to the question after a blank line, in the single user message; empty for the
    /// question alone.
    pub instruction: String,
}

impl Default for VerlPrompt {
    fn default() -> Self {
        VerlPrompt {
            data_source: DEFAULT_VERL_DATA_SOURCE.to_string(),
            instruction: DEFAULT_VERL_INSTRUCTION.to_string(),
        }
    }
}

impl VerlPrompt {
    /// The user message for `question`.
    pub fn content(&self, question: &str) -> String {
        if self.instruction.is_empty() {
            question.to_string()
        } else {
            format!("{question}\n\n{}", self.instruction)
        }
    }
}

/// Which columns a parquet shard has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    Hf,
    Verl(VerlPrompt),
}

impl Layout {
    pub fn schema(&self) -> SchemaRef {
        match self {
            Layout::Hf => hf_schema(),
            Layout::Verl(_) => verl_schema(),
        }
    }

    /// The rows as one record batch of [`Layout::schema`].
    pub fn batch(&self, rows: &[QaPair]) -> anyhow::Result<RecordBatch> {
        match self {
            Layout::Hf => hf_batch(rows),
            Layout::Verl(prompt) => verl_batch(rows, prompt),
        }
    }
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

static HF_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("id", false),
        utf8("pretrain_text", true),
        utf8("question", false),
        utf8("answer", false),
        utf8("domain", false),
        utf8("persona", false),
        utf8("source", true),
    ]))
});

fn message_fields() -> Fields {
    Fields::from(vec![utf8("role", false), utf8("content", false)])
}

fn reward_fields() -> Fields {
    Fields::from(vec![utf8("style", false), utf8("ground_truth", false)])
}

fn extra_fields() -> Fields {
    Fields::from(vec![
        utf8("id", false),
        utf8("doc_id", false),
        utf8("persona", false),
        utf8("source", true),
    ])
}

fn prompt_item() -> Arc<Field> {
    Arc::new(Field::new_list_field(
        DataType::Struct(message_fields()),
        false,
    ))
}

static VERL_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("data_source", false),
        Field::new("prompt", DataType::List(prompt_item()), false),
        utf8("ability", false),
        Field::new_struct("reward_model", reward_fields(), false),
        Field::new_struct("extra_info", extra_fields(), false),
    ]))
});

/// The `hf` layout's schema.
pub fn hf_schema() -> SchemaRef {
    HF_SCHEMA.clone()
}

/// The `verl` layout's schema.
pub fn verl_schema() -> SchemaRef {
    VERL_SCHEMA.clone()
}

fn strings<'a>(rows: &'a [QaPair], f: impl Fn(&'a QaPair) -> &'a str) -> ArrayRef {
    Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
}

fn optional_strings<'a>(rows: &'a [QaPair], f: impl Fn(&'a QaPair) -> Option<&'a str>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<StringArray>())
}

/// `rows` in the `hf` layout.
pub fn hf_batch(rows: &[QaPair]) -> anyhow::Result<RecordBatch> {
    let columns = vec![
        strings(rows, |r| &r.id),
        optional_strings(rows, |r| r.pretrain_text.as_deref()),
        strings(rows, |r| &r.question),
        strings(rows, |r| &r.answer),
        strings(rows, |r| &r.domain),
        strings(rows, |r| &r.persona),
        optional_strings(rows, |r| r.source.as_deref()),
    ];
    RecordBatch::try_new(hf_schema(), columns).context("building an hf record batch")
}

/// `rows` in the `verl` layout.
pub fn verl_batch(rows: &[QaPair], prompt: &VerlPrompt) -> anyhow::Result<RecordBatch> {
    let n = rows.len();
    let contents: Vec<String> = rows.iter().map(|r| prompt.content(&r.question)).collect();
    let messages = StructArray::try_new(
        message_fields(),
        vec![
            Arc::new(StringArray::from(vec!["user"; n])) as ArrayRef,
            Arc::new(StringArray::from_iter_values(&contents)),
        ],
        None,
    )?;
    // One message per row.
    let prompts = ListArray::try_new(
        prompt_item(),
        OffsetBuffer::from_repeated_length(1, n),
        Arc::new(messages),
        None,
    )?;
    let rewards = StructArray::try_new(
        reward_fields(),
        vec![
            Arc::new(StringArray::from(vec!["rule"; n])) as ArrayRef,
            strings(rows, |r| &r.answer),
        ],
        None,
    )?;
    let extra = StructArray::try_new(
        extra_fields(),
        vec![
            strings(rows, |r| &r.id),
            strings(rows, |r| &r.doc_id),
            strings(rows, |r| &r.persona),
            optional_strings(rows, |r| r.source.as_deref()),
        ],
        None,
    )?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![prompt.data_source.as_str(); n])),
        Arc::new(prompts),
        strings(rows, |r| &r.domain),
        Arc::new(rewards),
        Arc::new(extra),
    ];
    RecordBatch::try_new(verl_schema(), columns).context("building a verl record batch")
}

/// One parquet shard: rows are buffered, encoded in batches, and the footer is written on finish.
pub struct ParquetShard {
    layout: Layout,
    path: PathBuf,
    writer: ArrowWriter<BufWriter<File>>,
    pending: Vec<QaPair>,
    pending_bytes: usize,
}

impl ParquetShard {
    /// Creates (truncates) the file at `path`.
    pub fn create(path: &Path, layout: Layout) -> anyhow::Result<ParquetShard> {
        let file = File::create(path)
            .with_context(|| format!("cannot create parquet file '{}'", path.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_created_by(PIPELINE_VERSION.to_string())
            .build();
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 20, file),
            layout.schema(),
            Some(props),
        )?;
        Ok(ParquetShard {
            layout,
            path: path.to_path_buf(),
            writer,
            pending: Vec::with_capacity(BATCH_ROWS),
            pending_bytes: 0,
        })
    }

    fn flush_pending(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = self.layout.batch(&self.pending)?;
        self.writer
            .write(&batch)
            .with_context(|| format!("cannot write parquet file '{}'", self.path.display()))?;
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }
}

/// Text bytes a record adds to a shard before encoding.
fn text_bytes(qa: &QaPair) -> usize {
    qa.id.len()
        + qa.doc_id.len()
        + qa.question.len()
        + qa.answer.len()
        + qa.domain.len()
        + qa.persona.len()
        + qa.source.as_ref().map_or(0, String::len)
        + qa.pretrain_text.as_ref().map_or(0, String::len)
}

impl ShardFile for ParquetShard {
    fn write(&mut self, qa: QaPair) -> anyhow::Result<()> {
        self.pending_bytes += text_bytes(&qa);
        self.pending.push(qa);
        if self.pending.len() >= BATCH_ROWS || self.pending_bytes >= BATCH_BYTES {
            self.flush_pending()?;
        }
        Ok(())
    }

    /// Written bytes, plus the writer's estimate for its open row group, plus the raw text of
    /// rows not yet encoded (an over-estimate: compression shrinks it).
    fn bytes(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size() + self.pending_bytes) as u64
    }

    fn finish(mut self: Box<Self>) -> anyhow::Result<()> {
        self.flush_pending()?;
        let ParquetShard { writer, path, .. } = *self;
        let buffered = writer
            .into_inner()
            .with_context(|| format!("cannot complete parquet file '{}'", path.display()))?;
        let file = buffered
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write parquet file '{}'", path.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot sync parquet file '{}'", path.display()))?;
        Ok(())
    }
}
