//! `tidings merge`: join the outputs of a sharded run (`run --shard K/N` on
//! a Kubernetes Indexed Job, a Slurm array, or by hand) into one file, and
//! prove the join is right before writing it.
//!
//! The shard outputs are concatenated in the order given; each shard's
//! errors file (`<stem>.errors.jsonl`, see [`crate::config::errors_path_for`])
//! is concatenated into the merged output's errors file. Inline error records
//! (`--errors inline`) stay in the output, as the shards wrote them.
//!
//! Checks, always:
//! - every line of every file is a complete tidings record (a shard whose
//!   last line is torn crashed and must be finished with `run --resume`
//!   first: a job-level error);
//! - no record appears twice: a key (the id, or the line number of a record
//!   without a readable id, as [`Record::key`] defines it) may appear in one
//!   shard only, and there at most once apart from `duplicate_id` error
//!   records, which a shard writes for a repeated id of its own input.
//!
//! With the original input (`--input`, plus `--config` for the field names),
//! also: every input record is in the shards exactly once, and the shards
//! hold nothing that is not in the input. Input and outputs are compared as
//! multisets of keys, so an input that repeats an id (and so has a
//! `duplicate_id` error record) balances.
//!
//! The merged files are written next to their final names and renamed into
//! place only when every check passes, so a merged output that exists is a
//! verified one. Memory is 16 bytes of hash (xxh3-128 of the key) and a few
//! counters per record, whatever the article sizes; records are named in the
//! report by a second read, only when something is wrong.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Deserialize;

use crate::config::{errors_path_for, InputPath, Job};
use crate::error::{Error, Result};
use crate::input::article::{parse_line, FieldMap};
use crate::input::reader::{LineReader, RawLine};

/// How many problems of each kind the report names; the rest are counted.
pub const REPORT_LIMIT: usize = 20;

/// The original input to check the shards against.
#[derive(Debug, Clone)]
pub struct InputCheck {
    /// The input file (or stdin).
    pub path: InputPath,
    /// The field names the shards read it with.
    pub fields: FieldMap,
}

impl InputCheck {
    /// The input and field names of a job (after `--input` was applied).
    pub fn for_job(job: &Job) -> Self {
        let file = match &job.input.path {
            InputPath::Stdin => "-".to_string(),
            InputPath::File(p) => p.display().to_string(),
        };
        InputCheck {
            path: job.input.path.clone(),
            fields: FieldMap {
                id: job.input.id_field.clone(),
                title: job.input.title_field.clone(),
                text: job.input.text_field.clone(),
                max_bytes: job.input.max_bytes,
                file,
            },
        }
    }
}

/// One record found in two places (or twice in one shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The record's key.
    pub key: String,
    /// Where it was first seen: file and 1-based line.
    pub first: (PathBuf, u64),
    /// Where it was seen again.
    pub again: (PathBuf, u64),
}

/// An input record that is in no shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The record's key.
    pub key: String,
    /// Its 1-based line in the input.
    pub line: u64,
}

/// A record in the shards that is not in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unexpected {
    /// The record's key.
    pub key: String,
    /// Where it is: file and 1-based line.
    pub at: (PathBuf, u64),
}

/// What a merge found and did.
#[derive(Debug, Default)]
pub struct MergeReport {
    /// Shard outputs read.
    pub shards: usize,
    /// Arguments that are the errors file of another argument (a glob such
    /// as `part-*.jsonl` matches both); they are read once, as errors files.
    pub skipped_errors_args: usize,
    /// Errors files found beside them.
    pub errors_files: usize,
    /// Processed records (output lines without an `error` object).
    pub ok: u64,
    /// Failed records (errors-file lines and inline error records).
    pub failed: u64,
    /// Records seen more than once (all counted; [`REPORT_LIMIT`] named).
    pub duplicate_count: u64,
    /// The first duplicates.
    pub duplicates: Vec<Duplicate>,
    /// Records in the input, when it was checked.
    pub input_records: Option<u64>,
    /// Input records in no shard.
    pub missing_count: u64,
    /// The first missing records.
    pub missing: Vec<Missing>,
    /// Records in the shards but not in the input.
    pub unexpected_count: u64,
    /// The first unexpected records.
    pub unexpected: Vec<Unexpected>,
    /// Whether the merged files were written (only when every check passed).
    pub written: bool,
    /// The merged output.
    pub output: PathBuf,
    /// Its errors file, when failed records went there.
    pub errors_output: Option<PathBuf>,
}

impl MergeReport {
    /// Whether every check passed.
    pub fn is_clean(&self) -> bool {
        self.duplicate_count == 0 && self.missing_count == 0 && self.unexpected_count == 0
    }

    /// A multi-line account for stderr: the totals, then each problem.
    pub fn text(&self) -> String {
        let mut s = format!(
            "tidings merge: {} shard(s), {} errors file(s): {} ok, {} errors",
            self.shards, self.errors_files, self.ok, self.failed
        );
        if self.skipped_errors_args > 0 {
            s.push_str(&format!(
                " ({} argument(s) were errors files of other arguments, read as such)",
                self.skipped_errors_args
            ));
        }
        if let Some(n) = self.input_records {
            s.push_str(&format!("; input: {n} records"));
            if self.missing_count == 0 && self.unexpected_count == 0 {
                s.push_str(", each exactly once in the shards");
            }
        }
        if self.written {
            s.push_str(&format!(" -> `{}`", self.output.display()));
            if let Some(e) = &self.errors_output {
                s.push_str(&format!(" (errors: `{}`)", e.display()));
            }
        } else {
            s.push_str(&format!("; `{}` NOT written", self.output.display()));
        }
        s.push('\n');
        let more = |s: &mut String, count: u64, named: usize| {
            if count > named as u64 {
                s.push_str(&format!("  ... and {} more\n", count - named as u64));
            }
        };
        if self.duplicate_count > 0 {
            s.push_str(&format!(
                "{} record(s) appear more than once (was a shard given twice, or run twice \
                 with different --shard values?):\n",
                self.duplicate_count
            ));
            for d in &self.duplicates {
                s.push_str(&format!(
                    "  `{}`: {}:{} and {}:{}\n",
                    d.key,
                    d.first.0.display(),
                    d.first.1,
                    d.again.0.display(),
                    d.again.1
                ));
            }
            more(&mut s, self.duplicate_count, self.duplicates.len());
        }
        if self.missing_count > 0 {
            s.push_str(&format!(
                "{} input record(s) are in no shard (is a shard missing or unfinished? \
                 `run --resume` finishes it):\n",
                self.missing_count
            ));
            for m in &self.missing {
                s.push_str(&format!("  `{}` (input line {})\n", m.key, m.line));
            }
            more(&mut s, self.missing_count, self.missing.len());
        }
        if self.unexpected_count > 0 {
            s.push_str(&format!(
                "{} record(s) in the shards are not in the input (were the shards run on \
                 another input or with other field names?):\n",
                self.unexpected_count
            ));
            for u in &self.unexpected {
                s.push_str(&format!(
                    "  `{}` at {}:{}\n",
                    u.key,
                    u.at.0.display(),
                    u.at.1
                ));
            }
            more(&mut s, self.unexpected_count, self.unexpected.len());
        }
        s
    }
}

/// Per key: where it was first seen and how often.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Index of the shard it was first seen in.
    shard: u32,
    /// Index of the file (into `Merger::files`) and line of the first sighting.
    file: u32,
    line: u64,
    /// Sightings that count against uniqueness (all but `duplicate_id` errors).
    primary: u32,
    /// All sightings; what the input check balances against.
    total: u32,
    /// Sightings already reported as duplicates.
    dups: u32,
    /// Whether the input has this key.
    in_input: bool,
}

/// The fields of an output or errors-file line that the merge reads.
#[derive(Deserialize)]
struct AnyLine {
    id: Option<serde_json::Value>,
    line: Option<u64>,
    kind: Option<String>,
    error: Option<InlineErr>,
}

#[derive(Deserialize)]
struct InlineErr {
    kind: Option<String>,
}

/// One line's role in the merge.
struct Entry {
    key: String,
    failed: bool,
    duplicate_id: bool,
}

/// Reads one line of a shard output (`errors_file` false) or errors file.
fn entry(bytes: &[u8], errors_file: bool, path: &Path, line: u64) -> Result<Entry> {
    let bad = |message: String| Error::Io {
        action: "cannot merge",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, message),
    };
    let rec: AnyLine = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("line {line}: not a tidings record: {e}")))?;
    let id = match rec.id {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    };
    if errors_file {
        let key = id
            .or_else(|| rec.line.map(|l| l.to_string()))
            .ok_or_else(|| {
                bad(format!(
                    "line {line}: an errors-file record needs an `id` or a `line`"
                ))
            })?;
        return Ok(Entry {
            key,
            failed: true,
            duplicate_id: rec.kind.as_deref() == Some("duplicate_id"),
        });
    }
    let key = id.ok_or_else(|| bad(format!("line {line}: an output record needs an `id`")))?;
    Ok(match rec.error {
        Some(err) => Entry {
            key,
            failed: true,
            duplicate_id: err.kind.as_deref() == Some("duplicate_id"),
        },
        None => Entry {
            key,
            failed: false,
            duplicate_id: false,
        },
    })
}

fn hash(key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes())
}

/// Calls `f(line_number, bytes)` for each non-blank line of a shard file;
/// a last line without its newline is a torn write and an error.
fn for_each_line(path: &Path, mut f: impl FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
    let file = File::open(path).map_err(Error::io("cannot open shard output", path))?;
    let mut r = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        let got = r
            .read_until(b'\n', &mut buf)
            .map_err(Error::io("cannot read shard output", path))?;
        if got == 0 {
            return Ok(());
        }
        n += 1;
        if buf.last() != Some(&b'\n') && !buf.trim_ascii().is_empty() {
            return Err(Error::Io {
                action: "cannot merge",
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "line {n} is torn (no newline): that shard stopped part way; \
                         finish it with `tidings run --resume` and merge again"
                    ),
                ),
            });
        }
        let line = buf.trim_ascii();
        if !line.is_empty() {
            f(n, line)?;
        }
    }
}

/// A merged file being written under a temporary name.
struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    w: BufWriter<File>,
}

impl Staged {
    fn create(dest: &Path) -> Result<Staged> {
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::io("cannot create output folder", dir))?;
        }
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dest.with_file_name(format!(".{name}.merging"));
        let file = File::create(&tmp).map_err(Error::io("cannot create", &tmp))?;
        Ok(Staged {
            tmp,
            dest: dest.to_path_buf(),
            w: BufWriter::with_capacity(1 << 16, file),
        })
    }

    fn write_line(&mut self, line: &[u8]) -> Result<()> {
        self.w
            .write_all(line)
            .and_then(|_| self.w.write_all(b"\n"))
            .map_err(Error::io("cannot write", &self.tmp))
    }

    /// Syncs the file and moves it to its final name.
    fn commit(self) -> Result<()> {
        let file = self.w.into_inner().map_err(|e| Error::Io {
            action: "cannot write",
            path: self.tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all()
            .map_err(Error::io("cannot sync", &self.tmp))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(Error::io("cannot rename into", &self.dest))
    }

    fn discard(self) {
        drop(self.w);
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Merges shard outputs into `output` (and its errors file), checking for
/// duplicates and, with `input`, completeness. Problems with the records are
/// in the report (and nothing is written); a file that cannot be read, a
/// line that is not a tidings record or a torn shard is an error.
pub fn merge(output: &Path, shards: &[PathBuf], input: Option<&InputCheck>) -> Result<MergeReport> {
    let errors_output = errors_path_for(output);
    // `part-*.jsonl` also matches `part-0.errors.jsonl`: such an argument is
    // read as its shard's errors file, not as a shard.
    let owned: HashSet<PathBuf> = shards
        .iter()
        .map(|s| canonical(&errors_path_for(s)))
        .collect();
    let all = shards.len();
    let shards: Vec<&PathBuf> = shards
        .iter()
        .filter(|s| !owned.contains(&canonical(s)))
        .collect();
    let mut given = HashSet::new();
    for s in &shards {
        if !given.insert(canonical(s)) {
            return Err(Error::Usage {
                flag: "SHARD_OUTPUT",
                message: format!("`{}` is given twice", s.display()),
            });
        }
    }
    // The files to read, shard by shard: (shard index, path, is errors file).
    let mut files: Vec<(u32, PathBuf, bool)> = Vec::new();
    for (i, s) in shards.iter().enumerate() {
        if !s.is_file() {
            return Err(Error::Io {
                action: "cannot read shard output",
                path: s.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        files.push((i as u32, s.to_path_buf(), false));
        let e = errors_path_for(s);
        if e.is_file() {
            files.push((i as u32, e, true));
        }
    }
    for (_, f, _) in &files {
        if same_file(f, output) || same_file(f, &errors_output) {
            return Err(Error::Usage {
                flag: "--output",
                message: format!(
                    "`{}` is also a shard file being merged; write the merge elsewhere",
                    f.display()
                ),
            });
        }
    }

    let mut report = MergeReport {
        shards: shards.len(),
        skipped_errors_args: all - shards.len(),
        errors_files: files.iter().filter(|f| f.2).count(),
        output: output.to_path_buf(),
        ..Default::default()
    };
    let mut out = Staged::create(output)?;
    let mut errs: Option<Staged> = None;
    let mut seen: HashMap<u128, Seen> = HashMap::new();
    let result = (|| -> Result<()> {
        for (fi, (shard, path, is_errors)) in files.iter().enumerate() {
            for_each_line(path, |n, bytes| {
                let e = entry(bytes, *is_errors, path, n)?;
                if e.failed {
                    report.failed += 1;
                } else {
                    report.ok += 1;
                }
                let slot = seen.entry(hash(&e.key)).or_insert(Seen {
                    shard: *shard,
                    file: fi as u32,
                    line: n,
                    primary: 0,
                    total: 0,
                    dups: 0,
                    in_input: false,
                });
                slot.total += 1;
                if !e.duplicate_id {
                    slot.primary += 1;
                }
                // A key belongs to one shard; there it is once, except for
                // the shard's own `duplicate_id` records of a repeated id.
                if slot.shard != *shard || (!e.duplicate_id && slot.primary > 1) {
                    slot.dups += 1;
                    report.duplicate_count += 1;
                    if report.duplicates.len() < REPORT_LIMIT {
                        report.duplicates.push(Duplicate {
                            key: e.key,
                            first: (files[slot.file as usize].1.clone(), slot.line),
                            again: (path.clone(), n),
                        });
                    }
                }
                if *is_errors {
                    if errs.is_none() {
                        errs = Some(Staged::create(&errors_output)?);
                    }
                    errs.as_mut().expect("just created").write_line(bytes)
                } else {
                    out.write_line(bytes)
                }
            })?;
        }
        if let Some(check) = input {
            check_input(check, &mut seen, &mut report)?;
            if report.unexpected_count > 0 {
                name_unexpected(&files, &mut seen, &mut report)?;
            }
        }
        Ok(())
    })();
    if result.is_err() || !report.is_clean() {
        out.discard();
        if let Some(e) = errs {
            e.discard();
        }
        return result.map(|_| report);
    }
    out.commit()?;
    match errs {
        Some(e) => {
            e.commit()?;
            report.errors_output = Some(errors_output);
        }
        // A clean merge leaves no errors file behind, not even a stale one.
        None if errors_output.exists() => std::fs::remove_file(&errors_output)
            .map_err(Error::io("cannot remove stale errors file", &errors_output))?,
        None => {}
    }
    report.written = true;
    Ok(report)
}

/// Takes each input record off the sightings; what is left over afterwards
/// was not in the input.
fn check_input(
    check: &InputCheck,
    seen: &mut HashMap<u128, Seen>,
    report: &mut MergeReport,
) -> Result<()> {
    let mut reader = LineReader::open(&check.path)?;
    let mut raw: Vec<RawLine> = Vec::new();
    let mut count = 0u64;
    loop {
        let more = reader.next_chunk(1024, &mut raw)?;
        // Parsing is the costly part (whole articles); the keys come back in
        // input order.
        let keys: Vec<(u64, String)> = raw
            .par_iter()
            .map(|l| (l.line, parse_line(l.line, &l.bytes, &check.fields).key()))
            .collect();
        for (line, key) in keys {
            count += 1;
            match seen.get_mut(&hash(&key)) {
                Some(s) if s.total > 0 => {
                    s.in_input = true;
                    s.total -= 1;
                }
                other => {
                    if let Some(s) = other {
                        s.in_input = true;
                    }
                    report.missing_count += 1;
                    if report.missing.len() < REPORT_LIMIT {
                        report.missing.push(Missing { key, line });
                    }
                }
            }
        }
        if !more {
            break;
        }
    }
    report.input_records = Some(count);
    // Left over: sightings of keys the input lacks, and surplus sightings
    // of its keys not already reported as duplicates.
    for s in seen.values_mut() {
        if s.in_input {
            s.total = s.total.saturating_sub(s.dups);
        }
        report.unexpected_count += s.total as u64;
    }
    Ok(())
}

/// Reads the shards again to name the records the input did not account for.
fn name_unexpected(
    files: &[(u32, PathBuf, bool)],
    seen: &mut HashMap<u128, Seen>,
    report: &mut MergeReport,
) -> Result<()> {
    for (_, path, is_errors) in files {
        for_each_line(path, |n, bytes| {
            if report.unexpected.len() >= REPORT_LIMIT {
                return Ok(());
            }
            let e = entry(bytes, *is_errors, path, n)?;
            if let Some(s) = seen.get_mut(&hash(&e.key)).filter(|s| s.total > 0) {
                s.total -= 1;
                report.unexpected.push(Unexpected {
                    key: e.key,
                    at: (path.clone(), n),
                });
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Whether two paths name the same existing file (or are equal as written).
fn same_file(a: &Path, b: &Path) -> bool {
    canonical(a) == canonical(b)
}

/// The canonical form of an existing path; others as written.
fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
        let p = dir.join(name);
        let mut body = lines.join("\n");
        body.push('\n');
        std::fs::write(&p, body).unwrap();
        p
    }

    fn ok(id: &str) -> String {
        format!(
            r#"{{"id":"{id}","lang":"en","meta":{{"models":{{}},"input_tokens":0,"output_tokens":0,"elapsed_ms":0}}}}"#
        )
    }

    fn input_check(path: PathBuf) -> InputCheck {
        InputCheck {
            fields: FieldMap {
                id: "id".into(),
                title: "title".into(),
                text: "text".into(),
                max_bytes: 1 << 20,
                file: path.display().to_string(),
            },
            path: InputPath::File(path),
        }
    }

    #[test]
    fn concatenates_outputs_and_errors_files() {
        let d = tempfile::tempdir().unwrap();
        let s0 = write(d.path(), "s0.jsonl", &[&ok("a"), &ok("c")]);
        let s1 = write(
            d.path(),
            "s1.jsonl",
            &[
                &ok("b"),
                r#"{"id":"3","error":{"kind":"invalid_json","message":"m","line":3}}"#,
            ],
        );
        write(
            d.path(),
            "s1.errors.jsonl",
            &[r#"{"line":5,"id":null,"kind":"invalid_json","file":"in","message":"m"}"#],
        );
        let merged = d.path().join("m/merged.jsonl");
        // As a shell glob `s*.jsonl` gives them: s1's errors file too.
        let errs = d.path().join("s1.errors.jsonl");
        let r = merge(&merged, &[s0, errs, s1], None).unwrap();
        assert_eq!((r.shards, r.skipped_errors_args), (2, 1));
        assert!(r.is_clean() && r.written, "{}", r.text());
        assert_eq!((r.ok, r.failed, r.errors_files), (3, 2, 1));
        let body = std::fs::read_to_string(&merged).unwrap();
        assert_eq!(body.lines().count(), 4);
        assert!(body.lines().next().unwrap().contains(r#""id":"a""#));
        let errs = std::fs::read_to_string(d.path().join("m/merged.errors.jsonl")).unwrap();
        assert_eq!(errs.lines().count(), 1);
        let leftovers: Vec<_> = std::fs::read_dir(d.path().join("m")).unwrap().collect();
        assert_eq!(leftovers.len(), 2, "no temporary files left");
    }

    #[test]
    fn duplicates_across_shards_are_reported_and_nothing_is_written() {
        let d = tempfile::tempdir().unwrap();
        let s0 = write(d.path(), "s0.jsonl", &[&ok("a"), &ok("b")]);
        let s1 = write(d.path(), "s1.jsonl", &[&ok("c"), &ok("b")]);
        let merged = d.path().join("merged.jsonl");
        let r = merge(&merged, &[s0.clone(), s1], None).unwrap();
        assert!(!r.is_clean() && !r.written);
        assert_eq!(r.duplicate_count, 1);
        assert_eq!(r.duplicates[0].key, "b");
        assert_eq!(r.duplicates[0].first, (s0, 2));
        assert!(r.text().contains("`b`"), "{}", r.text());
        assert!(!merged.exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
        // With the input, the surplus `b` is the duplicate, not also a record
        // the input lacks.
        let input = write(
            d.path(),
            "in.jsonl",
            &[
                r#"{"id":"a","text":"x"}"#,
                r#"{"id":"b","text":"x"}"#,
                r#"{"id":"c","text":"x"}"#,
            ],
        );
        let s1 = d.path().join("s1.jsonl");
        let r = merge(
            &merged,
            &[d.path().join("s0.jsonl"), s1],
            Some(&input_check(input)),
        )
        .unwrap();
        assert_eq!(
            (r.duplicate_count, r.missing_count, r.unexpected_count),
            (1, 0, 0)
        );
    }

    #[test]
    fn a_shards_own_duplicate_id_records_are_not_duplicates() {
        let d = tempfile::tempdir().unwrap();
        let s0 = write(d.path(), "s0.jsonl", &[&ok("a"), &ok("a")]);
        let s1 = write(
            d.path(),
            "s1.jsonl",
            &[
                &ok("b"),
                r#"{"id":"b","error":{"kind":"duplicate_id","message":"m","line":4}}"#,
            ],
        );
        let input = write(
            d.path(),
            "in.jsonl",
            &[
                r#"{"id":"a","text":"x"}"#,
                r#"{"id":"b","text":"x"}"#,
                r#"{"id":"a","text":"x"}"#,
                r#"{"id":"b","text":"x"}"#,
            ],
        );
        let merged = d.path().join("merged.jsonl");
        // Two ok records with one id in one shard: a duplicate.
        let r = merge(&merged, &[s0, s1.clone()], None).unwrap();
        assert_eq!(r.duplicate_count, 1, "{}", r.text());
        // An ok record and a duplicate_id error: what a shard writes for a
        // repeated id; with the input, the counts balance except for `a`.
        let s0 = write(
            d.path(),
            "s0.jsonl",
            &[
                &ok("a"),
                r#"{"id":"a","error":{"kind":"duplicate_id","message":"m","line":3}}"#,
            ],
        );
        let r = merge(&merged, &[s0, s1], Some(&input_check(input))).unwrap();
        assert!(r.is_clean(), "{}", r.text());
        assert_eq!(r.input_records, Some(4));
    }

    #[test]
    fn missing_and_unexpected_records_are_named() {
        let d = tempfile::tempdir().unwrap();
        let input = write(
            d.path(),
            "in.jsonl",
            &[
                r#"{"id":"a","text":"x"}"#,
                "not json",
                r#"{"id":"c","text":"x"}"#,
            ],
        );
        let s0 = write(d.path(), "s0.jsonl", &[&ok("a"), &ok("zz")]);
        write(
            d.path(),
            "s0.errors.jsonl",
            &[r#"{"line":2,"id":null,"kind":"invalid_json","file":"in","message":"m"}"#],
        );
        let merged = d.path().join("merged.jsonl");
        let r = merge(&merged, &[s0], Some(&input_check(input))).unwrap();
        assert!(!r.written);
        assert_eq!(
            r.missing,
            vec![Missing {
                key: "c".into(),
                line: 3
            }]
        );
        assert_eq!(r.unexpected_count, 1);
        assert_eq!(r.unexpected[0].key, "zz");
        let t = r.text();
        assert!(t.contains("input line 3") && t.contains("`zz`"), "{t}");
    }

    #[test]
    fn torn_shards_and_non_records_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let torn = d.path().join("torn.jsonl");
        std::fs::write(&torn, format!("{}\n{{\"id\":\"b\",\"la", ok("a"))).unwrap();
        let merged = d.path().join("merged.jsonl");
        let e = merge(&merged, &[torn], None).unwrap_err();
        assert!(format!("{e:#}").contains("torn.jsonl"), "{e}");
        let chain = std::error::Error::source(&e).unwrap().to_string();
        assert!(
            chain.contains("line 2") && chain.contains("--resume"),
            "{chain}"
        );
        let junk = write(d.path(), "junk.jsonl", &["[1,2]"]);
        assert!(merge(&merged, &[junk], None).is_err());
        assert!(!merged.exists());
        // Writing over a shard, or one shard twice, is refused.
        let s0 = write(d.path(), "s0.jsonl", &[&ok("a")]);
        assert!(merge(&s0, std::slice::from_ref(&s0), None).is_err());
        let e = merge(&merged, &[s0.clone(), s0.clone()], None).unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
    }
}
