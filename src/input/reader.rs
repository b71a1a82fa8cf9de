//! Streaming line reader over a plain, gzip or zstd JSONL file, or stdin.
//!
//! Decompression is chosen by extension (`.gz`, `.zst`) and done by `flate2`
//! and `zstd`. Lines are read as bytes, so a line with invalid UTF-8 becomes
//! an error record instead of stopping the job; blank lines are skipped but
//! still counted, so line numbers match what an editor shows. Memory is
//! bounded by the longest line, whatever the size of the dump. A stream that
//! breaks part way (a truncated gzip file) is a job-level error naming the
//! file and the last good line.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use crate::config::InputPath;
use crate::error::{Error, Result};

/// One non-blank input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine {
    /// 1-based line number.
    pub line: u64,
    /// The bytes of the line, without the line ending.
    pub bytes: Vec<u8>,
}

/// Reads [`RawLine`]s from a file or stdin.
pub struct LineReader {
    inner: Box<dyn BufRead + Send>,
    name: String,
    line: u64,
    done: bool,
}

impl LineReader {
    /// Opens the input; the decompressor is picked from the file extension.
    pub fn open(path: &InputPath) -> Result<Self> {
        match path {
            InputPath::Stdin => Ok(Self::from_reader("-", io::stdin())),
            InputPath::File(p) => {
                let file = File::open(p).map_err(Error::io("cannot open input", p))?;
                let name = p.display().to_string();
                let reader: Box<dyn Read + Send> = match extension(p) {
                    Some("gz") => Box::new(flate2::read::MultiGzDecoder::new(file)),
                    Some("zst") => Box::new(
                        zstd::stream::read::Decoder::new(file)
                            .map_err(Error::io("cannot open zstd input", p))?,
                    ),
                    _ => Box::new(file),
                };
                Ok(Self::from_reader(name, reader))
            }
        }
    }

    /// Wraps any reader (used for stdin and in tests).
    pub fn from_reader(name: impl Into<String>, reader: impl Read + Send + 'static) -> Self {
        LineReader {
            inner: Box::new(BufReader::with_capacity(1 << 16, reader)),
            name: name.into(),
            line: 0,
            done: false,
        }
    }

    /// The input's name for messages (`-` for stdin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads the next non-blank line; `Ok(None)` at the end.
    pub fn next_line(&mut self) -> Result<Option<RawLine>> {
        let mut buf = Vec::new();
        while !self.done {
            buf.clear();
            let n =
                self.inner
                    .read_until(b'\n', &mut buf)
                    .map_err(|source| Error::InputStream {
                        path: self.name.clone(),
                        line: self.line,
                        source,
                    })?;
            if n == 0 {
                self.done = true;
                break;
            }
            self.line += 1;
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(RawLine {
                line: self.line,
                bytes: std::mem::take(&mut buf),
            }));
        }
        Ok(None)
    }

    /// Reads up to `max` lines into `out` (cleared first); returns whether the
    /// input has more.
    pub fn next_chunk(&mut self, max: usize, out: &mut Vec<RawLine>) -> Result<bool> {
        out.clear();
        while out.len() < max {
            match self.next_line()? {
                Some(l) => out.push(l),
                None => return Ok(false),
            }
        }
        Ok(!self.done)
    }
}

fn extension(p: &Path) -> Option<&str> {
    p.extension().and_then(|e| e.to_str())
}

/// Counts records in a plain (uncompressed) file for the progress bar;
/// `None` for stdin and compressed files, whose size is unknown up front.
pub fn count_records(path: &InputPath) -> Option<u64> {
    let InputPath::File(p) = path else {
        return None;
    };
    if matches!(extension(p), Some("gz" | "zst")) {
        return None;
    }
    let mut reader = BufReader::with_capacity(1 << 20, File::open(p).ok()?);
    let mut count = 0u64;
    let mut blank = true;
    loop {
        let buf = reader.fill_buf().ok()?;
        if buf.is_empty() {
            break;
        }
        for &b in buf {
            if b == b'\n' {
                if !blank {
                    count += 1;
                }
                blank = true;
            } else if !b.is_ascii_whitespace() {
                blank = false;
            }
        }
        let n = buf.len();
        reader.consume(n);
    }
    if !blank {
        count += 1;
    }
    Some(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines(r: &mut LineReader) -> Vec<(u64, String)> {
        let mut v = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            v.push((l.line, String::from_utf8(l.bytes).unwrap()));
        }
        v
    }

    #[test]
    fn skips_blank_lines_but_counts_them() {
        let data = "a\n\n  \r\nb\r\nc";
        let mut r = LineReader::from_reader("x", io::Cursor::new(data.as_bytes().to_vec()));
        assert_eq!(
            lines(&mut r),
            vec![(1, "a".into()), (4, "b".into()), (5, "c".into())]
        );
    }

    #[test]
    fn reads_gzip_and_zstd_and_reports_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let body: String = (0..2000).map(|i| format!("{{\"id\":{i}}}\n")).collect();
        let gz = dir.path().join("a.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(body.as_bytes()).unwrap();
        let bytes = enc.finish().unwrap();
        std::fs::write(&gz, &bytes).unwrap();
        let zst = dir.path().join("a.jsonl.zst");
        std::fs::write(&zst, zstd::encode_all(body.as_bytes(), 3).unwrap()).unwrap();
        for p in [&gz, &zst] {
            let mut r = LineReader::open(&InputPath::File(p.clone())).unwrap();
            assert_eq!(lines(&mut r).len(), 2000);
        }
        assert_eq!(count_records(&InputPath::File(gz.clone())), None);

        let cut = dir.path().join("cut.jsonl.gz");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let mut r = LineReader::open(&InputPath::File(cut.clone())).unwrap();
        let err = loop {
            match r.next_line() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("truncated gzip read to the end without error"),
                Err(e) => break e,
            }
        };
        let msg = err.to_string();
        assert!(
            msg.contains("cut.jsonl.gz") && msg.contains("after line"),
            "{msg}"
        );
    }

    #[test]
    fn counts_records_of_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(&p, "{}\n\n{}\n{}").unwrap();
        assert_eq!(count_records(&InputPath::File(p)), Some(3));
    }
}
