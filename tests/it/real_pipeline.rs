//! The whole pipeline on real models and real news: MiniLM summaries, Qwen
//! 0.5B and SmolLM2 translations of NTREX-128 articles. The models come from
//! the project's model cache (`make test` fetches them first); the articles
//! from `../shared/data/ntrex/`. Where either is missing the tests say so
//! and pass, except under `CI=true`, where they fail.

use crate::common::{in_ci, ntrex};
use std::path::Path;
use std::process::Command;

use tidings::models::packages;
use tidings::text::langid;

fn cached(models: &[&str]) -> bool {
    for m in models {
        if !packages::is_cached(m) {
            assert!(
                !in_ci(),
                "model `{m}` is not cached under CI (make test fetches it)"
            );
            eprintln!("skipped: model `{m}` not cached; run `make fetch-test-models`");
            return false;
        }
    }
    true
}

fn run_job(
    dir: &Path,
    input: &Path,
    translator: &str,
    extra: &str,
    limit: u32,
) -> Vec<serde_json::Value> {
    let cfg = dir.join("job.toml");
    std::fs::write(
        &cfg,
        format!(
            "[input]\npath = \"{}\"\n[output]\npath = \"out.jsonl\"\n\
             [summary]\nmodel = \"minilm\"\nsentences = 2\n\
             [translate]\ntargets = [\"es\", \"fa\"]\nfields = [\"title\", \"summary\"]\n\
             models = {{ es = \"t\", fa = \"t\" }}\n\
             [models.minilm]\nsource = \"pkg:all-minilm-l6-v2\"\n\
             [models.t]\nsource = \"pkg:{translator}\"\n{extra}",
            input.display()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args([
            "run",
            "--no-progress",
            "--limit",
            &limit.to_string(),
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    std::fs::read_to_string(dir.join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn inputs(path: &Path, n: usize) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .take(n)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn arabic_script_share(s: &str) -> f64 {
    let letters: Vec<char> = s.chars().filter(|c| c.is_alphabetic()).collect();
    let arabic = letters
        .iter()
        .filter(|c| {
            ('\u{0600}'..='\u{06FF}').contains(*c) || ('\u{FB50}'..='\u{FEFF}').contains(*c)
        })
        .count();
    arabic as f64 / letters.len().max(1) as f64
}

/// Summaries are sentences of the article, in story order, shorter than it;
/// ids and order match the input.
fn check_structure(input: &[serde_json::Value], out: &[serde_json::Value]) {
    assert_eq!(out.len(), input.len());
    for (i, o) in input.iter().zip(out) {
        assert_eq!(o["id"], i["id"], "ids and order match the input");
        assert_eq!(o["lang"], "en");
        let text = i["text"].as_str().unwrap();
        let summary = o["summary"].as_str().unwrap();
        assert!(
            summary.len() < text.len(),
            "summary shorter than the article"
        );
        let mut from = 0;
        let sentences: Vec<&str> = i["sentences"].as_array().unwrap()[1..]
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let picked: Vec<usize> = sentences
            .iter()
            .enumerate()
            .filter(|(_, s)| summary.contains(*s))
            .map(|(k, _)| k)
            .collect();
        assert!(
            !picked.is_empty(),
            "summary made of article sentences: {summary}"
        );
        for k in picked {
            let pos = summary.find(sentences[k]).unwrap();
            assert!(pos >= from, "sentences in story order");
            from = pos;
        }
        assert!(o["meta"]["output_tokens"].as_u64().unwrap() > 0);
        assert!(o["meta"]["models"]["es"].as_str().is_some());
    }
}

#[test]
fn qwen_half_b_translates_ntrex_into_spanish_and_persian() {
    let Some(data) = ntrex() else { return };
    if !cached(&["all-minilm-l6-v2", "qwen2.5-coder-0.5b-instruct"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let n = 3;
    let out = run_job(
        dir.path(),
        &data,
        "qwen2.5-coder-0.5b-instruct",
        "",
        n as u32,
    );
    let input = inputs(&data, n);
    check_structure(&input, &out);
    for o in &out {
        let es = &o["translations"]["es"];
        let es_text = format!(
            "{} {}",
            es["title"].as_str().unwrap(),
            es["summary"].as_str().unwrap()
        );
        assert_eq!(
            langid::detect(&es_text).map(|l| l.code),
            Some("es"),
            "Spanish output detected as Spanish: {es_text}"
        );
        let fa = &o["translations"]["fa"];
        let fa_text = format!(
            "{} {}",
            fa["title"].as_str().unwrap(),
            fa["summary"].as_str().unwrap()
        );
        assert!(
            arabic_script_share(&fa_text) > 0.8,
            "Persian output in Persian script: {fa_text}"
        );
    }
}

#[test]
fn smollm2_pipeline_keeps_ids_order_and_summaries() {
    let Some(data) = ntrex() else { return };
    if !cached(&["all-minilm-l6-v2", "smollm2-135m-instruct"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let n = 6;
    let out = run_job(
        dir.path(),
        &data,
        "smollm2-135m-instruct",
        "[generation]\nmax-new-tokens = 48\n[runtime]\nwindow = 4\n",
        n as u32,
    );
    check_structure(&inputs(&data, n), &out);
    for o in &out {
        for lang in ["es", "fa"] {
            let t = o["translations"][lang]["title"].as_str().unwrap();
            assert!(!t.trim().is_empty(), "{lang} title translated");
        }
    }
}
