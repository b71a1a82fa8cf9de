//! Work units of one product spread over candle's thread pool in
//! contiguous shares, one per thread.
//!
//! candle's `BarrierPool::execute_chunked` hands the units out from one
//! shared cursor in chunks of an eighth of a thread's share, so the
//! threads leapfrog each other through the weights and each starts a fresh
//! stream of memory reads eight times a product. A one-sequence decode step
//! is ~140 such products over 1 GB of weights (Qwen2.5-1.5B), each a
//! stream the hardware prefetcher has to pick up again at every jump. Here
//! each thread walks its own contiguous share from the front in
//! [`STEPS`] steps; a thread done with its share takes steps from the back
//! of the others' shares, so a thread the machine delays still does not
//! hold the product up (what the shared cursor is for). Decode tokens/s on
//! two threads, the two schedules alternating in one process (16 steps
//! each, 24 rounds): Qwen2.5-Coder-1.5B 34.2 -> 39.0, 33.9 -> 37.3 and
//! 34.4 -> 38.6; Qwen2.5-Coder-0.5B 57.9 -> 59.7; SmolLM2-135M 174.7 ->
//! 184.4 (the AMD EPYC VM of BENCHMARKS.md). On one thread, the same.
//! The f32 panels of `f32_gemm.rs` too: the criterion bench `head product
//! 512x65001/tidings f32/1` (a Marian head, 133 MB) 3.48 / 4.10 / 3.75 ms
//! with the cursor against 3.37 / 2.92 with the shares, runs alternating;
//! 32 and 64 rows 1-2% faster.
//!
//! Written here because no crate schedules over candle's pool, whose
//! threads the kernels share with candle's own operations (rayon's
//! splitting runs on rayon's pool and splits in halves, not in one stream
//! per thread).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// Steps a thread takes through its own share.
const STEPS: usize = 16;

/// Runs `run` over `0..units` on candle's thread pool, every unit exactly
/// once, each call a contiguous range. Not to be called from inside `run`
/// (candle's pool takes one product at a time).
pub(crate) fn in_shares(units: usize, run: impl Fn(Range<usize>) + Sync) {
    if units == 0 {
        return;
    }
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    if threads == 1 || units == 1 {
        run(0..units);
        return;
    }
    let share = units.div_ceil(threads);
    let step = share.div_ceil(STEPS);
    let shares: Vec<Share> = (0..threads)
        .map(|k| Share::new((k * share).min(units)..((k + 1) * share).min(units)))
        .collect();
    // One item per share: each thread takes one to start from (the pool's
    // cursor hands them out).
    pool.execute_chunked(threads, |first| {
        for k in first {
            while let Some(r) = shares[k].front(step) {
                run(r);
            }
            for j in 1..threads {
                let other = &shares[(k + j) % threads];
                while let Some(r) = other.back(step) {
                    run(r);
                }
            }
        }
    });
}

/// The units of a share not yet taken, `lo..hi`, as `lo << 32 | hi`.
struct Share(AtomicU64);

impl Share {
    fn new(r: Range<usize>) -> Self {
        assert!(r.end < 1 << 32, "work units: more than 2^32");
        Share(AtomicU64::new(Self::pack(r.start, r.end)))
    }

    fn pack(lo: usize, hi: usize) -> u64 {
        (lo as u64) << 32 | hi as u64
    }

    fn unpack(v: u64) -> (usize, usize) {
        ((v >> 32) as usize, (v & 0xFFFF_FFFF) as usize)
    }

    /// Takes up to `step` units from the front.
    fn front(&self, step: usize) -> Option<Range<usize>> {
        self.take(|lo, hi| {
            let end = (lo + step).min(hi);
            (lo..end, Self::pack(end, hi))
        })
    }

    /// Takes up to `step` units from the back.
    fn back(&self, step: usize) -> Option<Range<usize>> {
        self.take(|lo, hi| {
            let start = hi.saturating_sub(step).max(lo);
            (start..hi, Self::pack(lo, start))
        })
    }

    fn take(&self, cut: impl Fn(usize, usize) -> (Range<usize>, u64)) -> Option<Range<usize>> {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (lo, hi) = Self::unpack(cur);
            if lo >= hi {
                return None;
            }
            let (taken, rest) = cut(lo, hi);
            match self
                .0
                .compare_exchange_weak(cur, rest, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(taken),
                Err(now) => cur = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_unit_runs_exactly_once() {
        for units in [0, 1, 2, 3, 5, 16, 17, 31, 96, 1000, 9497] {
            let counts: Vec<AtomicUsize> = (0..units).map(|_| AtomicUsize::new(0)).collect();
            in_shares(units, |r| {
                assert!(r.start < r.end && r.end <= units, "{r:?} of {units}");
                for u in r {
                    counts[u].fetch_add(1, Ordering::Relaxed);
                }
            });
            for (u, c) in counts.iter().enumerate() {
                assert_eq!(c.load(Ordering::Relaxed), 1, "unit {u} of {units}");
            }
        }
    }

    #[test]
    fn shares_give_their_units_from_both_ends() {
        let s = Share::new(10..20);
        assert_eq!(s.front(3), Some(10..13));
        assert_eq!(s.back(4), Some(16..20));
        assert_eq!(s.front(5), Some(13..16));
        assert_eq!(s.back(1), None);
        assert_eq!(s.front(1), None);
    }
}
