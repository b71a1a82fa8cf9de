//! The whole pipeline on tiny generated models (a random BERT for extractive
//! summaries, a random llama-architecture GGUF for translation and
//! abstractive summaries): the fast end-to-end tests that need no download.
//! Tiny random models write nonsense; these tests check the plumbing: order,
//! ids, summaries drawn from the article, same-language copies, metadata,
//! worker layouts, and exactly-once delivery across a crash.

use crate::common::{tiny_bert, tiny_gguf};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bert")).unwrap();
        tiny_bert::write(&dir.path().join("bert"), 7).unwrap();
        tiny_gguf::write(
            &dir.path().join("tiny.gguf"),
            &tiny_gguf::Spec::new(tiny_gguf::Arch::Llama, 11),
        )
        .unwrap();
        Fixture { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Writes a job; `summary` is `extractive` or `abstractive`.
    fn job(&self, input: &Path, summary: &str, extra: &str) -> PathBuf {
        let summary = match summary {
            "extractive" => "[summary]\nmodel = \"bert\"\nsentences = 2\n",
            _ => "[summary]\nmodel = \"tiny\"\nmax-words = 12\n",
        };
        let cfg = self.path("job.toml");
        std::fs::write(
            &cfg,
            format!(
                "[input]\npath = \"{}\"\n[output]\npath = \"out/o.jsonl\"\n{summary}\
                 [translate]\ntargets = [\"es\", \"fa\"]\nfields = [\"title\", \"summary\", \"text\"]\n\
                 models = {{ es = \"tiny\", fa = \"tiny\" }}\n\
                 [models.bert]\nsource = \"path:bert\"\n[models.tiny]\nsource = \"path:tiny.gguf\"\n\
                 [generation]\nmax-new-tokens = 6\n{extra}",
                input.display()
            ),
        )
        .unwrap();
        cfg
    }

    fn output(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.path("out/o.jsonl"))
    }
}

fn read_jsonl(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .map(|s| {
            s.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

fn examples() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/articles.jsonl"
    ))
}

fn run(cfg: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["run", "--no-progress", "--config"])
        .arg(cfg)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn extractive_summary_and_translations_keep_order_ids_and_copies() {
    let fx = Fixture::new();
    let o = run(&fx.job(&examples(), "extractive", ""), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("5 ok, 0 errors"), "{err}");
    let input = read_jsonl(&examples());
    let out = fx.output();
    assert_eq!(out.len(), input.len());
    for (i, o) in input.iter().zip(&out) {
        assert_eq!(o["id"], i["id"]);
        let text = i["text"].as_str().unwrap();
        let summary = o["summary"].as_str().unwrap();
        assert!(!summary.is_empty() && summary.len() < text.len());
        // Every summary sentence is a sentence of the (cleaned) article.
        for s in tidings::text::segment::sentences(summary) {
            assert!(text.contains(s), "`{s}` is not from the article");
        }
        assert!(o["meta"]["models"]["summary"] == "bert");
        assert!(o["meta"]["input_tokens"].as_u64().unwrap() > 0);
        for lang in ["es", "fa"] {
            let t = &o["translations"][lang];
            assert!(t["title"].is_string() && t["summary"].is_string() && t["text"].is_string());
            assert_eq!(o["meta"]["models"][lang], "tiny.gguf");
        }
    }
    // The Spanish article: detected as Spanish, its Spanish "translation" is
    // a copy, its Persian one is generated.
    let es = &out[3];
    assert_eq!(es["lang"], "es");
    assert_eq!(es["translations"]["es"]["title"], es["title"]);
    assert_eq!(es["translations"]["es"]["summary"], es["summary"]);
    assert_ne!(es["translations"]["fa"]["title"], es["title"]);
    // Boilerplate was cleaned away before summarizing and translating.
    let text_es = out[0]["translations"]["es"]["text"].as_str().unwrap();
    assert_eq!(
        text_es.split("\n\n").count(),
        4,
        "paragraphs kept: {text_es}"
    );
    assert!(!out[0]["summary"].as_str().unwrap().contains("Share 1.2K"));
    assert!(
        out.iter()
            .map(|o| o["meta"]["output_tokens"].as_u64().unwrap())
            .sum::<u64>()
            > 0
    );
}

#[test]
fn abstractive_summary_with_a_causal_model() {
    let fx = Fixture::new();
    let o = run(&fx.job(&examples(), "abstractive", ""), &[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = fx.output();
    assert_eq!(out.len(), 5);
    for o in &out {
        assert_eq!(o["meta"]["models"]["summary"], "tiny.gguf");
        assert!(o["summary"].is_string());
    }
}

#[test]
fn two_workers_write_what_one_worker_writes() {
    let fx = Fixture::new();
    let cfg = fx.job(&examples(), "extractive", "");
    let o = run(&cfg, &["--threads", "1", "--workers", "1"]);
    assert_eq!(o.status.code(), Some(0));
    let strip = |v: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        v.into_iter()
            .map(|mut r| {
                r["meta"]["elapsed_ms"] = 0.into();
                r
            })
            .collect()
    };
    let one = strip(fx.output());
    let o = run(&cfg, &["--threads", "2", "--workers", "2"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(strip(fx.output()), one);
}

#[test]
fn sigkill_during_model_work_then_resume_delivers_each_record_once() {
    let fx = Fixture::new();
    // 400 articles built from the examples with fresh ids, plus bad lines.
    let base = read_jsonl(&examples());
    let mut body = String::new();
    let mut expected = 0;
    for i in 0..400 {
        if i % 50 == 7 {
            body.push_str("{\"id\": oops}\n");
        } else {
            let mut a = base[i % base.len()].clone();
            a["id"] = format!("k{i}").into();
            body.push_str(&serde_json::to_string(&a).unwrap());
            body.push('\n');
        }
        expected += 1;
    }
    let input = fx.path("many.jsonl");
    std::fs::write(&input, body).unwrap();
    // The articles repeat the five examples: without the segment cache off,
    // every window after the first would find its translations there and
    // the run would end before the kills.
    let cfg = fx.job(
        &input,
        "extractive",
        "[runtime]\nwindow = 8\nsegment-cache = 0\n",
    );
    let mut kills = 0;
    for (round, ms) in [400u64, 900, 1500].iter().enumerate() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["run", "--no-progress", "--config"])
            .arg(&cfg)
            .args(if round == 0 { vec![] } else { vec!["--resume"] })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(*ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    let o = run(&cfg, &["--resume"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(kills > 0, "finished before any kill");
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for r in fx.output() {
        *count
            .entry(r["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for e in read_jsonl(&fx.path("out/o.errors.jsonl")) {
        *count.entry(format!("line{}", e["line"])).or_default() += 1;
    }
    assert_eq!(count.len(), expected, "every record present");
    assert!(count.values().all(|&c| c == 1), "no record twice");
}

#[test]
fn segments_of_earlier_windows_are_reused_not_translated_again() {
    let fx = Fixture::new();
    // One article three times under other ids, one article a window.
    let first = read_jsonl(&examples()).remove(0);
    let mut body = String::new();
    for id in ["a", "b", "c"] {
        let mut r = first.clone();
        r["id"] = id.into();
        body.push_str(&format!("{r}\n"));
    }
    let input = fx.path("same.jsonl");
    std::fs::write(&input, body).unwrap();
    let translations = |out: &[serde_json::Value]| -> Vec<serde_json::Value> {
        out.iter().map(|r| r["translations"].clone()).collect()
    };
    let generated = |out: &[serde_json::Value]| -> Vec<u64> {
        out.iter()
            .map(|r| r["meta"]["output_tokens"].as_u64().unwrap())
            .collect()
    };

    let run_with = |runtime: &str| -> Vec<serde_json::Value> {
        let o = run(&fx.job(&input, "extractive", runtime), &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{err}");
        fx.output()
    };

    let cached = run_with("[runtime]\nwindow = 1\n");
    assert_eq!(cached.len(), 3);
    // the first window translates; the later ones find every segment
    assert!(generated(&cached)[0] > 0);
    assert_eq!(&generated(&cached)[1..], &[0, 0]);
    let t = translations(&cached);
    assert!(t[0]["es"]["text"].is_string());
    assert!(t.iter().all(|x| *x == t[0]));

    // with the cache off every window translates, to the same text
    let fresh = run_with("[runtime]\nwindow = 1\nsegment-cache = 0\n");
    assert!(
        generated(&fresh).iter().all(|&n| n > 0),
        "{:?}",
        generated(&fresh)
    );
    assert_eq!(translations(&fresh), t);
}

/// Bytes of a tiny file's weights that one decode step reads, counted
/// here from the header: every tensor but the embedding table (the Llama
/// files carry their own head), Q8_0 at 34 bytes a 32-value block.
fn tiny_step_bytes(path: &Path) -> u64 {
    use candle_core::quantized::{gguf_file::Content, GgmlDType};
    let mut f = std::fs::File::open(path).unwrap();
    let content = Content::read(&mut f).unwrap();
    assert!(content.tensor_infos.contains_key("output.weight"));
    content
        .tensor_infos
        .iter()
        .filter(|(name, _)| name.as_str() != "token_embd.weight")
        .map(|(_, t)| {
            let n = t.shape.elem_count() as u64;
            match t.ggml_dtype {
                GgmlDType::F32 => 4 * n,
                GgmlDType::Q8_0 => n / 32 * 34,
                other => panic!("unexpected {other:?}"),
            }
        })
        .sum()
}

/// `tidings bench` measures the read bandwidth after its raw measurement and
/// puts each causal model's one-sequence decode against the ceiling it sets:
/// the bandwidth over the bytes of weights a step reads.
#[test]
fn bench_puts_decoding_against_the_memory_ceiling() {
    let fx = Fixture::new();
    let cfg = fx.job(
        &examples(),
        "abstractive",
        "[runtime]\nthreads = 2\nworkers = 1\n",
    );
    let want_bytes = tiny_step_bytes(&fx.path("tiny.gguf"));
    for args in [
        &["--raw-only", "--prompt-tokens", "8", "--decode-tokens", "4"][..],
        &[
            "--articles",
            "1",
            "--prompt-tokens",
            "8",
            "--decode-tokens",
            "4",
        ][..],
    ] {
        let json = fx.path("bench.json");
        let o = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .env_remove("CANDLE_NUM_THREADS")
            .args(["bench", "--config"])
            .arg(&cfg)
            .args(args)
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{args:?}: {err}");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let read = &report["memory_read"];
        assert_eq!(read["threads"], 2, "{args:?}: {report}");
        let bandwidth = read["gb_per_s"].as_f64().unwrap() * 1e9;
        assert!(bandwidth > 1e8, "{args:?}: {bandwidth}");
        let raw = &report["raw"][0];
        assert_eq!(raw["model"], "tiny");
        assert_eq!(raw["step_weight_bytes"].as_u64(), Some(want_bytes));
        let ceiling = raw["decode_memory_ceiling_tokens_per_s"].as_f64().unwrap();
        let want = bandwidth / want_bytes as f64;
        assert!((ceiling - want).abs() <= want * 1e-9, "{ceiling} {want}");
        assert!(
            err.contains("memory read") && err.contains("on 2 threads"),
            "{err}"
        );
        assert!(err.contains("a decode step reads"), "{err}");
    }
}
