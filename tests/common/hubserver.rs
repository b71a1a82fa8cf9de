//! A tiny stand-in for the Hugging Face Hub, enough for hf-hub 0.4's blocking
//! client: `GET {endpoint}/{repo}/resolve/{revision}/{file}` with a `Range`
//! header, answered from files a test writes under
//! `root/{owner}/{name}/{revision}/{file}`.
//!
//! hf-hub first asks for `bytes=0-0` and reads `ETag`, `X-Repo-Commit` and
//! the total size from `Content-Range`; then it asks for `bytes=N-` and
//! streams the body. A missing file gets 404 with `X-Error-Code:
//! EntryNotFound` (and the commit), a missing repository 401 with
//! `RepoNotFound`, as the Hub does. Every request is recorded so tests can
//! assert how many were made. One thread serves one connection at a time,
//! each answered with `Connection: close`, with read timeouts, so a stuck
//! client cannot hang a test run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request path, e.g. `/owner/repo/resolve/main/config.json`.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The status we answered.
    pub status: u16,
}

impl Seen {
    /// Whether this request fetched file content (not just the `bytes=0-0`
    /// metadata probe).
    pub fn is_content(&self) -> bool {
        self.range.as_deref() != Some("bytes=0-0")
    }
}

/// A running fake Hub; stops when dropped.
pub struct HubServer {
    addr: SocketAddr,
    root: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HubServer {
    /// Serves the files under `root`.
    pub fn start(root: &Path) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (root, seen, stop) = (root.to_path_buf(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        // A broken connection only fails the client's request.
                        let _ = serve(stream, &root, &seen);
                    }
                }
            })
        };
        HubServer {
            addr,
            root: root.to_path_buf(),
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// The endpoint to give hf-hub (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a file of `repo` at `revision`.
    pub fn put(&self, repo: &str, revision: &str, file: &str, data: &[u8]) {
        let path = self.root.join(repo).join(revision).join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Number of requests so far.
    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Number of requests so far that fetched content.
    pub fn content_requests(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.is_content())
            .count()
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking `accept` so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The commit id the fake Hub reports for a revision: stable and distinct.
pub fn commit_of(repo: &str, revision: &str) -> String {
    hex(&Sha256::digest(format!("{repo}@{revision}").as_bytes()))[..40].to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn serve(stream: TcpStream, root: &Path, seen: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?).take(64 * 1024);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    let (status, headers, body) = answer(&target, range.as_deref(), root);
    seen.lock().unwrap().push(Seen {
        path: target,
        range,
        status,
    });
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Bad Request",
    };
    let mut out = stream;
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    out.write_all(head.as_bytes())?;
    out.write_all(&body)?;
    out.flush()
}

type Answer = (u16, Vec<(&'static str, String)>, Vec<u8>);

fn answer(target: &str, range: Option<&str>, root: &Path) -> Answer {
    let bad = |status, code: &str, message: &str, commit: Option<String>| {
        let mut headers = vec![
            ("X-Error-Code", code.to_string()),
            ("X-Error-Message", message.to_string()),
        ];
        if let Some(c) = commit {
            headers.push(("X-Repo-Commit", c));
        }
        (status, headers, Vec::new())
    };
    // /{owner}/{name}/resolve/{revision}/{file...}; revisions with `/` arrive
    // as `%2F`.
    let parts: Vec<&str> = target.trim_start_matches('/').splitn(5, '/').collect();
    let [owner, name, "resolve", revision, file] = parts[..] else {
        return bad(400, "BadRequest", "not a resolve URL", None);
    };
    let repo = format!("{owner}/{name}");
    let revision = revision.replace("%2F", "/");
    if !root.join(&repo).is_dir() {
        return bad(401, "RepoNotFound", "Repository not found", None);
    }
    if !root.join(&repo).join(&revision).is_dir() {
        return bad(404, "RevisionNotFound", "Invalid rev id", None);
    }
    let commit = commit_of(&repo, &revision);
    let Ok(data) = std::fs::read(root.join(&repo).join(&revision).join(file)) else {
        return bad(404, "EntryNotFound", "Entry not found", Some(commit));
    };
    let size = data.len();
    let (start, end) = match range.and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let start: usize = a.parse().unwrap_or(0);
            let end = b
                .parse::<usize>()
                .map_or(size.saturating_sub(1), |e| e.min(size - 1));
            (start.min(size), end)
        }
        None => (0, size.saturating_sub(1)),
    };
    let body = if size == 0 || start > end {
        Vec::new()
    } else {
        data[start..=end].to_vec()
    };
    let headers = vec![
        ("ETag", format!("\"{}\"", hex(&Sha256::digest(&data)))),
        ("X-Repo-Commit", commit),
        ("Content-Range", format!("bytes {start}-{end}/{size}")),
        ("Accept-Ranges", "bytes".to_string()),
    ];
    (if range.is_some() { 206 } else { 200 }, headers, body)
}
