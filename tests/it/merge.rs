//! Sharded runs as a cluster runs them, and `tidings merge`: shards taken
//! from a Kubernetes Indexed Job's or a Slurm array's environment
//! (`--shard auto`), merged and checked against the input; a shard given
//! twice or left out fails the merge. Models are off (no `[summary]`, no
//! `[translate]`), so these tests are fast.

use crate::common::ntrex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Variables `--shard auto` reads; cleared in every child so a test run
/// inside a real array job is not confused by its own environment.
const SHARD_VARS: &[&str] = &[
    "JOB_COMPLETION_INDEX",
    "TIDINGS_SHARDS",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
];

fn bin(env: &[(&str, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tidings"));
    c.env("RUST_LOG", "warn");
    for v in SHARD_VARS {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// A job with no models, reading `input`.
fn job(dir: &Path, input: &Path) -> PathBuf {
    let p = dir.join("job.toml");
    std::fs::write(
        &p,
        format!(
            "[input]\npath = \"{}\"\n[output]\npath = \"out/o.jsonl\"\n[runtime]\nwindow = 8\n",
            input.display()
        ),
    )
    .unwrap();
    p
}

/// `tidings run` of one shard into `out`; `shard` is `K/N` or `auto`.
fn run_shard(config: &Path, out: &Path, shard: &str, env: &[(&str, String)]) -> Output {
    bin(env)
        .args(["run", "--no-progress", "--shard", shard, "--output"])
        .arg(out)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn merge(args: &[&Path]) -> Output {
    bin(&[]).arg("merge").args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ids(p: &Path) -> Vec<String> {
    match std::fs::read_to_string(p) {
        Ok(s) => s
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                match &v["id"] {
                    serde_json::Value::String(s) => s.clone(),
                    // Errors-file records without an id stand for their line.
                    _ => v["line"].to_string(),
                }
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn article(id: usize) -> String {
    format!(
        "{{\"id\":\"a{id}\",\"title\":\"Story {id}\",\"text\":\"The council met on Monday to discuss item {id}. It agreed to publish the minutes.\"}}\n"
    )
}

/// 200 input lines: 198 articles, one broken line (line 50) and one
/// without text (line 120), so the errors files take part too.
fn input_200(dir: &Path) -> PathBuf {
    let mut body = String::new();
    for i in 0..200 {
        match i {
            49 => body.push_str("{broken\n"),
            119 => body.push_str("{\"id\":\"notext\",\"title\":\"t\"}\n"),
            _ => body.push_str(&article(i)),
        }
    }
    let p = dir.join("in.jsonl");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn three_array_tasks_then_merge_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_200(dir.path());
    let cfg = job(dir.path(), &input);
    // Shards 0 and 1 as pods of a Kubernetes Indexed Job, shard 2 as the
    // last task of a Slurm array submitted as `--array=1-3`.
    let envs: [Vec<(&str, String)>; 3] = [
        vec![
            ("JOB_COMPLETION_INDEX", "0".into()),
            ("TIDINGS_SHARDS", "3".into()),
        ],
        vec![
            ("JOB_COMPLETION_INDEX", "1".into()),
            ("TIDINGS_SHARDS", "3".into()),
        ],
        vec![
            ("SLURM_ARRAY_TASK_ID", "3".into()),
            ("SLURM_ARRAY_TASK_MIN", "1".into()),
            ("SLURM_ARRAY_TASK_MAX", "3".into()),
            ("SLURM_ARRAY_TASK_COUNT", "3".into()),
        ],
    ];
    let mut shards = Vec::new();
    for (k, env) in envs.iter().enumerate() {
        let out = dir.path().join(format!("part-{k}.jsonl"));
        let o = run_shard(&cfg, &out, "auto", env);
        assert!(
            matches!(o.status.code(), Some(0 | 1)),
            "shard {k}: {}",
            stderr(&o)
        );
        // `auto` picked the same records as the explicit K/N.
        let explicit = dir.path().join(format!("explicit-{k}.jsonl"));
        let o = run_shard(&cfg, &explicit, &format!("{k}/3"), &[]);
        assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
        assert_eq!(ids(&out), ids(&explicit), "shard {k}");
        assert!(!ids(&out).is_empty(), "shard {k} is empty: try other ids");
        shards.push(out);
    }

    let merged = dir.path().join("merged/all.jsonl");
    let mut args: Vec<&Path> = vec![
        Path::new("--output"),
        &merged,
        Path::new("--input"),
        &input,
        Path::new("--config"),
        &cfg,
    ];
    // What the shell's `part-*.jsonl` gives: the errors files too, which
    // merge reads as errors files.
    let mut globbed: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("part-")
        })
        .collect();
    globbed.sort();
    assert!(globbed.len() > 3, "{globbed:?}");
    args.extend(globbed.iter().map(PathBuf::as_path));
    let o = merge(&args);
    // Two records failed, so 1, as for `run`.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("3 shard(s)") && err.contains("198 ok, 2 errors"),
        "{err}"
    );
    assert!(
        err.contains("input: 200 records, each exactly once"),
        "{err}"
    );
    let ok = ids(&merged);
    let failed = ids(&dir.path().join("merged/all.errors.jsonl"));
    assert_eq!(ok.len(), 198);
    assert_eq!(failed.len(), 2);
    let all: BTreeSet<String> = ok.iter().chain(&failed).cloned().collect();
    assert_eq!(all.len(), 200, "no record twice");
    assert!(all.contains("50") && all.contains("notext"), "{failed:?}");
    // Shard by shard, in the order given: shard 0's records come first.
    assert_eq!(ok[..ids(&shards[0]).len()], ids(&shards[0])[..]);
}

#[test]
fn a_shard_given_twice_or_left_out_fails_the_merge() {
    let dir = tempfile::tempdir().unwrap();
    let input: String = (0..60).map(article).collect();
    let input_path = dir.path().join("in.jsonl");
    std::fs::write(&input_path, input).unwrap();
    let cfg = job(dir.path(), &input_path);
    let s: Vec<PathBuf> = (0..2)
        .map(|k| {
            let out = dir.path().join(format!("s{k}.jsonl"));
            let o = run_shard(&cfg, &out, &format!("{k}/2"), &[]);
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            out
        })
        .collect();
    let merged = dir.path().join("m.jsonl");

    // The same shard output twice (say, copied under another name).
    let copy = dir.path().join("s0-again.jsonl");
    std::fs::copy(&s[0], &copy).unwrap();
    let o = merge(&[Path::new("-o"), &merged, &s[0], &s[1], &copy]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    let n0 = ids(&s[0]).len();
    assert!(
        err.contains(&format!("{n0} record(s) appear more than once")),
        "{err}"
    );
    assert!(err.contains("s0-again.jsonl:1"), "{err}");
    assert!(err.contains("NOT written") && !merged.exists(), "{err}");

    // A shard left out: without the input nobody can tell...
    let o = merge(&[Path::new("-o"), &merged, &s[0]]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // ...with it, the missing records are named.
    std::fs::remove_file(&merged).unwrap();
    let o = merge(&[
        Path::new("-o"),
        &merged,
        Path::new("-i"),
        &input_path,
        &s[0],
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    let n1 = ids(&s[1]).len();
    assert!(
        err.contains(&format!("{n1} input record(s) are in no shard")),
        "{err}"
    );
    assert!(
        err.contains(&format!("`{}` (input line", ids(&s[1])[0])),
        "{err}"
    );
    assert!(!merged.exists());

    // Both: complete, exit 0, in the order given.
    let o = merge(&[
        Path::new("-o"),
        &merged,
        Path::new("-i"),
        &input_path,
        &s[1],
        &s[0],
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut want = ids(&s[1]);
    want.extend(ids(&s[0]));
    assert_eq!(ids(&merged), want);
}

#[test]
fn shard_auto_without_an_array_environment_names_the_variables() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, article(1)).unwrap();
    let cfg = job(dir.path(), &input);
    let out = dir.path().join("o.jsonl");
    let o = run_shard(&cfg, &out, "auto", &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    for v in [
        "JOB_COMPLETION_INDEX",
        "TIDINGS_SHARDS",
        "SLURM_ARRAY_TASK_ID",
    ] {
        assert!(err.contains(v), "{err}");
    }
    let bad = [
        ("JOB_COMPLETION_INDEX", "5".to_string()),
        ("TIDINGS_SHARDS", "5".to_string()),
    ];
    let o = run_shard(&cfg, &out, "auto", &bad);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("JOB_COMPLETION_INDEX=5"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

#[test]
fn ntrex_shards_are_disjoint_and_complete() {
    let Some(data) = ntrex() else { return };
    let want: Vec<String> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let cfg = job(dir.path(), &data);
    for n in [2usize, 3, 5] {
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        let mut parts = Vec::new();
        for k in 0..n {
            let out = dir.path().join(format!("n{n}-{k}.jsonl"));
            let o = run_shard(&cfg, &out, &format!("{k}/{n}"), &[]);
            assert_eq!(o.status.code(), Some(0), "{k}/{n}: {}", stderr(&o));
            for id in ids(&out) {
                *count.entry(id).or_default() += 1;
            }
            parts.push(out);
        }
        let got: BTreeSet<&String> = count.keys().collect();
        assert_eq!(
            got,
            want.iter().collect(),
            "n={n}: every article in some shard"
        );
        assert!(
            count.values().all(|&c| c == 1),
            "n={n}: no article in two shards"
        );
        let merged = dir.path().join(format!("n{n}.jsonl"));
        let mut args: Vec<&Path> = vec![Path::new("-o"), &merged, Path::new("-i"), &data];
        args.extend(parts.iter().map(PathBuf::as_path));
        let o = merge(&args);
        assert_eq!(o.status.code(), Some(0), "n={n}: {}", stderr(&o));
        assert_eq!(ids(&merged).len(), want.len());
    }
}
