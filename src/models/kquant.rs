//! Q4_K and Q6_K matrix products on x86-64 CPUs with AVX-512 VNNI.
//!
//! The packaged Qwen2.5-Coder-1.5B file keeps its layer weights in Q4_K and
//! Q6_K (28% of its multiply-adds are Q6_K: half the `ffn_down` and
//! `attn_v` layers and the output head). For more than one input row,
//! candle 0.11.1's `QMatMul` re-lays such weights into tiles of 16 rows
//! with f32 sub-block scales (6 bits a Q4_K weight, 10 a Q6_K one) and
//! runs them four input rows at a time, converting every 32- or 16-value
//! sub-block sum to f32 and scaling it per input row: with eight sequences
//! decoding, 79% of a step in that kernel, which reads every weight twice.
//! No maintained crate offers K-quant products over GGUF blocks that plug
//! into candle tensors, so this one is written here. It:
//! - re-lays each group of 16 weight rows, super-block (256 columns) by
//!   super-block, so one 64-byte load holds four (Q6_K) or eight (Q4_K,
//!   two nibbles a byte) columns of all 16 rows, lane `r` for row `r`, and
//!   one `vpdpbusd` multiplies four columns of 16 rows by one input row's
//!   broadcast four values, leaving the 16 row sums in the lanes, in order;
//! - keeps the sub-block scales as integers (6-bit Q4_K, 8-bit Q6_K), so a
//!   sub-block's sums are scaled by one integer multiply per input row and
//!   a super-block's by one f32 multiply-add per input row;
//! - quantizes the input rows as candle (and llama.cpp) do for these types
//!   (Q8_K: one f32 scale per 256 values, `max / -127`). `vpdpbusd`
//!   multiplies unsigned bytes by signed ones. Q4_K's nibbles are the
//!   unsigned side and the inputs the signed one, which lets each product
//!   read its four broadcast inputs straight from memory (`{1to16}`)
//!   instead of taking a broadcast instruction of its own: with eight input
//!   rows, 3-4% more prefill and eight-sequence decode on the 1.5B model
//!   (one thread, four alternating pairs). Q6_K's values less 32 are
//!   signed, so there the inputs come plus 128 as the unsigned side, and
//!   each row's 128 times its weight sum, computed once at load, comes back
//!   off with one subtraction;
//! - computes the Q4_K minimum term (`dmin * min * sum of inputs` per
//!   sub-block) with four `vpdpwssd` per super-block and input row;
//! - runs up to eight input rows per pass over a tile, so that decoding
//!   eight sequences reads each weight once a step.
//!
//! Arithmetic as candle's: the same activation quantization, integer
//! products within sub-blocks, f32 across super-blocks; results equal
//! `QMatMul`'s to float-summation order (tested). Re-laid, a Q4_K weight
//! takes 4.625 bits and a Q6_K one 6.75 (the file's 4.5 and 6.56 are not
//! kept; Q4_K tiles held the minimums as i16 pairs, `d`, `dmin` as f32 and
//! a correction for inputs plus 128 at first, 5.125 bits: the smaller
//! tiles gave the 1.5B model about 4% more one-sequence decode on one
//! thread and 5% more eight-sequence decode on two, in alternating runs).
//! One-row products (decode steps of one sequence) run here too:
//! they are bound by memory, and without software prefetching (see
//! `PREFETCH_ROWS`) the tiles stream at the machine's read bandwidth on one
//! thread, where candle's dot products over the file's blocks, bound by
//! their arithmetic, reached about half of it (Q4_K at 1536x8960 with the
//! weights in memory, one thread: 356-376 us against 493-553 us; two
//! threads 240-274 against 295-312 us). On CPUs without AVX-512 VNNI,
//! [`KMatrix::from_qtensor`] gives `None` and candle's product runs.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Result;
use half::f16;

/// Values per super-block.
const QK: usize = 256;
/// Weight rows per tile.
pub(super) const ROWS: usize = 16;
/// Input rows per pass over a tile.
pub(super) const PASS: usize = 8;

/// GGUF bytes per Q4_K block: f16 `d`, f16 `dmin`, 12 bytes of 6-bit
/// scales and minimums, 128 bytes of nibbles.
const Q4K_BYTES: usize = 144;
/// GGUF bytes per Q6_K block: 128 bytes of low nibbles, 64 of high bit
/// pairs, 16 signed scales, f16 `d`.
const Q6K_BYTES: usize = 210;

/// One cache line; tiles are whole lines, so every 64-byte load is aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Which K-quant a matrix holds, with its tile layout (byte offsets within
/// one tile of 16 rows by one super-block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Q4_K: 32 groups of eight columns (byte `4r + j` of group `g`: column
    /// `8g + j` in the low nibble, `8g + j + 4` in the high one), then the
    /// eight sub-block scales (u8, `[sub][row]`), the minimums as byte
    /// pairs (`[pair][row]`, sub-blocks `2p` and `2p + 1`: widened to i16
    /// pairs with one instruction), and `d` and `dmin` (the file's f16 per
    /// row): 4.625 bits a weight.
    Q4K,
    /// Q6_K: the 16 sub-block scales (i8, `[sub][row]`), `d` (f32 per row)
    /// and the correction (i32 per row) first, then per sub-block of 16
    /// columns, 192 bytes: the low four bits of the values (0..63) as two
    /// Q4_K groups, then their high bit pairs (byte `4r + j`: bits `2i,
    /// 2i + 1` of it for column `4i + j`). The kernel subtracts the 32.
    /// With the scales after the values, as Q4_K has them, a one-row
    /// product streamed these tiles from memory at 16-19 GB/s on one
    /// thread against Q4_K's 23-25; with them first, at 25-27 (a 197 MB
    /// matrix, the two layouts in alternating runs). Q4_K's tiles measured
    /// the same or a little slower with their scales first.
    Q6K,
}

impl Kind {
    const fn tile_bytes(self) -> usize {
        match self {
            Kind::Q4K => 2048 + 128 + 128 + 32 + 32,
            Kind::Q6K => 256 + 64 + 64 + 3072,
        }
    }
    /// Where the values start.
    const fn values(self) -> usize {
        match self {
            Kind::Q4K => 0,
            Kind::Q6K => 256 + 64 + 64,
        }
    }
    const fn scales(self) -> usize {
        match self {
            Kind::Q4K => 2048,
            Kind::Q6K => 0,
        }
    }
    /// Q4_K only.
    const fn mins(self) -> usize {
        2048 + 128
    }
    const fn d(self) -> usize {
        match self {
            Kind::Q4K => 2048 + 128 + 128,
            Kind::Q6K => 256,
        }
    }
    /// Q4_K only.
    const fn dmin(self) -> usize {
        self.d() + 32
    }
    /// Q6_K only.
    const fn correction(self) -> usize {
        256 + 64
    }
    /// What the quantized inputs are stored plus: Q4_K's are the signed
    /// operand of `vpdpbusd` (0: `i8` bits), Q6_K's the unsigned one (128).
    const fn input_offset(self) -> u8 {
        match self {
            Kind::Q4K => 0,
            Kind::Q6K => 128,
        }
    }
}

/// A Q4_K or Q6_K weight matrix `(rows, cols)` (rows = output features; a
/// last, partial tile is padded with zero rows) in tiles of 16 rows by 256
/// columns, tile row by tile row (see [`Kind`] for a tile's bytes).
pub struct KMatrix {
    rows: usize,
    cols: usize,
    kind: Kind,
    tiles: Vec<Line>,
}

impl std::fmt::Debug for KMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KMatrix")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("kind", &self.kind)
            .finish()
    }
}

/// Whether this CPU runs the kernel (x86-64 with AVX-512 F, BW and VNNI).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The six-bit scale and minimum of sub-block `j` of a Q4_K block (GGUF's
/// packing of eight pairs into 12 bytes).
fn q4k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// One GGUF block, decoded: the 256 quantized values (Q4_K 0..15, Q6_K
/// -32..31), the integer sub-block scales (8 or 16) and minimums (Q4_K),
/// `d` and `dmin`. The value of column `c` is
/// `d * scale[c / sub] * q[c] - dmin * min[c / sub]`.
struct Decoded {
    q: [i8; QK],
    scales: [i32; 16],
    mins: [i32; 8],
    d: f32,
    dmin: f32,
}

impl Decoded {
    fn zero() -> Self {
        Decoded {
            q: [0; QK],
            scales: [0; 16],
            mins: [0; 8],
            d: 0.0,
            dmin: 0.0,
        }
    }

    fn q4k(b: &[u8]) -> Self {
        let mut out = Decoded::zero();
        out.d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        out.dmin = f16::from_le_bytes([b[2], b[3]]).to_f32();
        let (scales, qs) = (&b[4..16], &b[16..144]);
        for j in 0..8 {
            let (sc, mn) = q4k_scale_min(scales, j);
            out.scales[j] = sc as i32;
            out.mins[j] = mn as i32;
        }
        // 32-byte chunks: columns 64c.. in the low nibbles, 64c + 32.. in
        // the high ones
        for c in 0..4 {
            for l in 0..32 {
                let byte = qs[32 * c + l];
                out.q[64 * c + l] = (byte & 0x0F) as i8;
                out.q[64 * c + 32 + l] = (byte >> 4) as i8;
            }
        }
        out
    }

    fn q6k(b: &[u8]) -> Self {
        let mut out = Decoded::zero();
        let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
        out.d = f16::from_le_bytes([b[208], b[209]]).to_f32();
        for (s, &sc) in out.scales.iter_mut().zip(scales) {
            *s = sc as i8 as i32;
        }
        // halves of 128 columns: four runs of 32 from 64 low-nibble bytes
        // and 32 bytes of high bit pairs
        for h in 0..2 {
            let (ql, qh) = (&ql[64 * h..], &qh[32 * h..]);
            for l in 0..32 {
                let hi = |shift: u32| ((qh[l] >> shift) & 3) << 4;
                let col = 128 * h + l;
                out.q[col] = ((ql[l] & 0x0F) | hi(0)) as i8 - 32;
                out.q[col + 32] = ((ql[l + 32] & 0x0F) | hi(2)) as i8 - 32;
                out.q[col + 64] = ((ql[l] >> 4) | hi(4)) as i8 - 32;
                out.q[col + 96] = ((ql[l + 32] >> 4) | hi(6)) as i8 - 32;
            }
        }
        out
    }

    /// The 256 weights as f32 (the reference for tests).
    #[cfg(test)]
    fn values(&self, kind: Kind) -> Vec<f32> {
        let sub = if kind == Kind::Q4K { 32 } else { 16 };
        (0..QK)
            .map(|c| {
                let j = c / sub;
                self.d * (self.scales[j] * self.q[c] as i32) as f32
                    - if kind == Kind::Q4K {
                        self.dmin * self.mins[j] as f32
                    } else {
                        0.0
                    }
            })
            .collect()
    }
}

impl KMatrix {
    /// The matrix of a 2-D Q4_K or Q6_K tensor on the CPU (columns a
    /// multiple of 256); `None` for other types, shapes and devices, or a
    /// CPU the kernel does not run on.
    pub fn from_qtensor(t: &QTensor) -> Result<Option<KMatrix>> {
        if !available() {
            return Ok(None);
        }
        Self::relay(t)
    }

    /// [`KMatrix::from_qtensor`] whatever the CPU (tests check the layout
    /// against the file's values on any machine).
    fn relay(t: &QTensor) -> Result<Option<KMatrix>> {
        use rayon::prelude::*;
        let (kind, block_bytes) = match t.dtype() {
            GgmlDType::Q4K => (Kind::Q4K, Q4K_BYTES),
            GgmlDType::Q6K => (Kind::Q6K, Q6K_BYTES),
            _ => return Ok(None),
        };
        let &[rows, cols] = t.shape().dims() else {
            return Ok(None);
        };
        if !t.device().is_cpu() || cols == 0 || !cols.is_multiple_of(QK) {
            return Ok(None);
        }
        let raw = t.data()?;
        let blocks = cols / QK;
        if raw.len() != rows * blocks * block_bytes {
            return Ok(None);
        }
        let lines = kind.tile_bytes() / 64;
        let tiles = rows.div_ceil(ROWS) * blocks;
        let mut data = vec![Line([0; 64]); tiles * lines];
        data.par_chunks_mut(lines)
            .enumerate()
            .for_each(|(i, tile)| {
                let (t, b) = (i / blocks, i % blocks);
                // SAFETY: `Line` is 64 plain bytes.
                let bytes = unsafe {
                    std::slice::from_raw_parts_mut(tile.as_mut_ptr() as *mut u8, tile.len() * 64)
                };
                let decoded: Vec<Decoded> = (0..ROWS)
                    .map(|r| {
                        let row = t * ROWS + r;
                        if row >= rows {
                            return Decoded::zero();
                        }
                        let block = &raw[(row * blocks + b) * block_bytes..][..block_bytes];
                        match kind {
                            Kind::Q4K => Decoded::q4k(block),
                            Kind::Q6K => Decoded::q6k(block),
                        }
                    })
                    .collect();
                write_tile(kind, &decoded, bytes);
            });
        Ok(Some(KMatrix {
            rows,
            cols,
            kind,
            tiles: data,
        }))
    }

    /// The rows of `parts` (one type, same columns, each a whole number of
    /// tiles of 16 rows but the last) as one matrix. `None` where they do
    /// not fit together.
    pub fn stack(parts: &[&KMatrix]) -> Option<KMatrix> {
        let first = parts.first()?;
        let (_, init) = parts.split_last()?;
        if parts
            .iter()
            .any(|p| p.cols != first.cols || p.kind != first.kind)
            || init.iter().any(|p| !p.rows.is_multiple_of(ROWS))
        {
            return None;
        }
        let mut tiles = Vec::with_capacity(parts.iter().map(|p| p.tiles.len()).sum());
        for p in parts {
            tiles.extend_from_slice(&p.tiles);
        }
        Some(KMatrix {
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            kind: first.kind,
            tiles,
        })
    }

    /// Output features (weight rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (weight columns).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `(m, cols) x (rows, cols)^T`, row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "K-quant product: input length");
        let a = Activations::quantize(x, m, self.cols, self.kind.input_offset());
        // not zero-filled first: every output is stored once
        let mut out = Vec::with_capacity(m * self.rows);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `from_qtensor` checked the CPU; the tiles cover all rows
        // and columns, and the kernel stores every output of `out`.
        unsafe {
            x86::matmul(self, &a, out.as_mut_ptr());
            out.set_len(m * self.rows);
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = a;
            unreachable!("KMatrix is only built on x86-64");
        }
        out
    }

    #[cfg(test)]
    fn tile(&self, t: usize, b: usize) -> &[u8] {
        let lines = self.kind.tile_bytes() / 64;
        let at = (t * (self.cols / QK) + b) * lines;
        let tile = &self.tiles[at..at + lines];
        // SAFETY: `Line` is 64 plain bytes.
        unsafe { std::slice::from_raw_parts(tile.as_ptr() as *const u8, lines * 64) }
    }
}

/// Writes one tile from the decoded blocks of its 16 rows.
fn write_tile(kind: Kind, rows: &[Decoded], out: &mut [u8]) {
    let put_i32 = |out: &mut [u8], at: usize, v: i32| {
        out[at..at + 4].copy_from_slice(&v.to_le_bytes());
    };
    let put_f32 = |out: &mut [u8], at: usize, v: f32| {
        out[at..at + 4].copy_from_slice(&v.to_le_bytes());
    };
    let put_f16 = |out: &mut [u8], at: usize, v: f32| {
        out[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
    };
    let subs = match kind {
        Kind::Q4K => 8,
        Kind::Q6K => 16,
    };
    for (r, d) in rows.iter().enumerate() {
        match kind {
            Kind::Q4K => {
                for g in 0..QK / 8 {
                    for j in 0..4 {
                        let lo = d.q[8 * g + j] as u8;
                        let hi = d.q[8 * g + j + 4] as u8;
                        out[kind.values() + 64 * g + 4 * r + j] = lo | (hi << 4);
                    }
                }
                for p in 0..4 {
                    let at = kind.mins() + 32 * p + 2 * r;
                    // six-bit minimums
                    out[at] = d.mins[2 * p] as u8;
                    out[at + 1] = d.mins[2 * p + 1] as u8;
                }
                // the file's f16 values, back from f32 exactly
                put_f16(out, kind.d() + 2 * r, d.d);
                put_f16(out, kind.dmin() + 2 * r, d.dmin);
            }
            Kind::Q6K => {
                for s in 0..16 {
                    let u = |c: usize| (d.q[16 * s + c] + 32) as u8;
                    let at = kind.values() + 192 * s + 4 * r;
                    for j in 0..4 {
                        for v in 0..2 {
                            out[at + 64 * v + j] =
                                (u(8 * v + j) & 0x0F) | ((u(8 * v + j + 4) & 0x0F) << 4);
                        }
                        out[at + 128 + j] =
                            (0..4).fold(0, |h, i| h | (u(4 * i + j) >> 4) << (2 * i));
                    }
                }
            }
        }
        for s in 0..subs {
            out[kind.scales() + ROWS * s + r] = d.scales[s] as u8;
        }
        if kind == Kind::Q6K {
            put_f32(out, kind.d() + 4 * r, d.d);
            // inputs come plus 128: their products gain 128 x the scaled
            // sum of the row's values
            let correction: i32 = (0..16)
                .map(|s| {
                    d.scales[s]
                        * d.q[16 * s..16 * (s + 1)]
                            .iter()
                            .map(|&q| q as i32)
                            .sum::<i32>()
                })
                .sum();
            put_i32(out, kind.correction() + 4 * r, 128 * correction);
        }
    }
}

/// Input rows quantized as Q8_K, per row and super-block: 256 values plus
/// an offset (128: as `u8`; 0: as `i8` bits), the f32 scale, and the four
/// i16 pairs of 32-value sums (of the values without the offset) that the
/// Q4_K minimum term needs.
struct Activations {
    rows: usize,
    blocks: usize,
    quants: Vec<u8>,
    scales: Vec<f32>,
    pairs: Vec<i32>,
}

impl Activations {
    /// As candle's `BlockQ8K::from_float`: per 256 values, `iscale = -127 /
    /// max` with `max` the first value of largest magnitude, values
    /// `round(iscale * x)` (halves away from zero), scale `1 / iscale` (0
    /// for an all-zero block), stored plus `offset`.
    fn quantize(x: &[f32], rows: usize, cols: usize, offset: u8) -> Self {
        #[cfg(target_arch = "x86_64")]
        if available() {
            // SAFETY: the CPU has AVX-512 F and BW.
            return Self::quantize_with(x, rows, cols, offset, |xs, qs, pairs, offset| unsafe {
                x86::quantize_block(xs, qs, pairs, offset)
            });
        }
        Self::quantize_with(x, rows, cols, offset, quantize_block)
    }

    fn quantize_with(
        x: &[f32],
        rows: usize,
        cols: usize,
        offset: u8,
        block: impl Fn(&[f32], &mut [u8], &mut [i32], u8) -> f32,
    ) -> Self {
        let blocks = cols / QK;
        let mut quants = vec![0u8; rows * cols];
        let mut scales = vec![0f32; rows * blocks];
        let mut pairs = vec![0i32; rows * blocks * 4];
        for (((xs, qs), d), pairs) in x
            .chunks_exact(QK)
            .zip(quants.chunks_exact_mut(QK))
            .zip(scales.iter_mut())
            .zip(pairs.chunks_exact_mut(4))
        {
            *d = block(xs, qs, pairs, offset);
        }
        Activations {
            rows,
            blocks,
            quants,
            scales,
            pairs,
        }
    }
}

/// One block of [`Activations::quantize`] without SIMD (and the reference
/// for the SIMD one): writes the 256 values plus `offset` and the four
/// pairs of 32-value sums, returns the scale.
fn quantize_block(xs: &[f32], qs: &mut [u8], pairs: &mut [i32], offset: u8) -> f32 {
    let max = xs
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if max == 0.0 {
        qs.fill(offset);
        pairs.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    let mut sums = [0i32; 8];
    for (i, (q, &v)) in qs.iter_mut().zip(xs).enumerate() {
        let v = (iscale * v).round().clamp(-128.0, 127.0) as i32;
        sums[i / 32] += v;
        *q = (v + i32::from(offset)) as u8;
    }
    for (p, pair) in pairs.iter_mut().enumerate() {
        *pair = pack_pair(sums[2 * p], sums[2 * p + 1]);
    }
    1.0 / iscale
}

/// Two sums as the i16 pair `vpdpwssd` reads: `lo` in the low half.
fn pack_pair(lo: i32, hi: i32) -> i32 {
    (lo as i16 as u16 as u32 | ((hi as i16 as u16 as u32) << 16)) as i32
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// [`quantize_block`] with AVX-512: the same values, bit for bit.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BW; `xs` and `qs` hold 256 values,
    /// `pairs` four.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_block(
        xs: &[f32],
        qs: &mut [u8],
        pairs: &mut [i32],
        offset: u8,
    ) -> f32 {
        assert!(xs.len() >= QK && qs.len() >= QK && pairs.len() >= 4);
        let x = |v: usize| _mm512_loadu_ps(xs.as_ptr().add(16 * v));
        let mut amax = _mm512_setzero_ps();
        for v in 0..QK / 16 {
            amax = _mm512_max_ps(amax, _mm512_abs_ps(x(v)));
        }
        let amax = _mm512_reduce_max_ps(amax);
        if amax == 0.0 {
            qs[..QK].fill(offset);
            pairs[..4].fill(0);
            return 0.0;
        }
        // the first value of that magnitude, as the scalar loop finds it
        let mut max = amax;
        for v in 0..QK / 16 {
            let hits = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(x(v)), _mm512_set1_ps(amax));
            if hits != 0 {
                max = xs[16 * v + hits.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let scale = _mm512_set1_ps(iscale);
        // rounding halves away from zero: truncate after adding just
        // under a half with the value's sign
        let half = _mm512_set1_ps(0.49999997);
        let sign = _mm512_set1_epi32(i32::MIN);
        let (lo, hi) = (_mm512_set1_ps(-128.0), _mm512_set1_ps(127.0));
        let offset = _mm512_set1_epi32(i32::from(offset));
        let mut sums = [0i32; 8];
        for v in 0..QK / 16 {
            let y = _mm512_mul_ps(x(v), scale);
            let signed_half = _mm512_castsi512_ps(_mm512_or_si512(
                _mm512_and_si512(_mm512_castps_si512(y), sign),
                _mm512_castps_si512(half),
            ));
            let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(
                _mm512_add_ps(y, signed_half),
            );
            let q = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(r, lo), hi));
            sums[v / 2] += _mm512_reduce_add_epi32(q);
            let bytes = _mm512_cvtepi32_epi8(_mm512_add_epi32(q, offset));
            _mm_storeu_si128(qs.as_mut_ptr().add(16 * v) as *mut __m128i, bytes);
        }
        for (p, pair) in pairs.iter_mut().take(4).enumerate() {
            *pair = pack_pair(sums[2 * p], sums[2 * p + 1]);
        }
        1.0 / iscale
    }

    /// Pointers into one product's operands, shared by the threads.
    #[derive(Clone, Copy)]
    struct Operands {
        tiles: *const u8,
        tile_bytes: usize,
        quants: *const u8,
        scales: *const f32,
        pairs: *const i32,
        /// Super-blocks per row.
        blocks: usize,
        /// Output row length (weight rows).
        n: usize,
        out: *mut f32,
    }
    // SAFETY: the threads only read the inputs and write disjoint outputs.
    unsafe impl Send for Operands {}
    unsafe impl Sync for Operands {}

    /// Asks for the tile two past `tile` (a thread's tiles follow each
    /// other in memory) to be brought to the L2 cache. Streaming the
    /// weights from memory at eight rows, this gave 1.4-1.6x (Q4_K) and
    /// 1.1-1.2x (Q6_K) the multiply-adds per second of no prefetching;
    /// asking for the tile at hand into L1, or for tiles one or three
    /// ahead, gave less.
    /// (Also the Q8_0 tiles' prefetch, `q8_0.rs`.)
    #[inline(always)]
    pub(in crate::models) unsafe fn prefetch(tile: *const u8, tile_bytes: usize) {
        let ahead = tile.wrapping_add(2 * tile_bytes);
        for l in (0..tile_bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(l) as *const i8);
        }
    }

    /// Input rows from which a K-quant pass asks for its tiles ahead
    /// ([`prefetch`]). With one or two rows a tile goes by too fast for
    /// the 41 (Q4_K) or 54 (Q6_K) prefetch instructions it would take to
    /// pay off, and the hardware's own prefetcher, which follows the
    /// thread's tiles in order, does better without them: at 1536x8960
    /// with the weights in memory, one row on one thread took 356-376 us
    /// without them against 564-620 us with them (Q4_K), two rows 457-637
    /// against 617-669 us; Q6_K one row 580-603 against 835-851 us. From
    /// four rows on, asking ahead wins (Q4_K 558 against 873-899 us).
    /// (The Q8_0 tiles of `q8_0.rs` measured the same either way: they keep
    /// asking.)
    const PREFETCH_ROWS: usize = 3;

    /// Four input bytes at `p`, in every lane.
    #[inline(always)]
    unsafe fn broadcast(p: *const u8) -> __m512i {
        _mm512_set1_epi32((p as *const i32).read_unaligned())
    }

    /// Super-block `b` of input rows `i..i + M`.
    #[inline(always)]
    unsafe fn inputs<const M: usize>(o: Operands, i: usize, b: usize) -> [*const u8; M] {
        std::array::from_fn(|r| o.quants.add(((i + r) * o.blocks + b) * QK))
    }

    /// Adds one sub-block's integer sums (split in two where `split`),
    /// times the rows' sub-block scales, to each input row's total.
    #[inline(always)]
    unsafe fn add_scaled<const M: usize>(
        total: &mut [__m512i; M],
        sums: &[[__m512i; M]; 2],
        split: bool,
        scale: __m512i,
    ) {
        for r in 0..M {
            let sum = if split {
                _mm512_add_epi32(sums[0][r], sums[1][r])
            } else {
                sums[0][r]
            };
            total[r] = _mm512_add_epi32(total[r], _mm512_mullo_epi32(sum, scale));
        }
    }

    /// Output columns of tile `t` for input rows `i..i + M`. With few rows
    /// the low- and high-nibble products go to separate sums, so that the
    /// chains of `vpdpbusd` stay long enough to hide its latency.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn q4k<const M: usize>(o: Operands, t: usize, i: usize) {
        let split = M <= 4;
        let kind = Kind::Q4K;
        let nibble = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); M];
        for b in 0..o.blocks {
            let tile = o.tiles.add((t * o.blocks + b) * o.tile_bytes);
            if M >= PREFETCH_ROWS {
                prefetch(tile, o.tile_bytes);
            }
            let x = inputs::<M>(o, i, b);
            let mut total = [_mm512_setzero_si512(); M];
            for s in 0..8 {
                let mut sums = [[_mm512_setzero_si512(); M]; 2];
                for g in 4 * s..4 * s + 4 {
                    let w = _mm512_load_si512(tile.add(kind.values() + 64 * g) as *const __m512i);
                    let lo = _mm512_and_si512(w, nibble);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), nibble);
                    for r in 0..M {
                        let a = x[r].add(8 * g);
                        // the weights unsigned, the inputs signed: the
                        // broadcast folds into the product's memory operand
                        sums[0][r] = _mm512_dpbusd_epi32(sums[0][r], lo, broadcast(a));
                        let h = usize::from(split);
                        sums[h][r] = _mm512_dpbusd_epi32(sums[h][r], hi, broadcast(a.add(4)));
                    }
                }
                let scale = _mm512_cvtepu8_epi32(_mm_load_si128(
                    tile.add(kind.scales() + ROWS * s) as *const __m128i,
                ));
                add_scaled(&mut total, &sums, split, scale);
            }
            let mins: [__m512i; 4] = std::array::from_fn(|p| {
                _mm512_cvtepu8_epi16(_mm256_load_si256(
                    tile.add(kind.mins() + 32 * p) as *const __m256i
                ))
            });
            let d = _mm512_cvtph_ps(_mm256_load_si256(tile.add(kind.d()) as *const __m256i));
            let dmin = _mm512_cvtph_ps(_mm256_load_si256(tile.add(kind.dmin()) as *const __m256i));
            for r in 0..M {
                let at = (i + r) * o.blocks + b;
                let pairs = o.pairs.add(4 * at);
                let mut min = _mm512_setzero_si512();
                for (p, &m) in mins.iter().enumerate() {
                    min = _mm512_dpwssd_epi32(min, m, _mm512_set1_epi32(*pairs.add(p)));
                }
                let dx = _mm512_set1_ps(*o.scales.add(at));
                let main = _mm512_cvtepi32_ps(total[r]);
                acc[r] = _mm512_fmadd_ps(main, _mm512_mul_ps(d, dx), acc[r]);
                acc[r] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(min), _mm512_mul_ps(dmin, dx), acc[r]);
            }
        }
        store(o.out, o.n, t, i, &acc);
    }

    /// [`q4k`] for Q6_K tiles.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn q6k<const M: usize>(o: Operands, t: usize, i: usize) {
        let split = M <= 4;
        let kind = Kind::Q6K;
        let nibble = _mm512_set1_epi8(0x0F);
        let offset = _mm512_set1_epi8(32);
        let mut acc = [_mm512_setzero_ps(); M];
        for b in 0..o.blocks {
            let tile = o.tiles.add((t * o.blocks + b) * o.tile_bytes);
            if M >= PREFETCH_ROWS {
                prefetch(tile, o.tile_bytes);
            }
            let x = inputs::<M>(o, i, b);
            let mut total = [_mm512_setzero_si512(); M];
            for s in 0..16 {
                let mut sums = [[_mm512_setzero_si512(); M]; 2];
                let at = tile.add(kind.values() + 192 * s);
                let lo = [0, 1].map(|v| _mm512_load_si512(at.add(64 * v) as *const __m512i));
                let hi = _mm512_load_si512(at.add(128) as *const __m512i);
                let pairs = _mm512_set1_epi8(0x30);
                // columns 4i..4i + 4: low four bits, high pair moved to bits 4, 5
                let high = [
                    _mm512_and_si512(_mm512_slli_epi16(hi, 4), pairs),
                    _mm512_and_si512(_mm512_slli_epi16(hi, 2), pairs),
                    _mm512_and_si512(hi, pairs),
                    _mm512_and_si512(_mm512_srli_epi16(hi, 2), pairs),
                ];
                let low = [
                    lo[0],
                    _mm512_srli_epi16(lo[0], 4),
                    lo[1],
                    _mm512_srli_epi16(lo[1], 4),
                ];
                for q in 0..4 {
                    // (low & 0x0F) | high, less 32
                    let w = _mm512_ternarylogic_epi32::<0xEC>(low[q], high[q], nibble);
                    let w = _mm512_sub_epi8(w, offset);
                    let h = usize::from(split) & q;
                    for r in 0..M {
                        let a = x[r].add(16 * s + 4 * q);
                        sums[h][r] = _mm512_dpbusd_epi32(sums[h][r], broadcast(a), w);
                    }
                }
                let scale = _mm512_cvtepi8_epi32(_mm_load_si128(
                    tile.add(kind.scales() + ROWS * s) as *const __m128i,
                ));
                add_scaled(&mut total, &sums, split, scale);
            }
            let d = _mm512_load_ps(tile.add(kind.d()) as *const f32);
            let correction = _mm512_load_si512(tile.add(kind.correction()) as *const __m512i);
            for r in 0..M {
                let at = (i + r) * o.blocks + b;
                let dx = _mm512_set1_ps(*o.scales.add(at));
                let main = _mm512_cvtepi32_ps(_mm512_sub_epi32(total[r], correction));
                acc[r] = _mm512_fmadd_ps(main, _mm512_mul_ps(d, dx), acc[r]);
            }
        }
        store(o.out, o.n, t, i, &acc);
    }

    /// The 16 outputs of tile `t` (of an `n`-wide output) for input rows
    /// `i..`, less any padding rows past the matrix's last. (Also the Q8_0
    /// tiles' store, `q8_0.rs`.)
    #[inline(always)]
    pub(in crate::models) unsafe fn store<const M: usize>(
        out: *mut f32,
        n: usize,
        t: usize,
        i: usize,
        acc: &[__m512; M],
    ) {
        let cols = ROWS.min(n - ROWS * t);
        let mask: __mmask16 = if cols == ROWS { !0 } else { (1u16 << cols) - 1 };
        for (r, v) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add((i + r) * n + ROWS * t), mask, *v);
        }
    }

    /// Input rows `i..i + rows` (at most [`PASS`]) against tile `t`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn pass(kind: Kind, o: Operands, t: usize, i: usize, rows: usize) {
        macro_rules! by_rows {
            ($f:ident) => {
                match rows {
                    1 => $f::<1>(o, t, i),
                    2 => $f::<2>(o, t, i),
                    3 => $f::<3>(o, t, i),
                    4 => $f::<4>(o, t, i),
                    5 => $f::<5>(o, t, i),
                    6 => $f::<6>(o, t, i),
                    7 => $f::<7>(o, t, i),
                    _ => $f::<8>(o, t, i),
                }
            };
        }
        match kind {
            Kind::Q4K => by_rows!(q4k),
            Kind::Q6K => by_rows!(q6k),
        }
    }

    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI; `out` must have room
    /// for `a.rows * w.rows` values.
    pub(super) unsafe fn matmul(w: &KMatrix, a: &Activations, out: *mut f32) {
        let o = Operands {
            tiles: w.tiles.as_ptr() as *const u8,
            tile_bytes: w.kind.tile_bytes(),
            quants: a.quants.as_ptr(),
            scales: a.scales.as_ptr(),
            pairs: a.pairs.as_ptr(),
            blocks: a.blocks,
            n: w.rows,
            out,
        };
        let kind = w.kind;
        passes(w.rows, a.rows, |t, i, rows| {
            // SAFETY: as the caller promised; each pass writes only its
            // tile's columns of its rows.
            unsafe { pass(kind, o, t, i, rows) }
        });
    }

    /// Runs `pass(t, i, rows)` over the thread pool, each thread through
    /// a contiguous share of the tiles (`shares.rs`), for every tile `t` of
    /// an `n`-wide output and every run of at most [`PASS`] of the `m`
    /// input rows from `i` on. (Also the Q8_0 tiles' loop, `q8_0.rs`.)
    pub(in crate::models) fn passes(n: usize, m: usize, pass: impl Fn(usize, usize, usize) + Sync) {
        let per_tile = m.div_ceil(PASS);
        let units = n.div_ceil(ROWS) * per_tile;
        crate::models::shares::in_shares(units, |range| {
            for u in range {
                let (t, i) = (u / per_tile, u % per_tile * PASS);
                pass(t, i, PASS.min(m - i));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

    fn quantized(rows: usize, cols: usize, dtype: GgmlDType, seed: u64) -> QTensor {
        let w = Tensor::from_vec(
            crate::seeded::values(rows * cols, seed),
            (rows, cols),
            &Device::Cpu,
        )
        .unwrap();
        QTensor::quantize(&w, dtype).unwrap()
    }

    /// The weights as the tiles hold them, back in row-major order.
    fn tile_values(m: &KMatrix) -> Vec<f32> {
        let blocks = m.cols / QK;
        let mut out = vec![0f32; m.rows * m.cols];
        let kind = m.kind;
        let f32_at = |t: &[u8], at: usize| f32::from_le_bytes(t[at..at + 4].try_into().unwrap());
        for row in 0..m.rows {
            let (t, r) = (row / ROWS, row % ROWS);
            for b in 0..blocks {
                let tile = m.tile(t, b);
                let f16_at = |t: &[u8], at: usize| f16::from_le_bytes([t[at], t[at + 1]]).to_f32();
                let d = match kind {
                    Kind::Q4K => f16_at(tile, kind.d() + 2 * r),
                    Kind::Q6K => f32_at(tile, kind.d() + 4 * r),
                };
                for c in 0..QK {
                    let (q, scale, min) = match kind {
                        Kind::Q4K => {
                            let (g, j) = (c / 8, c % 8);
                            let byte = tile[kind.values() + 64 * g + 4 * r + j % 4];
                            let q = if j < 4 { byte & 0x0F } else { byte >> 4 };
                            let s = c / 32;
                            let min = tile[kind.mins() + 32 * (s / 2) + 2 * r + s % 2];
                            let dmin = f16_at(tile, kind.dmin() + 2 * r);
                            (
                                q as i32,
                                tile[kind.scales() + ROWS * s + r] as i32,
                                dmin * min as f32,
                            )
                        }
                        Kind::Q6K => {
                            let (s, c) = (c / 16, c % 16);
                            let byte = tile[kind.values() + 192 * s + 64 * (c / 8) + 4 * r + c % 4];
                            let low = if c % 8 < 4 { byte & 0x0F } else { byte >> 4 };
                            let pairs = tile[kind.values() + 192 * s + 128 + 4 * r + c % 4];
                            let high = (pairs >> (2 * (c / 4))) & 3;
                            let q = (low | (high << 4)) as i32 - 32;
                            let s = tile[kind.scales() + ROWS * s + r] as i8 as i32;
                            (q, s, 0.0)
                        }
                    };
                    out[row * m.cols + b * QK + c] = d * (scale * q) as f32 - min;
                }
            }
        }
        out
    }

    #[test]
    fn tiles_hold_the_files_values() {
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            // 40 rows: two tiles and a padded third
            let q = quantized(40, 512, dtype, 7);
            let m = KMatrix::relay(&q).unwrap().unwrap();
            let want = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
            let want = want.to_vec1::<f32>().unwrap();
            let got = tile_values(&m);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{dtype:?} value {i}: {g} vs {w}"
                );
            }
            // and the decoding the tiles came from agrees with candle's too
            let raw = q.data().unwrap();
            let bytes = if dtype == GgmlDType::Q4K {
                Q4K_BYTES
            } else {
                Q6K_BYTES
            };
            let kind = m.kind;
            let first = match kind {
                Kind::Q4K => Decoded::q4k(&raw[..bytes]),
                Kind::Q6K => Decoded::q6k(&raw[..bytes]),
            };
            for (g, w) in first.values(kind).iter().zip(&want[..QK]) {
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0));
            }
        }
    }

    #[test]
    fn products_equal_candle_and_the_reference() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI");
            return;
        }
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let (n, k) = (72, 768);
            let q = quantized(n, k, dtype, 11);
            let w = q.dequantize(&Device::Cpu).unwrap();
            let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ours = KMatrix::from_qtensor(&q).unwrap().unwrap();
            let candle = QMatMul::from_qtensor(q).unwrap();
            for m in [1usize, 2, 5, 8, 11, 19] {
                let x = crate::seeded::values(m * k, 100 + m as u64);
                let got = ours.matmul(&x, m);
                // reference: the quantized inputs times the file's weights
                let a = Activations::quantize(&x, m, k, 128);
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
                let want = candle.forward(&xt).unwrap().flatten_all().unwrap();
                let want = want.to_vec1::<f32>().unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let mut exact = 0f64;
                        for c in 0..k {
                            let q = a.quants[i * k + c] as f64 - 128.0;
                            let d = a.scales[i * (k / QK) + c / QK] as f64;
                            exact += q * d * w[j * k + c] as f64;
                        }
                        let g = got[i * n + j] as f64;
                        let tol = 1e-4 * (1.0 + exact.abs());
                        assert!(
                            (g - exact).abs() < tol,
                            "{dtype:?} m {m} ({i},{j}): {g} vs {exact}"
                        );
                        let c = want[i * n + j] as f64;
                        assert!(
                            (g - c).abs() < tol,
                            "{dtype:?} m {m} ({i},{j}): {g} vs candle {c}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn simd_quantization_equals_the_scalar_one() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX-512");
            return;
        }
        let mut x = crate::seeded::values(8 * QK, 21);
        x[..QK].fill(0.0); // an all-zero block
                           // ties: a block whose largest magnitudes are -2 then +2, and
                           // values that land on halves after scaling by 127/2
        x[QK + 3] = -2.0;
        x[QK + 9] = 2.0;
        for (i, v) in x[QK + 10..QK + 60].iter_mut().enumerate() {
            *v = (i as f32 + 0.5) * 2.0 / 127.0 * if i % 2 == 0 { 1.0 } else { -1.0 };
        }
        x[2 * QK + 7] = 1e-30; // a tiny block maximum
        x[3 * QK..4 * QK].fill(-0.25); // all equal
                                       // exact halves: iscale = -1
        x[5 * QK..5 * QK + 4].copy_from_slice(&[127.0, 2.5, -3.5, 0.5]);
        for offset in [0, 128] {
            let fast = Activations::quantize(&x, 4, 2 * QK, offset);
            let slow = Activations::quantize_with(&x, 4, 2 * QK, offset, quantize_block);
            assert_eq!(fast.quants, slow.quants, "offset {offset}");
            assert_eq!(fast.scales, slow.scales, "offset {offset}");
            assert_eq!(fast.pairs, slow.pairs, "offset {offset}");
        }
        let slow = Activations::quantize_with(&x, 4, 2 * QK, 128, quantize_block);
        // the first of -2 and +2 sets the sign: iscale = -127 / -2
        assert!(slow.scales[1] > 0.0);
        assert_eq!(slow.quants[5 * QK..5 * QK + 4], [1, 125, 132, 127]);
    }

    /// A row's product does not depend on the rows beside it in a pass
    /// (one row, as decoding one sequence runs, against the same row among
    /// nine, in passes of eight and one): the bits are the same, so how a
    /// scheduler groups sequences cannot change a greedy decode here.
    #[test]
    fn a_row_gives_the_same_bits_alone_or_among_others() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI");
            return;
        }
        let (n, k) = (40, 512);
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let m = KMatrix::from_qtensor(&quantized(n, k, dtype, 31))
                .unwrap()
                .unwrap();
            let x = crate::seeded::values(9 * k, 32);
            let all = m.matmul(&x, 9);
            for r in [0, 3, 8] {
                let alone = m.matmul(&x[r * k..(r + 1) * k], 1);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&alone),
                    bits(&all[r * n..(r + 1) * n]),
                    "{dtype:?} row {r}"
                );
            }
        }
    }

    #[test]
    fn other_types_and_shapes_are_left_to_candle() {
        let q8 = quantized(16, 256, GgmlDType::Q8_0, 3);
        assert!(KMatrix::relay(&q8).unwrap().is_none());
        let w = Tensor::from_vec(crate::seeded::values(16 * 320, 4), (16, 320), &Device::Cpu);
        // 320 columns is no whole number of super-blocks: candle rejects
        // quantizing it as Q4_K, and so would we
        if let Ok(q) = QTensor::quantize(&w.unwrap(), GgmlDType::Q4K) {
            assert!(KMatrix::relay(&q).unwrap().is_none());
        }
    }
}
