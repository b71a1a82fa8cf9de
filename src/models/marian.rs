//! Marian (OPUS-MT) checkpoints as Helsinki-NLP publishes them: a
//! BART-style network ([`crate::models::bart`], norms after each block,
//! `swish` feed-forward, embeddings scaled by `sqrt(d_model)`), sinusoidal
//! positions computed here (`sin` in the first half of the dimensions, `cos`
//! in the second, frequency `10000^(-2i/d)`: the checkpoints do not store
//! them), a `final_logits_bias` added to the logits, and the Marian
//! tokenizer.
//!
//! Files: `config.json`, weights in `model.safetensors` or
//! `pytorch_model.bin`, `source.spm` and `target.spm` (SentencePiece models,
//! parsed in Rust by [`crate::models::spm`]), `vocab.json` (and
//! `target_vocab.json` when the vocabularies are separate),
//! `generation_config.json` and `tokenizer_config.json` when present.
//!
//! Tokenization follows the reference `MarianTokenizer`: a leading language
//! token (`>>pes<<`) is cut off and kept whole; the rest is split into pieces
//! by the source SentencePiece model; each piece's id is looked up *by its
//! text* in `vocab.json` (the SentencePiece ids are not the model's ids;
//! pieces missing from the vocabulary become `<unk>`); `</s>` ends the input.
//! Output ids map back to pieces through the (target) vocabulary; the
//! pieces are joined with `▁` read as a space, as the target SentencePiece
//! model's `decode_pieces` does (special tokens are dropped).
//!
//! Multi-target checkpoints (`>>xx<<` tokens in the vocabulary): a
//! translation into a language gets its token prepended (`>>fa<<`, else the
//! ISO 639-3 forms such as `>>pes<<`), unless the input already starts with
//! one; a language without a token is a per-record error. Single-target
//! checkpoints translate into their one language; when `tokenizer_config.json`
//! names it (`target_lang`), other targets are refused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;
use serde::Deserialize;

use crate::error::Result;
use crate::models::bart::{
    load_net, model_err, open_weights, read_json, weight_dtype, BartNames, BartShape, Positions,
};
use crate::models::seq2seq::{
    iso639_3, sinusoidal, CheckpointGeneration, Family, Seq2SeqModel, Seq2SeqText, SpecialIds,
};
use crate::models::spm::SpmModel;
use crate::models::Task;
use crate::text::langid::Language;

#[derive(Debug, Deserialize)]
struct MarianConfig {
    #[serde(flatten)]
    shape: BartShape,
    #[serde(default)]
    normalize_before: bool,
    #[serde(default)]
    normalize_embedding: bool,
    #[serde(default)]
    static_position_embeddings: Option<bool>,
    #[serde(default = "yes")]
    share_encoder_decoder_embeddings: bool,
}

fn yes() -> bool {
    true
}

/// The files of a Marian checkpoint.
#[derive(Debug, Clone)]
pub struct MarianFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// `model.safetensors` or `pytorch_model.bin`.
    pub weights: PathBuf,
    /// `source.spm`.
    pub source_spm: PathBuf,
    /// `target.spm`.
    pub target_spm: PathBuf,
    /// `vocab.json`.
    pub vocab: PathBuf,
    /// `target_vocab.json` (separate vocabularies only).
    pub target_vocab: Option<PathBuf>,
    /// `tokenizer_config.json`.
    pub tokenizer_config: Option<PathBuf>,
    /// `generation_config.json`.
    pub generation_config: Option<PathBuf>,
}

/// Loads a Marian checkpoint.
/// `quantize` runs the projections through candle's quantized matmul.
pub fn load(
    name: &str,
    files: &MarianFiles,
    quantize: Option<crate::config::Quantize>,
    device: &Device,
) -> Result<Seq2SeqModel> {
    let cfg: MarianConfig = read_json(name, &files.config)?;
    if cfg.normalize_embedding {
        return Err(model_err(
            name,
            "Marian checkpoints with `normalize_embedding = true` are not supported".into(),
        ));
    }
    if cfg.static_position_embeddings == Some(false) {
        return Err(model_err(
            name,
            "Marian checkpoints with learned position embeddings are not supported".into(),
        ));
    }
    if cfg.normalize_before {
        return Err(model_err(
            name,
            "Marian checkpoints with `normalize_before = true` are not supported".into(),
        ));
    }
    let bart = cfg.shape.config(name, "swish", false, quantize)?;
    let text = MarianText::load(name, files)?;
    let vb = open_weights(name, &files.weights, device)?;
    let has = |n: &str| vb.contains_tensor(n);
    let enc_embed = ["model.encoder.embed_tokens.weight", "model.shared.weight"]
        .into_iter()
        .find(|n| has(n))
        .ok_or_else(|| {
            model_err(
                name,
                format!(
                    "`{}` has no `model.shared.weight` nor `model.encoder.embed_tokens.weight`",
                    files.weights.display()
                ),
            )
        })?;
    let dec_embed = if cfg.share_encoder_decoder_embeddings {
        [
            "model.decoder.embed_tokens.weight",
            "model.shared.weight",
            enc_embed,
        ]
        .into_iter()
        .find(|n| has(n))
        .unwrap_or(enc_embed)
    } else {
        "model.decoder.embed_tokens.weight"
    };
    let positions = Positions {
        table: sinusoidal(
            cfg.shape.max_positions(512),
            cfg.shape.d_model(),
            (cfg.shape.d_model() / 2) as f64,
            device,
        )
        .map_err(|e| model_err(name, e.to_string()))?,
        offset: 0,
    };
    let names = BartNames {
        model: "model",
        enc_embed: enc_embed.into(),
        dec_embed: dec_embed.into(),
        lm_head: Some("lm_head.weight".into()),
        logits_bias: Some("final_logits_bias".into()),
    };
    let net = load_net(name, &files.weights, bart, vb, &names, positions)?;
    let defaults = CheckpointGeneration::read(name, files.generation_config.as_deref())?;
    let pad = defaults
        .pad_token_id
        .or(cfg.shape.pad_token_id)
        .unwrap_or(text.pad);
    let ids = SpecialIds {
        decoder_start: defaults
            .decoder_start_token_id
            .or(cfg.shape.decoder_start_token_id)
            .unwrap_or(pad),
        eos: defaults
            .eos_token_id
            .as_ref()
            .and_then(|e| e.first())
            .or(cfg.shape.eos_token_id)
            .unwrap_or(text.eos),
        pad,
    };
    Ok(Seq2SeqModel {
        name: name.into(),
        family: Family::Marian,
        parameters: net.parameters(),
        vocab: net.vocab(),
        max_source_tokens: Some(net.max_positions()),
        net: Arc::new(net),
        text: Arc::new(text),
        ids,
        defaults,
        dtype: weight_dtype(quantize),
    })
}

#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    target_lang: Option<String>,
    separate_vocabs: Option<bool>,
}

/// The Marian tokenizer (see the module docs).
pub struct MarianText {
    name: String,
    source: tokenizers::Tokenizer,
    vocab: HashMap<String, u32>,
    /// Output id -> piece.
    pieces: HashMap<u32, String>,
    unk: u32,
    eos: u32,
    pad: u32,
    /// `>>xx<<` tokens of a multi-target vocabulary.
    lang_tokens: Vec<String>,
    target_lang: Option<String>,
}

impl MarianText {
    fn load(name: &str, files: &MarianFiles) -> Result<Self> {
        let vocab: HashMap<String, u32> = read_json(name, &files.vocab)?;
        let target_vocab: Option<HashMap<String, u32>> = match &files.target_vocab {
            Some(p) => Some(read_json(name, p)?),
            None => None,
        };
        let tcfg: TokenizerConfig = match &files.tokenizer_config {
            Some(p) => read_json(name, p)?,
            None => TokenizerConfig::default(),
        };
        let separate = tcfg.separate_vocabs.unwrap_or(false) && target_vocab.is_some();
        let out_vocab = if separate {
            target_vocab.as_ref().expect("checked")
        } else {
            &vocab
        };
        let special = |tok: &str| -> Result<u32> {
            vocab.get(tok).copied().ok_or_else(|| {
                model_err(
                    name,
                    format!("`{}` has no `{tok}` token", files.vocab.display()),
                )
            })
        };
        let unk = special("<unk>")?;
        let eos = special("</s>")?;
        let pad = special("<pad>")?;
        let source = SpmModel::open(name, &files.source_spm)?.tokenizer()?;
        let mut lang_tokens: Vec<String> = vocab
            .keys()
            .filter(|k| k.starts_with(">>") && k.ends_with("<<") && k.len() > 4)
            .cloned()
            .collect();
        lang_tokens.sort();
        Ok(MarianText {
            name: name.into(),
            source,
            pieces: out_vocab.iter().map(|(k, &v)| (v, k.clone())).collect(),
            vocab,
            unk,
            eos,
            pad,
            lang_tokens,
            target_lang: tcfg.target_lang,
        })
    }

    /// The `>>xx<<` token for a language, if the vocabulary has one.
    fn lang_token(&self, lang: &Language) -> Option<&str> {
        std::iter::once(lang.code)
            .chain(iso639_3(lang))
            .map(|c| format!(">>{c}<<"))
            .find_map(|t| self.lang_tokens.iter().find(|x| **x == t))
            .map(String::as_str)
    }

    /// Model ids of a text (language token, pieces, `</s>`).
    pub fn ids(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        let mut out = Vec::new();
        let mut rest = text;
        if let Some(end) = text.strip_prefix(">>").and_then(|t| t.find("<<")) {
            let code = &text[..end + 4];
            out.push(self.vocab.get(code).copied().unwrap_or(self.unk));
            rest = &text[end + 4..];
        }
        let enc = self
            .source
            .encode(rest, false)
            .map_err(|e| format!("model `{}` cannot tokenize the input: {e}", self.name))?;
        out.extend(
            enc.get_tokens()
                .iter()
                .map(|p| self.vocab.get(p).copied().unwrap_or(self.unk)),
        );
        out.push(self.eos);
        Ok(out)
    }
}

impl Seq2SeqText for MarianText {
    fn encode(&self, task: Task, text: &str) -> std::result::Result<Vec<u32>, String> {
        let Task::Translate { to, .. } = task else {
            return Err(format!(
                "model `{}` is a Marian translation model; it cannot summarize",
                self.name
            ));
        };
        if text.starts_with(">>") || self.lang_tokens.is_empty() {
            if let Some(t) = &self.target_lang {
                let ok = t.eq_ignore_ascii_case(to.code)
                    || iso639_3(to).iter().any(|c| t.eq_ignore_ascii_case(c));
                if !ok && self.lang_tokens.is_empty() {
                    return Err(format!(
                        "model `{}` translates into `{t}` only, not {} ({})",
                        self.name, to.name, to.code
                    ));
                }
            }
            return self.ids(text);
        }
        match self.lang_token(to) {
            Some(tok) => self.ids(&format!("{tok} {text}")),
            None => Err(format!(
                "model `{}` cannot translate into {} ({}): its vocabulary has no target \
                 token for it (has {})",
                self.name,
                to.name,
                to.code,
                self.lang_tokens.join(" ")
            )),
        }
    }

    fn forced_bos(&self, _task: Task) -> std::result::Result<Option<u32>, String> {
        Ok(None)
    }

    fn decode(&self, ids: &[u32]) -> String {
        let pieces: Vec<&str> = ids
            .iter()
            .filter(|&&i| i != self.eos && i != self.pad && i != self.unk)
            .filter_map(|i| self.pieces.get(i).map(String::as_str))
            .collect();
        // What the target SentencePiece model's `decode_pieces` does for
        // these vocabularies: concatenate, `▁` back to spaces, trim.
        pieces.concat().replace('\u{2581}', " ").trim().to_string()
    }

    fn languages(&self) -> Vec<String> {
        if !self.lang_tokens.is_empty() {
            return self
                .lang_tokens
                .iter()
                .map(|t| {
                    t.trim_start_matches(">>")
                        .trim_end_matches("<<")
                        .to_string()
                })
                .collect();
        }
        self.target_lang.iter().cloned().collect()
    }
}
