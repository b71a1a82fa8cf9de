//! Causal (GGUF) decoding: the Q8_0 product that dominates the packaged
//! SmolLM2 and Qwen2.5-0.5B files (our kernel against candle's `QMatMul`,
//! at Qwen2.5-0.5B's feed-forward shape, 1, 32 and 200 rows), the Q4_K and
//! Q6_K ones of Qwen2.5-1.5B (1, 8 and 200 rows, and one row with the
//! weights in memory); one decoder step of each
//! packaged causal family (SmolLM2-135M for Llama, Qwen2.5-Coder-0.5B for
//! Qwen2, Gemma 3 270M) at batch 1 and 32 after
//! a 64-token prompt; loading the packaged GGUF models; and the extractive
//! summary's sentence embeddings (all-MiniLM-L6-v2).
//!
//! The model benches need their package in the model cache (`tidings
//! models fetch --config ...`); without it each says so and is left out.
//! Throughput of the products is in multiply-adds.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use tidings::models::causal::CausalModel;
use tidings::models::extractive::Extractive;
use tidings::models::f32_gemm::PackedF32;
use tidings::models::kquant;
use tidings::models::packages;
use tidings::models::q8_0::{Q8Matrix, QLinear};
use tidings::seeded::values;

fn q8_0_product(c: &mut Criterion) {
    // Qwen2.5-0.5B's gate/up projection: 896 inputs, 4864 outputs.
    let (k, n) = (896, 4864);
    let w = Tensor::from_vec(values(n * k, 1), (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
    let ours = Q8Matrix::from_qtensor(&q).unwrap();
    let candle = QMatMul::from_qtensor(q).unwrap();
    let mut g = c.benchmark_group("q8_0 product 896x4864");
    g.sample_size(20);
    for m in [1usize, 32, 200] {
        let x = Tensor::from_vec(values(m * k, 2 + m as u64), (m, k), &Device::Cpu).unwrap();
        g.throughput(Throughput::Elements((m * n * k) as u64));
        g.bench_with_input(BenchmarkId::new("candle", m), &x, |b, x| {
            b.iter(|| candle.forward(x).unwrap())
        });
        match &ours {
            Some(ours) => {
                g.bench_with_input(BenchmarkId::new("tidings", m), &x, |b, x| {
                    b.iter(|| ours.forward(x).unwrap())
                });
            }
            None => {
                eprintln!("q8_0 product: this CPU does not run our kernel (x86-64 AVX2/FMA/F16C)")
            }
        }
    }
    g.finish();
}

/// The Q4_K and Q6_K products of the packaged Qwen2.5-Coder-1.5B at its
/// feed-forward shape (1536 inputs, 8960 outputs): candle's `QMatMul`
/// against `QLinear` (our K-quant kernel where it runs), at 1, 8 and 200
/// rows. One matrix, so the weights stay in the caches here, unlike a
/// model's (`tidings bench` measures decoding with them in memory).
fn k_quant_product(c: &mut Criterion) {
    let (k, n) = (1536, 8960);
    let w = Tensor::from_vec(values(n * k, 5), (n, k), &Device::Cpu).unwrap();
    for (dtype, name) in [(GgmlDType::Q4K, "q4_k"), (GgmlDType::Q6K, "q6_k")] {
        let candle = QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap()).unwrap();
        let ours = QLinear::new(true, QTensor::quantize(&w, dtype).unwrap()).unwrap();
        if !kquant::available() {
            eprintln!("{name} product: this CPU does not run our kernel (AVX-512 VNNI)");
        }
        let mut g = c.benchmark_group(format!("{name} product 1536x8960"));
        g.sample_size(20);
        for m in [1usize, 8, 200] {
            let x = Tensor::from_vec(values(m * k, 6 + m as u64), (m, k), &Device::Cpu).unwrap();
            g.throughput(Throughput::Elements((m * n * k) as u64));
            g.bench_with_input(BenchmarkId::new("candle", m), &x, |b, x| {
                b.iter(|| candle.forward(x).unwrap())
            });
            g.bench_with_input(BenchmarkId::new("tidings", m), &x, |b, x| {
                b.iter(|| ours.forward(x).unwrap())
            });
        }
        g.finish();
    }
}

/// One-row Q4_K and Q6_K products (a decode step of one sequence) with the
/// weights in memory, as a model's are: 17 copies of the 1536x8960 matrix
/// stacked into one of 152,320 rows (about the 1.5B model's output head),
/// 135 MB of Q4_K tiles or 197 MB of Q6_K ones, several times the L3 cache.
/// Throughput in bytes of tiles read, to set against the machine's read
/// bandwidth (`tidings bench` prints it).
fn k_quant_streaming(c: &mut Criterion) {
    let (k, n, copies) = (1536, 8960, 17);
    if !kquant::available() {
        eprintln!("k-quant streaming: this CPU does not run our kernel (AVX-512 VNNI)");
        return;
    }
    let w = Tensor::from_vec(values(n * k, 7), (n, k), &Device::Cpu).unwrap();
    let x = values(k, 8);
    let mut g = c.benchmark_group("k-quant one row, weights in memory");
    g.sample_size(10);
    for (dtype, name, bits) in [
        (GgmlDType::Q4K, "q4_k", 4.625),
        (GgmlDType::Q6K, "q6_k", 6.75),
    ] {
        let part = kquant::KMatrix::from_qtensor(&QTensor::quantize(&w, dtype).unwrap())
            .unwrap()
            .unwrap();
        let big = kquant::KMatrix::stack(&vec![&part; copies]).unwrap();
        let bytes = (big.rows() * big.cols()) as f64 * bits / 8.0;
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function(format!("{name} {}x{k}", big.rows()), |b| {
            b.iter(|| big.matmul(&x, 1))
        });
    }
    g.finish();
}

/// The output head of an OPUS-MT-sized Marian (512 inputs, 65,001 outputs):
/// candle's float matmul and ours, candle's Q8_0 and ours, at the row
/// counts of decoding.
fn head_product(c: &mut Criterion) {
    let (k, n) = (512, 65_001);
    let w = Tensor::from_vec(values(n * k, 3), (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
    let ours = Q8Matrix::from_qtensor(&q).unwrap();
    let candle = QMatMul::from_qtensor(q).unwrap();
    let packed = PackedF32::new(&w, None).unwrap();
    let mut g = c.benchmark_group("head product 512x65001");
    g.sample_size(10);
    for m in [1usize, 32, 64] {
        let x = Tensor::from_vec(values(m * k, 4 + m as u64), (m, k), &Device::Cpu).unwrap();
        g.throughput(Throughput::Elements((m * n * k) as u64));
        g.bench_with_input(BenchmarkId::new("f32", m), &x, |b, x| {
            b.iter(|| x.matmul(&w.t().unwrap()).unwrap())
        });
        if let Some(packed) = &packed {
            g.bench_with_input(BenchmarkId::new("tidings f32", m), &x, |b, x| {
                b.iter(|| packed.forward(x).unwrap())
            });
        }
        g.bench_with_input(BenchmarkId::new("candle q8_0", m), &x, |b, x| {
            b.iter(|| candle.forward(x).unwrap())
        });
        if let Some(ours) = &ours {
            g.bench_with_input(BenchmarkId::new("tidings q8_0", m), &x, |b, x| {
                b.iter(|| ours.forward(x).unwrap())
            });
        }
    }
    g.finish();
}

/// The packaged model's path, or `None` (and a note) when it is not in
/// the model cache.
fn cached(package: &str, job: &str) -> Option<std::path::PathBuf> {
    if !packages::is_cached(package) {
        eprintln!(
            "{package}: left out, not in the model cache \
             (`tidings models fetch --config JOB` with {job})"
        );
        return None;
    }
    Some(packages::fetch(package).unwrap())
}

/// Times `iters` decoder steps (`step(model, i)` for the `i`-th step of a
/// run) in runs of at most [`STEADY_RUN`] on a fresh copy of `primed`. A
/// copy shares the prompt's cache until its first step, which moves it
/// into buffers of its own with room for a few hundred steps; that first
/// step is left out of the timing, so the figure is a step of an ongoing
/// generation (positions 66 to 129 after a 64-token prompt).
fn steady_steps(
    primed: &CausalModel,
    iters: u64,
    mut step: impl FnMut(&mut CausalModel, usize),
) -> std::time::Duration {
    let mut total = std::time::Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let run = left.min(STEADY_RUN);
        let mut m = primed.clone();
        step(&mut m, 0);
        let t = std::time::Instant::now();
        for i in 1..=run as usize {
            step(&mut m, i);
        }
        total += t.elapsed();
        left -= run;
    }
    total
}

/// Most steps timed on one copy of the primed model.
const STEADY_RUN: u64 = 64;

/// One decoder step of a packaged GGUF model after a 64-token prompt (see
/// [`steady_steps`]): at batch 1, and at batch 32 (32 different prompts)
/// where the family decodes batches (every packaged one does).
fn decoder_step(c: &mut Criterion, package: &str, job: &str) {
    let Some(path) = cached(package, job) else {
        return;
    };
    let mut model = CausalModel::load(package, &path, None, &Device::Cpu).unwrap();
    let prompt: Vec<u32> = (0..64u32).map(|i| 300 + i * 37 % 5000).collect();
    let mut g = c.benchmark_group(format!("causal step {package}"));
    g.sample_size(20);

    // batch 1: the prompt's cache, then one token
    let mut one = model.clone();
    let logits = one.forward_logits(&prompt, 0).unwrap();
    let next = tidings::generate::decode::argmax(&logits);
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("batch", 1), |b| {
        b.iter_custom(|iters| {
            steady_steps(&one, iters, |m, i| {
                m.forward_logits(&[next], prompt.len() + i).unwrap();
            })
        })
    });
    if !model.batches() {
        g.finish();
        return;
    }

    // batch 32: 32 different prompts of 64 tokens, then one token each
    let prompts: Vec<Vec<u32>> = (0..32)
        .map(|r| {
            let mut p = prompt.clone();
            p.rotate_left(r);
            p
        })
        .collect();
    model.forward_rows(&prompts).unwrap();
    let tokens: Vec<u32> = (0..32).map(|r| 400 + r).collect();
    g.throughput(Throughput::Elements(32));
    g.bench_function(BenchmarkId::new("batch", 32), |b| {
        b.iter_custom(|iters| {
            steady_steps(&model, iters, |m, _| {
                m.step_rows(&tokens).unwrap();
            })
        })
    });
    g.finish();
}

/// Loading packaged models from the cache (GGUF parsing, our kernels'
/// re-laid weights, the tokenizer): what every run pays before its first
/// article.
fn model_load(c: &mut Criterion) {
    let mut g = c.benchmark_group("model load");
    g.sample_size(10);
    for (package, config) in [
        ("smollm2-135m-instruct", "configs/smollm2.toml"),
        ("qwen2.5-coder-0.5b-instruct", "configs/demo-small.toml"),
    ] {
        let Some(path) = cached(package, config) else {
            continue;
        };
        g.bench_function(package, |b| {
            b.iter(|| CausalModel::load(package, &path, None, &Device::Cpu).unwrap())
        });
    }
    g.finish();
}

/// Sentence embeddings of the extractive summary (the packaged
/// all-MiniLM-L6-v2) over the NTREX sentences, in its own length-sorted
/// batches.
fn extractive_embed(c: &mut Criterion) {
    let package = "all-minilm-l6-v2";
    let Some(path) = cached(package, "configs/demo.toml") else {
        return;
    };
    let model = Extractive::load(package, &path, &Device::Cpu).unwrap();
    let sentences: Vec<String> = super::articles()
        .iter()
        .filter_map(|a| a["text"].as_str())
        .flat_map(|t| {
            tidings::text::segment::sentences(t)
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .take(256)
        .collect();
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let mut g = c.benchmark_group("extractive embed all-minilm-l6-v2");
    g.sample_size(10);
    g.throughput(Throughput::Elements(refs.len() as u64));
    g.bench_function(format!("{} sentences", refs.len()), |b| {
        b.iter(|| model.embed(&refs).unwrap())
    });
    g.finish();
}

fn causal(c: &mut Criterion) {
    q8_0_product(c);
    k_quant_product(c);
    k_quant_streaming(c);
    head_product(c);
    decoder_step(c, "smollm2-135m-instruct", "configs/smollm2.toml");
    decoder_step(c, "qwen2.5-coder-0.5b-instruct", "configs/demo-small.toml");
    decoder_step(
        c,
        "gemma3-270m",
        "a job whose model source is pkg:gemma3-270m",
    );
    model_load(c);
    extractive_embed(c);
}

criterion_group!(benches, causal);
