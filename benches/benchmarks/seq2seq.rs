//! Encoder-decoder decoding: one decoder step of each family at batch 1 and
//! 32, a whole greedy and beam-4 generation, batch planning, SentencePiece
//! tokenization and checkpoint loading.
//!
//! The networks have published sizes and seeded random weights (speed does
//! not depend on the values): Marian and M2M100 at `opus-mt-en-es`
//! dimensions (6+6 layers, d_model 512, 8 heads, ffn 2048, vocabulary
//! 65,001; M2M100 with its pre-norm layout), T5 at `flan-t5-small`
//! dimensions (8+8 layers, d_model 512, 6 heads of 64, gated-gelu ffn 1024,
//! vocabulary 32,128).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Activation, VarBuilder};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use tidings::generate::search::{self, EarlyStopping, Row, SearchConfig};
use tidings::models::bart::{BartConfig, BartNames, BartNet, Positions};
use tidings::models::seq2seq::{sinusoidal, Seq2SeqNet};
use tidings::models::t5::{T5Config, T5Net};

/// Seeded values in [-scale, scale) (xorshift; candle's CPU RNG cannot be seeded).
fn seeded(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

const D: usize = 512;
const FFN: usize = 2048;
const VOCAB: usize = 65_001;
const LAYERS: usize = 6;

fn bart_weights(pre_norm: bool) -> HashMap<String, Tensor> {
    let mut w = HashMap::new();
    let mut seed = 1u64;
    let mut put = |w: &mut HashMap<String, Tensor>, name: String, shape: &[usize]| {
        seed += 1;
        let scale = if name.ends_with("weight") && shape.len() == 2 {
            (1.0 / shape[1] as f32).sqrt()
        } else {
            0.02
        };
        let t = if name.contains("layer_norm") && name.ends_with("weight") {
            Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap()
        } else {
            seeded(shape, seed, scale)
        };
        w.insert(name, t);
    };
    put(&mut w, "model.shared.weight".into(), &[VOCAB, D]);
    put(&mut w, "final_logits_bias".into(), &[1, VOCAB]);
    for side in ["encoder", "decoder"] {
        for i in 0..LAYERS {
            let l = format!("model.{side}.layers.{i}");
            let mut attns = vec!["self_attn"];
            if side == "decoder" {
                attns.push("encoder_attn");
            }
            for a in attns {
                for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    put(&mut w, format!("{l}.{a}.{p}.weight"), &[D, D]);
                    put(&mut w, format!("{l}.{a}.{p}.bias"), &[D]);
                }
                put(&mut w, format!("{l}.{a}_layer_norm.weight"), &[D]);
                put(&mut w, format!("{l}.{a}_layer_norm.bias"), &[D]);
            }
            put(&mut w, format!("{l}.fc1.weight"), &[FFN, D]);
            put(&mut w, format!("{l}.fc1.bias"), &[FFN]);
            put(&mut w, format!("{l}.fc2.weight"), &[D, FFN]);
            put(&mut w, format!("{l}.fc2.bias"), &[D]);
            put(&mut w, format!("{l}.final_layer_norm.weight"), &[D]);
            put(&mut w, format!("{l}.final_layer_norm.bias"), &[D]);
        }
        if pre_norm {
            put(&mut w, format!("model.{side}.layer_norm.weight"), &[D]);
            put(&mut w, format!("model.{side}.layer_norm.bias"), &[D]);
        }
    }
    w
}

fn bart(pre_norm: bool, quantize: bool) -> BartNet {
    let weights = bart_weights(pre_norm);
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let offset = if pre_norm { 2 } else { 0 };
    let cfg = BartConfig {
        d_model: D,
        encoder_layers: LAYERS,
        decoder_layers: LAYERS,
        encoder_heads: 8,
        decoder_heads: 8,
        encoder_ffn: FFN,
        decoder_ffn: FFN,
        activation: if pre_norm {
            Activation::Relu
        } else {
            Activation::Silu
        },
        scale_embedding: true,
        pre_norm,
        eps: 1e-5,
        quantize: quantize.then_some(candle_core::quantized::GgmlDType::Q8_0),
    };
    let names = BartNames {
        model: "model",
        enc_embed: "model.shared.weight".into(),
        dec_embed: "model.shared.weight".into(),
        lm_head: None,
        logits_bias: (!pre_norm).then(|| "final_logits_bias".into()),
    };
    let positions = Positions {
        table: sinusoidal(512 + offset, D, (D / 2) as f64, &Device::Cpu).unwrap(),
        offset,
    };
    BartNet::load(cfg, vb, &names, positions).unwrap()
}

/// Rows of NTREX-like lengths (24 to 40 source tokens).
fn rows(n: usize, budget: usize) -> Vec<Row> {
    (0..n)
        .map(|i| Row {
            ids: (0..24 + (i * 7) % 17)
                .map(|j| (5 + (i * 131 + j * 17) % 30_000) as u32)
                .chain(std::iter::once(0))
                .collect(),
            budget,
        })
        .collect()
}

fn config(beams: usize) -> SearchConfig {
    SearchConfig {
        beam_size: beams,
        length_penalty: 1.0,
        early_stopping: EarlyStopping::False,
        decoder_start: 65_000,
        // Unreachable: every output runs to its budget (fixed work).
        eos: u32::MAX,
        forced_bos: None,
        forced_eos: None,
        suppress: vec![65_000],
        renormalize: false,
        repetition_guard: false,
    }
}

fn step_bench(c: &mut Criterion, family: &str, net: &dyn Seq2SeqNet) {
    let mut g = c.benchmark_group(format!("seq2seq/{family}/step"));
    g.sample_size(10);
    for batch in [1usize, 32] {
        let r = rows(batch, 16);
        let (ids, mask) = search::pad_batch(&r, 1, &Device::Cpu).unwrap();
        let enc = net.encode(&ids, &mask).unwrap();
        let mut state = net.start(&enc, &mask, 64).unwrap();
        let tokens = Tensor::new(vec![7u32; batch].as_slice(), &Device::Cpu).unwrap();
        for _ in 0..16 {
            net.step(&mut state, &tokens).unwrap();
        }
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, _| {
            // The step at position 16 (the clone shares the cache storage,
            // and every iteration writes the same values there).
            b.iter(|| {
                let mut s = state.clone();
                net.step(&mut s, &tokens).unwrap()
            })
        });
    }
    g.finish();
}

/// `flan-t5-small` dimensions: 8+8 layers, d_model 512, 6 heads of 64,
/// gated-gelu feed-forward 1024, vocabulary 32,128, untied head.
const T5_CONFIG: &str = r#"{
    "model_type": "t5", "vocab_size": 32128, "d_model": 512, "d_kv": 64,
    "d_ff": 1024, "num_layers": 8, "num_decoder_layers": 8, "num_heads": 6,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6, "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": false, "pad_token_id": 0, "eos_token_id": 1,
    "decoder_start_token_id": 0
}"#;

/// A T5 network of [`T5_CONFIG`]'s sizes with seeded weights, written to
/// `dir` as safetensors and loaded the way a checkpoint is.
fn t5(dir: &std::path::Path) -> T5Net {
    let cfg = T5Config::parse("bench-t5", T5_CONFIG).unwrap();
    let (d, inner, ff, v) = (cfg.d_model, cfg.inner(), cfg.d_ff, cfg.vocab_size);
    let buckets = cfg.relative_attention_num_buckets;
    let mut w: HashMap<String, Tensor> = HashMap::new();
    let mut seed = 100u64;
    let mut put = |name: String, shape: &[usize]| {
        seed += 1;
        let t = if name.ends_with("layer_norm.weight") {
            Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap()
        } else {
            seeded(shape, seed, (1.0 / shape[shape.len() - 1] as f32).sqrt())
        };
        w.insert(name, t);
    };
    put("shared.weight".into(), &[v, d]);
    put("lm_head.weight".into(), &[v, d]);
    for side in ["encoder", "decoder"] {
        let layers = if side == "encoder" {
            cfg.num_layers
        } else {
            cfg.num_decoder_layers
        };
        for i in 0..layers {
            let p = format!("{side}.block.{i}.layer");
            let mut attns = vec![format!("{p}.0.SelfAttention")];
            if side == "decoder" {
                attns.push(format!("{p}.1.EncDecAttention"));
            }
            for (j, a) in attns.iter().enumerate() {
                for q in ["q", "k", "v"] {
                    put(format!("{a}.{q}.weight"), &[inner, d]);
                }
                put(format!("{a}.o.weight"), &[d, inner]);
                put(format!("{p}.{j}.layer_norm.weight"), &[d]);
            }
            if i == 0 {
                put(
                    format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
                    &[buckets, cfg.num_heads],
                );
            }
            let f = attns.len();
            put(format!("{p}.{f}.DenseReluDense.wi_0.weight"), &[ff, d]);
            put(format!("{p}.{f}.DenseReluDense.wi_1.weight"), &[ff, d]);
            put(format!("{p}.{f}.DenseReluDense.wo.weight"), &[d, ff]);
            put(format!("{p}.{f}.layer_norm.weight"), &[d]);
        }
        put(format!("{side}.final_layer_norm.weight"), &[d]);
    }
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&w, &path).unwrap();
    T5Net::load("bench-t5", &cfg, &path, &Device::Cpu).unwrap()
}

fn seq2seq(c: &mut Criterion) {
    let marian = bart(false, false);
    step_bench(c, "marian-opus-size", &marian);
    let marian_q8 = bart(false, true);
    step_bench(c, "marian-opus-size-q8_0", &marian_q8);
    let m2m = bart(true, false);
    step_bench(c, "m2m100-opus-size", &m2m);
    let dir = tempfile::tempdir().unwrap();
    let t5 = t5(dir.path());
    step_bench(c, "t5-flan-small-size", &t5);
    drop(t5);

    // Whole generations: 32 sentences, 16 new tokens each.
    let mut g = c.benchmark_group("seq2seq/marian-opus-size/generate32x16");
    g.sample_size(10);
    let r = rows(32, 16);
    g.throughput(Throughput::Elements(32 * 16));
    for beams in [1usize, 4] {
        g.bench_with_input(BenchmarkId::new("beam", beams), &beams, |b, &k| {
            b.iter(|| search::generate(&marian, &r, &config(k), 1).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("seq2seq/plan");
    let lens: Vec<usize> = (0..10_000).map(|i| 5 + (i * 37) % 90).collect();
    g.throughput(Throughput::Elements(lens.len() as u64));
    g.bench_function("10k inputs", |b| {
        b.iter(|| tidings::generate::batch::plan(&lens, 4096, 1))
    });
    g.finish();

    // SentencePiece tokenization and a checkpoint load (the Marian fixture).
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seq2seq/marian");
    let spm_path = std::path::PathBuf::from(format!("{fixture}/source.spm"));
    let spm = tidings::models::spm::SpmModel::open("bench", &spm_path)
        .unwrap()
        .tokenizer()
        .unwrap();
    let sentences: Vec<String> = super::articles()
        .iter()
        .filter_map(|a| a["text"].as_str().map(str::to_string))
        .collect();
    let mut g = c.benchmark_group("seq2seq/spm");
    g.throughput(Throughput::Bytes(
        sentences.iter().map(|s| s.len() as u64).sum(),
    ));
    g.bench_function("encode articles", |b| {
        b.iter(|| {
            sentences
                .iter()
                .map(|s| spm.encode(s.as_str(), false).unwrap().len())
                .sum::<usize>()
        })
    });
    g.finish();
    let spec = tidings::config::ModelSpec {
        name: "bench".into(),
        source_text: String::new(),
        source: tidings::models::hub::ModelSource::Path(fixture.into()),
        prefix: String::new(),
        generation: Default::default(),
        quantize: None,
    };
    c.bench_function("seq2seq/load marian fixture", |b| {
        b.iter(|| {
            tidings::models::load(
                &spec,
                tidings::models::hub::FetchPolicy::CacheOnly,
                &Device::Cpu,
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, seq2seq);
