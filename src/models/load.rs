//! Loading a model of any family: detection from its files and dispatch.

use super::*;

use crate::config::ModelSpec;
use crate::error::{Error, Result};
use hub::{FetchPolicy, ModelFiles};

/// A loaded model of any family, ready to clone per worker.
#[derive(Clone)]
pub enum Model {
    /// Sentence-embedding extractive summarizer (BERT family).
    Extractive(extractive::Extractive),
    /// Decoder-only GGUF model (Qwen2/3, Llama, Gemma 3), prompted.
    Causal(Box<causal::CausalModel>),
}

/// A model with the names it goes by.
#[derive(Clone)]
pub struct LoadedModel {
    /// The job's name for it (`[models.NAME]`).
    pub name: String,
    /// The id recorded in output records' `meta.models`.
    pub id: String,
    /// The model itself.
    pub model: Model,
}

impl LoadedModel {
    /// Runs a generative task; an extractive model cannot and says so.
    pub fn generate(&mut self, task: Task, input: &str, opts: &GenOptions) -> Result<Generation> {
        match &mut self.model {
            Model::Causal(m) => m.generate(task, input, opts),
            Model::Extractive(_) => Err(Error::Model {
                model: self.name.clone(),
                message: "an extractive (sentence-embedding) model cannot generate text; \
                          use it for [summary] only"
                    .into(),
            }),
        }
    }

    /// Human description for `tidings models inspect`.
    pub fn describe(&self) -> String {
        match &self.model {
            Model::Causal(m) => m.describe(),
            Model::Extractive(_) => "family: extractive (BERT sentence embeddings)".into(),
        }
    }
}

/// Files a family needs besides the primary one, fetched by
/// `tidings models fetch` (GGUF: the optional tokenizer.json).
fn is_gguf(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Resolves a model's files (fetching them when `policy` allows) without
/// loading weights; returns the files for [`load`].
pub fn resolve(spec: &ModelSpec, policy: FetchPolicy) -> Result<ModelFiles> {
    let files = ModelFiles::open(&spec.name, &spec.source, policy)?;
    match files.primary() {
        Some(p) if is_gguf(p) => {
            files.get_optional("tokenizer.json")?;
        }
        _ => {
            let config = files.get("config.json")?;
            match model_type(&spec.name, &config)?.as_str() {
                "bert" => {
                    files.get("tokenizer.json")?;
                    files.get("model.safetensors")?;
                    files.get_optional("sentence_bert_config.json")?;
                }
                other => return Err(unsupported(&spec.name, other)),
            }
        }
    }
    Ok(files)
}

/// Loads a model: the family is detected from the files.
pub fn load(
    spec: &ModelSpec,
    policy: FetchPolicy,
    device: &candle_core::Device,
) -> Result<LoadedModel> {
    let files = resolve(spec, policy)?;
    let model = match files.primary() {
        Some(p) if is_gguf(p) => {
            let tok = files.get_optional("tokenizer.json")?;
            Model::Causal(Box::new(causal::CausalModel::load(
                &spec.name,
                p,
                tok.as_deref(),
                device,
            )?))
        }
        _ => {
            let config = files.get("config.json")?;
            let dir = config.parent().unwrap_or(std::path::Path::new("."));
            Model::Extractive(extractive::Extractive::load(&spec.name, dir, device)?)
        }
    };
    Ok(LoadedModel {
        name: spec.name.clone(),
        id: files.id().to_string(),
        model,
    })
}

fn model_type(name: &str, config: &std::path::Path) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        model_type: Option<String>,
    }
    let text = std::fs::read_to_string(config).map_err(Error::io("cannot read", config))?;
    let probe: Probe = serde_json::from_str(&text).map_err(|e| Error::Model {
        model: name.into(),
        message: format!("`{}` is not valid JSON: {e}", config.display()),
    })?;
    probe.model_type.ok_or_else(|| Error::Model {
        model: name.into(),
        message: format!("`{}` has no `model_type`", config.display()),
    })
}

fn unsupported(name: &str, model_type: &str) -> Error {
    Error::Model {
        model: name.into(),
        message: format!(
            "model_type `{model_type}` is not supported; supported: `bert` \
             (extractive summaries) and GGUF files of qwen2, qwen3, llama and gemma3"
        ),
    }
}
