//! Durable, ordered output: the JSONL output (file or stdout) and the errors
//! file.
//!
//! The pipeline hands over one window of finished records at a time, already
//! in input order. Each window is written, flushed and (for files) synced
//! before the next starts, so a crash loses at most the window in flight, and
//! a torn last line is repaired by [`crate::output::resume`]. A record goes
//! to exactly one of the two files.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::config::{ErrorsMode, OutputPath};
use crate::error::{Error, Result};
use crate::input::article::RecordFailure;
use crate::output::record::{InlineErrorRecord, OutputRecord};

/// One finished record, in input order.
#[derive(Debug, Clone)]
pub enum Finished {
    /// A processed article.
    Ok(Box<OutputRecord>),
    /// A record that failed.
    Failed(RecordFailure),
}

enum Sink {
    Stdout(BufWriter<io::Stdout>),
    File { path: PathBuf, w: BufWriter<File> },
}

impl Sink {
    fn create(path: &Path, append: bool) -> Result<Sink> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::io("cannot create output folder", dir))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(Error::io("cannot open for writing", path))?;
        Ok(Sink::File {
            path: path.to_path_buf(),
            w: BufWriter::with_capacity(1 << 16, file),
        })
    }

    fn write_line(&mut self, line: &[u8]) -> Result<()> {
        let r = match self {
            Sink::Stdout(w) => w.write_all(line).and_then(|_| w.write_all(b"\n")),
            Sink::File { w, .. } => w.write_all(line).and_then(|_| w.write_all(b"\n")),
        };
        r.map_err(|e| self.err(e, "cannot write"))
    }

    fn commit(&mut self) -> Result<()> {
        let r = match self {
            Sink::Stdout(w) => w.flush(),
            Sink::File { w, .. } => w.flush().and_then(|_| w.get_ref().sync_data()),
        };
        r.map_err(|e| self.err(e, "cannot flush"))
    }

    fn err(&self, e: io::Error, action: &'static str) -> Error {
        match self {
            _ if e.kind() == io::ErrorKind::BrokenPipe => Error::BrokenPipe,
            Sink::Stdout(_) => Error::Io {
                action,
                path: PathBuf::from("<stdout>"),
                source: e,
            },
            Sink::File { path, .. } => Error::Io {
                action,
                path: path.clone(),
                source: e,
            },
        }
    }
}

/// Writes finished records to the output and the errors file.
pub struct Writer {
    out: Sink,
    errors: Option<Sink>,
    errors_path: PathBuf,
    mode: ErrorsMode,
    /// Records written to the output so far.
    pub written_ok: u64,
    /// Failed records written so far (errors file or inline).
    pub written_failed: u64,
}

impl Writer {
    /// Opens the output; `append` continues existing files (`--resume`),
    /// otherwise they are truncated. The errors file is only created when
    /// the first failure arrives, so a clean run leaves none behind (a stale
    /// one from an earlier run is removed).
    pub fn open(
        output: &OutputPath,
        errors_path: &Path,
        mode: ErrorsMode,
        append: bool,
    ) -> Result<Writer> {
        let out = match output {
            OutputPath::Stdout => Sink::Stdout(BufWriter::new(io::stdout())),
            OutputPath::File(p) => Sink::create(p, append)?,
        };
        if !append && mode == ErrorsMode::File && errors_path.exists() {
            std::fs::remove_file(errors_path)
                .map_err(Error::io("cannot remove stale errors file", errors_path))?;
        }
        Ok(Writer {
            out,
            errors: None,
            errors_path: errors_path.to_path_buf(),
            mode,
            written_ok: 0,
            written_failed: 0,
        })
    }

    /// Writes one window of records in order and makes it durable.
    pub fn write_window(&mut self, records: &[Finished]) -> Result<()> {
        let mut wrote_error = false;
        for r in records {
            match r {
                Finished::Ok(rec) => {
                    let line = serde_json::to_vec(rec).expect("output records serialize");
                    self.out.write_line(&line)?;
                    self.written_ok += 1;
                }
                Finished::Failed(f) => {
                    let line = match self.mode {
                        ErrorsMode::Inline => serde_json::to_vec(&InlineErrorRecord::new(f)),
                        ErrorsMode::File => serde_json::to_vec(f),
                    }
                    .expect("error records serialize");
                    match self.mode {
                        ErrorsMode::Inline => self.out.write_line(&line)?,
                        ErrorsMode::File => {
                            if self.errors.is_none() {
                                self.errors = Some(Sink::create(&self.errors_path, true)?);
                            }
                            let sink = self.errors.as_mut().expect("just opened");
                            sink.write_line(&line)?;
                            wrote_error = true;
                        }
                    }
                    self.written_failed += 1;
                }
            }
        }
        // Errors first: whichever file a record went to, it is durable before
        // the next window starts.
        if wrote_error {
            self.errors.as_mut().expect("opened").commit()?;
        }
        self.out.commit()
    }
}
