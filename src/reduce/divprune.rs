//! DivPrune: diversity-based visual token pruning (Alvar et al., CVPR 2025,
//! <https://arxiv.org/abs/2503.02175>), a max-min diversity problem solved greedily;
//! reference `vbdi/divprune` (`DivPrune` in `llava_arch.py`).
//!
//! On the encoder output, D = 1 - cos. Start from the token whose nearest neighbour is
//! farthest; then repeatedly add the token whose minimum distance to the selected set is
//! largest, until K. Query-agnostic. Score map: each patch's distance to its nearest kept
//! token (how well the kept set covers it).

use serde::{Deserialize, Serialize};

use super::ops::{cosine_matrix, patch_tokens, with_special_nan};
use super::registry::{Part, Side, VisionMethod};
use super::{Context, MethodInfo, Plan, Reducer, Site, SiteView};
use crate::Result;

pub const INFO: MethodInfo = MethodInfo {
    name: "divprune",
    label: "DivPrune",
    description: "Keeps a maximally diverse subset of output features (greedy max-min cosine distance).",
    paper: "Alvar et al., DivPrune: Diversity-based Visual Token Pruning, CVPR 2025",
    merges: false,
    caveat: None,
    side: Side::Vision,
    acts_on: &[Part::PreLlm],
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DivpruneConfig {}

impl VisionMethod for DivpruneConfig {
    const INFO: MethodInfo = INFO;

    fn build(&self, keep: usize, _ctx: &Context) -> Result<Box<dyn Reducer>> {
        Ok(Box::new(Divprune::new(keep)))
    }
}

pub struct Divprune {
    keep: usize,
}

impl Divprune {
    pub fn new(keep: usize) -> Self {
        Self { keep }
    }
}

/// The greedy max-min selection over a distance matrix, in selection order, as the reference
/// computes it: the first pick maximises the distance to the nearest *other* token (second
/// smallest entry of its column); later picks maximise the minimum distance to the picks.
pub fn greedy_max_min(dist: &[Vec<f32>], k: usize) -> Vec<usize> {
    let n = dist.len();
    let argmax = |scores: &[f32]| {
        // torch.argmax returns the first maximal index.
        scores.iter().enumerate().fold(0, |best, (i, &s)| if s > scores[best] { i } else { best })
    };
    let first_scores: Vec<f32> = (0..n)
        .map(|j| {
            let mut col: Vec<f32> = (0..n).map(|i| dist[i][j]).collect();
            col.sort_by(f32::total_cmp);
            col.get(1).copied().unwrap_or(0.0)
        })
        .collect();
    let mut selected = vec![argmax(&first_scores)];
    let mut min_dist: Vec<f32> = (0..n).map(|j| dist[selected[0]][j]).collect();
    while selected.len() < k.min(n) {
        let next = argmax(&min_dist);
        selected.push(next);
        for (j, m) in min_dist.iter_mut().enumerate() {
            *m = m.min(dist[next][j]);
        }
    }
    selected
}

impl Reducer for Divprune {
    fn sites(&self) -> Vec<Site> {
        vec![Site::EncoderOutput]
    }

    fn plan(&mut self, view: &SiteView<'_>) -> Result<Plan> {
        let state = view.state;
        let patches = patch_tokens(state.num_special, state.num_tokens());
        let features = state.hidden.squeeze(0)?.narrow(0, state.num_special, patches.len())?;
        let dist: Vec<Vec<f32>> = cosine_matrix(&features, &features)?
            .into_iter()
            .map(|row| row.into_iter().map(|c| 1.0 - c).collect())
            .collect();
        let mut picked = greedy_max_min(&dist, self.keep);
        let coverage = (0..patches.len()).map(|j| picked.iter().map(|&i| dist[i][j]).fold(f32::INFINITY, f32::min));
        let scores = with_special_nan(state.num_special, coverage);
        picked.sort_unstable();
        let kept: Vec<usize> = picked.into_iter().map(|i| patches[i]).collect();
        Ok(Plan::keep(state.num_special, &kept).with_scores(scores))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_order_by_hand() {
        // Points on a line at 0, 1, 2, 10, 11 (distance = |x - y|).
        let x = [0.0f32, 1.0, 2.0, 10.0, 11.0];
        let dist: Vec<Vec<f32>> = x.iter().map(|a| x.iter().map(|b| (a - b).abs()).collect()).collect();
        // Nearest-other distances: 1, 1, 1, 1, 1 -> ties: the first (0) wins.
        // Then farthest from {0}: 11 (index 4); then max of min(d0, d4): x=2 -> min(2, 9) = 2,
        // x=10 -> min(10, 1) = 1, x=1 -> 1: index 2. Then ties at 1 (indices 1, 3): index 1.
        assert_eq!(greedy_max_min(&dist, 4), [0, 4, 2, 1]);
    }
}
