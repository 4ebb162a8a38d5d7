//! HiPrune: training-free visual token pruning via hierarchical attention (2025,
//! <https://arxiv.org/abs/2508.00553>; reference `Danielement321/HiPrune`).
//!
//! CLS-free. Middle ("object") layers attend to object regions, deep layers to global context:
//! 1. anchors: the round(alpha K / 5) most-attended tokens at the object layer;
//! 2. buffers: the 4-neighbours of each anchor on the grid (spatial continuity), so anchors and
//!    buffers take about a share `alpha` of the budget K;
//! 3. registers: the most-attended remaining tokens at the output layer fill the rest.
//!
//! "Most attended" = attention received, mean over heads and all queries, as in the reference
//! (`attn.mean(dim=1).mean(dim=1)[:, 1:]`). Its object layer for CLIP-L/14 (24 blocks) is block
//! 8, a third of the depth: the default here is a third of the depth too. Registers come from
//! the layer that feeds the output head (the reference's penultimate layer feeds LLaVA's
//! projector).
//!
//! Buffers ([`Buffers`]): the reference (`Danielement321/HiPrune`, `LLaVA/llava/model/
//! llava_arch.py`, `encode_images`) adds flat offsets ±1 and ±24 (its 24 x 24 grid) to each
//! anchor's raster index and clamps the result to 0..=575. `flat` reproduces that; the
//! default, DEVIATION `grid`, takes true 4-neighbours instead. They differ only for anchors on
//! the grid's border: there the reference's -1 / +1 reaches the previous row's last patch or
//! the next row's first, and an offset past the first or last row is clamped onto patch 0 or
//! the last patch (which thus join the buffers); `grid` takes no token for a missing
//! neighbour, leaving that share of the budget to registers.

use serde::{Deserialize, Serialize};

use super::ops::{argsort_desc, attention_received, patch_tokens, with_special_nan};
use super::registry::{Part, Side, VisionMethod};
use super::{Context, MethodInfo, Plan, Reducer, Site, SiteView};
use crate::model::HookPoint;
use crate::{Error, Result};

pub const INFO: MethodInfo = MethodInfo {
    name: "hiprune",
    label: "HiPrune",
    description: "Anchors (most attended at a middle layer) with their neighbours, plus registers from the last layer.",
    paper: "HiPrune: Training-Free Visual Token Pruning via Hierarchical Attention, 2025",
    merges: false,
    caveat: None,
    side: Side::Vision,
    acts_on: &[Part::PreLlm],
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HipruneConfig {
    /// The middle layer whose attention finds objects (default: a third of the depth).
    pub object_layer: Option<usize>,
    /// Share of the budget for anchors and buffers.
    pub alpha: f32,
    /// How an anchor's buffers are found.
    pub buffers: Buffers,
}

impl Default for HipruneConfig {
    fn default() -> Self {
        Self { object_layer: None, alpha: 0.1, buffers: Buffers::Grid }
    }
}

impl VisionMethod for HipruneConfig {
    const INFO: MethodInfo = INFO;

    fn layer(&self, num_layers: usize) -> Option<usize> {
        Some(self.object_layer.unwrap_or(num_layers / 3))
    }

    fn set_layer(&mut self, layer: usize) {
        self.object_layer = Some(layer);
    }

    fn build(&self, keep: usize, ctx: &Context) -> Result<Box<dyn Reducer>> {
        Ok(Box::new(Hiprune::new(self, keep, ctx, |f, l| ctx.check_layer(f, l))?))
    }
}

/// An anchor's buffers: its true grid neighbours, or the reference's clamped flat offsets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Buffers {
    /// Up, down, left and right on the grid; none past an edge.
    #[default]
    Grid,
    /// The reference's raster offsets -1, +1, -cols, +cols, clamped to the first and last patch.
    Flat,
}

pub struct Hiprune {
    keep: usize,
    object_layer: usize,
    output_layer: usize,
    alpha: f32,
    grid: (usize, usize),
    buffers: Buffers,
}

impl Hiprune {
    pub fn new(
        cfg: &HipruneConfig,
        keep: usize,
        ctx: &Context,
        check_layer: impl Fn(&'static str, usize) -> Result<usize>,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&cfg.alpha) {
            return Err(Error::Config { field: "alpha", reason: format!("{} is outside 0..1", cfg.alpha) });
        }
        Ok(Self {
            keep,
            object_layer: check_layer("object_layer", cfg.object_layer.unwrap_or(ctx.num_layers / 3))?,
            output_layer: ctx.num_layers - 1,
            alpha: cfg.alpha,
            grid: ctx.grid,
            buffers: cfg.buffers,
        })
    }
}

/// What a kept patch is to HiPrune (the app marks them in its token view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Most attended at the object layer.
    Anchor,
    /// An anchor's neighbour, kept for spatial continuity.
    Buffer,
    /// Most attended at the output layer among the rest.
    Register,
}

/// HiPrune's selection over patch indices (raster), returned sorted: the `num_anchors` most
/// attended patches at the object layer, their buffers, then registers by `register_score`
/// until `keep`. Anchors and buffers never exceed `keep`.
pub fn select(
    object_score: &[f32],
    register_score: &[f32],
    grid: (usize, usize),
    keep: usize,
    num_anchors: usize,
    buffers: Buffers,
) -> Vec<usize> {
    let mut picked: Vec<usize> =
        anchors_and_buffers(object_score, grid, keep, num_anchors, buffers).into_iter().map(|(p, _)| p).collect();
    let mut chosen = vec![false; grid.0 * grid.1];
    picked.iter().for_each(|&p| chosen[p] = true);
    for p in argsort_desc(register_score) {
        if picked.len() == keep {
            break;
        }
        if !chosen[p] {
            chosen[p] = true;
            picked.push(p);
        }
    }
    picked.sort_unstable();
    picked
}

/// The anchors and buffers [`select`] picks, in picking order, with their role (at most
/// `keep`). They depend on the object layer's scores alone, so the app can tell them from a
/// run's scores; every other kept patch is a register.
pub fn anchors_and_buffers(
    object_score: &[f32],
    grid: (usize, usize),
    keep: usize,
    num_anchors: usize,
    buffers: Buffers,
) -> Vec<(usize, Role)> {
    let (rows, cols) = grid;
    let mut chosen = vec![false; rows * cols];
    let mut picked = Vec::with_capacity(keep);
    let mut take = |p: usize, role: Role, picked: &mut Vec<(usize, Role)>| {
        if !chosen[p] && picked.len() < keep {
            chosen[p] = true;
            picked.push((p, role));
        }
    };
    let anchors: Vec<usize> = argsort_desc(object_score).into_iter().take(num_anchors).collect();
    for &a in &anchors {
        take(a, Role::Anchor, &mut picked);
    }
    let last = rows * cols - 1;
    for &a in &anchors {
        match buffers {
            Buffers::Grid => {
                let (r, c) = (a / cols, a % cols);
                for (nr, nc) in [(r.wrapping_sub(1), c), (r + 1, c), (r, c.wrapping_sub(1)), (r, c + 1)] {
                    if nr < rows && nc < cols {
                        take(nr * cols + nc, Role::Buffer, &mut picked);
                    }
                }
            }
            Buffers::Flat => {
                for p in [a.saturating_sub(1), a + 1, a.saturating_sub(cols), a + cols] {
                    take(p.min(last), Role::Buffer, &mut picked);
                }
            }
        }
    }
    picked
}

/// Each anchor brings up to 4 buffers: `round(K * alpha / 5)` anchors, as the reference computes
/// it from the decimal `alpha` (a Python float; Python rounds half to even). `alpha` goes
/// through its shortest decimal text, so 0.1 is the double 0.1 and K = 25 gives 0 anchors as
/// there, not the 1 that 0.1f32 widened to f64 would give.
pub fn num_anchors(alpha: f32, keep: usize) -> usize {
    let alpha: f64 = alpha.to_string().parse().expect("an f32 prints as a number");
    (keep as f64 * alpha / 5.0).round_ties_even() as usize
}

impl Reducer for Hiprune {
    fn sites(&self) -> Vec<Site> {
        vec![Site::EncoderOutput]
    }

    fn plan(&mut self, view: &SiteView<'_>) -> Result<Plan> {
        let state = view.state;
        let s = state.num_special;
        let received = |l| -> Result<Vec<f32>> {
            Ok(attention_received(view.full_trace.require(HookPoint::AttnProbs(l))?)?[s..].to_vec())
        };
        let object = received(self.object_layer)?;
        let output = received(self.output_layer)?;
        let num_anchors = num_anchors(self.alpha, self.keep);
        let kept = select(&object, &output, self.grid, self.keep, num_anchors, self.buffers);
        let patches = patch_tokens(s, state.num_tokens());
        let kept: Vec<usize> = kept.into_iter().map(|p| patches[p]).collect();
        Ok(Plan::keep(s, &kept).with_scores(with_special_nan(s, object)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_buffers_registers_by_hand() {
        // 3 x 3 grid; the object layer peaks at the centre (4), the output layer at corner 8.
        let object = [0.0, 0.1, 0.0, 0.1, 0.9, 0.1, 0.0, 0.2, 0.0];
        let output = [0.1, 0.0, 0.2, 0.0, 0.0, 0.0, 0.3, 0.0, 0.9];
        // One anchor (4) with its 4 neighbours (1, 3, 5, 7); then registers 8 and 6.
        assert_eq!(select(&object, &output, (3, 3), 7, 1, Buffers::Grid), [1, 3, 4, 5, 6, 7, 8]);
        // Two anchors (4, 7): the corner anchor 7 brings only in-grid neighbours (6, 8).
        assert_eq!(select(&object, &output, (3, 3), 9, 2, Buffers::Grid), (0..9).collect::<Vec<_>>());
        // The budget caps anchors and buffers too.
        assert_eq!(select(&object, &output, (3, 3), 2, 1, Buffers::Grid), [1, 4]);
        // Flat offsets from corner anchor 6 (object peak moved there): 5 (previous row's last),
        // 7, 3 and 9 -> clamped to 8; then register 2 (8 is taken).
        let corner = [0.0, 0.1, 0.0, 0.1, 0.2, 0.1, 0.9, 0.2, 0.0];
        assert_eq!(select(&corner, &output, (3, 3), 6, 1, Buffers::Flat), [2, 3, 5, 6, 7, 8]);
        assert_eq!(select(&corner, &output, (3, 3), 6, 1, Buffers::Grid), [0, 2, 3, 6, 7, 8]);
    }

    #[test]
    fn anchor_count_rounds_as_python() {
        assert_eq!(num_anchors(0.1, 25), 0); // round(2.5 / 5) = round(0.5) = 0
        assert_eq!(num_anchors(0.1, 75), 2); // round(1.5) = 2
        assert_eq!(num_anchors(0.1, 576), 12); // round(11.52)
    }
}
