//! `--resume`: what an earlier, interrupted run already finished.
//!
//! A record is done when its id is in the output file or its line is in the
//! errors file (or, with `--errors inline`, in an inline error record). The
//! files are first repaired: a last line without its newline was torn by a
//! crash and is cut off, so its record is simply processed again.
//!
//! Ids are matched once each: when an input has the same id twice and only
//! the first made it to the output before the crash, the second is still
//! processed (and reported as a duplicate), so every input record ends up
//! exactly once across the two files.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// What is already done, read from the output and errors files.
#[derive(Debug, Default)]
pub struct ResumeIndex {
    ids: HashMap<String, u32>,
    error_lines: HashSet<u64>,
    /// Records found in the output.
    pub previous_ok: u64,
    /// Failed records found (errors file or inline).
    pub previous_failed: u64,
    /// Bytes cut off torn last lines.
    pub repaired_bytes: u64,
}

#[derive(Deserialize)]
struct AnyLine {
    id: Option<serde_json::Value>,
    line: Option<u64>,
    error: Option<InlineErr>,
}

#[derive(Deserialize)]
struct InlineErr {
    line: Option<u64>,
}

impl ResumeIndex {
    /// Repairs and reads the files; missing files are empty.
    pub fn load(output: Option<&Path>, errors: &Path) -> Result<Self> {
        let mut idx = ResumeIndex::default();
        if let Some(out) = output {
            idx.read(out, false)?;
        }
        idx.read(errors, true)?;
        Ok(idx)
    }

    fn read(&mut self, path: &Path, is_errors_file: bool) -> Result<()> {
        if !path.exists() {
            return Ok(());
        }
        self.repaired_bytes += repair_torn_tail(path)?;
        let file = std::fs::File::open(path).map_err(Error::io("cannot read", path))?;
        for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
            let line = line.map_err(Error::io("cannot read", path))?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let rec: AnyLine = serde_json::from_slice(&line).map_err(|e| Error::Io {
                action: "cannot resume from",
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("line {}: not a tidings record: {e}", n + 1),
                ),
            })?;
            if is_errors_file {
                if let Some(l) = rec.line {
                    self.error_lines.insert(l);
                    self.previous_failed += 1;
                }
            } else if let Some(err) = rec.error {
                if let Some(l) = err.line {
                    self.error_lines.insert(l);
                }
                self.previous_failed += 1;
            } else if let Some(id) = rec.id {
                let id = match id {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                *self.ids.entry(id).or_default() += 1;
                self.previous_ok += 1;
            }
        }
        Ok(())
    }

    /// Whether the record at `line` with id `key` is already done. Each
    /// finished id is matched once.
    pub fn take(&mut self, line: u64, key: &str) -> bool {
        if self.error_lines.contains(&line) {
            return true;
        }
        match self.ids.get_mut(key) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Number of records already done.
    pub fn done(&self) -> u64 {
        self.previous_ok + self.previous_failed
    }
}

/// Cuts a file back to its last newline; returns the bytes removed.
pub fn repair_torn_tail(path: &Path) -> Result<u64> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(Error::io("cannot open for repair", path))?;
    let len = f.metadata().map_err(Error::io("cannot stat", path))?.len();
    if len == 0 {
        return Ok(0);
    }
    // Scan backwards in blocks for the last newline.
    let mut end = len;
    let mut keep = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    'scan: while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))
            .and_then(|_| f.read_exact(&mut buf[..n]))
            .map_err(Error::io("cannot read", path))?;
        for i in (0..n).rev() {
            if buf[i] == b'\n' {
                keep = start + i as u64 + 1;
                break 'scan;
            }
        }
        end = start;
    }
    if keep < len {
        f.set_len(keep).map_err(Error::io("cannot repair", path))?;
        f.sync_data().map_err(Error::io("cannot sync", path))?;
        tracing::warn!(
            "{}: removed a torn last line ({} bytes) left by an interrupted run",
            path.display(),
            len - keep
        );
    }
    Ok(len - keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_torn_tail_and_indexes_ids_and_lines() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.jsonl");
        let err = dir.path().join("o.errors.jsonl");
        std::fs::write(
            &out,
            "{\"id\":\"a\",\"meta\":{}}\n{\"id\":\"b\"}\n{\"id\":\"c\",\"ti",
        )
        .unwrap();
        std::fs::write(&err, "{\"line\":4,\"id\":null,\"kind\":\"invalid_json\"}\n").unwrap();
        let mut idx = ResumeIndex::load(Some(&out), &err).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 2);
        assert_eq!(idx.done(), 3);
        assert!(idx.take(1, "a"));
        assert!(!idx.take(2, "a"), "an id is matched once");
        assert!(idx.take(4, "zzz"));
        assert!(!idx.take(5, "c"));
    }

    #[test]
    fn file_without_newline_at_all_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, "{\"id\":").unwrap();
        assert_eq!(repair_torn_tail(&p).unwrap(), 6);
        assert_eq!(std::fs::read(&p).unwrap(), b"");
    }
}
