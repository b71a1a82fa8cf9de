//! Tiny random causal language models written as GGUF files, in the layout
//! llama.cpp gives real checkpoints: `general.architecture`, the
//! `{arch}.*` hyper-parameters, `tokenizer.ggml.*` vocabularies and tensors
//! named `token_embd.weight`, `blk.N.attn_q.weight`, ..., `output.weight`.
//!
//! Four architectures (llama, qwen2, qwen3, gemma3) with hidden size 32, two
//! blocks, four query heads over two key/value heads. Llama and Qwen files get
//! a byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`: the 256 byte
//! symbols, a few English merges, ChatML special tokens); Gemma 3 gets a
//! SentencePiece one (`"llama"`: pieces, scores, types, byte fallback, no
//! space prefix) with its turn tokens. Weights come from a seeded
//! xorshift generator (candle's CPU RNG cannot be seeded), so a seed always
//! gives the same file. Matrices are Q8_0 unless `f32` is asked for, so the
//! quantized matmul path runs as it does on real files.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::Result;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// Which architecture to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// What to write.
#[derive(Debug, Clone)]
pub struct Spec {
    pub arch: Arch,
    pub seed: u64,
    /// Keep matrices in f32 instead of Q8_0.
    pub f32: bool,
    /// Overrides `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// Overrides `general.architecture` (to test the unsupported case).
    pub architecture: Option<String>,
    /// Width of an attention head: [`HEAD_DIM`], or another for the
    /// families whose files give it (`attention.key_length`: Qwen3, Gemma
    /// 3), as Qwen3-0.6B's 16 heads of 128 on a width of 1024 do.
    pub head_dim: usize,
}

impl Spec {
    pub fn new(arch: Arch, seed: u64) -> Self {
        Spec {
            arch,
            seed,
            f32: false,
            eos: None,
            architecture: None,
            head_dim: HEAD_DIM,
        }
    }
}

pub const HIDDEN: usize = 32;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = HIDDEN / HEADS;
pub const FFN: usize = 64;
pub const BLOCKS: usize = 2;
pub const CONTEXT: u32 = 512;

/// Writes the model described by `spec` to `path`.
pub fn write(path: &Path, spec: &Spec) -> Result<()> {
    let (mut metadata, vocab) = match spec.arch {
        Arch::Gemma3 => sentencepiece_vocab(),
        _ => byte_level_vocab(spec.arch),
    };
    if let Some(eos) = spec.eos {
        metadata.retain(|(k, _)| k != "tokenizer.ggml.eos_token_id");
        metadata.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)));
    }
    let arch = spec.arch.name();
    let general = spec
        .architecture
        .clone()
        .unwrap_or_else(|| arch.to_string());
    metadata.push(("general.architecture".into(), Value::String(general)));
    metadata.push(("general.name".into(), Value::String(format!("tiny-{arch}"))));
    if spec.arch == Arch::Qwen3 {
        // llama.cpp's file type "all F32": without it candle's Qwen3 (the
        // tests' reference) builds its rotary tables in f16, which moves its
        // logits by about 1e-4 of their scale.
        metadata.push(("general.dtype".into(), Value::U32(0)));
    }
    let mut hyper = |key: &str, value: Value| metadata.push((format!("{arch}.{key}"), value));
    hyper("block_count", Value::U32(BLOCKS as u32));
    hyper("context_length", Value::U32(CONTEXT));
    hyper("embedding_length", Value::U32(HIDDEN as u32));
    hyper("feed_forward_length", Value::U32(FFN as u32));
    hyper("attention.head_count", Value::U32(HEADS as u32));
    hyper("attention.head_count_kv", Value::U32(KV_HEADS as u32));
    hyper("attention.layer_norm_rms_epsilon", Value::F32(1e-6));
    hyper("rope.freq_base", Value::F32(10_000.0));
    match spec.arch {
        Arch::Llama => hyper("rope.dimension_count", Value::U32(spec.head_dim as u32)),
        Arch::Qwen2 => {}
        Arch::Qwen3 | Arch::Gemma3 => {
            hyper("attention.key_length", Value::U32(spec.head_dim as u32));
            hyper("attention.value_length", Value::U32(spec.head_dim as u32));
        }
    }
    if spec.arch == Arch::Gemma3 {
        hyper("attention.sliding_window", Value::U32(64));
    }

    let mut rng = XorShift::new(spec.seed);
    let matrix_type = if spec.f32 {
        GgmlDType::F32
    } else {
        GgmlDType::Q8_0
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add =
        |name: String, shape: &[usize], scale: f32, offset: f32, dtype: GgmlDType| -> Result<()> {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|_| offset + scale * rng.uniform()).collect();
            let t = Tensor::from_vec(values, shape, &Device::Cpu)?;
            tensors.push((name, QTensor::quantize(&t, dtype)?));
            Ok(())
        };
    let linear = |fan_in: usize| (3.0 / fan_in as f32).sqrt();
    let kv = KV_HEADS * spec.head_dim;
    add(
        "token_embd.weight".into(),
        &[vocab, HIDDEN],
        1.0,
        0.0,
        matrix_type,
    )?;
    add(
        "output_norm.weight".into(),
        &[HIDDEN],
        0.1,
        1.0,
        GgmlDType::F32,
    )?;
    // Llama files carry their own output head; Qwen2 and Gemma 3 here tie it
    // to the embeddings, as Qwen2.5-0.5B and Gemma 3 do.
    if matches!(spec.arch, Arch::Llama | Arch::Qwen3) {
        add(
            "output.weight".into(),
            &[vocab, HIDDEN],
            linear(HIDDEN),
            0.0,
            matrix_type,
        )?;
    }
    for i in 0..BLOCKS {
        let b = |name: &str| format!("blk.{i}.{name}");
        add(b("attn_norm.weight"), &[HIDDEN], 0.1, 1.0, GgmlDType::F32)?;
        add(
            b("attn_q.weight"),
            &[HEADS * spec.head_dim, HIDDEN],
            linear(HIDDEN),
            0.0,
            matrix_type,
        )?;
        add(
            b("attn_k.weight"),
            &[kv, HIDDEN],
            linear(HIDDEN),
            0.0,
            matrix_type,
        )?;
        add(
            b("attn_v.weight"),
            &[kv, HIDDEN],
            linear(HIDDEN),
            0.0,
            matrix_type,
        )?;
        add(
            b("attn_output.weight"),
            &[HIDDEN, HEADS * spec.head_dim],
            linear(HIDDEN),
            0.0,
            matrix_type,
        )?;
        if spec.arch == Arch::Qwen2 {
            add(
                b("attn_q.bias"),
                &[HEADS * spec.head_dim],
                0.5,
                0.0,
                GgmlDType::F32,
            )?;
            add(b("attn_k.bias"), &[kv], 0.5, 0.0, GgmlDType::F32)?;
            add(b("attn_v.bias"), &[kv], 0.5, 0.0, GgmlDType::F32)?;
        }
        if matches!(spec.arch, Arch::Qwen3 | Arch::Gemma3) {
            add(
                b("attn_q_norm.weight"),
                &[spec.head_dim],
                0.1,
                1.0,
                GgmlDType::F32,
            )?;
            add(
                b("attn_k_norm.weight"),
                &[spec.head_dim],
                0.1,
                1.0,
                GgmlDType::F32,
            )?;
        }
        if spec.arch == Arch::Gemma3 {
            add(
                b("post_attention_norm.weight"),
                &[HIDDEN],
                0.1,
                1.0,
                GgmlDType::F32,
            )?;
            add(
                b("post_ffw_norm.weight"),
                &[HIDDEN],
                0.1,
                1.0,
                GgmlDType::F32,
            )?;
        }
        add(b("ffn_norm.weight"), &[HIDDEN], 0.1, 1.0, GgmlDType::F32)?;
        add(
            b("ffn_gate.weight"),
            &[FFN, HIDDEN],
            linear(HIDDEN),
            0.0,
            matrix_type,
        )?;
        add(
            b("ffn_up.weight"),
            &[FFN, HIDDEN],
            linear(HIDDEN),
            0.0,
            matrix_type,
        )?;
        add(
            b("ffn_down.weight"),
            &[HIDDEN, FFN],
            linear(FFN),
            0.0,
            matrix_type,
        )?;
    }

    let metadata_refs: Vec<(&str, &Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = BufWriter::new(File::create(path)?);
    gguf_file::write(&mut out, &metadata_refs, &tensor_refs)?;
    Ok(())
}

type Metadata = Vec<(String, Value)>;

fn strings<S: AsRef<str>>(items: &[S]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|s| Value::String(s.as_ref().to_string()))
            .collect(),
    )
}

/// GPT-2 style: the byte symbols, merges for a few frequent English pairs,
/// then the ChatML specials. Returns the metadata and the vocabulary size.
fn byte_level_vocab(arch: Arch) -> (Metadata, usize) {
    let mut tokens = byte_symbols();
    let merges = [
        ("Ġ", "t"),
        ("h", "e"),
        ("Ġt", "he"),
        ("i", "n"),
        ("e", "r"),
        ("a", "n"),
        ("Ġ", "a"),
        ("o", "n"),
        ("r", "e"),
        ("Ġ", "s"),
        ("e", "n"),
        ("a", "t"),
        ("Ġ", "w"),
        ("o", "r"),
        ("i", "s"),
        ("Ġ", "c"),
        ("e", "s"),
        ("Ġ", "T"),
        ("Ġ", "o"),
        ("e", "d"),
        ("i", "t"),
        ("Ġ", "p"),
        ("a", "l"),
        ("Ġ", "b"),
    ];
    for (a, b) in merges {
        tokens.push(format!("{a}{b}"));
    }
    let mut types = vec![1i32; tokens.len()];
    let first_special = tokens.len() as u32;
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(special.to_string());
        types.push(3);
    }
    let vocab = tokens.len();
    let merges: Vec<String> = merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
    let pre = if arch == Arch::Llama {
        "smollm"
    } else {
        "qwen2"
    };
    let metadata = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), strings(&tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), strings(&merges)),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(first_special),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(first_special + 2),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ];
    (metadata, vocab)
}

/// SentencePiece style, shaped like Gemma's: control tokens first, the
/// user-defined newline pieces, the 256 byte pieces, then normal pieces
/// with decreasing scores.
fn sentencepiece_vocab() -> (Metadata, usize) {
    let mut tokens: Vec<String> = Vec::new();
    let mut types: Vec<i32> = Vec::new();
    let mut scores: Vec<f32> = Vec::new();
    let mut push = |t: String, ty: i32, score: f32| {
        tokens.push(t);
        types.push(ty);
        scores.push(score);
    };
    for t in [
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<start_of_turn>",
        "<end_of_turn>",
    ] {
        push(t.to_string(), 3, -1000.0);
    }
    for t in ["\n", "\n\n"] {
        push(t.to_string(), 4, -1000.0);
    }
    for b in 0..=255u8 {
        push(format!("<0x{b:02X}>"), 6, 0.0);
    }
    let mut normal: Vec<String> = [
        "▁t", "he", "▁the", "in", "er", "an", "▁a", "on", "re", "▁s", "en", "at",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    normal.push("▁".to_string());
    normal.extend(
        ('a'..='z')
            .chain('A'..='Z')
            .chain('0'..='9')
            .map(|c| c.to_string()),
    );
    normal.extend(
        [".", ",", "!", "?", "'", ":", "-"]
            .iter()
            .map(|s| s.to_string()),
    );
    for (i, t) in normal.into_iter().enumerate() {
        push(t, 1, -(i as f32));
    }
    let vocab = tokens.len();
    let metadata = vec![
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".into(), strings(&tokens)),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(3)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
        ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)),
    ];
    (metadata, vocab)
}

/// GPT-2's printable stand-ins for the 256 byte values, in byte order.
pub fn byte_symbols() -> Vec<String> {
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect()
}

/// xorshift64*: a few lines, seedable, good enough for random weights.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        (bits as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}
