//! Batched greedy and beam search for the encoder-decoder families.
//!
//! Both follow the reference implementation (Hugging Face `transformers`
//! 5.x `generate`) closely enough that, with the repetition guard off, the
//! outputs are the same token for token (proven on fixtures in
//! `tests/it/seq2seq.rs`):
//! - the decoder starts from `decoder_start`; a generation of budget `n`
//!   may produce `n` tokens (the reference's `max_length` is `n + 1`);
//! - processors, in the reference's order: suppressed tokens
//!   (`bad_words_ids` of one token) get `-inf`; at the first step
//!   `forced_bos` is the only possible token; at the last step allowed by the
//!   budget `forced_eos` is;
//! - greedy picks the first maximum of the processed logits;
//! - beam search scores with log-softmax, keeps the best `2k` continuations
//!   over all `k` beams, lets a continuation that ends (end token, or the
//!   budget reached) finish only if it ranks among the first `k`, with score
//!   `sum of log-probs / generated_length ^ length_penalty` (the end token
//!   counts; the decoder start does not), continues with the best `k` that did
//!   not end, and stops when `k` hypotheses are finished and the best running
//!   beam cannot beat the worst of them (`early_stopping = false`: judged at
//!   the current length; `"never"`: at the longest length allowed when the
//!   penalty is positive; `true`: as soon as `k` are finished).
//!
//! Work is kept to what is needed: each input has its own budget; a finished
//! row (greedy) or a finished input's beams (beam search) leave the batch
//! when enough of the batch has finished to pay for the copy of the caches
//! ([`DecoderState::select`]).

use std::ops::Deref;

use candle_core::{CpuStorage, Device, Storage, Tensor};

use crate::generate::decode::RepetitionGuard;
use crate::generate::softmax::log_normalizer;
use crate::models::seq2seq::{DecoderState, Seq2SeqNet};

/// When beam search may stop (the reference's `early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    /// Stop as soon as `k` hypotheses are finished.
    True,
    /// Stop when the best running beam, at its current length, cannot beat
    /// the worst finished hypothesis (the reference's default).
    False,
    /// Like `False`, but judged at the longest length allowed when the
    /// length penalty favours long outputs.
    Never,
}

/// Everything a search needs besides the inputs.
#[derive(Debug, Clone)]
pub struct SearchConfig {
    /// Beam width; 1 is greedy.
    pub beam_size: usize,
    /// Length penalty exponent of beam search.
    pub length_penalty: f32,
    /// Beam-search stopping rule.
    pub early_stopping: EarlyStopping,
    /// First decoder token.
    pub decoder_start: u32,
    /// End of sequence.
    pub eos: u32,
    /// Token forced at the first step.
    pub forced_bos: Option<u32>,
    /// Token forced at the last step the budget allows.
    pub forced_eos: Option<u32>,
    /// Tokens never generated.
    pub suppress: Vec<u32>,
    /// Beam search: log-softmax again after suppressing tokens (the
    /// reference's `renormalize_logits`).
    pub renormalize: bool,
    /// Stop an output that starts looping (and drop the repeated copies).
    pub repetition_guard: bool,
}

/// One input: its encoder token ids and its budget of new tokens.
#[derive(Debug, Clone)]
pub struct Row {
    /// Encoder input ids (special tokens included).
    pub ids: Vec<u32>,
    /// Most new tokens (at least 1).
    pub budget: usize,
}

/// One output.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Generated tokens after the decoder start, the end token excluded.
    pub tokens: Vec<u32>,
    /// Whether the output ended with the end token.
    pub ended: bool,
    /// Beam score (greedy: 0).
    pub score: f32,
}

/// Right-pads rows into `[rows, len]` ids and a `[rows, len]` mask.
pub fn pad_batch(rows: &[Row], pad: u32, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let len = rows.iter().map(|r| r.ids.len()).max().unwrap_or(1).max(1);
    let mut ids = Vec::with_capacity(rows.len() * len);
    let mut mask = Vec::with_capacity(rows.len() * len);
    for r in rows {
        ids.extend_from_slice(&r.ids);
        mask.extend(std::iter::repeat_n(1f32, r.ids.len()));
        ids.extend(std::iter::repeat_n(pad, len - r.ids.len()));
        mask.extend(std::iter::repeat_n(0f32, len - r.ids.len()));
    }
    Ok((
        Tensor::from_vec(ids, (rows.len(), len), device)?,
        Tensor::from_vec(mask, (rows.len(), len), device)?,
    ))
}

/// Encodes the rows as one padded batch and decodes them together.
pub fn generate(
    net: &dyn Seq2SeqNet,
    rows: &[Row],
    cfg: &SearchConfig,
    pad: u32,
) -> candle_core::Result<Vec<Output>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, mask) = pad_batch(rows, pad, net.device())?;
    let encoded = net.encode(&ids, &mask)?;
    if cfg.beam_size <= 1 {
        greedy(net, rows, cfg, &encoded, &mask)
    } else {
        beam(net, rows, cfg, &encoded, &mask)
    }
}

/// Whether to drop `finished` of `rows` rows from the batch now: the copy of
/// the caches is paid back when a quarter of the rows are dead weight.
fn worth_compacting(finished: usize, rows: usize) -> bool {
    finished > 0 && finished * 4 >= rows
}

fn argmax_allowed(row: &[f32], suppress: &[u32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    let mut any = false;
    for (i, &v) in row.iter().enumerate() {
        if (!any || v > best_value) && !suppress.contains(&(i as u32)) {
            best = i;
            best_value = v;
            any = true;
        }
    }
    best as u32
}

fn greedy(
    net: &dyn Seq2SeqNet,
    rows: &[Row],
    cfg: &SearchConfig,
    encoded: &Tensor,
    mask: &Tensor,
) -> candle_core::Result<Vec<Output>> {
    let n = rows.len();
    let capacity = rows.iter().map(|r| r.budget).max().unwrap_or(1) + 1;
    let mut state = net.start(encoded, mask, capacity)?;
    let mut out: Vec<Output> = (0..n)
        .map(|_| Output {
            tokens: Vec::new(),
            ended: false,
            score: 0.0,
        })
        .collect();
    let guard = RepetitionGuard::default();
    let mut done = vec![false; n];
    let mut active: Vec<usize> = (0..n).collect();
    let mut last: Vec<u32> = vec![cfg.decoder_start; n];
    let mut t = 0usize;
    while !active.is_empty() {
        let tokens = Tensor::new(last.as_slice(), net.device())?;
        let logits = net.step(&mut state, &tokens)?;
        let host = HostRows::new(&logits)?;
        let vocab = logits.dim(1)?;
        for (j, &i) in active.iter().enumerate() {
            if done[i] {
                continue;
            }
            let budget = rows[i].budget.max(1);
            let tok = match (cfg.forced_bos, cfg.forced_eos) {
                (_, Some(e)) if t + 1 == budget => e,
                (Some(b), _) if t == 0 => b,
                _ => argmax_allowed(&host.data()[j * vocab..][..vocab], &cfg.suppress),
            };
            last[j] = tok;
            let o = &mut out[i];
            if tok == cfg.eos {
                o.ended = true;
                done[i] = true;
                continue;
            }
            o.tokens.push(tok);
            if cfg.repetition_guard {
                if let Some(found) = guard.loop_at_end(&o.tokens) {
                    let keep = o.tokens.len() - found.excess();
                    o.tokens.truncate(keep);
                    done[i] = true;
                    continue;
                }
            }
            if o.tokens.len() >= budget {
                done[i] = true;
            }
        }
        t += 1;
        let keep: Vec<u32> = (0..active.len())
            .filter(|&j| !done[active[j]])
            .map(|j| j as u32)
            .collect();
        if keep.is_empty() {
            break;
        }
        if worth_compacting(active.len() - keep.len(), active.len()) {
            state.select(&keep)?;
            active = keep.iter().map(|&j| active[j as usize]).collect();
            last = keep.iter().map(|&j| last[j as usize]).collect();
        }
    }
    Ok(out)
}

/// A step's logits as one host slice: CPU memory read in place (copying
/// the rows x vocabulary values out each step was a 16 MB copy at 64 rows
/// of OPUS-MT's 65,001 outputs, plus the fresh pages), else copied.
struct HostRows<'a> {
    /// The storage's read guard and the tensor's range in it.
    storage: Option<(Box<dyn Deref<Target = Storage> + 'a>, usize, usize)>,
    copy: Vec<f32>,
}

impl<'a> HostRows<'a> {
    fn new(t: &'a Tensor) -> candle_core::Result<Self> {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(_)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(HostRows {
                storage: Some((Box::new(storage), a, b)),
                copy: Vec::new(),
            });
        }
        drop(storage);
        Ok(HostRows {
            storage: None,
            copy: t.flatten_all()?.to_vec1::<f32>()?,
        })
    }

    fn data(&self) -> &[f32] {
        match &self.storage {
            Some((guard, a, b)) => match &***guard {
                Storage::Cpu(CpuStorage::F32(d)) => &d[*a..*b],
                _ => unreachable!("checked in HostRows::new"),
            },
            None => &self.copy,
        }
    }
}

/// A running beam or a finished hypothesis.
#[derive(Debug, Clone)]
struct Hyp {
    score: f32,
    tokens: Vec<u32>,
    ended: bool,
}

struct BeamItem {
    running: Vec<Hyp>,
    finished: Vec<Hyp>,
    improvable: bool,
    done: bool,
    budget: usize,
}

/// A continuation: (accumulated log-prob, source beam, token).
type Cand = (f32, usize, u32);

/// The `m` best entries of the log-softmax of the logits `row` (whose
/// [`log_normalizer`] is `norm`), plus `base`, best first; ties keep the
/// lower token id first.
fn top_of_row(
    row: &[f32],
    norm: (f32, f32),
    base: f32,
    beam: usize,
    m: usize,
    into: &mut Vec<Cand>,
) {
    const CHUNK: usize = 64;
    let (max, ln_sum) = norm;
    let start = into.len();
    // Raw logit of the m-th best once m are kept: the score is monotonic in
    // the logit, so a logit below it cannot enter, and whole chunks whose
    // largest logit is below it are skipped (vectorized) instead of scored
    // one by one.
    let mut floor = f32::NEG_INFINITY;
    for (c, chunk) in row.chunks(CHUNK).enumerate() {
        if floor > f32::NEG_INFINITY {
            let mut lanes = [f32::NEG_INFINITY; 16];
            for part in chunk.chunks(16) {
                for (l, &x) in lanes.iter_mut().zip(part) {
                    *l = if x > *l { x } else { *l };
                }
            }
            if lanes.iter().all(|&l| l < floor) {
                continue;
            }
        }
        for (i, &x) in chunk.iter().enumerate() {
            if x < floor {
                continue;
            }
            let v = c * CHUNK + i;
            let s = base + ((x - max) - ln_sum);
            if into.len() - start < m {
                into.push((s, beam, v as u32));
                // keep the slice sorted descending
                let mut k = into.len() - 1;
                while k > start && into[k - 1].0 < into[k].0 {
                    into.swap(k - 1, k);
                    k -= 1;
                }
            } else if s > into[into.len() - 1].0 {
                let last = into.len() - 1;
                into[last] = (s, beam, v as u32);
                let mut k = last;
                while k > start && into[k - 1].0 < into[k].0 {
                    into.swap(k - 1, k);
                    k -= 1;
                }
            } else {
                continue;
            }
            if into.len() - start == m {
                floor = row[into[into.len() - 1].2 as usize];
            }
        }
    }
}

fn beam(
    net: &dyn Seq2SeqNet,
    rows: &[Row],
    cfg: &SearchConfig,
    encoded: &Tensor,
    mask: &Tensor,
) -> candle_core::Result<Vec<Output>> {
    let k = cfg.beam_size;
    let n = rows.len();
    let lp = cfg.length_penalty;
    let guard = RepetitionGuard::default();
    let capacity = rows.iter().map(|r| r.budget).max().unwrap_or(1) + 1;
    // One row per input for the first step, where every beam of an input
    // is the same; then `k` rows per input sharing its cross-attention.
    let mut state: DecoderState = net.start(encoded, mask, capacity)?;
    let mut items: Vec<BeamItem> = rows
        .iter()
        .map(|r| BeamItem {
            running: (0..k)
                .map(|b| Hyp {
                    score: if b == 0 { 0.0 } else { -1e9 },
                    tokens: Vec::new(),
                    ended: false,
                })
                .collect(),
            finished: Vec::new(),
            improvable: true,
            done: false,
            budget: r.budget.max(1),
        })
        .collect();
    let mut active: Vec<usize> = (0..n).collect();
    let mut t = 0usize;
    loop {
        let last: Vec<u32> = active
            .iter()
            .flat_map(|&i| {
                items[i]
                    .running
                    .iter()
                    .map(|h| *h.tokens.last().unwrap_or(&cfg.decoder_start))
            })
            .collect();
        let logits = if t == 0 {
            // `last` holds the start token k times per input.
            let first: Vec<u32> = last.iter().step_by(k).copied().collect();
            let logits = net.step(&mut state, &Tensor::new(first.as_slice(), net.device())?)?;
            state.share_groups(k)?;
            let expand: Vec<u32> = (0..n as u32)
                .flat_map(|i| std::iter::repeat_n(i, k))
                .collect();
            logits.index_select(&Tensor::new(expand.as_slice(), net.device())?, 0)?
        } else {
            net.step(&mut state, &Tensor::new(last.as_slice(), net.device())?)?
        };
        let vocab = logits.dim(1)?;
        let host = HostRows::new(&logits)?;
        let logits = host.data();
        let mut reorder: Vec<u32> = Vec::with_capacity(active.len() * k);
        for (a, &i) in active.iter().enumerate() {
            let item = &mut items[i];
            if item.done {
                // Waiting for compaction: keep its rows in place.
                reorder.extend((0..k).map(|b| (a * k + b) as u32));
                continue;
            }
            let cur_len = 1 + t;
            let max_len = 1 + item.budget;
            let forced = if cfg.forced_eos.is_some() && cur_len == max_len - 1 {
                cfg.forced_eos
            } else if t == 0 {
                cfg.forced_bos
            } else {
                None
            };
            let mut cands: Vec<Cand> = Vec::with_capacity(2 * k * k);
            for b in 0..k {
                let base = item.running[b].score;
                match forced {
                    Some(f) => cands.push((base + 0.0, b, f)),
                    None => {
                        let row = &logits[(a * k + b) * vocab..][..vocab];
                        if cfg.suppress.is_empty() {
                            top_of_row(row, log_normalizer(row), base, b, 2 * k, &mut cands);
                        } else {
                            let mut r = row.to_vec();
                            for &s in &cfg.suppress {
                                if let Some(x) = r.get_mut(s as usize) {
                                    *x = f32::NEG_INFINITY;
                                }
                            }
                            // suppressed tokens drop out of the distribution
                            // (renormalize) or just out of the choice
                            let norm = log_normalizer(if cfg.renormalize { &r } else { row });
                            top_of_row(&r, norm, base, b, 2 * k, &mut cands);
                        }
                    }
                }
            }
            // Best 2k over all beams; equal scores keep the lower flat index
            // (beam-major), as the reference's top-k does on the CPU.
            cands.sort_by(|x, y| {
                y.0.partial_cmp(&x.0)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(x.1.cmp(&y.1))
                    .then(x.2.cmp(&y.2))
            });
            cands.truncate(2 * k);
            let at_max = cur_len + 1 >= max_len;
            let mut continuing: Vec<(f32, usize, Hyp)> = Vec::with_capacity(k);
            let mut finished_now: Vec<Hyp> = Vec::new();
            let mut all_hit = true;
            for (rank, &(score, b, tok)) in cands.iter().enumerate() {
                let mut tokens = item.running[b].tokens.clone();
                let mut ended = false;
                let mut hit = at_max;
                if tok == cfg.eos {
                    hit = true;
                    ended = true;
                } else {
                    tokens.push(tok);
                    if cfg.repetition_guard {
                        if let Some(found) = guard.loop_at_end(&tokens) {
                            tokens.truncate(tokens.len() - found.excess());
                            hit = true;
                        }
                    }
                }
                all_hit &= hit;
                if hit {
                    if rank < k && score.is_finite() {
                        finished_now.push(Hyp {
                            score: score / ((t + 1) as f32).powf(lp),
                            tokens,
                            ended,
                        });
                    }
                } else if continuing.len() < k {
                    continuing.push((
                        score,
                        b,
                        Hyp {
                            score,
                            tokens,
                            ended: false,
                        },
                    ));
                }
            }
            let full = item.finished.len() >= k;
            let blocked = (cfg.early_stopping == EarlyStopping::True && full) || !item.improvable;
            if !blocked && !finished_now.is_empty() {
                item.finished.extend(finished_now);
                item.finished.sort_by(|x, y| {
                    y.score
                        .partial_cmp(&x.score)
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
                item.finished.truncate(k);
            }
            // Pad the running set when fewer than k continue (all hit).
            while continuing.len() < k {
                let (score, b, tok) = cands[continuing.len().min(cands.len() - 1)];
                let mut tokens = item.running[b].tokens.clone();
                tokens.push(tok);
                continuing.push((
                    score - 1e9,
                    b,
                    Hyp {
                        score: score - 1e9,
                        tokens,
                        ended: false,
                    },
                ));
            }
            reorder.extend(continuing.iter().map(|(_, b, _)| (a * k + b) as u32));
            item.running = continuing.into_iter().map(|(_, _, h)| h).collect();
            // Can a running beam still beat the worst finished hypothesis?
            let new_len = t + 1;
            if item.improvable {
                let best_len = if cfg.early_stopping == EarlyStopping::Never && lp > 0.0 {
                    max_len - 1
                } else {
                    new_len
                };
                let best_possible = item.running[0].score / (best_len as f32).powf(lp);
                let worst = if item.finished.len() >= k {
                    item.finished
                        .iter()
                        .map(|h| h.score)
                        .fold(f32::INFINITY, f32::min)
                } else {
                    -1e9
                };
                item.improvable = best_possible > worst;
            }
            let full = item.finished.len() >= k;
            item.done =
                !item.improvable || (cfg.early_stopping == EarlyStopping::True && full) || all_hit;
        }
        t += 1;
        // Every new row comes from a beam of the same input.
        state.reorder_within_groups(&reorder)?;
        let keep: Vec<usize> = (0..active.len())
            .filter(|&a| !items[active[a]].done)
            .collect();
        if keep.is_empty() {
            break;
        }
        if worth_compacting(active.len() - keep.len(), active.len()) {
            let rows_kept: Vec<u32> = keep
                .iter()
                .flat_map(|&a| (0..k).map(move |b| (a * k + b) as u32))
                .collect();
            state.select(&rows_kept)?;
            active = keep.iter().map(|&a| active[a]).collect();
        }
    }
    Ok(items
        .into_iter()
        .map(|it| {
            let best = it
                .finished
                .into_iter()
                .next()
                .or_else(|| it.running.into_iter().next())
                .expect("a beam item has hypotheses");
            Output {
                tokens: best.tokens,
                ended: best.ended,
                score: best.score,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_of_row_keeps_best_in_order() {
        let mut v = Vec::new();
        top_of_row(&[0.1, 0.5, 0.3, 0.5, -1.0], (0.0, 0.0), 1.0, 2, 3, &mut v);
        assert_eq!(v, vec![(1.5, 2, 1), (1.5, 2, 3), (1.3, 2, 2)]);
    }

    #[test]
    fn top_of_row_skipping_equals_a_full_sort() {
        let row: Vec<f32> = crate::seeded::values(5000, 7)
            .into_iter()
            .enumerate()
            // repeated values (ties) and larger ones late in the row
            .map(|(i, x)| {
                if i % 7 == 0 {
                    0.25
                } else {
                    x + (i / 1000) as f32 * 0.1
                }
            })
            .collect();
        let norm = log_normalizer(&row);
        for m in [1, 3, 8] {
            let mut got = vec![(9.0, 0, 0)];
            top_of_row(&row, norm, -1.5, 1, m, &mut got);
            let mut all: Vec<Cand> = row
                .iter()
                .enumerate()
                .map(|(v, &x)| (-1.5 + ((x - norm.0) - norm.1), 1, v as u32))
                .collect();
            // best first, ties by lower token id
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.cmp(&b.2)));
            assert_eq!(got[0], (9.0, 0, 0), "earlier candidates stay");
            assert_eq!(&got[1..], &all[..m], "m = {m}");
        }
    }

    #[test]
    fn argmax_skips_suppressed() {
        assert_eq!(argmax_allowed(&[1.0, 3.0, 2.0], &[1]), 2);
        assert_eq!(argmax_allowed(&[3.0, 3.0], &[]), 0);
    }

    #[test]
    fn padding_and_mask() {
        let rows = vec![
            Row {
                ids: vec![5, 6, 7],
                budget: 4,
            },
            Row {
                ids: vec![8],
                budget: 4,
            },
        ];
        let (ids, mask) = pad_batch(&rows, 0, &Device::Cpu).unwrap();
        assert_eq!(
            ids.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 7], vec![8, 0, 0]]
        );
        assert_eq!(
            mask.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 1.0, 1.0], vec![1.0, 0.0, 0.0]]
        );
    }
}
