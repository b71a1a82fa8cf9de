//! `tidings bench`: runs a job on (a slice of) its input and reports what a
//! user needs to size a run on their hardware: per stage the wall time,
//! articles/s, source and generated tokens/s and batch fill (real / padded
//! tokens of the encoder batches or of the causal models' left-padded
//! prompts); articles/min and peak RSS of the
//! run; the raw single-sequence speed of each causal model measured in the
//! same process, so the pipeline's overhead shows as a ratio; and, when the
//! input carries references (NTREX layout: `references.LANG`, a list of
//! reference sentences) and the job translates `text`, corpus chrF2 per
//! language ([`crate::chrf`]) with each article's whole translated text as
//! one segment against its joined references (the same n-gram counts as
//! sentence segments, save the few n-grams that span a sentence boundary).
//!
//! Output goes to a temporary folder; the job's own output is not touched.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::config::{Job, OutputPath};
use crate::error::{Error, Result};
use crate::models::hub::FetchPolicy;
use crate::models::Model;
use crate::pipeline::{self, RunOptions};

/// Raw speed of one causal model on one sequence.
#[derive(Debug, Clone, Serialize)]
pub struct RawSpeed {
    /// The job's model name.
    pub model: String,
    /// Prompt tokens processed per second (one forward over the prompt).
    pub prefill_tokens_per_s: f64,
    /// New tokens per second, one at a time with the KV cache.
    pub decode_tokens_per_s: f64,
    /// Prompt length used.
    pub prompt_tokens: usize,
    /// Decode steps timed.
    pub decode_tokens: usize,
    /// Sequences of the batched measurement (same prompt length, each
    /// prompt rotated by its row number so that the rows differ).
    pub sequences: usize,
    /// Prompt tokens per second of all sequences prefilled as one batch;
    /// `None` where the family does not batch (or `sequences` is 1).
    pub batch_prefill_tokens_per_s: Option<f64>,
    /// New tokens per second of all sequences together, one step feeding one
    /// token to each.
    pub batch_decode_tokens_per_s: Option<f64>,
    /// Bytes of weights one decode step of one sequence reads, in the
    /// file's formats (every layer weight and the output head once).
    pub step_weight_bytes: u64,
    /// The most decode tokens/s of one sequence that the machine's measured
    /// read bandwidth allows ([`MemoryRead`] over `step_weight_bytes`).
    pub decode_memory_ceiling_tokens_per_s: Option<f64>,
}

/// The machine's streaming read bandwidth, measured by [`read_bandwidth`]
/// on the threads one worker's models run on.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryRead {
    /// Threads reading.
    pub threads: usize,
    /// Bytes per second, in GB (10^9).
    pub gb_per_s: f64,
}

/// `tidings bench --raw-only`: model speed without the pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct RawReport {
    /// The config file.
    pub config: String,
    /// Math threads and workers of the job (the measurement runs on one
    /// worker's threads).
    pub threads: usize,
    /// Model workers.
    pub workers: usize,
    /// Whether the allocator put its memory on huge pages
    /// ([`crate::huge_pages`]).
    pub huge_pages: bool,
    /// One entry per causal model of the job.
    pub raw: Vec<RawSpeed>,
    /// Read bandwidth, the ceiling of one-sequence decoding (measured when
    /// the job has a causal model).
    pub memory_read: Option<MemoryRead>,
}

/// Prompt and decode lengths of the raw measurement.
#[derive(Debug, Clone, Copy)]
pub struct RawSizes {
    /// Prompt tokens per sequence.
    pub prompt_tokens: usize,
    /// Decode steps.
    pub decode_tokens: usize,
    /// Sequences decoded together in the batched measurement.
    pub sequences: usize,
}

/// Everything `tidings bench` reports.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The config file.
    pub config: String,
    /// Records processed.
    pub articles: u64,
    /// Records that went to the errors file.
    pub errors: u64,
    /// Wall time of the run, model loading included.
    pub elapsed_s: f64,
    /// Articles per minute, model loading excluded.
    pub articles_per_min: f64,
    /// Generated tokens per second of model time (the model stages alone:
    /// what the models do once the pipeline has handed them their batches).
    pub generated_tokens_per_s: f64,
    /// Generated tokens per second of the whole run after model loading
    /// (reading, cleaning, segmenting, scheduling and writing included).
    pub end_to_end_generated_tokens_per_s: f64,
    /// Share of the run after model loading spent in model stages.
    pub model_share: f64,
    /// Generated tokens per second of the models alone: the tokens over the
    /// time the workers spent inside model calls (summed over workers,
    /// divided by their number), so waiting on the pipeline (reading,
    /// tokenizing for the scheduler, a worker idle at a stage's end,
    /// writing) is left out.
    pub model_only_generated_tokens_per_s: f64,
    /// End-to-end generated tokens/s over the models-alone figure: 1.0 means
    /// the pipeline costs nothing beyond the model calls.
    pub pipeline_vs_model_only: f64,
    /// Tokens fed to the models.
    pub input_tokens: u64,
    /// Tokens generated.
    pub output_tokens: u64,
    /// Seconds per stage.
    pub stages_s: BTreeMap<String, f64>,
    /// Throughput of each model stage.
    pub model_stages: Vec<StageReport>,
    /// Corpus chrF2 per target language (when references are present).
    pub chrf: BTreeMap<String, ChrfReport>,
    /// Peak resident set size of the process, in MiB.
    pub peak_rss_mib: f64,
    /// Raw single-sequence speed of each causal model.
    pub raw: Vec<RawSpeed>,
    /// Read bandwidth, the ceiling of one-sequence decoding (measured when
    /// the job has a causal model).
    pub memory_read: Option<MemoryRead>,
    /// Math threads and workers used.
    pub threads: usize,
    /// Model workers.
    pub workers: usize,
    /// Whether the allocator put its memory on huge pages
    /// ([`crate::huge_pages`]).
    pub huge_pages: bool,
}

/// Throughput of one model stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// `summary` or `translate:LANG`.
    pub stage: String,
    /// Wall seconds.
    pub seconds: f64,
    /// Articles through the stage.
    pub articles: u64,
    /// Articles per second.
    pub articles_per_s: f64,
    /// Source tokens fed (each distinct segment once).
    pub input_tokens: u64,
    /// Source tokens per second.
    pub input_tokens_per_s: f64,
    /// Tokens generated.
    pub output_tokens: u64,
    /// Generated tokens per second.
    pub output_tokens_per_s: f64,
    /// Real / padded tokens of the batches: encoder sources, or causal
    /// prompts after their shared head (None: not batched).
    pub batch_fill: Option<f64>,
    /// Share of the workers' time in the stage spent inside model calls
    /// (worker seconds in calls / (workers x stage seconds)).
    pub workers_busy: f64,
    /// Segments whose translation an earlier window made.
    pub reused_segments: u64,
}

/// chrF of one language.
#[derive(Debug, Clone, Serialize)]
pub struct ChrfReport {
    /// Corpus chrF2, 0 to 100.
    pub chrf: f64,
    /// Articles scored.
    pub articles: usize,
}

/// Peak resident set size of this process in bytes (Linux: `ru_maxrss`).
pub fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return 0;
    }
    // Linux reports kilobytes.
    usage.ru_maxrss as u64 * 1024
}

/// Measures a causal model's prefill and decode speed on one sequence, and
/// (where the family batches) on `sizes.sequences` sequences at once.
pub fn raw_speed(
    name: &str,
    model: &mut crate::models::causal::CausalModel,
    sizes: RawSizes,
) -> Result<RawSpeed> {
    let text = "The council met on Monday to discuss the new budget for schools, roads and \
                hospitals in the region, and agreed to publish the minutes next week. ";
    let mut ids: Vec<u32> = model
        .tokenizer()
        .encode(text.repeat(sizes.prompt_tokens / 20 + 1), false)
        .map_err(Error::tokenizer(name, "encoding the benchmark prompt"))?
        .get_ids()
        .to_vec();
    ids.truncate(sizes.prompt_tokens.max(1));
    let argmax = crate::generate::decode::argmax;
    // Warm-up over the whole prompt and one decode step: the first pass
    // pays for allocations and page faults, and candle re-lays K-quant
    // weights for its many-row kernels on their first use (about 4 s for
    // the 1.5B model: once per process, not per prompt).
    let warm = model.forward_logits(&ids, 0)?;
    model.forward_logits(&[argmax(&warm)], ids.len())?;
    let t = Instant::now();
    let mut logits = model.forward_logits(&ids, 0)?;
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for step in 0..sizes.decode_tokens {
        logits = model.forward_logits(&[argmax(&logits)], ids.len() + step)?;
    }
    let decode = t.elapsed().as_secs_f64();

    let (mut batch_prefill, mut batch_decode) = (None, None);
    if model.batches() && sizes.sequences > 1 {
        let prompts: Vec<Vec<u32>> = (0..sizes.sequences)
            .map(|r| {
                let mut p = ids.clone();
                p.rotate_left(r % ids.len());
                p
            })
            .collect();
        let t = Instant::now();
        let mut logits = model.forward_rows(&prompts)?;
        let prefill = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..sizes.decode_tokens {
            let next: Vec<u32> = logits.iter().map(|l| argmax(l)).collect();
            logits = model.step_rows(&next)?;
        }
        let decode = t.elapsed().as_secs_f64();
        let n = sizes.sequences as f64;
        batch_prefill = Some(n * ids.len() as f64 / prefill.max(1e-9));
        batch_decode = Some(n * sizes.decode_tokens as f64 / decode.max(1e-9));
    }
    Ok(RawSpeed {
        model: name.to_string(),
        prefill_tokens_per_s: ids.len() as f64 / prefill.max(1e-9),
        decode_tokens_per_s: sizes.decode_tokens as f64 / decode.max(1e-9),
        prompt_tokens: ids.len(),
        decode_tokens: sizes.decode_tokens,
        sequences: sizes.sequences,
        batch_prefill_tokens_per_s: batch_prefill,
        batch_decode_tokens_per_s: batch_decode,
        step_weight_bytes: model.step_weight_bytes(),
        decode_memory_ceiling_tokens_per_s: None,
    })
}

/// Bytes the streaming read of [`read_bandwidth`] goes over: eight times
/// a 32 MiB last-level cache, so the caches hold next to none of it.
const READ_PROBE_BYTES: usize = 256 << 20;

/// The machine's streaming read bandwidth on `threads` threads, in bytes
/// per second: the best of five passes that sum a 256 MiB buffer, split
/// evenly over the threads. A one-sequence decode step reads every weight
/// once, so this over its weight bytes bounds its tokens/s; a figure near
/// that bound means more threads or a faster kernel cannot help it, only
/// fewer bytes a weight or faster memory. (A plain summing loop, which the
/// compiler vectorizes; no crate measures this in-process.)
pub fn read_bandwidth(threads: usize) -> f64 {
    let words = vec![1u64; READ_PROBE_BYTES / 8];
    let chunk = words.len().div_ceil(threads.max(1));
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let sum: u64 = std::thread::scope(|s| {
            let parts: Vec<_> = words
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().fold(0u64, |a, &w| a.wrapping_add(w))))
                .collect();
            parts
                .into_iter()
                .map(|p| p.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(sum);
        best = best.min(t.elapsed().as_secs_f64());
    }
    READ_PROBE_BYTES as f64 / best.max(1e-9)
}

/// The raw speed of every causal model of the job (fetched into the cache
/// first where missing).
pub fn raw_only(job: &Job, sizes: RawSizes) -> Result<RawReport> {
    let (raw, memory_read) = raw_speeds(job, sizes, FetchPolicy::Allow)?;
    Ok(RawReport {
        config: job.config_path.display().to_string(),
        threads: job.runtime.threads,
        workers: job.runtime.workers,
        huge_pages: crate::huge_pages::on(),
        raw,
        memory_read,
    })
}

/// [`raw_speed`] of each causal model of the job, and (when there is one)
/// the read bandwidth on one worker's math threads, measured once the
/// models are gone, with each model's decode ceiling filled in from it.
/// Only causal models have a raw speed to report: the others are not
/// loaded.
fn raw_speeds(
    job: &Job,
    sizes: RawSizes,
    policy: FetchPolicy,
) -> Result<(Vec<RawSpeed>, Option<MemoryRead>)> {
    let device = job.runtime.device.open()?;
    let mut raw = Vec::new();
    for spec in job.used_models() {
        if !crate::models::is_causal(spec, policy)? {
            continue;
        }
        let loaded = crate::models::load(spec, policy, &device)?;
        if let Model::Causal(mut m) = loaded.model {
            raw.push(raw_speed(&spec.name, m.as_mut(), sizes)?);
        }
    }
    // The bound holds for weights in main memory: on a GPU they are not.
    if raw.is_empty() || !device.is_cpu() {
        return Ok((raw, None));
    }
    let threads = crate::pipeline::math_threads(job.runtime.threads, job.runtime.workers);
    let read = MemoryRead {
        threads,
        gb_per_s: read_bandwidth(threads) / 1e9,
    };
    for r in &mut raw {
        if r.step_weight_bytes > 0 {
            r.decode_memory_ceiling_tokens_per_s =
                Some(read.gb_per_s * 1e9 / r.step_weight_bytes as f64);
        }
    }
    Ok((raw, Some(read)))
}

/// Runs the benchmark: the job on at most `articles` records of its input.
pub fn run(job: &Job, articles: Option<u64>, sizes: RawSizes) -> Result<BenchReport> {
    let tmp = std::env::temp_dir().join(format!("tidings-bench-{}", std::process::id()));
    let mut job = job.clone();
    let out: PathBuf = tmp.join("out.jsonl");
    job.output.path = OutputPath::File(out.clone());
    job.output.errors_path = crate::config::errors_path_for(&out);
    let opts = RunOptions {
        limit: articles,
        progress: true,
        ..Default::default()
    };
    let stats = pipeline::run(&job, &opts);
    let chrf = match &stats {
        Ok(_) => score_chrf(&job, &out),
        Err(_) => BTreeMap::new(),
    };
    let _ = std::fs::remove_dir_all(&tmp);
    let stats = stats?;
    // The run's peak, before the raw measurement loads its models again.
    let peak_rss_mib = peak_rss_bytes() as f64 / (1024.0 * 1024.0);

    // Raw model speed, measured after the run in the same process.
    let (raw, memory_read) = raw_speeds(&job, sizes, FetchPolicy::CacheOnly)?;
    let load = stats.stages.get("load").map_or(0.0, |d| d.as_secs_f64());
    let model_s = stats.model_seconds();
    let elapsed = stats.elapsed.as_secs_f64();
    // The run after model loading.
    let run_s = (elapsed - load).max(1e-9);
    let workers = job.runtime.workers.max(1) as f64;
    let model_only_s = (stats.model_busy_seconds() / workers).max(1e-9);
    let end_to_end = stats.output_tokens as f64 / run_s;
    let model_only = stats.output_tokens as f64 / model_only_s;
    Ok(BenchReport {
        config: job.config_path.display().to_string(),
        articles: stats.ok,
        errors: stats.failed,
        elapsed_s: elapsed,
        articles_per_min: (stats.ok + stats.failed) as f64 * 60.0 / run_s,
        generated_tokens_per_s: stats.output_tokens as f64 / model_s.max(1e-9),
        end_to_end_generated_tokens_per_s: end_to_end,
        model_share: model_s / run_s,
        model_only_generated_tokens_per_s: model_only,
        pipeline_vs_model_only: if stats.output_tokens > 0 {
            end_to_end / model_only
        } else {
            // Nothing generated (an extractive-only job): compare times.
            model_only_s / run_s
        },
        input_tokens: stats.input_tokens,
        output_tokens: stats.output_tokens,
        stages_s: stats
            .stages
            .iter()
            .map(|(k, v)| (k.clone(), v.as_secs_f64()))
            .collect(),
        model_stages: stats
            .work
            .iter()
            .map(|(name, w)| {
                let secs = stats
                    .stages
                    .get(name)
                    .map_or(0.0, |d| d.as_secs_f64())
                    .max(1e-9);
                StageReport {
                    stage: name.clone(),
                    seconds: secs,
                    articles: w.articles,
                    articles_per_s: w.articles as f64 / secs,
                    input_tokens: w.input_tokens,
                    input_tokens_per_s: w.input_tokens as f64 / secs,
                    output_tokens: w.output_tokens,
                    output_tokens_per_s: w.output_tokens as f64 / secs,
                    batch_fill: (w.batch_padded_tokens > 0)
                        .then(|| w.batch_real_tokens as f64 / w.batch_padded_tokens as f64),
                    workers_busy: w.model_busy.as_secs_f64() / (workers * secs),
                    reused_segments: w.reused_segments,
                }
            })
            .collect(),
        chrf,
        peak_rss_mib,
        raw,
        memory_read,
        threads: job.runtime.threads,
        workers: job.runtime.workers,
        huge_pages: crate::huge_pages::on(),
    })
}

/// Corpus chrF per language of the bench output against the input's
/// references; empty when the input has none or `text` was not translated.
fn score_chrf(job: &Job, out: &std::path::Path) -> BTreeMap<String, ChrfReport> {
    use std::collections::HashMap;
    let mut result = BTreeMap::new();
    if !matches!(job.input.path, crate::config::InputPath::File(_)) {
        return result;
    }
    let Ok(output) = std::fs::read_to_string(out) else {
        return result;
    };
    // id -> translated text per language, from the output.
    let mut hyps: HashMap<String, serde_json::Value> = HashMap::new();
    for line in output.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            if let Some(id) = v.get("id").and_then(|i| i.as_str()) {
                hyps.insert(id.to_string(), v["translations"].clone());
            }
        }
    }
    let Ok(mut reader) = crate::input::reader::LineReader::open(&job.input.path) else {
        return result;
    };
    let mut scores: BTreeMap<String, (crate::chrf::ChrF, usize)> = BTreeMap::new();
    let id_field = &job.input.id_field;
    while let Ok(Some(line)) = reader.next_line() {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line.bytes) else {
            continue;
        };
        let id = match v.get(id_field.as_str()) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => line.line.to_string(),
        };
        let (Some(refs), Some(tr)) = (
            v.get("references").and_then(|r| r.as_object()),
            hyps.get(&id),
        ) else {
            continue;
        };
        for (lang, r) in refs {
            let Some(hyp) = tr
                .get(lang)
                .and_then(|t| t.get("text"))
                .and_then(|t| t.as_str())
            else {
                continue;
            };
            let reference = match r {
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                serde_json::Value::String(s) => s.clone(),
                _ => continue,
            };
            let e = scores.entry(lang.clone()).or_default();
            e.0.add(hyp, &reference);
            e.1 += 1;
        }
    }
    for (lang, (c, n)) in scores {
        result.insert(
            lang,
            ChrfReport {
                chrf: c.score(),
                articles: n,
            },
        );
    }
    result
}

impl BenchReport {
    /// The human table printed on stderr.
    pub fn table(&self) -> String {
        let mut s = format!(
            "config              {}\narticles            {} ok, {} errors\nelapsed             {:.1} s\n\
             articles/min        {:.2} (model loading excluded)\n\
             generated tokens/s  {:.1} in model stages, {:.1} end to end \
             (model stages {:.1}% of the run after loading)\n\
             models alone        {:.1} generated tokens/s (time inside model calls); \
             end to end / models alone = {:.3}\n\
             tokens in/out       {} / {}\npeak RSS            {:.0} MiB\nthreads x workers   {} x {}\n\
             huge pages          {}\n",
            self.config,
            self.articles,
            self.errors,
            self.elapsed_s,
            self.articles_per_min,
            self.generated_tokens_per_s,
            self.end_to_end_generated_tokens_per_s,
            self.model_share * 100.0,
            self.model_only_generated_tokens_per_s,
            self.pipeline_vs_model_only,
            self.input_tokens,
            self.output_tokens,
            self.peak_rss_mib,
            self.threads,
            self.workers,
            huge_pages_line(self.huge_pages),
        );
        s.push_str("stage               seconds\n");
        for (k, v) in &self.stages_s {
            s.push_str(&format!("  {k:<18}{v:.2}\n"));
        }
        if !self.model_stages.is_empty() {
            s.push_str(&format!(
                "{:<14}{:>9}{:>11}{:>12}{:>12}{:>11}{:>8}{:>8}\n",
                "model stage",
                "seconds",
                "articles/s",
                "src tok/s",
                "gen tok/s",
                "fill",
                "busy",
                "reused"
            ));
            for m in &self.model_stages {
                s.push_str(&format!(
                    "  {:<12}{:>9.2}{:>11.3}{:>12.1}{:>12.1}{:>11}{:>7.1}%{:>8}\n",
                    m.stage,
                    m.seconds,
                    m.articles_per_s,
                    m.input_tokens_per_s,
                    m.output_tokens_per_s,
                    m.batch_fill
                        .map(|f| format!("{:.1}%", f * 100.0))
                        .unwrap_or_else(|| "-".into()),
                    m.workers_busy * 100.0,
                    m.reused_segments
                ));
            }
        }
        for (lang, c) in &self.chrf {
            s.push_str(&format!(
                "chrF2 {lang}: {:.1} ({} articles, whole text per article)\n",
                c.chrf, c.articles
            ));
        }
        s.push_str(&memory_read_line(self.memory_read));
        for r in &self.raw {
            s.push_str(&r.line());
            let best = r.batch_decode_tokens_per_s.unwrap_or(r.decode_tokens_per_s);
            s.push_str(&format!(
                "  pipeline/raw decode = {:.2} (against the {} figure)\n",
                self.generated_tokens_per_s / best.max(1e-9),
                if r.batch_decode_tokens_per_s.is_some() {
                    "batched"
                } else {
                    "one-sequence"
                }
            ));
        }
        s
    }
}

impl RawSpeed {
    /// One human line (two with a batched measurement).
    pub fn line(&self) -> String {
        let mut s = format!(
            "raw `{}`: prefill {:.1} tokens/s ({} tokens), decode {:.1} tokens/s ({} tokens)\n",
            self.model,
            self.prefill_tokens_per_s,
            self.prompt_tokens,
            self.decode_tokens_per_s,
            self.decode_tokens
        );
        if let Some(ceiling) = self.decode_memory_ceiling_tokens_per_s {
            s.push_str(&format!(
                "  a decode step reads {:.2} GB of weights: at most {ceiling:.1} tokens/s at the \
                 read bandwidth; decode runs at {:.0}% of that\n",
                self.step_weight_bytes as f64 / 1e9,
                100.0 * self.decode_tokens_per_s / ceiling.max(1e-9)
            ));
        }
        if let (Some(p), Some(d)) = (
            self.batch_prefill_tokens_per_s,
            self.batch_decode_tokens_per_s,
        ) {
            s.push_str(&format!(
                "  {} sequences: prefill {p:.1} tokens/s, decode {d:.1} tokens/s in all ({:.2}x one sequence)\n",
                self.sequences,
                d / self.decode_tokens_per_s.max(1e-9)
            ));
        }
        s
    }
}

/// The table's line for the read bandwidth (none where not measured).
fn memory_read_line(read: Option<MemoryRead>) -> String {
    match read {
        Some(r) => format!(
            "memory read         {:.1} GB/s on {} thread{} (streaming; the ceiling of one-sequence decoding)\n",
            r.gb_per_s,
            r.threads,
            if r.threads == 1 { "" } else { "s" }
        ),
        None => String::new(),
    }
}

/// The table's "huge pages" value.
fn huge_pages_line(on: bool) -> &'static str {
    if on {
        "on (glibc.malloc.hugetlb=1)"
    } else {
        "off (TIDINGS_HUGE_PAGES=1 turns them on: see README, Performance)"
    }
}

impl RawReport {
    /// The human table printed on stderr.
    pub fn table(&self) -> String {
        let mut s = format!(
            "config              {}\nthreads x workers   {} x {} (measured on one worker)\n\
             huge pages          {}\n",
            self.config,
            self.threads,
            self.workers,
            huge_pages_line(self.huge_pages),
        );
        if self.raw.is_empty() {
            s.push_str("no causal (GGUF) model in this job: nothing to measure\n");
        }
        s.push_str(&memory_read_line(self.memory_read));
        for r in &self.raw {
            s.push_str(&r.line());
        }
        s
    }
}
