//! M2M100 and NLLB checkpoints (`model_type = "m2m100"`, e.g.
//! `facebook/nllb-200-distilled-600M`): a BART-style network
//! ([`crate::models::bart`]) with norms before each block and a final norm
//! per stack, `relu` feed-forward, embeddings scaled by `sqrt(d_model)`, and
//! sinusoidal positions that start after the padding id (position `i` of a
//! sequence uses row `pad + 1 + i`; frequency `10000^(-i/(d/2 - 1))`, `sin`
//! in the first half of the dimensions, `cos` in the second). candle has no
//! implementation of this family.
//!
//! Languages are tokens: NLLB's `spa_Latn`, `pes_Arab`; M2M100's `__es__`.
//! The encoder input is `[source language] pieces </s>`; the decoder starts
//! from `</s>` (`decoder_start_token_id`) and the target language token is
//! forced as the first generated token, as the reference implementation
//! does with `forced_bos_token_id`. The job's ISO 639-1 codes are mapped to
//! the checkpoint's tokens by their ISO 639-3 forms (`fa` -> `pes_Arab`,
//! `es` -> `spa_Latn`; `zh` prefers `zho_Hans`).
//!
//! Tokenizer: `tokenizer.json` when the checkpoint has one (the published
//! NLLB models do); otherwise `sentencepiece.bpe.model` with the fairseq
//! layout NLLB uses: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, SentencePiece
//! piece `i` at `i + 1`, then the language codes in the order of
//! `tokenizer_config.json`'s `additional_special_tokens` (transformers 5:
//! `extra_special_tokens`), then `<mask>`.

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

/// The files of an M2M100/NLLB checkpoint.
#[derive(Debug, Clone)]
pub struct M2M100Files {
    /// `config.json`.
    pub config: PathBuf,
    /// `model.safetensors` or `pytorch_model.bin`.
    pub weights: PathBuf,
    /// `tokenizer.json`, preferred.
    pub tokenizer_json: Option<PathBuf>,
    /// `sentencepiece.bpe.model`, used when there is no `tokenizer.json`.
    pub spm: Option<PathBuf>,
    /// `tokenizer_config.json` (language codes for the SentencePiece path).
    pub tokenizer_config: Option<PathBuf>,
    /// `generation_config.json`.
    pub generation_config: Option<PathBuf>,
}

/// Loads an M2M100/NLLB checkpoint.
/// `quantize` runs the projections through candle's quantized matmul.
pub fn load(
    name: &str,
    files: &M2M100Files,
    quantize: Option<crate::config::Quantize>,
    device: &Device,
) -> Result<Seq2SeqModel> {
    let cfg: BartShape = read_json(name, &files.config)?;
    let bart = cfg.config(name, "relu", true, quantize)?;
    let max_positions = cfg.max_positions(1024);
    let text = NllbText::load(name, files)?;
    let defaults = CheckpointGeneration::read(name, files.generation_config.as_deref())?;
    let pad = defaults.pad_token_id.or(cfg.pad_token_id).unwrap_or(1);
    let offset = pad as usize + 1;
    let positions = Positions {
        table: sinusoidal(
            max_positions + offset,
            cfg.d_model(),
            (cfg.d_model() / 2) as f64 - 1.0,
            device,
        )
        .map_err(|e| model_err(name, e.to_string()))?,
        offset,
    };
    let vb = open_weights(name, &files.weights, device)?;
    let has = |n: &str| vb.contains_tensor(n);
    let embed = [
        "model.shared.weight",
        "model.encoder.embed_tokens.weight",
        "model.decoder.embed_tokens.weight",
    ]
    .into_iter()
    .find(|n| has(n))
    .ok_or_else(|| {
        model_err(
            name,
            format!("`{}` has no `model.shared.weight`", files.weights.display()),
        )
    })?;
    let names = BartNames {
        model: "model",
        enc_embed: embed.into(),
        dec_embed: embed.into(),
        lm_head: Some("lm_head.weight".into()),
        logits_bias: None,
    };
    let net = load_net(name, &files.weights, bart, vb, &names, positions)?;
    let eos = defaults
        .eos_token_id
        .as_ref()
        .and_then(|e| e.first())
        .or(cfg.eos_token_id)
        .unwrap_or(2);
    let ids = SpecialIds {
        decoder_start: defaults
            .decoder_start_token_id
            .or(cfg.decoder_start_token_id)
            .unwrap_or(eos),
        eos,
        pad,
    };
    Ok(Seq2SeqModel {
        name: name.into(),
        family: Family::M2M100,
        parameters: net.parameters(),
        vocab: net.vocab(),
        max_source_tokens: Some(max_positions),
        net: Arc::new(net),
        text: Arc::new(text),
        ids,
        defaults,
        dtype: weight_dtype(quantize),
    })
}

#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    /// The language codes as transformers 4.x writes them.
    #[serde(default)]
    additional_special_tokens: Vec<serde_json::Value>,
    /// The same as transformers 5.x writes them (`<mask>` last).
    #[serde(default)]
    extra_special_tokens: Vec<serde_json::Value>,
}

/// How pieces become ids.
enum Pieces {
    /// `tokenizer.json`: ids as the file says.
    Json(tokenizers::Tokenizer),
    /// SentencePiece model with the fairseq offset.
    Spm(tokenizers::Tokenizer),
}

/// The NLLB/M2M100 tokenizer (see the module docs).
pub struct NllbText {
    name: String,
    pieces: Pieces,
    /// Language token text -> id.
    langs: HashMap<String, u32>,
    /// Id -> language token text (for decoding).
    special: HashMap<u32, String>,
    eos: u32,
    unk: u32,
}

fn is_lang_token(t: &str) -> bool {
    let nllb = t.len() == 8
        && t.as_bytes()[3] == b'_'
        && t[..3].bytes().all(|b| b.is_ascii_lowercase())
        && t.as_bytes()[4].is_ascii_uppercase()
        && t[5..].bytes().all(|b| b.is_ascii_lowercase());
    let m2m = t.starts_with("__") && t.ends_with("__") && (5..=9).contains(&t.len());
    nllb || m2m
}

impl NllbText {
    fn load(name: &str, files: &M2M100Files) -> Result<Self> {
        let mut langs = HashMap::new();
        let (pieces, eos, unk) = if let Some(path) = &files.tokenizer_json {
            let tok = tokenizers::Tokenizer::from_file(path)
                .map_err(|e| model_err(name, format!("cannot read `{}`: {e}", path.display())))?;
            for (text, id) in tok.get_vocab(true) {
                if is_lang_token(&text) {
                    langs.insert(text, id);
                }
            }
            let id = |t: &str| tok.token_to_id(t);
            let eos = id("</s>").unwrap_or(2);
            let unk = id("<unk>").unwrap_or(3);
            (Pieces::Json(tok), eos, unk)
        } else if let Some(path) = &files.spm {
            let spm = SpmModel::open(name, path)?;
            let base = spm.len() as u32 + 1;
            let tcfg: TokenizerConfig = match &files.tokenizer_config {
                Some(p) => read_json(name, p)?,
                None => TokenizerConfig::default(),
            };
            let listed = if tcfg.additional_special_tokens.is_empty() {
                &tcfg.extra_special_tokens
            } else {
                &tcfg.additional_special_tokens
            };
            let codes: Vec<String> = listed
                .iter()
                .filter_map(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Object(o) => o
                        .get("content")
                        .and_then(|c| c.as_str())
                        .map(str::to_string),
                    _ => None,
                })
                .collect();
            if codes.is_empty() {
                return Err(model_err(
                    name,
                    "the checkpoint has no tokenizer.json and its tokenizer_config.json lists \
                     no language codes (`additional_special_tokens` or `extra_special_tokens`)"
                        .into(),
                ));
            }
            for (i, c) in codes.into_iter().enumerate() {
                if is_lang_token(&c) {
                    langs.insert(c, base + i as u32);
                }
            }
            (Pieces::Spm(spm.tokenizer()?), 2, 3)
        } else {
            return Err(model_err(
                name,
                "the checkpoint has neither tokenizer.json nor sentencepiece.bpe.model".into(),
            ));
        };
        let special = langs.iter().map(|(k, &v)| (v, k.clone())).collect();
        Ok(NllbText {
            name: name.into(),
            pieces,
            langs,
            special,
            eos,
            unk,
        })
    }

    /// The checkpoint's token for a language.
    pub fn lang_token(&self, lang: &Language) -> Option<u32> {
        let codes = iso639_3(lang);
        // M2M100: `__es__`.
        if let Some(&id) = self.langs.get(&format!("__{}__", lang.code)) {
            return Some(id);
        }
        for c in &codes {
            let mut found: Vec<(&String, u32)> = self
                .langs
                .iter()
                .filter(|(k, _)| k.len() == 8 && k.starts_with(c) && k.as_bytes()[3] == b'_')
                .map(|(k, &v)| (k, v))
                .collect();
            // Several scripts (zho_Hans, zho_Hant): the simplified/first
            // alphabetically wins, deterministically.
            found.sort();
            if let Some((_, id)) = found.first() {
                return Some(*id);
            }
        }
        None
    }

    fn lang_or_err(&self, lang: &Language) -> std::result::Result<u32, String> {
        self.lang_token(lang).ok_or_else(|| {
            format!(
                "model `{}` does not support {} ({}): no language token for it",
                self.name, lang.name, lang.code
            )
        })
    }
}

impl Seq2SeqText for NllbText {
    fn encode(&self, task: Task, text: &str) -> std::result::Result<Vec<u32>, String> {
        let Task::Translate { from, to } = task else {
            return Err(format!(
                "model `{}` is a translation model (M2M100/NLLB); it cannot summarize",
                self.name
            ));
        };
        let src = self.lang_or_err(from)?;
        self.lang_or_err(to)?;
        let mut ids = vec![src];
        match &self.pieces {
            Pieces::Json(tok) => {
                let enc = tok
                    .encode(text, false)
                    .map_err(|e| format!("model `{}` cannot tokenize the input: {e}", self.name))?;
                ids.extend_from_slice(enc.get_ids());
            }
            Pieces::Spm(tok) => {
                let enc = tok
                    .encode(text, false)
                    .map_err(|e| format!("model `{}` cannot tokenize the input: {e}", self.name))?;
                // fairseq layout: spm id + 1; spm's own <unk> (0) is ours (3).
                ids.extend(
                    enc.get_ids()
                        .iter()
                        .map(|&i| if i == 0 { self.unk } else { i + 1 }),
                );
            }
        }
        ids.push(self.eos);
        Ok(ids)
    }

    fn forced_bos(&self, task: Task) -> std::result::Result<Option<u32>, String> {
        match task {
            Task::Translate { to, .. } => self.lang_or_err(to).map(Some),
            Task::Summarize { .. } => Ok(None),
        }
    }

    fn decode(&self, ids: &[u32]) -> String {
        let keep: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|i| !self.special.contains_key(i) && *i > 3)
            .collect();
        match &self.pieces {
            Pieces::Json(tok) => tok.decode(&keep, true).unwrap_or_default(),
            Pieces::Spm(tok) => {
                let spm_ids: Vec<u32> = keep.iter().map(|&i| i - 1).collect();
                tok.decode(&spm_ids, true).unwrap_or_default()
            }
        }
    }

    fn languages(&self) -> Vec<String> {
        let mut v: Vec<String> = self.langs.keys().cloned().collect();
        v.sort();
        v
    }
}
