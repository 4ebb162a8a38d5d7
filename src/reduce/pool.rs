//! Uniform spatial pooling baseline: the grid is cut into exactly K near-equal rectangles
//! (bands of rows, each cut into columns), and each becomes the size-weighted mean of its
//! patches. When K tiles the grid evenly this is plain s x s average pooling (256 -> 64 is
//! 2 x 2 pooling on a 16 x 16 grid).

use serde::{Deserialize, Serialize};

use super::registry::{Part, Side, VisionMethod};
use super::{Context, Group, MethodInfo, Plan, Reducer, Site, SiteView};
use crate::Result;

pub const INFO: MethodInfo = MethodInfo {
    name: "pool",
    label: "Pool",
    description: "Averages the grid in K near-equal rectangles (2 x 2 pooling at 75 % removed): a spatial baseline.",
    paper: "baseline",
    merges: true,
    caveat: None,
    side: Side::Vision,
    acts_on: &[Part::PreLlm],
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {}

impl VisionMethod for PoolConfig {
    const INFO: MethodInfo = INFO;

    fn build(&self, keep: usize, ctx: &Context) -> Result<Box<dyn Reducer>> {
        Ok(Box::new(Pool::new(keep, ctx.grid)))
    }
}

pub struct Pool {
    keep: usize,
    grid: (usize, usize),
}

impl Pool {
    pub fn new(keep: usize, grid: (usize, usize)) -> Self {
        Self { keep, grid }
    }
}

/// K groups of patch indices (raster order) covering the grid once.
pub fn pool_regions(grid: (usize, usize), k: usize) -> Vec<Vec<usize>> {
    let (rows, cols) = grid;
    let k = k.clamp(1, rows * cols);
    // Bands: about sqrt(k * rows / cols) of them, at most one per row and enough that no band
    // needs more cells than it has columns.
    let bands = ((k as f64 * rows as f64 / cols as f64).sqrt().round() as usize).clamp(k.div_ceil(cols), rows.min(k));
    let split = |len: usize, parts: usize, i: usize| (i * len / parts, (i + 1) * len / parts);
    let mut out = Vec::with_capacity(k);
    for band in 0..bands {
        let (r0, r1) = split(rows, bands, band);
        let (c0, c1) = split(k, bands, band); // cells of this band: k spread over the bands
        let cells = c1 - c0;
        for cell in 0..cells {
            let (x0, x1) = split(cols, cells, cell);
            out.push((r0..r1).flat_map(|r| (x0..x1).map(move |c| r * cols + c)).collect());
        }
    }
    out
}

impl Reducer for Pool {
    fn sites(&self) -> Vec<Site> {
        vec![Site::EncoderOutput]
    }

    fn plan(&mut self, view: &SiteView<'_>) -> Result<Plan> {
        let state = view.state;
        assert_eq!(state.num_tokens(), state.num_special + state.num_patches(), "pooling needs the full grid");
        let s = state.num_special;
        let mut plan = Plan::keep(s, &[]);
        for region in pool_regions(self.grid, self.keep) {
            let members: Vec<usize> = region.iter().map(|&p| s + p).collect();
            let weights = members.iter().map(|&m| state.sizes[m]).collect();
            plan.groups.push(Group::mean(members.clone(), weights, members[0]));
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_by_two_pooling_when_it_tiles() {
        let regions = pool_regions((16, 16), 64);
        assert_eq!(regions.len(), 64);
        assert!(regions.iter().all(|r| r.len() == 4));
        assert_eq!(regions[0], [0, 1, 16, 17]);
    }

    #[test]
    fn any_k_partitions_the_grid() {
        for k in [1, 14, 28, 57, 85, 200, 256] {
            let regions = pool_regions((16, 16), k);
            assert_eq!(regions.len(), k, "k={k}");
            let mut all: Vec<usize> = regions.concat();
            all.sort_unstable();
            assert_eq!(all, (0..256).collect::<Vec<_>>(), "k={k}");
            assert!(regions.iter().all(|r| !r.is_empty()));
        }
    }

    #[test]
    fn pooled_tokens_are_size_weighted_means_by_hand() {
        use crate::model::TokenState;
        use crate::reduce::{Context, PositionMode, ReducerConfig, SiteView};
        use candle_core::{Device, Tensor};
        // CLS + a 2 x 2 grid of one-dim features, pooled to 1: (1*1 + 2*2 + 1*3 + 3*4) / 7.
        let hidden = Tensor::new(&[[[9f32], [1.0], [2.0], [3.0], [4.0]]], &Device::Cpu).unwrap();
        let mut state = TokenState::fresh(hidden, 1, (2, 2));
        state.sizes = vec![1.0, 1.0, 2.0, 1.0, 3.0];
        let ctx = Context::encoder(1, (2, 2), 1);
        let mut pool = ReducerConfig::from_name("pool").unwrap().build(1, &ctx).unwrap();
        let empty = crate::model::Trace::default();
        let attn = crate::model::layers::AttnRecord::default();
        let view = SiteView {
            site: Site::EncoderOutput,
            state: &state,
            attn: &attn,
            full_trace: &empty,
            vision_saliency: &[],
        };
        let out = pool.plan(&view).unwrap().apply(&state, PositionMode::Preserve).unwrap();
        let got = out.hidden.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got[0], 9.0, "CLS untouched");
        assert!((got[1] - 20.0 / 7.0).abs() < 1e-6, "{got:?}");
        assert_eq!(out.sizes, [1.0, 7.0]);
    }
}
