//! `webscale-rl export`: QA records from the output topic (or a JSONL file) to training-ready
//! shards: `jsonl`, `hf` (the Webscale-RL dataset columns) or `verl` (verl's RL parquet layout).

use std::path::PathBuf;

use clap::Args;
use webscale_rl_connectors::export::{ExportFormat, ExportOptions, export_file, export_topic};
use webscale_rl_connectors::kafka::KafkaConfig;

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(
        long,
        env = "WEBSCALE_BROKERS",
        hide_env_values = true,
        conflicts_with = "input"
    )]
    pub brokers: Option<String>,
    /// Topic to export (default: webscale.qa).
    #[arg(long, default_value = "webscale.qa")]
    pub topic: String,
    /// Export a JSONL file of QA records instead of a topic.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// jsonl | hf | verl
    #[arg(long)]
    pub format: ExportFormat,
    /// Output directory; shards appear there atomically as PREFIX-00000.EXT, ...
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "part")]
    pub prefix: String,
    /// Records per shard.
    #[arg(long, default_value_t = 100_000)]
    pub max_records: u64,
    /// Approximate bytes per shard.
    #[arg(long, default_value_t = 256 << 20)]
    pub max_bytes: u64,
    /// Keep every copy of a QA id (single pass; needed for stdin).
    #[arg(long)]
    pub no_dedup: bool,
    /// Drop the source text (`pretrain_text`) even when the records carry it.
    #[arg(long)]
    pub no_pretrain_text: bool,
    /// Replace shards of an earlier export with the same prefix.
    #[arg(long)]
    pub overwrite: bool,
    /// verl: the `data_source` column.
    #[arg(long)]
    pub verl_data_source: Option<String>,
    /// verl: the instruction after the question ("" for the bare question).
    #[arg(long)]
    pub verl_instruction: Option<String>,
}

pub fn export(args: &ExportArgs, quiet: bool, json_summary: bool) -> anyhow::Result<()> {
    let mut opts = ExportOptions {
        prefix: args.prefix.clone(),
        max_records: args.max_records,
        max_bytes: args.max_bytes,
        dedup: !args.no_dedup,
        include_pretrain_text: !args.no_pretrain_text,
        overwrite: args.overwrite,
        ..Default::default()
    };
    if let Some(s) = &args.verl_data_source {
        opts.verl.data_source = s.clone();
    }
    if let Some(s) = &args.verl_instruction {
        opts.verl.instruction = s.clone();
    }
    let report = match (&args.input, &args.brokers) {
        (Some(input), _) => export_file(input, args.format, &args.out, &opts)?,
        (None, Some(brokers)) => {
            let cfg = KafkaConfig {
                brokers: brokers.clone(),
                ..Default::default()
            };
            export_topic(&cfg, &args.topic, args.format, &args.out, &opts)?
        }
        (None, None) => anyhow::bail!("give --brokers B (with --topic) or --input FILE"),
    };
    if report.read > 0 && report.written == 0 && report.invalid == report.read {
        anyhow::bail!(
            "none of the {} records read is a QA record: `export` takes the QA pairs a run with \
             the LLM stages writes (a --no-llm run writes documents); nothing was exported",
            report.read
        );
    }
    if json_summary {
        println!(
            "{}",
            serde_json::json!({
                "format": args.format.to_string(),
                "out": args.out.display().to_string(),
                "read": report.read,
                "written": report.written,
                "duplicates": report.duplicates,
                "invalid": report.invalid,
                "missing": report.missing,
                "shards": report.shards.len(),
            })
        );
    }
    if !quiet {
        eprintln!(
            "exported {} QA records as {} into {} shard(s) in '{}' ({} read, {} duplicates dropped, {} invalid skipped)",
            report.written,
            args.format,
            report.shards.len(),
            args.out.display(),
            report.read,
            report.duplicates,
            report.invalid
        );
    }
    Ok(())
}
