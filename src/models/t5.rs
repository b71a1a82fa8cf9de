//! The T5 family (Raffel et al. 2020, "Exploring the Limits of Transfer
//! Learning with a Unified Text-to-Text Transformer"): `google/flan-t5-*`
//! (summaries, prompts), `google/mt5-*` and `google/madlad400-*-mt`
//! (translation into 400+ languages, `<2xx>` target tags), in the Hugging
//! Face layout (`config.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json`, `tokenizer.json` or `spiece.model`,
//! `generation_config.json`) or as a GGUF file with the same tensor names
//! (the layout candle's `quantized_t5` reads; its hyperparameters still come
//! from `config.json`).
//!
//! The network is our own, on candle-core/candle-nn, because candle's `t5`
//! module cannot batch sentences of different lengths (no padding masks),
//! grows its KV cache by concatenation and recomputes cross-attention every
//! step. Here:
//! - the encoder takes a right-padded batch: the relative position bias of
//!   the first layer (bidirectional buckets) plus the padding bias of the
//!   keys is computed once per batch and added in every layer;
//! - cross-attention keys and values of every decoder layer come from one
//!   matrix product in [`Seq2SeqNet::start`] and stay in the
//!   [`LayerState`]s; self-attention writes into preallocated caches;
//! - the decoder's position bias for the one new position `len` against keys
//!   `0..=len` uses unidirectional buckets, as the reference does;
//! - projections are 2-D matrix products over all rows and positions; the
//!   projections that read the same input (q/k/v, `wi_0`/`wi_1`, the
//!   cross-attention keys and values of all layers) are stacked into one
//!   weight, dense or quantized, so a step runs few, large products;
//! - T5 does not scale queries; with tied embeddings (or an explicit
//!   `scale_decoder_outputs`, which transformers 5 writes) the decoder output
//!   is scaled by `d_model^-0.5` before the output projection.
//!
//! Computation is in f32, except on an accelerator with a bf16 safetensors
//! checkpoint (bf16 there; f16 is never used: T5 overflows it). GGUF
//! matrices stay quantized and run through candle's quantized matmul. GGUF
//! files in llama.cpp's own T5 layout (`enc.blk.N.attn_q`, ...) are refused
//! with an error that says so.
//!
//! [`load`] takes the files as [`T5Files`] ([`T5Files::from_dir`] fills it
//! from a checkpoint directory). The tokenizer is `tokenizer.json`, else one
//! built from `spiece.model` (see [`load_tokenizer`]).
//!
//! ## What a task means for the input text
//! The pipeline has already put the job's `prefix` in front of the text.
//! Then, with `</s>` appended to the tokenizer's ids:
//! - a MADLAD-style vocabulary (it has `<2xx>` target tags): a translation
//!   whose text does not start with a `<2..>` tag gets `<2{to}> ` put in
//!   front; a target the vocabulary has no tag for is a per-record error
//!   naming the model and the language. Summaries get nothing added.
//! - any other vocabulary (flan-t5, mT5): unless the text already starts
//!   with a task prompt (it begins with `summarize`, `summarise` or
//!   `translate` and has a `:` within its first 80 characters on the first
//!   line), a translation gets `translate {from} to {to}: ` (English
//!   language names) and a summary `summarize: `.
//!
//! [`T5Text::languages`] lists the `<2xx>` tags of a MADLAD-style vocabulary
//! and nothing otherwise (the prompt decides).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Tensor};
use serde::Deserialize;
use tokenizers::{AddedToken, Tokenizer};

use super::gguf_reader::GgufReader;
use super::seq2seq::{
    attend, attend_grouped, key_bias, CheckpointGeneration, DecoderState, Family, LayerState,
    OneOrMany, Seq2SeqModel, Seq2SeqNet, Seq2SeqText, SpecialIds,
};
use super::Task;
use crate::error::{Error, Result};

fn model_error(model: &str, message: impl Into<String>) -> Error {
    Error::Model {
        model: model.to_string(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// The activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `relu`.
    Relu,
    /// `gelu`: the exact (erf) GELU.
    GeluErf,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation
    /// (`gated-gelu` means this one, as in the reference).
    GeluTanh,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Relu => x.relu(),
            Activation::GeluErf => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Silu => x.silu(),
        }
    }
}

/// `config.json` as published (the keys we read; others are ignored).
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: usize,
    d_model: usize,
    d_kv: usize,
    d_ff: usize,
    num_layers: usize,
    num_decoder_layers: Option<usize>,
    num_heads: usize,
    #[serde(default = "default_buckets")]
    relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    relative_attention_max_distance: usize,
    #[serde(default = "default_eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "default_ff_proj")]
    feed_forward_proj: String,
    #[serde(default = "default_true")]
    tie_word_embeddings: bool,
    /// transformers 5 writes this when saving; absent, it follows
    /// `tie_word_embeddings`.
    #[serde(default)]
    scale_decoder_outputs: Option<bool>,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    decoder_start_token_id: Option<u32>,
}

fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff_proj() -> String {
    "relu".into()
}
fn default_true() -> bool {
    true
}

/// The hyperparameters of a T5 checkpoint, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    /// Rows of the embedding matrix (and logits per step).
    pub vocab_size: usize,
    /// Hidden width.
    pub d_model: usize,
    /// Width of one attention head.
    pub d_kv: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Decoder layers.
    pub num_decoder_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Relative position buckets.
    pub relative_attention_num_buckets: usize,
    /// Distance from which all positions share a bucket.
    pub relative_attention_max_distance: usize,
    /// RMS norm epsilon.
    pub layer_norm_epsilon: f64,
    /// The feed-forward activation.
    pub activation: Activation,
    /// Whether the feed-forward block is gated (`wi_0`, `wi_1`).
    pub gated: bool,
    /// Whether the output projection is the shared embedding.
    pub tie_word_embeddings: bool,
    /// Whether the decoder output is scaled by `d_model^-0.5` before the
    /// output projection (the tied checkpoints do).
    pub scale_decoder_outputs: bool,
    /// Padding id.
    pub pad_token_id: u32,
    /// End of sequence.
    pub eos_token_id: u32,
    /// First decoder token.
    pub decoder_start_token_id: u32,
}

impl T5Config {
    /// Reads and validates `config.json` of model `model`.
    pub fn read(model: &str, path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io("cannot read", path))?;
        Self::parse(model, &text).map_err(|e| match e {
            Error::Model { model, message } => Error::Model {
                model,
                message: format!("`{}`: {message}", path.display()),
            },
            other => other,
        })
    }

    /// Parses and validates the text of a `config.json`.
    pub fn parse(model: &str, json: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(json)
            .map_err(|e| model_error(model, format!("not a valid T5 config: {e}")))?;
        if let Some(t) = &raw.model_type {
            if t != "t5" && t != "mt5" {
                return Err(model_error(
                    model,
                    format!("model_type `{t}` is not supported by the T5 family (t5, mt5)"),
                ));
            }
        }
        let (activation, gated) = parse_ff_proj(&raw.feed_forward_proj).ok_or_else(|| {
            model_error(
                model,
                format!(
                    "unsupported feed_forward_proj `{}` (supported: relu, gelu, gelu_new, \
                     gelu_pytorch_tanh, gelu_fast, silu, swish, each optionally `gated-`)",
                    raw.feed_forward_proj
                ),
            )
        })?;
        let positive = [
            ("vocab_size", raw.vocab_size),
            ("d_model", raw.d_model),
            ("d_kv", raw.d_kv),
            ("d_ff", raw.d_ff),
            ("num_layers", raw.num_layers),
            ("num_heads", raw.num_heads),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(model_error(model, format!("`{key}` must be positive")));
            }
        }
        let num_decoder_layers = raw.num_decoder_layers.unwrap_or(raw.num_layers);
        if num_decoder_layers == 0 {
            return Err(model_error(model, "`num_decoder_layers` must be positive"));
        }
        // Bidirectional buckets halve the count, and the exact range is half
        // of that: fewer than 4 leaves no exact bucket.
        if raw.relative_attention_num_buckets < 4 {
            return Err(model_error(
                model,
                format!(
                    "relative_attention_num_buckets = {} is too small (at least 4)",
                    raw.relative_attention_num_buckets
                ),
            ));
        }
        if raw.relative_attention_max_distance <= raw.relative_attention_num_buckets / 4 {
            return Err(model_error(
                model,
                format!(
                    "relative_attention_max_distance = {} must exceed a quarter of the buckets",
                    raw.relative_attention_max_distance
                ),
            ));
        }
        Ok(T5Config {
            vocab_size: raw.vocab_size,
            d_model: raw.d_model,
            d_kv: raw.d_kv,
            d_ff: raw.d_ff,
            num_layers: raw.num_layers,
            num_decoder_layers,
            num_heads: raw.num_heads,
            relative_attention_num_buckets: raw.relative_attention_num_buckets,
            relative_attention_max_distance: raw.relative_attention_max_distance,
            layer_norm_epsilon: raw.layer_norm_epsilon,
            activation,
            gated,
            tie_word_embeddings: raw.tie_word_embeddings,
            scale_decoder_outputs: raw.scale_decoder_outputs.unwrap_or(raw.tie_word_embeddings),
            pad_token_id: raw.pad_token_id.unwrap_or(0),
            eos_token_id: raw
                .eos_token_id
                .as_ref()
                .and_then(OneOrMany::first)
                .unwrap_or(1),
            decoder_start_token_id: raw.decoder_start_token_id.unwrap_or(0),
        })
    }

    /// Width of all heads together.
    pub fn inner(&self) -> usize {
        self.num_heads * self.d_kv
    }
}

/// `feed_forward_proj` as the reference reads it: `[gated-]ACT`, with
/// `gated-gelu` meaning the tanh approximation.
fn parse_ff_proj(s: &str) -> Option<(Activation, bool)> {
    let parts: Vec<&str> = s.split('-').collect();
    let (gated, act) = match parts.as_slice() {
        [act] => (false, *act),
        ["gated", act] => (true, *act),
        _ => return None,
    };
    let act = match act {
        "relu" => Activation::Relu,
        "gelu" if gated => Activation::GeluTanh,
        "gelu" => Activation::GeluErf,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        "silu" | "swish" => Activation::Silu,
        _ => return None,
    };
    Some((act, gated))
}

/// The bucket of a relative position `key - query`, as the reference's
/// `_relative_position_bucket` computes it (float32 logarithm, truncated).
pub fn relative_bucket(
    relative: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> u32 {
    let mut nb = num_buckets as i64;
    let mut bucket = 0i64;
    let rp = if bidirectional {
        nb /= 2;
        if relative > 0 {
            bucket += nb;
        }
        relative.abs()
    } else {
        -relative.min(0)
    };
    let max_exact = nb / 2;
    if rp < max_exact {
        bucket += rp;
    } else {
        let scale = (max_distance as f64 / max_exact as f64).ln() as f32;
        let large = ((rp as f32 / max_exact as f32).ln() / scale * (nb - max_exact) as f32) as i64;
        bucket += (max_exact + large).min(nb - 1);
    }
    bucket as u32
}

// ---------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------

/// A weight matrix `[out, in]` as stored: dense (on the device, in the
/// compute dtype) or quantized (still on the CPU: stacking works on the
/// bytes, which then go to the device once).
#[derive(Clone)]
enum Weight {
    Dense(Tensor),
    Quant(Arc<QTensor>),
}

/// A projection `x [n, in] -> [n, out]` as one 2-D matrix product.
#[derive(Clone)]
enum Linear {
    /// `[out, in]` in the compute dtype.
    Dense(Tensor),
    /// Quantized: candle's quantized matmul.
    Quant(QMatMul),
    /// Projections that could not be stacked (different quantizations):
    /// run one by one, outputs concatenated.
    Parts(Vec<Linear>),
}

impl Linear {
    fn new(w: Weight, device: &Device) -> candle_core::Result<Self> {
        Ok(match w {
            Weight::Dense(t) => Linear::Dense(t),
            Weight::Quant(q) if device.is_cpu() => Linear::Quant(QMatMul::from_arc(q)?),
            Weight::Quant(q) => {
                let storage = QStorage::from_data(q.data()?, device, q.dtype())?;
                let q = QTensor::new(storage, q.shape().clone())?;
                Linear::Quant(QMatMul::from_arc(Arc::new(q))?)
            }
        })
    }

    /// One projection whose output is the outputs of `parts` side by side.
    fn stack(parts: Vec<Weight>, device: &Device) -> candle_core::Result<Self> {
        if parts.len() == 1 {
            return Linear::new(parts.into_iter().next().expect("one part"), device);
        }
        if parts.iter().all(|w| matches!(w, Weight::Dense(_))) {
            let ts: Vec<Tensor> = parts
                .into_iter()
                .map(|w| match w {
                    Weight::Dense(t) => t,
                    Weight::Quant(_) => unreachable!(),
                })
                .collect();
            return Ok(Linear::Dense(Tensor::cat(&ts, 0)?));
        }
        let qs: Vec<&Arc<QTensor>> = parts
            .iter()
            .filter_map(|w| match w {
                Weight::Quant(q) => Some(q),
                Weight::Dense(_) => None,
            })
            .collect();
        let same = qs.len() == parts.len()
            && qs.iter().all(|q| q.dtype() == qs[0].dtype())
            && qs
                .iter()
                .all(|q| q.shape().dims()[1] == qs[0].shape().dims()[1]);
        if same {
            // Quantized blocks never straddle rows, so stacking rows is
            // concatenating the bytes.
            let cols = qs[0].shape().dims()[1];
            let rows: usize = qs.iter().map(|q| q.shape().dims()[0]).sum();
            let mut bytes = Vec::new();
            for q in &qs {
                bytes.extend_from_slice(&q.data()?);
            }
            let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, qs[0].dtype())?;
            let q = QTensor::new(storage, (rows, cols))?;
            return Linear::new(Weight::Quant(Arc::new(q)), device);
        }
        Ok(Linear::Parts(
            parts
                .into_iter()
                .map(|w| Linear::new(w, device))
                .collect::<candle_core::Result<_>>()?,
        ))
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::Dense(w) => x.matmul(&w.t()?),
            Linear::Quant(q) => q.forward(&x.contiguous()?),
            Linear::Parts(ps) => {
                let outs = ps
                    .iter()
                    .map(|p| p.forward(x))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&outs, 1)
            }
        }
    }
}

/// Where the tensors come from.
enum Source {
    Safetensors(MmapedSafetensors),
    Gguf {
        content: gguf_file::Content,
        file: GgufReader<File>,
    },
}

/// Reads named tensors, checks their shapes, counts the parameters.
struct Loader<'a> {
    model: &'a str,
    path: PathBuf,
    source: Source,
    device: Device,
    dtype: DType,
    seen: HashSet<String>,
    parameters: usize,
}

impl<'a> Loader<'a> {
    fn open(model: &'a str, path: &Path, device: &Device) -> Result<Self> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let candle_err =
            |what: &str| Error::candle(model, &format!("cannot open {what} `{}`", path.display()));
        let source = if name.ends_with(".gguf") {
            let mut file = GgufReader::open(path).map_err(Error::io("cannot open", path))?;
            let content = gguf_file::Content::read(&mut file).map_err(candle_err("GGUF file"))?;
            if content.tensor_infos.contains_key("token_embd.weight") {
                return Err(model_error(
                    model,
                    format!(
                        "`{}` uses llama.cpp's T5 tensor names (`enc.blk.N.attn_q`, ...); \
                         only GGUF files with the Hugging Face names (`shared.weight`, \
                         `encoder.block.N.layer.0.SelfAttention.q.weight`, ...) are supported, \
                         as candle's quantized T5 writes them",
                        path.display()
                    ),
                ));
            }
            Source::Gguf { content, file }
        } else if name.ends_with(".index.json") {
            let shards = shard_paths(model, path)?;
            // SAFETY: the files are mapped read-only; like every mmap reader we
            // rely on nobody truncating them while the model is loaded.
            let st = unsafe { MmapedSafetensors::multi(&shards) }
                .map_err(candle_err("safetensors shards of"))?;
            Source::Safetensors(st)
        } else if name.ends_with(".safetensors") {
            // SAFETY: as above.
            let st =
                unsafe { MmapedSafetensors::new(path) }.map_err(candle_err("safetensors file"))?;
            Source::Safetensors(st)
        } else {
            return Err(model_error(
                model,
                format!(
                    "`{}`: T5 weights must be `*.safetensors`, `*.safetensors.index.json` or `*.gguf`",
                    path.display()
                ),
            ));
        };
        let mut loader = Loader {
            model,
            path: path.to_path_buf(),
            source,
            device: device.clone(),
            dtype: DType::F32,
            seen: HashSet::new(),
            parameters: 0,
        };
        loader.dtype = loader.compute_dtype();
        Ok(loader)
    }

    /// f32, except bf16 checkpoints on an accelerator.
    fn compute_dtype(&self) -> DType {
        match &self.source {
            Source::Safetensors(st) if !self.device.is_cpu() => {
                let first = ["shared.weight", "decoder.embed_tokens.weight"]
                    .iter()
                    .find_map(|n| st.get(n).ok().and_then(|v| DType::try_from(v.dtype()).ok()));
                match first {
                    Some(DType::BF16) => DType::BF16,
                    _ => DType::F32,
                }
            }
            _ => DType::F32,
        }
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match &self.source {
            Source::Safetensors(st) => st.get(name).ok().map(|v| v.shape().to_vec()),
            Source::Gguf { content, .. } => content
                .tensor_infos
                .get(name)
                .map(|i| i.shape.dims().to_vec()),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }

    fn check(&mut self, name: &str, want: &[usize]) -> Result<()> {
        match self.shape(name) {
            None => Err(model_error(
                self.model,
                format!("`{}` has no tensor `{name}`", self.path.display()),
            )),
            Some(got) if got != want => Err(model_error(
                self.model,
                format!(
                    "tensor `{name}` in `{}` has shape {got:?}, expected {want:?}",
                    self.path.display()
                ),
            )),
            Some(got) => {
                if self.seen.insert(name.to_string()) {
                    self.parameters += got.iter().product::<usize>();
                }
                Ok(())
            }
        }
    }

    fn load_err(&self, name: &str) -> impl FnOnce(candle_core::Error) -> Error {
        Error::candle(
            self.model,
            &format!("cannot load tensor `{name}` from `{}`", self.path.display()),
        )
    }

    /// A tensor in the compute dtype (dequantized when quantized).
    fn dense(&mut self, name: &str, want: &[usize]) -> Result<Tensor> {
        self.check(name, want)?;
        let err = self.load_err(name);
        let t = match &mut self.source {
            Source::Safetensors(st) => st.load(name, &self.device),
            Source::Gguf { content, file } => content
                .tensor(file, name, &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .and_then(|t| t.to_device(&self.device)),
        };
        t.and_then(|t| t.to_dtype(self.dtype)).map_err(err)
    }

    /// A weight matrix `[out, in]`, kept quantized when it is.
    fn weight(&mut self, name: &str, out: usize, input: usize) -> Result<Weight> {
        match self.source {
            Source::Safetensors(_) => Ok(Weight::Dense(self.dense(name, &[out, input])?)),
            Source::Gguf { .. } => {
                self.check(name, &[out, input])?;
                let err = self.load_err(name);
                let Source::Gguf { content, file } = &mut self.source else {
                    unreachable!()
                };
                // Read on the CPU: stacking works on the bytes, which then
                // go to the device once.
                let q = content.tensor(file, name, &Device::Cpu).map_err(err)?;
                let err = self.load_err(name);
                match q.dtype() {
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => Ok(Weight::Dense(
                        q.dequantize(&Device::Cpu)
                            .and_then(|t| t.to_device(&self.device))
                            .and_then(|t| t.to_dtype(self.dtype))
                            .map_err(err)?,
                    )),
                    _ => Ok(Weight::Quant(Arc::new(q))),
                }
            }
        }
    }

    /// One projection `[out, in]`.
    fn linear(&mut self, name: &str, out: usize, input: usize) -> Result<Linear> {
        let w = self.weight(name, out, input)?;
        Linear::new(w, &self.device).map_err(self.load_err(name))
    }

    fn stack(&self, parts: Vec<Weight>, what: &str) -> Result<Linear> {
        Linear::stack(parts, &self.device).map_err(Error::candle(
            self.model,
            &format!("cannot stack the weights of {what}"),
        ))
    }
}

/// The shard files named by a `model.safetensors.index.json`.
fn shard_paths(model: &str, index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(Error::io("cannot read", index))?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| {
        model_error(
            model,
            format!("`{}` is not a safetensors index: {e}", index.display()),
        )
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<&String> = parsed.weight_map.values().collect();
    files.sort();
    files.dedup();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

// ---------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------

/// A feed-forward block: `wo(act(wi x))` or `wo(act(wi_0 x) * wi_1 x)`, with
/// `wi_0` and `wi_1` stacked.
#[derive(Clone)]
struct FeedForward {
    wi: Linear,
    wo: Linear,
    act: Activation,
    gated: bool,
    d_ff: usize,
}

impl FeedForward {
    fn load(l: &mut Loader, prefix: &str, cfg: &T5Config) -> Result<Self> {
        let (d, f) = (cfg.d_model, cfg.d_ff);
        let wi = if cfg.gated {
            let w0 = l.weight(&format!("{prefix}.wi_0.weight"), f, d)?;
            let w1 = l.weight(&format!("{prefix}.wi_1.weight"), f, d)?;
            l.stack(vec![w0, w1], prefix)?
        } else {
            l.linear(&format!("{prefix}.wi.weight"), f, d)?
        };
        let wo = l.linear(&format!("{prefix}.wo.weight"), d, f)?;
        Ok(FeedForward {
            wi,
            wo,
            act: cfg.activation,
            gated: cfg.gated,
            d_ff: f,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.wi.forward(x)?;
        let h = if self.gated {
            let gate = self.act.apply(&h.narrow(1, 0, self.d_ff)?)?;
            (gate * h.narrow(1, self.d_ff, self.d_ff)?)?
        } else {
            self.act.apply(&h)?
        };
        self.wo.forward(&h)
    }
}

#[derive(Clone)]
struct EncoderLayer {
    attn_norm: Tensor,
    qkv: Linear,
    o: Linear,
    ff_norm: Tensor,
    ff: FeedForward,
}

#[derive(Clone)]
struct DecoderLayer {
    self_norm: Tensor,
    self_qkv: Linear,
    self_o: Linear,
    cross_norm: Tensor,
    cross_q: Linear,
    cross_o: Linear,
    ff_norm: Tensor,
    ff: FeedForward,
}

/// The T5 encoder-decoder network. Cloning shares the weights.
#[derive(Clone)]
pub struct T5Net {
    cfg: T5Config,
    device: Device,
    dtype: DType,
    /// `[vocab, d]`, for looking tokens up.
    embed: Tensor,
    /// `[buckets, heads]` of encoder block 0.
    enc_bias: Tensor,
    /// `[buckets, heads]` of decoder block 0.
    dec_bias: Tensor,
    encoder: Vec<EncoderLayer>,
    enc_norm: Tensor,
    decoder: Vec<DecoderLayer>,
    dec_norm: Tensor,
    /// Cross-attention keys and values of every decoder layer, stacked
    /// `[k_0; v_0; k_1; v_1; ...]`.
    cross_kv: Linear,
    lm_head: Linear,
    parameters: usize,
}

impl T5Net {
    /// Loads the network of model `model` from `weights` (safetensors,
    /// safetensors index or GGUF).
    pub fn load(model: &str, cfg: &T5Config, weights: &Path, device: &Device) -> Result<Self> {
        let mut l = Loader::open(model, weights, device)?;
        let (d, inner, heads) = (cfg.d_model, cfg.inner(), cfg.num_heads);
        let buckets = cfg.relative_attention_num_buckets;
        let shared_name = [
            "shared.weight",
            "decoder.embed_tokens.weight",
            "encoder.embed_tokens.weight",
        ]
        .into_iter()
        .find(|n| l.has(n))
        .unwrap_or("shared.weight");
        let shared = l.weight(shared_name, cfg.vocab_size, d)?;
        let embed = match &shared {
            Weight::Dense(t) => t.clone(),
            Weight::Quant(q) => q
                .dequantize(&Device::Cpu)
                .and_then(|t| t.to_device(device))
                .and_then(|t| t.to_dtype(l.dtype))
                .map_err(l.load_err(shared_name))?,
        };
        let norm = |l: &mut Loader, name: String| l.dense(&name, &[d]);

        let mut encoder = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("encoder.block.{i}.layer");
            let a = format!("{p}.0.SelfAttention");
            let q = l.weight(&format!("{a}.q.weight"), inner, d)?;
            let k = l.weight(&format!("{a}.k.weight"), inner, d)?;
            let v = l.weight(&format!("{a}.v.weight"), inner, d)?;
            encoder.push(EncoderLayer {
                attn_norm: norm(&mut l, format!("{p}.0.layer_norm.weight"))?,
                qkv: l.stack(vec![q, k, v], &a)?,
                o: l.linear(&format!("{a}.o.weight"), d, inner)?,
                ff_norm: norm(&mut l, format!("{p}.1.layer_norm.weight"))?,
                ff: FeedForward::load(&mut l, &format!("{p}.1.DenseReluDense"), cfg)?,
            });
        }
        let enc_bias = l.dense(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            &[buckets, heads],
        )?;
        let enc_norm = norm(&mut l, "encoder.final_layer_norm.weight".into())?;

        let mut decoder = Vec::with_capacity(cfg.num_decoder_layers);
        let mut cross_kv = Vec::with_capacity(2 * cfg.num_decoder_layers);
        for i in 0..cfg.num_decoder_layers {
            let p = format!("decoder.block.{i}.layer");
            let a = format!("{p}.0.SelfAttention");
            let c = format!("{p}.1.EncDecAttention");
            let q = l.weight(&format!("{a}.q.weight"), inner, d)?;
            let k = l.weight(&format!("{a}.k.weight"), inner, d)?;
            let v = l.weight(&format!("{a}.v.weight"), inner, d)?;
            cross_kv.push(l.weight(&format!("{c}.k.weight"), inner, d)?);
            cross_kv.push(l.weight(&format!("{c}.v.weight"), inner, d)?);
            decoder.push(DecoderLayer {
                self_norm: norm(&mut l, format!("{p}.0.layer_norm.weight"))?,
                self_qkv: l.stack(vec![q, k, v], &a)?,
                self_o: l.linear(&format!("{a}.o.weight"), d, inner)?,
                cross_norm: norm(&mut l, format!("{p}.1.layer_norm.weight"))?,
                cross_q: l.linear(&format!("{c}.q.weight"), inner, d)?,
                cross_o: l.linear(&format!("{c}.o.weight"), d, inner)?,
                ff_norm: norm(&mut l, format!("{p}.2.layer_norm.weight"))?,
                ff: FeedForward::load(&mut l, &format!("{p}.2.DenseReluDense"), cfg)?,
            });
        }
        let dec_bias = l.dense(
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            &[buckets, heads],
        )?;
        let dec_norm = norm(&mut l, "decoder.final_layer_norm.weight".into())?;
        let cross_kv = l.stack(cross_kv, "the cross-attention keys and values")?;
        let lm_head = if cfg.tie_word_embeddings {
            l.stack(vec![shared], "the tied output projection")?
        } else {
            l.linear("lm_head.weight", cfg.vocab_size, d)?
        };
        Ok(T5Net {
            cfg: cfg.clone(),
            device: device.clone(),
            dtype: l.dtype,
            embed,
            enc_bias,
            dec_bias,
            encoder,
            enc_norm,
            decoder,
            dec_norm,
            cross_kv,
            lm_head,
            parameters: l.parameters,
        })
    }

    /// Parameters read from the checkpoint (each tensor once).
    pub fn parameters(&self) -> usize {
        self.parameters
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The configuration.
    pub fn config(&self) -> &T5Config {
        &self.cfg
    }

    fn norm(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, w, self.cfg.layer_norm_epsilon as f32)
    }

    /// The relative position bias `[1, heads, q_len, k_len]` of queries at
    /// `q_start..q_start + q_len` against keys `0..k_len`.
    fn position_bias(
        &self,
        table: &Tensor,
        q_start: usize,
        q_len: usize,
        k_len: usize,
        bidirectional: bool,
    ) -> candle_core::Result<Tensor> {
        let (nb, md) = (
            self.cfg.relative_attention_num_buckets,
            self.cfg.relative_attention_max_distance,
        );
        // Buckets depend on `key - query` only: compute each distance once.
        let lo = -((q_start + q_len) as i64 - 1);
        let hi = k_len as i64 - 1 - q_start as i64;
        let by_distance: Vec<u32> = (lo..=hi.max(lo))
            .map(|r| relative_bucket(r, bidirectional, nb, md))
            .collect();
        let mut idx = Vec::with_capacity(q_len * k_len);
        for i in q_start..q_start + q_len {
            for j in 0..k_len {
                idx.push(by_distance[(j as i64 - i as i64 - lo) as usize]);
            }
        }
        let idx = Tensor::from_vec(idx, q_len * k_len, &self.device)?;
        let heads = self.cfg.num_heads;
        table
            .index_select(&idx, 0)?
            .reshape((q_len, k_len, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()
    }

    /// Splits a stacked `[rows * len, parts * inner]` projection into
    /// `parts` tensors `[rows, heads, len, d_kv]`.
    fn split(
        &self,
        x: &Tensor,
        rows: usize,
        len: usize,
        parts: usize,
    ) -> candle_core::Result<Vec<Tensor>> {
        let (h, dk) = (self.cfg.num_heads, self.cfg.d_kv);
        let all = x
            .reshape((rows, len, parts, h, dk))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        (0..parts).map(|p| all.get(p)).collect()
    }

    /// `[rows, heads, len, d_kv]` back to `[rows * len, inner]`.
    fn merge(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (rows, _, len, _) = x.dims4()?;
        x.transpose(1, 2)?.reshape((rows * len, self.cfg.inner()))
    }

    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.norm(x, &self.dec_norm)?;
        let x = if self.cfg.scale_decoder_outputs {
            (x * (self.cfg.d_model as f64).powf(-0.5))?
        } else {
            x
        };
        self.lm_head.forward(&x)?.to_dtype(DType::F32)
    }

    /// The decoder run over whole sequences `tokens` `[rows, len]` without
    /// caches (causal mask, full position bias): the reference the cached
    /// steps are checked against. Returns `[rows, len, vocab]`.
    #[cfg(test)]
    fn decode_full(
        &self,
        encoded: &Tensor,
        mask: &Tensor,
        tokens: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (rows, len) = tokens.dims2()?;
        let (_, src, d) = encoded.dims3()?;
        let enc = encoded.reshape((rows * src, d))?;
        let causal: Vec<f32> = (0..len)
            .flat_map(|i| (0..len).map(move |j| if j > i { super::seq2seq::MASKED } else { 0.0 }))
            .collect();
        let causal =
            Tensor::from_vec(causal, (1, 1, len, len), &self.device)?.to_dtype(self.dtype)?;
        let self_bias = self
            .position_bias(&self.dec_bias, 0, len, len, false)?
            .broadcast_add(&causal)?;
        let cross_bias = key_bias(mask)?.to_dtype(self.dtype)?;
        let mut x = self.embed.index_select(&tokens.flatten_all()?, 0)?;
        let inner = self.cfg.inner();
        let cross = self.cross_kv.forward(&enc)?;
        for (i, layer) in self.decoder.iter().enumerate() {
            let n = self.norm(&x, &layer.self_norm)?;
            let qkv = self.split(&layer.self_qkv.forward(&n)?, rows, len, 3)?;
            let a = attend(&qkv[0], &qkv[1], &qkv[2], Some(&self_bias))?;
            x = (x + layer.self_o.forward(&self.merge(&a)?)?)?;
            let n = self.norm(&x, &layer.cross_norm)?;
            let q = self.split(&layer.cross_q.forward(&n)?, rows, len, 1)?;
            let kv = cross.narrow(1, 2 * i * inner, 2 * inner)?;
            let kv = self.split(&kv, rows, src, 2)?;
            let a = attend(&q[0], &kv[0], &kv[1], Some(&cross_bias))?;
            x = (x + layer.cross_o.forward(&self.merge(&a)?)?)?;
            let n = self.norm(&x, &layer.ff_norm)?;
            x = (x + layer.ff.forward(&n)?)?;
        }
        self.logits(&x)?.reshape((rows, len, ()))
    }
}

impl Seq2SeqNet for T5Net {
    fn encode(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (rows, len) = ids.dims2()?;
        let bias = self
            .position_bias(&self.enc_bias, 0, len, len, true)?
            .broadcast_add(&key_bias(mask)?.to_dtype(self.dtype)?)?
            .contiguous()?;
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?;
        for layer in &self.encoder {
            let n = self.norm(&x, &layer.attn_norm)?;
            let qkv = self.split(&layer.qkv.forward(&n)?, rows, len, 3)?;
            let a = attend(&qkv[0], &qkv[1], &qkv[2], Some(&bias))?;
            x = (x + layer.o.forward(&self.merge(&a)?)?)?;
            let n = self.norm(&x, &layer.ff_norm)?;
            x = (x + layer.ff.forward(&n)?)?;
        }
        self.norm(&x, &self.enc_norm)?
            .reshape((rows, len, self.cfg.d_model))
    }

    fn start(
        &self,
        encoded: &Tensor,
        mask: &Tensor,
        capacity: usize,
    ) -> candle_core::Result<DecoderState> {
        let (rows, src, d) = encoded.dims3()?;
        let layers = self.decoder.len();
        let kv = self
            .cross_kv
            .forward(&encoded.contiguous()?.reshape((rows * src, d))?)?;
        let kv = self.split(&kv, rows, src, 2 * layers)?;
        let states = (0..layers)
            .map(|l| LayerState::new(kv[2 * l].clone(), kv[2 * l + 1].clone(), capacity))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(DecoderState {
            layers: states,
            cross_bias: key_bias(mask)?.to_dtype(self.dtype)?,
            len: 0,
            extra: Vec::new(),
            group: 1,
        })
    }

    fn step(&self, state: &mut DecoderState, tokens: &Tensor) -> candle_core::Result<Tensor> {
        let rows = tokens.dim(0)?;
        let pos = state.len;
        let inner = self.cfg.inner();
        let self_bias = self.position_bias(&self.dec_bias, pos, 1, pos + 1, false)?;
        let mut x = self.embed.index_select(tokens, 0)?;
        let cross_bias = &state.cross_bias;
        let group = state.group;
        for (layer, st) in self.decoder.iter().zip(state.layers.iter_mut()) {
            let n = self.norm(&x, &layer.self_norm)?;
            let qkv = self.split(&layer.self_qkv.forward(&n)?, rows, 1, 3)?;
            let (k, v) = st.append(&qkv[1], &qkv[2], pos)?;
            let a = attend(&qkv[0], &k, &v, Some(&self_bias))?;
            // One position: [rows, heads, 1, d_kv] is already [rows, inner].
            x = (x + layer.self_o.forward(&a.reshape((rows, inner))?)?)?;
            let n = self.norm(&x, &layer.cross_norm)?;
            let q = self.split(&layer.cross_q.forward(&n)?, rows, 1, 1)?;
            let a = attend_grouped(&q[0], &st.cross_k, &st.cross_v, Some(cross_bias), group)?;
            x = (x + layer.cross_o.forward(&a.reshape((rows, inner))?)?)?;
            let n = self.norm(&x, &layer.ff_norm)?;
            x = (x + layer.ff.forward(&n)?)?;
        }
        state.len += 1;
        self.logits(&x)
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

// ---------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------

/// T5 text handling: task prompts or `<2xx>` target tags, `</s>`-terminated
/// ids, decoding without special tokens.
pub struct T5Text {
    model: Arc<str>,
    tokenizer: Arc<Tokenizer>,
    eos: u32,
    /// `<2xx>` tags of a MADLAD-style vocabulary, by code; empty otherwise.
    targets: BTreeMap<String, u32>,
}

impl T5Text {
    /// Text handling of model `model` with `tokenizer` (ids are the
    /// checkpoint's) and end token `eos`.
    pub fn new(model: &str, tokenizer: Tokenizer, eos: u32) -> Self {
        let targets = tokenizer
            .get_vocab(true)
            .into_iter()
            .filter_map(|(tok, id)| target_code(&tok).map(|c| (c.to_string(), id)))
            .collect();
        T5Text {
            model: model.into(),
            tokenizer: Arc::new(tokenizer),
            eos,
            targets,
        }
    }

    /// Whether the vocabulary has `<2xx>` target tags (MADLAD-400).
    pub fn tagged(&self) -> bool {
        !self.targets.is_empty()
    }

    /// The text the tokenizer sees for `task` (see the module docs).
    pub fn prompt<'t>(
        &self,
        task: Task,
        text: &'t str,
    ) -> std::result::Result<Cow<'t, str>, String> {
        if self.tagged() {
            return match task {
                Task::Translate { to, .. } if !self.starts_with_tag(text) => {
                    if !self.targets.contains_key(to.code) {
                        return Err(format!(
                            "model `{}` cannot translate into {} (`{}`): its vocabulary has no `<2{}>` tag",
                            self.model, to.name, to.code, to.code
                        ));
                    }
                    Ok(Cow::Owned(format!("<2{}> {text}", to.code)))
                }
                _ => Ok(Cow::Borrowed(text)),
            };
        }
        if has_task_prompt(text) {
            return Ok(Cow::Borrowed(text));
        }
        Ok(Cow::Owned(match task {
            Task::Translate { from, to } => {
                format!("translate {} to {}: {text}", from.name, to.name)
            }
            Task::Summarize { .. } => format!("summarize: {text}"),
        }))
    }

    /// The tokenizer's ids of `text` as it is, with `</s>` appended.
    pub fn tokenize(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| format!("model `{}`: cannot tokenize the input: {e}", self.model))?;
        let mut ids = enc.get_ids().to_vec();
        ids.push(self.eos);
        Ok(ids)
    }

    fn starts_with_tag(&self, text: &str) -> bool {
        let t = text.trim_start();
        t.find('>')
            .and_then(|end| target_code(&t[..=end]))
            .is_some_and(|c| self.targets.contains_key(c))
    }
}

/// `xx` of a `<2xx>` tag.
fn target_code(token: &str) -> Option<&str> {
    let code = token.strip_prefix("<2")?.strip_suffix('>')?;
    let ok = !code.is_empty()
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    ok.then_some(code)
}

/// Whether `text` starts with a T5 task prompt (`summarize: `,
/// `translate English to German: `, ...).
fn has_task_prompt(text: &str) -> bool {
    let head: String = text.trim_start().chars().take(80).collect();
    let first_line = head.lines().next().unwrap_or("");
    let Some(colon) = first_line.find(':') else {
        return false;
    };
    let before = first_line[..colon].to_lowercase();
    ["summarize", "summarise", "translate"]
        .iter()
        .any(|v| before.starts_with(v))
}

impl Seq2SeqText for T5Text {
    fn encode(&self, task: Task, text: &str) -> std::result::Result<Vec<u32>, String> {
        self.tokenize(&self.prompt(task, text)?)
    }

    fn forced_bos(&self, _task: Task) -> std::result::Result<Option<u32>, String> {
        Ok(None)
    }

    fn decode(&self, ids: &[u32]) -> String {
        match self.tokenizer.decode(ids, true) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(model = %self.model, "cannot decode generated ids: {e}");
                String::new()
            }
        }
    }

    fn languages(&self) -> Vec<String> {
        self.targets.keys().cloned().collect()
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// The files of a T5 checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct T5Files {
    /// `config.json` (also for GGUF weights: they carry no hyperparameters).
    pub config: PathBuf,
    /// `model.safetensors`, `model.safetensors.index.json` or a `.gguf` file.
    pub weights: PathBuf,
    /// `tokenizer.json`, preferred when present.
    pub tokenizer_json: Option<PathBuf>,
    /// `spiece.model` (SentencePiece), used without a `tokenizer.json`.
    pub spiece: Option<PathBuf>,
    /// `generation_config.json`.
    pub generation_config: Option<PathBuf>,
}

impl T5Files {
    /// The files of a checkpoint directory in the Hugging Face layout: the
    /// weights are `model.safetensors`, else `model.safetensors.index.json`,
    /// else the only `*.gguf` file.
    pub fn from_dir(model: &str, dir: &Path) -> Result<Self> {
        let opt = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        let weights = match (
            opt("model.safetensors"),
            opt("model.safetensors.index.json"),
        ) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => {
                let mut ggufs: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map_err(Error::io("cannot list", dir))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
                    .collect();
                ggufs.sort();
                match ggufs.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(model_error(
                            model,
                            format!(
                                "`{}` has no model.safetensors, model.safetensors.index.json or .gguf file",
                                dir.display()
                            ),
                        ))
                    }
                    _ => {
                        return Err(model_error(
                            model,
                            format!("`{}` has several .gguf files; name one", dir.display()),
                        ))
                    }
                }
            }
        };
        Ok(T5Files {
            config: dir.join("config.json"),
            weights,
            tokenizer_json: opt("tokenizer.json"),
            spiece: opt("spiece.model"),
            generation_config: opt("generation_config.json"),
        })
    }
}

/// The tokenizer of a checkpoint: `tokenizer.json`, else `spiece.model`.
///
/// From `spiece.model`, the `<2xx>` target tags become added tokens (not
/// special, not normalized), as transformers' conversion makes them: they
/// are split off the raw text before the SentencePiece model sees it, so
/// `"<2fa> The"` is `<2fa>`, `▁The` (SentencePiece itself would give `▁`,
/// `<2fa>`, `▁The`), and the ids match those of the published
/// `tokenizer.json`.
pub fn load_tokenizer(model: &str, files: &T5Files) -> Result<Tokenizer> {
    if let Some(path) = &files.tokenizer_json {
        return Tokenizer::from_file(path).map_err(Error::tokenizer(
            model,
            &format!("failed to load `{}`", path.display()),
        ));
    }
    if let Some(path) = &files.spiece {
        let mut tokenizer = super::spm::SpmModel::open(model, path)?.tokenizer()?;
        let mut tags: Vec<String> = tokenizer
            .get_vocab(false)
            .into_keys()
            .filter(|t| target_code(t).is_some())
            .collect();
        tags.sort();
        let added: Vec<AddedToken> = tags
            .into_iter()
            .map(|t| AddedToken::from(t, false).normalized(false))
            .collect();
        tokenizer
            .add_tokens(added)
            .map_err(Error::tokenizer(model, "failed to add the `<2xx>` tags"))?;
        return Ok(tokenizer);
    }
    Err(model_error(
        model,
        "the checkpoint has neither tokenizer.json nor spiece.model",
    ))
}

/// Loads a T5-family checkpoint (flan-t5, mT5, MADLAD-400) as a
/// [`Seq2SeqModel`]. Special ids come from `config.json`, overridden by
/// `generation_config.json`.
pub fn load(name: &str, files: &T5Files, device: &Device) -> Result<Seq2SeqModel> {
    let cfg = T5Config::read(name, &files.config)?;
    let net = T5Net::load(name, &cfg, &files.weights, device)?;
    let tokenizer = load_tokenizer(name, files)?;
    let defaults = CheckpointGeneration::read(name, files.generation_config.as_deref())?;
    let ids = SpecialIds {
        decoder_start: defaults
            .decoder_start_token_id
            .unwrap_or(cfg.decoder_start_token_id),
        eos: defaults
            .eos_token_id
            .as_ref()
            .and_then(OneOrMany::first)
            .unwrap_or(cfg.eos_token_id),
        pad: defaults.pad_token_id.unwrap_or(cfg.pad_token_id),
    };
    let text = T5Text::new(name, tokenizer, ids.eos);
    Ok(Seq2SeqModel {
        name: name.into(),
        family: Family::T5,
        parameters: net.parameters(),
        vocab: cfg.vocab_size,
        dtype: net.dtype(),
        net: Arc::new(net),
        text: Arc::new(text),
        ids,
        defaults,
        max_source_tokens: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GenSettings;
    use crate::generate::search::{self, EarlyStopping, Row, SearchConfig};
    use crate::models::GenOptions;
    use crate::text::langid::lookup;

    /// SplitMix64: seedable, good enough to fill weights.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in [-1, 1).
        fn uniform(&mut self) -> f32 {
            ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }

        fn below(&mut self, n: u32) -> u32 {
            (self.next_u64() % n as u64) as u32
        }
    }

    const WORDS: &str = "summarize: translate English to Spanish: German: Persian: the a of \
        and in on is was for with said new city river rain flood town day week police court \
        school team won lost game price oil market bank rate cat dog house car road . ,";

    /// `<pad>`, `</s>`, `<unk>`, then (MADLAD-style) `<2es>`, `<2fa>`, then words.
    fn vocabulary(tags: bool) -> Vec<String> {
        let mut v: Vec<String> = ["<pad>", "</s>", "<unk>"].map(String::from).to_vec();
        if tags {
            v.push("<2es>".into());
            v.push("<2fa>".into());
        }
        v.extend(WORDS.split_whitespace().map(String::from));
        v
    }

    /// A word-level `tokenizer.json` (ids = positions in the vocabulary).
    fn tokenizer_json(tags: bool) -> serde_json::Value {
        let vocab = vocabulary(tags);
        let added: Vec<serde_json::Value> = vocab
            .iter()
            .enumerate()
            .filter(|(_, t)| t.starts_with('<'))
            .map(|(i, t)| {
                serde_json::json!({"id": i, "content": t, "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false,
                    "special": !t.starts_with("<2")})
            })
            .collect();
        let map: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), serde_json::json!(i)))
            .collect();
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added, "normalizer": null,
            "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": map, "unk_token": "<unk>"}
        })
    }

    #[derive(Clone, Copy)]
    struct Variant {
        gated: bool,
        tied: bool,
        tags: bool,
    }

    const GATED_TIED: Variant = Variant {
        gated: true,
        tied: true,
        tags: false,
    };
    const RELU_UNTIED: Variant = Variant {
        gated: false,
        tied: false,
        tags: true,
    };

    fn config_json(v: Variant) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["T5ForConditionalGeneration"],
            "model_type": "t5",
            // A few rows more than the tokenizer has, as in real checkpoints.
            "vocab_size": vocabulary(v.tags).len() + 4,
            "d_model": 32, "d_kv": 8, "d_ff": 64, "num_heads": 4,
            "num_layers": 2, "num_decoder_layers": 3,
            "relative_attention_num_buckets": 8,
            "relative_attention_max_distance": 12,
            "layer_norm_epsilon": 1e-6,
            "feed_forward_proj": if v.gated { "gated-gelu" } else { "relu" },
            "tie_word_embeddings": v.tied,
            "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
            "dropout_rate": 0.1, "is_encoder_decoder": true
        })
    }

    /// Every tensor of the checkpoint, in the Hugging Face names, from the
    /// seeded PRNG.
    fn weights(cfg: &T5Config, seed: u64) -> Vec<(String, Tensor)> {
        let mut rng = Rng(seed);
        let mut out = Vec::new();
        let (d, inner, f) = (cfg.d_model, cfg.inner(), cfg.d_ff);
        let mut add = |name: String, shape: &[usize], scale: f32, offset: f32| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| offset + scale * rng.uniform()).collect();
            out.push((name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap()));
        };
        let lin = |i: usize| 1.5 / (i as f32).sqrt();
        add("shared.weight".into(), &[cfg.vocab_size, d], 1.0, 0.0);
        for (stack, layers) in [
            ("encoder", cfg.num_layers),
            ("decoder", cfg.num_decoder_layers),
        ] {
            for i in 0..layers {
                let p = format!("{stack}.block.{i}.layer");
                let mut attn = vec![format!("{p}.0.SelfAttention")];
                if stack == "decoder" {
                    attn.push(format!("{p}.1.EncDecAttention"));
                }
                for a in &attn {
                    for m in ["q", "k", "v"] {
                        add(format!("{a}.{m}.weight"), &[inner, d], lin(d), 0.0);
                    }
                    add(format!("{a}.o.weight"), &[d, inner], lin(inner), 0.0);
                }
                if i == 0 {
                    add(
                        format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
                        &[cfg.relative_attention_num_buckets, cfg.num_heads],
                        1.0,
                        0.0,
                    );
                }
                let norms = if stack == "decoder" { 3 } else { 2 };
                for k in 0..norms {
                    add(format!("{p}.{k}.layer_norm.weight"), &[d], 0.2, 1.0);
                }
                let ff = format!("{p}.{}.DenseReluDense", norms - 1);
                if cfg.gated {
                    add(format!("{ff}.wi_0.weight"), &[f, d], lin(d), 0.0);
                    add(format!("{ff}.wi_1.weight"), &[f, d], lin(d), 0.0);
                } else {
                    add(format!("{ff}.wi.weight"), &[f, d], lin(d), 0.0);
                }
                add(format!("{ff}.wo.weight"), &[d, f], lin(f), 0.0);
            }
            add(format!("{stack}.final_layer_norm.weight"), &[d], 0.2, 1.0);
        }
        if !cfg.tie_word_embeddings {
            add("lm_head.weight".into(), &[cfg.vocab_size, d], lin(d), 0.0);
        }
        out
    }

    /// Writes a tiny checkpoint into `dir`.
    fn write_checkpoint(dir: &Path, v: Variant, seed: u64) -> (T5Files, Vec<(String, Tensor)>) {
        let config = config_json(v);
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        std::fs::write(
            dir.join("tokenizer.json"),
            tokenizer_json(v.tags).to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.join("generation_config.json"),
            r#"{"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}"#,
        )
        .unwrap();
        let cfg = T5Config::parse("tiny", &config.to_string()).unwrap();
        let ws = weights(&cfg, seed);
        let map: HashMap<String, Tensor> = ws.iter().cloned().collect();
        candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
        (T5Files::from_dir("tiny", dir).unwrap(), ws)
    }

    /// Writes the same weights as GGUF: F32, or `quant` for the matrices
    /// whose rows are whole blocks.
    fn write_gguf(path: &Path, ws: &[(String, Tensor)], quant: GgmlDType) {
        let qs: Vec<(String, QTensor)> = ws
            .iter()
            .map(|(n, t)| {
                let dims = t.dims();
                let dt = if dims.len() == 2
                    && dims[1] % quant.block_size() == 0
                    && !n.contains("relative_attention_bias")
                {
                    quant
                } else {
                    GgmlDType::F32
                };
                (n.clone(), QTensor::quantize(t, dt).unwrap())
            })
            .collect();
        let arch = gguf_file::Value::String("t5".into());
        let refs: Vec<(&str, &QTensor)> = qs.iter().map(|(n, q)| (n.as_str(), q)).collect();
        let mut f = File::create(path).unwrap();
        gguf_file::write(&mut f, &[("general.architecture", &arch)], &refs).unwrap();
    }

    fn net(files: &T5Files) -> T5Net {
        let cfg = T5Config::read("tiny", &files.config).unwrap();
        T5Net::load("tiny", &cfg, &files.weights, &Device::Cpu).unwrap()
    }

    fn random_ids(rng: &mut Rng, len: usize, vocab: usize) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..len - 1)
            .map(|_| 5 + rng.below(vocab as u32 - 5))
            .collect();
        ids.push(1);
        ids
    }

    fn search_cfg(beam: usize) -> SearchConfig {
        SearchConfig {
            beam_size: beam,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
            decoder_start: 0,
            eos: 1,
            forced_bos: None,
            forced_eos: None,
            suppress: Vec::new(),
            renormalize: false,
            repetition_guard: false,
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Step logits `[steps][rows, vocab]` of feeding `tokens[row][step]`.
    fn step_logits(net: &T5Net, rows: &[Row], tokens: &[Vec<u32>]) -> Vec<Tensor> {
        let (ids, mask) = search::pad_batch(rows, 0, &Device::Cpu).unwrap();
        let enc = net.encode(&ids, &mask).unwrap();
        let mut state = net.start(&enc, &mask, 4).unwrap();
        (0..tokens[0].len())
            .map(|t| {
                let col: Vec<u32> = tokens.iter().map(|r| r[t]).collect();
                let col = Tensor::new(col.as_slice(), &Device::Cpu).unwrap();
                net.step(&mut state, &col).unwrap()
            })
            .collect()
    }

    fn rows_of(seed: u64, lens: &[usize], vocab: usize) -> Vec<Row> {
        let mut rng = Rng(seed);
        lens.iter()
            .map(|&n| Row {
                ids: random_ids(&mut rng, n, vocab),
                budget: 9,
            })
            .collect()
    }

    #[test]
    fn buckets_follow_the_reference() {
        // Values of transformers' `_relative_position_bucket` (32 buckets,
        // max distance 128).
        let bi = |r| relative_bucket(r, true, 32, 128);
        assert_eq!(
            [-200, -100, -20, -8, -7, -1, 0, 1, 7, 8, 20, 100, 200].map(bi),
            [15, 15, 10, 8, 7, 1, 0, 17, 23, 24, 26, 31, 31]
        );
        let uni = |r| relative_bucket(r, false, 32, 128);
        assert_eq!(
            [-200, -100, -20, -16, -15, -1, 0, 3].map(uni),
            [31, 30, 17, 16, 15, 1, 0, 0]
        );
    }

    #[test]
    fn padded_batch_equals_one_at_a_time() {
        for (seed, v) in [(1, GATED_TIED), (2, RELU_UNTIED)] {
            let dir = tempfile::tempdir().unwrap();
            let (files, _) = write_checkpoint(dir.path(), v, seed);
            let net = net(&files);
            let vocab = vocabulary(v.tags).len();
            let rows = rows_of(seed + 10, &[4, 14, 9], vocab);
            for beam in [1, 3] {
                let together = search::generate(&net, &rows, &search_cfg(beam), 0).unwrap();
                for (i, r) in rows.iter().enumerate() {
                    let alone =
                        search::generate(&net, std::slice::from_ref(r), &search_cfg(beam), 0)
                            .unwrap();
                    let (a, b) = (&together[i], &alone[0]);
                    assert_eq!(
                        (&a.tokens, a.ended),
                        (&b.tokens, b.ended),
                        "row {i}, beam {beam}"
                    );
                    assert!((a.score - b.score).abs() < 1e-4, "row {i}, beam {beam}");
                }
                assert!(together.iter().any(|o| !o.tokens.is_empty()));
            }
            // Teacher-forced step logits, 6 steps (past the preallocated 4).
            let mut rng = Rng(seed + 20);
            let tokens: Vec<Vec<u32>> = rows
                .iter()
                .map(|_| {
                    let mut t = vec![0];
                    t.extend((0..5).map(|_| 3 + rng.below(vocab as u32 - 3)));
                    t
                })
                .collect();
            let together = step_logits(&net, &rows, &tokens);
            for (i, r) in rows.iter().enumerate() {
                let alone = step_logits(&net, std::slice::from_ref(r), &tokens[i..=i]);
                for (t, (a, b)) in together.iter().zip(&alone).enumerate() {
                    let d = max_diff(&a.get(i).unwrap(), &b.get(0).unwrap());
                    assert!(d < 1e-4, "row {i} step {t}: {d}");
                }
            }
        }
    }

    #[test]
    fn cached_steps_equal_a_full_decoder_pass() {
        for (seed, v) in [(3, GATED_TIED), (4, RELU_UNTIED)] {
            let dir = tempfile::tempdir().unwrap();
            let (files, _) = write_checkpoint(dir.path(), v, seed);
            let net = net(&files);
            let vocab = vocabulary(v.tags).len();
            let rows = rows_of(seed + 30, &[13, 5], vocab);
            let mut rng = Rng(seed + 40);
            let tokens: Vec<Vec<u32>> = (0..2)
                .map(|_| {
                    let mut t = vec![0];
                    t.extend((0..13).map(|_| rng.below(vocab as u32)));
                    t
                })
                .collect();
            let (ids, mask) = search::pad_batch(&rows, 0, &Device::Cpu).unwrap();
            let enc = net.encode(&ids, &mask).unwrap();
            let flat: Vec<u32> = tokens.concat();
            let all = Tensor::from_vec(flat, (2, 14), &Device::Cpu).unwrap();
            let full = net.decode_full(&enc, &mask, &all).unwrap();
            let steps = step_logits(&net, &rows, &tokens);
            for (t, s) in steps.iter().enumerate() {
                let d = max_diff(s, &full.narrow(1, t, 1).unwrap().squeeze(1).unwrap());
                assert!(d < 1e-4, "step {t}: {d}");
            }

            // Reordering rows mid-way (beam search) keeps each row's cache.
            let mut state = net.start(&enc, &mask, 3).unwrap();
            let order = [1u32, 0, 1];
            for t in 0..14 {
                if t == 5 {
                    state.select(&order).unwrap();
                }
                let col: Vec<u32> = if t < 5 {
                    tokens.iter().map(|r| r[t]).collect()
                } else {
                    order.iter().map(|&r| tokens[r as usize][t]).collect()
                };
                let got = net
                    .step(
                        &mut state,
                        &Tensor::new(col.as_slice(), &Device::Cpu).unwrap(),
                    )
                    .unwrap();
                let want: Vec<u32> = if t < 5 { vec![0, 1] } else { order.to_vec() };
                for (k, &r) in want.iter().enumerate() {
                    let w = full.get(r as usize).unwrap().get(t).unwrap();
                    let d = max_diff(&got.get(k).unwrap(), &w);
                    assert!(d < 1e-4, "step {t} row {k}: {d}");
                }
            }
        }
    }

    #[test]
    fn gguf_equals_safetensors() {
        for (seed, v) in [(5, GATED_TIED), (6, RELU_UNTIED)] {
            let dir = tempfile::tempdir().unwrap();
            let (files, ws) = write_checkpoint(dir.path(), v, seed);
            let dense = net(&files);
            let vocab = vocabulary(v.tags).len();
            let rows = rows_of(seed + 50, &[6, 11, 3], vocab);
            let tokens: Vec<Vec<u32>> = (0..3u32)
                .map(|r| (0..6).map(|t| (r * 7 + t * 5) % vocab as u32).collect())
                .collect();
            let want = step_logits(&dense, &rows, &tokens);
            let want_out = search::generate(&dense, &rows, &search_cfg(1), 0).unwrap();

            let gguf = dir.path().join("model-f32.gguf");
            write_gguf(&gguf, &ws, GgmlDType::F32);
            let f32_net = net(&T5Files {
                weights: gguf,
                ..files.clone()
            });
            for (a, b) in step_logits(&f32_net, &rows, &tokens).iter().zip(&want) {
                assert!(max_diff(a, b) < 1e-4);
            }
            assert_eq!(
                search::generate(&f32_net, &rows, &search_cfg(1), 0).unwrap(),
                want_out
            );
            assert_eq!(f32_net.parameters(), dense.parameters());

            let gguf = dir.path().join("model-q8.gguf");
            write_gguf(&gguf, &ws, GgmlDType::Q8_0);
            let q8 = net(&T5Files {
                weights: gguf,
                ..files.clone()
            });
            assert!(matches!(q8.lm_head, Linear::Quant(_)));
            assert!(matches!(q8.cross_kv, Linear::Quant(_)));
            for (a, b) in step_logits(&q8, &rows, &tokens).iter().zip(&want) {
                let range = max_diff(b, &b.zeros_like().unwrap());
                let d = max_diff(a, b);
                assert!(
                    d < 0.05 * range,
                    "q8_0 logits differ by {d} (range {range})"
                );
            }
        }
    }

    #[test]
    fn loads_through_the_public_loader() {
        let dir = tempfile::tempdir().unwrap();
        let (files, ws) = write_checkpoint(dir.path(), RELU_UNTIED, 7);
        let model = load("tiny", &files, &Device::Cpu).unwrap();
        let total: usize = ws.iter().map(|(_, t)| t.elem_count()).sum();
        assert_eq!(model.parameters, total);
        assert_eq!(model.vocab, vocabulary(true).len() + 4);
        assert_eq!(model.family, Family::T5);
        assert_eq!(model.languages_for_test(), vec!["es", "fa"]);
        let settings = GenSettings {
            beam_size: 2,
            length_penalty: 1.0,
            options: GenOptions {
                max_new_tokens: 6,
                max_length_ratio: 2.0,
                repetition_guard: false,
            },
            set: crate::config::GenKeys {
                beam_size: true,
                length_penalty: true,
                max_new_tokens: true,
            },
        };
        let task = Task::Translate {
            from: lookup("en").unwrap(),
            to: lookup("es").unwrap(),
        };
        let inputs = ["the cat said", "the dog won the game in the city .", "rain"];
        let together = model
            .generate_batch(task, &inputs, &settings, 1000)
            .unwrap()
            .0;
        for (i, text) in inputs.iter().enumerate() {
            let alone = model
                .generate_batch(task, &[text], &settings, 1000)
                .unwrap()
                .0;
            assert_eq!(together[i], alone[0]);
            let g = together[i].as_ref().unwrap();
            assert_eq!(g.input_tokens, text.split_whitespace().count() + 2);
        }
        let to_de = Task::Translate {
            from: lookup("en").unwrap(),
            to: lookup("de").unwrap(),
        };
        let err = model
            .generate_batch(to_de, &inputs[..1], &settings, 1000)
            .unwrap()
            .0;
        let msg = err[0].as_ref().unwrap_err();
        assert!(msg.contains("tiny") && msg.contains("German"), "{msg}");
    }

    impl Seq2SeqModel {
        fn languages_for_test(&self) -> Vec<String> {
            self.text.languages()
        }
    }

    #[test]
    fn prompts_and_tags() {
        let tok =
            |tags| Tokenizer::from_bytes(tokenizer_json(tags).to_string().as_bytes()).unwrap();
        let en = lookup("en").unwrap();
        let es = lookup("es").unwrap();
        let fa = lookup("fa").unwrap();
        let de = lookup("de").unwrap();
        let flan = T5Text::new("flan", tok(false), 1);
        assert!(flan.languages().is_empty());
        let tr = Task::Translate { from: en, to: es };
        let sum = Task::Summarize { max_words: 30 };
        assert_eq!(
            flan.prompt(tr, "the cat").unwrap(),
            "translate English to Spanish: the cat"
        );
        assert_eq!(flan.prompt(sum, "the cat").unwrap(), "summarize: the cat");
        assert_eq!(
            flan.prompt(sum, "summarize: the cat").unwrap(),
            "summarize: the cat"
        );
        assert_eq!(
            flan.prompt(tr, "Translate to German: the cat").unwrap(),
            "Translate to German: the cat"
        );
        let ids = flan.encode(sum, "the cat").unwrap();
        let v = vocabulary(false);
        let id = |w: &str| v.iter().position(|x| x == w).unwrap() as u32;
        assert_eq!(ids, vec![id("summarize:"), id("the"), id("cat"), 1]);
        assert_eq!(flan.decode(&[id("the"), id("cat"), 1, 0]), "the cat");

        let madlad = T5Text::new("madlad", tok(true), 1);
        assert_eq!(madlad.languages(), vec!["es", "fa"]);
        let v = vocabulary(true);
        let id = |w: &str| v.iter().position(|x| x == w).unwrap() as u32;
        let to_fa = Task::Translate { from: en, to: fa };
        assert_eq!(
            madlad.encode(to_fa, "the cat").unwrap(),
            vec![id("<2fa>"), id("the"), id("cat"), 1]
        );
        assert_eq!(
            madlad.prompt(to_fa, "<2es> the cat").unwrap(),
            "<2es> the cat"
        );
        assert_eq!(madlad.prompt(sum, "the cat").unwrap(), "the cat");
        let err = madlad
            .encode(Task::Translate { from: en, to: de }, "the cat")
            .unwrap_err();
        assert!(
            err.contains("madlad") && err.contains("German") && err.contains("<2de>"),
            "{err}"
        );
    }

    #[test]
    fn config_errors_name_the_model() {
        let mut c = config_json(GATED_TIED);
        c["feed_forward_proj"] = "gated-tanhish".into();
        let e = T5Config::parse("flan", &c.to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains("flan") && e.contains("gated-tanhish"), "{e}");
        c["feed_forward_proj"] = "gelu-gated".into();
        assert!(T5Config::parse("flan", &c.to_string()).is_err());
        c["feed_forward_proj"] = "gated-silu".into();
        let ok = T5Config::parse("flan", &c.to_string()).unwrap();
        assert_eq!((ok.activation, ok.gated), (Activation::Silu, true));
        c["model_type"] = "umt5".into();
        let e = T5Config::parse("flan", &c.to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains("umt5"), "{e}");
        assert_eq!(parse_ff_proj("gelu"), Some((Activation::GeluErf, false)));
        assert_eq!(
            parse_ff_proj("gated-gelu"),
            Some((Activation::GeluTanh, true))
        );
    }

    #[test]
    fn missing_or_misshapen_tensors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (files, ws) = write_checkpoint(dir.path(), GATED_TIED, 8);
        let victim = "decoder.block.1.layer.1.EncDecAttention.k.weight";
        let mut map: HashMap<String, Tensor> = ws.iter().cloned().collect();
        map.remove(victim);
        candle_core::safetensors::save(&map, &files.weights).unwrap();
        let cfg = T5Config::read("tiny", &files.config).unwrap();
        let e = T5Net::load("tiny", &cfg, &files.weights, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("tiny") && e.contains(victim), "{e}");
        map.insert(
            victim.into(),
            Tensor::zeros((3, 32), DType::F32, &Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&map, &files.weights).unwrap();
        let e = T5Net::load("tiny", &cfg, &files.weights, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(victim) && e.contains("[3, 32]"), "{e}");
    }

    /// `tests/fixtures/seq2seq/NAME` when its `expected.json` is there
    /// (skipped with a note otherwise; a failure under CI).
    fn fixture_dir(name: &str) -> Option<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/seq2seq")
            .join(name);
        if dir.join("expected.json").is_file() {
            return Some(dir);
        }
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "{} is missing under CI", dir.display());
        eprintln!("skipped: {} not found", dir.display());
        None
    }

    fn as_ids(v: &serde_json::Value) -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    }

    fn as_floats(v: &serde_json::Value) -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    }

    /// The reference's sequence: decoder start, tokens, end token if ended.
    fn sequence(start: u32, eos: u32, out: &search::Output) -> Vec<u32> {
        let mut s = vec![start];
        s.extend(&out.tokens);
        if out.ended {
            s.push(eos);
        }
        s
    }

    /// Checks a transformers fixture: tokenizer ids, encoder output, step
    /// logits, greedy and beam-4 outputs, one case at a time and all cases
    /// as one padded batch.
    fn check_fixture(name: &str, spiece_only: bool) {
        let Some(dir) = fixture_dir(name) else {
            return;
        };
        let exp: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let mut files = T5Files::from_dir(name, &dir).unwrap();
        if spiece_only {
            assert!(files.spiece.is_some());
            files.tokenizer_json = None;
        }
        let model = load(name, &files, &Device::Cpu).unwrap();
        let cfg = T5Config::read(name, &files.config).unwrap();
        let net = T5Net::load(name, &cfg, &files.weights, &Device::Cpu).unwrap();
        let text = T5Text::new(name, load_tokenizer(name, &files).unwrap(), model.ids.eos);
        assert_eq!(model.vocab as u64, exp["vocab_size"].as_u64().unwrap());
        let n = exp["max_new_tokens"].as_u64().unwrap() as usize;
        let settings = GenSettings {
            beam_size: 1,
            length_penalty: exp["beam"]["length_penalty"].as_f64().unwrap(),
            options: GenOptions {
                max_new_tokens: n,
                max_length_ratio: 1e6,
                repetition_guard: false,
            },
            set: crate::config::GenKeys {
                beam_size: true,
                length_penalty: true,
                max_new_tokens: true,
            },
        };
        let mut greedy = model
            .search_config(Task::Summarize { max_words: 100 }, &settings)
            .unwrap();
        greedy.beam_size = 1;
        let mut beam = greedy.clone();
        beam.beam_size = exp["beam"]["num_beams"].as_u64().unwrap() as usize;
        assert_eq!(
            beam.early_stopping == EarlyStopping::True,
            exp["beam"]["early_stopping"] == serde_json::json!(true)
        );
        let (start, eos, pad) = (model.ids.decoder_start, model.ids.eos, model.ids.pad);
        let cases = exp["cases"].as_array().unwrap();
        let mut rows = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let what = format!("{name} case {i}");
            let ids = text.tokenize(case["text"].as_str().unwrap()).unwrap();
            assert_eq!(ids, as_ids(&case["input_ids"]), "{what}: input ids");
            assert_eq!(as_ids(&case["decoder_start"]), vec![start], "{what}");
            let len = ids.len();
            let t_ids = Tensor::from_vec(ids.clone(), (1, len), &Device::Cpu).unwrap();
            let mask = Tensor::ones((1, len), DType::F32, &Device::Cpu).unwrap();
            let enc = net.encode(&t_ids, &mask).unwrap();
            if let Some(h) = case.get("encoder_hidden") {
                let want = Tensor::new(as_floats(h), &Device::Cpu).unwrap();
                let d = max_diff(&enc.flatten_all().unwrap(), &want);
                assert!(d < 1e-4, "{what}: encoder output differs by {d}");
            }
            let seq = as_ids(&case["greedy"]);
            let mut state = net.start(&enc, &mask, n + 1).unwrap();
            for (t, want) in case["step_logits"].as_array().unwrap().iter().enumerate() {
                let tok = Tensor::new(&[seq[t]], &Device::Cpu).unwrap();
                let got = net.step(&mut state, &tok).unwrap().get(0).unwrap();
                let want = Tensor::new(as_floats(want), &Device::Cpu).unwrap();
                // 1e-4, plus a few f32 roundings at the logits' magnitude:
                // the fixtures' logits reach ~130, where one f32 step is
                // 1.5e-5 and summation order alone moves the last digits.
                let scale = max_diff(&want, &want.zeros_like().unwrap());
                let d = max_diff(&got, &want);
                assert!(
                    d < 1e-4 + 4e-6 * scale,
                    "{what}: step {t} logits differ by {d} (largest |logit| {scale})"
                );
            }
            let row = Row { ids, budget: n };
            let g = search::generate(model.net.as_ref(), std::slice::from_ref(&row), &greedy, pad)
                .unwrap();
            assert_eq!(sequence(start, eos, &g[0]), seq, "{what}: greedy");
            assert_eq!(
                text.decode(&seq),
                case["greedy_text"].as_str().unwrap(),
                "{what}: greedy text"
            );
            let b = search::generate(model.net.as_ref(), std::slice::from_ref(&row), &beam, pad)
                .unwrap();
            assert_eq!(
                sequence(start, eos, &b[0]),
                as_ids(&case["beam4"]),
                "{what}: beam"
            );
            let score = case["beam4_score"].as_f64().unwrap() as f32;
            assert!(
                (b[0].score - score).abs() < 1e-4,
                "{what}: beam score {} vs {score}",
                b[0].score
            );
            rows.push(row);
        }
        // All cases as one padded batch.
        let g = search::generate(model.net.as_ref(), &rows, &greedy, pad).unwrap();
        let b = search::generate(model.net.as_ref(), &rows, &beam, pad).unwrap();
        for (i, case) in cases.iter().enumerate() {
            assert_eq!(
                sequence(start, eos, &g[i]),
                as_ids(&case["greedy"]),
                "{name} batch {i}"
            );
            assert_eq!(
                sequence(start, eos, &b[i]),
                as_ids(&case["beam4"]),
                "{name} batch beam {i}"
            );
        }
    }

    #[test]
    fn fixture_t5_gated_matches_transformers() {
        check_fixture("t5_gated", false);
    }

    #[test]
    fn fixture_t5_relu_matches_transformers() {
        check_fixture("t5_relu", false);
    }

    /// The same checks with the tokenizer built from `spiece.model` alone.
    #[test]
    fn fixtures_match_with_spiece_tokenizer() {
        check_fixture("t5_gated", true);
        check_fixture("t5_relu", true);
    }
}
