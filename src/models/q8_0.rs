//! Q8_0 matrix products for the GGUF decoders on x86-64 CPUs.
//!
//! Most layer weights of the packaged SmolLM2 (Q4_1) and Qwen2.5-Coder-0.5B
//! (Q5_0) files end up as Q8_0 at load (see `fast_kernels` in
//! `causal.rs`), so this one product is where those models spend their
//! time. Through `QMatMul`, candle 0.11.1 multiplies Q8_0 weights one dot
//! product at a time with AVX2 (profile: `BlockQ8_0::vec_dot` half of a
//! Qwen2.5-0.5B run), re-reading every activation block once per weight
//! row. (candle's re-packed VNNI kernels take Q8_0 only where the input
//! size is a multiple of 256 and the output size of 16: Qwen2.5-0.5B's 896
//! and SmolLM2's 576 are not. Marian's 512/2048 layers are, and there ours
//! measured no faster, so the seq2seq families keep candle's product for
//! them; their vocabulary head (65,001 outputs for OPUS-MT) is not, and
//! takes ours, 2.8x candle's at 32 rows, where the 8-bit-row kernel of
//! `int8_rows.rs` does not run.) Written here
//! because no maintained crate offers a Q8_0 product over
//! GGUF blocks that plugs into candle tensors. Two layouts:
//! - with AVX-512 VNNI and inputs a multiple of 64 long (all the packaged
//!   models), tiles of 16 weight rows by two blocks (module `tiles`): one
//!   `vpdpbusd` multiplies four columns of all 16 rows, stored plus 128,
//!   by four broadcast values of one input row and leaves the 16 sums in
//!   order in its lanes; eight input rows a pass over the weights, the
//!   tile two ahead prefetched; each block's sums start from the input
//!   block's -128 x sum. Against the four-row groups below, same binary
//!   and VM: Qwen2.5-Coder-0.5B prefill 1.33x and eight-sequence decode
//!   1.6-1.7x, SmolLM2-135M 1.3-1.4x and 1.4x; at 1536x8960 with the
//!   weights in cache, 8 rows: 308 against 101-110 GMAC/s (candle's
//!   re-packed Q8_0 kernel, which needs inputs a multiple of 256: 193);
//! - otherwise groups of four rows, block by block (four rows' 32 values,
//!   then their four f16 scales: still 34 bytes a block), computed as
//!   tiles of four input rows by four weight rows, so each loaded block
//!   serves four products; with AVX-512 VNNI (inputs not a multiple of
//!   64) the weights plus 128 and one `vpdpbusd` per block and pair,
//!   started from per-activation-block correction lanes that take the
//!   128 x sum off again; with AVX2 alone, the usual sign trick and
//!   `vpmaddubsw`.
//!
//! Measured with the four-row groups alone (2-core AVX-512 VM, same binary,
//! `TIDINGS_KERNELS=candle` against the default): Qwen2.5-Coder-0.5B
//! prefill 2.09x, decode 1.35x; SmolLM2-135M prefill 2.18x, decode 1.15x.
//!
//! Arithmetic as candle's (and llama.cpp's) Q8_0 x Q8_0: each activation
//! row is cut into blocks of 32, scaled by `max|x| / 127`, rounded to
//! 8-bit integers; integer block dot products are scaled by the product of
//! the two f16 block scales and summed in f32. Results equal candle's to
//! float-summation order (tested against `QMatMul`).
//!
//! [`QLinear`] also sends Q4_K and Q6_K products to the kernel of
//! `kquant.rs` where it runs (then the file's blocks are not kept), and
//! elsewhere one-row Q4_K products to candle's dot products over the
//! file's blocks rather than through `QMatMul` (see `q4k_row`); [`Stacked`]
//! runs the products of one input with several Q8_0 weights, or with
//! several K-quant weights of one type, as one.
//!
//! The work is spread over candle's CPU thread pool (`CANDLE_NUM_THREADS`),
//! so the pipeline's layout of workers and math threads holds for it too.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};
use half::f16;

use super::kquant::KMatrix;

/// Whether quantized weights take our kernel by default: yes, unless
/// `TIDINGS_KERNELS=candle` is set (to compare the two with one binary).
pub fn own_kernels_by_default() -> bool {
    std::env::var("TIDINGS_KERNELS").map_or(true, |v| v != "candle")
}

/// A quantized weight with the fastest product here for its type: our
/// Q8_0 kernel where it runs, candle's `QMatMul` for everything else.
/// Clones share the weights.
#[derive(Debug, Clone)]
pub enum QLinear {
    /// candle's product.
    Candle(QMatMul),
    /// Ours.
    Q8(Arc<Q8Matrix>),
    /// Q4_K or Q6_K weights, on ours ([`KMatrix`]) for any number of
    /// input rows.
    K(Arc<KMatrix>),
}

impl QLinear {
    /// `own_kernels: false` always takes candle's product.
    pub fn new(own_kernels: bool, t: QTensor) -> Result<Self> {
        if own_kernels {
            if let Some(m) = Q8Matrix::from_qtensor(&t)? {
                return Ok(QLinear::Q8(Arc::new(m)));
            }
            if let Some(m) = KMatrix::from_qtensor(&t)? {
                return Ok(QLinear::K(Arc::new(m)));
            }
        }
        Ok(QLinear::Candle(QMatMul::from_qtensor(t)?))
    }

    /// Our Q8_0 matrix, where this product runs on our kernel.
    pub fn q8(&self) -> Option<&Q8Matrix> {
        match self {
            QLinear::Q8(m) => Some(m),
            QLinear::Candle(_) | QLinear::K(..) => None,
        }
    }
}

impl Module for QLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            QLinear::Candle(m) => match q4k_row(m, x)? {
                Some(y) => Ok(y),
                None => m.forward(x),
            },
            QLinear::Q8(m) => m.forward(x),
            QLinear::K(ours) => {
                let (m, xs) = input_rows(x, ours.cols())?;
                output(ours.matmul(&xs, m), x, ours.rows())
            }
        }
    }
}

/// One row times a Q4_K matrix through candle's dot products over the
/// file's own blocks (4.5 bits a weight), not `QMatMul`'s path, on CPUs
/// where our K-quant kernel ([`KMatrix`]) does not run: `QMatMul` re-lays
/// Q4_K weights into 16-row tiles with f32 scales (6 bits a weight) for
/// its many-row kernel, and a decode step, which reads every weight once,
/// is bound by memory (Qwen2.5-Coder-1.5B decode: two thirds of the time
/// in that kernel; through the dot products 1.57x the tokens/s). More rows
/// go to `QMatMul` (8 sequences through these dot products: half
/// `QMatMul`'s speed). `None` where this does not apply (other weights,
/// more rows, another device, an unaligned buffer).
fn q4k_row(m: &QMatMul, x: &Tensor) -> Result<Option<Tensor>> {
    let QMatMul::QTensor(t) = m else {
        return Ok(None);
    };
    if t.dtype() != GgmlDType::Q4K {
        return Ok(None);
    }
    let (n, k) = t.shape().dims2()?;
    if !x.device().is_cpu() || x.dims().last() != Some(&k) || x.elem_count() != k {
        return Ok(None);
    }
    let (_, xs) = input_rows(x, k)?;
    match row_over_blocks(t.dtype(), &t.data()?, n, k, &xs)? {
        Some(out) => Ok(Some(output(out, x, n)?)),
        None => Ok(None),
    }
}

/// Whether `data` holds `n` rows of `k` columns of Q4_K or Q6_K weights
/// as whole blocks of the file's layout, aligned for candle's block types.
fn fits_blocks(dtype: GgmlDType, data: &[u8], n: usize, k: usize) -> bool {
    use candle_core::quantized::k_quants::{BlockQ4K, BlockQ6K, QK_K};
    use std::mem::{align_of, size_of};
    let (size, align) = match dtype {
        GgmlDType::Q4K => (size_of::<BlockQ4K>(), align_of::<BlockQ4K>()),
        GgmlDType::Q6K => (size_of::<BlockQ6K>(), align_of::<BlockQ6K>()),
        _ => return false,
    };
    k.is_multiple_of(QK_K)
        && data.len() == n * (k / QK_K) * size
        && (data.as_ptr() as usize).is_multiple_of(align)
}

/// One row `x` (`k` long) times `n` rows of Q4_K or Q6_K weights held in
/// the file's own blocks (`data`), through candle's dot products. `None`
/// where [`fits_blocks`] does not hold.
fn row_over_blocks(
    dtype: GgmlDType,
    data: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
) -> Result<Option<Vec<f32>>> {
    use candle_core::quantized::k_quants::{self, BlockQ4K, BlockQ6K, GgmlType};
    fn run<T: GgmlType>(data: &[u8], n: usize, k: usize, x: &[f32]) -> Result<Vec<f32>> {
        // SAFETY: the blocks are plain old data in the file's layout;
        // `fits_blocks` checked their length and alignment.
        let blocks = unsafe {
            std::slice::from_raw_parts(
                data.as_ptr() as *const T,
                data.len() / std::mem::size_of::<T>(),
            )
        };
        let mut out = vec![0f32; n];
        k_quants::matmul((1, k, n), x, blocks, &mut out)?;
        Ok(out)
    }
    if !fits_blocks(dtype, data, n, k) {
        return Ok(None);
    }
    Ok(Some(match dtype {
        GgmlDType::Q4K => run::<BlockQ4K>(data, n, k, x)?,
        _ => run::<BlockQ6K>(data, n, k, x)?,
    }))
}

/// The rows of `x` (`(..., cols)`, checked) as f32: how many, and their
/// values in order.
fn input_rows(x: &Tensor, cols: usize) -> Result<(usize, Vec<f32>)> {
    let k = x.dims().last().copied().unwrap_or(0);
    if k != cols {
        candle_core::bail!("quantized product: input has {k} features, the matrix {cols}");
    }
    let xs = x
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((x.elem_count() / k.max(1), xs))
}

/// A product's `out` as a tensor shaped like `x` with `n` last.
fn output(out: Vec<f32>, x: &Tensor, n: usize) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Tensor::from_vec(out, dims, &Device::Cpu)
}

/// Products of one input with several weights, run as one product over
/// the weights stacked by rows: Q8_0 parts on our kernel
/// ([`Q8Matrix::stack`]), or K-quant parts of one type on ours
/// ([`KMatrix::stack`]). One quantization of the input and one pass over
/// the thread pool instead of one per part.
#[derive(Debug, Clone)]
pub struct Stacked {
    matrix: StackedMatrix,
    sizes: Vec<usize>,
}

#[derive(Debug, Clone)]
enum StackedMatrix {
    Q8(Arc<Q8Matrix>),
    K(Arc<KMatrix>),
}

impl Stacked {
    /// `None` unless every part runs on one of our kernels, all of one
    /// type, and they stack.
    pub fn new(parts: &[&QLinear]) -> Option<Stacked> {
        let matrices: Option<Vec<&Q8Matrix>> = parts.iter().map(|p| p.q8()).collect();
        if let Some(matrices) = matrices {
            return Some(Stacked {
                sizes: matrices.iter().map(|m| m.rows).collect(),
                matrix: StackedMatrix::Q8(Arc::new(Q8Matrix::stack(&matrices)?)),
            });
        }
        let tiles: Option<Vec<&KMatrix>> = parts
            .iter()
            .map(|p| match p {
                QLinear::K(ours) => Some(ours.as_ref()),
                _ => None,
            })
            .collect();
        let tiles = tiles?;
        Some(Stacked {
            sizes: tiles.iter().map(|m| m.rows()).collect(),
            matrix: StackedMatrix::K(Arc::new(KMatrix::stack(&tiles)?)),
        })
    }

    /// Output features of each part, in order.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// `x` `(..., cols)` times all parts: the rows of `x` (`m`), and an
    /// `(m, sum of sizes)` row-major product whose rows hold the parts'
    /// outputs side by side.
    pub fn matmul(&self, x: &Tensor) -> Result<(usize, Vec<f32>)> {
        match &self.matrix {
            StackedMatrix::Q8(w) => {
                let (m, xs) = input_rows(x, w.cols)?;
                Ok((m, w.matmul(&xs, m)))
            }
            StackedMatrix::K(tiles) => {
                let (m, xs) = input_rows(x, tiles.cols())?;
                Ok((m, tiles.matmul(&xs, m)))
            }
        }
    }
}

/// Values per Q8_0 block.
const BLOCK: usize = 32;
/// Bytes per Q8_0 block in GGUF: an f16 scale, then 32 signed bytes.
const BLOCK_BYTES: usize = 2 + BLOCK;

/// Rows interleaved per group in [`Q8Matrix`]'s layout.
const GROUP: usize = 4;
/// Bytes of one block of a group: four rows' 32 values, then their four
/// f16 scales (the same 34 bytes a block as GGUF's layout).
const GROUP_BLOCK_BYTES: usize = GROUP * (BLOCK + 2);

/// A Q8_0 weight matrix `(rows, cols)` (rows = output features; a last,
/// partial group of four is padded with zero rows), re-laid so that the
/// kernel reads one sequential stream per four rows: for each group of four
/// rows and each block of 32 columns, the four rows' 32 values, then their
/// four f16 scales.
#[derive(Debug)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    data: Vec<u8>,
    /// The kernel this layout is for. With VNNI, values are stored plus
    /// 128 (as unsigned bytes), so one `vpdpbusd` multiplies them with the
    /// signed activations; the 128 times the activations' sums that this
    /// adds is taken off again (see `Activations::corrections`).
    isa: Isa,
}

/// Which instruction set the kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx2,
    Vnni,
    /// AVX-512 VNNI over tiles of 16 rows ([`TILE_ROWS`]): for inputs a
    /// multiple of 64 long (two blocks a tile).
    Tiles,
}

/// Rows of one tile of the [`Isa::Tiles`] layout.
const TILE_ROWS: usize = 16;
/// Bytes of one tile: two blocks of 16 rows, each eight 64-byte vectors
/// (byte `4r + j` of vector `v`: column `4v + j` of row `r`, plus 128),
/// then the two blocks' 16 f16 scales.
const TILE_BYTES: usize = 2 * (TILE_ROWS * BLOCK + 2 * TILE_ROWS);

fn isa() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return None;
        }
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
        {
            return Some(Isa::Vnni);
        }
        Some(Isa::Avx2)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Whether this CPU runs the kernel (x86-64 with AVX2, FMA and F16C).
pub fn available() -> bool {
    isa().is_some()
}

impl Q8Matrix {
    /// The matrix of a 2-D Q8_0 tensor on the CPU; `None` for other types,
    /// devices, or a CPU the kernel does not run on.
    pub fn from_qtensor(t: &QTensor) -> Result<Option<Q8Matrix>> {
        let tiles = |i| if i == Isa::Vnni { Isa::Tiles } else { i };
        Self::for_isa(t, isa().map(tiles))
    }

    /// [`Q8Matrix::from_qtensor`] for the kernel of `isa` (which the CPU
    /// must run; tests take the AVX2 one on VNNI machines too). `Tiles`
    /// where the columns do not fit it becomes `Vnni`.
    fn for_isa(t: &QTensor, isa: Option<Isa>) -> Result<Option<Q8Matrix>> {
        let Some(mut isa) = isa else {
            return Ok(None);
        };
        if t.dtype() != GgmlDType::Q8_0 || !t.device().is_cpu() {
            return Ok(None);
        }
        let (rows, cols) = match t.shape().dims() {
            &[rows, cols] => (rows, cols),
            _ => return Ok(None),
        };
        let raw = t.data()?;
        let blocks = cols / BLOCK;
        if cols % BLOCK != 0 || raw.len() != rows * blocks * BLOCK_BYTES {
            return Ok(None);
        }
        if isa == Isa::Tiles {
            if cols.is_multiple_of(2 * BLOCK) {
                return Ok(Some(Self::tiles(raw.as_ref(), rows, cols)));
            }
            isa = Isa::Vnni;
        }
        // A last, partial group is padded with zero rows (scale 0), whose
        // products the kernel computes but does not store.
        let groups = rows.div_ceil(GROUP);
        let mut data = Vec::with_capacity(groups * blocks * GROUP_BLOCK_BYTES);
        let zero = [0u8; BLOCK_BYTES];
        let block_of = |row: usize, b: usize| {
            if row < rows {
                &raw[(row * blocks + b) * BLOCK_BYTES..][..BLOCK_BYTES]
            } else {
                &zero[..]
            }
        };
        let offset = if isa == Isa::Avx2 { 0 } else { 128u8 };
        for g in (0..groups * GROUP).step_by(GROUP) {
            for b in 0..blocks {
                for r in 0..GROUP {
                    data.extend(
                        block_of(g + r, b)[2..]
                            .iter()
                            .map(|&q| q.wrapping_add(offset)),
                    );
                }
                for r in 0..GROUP {
                    data.extend_from_slice(&block_of(g + r, b)[..2]);
                }
            }
        }
        Ok(Some(Q8Matrix {
            rows,
            cols,
            data,
            isa,
        }))
    }

    /// The [`Isa::Tiles`] layout of GGUF Q8_0 blocks `raw` (`rows` by
    /// `cols`, a multiple of 64; a last, partial tile padded with zero
    /// rows): tile by tile of 16 rows, pair of blocks by pair of blocks.
    fn tiles(raw: &[u8], rows: usize, cols: usize) -> Q8Matrix {
        let blocks = cols / BLOCK;
        let tiles = rows.div_ceil(TILE_ROWS) * blocks / 2;
        let mut data = vec![0u8; tiles * TILE_BYTES];
        for (i, tile) in data.chunks_exact_mut(TILE_BYTES).enumerate() {
            let (t, pair) = (i / (blocks / 2), i % (blocks / 2));
            for r in 0..TILE_ROWS {
                let row = t * TILE_ROWS + r;
                for h in 0..2 {
                    let values = &mut tile[h * TILE_ROWS * BLOCK..];
                    if row >= rows {
                        for v in 0..BLOCK / 4 {
                            values[64 * v + 4 * r..][..4].fill(128);
                        }
                        continue;
                    }
                    let block = &raw[(row * blocks + 2 * pair + h) * BLOCK_BYTES..][..BLOCK_BYTES];
                    for (c, &q) in block[2..].iter().enumerate() {
                        values[64 * (c / 4) + 4 * r + c % 4] = q.wrapping_add(128);
                    }
                    let scale = 2 * TILE_ROWS * BLOCK + 2 * (h * TILE_ROWS + r);
                    tile[scale..scale + 2].copy_from_slice(&block[..2]);
                }
            }
        }
        Q8Matrix {
            rows,
            cols,
            data,
            isa: Isa::Tiles,
        }
    }

    /// The rows of `parts` (same columns, each a whole number of groups of
    /// four rows but the last) as one matrix, so that products of one
    /// input with all of them run as one: one quantization of the input
    /// and one pass over the thread pool instead of one per part (the
    /// query, key and value projections of a layer, or its gate and up
    /// projections). `None` where the parts do not fit together.
    pub fn stack(parts: &[&Q8Matrix]) -> Option<Q8Matrix> {
        let first = parts.first()?;
        let (_, init) = parts.split_last()?;
        if parts
            .iter()
            .any(|p| p.cols != first.cols || p.isa != first.isa)
            || init.iter().any(|p| {
                !p.rows.is_multiple_of(if p.isa == Isa::Tiles {
                    TILE_ROWS
                } else {
                    GROUP
                })
            })
        {
            return None;
        }
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        Some(Q8Matrix {
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            data,
            isa: first.isa,
        })
    }

    /// Output features (weight rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The 32 values and the scale of block `b` of row `row`.
    #[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
    fn block(&self, row: usize, b: usize) -> ([i8; BLOCK], f32) {
        let mut values = [0i8; BLOCK];
        if self.isa == Isa::Tiles {
            let (t, r) = (row / TILE_ROWS, row % TILE_ROWS);
            let at = (t * (self.cols / BLOCK / 2) + b / 2) * TILE_BYTES;
            let tile = &self.data[at..at + TILE_BYTES];
            let h = b % 2;
            for (c, v) in values.iter_mut().enumerate() {
                *v = tile[h * TILE_ROWS * BLOCK + 64 * (c / 4) + 4 * r + c % 4].wrapping_sub(128)
                    as i8;
            }
            let scale = &tile[2 * TILE_ROWS * BLOCK + 2 * (h * TILE_ROWS + r)..][..2];
            return (values, f16::from_le_bytes([scale[0], scale[1]]).to_f32());
        }
        let at = (row / GROUP * (self.cols / BLOCK) + b) * GROUP_BLOCK_BYTES;
        let group = &self.data[at..at + GROUP_BLOCK_BYTES];
        let r = row % GROUP;
        let scale = &group[GROUP * BLOCK + 2 * r..][..2];
        let offset = if self.isa == Isa::Avx2 { 0 } else { 128u8 };
        for (v, &q) in values.iter_mut().zip(&group[r * BLOCK..][..BLOCK]) {
            *v = q.wrapping_sub(offset) as i8;
        }
        (values, f16::from_le_bytes([scale[0], scale[1]]).to_f32())
    }

    /// `x W^T` for `x` of shape `(..., cols)`: `(..., rows)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, xs) = input_rows(x, self.cols)?;
        output(self.matmul(&xs, m), x, self.rows)
    }

    /// `(m, cols) x (rows, cols)^T`, row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "Q8_0 product: input length");
        let a = Activations::quantize(x, m, self.cols, self.isa);
        #[cfg(target_arch = "x86_64")]
        {
            // not zero-filled first: the tiles write every output once
            let mut out = Vec::with_capacity(m * self.rows);
            // SAFETY: `from_qtensor` detected the instruction set at run
            // time; the groups cover all columns and each group all rows.
            unsafe {
                x86::matmul(self.isa, &a, self, out.as_mut_ptr());
                out.set_len(m * self.rows);
            }
            out
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let mut out = vec![0f32; m * self.rows];
            scalar_matmul(&a, self, &mut out);
            out
        }
    }
}

/// Activation rows quantized to Q8_0.
struct Activations {
    rows: usize,
    quants: Vec<i8>,
    scales: Vec<f32>,
    /// With offset weights: per block, eight lanes of minus 128 times the
    /// sum of four consecutive values (what `vpdpbusd` over weights stored
    /// plus 128 adds too much, lane by lane); empty otherwise.
    corrections: Vec<i32>,
}

impl Activations {
    /// As candle's `BlockQ8_0::from_float`: scale `d = max|x| / 127`
    /// (stored as f16), values `round(x / d)` with the unrounded `d`.
    /// For the kernel of `isa` (detected when its matrix was made): the
    /// VNNI one needs the correction lanes.
    fn quantize(x: &[f32], rows: usize, cols: usize, isa: Isa) -> Self {
        let corrections = isa != Isa::Avx2;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: every `Isa` implies AVX2, FMA and F16C.
        return unsafe { x86::quantize(x, rows, cols, corrections) };
        #[cfg(not(target_arch = "x86_64"))]
        Self::quantize_scalar(x, rows, cols, corrections)
    }

    /// [`Activations::quantize`] without SIMD (and the reference for it).
    #[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
    fn quantize_scalar(x: &[f32], rows: usize, cols: usize, corrections: bool) -> Self {
        let mut quants = vec![0i8; rows * cols];
        let mut scales = Vec::with_capacity(rows * cols / BLOCK);
        for (xs, qs) in x.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK)) {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            scales.push(f16::from_f32(d).to_f32());
            for (q, &v) in qs.iter_mut().zip(xs) {
                *q = (v * id).round() as i8;
            }
        }
        let corrections = if corrections {
            quants
                .chunks_exact(4)
                .map(|q| -128 * q.iter().map(|&v| v as i32).sum::<i32>())
                .collect()
        } else {
            Vec::new()
        };
        Activations {
            rows,
            quants,
            scales,
            corrections,
        }
    }
}

/// The reference the SIMD kernels are tested against.
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
fn scalar_matmul(a: &Activations, w: &Q8Matrix, out: &mut [f32]) {
    let blocks = w.cols / BLOCK;
    for i in 0..a.rows {
        for j in 0..w.rows {
            let mut sum = 0f32;
            for b in 0..blocks {
                let aq = &a.quants[(i * blocks + b) * BLOCK..][..BLOCK];
                let (wq, ws) = w.block(j, b);
                let dot: i32 = aq.iter().zip(wq).map(|(&x, y)| x as i32 * y as i32).sum();
                sum += dot as f32 * a.scales[i * blocks + b] * ws;
            }
            out[i * w.rows + j] = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Activations, Isa, Q8Matrix, BLOCK, GROUP, GROUP_BLOCK_BYTES};
    use half::f16;
    use std::arch::x86_64::*;

    /// Integer dot products of 32 signed bytes, as 8 f32 lanes (AVX2:
    /// `maddubs` needs one unsigned operand, so the signs move to `a`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2(a: __m256i, w: __m256i) -> __m256 {
        let abs_w = _mm256_sign_epi8(w, w);
        let signed_a = _mm256_sign_epi8(a, w);
        let pairs = _mm256_maddubs_epi16(abs_w, signed_a);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// The same with VNNI over weights stored plus 128: one `vpdpbusd`
    /// onto the activations' correction lanes `c`.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    unsafe fn dot_vnni(a: __m256i, w: __m256i, c: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(c, w, a))
    }

    /// [`dot_avx2`] with the VNNI kernel's signature (no correction).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2_c(a: __m256i, w: __m256i, _c: __m256i) -> __m256 {
        dot_avx2(a, w)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// [`Activations::quantize`] with AVX2: the same scale; values rounded
    /// to nearest with ties to even (the scalar path rounds ties away from
    /// zero: an exact tie of `x / d` is the only case where they differ).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize(
        x: &[f32],
        rows: usize,
        cols: usize,
        corrections: bool,
    ) -> Activations {
        let blocks = rows * cols / BLOCK;
        let mut quants = vec![0i8; rows * cols];
        let mut scales = Vec::with_capacity(blocks);
        let mut corr = if corrections {
            vec![0i32; blocks * 8]
        } else {
            Vec::new()
        };
        let sign = _mm256_set1_ps(-0.0);
        // packs interleave 128-bit lanes; this puts the bytes back in order
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for b in 0..blocks {
            let p = x.as_ptr().add(b * BLOCK);
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let mut m = _mm256_andnot_ps(sign, v[0]);
            for x in &v[1..] {
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *x));
            }
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            scales.push(f16::from_f32(d).to_f32());
            let q = |x: __m256| {
                _mm256_cvtps_epi32(_mm256_round_ps(
                    _mm256_mul_ps(x, id),
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
                ))
            };
            let lo = _mm256_packs_epi32(q(v[0]), q(v[1]));
            let hi = _mm256_packs_epi32(q(v[2]), q(v[3]));
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo, hi), order);
            _mm256_storeu_si256(quants.as_mut_ptr().add(b * BLOCK) as *mut __m256i, bytes);
            if corrections {
                // sums of four consecutive values, times -128
                let pairs = _mm256_maddubs_epi16(_mm256_set1_epi8(1), bytes);
                let fours = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
                let c = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(fours, 7));
                _mm256_storeu_si256(corr.as_mut_ptr().add(b * 8) as *mut __m256i, c);
            }
        }
        Activations {
            rows,
            quants,
            scales,
            corrections: corr,
        }
    }

    /// Raw pointers to the operands, shareable between the pool's threads.
    #[derive(Clone, Copy)]
    struct Operands {
        a_q: *const i8,
        a_s: *const f32,
        /// Correction lanes (8 per block), or null without offset weights.
        a_c: *const i32,
        /// [`Q8Matrix`]'s grouped layout.
        w: *const u8,
        out: *mut f32,
        /// Blocks per row (both operands).
        blocks: usize,
        /// Output row length (weight rows).
        n: usize,
    }
    // SAFETY: the threads only read the inputs and write disjoint outputs.
    unsafe impl Send for Operands {}
    unsafe impl Sync for Operands {}

    /// `tile_R`: output rows `i..i + R` by the four columns of group `g`.
    macro_rules! tile {
        ($name:ident, $features:literal, $dot:ident, $r:literal) => {
            #[target_feature(enable = $features)]
            unsafe fn $name(o: Operands, i: usize, g: usize) {
                let mut acc = [[_mm256_setzero_ps(); GROUP]; $r];
                let mut w = o.w.add(g * o.blocks * GROUP_BLOCK_BYTES);
                for b in 0..o.blocks {
                    let mut wq = [_mm256_setzero_si256(); GROUP];
                    let mut ws = [0f32; GROUP];
                    for c in 0..GROUP {
                        wq[c] = _mm256_loadu_si256(w.add(c * BLOCK) as *const __m256i);
                        let bits = (w.add(GROUP * BLOCK + 2 * c) as *const u16).read_unaligned();
                        ws[c] = f16::from_bits(bits).to_f32();
                    }
                    for r in 0..$r {
                        let at = (i + r) * o.blocks + b;
                        let aq = _mm256_loadu_si256(o.a_q.add(at * BLOCK) as *const __m256i);
                        let ad = *o.a_s.add(at);
                        let corr = if o.a_c.is_null() {
                            _mm256_setzero_si256()
                        } else {
                            _mm256_loadu_si256(o.a_c.add(at * 8) as *const __m256i)
                        };
                        for c in 0..GROUP {
                            let d = _mm256_set1_ps(ad * ws[c]);
                            acc[r][c] = _mm256_fmadd_ps(d, $dot(aq, wq[c], corr), acc[r][c]);
                        }
                    }
                    w = w.add(GROUP_BLOCK_BYTES);
                }
                let cols = GROUP.min(o.n - GROUP * g);
                for r in 0..$r {
                    for c in 0..cols {
                        *o.out.add((i + r) * o.n + GROUP * g + c) = hsum(acc[r][c]);
                    }
                }
            }
        };
    }

    /// The loop over a range of groups of four weight rows, all `m` output
    /// rows each, with the tiles `t4` and `t1` in scope.
    macro_rules! columns {
        ($features:literal) => {
            /// The output columns of `groups` for all `m` rows.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn columns(o: Operands, m: usize, groups: std::ops::Range<usize>) {
                let full = m - m % 4;
                for g in groups {
                    for i in (0..full).step_by(4) {
                        t4(o, i, g);
                    }
                    for i in full..m {
                        t1(o, i, g);
                    }
                }
            }
        };
    }

    /// All tiles of one instruction set, and the loop over a range of
    /// groups of four weight rows.
    macro_rules! kernels {
        ($module:ident, $features:literal, $dot:ident) => {
            mod $module {
                use super::*;
                tile!(t4, $features, $dot, 4);
                tile!(t1, $features, $dot, 1);
                columns!($features);
            }
        };
    }

    kernels!(avx2, "avx2,fma,f16c", dot_avx2_c);
    kernels!(vnni, "avx2,fma,f16c,avx512vnni,avx512vl", dot_vnni);

    /// `tile_R` of the VNNI kernel over two blocks at a time in 512-bit
    /// registers (an even number of blocks a row): per pair of rows, one
    /// `vpdpbusd`, a conversion, a multiply by the weight scales and a
    /// fused multiply-add with the activation scales cover 64 values.
    macro_rules! tile512 {
        ($name:ident, $r:literal) => {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
            unsafe fn $name(o: Operands, i: usize, g: usize) {
                let mut acc = [[_mm512_setzero_ps(); GROUP]; $r];
                let mut w = o.w.add(g * o.blocks * GROUP_BLOCK_BYTES);
                // lane patterns: weight row `c`'s scale of the first block
                // in the low eight lanes, of the second in the high eight
                // (from the eight scales of the two blocks); an activation
                // row's two block scales likewise
                let by_row: [__m512i; GROUP] = std::array::from_fn(|c| {
                    let c = c as i32;
                    _mm512_setr_epi32(
                        c,
                        c,
                        c,
                        c,
                        c,
                        c,
                        c,
                        c,
                        4 + c,
                        4 + c,
                        4 + c,
                        4 + c,
                        4 + c,
                        4 + c,
                        4 + c,
                        4 + c,
                    )
                });
                let halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
                for b in (0..o.blocks).step_by(2) {
                    let next = w.add(GROUP_BLOCK_BYTES);
                    // the four rows' f16 scales of both blocks, as f32
                    let scales = _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_unpacklo_epi64(
                        _mm_loadl_epi64(w.add(GROUP * BLOCK) as *const __m128i),
                        _mm_loadl_epi64(next.add(GROUP * BLOCK) as *const __m128i),
                    )));
                    let mut wq = [_mm512_setzero_si512(); GROUP];
                    let mut ws = [_mm512_setzero_ps(); GROUP];
                    for c in 0..GROUP {
                        let lo = _mm256_loadu_si256(w.add(c * BLOCK) as *const __m256i);
                        let hi = _mm256_loadu_si256(next.add(c * BLOCK) as *const __m256i);
                        wq[c] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                        ws[c] = _mm512_permutexvar_ps(by_row[c], scales);
                    }
                    for r in 0..$r {
                        let at = (i + r) * o.blocks + b;
                        let aq = _mm512_loadu_si512(o.a_q.add(at * BLOCK) as *const _);
                        let corr = _mm512_loadu_si512(o.a_c.add(at * 8) as *const _);
                        let ad = _mm512_permutexvar_ps(
                            halves,
                            _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64(
                                o.a_s.add(at) as *const __m128i,
                            ))),
                        );
                        for c in 0..GROUP {
                            let dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, wq[c], aq));
                            acc[r][c] = _mm512_fmadd_ps(_mm512_mul_ps(dot, ws[c]), ad, acc[r][c]);
                        }
                    }
                    w = next.add(GROUP_BLOCK_BYTES);
                }
                let cols = GROUP.min(o.n - GROUP * g);
                for r in 0..$r {
                    for c in 0..cols {
                        *o.out.add((i + r) * o.n + GROUP * g + c) = _mm512_reduce_add_ps(acc[r][c]);
                    }
                }
            }
        };
    }

    mod vnni512 {
        use super::*;
        tile512!(t1, 1);

        /// `tile_4` with the block sums added up as integers before they
        /// are scaled. With one 512-bit multiply unit (port 0), a product
        /// of one row and one weight row per block pair was four port-0
        /// instructions (`vpdpbusd`, a conversion, two float multiplies);
        /// here the eight `vpdpbusd` results of two rows by four weight
        /// rows are summed within their blocks by shuffles (port 5) and
        /// adds, then converted, scaled and accumulated once: 16 values in
        /// one register instead of eight registers of lane sums.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
        unsafe fn t4(o: Operands, i: usize, g: usize) {
            // per pair of rows: lanes (row, block of the pair, weight row)
            let mut acc = [_mm512_setzero_ps(); 2];
            let mut w = o.w.add(g * o.blocks * GROUP_BLOCK_BYTES);
            // activation scales [r0 b, r0 b', r1 b, r1 b'] to lanes of four
            let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
            for b in (0..o.blocks).step_by(2) {
                let next = w.add(GROUP_BLOCK_BYTES);
                // the four rows' scales of both blocks, twice
                let scales = _mm256_cvtph_ps(_mm_unpacklo_epi64(
                    _mm_loadl_epi64(w.add(GROUP * BLOCK) as *const __m128i),
                    _mm_loadl_epi64(next.add(GROUP * BLOCK) as *const __m128i),
                ));
                let ws = _mm512_insertf32x8(_mm512_castps256_ps512(scales), scales, 1);
                let wq: [__m512i; GROUP] = std::array::from_fn(|c| {
                    let lo = _mm256_loadu_si256(w.add(c * BLOCK) as *const __m256i);
                    let hi = _mm256_loadu_si256(next.add(c * BLOCK) as *const __m256i);
                    _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
                });
                for (p, acc) in acc.iter_mut().enumerate() {
                    let at = [(i + 2 * p) * o.blocks + b, (i + 2 * p + 1) * o.blocks + b];
                    // v[4r + c]: 16 lanes, eight per block
                    let mut v = [_mm512_setzero_si512(); 8];
                    for (r, &at) in at.iter().enumerate() {
                        let aq = _mm512_loadu_si512(o.a_q.add(at * BLOCK) as *const _);
                        let corr = _mm512_loadu_si512(o.a_c.add(at * 8) as *const _);
                        for c in 0..GROUP {
                            v[4 * r + c] = _mm512_dpbusd_epi32(corr, wq[c], aq);
                        }
                    }
                    // within each 128-bit lane: sums of its four values of
                    // v[4k..4k + 4], in order
                    let fours = |k: usize| {
                        let pair = |x: __m512i, y: __m512i| {
                            _mm512_add_epi32(
                                _mm512_unpacklo_epi32(x, y),
                                _mm512_unpackhi_epi32(x, y),
                            )
                        };
                        let (a, b) = (
                            pair(v[4 * k], v[4 * k + 1]),
                            pair(v[4 * k + 2], v[4 * k + 3]),
                        );
                        _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b))
                    };
                    let (r0, r1) = (fours(0), fours(1));
                    // 128-bit lanes 0+1 are block b, 2+3 block b': lanes
                    // [r0 b, r0 b', r1 b, r1 b'], each the four weight rows
                    let sums = _mm512_add_epi32(
                        _mm512_shuffle_i32x4(r0, r1, 0x88),
                        _mm512_shuffle_i32x4(r0, r1, 0xDD),
                    );
                    let ad = _mm512_permutexvar_ps(
                        spread,
                        _mm512_castps128_ps512(_mm_castsi128_ps(_mm_unpacklo_epi64(
                            _mm_loadl_epi64(o.a_s.add(at[0]) as *const __m128i),
                            _mm_loadl_epi64(o.a_s.add(at[1]) as *const __m128i),
                        ))),
                    );
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(ws, ad), *acc);
                }
                w = next.add(GROUP_BLOCK_BYTES);
            }
            let cols = GROUP.min(o.n - GROUP * g);
            for (p, acc) in acc.iter().enumerate() {
                let mut lanes = [0f32; 16];
                _mm512_storeu_ps(lanes.as_mut_ptr(), *acc);
                for r in 0..2 {
                    for c in 0..cols {
                        *o.out.add((i + 2 * p + r) * o.n + GROUP * g + c) =
                            lanes[8 * r + c] + lanes[8 * r + 4 + c];
                    }
                }
            }
        }

        // the VNNI layout with corrections and an even number of blocks
        columns!("avx2,fma,f16c,avx512f,avx512bw,avx512vnni");
    }

    /// # Safety
    /// The CPU must support `isa`.
    /// `out` must have room for `a.rows * w.rows` values.
    pub(super) unsafe fn matmul(isa: Isa, a: &Activations, w: &Q8Matrix, out: *mut f32) {
        if isa == Isa::Tiles {
            return super::tiles::matmul(a, w, out);
        }
        let o = Operands {
            a_q: a.quants.as_ptr(),
            a_s: a.scales.as_ptr(),
            a_c: if a.corrections.is_empty() {
                std::ptr::null()
            } else {
                a.corrections.as_ptr()
            },
            w: w.data.as_ptr(),
            out,
            blocks: w.cols / BLOCK,
            n: w.rows,
        };
        let m = a.rows;
        candle_core::utils::barrier_pool().execute_chunked(w.rows.div_ceil(GROUP), |groups| {
            // SAFETY: as the caller promised; each call writes only the
            // output columns of its groups.
            unsafe {
                match isa {
                    Isa::Avx2 => avx2::columns(o, m, groups),
                    Isa::Vnni if o.blocks.is_multiple_of(2) => vnni512::columns(o, m, groups),
                    Isa::Vnni => vnni::columns(o, m, groups),
                    Isa::Tiles => unreachable!("tiles run in `tiles::matmul`"),
                }
            }
        });
    }
}

/// The kernel of the [`Isa::Tiles`] layout: one `vpdpbusd` multiplies
/// four columns of a tile's 16 rows by four broadcast values of one input
/// row, leaving the 16 row sums in order in the lanes (no horizontal sums,
/// as the four-row groups need); up to eight input rows a pass over the
/// weights, whose tile two ahead is prefetched into L2 (as in
/// `kquant.rs`); each block's sums start from the input block's correction
/// (-128 times its sum), then are scaled in f32.
#[cfg(target_arch = "x86_64")]
mod tiles {
    use super::super::kquant::x86::{passes, prefetch, store};
    use super::super::kquant::ROWS;
    use super::{Activations, Q8Matrix, BLOCK, TILE_BYTES, TILE_ROWS};
    use std::arch::x86_64::*;

    // the K-quant kernel's tile loop, prefetch and store serve these tiles
    const _: () = assert!(TILE_ROWS == ROWS);

    #[derive(Clone, Copy)]
    struct Operands {
        tiles: *const u8,
        quants: *const i8,
        scales: *const f32,
        /// Per input block: -128 times the sum of its values.
        corrections: *const i32,
        /// Blocks per row.
        blocks: usize,
        /// Output row length (weight rows).
        n: usize,
        out: *mut f32,
    }
    // SAFETY: the threads only read the inputs and write disjoint outputs.
    unsafe impl Send for Operands {}
    unsafe impl Sync for Operands {}

    /// Output columns of tile row `t` for input rows `i..i + M`; with few
    /// rows, even and odd vectors go to separate sums (longer chains of
    /// independent `vpdpbusd`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn rows<const M: usize>(o: Operands, t: usize, i: usize) {
        let split = M <= 4;
        let pairs = o.blocks / 2;
        let mut acc = [_mm512_setzero_ps(); M];
        for p in 0..pairs {
            let tile = o.tiles.add((t * pairs + p) * TILE_BYTES);
            prefetch(tile, TILE_BYTES);
            for h in 0..2 {
                let b = 2 * p + h;
                let at: [usize; M] = std::array::from_fn(|r| (i + r) * o.blocks + b);
                let mut sums = [[_mm512_setzero_si512(); M]; 2];
                for r in 0..M {
                    sums[0][r] = _mm512_set1_epi32(*o.corrections.add(at[r]));
                }
                let values = tile.add(h * TILE_ROWS * BLOCK);
                for v in 0..BLOCK / 4 {
                    let w = _mm512_loadu_si512(values.add(64 * v) as *const __m512i);
                    let s = usize::from(split) & v;
                    for r in 0..M {
                        let x = o.quants.add(at[r] * BLOCK + 4 * v);
                        let x = _mm512_set1_epi32((x as *const i32).read_unaligned());
                        sums[s][r] = _mm512_dpbusd_epi32(sums[s][r], w, x);
                    }
                }
                let scales = tile.add(2 * TILE_ROWS * BLOCK + 2 * TILE_ROWS * h);
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(scales as *const __m256i));
                for r in 0..M {
                    let sum = if split {
                        _mm512_add_epi32(sums[0][r], sums[1][r])
                    } else {
                        sums[0][r]
                    };
                    let d = _mm512_mul_ps(dw, _mm512_set1_ps(*o.scales.add(at[r])));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), d, acc[r]);
                }
            }
        }
        store(o.out, o.n, t, i, &acc);
    }

    /// Input rows `i..i + count` (at most eight) against tile row `t`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn pass(o: Operands, t: usize, i: usize, count: usize) {
        match count {
            1 => rows::<1>(o, t, i),
            2 => rows::<2>(o, t, i),
            3 => rows::<3>(o, t, i),
            4 => rows::<4>(o, t, i),
            5 => rows::<5>(o, t, i),
            6 => rows::<6>(o, t, i),
            7 => rows::<7>(o, t, i),
            _ => rows::<8>(o, t, i),
        }
    }

    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI; `w` in the tiles layout,
    /// `a` with corrections; `out` with room for `a.rows * w.rows` values.
    pub(super) unsafe fn matmul(a: &Activations, w: &Q8Matrix, out: *mut f32) {
        let blocks = w.cols / BLOCK;
        // the eight correction lanes of each block, summed
        let corrections: Vec<i32> = a
            .corrections
            .chunks_exact(8)
            .map(|lanes| lanes.iter().sum())
            .collect();
        let o = Operands {
            tiles: w.data.as_ptr(),
            quants: a.quants.as_ptr(),
            scales: a.scales.as_ptr(),
            corrections: corrections.as_ptr(),
            blocks,
            n: w.rows,
            out,
        };
        passes(w.rows, a.rows, |t, i, count| {
            // SAFETY: as the caller promised; each pass writes only its
            // tile's columns of its rows.
            unsafe { pass(o, t, i, count) }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q8(rows: usize, cols: usize, seed: u64) -> (Tensor, QTensor) {
        let w = Tensor::from_vec(
            crate::seeded::values(rows * cols, seed),
            (rows, cols),
            &Device::Cpu,
        )
        .unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        (w, q)
    }

    #[test]
    fn equals_candle_and_the_scalar_reference() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA");
            return;
        }
        // shapes with row and column tails (m % 4, n % 4 != 0), one row
        // both kernels where the CPU has VNNI (the AVX2 one runs everywhere)
        let kernels = [Some(Isa::Avx2), isa(), isa().map(|_| Isa::Tiles)];
        for ((m, n, k), kernel) in [
            (1, 64, 96),
            (7, 132, 64),
            (13, 36, 256),
            (4, 4, 32),
            (5, 8, 160),
            (6, 66, 64),
            (3, 13, 32),
        ]
        .into_iter()
        .flat_map(|shape| kernels.map(|i| (shape, i)))
        {
            let (_, q) = q8(n, k, 7 + n as u64);
            let ours = Q8Matrix::for_isa(&q, kernel).unwrap().unwrap();
            let x = crate::seeded::values(m * k, 99 + m as u64);
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let candle = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
            let expected: Vec<f32> = candle_core::Module::forward(&candle, &xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got = ours.matmul(&x, m);
            let a = Activations::quantize(&x, m, k, ours.isa);
            let mut scalar = vec![0f32; m * n];
            scalar_matmul(&a, &ours, &mut scalar);
            for ((e, g), s) in expected.iter().zip(&got).zip(&scalar) {
                assert!(
                    (e - g).abs() <= 1e-4 * (1.0 + e.abs()),
                    "{m}x{n}x{k}: {e} vs {g}"
                );
                assert!(
                    (s - g).abs() <= 1e-4 * (1.0 + s.abs()),
                    "{m}x{n}x{k}: {s} vs {g}"
                );
            }
            let y = ours.forward(&xt.reshape((1, m, k)).unwrap()).unwrap();
            assert_eq!(y.dims(), &[1, m, n]);
        }
    }

    #[test]
    fn stacked_matrices_give_the_parts_side_by_side() {
        if !available() {
            return;
        }
        // both layouts where the CPU has VNNI: groups of four rows, tiles
        // of 16; a last part with a partial group or tile
        for kernel in [isa(), isa().map(|_| Isa::Tiles)] {
            let unit = if kernel == Some(Isa::Tiles) {
                TILE_ROWS
            } else {
                GROUP
            };
            let sizes = [2 * unit, unit, unit + 2];
            let parts: Vec<Q8Matrix> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    Q8Matrix::for_isa(&q8(n, 64, 40 + i as u64).1, kernel)
                        .unwrap()
                        .unwrap()
                })
                .collect();
            let refs: Vec<&Q8Matrix> = parts.iter().collect();
            let stacked = Q8Matrix::stack(&refs).unwrap();
            let total: usize = sizes.iter().sum();
            assert_eq!(stacked.rows(), total);
            let m = 5;
            let x = crate::seeded::values(m * 64, 8);
            let got = stacked.matmul(&x, m);
            let wanted: Vec<Vec<f32>> = parts.iter().map(|p| p.matmul(&x, m)).collect();
            for i in 0..m {
                let row: Vec<f32> = parts
                    .iter()
                    .zip(&wanted)
                    .flat_map(|(p, w)| w[i * p.rows()..(i + 1) * p.rows()].to_vec())
                    .collect();
                assert_eq!(&got[i * total..(i + 1) * total], &row[..]);
            }
            // a partial group anywhere but last, or other widths, do not stack
            assert!(Q8Matrix::stack(&[&parts[2], &parts[0]]).is_none());
            let wide = Q8Matrix::for_isa(&q8(unit, 128, 1).1, kernel)
                .unwrap()
                .unwrap();
            assert!(Q8Matrix::stack(&[&parts[0], &wide]).is_none());
        }
    }

    #[test]
    fn simd_activation_quantization_equals_the_scalar_one() {
        if !available() {
            return;
        }
        let mut x = crate::seeded::values(64 * 96, 11);
        x[..32].fill(0.0); // an all-zero block
        x[40] = 1e-30; // a tiny one
                       // the SIMD quantization needs AVX2 only; VNNI adds the corrections
        for isa in [Isa::Avx2, Isa::Vnni] {
            let fast = Activations::quantize(&x, 64, 96, isa);
            let slow = Activations::quantize_scalar(&x, 64, 96, isa == Isa::Vnni);
            assert_eq!(fast.quants, slow.quants);
            assert_eq!(fast.scales, slow.scales);
            assert_eq!(fast.corrections, slow.corrections);
        }
    }

    #[test]
    fn stacked_k_quant_parts_give_the_parts_side_by_side() {
        if !super::super::kquant::available() {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI");
            return;
        }
        let k = 512;
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            // a last part with a partial tile of 16 rows
            let sizes = [32, 16, 18];
            let parts: Vec<QLinear> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let w = crate::seeded::values(n * k, 60 + i as u64);
                    let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
                    QLinear::new(true, QTensor::quantize(&w, dtype).unwrap()).unwrap()
                })
                .collect();
            let refs: Vec<&QLinear> = parts.iter().collect();
            let stacked = Stacked::new(&refs).unwrap();
            assert_eq!(stacked.sizes(), &sizes);
            let total: usize = sizes.iter().sum();
            for m in [1, 9] {
                let x = crate::seeded::values(m * k, 70 + m as u64);
                let x = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
                let (rows, got) = stacked.matmul(&x).unwrap();
                assert_eq!((rows, got.len()), (m, m * total));
                let wanted: Vec<Vec<f32>> = parts
                    .iter()
                    .map(|p| {
                        p.forward(&x)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1()
                            .unwrap()
                    })
                    .collect();
                for i in 0..m {
                    let row: Vec<f32> = sizes
                        .iter()
                        .zip(&wanted)
                        .flat_map(|(&n, w)| w[i * n..(i + 1) * n].to_vec())
                        .collect();
                    for (g, w) in got[i * total..(i + 1) * total].iter().zip(&row) {
                        assert!(
                            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                            "{dtype:?} m {m}: {g} vs {w}"
                        );
                    }
                }
            }
            // a partial tile anywhere but last, or mixed types, do not stack
            assert!(Stacked::new(&[&parts[2], &parts[0]]).is_none());
        }
        let q4 = |seed| {
            let w = Tensor::from_vec(crate::seeded::values(16 * k, seed), (16, k), &Device::Cpu);
            QLinear::new(
                true,
                QTensor::quantize(&w.unwrap(), GgmlDType::Q4K).unwrap(),
            )
            .unwrap()
        };
        let w = Tensor::from_vec(crate::seeded::values(16 * k, 3), (16, k), &Device::Cpu).unwrap();
        let q6 = QLinear::new(true, QTensor::quantize(&w, GgmlDType::Q6K).unwrap()).unwrap();
        assert!(Stacked::new(&[&q4(1), &q6]).is_none());
        assert!(Stacked::new(&[&q4(1), &q4(2)]).is_some());
    }

    #[test]
    fn k_quant_products_equal_candle_products() {
        let (n, k) = (36, 512);
        let w = Tensor::from_vec(crate::seeded::values(n * k, 5), (n, k), &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let quantize = || QTensor::quantize(&w, dtype).unwrap();
            let candle = QMatMul::from_qtensor(quantize()).unwrap();
            let ours = QLinear::new(true, quantize()).unwrap();
            match (&ours, super::super::kquant::available()) {
                (QLinear::K(..), true) | (QLinear::Candle(_), false) => {}
                (other, _) => panic!("{dtype:?} became {other:?}"),
            }
            // any number of rows on our K-quant kernel where it runs, one
            // Q4_K row elsewhere on the dot products over the file's blocks
            let x =
                Tensor::from_vec(crate::seeded::values(9 * k, 6), (1, 9, k), &Device::Cpu).unwrap();
            for rows in [1, 3, 9] {
                let x = x.narrow(1, 0, rows).unwrap();
                let values = |y: Result<Tensor>| -> Vec<f32> {
                    y.and_then(|y| y.flatten_all()?.to_vec1()).unwrap()
                };
                let (got, want) = (values(ours.forward(&x)), values(candle.forward(&x)));
                assert_eq!(got.len(), rows * n);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-3 * (1.0 + w.abs()),
                        "{dtype:?} {rows} rows: {g} vs {w}"
                    );
                }
            }
            let row = x.narrow(1, 0, 1).unwrap();
            assert_eq!(
                q4k_row(&candle, &row).unwrap().is_some(),
                dtype == GgmlDType::Q4K
            );
        }
    }

    #[test]
    fn other_types_and_shapes_are_left_to_candle() {
        let w =
            Tensor::from_vec(crate::seeded::values(64 * 64, 3), (64, 64), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_0).unwrap();
        assert!(Q8Matrix::from_qtensor(&q).unwrap().is_none());
    }
}
