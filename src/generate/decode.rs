//! Family-independent pieces of autoregressive decoding: greedy token choice,
//! the set of tokens that end a generation, the length budget, and the
//! [`RepetitionGuard`] that stops a model caught in a loop.
//!
//! Small models translating news sentence by sentence fail in a few typical
//! ways: they never emit an end-of-turn token, or they start repeating a
//! phrase ("y el gobierno, y el gobierno, ...") until the budget runs out.
//! The budget bounds the cost of the first failure; the guard cuts the second
//! short and drops the repeated copies so that the output keeps one of them.

use std::collections::HashSet;

/// Index of the largest logit; the first one wins a tie so that decoding is
/// deterministic. NaN never wins (a NaN logit means a broken model, and the
/// caller sees nonsense output rather than a panic).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best as u32
}

/// The number of new tokens a generation may produce:
/// `min(max_new_tokens, ceil(ratio * source_tokens) + 16)`.
///
/// The constant 16 leaves room for very short sources (a title of three
/// tokens can legitimately translate into ten) and for end-of-turn tokens.
pub fn token_budget(max_new_tokens: usize, max_length_ratio: f64, source_tokens: usize) -> usize {
    let relative = if max_length_ratio.is_finite() && max_length_ratio > 0.0 {
        (max_length_ratio * source_tokens as f64).ceil() as usize
    } else {
        // A non-positive or non-finite ratio means "no relative cap".
        usize::MAX - 16
    };
    max_new_tokens.min(relative.saturating_add(16))
}

/// Token ids that end a generation (end of sequence, end of turn).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopTokens {
    ids: HashSet<u32>,
}

impl StopTokens {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one id.
    pub fn insert(&mut self, id: u32) {
        self.ids.insert(id);
    }

    /// Whether `id` ends the generation.
    pub fn contains(&self, id: u32) -> bool {
        self.ids.contains(&id)
    }

    /// Number of distinct stop ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the set is empty (a generation then only ends at its budget).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The ids, sorted (for logs and tests).
    pub fn sorted(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.ids.iter().copied().collect();
        ids.sort_unstable();
        ids
    }
}

impl FromIterator<u32> for StopTokens {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        StopTokens {
            ids: iter.into_iter().collect(),
        }
    }
}

/// A loop found by [`RepetitionGuard::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loop {
    /// Length in tokens of the repeated unit.
    pub period: usize,
    /// How many times the unit occurs back to back at the end of the output.
    pub repeats: usize,
}

impl Loop {
    /// Tokens to remove from the end of the output so that one copy of the
    /// repeated unit remains.
    pub fn excess(&self) -> usize {
        self.period * (self.repeats - 1)
    }
}

/// Detects generated output that has started to loop.
///
/// Two rules, checked after every token:
/// - an n-gram of `2..=max_ngram` tokens occurring `min_repeats` times back
///   to back at the end of the output (only *primitive* units count: "a a"
///   is a run of one token, not a 2-gram, so it falls under the next rule);
/// - one token `max_run` times in a row.
///
/// A single token gets the higher threshold because short runs are normal
/// text for byte- or digit-level vocabularies: Qwen writes "1000000" as seven
/// digit tokens, and "!!!" or "---" are single-character runs.
#[derive(Debug, Clone)]
pub struct RepetitionGuard {
    tokens: Vec<u32>,
    max_ngram: usize,
    min_repeats: usize,
    max_run: usize,
}

impl Default for RepetitionGuard {
    /// n-grams up to 8 tokens repeated 3 times, or one token 8 times.
    fn default() -> Self {
        RepetitionGuard::new(8, 3, 8)
    }
}

impl RepetitionGuard {
    /// A guard with explicit thresholds (each at least 2; `max_ngram` at least 1).
    pub fn new(max_ngram: usize, min_repeats: usize, max_run: usize) -> Self {
        RepetitionGuard {
            tokens: Vec::new(),
            max_ngram: max_ngram.max(1),
            min_repeats: min_repeats.max(2),
            max_run: max_run.max(2),
        }
    }

    /// Forgets the output seen so far (start of a new generation).
    pub fn reset(&mut self) {
        self.tokens.clear();
    }

    /// Records one generated token; returns the loop if the output now ends
    /// in one.
    pub fn push(&mut self, token: u32) -> Option<Loop> {
        self.tokens.push(token);
        self.check()
    }

    fn check(&self) -> Option<Loop> {
        self.loop_at_end(&self.tokens)
    }

    /// The loop `tokens` end in, if any, by this guard's limits (for callers
    /// that keep many candidate outputs, such as beam search).
    pub fn loop_at_end(&self, t: &[u32]) -> Option<Loop> {
        let last = *t.last()?;
        let run = t.iter().rev().take_while(|&&x| x == last).count();
        if run >= self.max_run {
            return Some(Loop {
                period: 1,
                repeats: run,
            });
        }
        for period in 2..=self.max_ngram {
            if t.len() < period * self.min_repeats {
                break;
            }
            let repeats = repeats_at_end(t, period);
            if repeats >= self.min_repeats && is_primitive(&t[t.len() - period..]) {
                return Some(Loop { period, repeats });
            }
        }
        None
    }
}

/// How many times the last `period` tokens occur back to back at the end.
fn repeats_at_end(tokens: &[u32], period: usize) -> usize {
    let unit = &tokens[tokens.len() - period..];
    tokens
        .rchunks_exact(period)
        .take_while(|c| *c == unit)
        .count()
}

/// Whether `unit` is not itself a repetition of a shorter unit.
fn is_primitive(unit: &[u32]) -> bool {
    let n = unit.len();
    !(1..n).any(|p| n.is_multiple_of(p) && unit.chunks_exact(p).all(|c| c == &unit[..p]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(guard: &mut RepetitionGuard, tokens: &[u32]) -> Option<(usize, Loop)> {
        tokens
            .iter()
            .enumerate()
            .find_map(|(i, &t)| guard.push(t).map(|l| (i, l)))
    }

    #[test]
    fn argmax_picks_first_maximum_and_ignores_nan() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.2]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn budget_is_min_of_absolute_and_relative_caps() {
        assert_eq!(token_budget(256, 2.0, 10), 36);
        assert_eq!(token_budget(20, 2.0, 10), 20);
        assert_eq!(token_budget(256, 1.5, 3), 21); // ceil(4.5) + 16
        assert_eq!(token_budget(256, 2.0, 0), 16);
        assert_eq!(token_budget(256, 0.0, 1000), 256);
        assert_eq!(token_budget(256, f64::INFINITY, 1000), 256);
    }

    #[test]
    fn stop_tokens_set() {
        let stops: StopTokens = [7, 3, 7].into_iter().collect();
        assert_eq!(stops.len(), 2);
        assert!(stops.contains(3) && stops.contains(7) && !stops.contains(4));
        assert_eq!(stops.sorted(), vec![3, 7]);
        assert!(StopTokens::new().is_empty());
    }

    #[test]
    fn detects_repeated_ngram_at_third_copy() {
        let mut g = RepetitionGuard::default();
        // prefix, then the 3-gram [5, 6, 7] three times
        let tokens = [1, 2, 5, 6, 7, 5, 6, 7, 5, 6, 7, 9];
        let (at, l) = feed(&mut g, &tokens).expect("loop");
        assert_eq!(at, 10, "detected as soon as the third copy completes");
        assert_eq!(
            l,
            Loop {
                period: 3,
                repeats: 3
            }
        );
        assert_eq!(l.excess(), 6);
    }

    #[test]
    fn detects_every_period_up_to_eight() {
        for period in 2..=8u32 {
            let mut g = RepetitionGuard::default();
            let unit: Vec<u32> = (100..100 + period).collect();
            let tokens: Vec<u32> = unit
                .iter()
                .cycle()
                .take(3 * period as usize)
                .copied()
                .collect();
            let (at, l) = feed(&mut g, &tokens).expect("loop");
            assert_eq!(at, tokens.len() - 1);
            assert_eq!(l.period, period as usize);
        }
        // nine-token units are beyond the default guard
        let mut g = RepetitionGuard::default();
        let tokens: Vec<u32> = (0..9).cycle().take(27).collect();
        assert!(feed(&mut g, &tokens).is_none());
    }

    #[test]
    fn single_token_runs_need_eight() {
        let mut g = RepetitionGuard::default();
        assert!(
            feed(&mut g, &[4; 7]).is_none(),
            "seven zeros are a number, not a loop"
        );
        let l = g.push(4).expect("eighth repeat");
        assert_eq!(
            l,
            Loop {
                period: 1,
                repeats: 8
            }
        );
        assert_eq!(l.excess(), 7);
    }

    #[test]
    fn two_copies_and_ordinary_text_are_not_loops() {
        let mut g = RepetitionGuard::default();
        // "the cat the cat" then new text: two copies only
        assert!(feed(&mut g, &[10, 11, 10, 11, 12, 13, 14, 10, 11, 15]).is_none());
        // a repeated pair interrupted before the third copy
        let mut g = RepetitionGuard::default();
        assert!(feed(&mut g, &[1, 2, 1, 2, 1, 3, 1, 2, 1, 2]).is_none());
    }

    #[test]
    fn runs_are_not_reported_as_longer_periods() {
        // six identical tokens would be three copies of the 2-gram [4, 4];
        // that unit is not primitive, so only the run rule applies.
        let mut g = RepetitionGuard::default();
        assert!(feed(&mut g, &[4; 6]).is_none());
        // likewise [1, 2, 1, 2] x 3 is reported with period 2, not 4
        let mut g = RepetitionGuard::default();
        let (_, l) = feed(&mut g, &[1, 2, 1, 2, 1, 2]).expect("loop");
        assert_eq!(l.period, 2);
    }

    #[test]
    fn reset_forgets_history_and_thresholds_are_configurable() {
        let mut g = RepetitionGuard::new(4, 2, 3);
        assert!(feed(&mut g, &[1, 2]).is_none());
        g.reset();
        assert!(feed(&mut g, &[3, 1, 2]).is_none());
        let (_, l) = feed(&mut g, &[1, 2]).expect("two copies are enough here");
        assert_eq!(
            l,
            Loop {
                period: 2,
                repeats: 2
            }
        );
        let mut g = RepetitionGuard::new(4, 2, 3);
        assert_eq!(feed(&mut g, &[9, 9, 9]).map(|(_, l)| l.period), Some(1));
    }
}
