//! MMTok: multimodal coverage maximisation (Dong et al., 2025, "MMTok: Multimodal Coverage
//! Maximization for Efficient Inference of VLMs", <https://arxiv.org/abs/2508.18264>), following
//! the authors' released code (Ironieser/MMTok @ d1522cd, `SemanticTokenSelector
//! .mm_coverage_selection`; checked against it by `tests/methods_reference.rs`). Before layer 0,
//! pick the image rows S (|S| = keep) that best cover both the prompt's text rows and all the
//! image rows:
//!
//! ```text
//! P[t][i] = softmax_i(cos(t, v_i) / tv_temperature) / m      (m text rows t)
//! Q[u][i] = softmax_i(cos(v_u, v_i) / vv_temperature) / n    (n image rows u)
//! f(S) = sum_t max_{i in S} P[t][i] + alpha * sum_u max_{i in S} Q[u][i]
//! ```
//!
//! (cosine on the decoder input embeddings), a facility-location function: monotone and
//! submodular, so greedy selection is within 1 - 1/e of the optimum. Solved by lazy greedy (a
//! priority queue of stale marginal gains, which can only shrink), which picks exactly what the
//! authors' plain greedy picks (ties: the lower row, as `torch.argmax`). Score map: f({i}), how
//! much a row covers on its own.
//!
//! DEVIATIONs from the authors' code:
//! - Q: the authors measure image-image similarity on the vision tower's features (CLIP, before
//!   the projector); the decoder sequence carries only the projected rows, so Q uses those.
//! - The text: the authors embed the question's keywords (stopwords dropped, no chat template);
//!   the decoder sequence does not mark the question, so every text row counts.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use super::ops::{cosine_rows, plan, scores_on_rows};
use crate::reduce::registry::{LanguageMethod, Part, Side};
use crate::reduce::{Context, MethodInfo, Plan, Reducer, Site, SiteView};
use crate::{Error, Result};

pub const INFO: MethodInfo = MethodInfo {
    name: "mmtok",
    label: "MMTok",
    description: "Before the LLM: greedily picks the image tokens that best cover the prompt's embeddings and all image tokens (softmax-similarity coverage, lazy greedy).",
    paper: "Dong et al., MMTok: Multimodal Coverage Maximization for Efficient Inference of VLMs, 2025",
    merges: false,
    caveat: None,
    side: Side::Language,
    acts_on: &[Part::PreLlm],
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MmtokConfig {
    /// Weight of the image-coverage term against the text-coverage term (>= 0; the authors'
    /// `alpha`, 0.5).
    pub lambda: f32,
    /// Softmax temperature of the text-image similarities (> 0; the authors' 0.02).
    pub tv_temperature: f32,
    /// Softmax temperature of the image-image similarities (> 0; the authors' 0.2).
    pub vv_temperature: f32,
}

impl Default for MmtokConfig {
    fn default() -> Self {
        Self { lambda: 0.5, tv_temperature: 0.02, vv_temperature: 0.2 }
    }
}

impl LanguageMethod for MmtokConfig {
    const INFO: MethodInfo = INFO;

    fn build(&self, keep: usize, _ctx: &Context) -> Result<Box<dyn Reducer>> {
        Ok(Box::new(Mmtok::new(self, keep)?))
    }
}

pub struct Mmtok {
    cfg: MmtokConfig,
    keep: usize,
}

impl Mmtok {
    pub fn new(cfg: &MmtokConfig, keep: usize) -> Result<Self> {
        if !(cfg.lambda >= 0.0 && cfg.lambda.is_finite()) {
            return Err(Error::Config { field: "lambda", reason: "must be a non-negative number".into() });
        }
        for (field, t) in [("tv_temperature", cfg.tv_temperature), ("vv_temperature", cfg.vv_temperature)] {
            if !(t > 0.0 && t.is_finite()) {
                return Err(Error::Config { field, reason: "must be a positive number".into() });
            }
        }
        Ok(Self { cfg: cfg.clone(), keep })
    }
}

/// The authors' coverage matrix, candidate-major: `w[i]` = column i of `[P; alpha Q]` (module
/// docs), from `text` and `image` rows of `hidden`.
pub fn coverage_matrix(
    hidden: &candle_core::Tensor,
    text: &[usize],
    image: &[usize],
    cfg: &MmtokConfig,
) -> Result<Vec<Vec<f32>>> {
    let n = image.len();
    let mut w = vec![Vec::with_capacity(text.len() + n); n];
    let rows = |targets: &[usize], temperature: f32, weight: f32, w: &mut Vec<Vec<f32>>| -> Result<()> {
        // One softmax over the candidates per target row.
        for sims in cosine_rows(hidden, targets, image)? {
            let max = sims.iter().copied().fold(f32::NEG_INFINITY, f32::max) / temperature;
            let e: Vec<f32> = sims.iter().map(|c| (c / temperature - max).exp()).collect();
            let total: f32 = e.iter().sum();
            for (wi, x) in w.iter_mut().zip(&e) {
                wi.push(x / total / targets.len() as f32 * weight);
            }
        }
        Ok(())
    };
    rows(text, cfg.tv_temperature, 1.0, &mut w)?;
    rows(image, cfg.vv_temperature, cfg.lambda, &mut w)?;
    Ok(w)
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

impl Reducer for Mmtok {
    fn sites(&self) -> Vec<Site> {
        vec![Site::PreLlm]
    }

    fn plan(&mut self, view: &SiteView<'_>) -> Result<Plan> {
        let (image, text) = (view.image_rows(), view.text_rows());
        let w = coverage_matrix(&view.state.hidden, &text, &image, &self.cfg)?;
        let target_weight = vec![1f32; text.len() + image.len()];
        let cov = Coverage { w: &w, target_weight: &target_weight };
        let zero = vec![0f32; target_weight.len()];
        let single: Vec<f32> = (0..image.len()).map(|i| cov.gain(i, &zero)).collect();
        let all_rows = scores_on_rows(view.num_rows(), &image, &single);
        if self.keep >= image.len() {
            return Ok(plan(view, all_rows, image, Vec::new()));
        }
        let keep = cov.lazy_greedy(self.keep).into_iter().map(|i| image[i]).collect();
        Ok(plan(view, all_rows, keep, Vec::new()))
    }

    fn schedule(&self) -> Vec<(Site, usize)> {
        vec![(Site::PreLlm, self.keep)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Trace;
    use crate::model::layers::AttnRecord;
    use crate::reduce::llm::testing;
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    fn run(cfg: MmtokConfig, keep: usize) -> Vec<usize> {
        // T(1,0) I(1,0) I(0.8,0.6) I(0,1) I(-1,0).
        let h = Tensor::new(&[[1f32, 0.0], [1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], &Device::Cpu).unwrap();
        let rows = testing::rows(&[None, Some(vec![0]), Some(vec![1]), Some(vec![2]), Some(vec![3])], &h);
        let (attn, trace) = (AttnRecord::default(), Trace::default());
        let view = SiteView { site: Site::PreLlm, state: &rows, attn: &attn, full_trace: &trace, vision_saliency: &[] };
        let p = Mmtok::new(&cfg, keep).unwrap().plan(&view).unwrap();
        p.validate(&rows).unwrap();
        p.kept(&rows)
    }

    #[test]
    fn greedy_by_hand() {
        // Temperatures 1 keep the softmaxes soft enough to work by hand. Cosines to the text
        // row: 1, 0.8, 0, -1 -> P = softmax = (.479, .393, .176, .065) (sum 1; m = 1).
        let soft = MmtokConfig { lambda: 0.0, tv_temperature: 1.0, vv_temperature: 1.0 };
        // Text only: v0 covers the text row best; every other row then gains 0 (lowest index).
        assert_eq!(run(soft.clone(), 1), [1]);
        assert_eq!(run(soft.clone(), 2), [1, 2]);
        // Image coverage alone (lambda large): Q rows are softmaxes of the image cosines; v1 and v2
        // (cosine sums 2.4 and 1.4 from the middle) cover most: v1 = (0.8, 0.6) first.
        let image = MmtokConfig { lambda: 1000.0, ..soft.clone() };
        assert_eq!(run(image, 1), [2]);
        // A sharp text softmax (0.02) puts all of P on v0.
        assert_eq!(run(MmtokConfig { lambda: 0.5, ..Default::default() }, 1), [1]);
        assert_eq!(run(soft, 4), [1, 2, 3, 4]);
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
