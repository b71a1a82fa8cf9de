//! A buffered file reader that counts its own position, for candle's GGUF
//! parser.
//!
//! `gguf_file::Content::read` asks the reader for its position before every
//! string it reads (to check the string's length against the rest of the
//! file). On a plain `File` that is an `lseek` and two `read` calls per
//! string; through `std::io::BufReader` still one `lseek`, since
//! `BufReader` asks the file where it is. The header of a Qwen2.5 GGUF holds
//! some 300,000 strings (its vocabulary and merges), and a run read it three
//! times: 2.4 million system calls before the first weight (counted with
//! `strace -c` on `make demo`'s job). [`GgufReader`] answers from its own
//! count and reads through a 64 KiB buffer.
//!
//! Written here because the standard library's `BufReader` has no such
//! count, and crates that have one (positioned or counting readers) do not
//! also implement `Seek`, which the parser needs.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// A `BufReader` with its position kept in step with every read and seek.
pub struct GgufReader<R> {
    inner: BufReader<R>,
    pos: u64,
}

impl GgufReader<File> {
    /// Opens `path` for reading from its start.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::new(File::open(path)?)
    }
}

impl<R: Read + Seek> GgufReader<R> {
    /// Reads `inner` from where it stands.
    pub fn new(mut inner: R) -> io::Result<Self> {
        let pos = inner.stream_position()?;
        Ok(GgufReader {
            inner: BufReader::with_capacity(64 << 10, inner),
            pos,
        })
    }
}

impl<R: Read> Read for GgufReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }
}

impl<R: Read + Seek> Seek for GgufReader<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Current(delta) => {
                let pos = self.pos.checked_add_signed(delta).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "seek before the start")
                })?;
                // Within the buffer where it can.
                self.inner.seek_relative(delta)?;
                pos
            }
            other => self.inner.seek(other)?,
        };
        Ok(self.pos)
    }

    fn stream_position(&mut self) -> io::Result<u64> {
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Reads and seeks of every kind, small and past the buffer, give the
    /// bytes and positions a plain cursor gives.
    #[test]
    fn positions_and_bytes_match_a_plain_cursor() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut plain = Cursor::new(data.clone());
        let mut ours = GgufReader::new(Cursor::new(data)).unwrap();
        let mut state = 12345u64;
        let mut next = |below: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % below
        };
        for step in 0..5000 {
            match next(6) {
                0 | 1 => {
                    let n = [1, 8, 17, 4096, 70_000][next(5) as usize];
                    let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
                    let ra = plain.read_exact(&mut a).is_ok();
                    let rb = ours.read_exact(&mut b).is_ok();
                    assert_eq!(ra, rb, "step {step}: read_exact({n})");
                    if ra {
                        assert_eq!(a, b, "step {step}: bytes of read_exact({n})");
                    } else {
                        // Both hit the end: start again somewhere known.
                        plain.seek(SeekFrom::Start(0)).unwrap();
                        ours.seek(SeekFrom::Start(0)).unwrap();
                    }
                }
                2 => {
                    let (mut a, mut b) = ([0u8; 100], [0u8; 100]);
                    let na = plain.read(&mut a).unwrap();
                    let nb = ours.read(&mut b).unwrap();
                    // A short read is allowed; what was read must agree.
                    let n = na.min(nb);
                    assert_eq!(a[..n], b[..n], "step {step}: read");
                    plain.seek(SeekFrom::Current(n as i64 - na as i64)).unwrap();
                    ours.seek(SeekFrom::Current(n as i64 - nb as i64)).unwrap();
                }
                3 => {
                    let delta = next(200_000) as i64 - 100_000;
                    let a = plain.seek(SeekFrom::Current(delta)).ok();
                    let b = ours.seek(SeekFrom::Current(delta)).ok();
                    assert_eq!(a, b, "step {step}: seek current {delta}");
                }
                4 => {
                    let to = next(310_000);
                    assert_eq!(
                        plain.seek(SeekFrom::Start(to)).unwrap(),
                        ours.seek(SeekFrom::Start(to)).unwrap(),
                        "step {step}: seek start {to}"
                    );
                }
                _ => {
                    let back = -(next(50_000) as i64);
                    assert_eq!(
                        plain.seek(SeekFrom::End(back)).unwrap(),
                        ours.seek(SeekFrom::End(back)).unwrap(),
                        "step {step}: seek end {back}"
                    );
                }
            }
            assert_eq!(
                plain.stream_position().unwrap(),
                ours.stream_position().unwrap(),
                "step {step}: position"
            );
        }
    }
}
