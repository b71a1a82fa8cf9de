//! # tidings
//!
//! A batch pipeline that turns dumps of news articles into JSONL records with
//! a short summary and translations into the languages a job asks for, using
//! models that run locally through candle.
//!
//! The flow, one module per stage:
//!
//! ```text
//! input (JSONL, .gz/.zst, stdin) -> text (clean, segment, language id)
//!   -> models (summary, then one translation per target language)
//!   -> output (ordered JSONL, errors file, resume)
//! ```
//!
//! [`pipeline`] wires the stages together; [`config`] turns a job file into a
//! validated [`config::Job`]; [`cli`] is the command line the binary exposes;
//! [`merge`] joins the outputs of a sharded run.

pub mod bench;
pub mod chrf;
pub mod cli;
pub mod config;
pub mod error;
pub mod generate;
pub mod huge_pages;
pub mod input;
pub mod merge;
pub mod models;
pub mod output;
pub mod pipeline;
#[doc(hidden)]
pub mod seeded;
pub mod text;

pub use error::{Error, Result};
