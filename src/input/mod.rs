//! Streaming input: JSONL from a file (plain, `.gz`, `.zst`) or stdin, mapped
//! into [`article::Article`]s or per-record errors.

pub mod article;
pub mod reader;
