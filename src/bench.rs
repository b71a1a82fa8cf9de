//! `tidings bench`: runs a job on (a slice of) its input and reports what a
//! user needs to size a run on their hardware: wall time per stage,
//! articles/min, generated tokens/s, peak RSS, and the raw single-sequence
//! speed of each causal model measured in the same process, so the
//! pipeline's overhead shows as a ratio.
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
    /// Generated tokens per second of model time.
    pub generated_tokens_per_s: f64,
    /// Tokens fed to the models.
    pub input_tokens: u64,
    /// Tokens generated.
    pub output_tokens: u64,
    /// Seconds per stage.
    pub stages_s: BTreeMap<String, f64>,
    /// Peak resident set size of the process, in MiB.
    pub peak_rss_mib: f64,
    /// Raw single-sequence speed of each causal model.
    pub raw: Vec<RawSpeed>,
    /// Math threads and workers used.
    pub threads: usize,
    /// Model workers.
    pub workers: usize,
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

/// Measures a causal model's prefill and decode speed on one sequence.
pub fn raw_speed(
    name: &str,
    model: &mut crate::models::causal::CausalModel,
    prompt_tokens: usize,
    decode_tokens: usize,
) -> Result<RawSpeed> {
    let text = "The council met on Monday to discuss the new budget for schools, roads and \
                hospitals in the region, and agreed to publish the minutes next week. ";
    let mut ids: Vec<u32> = model
        .tokenizer()
        .encode(text.repeat(prompt_tokens / 20 + 1), false)
        .map_err(Error::tokenizer(name, "encoding the benchmark prompt"))?
        .get_ids()
        .to_vec();
    ids.truncate(prompt_tokens);
    let t = Instant::now();
    let mut logits = model.forward_logits(&ids, 0)?;
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for step in 0..decode_tokens {
        let next = crate::generate::decode::argmax(&logits);
        logits = model.forward_logits(&[next], ids.len() + step)?;
    }
    let decode = t.elapsed().as_secs_f64();
    Ok(RawSpeed {
        model: name.to_string(),
        prefill_tokens_per_s: ids.len() as f64 / prefill.max(1e-9),
        decode_tokens_per_s: decode_tokens as f64 / decode.max(1e-9),
        prompt_tokens: ids.len(),
        decode_tokens,
    })
}

/// Runs the benchmark: the job on at most `articles` records of its input.
pub fn run(job: &Job, articles: Option<u64>) -> Result<BenchReport> {
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
    let _ = std::fs::remove_dir_all(&tmp);
    let stats = stats?;

    // Raw model speed, measured after the run in the same process.
    let device = job.runtime.device.open()?;
    let mut raw = Vec::new();
    for spec in job.used_models() {
        let loaded = crate::models::load(spec, FetchPolicy::CacheOnly, &device)?;
        if let Model::Causal(mut m) = loaded.model {
            raw.push(raw_speed(&spec.name, m.as_mut(), 64, 64)?);
        }
    }
    let load = stats.stages.get("load").map_or(0.0, |d| d.as_secs_f64());
    let model_s = stats.model_seconds();
    let elapsed = stats.elapsed.as_secs_f64();
    Ok(BenchReport {
        config: job.config_path.display().to_string(),
        articles: stats.ok,
        errors: stats.failed,
        elapsed_s: elapsed,
        articles_per_min: (stats.ok + stats.failed) as f64 * 60.0 / (elapsed - load).max(1e-9),
        generated_tokens_per_s: stats.output_tokens as f64 / model_s.max(1e-9),
        input_tokens: stats.input_tokens,
        output_tokens: stats.output_tokens,
        stages_s: stats
            .stages
            .iter()
            .map(|(k, v)| (k.clone(), v.as_secs_f64()))
            .collect(),
        peak_rss_mib: peak_rss_bytes() as f64 / (1024.0 * 1024.0),
        raw,
        threads: job.runtime.threads,
        workers: job.runtime.workers,
    })
}

impl BenchReport {
    /// The human table printed on stderr.
    pub fn table(&self) -> String {
        let mut s = format!(
            "config              {}\narticles            {} ok, {} errors\nelapsed             {:.1} s\n\
             articles/min        {:.2} (model loading excluded)\ngenerated tokens/s  {:.1}\n\
             tokens in/out       {} / {}\npeak RSS            {:.0} MiB\nthreads x workers   {} x {}\n",
            self.config,
            self.articles,
            self.errors,
            self.elapsed_s,
            self.articles_per_min,
            self.generated_tokens_per_s,
            self.input_tokens,
            self.output_tokens,
            self.peak_rss_mib,
            self.threads,
            self.workers
        );
        s.push_str("stage               seconds\n");
        for (k, v) in &self.stages_s {
            s.push_str(&format!("  {k:<18}{v:.2}\n"));
        }
        for r in &self.raw {
            s.push_str(&format!(
                "raw `{}`: prefill {:.1} tokens/s ({} tokens), decode {:.1} tokens/s ({} tokens); pipeline/raw decode = {:.2}\n",
                r.model,
                r.prefill_tokens_per_s,
                r.prompt_tokens,
                r.decode_tokens_per_s,
                r.decode_tokens,
                self.generated_tokens_per_s / r.decode_tokens_per_s.max(1e-9)
            ));
        }
        s
    }
}
