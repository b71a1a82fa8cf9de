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
    /// Encoder-decoder model (Marian, T5, M2M100/NLLB), batched.
    Seq2Seq(Box<seq2seq::Seq2SeqModel>),
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
            Model::Seq2Seq(m) => {
                let settings = crate::config::GenSettings {
                    options: opts.clone(),
                    ..Default::default()
                };
                let (mut out, _) = m.generate_batch(task, &[input], &settings, usize::MAX)?;
                out.pop()
                    .expect("one result per input")
                    .map_err(|message| Error::Model {
                        model: self.name.clone(),
                        message,
                    })
            }
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
            Model::Seq2Seq(m) => m.describe(),
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
        Some(p) if is_gguf(p) && gguf_architecture(p).as_deref() == Some("t5") => {
            t5_files(&files, files.get("config.json")?)?;
        }
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
                "marian" => {
                    marian_files(&files, config)?;
                }
                "m2m_100" | "m2m100" | "nllb" => {
                    m2m100_files(&files, config)?;
                }
                "t5" | "mt5" => {
                    t5_files(&files, config)?;
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
    load_with(spec, &files, device)
}

/// Loads a model from files already opened (a Hub repository reached with
/// particular [`hub::HubSettings`], for instance); files the family needs
/// are fetched through `files`.
pub fn load_with(
    spec: &ModelSpec,
    files: &ModelFiles,
    device: &candle_core::Device,
) -> Result<LoadedModel> {
    let model = load_files(spec, files, device)?;
    if spec.quantize.is_some()
        && !matches!(&model, Model::Seq2Seq(m) if m.family != seq2seq::Family::T5)
    {
        return Err(Error::Model {
            model: spec.name.clone(),
            message: "`quantize` applies to Marian and M2M100/NLLB checkpoints; GGUF files \
                      (causal models, T5) are quantized already"
                .into(),
        });
    }
    Ok(LoadedModel {
        name: spec.name.clone(),
        id: files.id().to_string(),
        model,
    })
}

fn load_files(spec: &ModelSpec, files: &ModelFiles, device: &candle_core::Device) -> Result<Model> {
    let model = match files.primary() {
        Some(p) if is_gguf(p) && gguf_architecture(p).as_deref() == Some("t5") => {
            let f = t5_files(files, files.get("config.json")?)?;
            Model::Seq2Seq(Box::new(t5::load(&spec.name, &f, device)?))
        }
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
            match model_type(&spec.name, &config)?.as_str() {
                "marian" => {
                    let f = marian_files(files, config)?;
                    Model::Seq2Seq(Box::new(marian::load(
                        &spec.name,
                        &f,
                        spec.quantize,
                        device,
                    )?))
                }
                "m2m_100" | "m2m100" | "nllb" => {
                    let f = m2m100_files(files, config)?;
                    Model::Seq2Seq(Box::new(m2m100::load(
                        &spec.name,
                        &f,
                        spec.quantize,
                        device,
                    )?))
                }
                "t5" | "mt5" => {
                    let f = t5_files(files, config)?;
                    Model::Seq2Seq(Box::new(t5::load(&spec.name, &f, device)?))
                }
                _ => {
                    let dir = config.parent().unwrap_or(std::path::Path::new("."));
                    Model::Extractive(extractive::Extractive::load(&spec.name, dir, device)?)
                }
            }
        }
    };
    Ok(model)
}

/// `model.safetensors`, else `pytorch_model.bin`.
fn weights_file(files: &ModelFiles) -> Result<std::path::PathBuf> {
    match files.get_optional("model.safetensors")? {
        Some(p) => Ok(p),
        None => files.get("pytorch_model.bin"),
    }
}

fn marian_files(files: &ModelFiles, config: std::path::PathBuf) -> Result<marian::MarianFiles> {
    Ok(marian::MarianFiles {
        config,
        weights: weights_file(files)?,
        source_spm: files.get("source.spm")?,
        target_spm: files.get("target.spm")?,
        vocab: files.get("vocab.json")?,
        target_vocab: files.get_optional("target_vocab.json")?,
        tokenizer_config: files.get_optional("tokenizer_config.json")?,
        generation_config: files.get_optional("generation_config.json")?,
    })
}

fn m2m100_files(files: &ModelFiles, config: std::path::PathBuf) -> Result<m2m100::M2M100Files> {
    let tokenizer_json = files.get_optional("tokenizer.json")?;
    let spm = match tokenizer_json {
        Some(_) => None,
        None => files.get_optional("sentencepiece.bpe.model")?,
    };
    Ok(m2m100::M2M100Files {
        config,
        weights: weights_file(files)?,
        tokenizer_json,
        spm,
        tokenizer_config: files.get_optional("tokenizer_config.json")?,
        generation_config: files.get_optional("generation_config.json")?,
    })
}

/// Whether a model's files are a decoder-only GGUF model (the kind
/// [`crate::bench`] measures raw prefill/decode speed of), without loading
/// weights.
pub fn is_causal(spec: &ModelSpec, policy: FetchPolicy) -> Result<bool> {
    let files = ModelFiles::open(&spec.name, &spec.source, policy)?;
    Ok(files
        .primary()
        .is_some_and(|p| is_gguf(p) && gguf_architecture(p).as_deref() != Some("t5")))
}

/// The `general.architecture` of a GGUF file (`None` when unreadable; the
/// causal loader then reports the problem).
fn gguf_architecture(path: &std::path::Path) -> Option<String> {
    let mut f = gguf_reader::GgufReader::open(path).ok()?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).ok()?;
    content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
}

/// A T5 checkpoint's files: the named GGUF file, `model.safetensors`, or
/// the shards listed in `model.safetensors.index.json` (all fetched; the
/// loader reads them from the index's folder).
fn t5_files(files: &ModelFiles, config: std::path::PathBuf) -> Result<t5::T5Files> {
    let weights = match files.primary() {
        Some(p) if is_gguf(p) => p.to_path_buf(),
        _ => match files.get_optional("model.safetensors")? {
            Some(p) => p,
            None => {
                let index = files.get("model.safetensors.index.json")?;
                #[derive(serde::Deserialize)]
                struct Index {
                    weight_map: std::collections::BTreeMap<String, String>,
                }
                let text =
                    std::fs::read_to_string(&index).map_err(Error::io("cannot read", &index))?;
                let idx: Index = serde_json::from_str(&text).map_err(|e| Error::Model {
                    model: files.name().into(),
                    message: format!("`{}` is not a valid index: {e}", index.display()),
                })?;
                let shards: std::collections::BTreeSet<&String> = idx.weight_map.values().collect();
                for shard in shards {
                    files.get(shard)?;
                }
                index
            }
        },
    };
    Ok(t5::T5Files {
        config,
        weights,
        tokenizer_json: files.get_optional("tokenizer.json")?,
        spiece: files.get_optional("spiece.model")?,
        generation_config: files.get_optional("generation_config.json")?,
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
             (extractive summaries), `marian`, `t5`, `m2m_100` (translation and \
             summaries) and GGUF files of qwen2, qwen3, llama, gemma3 and t5"
        ),
    }
}
