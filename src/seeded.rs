//! Seeded pseudo-random values for tests and benches (candle's CPU RNG
//! cannot be seeded). Not part of the API.

/// `n` values in [-1, 1) from a xorshift generator started at `seed`.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
