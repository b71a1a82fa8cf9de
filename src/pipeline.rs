//! Orchestration: reader -> clean + segment -> summary -> translations ->
//! ordered writer, one window of articles at a time.
//!
//! A window (`runtime.window` articles) is the unit of batching and of
//! durability: its lines are parsed and its articles cleaned, segmented and
//! language-tagged in parallel (rayon); the summary model sees all sentences
//! of the window at once; each target language's model sees the window's
//! unique segments (titles, summary sentences, text sentences), longest
//! first, spread over the model workers; then the window's records are
//! written in input order and synced. A crash therefore loses at most one
//! window, and `--resume` redoes exactly that.
//!
//! Parallelism is one level at a time, as candle's CPU kernels share one
//! global thread pool: either one model worker whose math uses all
//! `runtime.threads`, or `runtime.workers` workers with single-threaded math
//! (see `configure_threads`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::config::{Field, Job, OutputPath, Shard};
use crate::error::{Error, Result};
use crate::input::article::{parse_line, Article, FailureKind, FieldMap, Record, RecordFailure};
use crate::input::reader::{count_records, LineReader, RawLine};
use crate::models::extractive::Extractive;
use crate::models::hub::FetchPolicy;
use crate::models::{Generation, LoadedModel, Model, Task};
use crate::output::record::{Meta, OutputRecord, TranslatedFields};
use crate::output::resume::ResumeIndex;
use crate::output::writer::{Finished, Writer};
use crate::text::langid::{self, Language};
use crate::text::{clean, segment};

/// Per-run switches from the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Skip records already in the output or errors file.
    pub resume: bool,
    /// Only records of this shard.
    pub shard: Option<Shard>,
    /// Stop after taking this many records.
    pub limit: Option<u64>,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
}

/// Totals of a run, for the final summary line and `tidings bench`.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// Records written to the output.
    pub ok: u64,
    /// Records written to the errors file (or inline).
    pub failed: u64,
    /// Records skipped because an earlier run finished them.
    pub resumed: u64,
    /// Wall time of the whole run, model loading included.
    pub elapsed: Duration,
    /// Tokens fed to models.
    pub input_tokens: u64,
    /// Tokens generated.
    pub output_tokens: u64,
    /// Wall time per stage (`load`, `prepare`, `summary`, `translate:es`, `write`).
    pub stages: BTreeMap<String, Duration>,
    /// What the model stages (`summary`, `translate:es`, ...) processed.
    pub work: BTreeMap<String, StageWork>,
}

/// Work done by one model stage over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageWork {
    /// Articles that went through the stage.
    pub articles: u64,
    /// Source tokens fed to the model (each distinct segment once).
    pub input_tokens: u64,
    /// Tokens generated.
    pub output_tokens: u64,
    /// Tokens of batched passes: encoder sources, causal prompts after
    /// their shared head.
    pub batch_real_tokens: u64,
    /// Padded positions of those passes (`rows * longest row`).
    pub batch_padded_tokens: u64,
    /// Worker time inside model calls, summed over the workers: a stage
    /// whose workers never waited on the pipeline (for their next batch, for
    /// each other at the stage's end) has `workers x` its wall time here.
    pub model_busy: Duration,
    /// Segments whose translation an earlier window made
    /// (`runtime.segment-cache`).
    pub reused_segments: u64,
}

impl RunStats {
    fn add_stage(&mut self, name: &str, d: Duration) {
        *self.stages.entry(name.to_string()).or_default() += d;
    }

    fn add_work(&mut self, name: &str, w: StageWork) {
        let e = self.work.entry(name.to_string()).or_default();
        e.articles += w.articles;
        e.input_tokens += w.input_tokens;
        e.output_tokens += w.output_tokens;
        e.batch_real_tokens += w.batch_real_tokens;
        e.batch_padded_tokens += w.batch_padded_tokens;
        e.model_busy += w.model_busy;
        e.reused_segments += w.reused_segments;
    }

    /// Seconds spent in model stages (summary and translations).
    pub fn model_seconds(&self) -> f64 {
        self.stages
            .iter()
            .filter(|(k, _)| k.as_str() == "summary" || k.starts_with("translate"))
            .map(|(_, d)| d.as_secs_f64())
            .sum()
    }

    /// Worker seconds spent inside model calls, summed over workers and
    /// model stages.
    pub fn model_busy_seconds(&self) -> f64 {
        self.work.values().map(|w| w.model_busy.as_secs_f64()).sum()
    }

    /// The one-line summary printed at the end of every run.
    pub fn summary_line(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let model_secs = self.model_seconds();
        format!(
            "tidings: {} ok, {} errors{}, {:.1}s, {:.2} articles/min, {:.1} generated tokens/s",
            self.ok,
            self.failed,
            if self.resumed > 0 {
                format!(", {} already done", self.resumed)
            } else {
                String::new()
            },
            secs,
            (self.ok + self.failed) as f64 * 60.0 / secs,
            self.output_tokens as f64 / model_secs.max(1e-9),
        )
    }
}

/// Sets the thread layout before candle first runs: candle's CPU kernels use
/// one process-wide pool sized by `CANDLE_NUM_THREADS`/`RAYON_NUM_THREADS`
/// when first used, and concurrent callers of that pool take turns. So `W`
/// workers get `threads / W` math threads each only when that is 1 (no pool,
/// math runs on the worker's own thread); with one worker the pool gets all
/// threads. Variables the user set are left alone.
pub fn configure_threads(threads: usize, workers: usize) {
    let math = (threads / workers.max(1)).max(1);
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", math.to_string());
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
}

/// The math threads one worker's products run on: `CANDLE_NUM_THREADS`
/// where set (by the user, or by [`configure_threads`]), else
/// `threads / workers`.
pub fn math_threads(threads: usize, workers: usize) -> usize {
    std::env::var("CANDLE_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or((threads / workers.max(1)).max(1))
}

/// Loads every model the job uses, once each (fetching what is missing).
pub fn load_models(job: &Job) -> Result<HashMap<String, LoadedModel>> {
    let device = job.runtime.device.open()?;
    let mut out = HashMap::new();
    for spec in job.used_models() {
        let t = Instant::now();
        let m = crate::models::load(spec, FetchPolicy::Allow, &device)?;
        tracing::info!(
            "loaded model `{}` ({}) in {:.1}s",
            spec.name,
            m.id,
            t.elapsed().as_secs_f64()
        );
        out.insert(spec.name.clone(), m);
    }
    Ok(out)
}

/// Runs a job end to end.
pub fn run(job: &Job, opts: &RunOptions) -> Result<RunStats> {
    let start = Instant::now();
    let mut stats = RunStats::default();
    let out_file = match &job.output.path {
        OutputPath::File(p) => Some(p.as_path()),
        OutputPath::Stdout => None,
    };
    if opts.resume && out_file.is_none() {
        return Err(Error::Usage {
            flag: "--resume",
            message: "cannot resume when the output is stdout; write to a file".into(),
        });
    }
    // Open input and output before the (slow) model loading, so a wrong path
    // fails at once.
    let mut resume = if opts.resume {
        let idx = ResumeIndex::load(out_file, &job.output.errors_path)?;
        tracing::info!("resuming: {} records already done", idx.done());
        Some(idx)
    } else {
        None
    };
    let mut reader = LineReader::open(&job.input.path)?;
    let mut writer = Writer::open(
        &job.output.path,
        &job.output.errors_path,
        job.output.errors,
        opts.resume,
    )?;

    let t = Instant::now();
    let models = load_models(job)?;
    stats.add_stage("load", t.elapsed());

    let fields = FieldMap {
        id: job.input.id_field.clone(),
        title: job.input.title_field.clone(),
        text: job.input.text_field.clone(),
        max_bytes: job.input.max_bytes,
        file: reader.name().to_string(),
    };
    let total = count_records(&job.input.path).map(|n| match opts.limit {
        Some(l) if opts.shard.is_none() && !opts.resume => n.min(l),
        _ => n,
    });
    let progress = Progress::new(opts.progress, total);
    let mut seen: HashSet<u64> = HashSet::new();
    let mut taken: u64 = 0;
    let mut raw: Vec<RawLine> = Vec::new();
    let mut workers = Workers::new(&models, job.runtime.workers, job.runtime.segment_cache);
    let window = job.runtime.window;
    let mut stream_error = None;

    loop {
        if opts.limit.is_some_and(|l| taken >= l) {
            break;
        }
        // Read at most one window of records we will take.
        let t = Instant::now();
        let mut records: Vec<Record> = Vec::with_capacity(window);
        let mut more = true;
        while records.len() < window && more && opts.limit.is_none_or(|l| taken < l) {
            let want = window - records.len();
            match reader.next_chunk(want, &mut raw) {
                Ok(m) => more = m,
                Err(e) => {
                    more = false;
                    stream_error = Some(e);
                }
            }
            let parsed: Vec<Record> = raw
                .par_iter()
                .map(|l| parse_line(l.line, &l.bytes, &fields))
                .collect();
            for rec in parsed {
                progress.seen();
                let key = rec.key();
                if opts.shard.is_some_and(|s| !s.contains(&key)) {
                    continue;
                }
                if let Some(idx) = resume.as_mut() {
                    if idx.take(rec.line(), &key) {
                        seen.insert(hash_key(&key));
                        stats.resumed += 1;
                        continue;
                    }
                }
                if opts.limit.is_some_and(|l| taken >= l) {
                    more = false;
                    break;
                }
                taken += 1;
                let rec = if seen.insert(hash_key(&key)) {
                    rec
                } else {
                    Record::Failed(RecordFailure {
                        line: rec.line(),
                        id: Some(key.clone()),
                        kind: FailureKind::DuplicateId,
                        field: Some(job.input.id_field.clone()),
                        file: fields.file.clone(),
                        message: format!(
                            "{}:{}: id `{key}` appeared earlier in the input",
                            fields.file,
                            rec.line()
                        ),
                    })
                };
                records.push(rec);
            }
        }
        stats.add_stage("read", t.elapsed());
        if records.is_empty() {
            break;
        }
        let finished = process_window(
            job,
            &models,
            &mut workers,
            records,
            &fields.file,
            &mut stats,
        )?;
        let t = Instant::now();
        writer.write_window(&finished)?;
        stats.add_stage("write", t.elapsed());
        for f in &finished {
            match f {
                Finished::Ok(r) => {
                    stats.ok += 1;
                    stats.input_tokens += r.meta.input_tokens as u64;
                    stats.output_tokens += r.meta.output_tokens as u64;
                }
                Finished::Failed(_) => stats.failed += 1,
            }
        }
        progress.update(&stats, start.elapsed());
        if !more {
            break;
        }
    }
    progress.finish();
    stats.elapsed = start.elapsed();
    if let Some(e) = stream_error {
        return Err(e);
    }
    Ok(stats)
}

fn hash_key(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

/// An article after cleaning and segmentation.
struct Prepared {
    article: Article,
    lang: &'static Language,
    title: Option<String>,
    /// Paragraphs of sentences of the cleaned text.
    paragraphs: Vec<Vec<String>>,
    summary: Option<Vec<String>>,
    summary_text: Option<String>,
    translations: BTreeMap<String, TranslatedFields>,
    meta: Meta,
    failure: Option<RecordFailure>,
}

impl Prepared {
    fn sentences(&self) -> impl Iterator<Item = &String> {
        self.paragraphs.iter().flatten()
    }

    fn fail(&mut self, kind: FailureKind, message: String) {
        if self.failure.is_none() {
            self.failure = Some(RecordFailure {
                line: self.article.line,
                id: Some(self.article.id.clone()),
                kind,
                field: None,
                file: String::new(),
                message,
            });
        }
    }
}

fn prepare(job: &Job, article: Article) -> std::result::Result<Prepared, RecordFailure> {
    let text = clean::clean(&article.text);
    let paragraphs: Vec<Vec<String>> = segment::segment(&text)
        .into_iter()
        .map(|p| p.into_iter().map(str::to_string).collect::<Vec<_>>())
        .filter(|p: &Vec<String>| !p.is_empty())
        .collect();
    if paragraphs.is_empty() {
        return Err(RecordFailure {
            line: article.line,
            id: Some(article.id.clone()),
            kind: FailureKind::EmptyText,
            field: Some(job.input.text_field.clone()),
            file: String::new(),
            message: format!(
                "line {}: field `{}` has no text left after removing boilerplate",
                article.line, job.input.text_field
            ),
        });
    }
    let title = article
        .title
        .as_deref()
        .map(|t| clean::clean(t).replace('\n', " "))
        .filter(|t| !t.trim().is_empty());
    let lang = langid::detect(&text).unwrap_or(job.input.default_lang);
    Ok(Prepared {
        article,
        lang,
        title,
        paragraphs,
        summary: None,
        summary_text: None,
        translations: BTreeMap::new(),
        meta: Meta::default(),
        failure: None,
    })
}

fn process_window(
    job: &Job,
    models: &HashMap<String, LoadedModel>,
    workers: &mut Workers,
    records: Vec<Record>,
    file: &str,
    stats: &mut RunStats,
) -> Result<Vec<Finished>> {
    let t = Instant::now();
    // Clean, segment and detect language in parallel, keeping input order.
    let mut slots: Vec<std::result::Result<Prepared, RecordFailure>> = records
        .into_par_iter()
        .map(|r| match r {
            Record::Ok(a) => prepare(job, a),
            Record::Failed(f) => Err(f),
        })
        .collect();
    let prep_time = t.elapsed();
    stats.add_stage("prepare", prep_time);
    let mut arts: Vec<&mut Prepared> = slots.iter_mut().flatten().collect();
    if !arts.is_empty() {
        let share = prep_time.as_millis() as u64 / arts.len() as u64;
        for a in arts.iter_mut() {
            a.meta.elapsed_ms += share;
        }
    }

    let tokens = |arts: &[&mut Prepared]| {
        arts.iter().fold((0u64, 0u64), |(i, o), a| {
            (
                i + a.meta.input_tokens as u64,
                o + a.meta.output_tokens as u64,
            )
        })
    };
    let account = |stats: &mut RunStats,
                   workers: &mut Workers,
                   name: &str,
                   before: (u64, u64),
                   after: (u64, u64),
                   articles: usize| {
        let tally = workers.take_tally();
        stats.add_work(
            name,
            StageWork {
                articles: articles as u64,
                input_tokens: after.0 - before.0,
                output_tokens: after.1 - before.1,
                batch_real_tokens: tally.real_tokens,
                batch_padded_tokens: tally.padded_tokens,
                model_busy: tally.busy,
                reused_segments: tally.reused,
            },
        );
    };
    if let Some(spec) = &job.summary {
        let t = Instant::now();
        let model = &models[&spec.model];
        let before = tokens(&arts);
        summarize(job, spec, model, workers, &mut arts)?;
        stats.add_stage("summary", t.elapsed());
        account(stats, workers, "summary", before, tokens(&arts), arts.len());
    }
    if let Some(spec) = &job.translate {
        for lang in &spec.targets {
            let t = Instant::now();
            let model = &models[&spec.models[lang.code]];
            let before = tokens(&arts);
            translate(job, &spec.fields, lang, model, workers, &mut arts)?;
            let name = format!("translate:{}", lang.code);
            stats.add_stage(&name, t.elapsed());
            account(stats, workers, &name, before, tokens(&arts), arts.len());
        }
    }

    Ok(slots
        .into_iter()
        .map(|s| match s {
            Err(mut f) => {
                if f.file.is_empty() {
                    f.file = file.to_string();
                }
                Finished::Failed(f)
            }
            Ok(p) => {
                if let Some(mut f) = p.failure {
                    f.file = file.to_string();
                    return Finished::Failed(f);
                }
                Finished::Ok(Box::new(OutputRecord {
                    id: p.article.id,
                    lang: p.lang.code.to_string(),
                    title: p.title,
                    summary: p.summary_text,
                    translations: p.translations,
                    meta: p.meta,
                }))
            }
        })
        .collect())
}

fn summarize(
    job: &Job,
    spec: &crate::config::SummarySpec,
    model: &LoadedModel,
    workers: &mut Workers,
    arts: &mut [&mut Prepared],
) -> Result<()> {
    match &model.model {
        Model::Extractive(ex) => {
            let t = Instant::now();
            let sentences: Vec<&str> = arts
                .iter()
                .flat_map(|a| a.sentences().map(String::as_str))
                .collect();
            let total = sentences.len().max(1);
            let embedded = workers.embed(ex, &sentences);
            let elapsed = t.elapsed().as_millis() as u64;
            match embedded {
                Err(e) => {
                    let msg = format!("{:#}", chain(&e));
                    for a in arts.iter_mut() {
                        a.fail(FailureKind::Model, msg.clone());
                    }
                }
                Ok(emb) => {
                    let mut off = 0;
                    for a in arts.iter_mut() {
                        let sents: Vec<String> = a.sentences().cloned().collect();
                        let n = sents.len();
                        let picked = Extractive::select(&emb[off..off + n], spec.sentences);
                        off += n;
                        let chosen: Vec<String> =
                            picked.into_iter().map(|i| sents[i].clone()).collect();
                        a.summary_text = Some(chosen.join(" "));
                        a.summary = Some(chosen);
                        a.meta.models.insert("summary".into(), model.id.clone());
                        a.meta.input_tokens += sents
                            .iter()
                            .map(|s| ex.count_tokens(s).unwrap_or(0))
                            .sum::<usize>();
                        a.meta.elapsed_ms += elapsed * n as u64 / total as u64;
                    }
                }
            }
        }
        Model::Causal(_) | Model::Seq2Seq(_) => {
            let task = Task::Summarize {
                max_words: spec.max_words,
            };
            let settings = job.models[&model.name].generation.clone();
            let prefix = &job.models[&model.name].prefix;
            let inputs: Vec<String> = arts
                .iter()
                .map(|a| {
                    let body = a
                        .paragraphs
                        .iter()
                        .map(|p| p.join(" "))
                        .collect::<Vec<_>>()
                        .join("\n\n");
                    format!("{prefix}{body}")
                })
                .collect();
            let units: Vec<(Task, &str)> = inputs.iter().map(|s| (task, s.as_str())).collect();
            let results = workers.run(model, &units, &settings, &job.runtime);
            for (a, r) in arts.iter_mut().zip(results) {
                match r {
                    Ok((g, ms)) => {
                        a.meta.input_tokens += g.input_tokens;
                        a.meta.output_tokens += g.output_tokens;
                        a.meta.elapsed_ms += ms;
                        a.meta.models.insert("summary".into(), model.id.clone());
                        let sents: Vec<String> = segment::sentences(&g.text)
                            .into_iter()
                            .map(str::to_string)
                            .collect();
                        a.summary_text = Some(g.text);
                        a.summary = Some(sents);
                    }
                    Err(e) => a.fail(FailureKind::Model, format!("{:#}", chain(&e))),
                }
            }
        }
    }
    Ok(())
}

/// Where a translated segment goes back to.
enum Slot {
    Title,
    Summary,
    Text(usize, usize),
}

fn translate(
    job: &Job,
    fields: &[Field],
    lang: &'static Language,
    model: &LoadedModel,
    workers: &mut Workers,
    arts: &mut [&mut Prepared],
) -> Result<()> {
    let settings = job.models[&model.name].generation.clone();
    let prefix = &job.models[&model.name].prefix;
    // Unique segments of the window for this target, keyed by source
    // language and text: boilerplate repeated across articles is
    // translated once.
    let mut index: HashMap<(&'static str, String), usize> = HashMap::new();
    let mut units: Vec<(Task, String)> = Vec::new();
    // Each unit's key in the cache of earlier windows.
    let mut keys: Vec<String> = Vec::new();
    let mut uses: Vec<Vec<(Slot, usize)>> = Vec::new(); // per article: (slot, unit)
    for a in arts.iter() {
        let mut mine = Vec::new();
        if a.failure.is_some() || a.lang == lang {
            uses.push(mine);
            continue;
        }
        let task = Task::Translate {
            from: a.lang,
            to: lang,
        };
        let mut add = |text: &str, slot: Slot| {
            let input = format!("{prefix}{text}");
            let n = units.len();
            let u = *index
                .entry((a.lang.code, input.clone()))
                .or_insert_with(|| {
                    keys.push(SegmentCache::key(
                        &model.name,
                        a.lang.code,
                        lang.code,
                        &input,
                    ));
                    units.push((task, input));
                    n
                });
            mine.push((slot, u));
        };
        for f in fields {
            match f {
                Field::Title => {
                    if let Some(t) = &a.title {
                        add(t, Slot::Title);
                    }
                }
                Field::Summary => {
                    for s in a.summary.iter().flatten() {
                        add(s, Slot::Summary);
                    }
                }
                Field::Text => {
                    for (p, para) in a.paragraphs.iter().enumerate() {
                        for (s, sent) in para.iter().enumerate() {
                            add(sent, Slot::Text(p, s));
                        }
                    }
                }
            }
        }
        uses.push(mine);
    }
    // Segments an earlier window translated come from the cache (counted
    // as no tokens, like a repeat within the window); the rest go to the
    // model.
    let mut found: Vec<Option<UnitResult>> = keys
        .iter()
        .map(|k| {
            workers.cache.get(k).map(|text| {
                Ok((
                    Generation {
                        text,
                        input_tokens: 0,
                        output_tokens: 0,
                    },
                    0,
                ))
            })
        })
        .collect();
    let misses: Vec<usize> = (0..units.len()).filter(|&i| found[i].is_none()).collect();
    workers.tally.lock().expect("tally lock").reused += (units.len() - misses.len()) as u64;
    let unit_refs: Vec<(Task, &str)> = misses
        .iter()
        .map(|&i| (units[i].0, units[i].1.as_str()))
        .collect();
    let fresh = workers.run(model, &unit_refs, &settings, &job.runtime);
    for (&i, r) in misses.iter().zip(fresh) {
        if let Ok((g, _)) = &r {
            workers.cache.put(keys[i].clone(), g.text.clone());
        }
        found[i] = Some(r);
    }
    let results: Vec<UnitResult> = found
        .into_iter()
        .map(|r| r.expect("every unit has a result"))
        .collect();
    let mut counted = vec![false; results.len()];

    for (a, mine) in arts.iter_mut().zip(uses) {
        if a.failure.is_some() {
            continue;
        }
        a.meta.models.insert(lang.code.into(), model.id.clone());
        if a.lang == lang {
            // Same language as the source: copy, do not translate.
            let copy = TranslatedFields {
                title: fields
                    .contains(&Field::Title)
                    .then(|| a.title.clone())
                    .flatten(),
                summary: fields
                    .contains(&Field::Summary)
                    .then(|| a.summary_text.clone())
                    .flatten(),
                text: fields.contains(&Field::Text).then(|| {
                    a.paragraphs
                        .iter()
                        .map(|p| p.join(" "))
                        .collect::<Vec<_>>()
                        .join("\n\n")
                }),
            };
            a.translations.insert(lang.code.into(), copy);
            continue;
        }
        let mut title = None;
        let mut summary: Vec<String> = Vec::new();
        let mut text: Vec<Vec<String>> = a
            .paragraphs
            .iter()
            .map(|p| vec![String::new(); p.len()])
            .collect();
        let mut failed = None;
        for (slot, u) in mine {
            match &results[u] {
                Ok((g, ms)) => {
                    if !counted[u] {
                        counted[u] = true;
                        a.meta.input_tokens += g.input_tokens;
                        a.meta.output_tokens += g.output_tokens;
                        a.meta.elapsed_ms += ms;
                    }
                    match slot {
                        Slot::Title => title = Some(g.text.clone()),
                        Slot::Summary => summary.push(g.text.clone()),
                        Slot::Text(p, s) => text[p][s] = g.text.clone(),
                    }
                }
                Err(e) => {
                    failed.get_or_insert_with(|| format!("{:#}", chain(e)));
                }
            }
        }
        if let Some(msg) = failed {
            a.fail(
                FailureKind::Model,
                format!("translation into {} failed: {msg}", lang.name),
            );
            continue;
        }
        let fields_out = TranslatedFields {
            title: if fields.contains(&Field::Title) {
                title
            } else {
                None
            },
            summary: (fields.contains(&Field::Summary) && a.summary.is_some())
                .then(|| summary.join(" ")),
            text: fields.contains(&Field::Text).then(|| {
                text.iter()
                    .map(|p| p.join(" "))
                    .collect::<Vec<_>>()
                    .join("\n\n")
            }),
        };
        a.translations.insert(lang.code.into(), fields_out);
    }
    Ok(())
}

/// Formats an error with its sources, like `anyhow`'s `{:#}`.
struct Chain<'a>(&'a Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = std::error::Error::source(self.0);
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

fn chain(e: &Error) -> Chain<'_> {
    Chain(e)
}

type UnitResult = Result<(Generation, u64)>;

/// Model workers: per model name, one clone per worker (weights shared, KV
/// caches per clone).
struct Workers {
    count: usize,
    clones: HashMap<String, Vec<Mutex<LoadedModel>>>,
    /// What the model calls did since the last [`Workers::take_tally`].
    tally: Mutex<Tally>,
    /// Translations of earlier windows.
    cache: SegmentCache,
}

/// Translated segments remembered across windows: boilerplate repeated
/// through a dump (bylines, "Share this article", agency credits) is
/// translated once per run, not once per window. Keyed by model, language
/// pair and the exact model input; at most `capacity` entries, kept in two
/// generations: lookups search both and move a hit to the newer one; when
/// the newer one holds half the capacity, the older one is dropped. So a
/// segment used again within the last `capacity / 2` insertions stays.
/// (A dozen lines; an LRU crate would add a dependency for the same
/// bound.)
struct SegmentCache {
    capacity: usize,
    newer: HashMap<String, String>,
    older: HashMap<String, String>,
}

impl SegmentCache {
    fn new(capacity: usize) -> Self {
        SegmentCache {
            capacity,
            newer: HashMap::new(),
            older: HashMap::new(),
        }
    }

    fn key(model: &str, from: &str, to: &str, input: &str) -> String {
        format!("{model}\u{1f}{from}\u{1f}{to}\u{1f}{input}")
    }

    fn get(&mut self, key: &str) -> Option<String> {
        if let Some(v) = self.newer.get(key) {
            return Some(v.clone());
        }
        let v = self.older.remove(key)?;
        self.put(key.to_string(), v.clone());
        Some(v)
    }

    fn put(&mut self, key: String, value: String) {
        if self.capacity == 0 {
            return;
        }
        if self.newer.len() >= self.capacity.div_ceil(2) {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(key, value);
    }
}

/// What [`Workers`] counts between two stages.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    /// Real and padded tokens of batched passes (see [`StageWork`]).
    real_tokens: u64,
    padded_tokens: u64,
    /// Worker time inside model calls, summed over the workers.
    busy: Duration,
    /// Segments taken from the cache of earlier windows.
    reused: u64,
}

impl Workers {
    fn new(models: &HashMap<String, LoadedModel>, count: usize, cache: usize) -> Self {
        let clones = models
            .iter()
            .map(|(k, m)| {
                (
                    k.clone(),
                    (0..count).map(|_| Mutex::new(m.clone())).collect(),
                )
            })
            .collect();
        Workers {
            count,
            clones,
            tally: Mutex::default(),
            cache: SegmentCache::new(cache),
        }
    }

    /// Runs every unit, longest first, spread over the workers; results come
    /// back in unit order with the milliseconds each took.
    fn run(
        &mut self,
        model: &LoadedModel,
        units: &[(Task, &str)],
        settings: &crate::config::GenSettings,
        runtime: &crate::config::Runtime,
    ) -> Vec<UnitResult> {
        match &model.model {
            Model::Seq2Seq(_) => {
                return self.run_batched(model, units, settings, runtime.batch_tokens)
            }
            Model::Causal(m) if m.batches() && runtime.batch_sequences > 1 => {
                return self.run_causal_batches(model, units, settings, runtime)
            }
            _ => {}
        }
        let opts = &settings.options;
        let order = longest_first(units.iter().map(|u| u.1));
        let results: Vec<Mutex<Option<UnitResult>>> =
            (0..units.len()).map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let clones = &self.clones[&model.name];
        let work = |w: usize| {
            let mut m = clones[w].lock().expect("worker lock");
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = order.get(k) else { break };
                let (task, input) = units[i];
                let t = Instant::now();
                let r = m.generate(task, input, opts);
                let took = t.elapsed();
                self.add_call(took, 0, 0);
                let r = r.map(|g| (g, took.as_millis() as u64));
                *results[i].lock().expect("result lock") = Some(r);
            }
        };
        let workers = if units.len() <= 1 { 1 } else { self.count };
        spread(workers, &work);
        collect(results)
    }
}

impl Workers {
    /// Causal models that decode several sequences at once: the units of
    /// each task, longest first, are cut into groups of
    /// `runtime.batch-sequences`; workers take the next group as they free
    /// up and decode it as one batch (split further where the group's
    /// prompts exceed `runtime.batch-tokens`). A unit's milliseconds are its
    /// group's time divided evenly.
    fn run_causal_batches(
        &mut self,
        model: &LoadedModel,
        units: &[(Task, &str)],
        settings: &crate::config::GenSettings,
        runtime: &crate::config::Runtime,
    ) -> Vec<UnitResult> {
        let by_task = by_task(units, longest_first(units.iter().map(|u| u.1)));
        let groups: Vec<(Task, &[usize])> = by_task
            .iter()
            .flat_map(|(task, idx)| idx.chunks(runtime.batch_sequences).map(move |g| (*task, g)))
            .collect();
        let results: Vec<Mutex<Option<UnitResult>>> =
            (0..units.len()).map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let clones = &self.clones[&model.name];
        let work = |w: usize| {
            let mut m = clones[w].lock().expect("worker lock");
            let Model::Causal(causal) = &mut m.model else {
                unreachable!("run_causal_batches is only called for causal models")
            };
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(task, idx)) = groups.get(k) else {
                    break;
                };
                let inputs: Vec<&str> = idx.iter().map(|&i| units[i].1).collect();
                let t = Instant::now();
                let out = causal.generate_batch(
                    task,
                    &inputs,
                    &settings.options,
                    runtime.batch_sequences,
                    runtime.batch_tokens,
                );
                let took = t.elapsed();
                let fill = causal.take_fill();
                self.add_call(took, fill.real_tokens, fill.padded_tokens);
                let ms = took.as_millis() as u64 / idx.len().max(1) as u64;
                for (&i, r) in idx.iter().zip(out) {
                    *results[i].lock().expect("result lock") = Some(r.map(|g| (g, ms)));
                }
            }
        };
        let workers = self.count.max(1).min(groups.len().max(1));
        spread(workers, &work);
        collect(results)
    }

    /// Sentence embeddings for an extractive summary. The sentences are
    /// dealt to the workers in length order (each gets a similar mix) and
    /// each embeds its share in its own length-sorted batches, so with
    /// single-threaded math per worker no core waits for another.
    fn embed(&self, ex: &Extractive, sentences: &[&str]) -> Result<Vec<Vec<f32>>> {
        let workers = self.count.max(1).min(sentences.len().max(1));
        let order = longest_first(sentences.iter().copied());
        let shares: Vec<Vec<usize>> = (0..workers)
            .map(|w| order.iter().copied().skip(w).step_by(workers).collect())
            .collect();
        type Vectors = Result<Vec<Vec<f32>>>;
        let results: Vec<Mutex<Option<Vectors>>> = (0..workers).map(|_| Mutex::new(None)).collect();
        let work = |w: usize| {
            let mine: Vec<&str> = shares[w].iter().map(|&i| sentences[i]).collect();
            let t = Instant::now();
            let r = ex.embed(&mine);
            self.add_call(t.elapsed(), 0, 0);
            *results[w].lock().expect("result lock") = Some(r);
        };
        spread(workers, &work);
        let mut out = vec![Vec::new(); sentences.len()];
        for (share, r) in shares.iter().zip(results) {
            let vectors = r
                .into_inner()
                .expect("result lock")
                .expect("every share ran")?;
            for (&i, v) in share.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// The tally since the last call.
    fn take_tally(&self) -> Tally {
        std::mem::take(&mut *self.tally.lock().expect("tally lock"))
    }

    /// Adds one model call's time (and its batch fill) to the tally.
    fn add_call(&self, busy: Duration, real_tokens: u64, padded_tokens: u64) {
        let mut t = self.tally.lock().expect("tally lock");
        t.busy += busy;
        t.real_tokens += real_tokens;
        t.padded_tokens += padded_tokens;
    }

    /// Encoder-decoder models: units are dealt to the workers in length
    /// order (so each gets a similar mix), and each worker decodes its share
    /// in length-sorted token-budget batches, one task at a time. A unit's
    /// milliseconds are its batch call's time divided evenly.
    fn run_batched(
        &mut self,
        model: &LoadedModel,
        units: &[(Task, &str)],
        settings: &crate::config::GenSettings,
        batch_tokens: usize,
    ) -> Vec<UnitResult> {
        let order = longest_first(units.iter().map(|u| u.1));
        let workers = self.count.max(1).min(units.len().max(1));
        let results: Vec<Mutex<Option<UnitResult>>> =
            (0..units.len()).map(|_| Mutex::new(None)).collect();
        let clones = &self.clones[&model.name];
        let work = |w: usize| {
            let m = clones[w].lock().expect("worker lock");
            let Model::Seq2Seq(s2s) = &m.model else {
                unreachable!("run_batched is only called for encoder-decoder models")
            };
            let mine = order.iter().copied().skip(w).step_by(workers);
            for (task, idx) in by_task(units, mine) {
                let inputs: Vec<&str> = idx.iter().map(|&i| units[i].1).collect();
                let t = Instant::now();
                let out = s2s.generate_batch(task, &inputs, settings, batch_tokens);
                let took = t.elapsed();
                let fill = out.as_ref().map(|(_, fill)| *fill).unwrap_or_default();
                self.add_call(took, fill.real_tokens, fill.padded_tokens);
                let ms = took.as_millis() as u64 / idx.len().max(1) as u64;
                match out {
                    Ok((items, _)) => {
                        for (&i, r) in idx.iter().zip(items) {
                            let r = r.map(|g| (g, ms)).map_err(|message| Error::Model {
                                model: model.name.clone(),
                                message,
                            });
                            *results[i].lock().expect("result lock") = Some(r);
                        }
                    }
                    Err(e) => {
                        let message = format!("{:#}", chain(&e));
                        for &i in &idx {
                            *results[i].lock().expect("result lock") = Some(Err(Error::Model {
                                model: model.name.clone(),
                                message: message.clone(),
                            }));
                        }
                    }
                }
            }
        };
        spread(workers, &work);
        collect(results)
    }
}

/// Indices of the texts, longest first.
fn longest_first<'a>(texts: impl ExactSizeIterator<Item = &'a str>) -> Vec<usize> {
    let lens: Vec<usize> = texts.map(str::len).collect();
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    order
}

/// `order` split by task, each task's units in the order given, tasks in
/// order of first appearance.
fn by_task(
    units: &[(Task, &str)],
    order: impl IntoIterator<Item = usize>,
) -> Vec<(Task, Vec<usize>)> {
    let mut by_task: Vec<(Task, Vec<usize>)> = Vec::new();
    for i in order {
        match by_task.iter_mut().find(|(t, _)| *t == units[i].0) {
            Some((_, v)) => v.push(i),
            None => by_task.push((units[i].0, vec![i])),
        }
    }
    by_task
}

/// Runs `work(w)` for each worker `w`, on scoped threads when there are
/// several (one worker runs on the calling thread).
fn spread(workers: usize, work: &(dyn Fn(usize) + Sync)) {
    if workers <= 1 {
        work(0);
    } else {
        std::thread::scope(|s| {
            for w in 0..workers {
                s.spawn(move || work(w));
            }
        });
    }
}

/// The per-unit results the workers filled in, in unit order.
fn collect(results: Vec<Mutex<Option<UnitResult>>>) -> Vec<UnitResult> {
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .expect("result lock")
                .expect("every unit ran")
        })
        .collect()
}

/// Progress bar on stderr (only when it is a terminal and not disabled).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(enabled: bool, total: Option<u64>) -> Self {
        use std::io::IsTerminal;
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = match total {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let style = indicatif::ProgressStyle::with_template(if total.is_some() {
            "{bar:30} {pos}/{len} articles  {per_sec}  {msg}  ETA {eta}"
        } else {
            "{spinner} {pos} articles  {per_sec}  {msg}"
        })
        .expect("valid template");
        bar.set_style(style);
        Progress { bar: Some(bar) }
    }

    fn seen(&self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    fn update(&self, stats: &RunStats, elapsed: Duration) {
        if let Some(b) = &self.bar {
            b.set_message(format!(
                "{} ok, {} errors, {:.1} tok/s",
                stats.ok,
                stats.failed,
                stats.output_tokens as f64 / elapsed.as_secs_f64().max(1e-9)
            ));
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SegmentCache;

    #[test]
    fn segment_cache_keeps_recent_segments_within_its_capacity() {
        let mut c = SegmentCache::new(4);
        for i in 0..10 {
            c.put(format!("k{i}"), format!("v{i}"));
            assert!(c.newer.len() + c.older.len() <= 4);
        }
        // the last two generations of two: k6..k9
        assert_eq!(c.get("k9").as_deref(), Some("v9"));
        assert_eq!(c.get("k6").as_deref(), Some("v6"));
        assert_eq!(c.get("k5"), None);
        // a hit in the older generation moves to the newer one and survives
        // the next turnover
        let mut c = SegmentCache::new(4);
        for k in ["a", "b", "c", "d"] {
            c.put(k.into(), k.to_uppercase());
        }
        assert_eq!(c.get("a").as_deref(), Some("A"));
        c.put("e".into(), "E".into());
        assert_eq!(c.get("a").as_deref(), Some("A"));
        assert_eq!(c.get("b"), None);
        // capacity 0 remembers nothing
        let mut off = SegmentCache::new(0);
        off.put("x".into(), "y".into());
        assert_eq!(off.get("x"), None);
        // keys tell models, language pairs and inputs apart
        assert_ne!(
            SegmentCache::key("m", "en", "es", "Hi"),
            SegmentCache::key("m", "en", "fa", "Hi")
        );
    }
}
