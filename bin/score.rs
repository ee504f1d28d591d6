//! `webscale-rl score FILE`: the binary RL reward. Each input line `{"response", "ground_truth"}`
//! gets one output line `{"score": 0|1, "method", "extracted", ...}`, in order. With an LLM
//! (`--llm-url`), answers the rules cannot match are asked to the model as a judge.

use std::io::{BufRead, Write};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use webscale_rl_connectors::llm::{ChatRequest, LlmClient, LlmConfig, ResponseSchema};
use webscale_rl_operators::reward::score_line;

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// JSONL of {"response", "ground_truth"} (`-` for stdin); ground_truth may be a list of aliases.
    pub file: String,
    /// LLM judge for answers that differ only in wording: an OpenAI-compatible base URL.
    #[arg(long)]
    pub llm_url: Option<String>,
    /// The judge's model name.
    #[arg(long, requires = "llm_url")]
    pub llm_model: Option<String>,
}

pub fn score(args: &ScoreArgs) -> anyhow::Result<()> {
    let judge = match &args.llm_url {
        Some(url) => Some(Judge::start(url, args.llm_model.clone())?),
        None => None,
    };
    let input: Box<dyn BufRead> = if args.file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&args.file)
            .with_context(|| format!("cannot open '{}'", args.file))?;
        Box::new(std::io::BufReader::new(f))
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in input.lines() {
        let line = line.with_context(|| format!("reading '{}'", args.file))?;
        if line.trim().is_empty() {
            continue;
        }
        let ask = |response: &str, truth: &str| {
            judge.as_ref().and_then(|j| j.equivalent(response, truth))
        };
        let scored = match &judge {
            Some(_) => score_line(&line, Some(&ask)),
            None => score_line(&line, None),
        };
        serde_json::to_writer(&mut out, &scored)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// The LLM judge: one blocking call per undecided answer.
struct Judge {
    runtime: tokio::runtime::Runtime,
    client: LlmClient,
}

impl Judge {
    fn start(url: &str, model: Option<String>) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let cfg = LlmConfig {
            endpoints: vec![url.to_string()],
            model,
            ..Default::default()
        };
        let client =
            LlmClient::new(cfg, runtime.handle().clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Judge { runtime, client })
    }

    fn equivalent(&self, response: &str, truth: &str) -> Option<bool> {
        let prompt = format!(
            "Do these two short answers to the same question mean the same thing? Ignore wording, \
             formatting and units written differently; different values or entities are not the same.\n\
             Answer A: {response}\nAnswer B: {truth}\n\
             Reply with one JSON object: {{\"same\": true or false}}"
        );
        let schema = json!({"type": "object", "properties": {"same": {"type": "boolean"}}, "required": ["same"]});
        let req = ChatRequest::new("")
            .user(prompt)
            .temperature(0.0)
            .max_tokens(32)
            .schema(ResponseSchema::new("judgement", schema));
        match self
            .runtime
            .block_on(self.client.chat_json("score_judge", req))
        {
            Ok(r) => r.value.get("same").and_then(|v| v.as_bool()),
            Err(e) => {
                tracing::warn!(error = %e, "LLM judge failed; scoring 0");
                None
            }
        }
    }
}
