//! Job configuration: the TOML file a user writes, parsed into raw serde
//! structs that reject unknown keys, then validated into a [`Job`].
//!
//! The raw structs mirror the file one to one (`kebab-case`,
//! `deny_unknown_fields`), so a typo such as `max-new-token` is an error that
//! names the key and the file instead of a silent default. Validation then
//! resolves what the rest of the program needs: paths relative to the config
//! file's folder, language codes checked against [`crate::text::langid`],
//! model names looked up in `[models]`, model sources parsed, and the command
//! line's overrides applied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::hub::ModelSource;
use crate::models::GenOptions;
use crate::text::langid::{self, Language};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawJob {
    #[serde(default)]
    input: RawInput,
    #[serde(default)]
    output: RawOutput,
    summary: Option<RawSummary>,
    translate: Option<RawTranslate>,
    #[serde(default)]
    models: BTreeMap<String, RawModel>,
    #[serde(default)]
    generation: RawGeneration,
    #[serde(default)]
    runtime: RawRuntime,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawInput {
    path: Option<String>,
    id_field: Option<String>,
    title_field: Option<String>,
    text_field: Option<String>,
    /// Source language assumed when detection is not reliable.
    lang: Option<String>,
    /// Articles longer than this (in bytes of text) go to the errors file.
    max_bytes: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawOutput {
    path: Option<String>,
    errors_path: Option<String>,
    errors: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSummary {
    model: String,
    sentences: Option<usize>,
    max_words: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTranslate {
    targets: Vec<String>,
    fields: Option<Vec<String>>,
    #[serde(default)]
    models: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawModel {
    source: String,
    prefix: Option<String>,
    generation: Option<RawGeneration>,
    quantize: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGeneration {
    beam_size: Option<usize>,
    length_penalty: Option<f64>,
    max_new_tokens: Option<usize>,
    max_length_ratio: Option<f64>,
    repetition_guard: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRuntime {
    device: Option<String>,
    threads: Option<usize>,
    workers: Option<usize>,
    batch_tokens: Option<usize>,
    batch_sequences: Option<usize>,
    window: Option<usize>,
    segment_cache: Option<usize>,
}

/// Where records come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputPath {
    /// Standard input (`-`).
    Stdin,
    /// A file; `.gz` and `.zst` are decompressed by extension.
    File(PathBuf),
}

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputPath {
    /// Standard output (`-`).
    Stdout,
    /// A file, written in input order and flushed as records complete.
    File(PathBuf),
}

/// Where per-record failures go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ErrorsMode {
    /// One line per failed record in the errors file.
    File,
    /// A failed record becomes an output line with an `error` object.
    Inline,
}

/// Which fields of an article are translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// The headline.
    Title,
    /// The summary the job produced.
    Summary,
    /// The full text, sentence by sentence, keeping paragraphs.
    Text,
}

impl Field {
    /// The name used in configs and output records.
    pub fn name(self) -> &'static str {
        match self {
            Field::Title => "title",
            Field::Summary => "summary",
            Field::Text => "text",
        }
    }
}

/// Compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU by ordinal (needs the `cuda` feature).
    Cuda(usize),
    /// Apple's GPU (needs the `metal` feature).
    Metal,
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "metal" => Ok(DeviceSpec::Metal),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(i)) => Ok(DeviceSpec::Cuda(i)),
                _ => Err(format!(
                    "unknown device `{s}`: expected cpu, cuda, cuda:N or metal"
                )),
            },
        }
    }
}

impl DeviceSpec {
    /// Opens the device; a GPU device without its feature is a clear error.
    pub fn open(self) -> Result<candle_core::Device> {
        // (device, name, built with its feature, what to check if it was)
        let (device, name, built, check) = match self {
            DeviceSpec::Cpu => return Ok(candle_core::Device::Cpu),
            DeviceSpec::Cuda(i) => (
                candle_core::Device::new_cuda(i),
                "cuda",
                cfg!(feature = "cuda"),
                "is there an NVIDIA GPU, and a driver new enough for the CUDA version \
                 tidings was built with?",
            ),
            DeviceSpec::Metal => (
                candle_core::Device::new_metal(0),
                "metal",
                cfg!(feature = "metal"),
                "is this a Mac with a Metal GPU?",
            ),
        };
        device.map_err(|source| {
            let hint = if built {
                check.to_string()
            } else {
                format!("this tidings was built without it: rebuild with `--features {name}`")
            };
            Error::Candle {
                model: "-".into(),
                context: format!("cannot open the {name} device ({hint})"),
                source: Box::new(source),
            }
        })
    }
}

/// A shard of the input: records whose id hashes to `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which shard, `0..count`.
    pub index: u64,
    /// How many shards in all.
    pub count: u64,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}` is not a shard: expected K/N with 0 <= K < N, e.g. 0/4");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u64 = k.trim().parse().map_err(|_| bad())?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Whether a record id belongs to this shard. The hash (xxh3, seed 0) is
    /// fixed by its specification, so it is stable across runs, machines and
    /// versions of tidings.
    pub fn contains(&self, id: &str) -> bool {
        xxhash_rust::xxh3::xxh3_64(id.as_bytes()) % self.count == self.index
    }

    /// Parses `--shard`: `K/N`, or `auto` to take K and N from the
    /// environment of an array job (see [`Shard::from_env`]).
    pub fn parse_arg(
        s: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> std::result::Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Shard::from_env(env)
        } else {
            s.parse()
        }
    }

    /// The shard of this task of an array job, read through `env` (a lookup
    /// such as `|k| std::env::var(k).ok()`, so tests can pass a map):
    ///
    /// - Kubernetes Indexed Job: K = `JOB_COMPLETION_INDEX` (set by
    ///   Kubernetes), N = `TIDINGS_SHARDS` (set it to the Job's
    ///   `completions`).
    /// - Slurm job array: K = (`SLURM_ARRAY_TASK_ID` - `SLURM_ARRAY_TASK_MIN`)
    ///   / `SLURM_ARRAY_TASK_STEP` (min 0 and step 1 when unset), so
    ///   `--array=1-8` and `--array=0-14:2` both give shards 0..N;
    ///   N = `SLURM_ARRAY_TASK_COUNT`.
    ///
    /// Kubernetes wins when both are set. A pair set by half, a value that is
    /// not a number, an index outside `0..N` or no pair at all is an error
    /// naming the variables.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> std::result::Result<Self, String> {
        const K8S_INDEX: &str = "JOB_COMPLETION_INDEX";
        const K8S_COUNT: &str = "TIDINGS_SHARDS";
        const SLURM_ID: &str = "SLURM_ARRAY_TASK_ID";
        const SLURM_COUNT: &str = "SLURM_ARRAY_TASK_COUNT";
        const SLURM_MIN: &str = "SLURM_ARRAY_TASK_MIN";
        const SLURM_STEP: &str = "SLURM_ARRAY_TASK_STEP";
        let get = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let num = |k: &str, v: &str| -> std::result::Result<u64, String> {
            v.parse()
                .map_err(|_| format!("--shard auto: {k}=`{v}` is not a non-negative integer"))
        };
        let checked = |index: u64, count: u64, what: String| {
            if count == 0 {
                Err(format!(
                    "--shard auto: {what}: the shard count must be at least 1"
                ))
            } else if index >= count {
                Err(format!(
                    "--shard auto: {what}: shard index {index} is not below the shard count {count}"
                ))
            } else {
                Ok(Shard { index, count })
            }
        };
        match (get(K8S_INDEX), get(K8S_COUNT)) {
            (Some(k), Some(n)) => {
                let (index, count) = (num(K8S_INDEX, &k)?, num(K8S_COUNT, &n)?);
                return checked(index, count, format!("{K8S_INDEX}={k}, {K8S_COUNT}={n}"));
            }
            (Some(_), None) => {
                return Err(format!(
                    "--shard auto: {K8S_INDEX} is set (a Kubernetes Indexed Job) but {K8S_COUNT} \
                     is not: set {K8S_COUNT} to the Job's `completions`"
                ))
            }
            (None, Some(_)) => {
                return Err(format!(
                    "--shard auto: {K8S_COUNT} is set but {K8S_INDEX} is not: \
                     is this pod part of a Job with `completionMode: Indexed`?"
                ))
            }
            (None, None) => {}
        }
        match (get(SLURM_ID), get(SLURM_COUNT)) {
            (Some(id), Some(n)) => {
                let task = num(SLURM_ID, &id)?;
                let count = num(SLURM_COUNT, &n)?;
                let min = get(SLURM_MIN)
                    .map(|v| num(SLURM_MIN, &v))
                    .transpose()?
                    .unwrap_or(0);
                let step = get(SLURM_STEP)
                    .map(|v| num(SLURM_STEP, &v))
                    .transpose()?
                    .unwrap_or(1);
                let what = format!("{SLURM_ID}={id}, {SLURM_MIN}={min}, {SLURM_COUNT}={n}");
                if task < min || step == 0 || (task - min) % step != 0 {
                    return Err(format!(
                        "--shard auto: {what}, {SLURM_STEP}={step}: the task id is not on the \
                         array's range; submit the array as one range, e.g. --array=0-{}",
                        count.saturating_sub(1)
                    ));
                }
                checked((task - min) / step, count, what)
            }
            (Some(_), None) | (None, Some(_)) => Err(format!(
                "--shard auto: only one of {SLURM_ID} and {SLURM_COUNT} is set; \
                 is this a Slurm job array (sbatch --array)?"
            )),
            (None, None) => Err(format!(
                "--shard auto: no array-job environment found: set {K8S_INDEX} and {K8S_COUNT} \
                 (Kubernetes Indexed Job) or {SLURM_ID} and {SLURM_COUNT} (Slurm job array), \
                 or give the shard as K/N"
            )),
        }
    }
}

/// Generation settings after merging defaults, `[generation]` and a model's
/// own `generation` table.
#[derive(Debug, Clone, PartialEq)]
pub struct GenSettings {
    /// Beam width; 1 is greedy.
    pub beam_size: usize,
    /// Beam-search length penalty exponent.
    pub length_penalty: f64,
    /// Token budget and repetition guard.
    pub options: GenOptions,
    /// Which of these the job set itself; unset ones give way to the
    /// checkpoint's `generation_config.json` (encoder-decoder models).
    pub set: GenKeys,
}

/// Generation keys a job config set explicitly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenKeys {
    /// `beam-size`.
    pub beam_size: bool,
    /// `length-penalty`.
    pub length_penalty: bool,
    /// `max-new-tokens`.
    pub max_new_tokens: bool,
}

impl Default for GenSettings {
    fn default() -> Self {
        GenSettings {
            beam_size: 1,
            length_penalty: 1.0,
            options: GenOptions::default(),
            set: GenKeys::default(),
        }
    }
}

/// One `[models.NAME]` entry, validated.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The key under `[models]`.
    pub name: String,
    /// The `source` string as written.
    pub source_text: String,
    /// The parsed source.
    pub source: ModelSource,
    /// Text put before every input (T5-style task prompts).
    pub prefix: String,
    /// Effective generation settings.
    pub generation: GenSettings,
    /// Quantize the weights of an encoder-decoder model at load (`quantize`
    /// in the job); `None` keeps the checkpoint's precision.
    pub quantize: Option<Quantize>,
}

/// Weight quantization of encoder-decoder models, run through candle's
/// quantized matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantize {
    /// 8-bit blocks (`q8_0`): near-lossless; the vocabulary head of the
    /// encoder-decoder families as 8-bit rows where AVX-512 VNNI runs them.
    Q8_0,
    /// 4-bit k-quants (`q4k`): smaller and faster, lossier.
    Q4K,
}

impl Quantize {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" | "int8" => Some(Quantize::Q8_0),
            "q4k" | "q4_k" => Some(Quantize::Q4K),
            _ => None,
        }
    }

    /// candle's block type.
    pub fn dtype(self) -> candle_core::quantized::GgmlDType {
        match self {
            Quantize::Q8_0 => candle_core::quantized::GgmlDType::Q8_0,
            Quantize::Q4K => candle_core::quantized::GgmlDType::Q4K,
        }
    }
}

/// The summary stage.
#[derive(Debug, Clone)]
pub struct SummarySpec {
    /// Name of the model in [`Job::models`].
    pub model: String,
    /// Sentences an extractive summary keeps.
    pub sentences: usize,
    /// Word limit asked of an abstractive summary.
    pub max_words: usize,
}

/// The translation stage.
#[derive(Debug, Clone)]
pub struct TranslateSpec {
    /// Target languages, in the order of the config.
    pub targets: Vec<&'static Language>,
    /// Fields to translate.
    pub fields: Vec<Field>,
    /// Model name per target code.
    pub models: BTreeMap<&'static str, String>,
}

/// Sequences a causal model decodes together unless the job says otherwise
/// (`runtime.batch-sequences`; BENCHMARKS.md, "Whole pipeline against the
/// models alone", has the measurement against 16).
pub const DEFAULT_BATCH_SEQUENCES: usize = 8;

/// Runtime knobs.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Where the models run.
    pub device: DeviceSpec,
    /// Math threads in all.
    pub threads: usize,
    /// Model workers; each gets `threads / workers` math threads.
    pub workers: usize,
    /// Token budget per model batch.
    pub batch_tokens: usize,
    /// Sequences a causal (GGUF) model decodes together; 1 turns batching off.
    pub batch_sequences: usize,
    /// Articles processed together (sorting, deduplication, flush unit).
    pub window: usize,
    /// Translated segments remembered across windows, so that boilerplate
    /// repeated through a dump is translated once (0: within a window only).
    pub segment_cache: usize,
}

/// Segments a run remembers across windows unless the job says otherwise
/// (`runtime.segment-cache`): at a few hundred bytes each, tens of MB.
pub const DEFAULT_SEGMENT_CACHE: usize = 100_000;

/// Input settings.
#[derive(Debug, Clone)]
pub struct InputSpec {
    /// File or stdin.
    pub path: InputPath,
    /// JSON field holding the id (missing id: the line number).
    pub id_field: String,
    /// JSON field holding the headline (optional in records).
    pub title_field: String,
    /// JSON field holding the body.
    pub text_field: String,
    /// Source language when detection is not reliable.
    pub default_lang: &'static Language,
    /// Longest accepted text, in bytes.
    pub max_bytes: usize,
}

/// Output settings.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    /// File or stdout.
    pub path: OutputPath,
    /// The errors file (used unless `errors` is inline).
    pub errors_path: PathBuf,
    /// Errors file or inline error records.
    pub errors: ErrorsMode,
}

/// A validated job, ready to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The config file it came from.
    pub config_path: PathBuf,
    /// Input settings.
    pub input: InputSpec,
    /// Output settings.
    pub output: OutputSpec,
    /// Summary stage, if any.
    pub summary: Option<SummarySpec>,
    /// Translation stage, if any.
    pub translate: Option<TranslateSpec>,
    /// Every model the job defines, by name.
    pub models: BTreeMap<String, ModelSpec>,
    /// Runtime knobs.
    pub runtime: Runtime,
}

/// Command-line values that override the config file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--input`.
    pub input: Option<String>,
    /// `--output`.
    pub output: Option<String>,
    /// `--device`.
    pub device: Option<DeviceSpec>,
    /// `--threads`.
    pub threads: Option<usize>,
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--errors`.
    pub errors: Option<ErrorsMode>,
}

const DEFAULT_MAX_BYTES: usize = 1 << 20;

impl Job {
    /// Reads, parses and validates a job file, then applies `overrides`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Job> {
        let text = std::fs::read_to_string(path).map_err(Error::io("cannot read config", path))?;
        Job::parse(&text, path, overrides)
    }

    /// Parses and validates job text; `path` names it in errors and anchors
    /// relative paths.
    pub fn parse(text: &str, path: &Path, overrides: &Overrides) -> Result<Job> {
        let raw: RawJob = toml::from_str(text).map_err(|e| Error::ConfigToml {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        Validator { path }.job(raw, overrides)
    }

    /// Names of the models the job actually uses (summary first, then each
    /// distinct translation model), without duplicates.
    pub fn used_models(&self) -> Vec<&ModelSpec> {
        let mut names: Vec<&str> = Vec::new();
        if let Some(s) = &self.summary {
            names.push(&s.model);
        }
        if let Some(t) = &self.translate {
            for l in &t.targets {
                let m = t.models[l.code].as_str();
                if !names.contains(&m) {
                    names.push(m);
                }
            }
        }
        names.iter().map(|n| &self.models[*n]).collect()
    }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Config {
            path: self.path.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn language(&self, key: &str, code: &str) -> Result<&'static Language> {
        langid::lookup(code).ok_or_else(|| {
            self.err(
                key,
                format!("unknown language code `{code}` (use ISO 639-1, e.g. `es`, `fa`)"),
            )
        })
    }

    fn job(&self, raw: RawJob, ov: &Overrides) -> Result<Job> {
        let base = self.base_dir();
        // Paths given in the config are relative to its folder; paths given
        // on the command line are relative to the working directory.
        let input_path = match (&ov.input, &raw.input.path) {
            (Some(p), _) if p == "-" => InputPath::Stdin,
            (Some(p), _) => InputPath::File(PathBuf::from(p)),
            (None, Some(p)) if p == "-" => InputPath::Stdin,
            (None, Some(p)) => InputPath::File(base.join(p)),
            (None, None) => return Err(self.err("input.path", "no input: set it or pass --input")),
        };
        let default_lang =
            self.language("input.lang", raw.input.lang.as_deref().unwrap_or("en"))?;
        let max_bytes = raw.input.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if max_bytes == 0 {
            return Err(self.err("input.max-bytes", "must be at least 1"));
        }
        let input = InputSpec {
            path: input_path,
            id_field: raw.input.id_field.unwrap_or_else(|| "id".into()),
            title_field: raw.input.title_field.unwrap_or_else(|| "title".into()),
            text_field: raw.input.text_field.unwrap_or_else(|| "text".into()),
            default_lang,
            max_bytes,
        };

        let output_path = match (&ov.output, &raw.output.path) {
            (Some(p), _) if p == "-" => OutputPath::Stdout,
            (Some(p), _) => OutputPath::File(PathBuf::from(p)),
            (None, Some(p)) if p == "-" => OutputPath::Stdout,
            (None, Some(p)) => OutputPath::File(base.join(p)),
            (None, None) => {
                return Err(self.err("output.path", "no output: set it or pass --output"))
            }
        };
        let errors_path = match (&raw.output.errors_path, &output_path) {
            (Some(p), _) => base.join(p),
            (None, OutputPath::File(p)) => errors_path_for(p),
            (None, OutputPath::Stdout) => PathBuf::from("tidings.errors.jsonl"),
        };
        let errors = match (ov.errors, raw.output.errors.as_deref()) {
            (Some(m), _) => m,
            (None, None | Some("file")) => ErrorsMode::File,
            (None, Some("inline")) => ErrorsMode::Inline,
            (None, Some(other)) => {
                return Err(self.err(
                    "output.errors",
                    format!("`{other}`: expected \"file\" or \"inline\""),
                ))
            }
        };
        let output = OutputSpec {
            path: output_path,
            errors_path,
            errors,
        };

        let global = self.generation("generation", &raw.generation, None)?;
        let mut models = BTreeMap::new();
        for (name, m) in raw.models {
            let key = format!("models.{name}");
            let source = ModelSource::parse(&m.source, &base)
                .map_err(|msg| self.err(format!("{key}.source"), msg))?;
            let generation = match &m.generation {
                Some(g) => self.generation(&format!("{key}.generation"), g, Some(&global))?,
                None => global.clone(),
            };
            let quantize = match m.quantize.as_deref() {
                None | Some("none") | Some("f32") => None,
                Some(q) => Some(Quantize::parse(q).ok_or_else(|| {
                    self.err(
                        format!("{key}.quantize"),
                        format!("unknown value `{q}`; use \"q8_0\", \"q4k\" or \"none\""),
                    )
                })?),
            };
            models.insert(
                name.clone(),
                ModelSpec {
                    name,
                    source_text: m.source,
                    source,
                    prefix: m.prefix.unwrap_or_default(),
                    generation,
                    quantize,
                },
            );
        }
        let model_ref = |key: &str, name: &str| -> Result<String> {
            if models.contains_key(name) {
                Ok(name.to_string())
            } else {
                let known: Vec<&str> = models.keys().map(String::as_str).collect();
                Err(self.err(
                    key,
                    format!(
                        "no model named `{name}` in [models] (defined: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ))
            }
        };

        let summary = match raw.summary {
            None => None,
            Some(s) => {
                let sentences = s.sentences.unwrap_or(3);
                if sentences == 0 {
                    return Err(self.err("summary.sentences", "must be at least 1"));
                }
                let max_words = s.max_words.unwrap_or(60);
                if max_words == 0 {
                    return Err(self.err("summary.max-words", "must be at least 1"));
                }
                Some(SummarySpec {
                    model: model_ref("summary.model", &s.model)?,
                    sentences,
                    max_words,
                })
            }
        };

        let translate = match raw.translate {
            None => None,
            Some(t) => {
                if t.targets.is_empty() {
                    return Err(self.err("translate.targets", "list at least one language"));
                }
                let mut targets = Vec::new();
                for (i, code) in t.targets.iter().enumerate() {
                    let lang = self.language(&format!("translate.targets[{i}]"), code)?;
                    if targets.contains(&lang) {
                        return Err(self.err(
                            format!("translate.targets[{i}]"),
                            format!("`{code}` is listed twice"),
                        ));
                    }
                    targets.push(lang);
                }
                let mut fields = Vec::new();
                let field_names = t
                    .fields
                    .unwrap_or_else(|| vec!["title".into(), "summary".into()]);
                for (i, f) in field_names.iter().enumerate() {
                    let field = match f.as_str() {
                        "title" => Field::Title,
                        "summary" => Field::Summary,
                        "text" => Field::Text,
                        other => {
                            return Err(self.err(
                                format!("translate.fields[{i}]"),
                                format!("`{other}`: expected title, summary or text"),
                            ))
                        }
                    };
                    if !fields.contains(&field) {
                        fields.push(field);
                    }
                }
                if fields.contains(&Field::Summary) && summary.is_none() {
                    return Err(self.err(
                        "translate.fields",
                        "`summary` is translated but the job has no [summary] section",
                    ));
                }
                let mut by_lang = BTreeMap::new();
                for (code, name) in &t.models {
                    let key = format!("translate.models.{code}");
                    let lang = self.language(&key, code)?;
                    if !targets.contains(&lang) {
                        return Err(self.err(key, format!("`{code}` is not in translate.targets")));
                    }
                    by_lang.insert(lang.code, model_ref(&key, name)?);
                }
                for lang in &targets {
                    if !by_lang.contains_key(lang.code) {
                        return Err(self.err(
                            "translate.models",
                            format!("no model for target `{}`", lang.code),
                        ));
                    }
                }
                Some(TranslateSpec {
                    targets,
                    fields,
                    models: by_lang,
                })
            }
        };

        let device = match (ov.device, raw.runtime.device.as_deref()) {
            (Some(d), _) => d,
            (None, None) => DeviceSpec::Cpu,
            (None, Some(s)) => s
                .parse()
                .map_err(|m: String| self.err("runtime.device", m))?,
        };
        let threads = ov
            .threads
            .or(raw.runtime.threads)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads == 0 {
            return Err(self.err("runtime.threads", "must be at least 1"));
        }
        // Measured on a 2-core machine (SmolLM2, 6 NTREX articles, same
        // outputs either way): two single-threaded workers beat one worker
        // with two math threads, and stay fast when other processes compete
        // for the cores, where candle's spinning thread pool collapses. So on
        // CPU the default is one worker per thread; accelerators run one.
        let workers = ov.workers.or(raw.runtime.workers).unwrap_or(match device {
            DeviceSpec::Cpu => threads,
            _ => 1,
        });
        if workers == 0 || workers > threads {
            return Err(self.err(
                "runtime.workers",
                format!("must be between 1 and threads ({threads})"),
            ));
        }
        let runtime = Runtime {
            device,
            threads,
            workers,
            batch_tokens: raw.runtime.batch_tokens.unwrap_or(4096).max(1),
            batch_sequences: raw
                .runtime
                .batch_sequences
                .unwrap_or(DEFAULT_BATCH_SEQUENCES)
                .max(1),
            window: raw.runtime.window.unwrap_or(64).max(1),
            segment_cache: raw.runtime.segment_cache.unwrap_or(DEFAULT_SEGMENT_CACHE),
        };

        Ok(Job {
            config_path: self.path.to_path_buf(),
            input,
            output,
            summary,
            translate,
            models,
            runtime,
        })
    }

    fn generation(
        &self,
        key: &str,
        g: &RawGeneration,
        parent: Option<&GenSettings>,
    ) -> Result<GenSettings> {
        let d = parent.cloned().unwrap_or_default();
        let s = GenSettings {
            beam_size: g.beam_size.unwrap_or(d.beam_size),
            length_penalty: g.length_penalty.unwrap_or(d.length_penalty),
            options: GenOptions {
                max_new_tokens: g.max_new_tokens.unwrap_or(d.options.max_new_tokens),
                max_length_ratio: g.max_length_ratio.unwrap_or(d.options.max_length_ratio),
                repetition_guard: g.repetition_guard.unwrap_or(d.options.repetition_guard),
            },
            set: GenKeys {
                beam_size: d.set.beam_size || g.beam_size.is_some(),
                length_penalty: d.set.length_penalty || g.length_penalty.is_some(),
                max_new_tokens: d.set.max_new_tokens || g.max_new_tokens.is_some(),
            },
        };
        if s.beam_size == 0 {
            return Err(self.err(format!("{key}.beam-size"), "must be at least 1"));
        }
        if s.options.max_new_tokens == 0 {
            return Err(self.err(format!("{key}.max-new-tokens"), "must be at least 1"));
        }
        if s.options.max_length_ratio.is_nan() || s.options.max_length_ratio <= 0.0 {
            return Err(self.err(format!("{key}.max-length-ratio"), "must be positive"));
        }
        Ok(s)
    }
}

/// The errors file that goes with an output file: `out/a.jsonl` ->
/// `out/a.errors.jsonl` (any other name gets `.errors.jsonl` appended).
pub fn errors_path_for(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".jsonl")
        .or_else(|| name.strip_suffix(".json"))
        .unwrap_or(&name);
    output.with_file_name(format!("{stem}.errors.jsonl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[input]
path = "articles.jsonl"
[output]
path = "out/a.jsonl"
[summary]
model = "minilm"
sentences = 2
[translate]
targets = ["es", "fa"]
fields = ["title", "summary"]
models = { es = "q", fa = "q" }
[models.minilm]
source = "path:models/minilm"
[models.q]
source = "path:q.gguf"
generation = { max-new-tokens = 64 }
[generation]
max-new-tokens = 128
[runtime]
threads = 2
"#;

    fn parse(text: &str) -> Result<Job> {
        Job::parse(text, Path::new("conf/job.toml"), &Overrides::default())
    }

    #[test]
    fn good_config_validates_and_resolves_paths() {
        let job = parse(GOOD).unwrap();
        assert_eq!(
            job.input.path,
            InputPath::File(PathBuf::from("conf/articles.jsonl"))
        );
        assert_eq!(
            job.output.errors_path,
            PathBuf::from("conf/out/a.errors.jsonl")
        );
        let t = job.translate.as_ref().unwrap();
        assert_eq!(t.targets[1].name, "Persian");
        assert_eq!(job.models["q"].generation.options.max_new_tokens, 64);
        assert_eq!(job.models["minilm"].generation.options.max_new_tokens, 128);
        assert_eq!(job.used_models().len(), 2);
    }

    #[test]
    fn unknown_key_names_the_key_and_file() {
        let text = GOOD.replace("threads = 2", "threads = 2\nthreadz = 3");
        let msg = format!("{:#}", anyhow::Error::from(parse(&text).unwrap_err()));
        assert!(msg.contains("threadz"), "{msg}");
        assert!(msg.contains("conf/job.toml"), "{msg}");
    }

    #[test]
    fn unknown_language_and_model_are_rejected() {
        let e = parse(&GOOD.replace("\"fa\"]", "\"xx\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("translate.targets[1]") && e.contains("xx"),
            "{e}"
        );
        let e = parse(&GOOD.replace("fa = \"q\"", "fa = \"nope\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("translate.models.fa") && e.contains("nope"),
            "{e}"
        );
    }

    #[test]
    fn overrides_win() {
        let ov = Overrides {
            input: Some("-".into()),
            output: Some("-".into()),
            threads: Some(1),
            ..Default::default()
        };
        let job = Job::parse(GOOD, Path::new("job.toml"), &ov).unwrap();
        assert_eq!(job.input.path, InputPath::Stdin);
        assert_eq!(job.output.path, OutputPath::Stdout);
        assert_eq!(job.runtime.threads, 1);
    }

    #[test]
    fn shard_parsing_and_membership() {
        assert!("3/2".parse::<Shard>().is_err());
        assert!("0/0".parse::<Shard>().is_err());
        assert!("x/2".parse::<Shard>().is_err());
        let shards: Vec<Shard> = (0..3).map(|k| format!("{k}/3").parse().unwrap()).collect();
        for i in 0..100 {
            let id = format!("doc-{i}");
            assert_eq!(shards.iter().filter(|s| s.contains(&id)).count(), 1);
        }
    }

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn shard_auto_from_kubernetes_and_slurm() {
        let k8s = [("JOB_COMPLETION_INDEX", "3"), ("TIDINGS_SHARDS", "8")];
        assert_eq!(Shard::from_env(env(&k8s)), Ok(Shard { index: 3, count: 8 }));
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ];
        assert_eq!(
            Shard::from_env(env(&slurm)),
            Ok(Shard { index: 0, count: 4 })
        );
        // `--array=1-8`: ids 1..=8 map to shards 0..8.
        let one_based = [
            ("SLURM_ARRAY_TASK_ID", "8"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "8"),
        ];
        assert_eq!(
            Shard::from_env(env(&one_based)),
            Ok(Shard { index: 7, count: 8 })
        );
        // `--array=10-16:2`: ids 10, 12, 14, 16.
        let stepped = [
            ("SLURM_ARRAY_TASK_ID", "14"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "10"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
        ];
        assert_eq!(
            Shard::from_env(env(&stepped)),
            Ok(Shard { index: 2, count: 4 })
        );
        // Kubernetes wins when both are present.
        let both = [k8s[0], k8s[1], slurm[0], slurm[1]];
        assert_eq!(Shard::from_env(env(&both)).unwrap().count, 8);
        // `auto` goes to the environment; K/N does not look at it.
        assert_eq!(Shard::parse_arg("auto", env(&k8s)).unwrap().index, 3);
        assert_eq!(
            Shard::parse_arg("1/2", env(&[])),
            Ok(Shard { index: 1, count: 2 })
        );
    }

    #[test]
    fn shard_auto_errors_name_the_variables() {
        // (environment, what the error must say)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                &[],
                &[
                    "JOB_COMPLETION_INDEX",
                    "TIDINGS_SHARDS",
                    "SLURM_ARRAY_TASK_ID",
                ],
            ),
            (&[("JOB_COMPLETION_INDEX", "2")], &["TIDINGS_SHARDS"]),
            (&[("TIDINGS_SHARDS", "2")], &["JOB_COMPLETION_INDEX"]),
            (
                &[("JOB_COMPLETION_INDEX", "4"), ("TIDINGS_SHARDS", "4")],
                &["JOB_COMPLETION_INDEX=4", "not below"],
            ),
            (
                &[("JOB_COMPLETION_INDEX", "0"), ("TIDINGS_SHARDS", "0")],
                &["TIDINGS_SHARDS=0"],
            ),
            (
                &[("JOB_COMPLETION_INDEX", "x"), ("TIDINGS_SHARDS", "4")],
                &["JOB_COMPLETION_INDEX=`x`"],
            ),
            (&[("SLURM_ARRAY_TASK_ID", "1")], &["SLURM_ARRAY_TASK_COUNT"]),
            (
                &[
                    ("SLURM_ARRAY_TASK_ID", "4"),
                    ("SLURM_ARRAY_TASK_COUNT", "4"),
                ],
                &["SLURM_ARRAY_TASK_ID=4", "not below"],
            ),
            (
                // `--array=2-5` has no id 6.
                &[
                    ("SLURM_ARRAY_TASK_ID", "6"),
                    ("SLURM_ARRAY_TASK_COUNT", "4"),
                    ("SLURM_ARRAY_TASK_MIN", "2"),
                ],
                &["not below"],
            ),
            (
                &[
                    ("SLURM_ARRAY_TASK_ID", "0"),
                    ("SLURM_ARRAY_TASK_COUNT", "4"),
                    ("SLURM_ARRAY_TASK_MIN", "1"),
                ],
                &["SLURM_ARRAY_TASK_MIN=1", "range"],
            ),
        ];
        for (pairs, needles) in cases {
            let e = Shard::from_env(env(pairs)).unwrap_err();
            for n in *needles {
                assert!(e.contains(n), "{pairs:?}: `{e}` lacks `{n}`");
            }
        }
    }

    #[test]
    fn errors_path_derivation() {
        assert_eq!(
            errors_path_for(Path::new("out/a.jsonl")),
            PathBuf::from("out/a.errors.jsonl")
        );
        assert_eq!(
            errors_path_for(Path::new("out/a.txt")),
            PathBuf::from("out/a.txt.errors.jsonl")
        );
    }
}
