//! chrF2, the character n-gram F-score used to judge translations
//! (Popović 2015), computed at corpus level exactly as sacreBLEU 2.x does
//! by default: character n-grams of orders 1 to 6 over each segment with
//! its whitespace removed; per order, the clipped matches, hypothesis and
//! reference n-gram counts summed over the corpus; precision and recall
//! averaged over the orders where both sides have n-grams; then
//! `F_beta = (1 + b^2) P R / (b^2 P + R)` with `b = 2`, times 100.
//!
//! Written here because no maintained Rust crate implements it;
//! `scripts/chrf_reference.py` prints the sacreBLEU values the tests use.

use std::collections::HashMap;

/// Highest character n-gram order.
pub const ORDER: usize = 6;
/// Recall weight.
pub const BETA: f64 = 2.0;

/// Corpus-level n-gram statistics, added segment by segment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChrF {
    /// Per order (1..=6): hypothesis n-grams, reference n-grams, matches.
    stats: [[u64; 3]; ORDER],
    segments: usize,
}

fn ngrams(chars: &[char], n: usize) -> HashMap<&[char], u64> {
    let mut m = HashMap::new();
    if chars.len() >= n {
        for w in chars.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

impl ChrF {
    /// An empty corpus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one hypothesis and its reference.
    pub fn add(&mut self, hypothesis: &str, reference: &str) {
        let h: Vec<char> = hypothesis.chars().filter(|c| !c.is_whitespace()).collect();
        let r: Vec<char> = reference.chars().filter(|c| !c.is_whitespace()).collect();
        for n in 1..=ORDER {
            let hn = ngrams(&h, n);
            let rn = ngrams(&r, n);
            let matches: u64 = hn
                .iter()
                .map(|(g, &c)| c.min(rn.get(g).copied().unwrap_or(0)))
                .sum();
            let s = &mut self.stats[n - 1];
            s[0] += hn.values().sum::<u64>();
            s[1] += rn.values().sum::<u64>();
            s[2] += matches;
        }
        self.segments += 1;
    }

    /// Segments added.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// The corpus score, 0 to 100.
    pub fn score(&self) -> f64 {
        let (mut p, mut r, mut orders) = (0.0, 0.0, 0usize);
        for [hyp, rf, m] in self.stats {
            if hyp > 0 && rf > 0 {
                p += m as f64 / hyp as f64;
                r += m as f64 / rf as f64;
                orders += 1;
            }
        }
        if orders == 0 {
            return 0.0;
        }
        let (p, r) = (p / orders as f64, r / orders as f64);
        if p + r == 0.0 {
            return 0.0;
        }
        let b2 = BETA * BETA;
        100.0 * (1.0 + b2) * p * r / (b2 * p + r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(h: &[&str], r: &[&str]) -> f64 {
        let mut c = ChrF::new();
        for (h, r) in h.iter().zip(r) {
            c.add(h, r);
        }
        c.score()
    }

    /// Values printed by `scripts/chrf_reference.py` (sacreBLEU 2.5.1).
    #[test]
    fn equals_sacrebleu() {
        let cases: &[(&[&str], &[&str], f64)] = &[
            (
                &["El gobierno anunció nuevas medidas."],
                &["El gobierno anunció nuevas medidas."],
                100.0,
            ),
            (
                &["El gobierno anuncia medidas nuevas hoy."],
                &["El gobierno anunció nuevas medidas."],
                73.627488,
            ),
            (
                &["دولت امروز اقدامات جدیدی اعلام کرد."],
                &["دولت اقدامات تازه‌ای را اعلام کرد."],
                51.246345,
            ),
            (
                &[
                    "The cat sat on the mat.",
                    "A quick brown fox.",
                    "Nothing alike",
                ],
                &[
                    "The cat is on the mat.",
                    "The quick brown fox jumps.",
                    "Completely different words",
                ],
                41.154118,
            ),
            (&[""], &["Some reference"], 0.0),
            (&["ab"], &["abc"], 63.636364),
        ];
        for (h, r, want) in cases {
            let got = corpus(h, r);
            assert!((got - want).abs() < 1e-5, "{h:?}: {got} vs {want}");
        }
    }

    #[test]
    fn corpus_level_is_not_a_mean_of_segments() {
        let a = corpus(&["abc"], &["abd"]);
        let b = corpus(&["a long hypothesis here"], &["a long hypothesis there"]);
        let both = corpus(
            &["abc", "a long hypothesis here"],
            &["abd", "a long hypothesis there"],
        );
        assert!((both - (a + b) / 2.0).abs() > 0.1);
    }
}
