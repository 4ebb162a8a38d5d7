//! SparseVLM: progressive pruning with token recycling (Zhang et al., 2024, "SparseVLM:
//! Visual Token Sparsification for Efficient Vision-Language Model Inference",
//! <https://arxiv.org/abs/2410.04417>), following the authors' released code (Gumpest/SparseVLMs
//! @ 26a5f48, version 1_0; checked against it by `tests/methods_reference.rs`).
//!
//! Before layer 0 ([`Site::PreLlm`], no rows change) the text raters are chosen once, on the
//! decoder input embeddings: for every image row, a softmax over the text rows after the image
//! of the dot products with them; averaged over the image rows, a text row is a rater when its
//! value is above the mean. After each site layer (LLaVA: 2, 6 and 15 of 32; scaled to the
//! model's depth here), an image row's score is the attention it receives from the raters
//! (mean over heads, then over raters) and the top `kept` rows stay. Of the pruned rows, the
//! `floor(recycle * pruned) + 1` highest-scored are recycled: clustered by density peaks
//! (DPC-kNN on their hidden states, `floor(recycled / recycle_group) + 1` clusters) and each
//! cluster averaged into one row, so a site leaves `kept + clusters` image rows.
//!
//! Budget: `keep` is the layer-averaged number of image rows over all decoder layers. The rows
//! after the sites follow `decay` (each site `decay` times the previous one, before rounding),
//! scaled so that the layer average is `keep` within rounding; each site's `kept` is the largest
//! whose clusters make up its count. Layers up to the first site always see every image row, so
//! a small `keep` can be infeasible: the schedule then keeps one row after every site and
//! [`Sparsevlm::layer_averaged`] reports the average it gets.
//!
//! DEVIATIONs from the authors' code, each also marked where it is made:
//! - The counts: the authors' code reads `kept` per site from a table for four LLaVA budgets
//!   (192: 300, 200, 110); here they are fitted to any budget and depth (`schedule_counts`).
//! - Placement: the authors append the merged rows after the kept image rows and renumber
//!   position ids; here (the decoder's plan) a merged row takes its centre's place and position.
//! - A merged row is the mean of its members weighted by the image tokens each carries (the
//!   authors weigh every row 1: the same at the first site, where every row is one token).
//! - `cluster_and_merge` adds random noise (1e-6) to the densities; here equal densities are
//!   ordered by recycling order instead (the earlier, higher-scored row counts as denser).
//! - Raters come from the text rows after the last image row; with interleaved image tiles
//!   (SmolVLM) the text between tiles is not a rater candidate, as in the authors' one-block
//!   layout.

use serde::{Deserialize, Serialize};

use candle_core::DType;

use super::layer_averaged_rows;
use super::ops::{argsort_desc, plan, received_from, required_attention, scores_on_rows};
use crate::model::Needs;
use crate::reduce::registry::{LanguageMethod, Part, Side};
use crate::reduce::{Context, MethodInfo, Plan, Reducer, Site, SiteView};
use crate::{Error, Result};

pub const INFO: MethodInfo = MethodInfo {
    name: "sparsevlm",
    label: "SparseVLM",
    description: "Inside the LLM: text raters (picked on the prompt's embeddings) score image tokens at several layers with a decreasing schedule; the best-scored pruned ones are clustered by density peaks and merged back (recycled).",
    paper: "Zhang et al., SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference, 2024",
    merges: true,
    caveat: Some(
        "The budget is the layer-averaged number of image tokens; the layers before the first site see all of them, so very small budgets cannot be met.",
    ),
    side: Side::Language,
    acts_on: &[Part::LanguageModel],
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
    /// Share of each site's pruned rows (the highest-scored) recycled: `floor(recycle * pruned) +
    /// 1` of them, as the authors' code (0.3); 0 recycles nothing. In 0..=1.
    pub recycle: f32,
    /// Recycled rows per cluster: `floor(recycled / recycle_group) + 1` clusters, as the
    /// authors' code (10).
    pub recycle_group: usize,
}

impl Default for SparsevlmConfig {
    fn default() -> Self {
        Self { layers: None, decay: 0.5, recycle: 0.3, recycle_group: 10 }
    }
}

impl LanguageMethod for SparsevlmConfig {
    const INFO: MethodInfo = INFO;

    fn layer(&self, num_layers: usize) -> Option<usize> {
        self.layers_for(num_layers).first().copied()
    }

    fn set_layer(&mut self, layer: usize, num_layers: usize) {
        self.shift_to(layer, num_layers);
    }

    fn build(&self, keep: usize, ctx: &Context) -> Result<Box<dyn Reducer>> {
        Ok(Box::new(Sparsevlm::new(self, keep, ctx)?))
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
    /// The raters (ordinals among the text rows, which never move), chosen at the pre-LLM site.
    raters: Option<Vec<usize>>,
}

impl Sparsevlm {
    pub fn new(cfg: &SparsevlmConfig, keep: usize, ctx: &Context) -> Result<Self> {
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
            raters: None,
        })
    }

    /// The raters picked at the pre-LLM site, as ordinals among the text rows (None before).
    pub fn raters(&self) -> Option<&[usize]> {
        self.raters.as_deref()
    }

    /// The image rows after each site (see the module docs).
    pub fn counts(&self) -> &[usize] {
        &self.counts
    }

    /// The layer-averaged image-row count this reducer achieves.
    pub fn layer_averaged(&self) -> f64 {
        layer_averaged_rows(self.num_layers, self.num_image_tokens, &self.schedule())
    }

    /// Recycled rows and clusters when `pruned` rows are pruned (the authors' `int(p * 0.3) + 1`
    /// and `int(r / 10) + 1`, with this config's share and group).
    pub fn recycled(&self, pruned: usize) -> (usize, usize) {
        if pruned == 0 || self.cfg.recycle == 0.0 {
            return (0, 0);
        }
        let r = (((self.cfg.recycle * pruned as f32).floor() as usize) + 1).min(pruned);
        (r, (r / self.cfg.recycle_group + 1).min(r))
    }

    /// Kept rows and clusters for a site leaving `target` of `n` rows: the largest kept count k
    /// whose clusters make up the rest (k + clusters grows by 0 or 1 with k, so every target from
    /// the k = 0 one up is met); below that, `target` clusters and nothing kept.
    fn split(&self, n: usize, target: usize) -> (usize, usize) {
        (0..=target).rev().find(|&k| k + self.recycled(n - k).1 == target).map_or((0, target), |k| (k, target - k))
    }

    /// Picks the raters (the pre-LLM site): see the module docs.
    fn choose_raters(&mut self, view: &SiteView<'_>) -> Result<()> {
        let image = view.image_rows();
        let last_image = image.last().copied().unwrap_or(0);
        let text_after: Vec<usize> = view.text_rows().into_iter().filter(|&t| t > last_image).collect();
        let raters = rater_rows(&view.state.hidden, &image, &text_after)?;
        let ordinal = |row: usize| (0..row).filter(|&r| !view.state.is_image(r)).count();
        self.raters = Some(raters.into_iter().map(ordinal).collect());
        Ok(())
    }

    /// One pruning site keeping the `kept` best-scored image rows (the rest of the site's count
    /// is recycled clusters); the reducer's own plan uses its schedule's `kept`.
    pub fn prune(&self, view: &SiteView<'_>, kept: usize) -> Result<Plan> {
        let pruned = view.image_rows().len().saturating_sub(kept);
        self.site_plan(view, kept, self.recycled(pruned).1)
    }

    /// [`Sparsevlm::prune`] with `clusters` merged rows (more than the recycling rule gives only
    /// in the fallback of [`Sparsevlm::split`]; the recycled rows are then at least as many).
    fn site_plan(&self, view: &SiteView<'_>, kept: usize, clusters: usize) -> Result<Plan> {
        let Some(raters) = &self.raters else {
            return Err(Error::Config {
                field: "site",
                reason: "SparseVLM picks its raters before layer 0; its pre-LLM site did not run".into(),
            });
        };
        let a = required_attention(view, "SparseVLM")?;
        let (image, text) = (view.image_rows(), view.text_rows());
        let rater_rows: Vec<usize> = raters.iter().filter_map(|&k| text.get(k).copied()).collect();
        let score = received_from(&a, &rater_rows, &image);
        let all_rows = scores_on_rows(view.num_rows(), &image, &score);
        if kept >= image.len() {
            return Ok(plan(view, all_rows, image, Vec::new()));
        }
        let order = argsort_desc(&score);
        let keep: Vec<usize> = order[..kept].iter().map(|&i| image[i]).collect();
        let pruned = &order[kept..];
        let r = self.recycled(pruned.len()).0.max(clusters).min(pruned.len());
        let recycled: Vec<usize> = pruned[..r].iter().map(|&i| image[i]).collect();
        let merged = if clusters == 0 {
            Vec::new()
        } else {
            let h = view.state.hidden.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let x: Vec<&[f32]> = recycled.iter().map(|&row| h[row].as_slice()).collect();
            dpc_knn(&x, clusters).into_iter().map(|g| g.into_iter().map(|i| recycled[i]).collect()).collect()
        };
        Ok(plan(view, all_rows, keep, merged))
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
    let sched = |c: &[usize]| -> Vec<(Site, usize)> {
        layers.iter().map(|&l| Site::AfterLayer(l)).zip(c.iter().copied()).collect()
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

impl Reducer for Sparsevlm {
    fn sites(&self) -> Vec<Site> {
        std::iter::once(Site::PreLlm).chain(self.layers.iter().map(|&l| Site::AfterLayer(l))).collect()
    }

    fn needs(&self, layer: usize) -> Needs {
        Needs { probs: self.layers.contains(&layer), keys: false }
    }

    fn plan(&mut self, view: &SiteView<'_>) -> Result<Plan> {
        let Site::AfterLayer(layer) = view.site else {
            self.choose_raters(view)?;
            return Ok(Plan::identity(view.num_rows()));
        };
        let Some(site) = self.layers.iter().position(|&l| l == layer) else {
            return Err(Error::Config { field: "site", reason: format!("SparseVLM has no site after layer {layer}") });
        };
        let n = view.image_rows().len();
        let target = self.counts[site];
        let (kept, clusters) = if target >= n { (n, 0) } else { self.split(n, target) };
        self.site_plan(view, kept, clusters)
    }

    fn schedule(&self) -> Vec<(Site, usize)> {
        self.layers.iter().map(|&l| Site::AfterLayer(l)).zip(self.counts.iter().copied()).collect()
    }
}

/// SparseVLM's raters (the authors' "Select Text Raters"): of the `text` rows, those whose
/// mean over the `image` rows of softmax-over-text of the dot products is above the mean
/// (strictly). `hidden`: the decoder input embeddings. All of `text` when none qualifies.
pub fn rater_rows(hidden: &candle_core::Tensor, image: &[usize], text: &[usize]) -> Result<Vec<usize>> {
    if image.is_empty() || text.is_empty() {
        return Ok(text.to_vec());
    }
    let h = if hidden.rank() == 3 { hidden.squeeze(0)? } else { hidden.clone() };
    let h = h.to_dtype(DType::F32)?;
    let pick = |idx: &[usize]| -> Result<candle_core::Tensor> {
        let ids = candle_core::Tensor::new(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), h.device())?;
        Ok(h.index_select(&ids, 0)?)
    };
    let dots = pick(image)?.matmul(&pick(text)?.t()?)?.to_vec2::<f32>()?;
    let mut relevance = vec![0f32; text.len()];
    for row in &dots {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = row.iter().map(|d| (d - max).exp()).collect();
        let total: f32 = e.iter().sum();
        relevance.iter_mut().zip(&e).for_each(|(r, x)| *r += x / total);
    }
    relevance.iter_mut().for_each(|r| *r /= image.len() as f32);
    let mean = relevance.iter().sum::<f32>() / text.len() as f32;
    let raters: Vec<usize> = text.iter().zip(&relevance).filter(|&(_, &r)| r > mean).map(|(&t, _)| t).collect();
    Ok(if raters.is_empty() { text.to_vec() } else { raters })
}

/// The clustering of the authors' `cluster_and_merge` (DPC-kNN) of the rows `x` into `c`
/// clusters: distances |xi - xj| / sqrt(dim); density exp(-mean of the c smallest squared
/// distances, self included); each row's distance to the nearest denser row (the largest
/// distance for the densest); the `c` rows with the largest distance x density are the centres,
/// and every row joins its nearest centre (ties: the earlier centre). Clusters in centre order,
/// each centre first, then its members ascending.
// DEVIATION: the authors add random noise (1e-6) to the densities; equal densities (common: two
// rows that are each other's nearest have the same one) are ordered by index here, the lower
// index counting as denser.
pub fn dpc_knn(x: &[&[f32]], c: usize) -> Vec<Vec<usize>> {
    let n = x.len();
    if n == 0 || c == 0 {
        return Vec::new();
    }
    let c = c.min(n);
    let scale = (x[0].len() as f32).sqrt();
    let mut d = vec![vec![0f32; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let v = x[i].iter().zip(x[j]).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt() / scale;
            (d[i][j], d[j][i]) = (v, v);
        }
    }
    let density: Vec<f32> = d
        .iter()
        .map(|row| {
            let mut r = row.clone();
            r.sort_by(f32::total_cmp);
            (-(r[..c].iter().map(|v| v * v).sum::<f32>() / c as f32)).exp()
        })
        .collect();
    let denser = |j: usize, i: usize| density[j] > density[i] || (density[j] == density[i] && j < i);
    let d_max = d.iter().flatten().copied().fold(0f32, f32::max);
    let score: Vec<f32> =
        (0..n).map(|i| (0..n).filter(|&j| denser(j, i)).map(|j| d[i][j]).fold(d_max, f32::min) * density[i]).collect();
    let centres: Vec<usize> = argsort_desc(&score).into_iter().take(c).collect();
    let mut groups: Vec<Vec<usize>> = centres.iter().map(|&k| vec![k]).collect();
    for j in (0..n).filter(|j| !centres.contains(j)) {
        let best = (0..c).fold(0, |b, k| if d[j][centres[k]] < d[j][centres[b]] { k } else { b });
        groups[best].push(j);
    }
    for g in &mut groups {
        g[1..].sort_unstable();
    }
    groups
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
                let s: Vec<_> = layers.iter().map(|&k| Site::AfterLayer(k)).zip(c.iter().copied()).collect();
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
        // Image rows (1,0), (0,1); text rows (2,0), (0,0), (0,2). Softmax over text of the dot
        // products: (e^2, 1, 1) / (e^2 + 2) and (1, 1, e^2) / (e^2 + 2); means 0.447, 0.107,
        // 0.447 against their mean 1/3: rows 2 and 4 rate.
        let h = candle_core::Tensor::new(
            &[[1f32, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 0.0], [0.0, 2.0]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert_eq!(rater_rows(&h, &[0, 1], &[2, 3, 4]).unwrap(), [2, 4]);
    }

    #[test]
    fn dpc_knn_by_hand() {
        // On a line: 0, 0.1, 5, 5.2, 10; two clusters (density from the nearest other row).
        // Densities: 0 and 1 tie (0 counts as denser), 2 and 3 tie, 4 is sparse. Distance to a
        // denser row: 10 (the largest), 0.1, 4.9, 0.2, 4.8; times density, the centres are 0 and
        // 2; 4 is nearer 2 (5) than 0 (10).
        let x: Vec<[f32; 1]> = vec![[0.0], [0.1], [5.0], [5.2], [10.0]];
        let rows: Vec<&[f32]> = x.iter().map(|r| r.as_slice()).collect();
        assert_eq!(dpc_knn(&rows, 2), vec![vec![0, 1], vec![2, 3, 4]]);
        assert_eq!(dpc_knn(&rows, 1), vec![vec![0, 1, 2, 3, 4]]);
    }

    #[test]
    fn recycling_counts_follow_the_authors() {
        let ctx = Context::decoder(32, 576, (24, 24));
        let s = Sparsevlm::new(&SparsevlmConfig::default(), 192, &ctx).unwrap();
        // int(276 * 0.3) + 1 = 83 recycled, int(83 / 10) + 1 = 9 clusters (576 - 300 pruned).
        assert_eq!(s.recycled(276), (83, 9));
        assert_eq!(s.recycled(1), (1, 1));
        assert_eq!(s.recycled(0), (0, 0));
        // A site leaving 309 of 576 rows keeps 300 and adds 9 clusters.
        assert_eq!(s.split(576, 309), (300, 9));
        let off = Sparsevlm::new(&SparsevlmConfig { recycle: 0.0, ..Default::default() }, 192, &ctx).unwrap();
        assert_eq!((off.recycled(276), off.split(576, 309)), ((0, 0), (309, 0)));
    }
}
