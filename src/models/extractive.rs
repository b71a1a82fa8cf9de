//! Extractive summaries from sentence embeddings: the `sentence-transformers/all-MiniLM-L6-v2`
//! model (a 6-layer, 384-wide BERT) run through our encoder ([`crate::models::bert`]), followed by
//! the sentence-transformers recipe that checkpoint was trained for — WordPiece tokens truncated
//! to `max_seq_length` (256, from `sentence_bert_config.json`), mean pooling of the last hidden
//! states over the attention mask, then L2 normalisation — so the vectors match what
//! `SentenceTransformer("all-MiniLM-L6-v2").encode(..)` returns.
//!
//! A summary is a choice of sentences ([`Extractive::select`]): each sentence scores its
//! centrality (mean cosine similarity to the rest of the article) plus a lead bias, and sentences
//! are taken best first, skipping near-duplicates of one already taken.
//!
//! Choices made here:
//! - the checkpoint's own `tokenizer.json` pads and truncates to a fixed 128 tokens; we switch
//!   padding off (each batch is padded to its own longest row) and truncate at the
//!   sentence-transformers limit instead, as `SentenceTransformer` does;
//! - sentences are sorted by length before batching so short ones are not padded to a long one;
//!   padding never changes a result because padded positions are masked out of attention and of
//!   the pooling;
//! - the output is always unit length, even for a checkpoint whose `modules.json` has no
//!   `Normalize` module: cosine similarity, the only thing the summarizer needs, is unaffected,
//!   and callers can rely on a dot product being the cosine.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config as BertConfig;
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};
use crate::models::bert::Encoder;

/// Sequence limit when the checkpoint has no `sentence_bert_config.json`: the value
/// all-MiniLM-L6-v2 was trained with (longer inputs were never seen in training).
const DEFAULT_MAX_SEQ_LENGTH: usize = 256;

/// Most sentences in one forward pass.
const MAX_BATCH_ROWS: usize = 64;

/// Most padded tokens (`rows * longest row`) in one forward pass on the CPU. Measured on 64
/// NTREX sentences (2 cores): CPU time is flat from 128 to 2048 tokens per batch and 1.6x
/// higher when all 64 go in one batch, because one batch pads every sentence to the longest
/// while sorted small batches hardly pad at all; the matmuls gain nothing from taller inputs.
const CPU_BATCH_TOKENS: usize = 1024;

/// The same on an accelerator, where wide batches are what keeps the device busy; bounds the
/// attention scores of a batch (`rows * heads * len^2` floats) to about 100 MB at 256 tokens.
const ACCELERATOR_BATCH_TOKENS: usize = 8192;

/// Weight of the lead bias in [`Extractive::select`]: the sentence at (0-based) position `i`
/// gains `LEAD_WEIGHT / (1 + i)`.
pub const LEAD_WEIGHT: f32 = 0.1;

/// Two sentences more similar than this are near-duplicates; [`Extractive::select`] keeps only
/// the first one it picks.
pub const DUPLICATE_COSINE: f32 = 0.9;

/// A loaded sentence-embedding model. Cloning is cheap: weights and tokenizer are shared.
#[derive(Clone)]
pub struct Extractive {
    /// The job's name for the model, put in every error.
    name: Arc<str>,
    model: Arc<Encoder>,
    /// Truncates at `max_seq_len` (special tokens included) and does not pad: for [`Self::embed`].
    tokenizer: Arc<Tokenizer>,
    /// The same vocabulary with no truncation: for [`Self::count_tokens`], which must see the
    /// whole text.
    counter: Arc<Tokenizer>,
    device: Device,
    max_seq_len: usize,
    /// Padded-token budget of one forward pass, by device kind.
    batch_tokens: usize,
}

impl std::fmt::Debug for Extractive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extractive")
            .field("name", &self.name)
            .field("device", &self.device)
            .field("max_seq_len", &self.max_seq_len)
            .finish_non_exhaustive()
    }
}

/// The part of `sentence_bert_config.json` we use.
#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// The part of `1_Pooling/config.json` that says which pooling the checkpoint was trained with.
#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

impl Extractive {
    /// Loads from a directory holding `config.json`, `tokenizer.json` and `model.safetensors`
    /// (the published layout of `sentence-transformers/all-MiniLM-L6-v2`);
    /// `sentence_bert_config.json` and `1_Pooling/config.json` are read when present.
    /// `name` is the job's model name, used in every error.
    pub fn load(name: &str, dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config: BertConfig = read_json(&config_path)?;
        if let Some(model_type) = config.model_type.as_deref() {
            if model_type != "bert" {
                return Err(model_error(
                    name,
                    format!(
                        "`{}` has model_type `{model_type}`; the extractive summarizer runs BERT encoders",
                        config_path.display()
                    ),
                ));
            }
        }

        let pooling_path = dir.join("1_Pooling").join("config.json");
        if pooling_path.is_file() {
            let pooling: PoolingConfig = read_json(&pooling_path)?;
            let mean_only = pooling.pooling_mode_mean_tokens
                && !pooling.pooling_mode_cls_token
                && !pooling.pooling_mode_max_tokens
                && !pooling.pooling_mode_mean_sqrt_len_tokens;
            if !mean_only {
                return Err(model_error(
                    name,
                    format!(
                        "`{}` asks for a pooling other than mean pooling, which is the only one supported",
                        pooling_path.display()
                    ),
                ));
            }
        }

        // Position embeddings stop at `max_position_embeddings`: a longer limit would index
        // past them, so the configured limit is capped there.
        let st_path = dir.join("sentence_bert_config.json");
        let configured = if st_path.is_file() {
            read_json::<SentenceBertConfig>(&st_path)?.max_seq_length
        } else {
            None
        };
        let max_seq_len = configured
            .unwrap_or(DEFAULT_MAX_SEQ_LENGTH)
            .min(config.max_position_embeddings);
        if max_seq_len < 2 {
            return Err(model_error(
                name,
                format!("max_seq_length {max_seq_len} leaves no room for [CLS] and [SEP]"),
            ));
        }

        let tokenizer_path = dir.join("tokenizer.json");
        let mut counter = Tokenizer::from_file(&tokenizer_path).map_err(Error::tokenizer(
            name,
            &format!("failed to load `{}`", tokenizer_path.display()),
        ))?;
        counter.with_padding(None);
        counter
            .with_truncation(None)
            .map_err(Error::tokenizer(name, "failed to switch truncation off"))?;
        let mut tokenizer = counter.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_seq_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(Error::tokenizer(name, "failed to set truncation"))?;

        // Read into memory rather than mmap: an mmap of a file that another process replaces
        // would be undefined behaviour, and the 90 MB copy is paid once per process.
        let weights_path = dir.join("model.safetensors");
        let bytes =
            std::fs::read(&weights_path).map_err(Error::io("failed to read", &weights_path))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device).map_err(
            Error::candle(
                name,
                &format!("failed to parse `{}`", weights_path.display()),
            ),
        )?;
        let model = Encoder::load(vb, &config).map_err(Error::candle(
            name,
            &format!(
                "`{}` does not hold the BERT weights config.json describes",
                weights_path.display()
            ),
        ))?;

        Ok(Extractive {
            name: name.into(),
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            counter: Arc::new(counter),
            device: device.clone(),
            max_seq_len,
            batch_tokens: if device.is_cpu() {
                CPU_BATCH_TOKENS
            } else {
                ACCELERATOR_BATCH_TOKENS
            },
        })
    }

    /// Embeds sentences: one unit-length vector per sentence, in input order.
    ///
    /// Sentences are tokenized, sorted by length and run in batches padded to their longest
    /// row, with an attention mask; each is truncated to the model's `max_seq_length` tokens
    /// (special tokens included) as sentence-transformers does. A sentence's vector does not
    /// depend on the other sentences in the call.
    pub fn embed(&self, sentences: &[&str]) -> Result<Vec<Vec<f32>>> {
        if sentences.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(sentences.to_vec(), true)
            .map_err(Error::tokenizer(&self.name, "failed to encode sentences"))?;

        // Longest first: the first batch is the largest, so running out of memory happens at
        // once rather than after most of the work.
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].len()));

        let mut out: Vec<Vec<f32>> = vec![Vec::new(); sentences.len()];
        let mut start = 0;
        while start < order.len() {
            let longest = encodings[order[start]].len().max(1);
            let rows = (self.batch_tokens / longest).clamp(1, MAX_BATCH_ROWS);
            let end = (start + rows).min(order.len());
            let batch = &order[start..end];
            let vectors =
                self.embed_batch(batch.iter().map(|&i| &encodings[i]), batch.len(), longest)?;
            for (&i, v) in batch.iter().zip(vectors) {
                out[i] = v;
            }
            start = end;
        }
        Ok(out)
    }

    /// One forward pass over `rows` encodings, right-padded to `width` tokens.
    fn embed_batch<'a>(
        &self,
        encodings: impl Iterator<Item = &'a tokenizers::Encoding>,
        rows: usize,
        width: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let mut ids = vec![0u32; rows * width];
        let mut type_ids = vec![0u32; rows * width];
        let mut mask = vec![0f32; rows * width];
        for (row, enc) in encodings.enumerate() {
            let at = row * width;
            let n = enc.len();
            ids[at..at + n].copy_from_slice(enc.get_ids());
            type_ids[at..at + n].copy_from_slice(enc.get_type_ids());
            mask[at..at + n].fill(1.0);
        }
        let err = |ctx: &str| Error::candle(&self.name, ctx);
        let ids = Tensor::from_vec(ids, (rows, width), &self.device)
            .map_err(err("failed to build input ids"))?;
        let type_ids = Tensor::from_vec(type_ids, (rows, width), &self.device)
            .map_err(err("failed to build token type ids"))?;
        let mask = Tensor::from_vec(mask, (rows, width), &self.device)
            .map_err(err("failed to build attention mask"))?;

        let hidden = self
            .model
            .forward(&ids, &type_ids, &mask)
            .map_err(err("forward pass failed"))?;
        pool_and_normalize(&hidden, &mask)
            .and_then(|t| t.to_vec2::<f32>())
            .map_err(err("mean pooling failed"))
    }

    /// Picks `k` sentence indices to form a summary, sorted in story order.
    ///
    /// Each sentence `i` of `n` scores
    /// `centrality(i) + LEAD_WEIGHT / (1 + i)`, where `centrality(i)` is its mean cosine
    /// similarity to the other `n - 1` sentences (0 for a one-sentence article) and
    /// [`LEAD_WEIGHT`] is 0.1. The lead bonus (+0.10 for the first sentence, +0.05 for the
    /// second, +0.02 for the fifth) reflects that news stories put their gist first. Its size is
    /// set against all-MiniLM-L6-v2 on NTREX articles, where centrality spans about 0.26 within
    /// an article (median) but the four most central sentences lie within about 0.06: the
    /// bonus decides among the most central sentences in favour of the lead, while an opening
    /// sentence far from the article's topic (a dateline, a quote) still loses.
    /// Sentences are then taken best score first (earlier sentence on a tie), skipping any whose
    /// cosine similarity to one already taken exceeds [`DUPLICATE_COSINE`] (0.9), until `k` are
    /// taken; so fewer than `k` come back when the rest are near-duplicates.
    ///
    /// `k >= n` returns every index (the article is its own summary); `k == 0` returns none.
    /// Embeddings need not be normalised; a zero vector has similarity 0 to everything.
    pub fn select(embeddings: &[Vec<f32>], k: usize) -> Vec<usize> {
        let n = embeddings.len();
        if k >= n {
            return (0..n).collect();
        }
        if k == 0 {
            return Vec::new();
        }

        let norms: Vec<f32> = embeddings
            .iter()
            .map(|e| e.iter().map(|x| x * x).sum::<f32>().sqrt())
            .collect();
        let mut sim = vec![0f32; n * n];
        for i in 0..n {
            for j in i + 1..n {
                let denom = norms[i] * norms[j];
                let dot: f32 = embeddings[i]
                    .iter()
                    .zip(&embeddings[j])
                    .map(|(a, b)| a * b)
                    .sum();
                let c = if denom > 0.0 { dot / denom } else { 0.0 };
                sim[i * n + j] = c;
                sim[j * n + i] = c;
            }
        }

        // n >= 2 here because 1 <= k < n.
        let score: Vec<f32> = (0..n)
            .map(|i| {
                let centrality = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| sim[i * n + j])
                    .sum::<f32>()
                    / (n - 1) as f32;
                centrality + LEAD_WEIGHT / (1 + i) as f32
            })
            .collect();

        let mut ranked: Vec<usize> = (0..n).collect();
        // `total_cmp` keeps the order defined even if a NaN slipped into an embedding.
        ranked.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));

        let mut picked: Vec<usize> = Vec::with_capacity(k);
        for i in ranked {
            if picked.len() == k {
                break;
            }
            if picked.iter().all(|&p| sim[i * n + p] <= DUPLICATE_COSINE) {
                picked.push(i);
            }
        }
        picked.sort_unstable();
        picked
    }

    /// Number of WordPiece tokens of `text`: the whole text (no truncation), special tokens
    /// (`[CLS]`, `[SEP]`) not counted. Used for `meta.input_tokens`.
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        let encoding = self
            .counter
            .encode(text, false)
            .map_err(Error::tokenizer(&self.name, "failed to encode text"))?;
        Ok(encoding.len())
    }

    /// The token limit each sentence is truncated to (special tokens included).
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }
}

/// Mean of the hidden states over unmasked positions, then scaled to unit length; the same
/// arithmetic as sentence-transformers' `Pooling(mean)` + `Normalize` (sum over
/// `max(mask sum, 1e-9)`, then divide by `max(norm, 1e-12)`), so results match it to rounding.
fn pool_and_normalize(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    mean.broadcast_div(&norm)
}

/// Reads and parses a JSON file; a parse error keeps serde's message (line and column) as the
/// source of an I/O error that names the file.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(Error::io("failed to read", path))?;
    serde_json::from_str(&text)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        .map_err(Error::io("failed to parse", path))
}

fn model_error(name: &str, message: String) -> Error {
    Error::Model {
        model: name.to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit vector along axis `axis` of a `dim`-dimensional space.
    fn axis(dim: usize, axis: usize) -> Vec<f32> {
        let mut v = vec![0.0; dim];
        v[axis] = 1.0;
        v
    }

    /// `a * cos(t) + b * sin(t)` for orthonormal `a`, `b`: cosine `cos(t)` to `a`.
    fn blend(a: &[f32], b: &[f32], t: f32) -> Vec<f32> {
        a.iter()
            .zip(b)
            .map(|(x, y)| x * t.cos() + y * t.sin())
            .collect()
    }

    #[test]
    fn model_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
        assert_send_sync_clone::<Extractive>();
    }

    #[test]
    fn k_at_least_n_returns_all_and_zero_returns_none() {
        let e: Vec<Vec<f32>> = (0..4).map(|i| axis(4, i)).collect();
        assert_eq!(Extractive::select(&e, 4), vec![0, 1, 2, 3]);
        assert_eq!(Extractive::select(&e, 10), vec![0, 1, 2, 3]);
        assert_eq!(Extractive::select(&e, 0), Vec::<usize>::new());
        assert_eq!(Extractive::select(&[], 3), Vec::<usize>::new());
        assert_eq!(Extractive::select(&e[..1], 1), vec![0]);
    }

    #[test]
    fn central_sentences_win_and_come_back_in_story_order() {
        // Sentences 3 and 5 sit between the topic axes, so they are closest to everything;
        // the others are orthogonal outliers (or nearly so).
        let x = axis(8, 0);
        let y = axis(8, 1);
        let e = vec![
            axis(8, 2),
            axis(8, 3),
            axis(8, 4),
            blend(&x, &y, 0.5),
            x.clone(),
            blend(&x, &y, 1.0),
            y.clone(),
        ];
        let picked = Extractive::select(&e, 2);
        assert_eq!(picked, vec![3, 5]);
        let picked = Extractive::select(&e, 4);
        assert_eq!(picked.len(), 4);
        assert!(
            picked.windows(2).all(|w| w[0] < w[1]),
            "{picked:?} not in story order"
        );
        assert!(picked.contains(&3) && picked.contains(&5));
    }

    #[test]
    fn lead_bias_breaks_ties_toward_early_sentences() {
        // All sentences mutually orthogonal: centrality is 0 everywhere, only the lead bias
        // separates them.
        let e: Vec<Vec<f32>> = (0..6).map(|i| axis(6, i)).collect();
        assert_eq!(Extractive::select(&e, 2), vec![0, 1]);
        assert_eq!(Extractive::select(&e, 3), vec![0, 1, 2]);
    }

    #[test]
    fn lead_bias_does_not_overrule_clear_centrality() {
        // Sentence 0 is an outlier; sentences 1..=4 share a topic. Centrality of the topic
        // sentences (~0.6) outweighs the first sentence's +0.1 bonus.
        let topic = axis(8, 0);
        let other = axis(8, 1);
        let e = vec![
            axis(8, 7),
            blend(&topic, &other, 0.2),
            blend(&topic, &other, 0.7),
            blend(&topic, &other, 0.1),
            blend(&topic, &other, 0.6),
        ];
        let picked = Extractive::select(&e, 1);
        assert_ne!(picked, vec![0]);
    }

    #[test]
    fn near_duplicates_are_skipped() {
        let x = axis(4, 0);
        let y = axis(4, 1);
        // 0 and 1 are near-duplicates (cos(0.1) = 0.995); 2 is a different sentence.
        let e = vec![
            x.clone(),
            blend(&x, &y, 0.1),
            blend(&x, &y, 1.2),
            axis(4, 2),
        ];
        let picked = Extractive::select(&e, 2);
        assert!(
            !(picked.contains(&0) && picked.contains(&1)),
            "picked both near-duplicates: {picked:?}"
        );
        assert_eq!(picked.len(), 2);

        // Only duplicates left: fewer than k come back.
        let e = vec![x.clone(), x.clone(), x.clone(), blend(&x, &y, 0.05)];
        assert_eq!(Extractive::select(&e, 2), vec![0]);
    }

    #[test]
    fn zero_and_unnormalised_vectors_are_handled() {
        let e = vec![vec![0.0, 0.0], vec![3.0, 0.0], vec![0.0, 5.0]];
        let picked = Extractive::select(&e, 2);
        assert_eq!(picked.len(), 2);
        assert!(picked.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn pooling_ignores_padding_and_normalises() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // Row 0: two real tokens then garbage in the padded slot; row 1: three real tokens.
        let hidden = Tensor::new(
            &[
                [[1f32, 0.0], [3.0, 0.0], [100.0, 100.0]],
                [[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]],
            ],
            &dev,
        )?;
        let mask = Tensor::new(&[[1f32, 1.0, 0.0], [1.0, 1.0, 1.0]], &dev)?;
        let out = pool_and_normalize(&hidden, &mask)?.to_vec2::<f32>()?;
        assert_eq!(out, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        Ok(())
    }
}
