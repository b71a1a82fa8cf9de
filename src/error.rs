//! The library's error type.
//!
//! Every variant names the thing a user has to look at: the file (and line or
//! key for inputs and configs), or the model (by its config name). Source
//! errors are kept as sources, never flattened into strings, so `{:#}` /
//! `anyhow`'s chain in `main.rs` prints the whole story.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop a job (exit code 2) or fail a model call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Reading the input stream failed part way (e.g. a truncated gzip file).
    #[error("failed to read `{path}` after line {line}")]
    InputStream {
        path: String,
        line: u64,
        #[source]
        source: std::io::Error,
    },

    /// The job config is not valid TOML or has keys we do not know.
    #[error("invalid config `{}`", path.display())]
    ConfigToml {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },

    /// The job config parsed but a value is wrong.
    #[error("invalid config `{}`: `{key}`: {message}", path.display())]
    Config {
        path: PathBuf,
        key: String,
        message: String,
    },

    /// A command-line value is wrong.
    #[error("invalid value for `{flag}`: {message}")]
    Usage { flag: &'static str, message: String },

    /// A model source (`hf:`, `path:`, `pkg:`) could not be turned into files.
    #[error("model `{model}`: {message}")]
    ModelSource { model: String, message: String },

    /// hf-hub failed to fetch a file.
    #[error("model `{model}`: failed to fetch `{file}` from the Hugging Face Hub")]
    Hub {
        model: String,
        file: String,
        #[source]
        source: Box<hf_hub::api::sync::ApiError>,
    },

    /// A downloaded or cached file does not have the expected checksum.
    #[error("checksum mismatch for `{}`: expected sha256 {expected}, got {actual}", path.display())]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    /// A model's files are there but something in them is wrong or unsupported.
    #[error("model `{model}`: {message}")]
    Model { model: String, message: String },

    /// candle failed while loading or running a model.
    #[error("model `{model}`: {context}")]
    Candle {
        model: String,
        context: String,
        #[source]
        source: Box<candle_core::Error>,
    },

    /// The tokenizer failed to load or to encode/decode.
    #[error("model `{model}`: tokenizer: {context}")]
    Tokenizer {
        model: String,
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An external command (e.g. `python3 -m pip download`) failed.
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },

    /// The output stream was closed by its reader (e.g. `| head`).
    #[error("output closed by the reader")]
    BrokenPipe,

    /// A file of a Hugging Face Hub repository could not be fetched. `repo`
    /// is `owner/name@revision`; `hint` is empty or says what to do (`: ...`).
    #[error("model `{model}`: cannot fetch `{file}` from `{repo}`{hint}")]
    HubFile {
        model: String,
        repo: String,
        file: String,
        hint: String,
        #[source]
        source: Box<hf_hub::api::sync::ApiError>,
    },
}

impl Error {
    /// Helper for I/O errors that names the file and what we were doing.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }

    /// Helper for candle errors with the model name and a short context.
    pub fn candle(model: &str, context: &str) -> impl FnOnce(candle_core::Error) -> Error {
        let model = model.to_string();
        let context = context.to_string();
        move |source| Error::Candle {
            model,
            context,
            source: Box::new(source),
        }
    }

    /// Helper for tokenizer errors.
    pub fn tokenizer(
        model: &str,
        context: &str,
    ) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Error {
        let model = model.to_string();
        let context = context.to_string();
        move |source| Error::Tokenizer {
            model,
            context,
            source,
        }
    }
}
