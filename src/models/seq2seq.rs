//! What the encoder-decoder families (Marian, T5, M2M100/NLLB) share: the
//! interface the search in [`crate::generate::search`] drives
//! ([`Seq2SeqNet`], [`DecoderState`]), the interface a family's text
//! handling offers ([`Seq2SeqText`]), the attention arithmetic with padding
//! masks, the `generation_config.json` defaults of a checkpoint, and
//! [`Seq2SeqModel`], which ties them into batched generation for the
//! pipeline.
//!
//! candle 0.11's own Marian and T5 cannot batch sentences of different
//! lengths (no padding masks), grow their KV caches by concatenating the
//! whole cache each step and recompute cross-attention keys and values every
//! step. Here instead:
//! - the encoder takes a right-padded batch and a mask; padded keys are
//!   masked out of encoder self-attention and of cross-attention by an
//!   additive bias (`0` or `-1e9`), so a padded batch gives the outputs of
//!   one-at-a-time runs (right padding keeps every real token's position);
//! - cross-attention keys and values are computed once per batch
//!   ([`Seq2SeqNet::start`]) and kept in [`LayerState`];
//! - self-attention caches are allocated once for the batch's longest
//!   budget and written in place (`Tensor::slice_set`), never concatenated;
//! - rows are removed or reordered by [`DecoderState::select`] (finished
//!   rows leave the batch; beam search reorders its beams).
//!
//! The decoder never needs a padding mask: every row starts from the same
//! one-token decoder prefix and advances one token per step.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::config::GenSettings;
use crate::error::{Error, Result};
use crate::generate::search::{self, EarlyStopping, SearchConfig};

use super::{Generation, Task};

/// The additive attention bias of a masked (padding) key.
pub const MASKED: f32 = -1e9;

/// The neural network of an encoder-decoder family.
pub trait Seq2SeqNet: Send + Sync {
    /// Encodes a right-padded batch: `ids` `[rows, len]` u32, `mask` `[rows, len]`
    /// f32 (1 real, 0 padding); returns the last hidden states `[rows, len, d]`.
    fn encode(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor>;
    /// Prepares decoding for an encoded batch: cross-attention keys and values
    /// of every layer, self-attention caches for `capacity` tokens.
    fn start(
        &self,
        encoded: &Tensor,
        mask: &Tensor,
        capacity: usize,
    ) -> candle_core::Result<DecoderState>;
    /// Feeds one token per row (`tokens` `[rows]` u32) at position
    /// `state.len`; returns the next-token logits `[rows, vocab]` (f32).
    fn step(&self, state: &mut DecoderState, tokens: &Tensor) -> candle_core::Result<Tensor>;
    /// The device the weights live on.
    fn device(&self) -> &Device;
}

/// Text in and out of a family's vocabulary, and what a task means for it.
pub trait Seq2SeqText: Send + Sync {
    /// The encoder input of one task (prefix, language tokens and end token
    /// included), or a per-record error message (e.g. an unsupported
    /// language).
    fn encode(&self, task: Task, text: &str) -> std::result::Result<Vec<u32>, String>;
    /// The token forced right after the decoder start for this task (NLLB's
    /// target language), if any.
    fn forced_bos(&self, task: Task) -> std::result::Result<Option<u32>, String>;
    /// Generated ids back to text, special tokens dropped.
    fn decode(&self, ids: &[u32]) -> String;
    /// The languages the checkpoint can translate into, as the job writes
    /// them (ISO 639-1 where one exists), for `tidings models inspect`.
    fn languages(&self) -> Vec<String>;
}

/// One decoder layer's caches for a batch.
#[derive(Clone)]
pub struct LayerState {
    /// Self-attention keys, `[rows, heads, capacity, head_dim]`, valid up to
    /// [`DecoderState::len`].
    pub self_k: Tensor,
    /// Self-attention values, like `self_k`.
    pub self_v: Tensor,
    /// Cross-attention keys `[rows, heads, src_len, head_dim]`.
    pub cross_k: Tensor,
    /// Cross-attention values, like `cross_k`.
    pub cross_v: Tensor,
}

impl LayerState {
    /// Caches for a batch whose cross-attention keys and values are known.
    pub fn new(cross_k: Tensor, cross_v: Tensor, capacity: usize) -> candle_core::Result<Self> {
        let (rows, heads, _, head_dim) = cross_k.dims4()?;
        let shape = (rows, heads, capacity.max(1), head_dim);
        let self_k = Tensor::zeros(shape, cross_k.dtype(), cross_k.device())?;
        let self_v = Tensor::zeros(shape, cross_k.dtype(), cross_k.device())?;
        Ok(LayerState {
            self_k,
            self_v,
            cross_k,
            cross_v,
        })
    }

    /// Writes one step's key and value (`[rows, heads, 1, head_dim]`) at
    /// `pos` and returns the keys and values of positions `0..=pos`.
    pub fn append(
        &mut self,
        k: &Tensor,
        v: &Tensor,
        pos: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let capacity = self.self_k.dim(2)?;
        if pos >= capacity {
            // Only reached if a caller under-estimated the budget: grow once
            // to twice the size rather than fail.
            let grow = |t: &Tensor| -> candle_core::Result<Tensor> {
                let (r, h, c, d) = t.dims4()?;
                let extra = Tensor::zeros((r, h, c.max(pos + 1 - c), d), t.dtype(), t.device())?;
                Tensor::cat(&[t, &extra], 2)?.contiguous()
            };
            self.self_k = grow(&self.self_k)?;
            self.self_v = grow(&self.self_v)?;
        }
        self.self_k.slice_set(&k.contiguous()?, 2, pos)?;
        self.self_v.slice_set(&v.contiguous()?, 2, pos)?;
        Ok((
            self.self_k.narrow(2, 0, pos + 1)?,
            self.self_v.narrow(2, 0, pos + 1)?,
        ))
    }
}

/// The decoder's state for one batch: per-layer caches, the cross-attention
/// padding bias and how many tokens each row has been fed.
#[derive(Clone)]
pub struct DecoderState {
    /// One entry per decoder layer.
    pub layers: Vec<LayerState>,
    /// `[rows, 1, 1, src_len]` additive bias: 0 on real source tokens,
    /// [`MASKED`] on padding.
    pub cross_bias: Tensor,
    /// Tokens fed so far (the position of the next one).
    pub len: usize,
    /// Family-specific per-batch tensors that follow the rows (none yet).
    pub extra: Vec<Tensor>,
    /// Decoder rows per entry of the cross-attention keys, values and bias:
    /// the beam width once [`DecoderState::share_groups`] has run (the
    /// beams of one input share its entry), else 1.
    pub group: usize,
}

impl DecoderState {
    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.cross_bias.dim(0).unwrap_or(0) * self.group
    }

    /// Gives every row `k` decoder rows (beam search) that share its
    /// cross-attention keys, values and bias: only the self-attention
    /// caches and `extra` are repeated. Computing the cross-attention keys
    /// and values of an encoder output repeated `k` times instead cost
    /// `k` times the products and 19% of a beam-4 OPUS-MT-sized run (7%
    /// in zeroing the fresh pages).
    pub fn share_groups(&mut self, k: usize) -> candle_core::Result<()> {
        if k <= 1 {
            return Ok(());
        }
        self.ungroup()?;
        let n = self.rows() as u32;
        let idx: Vec<u32> = (0..n).flat_map(|i| std::iter::repeat_n(i, k)).collect();
        let idx = Tensor::new(idx, self.cross_bias.device())?;
        for l in &mut self.layers {
            l.self_k = l.self_k.index_select(&idx, 0)?;
            l.self_v = l.self_v.index_select(&idx, 0)?;
        }
        for t in &mut self.extra {
            *t = t.index_select(&idx, 0)?;
        }
        self.group = k;
        Ok(())
    }

    /// One cross-attention entry per decoder row again.
    fn ungroup(&mut self) -> candle_core::Result<()> {
        if self.group <= 1 {
            return Ok(());
        }
        let g = self.group as u32;
        let idx: Vec<u32> = (0..self.rows() as u32).map(|r| r / g).collect();
        let idx = Tensor::new(idx, self.cross_bias.device())?;
        for l in &mut self.layers {
            l.cross_k = l.cross_k.index_select(&idx, 0)?;
            l.cross_v = l.cross_v.index_select(&idx, 0)?;
        }
        self.cross_bias = self.cross_bias.index_select(&idx, 0)?;
        self.group = 1;
        Ok(())
    }

    /// The groups `rows` keeps when it takes whole groups, each in order.
    fn whole_groups(&self, rows: &[u32]) -> Option<Vec<u32>> {
        let g = self.group;
        if g <= 1 || !rows.len().is_multiple_of(g) {
            return None;
        }
        rows.chunks(g)
            .map(|c| {
                let first = c[0];
                let whole = (first as usize).is_multiple_of(g)
                    && c.iter().enumerate().all(|(i, &r)| r == first + i as u32);
                whole.then_some(first / g as u32)
            })
            .collect()
    }

    fn is_identity(&self, rows: &[u32]) -> bool {
        rows.len() == self.rows() && rows.iter().enumerate().all(|(i, &r)| i == r as usize)
    }

    /// Reorders rows within groups that share an encoder input (beam
    /// search's per-step reorder, where every new row comes from a beam of
    /// the same input): only the self-attention caches move; the
    /// cross-attention keys and values, identical within a group, stay.
    pub fn reorder_within_groups(&mut self, rows: &[u32]) -> candle_core::Result<()> {
        if self.is_identity(rows) {
            return Ok(());
        }
        let idx = Tensor::new(rows, self.cross_bias.device())?;
        let reorder = ReorderRows {
            rows,
            len: self.len,
        };
        for l in &mut self.layers {
            for cache in [&mut l.self_k, &mut l.self_v] {
                if reorder.applies(cache) {
                    cache.inplace_op1(&reorder)?;
                } else {
                    *cache = cache.index_select(&idx, 0)?;
                }
            }
        }
        Ok(())
    }

    /// Keeps the given rows, in the given order (repeats allowed): drops
    /// finished rows, reorders beams.
    pub fn select(&mut self, rows: &[u32]) -> candle_core::Result<()> {
        if self.is_identity(rows) {
            return Ok(());
        }
        let groups = match self.whole_groups(rows) {
            Some(g) => g,
            None => {
                self.ungroup()?;
                rows.to_vec()
            }
        };
        let idx = Tensor::new(rows, self.cross_bias.device())?;
        let gidx = Tensor::new(groups, self.cross_bias.device())?;
        let pick = |t: &Tensor| t.index_select(&idx, 0);
        let pick_group = |t: &Tensor| t.index_select(&gidx, 0);
        for l in &mut self.layers {
            l.self_k = pick(&l.self_k)?;
            l.self_v = pick(&l.self_v)?;
            l.cross_k = pick_group(&l.cross_k)?;
            l.cross_v = pick_group(&l.cross_v)?;
        }
        self.cross_bias = pick_group(&self.cross_bias)?;
        for t in &mut self.extra {
            *t = pick(t)?;
        }
        Ok(())
    }
}

/// Beam search's per-step re-order of a self-attention cache
/// `[rows, heads, capacity, head_dim]`, in place on the CPU: only rows that
/// change are written, and only their first `len` (filled) positions.
/// `index_select` instead copied every row's whole capacity into a fresh
/// tensor each step (8% of a beam-4 OPUS-MT-sized run in memory copies,
/// 5% in zeroing fresh pages).
struct ReorderRows<'a> {
    /// New row `i` is old row `rows[i]`.
    rows: &'a [u32],
    /// Filled positions.
    len: usize,
}

impl ReorderRows<'_> {
    fn applies(&self, cache: &Tensor) -> bool {
        cache.device().is_cpu()
            && cache.dtype() == DType::F32
            && cache.is_contiguous()
            && cache.dims().len() == 4
            && cache.dim(0).ok() == Some(self.rows.len())
            && cache.dim(2).is_ok_and(|c| c >= self.len)
    }
}

impl candle_core::InplaceOp1 for ReorderRows<'_> {
    fn name(&self) -> &'static str {
        "reorder-cache-rows"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("reorder-cache-rows: f32 caches only");
        };
        let &[rows, heads, capacity, d] = layout.dims() else {
            candle_core::bail!("reorder-cache-rows: a 4-D cache");
        };
        if !layout.is_contiguous() || rows != self.rows.len() || self.len > capacity {
            candle_core::bail!("reorder-cache-rows: cache layout");
        }
        let data = &mut data[layout.start_offset()..][..rows * heads * capacity * d];
        let filled = self.len * d;
        let moved: Vec<usize> = (0..rows).filter(|&i| self.rows[i] as usize != i).collect();
        // the sources of every moved row first, then the writes
        let mut saved = Vec::with_capacity(moved.len() * heads * filled);
        for &i in &moved {
            let from = self.rows[i] as usize;
            if from >= rows {
                candle_core::bail!("reorder-cache-rows: row {from} of {rows}");
            }
            for h in 0..heads {
                let at = (from * heads + h) * capacity * d;
                saved.extend_from_slice(&data[at..at + filled]);
            }
        }
        for (m, &i) in moved.iter().enumerate() {
            for h in 0..heads {
                let at = (i * heads + h) * capacity * d;
                let src = &saved[(m * heads + h) * filled..][..filled];
                data[at..at + filled].copy_from_slice(src);
            }
        }
        Ok(())
    }
}

/// The additive key bias `[rows, 1, 1, len]` of a `[rows, len]` mask.
pub fn key_bias(mask: &Tensor) -> candle_core::Result<Tensor> {
    let (rows, len) = mask.dims2()?;
    // (1 - mask) * MASKED
    let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * (-MASKED as f64))?;
    bias.reshape((rows, 1, 1, len))
}

/// Splits `[rows, len, heads * head_dim]` into `[rows, heads, len, head_dim]`.
pub fn split_heads(x: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, len, width) = x.dims3()?;
    x.reshape((rows, len, heads, width / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// Joins `[rows, heads, len, head_dim]` back into `[rows, len, heads * head_dim]`.
pub fn merge_heads(x: &Tensor) -> candle_core::Result<Tensor> {
    let (rows, heads, len, head_dim) = x.dims4()?;
    x.transpose(1, 2)?.reshape((rows, len, heads * head_dim))
}

/// Scaled (by the caller) dot-product attention: `softmax(q k^T + bias) v`.
/// `q` `[rows, heads, q_len, d]`, `k`/`v` `[rows, heads, k_len, d]`, `bias`
/// broadcastable to `[rows, heads, q_len, k_len]`.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    attend_grouped(q, k, v, bias, 1)
}

/// The plain-loop path of [`attend_grouped`] alone (one query position,
/// f32 on the CPU; `k`/`v` may have fewer heads than `q`, grouped-query
/// style): `None` where it does not apply, for the caller's own route.
pub fn attend_one_query(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    one_query::attend(q, k, v, bias, 1)
}

/// [`attend`] where `group` consecutive query rows share one row of `k`,
/// `v` and `bias` (beams of one input, see [`DecoderState::group`]).
pub fn attend_grouped(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    group: usize,
) -> candle_core::Result<Tensor> {
    if let Some(out) = one_query::attend(q, k, v, bias, group)? {
        return Ok(out);
    }
    if group > 1 {
        let rows = q.dim(0)? as u32;
        let g = group as u32;
        let idx: Vec<u32> = (0..rows).map(|r| r / g).collect();
        let idx = Tensor::new(idx, q.device())?;
        let bias = match bias {
            Some(b) if b.dim(0)? > 1 => Some(b.index_select(&idx, 0)?),
            other => other.cloned(),
        };
        let (k, v) = (k.index_select(&idx, 0)?, v.index_select(&idx, 0)?);
        return attend(q, &k, &v, bias.as_ref());
    }
    let scores = q.matmul(&k.t()?)?;
    let scores = match bias {
        Some(b) => scores.broadcast_add(b)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs.matmul(v)
}

/// [`attend`] for one query position (a decoder step) on the CPU in f32,
/// as plain loops over the tensors' memory.
///
/// Through candle, a step's attention is two batched matmuls of one row by
/// a few dozen: for each of rows x heads (256 at 32 rows), `gemm` packs its
/// operands for a product of 64 x ~30 values, and the softmax and bias are
/// three more passes. Profile of an OPUS-MT-sized Marian step at 32 rows
/// (Q8_0): 19% in `gemm`'s packing and micro-kernels for these products.
/// Written here because the work is a dot product, a softmax and a
/// weighted sum per (row, head), which no crate offers over candle's
/// strided views (the self-attention cache is a narrowed view).
mod one_query {
    use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor};
    use half::f16;

    /// Values of the keys and values: f32, or f16 (the GGUF decoders'
    /// caches, half the memory traffic of a decode step's attention).
    pub(super) trait Value: Copy + Sync {
        fn f32(self) -> f32;
        fn slice(storage: &Storage) -> Option<&[Self]>;
    }

    impl Value for f32 {
        fn f32(self) -> f32 {
            self
        }
        fn slice(storage: &Storage) -> Option<&[f32]> {
            match storage {
                Storage::Cpu(CpuStorage::F32(data)) => Some(data),
                _ => None,
            }
        }
    }

    impl Value for f16 {
        fn f32(self) -> f32 {
            self.to_f32()
        }
        fn slice(storage: &Storage) -> Option<&[f16]> {
            match storage {
                Storage::Cpu(CpuStorage::F16(data)) => Some(data),
                _ => None,
            }
        }
    }

    /// Memory of a CPU tensor and the strides of its four dimensions,
    /// when the last one is contiguous.
    struct View<'a, T> {
        data: &'a [T],
        start: usize,
        stride: [usize; 4],
    }

    impl<T> View<'_, T> {
        fn at(&self, a: usize, b: usize, c: usize) -> usize {
            self.start + a * self.stride[0] + b * self.stride[1] + c * self.stride[2]
        }
    }

    fn view<'a, T: Value>(storage: &'a Storage, layout: &Layout) -> Option<View<'a, T>> {
        let data = T::slice(storage)?;
        let stride: [usize; 4] = layout.stride().try_into().ok()?;
        if layout.dims()[3] > 1 && stride[3] != 1 {
            return None;
        }
        Some(View {
            data,
            start: layout.start_offset(),
            stride,
        })
    }

    /// `outs[q] = sum_j probs[q][j] * v[g, h, j, ..]` for `N` queries
    /// reading the same values.
    fn weighted_sums<T: simd::Load8, const N: usize>(
        probs: [&[f32]; N],
        v: &View<T>,
        g: usize,
        h: usize,
        mut outs: [&mut [f32]; N],
    ) {
        let at = |j: usize| v.at(g, h, j);
        let done = simd::weighted_sums(probs, v.data, at, &mut outs);
        for (probs, out) in probs.iter().zip(outs.iter_mut()) {
            let d = out.len();
            if done < d {
                let rest = &mut out[done..];
                rest.fill(0.0);
                for (j, &p) in probs.iter().enumerate() {
                    for (y, &x) in rest.iter_mut().zip(&v.data[at(j) + done..][..d - done]) {
                        *y += p * x.f32();
                    }
                }
            }
        }
    }

    fn dot<T: simd::Load8>(a: &[f32], b: &[T]) -> f32 {
        let (done, sum) = simd::dot(a, b);
        sum + a[done..]
            .iter()
            .zip(&b[done..])
            .map(|(x, y)| x * y.f32())
            .sum::<f32>()
    }

    /// The vector parts of [`dot`] and [`weighted_sums`] with AVX2, FMA and
    /// F16C (compiled in when the target has them, as `target-cpu=native`
    /// or `x86-64-v3` builds do): written with intrinsics because the
    /// compiler's vectorization of the plain loops was measured to vary
    /// between eight-lane chains of dependent adds and two-lane code with
    /// every change around them (a step's attention took 13% of a beam-4
    /// run while under 1% of its arithmetic). Each returns how many leading
    /// values it covered; the callers finish the rest.
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    mod simd {
        use super::Value;
        use half::f16;
        use std::arch::x86_64::*;

        /// Eight values as f32 lanes.
        pub(super) trait Load8: Value {
            /// # Safety
            /// `p` must point to eight readable values.
            unsafe fn load8(p: *const Self) -> __m256;
        }

        impl Load8 for f32 {
            #[inline(always)]
            unsafe fn load8(p: *const f32) -> __m256 {
                _mm256_loadu_ps(p)
            }
        }

        impl Load8 for f16 {
            #[inline(always)]
            unsafe fn load8(p: *const f16) -> __m256 {
                _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
            }
        }

        /// `a . b` over the leading multiple of 32 values, four independent
        /// eight-lane sums.
        pub(super) fn dot<T: Load8>(a: &[f32], b: &[T]) -> (usize, f32) {
            let n = a.len().min(b.len());
            let main = n - n % 32;
            // SAFETY: AVX2, FMA and F16C are enabled for the whole build
            // (the cfg above); every load reads 8 values at
            // `i + 8k + 7 < main`, inside both slices.
            unsafe {
                let (pa, pb) = (a.as_ptr(), b.as_ptr());
                let mut acc = [_mm256_setzero_ps(); 4];
                for i in (0..main).step_by(32) {
                    for (k, acc) in acc.iter_mut().enumerate() {
                        let x = _mm256_loadu_ps(pa.add(i + 8 * k));
                        let y = T::load8(pb.add(i + 8 * k));
                        *acc = _mm256_fmadd_ps(x, y, *acc);
                    }
                }
                let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
                let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
                let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                let h = _mm_add_ss(h, _mm_movehdup_ps(h));
                (main, _mm_cvtss_f32(h))
            }
        }

        /// `out[j] = q . data[at(j)..][..q.len()]` for the leading multiple
        /// of 8 of `out.len()` keys (all of them when the key length is
        /// not a multiple of 8: then none). Eight keys at a time, one
        /// accumulator each, summed across lanes together (six horizontal
        /// adds for eight sums instead of a reduction per key, which had
        /// made the scores of a decode step's attention a fifth of an
        /// 8-sequence decode).
        pub(super) fn dots8<T: Load8>(
            q: &[f32],
            data: &[T],
            at: impl Fn(usize) -> usize,
            out: &mut [f32],
        ) -> usize {
            let d = q.len();
            if !d.is_multiple_of(8) {
                return 0;
            }
            let main = out.len() - out.len() % 8;
            for j in (0..main).step_by(8) {
                // SAFETY: AVX2, FMA and F16C are enabled for the whole build;
                // each key slice is bounds-checked to `d` values, and every
                // load reads 8 values at `c + 7 < d`; the store writes
                // `out[j..j + 8]` with `j + 8 <= main`.
                unsafe {
                    let keys: [*const T; 8] =
                        std::array::from_fn(|k| data[at(j + k)..][..d].as_ptr());
                    let mut acc = [_mm256_setzero_ps(); 8];
                    for c in (0..d).step_by(8) {
                        let x = _mm256_loadu_ps(q.as_ptr().add(c));
                        for (acc, key) in acc.iter_mut().zip(&keys) {
                            *acc = _mm256_fmadd_ps(x, T::load8(key.add(c)), *acc);
                        }
                    }
                    let a = _mm256_hadd_ps(acc[0], acc[1]);
                    let b = _mm256_hadd_ps(acc[2], acc[3]);
                    let c = _mm256_hadd_ps(acc[4], acc[5]);
                    let e = _mm256_hadd_ps(acc[6], acc[7]);
                    // lanes: keys 0-3 (low half: low 4 values, high half: high 4)
                    let lo = _mm256_hadd_ps(a, b);
                    let hi = _mm256_hadd_ps(c, e);
                    let sums = _mm256_add_ps(
                        _mm256_permute2f128_ps(lo, hi, 0x20),
                        _mm256_permute2f128_ps(lo, hi, 0x31),
                    );
                    _mm256_storeu_ps(out.as_mut_ptr().add(j), sums);
                }
            }
            main
        }

        /// `outs[q][..covered] = sum_j probs[q][j] * data[at(j) + i]` for
        /// `N` queries that read the same rows: each row is loaded and
        /// converted once for all of them (grouped-query heads share their
        /// values). Chunks of 16 outputs, two registers a query.
        pub(super) fn weighted_sums<T: Load8, const N: usize>(
            probs: [&[f32]; N],
            data: &[T],
            at: impl Fn(usize) -> usize,
            outs: &mut [&mut [f32]; N],
        ) -> usize {
            let d = outs.iter().map(|o| o.len()).min().unwrap_or(0);
            let len = probs.iter().map(|p| p.len()).min().unwrap_or(0);
            #[cfg(all(target_feature = "avx512f", target_feature = "avx512dq"))]
            {
                let done = match d {
                    32 => wide::weighted_sums::<T, N, 2>(&probs, data, &at, outs, len),
                    64 => wide::weighted_sums::<T, N, 4>(&probs, data, &at, outs, len),
                    128 => wide::weighted_sums::<T, N, 8>(&probs, data, &at, outs, len),
                    _ => 0,
                };
                if done > 0 {
                    return done;
                }
            }
            let main = d - d % 16;
            for c in (0..main).step_by(16) {
                // SAFETY: AVX2, FMA and F16C are enabled for the whole build;
                // each row slice is bounds-checked to 16 values before its
                // two loads; `j < len` is inside every `probs[q]`, and the
                // stores write `outs[q][c..c + 16]` with `c + 16 <= d`.
                unsafe {
                    let mut acc = [[_mm256_setzero_ps(); 2]; N];
                    for j in 0..len {
                        let row = data[at(j) + c..][..16].as_ptr();
                        let (lo, hi) = (T::load8(row), T::load8(row.add(8)));
                        for (acc, probs) in acc.iter_mut().zip(&probs) {
                            let p = _mm256_set1_ps(*probs.get_unchecked(j));
                            acc[0] = _mm256_fmadd_ps(p, lo, acc[0]);
                            acc[1] = _mm256_fmadd_ps(p, hi, acc[1]);
                        }
                    }
                    for (acc, out) in acc.iter().zip(outs.iter_mut()) {
                        _mm256_storeu_ps(out.as_mut_ptr().add(c), acc[0]);
                        _mm256_storeu_ps(out.as_mut_ptr().add(c + 8), acc[1]);
                    }
                }
            }
            main
        }

        /// [`weighted_sums`] with AVX-512 for heads of `16 * C` values:
        /// every output of the `N` queries in registers (at most 24 of the
        /// 32), so the value rows stream once, in order, instead of once per
        /// 16 columns. The same fused multiply-adds in the same order per
        /// output as the eight-lane loop, so the same results bit for bit.
        /// Eight SmolLM2 sequences decoding together after 200-token
        /// prompts (128 steps, two threads, three alternating pairs): the
        /// attention 0.420-0.491 s -> 0.353-0.365 s, decode 634-731 ->
        /// 727-764 tokens/s.
        #[cfg(all(target_feature = "avx512f", target_feature = "avx512dq"))]
        mod wide {
            use super::Load8;
            use std::arch::x86_64::*;

            pub(super) fn weighted_sums<T: Load8, const N: usize, const C: usize>(
                probs: &[&[f32]; N],
                data: &[T],
                at: &impl Fn(usize) -> usize,
                outs: &mut [&mut [f32]; N],
                len: usize,
            ) -> usize {
                if N * C > 24 {
                    return 0;
                }
                // SAFETY: AVX-512 F and DQ are enabled for the whole build
                // (the cfg above); each row slice is bounds-checked to
                // `16 * C` values, `j < len` is inside every `probs[q]`, and
                // the stores write `outs[q][..16 * C]`, inside each output
                // (the caller's `d`).
                unsafe {
                    let mut acc = [[_mm512_setzero_ps(); C]; N];
                    for j in 0..len {
                        let row = data[at(j)..][..16 * C].as_ptr();
                        let p: [__m512; N] =
                            std::array::from_fn(|q| _mm512_set1_ps(*probs[q].get_unchecked(j)));
                        for c in 0..C {
                            let v = _mm512_insertf32x8::<1>(
                                _mm512_castps256_ps512(T::load8(row.add(16 * c))),
                                T::load8(row.add(16 * c + 8)),
                            );
                            for (acc, p) in acc.iter_mut().zip(&p) {
                                acc[c] = _mm512_fmadd_ps(*p, v, acc[c]);
                            }
                        }
                    }
                    for (acc, out) in acc.iter().zip(outs.iter_mut()) {
                        for (c, a) in acc.iter().enumerate() {
                            _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), *a);
                        }
                    }
                }
                16 * C
            }
        }
    }

    /// Without AVX2, FMA and F16C in the build, the callers' plain loops
    /// do all.
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )))]
    mod simd {
        use super::Value;

        pub(super) trait Load8: Value {}
        impl<T: Value> Load8 for T {}

        pub(super) fn dot<T: Value>(_: &[f32], _: &[T]) -> (usize, f32) {
            (0, 0.0)
        }

        pub(super) fn dots8<T: Value>(
            _: &[f32],
            _: &[T],
            _: impl Fn(usize) -> usize,
            _: &mut [f32],
        ) -> usize {
            0
        }

        pub(super) fn weighted_sums<T: Value, const N: usize>(
            _: [&[f32]; N],
            _: &[T],
            _: impl Fn(usize) -> usize,
            _: &mut [&mut [f32]; N],
        ) -> usize {
            0
        }
    }

    /// The output buffer, written by several threads at disjoint offsets.
    #[derive(Clone, Copy)]
    struct OutPtr(*mut f32);
    // SAFETY: each unit of work writes only its own queries' outputs.
    unsafe impl Send for OutPtr {}
    unsafe impl Sync for OutPtr {}

    impl OutPtr {
        /// The pointer (a method, so closures capture the whole `Sync`
        /// wrapper rather than its raw-pointer field).
        fn get(self) -> *mut f32 {
            self.0
        }
    }

    /// `None` where the fast path does not apply (not one query, not on
    /// the CPU, queries not f32, keys and values not both f32 or both f16,
    /// a strided last dimension). `group` consecutive query rows
    /// share a row of `k`, `v` and `bias`; they are taken together, so
    /// that the shared keys and values are read from memory once. `k` and
    /// `v` may have fewer heads than `q` (grouped-query attention: query
    /// head `h` reads key/value head `h / (heads / kv_heads)`).
    pub(super) fn attend(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
        group: usize,
    ) -> candle_core::Result<Option<Tensor>> {
        let Ok((rows, _, 1, _)) = q.dims4() else {
            return Ok(None);
        };
        if !matches!(q.device(), Device::Cpu)
            || q.dtype() != DType::F32
            || k.dtype() != v.dtype()
            || bias.is_some_and(|b| b.dtype() != DType::F32)
            || group == 0
            || !rows.is_multiple_of(group)
        {
            return Ok(None);
        }
        match k.dtype() {
            DType::F32 => attend_with::<f32>(q, k, v, bias, group),
            DType::F16 => attend_with::<f16>(q, k, v, bias, group),
            _ => Ok(None),
        }
    }

    fn attend_with<T: simd::Load8>(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
        group: usize,
    ) -> candle_core::Result<Option<Tensor>> {
        let (rows, heads, _, d) = q.dims4()?;
        let shared = rows / group;
        let (kr, kv_heads, len, kd) = k.dims4()?;
        if (kr, kd) != (shared, d)
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || v.dims() != k.dims()
        {
            return Ok(None);
        }
        // query heads per key/value head (grouped-query attention)
        let per_kv = heads / kv_heads;
        let bias = match bias {
            Some(b) => Some(b.broadcast_as((shared, heads, 1, len))?),
            None => None,
        };
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let bs = bias.as_ref().map(|b| b.storage_and_layout());
        let (Some(qv), Some(kv), Some(vv)) =
            (view::<f32>(&qs, ql), view::<T>(&ks, kl), view::<T>(&vs, vl))
        else {
            return Ok(None);
        };
        let bv = match &bs {
            Some((s, l)) => match view::<f32>(s, l) {
                Some(v) => Some(v),
                None => return Ok(None),
            },
            None => None,
        };
        let mut out = vec![0f32; rows * heads * d];
        let out_at = OutPtr(out.as_mut_ptr());
        // One unit of work is a row of `k`, `v` with one of its key/value
        // heads and every query that reads them (`group` rows times
        // `per_kv` heads), so those keys and values come from memory once
        // for all those queries (then from the cache). The units are
        // spread over candle's math threads (a step's attention had run on
        // one thread while the other waited: 20% of an 8-sequence SmolLM2
        // decode).
        let units = shared * kv_heads;
        let queries = group * per_kv;
        let unit = |u: usize, scores: &mut [f32]| {
            let (g, kh) = (u / kv_heads, u % kv_heads);
            // query `i` of the unit: row `g * group + i / per_kv`, head
            // `kh * per_kv + i % per_kv`
            let who = |i: usize| (g * group + i / per_kv, kh * per_kv + i % per_kv);
            for i in 0..queries {
                let (r, h) = who(i);
                let qa = qv.at(r, h, 0);
                let query = &qv.data[qa..qa + d];
                let scores = &mut scores[i * len..][..len];
                let done = simd::dots8(query, kv.data, |j| kv.at(g, kh, j), scores);
                for (j, s) in scores.iter_mut().enumerate().skip(done) {
                    *s = dot(query, &kv.data[kv.at(g, kh, j)..][..d]);
                }
            }
            for i in 0..queries {
                let (_, h) = who(i);
                let scores = &mut scores[i * len..][..len];
                if let Some(b) = &bv {
                    let at = b.at(g, h, 0);
                    for (j, s) in scores.iter_mut().enumerate() {
                        *s += b.data[at + j * b.stride[3]];
                    }
                }
                let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                // (the exponential of every score, then the selection: a
                // loop the compiler vectorizes)
                for s in scores.iter_mut() {
                    // Weights below e^-40 of the largest are dropped:
                    // times a value row they give subnormal products,
                    // which this CPU finishes in microcode (a padded or
                    // peaked row made the attention three times slower),
                    // and they are far below f32's resolution of the sum.
                    let z = *s - max;
                    let e = crate::generate::softmax::exp_nonpositive(z);
                    *s = if z < -40.0 { 0.0 } else { e };
                }
                let mut lanes = [0f32; 16];
                let chunks = scores.chunks_exact(16);
                let tail: f32 = chunks.remainder().iter().sum();
                for c in chunks {
                    for (l, &s) in lanes.iter_mut().zip(c) {
                        *l += s;
                    }
                }
                let inv = 1.0 / (lanes.iter().sum::<f32>() + tail);
                for s in scores.iter_mut() {
                    *s *= inv;
                }
            }
            // the weighted sums, up to three queries at a time
            let output = |i: usize| {
                let (r, h) = who(i);
                // SAFETY: query (r, h) belongs to this unit alone, so no
                // other unit writes these `d` values; `r < rows`, `h < heads`.
                unsafe { std::slice::from_raw_parts_mut(out_at.get().add((r * heads + h) * d), d) }
            };
            let probs = |i: usize| &scores[i * len..][..len];
            let mut i = 0;
            while i < queries {
                match queries - i {
                    1 => weighted_sums([probs(i)], &vv, g, kh, [output(i)]),
                    2 => weighted_sums(
                        [probs(i), probs(i + 1)],
                        &vv,
                        g,
                        kh,
                        [output(i), output(i + 1)],
                    ),
                    _ => weighted_sums(
                        [probs(i), probs(i + 1), probs(i + 2)],
                        &vv,
                        g,
                        kh,
                        [output(i), output(i + 1), output(i + 2)],
                    ),
                }
                i += 3;
            }
        };
        let run = |range: std::ops::Range<usize>| {
            let mut scores = vec![0f32; queries * len];
            for u in range {
                unit(u, &mut scores);
            }
        };
        // small steps (a batch-1 Marian step: 8 heads over a few dozen
        // keys) cost less than waking the pool
        if units * queries * len * d < 1 << 16 {
            run(0..units);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(units, run);
        }
        Ok(Some(Tensor::from_vec(
            out,
            (rows, heads, 1, d),
            q.device(),
        )?))
    }
}

/// The `generation_config.json` keys the reference implementation honours
/// for these families (all optional).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CheckpointGeneration {
    /// Default beam width.
    pub num_beams: Option<usize>,
    /// Total length cap (decoder start included).
    pub max_length: Option<usize>,
    /// Cap on new tokens.
    pub max_new_tokens: Option<usize>,
    /// Token sequences never generated (single tokens are honoured; longer
    /// ones are ignored with a warning).
    pub bad_words_ids: Option<Vec<Vec<u32>>>,
    /// Token forced right after the decoder start.
    pub forced_bos_token_id: Option<u32>,
    /// Token forced at the last position allowed.
    pub forced_eos_token_id: Option<OneOrMany>,
    /// First decoder token.
    pub decoder_start_token_id: Option<u32>,
    /// End of sequence.
    pub eos_token_id: Option<OneOrMany>,
    /// Padding.
    pub pad_token_id: Option<u32>,
    /// Beam-search length penalty exponent.
    pub length_penalty: Option<f64>,
    /// Beam-search stopping rule.
    pub early_stopping: Option<serde_json::Value>,
    /// Re-normalise the log-probabilities after the processors (OPUS-MT
    /// checkpoints set it; it shifts beam scores when a token is suppressed).
    pub renormalize_logits: Option<bool>,
}

/// A token id or a list of them (`eos_token_id` may be either).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl OneOrMany {
    /// The first id.
    pub fn first(&self) -> Option<u32> {
        match self {
            OneOrMany::One(x) => Some(*x),
            OneOrMany::Many(v) => v.first().copied(),
        }
    }
}

impl CheckpointGeneration {
    /// Reads `generation_config.json` when the checkpoint has one.
    pub fn read(model: &str, path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(Error::io("cannot read", path))?;
        serde_json::from_str(&text).map_err(|e| Error::Model {
            model: model.into(),
            message: format!("`{}` is not a valid generation config: {e}", path.display()),
        })
    }

    /// The early-stopping rule (`true`, `false` or `"never"`).
    pub fn early_stopping(&self) -> EarlyStopping {
        match &self.early_stopping {
            Some(serde_json::Value::Bool(true)) => EarlyStopping::True,
            Some(serde_json::Value::String(s)) if s == "never" => EarlyStopping::Never,
            _ => EarlyStopping::False,
        }
    }
}

/// Special ids of a checkpoint (from `config.json`, overridden by
/// `generation_config.json`).
#[derive(Debug, Clone, Copy)]
pub struct SpecialIds {
    /// First decoder token.
    pub decoder_start: u32,
    /// End of sequence.
    pub eos: u32,
    /// Padding (encoder batches are padded with it).
    pub pad: u32,
}

/// Which family a checkpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Marian / OPUS-MT.
    Marian,
    /// T5, flan-t5, mT5, MADLAD-400.
    T5,
    /// M2M100 and NLLB.
    M2M100,
}

impl Family {
    /// Name shown by `tidings models inspect`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Marian => "marian",
            Family::T5 => "t5",
            Family::M2M100 => "m2m100/nllb",
        }
    }
}

/// An encoder-decoder model ready to generate. Cloning is cheap (shared
/// weights).
#[derive(Clone)]
pub struct Seq2SeqModel {
    /// The job's name for the model.
    pub name: Arc<str>,
    /// The family.
    pub family: Family,
    /// The network.
    pub net: Arc<dyn Seq2SeqNet>,
    /// Its text handling.
    pub text: Arc<dyn Seq2SeqText>,
    /// Special ids.
    pub ids: SpecialIds,
    /// The checkpoint's generation defaults.
    pub defaults: CheckpointGeneration,
    /// Longest encoder input the positions allow (None: unbounded, T5).
    pub max_source_tokens: Option<usize>,
    /// Parameter count, for `inspect`.
    pub parameters: usize,
    /// Vocabulary size, for `inspect`.
    pub vocab: usize,
    /// Weight dtype, for `inspect`.
    pub dtype: DType,
}

/// One input's outcome from [`Seq2SeqModel::generate_batch`].
pub type ItemResult = std::result::Result<Generation, String>;

/// How full the batches of a call were: the encoder batches of an
/// encoder-decoder model, the left-padded prompts of a causal one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fill {
    /// Real source (or prompt) tokens.
    pub real_tokens: u64,
    /// Padded positions (`rows * longest row`, summed over batches).
    pub padded_tokens: u64,
}

impl Seq2SeqModel {
    /// The search settings of one task under the job's settings: job values
    /// win where the job set them, else the checkpoint's, else ours.
    pub fn search_config(
        &self,
        task: Task,
        settings: &GenSettings,
    ) -> std::result::Result<SearchConfig, String> {
        let d = &self.defaults;
        let mut suppress = Vec::new();
        for w in d.bad_words_ids.iter().flatten() {
            if let [t] = w.as_slice() {
                suppress.push(*t);
            }
        }
        let beam_size = match d.num_beams {
            Some(n) if !settings.set.beam_size && n >= 1 => n,
            _ => settings.beam_size,
        };
        let length_penalty = match d.length_penalty {
            Some(lp) if !settings.set.length_penalty => lp,
            _ => settings.length_penalty,
        };
        Ok(SearchConfig {
            beam_size,
            length_penalty: length_penalty as f32,
            early_stopping: d.early_stopping(),
            decoder_start: self.ids.decoder_start,
            eos: self.ids.eos,
            forced_bos: match self.text.forced_bos(task)? {
                Some(t) => Some(t),
                None => d.forced_bos_token_id,
            },
            forced_eos: d.forced_eos_token_id.as_ref().and_then(OneOrMany::first),
            suppress,
            renormalize: d.renormalize_logits.unwrap_or(false),
            repetition_guard: settings.options.repetition_guard,
        })
    }

    /// The cap on new tokens: the job's `max-new-tokens` when it set one,
    /// else the checkpoint's `max_new_tokens` or `max_length - 1` (the
    /// decoder start counts in `max_length`), else ours; never past the
    /// decoder's positions.
    pub fn max_new_tokens(&self, settings: &GenSettings) -> usize {
        let d = &self.defaults;
        let n = if settings.set.max_new_tokens {
            settings.options.max_new_tokens
        } else {
            d.max_new_tokens
                .or(d.max_length.map(|l| l.saturating_sub(1)))
                .unwrap_or(settings.options.max_new_tokens)
        };
        let n = match self.max_source_tokens {
            Some(p) => n.min(p.saturating_sub(1)),
            None => n,
        };
        n.max(1)
    }

    /// Generates for many inputs of one task: sorted by length, packed into
    /// batches of at most `batch_tokens` padded source tokens, each batch
    /// decoded together. Results come back in input order; a per-input
    /// problem (too long, unsupported language) fails that input only.
    pub fn generate_batch(
        &self,
        task: Task,
        inputs: &[&str],
        settings: &GenSettings,
        batch_tokens: usize,
    ) -> Result<(Vec<ItemResult>, Fill)> {
        let mut fill = Fill::default();
        let cfg = match self.search_config(task, settings) {
            Ok(c) => c,
            Err(msg) => return Ok((inputs.iter().map(|_| Err(msg.clone())).collect(), fill)),
        };
        let mut results: Vec<Option<ItemResult>> = vec![None; inputs.len()];
        let mut encoded: Vec<(usize, Vec<u32>)> = Vec::with_capacity(inputs.len());
        for (i, text) in inputs.iter().enumerate() {
            match self.text.encode(task, text) {
                Ok(ids) => match self.max_source_tokens {
                    Some(max) if ids.len() > max => {
                        results[i] = Some(Err(format!(
                            "the input is {} tokens long; model `{}` takes at most {max}",
                            ids.len(),
                            self.name
                        )))
                    }
                    _ => encoded.push((i, ids)),
                },
                Err(msg) => results[i] = Some(Err(msg)),
            }
        }
        let opts = &settings.options;
        let max_new = self.max_new_tokens(settings);
        let rows: Vec<search::Row> = encoded
            .iter()
            .map(|(_, ids)| search::Row {
                ids: ids.clone(),
                budget: crate::generate::decode::token_budget(
                    max_new,
                    opts.max_length_ratio,
                    ids.len(),
                ),
            })
            .collect();
        let batches = crate::generate::batch::plan(
            &rows.iter().map(|r| r.ids.len()).collect::<Vec<_>>(),
            batch_tokens,
            cfg.beam_size,
        );
        for batch in batches {
            let part: Vec<search::Row> = batch.iter().map(|&k| rows[k].clone()).collect();
            let longest = part.iter().map(|r| r.ids.len()).max().unwrap_or(0);
            fill.real_tokens += part.iter().map(|r| r.ids.len() as u64).sum::<u64>();
            fill.padded_tokens += (part.len() * longest) as u64;
            let outs =
                search::generate(self.net.as_ref(), &part, &cfg, self.ids.pad).map_err(|e| {
                    Error::Candle {
                        model: self.name.to_string(),
                        context: "generation failed".into(),
                        source: Box::new(e),
                    }
                })?;
            for (&k, out) in batch.iter().zip(outs) {
                let (i, ids) = &encoded[k];
                results[*i] = Some(Ok(Generation {
                    text: self.text.decode(&out.tokens).trim().to_string(),
                    input_tokens: ids.len(),
                    output_tokens: out.tokens.len(),
                }));
            }
        }
        Ok((
            results
                .into_iter()
                .map(|r| r.expect("every input has a result"))
                .collect(),
            fill,
        ))
    }

    /// Human description for `tidings models inspect`.
    pub fn describe(&self) -> String {
        let langs = self.text.languages();
        let shown = if langs.len() > 12 {
            format!("{} ... ({} in all)", langs[..12].join(", "), langs.len())
        } else if langs.is_empty() {
            "(any: the job's prefix says)".into()
        } else {
            langs.join(", ")
        };
        format!(
            "family: {} (encoder-decoder)\nparameters: {:.1} M\nvocabulary: {}\ndtype: {:?}\n\
             target languages: {shown}\nmax source tokens: {}",
            self.family.name(),
            self.parameters as f64 / 1e6,
            self.vocab,
            self.dtype,
            self.max_source_tokens
                .map(|n| n.to_string())
                .unwrap_or_else(|| "unbounded (relative positions)".into()),
        )
    }
}

/// Sinusoidal position table `[positions, dim]`: `sin` in the first half of
/// the dimensions, `cos` in the second, with frequency `i` of `half` being
/// `1 / base^(i / denom)`. Marian uses `denom = half` (10000^(2i/dim));
/// M2M100 uses `denom = half - 1`.
pub fn sinusoidal(
    positions: usize,
    dim: usize,
    denom: f64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let mut data = vec![0f32; positions * dim];
    for p in 0..positions {
        for i in 0..half {
            let freq = (-(10000f64.ln()) * i as f64 / denom).exp();
            let angle = p as f64 * freq;
            data[p * dim + i] = angle.sin() as f32;
            data[p * dim + half + i] = angle.cos() as f32;
        }
    }
    Tensor::from_vec(data, (positions, dim), device)
}

/// ISO 639-3 codes a checkpoint may use for a language, most likely first
/// (macro-languages list the individual language these models were trained
/// on first: Persian is `pes` in NLLB and OPUS-MT, Arabic `arb` in NLLB).
pub fn iso639_3(lang: &super::super::text::langid::Language) -> Vec<&'static str> {
    let special: &[&str] = match lang.code {
        "fa" => &["pes", "fas", "prs"],
        "ar" => &["arb", "ara"],
        "zh" => &["zho", "cmn"],
        "ms" => &["zsm", "msa", "may"],
        "no" => &["nob", "nor"],
        "et" => &["est", "ekk"],
        "lv" => &["lvs", "lav"],
        "sw" => &["swh", "swa"],
        "uz" => &["uzn", "uzb"],
        "cy" => &["cym"],
        "eu" => &["eus"],
        "ga" => &["gle"],
        "kk" => &["kaz"],
        "ps" => &["pbt", "pus"],
        "sq" => &["als", "sqi"],
        "ne" => &["npi", "nep"],
        "or" => &["ory", "ori"],
        "az" => &["azj", "aze"],
        _ => &[],
    };
    let mut out: Vec<&'static str> = special.to_vec();
    if let Some(d) = lang.detect {
        let c = d.code();
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Largest absolute difference of two tensors of one shape.
    fn diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn in_place_reorder_equals_index_select_on_filled_positions() {
        let (rows, heads, cap, d, len) = (6, 2, 5, 3, 3);
        let values = crate::seeded::values(rows * heads * cap * d, 4);
        let cache = |v: &[f32]| Tensor::from_vec(v.to_vec(), (rows, heads, cap, d), &Device::Cpu);
        let order = [1u32, 0, 2, 2, 5, 3];
        let expected = cache(&values)
            .unwrap()
            .index_select(&Tensor::new(&order[..], &Device::Cpu).unwrap(), 0)
            .unwrap();
        let reorder = ReorderRows { rows: &order, len };
        let t = cache(&values).unwrap();
        assert!(reorder.applies(&t));
        t.inplace_op1(&reorder).unwrap();
        let filled = |t: &Tensor| -> Vec<f32> {
            t.narrow(2, 0, len)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_eq!(filled(&t), filled(&expected));
        // a different row count is left to index_select
        assert!(!ReorderRows {
            rows: &order[..4],
            len
        }
        .applies(&t));
    }

    #[test]
    fn shared_cross_attention_equals_repeated_rows() {
        let (n, k, heads, src, d) = (3usize, 2usize, 2usize, 4usize, 8usize);
        let dev = Device::Cpu;
        let t = |shape: &[usize], seed: u64| {
            let len = shape.iter().product();
            Tensor::from_vec(crate::seeded::values(len, seed), shape, &dev).unwrap()
        };
        let (ck, cv) = (t(&[n, heads, src, d], 1), t(&[n, heads, src, d], 2));
        let mask = Tensor::new(
            &[[1f32, 1., 1., 1.], [1., 1., 0., 0.], [1., 0., 0., 0.]],
            &dev,
        )
        .unwrap();
        let mut state = DecoderState {
            layers: vec![LayerState::new(ck.clone(), cv.clone(), 3).unwrap()],
            cross_bias: key_bias(&mask).unwrap(),
            len: 0,
            extra: Vec::new(),
            group: 1,
        };
        state.share_groups(k).unwrap();
        assert_eq!(
            (state.rows(), state.layers[0].self_k.dim(0).unwrap()),
            (6, 6)
        );
        let pick = |x: &Tensor, rows: &[u32]| {
            x.index_select(&Tensor::new(rows, &dev).unwrap(), 0)
                .unwrap()
        };
        let repeated = [0u32, 0, 1, 1, 2, 2];
        let (ek, ev) = (pick(&ck, &repeated), pick(&cv, &repeated));
        let eb = pick(&state.cross_bias, &repeated);
        let l = &state.layers[0];
        // one query (the plain-loop path) and two (candle's path)
        for q_len in [1, 2] {
            let q = t(&[n * k, heads, q_len, d], 3 + q_len as u64);
            // candle's operations, written out (the plain loops serve
            // `attend` itself for one query)
            let scores = q
                .matmul(&ek.t().unwrap())
                .unwrap()
                .broadcast_add(&eb)
                .unwrap();
            let expected = candle_nn::ops::softmax_last_dim(&scores)
                .unwrap()
                .matmul(&ev)
                .unwrap();
            assert!(diff(&expected, &attend(&q, &ek, &ev, Some(&eb)).unwrap()) < 1e-6);
            let shared =
                attend_grouped(&q, &l.cross_k, &l.cross_v, Some(&state.cross_bias), k).unwrap();
            assert!(diff(&expected, &shared) < 1e-6, "q_len {q_len}");
        }
        // Whole groups stay shared ...
        state.select(&[4, 5, 0, 1]).unwrap();
        assert_eq!((state.group, state.rows()), (2, 4));
        assert_eq!(diff(&state.layers[0].cross_k, &pick(&ck, &[2, 0])), 0.0);
        // ... a split group gives every row its own entry again.
        state.select(&[1, 0, 3]).unwrap();
        assert_eq!((state.group, state.rows()), (1, 3));
        assert_eq!(diff(&state.layers[0].cross_v, &pick(&cv, &[2, 2, 0])), 0.0);
        assert_eq!(state.cross_bias.dim(0).unwrap(), 3);
    }

    #[test]
    fn one_query_grouped_heads_equal_repeated_heads() {
        // 40: the eight-lane loops and their scalar tail; 32, 64, 128: the
        // AVX-512 weighted sums where the build has them
        for d in [40usize, 32, 64, 128] {
            grouped_heads_at(d);
        }
    }

    fn grouped_heads_at(d: usize) {
        let dev = Device::Cpu;
        let (rows, heads, kv_heads, len) = (2usize, 6usize, 2usize, 5usize);
        let t = |shape: &[usize], seed: u64| {
            let n = shape.iter().product();
            Tensor::from_vec(crate::seeded::values(n, seed), shape, &dev).unwrap()
        };
        let q = t(&[rows, heads, 1, d], 21);
        let (k, v) = (
            t(&[rows, kv_heads, len, d], 22),
            t(&[rows, kv_heads, len, d], 23),
        );
        // the second row sees only its last three positions
        let mask = Tensor::new(&[[0f32, 0., 0., 0., 0.], [-1e9, -1e9, 0., 0., 0.]], &dev)
            .unwrap()
            .reshape((rows, 1, 1, len))
            .unwrap();
        let got = attend_one_query(&q, &k, &v, Some(&mask))
            .unwrap()
            .expect("the fast path");
        // query head h reads key/value head h / 3
        let idx = Tensor::new(&[0u32, 0, 0, 1, 1, 1], &dev).unwrap();
        let (ek, ev) = (
            k.index_select(&idx, 1).unwrap(),
            v.index_select(&idx, 1).unwrap(),
        );
        let scores = q
            .matmul(&ek.t().unwrap())
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let want = candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&ev)
            .unwrap();
        let worst = diff(&got, &want);
        assert!(worst < 1e-6, "d {d}: {worst}");
    }
}
