//! An 8-bit vocabulary head with one scale per output row, for the
//! quantized encoder-decoder families on CPUs with AVX-512 VNNI.
//!
//! With `quantize = "q8_0"` the layers keep candle's Q8_0 product, but the
//! output head (65,001 outputs by 512 inputs for OPUS-MT) is a third of a
//! beam-4 step's products, and in Q8_0 every 32-value block has its own
//! scale: each `vpdpbusd` (64 multiply-adds) then needs a conversion, a
//! multiply and a fused multiply-add in f32 to apply the two block scales
//! (profile of a beam-4 run: our Q8_0 head kernel 35% of the time at about a
//! quarter of the VNNI peak). Here the weights are quantized per output row
//! (`scale = max|w_row| / 127`) and the activations per input row, so a
//! whole dot product accumulates in 32-bit integers and is scaled once: one
//! `vpdpbusd` per 64 multiply-adds. It is the scheme CTranslate2 uses for
//! its int8 models; the price is coarser weights for rows with a few large
//! values, and the chrF cost is measured with the rest of `q8_0` (see
//! BENCHMARKS.md).
//!
//! Weights are stored plus 128 as unsigned bytes (`vpdpbusd` multiplies
//! unsigned by signed bytes); the excess, 128 times the sum of an input
//! row's quantized values, is taken off once per output. Written here
//! because no maintained crate offers an int8 product that plugs into
//! candle tensors.
//!
//! The work is spread over candle's CPU thread pool, like the other kernels.

use candle_core::{Device, Result, Tensor};

/// Output rows handled together (a tile's columns).
const GROUP: usize = 4;
/// Input values a `vpdpbusd` covers.
const STEP: usize = 64;

/// `[out, in]` weights as 8-bit rows with their scales, laid out for the
/// kernel: per group of four rows and per 64 inputs, the four rows' 64
/// bytes one after another.
#[derive(Debug)]
pub struct Int8Rows {
    rows: usize,
    cols: usize,
    data: Vec<u8>,
    /// Per row, padded to whole groups with zeros.
    scales: Vec<f32>,
    /// Added to the outputs, when the layer has one.
    bias: Option<Vec<f32>>,
}

/// Whether this CPU runs the kernel (AVX-512 F, BW and VNNI, as the
/// K-quant one).
pub fn available() -> bool {
    super::kquant::available()
}

impl Int8Rows {
    /// Quantizes a `[out, in]` f32 weight (and an `[out]` bias); `None`
    /// where the kernel does not run (no AVX-512 VNNI, inputs not a multiple
    /// of 64, not f32 on the CPU).
    pub fn new(w: &Tensor, bias: Option<&Tensor>) -> Result<Option<Self>> {
        let (rows, cols) = w.dims2()?;
        if !available()
            || !w.device().is_cpu()
            || w.dtype() != candle_core::DType::F32
            || cols == 0
            || !cols.is_multiple_of(STEP)
        {
            return Ok(None);
        }
        let values = w.flatten_all()?.to_vec1::<f32>()?;
        let groups = rows.div_ceil(GROUP);
        let steps = cols / STEP;
        // padding rows: zero values (stored as 128) and a zero scale
        let mut data = vec![128u8; groups * GROUP * cols];
        let mut scales = vec![0f32; groups * GROUP];
        for (r, row) in values.chunks_exact(cols).enumerate() {
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            scales[r] = d;
            let (g, c) = (r / GROUP, r % GROUP);
            for s in 0..steps {
                let at = ((g * steps + s) * GROUP + c) * STEP;
                for (o, &v) in data[at..at + STEP].iter_mut().zip(&row[s * STEP..]) {
                    *o = ((v * inv).round() as i32 + 128) as u8;
                }
            }
        }
        let bias = match bias {
            Some(b) => Some(b.to_vec1::<f32>()?),
            None => None,
        };
        Ok(Some(Int8Rows {
            rows,
            cols,
            data,
            scales,
            bias,
        }))
    }

    /// Output width.
    pub fn outputs(&self) -> usize {
        self.rows
    }

    /// Input width.
    pub fn inputs(&self) -> usize {
        self.cols
    }

    /// `x W^T (+ b)` for `x` `[m, in]` (f32, CPU): `[m, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            candle_core::bail!(
                "int8 product: input has {k} features, the matrix {}",
                self.cols
            );
        }
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let a = Activations::quantize(&xs, m, k);
        let mut out = Vec::with_capacity(m * self.rows);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `new` checked the instruction set; every output is
        // written once (each group's columns by one task, all rows).
        unsafe {
            x86::matmul(&a, self, out.as_mut_ptr());
            out.set_len(m * self.rows);
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("Int8Rows::new returns None off x86-64");
        Tensor::from_vec(out, (m, self.rows), &Device::Cpu)
    }

    /// The reference the kernel is tested against: the same integers, one
    /// product at a time.
    #[cfg(test)]
    fn scalar(&self, x: &[f32], m: usize) -> Vec<f32> {
        let a = Activations::quantize(x, m, self.cols);
        let steps = self.cols / STEP;
        let mut out = vec![0f32; m * self.rows];
        for i in 0..m {
            for j in 0..self.rows {
                let (g, c) = (j / GROUP, j % GROUP);
                let mut dot = 0i32;
                for s in 0..steps {
                    let at = ((g * steps + s) * GROUP + c) * STEP;
                    for t in 0..STEP {
                        let w = self.data[at + t] as i32 - 128;
                        dot += w * a.quants[i * self.cols + s * STEP + t] as i32;
                    }
                }
                let b = self.bias.as_ref().map_or(0.0, |b| b[j]);
                out[i * self.rows + j] = dot as f32 * (a.scales[i] * self.scales[j]) + b;
            }
        }
        out
    }
}

/// Input rows quantized to 8 bits, one scale each.
struct Activations {
    quants: Vec<i8>,
    scales: Vec<f32>,
    /// Per row, minus 128 times the sum of its quantized values.
    corrections: Vec<i32>,
}

impl Activations {
    fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        let mut quants = vec![0i8; m * k];
        let mut scales = Vec::with_capacity(m);
        let mut corrections = Vec::with_capacity(m);
        for (row, q) in x.chunks_exact(k).zip(quants.chunks_exact_mut(k)) {
            let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            scales.push(d);
            let mut sum = 0i32;
            for (o, &v) in q.iter_mut().zip(row) {
                *o = (v * inv).round() as i8;
                sum += *o as i32;
            }
            corrections.push(-128 * sum);
        }
        Activations {
            quants,
            scales,
            corrections,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Activations, Int8Rows, GROUP, STEP};
    use std::arch::x86_64::*;

    /// Raw pointers to the operands, shareable between the pool's threads.
    #[derive(Clone, Copy)]
    struct Operands {
        a_q: *const i8,
        a_s: *const f32,
        a_c: *const i32,
        w: *const u8,
        w_s: *const f32,
        /// Null without a bias.
        bias: *const f32,
        out: *mut f32,
        /// Input width.
        k: usize,
        /// Output width.
        n: usize,
    }
    // SAFETY: the threads only read the inputs and write disjoint outputs.
    unsafe impl Send for Operands {}
    unsafe impl Sync for Operands {}

    /// Output rows `i..i + R` by the four columns of group `g`: all of a
    /// dot product in 32-bit lanes, scaled once at the end.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const R: usize>(o: Operands, i: usize, g: usize) {
        let mut acc = [[_mm512_setzero_si512(); GROUP]; R];
        let steps = o.k / STEP;
        let mut w = o.w.add(g * steps * GROUP * STEP);
        for s in 0..steps {
            let mut wq = [_mm512_setzero_si512(); GROUP];
            for (c, q) in wq.iter_mut().enumerate() {
                *q = _mm512_loadu_si512(w.add(c * STEP) as *const _);
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let aq = _mm512_loadu_si512(o.a_q.add((i + r) * o.k + s * STEP) as *const _);
                for c in 0..GROUP {
                    acc[c] = _mm512_dpbusd_epi32(acc[c], wq[c], aq);
                }
            }
            w = w.add(GROUP * STEP);
        }
        let cols = GROUP.min(o.n - GROUP * g);
        for (r, acc) in acc.iter().enumerate() {
            let (a_s, a_c) = (*o.a_s.add(i + r), *o.a_c.add(i + r));
            for (c, lanes) in acc.iter().enumerate().take(cols) {
                let j = GROUP * g + c;
                let dot = _mm512_reduce_add_epi32(*lanes) + a_c;
                let b = if o.bias.is_null() {
                    0.0
                } else {
                    *o.bias.add(j)
                };
                *o.out.add((i + r) * o.n + j) = dot as f32 * (a_s * *o.w_s.add(j)) + b;
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn columns(o: Operands, m: usize, groups: std::ops::Range<usize>) {
        let full = m - m % 4;
        for g in groups {
            for i in (0..full).step_by(4) {
                tile::<4>(o, i, g);
            }
            for i in full..m {
                tile::<1>(o, i, g);
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI; `out` must have room for
    /// `m * w.rows` values.
    pub(super) unsafe fn matmul(a: &Activations, w: &Int8Rows, out: *mut f32) {
        let o = Operands {
            a_q: a.quants.as_ptr(),
            a_s: a.scales.as_ptr(),
            a_c: a.corrections.as_ptr(),
            w: w.data.as_ptr(),
            w_s: w.scales.as_ptr(),
            bias: w.bias.as_ref().map_or(std::ptr::null(), |b| b.as_ptr()),
            out,
            k: w.cols,
            n: w.rows,
        };
        let m = a.scales.len();
        candle_core::utils::barrier_pool().execute_chunked(w.rows.div_ceil(GROUP), |groups| {
            // SAFETY: as the caller promised; each call writes only the
            // output columns of its groups.
            unsafe { columns(o, m, groups) }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_equals_the_scalar_reference_and_stays_close_to_f32() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        // rows not a multiple of four (a padded group), 128 inputs
        let (out, k) = (23usize, 128usize);
        let dev = Device::Cpu;
        let w = Tensor::from_vec(crate::seeded::values(out * k, 11), (out, k), &dev).unwrap();
        let b = Tensor::from_vec(crate::seeded::values(out, 12), out, &dev).unwrap();
        let q = Int8Rows::new(&w, Some(&b)).unwrap().expect("runs here");
        for m in [1usize, 4, 7] {
            let xs = crate::seeded::values(m * k, 13 + m as u64);
            let x = Tensor::from_vec(xs.clone(), (m, k), &dev).unwrap();
            let got = q
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let want = q.scalar(&xs, m);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
            }
            let exact = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let range = exact.iter().fold(0f32, |a, v| a.max(v.abs()));
            let worst = got
                .iter()
                .zip(&exact)
                .fold(0f32, |a, (g, e)| a.max((g - e).abs()));
            assert!(worst < 0.03 * range, "m {m}: {worst} vs range {range}");
        }
        // a width the kernel does not take
        let w = Tensor::zeros((4, 96), candle_core::DType::F32, &dev).unwrap();
        assert!(Int8Rows::new(&w, None).unwrap().is_none());
    }
}
