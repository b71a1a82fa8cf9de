//! Float (f32) projections `x W^T + b` for the encoder-decoder families on
//! x86-64 CPUs with AVX-512.
//!
//! candle's CPU matmul goes through the `gemm` crate, whose AVX-512
//! micro-kernels are only built with its `nightly` feature (a nightly
//! compiler), so on a stable toolchain it runs 8-wide AVX2 kernels even
//! where the CPU has 16-wide ones, and packs both operands on every call.
//! Measured on an OPUS-MT-sized Marian's output projection (2-core AVX-512
//! VM, 2 threads, criterion `head product`): `[32, 512] x [512, 65001]` in
//! 39 ms through candle, 15 ms here (2.6x); one row 10.5 ms against 4.1 ms.
//! One thread here reaches 92 GFLOP/s at 64 rows, this CPU's peak with one
//! 512-bit FMA unit. Written here because no maintained crate offers an
//! AVX-512 f32 product on a stable compiler that plugs into candle tensors.
//! This kernel:
//! - packs the weight once, at load, into panels of 32 output features
//!   (for each input feature, 32 consecutive floats, zero-padded past the
//!   last feature), so a tile reads one sequential stream;
//! - packs the input per call in tiles of [`ROWS`] rows, feature by
//!   feature (rows of 512 or 2048 floats lie a multiple of 2 KiB apart and
//!   would compete for the same few L1 cache sets);
//! - computes tiles of up to [`ROWS`] input rows by one panel in 2 x
//!   [`ROWS`] 512-bit accumulators (one broadcast of an input value serves
//!   32 outputs), started from the bias;
//! - spreads the panels over candle's CPU thread pool
//!   (`CANDLE_NUM_THREADS`), as candle's own products do.
//!
//! Results equal candle's matmul to float-summation order (tested).

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};

/// Output features per panel (two 512-bit registers).
const PANEL: usize = 32;
/// Input rows per tile: 2 x 12 accumulators, 2 weight registers and the
/// broadcast fit the 32 vector registers.
const ROWS: usize = 12;
/// Input rows per pass over the weights: large inputs (an encoder's batch
/// of sentences) are cut so that a pass's rows stay in the L2 cache.
const ROW_BLOCK: usize = 96;

/// 64-byte aligned storage for 16 floats.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A weight `[out, in]` packed for the kernel, with its bias.
pub struct PackedF32 {
    out: usize,
    input: usize,
    /// Panels of [`PANEL`] output features: for each input feature, their
    /// 32 weights (2 lines).
    panels: Vec<Line>,
    /// The bias padded to whole panels (zeros without one).
    bias: Vec<Line>,
}

impl std::fmt::Debug for PackedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedF32({} x {})", self.out, self.input)
    }
}

/// Whether this CPU runs the kernel (x86-64 with AVX-512F).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl PackedF32 {
    /// Packs an f32 CPU weight `[out, in]` and its bias `[out]`; `None`
    /// where the kernel does not run (another CPU, device or type).
    pub fn new(w: &Tensor, b: Option<&Tensor>) -> Result<Option<Self>> {
        if !available() || !matches!(w.device(), Device::Cpu) || w.dtype() != DType::F32 {
            return Ok(None);
        }
        let (out, input) = w.dims2()?;
        let w: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let panels_n = out.div_ceil(PANEL);
        let mut panels = vec![Line([0.0; 16]); panels_n * input * 2];
        for p in 0..panels_n {
            for k in 0..input {
                let lines = &mut panels[(p * input + k) * 2..][..2];
                for c in 0..PANEL.min(out - p * PANEL) {
                    lines[c / 16].0[c % 16] = w[(p * PANEL + c) * input + k];
                }
            }
        }
        let mut bias = vec![Line([0.0; 16]); panels_n * 2];
        if let Some(b) = b {
            let b: Vec<f32> = b.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            if b.len() != out {
                candle_core::bail!("bias of {} for {out} outputs", b.len());
            }
            for (i, v) in b.into_iter().enumerate() {
                bias[i / 16].0[i % 16] = v;
            }
        }
        Ok(Some(PackedF32 {
            out,
            input,
            panels,
            bias,
        }))
    }

    /// Output features.
    pub fn outputs(&self) -> usize {
        self.out
    }

    /// Input features.
    pub fn inputs(&self) -> usize {
        self.input
    }

    /// `x W^T + b` for `x` `[rows, in]` (f32): `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.input {
            candle_core::bail!(
                "projection: input has {k} features, the weight {}",
                self.input
            );
        }
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
            candle_core::bail!("projection: the f32 kernel needs a CPU tensor");
        };
        let a = &data[layout.start_offset()..][..m * k];
        let out = self.matmul(a, m);
        drop(storage);
        Tensor::from_vec(out, (m, self.out), &Device::Cpu)
    }

    /// `(m, in) x (out, in)^T + b`, row-major.
    fn matmul(&self, a: &[f32], m: usize) -> Vec<f32> {
        // not zero-filled first: the tiles write every output once (a
        // vocabulary-wide output is megabytes a step)
        let mut out = Vec::with_capacity(m * self.out);
        #[cfg(target_arch = "x86_64")]
        {
            // the input cut in tiles of ROWS rows, each stored feature by
            // feature (ROWS values each, zero-padded): one tile's values for
            // a feature sit together instead of ROWS rows apart
            let k = self.input;
            let tiles = m.div_ceil(ROWS);
            let mut packed = vec![0f32; tiles * k * ROWS];
            for (t, tile) in packed.chunks_exact_mut(k * ROWS).enumerate() {
                for r in 0..ROWS.min(m - t * ROWS) {
                    let row = &a[(t * ROWS + r) * k..][..k];
                    for (j, &v) in row.iter().enumerate() {
                        tile[j * ROWS + r] = v;
                    }
                }
            }
            let o = x86::Operands {
                a: packed.as_ptr(),
                m,
                k: self.input,
                panels: self.panels.as_ptr() as *const f32,
                bias: self.bias.as_ptr() as *const f32,
                out: out.as_mut_ptr(),
                n: self.out,
            };
            crate::models::shares::in_shares(self.out.div_ceil(PANEL), |panels| {
                // SAFETY: `new` checked AVX-512F; each call writes only
                // the output columns of its panels.
                unsafe { x86::panels(o, panels) }
            });
            // SAFETY: the panels cover all columns and every panel all rows.
            unsafe { out.set_len(m * self.out) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (a, m);
            unreachable!("PackedF32 is only made on x86-64");
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PANEL, ROWS, ROW_BLOCK};
    use std::arch::x86_64::*;

    /// Raw pointers to the operands, shareable between the pool's threads.
    #[derive(Clone, Copy)]
    pub(super) struct Operands {
        /// The input packed in tiles of [`ROWS`] rows.
        pub a: *const f32,
        pub m: usize,
        pub k: usize,
        pub panels: *const f32,
        pub bias: *const f32,
        pub out: *mut f32,
        pub n: usize,
    }
    // SAFETY: the threads only read the inputs and write disjoint outputs.
    unsafe impl Send for Operands {}
    unsafe impl Sync for Operands {}

    /// Rows `i..i + R` by panel `p`.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize>(o: Operands, i: usize, p: usize) {
        let b0 = _mm512_loadu_ps(o.bias.add(p * PANEL));
        let b1 = _mm512_loadu_ps(o.bias.add(p * PANEL + 16));
        let mut acc = [[b0, b1]; R];
        let w = o.panels.add(p * o.k * PANEL);
        // `i` starts a tile of the packed input
        let a = o.a.add(i * o.k);
        for k in 0..o.k {
            let w0 = _mm512_load_ps(w.add(k * PANEL));
            let w1 = _mm512_load_ps(w.add(k * PANEL + 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(k * ROWS + r));
                acc[0] = _mm512_fmadd_ps(x, w0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, w1, acc[1]);
            }
        }
        let cols = PANEL.min(o.n - p * PANEL);
        let out = o.out.add(i * o.n + p * PANEL);
        if cols == PANEL {
            for (r, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.add(r * o.n), acc[0]);
                _mm512_storeu_ps(out.add(r * o.n + 16), acc[1]);
            }
        } else {
            let m0 = ((1u32 << cols.min(16)) - 1) as u16;
            let m1 = ((1u32 << cols.saturating_sub(16)) - 1) as u16;
            for (r, acc) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(out.add(r * o.n), m0, acc[0]);
                _mm512_mask_storeu_ps(out.add(r * o.n + 16), m1, acc[1]);
            }
        }
    }

    /// All rows by the panels of `range`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; the operands must be as `Operands` says.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn panels(o: Operands, range: std::ops::Range<usize>) {
        for block in (0..o.m).step_by(ROW_BLOCK) {
            let end = (block + ROW_BLOCK).min(o.m);
            for p in range.clone() {
                let mut i = block;
                while i + ROWS <= end {
                    tile::<ROWS>(o, i, p);
                    i += ROWS;
                }
                match end - i {
                    0 => {}
                    1 => tile::<1>(o, i, p),
                    2 => tile::<2>(o, i, p),
                    3 => tile::<3>(o, i, p),
                    4 => tile::<4>(o, i, p),
                    5 => tile::<5>(o, i, p),
                    6 => tile::<6>(o, i, p),
                    7 => tile::<7>(o, i, p),
                    8 => tile::<8>(o, i, p),
                    9 => tile::<9>(o, i, p),
                    10 => tile::<10>(o, i, p),
                    _ => tile::<11>(o, i, p),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_candle_matmul() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX-512F");
            return;
        }
        // row counts below, at and past a tile and a row block; output
        // widths with a partial last panel (under and over 16 columns)
        for (m, n, k, bias) in [
            (1, 64, 96, true),
            (7, 40, 64, false),
            (12, 32, 16, true),
            (13, 75, 33, true),
            (100, 19, 48, false),
            (30, 1, 8, true),
        ] {
            let w = Tensor::from_vec(
                crate::seeded::values(n * k, 5 + n as u64),
                (n, k),
                &Device::Cpu,
            )
            .unwrap();
            let b = Tensor::from_vec(crate::seeded::values(n, 9), n, &Device::Cpu).unwrap();
            let x = Tensor::from_vec(
                crate::seeded::values(m * k, 7 + m as u64),
                (m, k),
                &Device::Cpu,
            )
            .unwrap();
            let packed = PackedF32::new(&w, bias.then_some(&b)).unwrap().unwrap();
            let mut expected = x.matmul(&w.t().unwrap()).unwrap();
            if bias {
                expected = expected.broadcast_add(&b).unwrap();
            }
            let expected: Vec<f32> = expected.flatten_all().unwrap().to_vec1().unwrap();
            let got: Vec<f32> = packed
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got.len(), m * n);
            for (e, g) in expected.iter().zip(&got) {
                assert!(
                    (e - g).abs() <= 1e-5 * (1.0 + e.abs()),
                    "{m}x{n}x{k}: {e} vs {g}"
                );
            }
        }
    }
}
