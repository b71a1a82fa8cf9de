//! The output record, exactly as DESIGN.md's contract shows it, and the
//! inline error record used with `--errors inline`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::input::article::RecordFailure;

/// Translated fields of one article in one language.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranslatedFields {
    /// The headline, when translated.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub title: Option<String>,
    /// The summary, when translated.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub summary: Option<String>,
    /// The full text (paragraphs separated by blank lines), when translated.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text: Option<String>,
}

/// Provenance and cost of one record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Model id per role: `summary` and each target language code.
    pub models: BTreeMap<String, String>,
    /// Tokens fed to the models for this article (prompts included).
    pub input_tokens: usize,
    /// Tokens the models generated for this article.
    pub output_tokens: usize,
    /// Wall time spent on this article: its share of text preparation plus
    /// the model calls made for it (a sentence shared by several articles is
    /// counted for the first one).
    pub elapsed_ms: u64,
}

/// One line of the output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// The input record's id (the line number when it had none).
    pub id: String,
    /// Detected source language (ISO 639-1).
    pub lang: String,
    /// The cleaned headline, when the input has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub title: Option<String>,
    /// The summary, when the job has a `[summary]` section.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub summary: Option<String>,
    /// Translations by target language code, when the job translates.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub translations: BTreeMap<String, TranslatedFields>,
    /// Provenance and cost.
    pub meta: Meta,
}

/// The `error` object of an inline error record.
#[derive(Debug, Clone, Serialize)]
pub struct InlineError<'a> {
    /// What went wrong (the errors file's `kind`).
    pub kind: crate::input::article::FailureKind,
    /// The message.
    pub message: &'a str,
    /// 1-based input line.
    pub line: u64,
    /// The field at fault, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'a str>,
}

/// An output line standing for a failed record (`--errors inline`).
#[derive(Debug, Clone, Serialize)]
pub struct InlineErrorRecord<'a> {
    /// The record's id (the line number when it had none).
    pub id: String,
    /// What went wrong.
    pub error: InlineError<'a>,
}

impl<'a> InlineErrorRecord<'a> {
    /// Builds the inline form of a failure.
    pub fn new(f: &'a RecordFailure) -> Self {
        InlineErrorRecord {
            id: f.id.clone().unwrap_or_else(|| f.line.to_string()),
            error: InlineError {
                kind: f.kind,
                message: &f.message,
                line: f.line,
                field: f.field.as_deref(),
            },
        }
    }
}
