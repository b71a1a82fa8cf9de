//! The BERT encoder of the extractive summary (sentence embeddings), over
//! the checkpoint's safetensors as Hugging Face names them.
//!
//! candle-transformers has a BERT, but its projections go through candle's
//! float matmul (8-wide AVX2 kernels on a stable compiler, see
//! [`crate::models::f32_gemm`]) and its GELU through libm's scalar `erf`
//! per value: a profile of the MiniLM summary of 64 NTREX articles on a
//! 2-core AVX-512 VM had 58% of the time in candle's matmul kernel and 18%
//! in `erf`/`erfc`. Here the projections are [`Proj`]s (our packed f32
//! kernel where it runs; query, key and value as one product) and GELU is
//! [`gelu_erf_in_place`]. The arithmetic is the published one: embeddings
//! (word + absolute position + token type) and LayerNorm; per layer,
//! self-attention with the padding mask as an additive key bias (the
//! encoder-decoder families' [`key_bias`] and [`attend`]), output
//! projection, residual and LayerNorm, then
//! the feed-forward block with its residual and LayerNorm.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{layer_norm, LayerNorm, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};

use crate::generate::softmax::gelu_erf_in_place;
use crate::models::bart::Proj;
use crate::models::seq2seq::{attend, key_bias, merge_heads, split_heads};

/// One encoder layer.
#[derive(Clone)]
struct Layer {
    /// Query, key and value stacked: `[3 * hidden, hidden]`.
    qkv: Proj,
    out: Proj,
    attn_norm: LayerNorm,
    up: Proj,
    down: Proj,
    ffn_norm: LayerNorm,
}

/// A BERT encoder returning the last hidden states.
#[derive(Clone)]
pub struct Encoder {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    act: HiddenAct,
}

impl Encoder {
    /// Loads the weights `config` describes from `vb` (at its root or under
    /// `bert.`, as checkpoints save them).
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let h = config.hidden_size;
        if config.num_attention_heads == 0 || !h.is_multiple_of(config.num_attention_heads) {
            candle_core::bail!(
                "hidden_size {h} is not a multiple of num_attention_heads {}",
                config.num_attention_heads
            );
        }
        let eps = config.layer_norm_eps;
        let e = vb.pp("embeddings");
        let word = e.get((config.vocab_size, h), "word_embeddings.weight")?;
        let position = e.get(
            (config.max_position_embeddings, h),
            "position_embeddings.weight",
        )?;
        let token_type = e.get((config.type_vocab_size, h), "token_type_embeddings.weight")?;
        let embed_norm = layer_norm(h, eps, e.pp("LayerNorm"))?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let s = l.pp("attention.self");
            let part = |name: &str| -> Result<(Tensor, Tensor)> {
                Ok((
                    s.get((h, h), &format!("{name}.weight"))?,
                    s.get(h, &format!("{name}.bias"))?,
                ))
            };
            let (q, k, v) = (part("query")?, part("key")?, part("value")?);
            let qkv = Proj::from_weight(
                Tensor::cat(&[&q.0, &k.0, &v.0], 0)?,
                Some(Tensor::cat(&[&q.1, &k.1, &v.1], 0)?),
                None,
            )?;
            let inner = config.intermediate_size;
            layers.push(Layer {
                qkv,
                out: Proj::load(&l.pp("attention.output.dense"), h, h, true, None)?,
                attn_norm: layer_norm(h, eps, l.pp("attention.output.LayerNorm"))?,
                up: Proj::load(&l.pp("intermediate.dense"), h, inner, true, None)?,
                down: Proj::load(&l.pp("output.dense"), inner, h, true, None)?,
                ffn_norm: layer_norm(h, eps, l.pp("output.LayerNorm"))?,
            });
        }
        Ok(Encoder {
            word,
            position,
            token_type,
            embed_norm,
            layers,
            heads: config.num_attention_heads,
            hidden: h,
            act: config.hidden_act,
        })
    }

    /// Hidden states `(rows, width, hidden)` of `ids` (`(rows, width)`,
    /// `u32`) with their token types, where `mask` (`(rows, width)`, 1 for
    /// a token, 0 for padding) says which positions are real.
    pub fn forward(&self, ids: &Tensor, type_ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (rows, width) = ids.dims2()?;
        if width > self.position.dim(0)? {
            candle_core::bail!(
                "{width} tokens exceed the model's {} positions",
                self.position.dim(0)?
            );
        }
        let embed = |table: &Tensor, ids: &Tensor| -> Result<Tensor> {
            table
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((rows, width, self.hidden))
        };
        let x = (embed(&self.word, ids)? + embed(&self.token_type, type_ids)?)?
            .broadcast_add(&self.position.narrow(0, 0, width)?)?;
        let mut x = self.embed_norm.forward(&x)?;
        let bias = key_bias(mask)?;
        let scale = 1.0 / ((self.hidden / self.heads) as f64).sqrt();
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let part = |i: usize| -> Result<Tensor> {
                split_heads(
                    &qkv.narrow(D::Minus1, i * self.hidden, self.hidden)?,
                    self.heads,
                )
            };
            let q = (part(0)? * scale)?;
            let y = merge_heads(&attend(&q, &part(1)?, &part(2)?, Some(&bias))?)?;
            x = layer.attn_norm.forward(&(layer.out.forward(&y)? + &x)?)?;
            let h = self.activate(layer.up.forward(&x)?)?;
            x = layer.ffn_norm.forward(&(layer.down.forward(&h)? + &x)?)?;
        }
        Ok(x)
    }

    /// The feed-forward activation of the configuration.
    fn activate(&self, h: Tensor) -> Result<Tensor> {
        match self.act {
            HiddenAct::Gelu if h.device().is_cpu() && h.dtype() == DType::F32 => {
                let dims = h.dims().to_vec();
                let mut values = h.flatten_all()?.to_vec1::<f32>()?;
                gelu_erf_in_place(&mut values);
                Tensor::from_vec(values, dims, h.device())
            }
            HiddenAct::Gelu => h.gelu_erf(),
            HiddenAct::GeluApproximate => h.gelu(),
            HiddenAct::Relu => h.relu(),
        }
    }
}
