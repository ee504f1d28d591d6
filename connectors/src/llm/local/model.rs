//! The local model: a llama-architecture GGUF chat model (SmolLM2) run on the
//! CPU by candle's `quantized_llama`, and its generation loop.
//!
//! One [`LocalModel`] holds one KV cache, so it serves one generation at a
//! time; the cache is cleared at the start of each. The prompt goes through
//! the model in chunks (bounding the attention matrices), then one token per
//! step until a control token (`<|im_end|>`, …), a stop string, the token
//! budget or cancellation. Prompt and generation times are measured apart:
//! they differ by an order of magnitude on a CPU.
//!
//! A generation may be constrained ([`Constraint`]): at every step the
//! grammar's mask sets the logits of disallowed tokens to −∞ before
//! sampling, the sampled token advances the grammar, and generation ends as
//! soon as the object is complete (no end-of-turn token to wait for). The
//! last tokens of the budget ([`Constraint::closing_reserve`], at most half
//! of it) close the object. The time
//! spent on masks is measured apart too ([`Generation::mask_time`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::LogitsProcessor;
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};

use super::constrain::{Constraint, Grammars};
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
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A control token (end of turn), a stop string, or a constrained
    /// answer's object complete.
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
    /// Time to generate the completion tokens (masks included).
    pub generation_time: Duration,
    /// Part of `generation_time` spent computing grammar masks and
    /// advancing the grammar (zero when unconstrained).
    pub mask_time: Duration,
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
    grammars: Grammars,
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
        let grammars = Grammars::new(&tokenizer)
            .context("cannot build the grammar vocabulary of the tokenizer")?;
        let device = Device::Cpu;
        let weights = if has_slow_blocks(&content) {
            let (content, mut data) = requantize(content, &mut file, &device)
                .with_context(|| format!("cannot convert the weights of {}", path.display()))?;
            ModelWeights::from_gguf(content, &mut data, &device)
        } else {
            ModelWeights::from_gguf(content, &mut file, &device)
        }
        .with_context(|| format!("cannot load the weights of {}", path.display()))?;
        Ok(LocalModel {
            weights,
            tokenizer,
            grammars,
            device,
            // candle's rotary tables stop at MAX_SEQ_LEN.
            context_length: trained.min(MAX_SEQ_LEN),
        })
    }

    pub fn tokenizer(&self) -> &ChatTokenizer {
        &self.tokenizer
    }

    /// The constraint for a request's `response_format` (see
    /// [`Grammars::constraint`]).
    pub fn constraint(
        &self,
        response_format: &serde_json::Value,
    ) -> anyhow::Result<Option<Constraint>> {
        self.grammars.constraint(response_format)
    }

    /// Most tokens, prompt and completion together.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Generates a completion of `prompt` (token ids, e.g. from
    /// [`ChatTokenizer::chat_prompt`]), under `constraint` when given.
    /// Setting `cancel` stops it early with [`FinishReason::Cancelled`]. The
    /// token budget shrinks to what the context leaves; a prompt that fills
    /// the context is an error.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        mut constraint: Option<Constraint>,
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
        let reserve = constraint
            .as_ref()
            .map_or(0, |c| c.closing_reserve().min(max_tokens / 2));
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
        let mut mask_time = Duration::ZERO;
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
            let next = match constraint.as_mut() {
                None => sampler.sample(&logits)?,
                Some(c) => {
                    let t = Instant::now();
                    let closing = max_tokens - generated.len() <= reserve;
                    let Some(mask) = c.mask(closing)? else {
                        mask_time += t.elapsed();
                        break FinishReason::Stop;
                    };
                    let mut masked = logits.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                    for (id, l) in masked.iter_mut().enumerate() {
                        if id >= mask.len() || !mask.is_allowed(id as u32) {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                    mask_time += t.elapsed();
                    sampler.sample(&Tensor::new(masked, &self.device)?)?
                }
            };
            generated.push(next);
            if self.tokenizer.is_control(next) {
                break FinishReason::Stop;
            }
            let complete = match constraint.as_mut() {
                None => false,
                Some(c) => {
                    let t = Instant::now();
                    c.consume(next)?;
                    let complete = c.is_complete();
                    mask_time += t.elapsed();
                    complete
                }
            };
            // Decoding the whole completion each step keeps multi-byte
            // characters split over tokens intact; it is short.
            text = self.tokenizer.decode(&generated)?;
            if let Some(cut) = first_stop(&text, &params.stop) {
                text.truncate(cut);
                break FinishReason::Stop;
            }
            if complete {
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
            mask_time,
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
            mask_time: Duration::ZERO,
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

/// Quantizations candle multiplies without SIMD on x86 (its Q4_1 and Q5 dot products are scalar
/// code): several times slower than Q8_0, which has AVX2 and AVX512-VNNI kernels.
const SLOW_BLOCKS: [GgmlDType; 3] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

fn has_slow_blocks(content: &Content) -> bool {
    content
        .tensor_infos
        .values()
        .any(|t| SLOW_BLOCKS.contains(&t.ggml_dtype))
}

/// The model with its [`SLOW_BLOCKS`] tensors converted to Q8_0, as an in-memory GGUF file: the
/// default model (Q4_1) then generates several times faster on a CPU (BENCHMARKS.md), for about
/// 50 MB more memory and a second at load. Q8_0 holds Q4_1's values almost exactly (8 bits per
/// weight for 4), so the answers barely change.
fn requantize(
    content: Content,
    file: &mut std::fs::File,
    device: &Device,
) -> anyhow::Result<(Content, std::io::Cursor<Vec<u8>>)> {
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(content.tensor_infos.len());
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let t = content.tensor(file, name, device)?;
        let t = if SLOW_BLOCKS.contains(&t.dtype()) {
            QTensor::quantize(&t.dequantize(device)?, GgmlDType::Q8_0)?
        } else {
            t
        };
        tensors.push((name.clone(), t));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut data = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut data, &metadata, &tensor_refs)?;
    drop(tensors);
    data.set_position(0);
    let converted = Content::read(&mut data)?;
    Ok((converted, data))
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
    fn rates_per_second() {
        assert_eq!(per_sec(10, Duration::from_secs(2)), 5.0);
        assert_eq!(per_sec(10, Duration::ZERO), 0.0);
    }
}
