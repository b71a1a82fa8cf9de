//! SentencePiece model files (`source.spm`, `target.spm`, `spiece.model`,
//! `sentencepiece.bpe.model`) as shipped by encoder-decoder checkpoints:
//! Marian/OPUS-MT, T5, flan-t5, mT5, MADLAD-400, NLLB.
//!
//! [`SpmModel::open`] parses the file's protobuf (`ModelProto`, through the
//! `sentencepiece-model` crate) and [`SpmModel::tokenizer`] builds the
//! `tokenizers` pipeline that encodes and decodes as
//! `sentencepiece.SentencePieceProcessor` does, without Python at run time:
//!
//! - normalizer: SentencePiece's own normalizer, step by step (see
//!   `normalizer.cc`): the precompiled character map (NFKC and friends),
//!   then, if `remove_extra_whitespaces`, leading spaces dropped and runs of
//!   spaces collapsed, spaces escaped as `▁`, the dummy `▁` prefix if
//!   `add_dummy_prefix`, and trailing `▁`s dropped (the prefix included when
//!   nothing else is left). All of it happens in the normalizer, not in a
//!   `Metaspace` pre-tokenizer, because SentencePiece prefixes `▁` even to a
//!   text that already starts with one, and strips trailing whitespace
//!   *after* escaping it; `Metaspace` can do neither;
//! - pre-tokenizer: only when the model has user-defined pieces (`<2es>`,
//!   `>>es<<`): they are isolated so that they come out whole. They are not
//!   added tokens, because SentencePiece matches them inside the normalized
//!   text: `"<2es> Hola"` is `▁`, `<2es>`, `▁Hola` (the dummy prefix comes
//!   first), which an added token split off before normalization cannot give;
//! - model: `Unigram` with the piece scores, or BPE whose merge ranks follow
//!   the piece scores (`Pieces::merges`, shared with the GGUF builder in
//!   [`super::tokenizer`]); ids are the SentencePiece ids, unknown characters
//!   fuse into one `<unk>`, or become `<0xNN>` byte pieces when the model was
//!   trained with `byte_fallback`;
//! - control pieces (`<s>`, `</s>`, `<pad>`) are special added tokens, so
//!   `decode(ids, true)` drops them as SentencePiece does. `<unk>` is not: it
//!   decodes to SentencePiece's unknown surface (` ⁇ `);
//! - decoder: byte pieces back to bytes, leading `▁` of the text dropped as
//!   SentencePiece's decoder does, `▁` back to spaces;
//! - no post-processor: callers add `</s>` and language tokens themselves.
//!
//! Known differences from SentencePiece:
//! - a control piece written out in the input (`"</s>"`) becomes that token,
//!   as in `transformers` (SentencePiece spells it out); so do `<unk>` and
//!   `<0xNN>` written out, for unigram models;
//! - `tokenizers`' `Precompiled` maps a grapheme cluster shorter than 6 bytes
//!   whose first character has a rule to that character's mapping alone, so
//!   the marks after it are lost: `"E\u{301}"` under case folding becomes
//!   `e` (SentencePiece: `é`), an Arabic presentation form with a haraka or a
//!   ligature with an accent loses the mark. `transformers`' fast
//!   tokenizers, built on the same normalizer, do the same;
//! - two segmentations with the same score (`0`+`00` and `00`+`0` of `000`)
//!   may come out in the other order: SentencePiece sums scores in `f32`,
//!   `tokenizers` in `f64`. The text and the decoding are the same;
//! - BPE reports an unknown piece as `<unk>` where SentencePiece reports its
//!   text (the ids agree); decoding an invalid UTF-8 run of byte pieces gives
//!   U+FFFD for every byte of the run, SentencePiece only for the bad ones.
//!
//! `scripts/spm_reference.py` trains the tiny unigram and BPE models under
//! `tests/fixtures/spm/` and records what `sentencepiece` makes of a set of
//! strings (spaces, accents, Persian, digits, unknown characters, NFKC,
//! user-defined symbols); the tests here must reproduce every id, piece and
//! decoded text.

use std::path::{Path, PathBuf};

use sentencepiece_model::{ModelType, SentencePieceModel, Type};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Precompiled, Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use super::tokenizer::{model_error, Pieces, SPACE_MARK};
use crate::error::{Error, Result};

/// The segmentation algorithm a model was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Unigram,
    Bpe,
}

/// A parsed SentencePiece model file.
pub struct SpmModel {
    /// The model's name in the job, for errors.
    name: String,
    /// The file it came from, for errors.
    path: PathBuf,
    /// Piece texts, scores and types (`sentencepiece_model::Type` values), in
    /// id order.
    pieces: Pieces,
    algorithm: Algorithm,
    unk_id: u32,
    /// What `<unk>` decodes to (` ⁇ ` unless the trainer said otherwise).
    unk_surface: String,
    byte_fallback: bool,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    /// Empty for the `identity` normalization.
    precompiled_charsmap: Vec<u8>,
}

impl std::fmt::Debug for SpmModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpmModel")
            .field("path", &self.path)
            .field("pieces", &self.len())
            .field("algorithm", &self.algorithm)
            .field("unk_id", &self.unk_id)
            .field("byte_fallback", &self.byte_fallback)
            .finish_non_exhaustive()
    }
}

impl SpmModel {
    /// Reads the SentencePiece model at `path` for the model called
    /// `model_name` in the job.
    pub fn open(model_name: &str, path: &Path) -> Result<SpmModel> {
        let bytes = std::fs::read(path).map_err(Error::io("cannot read", path))?;
        Self::parse(model_name, path, &bytes)
    }

    fn parse(name: &str, path: &Path, bytes: &[u8]) -> Result<SpmModel> {
        let bad = |what: &str| model_error(name, &format!("`{}`: {what}", path.display()));
        let proto = SentencePieceModel::from_slice(bytes)
            .map_err(|e| bad(&format!("not a SentencePiece model file (protobuf: {e})")))?;
        let trainer = proto.trainer().cloned().unwrap_or_default();
        let normalizer = proto.normalizer().cloned().unwrap_or_default();

        let algorithm = match trainer.model_type() {
            ModelType::Unigram => Algorithm::Unigram,
            ModelType::Bpe => Algorithm::Bpe,
            other => {
                return Err(bad(&format!(
                    "SentencePiece `{}` models are not supported (only UNIGRAM and BPE)",
                    other.as_str_name()
                )))
            }
        };
        if trainer.treat_whitespace_as_suffix() {
            return Err(bad(
                "models trained with `treat_whitespace_as_suffix` are not supported",
            ));
        }
        if proto.pieces().is_empty() {
            return Err(bad("the SentencePiece model has no pieces"));
        }
        let mut pieces = Pieces {
            tokens: Vec::with_capacity(proto.pieces().len()),
            scores: Vec::with_capacity(proto.pieces().len()),
            types: Vec::with_capacity(proto.pieces().len()),
        };
        for (id, piece) in proto.pieces().iter().enumerate() {
            if piece.piece().is_empty() {
                return Err(bad(&format!("piece {id} is empty")));
            }
            pieces.tokens.push(piece.piece().to_string());
            pieces.scores.push(piece.score());
            pieces.types.push(piece.r#type() as u32);
        }
        let unk_id = pieces
            .types
            .iter()
            .position(|&t| t == Type::Unknown as u32)
            .ok_or_else(|| bad("the SentencePiece model has no unknown piece (`<unk>`)"))?
            as u32;

        Ok(SpmModel {
            name: name.to_string(),
            path: path.to_path_buf(),
            pieces,
            algorithm,
            unk_id,
            unk_surface: trainer.unk_surface().to_string(),
            byte_fallback: trainer.byte_fallback(),
            add_dummy_prefix: normalizer.add_dummy_prefix(),
            remove_extra_whitespaces: normalizer.remove_extra_whitespaces(),
            escape_whitespaces: normalizer.escape_whitespaces(),
            precompiled_charsmap: normalizer.precompiled_charsmap().to_vec(),
        })
    }

    /// Piece texts in id order.
    pub fn pieces(&self) -> impl Iterator<Item = &str> {
        self.pieces.tokens.iter().map(String::as_str)
    }

    /// The number of pieces (the vocabulary size).
    pub fn len(&self) -> usize {
        self.pieces.tokens.len()
    }

    /// Whether the model has no pieces (never true for an opened model).
    pub fn is_empty(&self) -> bool {
        self.pieces.tokens.is_empty()
    }

    fn of_type(&self, kind: Type) -> impl Iterator<Item = &str> {
        self.pieces
            .tokens
            .iter()
            .zip(&self.pieces.types)
            .filter(move |(_, &t)| t == kind as u32)
            .map(|(p, _)| p.as_str())
    }

    /// The equivalent `tokenizers` pipeline (see the module docs): ids and
    /// pieces of `encode(text, false)` and the text of `decode(ids, true)`
    /// are those of `SentencePieceProcessor`.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let build_error = |context: &str| {
            Error::tokenizer(&self.name, &format!("`{}`: {context}", self.path.display()))
        };
        let user_defined: Vec<&str> = self.of_type(Type::UserDefined).collect();

        let mut tokenizer = match self.algorithm {
            Algorithm::Unigram => {
                let vocab = self
                    .pieces
                    .tokens
                    .iter()
                    .zip(&self.pieces.scores)
                    .map(|(t, &s)| (t.clone(), s as f64))
                    .collect();
                let unigram = Unigram::from(vocab, Some(self.unk_id as usize), self.byte_fallback)
                    .map_err(build_error("failed to build the unigram model"))?;
                Tokenizer::new(unigram)
            }
            Algorithm::Bpe => {
                let mut vocab = tokenizers::models::bpe::Vocab::default();
                for (i, t) in self.pieces.tokens.iter().enumerate() {
                    vocab.entry(t.clone()).or_insert(i as u32);
                }
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, self.pieces.merges())
                    .unk_token(self.pieces.tokens[self.unk_id as usize].clone())
                    .fuse_unk(true)
                    .byte_fallback(self.byte_fallback)
                    // User-defined pieces come isolated by the pre-tokenizer
                    // and no merge builds them: take a word that is a whole
                    // piece as it is.
                    .ignore_merges(!user_defined.is_empty())
                    .build()
                    .map_err(build_error("failed to build the BPE model"))?;
                Tokenizer::new(bpe)
            }
        };

        let normalizers = self
            .normalizers()
            .map_err(build_error("failed to build the normalizer"))?;
        if !normalizers.is_empty() {
            tokenizer
                .with_normalizer(Some(NormalizerSequence::new(normalizers)))
                .map_err(build_error("failed to set the normalizer"))?;
        }

        if !user_defined.is_empty() {
            // Longest first: the regex takes the first alternative that
            // matches, SentencePiece the longest piece.
            let mut sorted = user_defined.clone();
            sorted.sort_by_key(|p| std::cmp::Reverse(p.len()));
            let pattern = sorted
                .iter()
                .map(|p| escape_regex(p))
                .collect::<Vec<_>>()
                .join("|");
            let split = Split::new(
                SplitPattern::Regex(pattern),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(build_error(
                "failed to build the user-defined piece splitter",
            ))?;
            tokenizer.with_pre_tokenizer(Some(split));
        }

        let decoder = self
            .decoder()
            .map_err(build_error("failed to build the decoder"))?;
        tokenizer.with_decoder(Some(decoder));

        let controls: Vec<AddedToken> = self
            .of_type(Type::Control)
            .map(|p| AddedToken::from(p.to_string(), true))
            .collect();
        tokenizer
            .add_special_tokens(controls)
            .map_err(build_error("failed to add control tokens"))?;
        Ok(tokenizer)
    }

    /// SentencePiece's normalizer as `tokenizers` normalizers, in its order.
    fn normalizers(&self) -> tokenizers::Result<Vec<NormalizerWrapper>> {
        let space = if self.escape_whitespaces {
            SPACE_MARK.to_string()
        } else {
            " ".to_string()
        };
        let mut steps: Vec<NormalizerWrapper> = Vec::new();
        if !self.precompiled_charsmap.is_empty() {
            steps.push(Precompiled::from(&self.precompiled_charsmap)?.into());
        }
        if self.remove_extra_whitespaces {
            // Only U+0020 counts; the character map has already turned tabs,
            // newlines and other spaces into it where the rules say so.
            steps.push(Replace::new(ReplacePattern::Regex("^ +".into()), "")?.into());
            steps.push(Replace::new(ReplacePattern::Regex(" {2,}".into()), " ")?.into());
        }
        if self.escape_whitespaces {
            steps.push(Replace::new(" ", space.as_str())?.into());
        }
        if self.add_dummy_prefix {
            // `Prepend` leaves an empty text empty, as SentencePiece does.
            steps.push(Prepend::new(space.clone()).into());
        }
        if self.remove_extra_whitespaces {
            let trailing = format!("(?:{})+$", escape_regex(&space));
            steps.push(Replace::new(ReplacePattern::Regex(trailing), "")?.into());
        }
        Ok(steps)
    }

    /// SentencePiece's decoder: control pieces are skipped as special tokens
    /// before this runs; `<unk>` becomes its surface, byte pieces bytes, and
    /// the leading `▁` goes (all of them when extra whitespace is removed,
    /// which is what SentencePiece's "consume while the text is empty" comes
    /// to) before `▁` turns into spaces.
    fn decoder(&self) -> tokenizers::Result<DecoderWrapper> {
        let mut steps: Vec<DecoderWrapper> = vec![Replace::new(
            self.pieces.tokens[self.unk_id as usize].as_str(),
            self.unk_surface.as_str(),
        )?
        .into()];
        if self.of_type(Type::Byte).next().is_some() {
            steps.push(ByteFallback::new().into());
        }
        steps.push(Fuse::new().into());
        if self.remove_extra_whitespaces {
            steps.push(Strip::new(SPACE_MARK, usize::MAX, 0).into());
        } else if self.add_dummy_prefix {
            steps.push(Strip::new(SPACE_MARK, 1, 0).into());
        }
        steps.push(Replace::new(SPACE_MARK.to_string(), " ")?.into());
        Ok(DecoderSequence::new(steps).into())
    }
}

/// `text` as a regex matching itself.
fn escape_regex(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde::Deserialize;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm")
    }

    /// `tests/fixtures/spm/expected.json`, written by
    /// `scripts/spm_reference.py`.
    #[derive(Deserialize)]
    struct Expected {
        sentencepiece_version: String,
        models: std::collections::BTreeMap<String, ExpectedModel>,
    }

    #[derive(Deserialize)]
    struct ExpectedModel {
        file: String,
        vocab_size: usize,
        unk_id: u32,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        text: String,
        ids: Vec<u32>,
        pieces: Vec<String>,
        decoded: String,
        decoded_with_controls: String,
        controls: Vec<u32>,
    }

    fn expected() -> Expected {
        let path = fixtures().join("expected.json");
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn open(name: &str) -> SpmModel {
        SpmModel::open(name, &fixtures().join(format!("{name}.model"))).unwrap()
    }

    /// Every id, piece and decoded text of every model and string; the
    /// failures of all cases are collected so one run shows them all.
    #[test]
    fn encodes_and_decodes_like_sentencepiece() {
        let expected = expected();
        assert_eq!(expected.models.len(), 4, "fixture models");
        let mut failures = Vec::new();
        for (name, model) in &expected.models {
            let spm = SpmModel::open(name, &fixtures().join(&model.file)).unwrap();
            assert_eq!(spm.len(), model.vocab_size, "{name}");
            assert_eq!(spm.unk_id, model.unk_id, "{name}");
            assert!(
                model.cases.len() > 20,
                "{name}: {} cases",
                model.cases.len()
            );
            let tok = spm.tokenizer().unwrap();
            for case in &model.cases {
                let enc = tok.encode(case.text.as_str(), false).unwrap();
                let ids = enc.get_ids();
                if ids != case.ids.as_slice() {
                    failures.push(format!(
                        "{name} {:?}: ids {ids:?}, sentencepiece {:?} ({:?} vs {:?})",
                        case.text,
                        case.ids,
                        enc.get_tokens(),
                        case.pieces
                    ));
                    continue;
                }
                // BPE names an unknown piece `<unk>`, SentencePiece gives its
                // text; the ids agree (checked above).
                let unk = &spm.pieces.tokens[spm.unk_id as usize];
                let pieces_agree = enc.get_tokens().iter().zip(&case.pieces).zip(ids).all(
                    |((ours, theirs), &id)| {
                        ours == theirs
                            || (spm.algorithm == Algorithm::Bpe && id == spm.unk_id && ours == unk)
                    },
                );
                if !pieces_agree || enc.get_tokens().len() != case.pieces.len() {
                    failures.push(format!(
                        "{name} {:?}: pieces {:?}, sentencepiece {:?}",
                        case.text,
                        enc.get_tokens(),
                        case.pieces
                    ));
                }
                let decoded = tok.decode(&case.ids, true).unwrap();
                if decoded != case.decoded {
                    failures.push(format!(
                        "{name} {:?}: decoded {decoded:?}, sentencepiece {:?}",
                        case.text, case.decoded
                    ));
                }
                let mut wrapped: Vec<u32> = case.controls.first().copied().into_iter().collect();
                wrapped.extend(&case.ids);
                wrapped.extend(case.controls.get(1));
                let decoded = tok.decode(&wrapped, true).unwrap();
                if decoded != case.decoded_with_controls {
                    failures.push(format!(
                        "{name} {:?} between control pieces: decoded {decoded:?}, sentencepiece {:?}",
                        case.text, case.decoded_with_controls
                    ));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} mismatches with sentencepiece {}:\n{}",
            failures.len(),
            expected.sentencepiece_version,
            failures.join("\n")
        );
    }

    #[test]
    fn reads_model_settings() {
        let spm = open("unigram_user");
        assert_eq!(spm.algorithm, Algorithm::Unigram);
        // T5's layout: `<pad>`, `</s>`, `<unk>`, then the user-defined pieces
        let first: Vec<&str> = spm.pieces().take(4).collect();
        assert_eq!(first, ["<pad>", "</s>", "<unk>", "<2es>"]);
        assert_eq!(spm.unk_id, 2);
        assert!(spm.add_dummy_prefix && spm.remove_extra_whitespaces);
        assert!(!spm.precompiled_charsmap.is_empty());

        let spm = open("bpe_byte_fallback");
        assert_eq!(spm.algorithm, Algorithm::Bpe);
        assert!(spm.byte_fallback && !spm.remove_extra_whitespaces);
        assert!(
            spm.precompiled_charsmap.is_empty(),
            "identity normalization"
        );
        assert!(spm.pieces().any(|p| p == "<0xFF>"));
    }

    #[test]
    fn control_pieces_are_special_and_there_is_no_post_processor() {
        let tok = open("unigram_user").tokenizer().unwrap();
        let with = tok.encode("Hola mundo", true).unwrap();
        let without = tok.encode("Hola mundo", false).unwrap();
        assert_eq!(with.get_ids(), without.get_ids());
        // Written out, `</s>` is the control token (as in transformers).
        let enc = tok.encode("Hola</s>", false).unwrap();
        assert_eq!(enc.get_ids().last(), Some(&1));
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "Hola");
    }

    #[test]
    fn bad_files_are_clear_errors() {
        // a JSON file is not a protobuf model
        let path = fixtures().join("expected.json");
        let err = SpmModel::open("opus-en-es", &path).unwrap_err();
        assert!(matches!(err, Error::Model { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("opus-en-es") && message.contains("expected.json"),
            "{message}"
        );

        // an empty file parses as an empty model
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("source.spm");
        std::fs::write(&empty, b"").unwrap();
        let message = SpmModel::open("m", &empty).unwrap_err().to_string();
        assert!(
            message.contains("source.spm") && message.contains("no pieces"),
            "{message}"
        );

        let missing = dir.path().join("target.spm");
        let message = SpmModel::open("m", &missing).unwrap_err().to_string();
        assert!(message.contains("target.spm"), "{message}");
    }

    #[test]
    fn regex_escape_matches_literally() {
        assert_eq!(escape_regex(">>es<<"), ">>es<<");
        assert_eq!(escape_regex("a.b|c(d)"), r"a\.b\|c\(d\)");
    }
}
