//! The local model: a llama-architecture GGUF chat model (SmolLM2) run on the
//! CPU by candle's `quantized_llama`, and its generation loop.
//!
//! One [`LocalModel`] holds one KV cache, so it serves one generation at a
//! time; the cache is cleared at the start of each. The prompt goes through
//! the model in chunks (bounding the attention matrices), then one token per
//! step until a control token (`<|im_end|>`, …), a stop string, the token
//! budget or cancellation. Prompt and generation times are measured apart:
//! they differ by an order of magnitude on a CPU.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};

use super::tokenizer::ChatTokenizer;

/// Prompt tokens per forward pass: attention scores are chunk × context
/// floats per head and layer.
const PROMPT_CHUNK: usize = 256;

/// Sampling parameters of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// 0 (or below 1e-7): greedy; otherwise the softmax temperature.
    pub temperature: f64,
    /// Nucleus sampling mass; `None` or ≥ 1: the whole distribution.
    pub top_p: Option<f64>,
    /// Seed of the sampling RNG.
    pub seed: u64,
    /// Generation stops before the first of these strings.
    pub stop: Vec<String>,
    /// Divides (or, for negative logits, multiplies) the logits of tokens
    /// already generated; 1 = off.
    pub repeat_penalty: f32,
    /// When the answer is a JSON object that starts with this prefix (the
    /// prefill, already in the prompt): stop as soon as the object closes,
    /// rather than spend tokens on what the small model rambles after it.
    pub json_prefix: Option<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            temperature: 0.0,
            top_p: None,
            seed: 0,
            stop: Vec::new(),
            repeat_penalty: 1.0,
            json_prefix: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A control token (end of turn) or a stop string.
    Stop,
    /// The token budget ran out.
    Length,
    /// [`LocalModel::generate`]'s cancel flag was set.
    Cancelled,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated text (stop string and control tokens excluded).
    pub text: String,
    pub prompt_tokens: usize,
    /// Tokens generated, the final control token included (the model
    /// computed it).
    pub completion_tokens: usize,
    pub finish: FinishReason,
    /// Time to run the prompt through the model.
    pub prompt_time: Duration,
    /// Time to generate the completion tokens.
    pub generation_time: Duration,
}

impl Generation {
    /// Prompt tokens per second.
    pub fn prompt_tokens_per_sec(&self) -> f64 {
        per_sec(self.prompt_tokens, self.prompt_time)
    }
    /// Generated tokens per second.
    pub fn generation_tokens_per_sec(&self) -> f64 {
        per_sec(self.completion_tokens, self.generation_time)
    }
}

fn per_sec(n: usize, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// A GGUF chat model loaded on the CPU, with its tokenizer.
pub struct LocalModel {
    weights: ModelWeights,
    tokenizer: ChatTokenizer,
    device: Device,
    context_length: usize,
}

impl std::fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModel")
            .field("tokenizer", &self.tokenizer)
            .field("context_length", &self.context_length)
            .finish_non_exhaustive()
    }
}

impl LocalModel {
    /// Loads the GGUF file at `path` (weights and tokenizer), blocking.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("cannot open model file {}", path.display()))?;
        let content = Content::read(&mut file)
            .with_context(|| format!("{} is not a GGUF file", path.display()))?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "llama" {
            anyhow::bail!(
                "{}: model architecture `{arch}` is not supported (llama-architecture GGUF models only, e.g. SmolLM2)",
                path.display()
            );
        }
        let trained = content
            .metadata
            .get(&format!("{arch}.context_length"))
            .and_then(|v| v.to_u32().ok())
            .map_or(MAX_SEQ_LEN, |n| n as usize);
        let tokenizer = ChatTokenizer::from_gguf(&content)?;
        let device = Device::Cpu;
        let weights = ModelWeights::from_gguf(content, &mut file, &device)
            .with_context(|| format!("cannot load the weights of {}", path.display()))?;
        Ok(LocalModel {
            weights,
            tokenizer,
            device,
            // candle's rotary tables stop at MAX_SEQ_LEN.
            context_length: trained.min(MAX_SEQ_LEN),
        })
    }

    pub fn tokenizer(&self) -> &ChatTokenizer {
        &self.tokenizer
    }

    /// Most tokens, prompt and completion together.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Generates a completion of `prompt` (token ids, e.g. from
    /// [`ChatTokenizer::chat_prompt`]). Setting `cancel` stops it early with
    /// [`FinishReason::Cancelled`]. The token budget shrinks to what the
    /// context leaves; a prompt that fills the context is an error.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        cancel: &AtomicBool,
    ) -> anyhow::Result<Generation> {
        anyhow::ensure!(!prompt.is_empty(), "empty prompt");
        anyhow::ensure!(
            prompt.len() < self.context_length,
            "the prompt has {} tokens; this model's context is {} tokens",
            prompt.len(),
            self.context_length
        );
        let max_tokens = params.max_tokens.min(self.context_length - prompt.len());
        self.weights.clear_kv_cache();
        let mut sampler = LogitsProcessor::new(params.seed, Some(params.temperature), params.top_p);

        let start = Instant::now();
        let mut logits = None;
        for (i, chunk) in prompt.chunks(PROMPT_CHUNK).enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Ok(self.cancelled(prompt.len(), start.elapsed()));
            }
            let input = Tensor::new(chunk, &self.device)?.unsqueeze(0)?;
            logits = Some(self.weights.forward(&input, i * PROMPT_CHUNK)?);
        }
        let prompt_time = start.elapsed();
        let mut logits = logits.context("empty prompt")?.squeeze(0)?;

        let start = Instant::now();
        let mut generated: Vec<u32> = Vec::new();
        let mut text = String::new();
        let finish = loop {
            if generated.len() >= max_tokens {
                break FinishReason::Length;
            }
            if cancel.load(Ordering::Relaxed) {
                break FinishReason::Cancelled;
            }
            if params.repeat_penalty != 1.0 && !generated.is_empty() {
                logits = candle_transformers::utils::apply_repeat_penalty(
                    &logits,
                    params.repeat_penalty,
                    &generated,
                )?;
            }
            let next = sampler.sample(&logits)?;
            generated.push(next);
            if self.tokenizer.is_control(next) {
                break FinishReason::Stop;
            }
            // Decoding the whole completion each step keeps multi-byte
            // characters split over tokens intact; it is short.
            text = self.tokenizer.decode(&generated)?;
            if let Some(cut) = first_stop(&text, &params.stop) {
                text.truncate(cut);
                break FinishReason::Stop;
            }
            if let Some(prefix) = &params.json_prefix
                && let Some(end) = json_object_end(prefix, &text)
            {
                text.truncate(end);
                break FinishReason::Stop;
            }
            if generated.len() >= max_tokens {
                break FinishReason::Length;
            }
            let input = Tensor::new(&[next], &self.device)?.unsqueeze(0)?;
            logits = self
                .weights
                .forward(&input, prompt.len() + generated.len() - 1)?
                .squeeze(0)?;
        };
        Ok(Generation {
            text,
            prompt_tokens: prompt.len(),
            completion_tokens: generated.len(),
            finish,
            prompt_time,
            generation_time: start.elapsed(),
        })
    }

    fn cancelled(&self, prompt_tokens: usize, prompt_time: Duration) -> Generation {
        Generation {
            text: String::new(),
            prompt_tokens,
            completion_tokens: 0,
            finish: FinishReason::Cancelled,
            prompt_time,
            generation_time: Duration::ZERO,
        }
    }
}

/// Byte offset of the earliest stop string in `text`.
fn first_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// Byte offset in `text` just after the closing brace of the JSON object
/// that `prefix` + `text` starts with, once it is closed (strings and
/// escapes skipped).
fn json_object_end(prefix: &str, text: &str) -> Option<usize> {
    let mut json = crate::llm::parse::JsonDepth::default();
    let mut opened = false;
    for (i, c) in prefix
        .char_indices()
        .chain(text.char_indices().map(|(i, c)| (prefix.len() + i, c)))
    {
        match json.step(c) {
            Some('{' | '[') => opened = true,
            Some('}' | ']') if opened && json.depth == 0 => {
                return (i >= prefix.len()).then(|| i + 1 - prefix.len());
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_stop_string_wins() {
        let stop = vec!["END".to_owned(), "\n\n".to_owned(), String::new()];
        assert_eq!(first_stop("abc\n\nxEND", &stop), Some(3));
        assert_eq!(first_stop("abcEND\n\n", &stop), Some(3));
        assert_eq!(first_stop("abc", &stop), None);
        assert_eq!(first_stop("abc", &[]), None);
    }

    #[test]
    fn json_object_closes() {
        let pre = "{\"reason\": \"";
        assert_eq!(
            json_object_end(pre, "a}b\", \"q\": [1, {\"x\": 2}]} trailing"),
            Some(25)
        );
        assert_eq!(json_object_end(pre, "esc \\\" } still\"} x"), Some(16));
        assert_eq!(json_object_end(pre, "open\", \"q\": {"), None);
        assert_eq!(json_object_end("{", "}"), Some(1));
        assert_eq!(json_object_end("", "no json"), None);
    }

    #[test]
    fn rates_per_second() {
        assert_eq!(per_sec(10, Duration::from_secs(2)), 5.0);
        assert_eq!(per_sec(10, Duration::ZERO), 0.0);
    }
}
