//! Models: where their files come from ([`hub`], [`packages`]), how text
//! becomes tokens ([`tokenizer`]) and the families that run through candle.
//!
//! A job names models by source; the family is detected from the files
//! (`general.architecture` of a GGUF file, `model_type` of `config.json`).
//! Summarize and translate are data ([`Task`]), not separate model types.

pub mod bart;
pub mod bert;
pub mod causal;
pub mod extractive;
pub mod f32_gemm;
pub mod gguf_reader;
pub mod hub;
pub mod int8_rows;
pub mod kquant;
pub mod m2m100;
pub mod marian;
pub mod packages;
pub mod q8_0;
pub mod seq2seq;
mod shares;
pub mod spm;
pub mod t5;
pub mod tokenizer;

use crate::text::langid::Language;

/// What a generative model is asked to do with one input text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// Write a summary of at most `max_words` words.
    Summarize { max_words: usize },
    /// Translate from one language into another.
    Translate {
        from: &'static Language,
        to: &'static Language,
    },
}

/// Limits and switches for one generation (from `[generation]` in the job).
#[derive(Debug, Clone, PartialEq)]
pub struct GenOptions {
    /// Absolute cap on new tokens per input.
    pub max_new_tokens: usize,
    /// Cap relative to the source length in tokens (`ratio * source + 16`).
    pub max_length_ratio: f64,
    /// Stop when the output starts looping.
    pub repetition_guard: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            max_new_tokens: 256,
            max_length_ratio: 2.0,
            repetition_guard: true,
        }
    }
}

/// The result of one generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generation {
    /// The generated text, trimmed, without prompt or stop tokens.
    pub text: String,
    /// Tokens fed to the model (prompt included).
    pub input_tokens: usize,
    /// Tokens the model generated (stop token excluded).
    pub output_tokens: usize,
}

mod load;
pub use load::*;
