//! Tokenizers for the generative models: a `tokenizer.json` when the model
//! ships one, otherwise one built from the vocabulary stored in the GGUF file.
//!
//! GGUF files describe their tokenizer with `tokenizer.ggml.*` metadata keys.
//! Two kinds matter here:
//!
//! - `tokenizer.ggml.model = "gpt2"` (Qwen, SmolLM2, Llama 3): byte-level BPE
//!   with explicit merges. candle's [`TokenizerFromGguf`] builds it; we then
//!   replace its pre-tokenizer for `tokenizer.ggml.pre` values candle does not
//!   know (it falls back to GPT-2's byte-level splitter *with* a prefix space,
//!   which turns `"Translate"` into `"ĠTranslate"`). `smollm` gets the
//!   published SmolLM2 pre-tokenizer (single digits, then GPT-2's regex); any
//!   other unknown value gets GPT-2's regex without a prefix space.
//! - `tokenizer.ggml.model = "llama"` (Gemma 3, Llama 2 style files): a
//!   SentencePiece BPE model stored as pieces, scores and piece types. We build
//!   the equivalent `tokenizers` pipeline ourselves:
//!   - model: BPE whose merge ranks follow the piece scores (SentencePiece BPE
//!     repeatedly merges the adjacent pair whose union has the highest score;
//!     a merge list ordered by that score makes `tokenizers` do the same), with
//!     byte fallback to the `<0xNN>` pieces for characters not in the vocabulary;
//!   - pre-tokenizer: spaces become `▁`; a `▁` is prepended to the text only
//!     when `tokenizer.ggml.add_space_prefix` says so (default true, as in
//!     SentencePiece; Gemma's files say false);
//!   - control pieces (`<bos>`, `<start_of_turn>`, ...) are special added
//!     tokens; user-defined pieces (Gemma's `"\n\n"`, runs of spaces, HTML
//!     tags) are matched verbatim in the raw text before anything else, as
//!     SentencePiece's prefix matcher does;
//!   - decoder: `▁` back to spaces, `<0xNN>` pieces back to bytes.
//!
//!   `scripts/gemma_tokenizer_reference.py` encodes sentences with the
//!   `sentencepiece` library from the same metadata; the ids it printed are the
//!   reference in this module's tests and in `tests/it/causal.rs`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, Tokenizer};

use crate::error::{Error, Result};

/// SentencePiece's whitespace marker.
pub(super) const SPACE_MARK: char = '▁';

/// `tokenizer.ggml.pre` values candle's gpt2 builder configures itself.
const CANDLE_KNOWN_PRE: &[&str] = &["qwen2", "smaug-bpe", "lfm2", "llama3"];

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
mod token_type {
    pub const NORMAL: u32 = 1;
    pub const UNKNOWN: u32 = 2;
    pub const CONTROL: u32 = 3;
    pub const USER_DEFINED: u32 = 4;
}

/// Loads the tokenizer of model `name`: `tokenizer_json` when given (it is
/// what the model's authors publish and wins over anything in the GGUF),
/// else one built from the GGUF metadata in `gguf_content`.
pub fn load(
    name: &str,
    gguf_content: &Content,
    tokenizer_json: Option<&Path>,
) -> Result<Tokenizer> {
    if let Some(path) = tokenizer_json {
        return Tokenizer::from_file(path).map_err(Error::tokenizer(
            name,
            &format!("failed to load `{}`", path.display()),
        ));
    }
    let kind = match gguf_content.metadata.get("tokenizer.ggml.model") {
        Some(Value::String(kind)) => kind.to_lowercase(),
        Some(_) => return Err(model_error(name, "`tokenizer.ggml.model` is not a string")),
        None => {
            return Err(model_error(
                name,
                "the GGUF file has no tokenizer (`tokenizer.ggml.model`) and no tokenizer.json was given",
            ))
        }
    };
    match kind.as_str() {
        "gpt2" => gpt2_from_gguf(name, gguf_content),
        "llama" => sentencepiece_from_gguf(name, gguf_content),
        other => Err(model_error(
            name,
            &format!(
                "unsupported GGUF tokenizer model `{other}` (supported: gpt2, llama); \
                 put a tokenizer.json next to the model file"
            ),
        )),
    }
}

pub(super) fn model_error(name: &str, message: &str) -> Error {
    Error::Model {
        model: name.to_string(),
        message: message.to_string(),
    }
}

/// Byte-level BPE through candle, with the pre-tokenizer fixed where candle
/// would otherwise add a prefix space.
fn gpt2_from_gguf(name: &str, ct: &Content) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_gguf(ct).map_err(|e| {
        Error::tokenizer(name, "failed to build the GGUF gpt2 tokenizer")(Box::new(e))
    })?;
    let pre = match ct.metadata.get("tokenizer.ggml.pre") {
        Some(Value::String(pre)) => pre.as_str(),
        _ => "gpt2",
    };
    if !CANDLE_KNOWN_PRE.contains(&pre) {
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = if pre == "smollm" {
            PreSequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        } else {
            byte_level.into()
        };
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    }
    Ok(tokenizer)
}

/// The SentencePiece vocabulary stored in a GGUF file.
pub(super) struct Pieces {
    pub(super) tokens: Vec<String>,
    pub(super) scores: Vec<f32>,
    pub(super) types: Vec<u32>,
}

impl Pieces {
    fn from_gguf(name: &str, ct: &Content) -> Result<Self> {
        let array = |key: &str| -> Result<Option<&Vec<Value>>> {
            match ct.metadata.get(key) {
                None => Ok(None),
                Some(Value::Array(values)) => Ok(Some(values)),
                Some(_) => Err(model_error(name, &format!("`{key}` is not an array"))),
            }
        };
        let tokens = array("tokenizer.ggml.tokens")?
            .ok_or_else(|| model_error(name, "the GGUF file has no `tokenizer.ggml.tokens`"))?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(model_error(
                    name,
                    "`tokenizer.ggml.tokens` holds a non-string",
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        // Without scores, SentencePiece files are ordered by score anyway:
        // a lower id is a more frequent piece.
        let scores = match array("tokenizer.ggml.scores")? {
            Some(values) => values
                .iter()
                .map(|v| match v {
                    Value::F32(s) => Ok(*s),
                    Value::F64(s) => Ok(*s as f32),
                    _ => Err(model_error(
                        name,
                        "`tokenizer.ggml.scores` holds a non-float",
                    )),
                })
                .collect::<Result<Vec<_>>>()?,
            None => (0..tokens.len()).map(|i| -(i as f32)).collect(),
        };
        let types = match array("tokenizer.ggml.token_type")? {
            Some(values) => values
                .iter()
                .map(|v| {
                    integer(v).ok_or_else(|| {
                        model_error(name, "`tokenizer.ggml.token_type` holds a non-integer")
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            None => vec![token_type::NORMAL; tokens.len()],
        };
        if scores.len() != tokens.len() || types.len() != tokens.len() {
            return Err(model_error(
                name,
                &format!(
                    "GGUF tokenizer arrays disagree: {} tokens, {} scores, {} token types",
                    tokens.len(),
                    scores.len(),
                    types.len()
                ),
            ));
        }
        Ok(Pieces {
            tokens,
            scores,
            types,
        })
    }

    /// BPE merges that reproduce SentencePiece's score-driven merging: every
    /// way to split a normal piece into two normal pieces, highest-scoring
    /// result first.
    pub(super) fn merges(&self) -> Vec<(String, String)> {
        let normal: HashMap<&str, u32> = self
            .tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| self.types[*i] == token_type::NORMAL)
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();
        let mut merges: Vec<(u32, u32, u32)> = Vec::new();
        for (&piece, &id) in &normal {
            for (split, _) in piece.char_indices().skip(1) {
                let (left, right) = piece.split_at(split);
                if let (Some(&l), Some(&r)) = (normal.get(left), normal.get(right)) {
                    merges.push((id, l, r));
                }
            }
        }
        // Ties in score (rare) fall back to the id order, which is also the
        // order SentencePiece assigns them.
        merges.sort_by(|a, b| {
            self.scores[b.0 as usize]
                .total_cmp(&self.scores[a.0 as usize])
                .then(a.0.cmp(&b.0))
                .then(a.1.cmp(&b.1))
        });
        merges
            .into_iter()
            .map(|(_, l, r)| {
                (
                    self.tokens[l as usize].clone(),
                    self.tokens[r as usize].clone(),
                )
            })
            .collect()
    }
}

fn integer(v: &Value) -> Option<u32> {
    match *v {
        Value::U8(x) => Some(x as u32),
        Value::I8(x) => u32::try_from(x).ok(),
        Value::U16(x) => Some(x as u32),
        Value::I16(x) => u32::try_from(x).ok(),
        Value::U32(x) => Some(x),
        Value::I32(x) => u32::try_from(x).ok(),
        Value::U64(x) => u32::try_from(x).ok(),
        Value::I64(x) => u32::try_from(x).ok(),
        _ => None,
    }
}

fn flag(ct: &Content, key: &str) -> Option<bool> {
    match ct.metadata.get(key) {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// Builds a SentencePiece-equivalent tokenizer (see the module docs).
fn sentencepiece_from_gguf(name: &str, ct: &Content) -> Result<Tokenizer> {
    let pieces = Pieces::from_gguf(name, ct)?;
    let build_error = |context: &str| Error::tokenizer(name, context);

    let mut vocab = tokenizers::models::bpe::Vocab::default();
    for (i, t) in pieces.tokens.iter().enumerate() {
        // A duplicated piece keeps its first id, as SentencePiece does.
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    let unk = ct
        .metadata
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(integer)
        .or_else(|| {
            pieces
                .types
                .iter()
                .position(|&t| t == token_type::UNKNOWN)
                .map(|i| i as u32)
        })
        .and_then(|id| pieces.tokens.get(id as usize).cloned());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, pieces.merges())
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder
        .build()
        .map_err(build_error("failed to build the SentencePiece BPE model"))?;

    let mut tokenizer = Tokenizer::new(bpe);
    let add_space_prefix = flag(ct, "tokenizer.ggml.add_space_prefix").unwrap_or(true);
    let scheme = if add_space_prefix {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    // split = false: SentencePiece BPE merges across the whole text, pieces may
    // only start with `▁` because of how they were trained.
    tokenizer.with_pre_tokenizer(Some(Metaspace::new(SPACE_MARK, scheme, false)));

    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPACE_MARK.to_string(), " ")
            .map_err(build_error("failed to build the decoder"))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));

    let mut specials = Vec::new();
    let mut user_defined = Vec::new();
    for (t, &ty) in pieces.tokens.iter().zip(&pieces.types) {
        match ty {
            token_type::CONTROL | token_type::UNKNOWN => {
                specials.push(AddedToken::from(t.clone(), true))
            }
            token_type::USER_DEFINED => {
                user_defined.push(AddedToken::from(t.clone(), false).normalized(false))
            }
            _ => {}
        }
    }
    tokenizer
        .add_special_tokens(specials)
        .map_err(build_error("failed to add control tokens"))?;
    tokenizer
        .add_tokens(user_defined)
        .map_err(build_error("failed to add user-defined tokens"))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF header holding only tokenizer metadata.
    fn content(metadata: Vec<(&str, Value)>) -> Content {
        Content {
            magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
            metadata: metadata
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    fn strings(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
    }

    /// A miniature SentencePiece vocabulary in Gemma's style.
    fn spm(add_space_prefix: bool) -> Tokenizer {
        let mut tokens = vec![
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<start_of_turn>",
            "\n\n",
        ];
        let mut types = vec![3, 3, 3, 2, 3, 4];
        let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        for b in &bytes {
            tokens.push(b.as_str());
            types.push(6);
        }
        let normal = [
            "▁", "e", "h", "l", "o", "w", "r", "d", "▁w", "he", "ll", "llo", "hello", "▁wor", "or",
            "ld", "▁world",
        ];
        for n in normal {
            tokens.push(n);
            types.push(1);
        }
        let scores: Vec<Value> = (0..tokens.len()).map(|i| Value::F32(-(i as f32))).collect();
        let ct = content(vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.scores", Value::Array(scores)),
            (
                "tokenizer.ggml.token_type",
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            (
                "tokenizer.ggml.add_space_prefix",
                Value::Bool(add_space_prefix),
            ),
        ]);
        load("tiny", &ct, None).unwrap()
    }

    fn pieces(tok: &Tokenizer, text: &str) -> Vec<String> {
        let enc = tok.encode(text, false).unwrap();
        enc.get_ids()
            .iter()
            .map(|&id| tok.id_to_token(id).unwrap())
            .collect()
    }

    #[test]
    fn sentencepiece_merges_follow_scores_and_fall_back_to_bytes() {
        let tok = spm(false);
        assert_eq!(pieces(&tok, "hello world"), ["hello", "▁world"]);
        // "é" is not in the vocabulary: two UTF-8 byte pieces
        assert_eq!(pieces(&tok, "hé"), ["h", "<0xC3>", "<0xA9>"]);
        let ids = tok.encode("hé world", false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, true).unwrap(), "hé world");
    }

    #[test]
    fn sentencepiece_special_and_user_defined_tokens() {
        let tok = spm(false);
        assert_eq!(
            pieces(&tok, "<start_of_turn>hello\n\nworld"),
            ["<start_of_turn>", "hello", "\n\n", "w", "or", "ld"]
        );
        let ids = tok
            .encode("<start_of_turn>hello\n\nworld", false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(tok.decode(&ids, true).unwrap(), "hello\n\nworld");
    }

    #[test]
    fn sentencepiece_space_prefix_only_when_asked() {
        assert_eq!(pieces(&spm(false), "world"), ["w", "or", "ld"]);
        let tok = spm(true);
        assert_eq!(pieces(&tok, "world"), ["▁world"]);
        let ids = tok.encode("world hello", false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, true).unwrap(), "world hello");
    }

    #[test]
    fn unknown_tokenizer_kind_is_a_clear_error() {
        let ct = content(vec![("tokenizer.ggml.model", Value::String("bert".into()))]);
        let err = load("m", &ct, None).unwrap_err().to_string();
        assert!(
            err.contains("`bert`") && err.contains("gpt2, llama"),
            "{err}"
        );
        let err = load("m", &content(vec![]), None).unwrap_err().to_string();
        assert!(err.contains("no tokenizer"), "{err}");
    }

    #[test]
    fn gpt2_without_known_pre_has_no_prefix_space() {
        // a byte-level vocabulary: the 256 byte symbols plus one merge
        let symbols: Vec<String> = byte_symbols();
        let mut tokens: Vec<&str> = symbols.iter().map(|s| s.as_str()).collect();
        tokens.push("ab");
        let ct = content(vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("smollm".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.merges", strings(&["a b"])),
        ]);
        let tok = load("m", &ct, None).unwrap();
        let enc = tok.encode("ab 12", false).unwrap();
        let got: Vec<&str> = enc.get_tokens().iter().map(|s| s.as_str()).collect();
        assert_eq!(got, ["ab", "Ġ", "1", "2"]);
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "ab 12");
    }

    /// GPT-2's printable stand-ins for the 256 byte values.
    fn byte_symbols() -> Vec<String> {
        let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
            .chain(0xA1..=0xAC)
            .chain(0xAE..=0xFF)
            .collect();
        let mut chars: Vec<u32> = printable.clone();
        let mut n = 0;
        for b in 0..256u32 {
            if !printable.contains(&b) {
                printable.push(b);
                chars.push(256 + n);
                n += 1;
            }
        }
        let mut pairs: Vec<(u32, u32)> = printable.into_iter().zip(chars).collect();
        pairs.sort();
        pairs
            .into_iter()
            .map(|(_, c)| char::from_u32(c).unwrap().to_string())
            .collect()
    }
}
