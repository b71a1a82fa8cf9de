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
