//! MMTok: multimodal coverage maximisation (MMTok: Multimodal Coverage Maximization for
//! Efficient Inference of VLMs, 2025). Before layer 0, pick the image rows S (|S| = keep) that
//! best cover both the prompt's text rows and all the image rows:
//!
//! ```text
//! f(S) = mean_t max_{i in S} w(i, t) + lambda * mean_u max_{i in S} w(i, u),   w = (1 + cos) / 2
//! ```
//!
//! over text rows t and image rows u (cosine on the decoder input embeddings), a facility-location
//! function: monotone and submodular, so greedy selection is within 1 - 1/e of the optimum.
//! Solved by lazy greedy (a priority queue of stale marginal gains, which can only shrink), which
//! picks exactly what plain greedy picks (ties: the lower row). Score map: f({i}), how much a row
//! covers on its own.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use super::ops::{cosine_rows, plan, scores_on_rows};
use super::{LlmPlan, LlmReducer, LlmSite, LlmView};
use crate::reduce::MethodInfo;
use crate::{Error, Result};

pub const INFO: MethodInfo = MethodInfo {
    name: "mmtok",
    label: "MMTok",
    description: "Before the LLM: greedily picks the image tokens that best cover the prompt's embeddings and all image tokens (submodular coverage, lazy greedy).",
    paper: "MMTok: Multimodal Coverage Maximization for Efficient Inference of VLMs, 2025",
    merges: false,
    caveat: None,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MmtokConfig {
    /// Weight of the image-coverage term against the text-coverage term (>= 0).
    pub lambda: f32,
}

impl Default for MmtokConfig {
    fn default() -> Self {
        Self { lambda: 0.5 }
    }
}

pub struct Mmtok {
    lambda: f32,
    keep: usize,
}

impl Mmtok {
    pub fn new(cfg: &MmtokConfig, keep: usize) -> Result<Self> {
        if !(cfg.lambda >= 0.0 && cfg.lambda.is_finite()) {
            return Err(Error::Config { field: "lambda", reason: "must be a non-negative number".into() });
        }
        Ok(Self { lambda: cfg.lambda, keep })
    }
}

/// A weighted coverage problem: `w[i][t]` >= 0 is how well candidate i covers target t, and
/// target t counts `target_weight[t]`. f(S) = sum_t target_weight[t] * max_{i in S} w[i][t]
/// (0 for the empty set).
pub struct Coverage<'a> {
    pub w: &'a [Vec<f32>],
    pub target_weight: &'a [f32],
}

impl Coverage<'_> {
    /// f(S + i) - f(S) given `cover[t]` = max_{j in S} w[j][t]. Computed the same way every time
    /// (term by term in target order), so a gain never grows as `cover` grows, in floats too.
    pub fn gain(&self, i: usize, cover: &[f32]) -> f32 {
        self.w[i].iter().zip(cover).zip(self.target_weight).map(|((&w, &c), &tw)| tw * (w - c).max(0.0)).sum()
    }

    fn take(&self, i: usize, cover: &mut [f32]) {
        for (c, &w) in cover.iter_mut().zip(&self.w[i]) {
            *c = c.max(w);
        }
    }

    /// Plain greedy: `k` times, the candidate with the largest gain (ties: the lowest index).
    pub fn greedy(&self, k: usize) -> Vec<usize> {
        let n = self.w.len();
        let mut cover = vec![0f32; self.target_weight.len()];
        let mut picked = vec![false; n];
        let mut order = Vec::new();
        for _ in 0..k.min(n) {
            let best = (0..n)
                .filter(|&i| !picked[i])
                .map(|i| (i, self.gain(i, &cover)))
                .fold(None, |b: Option<(usize, f32)>, (i, g)| match b {
                    Some((_, bg)) if g <= bg => b,
                    _ => Some((i, g)),
                })
                .expect("k <= n");
            picked[best.0] = true;
            self.take(best.0, &mut cover);
            order.push(best.0);
        }
        order
    }

    /// Lazy greedy (Minoux): pop the candidate with the largest stale gain, refresh it, and take
    /// it if it still beats every other stale gain (an upper bound of that candidate's gain by
    /// submodularity). Entries order by (gain, lower index), so ties resolve as in
    /// [`Coverage::greedy`] and the two return the same sequence.
    pub fn lazy_greedy(&self, k: usize) -> Vec<usize> {
        let n = self.w.len();
        let mut cover = vec![0f32; self.target_weight.len()];
        let mut heap: BinaryHeap<Entry> = (0..n).map(|i| Entry { gain: self.gain(i, &cover), index: i }).collect();
        let mut order = Vec::new();
        while order.len() < k.min(n) {
            let top = heap.pop().expect("k <= n");
            let fresh = Entry { gain: self.gain(top.index, &cover), index: top.index };
            if heap.peek().is_none_or(|next| fresh >= *next) {
                self.take(fresh.index, &mut cover);
                order.push(fresh.index);
            } else {
                heap.push(fresh);
            }
        }
        order
    }
}

/// A heap entry: larger gain first, then the lower index.
#[derive(Debug, Clone, Copy)]
struct Entry {
    gain: f32,
    index: usize,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.gain.total_cmp(&other.gain).then(other.index.cmp(&self.index))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl LlmReducer for Mmtok {
    fn sites(&self) -> Vec<LlmSite> {
        vec![LlmSite::PreLlm]
    }

    fn plan(&mut self, view: &LlmView<'_>) -> Result<LlmPlan> {
        let (image, text) = (view.image_rows(), view.text_rows());
        // Targets: text rows, then image rows.
        let targets: Vec<usize> = text.iter().chain(&image).copied().collect();
        // DEVIATION: the abstract's sim is mapped to (1 + cos) / 2 in [0, 1], so that coverage
        // starts from the least similar possible (cos = -1) and f stays monotone with negative
        // cosines (raw cosines would make f(S) depend on where an empty max starts); each term is
        // a mean rather than a sum, so lambda means the same for 20- and 2000-row sequences.
        let w: Vec<Vec<f32>> = cosine_rows(view.hidden, &image, &targets)?
            .into_iter()
            .map(|r| r.into_iter().map(|c| (1.0 + c) / 2.0).collect())
            .collect();
        let target_weight: Vec<f32> = std::iter::repeat_n(1.0 / text.len().max(1) as f32, text.len())
            .chain(std::iter::repeat_n(self.lambda / image.len().max(1) as f32, image.len()))
            .collect();
        let cov = Coverage { w: &w, target_weight: &target_weight };
        let zero = vec![0f32; targets.len()];
        let single: Vec<f32> = (0..image.len()).map(|i| cov.gain(i, &zero)).collect();
        let all_rows = scores_on_rows(view.rows.len(), &image, &single);
        if self.keep >= image.len() {
            return Ok(plan(all_rows, image, Vec::new()));
        }
        let keep = cov.lazy_greedy(self.keep).into_iter().map(|i| image[i]).collect();
        Ok(plan(all_rows, keep, Vec::new()))
    }

    fn schedule(&self) -> Vec<(LlmSite, usize)> {
        vec![(LlmSite::PreLlm, self.keep)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::llm::Row;
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    fn run(lambda: f32, keep: usize) -> Vec<usize> {
        // T(1,0) I(1,0) I(0.8,0.6) I(0,1) I(-1,0).
        let rows = [Row::Text, Row::Image(vec![0]), Row::Image(vec![1]), Row::Image(vec![2]), Row::Image(vec![3])];
        let h = Tensor::new(&[[1f32, 0.0], [1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], &Device::Cpu).unwrap();
        let view = LlmView { site: LlmSite::PreLlm, rows: &rows, hidden: &h, attn: None, vision_saliency: &[] };
        let p = Mmtok::new(&MmtokConfig { lambda }, keep).unwrap().plan(&view).unwrap();
        p.validate(&rows).unwrap();
        p.keep
    }

    #[test]
    fn greedy_by_hand() {
        // w to the text row: 1, 0.9, 0.5, 0. w between images (rows v0..v3):
        // v0: 1 .9 .5 0 (sum 2.4); v1: .9 1 .8 .1 (2.8); v2: .5 .8 1 .5 (2.8); v3: 0 .1 .5 1 (1.6).
        // lambda 0.5 (image term / 4 * 0.5): f({v0}) = 1 + 0.3 = 1.3 beats f({v1}) = 0.9 + 0.35.
        assert_eq!(run(0.5, 1), [1]);
        // lambda 2: f({v1}) = 0.9 + 1.4 = 2.3 beats f({v0}) = 1 + 1.2. Then, covered (.9 | .9 1 .8 .1):
        // v0 gains 0.1 + 0.5 * 0.1 = 0.15, v2 0.5 * (0.2 + 0.4) = 0.3, v3 0.5 * 0.9 = 0.45.
        assert_eq!(run(2.0, 2), [2, 4]);
        // Text only: v0, then v1 (0.9 is covered by v0 already: v1 gains 0, as all do; lowest index).
        assert_eq!(run(0.0, 2), [1, 2]);
        assert_eq!(run(0.5, 4), [1, 2, 3, 4]);
    }

    #[test]
    fn lazy_greedy_equals_plain_greedy() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for trial in 0..60 {
            let n = rng.random_range(1..40);
            let m = rng.random_range(1..30);
            // Coarse values make exact ties common.
            let coarse = trial % 2 == 0;
            let w: Vec<Vec<f32>> = (0..n)
                .map(|_| {
                    (0..m)
                        .map(|_| if coarse { rng.random_range(0..4) as f32 / 4.0 } else { rng.random::<f32>() })
                        .collect()
                })
                .collect();
            let tw: Vec<f32> = (0..m).map(|_| rng.random_range(0.1..1.0)).collect();
            let cov = Coverage { w: &w, target_weight: &tw };
            for k in [1, n / 2, n] {
                assert_eq!(cov.lazy_greedy(k), cov.greedy(k), "trial {trial}, n {n}, k {k}");
            }
        }
    }
}
