//! The binary as a user runs it, with models off (no `[summary]`, no
//! `[translate]`): input formats, bad records, job-level errors, exit codes,
//! streaming, sharding, `--limit` and `--resume`, and crash recovery.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tidings"));
    c.env("RUST_LOG", "warn");
    c
}

/// A job with no models: records are read, cleaned, language-tagged and
/// written. `extra` is appended to the config.
fn job(dir: &Path, input: &str, extra: &str) -> PathBuf {
    let p = dir.join("job.toml");
    std::fs::write(
        &p,
        format!("[input]\npath = \"{input}\"\n[output]\npath = \"out/o.jsonl\"\n{extra}"),
    )
    .unwrap();
    p
}

fn run(config: &Path, args: &[&str]) -> Output {
    bin()
        .args(["run", "--no-progress", "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn lines(p: &Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(p) {
        Ok(s) => s
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn article(id: usize) -> String {
    format!(
        "{{\"id\":\"a{id}\",\"title\":\"Story {id}\",\"text\":\"The council met on Monday to discuss item {id}. It agreed to publish the minutes.\"}}\n"
    )
}

#[test]
fn bad_records_go_to_the_errors_file_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = Vec::new();
    input.extend(article(1).as_bytes()); // line 1
    input.extend(b"{\"id\":\"bad\",\"text\":\n"); // 2 malformed JSON
    input.extend(b"\n   \n"); // 3-4 blank lines: skipped
    input.extend(b"{\"id\":\"m\",\"title\":\"no text\"}\n"); // 5 missing field
    input.extend(b"{\"id\":\"e\",\"text\":\"   \"}\n"); // 6 empty text
    input.extend(b"{\"id\":\"w\",\"text\":42}\n"); // 7 wrong type
    input.extend(b"{\"id\":\"u\",\"text\":\"caf\xe9\"}\n"); // 8 invalid UTF-8
    input.extend(article(1).as_bytes()); // 9 duplicate id
    let big = "Word after word. ".repeat(5 * 1024 * 1024 / 17 + 1);
    input.extend(format!("{{\"id\":\"big\",\"text\":\"{big}\"}}\n").as_bytes()); // 10: 5 MB
    input.extend(b"{\"text\":\"An article without an id. It still counts.\"}\n"); // 11
    input.extend(article(2).as_bytes()); // 12
    std::fs::write(dir.path().join("in.jsonl"), &input).unwrap();
    let cfg = job(dir.path(), "in.jsonl", "");
    let o = run(&cfg, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = lines(&dir.path().join("out/o.jsonl"));
    let ids: Vec<&str> = out.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a1", "11", "a2"], "ok records in input order");
    assert_eq!(out[0]["lang"], "en");
    let errs = lines(&dir.path().join("out/o.errors.jsonl"));
    let got: Vec<(u64, &str)> = errs
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (2, "invalid_json"),
            (5, "missing_field"),
            (6, "empty_text"),
            (7, "wrong_type"),
            (8, "invalid_utf8"),
            (9, "duplicate_id"),
            (10, "too_long"),
        ]
    );
    for e in &errs {
        let msg = e["message"].as_str().unwrap();
        let line = e["line"].as_u64().unwrap();
        assert!(msg.contains(&format!("in.jsonl:{line}")), "{msg}");
    }
    assert_eq!(errs[1]["field"], "text");
    assert!(stderr(&o).contains("3 ok, 7 errors"), "{}", stderr(&o));
}

#[test]
fn gzip_and_zstd_inputs_and_a_truncated_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let body: String = (0..300).map(article).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    std::fs::write(dir.path().join("in.jsonl.gz"), &gz).unwrap();
    std::fs::write(
        dir.path().join("in.jsonl.zst"),
        zstd::encode_all(body.as_bytes(), 3).unwrap(),
    )
    .unwrap();
    for name in ["in.jsonl.gz", "in.jsonl.zst"] {
        let o = run(&job(dir.path(), name, ""), &[]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        assert_eq!(lines(&dir.path().join("out/o.jsonl")).len(), 300);
    }
    std::fs::write(dir.path().join("cut.jsonl.gz"), &gz[..gz.len() * 2 / 3]).unwrap();
    let o = run(&job(dir.path(), "cut.jsonl.gz", ""), &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("cut.jsonl.gz") && err.contains("after line"),
        "{err}"
    );
    // What was read before the break is kept, and --resume does not redo it.
    let kept = lines(&dir.path().join("out/o.jsonl")).len();
    assert!(kept > 0 && kept < 300, "{kept}");
}

#[test]
fn job_level_errors_exit_2_with_a_message_naming_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), article(1)).unwrap();
    let cases: &[(&str, &str)] = &[
        ("[runtime]\nthreadz = 2\n", "threadz"),
        (
            "[translate]\ntargets = [\"xx\"]\nmodels = { xx = \"m\" }\n[models.m]\nsource = \"path:m.gguf\"\n",
            "xx",
        ),
        (
            "[summary]\nmodel = \"m\"\n[models.m]\nsource = \"path:nowhere/model.gguf\"\n",
            "nowhere/model.gguf",
        ),
    ];
    for (extra, needle) in cases {
        let o = run(&job(dir.path(), "in.jsonl", extra), &[]);
        assert_eq!(o.status.code(), Some(2), "{extra}");
        let err = stderr(&o);
        assert!(
            err.contains(needle) && err.contains("job.toml") || err.contains(needle),
            "{err}"
        );
    }
    // Unknown key: the message names the key and the file.
    let o = run(
        &job(dir.path(), "in.jsonl", "[runtime]\nthreadz = 2\n"),
        &[],
    );
    let err = stderr(&o);
    assert!(err.contains("threadz") && err.contains("job.toml"), "{err}");
    // Input that does not exist.
    let o = run(&job(dir.path(), "missing.jsonl", ""), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing.jsonl"), "{}", stderr(&o));
    // An output folder that cannot be created (its parent is a file).
    std::fs::write(dir.path().join("blocker"), "").unwrap();
    let o = run(
        &job(dir.path(), "in.jsonl", ""),
        &[
            "--output",
            dir.path().join("blocker/o.jsonl").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("blocker"), "{}", stderr(&o));
    // A GPU device this build or machine cannot open: say which and why.
    let o = run(&job(dir.path(), "in.jsonl", ""), &["--device", "cuda"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("cannot open the cuda device"), "{err}");
    if !cfg!(feature = "cuda") {
        assert!(err.contains("rebuild with `--features cuda`"), "{err}");
    }
}

#[test]
fn stdin_to_stdout_streaming_and_inline_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = job(dir.path(), "-", "");
    let mut child = bin()
        .args([
            "run",
            "--no-progress",
            "--input",
            "-",
            "--output",
            "-",
            "--errors",
            "inline",
            "--config",
        ])
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = String::new();
    input.push_str(&article(1));
    input.push_str("not json\n");
    input.push_str(&article(2));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(out.len(), 3);
    assert_eq!(out[0]["id"], "a1");
    assert_eq!(out[1]["id"], "2");
    assert_eq!(out[1]["error"]["kind"], "invalid_json");
    assert_eq!(out[1]["error"]["line"], 2);
    assert_eq!(out[2]["id"], "a2");
    assert!(!dir.path().join("tidings.errors.jsonl").exists());
}

#[test]
fn shards_are_disjoint_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let body: String = (0..200).map(article).collect();
    std::fs::write(dir.path().join("in.jsonl"), body).unwrap();
    let cfg = job(dir.path(), "in.jsonl", "");
    for n in [1u32, 3, 7] {
        let mut all = Vec::new();
        for k in 0..n {
            let out = dir.path().join(format!("s{k}of{n}.jsonl"));
            let o = run(
                &cfg,
                &[
                    "--shard",
                    &format!("{k}/{n}"),
                    "--output",
                    out.to_str().unwrap(),
                ],
            );
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            all.extend(
                lines(&out)
                    .into_iter()
                    .map(|r| r["id"].as_str().unwrap().to_string()),
            );
        }
        let set: BTreeSet<_> = all.iter().cloned().collect();
        assert_eq!(all.len(), 200, "n={n}: every record exactly once");
        assert_eq!(set.len(), 200);
    }
    let o = run(&cfg, &["--shard", "3/2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("3/2"));
}

#[test]
fn limit_then_resume_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut body: String = (0..50).map(article).collect();
    body.push_str("oops\n");
    std::fs::write(dir.path().join("in.jsonl"), body).unwrap();
    let cfg = job(dir.path(), "in.jsonl", "[runtime]\nwindow = 4\n");
    let o = run(&cfg, &["--limit", "10"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(lines(&dir.path().join("out/o.jsonl")).len(), 10);
    let o = run(&cfg, &["--resume", "--limit", "15"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(lines(&dir.path().join("out/o.jsonl")).len(), 25);
    let o = run(&cfg, &["--resume"]);
    assert_eq!(o.status.code(), Some(1));
    let out = lines(&dir.path().join("out/o.jsonl"));
    let ids: Vec<String> = out
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..50).map(|i| format!("a{i}")).collect();
    assert_eq!(ids, want, "complete, in input order, no duplicates");
    assert_eq!(lines(&dir.path().join("out/o.errors.jsonl")).len(), 1);
    // Nothing left: a further resume writes nothing new.
    let o = run(&cfg, &["--resume"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(lines(&dir.path().join("out/o.jsonl")).len(), 50);
}

/// Kills the process with SIGKILL at several points, resumes each time, and
/// checks every input record ends up exactly once across output and errors.
#[test]
fn sigkill_at_any_point_then_resume_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = 60_000;
    let mut body = String::new();
    for i in 0..n {
        if i % 997 == 5 {
            body.push_str("{broken\n");
        } else {
            body.push_str(&article(i));
        }
    }
    std::fs::write(dir.path().join("in.jsonl"), &body).unwrap();
    let cfg = job(dir.path(), "in.jsonl", "[runtime]\nwindow = 64\n");
    let mut kills = 0;
    for (round, delay_ms) in [30u64, 90, 150, 250, 400].iter().enumerate() {
        let mut child = bin()
            .args(["run", "--no-progress", "--config"])
            .arg(&cfg)
            .args(if round == 0 { vec![] } else { vec!["--resume"] })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(*delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL on Unix
            kills += 1;
        }
        child.wait().unwrap();
    }
    let o = run(&cfg, &["--resume"]);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
    assert!(
        kills > 0,
        "the run finished before any kill; make the input larger"
    );
    let out = lines(&dir.path().join("out/o.jsonl"));
    let errs = lines(&dir.path().join("out/o.errors.jsonl"));
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut id_line: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..n {
        if i % 997 != 5 {
            id_line.insert(format!("a{i}"), i as u64 + 1);
        }
    }
    for r in &out {
        *seen.entry(id_line[r["id"].as_str().unwrap()]).or_default() += 1;
    }
    for e in &errs {
        *seen.entry(e["line"].as_u64().unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), n, "every record present");
    assert!(seen.values().all(|&c| c == 1), "no record twice");
}

/// The binary restarts itself with glibc's huge-page tunable
/// (src/huge_pages.rs) where asked to, keeps a user's own tunables and
/// choice, and `tidings bench` says which it ran with.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_weights_go_on_huge_pages_where_asked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), article(1)).unwrap();
    let config = job(dir.path(), "in.jsonl", "");
    let json = dir.path().join("bench.json");
    // Where the kernel has no transparent huge pages, asking changes nothing.
    let thp = !std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|m| m.contains("[never]"));
    let on = ("TIDINGS_HUGE_PAGES", "1");
    let cases: [(&[(&str, &str)], bool); 6] = [
        (&[], false),
        (&[on], thp),
        (&[("TIDINGS_HUGE_PAGES", "0")], false),
        (&[on, ("GLIBC_TUNABLES", "glibc.malloc.check=0")], thp),
        (&[on, ("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")], false),
        // The user's own tunable is reported as it is.
        (&[("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")], true),
    ];
    for (env, on) in cases {
        let mut c = bin();
        c.env_remove("TIDINGS_HUGE_PAGES")
            .env_remove("GLIBC_TUNABLES");
        c.envs(env.iter().copied());
        let o = c
            .args(["bench", "--raw-only", "--config"])
            .arg(&config)
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        assert!(o.status.success(), "{env:?}: {}", stderr(&o));
        let want = if on {
            "huge pages          on"
        } else {
            "huge pages          off"
        };
        assert!(
            stderr(&o).contains(want),
            "{env:?}: want {want:?} in {}",
            stderr(&o)
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report["huge_pages"], on, "{env:?}");
    }
}
