//! A tiny random BERT sentence-embedding checkpoint in the published
//! sentence-transformers layout (`config.json`, `tokenizer.json`, `vocab.txt`,
//! `model.safetensors`, `sentence_bert_config.json`, `1_Pooling/config.json`).
//!
//! The weights are created through candle's own BERT loader on a `VarMap`, so the
//! tensor names are exactly the ones the real checkpoint uses, then every variable is
//! overwritten from a seeded PRNG (candle's CPU RNG cannot be seeded) so the fixture is
//! the same on every run and machine.

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::Tokenizer;

/// The sequence limit written to `sentence_bert_config.json`: small, so tests can
/// exceed it with a short text.
pub const MAX_SEQ_LENGTH: usize = 16;

/// Words of the vocabulary (after the special tokens), separated by spaces; `##s` lets
/// plurals split.
const WORDS: &str =
    "the a an of to in on and is was for with at by from it he she they we said says \
     new old government minister city river rain flood town day week year police \
     court school team match won lost game price oil market bank rate cat dog sleeps \
     runs house car road tax steel import export law vote people after before during \
     three two one many heavy warm cold big small report news story today tuesday \
     monday officials plan change name parliament member ##s ##ed ##ing . , ! ? ' \"";

/// SplitMix64: tiny, seedable, and good enough to fill weights.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn next_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// The BERT config of the fixture: hidden 32, 2 layers, 4 heads.
pub fn config() -> Config {
    Config {
        vocab_size: 5 + WORDS.split_whitespace().count(),
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 64,
        model_type: Some("bert".to_string()),
        ..Config::default()
    }
}

/// Writes the fixture into `dir` (which must exist); the same `seed` gives the same files.
pub fn write(dir: &Path, seed: u64) -> Result<()> {
    let config = config();
    let config_json = serde_json::json!({
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": config.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": config.intermediate_size,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": config.max_position_embeddings,
        "model_type": "bert",
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": config.type_vocab_size,
        "vocab_size": config.vocab_size,
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config_json)?,
    )?;
    std::fs::write(
        dir.join("sentence_bert_config.json"),
        format!("{{\"max_seq_length\": {MAX_SEQ_LENGTH}, \"do_lower_case\": false}}"),
    )?;
    std::fs::create_dir_all(dir.join("1_Pooling"))?;
    std::fs::write(
        dir.join("1_Pooling").join("config.json"),
        r#"{"word_embedding_dimension": 32, "pooling_mode_cls_token": false,
            "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false,
            "pooling_mode_mean_sqrt_len_tokens": false}"#,
    )?;

    write_tokenizer(dir)?;
    write_weights(dir, &config, seed)
}

/// A BERT WordPiece tokenizer (lowercasing normalizer, `[CLS] … [SEP]` template) like the
/// real one, over [`WORDS`].
fn write_tokenizer(dir: &Path) -> Result<()> {
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let vocab_path = dir.join("vocab.txt");
    let lines: Vec<&str> = specials
        .into_iter()
        .chain(WORDS.split_whitespace())
        .collect();
    std::fs::write(&vocab_path, lines.join("\n") + "\n")?;

    let wordpiece = WordPiece::builder()
        .files(vocab_path.to_string_lossy().into_owned())
        .unk_token("[UNK]".to_string())
        .build()
        .map_err(anyhow::Error::msg)?;
    let mut tokenizer = Tokenizer::new(wordpiece);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .map_err(anyhow::Error::msg)?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".to_string(), 3),
        ("[CLS]".to_string(), 2),
    )));
    tokenizer
        .save(dir.join("tokenizer.json"), true)
        .map_err(anyhow::Error::msg)?;
    Ok(())
}

fn write_weights(dir: &Path, config: &Config, seed: u64) -> Result<()> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    // Creating the model registers every variable under the checkpoint's names.
    BertModel::load(vb, config)?;

    let mut rng = SplitMix64(seed);
    let data = varmap.data().lock().expect("varmap lock");
    // HashMap order differs between runs: fill in name order so a seed means one model.
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let n = var.elem_count();
        let values: Vec<f32> = if name.ends_with("LayerNorm.weight") {
            // Around 1, so layer norm keeps its scale.
            (0..n).map(|_| 1.0 + 0.1 * rng.next_f32()).collect()
        } else {
            (0..n).map(|_| 0.3 * rng.next_f32()).collect()
        };
        var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu)?)?;
    }
    drop(data);
    varmap.save(dir.join("model.safetensors"))?;
    Ok(())
}
