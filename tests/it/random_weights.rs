//! `scripts/random_weights.py`: a model's skeleton (its files without the
//! weights) filled with seeded random weights has the original's tensors,
//! types and tokenizer, loads, and computes finite numbers, with the end
//! token out of reach; the same seed gives the same bytes. The slim GPU bundle (`scripts/build-cuda.sh
//! --slim`) carries its models this way.

use crate::common::in_ci;
use crate::common::{tiny_bert, tiny_gguf};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Content;
use candle_core::Device;
use tidings::generate::decode::argmax;
use tidings::models::causal::CausalModel;
use tidings::models::extractive::Extractive;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/random_weights.py");

/// Runs the script; `None` (with a note) where python3 is missing, except
/// under CI.
fn script(args: &[&Path]) -> Result<Option<()>> {
    let out = match Command::new("python3").arg(SCRIPT).args(args).output() {
        Ok(out) => out,
        Err(e) if !in_ci() => {
            eprintln!("skipped: python3 could not be started ({e})");
            return Ok(None);
        }
        Err(e) => return Err(e).context("python3 under CI"),
    };
    if !out.status.success() {
        bail!(
            "random_weights.py {:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Some(()))
}

fn skeleton_and_fill(src: &Path, work: &Path, seed: &str) -> Result<Option<PathBuf>> {
    let skeleton = work.join("skeleton");
    let out = work.join(format!("filled-{seed}"));
    if script(&[Path::new("skeleton"), src, &skeleton])?.is_none() {
        return Ok(None);
    }
    script(&[
        Path::new("fill"),
        &skeleton,
        &out,
        Path::new("--seed"),
        Path::new(seed),
    ])?;
    Ok(Some(out))
}

fn header(path: &Path) -> Result<Content> {
    Ok(Content::read(&mut File::open(path)?)?)
}

/// Each tensor's bytes, by name.
fn tensor_bytes(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let content = header(path)?;
    let data = std::fs::read(path)?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| {
            let info = &content.tensor_infos[name];
            let elements = info.shape.elem_count();
            let bytes = elements / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
            let start = content.tensor_data_offset as usize + info.offset as usize;
            (name.clone(), data[start..start + bytes].to_vec())
        })
        .collect())
}

fn check_gguf(spec: &tiny_gguf::Spec) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("model");
    std::fs::create_dir(&src)?;
    let original = src.join("tiny.gguf");
    tiny_gguf::write(&original, spec)?;
    let Some(filled) = skeleton_and_fill(&src, dir.path(), "1")? else {
        return Ok(());
    };
    let filled = filled.join("tiny.gguf");
    let again = skeleton_and_fill(&src, &dir.path().join("again"), "1")?.unwrap();
    let other = skeleton_and_fill(&src, &dir.path().join("other"), "2")?.unwrap();

    // The same size, metadata and tensor table; other weights.
    assert_eq!(
        std::fs::metadata(&original)?.len(),
        std::fs::metadata(&filled)?.len()
    );
    let (a, b) = (header(&original)?, header(&filled)?);
    assert_eq!(a.tensor_data_offset, b.tensor_data_offset);
    assert_eq!(a.metadata.len(), b.metadata.len());
    for (name, info) in &a.tensor_infos {
        let got = &b.tensor_infos[name];
        assert_eq!(
            (info.shape.dims(), info.ggml_dtype, info.offset),
            (got.shape.dims(), got.ggml_dtype, got.offset),
            "{name}"
        );
    }
    let (orig, rand) = (tensor_bytes(&original)?, tensor_bytes(&filled)?);
    let mut changed = 0;
    for ((name, o), (_, r)) in orig.iter().zip(&rand) {
        if name.ends_with("norm.weight") {
            // Norm gains are 1 (f32), whatever the seed.
            let ones: Vec<f32> = r
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert!(ones.iter().all(|&x| x == 1.0), "{name}: {ones:?}");
        } else if o != r {
            changed += 1;
        }
    }
    assert!(
        changed * 10 >= orig.len() * 7,
        "only {changed} of {} tensors got new weights",
        orig.len()
    );
    assert_eq!(
        std::fs::read(&filled)?,
        std::fs::read(again.join("tiny.gguf"))?
    );
    assert_ne!(
        std::fs::read(&filled)?,
        std::fs::read(other.join("tiny.gguf"))?
    );

    // It loads with the original's tokenizer and decodes finite logits.
    let mut model = CausalModel::load("random", &filled, None, &Device::Cpu)?;
    let ids = model
        .tokenizer()
        .encode("The cat sat on the mat.", false)
        .map_err(anyhow::Error::msg)?
        .get_ids()
        .to_vec();
    // The end token's row of the head is zeros: its logit is 0, below the
    // largest of the others, so a generation runs to its cap.
    let eos = b.metadata["tokenizer.ggml.eos_token_id"].to_u32()? as usize;
    let mut logits = model.forward_logits(&ids, 0)?;
    for pos in ids.len()..ids.len() + 8 {
        assert!(logits.iter().all(|x| x.is_finite()), "logits at {pos}");
        assert_eq!(logits[eos], 0.0, "end token's logit at {pos}");
        let next = argmax(&logits);
        assert_ne!(next as usize, eos);
        logits = model.forward_logits(&[next], pos)?;
    }
    Ok(())
}

#[test]
fn a_quantized_gguf_skeleton_filled_with_random_weights_loads_and_decodes() -> Result<()> {
    check_gguf(&tiny_gguf::Spec::new(tiny_gguf::Arch::Qwen2, 3))
}

#[test]
fn a_float_gguf_skeleton_filled_with_random_weights_loads_and_decodes() -> Result<()> {
    let mut spec = tiny_gguf::Spec::new(tiny_gguf::Arch::Llama, 4);
    spec.f32 = true;
    check_gguf(&spec)
}

#[test]
fn a_safetensors_skeleton_filled_with_random_weights_embeds() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("bert");
    std::fs::create_dir(&src)?;
    tiny_bert::write(&src, 42)?;
    let Some(filled) = skeleton_and_fill(&src, dir.path(), "7")? else {
        return Ok(());
    };
    // The small files travel as they are; the weights are new, same size.
    for entry in std::fs::read_dir(&src)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name();
        let (a, b) = (
            std::fs::read(src.join(&name))?,
            std::fs::read(filled.join(&name))?,
        );
        assert_eq!(a.len(), b.len(), "{name:?}");
        if name == "model.safetensors" {
            assert_ne!(a, b);
        } else {
            assert_eq!(a, b, "{name:?}");
        }
    }
    let original = Extractive::load("tiny", &src, &Device::Cpu)?;
    let random = Extractive::load("random", &filled, &Device::Cpu)?;
    let sentences = ["The cat sleeps.", "Prices rose sharply in May."];
    let (a, b) = (original.embed(&sentences)?, random.embed(&sentences)?);
    for (x, y) in a.iter().zip(&b) {
        assert!(y.iter().all(|v| v.is_finite()));
        let norm: f32 = y.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
        assert_ne!(x, y);
    }
    Ok(())
}

/// `scripts/gpu-bench.sh` in a slim bundle, as `scripts/build-cuda.sh
/// --slim` packs one, with this build standing in for the CUDA one: its
/// CPU half unpacks the binary, fills the model from its skeleton, runs
/// the job and packs the results. (The GPU half needs a GPU.)
#[test]
fn a_slim_bundle_runs_its_cpu_half_from_skeletons() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir()?;
    let bundle = dir.path().join("bundle");
    for sub in ["bin", "jobs", "data"] {
        std::fs::create_dir_all(bundle.join(sub))?;
    }
    for file in ["gpu-bench.sh", "random_weights.py"] {
        std::fs::copy(root.join("scripts").join(file), bundle.join(file))?;
    }
    std::fs::copy(
        root.join("examples/articles.jsonl"),
        bundle.join("data/articles.jsonl"),
    )?;
    // the binary xz-compressed, as --slim packs it (fast preset)
    let packed = Command::new("python3")
        .args([
            "-c",
            "import lzma, sys; lzma.open(sys.argv[2], 'wb', preset=0).write(open(sys.argv[1], 'rb').read())",
        ])
        .arg(env!("CARGO_BIN_EXE_tidings"))
        .arg(bundle.join("bin/tidings.xz"))
        .status();
    match packed {
        Ok(s) if s.success() => {}
        _ if !in_ci() => {
            eprintln!("skipped: python3 could not compress the binary");
            return Ok(());
        }
        other => bail!("compressing the binary under CI: {other:?}"),
    }
    // the model as a skeleton
    let model = dir.path().join("model");
    std::fs::create_dir(&model)?;
    tiny_gguf::write(
        &model.join("tiny.gguf"),
        &tiny_gguf::Spec::new(tiny_gguf::Arch::Qwen2, 5),
    )?;
    script(&[
        Path::new("skeleton"),
        &model,
        &bundle.join("skeletons/tiny"),
    ])?;
    std::fs::write(
        bundle.join("jobs/tiny.toml"),
        "[input]\npath = \"../data/articles.jsonl\"\n\n[output]\npath = \"../out/tiny.jsonl\"\n\n\
         [translate]\ntargets = [\"es\"]\nfields = [\"title\"]\nmodels = { es = \"tiny\" }\n\n\
         [models.tiny]\nsource = \"path:../models/tiny/tiny.gguf\"\n\n\
         [generation]\nmax-new-tokens = 8\n\n[runtime]\ndevice = \"cuda\"\n",
    )?;

    let out = dir.path().join("results");
    let pack = dir.path().join("results.tar.gz");
    let run = Command::new("bash")
        .arg(bundle.join("gpu-bench.sh"))
        .args(["--cpu-only", "--articles", "2", "--budget", "300", "--out"])
        .arg(&out)
        .arg("--pack")
        .arg(&pack)
        .env("CPU_THREADS", "1")
        .env_remove("TIDINGS_CACHE")
        .env_remove("OUT")
        .output()?;
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "gpu-bench.sh failed: {log}");
    assert!(bundle.join("bin/tidings").exists(), "{log}");
    assert!(bundle.join("models/tiny/tiny.gguf").exists(), "{log}");
    let host = std::fs::read_to_string(out.join("host.txt"))?;
    assert!(host.contains("random weights"), "{host}");
    let summary = std::fs::read_to_string(out.join("summary.tsv"))?;
    let row: Vec<&str> = summary
        .lines()
        .find(|l| l.starts_with("tiny\t"))
        .unwrap_or_else(|| panic!("no row for the job: {summary}"))
        .split('\t')
        .collect();
    // no GPU figure; a CPU figure of articles a minute
    assert_eq!(row[1], "-", "{summary}");
    assert!(row[2].parse::<f64>()? > 0.0, "{summary}");
    assert!(std::fs::metadata(&pack)?.len() > 0);
    Ok(())
}
