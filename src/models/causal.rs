//! Decoder-only ("causal") language models in GGUF files, used for
//! translation and abstractive summaries: Qwen2/2.5, Qwen3, the Llama family
//! (Llama 2/3, SmolLM2) and Gemma 3.
//!
//! The family comes from the file's `general.architecture`. Qwen2, Qwen3 and
//! dense Llama files run through [`decoder`], Gemma 3 through [`gemma3`]:
//! small implementations of our own over the GGUF tensors, sharing
//! [`layers`]. Llama mixtures of experts run through candle-transformers'
//! quantized implementation. Ours exist because candle 0.11.1's
//! `quantized_qwen2::ModelWeights` is not `Clone` (cloning the model per
//! worker, weights shared and KV cache per clone, is how the pipeline
//! parallelises); its `quantized_qwen3` preallocates a 4096-position KV
//! buffer that every clone copies (about 1 GB for Qwen3-0.6B once used)
//! and cannot start from a cached prompt prefix or decode batches of
//! rows; its `quantized_gemma3` computes a SiLU MLP where Gemma 3
//! has GELU (its logits for a plain prompt are off by about 7; see
//! `scripts/gemma3_reference_logits.py`) and allocates 2.3 GB of rotary
//! tables for the 270M model; its `quantized_llama` stops at 4096 positions;
//! and none of them can take re-quantized weights (below). Tests check our
//! decoder against candle's Qwen2, Qwen3 and Llama and our Gemma 3 against a NumPy
//! forward pass over the dequantized file.
//!
//! **Re-quantization.** On x86 CPUs candle has no vectorised dot products
//! for Q4_1, Q5_0 and Q5_1, and those types make up most of the packaged
//! SmolLM2 (Q4_1), Qwen2.5 and Gemma 3 (Q5_0) files. Our implementations
//! re-quantize such tensors to Q8_0 at load time ([`LoadOptions`]): more
//! memory (8.5 instead of 5-6 bits per weight), about 1.3x faster decoding
//! (SmolLM2 Q4_1 26 -> 35 tokens/s, Qwen2.5-0.5B 9 -> 12 on one core here),
//! and next-token distributions within a KL divergence of about 0.01 nats of
//! the file's (for scale: prefilling a prompt in two chunks instead of one
//! moves them by 0.001-0.004). `requantize: false` keeps the file's numbers.
//!
//! One call to [`CausalModel::generate`] handles one input text:
//!
//! - **Prompt.** The family's chat template, written out by hand from the
//!   published templates: ChatML (`<|im_start|>`) for Qwen and for Llama-arch
//!   files whose vocabulary has `<|im_start|>` (SmolLM2), Llama 3 headers when
//!   it has `<|start_header_id|>`, Llama 2 `[INST]` otherwise, and Gemma's
//!   `<start_of_turn>` turns (Gemma has no system role: the system line opens
//!   the user turn). Qwen3 gets the no-think form (an empty `<think>` block
//!   already in the prompt). The instruction is plain: "Translate the
//!   following {from} text into {to}. Reply with the translation only." or
//!   "Summarize the following news article in at most N words. ...".
//! - **Budget.** `min(max_new_tokens, ceil(max_length_ratio * source) + 16)`
//!   new tokens, and for summaries also `ceil(2.5 * max_words) + 16`.
//! - **Context.** An input too long for the context is cut at a token boundary
//!   so that template, input and budget fit (its head is kept: news put the
//!   essentials first). The pipeline translates sentence by sentence, so this
//!   only bites summaries of very long articles.
//! - **Decoding.** Greedy. It ends at the metadata's EOS or any of the
//!   family's end-of-turn tokens (`<|im_end|>`, `<|endoftext|>`,
//!   `<end_of_turn>`, `<|eot_id|>`, or the start of a new turn), at the budget,
//!   when the [`RepetitionGuard`] sees a loop (the repeated copies are
//!   dropped), and — for translations of a single paragraph only — at the
//!   first blank line after some text: a one-paragraph source has a
//!   one-paragraph translation, and what small models write after a blank
//!   line is commentary ("Note: ..."). A first paragraph ending in `:` ("Here
//!   is the translation:") does not count.
//! - **Cleaning.** Think blocks, a leading label ("Translation:", "Spanish:",
//!   "Here is the summary:") and quotes wrapped around the whole output (when
//!   the input was not quoted) are removed.
//!
//! **Prefix reuse.** For a given task (language pair) every prompt starts with
//! the same tokens: template, system line and instruction. The model runs
//! that prefix once, keeps a copy of itself with the KV
//! cache filled (a cheap clone: KV tensors are reference counted and grow by
//! concatenation into new tensors, so the copy is never written), and starts
//! every later prompt of the same task from that copy. The prompt is always
//! tokenized whole; the reused prefix is the part of it shared with the
//! tokenized prefix text, so the model sees exactly the same tokens either way,
//! and the prompt runs as the same two chunks (prefix, rest) with reuse on or
//! off, so reuse never changes an output (see `prefill`).
//!
//! **Clones.** Weights are shared between clones (`Arc`ed `QTensor`s); each
//! clone has its own KV cache.
//!
//! **Limits.** Our implementations have rotary tables for 32768 positions,
//! candle's Llama (used for mixtures of experts) for 4096;
//! [`CausalModel::context_length`] reports the file's context capped by that.

use std::fmt;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::generate::decode::{argmax, token_budget, RepetitionGuard, StopTokens};
use crate::models::gguf_reader::GgufReader;
use crate::models::seq2seq::Fill;
use crate::models::{tokenizer, GenOptions, Generation, Task};

/// Tokens per word assumed when turning a summary's word limit into a token
/// budget (English takes about 1.3 with these vocabularies, Spanish 1.6;
/// the slack keeps a summary in another script from being cut).
const TOKENS_PER_WORD: f64 = 2.5;

/// Tokens kept free when fitting a long input into the context: the input is
/// measured on its own, and a few tokens can merge differently inside the
/// whole prompt.
const CONTEXT_MARGIN: usize = 8;

/// Below this many shared tokens a cached prefix is not worth a clone.
const MIN_PREFIX_TOKENS: usize = 8;

/// Prefixes (tasks) remembered per model clone.
const MAX_PRIMED: usize = 4;

/// End-of-turn and turn-start tokens that stop a generation when the
/// tokenizer has them as special tokens.
const STOP_TOKEN_NAMES: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_turn>",
    "<start_of_turn>",
    "<eos>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
];

/// The model families this module runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Qwen2 and Qwen2.5 (`general.architecture = "qwen2"`).
    Qwen2,
    /// Qwen3 (`qwen3`).
    Qwen3,
    /// Llama 2/3, SmolLM2 and other `llama`-architecture files.
    Llama,
    /// Gemma 3 (`gemma3`).
    Gemma3,
}

impl Family {
    /// The `general.architecture` values we accept, for error messages.
    pub const SUPPORTED: &'static [&'static str] = &["qwen2", "qwen3", "llama", "gemma3"];

    /// The family of a GGUF `general.architecture` value.
    pub fn from_architecture(arch: &str) -> Option<Family> {
        match arch {
            "qwen2" => Some(Family::Qwen2),
            "qwen3" => Some(Family::Qwen3),
            "llama" => Some(Family::Llama),
            "gemma3" => Some(Family::Gemma3),
            _ => None,
        }
    }

    /// The GGUF architecture name (also the metadata key prefix).
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Llama => "llama",
            Family::Gemma3 => "gemma3",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Qwen2 => "Qwen2",
            Family::Qwen3 => "Qwen3",
            Family::Llama => "Llama",
            Family::Gemma3 => "Gemma 3",
        })
    }
}

/// The network of one family, with its KV cache.
#[derive(Debug, Clone)]
enum Weights {
    /// Qwen2, Qwen3 and dense Llama files (ours).
    Decoder(decoder::Model),
    /// Llama files with experts (Mixtral), through candle.
    LlamaMoe(quantized_llama::ModelWeights),
    Gemma3(gemma3::Model),
}

impl Weights {
    /// Logits `(batch, vocab)` of the last input position.
    fn forward(&mut self, input: &Tensor, index_pos: usize) -> candle_core::Result<Tensor> {
        match self {
            Weights::Decoder(m) => m.forward(input, index_pos),
            Weights::LlamaMoe(m) => m.forward(input, index_pos),
            Weights::Gemma3(m) => m.forward(input, index_pos),
        }
    }

    /// Forgets the KV cache before a new sequence.
    fn clear(&mut self) {
        match self {
            Weights::Decoder(m) => m.clear_kv_cache(),
            Weights::LlamaMoe(m) => m.clear_kv_cache(),
            Weights::Gemma3(m) => m.clear_kv_cache(),
        }
    }
}

/// How [`CausalModel::load_with`] prepares the weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Re-quantize Q4_1, Q5_0 and Q5_1 tensors to Q8_0 on x86 CPUs, where
    /// candle has no vectorised kernels for them (Qwen2, Llama and Gemma 3;
    /// see the module docs). On by default; off gives the file's exact
    /// numbers.
    pub requantize: bool,
    /// Multiply Q8_0 weights with our own CPU kernel ([`super::q8_0`])
    /// instead of candle's, where the CPU runs it (x86-64 with AVX2/FMA).
    /// On by default; `TIDINGS_KERNELS=candle` in the environment turns it
    /// off, so that the two can be measured side by side with one binary.
    pub own_kernels: bool,
    /// Keep the KV cache in f16 on the CPU (as llama.cpp does by default):
    /// half the memory a decode step's attention reads. On by default; off
    /// keeps f32, for the exact comparisons of the tests.
    pub half_cache: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            requantize: true,
            own_kernels: super::q8_0::own_kernels_by_default(),
            half_cache: true,
        }
    }
}

/// How a conversation is laid out for the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChatFormat {
    /// `<|im_start|>role\n...<|im_end|>\n`; `no_think` adds Qwen3's empty
    /// think block to the assistant turn.
    ChatMl { no_think: bool },
    /// `<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>`.
    Llama3,
    /// `[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST]`.
    Llama2,
    /// `<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n`.
    Gemma,
}

impl ChatFormat {
    fn detect(family: Family, tokenizer: &Tokenizer) -> ChatFormat {
        match family {
            Family::Qwen2 => ChatFormat::ChatMl { no_think: false },
            Family::Qwen3 => ChatFormat::ChatMl { no_think: true },
            Family::Gemma3 => ChatFormat::Gemma,
            Family::Llama => {
                if tokenizer.token_to_id("<|im_start|>").is_some() {
                    ChatFormat::ChatMl { no_think: false }
                } else if tokenizer.token_to_id("<|start_header_id|>").is_some() {
                    ChatFormat::Llama3
                } else {
                    ChatFormat::Llama2
                }
            }
        }
    }

    /// Whether the published template starts with the BOS token (ChatML
    /// templates do not; the GGUF's `add_bos_token` can still ask for it).
    fn wants_bos(self) -> bool {
        !matches!(self, ChatFormat::ChatMl { .. })
    }

    /// The prompt text up to the start of the input, and the text after it.
    fn wrap(self, system: &str, instruction: &str) -> (String, String) {
        match self {
            ChatFormat::ChatMl { no_think } => (
                format!(
                    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{instruction}\n\n"
                ),
                format!(
                    "<|im_end|>\n<|im_start|>assistant\n{}",
                    if no_think {
                        "<think>\n\n</think>\n\n"
                    } else {
                        ""
                    }
                ),
            ),
            ChatFormat::Llama3 => (
                format!(
                    "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>\
                     <|start_header_id|>user<|end_header_id|>\n\n{instruction}\n\n"
                ),
                "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n".to_string(),
            ),
            ChatFormat::Llama2 => (
                format!("[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{instruction}\n\n"),
                " [/INST]".to_string(),
            ),
            ChatFormat::Gemma => (
                format!("<start_of_turn>user\n{system}\n\n{instruction}\n\n"),
                "<end_of_turn>\n<start_of_turn>model\n".to_string(),
            ),
        }
    }
}

/// What all clones of one loaded model share.
struct Shared {
    name: String,
    family: Family,
    tokenizer: Tokenizer,
    format: ChatFormat,
    stops: StopTokens,
    /// `<think>` and `</think>` when they are special tokens (Qwen3).
    think: Option<(u32, u32)>,
    bos: Option<u32>,
    context_length: usize,
    device: Device,
    description: String,
    /// [`step_weight_bytes`] of the file.
    step_weight_bytes: u64,
}

/// The model state right after a cached prompt prefix.
#[derive(Clone)]
struct Primed {
    tokens: Vec<u32>,
    weights: Weights,
}

/// A loaded GGUF causal language model. Cloning is cheap: the weights and the
/// tokenizer are shared, the KV cache belongs to the clone. `Send`, so each
/// worker thread can own a clone.
#[derive(Clone)]
pub struct CausalModel {
    shared: Arc<Shared>,
    weights: Weights,
    primed: Vec<Primed>,
    prefix_reuse: bool,
    /// The batch in the KV cache, when it holds several sequences.
    rows: Option<RowBatch>,
    /// Next positions of the sequences of [`CausalModel::forward_rows`].
    row_positions: Vec<usize>,
    /// Real and padded prompt tokens of the batches started since the last
    /// [`CausalModel::take_fill`] (the prompts' rests after their shared
    /// head, which runs once).
    fill: Fill,
}

/// One input made ready for decoding.
struct Prepared {
    task: Task,
    /// The input as it went into the prompt (trimmed, maybe cut).
    input: String,
    prompt: Vec<u32>,
    /// Leading prompt tokens equal to the task's tokenized prompt head.
    shared_prefix: usize,
    budget: usize,
    repetition_guard: bool,
    single_paragraph: bool,
}

/// The stopping rules of one sequence, token by token (see the module docs).
struct RowDecode {
    out: Vec<u32>,
    generated: usize,
    guard: RepetitionGuard,
    cut_text: Option<String>,
    budget: usize,
    /// Position of the next token fed to the model.
    pos: usize,
    repetition_guard: bool,
    single_paragraph: bool,
}

impl RowDecode {
    fn new(p: &Prepared) -> Self {
        RowDecode {
            out: Vec::new(),
            generated: 0,
            guard: RepetitionGuard::default(),
            cut_text: None,
            budget: p.budget,
            pos: p.prompt.len(),
            repetition_guard: p.repetition_guard,
            single_paragraph: p.single_paragraph,
        }
    }

    /// Takes the greedy choice `next`; `Some` when the sequence ends here.
    fn push(&mut self, next: u32, shared: &Shared) -> Result<Option<Finish>> {
        if shared.stops.contains(next) {
            return Ok(Some(Finish::Stop));
        }
        self.out.push(next);
        self.generated += 1;
        if self.repetition_guard {
            if let Some(found) = self.guard.push(next) {
                self.out.truncate(self.out.len() - found.excess());
                return Ok(Some(Finish::Loop));
            }
        }
        if self.single_paragraph && shared.text_of(&[next])?.contains('\n') {
            let text = shared.text_of(&without_think(&self.out, shared.think))?;
            if let Some(end) = first_paragraph_end(&text) {
                self.cut_text = Some(text[..end].to_string());
                return Ok(Some(Finish::Commentary));
            }
        }
        if self.generated >= self.budget {
            return Ok(Some(Finish::Budget));
        }
        if self.pos + 1 >= shared.context_length {
            return Ok(Some(Finish::Context));
        }
        Ok(None)
    }

    /// The raw generated text.
    fn text(&mut self, shared: &Shared) -> Result<String> {
        match self.cut_text.take() {
            Some(text) => Ok(text),
            None => shared.text_of(&without_think(&self.out, shared.think)),
        }
    }
}

impl Shared {
    fn text_of(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(Error::tokenizer(&self.name, "failed to decode tokens"))
    }
}

/// Layout of the batch in the KV cache: the one shared prefix, then each
/// row's left padding (masked), then its tokens.
#[derive(Debug, Clone)]
struct RowBatch {
    /// First pad slot (the length of the shared prefix).
    pad_from: usize,
    /// Pad slots per cache row.
    pads: Vec<usize>,
    /// Cached positions per row (prefix, pads and tokens).
    width: usize,
}

/// A network that decodes batches of rows (see [`CausalModel::rows_start`]).
enum RowsNet<'a> {
    Decoder(&'a mut decoder::Model),
    Gemma3(&'a mut gemma3::Model),
}

impl RowsNet<'_> {
    /// The sliding window some layers attend within, if any.
    fn window(&self) -> Option<usize> {
        match self {
            RowsNet::Decoder(_) => None,
            RowsNet::Gemma3(m) => m.window(),
        }
    }

    /// Logits of each row's last slot. `masks` holds the additive mask
    /// `(batch, 1, t, cached + t)` and, with a [`RowsNet::window`], the
    /// same for the sliding-window layers.
    fn forward_rows(
        &mut self,
        tokens: &Tensor,
        positions: &Tensor,
        masks: &(Tensor, Option<Tensor>),
    ) -> candle_core::Result<Tensor> {
        match self {
            RowsNet::Decoder(m) => m.forward_rows(tokens, positions, &masks.0),
            RowsNet::Gemma3(m) => {
                let local = masks.1.as_ref().unwrap_or(&masks.0);
                m.forward_rows(tokens, positions, &masks.0, local)
            }
        }
    }

    fn expand_cache(&mut self, rows: usize) -> candle_core::Result<()> {
        match self {
            RowsNet::Decoder(m) => m.expand_cache(rows),
            RowsNet::Gemma3(m) => m.expand_cache(rows),
        }
    }

    fn keep_rows(&mut self, keep: &Tensor) -> candle_core::Result<()> {
        match self {
            RowsNet::Decoder(m) => m.keep_rows(keep),
            RowsNet::Gemma3(m) => m.keep_rows(keep),
        }
    }
}

/// Additive masks `(batch, 1, t, width)` from the keys each query may see
/// (`visible(row, slot, key)`) and, with a sliding `window`, the same less
/// the keys `window` or more positions behind the query
/// (`distance(row, slot, key)`, only asked of visible keys).
fn row_masks(
    (b, t, width): (usize, usize, usize),
    window: Option<usize>,
    visible: impl Fn(usize, usize, usize) -> bool,
    distance: impl Fn(usize, usize, usize) -> usize,
    device: &Device,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let mut global = Vec::with_capacity(b * t * width);
    let mut local = Vec::with_capacity(if window.is_some() { b * t * width } else { 0 });
    for row in 0..b {
        for slot in 0..t {
            for key in 0..width {
                let seen = visible(row, slot, key);
                global.push(if seen { 0.0 } else { f32::NEG_INFINITY });
                if let Some(w) = window {
                    let near = seen && distance(row, slot, key) < w;
                    local.push(if near { 0.0 } else { f32::NEG_INFINITY });
                }
            }
        }
    }
    let shape = (b, 1, t, width);
    Ok((
        Tensor::from_vec(global, shape, device)?,
        window
            .map(|_| Tensor::from_vec(local, shape, device))
            .transpose()?,
    ))
}

/// Why a generation ended (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Stop,
    Budget,
    Context,
    Loop,
    Commentary,
}

impl CausalModel {
    /// Loads `gguf` (weights and, unless `tokenizer_json` is given, the
    /// tokenizer) onto `device`. `name` is the job's name for the model and
    /// appears in every error.
    pub fn load(
        name: &str,
        gguf: &Path,
        tokenizer_json: Option<&Path>,
        device: &Device,
    ) -> Result<Self> {
        Self::load_with(name, gguf, tokenizer_json, device, &LoadOptions::default())
    }

    /// [`CausalModel::load`] with explicit [`LoadOptions`].
    pub fn load_with(
        name: &str,
        gguf: &Path,
        tokenizer_json: Option<&Path>,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<Self> {
        let mut reader = GgufReader::open(gguf).map_err(Error::io("failed to open", gguf))?;
        let content = Content::read(&mut reader).map_err(Error::candle(
            name,
            &format!("failed to read the GGUF header of `{}`", gguf.display()),
        ))?;
        let arch = match content.metadata.get("general.architecture") {
            Some(Value::String(arch)) => arch.clone(),
            _ => {
                return Err(model_error(
                    name,
                    format!(
                        "`{}` has no `general.architecture`; supported: {}",
                        gguf.display(),
                        Family::SUPPORTED.join(", ")
                    ),
                ))
            }
        };
        let family = Family::from_architecture(&arch).ok_or_else(|| {
            model_error(
                name,
                format!(
                    "unsupported GGUF architecture `{arch}` in `{}`; supported: {}",
                    gguf.display(),
                    Family::SUPPORTED.join(", ")
                ),
            )
        })?;

        let tokenizer = tokenizer::load(name, &content, tokenizer_json)?;
        let format = ChatFormat::detect(family, &tokenizer);
        let meta_u32 = |key: &str| content.metadata.get(key).and_then(integer);
        let add_bos = matches!(
            content.metadata.get("tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        );
        let bos = meta_u32("tokenizer.ggml.bos_token_id").filter(|_| add_bos || format.wants_bos());
        let mut stops = StopTokens::new();
        if let Some(eos) = meta_u32("tokenizer.ggml.eos_token_id") {
            stops.insert(eos);
        }
        let specials = tokenizer.get_added_tokens_decoder();
        for (&id, token) in &specials {
            if token.special && STOP_TOKEN_NAMES.contains(&token.content.as_str()) {
                stops.insert(id);
            }
        }

        let special_id = |name: &str| {
            specials
                .iter()
                .find(|(_, t)| t.content == name)
                .map(|(&id, _)| id)
        };
        let think = special_id("<think>").zip(special_id("</think>"));

        let meta_context = meta_u32(&format!("{arch}.context_length")).unwrap_or(2048) as usize;
        let max_positions = match family {
            Family::Llama if has_experts(&content) => quantized_llama::MAX_SEQ_LEN,
            _ => layers::MAX_POSITIONS,
        };
        let context_length = meta_context.min(max_positions);
        let description = describe_content(family, &content, &tokenizer, context_length);
        let step_weight_bytes = step_weight_bytes(&content, &arch);

        let context = format!(
            "failed to load the {family} weights from `{}`",
            gguf.display()
        );
        let weights = load_weights(family, content, &mut reader, device, options)
            .map_err(Error::candle(name, &context))?;

        tracing::debug!(model = name, %family, ?format, stops = ?stops.sorted(), "loaded");
        Ok(CausalModel {
            shared: Arc::new(Shared {
                name: name.to_string(),
                family,
                tokenizer,
                format,
                stops,
                think,
                bos,
                context_length,
                device: device.clone(),
                description,
                step_weight_bytes,
            }),
            weights,
            primed: Vec::new(),
            prefix_reuse: true,
            rows: None,
            row_positions: Vec::new(),
            fill: Fill::default(),
        })
    }

    /// The model's family.
    pub fn family(&self) -> Family {
        self.shared.family
    }

    /// The job's name for this model.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Positions the model can attend to: the GGUF's context length, capped
    /// by the implementation's rotary tables (see the module docs).
    pub fn context_length(&self) -> usize {
        self.shared.context_length
    }

    /// The tokenizer (shared by all clones).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    /// Number of tokens in `text`, without special tokens.
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.encode(text)?.len())
    }

    /// Turns the reuse of cached prompt prefixes on or off (on by default;
    /// off is for measuring what it saves).
    pub fn set_prefix_reuse(&mut self, on: bool) {
        self.prefix_reuse = on;
        if !on {
            self.primed.clear();
        }
    }

    /// Short description for `tidings models inspect`.
    pub fn describe(&self) -> String {
        self.shared.description.clone()
    }

    /// Bytes of weights one decode step of one sequence reads, in the
    /// file's formats (see [`step_weight_bytes`]).
    pub fn step_weight_bytes(&self) -> u64 {
        self.shared.step_weight_bytes
    }

    /// Runs `tokens` through the model at positions `index_pos..` and returns
    /// the logits of the last one. Position 0 starts a new sequence; a later
    /// position continues the one in the KV cache. Low level: for tests and
    /// tools; [`CausalModel::generate`] is the normal entry point.
    pub fn forward_logits(&mut self, tokens: &[u32], index_pos: usize) -> Result<Vec<f32>> {
        if index_pos == 0 {
            self.weights.clear();
        }
        self.forward(tokens, index_pos)
    }

    /// Runs one task on one input text (see the module docs for the prompt,
    /// the budget, the stopping rules and the cleaning).
    pub fn generate(&mut self, task: Task, input: &str, opts: &GenOptions) -> Result<Generation> {
        let Some(p) = self.prepare(task, input, opts)? else {
            return Ok(Generation::default());
        };
        let (text, generated, finish) = self.decode(&p)?;
        Ok(self.finish(&p, text, generated, finish))
    }

    /// Real and padded prompt tokens of the batches decoded since the last
    /// call (left padding of the prompts' rests; none without batching).
    pub fn take_fill(&mut self) -> Fill {
        std::mem::take(&mut self.fill)
    }

    /// Whether [`CausalModel::generate_batch`] decodes several sequences in
    /// one pass for this file (Qwen2, Qwen3, dense Llama and Gemma 3 files); other families
    /// run one input at a time.
    pub fn batches(&self) -> bool {
        matches!(self.weights, Weights::Decoder(_) | Weights::Gemma3(_))
    }

    /// Runs one task on many inputs: sorted by prompt length and decoded
    /// together in batches of at most `max_rows` sequences and
    /// `batch_tokens` prompt tokens (rows times the longest prompt), with
    /// left padding inside each batch after the shared prompt prefix (see
    /// the module docs). Results come back in input order; a failed batch
    /// fails its inputs only. Families without batched decoding, and
    /// `max_rows <= 1`, run the inputs one by one through
    /// [`CausalModel::generate`].
    pub fn generate_batch(
        &mut self,
        task: Task,
        inputs: &[&str],
        opts: &GenOptions,
        max_rows: usize,
        batch_tokens: usize,
    ) -> Vec<Result<Generation>> {
        if !self.batches() || max_rows <= 1 || inputs.len() <= 1 {
            return inputs
                .iter()
                .map(|input| self.generate(task, input, opts))
                .collect();
        }
        let mut results: Vec<Option<Result<Generation>>> = inputs.iter().map(|_| None).collect();
        let mut prepared = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            match self.prepare(task, input, opts) {
                Ok(Some(p)) => prepared.push((i, p)),
                Ok(None) => results[i] = Some(Ok(Generation::default())),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        prepared.sort_by_key(|(_, p)| p.prompt.len());
        let mut rest = prepared.as_slice();
        while !rest.is_empty() {
            let mut rows = 1;
            while rows < rest.len()
                && rows < max_rows
                && (rows + 1) * rest[rows].1.prompt.len() <= batch_tokens
            {
                rows += 1;
            }
            let (batch, tail) = rest.split_at(rows);
            rest = tail;
            let preps: Vec<&Prepared> = batch.iter().map(|(_, p)| p).collect();
            match self.decode_rows(&preps) {
                Ok(outs) => {
                    for ((i, p), (text, generated, finish)) in batch.iter().zip(outs) {
                        results[*i] = Some(Ok(self.finish(p, text, generated, finish)));
                    }
                }
                Err(e) => {
                    // Every input of the batch gets the whole error.
                    let mut message = String::new();
                    let mut source: Option<&dyn std::error::Error> = Some(&e);
                    while let Some(err) = source {
                        if !message.is_empty() {
                            message.push_str(": ");
                        }
                        message.push_str(&err.to_string());
                        source = err.source();
                    }
                    for (i, _) in batch {
                        results[*i] = Some(Err(Error::Model {
                            model: self.shared.name.clone(),
                            message: format!("batched decoding failed: {message}"),
                        }));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every input has a result"))
            .collect()
    }

    /// The prompt and limits of one input, or `None` when there is nothing
    /// to generate (empty input or no budget).
    fn prepare(&self, task: Task, input: &str, opts: &GenOptions) -> Result<Option<Prepared>> {
        let input = input.trim();
        let source_tokens = self.count_tokens(input)?;
        let mut budget = token_budget(opts.max_new_tokens, opts.max_length_ratio, source_tokens);
        if let Task::Summarize { max_words } = task {
            budget = budget.min((max_words as f64 * TOKENS_PER_WORD).ceil() as usize + 16);
        }
        let (system, instruction) = instructions(task);
        let (head, tail) = self.shared.format.wrap(system, &instruction);
        if budget == 0 || input.is_empty() {
            return Ok(None);
        }

        let prefix = self.encode_prompt(&head)?;
        let template_tokens = prefix.len() + self.encode(&tail)?.len();
        let room = self
            .context_length()
            .checked_sub(template_tokens + budget + CONTEXT_MARGIN)
            .filter(|&room| room > 0)
            .ok_or_else(|| {
                model_error(
                    &self.shared.name,
                    format!(
                        "a context of {} tokens cannot hold the {template_tokens}-token prompt \
                         template and a budget of {budget} new tokens",
                        self.context_length()
                    ),
                )
            })?;
        let input = if source_tokens > room {
            tracing::warn!(
                model = %self.shared.name,
                source_tokens,
                kept = room,
                "input longer than the context: keeping its beginning"
            );
            self.truncate(input, room)?
        } else {
            input
        };

        let prompt = self.encode_prompt(&format!("{head}{input}{tail}"))?;
        let shared_prefix = prefix
            .iter()
            .zip(&prompt)
            .take_while(|(a, b)| a == b)
            .count();
        Ok(Some(Prepared {
            task,
            input: input.to_string(),
            prompt,
            shared_prefix,
            budget,
            repetition_guard: opts.repetition_guard,
            single_paragraph: matches!(task, Task::Translate { .. }) && !input.contains("\n\n"),
        }))
    }

    /// The [`Generation`] of a finished decode.
    fn finish(&self, p: &Prepared, text: String, generated: usize, finish: Finish) -> Generation {
        tracing::debug!(
            model = %self.shared.name,
            prompt_tokens = p.prompt.len(),
            generated,
            budget = p.budget,
            ?finish,
            "generated"
        );
        Generation {
            text: clean_output(&text, p.task, &p.input),
            input_tokens: p.prompt.len(),
            output_tokens: generated,
        }
    }

    /// Greedy decoding of one prompt; returns the raw text, the number of
    /// generated tokens and why it stopped.
    fn decode(&mut self, p: &Prepared) -> Result<(String, usize, Finish)> {
        let shared = Arc::clone(&self.shared);
        let mut logits = self.prefill(&p.prompt, p.shared_prefix)?;
        let mut row = RowDecode::new(p);
        loop {
            let next = argmax(&logits);
            if let Some(finish) = row.push(next, &shared)? {
                return Ok((row.text(&shared)?, row.generated, finish));
            }
            logits = self.forward(&[next], row.pos)?;
            row.pos += 1;
        }
    }

    /// Greedy decoding of several prompts of one task in one batch (Qwen2
    /// and Llama files): the shared prompt prefix runs once (or comes from
    /// the primed cache), is repeated for every row, and the rest of each
    /// prompt runs left-padded to the longest; every step then feeds one
    /// token per row at the row's own position, pad slots masked out.
    /// Finished rows are dropped from the cache once a quarter of the batch
    /// is done.
    fn decode_rows(&mut self, preps: &[&Prepared]) -> Result<Vec<(String, usize, Finish)>> {
        let shared = Arc::clone(&self.shared);
        let mut common = preps.iter().map(|p| p.shared_prefix).min().unwrap_or(0);
        if !(common >= MIN_PREFIX_TOKENS && preps.iter().all(|p| common < p.prompt.len())) {
            common = 0;
        }
        if common > 0 {
            self.prime(&preps[0].prompt[..common])?;
        } else {
            self.weights.clear();
        }
        let rests: Vec<&[u32]> = preps.iter().map(|p| &p.prompt[common..]).collect();
        let mut logits = self.rows_start(&rests, common)?;
        let mut rows: Vec<RowDecode> = preps.iter().map(|p| RowDecode::new(p)).collect();
        let mut done: Vec<Option<(String, usize, Finish)>> = preps.iter().map(|_| None).collect();
        // Cache row k holds the sequence `live[k]`.
        let mut live: Vec<usize> = (0..preps.len()).collect();
        loop {
            let mut next = Vec::with_capacity(live.len());
            for (k, &r) in live.iter().enumerate() {
                if done[r].is_some() {
                    next.push(0);
                    continue;
                }
                let token = argmax(&logits[k]);
                if let Some(finish) = rows[r].push(token, &shared)? {
                    done[r] = Some((rows[r].text(&shared)?, rows[r].generated, finish));
                }
                next.push(token);
            }
            let finished = live.iter().filter(|&&r| done[r].is_some()).count();
            if finished == live.len() {
                break;
            }
            if finished * 4 >= live.len() {
                let keep: Vec<usize> = (0..live.len())
                    .filter(|&k| done[live[k]].is_none())
                    .collect();
                self.rows_keep(&keep)?;
                next = keep.iter().map(|&k| next[k]).collect();
                live = keep.iter().map(|&k| live[k]).collect();
            }
            let positions: Vec<usize> = live.iter().map(|&r| rows[r].pos).collect();
            logits = self.rows_step(&next, &positions)?;
            for &r in &live {
                rows[r].pos += 1;
            }
        }
        Ok(done
            .into_iter()
            .map(|d| d.expect("every row finished"))
            .collect())
    }

    /// Starts a batch of sequences: `rests[i]` continues the one-row prefix
    /// of `common` tokens in the cache (none when `common` is 0). Returns the
    /// logits of each row's last token. Qwen2, Qwen3, dense Llama and Gemma 3 files.
    fn rows_start(&mut self, rests: &[&[u32]], common: usize) -> Result<Vec<Vec<f32>>> {
        let b = rests.len();
        let longest = rests.iter().map(|r| r.len()).max().unwrap_or(0);
        let pads: Vec<usize> = rests.iter().map(|r| longest - r.len()).collect();
        self.fill.real_tokens += rests.iter().map(|r| r.len() as u64).sum::<u64>();
        self.fill.padded_tokens += (b * longest) as u64;
        let width = common + longest;
        // A slot's position: pad slots take the row's first position.
        let position = |row: usize, slot: usize| common + slot.saturating_sub(pads[row]);
        let mut tokens = Vec::with_capacity(b * longest);
        let mut positions = Vec::with_capacity(b * longest);
        for (row, (rest, &pad)) in rests.iter().zip(&pads).enumerate() {
            for slot in 0..longest {
                tokens.push(if slot < pad {
                    rest[0]
                } else {
                    rest[slot - pad]
                });
                positions.push(position(row, slot) as u32);
            }
        }
        // The prefix, the row's own earlier real slots, and itself (so a
        // pad slot's query has a key too).
        let visible = |row: usize, slot: usize, key: usize| {
            key < common || {
                let s = key - common;
                s == slot || (s < slot && s >= pads[row])
            }
        };
        let distance = |row: usize, slot: usize, key: usize| {
            let key_pos = if key < common {
                key
            } else {
                position(row, key - common)
            };
            position(row, slot).saturating_sub(key_pos)
        };
        let shared = Arc::clone(&self.shared);
        let device = &shared.device;
        let run = |mut net: RowsNet<'_>| -> candle_core::Result<Vec<Vec<f32>>> {
            if common > 0 {
                net.expand_cache(b)?;
            }
            let masks = row_masks((b, longest, width), net.window(), visible, distance, device)?;
            let tokens = Tensor::from_vec(tokens, (b, longest), device)?;
            let positions = Tensor::from_vec(positions, b * longest, device)?;
            net.forward_rows(&tokens, &positions, &masks)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()
        };
        let logits =
            run(self.rows_net()?).map_err(Error::candle(&shared.name, "forward pass failed"))?;
        self.rows = Some(RowBatch {
            pad_from: common,
            pads,
            width,
        });
        Ok(logits)
    }

    /// One decoding step of the batch: `tokens[k]` at `positions[k]` for
    /// cache row `k`. Returns each row's logits.
    fn rows_step(&mut self, tokens: &[u32], positions: &[usize]) -> Result<Vec<Vec<f32>>> {
        let shared = Arc::clone(&self.shared);
        let batch = self
            .rows
            .as_mut()
            .ok_or_else(|| model_error(&shared.name, "no batch was started".into()))?;
        let b = tokens.len();
        batch.width += 1;
        let (width, pad_from) = (batch.width, batch.pad_from);
        let pads = batch.pads.clone();
        // Everything but the row's pad slots; a key past them sits `pad`
        // slots after its position.
        let visible =
            |row: usize, _: usize, key: usize| key < pad_from || key >= pad_from + pads[row];
        let distance = |row: usize, _: usize, key: usize| {
            let key_pos = if key < pad_from { key } else { key - pads[row] };
            positions[row].saturating_sub(key_pos)
        };
        let rows_at: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let device = &shared.device;
        let run = |mut net: RowsNet<'_>| -> candle_core::Result<Vec<Vec<f32>>> {
            let masks = row_masks((b, 1, width), net.window(), visible, distance, device)?;
            let tokens = Tensor::from_vec(tokens.to_vec(), (b, 1), device)?;
            let positions = Tensor::from_vec(rows_at, b, device)?;
            net.forward_rows(&tokens, &positions, &masks)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()
        };
        run(self.rows_net()?).map_err(Error::candle(&shared.name, "forward pass failed"))
    }

    /// Keeps the cache rows `keep` of the batch (in that order).
    fn rows_keep(&mut self, keep: &[usize]) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        if let Some(batch) = self.rows.as_mut() {
            batch.pads = keep.iter().map(|&k| batch.pads[k]).collect();
        }
        let idx: Vec<u32> = keep.iter().map(|&k| k as u32).collect();
        let run = |mut net: RowsNet<'_>| -> candle_core::Result<()> {
            let n = idx.len();
            net.keep_rows(&Tensor::from_vec(idx, n, &shared.device)?)
        };
        run(self.rows_net()?).map_err(Error::candle(&shared.name, "selecting batch rows failed"))
    }

    /// Starts new sequences, one per prompt (left-padded to the longest),
    /// and returns the logits of each prompt's last token. Low level, for
    /// benchmarks and tests; Qwen2, Qwen3, dense Llama and Gemma 3 files.
    pub fn forward_rows(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        self.weights.clear();
        let rests: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        if rests.iter().any(|r| r.is_empty()) {
            return Err(model_error(&self.shared.name, "an empty prompt".into()));
        }
        let logits = self.rows_start(&rests, 0)?;
        self.row_positions = prompts.iter().map(Vec::len).collect();
        Ok(logits)
    }

    /// Feeds one more token to every sequence of [`CausalModel::forward_rows`]
    /// and returns their logits.
    pub fn step_rows(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        if tokens.len() != self.row_positions.len() {
            return Err(model_error(
                &self.shared.name,
                format!(
                    "{} tokens for a batch of {} sequences",
                    tokens.len(),
                    self.row_positions.len()
                ),
            ));
        }
        let positions = self.row_positions.clone();
        let logits = self.rows_step(tokens, &positions)?;
        for p in &mut self.row_positions {
            *p += 1;
        }
        Ok(logits)
    }

    fn rows_net(&mut self) -> Result<RowsNet<'_>> {
        match &mut self.weights {
            Weights::Decoder(m) => Ok(RowsNet::Decoder(m)),
            Weights::Gemma3(m) => Ok(RowsNet::Gemma3(m)),
            _ => Err(model_error(
                &self.shared.name,
                format!(
                    "batched decoding is implemented for Qwen2, Qwen3, dense Llama and Gemma 3 files, not {}",
                    self.shared.family
                ),
            )),
        }
    }

    /// Runs the prompt and returns the logits of its last position.
    ///
    /// Where the shared prefix is long enough to reuse, the prompt always
    /// runs in two chunks, the shared prefix and the rest, whether or not the prefix's
    /// KV cache comes from an earlier prompt: the same chunks give the same
    /// floats, so reuse never changes an output. (One chunk would not give
    /// bit-identical logits: quantized matmuls round activations to 8 bits,
    /// and float noise from differently shaped attention products flips
    /// some roundings; the logits then move by a few tenths.)
    fn prefill(&mut self, prompt: &[u32], shared_prefix: usize) -> Result<Vec<f32>> {
        let chunked = shared_prefix >= MIN_PREFIX_TOKENS && shared_prefix < prompt.len();
        if !chunked {
            self.weights.clear();
            return self.forward(prompt, 0);
        }
        self.prime(&prompt[..shared_prefix])?;
        self.forward(&prompt[shared_prefix..], shared_prefix)
    }

    /// Leaves the KV cache holding `prefix` (one row): from the primed copies
    /// when reuse is on and it was seen before, else by running it.
    fn prime(&mut self, prefix: &[u32]) -> Result<()> {
        let cached = if self.prefix_reuse {
            self.primed.iter().position(|p| p.tokens == prefix)
        } else {
            None
        };
        match cached {
            Some(i) => {
                let primed = self.primed.remove(i);
                self.weights = primed.weights.clone();
                self.primed.insert(0, primed);
            }
            None => {
                self.weights.clear();
                self.forward(prefix, 0)?;
                if self.prefix_reuse {
                    self.primed.insert(
                        0,
                        Primed {
                            tokens: prefix.to_vec(),
                            weights: self.weights.clone(),
                        },
                    );
                    self.primed.truncate(MAX_PRIMED);
                }
            }
        }
        Ok(())
    }

    fn forward(&mut self, tokens: &[u32], index_pos: usize) -> Result<Vec<f32>> {
        let shared = &self.shared;
        let run = |weights: &mut Weights| -> candle_core::Result<Vec<f32>> {
            let input = Tensor::new(tokens, &shared.device)?.unsqueeze(0)?;
            let logits = weights.forward(&input, index_pos)?;
            logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()
        };
        run(&mut self.weights).map_err(Error::candle(&shared.name, "forward pass failed"))
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .shared
            .tokenizer
            .encode(text, false)
            .map_err(Error::tokenizer(&self.shared.name, "failed to encode text"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of a prompt text, with BOS where the model wants it.
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.shared.bos.into_iter().collect();
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// The beginning of `text` that holds at most `max_tokens` tokens.
    fn truncate<'a>(&self, text: &'a str, max_tokens: usize) -> Result<&'a str> {
        let encoding = self
            .shared
            .tokenizer
            .encode(text, false)
            .map_err(Error::tokenizer(&self.shared.name, "failed to encode text"))?;
        let Some(&(start, _)) = encoding.get_offsets().get(max_tokens) else {
            return Ok(text);
        };
        let mut end = start.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Ok(&text[..end])
    }
}

fn model_error(name: &str, message: String) -> Error {
    Error::Model {
        model: name.to_string(),
        message,
    }
}

fn integer(v: &Value) -> Option<u32> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x),
        Value::I32(x) => u32::try_from(x).ok(),
        Value::U64(x) => u32::try_from(x).ok(),
        Value::I64(x) => u32::try_from(x).ok(),
        _ => None,
    }
}

/// Bytes of weights a decode step of one sequence reads, in the file's
/// formats: every tensor once, except the token embedding table where the
/// file has its own output head (a step looks up one row of it), and of the
/// expert tensors of a mixture of experts only the routed share (experts
/// used / experts). The least memory traffic such a step can have, so the
/// machine's read bandwidth over it bounds one-sequence decoding (the KV
/// cache comes on top: a few MB at the lengths `tidings bench` measures).
fn step_weight_bytes(content: &Content, arch: &str) -> u64 {
    let count = |key: &str| {
        content
            .metadata
            .get(&format!("{arch}.{key}"))
            .and_then(integer)
            .unwrap_or(0) as f64
    };
    let (experts, used) = (count("expert_count"), count("expert_used_count"));
    let routed = if experts > 1.0 && used > 0.0 {
        used / experts
    } else {
        1.0
    };
    let own_head = content.tensor_infos.contains_key("output.weight");
    content
        .tensor_infos
        .iter()
        .filter(|(name, _)| !(own_head && name.as_str() == "token_embd.weight"))
        .map(|(name, info)| {
            let dtype = info.ggml_dtype;
            let bytes = (info.shape.elem_count() / dtype.block_size() * dtype.type_size()) as f64;
            if name.contains("_exps.") {
                bytes * routed
            } else {
                bytes
            }
        })
        .sum::<f64>() as u64
}

/// Whether a Llama-architecture file is a mixture of experts (Mixtral).
fn has_experts(content: &Content) -> bool {
    let experts = content.metadata.get("llama.expert_count").and_then(integer);
    experts.unwrap_or(0) > 1
}

fn load_weights<R: Read + Seek>(
    family: Family,
    content: Content,
    reader: &mut R,
    device: &Device,
    options: &LoadOptions,
) -> candle_core::Result<Weights> {
    Ok(match family {
        Family::Qwen2 => Weights::Decoder(decoder::Model::from_gguf(
            &content, reader, device, "qwen2", options,
        )?),
        Family::Llama => {
            if has_experts(&content) {
                Weights::LlamaMoe(quantized_llama::ModelWeights::from_gguf(
                    content, reader, device,
                )?)
            } else {
                Weights::Decoder(decoder::Model::from_gguf(
                    &content, reader, device, "llama", options,
                )?)
            }
        }
        Family::Qwen3 => Weights::Decoder(decoder::Model::from_gguf(
            &content, reader, device, "qwen3", options,
        )?),
        Family::Gemma3 => {
            Weights::Gemma3(gemma3::Model::from_gguf(&content, reader, device, options)?)
        }
    })
}

/// The system line and the instruction of a task.
fn instructions(task: Task) -> (&'static str, String) {
    match task {
        Task::Translate { from, to } => (
            "You are a professional translator.",
            format!(
                "Translate the following {} text into {}. Reply with the translation only.",
                from.name, to.name
            ),
        ),
        Task::Summarize { max_words } => (
            "You are a professional news editor.",
            format!(
                "Summarize the following news article in at most {max_words} words. \
                 Reply with the summary only."
            ),
        ),
    }
}

/// `general.architecture`, parameter count, vocabulary, context and the
/// quantization types of the tensors.
fn describe_content(
    family: Family,
    content: &Content,
    tokenizer: &Tokenizer,
    context_length: usize,
) -> String {
    let parameters: usize = content
        .tensor_infos
        .values()
        .map(|t| t.shape.elem_count())
        .sum();
    let mut types: Vec<(String, usize)> = Vec::new();
    for info in content.tensor_infos.values() {
        let name = ggml_type_name(info.ggml_dtype);
        match types.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count += 1,
            None => types.push((name, 1)),
        }
    }
    types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let types: Vec<String> = types
        .iter()
        .map(|(name, count)| format!("{name}: {count}"))
        .collect();
    let vocab = match content.tensor_infos.get("token_embd.weight") {
        Some(info) => info.shape.dims()[0],
        None => tokenizer.get_vocab_size(true),
    };
    format!(
        "{family} (GGUF architecture `{}`), {} parameters, vocabulary {vocab}, context {context_length} tokens, tensors: {}",
        family.architecture(),
        human_count(parameters),
        types.join(", ")
    )
}

fn human_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// llama.cpp's spelling of a tensor type (`Q4_K`, not candle's `Q4K`).
fn ggml_type_name(dtype: GgmlDType) -> String {
    let debug = format!("{dtype:?}");
    match debug.strip_suffix('K') {
        Some(base) if base.starts_with('Q') => format!("{base}_K"),
        _ => debug,
    }
}

/// Byte offset where the first paragraph of `text` ends, if a blank line
/// follows it and that paragraph is not an announcement ending in `:`.
fn first_paragraph_end(text: &str) -> Option<usize> {
    let start = text.len() - text.trim_start().len();
    let mut from = start;
    while let Some(i) = text[from..].find("\n\n") {
        let end = from + i;
        let paragraph = text[start..end].trim();
        if !paragraph.is_empty() && !paragraph.ends_with(':') {
            return Some(end);
        }
        from = end + 2;
    }
    None
}

/// `ids` without `<think> ... </think>` spans (an unclosed one runs to the
/// end): those tokens are special, so decoding would drop the tags and keep
/// the reasoning.
fn without_think(ids: &[u32], think: Option<(u32, u32)>) -> Vec<u32> {
    let Some((open, close)) = think else {
        return ids.to_vec();
    };
    let mut out = Vec::with_capacity(ids.len());
    let mut inside = false;
    for &id in ids {
        if id == open {
            inside = true;
        } else if id == close {
            inside = false;
        } else if !inside {
            out.push(id);
        }
    }
    out
}

/// Removes what models add around the answer (see the module docs).
fn clean_output(text: &str, task: Task, input: &str) -> String {
    let text = strip_think(text);
    let mut text = text.trim();
    if let Some(rest) = strip_label(text, task) {
        text = rest.trim();
    }
    strip_quotes(text, input).trim().to_string()
}

/// Drops `<think>...</think>` blocks; an unclosed one hides everything after it.
fn strip_think(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<think>") {
        out.push_str(&rest[..start]);
        match rest[start..].find("</think>") {
            Some(end) => rest = &rest[start + end + "</think>".len()..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// The text after a leading label such as "Translation:", "Spanish
/// translation:", "Here is the summary:" or "Spanish:", if there is one.
fn strip_label(text: &str, task: Task) -> Option<&str> {
    let colon = text.find(':')?;
    let label = text[..colon].trim().trim_matches('*').trim().to_lowercase();
    if label.is_empty() || label.contains('\n') || label.split_whitespace().count() > 6 {
        return None;
    }
    let keyword = match task {
        Task::Translate { to, .. } => {
            label.contains("translation")
                || label.contains("translated")
                || label == to.name.to_lowercase()
                || label == format!("in {}", to.name.to_lowercase())
        }
        Task::Summarize { .. } => label.contains("summary"),
    };
    let rest = text[colon + 1..].trim_start_matches('*');
    (keyword && !rest.trim().is_empty()).then_some(rest)
}

/// Removes quotes around the whole text when the input had none.
fn strip_quotes<'a>(text: &'a str, input: &str) -> &'a str {
    const PAIRS: &[(char, char)] = &[
        ('"', '"'),
        ('“', '”'),
        ('«', '»'),
        ('„', '“'),
        ('\'', '\''),
        ('「', '」'),
    ];
    let input = input.trim_start();
    for &(open, close) in PAIRS {
        if input.starts_with(open) {
            continue;
        }
        if let Some(inner) = text.strip_prefix(open).and_then(|t| t.strip_suffix(close)) {
            if !inner.contains(close) && !inner.contains(open) && !inner.trim().is_empty() {
                return inner;
            }
        }
    }
    text
}

/// The Llama-style decoder over GGUF tensors, for `qwen2` (Qwen2, Qwen2.5)
/// and dense `llama` files (Llama 2/3, SmolLM2).
///
/// Written for this crate because candle 0.11.1's `quantized_qwen2` model is
/// not `Clone`, and its `quantized_llama` has rotary tables for 4096
/// positions only and cannot take re-quantized weights (see
/// [`layers::fast_kernels`]). The architecture as published: pre-norm blocks
/// with RMSNorm; grouped-query attention (Qwen2 adds biases to the query, key
/// and value projections); rotary embeddings, in the "half-split" (NeoX)
/// layout for Qwen2 and the interleaved one for Llama, with linear scaling
/// when `rope.scaling.type = linear`; a SiLU-gated MLP; an output head that
/// falls back to the token embeddings when the file ties them. Not handled:
/// Llama 3.1's `rope_freqs` long-context factors (nor does candle), partial
/// rotary dimensions, and mixtures of experts (those go through candle's
/// implementation, see `load_weights`).
mod decoder {
    use std::io::{Read, Seek};

    use candle_core::quantized::gguf_file::{Content, Value};
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Module, Result, Tensor};
    use candle_transformers::quantized_nn::RmsNorm;

    use super::layers::{
        attend, causal_mask, copy_blocks, fast_kernels, scaled_attention, Embed, KvCache, Linear,
        Rope, MAX_POSITIONS,
    };
    use crate::generate::softmax::silu_in_place;
    use crate::models::q8_0::Stacked;

    /// A layer's query, key and value projections.
    #[derive(Debug, Clone)]
    enum Qkv {
        /// Three products.
        Parts {
            q: Linear,
            k: Linear,
            v: Linear,
            /// Qwen2's projection biases (query, key, value).
            biases: Option<(Tensor, Tensor, Tensor)>,
        },
        /// One product over the stacked weights (all three on our Q8_0
        /// kernel, or all three Q4_K or all Q6_K: see `q8_0::Stacked`),
        /// split into heads by plain loops that add the biases
        /// (concatenated as the weights are) on the way: one quantized
        /// input, one pass over the thread pool, no candle copies.
        Stacked(Stacked, Option<Vec<f32>>),
    }

    #[derive(Debug, Clone)]
    struct Attention {
        qkv: Qkv,
        /// Qwen3's RMSNorms of each query and key head (before the rotary
        /// embedding).
        head_norms: Option<(RmsNorm, RmsNorm)>,
        o: Linear,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        cache: Option<KvCache>,
        /// Keys and values kept in f16 ([`super::LoadOptions::half_cache`]).
        half_cache: bool,
    }

    impl Attention {
        fn forward(
            &mut self,
            x: &Tensor,
            mask: Option<&Tensor>,
            pos: usize,
            rope: &Rope,
        ) -> Result<Tensor> {
            let (b, t, _) = x.dims3()?;
            let (q, k, v) = self.project(x)?;
            let (q, k) = self.norm_heads(q, k)?;
            let q = rope.apply(&q, pos)?;
            let k = rope.apply(&k, pos)?;
            let y = attend(
                &q,
                k,
                v,
                &mut self.cache,
                pos,
                mask,
                self.head_dim,
                None,
                self.half_cache,
            )?;
            self.output(&y, b, t)
        }

        /// The output projection of the heads `(batch, heads, t, head_dim)`.
        fn output(&self, y: &Tensor, b: usize, t: usize) -> Result<Tensor> {
            let y = y
                .transpose(1, 2)?
                .reshape((b, t, self.heads * self.head_dim))?;
            self.o.forward(&y)
        }

        /// [`Attention::forward`] for a batch of rows with their own
        /// positions (`(batch, t)`) and an additive mask
        /// `(batch, 1, t, cached + t)`; the new keys and values are appended
        /// to the cache.
        fn forward_rows(
            &mut self,
            x: &Tensor,
            mask: &Tensor,
            tables: &(Tensor, Tensor),
            rope: &Rope,
        ) -> Result<Tensor> {
            let (b, t, _) = x.dims3()?;
            let (q, k, v) = self.project(x)?;
            let (q, k) = self.norm_heads(q, k)?;
            let q = rope.apply_rows(&q, tables)?;
            let k = rope.apply_rows(&k, tables)?;
            let (k, v) = KvCache::append(&mut self.cache, &k, &v, self.half_cache)?;
            let y = scaled_attention(&q, k, v, Some(mask), self.head_dim)?;
            self.output(&y, b, t)
        }

        /// `q`, `k` (`(batch, heads, t, head_dim)`) with each head
        /// RMS-normed where the family does so (Qwen3).
        fn norm_heads(&self, q: Tensor, k: Tensor) -> Result<(Tensor, Tensor)> {
            match &self.head_norms {
                Some((qn, kn)) => Ok((qn.forward(&q)?, kn.forward(&k)?)),
                None => Ok((q, k)),
            }
        }

        /// Queries, keys and values `(batch, heads, t, head_dim)` of `x`.
        fn project(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
            let (b, t, _) = x.dims3()?;
            let (q, k, v, biases) = match &self.qkv {
                Qkv::Parts { q, k, v, biases } => (q, k, v, biases),
                Qkv::Stacked(w, bias) => return self.project_stacked(w, bias.as_deref(), b, t, x),
            };
            let project = |w: &Linear, bias: Option<&Tensor>, heads: usize| -> Result<Tensor> {
                let y = w.forward(x)?;
                let y = match bias {
                    Some(bias) => y.broadcast_add(bias)?,
                    None => y,
                };
                y.reshape((b, t, heads, self.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (bq, bk, bv) = match biases {
                Some((q, k, v)) => (Some(q), Some(k), Some(v)),
                None => (None, None, None),
            };
            Ok((
                project(q, bq, self.heads)?,
                project(k, bk, self.kv_heads)?,
                project(v, bv, self.kv_heads)?,
            ))
        }

        /// [`Attention::project`] through [`Qkv::Stacked`].
        fn project_stacked(
            &self,
            w: &Stacked,
            bias: Option<&[f32]>,
            b: usize,
            t: usize,
            x: &Tensor,
        ) -> Result<(Tensor, Tensor, Tensor)> {
            let (m, y) = w.matmul(x)?;
            let width = y.len() / m.max(1);
            let d = self.head_dim;
            // `(b, t, heads * d)` at column `offset` of `y`, plus the bias,
            // to `(b, heads, t, d)`
            let heads_of = |offset: usize, heads: usize| -> Result<Tensor> {
                let mut out = vec![0f32; b * heads * t * d];
                for (row, y) in y.chunks_exact(width).enumerate() {
                    let (bi, ti) = (row / t, row % t);
                    for h in 0..heads {
                        let at = offset + h * d;
                        let dst = &mut out[((bi * heads + h) * t + ti) * d..][..d];
                        dst.copy_from_slice(&y[at..at + d]);
                        if let Some(bias) = bias {
                            for (o, c) in dst.iter_mut().zip(&bias[at..at + d]) {
                                *o += c;
                            }
                        }
                    }
                }
                Tensor::from_vec(out, (b, heads, t, d), x.device())
            };
            let (nq, nk) = (self.heads * d, self.kv_heads * d);
            Ok((
                heads_of(0, self.heads)?,
                heads_of(nq, self.kv_heads)?,
                heads_of(nq + nk, self.kv_heads)?,
            ))
        }
    }

    /// A layer's gate and up projections.
    #[derive(Debug, Clone)]
    enum GateUp {
        Parts {
            gate: Linear,
            up: Linear,
        },
        /// One product over the stacked weights (both on our Q8_0 kernel,
        /// or both of one K-quant type),
        /// then `silu(gate) * up` in one plain pass instead of two candle
        /// operations with their fresh tensors.
        Stacked(Stacked),
    }

    #[derive(Debug, Clone)]
    struct Layer {
        attn_norm: RmsNorm,
        attn: Attention,
        ffn_norm: RmsNorm,
        gate_up: GateUp,
        down: Linear,
    }

    impl Layer {
        /// `x` plus the SiLU-gated MLP of its normed self.
        fn mlp_residual(&self, x: &Tensor) -> Result<Tensor> {
            let h = self.ffn_norm.forward(x)?;
            let gated = match &self.gate_up {
                GateUp::Parts { gate, up } => {
                    (candle_nn::ops::silu(&gate.forward(&h)?)? * up.forward(&h)?)?
                }
                GateUp::Stacked(w) => {
                    let (m, y) = w.matmul(&h)?;
                    let inner = w.sizes()[0];
                    let mut out = Vec::with_capacity(m * inner);
                    for row in y.chunks_exact(2 * inner) {
                        let (gate, up) = row.split_at(inner);
                        let start = out.len();
                        out.extend_from_slice(gate);
                        let gated = &mut out[start..];
                        silu_in_place(gated);
                        for (g, u) in gated.iter_mut().zip(up) {
                            *g *= u;
                        }
                    }
                    let mut dims = h.dims().to_vec();
                    if let Some(last) = dims.last_mut() {
                        *last = inner;
                    }
                    Tensor::from_vec(out, dims, h.device())?
                }
            };
            x + self.down.forward(&gated)?
        }
    }

    /// The whole decoder with its KV cache.
    #[derive(Debug, Clone)]
    pub struct Model {
        embed: Embed,
        layers: Vec<Layer>,
        norm: RmsNorm,
        head: Linear,
        rope: Rope,
        device: Device,
    }

    impl Model {
        /// Reads the `{arch}.*` hyper-parameters (`arch` is `qwen2`,
        /// `qwen3` or `llama`) and the llama.cpp-named tensors
        /// (`token_embd.weight`, `blk.N.attn_q.weight`, ...; Qwen3's
        /// `blk.N.attn_q_norm.weight` and `attn_k_norm.weight` where present).
        pub fn from_gguf<R: Read + Seek>(
            ct: &Content,
            reader: &mut R,
            device: &Device,
            arch: &str,
            options: &super::LoadOptions,
        ) -> Result<Self> {
            let (requantize, own_kernels) = (options.requantize, options.own_kernels);
            let md = |key: &str| -> Result<&Value> {
                ct.metadata.get(&format!("{arch}.{key}")).ok_or_else(|| {
                    candle_core::Error::Msg(format!("missing metadata `{arch}.{key}`"))
                })
            };
            let heads = md("attention.head_count")?.to_u32()? as usize;
            let kv_heads = md("attention.head_count_kv")?.to_u32()? as usize;
            let blocks = md("block_count")?.to_u32()? as usize;
            let hidden = md("embedding_length")?.to_u32()? as usize;
            let eps = md("attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
            let base = md("rope.freq_base")
                .and_then(|v| v.to_f32())
                .unwrap_or(10_000.0);
            let context = md("context_length")?.to_u32()? as usize;
            let head_dim = md("attention.key_length")
                .and_then(|v| v.to_u32())
                .map(|d| d as usize)
                .unwrap_or(hidden / heads);
            if let Ok(rope_dim) = md("rope.dimension_count").and_then(|v| v.to_u32()) {
                if rope_dim as usize != head_dim {
                    candle_core::bail!(
                        "rotary dimension {rope_dim} differs from the head size {head_dim}: \
                         partial rotary embeddings are not supported"
                    );
                }
            }
            let linear_scaling = match md("rope.scaling.type").and_then(|v| v.to_string()) {
                Ok(kind) if kind == "linear" => md("rope.scaling.factor")
                    .and_then(|v| v.to_f32())
                    .unwrap_or(1.0),
                _ => 1.0,
            };

            let mut tensor = |name: &str| -> Result<QTensor> {
                let t = ct.tensor(reader, name, device)?;
                if requantize {
                    fast_kernels(t)
                } else {
                    Ok(t)
                }
            };
            let table = tensor("token_embd.weight")?;
            let head = if ct.tensor_infos.contains_key("output.weight") {
                Linear::new(own_kernels, tensor("output.weight")?)?
            } else {
                Linear::new(own_kernels, copy_blocks(&table)?)?
            };
            let embed = Embed::new(table, hidden, device)?;
            let norm = RmsNorm::from_qtensor(tensor("output_norm.weight")?, eps)?;
            let mut layers = Vec::with_capacity(blocks);
            for i in 0..blocks {
                let has_bias = ct
                    .tensor_infos
                    .contains_key(&format!("blk.{i}.attn_q.bias"));
                let mut w = |name: &str| tensor(&format!("blk.{i}.{name}"));
                let biases = if has_bias {
                    Some((
                        w("attn_q.bias")?.dequantize(device)?,
                        w("attn_k.bias")?.dequantize(device)?,
                        w("attn_v.bias")?.dequantize(device)?,
                    ))
                } else {
                    None
                };
                let q = Linear::new(own_kernels, w("attn_q.weight")?)?;
                let k = Linear::new(own_kernels, w("attn_k.weight")?)?;
                let v = Linear::new(own_kernels, w("attn_v.weight")?)?;
                let qkv = match Stacked::new(&[&q, &k, &v]) {
                    Some(stacked)
                        if stacked.sizes()
                            == [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim] =>
                    {
                        let bias = match &biases {
                            Some((bq, bk, bv)) => {
                                Some(Tensor::cat(&[bq, bk, bv], 0)?.to_vec1::<f32>()?)
                            }
                            None => None,
                        };
                        Qkv::Stacked(stacked, bias)
                    }
                    _ => Qkv::Parts { q, k, v, biases },
                };
                let head_norms = if ct
                    .tensor_infos
                    .contains_key(&format!("blk.{i}.attn_q_norm.weight"))
                {
                    Some((
                        RmsNorm::from_qtensor(w("attn_q_norm.weight")?, eps)?,
                        RmsNorm::from_qtensor(w("attn_k_norm.weight")?, eps)?,
                    ))
                } else {
                    None
                };
                let attn = Attention {
                    qkv,
                    head_norms,
                    o: Linear::new(own_kernels, w("attn_output.weight")?)?,
                    heads,
                    kv_heads,
                    head_dim,
                    cache: None,
                    half_cache: options.half_cache,
                };
                let gate = Linear::new(own_kernels, w("ffn_gate.weight")?)?;
                let up = Linear::new(own_kernels, w("ffn_up.weight")?)?;
                let gate_up = match Stacked::new(&[&gate, &up]) {
                    Some(stacked) if stacked.sizes()[0] == stacked.sizes()[1] => {
                        GateUp::Stacked(stacked)
                    }
                    _ => GateUp::Parts { gate, up },
                };
                layers.push(Layer {
                    attn_norm: RmsNorm::from_qtensor(w("attn_norm.weight")?, eps)?,
                    attn,
                    ffn_norm: RmsNorm::from_qtensor(w("ffn_norm.weight")?, eps)?,
                    gate_up,
                    down: Linear::new(own_kernels, w("ffn_down.weight")?)?,
                });
            }
            let positions = context.min(MAX_POSITIONS);
            let rope = if arch == "llama" {
                Rope::interleaved(head_dim, base, linear_scaling, positions, device)?
            } else {
                Rope::new(head_dim, base, linear_scaling, positions, device)?
            };
            Ok(Model {
                embed,
                layers,
                norm,
                head,
                rope,
                device: device.clone(),
            })
        }

        /// Logits `(batch, vocab)` for the last of `tokens` (`(batch, seq)`),
        /// which sit at positions `pos..pos + seq`. Position 0 starts afresh.
        pub fn forward(&mut self, tokens: &Tensor, pos: usize) -> Result<Tensor> {
            let (_, t) = tokens.dims2()?;
            let mask = if t > 1 {
                Some(causal_mask(t, pos, None, &self.device)?)
            } else {
                None
            };
            let mut x = self.embed.forward(tokens)?;
            for layer in &mut self.layers {
                let h = layer.attn_norm.forward(&x)?;
                let h = layer.attn.forward(&h, mask.as_ref(), pos, &self.rope)?;
                x = layer.mlp_residual(&(x + h)?)?;
            }
            // Only the last position feeds the next-token distribution.
            let last = x.narrow(1, t - 1, 1)?.squeeze(1)?;
            self.head.forward(&self.norm.forward(&last)?)
        }

        /// Forgets the KV cache.
        pub fn clear_kv_cache(&mut self) {
            for layer in &mut self.layers {
                layer.attn.cache = None;
            }
        }

        /// Logits `(batch, vocab)` of the last slot of every row of `tokens`
        /// (`(batch, t)`), each row at its own `positions` (`(batch * t)`,
        /// `u32`, row-major), attending as the additive `mask`
        /// (`(batch, 1, t, cached + t)`) allows to the cache and the new slots.
        pub fn forward_rows(
            &mut self,
            tokens: &Tensor,
            positions: &Tensor,
            mask: &Tensor,
        ) -> Result<Tensor> {
            let (b, t) = tokens.dims2()?;
            let tables = self.rope.tables_at(positions, b, t)?;
            let mut x = self.embed.forward(tokens)?;
            for layer in &mut self.layers {
                let h = layer.attn_norm.forward(&x)?;
                let h = layer.attn.forward_rows(&h, mask, &tables, &self.rope)?;
                x = layer.mlp_residual(&(x + h)?)?;
            }
            let last = x.narrow(1, t - 1, 1)?.squeeze(1)?.contiguous()?;
            self.head.forward(&self.norm.forward(&last)?)
        }

        /// Repeats a one-row cache (a primed prompt prefix) for `rows` rows.
        pub fn expand_cache(&mut self, rows: usize) -> Result<()> {
            for layer in &mut self.layers {
                if let Some(c) = &layer.attn.cache {
                    let (k, v) = c.filled()?;
                    let k = k.repeat((rows, 1, 1, 1))?;
                    let v = v.repeat((rows, 1, 1, 1))?;
                    layer.attn.cache = Some(KvCache::filled_by(k, v)?);
                }
            }
            Ok(())
        }

        /// Keeps the cache rows `keep` (a `u32` index tensor), in that order.
        pub fn keep_rows(&mut self, keep: &Tensor) -> Result<()> {
            for layer in &mut self.layers {
                if let Some(c) = &layer.attn.cache {
                    let (k, v) = c.filled()?;
                    let k = k.contiguous()?.index_select(keep, 0)?;
                    let v = v.contiguous()?.index_select(keep, 0)?;
                    layer.attn.cache = Some(KvCache::filled_by(k, v)?);
                }
            }
            Ok(())
        }
    }
}

/// Pieces shared by our decoder implementations ([`qwen2`], [`gemma3`]).
mod layers {
    use std::sync::Arc;

    use candle_core::quantized::{GgmlDType, QStorage, QTensor};
    use candle_core::{DType, Device, Module, Result, Tensor};
    use candle_nn::Embedding;

    pub use crate::models::q8_0::QLinear as Linear;

    /// Token embeddings. On the CPU a block-quantized table stays in the
    /// file's blocks and a lookup dequantizes just the rows it needs:
    /// Qwen2.5-1.5B's 151,936 x 1,536 table is 933 MB as f32 (what candle's
    /// `Embedding` takes) and 131 MB in its Q4_K blocks. Elsewhere, and for
    /// float tables, the table is dequantized once. Both give the same
    /// values (the same per-block dequantization).
    #[derive(Debug, Clone)]
    pub enum Embed {
        Dense(Embedding),
        Blocks { table: Arc<QTensor>, hidden: usize },
    }

    impl Embed {
        pub fn new(table: QTensor, hidden: usize, device: &Device) -> Result<Self> {
            let dtype = table.dtype();
            let blocks = device.is_cpu()
                && !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
                && table.shape().dims2()?.1 == hidden
                && hidden.is_multiple_of(dtype.block_size());
            Ok(if blocks {
                Embed::Blocks {
                    table: Arc::new(table),
                    hidden,
                }
            } else {
                Embed::Dense(Embedding::new(table.dequantize(device)?, hidden))
            })
        }

        /// `(..., hidden)` embeddings of the `u32` token ids `ids`.
        pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
            let (table, hidden) = match self {
                Embed::Dense(e) => return e.forward(ids),
                Embed::Blocks { table, hidden } => (table, *hidden),
            };
            let mut shape = ids.dims().to_vec();
            let ids = ids.flatten_all()?.to_vec1::<u32>()?;
            let rows = table.shape().dims2()?.0;
            let dtype = table.dtype();
            let row_bytes = hidden / dtype.block_size() * dtype.type_size();
            let data = table.data()?;
            let mut out = vec![0f32; ids.len() * hidden];
            for (&id, dst) in ids.iter().zip(out.chunks_exact_mut(hidden)) {
                let id = id as usize;
                if id >= rows {
                    candle_core::bail!(
                        "token id {id} is outside the embedding table ({rows} rows)"
                    );
                }
                dequantize_row(dtype, &data[id * row_bytes..][..row_bytes], dst)?;
            }
            shape.push(hidden);
            Tensor::from_vec(out, shape, &Device::Cpu)
        }
    }

    /// The values of one row of `dtype` blocks (`bytes`, the file's layout).
    fn dequantize_row(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
        use candle_core::quantized::k_quants::*;
        fn run<T: GgmlType>(bytes: &[u8], out: &mut [f32]) {
            // Copied into blocks of their own alignment (a row is a few
            // hundred bytes).
            let n = bytes.len() / std::mem::size_of::<T>();
            let mut blocks: Vec<T> = Vec::with_capacity(n);
            // SAFETY: the blocks are plain old data; `n` of them fit in
            // `bytes`, and all `n` are written before `set_len`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    blocks.as_mut_ptr() as *mut u8,
                    n * std::mem::size_of::<T>(),
                );
                blocks.set_len(n);
            }
            T::to_float(&blocks, out);
        }
        match dtype {
            GgmlDType::Q4_0 => run::<BlockQ4_0>(bytes, out),
            GgmlDType::Q4_1 => run::<BlockQ4_1>(bytes, out),
            GgmlDType::Q5_0 => run::<BlockQ5_0>(bytes, out),
            GgmlDType::Q5_1 => run::<BlockQ5_1>(bytes, out),
            GgmlDType::Q8_0 => run::<BlockQ8_0>(bytes, out),
            GgmlDType::Q8_1 => run::<BlockQ8_1>(bytes, out),
            GgmlDType::Q2K => run::<BlockQ2K>(bytes, out),
            GgmlDType::Q3K => run::<BlockQ3K>(bytes, out),
            GgmlDType::Q4K => run::<BlockQ4K>(bytes, out),
            GgmlDType::Q5K => run::<BlockQ5K>(bytes, out),
            GgmlDType::Q6K => run::<BlockQ6K>(bytes, out),
            GgmlDType::Q8K => run::<BlockQ8K>(bytes, out),
            other => candle_core::bail!("no block lookup for {other:?} embeddings"),
        }
        Ok(())
    }

    /// A copy of `t` in storage of its own: a tied output head keeps its
    /// product's layout of the blocks while [`Embed`] keeps the file's, and
    /// the table is read (and re-quantized) once.
    pub fn copy_blocks(t: &QTensor) -> Result<QTensor> {
        QTensor::new(
            QStorage::from_data(t.data()?, &t.device(), t.dtype())?,
            t.shape().clone(),
        )
    }

    /// Re-quantizes Q4_1, Q5_0 and Q5_1 tensors to Q8_0 on x86 CPUs.
    ///
    /// candle 0.11.1 has AVX dot products for Q4_0, Q8_0 and the K-quants
    /// but runs these three types through scalar code (most layer weights of
    /// the packaged SmolLM2, Qwen2.5 and Gemma 3 files). Q8_0 blocks have the
    /// same 32 weights, with a step at most 1/8 of a 4-bit block's.
    pub fn fast_kernels(t: QTensor) -> Result<QTensor> {
        let slow = matches!(
            t.dtype(),
            GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
        );
        if !(slow && cfg!(target_arch = "x86_64") && t.device().is_cpu()) {
            return Ok(t);
        }
        QTensor::quantize(&t.dequantize(&t.device())?, GgmlDType::Q8_0)
    }

    /// Longest sequence our implementations support (size of the rotary
    /// tables; 32768 positions cost 16 MB per table at head size 128).
    pub const MAX_POSITIONS: usize = 32768;

    /// Rotary position tables, `(positions, head_dim / 2)`, for the
    /// "half-split" (NeoX) layout of Qwen and Gemma or Llama's interleaved one.
    #[derive(Debug, Clone)]
    pub struct Rope {
        cos: Tensor,
        sin: Tensor,
        /// Rotate pairs `(2i, 2i + 1)` (Llama) instead of `(i, i + d/2)`.
        interleaved: bool,
    }

    impl Rope {
        /// `scale` divides the positions (linear RoPE scaling; 1 for none).
        pub fn new(
            head_dim: usize,
            base: f32,
            scale: f32,
            positions: usize,
            device: &Device,
        ) -> Result<Self> {
            let inv_freq: Vec<f32> = (0..head_dim / 2)
                .map(|i| 1.0 / base.powf(2.0 * i as f32 / head_dim as f32) / scale)
                .collect();
            let inv_freq = Tensor::from_vec(inv_freq, (1, head_dim / 2), device)?;
            let positions = Tensor::arange(0u32, positions as u32, device)?
                .to_dtype(DType::F32)?
                .unsqueeze(1)?;
            let angles = positions.broadcast_mul(&inv_freq)?;
            Ok(Rope {
                cos: angles.cos()?,
                sin: angles.sin()?,
                interleaved: false,
            })
        }

        /// The same tables for the interleaved layout.
        pub fn interleaved(
            head_dim: usize,
            base: f32,
            scale: f32,
            positions: usize,
            device: &Device,
        ) -> Result<Self> {
            Ok(Rope {
                interleaved: true,
                ..Rope::new(head_dim, base, scale, positions, device)?
            })
        }

        /// Cosine and sine tables `(batch, t, head_dim / 2)` at `positions`
        /// (`(batch * t)`, `u32`).
        pub fn tables_at(
            &self,
            positions: &Tensor,
            batch: usize,
            t: usize,
        ) -> Result<(Tensor, Tensor)> {
            let cos = self
                .cos
                .index_select(positions, 0)?
                .reshape((batch, t, ()))?;
            let sin = self
                .sin
                .index_select(positions, 0)?
                .reshape((batch, t, ()))?;
            Ok((cos, sin))
        }

        /// `x`: `(batch, heads, t, head_dim)` with per-row tables from
        /// [`Rope::tables_at`].
        pub fn apply_rows(&self, x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> Result<Tensor> {
            if self.interleaved {
                candle_nn::rotary_emb::rope_i(&x.contiguous()?, cos, sin)
            } else {
                candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)
            }
        }

        /// `x`: `(batch, heads, seq, head_dim)` at positions `pos..`.
        pub fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
            let t = x.dim(2)?;
            let cos = self.cos.narrow(0, pos, t)?;
            let sin = self.sin.narrow(0, pos, t)?;
            if self.interleaved {
                candle_nn::rotary_emb::rope_i(&x.contiguous()?, &cos, &sin)
            } else {
                candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)
            }
        }
    }

    /// Additive mask `(t, pos + t)`: query `i` (at position `pos + i`) sees
    /// the keys at positions `pos + i - window < j <= pos + i`.
    pub fn causal_mask(
        t: usize,
        pos: usize,
        window: Option<usize>,
        device: &Device,
    ) -> Result<Tensor> {
        let width = pos + t;
        let window = window.unwrap_or(usize::MAX);
        let values: Vec<f32> = (0..t)
            .flat_map(|i| {
                let q = pos + i;
                (0..width).map(move |j| {
                    if j > q || q - j >= window {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        Tensor::from_vec(values, (t, width), device)
    }

    /// A layer's keys and values, `(batch, kv_heads, len, head_dim)`, in
    /// buffers with room for more positions: a step writes its keys and
    /// values in place instead of concatenating (which copied every layer's
    /// whole cache each step: 10-12% of an 8-sequence SmolLM2 decode in
    /// memory copies).
    ///
    /// Clones share the buffers (a primed prompt prefix is cloned for every
    /// batch that starts from it), so only the copy that made the buffers
    /// writes into them, and only past its own length, which no other copy
    /// reads; a clone copies what it holds into buffers of its own before
    /// its first write.
    #[derive(Debug)]
    pub struct KvCache {
        k: Tensor,
        v: Tensor,
        len: usize,
        /// Whether this copy made the buffers (and may write into them).
        own: bool,
    }

    impl Clone for KvCache {
        fn clone(&self) -> Self {
            KvCache {
                k: self.k.clone(),
                v: self.v.clone(),
                len: self.len,
                own: false,
            }
        }
    }

    impl KvCache {
        /// A cache holding exactly `k`, `v` (fresh tensors of the caller's).
        pub fn filled_by(k: Tensor, v: Tensor) -> Result<Self> {
            let len = k.dim(2)?;
            Ok(KvCache {
                k,
                v,
                len,
                own: true,
            })
        }

        /// The filled positions.
        pub fn filled(&self) -> Result<(Tensor, Tensor)> {
            Ok((
                self.k.narrow(2, 0, self.len)?,
                self.v.narrow(2, 0, self.len)?,
            ))
        }

        /// What the cache stores `x`'s values as: with `half`, f16 on the CPU (llama.cpp's
        /// default too), where a decode step's attention is bound by reading
        /// the cache (8-sequence SmolLM2 decode: a quarter of the time in
        /// the attention, over 90 MB of f32 keys and values a step);
        /// `x`'s own type elsewhere.
        pub fn dtype_for(x: &Tensor, half: bool) -> DType {
            if half && x.device().is_cpu() && x.dtype() == DType::F32 {
                DType::F16
            } else {
                x.dtype()
            }
        }

        /// Appends `k`, `v` (`(batch, kv_heads, t, head_dim)`) to `cache`
        /// (starting one when `None`) and returns all filled positions.
        pub fn append(
            cache: &mut Option<KvCache>,
            k: &Tensor,
            v: &Tensor,
            half: bool,
        ) -> Result<(Tensor, Tensor)> {
            let (b, heads, t, d) = k.dims4()?;
            let k = &k.to_dtype(Self::dtype_for(k, half))?;
            let v = &v.to_dtype(Self::dtype_for(v, half))?;
            let c = match cache.take() {
                Some(c)
                    if c.own
                        && c.k.dims4()? == (b, heads, c.k.dim(2)?, d)
                        && c.len + t <= c.k.dim(2)? =>
                {
                    c
                }
                old => {
                    // new buffers: this length plus room for a few hundred
                    // steps (a quarter more for long prompts)
                    let len = old.as_ref().map_or(0, |c| c.len);
                    let need = len + t;
                    let cap = need + (need / 4).max(256);
                    let shape = (b, heads, cap, d);
                    let nk = Tensor::zeros(shape, k.dtype(), k.device())?;
                    let nv = Tensor::zeros(shape, v.dtype(), v.device())?;
                    if let Some(old) = old.filter(|c| c.len > 0) {
                        let (ok, ov) = old.filled()?;
                        nk.slice_set(&ok.contiguous()?, 2, 0)?;
                        nv.slice_set(&ov.contiguous()?, 2, 0)?;
                    }
                    KvCache {
                        k: nk,
                        v: nv,
                        len,
                        own: true,
                    }
                }
            };
            c.k.slice_set(&k.contiguous()?, 2, c.len)?;
            c.v.slice_set(&v.contiguous()?, 2, c.len)?;
            let c = KvCache {
                len: c.len + t,
                ..c
            };
            let filled = c.filled()?;
            *cache = Some(c);
            Ok(filled)
        }
    }

    /// Scaled dot-product attention over the KV cache, which `k`, `v`
    /// (`(batch, kv_heads, t, head_dim)`) are appended to first; `pos == 0`
    /// starts a new cache (see [`KvCache`]).
    /// With a sliding `window`, a single query only looks at the last
    /// `window` keys (longer prompts rely on `mask`). Returns
    /// `(batch, heads, t, head_dim)`.
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        cache: &mut Option<KvCache>,
        pos: usize,
        mask: Option<&Tensor>,
        head_dim: usize,
        window: Option<usize>,
        half: bool,
    ) -> Result<Tensor> {
        if pos == 0 {
            *cache = None;
        }
        let (k, v) = KvCache::append(cache, &k, &v, half)?;
        let (k, v) = match window {
            Some(w) if q.dim(2)? == 1 && k.dim(2)? > w => {
                let len = k.dim(2)?;
                (k.narrow(2, len - w, w)?, v.narrow(2, len - w, w)?)
            }
            _ => (k, v),
        };
        scaled_attention(q, k, v, mask, head_dim)
    }

    /// `softmax(q k^T / sqrt(head_dim) + mask) v` with grouped-query heads:
    /// `q` `(batch, heads, t, head_dim)`, `k`, `v` `(batch, kv_heads, len,
    /// head_dim)`, `mask` broadcastable to `(batch, heads, t, len)`.
    pub fn scaled_attention(
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        mask: Option<&Tensor>,
        head_dim: usize,
    ) -> Result<Tensor> {
        // Grouped queries without copying keys and values per query head:
        // query head `h` reads key/value head `h / groups`, so the `groups`
        // heads of one key/value head are stacked into one matrix of
        // `groups * t` rows.
        let (b, heads, t, d) = q.dims4()?;
        if t == 1 {
            // one query (a decode step): plain loops over the cache, as in
            // the encoder-decoder families' steps, instead of candle's
            // batched matmuls and softmax over a step's tiny products
            // (8-sequence decode: SmolLM2 +25%, Qwen2.5 0.5B +7%)
            let scaled = (q * (1.0 / (head_dim as f64).sqrt()))?;
            if let Some(y) = crate::models::seq2seq::attend_one_query(&scaled, &k, &v, mask)? {
                return Ok(y);
            }
        }
        // candle's products take one type (the cache may hold f16)
        let (k, v) = (k.to_dtype(q.dtype())?, v.to_dtype(q.dtype())?);
        let kv_heads = k.dim(1)?;
        let groups = heads / kv_heads;
        let q = q.contiguous()?.reshape((b, kv_heads, groups * t, d))?;
        let scores = (q.matmul(&k.contiguous()?.t()?)? * (1.0 / (head_dim as f64).sqrt()))?;
        let scores = match mask {
            Some(mask) => {
                let len = scores.dim(3)?;
                // `(t, len)` or `(b, 1, t, len)`, broadcast over the groups
                let mask = if mask.rank() == 4 {
                    mask.unsqueeze(2)?
                } else {
                    mask.clone()
                };
                scores
                    .reshape((b, kv_heads, groups, t, len))?
                    .broadcast_add(&mask)?
                    .reshape((b, kv_heads, groups * t, len))?
            }
            None => scores,
        };
        candle_nn::ops::softmax_last_dim(&scores)?
            .matmul(&v.contiguous()?)?
            .reshape((b, heads, t, d))
    }
}

/// A Gemma 3 decoder over GGUF tensors (text part of Gemma 3 checkpoints).
///
/// Written for this crate because candle 0.11.1's `quantized_gemma3` uses a
/// SiLU-gated MLP where Gemma 3 has a GELU (tanh) one, allocates rotary
/// tables for 131072 positions in every layer (2.3 GB for the 270M model),
/// applies sliding windows during prefill only, and has no KV-cache reset.
/// The architecture as published: embeddings scaled by `sqrt(hidden)`;
/// blocks with RMSNorm before and after both attention and MLP; per-head
/// RMSNorm on queries and keys; rotary embeddings with base
/// `rope.local_freq_base` (default 10000) in sliding-window layers and
/// `rope.freq_base` (linear scaling by `rope.scaling.factor`, if any) in the
/// global ones, every `attention.sliding_window_type`-th layer (default 6)
/// being global; grouped-query attention scaled by `1/sqrt(head_dim)`; an
/// output head tied to the embeddings. (llama.cpp's GGUF converter stores
/// Gemma's `1 + weight` norm weights already incremented, so the norms are
/// plain RMSNorms here. Gemma 3 27B scales attention by `hidden/heads`
/// instead; that size is not supported.)
mod gemma3 {
    use std::io::{Read, Seek};

    use candle_core::quantized::gguf_file::{Content, Value};
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Module, Result, Tensor};
    use candle_transformers::quantized_nn::RmsNorm;

    use super::layers::{
        attend, causal_mask, copy_blocks, fast_kernels, scaled_attention, Embed, KvCache, Linear,
        Rope, MAX_POSITIONS,
    };

    #[derive(Debug, Clone)]
    struct Layer {
        attn_norm: RmsNorm,
        q: Linear,
        k: Linear,
        v: Linear,
        o: Linear,
        q_norm: RmsNorm,
        k_norm: RmsNorm,
        post_attn_norm: RmsNorm,
        ffn_norm: RmsNorm,
        gate: Linear,
        up: Linear,
        down: Linear,
        post_ffn_norm: RmsNorm,
        /// `Some(window)` for sliding-window (local) layers.
        window: Option<usize>,
        cache: Option<KvCache>,
    }

    /// The whole decoder with its KV cache.
    #[derive(Debug, Clone)]
    pub struct Model {
        embed: Embed,
        embed_scale: f64,
        layers: Vec<Layer>,
        norm: RmsNorm,
        head: Linear,
        local_rope: Rope,
        global_rope: Rope,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        /// Keys and values kept in f16 ([`super::LoadOptions::half_cache`]).
        half_cache: bool,
        device: Device,
    }

    impl Model {
        /// Reads the `gemma3.*` hyper-parameters and llama.cpp-named tensors.
        pub fn from_gguf<R: Read + Seek>(
            ct: &Content,
            reader: &mut R,
            device: &Device,
            options: &super::LoadOptions,
        ) -> Result<Self> {
            let (requantize, own_kernels) = (options.requantize, options.own_kernels);
            let md = |key: &str| -> Result<&Value> {
                ct.metadata.get(&format!("gemma3.{key}")).ok_or_else(|| {
                    candle_core::Error::Msg(format!("missing metadata `gemma3.{key}`"))
                })
            };
            let heads = md("attention.head_count")?.to_u32()? as usize;
            let kv_heads = md("attention.head_count_kv")?.to_u32()? as usize;
            let blocks = md("block_count")?.to_u32()? as usize;
            let hidden = md("embedding_length")?.to_u32()? as usize;
            let head_dim = md("attention.key_length")?.to_u32()? as usize;
            let eps = md("attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
            let window = md("attention.sliding_window")?.to_u32()? as usize;
            let pattern = md("attention.sliding_window_type")
                .and_then(|v| v.to_u32())
                .unwrap_or(6)
                .max(1) as usize;
            let global_base = md("rope.freq_base").and_then(|v| v.to_f32()).unwrap_or(1e6);
            let local_base = md("rope.local_freq_base")
                .and_then(|v| v.to_f32())
                .unwrap_or(10_000.0);
            let scaling = md("rope.scaling.factor")
                .and_then(|v| v.to_f32())
                .unwrap_or(1.0);
            let context = md("context_length")?.to_u32()? as usize;
            let positions = context.min(MAX_POSITIONS);

            let mut tensor = |name: &str| -> Result<QTensor> {
                let t = ct.tensor(reader, name, device)?;
                if requantize {
                    fast_kernels(t)
                } else {
                    Ok(t)
                }
            };
            let table = tensor("token_embd.weight")?;
            let head = if ct.tensor_infos.contains_key("output.weight") {
                Linear::new(own_kernels, tensor("output.weight")?)?
            } else {
                Linear::new(own_kernels, copy_blocks(&table)?)?
            };
            let embed = Embed::new(table, hidden, device)?;
            let norm = RmsNorm::from_qtensor(tensor("output_norm.weight")?, eps)?;
            let mut layers = Vec::with_capacity(blocks);
            for i in 0..blocks {
                let mut w = |name: &str| tensor(&format!("blk.{i}.{name}"));
                let mut norm = |name: &str| RmsNorm::from_qtensor(w(name)?, eps);
                let (attn_norm, q_norm, k_norm) = (
                    norm("attn_norm.weight")?,
                    norm("attn_q_norm.weight")?,
                    norm("attn_k_norm.weight")?,
                );
                let (post_attn_norm, ffn_norm, post_ffn_norm) = (
                    norm("post_attention_norm.weight")?,
                    norm("ffn_norm.weight")?,
                    norm("post_ffw_norm.weight")?,
                );
                let mut matrix = |name: &str| Linear::new(own_kernels, w(name)?);
                layers.push(Layer {
                    attn_norm,
                    q: matrix("attn_q.weight")?,
                    k: matrix("attn_k.weight")?,
                    v: matrix("attn_v.weight")?,
                    o: matrix("attn_output.weight")?,
                    q_norm,
                    k_norm,
                    post_attn_norm,
                    ffn_norm,
                    gate: matrix("ffn_gate.weight")?,
                    up: matrix("ffn_up.weight")?,
                    down: matrix("ffn_down.weight")?,
                    post_ffn_norm,
                    window: ((i + 1) % pattern != 0).then_some(window),
                    cache: None,
                });
            }
            Ok(Model {
                embed,
                embed_scale: (hidden as f64).sqrt(),
                layers,
                norm,
                head,
                local_rope: Rope::new(head_dim, local_base, 1.0, positions, device)?,
                global_rope: Rope::new(head_dim, global_base, scaling, positions, device)?,
                heads,
                kv_heads,
                head_dim,
                half_cache: options.half_cache,
                device: device.clone(),
            })
        }

        /// Logits `(batch, vocab)` for the last of `tokens` (`(batch, seq)`)
        /// at positions `pos..pos + seq`. Position 0 starts afresh.
        pub fn forward(&mut self, tokens: &Tensor, pos: usize) -> Result<Tensor> {
            let (b, t) = tokens.dims2()?;
            let (global_mask, local_mask) = if t > 1 {
                let window = self.layers.iter().find_map(|l| l.window);
                (
                    Some(causal_mask(t, pos, None, &self.device)?),
                    Some(causal_mask(t, pos, window, &self.device)?),
                )
            } else {
                (None, None)
            };
            let mut x = (self.embed.forward(tokens)? * self.embed_scale)?;
            let (heads, kv_heads, hd) = (self.heads, self.kv_heads, self.head_dim);
            let half_cache = self.half_cache;
            for layer in &mut self.layers {
                let (rope, mask) = match layer.window {
                    Some(_) => (&self.local_rope, local_mask.as_ref()),
                    None => (&self.global_rope, global_mask.as_ref()),
                };
                let h = layer.attn_norm.forward(&x)?;
                let (q, k, v) = layer.project(&h, (b, t), (heads, kv_heads, hd))?;
                let q = rope.apply(&q, pos)?;
                let k = rope.apply(&k, pos)?;
                let y = attend(
                    &q,
                    k,
                    v,
                    &mut layer.cache,
                    pos,
                    mask,
                    hd,
                    layer.window,
                    half_cache,
                )?;
                x = layer.finish(x, &y, (b, t), heads * hd)?;
            }
            let last = x.narrow(1, t - 1, 1)?.squeeze(1)?;
            self.head.forward(&self.norm.forward(&last)?)
        }

        /// Forgets the KV cache.
        pub fn clear_kv_cache(&mut self) {
            for layer in &mut self.layers {
                layer.cache = None;
            }
        }

        /// The sliding window of the local layers.
        pub fn window(&self) -> Option<usize> {
            self.layers.iter().find_map(|l| l.window)
        }

        /// Logits `(batch, vocab)` of the last slot of every row of `tokens`
        /// (`(batch, t)`), each row at its own `positions` (`(batch * t)`,
        /// `u32`, row-major); the global layers attend as the additive
        /// `global` mask (`(batch, 1, t, cached + t)`) allows, the
        /// sliding-window ones as `local` (the same, less the keys a window
        /// or more behind each query).
        pub fn forward_rows(
            &mut self,
            tokens: &Tensor,
            positions: &Tensor,
            global: &Tensor,
            local: &Tensor,
        ) -> Result<Tensor> {
            let (b, t) = tokens.dims2()?;
            let local_tables = self.local_rope.tables_at(positions, b, t)?;
            let global_tables = self.global_rope.tables_at(positions, b, t)?;
            let mut x = (self.embed.forward(tokens)? * self.embed_scale)?;
            let (heads, kv_heads, hd) = (self.heads, self.kv_heads, self.head_dim);
            let half_cache = self.half_cache;
            for layer in &mut self.layers {
                let (rope, tables, mask) = match layer.window {
                    Some(_) => (&self.local_rope, &local_tables, local),
                    None => (&self.global_rope, &global_tables, global),
                };
                let h = layer.attn_norm.forward(&x)?;
                let (q, k, v) = layer.project(&h, (b, t), (heads, kv_heads, hd))?;
                let q = rope.apply_rows(&q, tables)?;
                let k = rope.apply_rows(&k, tables)?;
                let (k, v) = KvCache::append(&mut layer.cache, &k, &v, half_cache)?;
                let y = scaled_attention(&q, k, v, Some(mask), hd)?;
                x = layer.finish(x, &y, (b, t), heads * hd)?;
            }
            let last = x.narrow(1, t - 1, 1)?.squeeze(1)?.contiguous()?;
            self.head.forward(&self.norm.forward(&last)?)
        }

        /// Repeats a one-row cache (a primed prompt prefix) for `rows` rows.
        pub fn expand_cache(&mut self, rows: usize) -> Result<()> {
            for layer in &mut self.layers {
                if let Some(c) = &layer.cache {
                    let (k, v) = c.filled()?;
                    let k = k.repeat((rows, 1, 1, 1))?;
                    let v = v.repeat((rows, 1, 1, 1))?;
                    layer.cache = Some(KvCache::filled_by(k, v)?);
                }
            }
            Ok(())
        }

        /// Keeps the cache rows `keep` (a `u32` index tensor), in that order.
        pub fn keep_rows(&mut self, keep: &Tensor) -> Result<()> {
            for layer in &mut self.layers {
                if let Some(c) = &layer.cache {
                    let (k, v) = c.filled()?;
                    let k = k.contiguous()?.index_select(keep, 0)?;
                    let v = v.contiguous()?.index_select(keep, 0)?;
                    layer.cache = Some(KvCache::filled_by(k, v)?);
                }
            }
            Ok(())
        }
    }

    impl Layer {
        /// Queries, keys and values `(b, heads, t, head_dim)` of the normed
        /// input `h`, queries and keys normalised per head.
        fn project(
            &self,
            h: &Tensor,
            (b, t): (usize, usize),
            (heads, kv_heads, hd): (usize, usize, usize),
        ) -> Result<(Tensor, Tensor, Tensor)> {
            let split = |y: Tensor, n: usize, norm: Option<&RmsNorm>| -> Result<Tensor> {
                let y = y.reshape((b, t, n, hd))?;
                let y = match norm {
                    Some(norm) => norm.forward(&y)?,
                    None => y,
                };
                y.transpose(1, 2)?.contiguous()
            };
            Ok((
                split(self.q.forward(h)?, heads, Some(&self.q_norm))?,
                split(self.k.forward(h)?, kv_heads, Some(&self.k_norm))?,
                split(self.v.forward(h)?, kv_heads, None)?,
            ))
        }

        /// The residual stream `x` after the attention output `y`
        /// (`(b, heads, t, head_dim)`) and the MLP, both post-normed.
        fn finish(
            &self,
            x: Tensor,
            y: &Tensor,
            (b, t): (usize, usize),
            width: usize,
        ) -> Result<Tensor> {
            let y = self
                .o
                .forward(&y.transpose(1, 2)?.reshape((b, t, width))?)?;
            let x = (x + self.post_attn_norm.forward(&y)?)?;
            let h = self.ffn_norm.forward(&x)?;
            let gated = (self.gate.forward(&h)?.gelu()? * self.up.forward(&h)?)?;
            let y = self.down.forward(&gated)?;
            x + self.post_ffn_norm.forward(&y)?
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::langid::lookup;

    /// A header with these tensors (name, dtype, shape) and metadata.
    fn content(tensors: &[(&str, GgmlDType, &[usize])], meta: &[(&str, u32)]) -> Content {
        use candle_core::quantized::gguf_file::{TensorInfo, VersionedMagic};
        Content {
            magic: VersionedMagic::GgufV3,
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), Value::U32(*v)))
                .collect(),
            tensor_infos: tensors
                .iter()
                .map(|(name, dtype, shape)| {
                    let info = TensorInfo {
                        ggml_dtype: *dtype,
                        shape: candle_core::Shape::from(shape.to_vec()),
                        offset: 0,
                    };
                    (name.to_string(), info)
                })
                .collect(),
            tensor_data_offset: 0,
        }
    }

    #[test]
    fn a_decode_step_reads_each_weight_once_and_one_embedding_row() {
        // Q4_K: 144 bytes a 256-value block; Q6_K 210; Q8_0 34 a 32; F32 4.
        let layer = [
            ("blk.0.attn_norm.weight", GgmlDType::F32, &[512][..]),
            ("blk.0.attn_q.weight", GgmlDType::Q4K, &[512, 512][..]),
            ("blk.0.ffn_down.weight", GgmlDType::Q6K, &[512, 1024][..]),
        ];
        let layer_bytes = 512 * 4 + 512 * 2 * 144 + 512 * 4 * 210;
        let table = ("token_embd.weight", GgmlDType::Q8_0, &[1000, 512][..]);
        let table_bytes = 1000 * 16 * 34;
        // Tied: the table is the output head, read whole every step.
        let tied = content(&[layer[0], layer[1], layer[2], table], &[]);
        assert_eq!(
            step_weight_bytes(&tied, "qwen2"),
            (layer_bytes + table_bytes) as u64
        );
        // An own head: the table is only looked up.
        let head = ("output.weight", GgmlDType::Q6K, &[1000, 512][..]);
        let own = content(&[layer[0], layer[1], layer[2], table, head], &[]);
        assert_eq!(
            step_weight_bytes(&own, "llama"),
            (layer_bytes + 1000 * 2 * 210) as u64
        );
        // Two of eight experts: a quarter of the expert tensors.
        let experts = (
            "blk.0.ffn_up_exps.weight",
            GgmlDType::Q4K,
            &[8, 1024, 512][..],
        );
        let moe = content(
            &[layer[0], layer[1], layer[2], table, head, experts],
            &[("llama.expert_count", 8), ("llama.expert_used_count", 2)],
        );
        assert_eq!(
            step_weight_bytes(&moe, "llama"),
            (layer_bytes + 1000 * 2 * 210 + 8 * 1024 * 2 * 144 / 4) as u64
        );
    }

    fn translate() -> Task {
        Task::Translate {
            from: lookup("en").unwrap(),
            to: lookup("es").unwrap(),
        }
    }

    #[test]
    fn block_embeddings_equal_the_dequantized_table() {
        use candle_core::quantized::{GgmlDType, QTensor};
        let (rows, hidden) = (40, 256);
        let values = crate::seeded::values(rows * hidden, 17);
        let table = Tensor::from_vec(values, (rows, hidden), &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[3u32, 0], [39, 3]], &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            GgmlDType::Q5_0,
        ] {
            let q = || QTensor::quantize(&table, dtype).unwrap();
            let blocks = layers::Embed::new(q(), hidden, &Device::Cpu).unwrap();
            assert!(matches!(blocks, layers::Embed::Blocks { .. }), "{dtype:?}");
            let dense = candle_nn::Embedding::new(q().dequantize(&Device::Cpu).unwrap(), hidden);
            let got = blocks.forward(&ids).unwrap();
            assert_eq!(got.dims(), &[2, 2, hidden]);
            let want = candle_core::Module::forward(&dense, &ids).unwrap();
            let diff = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0, "{dtype:?}");
            let outside = Tensor::new(&[40u32], &Device::Cpu).unwrap();
            let err = blocks.forward(&outside).unwrap_err().to_string();
            assert!(err.contains("token id 40"), "{err}");
        }
        // float tables are dequantized once
        let f = layers::Embed::new(
            QTensor::quantize(&table, GgmlDType::F32).unwrap(),
            hidden,
            &Device::Cpu,
        )
        .unwrap();
        assert!(matches!(f, layers::Embed::Dense(_)));
    }

    #[test]
    fn families_from_architecture() {
        assert_eq!(Family::from_architecture("qwen2"), Some(Family::Qwen2));
        assert_eq!(Family::from_architecture("gemma3"), Some(Family::Gemma3));
        assert_eq!(Family::from_architecture("phi3"), None);
        for arch in Family::SUPPORTED {
            assert_eq!(
                Family::from_architecture(arch).unwrap().architecture(),
                *arch
            );
        }
    }

    #[test]
    fn paragraph_end_skips_announcements() {
        assert_eq!(first_paragraph_end("Hola.\n\nNota: esto"), Some(5));
        assert_eq!(first_paragraph_end("\n\nHola.\n\nNota"), Some(7));
        assert_eq!(
            first_paragraph_end("Here is the translation:\n\nHola.\n\nNota"),
            Some(31)
        );
        assert_eq!(first_paragraph_end("Hola.\nAdiós."), None);
        assert_eq!(first_paragraph_end("Here is the translation:\n\n"), None);
    }

    #[test]
    fn cleaning_removes_labels_quotes_and_think_blocks() {
        let t = translate();
        let input = "The government said so.";
        assert_eq!(
            clean_output("Translation: El gobierno.", t, input),
            "El gobierno."
        );
        assert_eq!(
            clean_output("**Spanish translation:** El gobierno.", t, input),
            "El gobierno."
        );
        assert_eq!(
            clean_output("Spanish: El gobierno.", t, input),
            "El gobierno."
        );
        assert_eq!(
            clean_output("Here is the translation:\n\n\"El gobierno.\"", t, input),
            "El gobierno."
        );
        assert_eq!(clean_output("“El gobierno.”", t, input), "El gobierno.");
        assert_eq!(
            clean_output("<think>\n\n</think>\n\nEl gobierno.", t, input),
            "El gobierno."
        );
        assert_eq!(clean_output("<think>hmm", t, input), "");
        // kept: a colon inside the sentence, quotes present in the source,
        // two quoted parts
        assert_eq!(clean_output("Dijo: sí.", t, input), "Dijo: sí.");
        assert_eq!(
            clean_output("\"Sí\", dijo.", t, "\"Yes\", he said."),
            "\"Sí\", dijo."
        );
        assert_eq!(clean_output("\"Sí\" y \"no\"", t, input), "\"Sí\" y \"no\"");
        let s = Task::Summarize { max_words: 50 };
        assert_eq!(
            clean_output("Summary: The budget.", s, input),
            "The budget."
        );
        assert_eq!(clean_output("Translation: x", s, input), "Translation: x");
    }

    #[test]
    fn chat_templates() {
        let (head, tail) = ChatFormat::ChatMl { no_think: true }.wrap("S", "I");
        assert_eq!(
            format!("{head}X{tail}"),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nI\n\nX<|im_end|>\n\
             <|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
        let (head, tail) = ChatFormat::Gemma.wrap("S", "I");
        assert_eq!(
            format!("{head}X{tail}"),
            "<start_of_turn>user\nS\n\nI\n\nX<end_of_turn>\n<start_of_turn>model\n"
        );
        let (head, tail) = ChatFormat::Llama3.wrap("S", "I");
        assert_eq!(
            format!("{head}X{tail}"),
            "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user\
             <|end_header_id|>\n\nI\n\nX<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert!(!ChatFormat::ChatMl { no_think: false }.wants_bos());
        assert!(ChatFormat::Gemma.wants_bos());
    }

    #[test]
    fn think_spans_are_dropped_by_id() {
        let think = Some((100, 101));
        assert_eq!(without_think(&[1, 100, 5, 6, 101, 2, 3], think), [1, 2, 3]);
        assert_eq!(without_think(&[1, 100, 5, 6], think), [1]);
        assert_eq!(without_think(&[1, 100, 5], None), [1, 100, 5]);
    }

    #[test]
    fn type_names_follow_llama_cpp() {
        assert_eq!(ggml_type_name(GgmlDType::Q4K), "Q4_K");
        assert_eq!(ggml_type_name(GgmlDType::Q8_0), "Q8_0");
        assert_eq!(ggml_type_name(GgmlDType::F32), "F32");
        assert_eq!(human_count(494_032_768), "494.0M");
        assert_eq!(human_count(1_543_714_304), "1.54B");
    }

    #[test]
    fn causal_model_is_send() {
        fn send<T: Send + 'static>() {}
        send::<CausalModel>();
    }
}

#[cfg(test)]
mod kv_cache_tests {
    use super::layers::KvCache;
    use candle_core::{Device, Tensor};

    fn step(seed: u64) -> Tensor {
        Tensor::from_vec(
            crate::seeded::values(2 * 3 * 4, seed),
            (2, 1, 3, 4),
            &Device::Cpu,
        )
        .unwrap()
    }

    /// Values as the cache stores them (f16 on the CPU), read back as f32.
    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(KvCache::dtype_for(t, true))
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn appends_equal_concatenation_and_clones_stay_independent() {
        let (a, b, c) = (step(1), step(2), step(3));
        let mut cache = None;
        KvCache::append(&mut cache, &a, &a, true).unwrap();
        let prefix = cache.clone();
        let (k, _) = KvCache::append(&mut cache, &b, &b, true).unwrap();
        let want = Tensor::cat(&[&a, &b], 2).unwrap();
        assert_eq!(values(&k), values(&want));
        // the clone taken after `a` goes its own way from there
        let mut other = prefix;
        let (k2, v2) = KvCache::append(&mut other, &c, &c, true).unwrap();
        let want2 = Tensor::cat(&[&a, &c], 2).unwrap();
        assert_eq!(values(&k2), values(&want2));
        assert_eq!(values(&v2), values(&want2));
        // and the original still holds `a`, `b`
        let (k, _) = cache.as_ref().unwrap().filled().unwrap();
        assert_eq!(values(&k), values(&want));
    }
}
