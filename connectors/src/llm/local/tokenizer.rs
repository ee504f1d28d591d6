//! The local model's tokenizer, rebuilt from the GGUF metadata (no
//! `tokenizer.json`, no model hub), and its ChatML prompt format.
//!
//! A GGUF of a byte-level BPE model (`tokenizer.ggml.model = "gpt2"`) carries
//! the vocabulary, the merges, each token's type and the name of the
//! pre-tokenizer (`tokenizer.ggml.pre`). The pre-tokenizer is rebuilt the way
//! llama.cpp applies it (for SmolLM2's `smollm`: every digit alone, then the
//! GPT-2 regex), so the ids are llama.cpp's.
//!
//! Control tokens (`<|im_start|>`, `<|im_end|>`, …) are never produced from
//! text: [`ChatTokenizer::chat_prompt`] inserts their ids between the encoded
//! texts, so a document that contains `<|im_end|>` cannot close its turn.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use crate::llm::ChatMessage;

/// System prompt SmolLM2's chat template inserts when the conversation has
/// none.
pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// Llama-3's pre-tokenizer regex (llama.cpp `llama-bpe`): digits in groups
/// of up to three.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Byte-level BPE tokenizer of a GGUF chat model, with its control tokens.
pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    /// Ids of control tokens: generation stops at any of them, decoding
    /// drops them.
    control: HashSet<u32>,
    im_start: u32,
    im_end: u32,
    default_system: Option<String>,
}

impl std::fmt::Debug for ChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("im_start", &self.im_start)
            .field("im_end", &self.im_end)
            .finish_non_exhaustive()
    }
}

impl ChatTokenizer {
    /// Reads only the metadata of the GGUF file at `path` (not the weights).
    pub fn from_gguf_file(path: &Path) -> anyhow::Result<Self> {
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("cannot open model file {}", path.display()))?;
        let content = Content::read(&mut file)
            .with_context(|| format!("{} is not a GGUF file", path.display()))?;
        Self::from_gguf(&content)
    }

    /// Builds the tokenizer from the metadata of a GGUF file.
    pub fn from_gguf(ct: &Content) -> anyhow::Result<Self> {
        let kind = meta_str(ct, "tokenizer.ggml.model")?;
        if kind != "gpt2" {
            bail!(
                "unsupported tokenizer `{kind}` in the GGUF file: only byte-level BPE (`gpt2`) models are supported"
            );
        }
        let tokens = meta_strings(ct, "tokenizer.ggml.tokens")?;
        let merges = meta_strings(ct, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .with_context(|| format!("invalid merge `{m}` in the GGUF file"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the BPE model: {e}"))?;

        let pre = ct
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .map_or("gpt2", String::as_str);
        // ByteLevel(add_prefix_space, trim_offsets, use_regex): llama.cpp adds
        // no prefix space to byte-level BPE models.
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "smollm" => Sequence::new(vec![
                isolate(r"\p{N}")?,
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            "gpt2" | "default" => ByteLevel::new(false, true, true).into(),
            "llama-bpe" | "llama3" | "smaug-bpe" => Sequence::new(vec![
                isolate(LLAMA3_REGEX)?,
                ByteLevel::new(false, true, false).into(),
            ])
            .into(),
            other => bail!("unsupported pre-tokenizer `{other}` in the GGUF file"),
        };
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

        // llama.cpp's token types: 3 = control, 5 = unused; neither is text.
        let mut control = HashSet::new();
        if let Ok(types) = ct
            .metadata
            .get("tokenizer.ggml.token_type")
            .context("no token types")
            .and_then(|v| v.to_vec().map_err(anyhow::Error::from))
        {
            for (id, t) in types.iter().enumerate() {
                if matches!(t.to_i32(), Ok(3 | 5)) {
                    control.insert(id as u32);
                }
            }
        }
        let find = |text: &str| tokens.iter().position(|t| t == text).map(|i| i as u32);
        let im_start = find("<|im_start|>").context(
            "the GGUF vocabulary has no `<|im_start|>`: only ChatML chat models are supported",
        )?;
        let im_end =
            find("<|im_end|>").context("the GGUF vocabulary has no `<|im_end|>` (ChatML)")?;
        if let Ok(eos) = ct
            .metadata
            .get("tokenizer.ggml.eos_token_id")
            .context("no eos")
            .and_then(|v| v.to_u32().map_err(anyhow::Error::from))
        {
            control.insert(eos);
        }
        control.extend([im_start, im_end]);

        let template = ct
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .map_or("", String::as_str);
        // SmolLM2's template adds its own system prompt when the conversation
        // has none; other ChatML templates do not.
        let default_system = template
            .contains(DEFAULT_SYSTEM_PROMPT)
            .then(|| DEFAULT_SYSTEM_PROMPT.to_owned());

        Ok(ChatTokenizer {
            tokenizer,
            control,
            im_start,
            im_end,
            default_system,
        })
    }

    /// Token ids of plain `text` (control tokens are not recognised in it).
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, control tokens dropped.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        let text_ids: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|id| !self.control.contains(id))
            .collect();
        self.tokenizer
            .decode(&text_ids, false)
            .map_err(|e| anyhow::anyhow!("cannot decode tokens: {e}"))
    }

    /// Token id of `token` (e.g. `<|im_end|>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Whether `id` is a control token (end of turn, start of turn, …).
    pub fn is_control(&self, id: u32) -> bool {
        self.control.contains(&id)
    }

    /// Whether generation ends at `id`: a control token other than the start
    /// of a turn.
    pub fn is_stop_token(&self, id: u32) -> bool {
        id != self.im_start && self.control.contains(&id)
    }

    /// The underlying BPE tokenizer (for the grammar's token trie).
    pub(crate) fn hf_tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Id of `<|im_end|>`, the end of a turn.
    pub fn im_end(&self) -> u32 {
        self.im_end
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The ChatML prompt for `messages`, ending with an open assistant turn
    /// that starts with `prefill`, as the GGUF's chat template renders it:
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message (after the
    /// template's default system prompt when the first message is not a
    /// system one), then `<|im_start|>assistant\n{prefill}`.
    pub fn chat_prompt(&self, messages: &[ChatMessage], prefill: &str) -> anyhow::Result<Vec<u32>> {
        let mut ids = Vec::new();
        let turn = |role: &str, content: &str, ids: &mut Vec<u32>| -> anyhow::Result<()> {
            ids.push(self.im_start);
            ids.extend(self.encode(&format!("{role}\n{content}"))?);
            ids.push(self.im_end);
            ids.extend(self.encode("\n")?);
            Ok(())
        };
        if let Some(system) = &self.default_system
            && messages.first().is_none_or(|m| m.role != "system")
        {
            turn("system", system, &mut ids)?;
        }
        for m in messages {
            turn(&m.role, &m.content, &mut ids)?;
        }
        ids.push(self.im_start);
        ids.extend(self.encode(&format!("assistant\n{prefill}"))?);
        Ok(ids)
    }
}

/// A pre-tokenizer step that splits off every match of `regex`.
fn isolate(regex: &str) -> anyhow::Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(regex.to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| anyhow::anyhow!("invalid pre-tokenizer regex: {e}"))?;
    Ok(split.into())
}

fn meta<'a>(ct: &'a Content, key: &str) -> anyhow::Result<&'a Value> {
    ct.metadata
        .get(key)
        .with_context(|| format!("the GGUF file has no `{key}`"))
}

fn meta_str<'a>(ct: &'a Content, key: &str) -> anyhow::Result<&'a str> {
    Ok(meta(ct, key)?
        .to_string()
        .with_context(|| format!("`{key}` is not a string"))?)
}

fn meta_strings(ct: &Content, key: &str) -> anyhow::Result<Vec<String>> {
    meta(ct, key)?
        .to_vec()
        .with_context(|| format!("`{key}` is not an array"))?
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .with_context(|| format!("`{key}` holds a non-string"))
        })
        .collect()
}
