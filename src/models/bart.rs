//! The BART-style transformer that Marian and M2M100/NLLB both are: learned
//! token embeddings scaled by `sqrt(d_model)`, sinusoidal positions,
//! encoder and decoder layers of multi-head attention (`q` scaled by
//! `head_dim^-0.5`, biases on every projection) and a two-layer
//! feed-forward block, with layer norms after each block (Marian,
//! `normalize_before = false`) or before it plus a final norm per stack
//! (M2M100). The families differ in their position tables, their norms and
//! their text handling; [`crate::models::marian`] and
//! [`crate::models::m2m100`] say how.
//!
//! Weights keep the Hugging Face names (`model.encoder.layers.0.self_attn.q_proj.weight`,
//! ...), read from `model.safetensors` or `pytorch_model.bin`.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Activation, Embedding, LayerNorm, VarBuilder};

use crate::error::{Error, Result};
use crate::models::f32_gemm::PackedF32;
use crate::models::int8_rows::Int8Rows;
use crate::models::q8_0::{own_kernels_by_default, QLinear};
use crate::models::seq2seq::{
    attend, attend_grouped, key_bias, merge_heads, split_heads, DecoderState, LayerState,
    Seq2SeqNet,
};

/// A projection applied as one 2-D matmul over all rows and positions
/// (candle_nn's `Linear` broadcasts the weight into a batched matmul for 3-D
/// inputs instead). The weight keeps the checkpoint's `[out, in]` layout and
/// is read through a transposed view: measured on OPUS-MT-sized layers, 1.45x
/// faster decoding than a contiguous `[in, out]` copy. Where our AVX-512
/// f32 kernel runs ([`crate::models::f32_gemm`]), the weight is packed for
/// it instead. With quantization the weight goes through candle's quantized
/// matmul (the layers) or, for the vocabulary head, our 8-bit-row kernel
/// ([`crate::models::int8_rows`], `q8_0` with AVX-512 VNNI) or our Q8_0
/// kernel ([`crate::models::q8_0`]). `TIDINGS_KERNELS=candle` keeps candle's
/// products throughout.
#[derive(Clone)]
pub struct Proj {
    w: Weight,
    /// `[out]`, when the layer has one.
    b: Option<Tensor>,
}

#[derive(Clone)]
enum Weight {
    /// `[out, in]`.
    Dense(Tensor),
    /// Packed for our AVX-512 f32 kernel, bias included.
    Packed(Arc<PackedF32>),
    /// 8-bit rows for our VNNI head kernel, bias included.
    Rows(Arc<Int8Rows>),
    /// Quantized blocks of the `[out, in]` weight.
    Quant(QLinear, usize, usize),
    /// Both: the quantized copy for few rows (a memory-bound matrix-vector
    /// product, where reading a quarter of the bytes wins), the dense one
    /// from [`HEAD_DENSE_ROWS`] rows on (where candle's float matmul beats
    /// the quantized kernel on a vocabulary-wide output: measured 108 vs 63
    /// GFLOP/s at 128 rows, 4.4 vs 42 at one row).
    Both(Tensor, QLinear),
}

/// Rows from which an output head with both copies uses the dense one.
pub const HEAD_DENSE_ROWS: usize = 48;

impl Proj {
    /// Loads `{prefix}.weight` (`[out, in]`) and, when `bias`, `{prefix}.bias`.
    pub fn load(
        vb: &VarBuilder,
        input: usize,
        output: usize,
        bias: bool,
        quantize: Option<GgmlDType>,
    ) -> candle_core::Result<Self> {
        let w = vb.get((output, input), "weight")?;
        let b = if bias {
            Some(vb.get(output, "bias")?)
        } else {
            None
        };
        Self::from_weight(w, b, quantize)
    }

    /// A projection from a weight already in memory (`[out, in]`).
    pub fn from_weight(
        w: Tensor,
        b: Option<Tensor>,
        quantize: Option<GgmlDType>,
    ) -> candle_core::Result<Self> {
        let (out, input) = w.dims2()?;
        let w = match quantize {
            // Block quantization needs whole blocks along the input.
            Some(q) if input % q.block_size() == 0 => Weight::Quant(
                QLinear::new(own_kernels_by_default(), QTensor::quantize(&w, q)?)?,
                out,
                input,
            ),
            _ => dense(w, b.as_ref())?,
        };
        Ok(Proj { w, b })
    }

    /// An output head: with quantization, keeps both copies (see
    /// [`HEAD_DENSE_ROWS`]).
    pub fn head(
        w: Tensor,
        b: Option<Tensor>,
        quantize: Option<GgmlDType>,
    ) -> candle_core::Result<Self> {
        let (out, input) = w.dims2()?;
        // the vocabulary head of `q8_0`: 8-bit rows where our kernel runs
        if quantize == Some(GgmlDType::Q8_0) && own_kernels_by_default() {
            if let Some(rows) = Int8Rows::new(&w, b.as_ref())? {
                return Ok(Proj {
                    w: Weight::Rows(Arc::new(rows)),
                    b,
                });
            }
        }
        let w = match quantize {
            Some(q) if input % q.block_size() == 0 => {
                let qm = QLinear::new(own_kernels_by_default(), QTensor::quantize(&w, q)?)?;
                match qm {
                    // ours beats the float product at every row count
                    QLinear::Q8(_) => Weight::Quant(qm, out, input),
                    QLinear::Candle(_) | QLinear::K(..) => Weight::Both(w, qm),
                }
            }
            _ => dense(w, b.as_ref())?,
        };
        Ok(Proj { w, b })
    }

    /// Applies to `[.., in]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let input = *dims.last().expect("a projection input has dimensions");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, input))?;
        let y = match &self.w {
            Weight::Packed(p) => {
                let mut out = dims;
                *out.last_mut().expect("dims") = p.outputs();
                return p.forward(&x2)?.reshape(out);
            }
            Weight::Rows(p) => {
                let mut out = dims;
                *out.last_mut().expect("dims") = p.outputs();
                return p.forward(&x2.contiguous()?)?.reshape(out);
            }
            Weight::Dense(w) => x2.matmul(&w.t()?)?,
            Weight::Quant(q, _, _) => q.forward(&x2.contiguous()?)?,
            Weight::Both(w, _) if rows >= HEAD_DENSE_ROWS => x2.matmul(&w.t()?)?,
            Weight::Both(_, q) => q.forward(&x2.contiguous()?)?,
        };
        let y = match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        *out.last_mut().expect("dims") = self.outputs();
        y.reshape(out)
    }

    /// Output width.
    pub fn outputs(&self) -> usize {
        match &self.w {
            Weight::Dense(w) => w.dim(0).unwrap_or(0),
            Weight::Packed(p) => p.outputs(),
            Weight::Rows(p) => p.outputs(),
            Weight::Quant(_, out, _) => *out,
            Weight::Both(w, _) => w.dim(0).unwrap_or(0),
        }
    }

    /// Parameter count.
    pub fn parameters(&self) -> usize {
        let w = match &self.w {
            Weight::Dense(w) => w.elem_count(),
            Weight::Packed(p) => p.outputs() * p.inputs(),
            Weight::Rows(p) => p.outputs() * p.inputs(),
            Weight::Quant(_, out, input) => out * input,
            Weight::Both(w, _) => w.elem_count(),
        };
        w + self.b.as_ref().map_or(0, |b| b.elem_count())
    }
}

/// A float weight: packed for our f32 kernel where it runs (see
/// [`crate::models::f32_gemm`]), else kept for candle's matmul.
fn dense(w: Tensor, b: Option<&Tensor>) -> candle_core::Result<Weight> {
    if own_kernels_by_default() {
        if let Some(p) = PackedF32::new(&w, b)? {
            return Ok(Weight::Packed(Arc::new(p)));
        }
    }
    Ok(Weight::Dense(w))
}

/// Shape of a BART-style stack.
#[derive(Debug, Clone)]
pub struct BartConfig {
    /// Hidden width.
    pub d_model: usize,
    /// Encoder layers.
    pub encoder_layers: usize,
    /// Decoder layers.
    pub decoder_layers: usize,
    /// Encoder heads.
    pub encoder_heads: usize,
    /// Decoder heads.
    pub decoder_heads: usize,
    /// Encoder feed-forward width.
    pub encoder_ffn: usize,
    /// Decoder feed-forward width.
    pub decoder_ffn: usize,
    /// Feed-forward activation.
    pub activation: Activation,
    /// Multiply embeddings by `sqrt(d_model)`.
    pub scale_embedding: bool,
    /// Norms before each block plus a final norm per stack (M2M100) rather
    /// than after each block (Marian).
    pub pre_norm: bool,
    /// Layer norm epsilon.
    pub eps: f64,
    /// Quantize the projections (and the output head) at load.
    pub quantize: Option<GgmlDType>,
}

struct Attention {
    q: Proj,
    k: Proj,
    v: Proj,
    out: Proj,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn load(
        vb: VarBuilder,
        d: usize,
        heads: usize,
        q8: Option<GgmlDType>,
    ) -> candle_core::Result<Self> {
        Ok(Attention {
            q: Proj::load(&vb.pp("q_proj"), d, d, true, q8)?,
            k: Proj::load(&vb.pp("k_proj"), d, d, true, q8)?,
            v: Proj::load(&vb.pp("v_proj"), d, d, true, q8)?,
            out: Proj::load(&vb.pp("out_proj"), d, d, true, q8)?,
            heads,
            scale: ((d / heads) as f64).powf(-0.5),
        })
    }

    fn query(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        split_heads(&(self.q.forward(x)? * self.scale)?, self.heads)
    }

    fn keys_values(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            split_heads(&self.k.forward(x)?, self.heads)?,
            split_heads(&self.v.forward(x)?, self.heads)?,
        ))
    }

    fn parameters(&self) -> usize {
        self.q.parameters() + self.k.parameters() + self.v.parameters() + self.out.parameters()
    }
}

struct FeedForward {
    fc1: Proj,
    fc2: Proj,
    act: Activation,
}

impl FeedForward {
    fn load(
        vb: &VarBuilder,
        d: usize,
        ffn: usize,
        act: Activation,
        q8: Option<GgmlDType>,
    ) -> candle_core::Result<Self> {
        Ok(FeedForward {
            fc1: Proj::load(&vb.pp("fc1"), d, ffn, true, q8)?,
            fc2: Proj::load(&vb.pp("fc2"), ffn, d, true, q8)?,
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.fc1.forward(x)?;
        let h = match self.act {
            // fc1's output is this call's own: changed in place
            Activation::Swish | Activation::Silu
                if h.device().is_cpu() && h.dtype() == DType::F32 && h.is_contiguous() =>
            {
                h.inplace_op1(&SiluInPlace)?;
                h
            }
            _ => h.apply(&self.act)?,
        };
        self.fc2.forward(&h)
    }
}

/// SiLU over a CPU f32 tensor's own memory (see
/// [`crate::generate::softmax::silu_in_place`]).
struct SiluInPlace;

impl candle_core::InplaceOp1 for SiluInPlace {
    fn name(&self) -> &'static str {
        "silu-in-place"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("silu-in-place: f32 only");
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("silu-in-place: a contiguous tensor");
        };
        crate::generate::softmax::silu_in_place(&mut data[a..b]);
        Ok(())
    }
}

fn layer_norm(vb: VarBuilder, d: usize, eps: f64) -> candle_core::Result<LayerNorm> {
    candle_nn::layer_norm(d, eps, vb)
}

fn ln_parameters(ln: &LayerNorm) -> usize {
    ln.weight().elem_count() + ln.bias().map_or(0, |b| b.elem_count())
}

struct EncoderLayer {
    attn: Attention,
    attn_norm: LayerNorm,
    ffn: FeedForward,
    ffn_norm: LayerNorm,
}

struct DecoderLayer {
    attn: Attention,
    attn_norm: LayerNorm,
    cross: Attention,
    cross_norm: LayerNorm,
    ffn: FeedForward,
    ffn_norm: LayerNorm,
}

/// Position embeddings of a family: a table of rows and the row of
/// position 0.
pub struct Positions {
    /// `[rows, d_model]`.
    pub table: Tensor,
    /// Row of the first position (M2M100: `padding_idx + 1`; Marian: 0).
    pub offset: usize,
}

/// A loaded BART-style network.
pub struct BartNet {
    cfg: BartConfig,
    enc_embed: Embedding,
    dec_embed: Embedding,
    positions: Positions,
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    enc_final: Option<LayerNorm>,
    dec_final: Option<LayerNorm>,
    lm_head: Proj,
    tied_embeddings: bool,
    device: Device,
}

/// Where a family keeps its embeddings and head.
pub struct BartNames<'a> {
    /// Prefix of encoder and decoder (`model`).
    pub model: &'a str,
    /// Source embedding tensor (e.g. `model.shared.weight` or `model.encoder.embed_tokens.weight`).
    pub enc_embed: String,
    /// Target embedding tensor.
    pub dec_embed: String,
    /// The output projection tensor when it is stored (`lm_head.weight`); else tied to `dec_embed`.
    pub lm_head: Option<String>,
    /// Bias added to the logits (`final_logits_bias`, `[1, vocab]`).
    pub logits_bias: Option<String>,
}

impl BartNet {
    /// Loads the stack; `positions` comes from the family.
    pub fn load(
        cfg: BartConfig,
        vb: VarBuilder,
        names: &BartNames,
        positions: Positions,
    ) -> candle_core::Result<Self> {
        let d = cfg.d_model;
        let embedding = |name: &str| -> candle_core::Result<Embedding> {
            let w = vb.get_unchecked(name)?;
            let (_, width) = w.dims2()?;
            if width != d {
                candle_core::bail!("`{name}` is {:?}, expected [vocab, {d}]", w.dims());
            }
            Ok(Embedding::new(w, d))
        };
        let enc_embed = embedding(&names.enc_embed)?;
        let dec_embed = if names.dec_embed == names.enc_embed {
            enc_embed.clone()
        } else {
            embedding(&names.dec_embed)?
        };
        let m = vb.pp(names.model);
        let mut encoder = Vec::with_capacity(cfg.encoder_layers);
        for i in 0..cfg.encoder_layers {
            let l = m.pp(format!("encoder.layers.{i}"));
            encoder.push(EncoderLayer {
                attn: Attention::load(l.pp("self_attn"), d, cfg.encoder_heads, cfg.quantize)?,
                attn_norm: layer_norm(l.pp("self_attn_layer_norm"), d, cfg.eps)?,
                ffn: FeedForward::load(&l, d, cfg.encoder_ffn, cfg.activation, cfg.quantize)?,
                ffn_norm: layer_norm(l.pp("final_layer_norm"), d, cfg.eps)?,
            });
        }
        let mut decoder = Vec::with_capacity(cfg.decoder_layers);
        for i in 0..cfg.decoder_layers {
            let l = m.pp(format!("decoder.layers.{i}"));
            decoder.push(DecoderLayer {
                attn: Attention::load(l.pp("self_attn"), d, cfg.decoder_heads, cfg.quantize)?,
                attn_norm: layer_norm(l.pp("self_attn_layer_norm"), d, cfg.eps)?,
                cross: Attention::load(l.pp("encoder_attn"), d, cfg.decoder_heads, cfg.quantize)?,
                cross_norm: layer_norm(l.pp("encoder_attn_layer_norm"), d, cfg.eps)?,
                ffn: FeedForward::load(&l, d, cfg.decoder_ffn, cfg.activation, cfg.quantize)?,
                ffn_norm: layer_norm(l.pp("final_layer_norm"), d, cfg.eps)?,
            });
        }
        let (enc_final, dec_final) = if cfg.pre_norm {
            (
                Some(layer_norm(m.pp("encoder.layer_norm"), d, cfg.eps)?),
                Some(layer_norm(m.pp("decoder.layer_norm"), d, cfg.eps)?),
            )
        } else {
            (None, None)
        };
        let head_w = match &names.lm_head {
            Some(n) if vb.contains_tensor(n) => vb.get_unchecked(n)?,
            _ => dec_embed.embeddings().clone(),
        };
        let bias = match &names.logits_bias {
            Some(n) if vb.contains_tensor(n) => {
                let b = vb.get_unchecked(n)?;
                Some(b.flatten_all()?)
            }
            _ => None,
        };
        let lm_head = Proj::head(head_w, bias, cfg.quantize)?;
        Ok(BartNet {
            device: vb.device().clone(),
            cfg,
            enc_embed,
            dec_embed,
            positions,
            encoder,
            decoder,
            enc_final,
            dec_final,
            lm_head,
            tied_embeddings: names.dec_embed == names.enc_embed,
        })
    }

    /// Parameter count (positions excluded: they are computed).
    pub fn parameters(&self) -> usize {
        let mut n = self.enc_embed.embeddings().elem_count();
        if !self.tied_embeddings {
            n += self.dec_embed.embeddings().elem_count();
        }
        for l in &self.encoder {
            n += l.attn.parameters() + l.ffn.fc1.parameters() + l.ffn.fc2.parameters();
            n += ln_parameters(&l.attn_norm) + ln_parameters(&l.ffn_norm);
        }
        for l in &self.decoder {
            n += l.attn.parameters() + l.cross.parameters();
            n += l.ffn.fc1.parameters() + l.ffn.fc2.parameters();
            n += ln_parameters(&l.attn_norm)
                + ln_parameters(&l.cross_norm)
                + ln_parameters(&l.ffn_norm);
        }
        n
    }

    /// Output vocabulary size.
    pub fn vocab(&self) -> usize {
        self.lm_head.outputs()
    }

    /// Positions the table holds (the longest input the model takes).
    pub fn max_positions(&self) -> usize {
        self.positions.table.dim(0).unwrap_or(0) - self.positions.offset
    }

    fn embed(&self, embed: &Embedding, ids: &Tensor, start: usize) -> candle_core::Result<Tensor> {
        let (_, len) = ids.dims2()?;
        let x = embed.forward(ids)?;
        let x = if self.cfg.scale_embedding {
            (x * (self.cfg.d_model as f64).sqrt())?
        } else {
            x
        };
        let pos = self
            .positions
            .table
            .narrow(0, self.positions.offset + start, len)?;
        x.broadcast_add(&pos)
    }

    /// One residual block: `x + f(norm(x))` with norms before the block
    /// (M2M100), `norm(x + f(x))` with norms after it (Marian).
    fn residual(
        &self,
        ln: &LayerNorm,
        x: &Tensor,
        f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        if self.cfg.pre_norm {
            x + f(&ln.forward(x)?)?
        } else {
            ln.forward(&(x + f(x)?)?)
        }
    }
}

impl Seq2SeqNet for BartNet {
    fn encode(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let bias = key_bias(mask)?;
        let mut x = self.embed(&self.enc_embed, ids, 0)?;
        for l in &self.encoder {
            x = self.residual(&l.attn_norm, &x, |h| {
                let q = l.attn.query(h)?;
                let (k, v) = l.attn.keys_values(h)?;
                l.attn
                    .out
                    .forward(&merge_heads(&attend(&q, &k, &v, Some(&bias))?)?)
            })?;
            x = self.residual(&l.ffn_norm, &x, |h| l.ffn.forward(h))?;
        }
        match &self.enc_final {
            Some(ln) => ln.forward(&x),
            None => Ok(x),
        }
    }

    fn start(
        &self,
        encoded: &Tensor,
        mask: &Tensor,
        capacity: usize,
    ) -> candle_core::Result<DecoderState> {
        let mut layers = Vec::with_capacity(self.decoder.len());
        for l in &self.decoder {
            let (k, v) = l.cross.keys_values(encoded)?;
            layers.push(LayerState::new(k, v, capacity)?);
        }
        Ok(DecoderState {
            layers,
            cross_bias: key_bias(mask)?,
            len: 0,
            extra: Vec::new(),
            group: 1,
        })
    }

    fn step(&self, state: &mut DecoderState, tokens: &Tensor) -> candle_core::Result<Tensor> {
        let rows = tokens.dim(0)?;
        let pos = state.len;
        let mut x = self.embed(&self.dec_embed, &tokens.reshape((rows, 1))?, pos)?;
        for (l, cache) in self.decoder.iter().zip(state.layers.iter_mut()) {
            x = self.residual(&l.attn_norm, &x, |h| {
                let q = l.attn.query(h)?;
                let (k, v) = l.attn.keys_values(h)?;
                let (k, v) = cache.append(&k, &v, pos)?;
                l.attn
                    .out
                    .forward(&merge_heads(&attend(&q, &k, &v, None)?)?)
            })?;
            x = self.residual(&l.cross_norm, &x, |h| {
                let q = l.cross.query(h)?;
                let a = attend_grouped(
                    &q,
                    &cache.cross_k,
                    &cache.cross_v,
                    Some(&state.cross_bias),
                    state.group,
                )?;
                l.cross.out.forward(&merge_heads(&a)?)
            })?;
            x = self.residual(&l.ffn_norm, &x, |h| l.ffn.forward(h))?;
        }
        state.len += 1;
        let x = match &self.dec_final {
            Some(ln) => ln.forward(&x)?,
            None => x,
        };
        let d = self.cfg.d_model;
        self.lm_head
            .forward(&x.reshape((rows, d))?)?
            .to_dtype(DType::F32)
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

/// An `Error::Model` for `name`.
pub fn model_err(name: &str, message: String) -> Error {
    Error::Model {
        model: name.into(),
        message,
    }
}

/// Reads a checkpoint's JSON file; a bad file is an error naming model and file.
pub fn read_json<T: serde::de::DeserializeOwned>(name: &str, path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(Error::io("cannot read", path))?;
    serde_json::from_str(&text)
        .map_err(|e| model_err(name, format!("`{}` is not valid: {e}", path.display())))
}

/// The activation a config's `activation_function` names.
fn activation(name: &str, function: &str) -> Result<Activation> {
    serde_json::from_value(serde_json::Value::String(function.to_string()))
        .map_err(|_| model_err(name, format!("unknown activation_function `{function}`")))
}

/// The `config.json` keys Marian and M2M100 share.
#[derive(Debug, serde::Deserialize)]
pub struct BartShape {
    d_model: usize,
    encoder_layers: usize,
    decoder_layers: usize,
    encoder_attention_heads: usize,
    decoder_attention_heads: usize,
    encoder_ffn_dim: usize,
    decoder_ffn_dim: usize,
    activation_function: Option<String>,
    max_position_embeddings: Option<usize>,
    #[serde(default = "yes")]
    scale_embedding: bool,
    /// Padding id, when the config names one.
    pub pad_token_id: Option<u32>,
    /// End-of-sequence id, when the config names one.
    pub eos_token_id: Option<u32>,
    /// First decoder token, when the config names one.
    pub decoder_start_token_id: Option<u32>,
}

fn yes() -> bool {
    true
}

impl BartShape {
    /// Hidden width.
    pub fn d_model(&self) -> usize {
        self.d_model
    }

    /// Positions the model was trained for (`default` when unset).
    pub fn max_positions(&self, default: usize) -> usize {
        self.max_position_embeddings.unwrap_or(default)
    }

    /// The stack's configuration; `activation_default` is the family's
    /// activation when the config names none.
    pub fn config(
        &self,
        name: &str,
        activation_default: &str,
        pre_norm: bool,
        quantize: Option<crate::config::Quantize>,
    ) -> Result<BartConfig> {
        Ok(BartConfig {
            d_model: self.d_model,
            encoder_layers: self.encoder_layers,
            decoder_layers: self.decoder_layers,
            encoder_heads: self.encoder_attention_heads,
            decoder_heads: self.decoder_attention_heads,
            encoder_ffn: self.encoder_ffn_dim,
            decoder_ffn: self.decoder_ffn_dim,
            activation: activation(
                name,
                self.activation_function
                    .as_deref()
                    .unwrap_or(activation_default),
            )?,
            scale_embedding: self.scale_embedding,
            pre_norm,
            eps: 1e-5,
            quantize: quantize.map(|q| q.dtype()),
        })
    }
}

/// Loads the network, turning a missing or misshapen tensor into an error
/// that names the model and the weights file.
pub fn load_net(
    name: &str,
    weights: &std::path::Path,
    cfg: BartConfig,
    vb: VarBuilder,
    names: &BartNames,
    positions: Positions,
) -> Result<BartNet> {
    BartNet::load(cfg, vb, names, positions).map_err(|e| {
        model_err(
            name,
            format!("`{}` does not fit config.json: {e}", weights.display()),
        )
    })
}

/// The dtype `tidings models inspect` reports for the weights.
pub fn weight_dtype(quantize: Option<crate::config::Quantize>) -> DType {
    match quantize {
        Some(crate::config::Quantize::Q8_0) => DType::U8,
        _ => DType::F32,
    }
}

/// Opens a checkpoint's weights: `model.safetensors` (memory-mapped) or
/// `pytorch_model.bin`.
pub fn open_weights<'a>(
    model: &str,
    path: &std::path::Path,
    device: &Device,
) -> Result<VarBuilder<'a>> {
    let is_bin = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("bin") || e.eq_ignore_ascii_case("pt"));
    let vb = if is_bin {
        VarBuilder::from_pth(path, DType::F32, device)
    } else {
        // SAFETY: the file is a read-only checkpoint that nothing modifies
        // while the job runs; mapping it avoids a copy of the weights.
        unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) }
    };
    vb.map_err(|e| Error::Model {
        model: model.into(),
        message: format!("cannot read weights `{}`: {e}", path.display()),
    })
}
