//! SparseVLM-style progressive pruning with token recycling (Zhang et al., 2024, "SparseVLM:
//! Visual Token Sparsification for Efficient Vision-Language Model Inference",
//! <https://arxiv.org/abs/2410.04417>).
//!
//! At several decoder layers (LLaVA: after layers 2, 6 and 15 of 32; scaled to the model's
//! depth here), text "raters" score the image rows: the raters are the text rows whose
//! attention to the image rows (summed over image rows, mean over heads) is at least the mean
//! over text rows, and an image row's score is the attention it receives, averaged over heads
//! and raters. Each site leaves fewer image rows than the one before. Of the rows a site prunes,
//! the `recycle` share with the highest scores is clustered (k-centre on the hidden states'
//! cosine distance, `recycle_group` rows per cluster, rounded up) and every cluster is averaged
//! into one row; the recycled rows count toward the site's image-row count.
//!
//! Budget: `keep` is the layer-averaged number of image rows over all decoder layers. The
//! counts after the sites follow `decay` (each site `decay` times the previous one, before
//! rounding), scaled so that the layer average is `keep` within rounding. Layers up to the first
//! site always see every image row, so a small `keep` can be infeasible: the schedule then keeps
//! one row after every site and [`Sparsevlm::layer_averaged`] reports the average it gets.

use serde::{Deserialize, Serialize};

use super::ops::{argsort_desc, cluster, cosine_rows, plan, received_from, required_attention, scores_on_rows};
use super::{LlmContext, LlmPlan, LlmReducer, LlmSite, LlmView, layer_averaged_rows};
use crate::reduce::MethodInfo;
use crate::{Error, Result};

pub const INFO: MethodInfo = MethodInfo {
    name: "sparsevlm",
    label: "SparseVLM",
    description: "Inside the LLM: text raters score image tokens at several layers with a decreasing schedule; part of each pruned set is clustered and merged back (recycled).",
    paper: "Zhang et al., SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference, 2024",
    merges: true,
    caveat: Some(
        "The budget is the layer-averaged number of image tokens; the layers before the first site see all of them, so very small budgets cannot be met.",
    ),
};

/// The paper's sites for LLaVA's 32 decoder layers.
const PAPER_LAYERS: [usize; 3] = [2, 6, 15];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SparsevlmConfig {
    /// Prune after these decoder layers (default: 2, 6, 15 scaled from 32 layers to the model's,
    /// kept below the last layer).
    pub layers: Option<Vec<usize>>,
    /// Each site's count relative to the previous site's, in (0, 1].
    pub decay: f32,
    /// Share of each site's pruned rows (the highest-scored) recycled as merged rows, in 0..=1.
    pub recycle: f32,
    /// Recycled rows per merged row (rounded up to whole clusters).
    pub recycle_group: usize,
}

impl Default for SparsevlmConfig {
    fn default() -> Self {
        Self { layers: None, decay: 0.5, recycle: 0.3, recycle_group: 4 }
    }
}

impl SparsevlmConfig {
    /// The layers after which the method prunes, sorted and deduplicated (not range-checked).
    pub fn layers_for(&self, num_layers: usize) -> Vec<usize> {
        let mut l = match &self.layers {
            Some(l) => l.clone(),
            None => {
                PAPER_LAYERS.iter().map(|&l| ((l * num_layers + 16) / 32).min(num_layers.saturating_sub(2))).collect()
            }
        };
        l.sort_unstable();
        l.dedup();
        l
    }

    /// Shifts the schedule so its first site is `layer`, keeping the gaps; sites past
    /// `num_layers - 2` are dropped (the first is always kept).
    pub fn shift_to(&mut self, layer: usize, num_layers: usize) {
        let current = self.layers_for(num_layers);
        let first = current.first().copied().unwrap_or(0);
        let shifted: Vec<usize> = current
            .iter()
            .map(|&l| l - first + layer)
            .enumerate()
            .filter(|&(i, l)| i == 0 || l + 2 <= num_layers)
            .map(|(_, l)| l)
            .collect();
        self.layers = Some(if shifted.is_empty() { vec![layer] } else { shifted });
    }
}

pub struct Sparsevlm {
    cfg: SparsevlmConfig,
    layers: Vec<usize>,
    /// Image rows after each site.
    counts: Vec<usize>,
    num_layers: usize,
    num_image_tokens: usize,
}

impl Sparsevlm {
    pub fn new(cfg: &SparsevlmConfig, keep: usize, ctx: &LlmContext) -> Result<Self> {
        let bad = |field, reason: String| Err(Error::Config { field, reason });
        let layers = cfg.layers_for(ctx.num_layers);
        if layers.is_empty() {
            return bad("layers", "at least one layer is needed".into());
        }
        if let Some(&l) = layers.iter().find(|&&l| l >= ctx.num_layers) {
            return bad("layers", format!("layer {l} is out of range 0..={}", ctx.num_layers.saturating_sub(1)));
        }
        if !(cfg.decay > 0.0 && cfg.decay <= 1.0) {
            return bad("decay", "must be in (0, 1]".into());
        }
        if !(0.0..=1.0).contains(&cfg.recycle) {
            return bad("recycle", "must be in 0..=1".into());
        }
        if cfg.recycle_group == 0 {
            return bad("recycle_group", "must be at least 1".into());
        }
        let counts = schedule_counts(ctx.num_layers, ctx.num_image_tokens, &layers, keep, cfg.decay);
        Ok(Self {
            cfg: cfg.clone(),
            layers,
            counts,
            num_layers: ctx.num_layers,
            num_image_tokens: ctx.num_image_tokens,
        })
    }

    /// The image rows after each site (see the module docs).
    pub fn counts(&self) -> &[usize] {
        &self.counts
    }

    /// The layer-averaged image-row count this reducer achieves.
    pub fn layer_averaged(&self) -> f64 {
        layer_averaged_rows(self.num_layers, self.num_image_tokens, &self.schedule())
    }

    /// Kept rows and recycled clusters for a site leaving `target` of `n` rows: the largest
    /// kept count k whose recycled clusters make up the rest (see the module docs).
    fn split(&self, n: usize, target: usize) -> (usize, usize) {
        let groups = |k: usize| {
            let recycled = (self.cfg.recycle * (n - k) as f32).round() as usize;
            recycled.div_ceil(self.cfg.recycle_group)
        };
        (0..=target).rev().find(|&k| k + groups(k) == target).map_or((0, target), |k| (k, target - k))
    }
}

/// Image rows after each site such that the layer average over `num_layers` is as near to `keep`
/// as integers allow: non-increasing, each about `decay` times the previous, between 1 and `n`;
/// all `n` when `keep >= n`; all 1 when even that averages above `keep`.
// DEVIATION: SparseVLM adapts each site's ratio to the rank of the attention matrix; here the
// schedule is fixed in advance (geometric, `decay`) so that it can be fitted to the layer-averaged
// budget every method shares.
pub fn schedule_counts(num_layers: usize, n: usize, layers: &[usize], keep: usize, decay: f32) -> Vec<usize> {
    let m = layers.len();
    if keep >= n || n == 0 {
        return vec![n; m];
    }
    let sched = |c: &[usize]| -> Vec<(LlmSite, usize)> {
        layers.iter().map(|&l| LlmSite::AfterLayer(l)).zip(c.iter().copied()).collect()
    };
    // Row-layers: integers, compared against keep * num_layers.
    let total = |c: &[usize]| (layer_averaged_rows(num_layers, n, &sched(c)) * num_layers as f64).round() as i64;
    let target = (keep * num_layers) as i64;
    let at = |x: f64| -> Vec<usize> {
        (0..m).map(|j| ((x * (decay as f64).powi(j as i32)).round() as usize).clamp(1, n)).collect()
    };
    if total(&at(0.0)) >= target {
        return at(0.0);
    }
    // The largest scale whose schedule stays within the target (total is monotone in x).
    let (mut lo, mut hi) = (0.0f64, n as f64 / (decay as f64).powi(m as i32 - 1) + 1.0);
    for _ in 0..64 {
        let mid = (lo + hi) / 2.0;
        if total(&at(mid)) <= target { lo = mid } else { hi = mid }
    }
    let mut c = at(lo);
    // Single-site steps towards the target, keeping the counts non-increasing and <= n.
    let can_grow = |c: &[usize], j: usize| c[j] < n && (j == 0 || c[j] < c[j - 1]);
    loop {
        let now = total(&c);
        let step = (0..m).find(|&j| {
            let mut d = c.clone();
            d[j] += 1;
            can_grow(&c, j) && total(&d) <= target && total(&d) > now
        });
        let Some(j) = step else { break };
        c[j] += 1;
    }
    // One more step if it lands nearer (ties: stay under).
    let now = total(&c);
    let best = (0..m)
        .filter(|&j| can_grow(&c, j))
        .map(|j| {
            let mut d = c.clone();
            d[j] += 1;
            (total(&d), d)
        })
        .filter(|(t, _)| *t > now)
        .min_by_key(|(t, _)| *t);
    if let Some((t, d)) = best
        && t - target < target - now
    {
        c = d;
    }
    c
}

impl LlmReducer for Sparsevlm {
    fn sites(&self) -> Vec<LlmSite> {
        self.layers.iter().map(|&l| LlmSite::AfterLayer(l)).collect()
    }

    fn needs_attention(&self, layer: usize) -> bool {
        self.layers.contains(&layer)
    }

    fn plan(&mut self, view: &LlmView<'_>) -> Result<LlmPlan> {
        let LlmSite::AfterLayer(layer) = view.site else {
            return Err(Error::Config { field: "site", reason: "SparseVLM acts after decoder layers only".into() });
        };
        let Some(site) = self.layers.iter().position(|&l| l == layer) else {
            return Err(Error::Config { field: "site", reason: format!("SparseVLM has no site after layer {layer}") });
        };
        let a = required_attention(view, "SparseVLM")?;
        let (image, text) = (view.image_rows(), view.text_rows());
        let score = rater_scores(&a, &text, &image);
        let all_rows = scores_on_rows(view.rows.len(), &image, &score);
        let target = self.counts[site];
        if target >= image.len() {
            return Ok(plan(all_rows, image, Vec::new()));
        }
        let (kept, groups) = self.split(image.len(), target);
        let order = argsort_desc(&score);
        let keep: Vec<usize> = order[..kept].iter().map(|&i| image[i]).collect();
        let pruned = &order[kept..];
        let recycled =
            &pruned[..groups.max(((self.cfg.recycle * pruned.len() as f32).round() as usize).min(pruned.len()))];
        let merged = if groups == 0 || recycled.is_empty() {
            Vec::new()
        } else {
            let rows: Vec<usize> = recycled.iter().map(|&i| image[i]).collect();
            // DEVIATION: the paper clusters recycled tokens with density-peak kNN clustering; k-centre
            // (seeded with the densest row) gives a fixed cluster count, which the budget needs.
            let sim = cosine_rows(view.hidden, &rows, &rows)?;
            cluster(&sim, groups).into_iter().map(|g| g.into_iter().map(|i| rows[i]).collect()).collect()
        };
        Ok(plan(all_rows, keep, merged))
    }

    fn schedule(&self) -> Vec<(LlmSite, usize)> {
        self.sites().into_iter().zip(self.counts.iter().copied()).collect()
    }
}

/// SparseVLM's rater scores (head-averaged attention `a`): the raters are the text rows whose
/// summed attention to the image rows is at least the mean over text rows; an image row's score
/// is the mean over raters of the attention it receives. One per image row.
pub fn rater_scores(a: &[Vec<f32>], text: &[usize], image: &[usize]) -> Vec<f32> {
    let relevance: Vec<f32> = text.iter().map(|&t| image.iter().map(|&j| a[t][j]).sum()).collect();
    let mean = relevance.iter().sum::<f32>() / relevance.len().max(1) as f32;
    let raters: Vec<usize> = text.iter().zip(&relevance).filter(|&(_, &r)| r >= mean).map(|(&t, _)| t).collect();
    received_from(a, &raters, image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layers_scale() {
        let c = SparsevlmConfig::default();
        assert_eq!(c.layers_for(32), [2, 6, 15]);
        assert_eq!(c.layers_for(24), [2, 5, 11]);
        assert_eq!(c.layers_for(2), [0]);
    }

    #[test]
    fn schedule_meets_the_layer_average() {
        for (layers, n, l) in [(vec![2, 6, 15], 576, 32), (vec![1, 3], 24, 6), (vec![0], 9, 2)] {
            let pre = (layers[0] + 1) as f64 * n as f64 / l as f64;
            for keep in [n, n * 2 / 3, n / 3, n / 9, n / 18, 1] {
                let c = schedule_counts(l, n, &layers, keep, 0.5);
                assert!(c.windows(2).all(|w| w[0] >= w[1]) && c.iter().all(|&x| (1..=n).contains(&x)), "{c:?}");
                let s: Vec<_> = layers.iter().map(|&k| LlmSite::AfterLayer(k)).zip(c.iter().copied()).collect();
                let avg = layer_averaged_rows(l, n, &s);
                if keep == n {
                    assert_eq!(c, vec![n; layers.len()]);
                } else if pre + (l - layers[0] - 1) as f64 / l as f64 <= keep as f64 {
                    assert!((avg - keep as f64).abs() <= 0.5 + 1e-9, "{layers:?} n {n} keep {keep}: {c:?} -> {avg}");
                } else {
                    assert_eq!(c, vec![1; layers.len()], "infeasible: as hard as allowed");
                }
            }
        }
        // By hand: 4 layers, 8 rows, one site after layer 0, keep 5: (8 + 3 c) / 4 = 5 -> c = 4.
        assert_eq!(schedule_counts(4, 8, &[0], 5, 0.5), [4]);
    }

    #[test]
    fn raters_by_hand() {
        // Rows: T I I T T. Text relevance to images: row 0 -> 0, row 3 -> 0.9, row 4 -> 0.3;
        // mean 0.4: the only rater is row 3.
        let a = vec![
            vec![1.0, 0.0, 0.0, 0.0, 0.0],
            vec![0.5, 0.5, 0.0, 0.0, 0.0],
            vec![0.3, 0.3, 0.4, 0.0, 0.0],
            vec![0.1, 0.6, 0.3, 0.0, 0.0],
            vec![0.2, 0.1, 0.2, 0.2, 0.3],
        ];
        let s = rater_scores(&a, &[0, 3, 4], &[1, 2]);
        assert_eq!(s, [0.6, 0.3]);
    }
}
