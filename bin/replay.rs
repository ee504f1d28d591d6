//! `webscale-rl replay`: dead letters back into the pipeline. Reads a dead-letter topic (to the
//! end offsets it has when the replay starts) or a rejects file, keeps the records matching
//! `--stage` / `--reason` / `--since`, and writes each chosen document's original message once:
//! to a topic (key = the document id, so the run's record ids stay stable) or to a JSONL file
//! for a file-mode rerun.

use std::sync::mpsc;

use anyhow::{Context, bail};
use clap::Args;
use webscale_rl_connectors::file::{JsonlInput, JsonlOutput};
use webscale_rl_connectors::kafka::{KafkaConfig, tools};
use webscale_rl_operators::replay::{Replay, ReplayFilter, ReplayStats};

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Kafka brokers (Kafka mode).
    #[arg(
        long,
        env = "WEBSCALE_BROKERS",
        hide_env_values = true,
        requires = "to_topic"
    )]
    pub brokers: Option<String>,
    /// The dead-letter topic to read.
    #[arg(long, default_value = "webscale.dead-letter")]
    pub dead_letter_topic: String,
    /// The topic to write the documents to (usually the engine's input topic).
    #[arg(long)]
    pub to_topic: Option<String>,
    /// File mode: a rejects file (JSONL, `.gz`/`.zst` too) to read...
    #[arg(long, conflicts_with = "brokers", requires = "output")]
    pub input: Option<String>,
    /// ...and the JSONL file to write the documents to (`-` for stdout).
    #[arg(long, conflicts_with = "brokers")]
    pub output: Option<String>,
    /// Only dead letters of this stage (e.g. `llm_filter`, `verify`).
    #[arg(long)]
    pub stage: Option<String>,
    /// Only dead letters with this reason (e.g. `not_qualified`, `no_verified_pair`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only dead letters created at or after this time: RFC 3339 (`2026-11-30T12:00:00Z`) or
    /// milliseconds since the Unix epoch.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<u64>,
}

fn parse_since(s: &str) -> Result<u64, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis().max(0) as u64)
        .map_err(|e| format!("'{s}' is neither RFC 3339 (2026-11-30T12:00:00Z) nor epoch ms: {e}"))
}

pub fn replay(args: &ReplayArgs, quiet: bool) -> anyhow::Result<()> {
    let mut replay = Replay::new(ReplayFilter {
        stage: args.stage.clone(),
        reason: args.reason.clone(),
        since_ms: args.since,
    });
    let (from, to) = match (&args.brokers, &args.input) {
        (Some(brokers), None) => {
            let topic = args.to_topic.as_deref().context("--to-topic is required")?;
            let cfg = KafkaConfig {
                brokers: brokers.clone(),
                ..Default::default()
            };
            from_topic(&cfg, &args.dead_letter_topic, topic, &mut replay)?;
            (
                format!("topic '{}'", args.dead_letter_topic),
                format!("topic '{topic}'"),
            )
        }
        (None, Some(input)) => {
            let output = args.output.as_deref().context("--output is required")?;
            from_file(input, output, &mut replay)?;
            (format!("'{input}'"), format!("'{output}'"))
        }
        _ => bail!(
            "give --brokers B --to-topic T (reads --dead-letter-topic), or --input REJECTS.jsonl \
             --output DOCS.jsonl"
        ),
    };
    let s = replay.stats();
    if !quiet {
        eprintln!("{}", report(s, &from, &to));
    }
    if s.matched > 0 && s.replayed == 0 {
        bail!(
            "none of the {} matching dead letters carries its original message (rejected pairs \
             carry it on their document's no_verified_pair; messages over 768 KiB and non-UTF-8 \
             ones are not kept)",
            s.matched
        );
    }
    Ok(())
}

fn report(s: &ReplayStats, from: &str, to: &str) -> String {
    format!(
        "replayed {} documents from {from} to {to} ({} dead letters read, {} matched, {} of the \
         same documents, {} without the original message, {} unreadable)",
        s.replayed, s.read, s.matched, s.duplicates, s.without_payload, s.unreadable
    )
}

/// Reads the topic to its current end on this thread and produces on a second one, through a
/// bounded channel: a dead-letter topic of any size replays with no record held, in 16 bytes (a
/// key hash) per replayed document.
fn from_topic(
    cfg: &KafkaConfig,
    dead_letter_topic: &str,
    to_topic: &str,
    replay: &mut Replay,
) -> anyhow::Result<()> {
    let ends = tools::end_offsets(cfg, dead_letter_topic)?;
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(1024);
    let producer = {
        let (cfg, to_topic) = (cfg.clone(), to_topic.to_string());
        std::thread::spawn(move || tools::produce_lines(&cfg, &to_topic, rx))
    };
    let read = tools::read_topic_to(cfg, dead_letter_topic, &ends, &mut |m| {
        if let Some((_, message)) = replay.offer(m.payload.unwrap_or_default()) {
            // produce_lines keys each message by its "id" field: the document id.
            tx.send(message.into_bytes())
                .context("the producer stopped")?;
        }
        Ok(())
    });
    drop(tx);
    let produced = producer.join().expect("the producer thread")?;
    read?;
    debug_assert_eq!(produced, replay.stats().replayed);
    Ok(())
}

fn from_file(input: &str, output: &str, replay: &mut Replay) -> anyhow::Result<()> {
    let mut reader = JsonlInput::open(input)?;
    let mut out = JsonlOutput::create(output)?;
    let mut buf = Vec::new();
    while reader.next_line(&mut buf)?.is_some() {
        if let Some((_, message)) = replay.offer(&buf) {
            // One line per document, whatever the original's layout.
            let line = serde_json::from_str::<serde_json::Value>(&message)
                .map_or_else(|_| message.replace(['\n', '\r'], " "), |v| v.to_string());
            out.write_record(line.as_bytes())?;
        }
    }
    out.finish()?;
    Ok(())
}
