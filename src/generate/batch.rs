//! Length-sorted, token-budget batches: which inputs are decoded together.
//!
//! Inputs are sorted by source length (longest first, so the costliest
//! batch runs while the others wait, and the padding inside a batch stays
//! small) and packed greedily while `rows * longest * beams` stays within the
//! budget of padded source tokens. A batch also holds at most
//! [`MAX_ROWS`] decoder rows (`rows * beams`): past that the per-step
//! logits and beam bookkeeping outgrow the gain from wider matmuls.

/// Most decoder rows (inputs times beams) in one batch.
pub const MAX_ROWS: usize = 64;

/// Groups input indices into batches; `lens` are source lengths in tokens.
/// Every index appears in exactly one batch; an input longer than the
/// budget gets a batch of its own.
pub fn plan(lens: &[usize], budget_tokens: usize, beams: usize) -> Vec<Vec<usize>> {
    let beams = beams.max(1);
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(lens[i]), i));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let len = lens[i].max(1);
        let longest_if = longest.max(len);
        let rows_if = cur.len() + 1;
        let fits =
            rows_if * longest_if * beams <= budget_tokens.max(1) && rows_if * beams <= MAX_ROWS;
        if !cur.is_empty() && !fits {
            batches.push(std::mem::take(&mut cur));
            longest = 0;
        }
        longest = longest.max(len);
        cur.push(i);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_once_and_budget_kept() {
        let lens: Vec<usize> = (0..200).map(|i| 3 + (i * 37) % 61).collect();
        for beams in [1, 4] {
            let batches = plan(&lens, 512, beams);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..200).collect::<Vec<_>>());
            for b in &batches {
                let longest = b.iter().map(|&i| lens[i]).max().unwrap();
                assert!(b.len() == 1 || b.len() * longest * beams <= 512, "{b:?}");
                assert!(b.len() * beams <= MAX_ROWS);
            }
        }
    }

    #[test]
    fn sorted_batches_pad_little() {
        let lens: Vec<usize> = (0..100).map(|i| 5 + (i * 13) % 40).collect();
        let batches = plan(&lens, 400, 1);
        let real: usize = lens.iter().sum();
        let padded: usize = batches
            .iter()
            .map(|b| b.len() * b.iter().map(|&i| lens[i]).max().unwrap())
            .sum();
        assert!(real as f64 / padded as f64 > 0.9, "fill {real}/{padded}");
    }

    #[test]
    fn oversized_input_alone() {
        let batches = plan(&[10, 1000, 10], 100, 1);
        assert_eq!(batches, vec![vec![1], vec![0, 2]]);
    }
}
