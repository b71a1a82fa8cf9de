//! The binary as a pipe stage whose reader goes away: `tidings run
//! --output -` into a reader that closes after one line (`| head -1`, a
//! Spark task being killed) ends quietly with exit 0 — no panic message,
//! no error.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

fn article(id: usize) -> String {
    format!(
        "{{\"id\":\"a{id}\",\"title\":\"Story {id}\",\"text\":\"The council met on Monday to discuss item {id}. It agreed to publish the minutes.\"}}\n"
    )
}

/// Starts a run writing to a pipe, reads one line, closes the pipe, and
/// returns the exit code and stderr. `stdin_input`: feed the input through
/// stdin (from a thread) instead of a file.
fn read_one_line_then_close(stdin_input: bool) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    // Far more output than a pipe buffer holds, so the run is still writing
    // when the reader goes.
    let body: String = (0..20_000).map(article).collect();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, &body).unwrap();
    let cfg = dir.path().join("job.toml");
    std::fs::write(
        &cfg,
        format!(
            "[input]\npath = \"{}\"\n[output]\npath = \"o.jsonl\"\n",
            input.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
    cmd.env("RUST_LOG", "warn")
        .args([
            "run",
            "--no-progress",
            "--output",
            "-",
            "--errors",
            "inline",
            "--config",
        ])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if stdin_input {
        cmd.args(["--input", "-"]).stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().unwrap();
    let feeder = child.stdin.take().map(|mut w| {
        std::thread::spawn(move || {
            // The child stops reading once its output is gone: a write error
            // here is expected.
            let _ = w.write_all(body.as_bytes());
        })
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with("{\"id\":\"a0\""), "{first}");
    drop(out);
    let o = child.wait_with_output().unwrap();
    if let Some(f) = feeder {
        f.join().unwrap();
    }
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn closed_stdout_ends_quietly_with_exit_0() {
    for stdin_input in [false, true] {
        let (code, err) = read_one_line_then_close(stdin_input);
        assert!(!err.contains("panicked"), "stdin={stdin_input}: {err}");
        assert!(!err.contains("error"), "stdin={stdin_input}: {err}");
        assert_eq!(code, Some(0), "stdin={stdin_input}: {err}");
    }
}
