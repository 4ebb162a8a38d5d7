//! ToMe: Token Merging (Bolya et al., ICLR 2023, <https://arxiv.org/abs/2210.09461>),
//! bipartite soft matching, §3 of the paper; reference `facebookresearch/ToMe`,
//! `tome/merge.py` (`bipartite_soft_matching`, `merge_wavg`) and `tome/patch/timm.py`.
//!
//! In each block of the range, between attention and MLP:
//! 1. metric = the block's keys averaged over heads, L2-normalised;
//! 2. split tokens alternately into A (even) and B (odd); CLS (in A) never merges;
//! 3. each a in A finds its most similar b in B (cosine);
//! 4. the r most similar edges merge: x_b = (s_a x_a + s_b x_b) / (s_a + s_b), s_b += s_a;
//!    at most half the unprotected tokens can go per block.
//!
//! Later blocks use proportional attention (log s added to the logits), as in the paper.
//! The budget sets r per block: the tokens to remove are spread evenly over the range.

use serde::{Deserialize, Serialize};

use super::ops::{argsort_desc, keys_mean_heads, rows};
use super::registry::{Part, Side, VisionMethod};
use super::{Context, Group, MethodInfo, Plan, Reducer, Site, SiteView};
use crate::model::Needs;
use crate::{Error, Result};

pub const INFO: MethodInfo = MethodInfo {
    name: "tome",
    label: "ToMe",
    description: "Merges the most similar tokens (keys) by bipartite matching in every block of a range.",
    paper: "Bolya et al., Token Merging: Your ViT But Faster, ICLR 2023",
    merges: true,
    caveat: None,
    side: Side::Vision,
    acts_on: &[Part::VisionEncoder],
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TomeConfig {
    /// First block that merges.
    pub first_layer: usize,
    /// Last block that merges (default: the last block).
    pub last_layer: Option<usize>,
    /// Add log(size) to attention logits after merging (paper: proportional attention).
    pub proportional_attention: bool,
}

impl Default for TomeConfig {
    fn default() -> Self {
        Self { first_layer: 0, last_layer: None, proportional_attention: true }
    }
}

impl VisionMethod for TomeConfig {
    const INFO: MethodInfo = INFO;

    fn layer(&self, _num_layers: usize) -> Option<usize> {
        Some(self.first_layer)
    }

    fn set_layer(&mut self, layer: usize) {
        self.first_layer = layer;
    }

    fn build(&self, keep: usize, ctx: &Context) -> Result<Box<dyn Reducer>> {
        Ok(Box::new(Tome::new(self, keep, ctx, |f, l| ctx.check_layer(f, l))?))
    }
}

pub struct Tome {
    schedule: MergeSchedule,
    proportional_attention: bool,
}

impl Tome {
    pub fn new(
        cfg: &TomeConfig,
        keep: usize,
        ctx: &Context,
        check_layer: impl Fn(&'static str, usize) -> Result<usize>,
    ) -> Result<Self> {
        let schedule = MergeSchedule::new("ToMe", cfg.first_layer, cfg.last_layer, keep, ctx, check_layer)?;
        Ok(Self { schedule, proportional_attention: cfg.proportional_attention })
    }
}

/// The blocks of a layer range that merge, and how many tokens each merges: shared by the
/// merge methods (ToMe, PiToMe) that spread a budget over blocks.
pub struct MergeSchedule {
    blocks: Vec<(usize, usize)>,
}

impl MergeSchedule {
    pub fn new(
        method: &str,
        first_layer: usize,
        last_layer: Option<usize>,
        keep: usize,
        ctx: &Context,
        check_layer: impl Fn(&'static str, usize) -> Result<usize>,
    ) -> Result<Self> {
        let first = check_layer("first_layer", first_layer)?;
        let last = check_layer("last_layer", last_layer.unwrap_or(ctx.num_layers - 1))?;
        if last < first {
            return Err(Error::Config { field: "last_layer", reason: format!("{last} is before first_layer {first}") });
        }
        let blocks = merge_schedule(ctx.num_patches(), keep, first..=last).map_err(|min| Error::Config {
            field: "budget",
            reason: format!(
                "{method} merges at most half the tokens per block, so blocks {first}..={last} keep at least {min}; \
                 widen the layer range or keep more tokens"
            ),
        })?;
        Ok(Self { blocks })
    }

    pub fn sites(&self) -> Vec<Site> {
        self.blocks.iter().map(|&(l, _)| Site::MidBlock(l)).collect()
    }

    /// Merging blocks need their keys.
    pub fn needs(&self, layer: usize) -> Needs {
        Needs { probs: false, keys: self.blocks.iter().any(|&(l, _)| l == layer) }
    }

    /// Tokens to merge at `site` (a mid-block site of the schedule).
    pub fn r_at(&self, site: Site) -> usize {
        let Site::MidBlock(layer) = site else { unreachable!("merges happen mid-block") };
        self.blocks.iter().find(|&&(l, _)| l == layer).map_or(0, |&(_, r)| r)
    }
}

/// Spreads `num_patches - keep` merges over `layers` (CLS is protected and never counted) as
/// evenly as the half-per-block limit allows, taking more early only when the remaining blocks
/// could not catch up.
/// `Err(fewest reachable)` if the budget cannot be met.
pub fn merge_schedule(
    num_patches: usize,
    keep: usize,
    layers: std::ops::RangeInclusive<usize>,
) -> std::result::Result<Vec<(usize, usize)>, usize> {
    // Most merges `blocks` blocks can make starting from `patches` mergeable tokens.
    let max_removable = |patches: usize, blocks: usize| (0..blocks).fold(patches, |p, _| p - p / 2).abs_diff(patches);
    let layers: Vec<usize> = layers.collect();
    if max_removable(num_patches, layers.len()) < num_patches.saturating_sub(keep) {
        return Err(num_patches - max_removable(num_patches, layers.len()));
    }
    let mut remaining = num_patches.saturating_sub(keep);
    let mut patches = num_patches;
    let mut schedule = Vec::new();
    for (i, &l) in layers.iter().enumerate() {
        let left = layers.len() - i;
        let cap = patches / 2;
        let mut r = remaining.div_ceil(left).min(cap);
        while r < cap && max_removable(patches - r, left - 1) < remaining - r {
            r += 1;
        }
        if r > 0 {
            schedule.push((l, r));
        }
        patches -= r;
        remaining -= r;
    }
    Ok(schedule)
}

impl Reducer for Tome {
    fn sites(&self) -> Vec<Site> {
        self.schedule.sites()
    }

    fn needs(&self, layer: usize) -> Needs {
        self.schedule.needs(layer)
    }

    fn proportional_attention(&self) -> bool {
        self.proportional_attention
    }

    fn plan(&mut self, view: &SiteView<'_>) -> Result<Plan> {
        let r = self.schedule.r_at(view.site);
        let keys = view.attn.keys.as_ref().expect("needs() asked for keys");
        let metric = rows(&keys_mean_heads(keys)?)?;
        let m = bipartite_soft_matching(&metric, r, view.state.num_special > 0);
        Ok(m.plan(&view.state.sizes))
    }
}

/// ToMe's matching on token rows (`metric[t][c]`), as `merge.py` computes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Matching {
    /// Indices into A of the tokens that stay (sorted, so CLS stays first).
    pub unm_idx: Vec<usize>,
    /// Indices into A of the merged tokens, most similar first.
    pub src_idx: Vec<usize>,
    /// For each `src_idx`, the index into B it merges into.
    pub dst_idx: Vec<usize>,
    /// Per A token, the similarity of its best edge (-inf for CLS).
    pub node_max: Vec<f32>,
    /// Tokens in the sequence.
    pub num_tokens: usize,
}

pub fn bipartite_soft_matching(metric: &[Vec<f32>], r: usize, class_token: bool) -> Matching {
    let t = metric.len();
    let protected = usize::from(class_token);
    // We can only reduce by a maximum of 50% tokens (merge.py).
    let r = r.min((t - protected) / 2);
    let unit: Vec<Vec<f32>> = metric
        .iter()
        .map(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter().map(|v| v / norm).collect()
        })
        .collect();
    let a: Vec<&Vec<f32>> = unit.iter().step_by(2).collect();
    let b: Vec<&Vec<f32>> = unit.iter().skip(1).step_by(2).collect();
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
    let (mut node_max, mut node_idx) = (Vec::with_capacity(a.len()), Vec::with_capacity(a.len()));
    for (i, ai) in a.iter().enumerate() {
        if class_token && i == 0 {
            node_max.push(f32::NEG_INFINITY);
            node_idx.push(0);
            continue;
        }
        // torch.max returns the first maximal index.
        let (best, score) = b
            .iter()
            .enumerate()
            .map(|(j, bj)| (j, dot(ai, bj)))
            .fold((0, f32::NEG_INFINITY), |acc, (j, s)| if s > acc.1 { (j, s) } else { acc });
        node_max.push(score);
        node_idx.push(best);
    }
    let edge_idx = argsort_desc(&node_max);
    let mut unm_idx = edge_idx[r..].to_vec();
    let src_idx = edge_idx[..r].to_vec();
    let dst_idx = src_idx.iter().map(|&s| node_idx[s]).collect();
    if class_token {
        unm_idx.sort_unstable();
    }
    Matching { unm_idx, src_idx, dst_idx, node_max, num_tokens: t }
}

impl Matching {
    /// The merge as a plan over sequence indices (A index i = token 2i, B index j = token
    /// 2j+1): `[unmerged A..., B...]`, as `merge.py` concatenates them; merges are
    /// size-weighted means (`merge_wavg`). Scores: each A token's best similarity.
    pub fn plan(&self, sizes: &[f32]) -> Plan {
        let num_b = self.num_tokens / 2;
        let mut groups: Vec<Group> = self.unm_idx.iter().map(|&i| Group::single(2 * i)).collect();
        let mut into_b: Vec<Vec<usize>> = vec![Vec::new(); num_b];
        for (&s, &d) in self.src_idx.iter().zip(&self.dst_idx) {
            into_b[d].push(2 * s);
        }
        for (j, srcs) in into_b.into_iter().enumerate() {
            let dst = 2 * j + 1;
            let members: Vec<usize> = std::iter::once(dst).chain(srcs).collect();
            let weights = members.iter().map(|&m| sizes[m]).collect();
            groups.push(Group::mean(members, weights, dst));
        }
        let mut scores = vec![f32::NAN; self.num_tokens];
        for (i, &s) in self.node_max.iter().enumerate() {
            if s.is_finite() {
                scores[2 * i] = s;
            }
        }
        Plan { groups, scores: Some(scores) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_token_toy_by_hand() {
        // CLS + 5 tokens. A = {0 (CLS), 2, 4}, B = {1, 3, 5}.
        // Token 2 equals token 3 (cos 1); token 4 is close to token 5 (cos 0.8); r = 2.
        let metric = vec![
            vec![1.0, 0.0, 0.0], // 0 CLS
            vec![0.0, 1.0, 0.0], // 1
            vec![0.0, 0.0, 1.0], // 2
            vec![0.0, 0.0, 2.0], // 3 (same direction as 2)
            vec![0.6, 0.8, 0.0], // 4
            vec![1.0, 0.0, 0.0], // 5: cos(4,5) = 0.6, cos(4,1) = 0.8
        ];
        let m = bipartite_soft_matching(&metric, 2, true);
        assert_eq!(m.src_idx, [1, 2]); // A tokens 2 and 4, by similarity 1.0 then 0.8
        assert_eq!(m.dst_idx, [1, 0]); // into B tokens 3 and 1
        assert_eq!(m.unm_idx, [0]); // CLS stays
        let plan = m.plan(&[1.0; 6]);
        let members: Vec<Vec<usize>> = plan.groups.iter().map(|g| g.members.clone()).collect();
        assert_eq!(members, [vec![0], vec![1, 4], vec![3, 2], vec![5]]);
        assert!((plan.scores.as_ref().unwrap()[4] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn at_most_half_can_merge() {
        let metric: Vec<Vec<f32>> = (0..7).map(|i| vec![1.0, i as f32]).collect();
        let m = bipartite_soft_matching(&metric, 100, true);
        assert_eq!(m.src_idx.len(), 3);
    }

    #[test]
    fn schedule_spreads_merges_and_reports_the_limit() {
        let s = merge_schedule(256, 85, 0..=11).unwrap();
        assert_eq!(s.iter().map(|x| x.1).sum::<usize>(), 171);
        assert!(s.iter().all(|&(_, r)| r == 14 || r == 15));
        assert_eq!(merge_schedule(256, 14, 10..=11), Err(64));
        // 256 -> 128 -> 64 is reachable in two blocks, if the first takes the most.
        assert_eq!(merge_schedule(256, 64, 10..=11).unwrap(), [(10, 128), (11, 64)]);
        assert_eq!(merge_schedule(256, 256, 0..=11).unwrap(), []);
    }
}
