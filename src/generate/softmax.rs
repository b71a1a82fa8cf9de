//! The normalizer of a log-softmax over a vocabulary-wide row, fast.
//!
//! Beam search needs, per decoder row and step, `log(sum(exp(x - max)))`
//! over 32,000-250,000 logits. Through candle this was a full
//! `log_softmax` (libm's scalar `expf` per value, a second row-sized
//! tensor) plus a copy to host vectors: profile of a beam-4 OPUS-MT-sized
//! run, 5% in `expf` alone. Here the exponential is a polynomial the
//! compiler vectorizes (16 lanes), and beam search adds the normalizer to
//! the few candidates it keeps instead of writing a normalized row.
//! Written here because it is a dozen lines that no crate offers over
//! plain slices without pulling in a math library.

/// `exp(x)` for `x <= 0` (larger inputs are not needed here), to about
/// 2 ulp; below -86 it returns 0, so that it never makes a subnormal f32
/// (which this CPU multiplies in microcode, many times slower), and no sum
/// of probabilities notices the difference.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts (Cody and Waite): `n * LN2_HI` is exact
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // (comparisons and selects rather than `max` and `as i32`, whose NaN
    // and saturation rules keep the compiler from vectorizing)
    let tiny = x < -86.0;
    let x = if tiny { -86.0 } else { x };
    // x = n ln 2 + r with n an integer and |r| <= ln(2)/2
    let n = (x * LOG2E + 0.5).floor();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e^r for |r| <= ln(2)/2: Taylor to degree 7 (error below 1e-8)
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^n from the exponent bits (n >= -124 since x >= -86): the low bits
    // of 2^23 + 127 + n, as an f32, are the integer 127 + n
    let biased = (n + 8_388_735.0).to_bits();
    let e = p * f32::from_bits(biased << 23);
    if tiny {
        0.0
    } else {
        e
    }
}

/// `x * sigmoid(x)` (SiLU, "swish") of every value, in place, with the
/// exponential above: candle's `swish` is a sigmoid (libm `expf` per value)
/// and a product, two fresh tensors per feed-forward layer.
pub(crate) fn silu_in_place(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        let v = *x;
        // e^-|v| <= 1; sigmoid(v) = 1 / (1 + e^-v) = e^v / (1 + e^v)
        let a = if v < 0.0 { v } else { -v };
        let e = exp_nonpositive(a);
        let num = if v < 0.0 { e } else { 1.0 };
        *x = v * num / (1.0 + e);
    }
}

/// GELU with the exact (erf) form, `x * (1 + erf(x / sqrt 2)) / 2`, in
/// place: erf by Abramowitz and Stegun's 7.1.26 (absolute error at most
/// 1.5e-7) with the exponential above, which the compiler vectorizes;
/// candle's `gelu_erf` calls libm's scalar `erf` per value.
pub(crate) fn gelu_erf_in_place(xs: &mut [f32]) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    for x in xs.iter_mut() {
        let v = *x;
        let z = v.abs() * std::f32::consts::FRAC_1_SQRT_2;
        let t = 1.0 / (1.0 + P * z);
        let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
        // erf(|z|) = 1 - poly e^(-z^2); 1 + erf(v / sqrt 2) without
        // cancelling for negative v
        let tail = poly * exp_nonpositive(-z * z);
        let one_plus_erf = if v < 0.0 { tail } else { 2.0 - tail };
        *x = 0.5 * v * one_plus_erf;
    }
}

/// `(max, ln(sum(exp(x - max))))` of a row, so that its log-softmax is
/// `(x - max) - ln_sum`. A row with no finite maximum (empty, or all
/// `-inf`) gives `(max, 0)`.
pub fn log_normalizer(row: &[f32]) -> (f32, f32) {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = row.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = tail
        .iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return (max, 0.0);
    }
    let mut sums = [0f32; 16];
    let chunks = row.chunks_exact(16);
    for c in chunks {
        for (s, &x) in sums.iter_mut().zip(c) {
            *s += exp_nonpositive(x - max);
        }
    }
    let sum: f32 =
        sums.iter().sum::<f32>() + tail.iter().map(|&x| exp_nonpositive(x - max)).sum::<f32>();
    (max, sum.ln())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_candles_erf_form() {
        use candle_core::{Device, Tensor};
        let xs: Vec<f32> = (0..40_001).map(|i| -10.0 + i as f32 * 5e-4).collect();
        let want = Tensor::from_vec(xs.clone(), xs.len(), &Device::Cpu)
            .unwrap()
            .gelu_erf()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut got = xs.clone();
        gelu_erf_in_place(&mut got);
        for ((x, g), w) in xs.iter().zip(&got).zip(&want) {
            // 1.5e-7 from the erf approximation, a few f32 roundings
            let limit = 4e-7 * x.abs().max(1.0);
            assert!((g - w).abs() <= limit, "gelu({x}) = {g}, candle {w}");
        }
        // far out: x and 0, no NaN
        let mut far = vec![-1e4f32, -90.0, 90.0, 1e4];
        gelu_erf_in_place(&mut far);
        assert_eq!(far, vec![0.0, 0.0, 90.0, 1e4]);
    }

    #[test]
    fn exp_matches_the_library_one() {
        let mut worst = 0f64;
        let mut x = 0f32;
        while x > -86.0 {
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x -= 0.001_37;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        for x in [-86.01, -87.0, -200.0, f32::NEG_INFINITY] {
            assert_eq!(exp_nonpositive(x), 0.0, "{x}");
        }
    }

    #[test]
    fn normalizer_matches_a_double_precision_one() {
        let row: Vec<f32> = crate::seeded::values(50_001, 3)
            .iter()
            .map(|v| v * 30.0)
            .collect();
        let (max, ln_sum) = log_normalizer(&row);
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let want: f64 = row
            .iter()
            .map(|&x| ((x - m) as f64).exp())
            .sum::<f64>()
            .ln();
        assert_eq!(max, m);
        assert!((ln_sum as f64 - want).abs() < 1e-5, "{ln_sum} vs {want}");
        // masked entries count for nothing; all masked is no distribution
        let mut masked = row.clone();
        masked[7] = f32::NEG_INFINITY;
        assert!(log_normalizer(&masked).1 <= ln_sum);
        assert_eq!(log_normalizer(&[f32::NEG_INFINITY; 20]).1, 0.0);
        assert_eq!(log_normalizer(&[]).1, 0.0);
    }

    #[test]
    fn silu_matches_the_definition() {
        let mut xs: Vec<f32> = (-400..=400).map(|i| i as f32 * 0.05).collect();
        xs.extend([-100.0, -88.0, 0.0, 88.0, 100.0]);
        let want: Vec<f64> = xs
            .iter()
            .map(|&x| x as f64 / (1.0 + (-(x as f64)).exp()))
            .collect();
        silu_in_place(&mut xs);
        for (g, w) in xs.iter().zip(&want) {
            let err = (*g as f64 - w).abs();
            assert!(err <= 1e-6 * w.abs().max(1e-3), "{g} vs {w}");
        }
    }
}
