//! The `tidings` binary: parse the command line, set up logging, call the
//! library, and map the outcome to an exit code (0 all records ok, 1 some
//! records went to the errors file, 2 the job could not run or stopped).

use std::process::ExitCode;

use clap::Parser;
use tidings::cli::{BenchArgs, Cli, Command, JobArg, MergeArgs, ModelsAction, RunArgs};
use tidings::config::{Job, Overrides};
use tidings::models::hub::FetchPolicy;
use tidings::pipeline::{self, RunOptions};

fn main() -> ExitCode {
    tidings::huge_pages::restart_with_huge_pages();
    keep_freed_memory();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            if matches!(
                e.downcast_ref::<tidings::Error>(),
                Some(tidings::Error::BrokenPipe)
            ) {
                // The reader of our stdout went away (`| head`): not an error.
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Has glibc's allocator serve blocks up to 32 MiB from its heap and keep
/// up to 256 MiB of freed memory instead of returning it to the system:
/// by default, blocks from 128 KiB up (a decode step's logits, hidden
/// states, product outputs) are fresh mappings, each page faulted in and
/// zeroed by the kernel every step.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: plain allocator tuning before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,tidings=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run(args),
        Command::Bench(args) => bench(args),
        Command::Validate(a) => validate(&a),
        Command::Models { action } => models(action),
        Command::Merge(args) => merge(args),
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let job = Job::load(&args.config, &args.overrides())?;
    pipeline::configure_threads(job.runtime.threads, job.runtime.workers);
    let opts = RunOptions {
        resume: args.resume,
        shard: args.shard,
        limit: args.limit,
        progress: !args.no_progress,
    };
    let stats = pipeline::run(&job, &opts)?;
    eprintln!("{}", stats.summary_line());
    Ok(if stats.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `tidings merge`: 0 merged and verified, 1 the same but some records are
/// failures, 2 duplicates, missing records or a file problem (nothing written).
fn merge(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let check = match &args.input {
        None => None,
        Some(input) => {
            let overrides = Overrides {
                input: Some(input.to_string_lossy().into_owned()),
                output: Some("-".into()),
                ..Default::default()
            };
            let job = match &args.config {
                Some(c) => Job::load(c, &overrides)?,
                // No config: the default field names.
                None => Job::parse("", std::path::Path::new("(defaults)"), &overrides)?,
            };
            Some(tidings::merge::InputCheck::for_job(&job))
        }
    };
    let report = tidings::merge::merge(&args.output, &args.shards, check.as_ref())?;
    eprint!("{}", report.text());
    Ok(if !report.is_clean() {
        ExitCode::from(2)
    } else if report.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        input: args.input.clone(),
        threads: args.threads,
        workers: args.workers,
        ..Default::default()
    };
    let job = Job::load(&args.config, &overrides)?;
    pipeline::configure_threads(job.runtime.threads, job.runtime.workers);
    let sizes = tidings::bench::RawSizes {
        prompt_tokens: args.prompt_tokens,
        decode_tokens: args.decode_tokens,
        sequences: args.sequences.unwrap_or(job.runtime.batch_sequences),
    };
    let (table, json) = if args.raw_only {
        let report = tidings::bench::raw_only(&job, sizes)?;
        (report.table(), serde_json::to_string_pretty(&report)?)
    } else {
        let report = tidings::bench::run(&job, args.articles, sizes)?;
        (report.table(), serde_json::to_string_pretty(&report)?)
    };
    eprint!("{table}");
    if let Some(p) = &args.json {
        let text = json;
        std::fs::write(p, text + "\n")
            .map_err(|e| anyhow::anyhow!("cannot write `{}`: {e}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(a: &JobArg) -> anyhow::Result<ExitCode> {
    let job = Job::load(&a.config, &Overrides::default())?;
    println!("{}: ok", a.config.display());
    if let Some(s) = &job.summary {
        println!("  summary: model `{}`", s.model);
    }
    if let Some(t) = &job.translate {
        for l in &t.targets {
            println!(
                "  translate -> {} ({}): model `{}`",
                l.code, l.name, t.models[l.code]
            );
        }
    }
    let mut missing = 0;
    for spec in job.used_models() {
        match tidings::models::resolve(spec, FetchPolicy::CacheOnly) {
            Ok(_) => println!("  model `{}` ({}): available", spec.name, spec.source_text),
            Err(e) => {
                missing += 1;
                println!(
                    "  model `{}` ({}): not available: {e}",
                    spec.name, spec.source_text
                )
            }
        }
    }
    if missing > 0 {
        println!(
            "  {missing} model(s) not available locally; `tidings models fetch --config {}` gets them",
            a.config.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn models(action: ModelsAction) -> anyhow::Result<ExitCode> {
    match action {
        ModelsAction::Fetch(a) => {
            let job = Job::load(&a.config, &Overrides::default())?;
            for spec in job.used_models() {
                let files = tidings::models::resolve(spec, FetchPolicy::Allow)?;
                println!("{}: {} ({})", spec.name, files.id(), spec.source_text);
            }
        }
        ModelsAction::List(a) => {
            let job = Job::load(&a.config, &Overrides::default())?;
            let used: Vec<&str> = job.used_models().iter().map(|m| m.name.as_str()).collect();
            for (name, spec) in &job.models {
                let state = match tidings::models::resolve(spec, FetchPolicy::CacheOnly) {
                    Ok(f) => format!(
                        "available{}",
                        f.primary()
                            .map(|p| format!(" at {}", p.display()))
                            .unwrap_or_default()
                    ),
                    Err(_) => "not fetched".to_string(),
                };
                println!(
                    "{name}\t{}\t{}\t{state}",
                    spec.source_text,
                    if used.contains(&name.as_str()) {
                        "used"
                    } else {
                        "unused"
                    }
                );
            }
        }
        ModelsAction::Inspect(a) => {
            let job = Job::load(&a.config, &Overrides::default())?;
            let device = job.runtime.device.open()?;
            for spec in job.used_models() {
                let m = tidings::models::load(spec, FetchPolicy::CacheOnly, &device)?;
                println!(
                    "{} ({}):\n  {}",
                    spec.name,
                    m.id,
                    m.describe().replace('\n', "\n  ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
