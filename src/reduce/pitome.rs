//! PiToMe: energy-preserving token merging (Tran et al., NeurIPS 2024, "Accelerating
//! Transformers with Spectrum-Preserving Token Merging", <https://arxiv.org/abs/2405.16148>).
//!
//! In each block of the range, between attention and MLP, on keys averaged over heads:
//! 1. energy of token i: E_i = mean_j f(cos(k_i, k_j) - m), f = ELU (x if x > 0, else
//!    alpha (exp x - 1)), with a margin m that shrinks with depth;
//! 2. high-energy tokens sit in big clusters of similar tokens: the top 2r by energy are the
//!    merge candidates, split alternately by energy rank into A and B;
//! 3. each a in A merges into its most similar b in B (size-weighted mean, as ToMe);
//!    low-energy (isolated, informative) tokens and CLS are protected.
//!
//! The energy map is the score overlay. Details follow `hchautran/PiToMe`
//! (`algo/pitome/merge.py`, the default `pitome` path; margin m0 (1 - l/L) with m0 = 0.9 as in
//! its CLIP patch). DEVIATION: protected and merged tokens are emitted in raster order rather
//! than by energy; PiToMe's later steps sort by energy anyway.

use serde::{Deserialize, Serialize};

use super::ops::{argsort_desc, keys_mean_heads, with_special_nan};
use super::tome::MergeSchedule;
use super::{Context, Group, MethodInfo, Plan, Reducer, Site, SiteView};
use crate::Result;
use crate::model::Needs;

pub const INFO: MethodInfo = MethodInfo {
    name: "pitome",
    label: "PiToMe",
    description: "Merges tokens inside large clusters (high energy) and protects isolated, informative ones.",
    paper: "Tran et al., Accelerating Transformers with Spectrum-Preserving Token Merging (PiToMe), NeurIPS 2024",
    merges: true,
    caveat: None,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PitomeConfig {
    pub first_layer: usize,
    /// Last block that merges (default: the last block).
    pub last_layer: Option<usize>,
    /// Fixed margin m (default: 0.9 - 0.9 l / L, shrinking with depth).
    pub margin: Option<f32>,
    /// ELU slope below the margin.
    pub alpha: f32,
    pub proportional_attention: bool,
}

impl Default for PitomeConfig {
    fn default() -> Self {
        Self { first_layer: 0, last_layer: None, margin: None, alpha: 1.0, proportional_attention: true }
    }
}

pub struct Pitome {
    schedule: MergeSchedule,
    num_layers: usize,
    margin: Option<f32>,
    alpha: f32,
    proportional_attention: bool,
}

impl Pitome {
    pub fn new(
        cfg: &PitomeConfig,
        keep: usize,
        ctx: &Context,
        check_layer: impl Fn(&'static str, usize) -> Result<usize>,
    ) -> Result<Self> {
        Ok(Self {
            schedule: MergeSchedule::new("PiToMe", cfg.first_layer, cfg.last_layer, keep, ctx, check_layer)?,
            num_layers: ctx.num_layers,
            margin: cfg.margin,
            alpha: cfg.alpha,
            proportional_attention: cfg.proportional_attention,
        })
    }

    fn margin(&self, layer: usize) -> f32 {
        self.margin.unwrap_or(0.9 - 0.9 * layer as f32 / self.num_layers as f32)
    }
}

/// Energy of each token over `tokens` (its own similarity included, as in PiToMe's code:
/// `F.elu(sim - margin, alpha).mean(-1)`).
pub fn energy(cos: &[Vec<f32>], tokens: &[usize], margin: f32, alpha: f32) -> Vec<f32> {
    let elu = |x: f32| if x > 0.0 { x } else { alpha * (x.exp() - 1.0) };
    tokens.iter().map(|&i| tokens.iter().map(|&j| elu(cos[i][j] - margin)).sum::<f32>() / tokens.len() as f32).collect()
}

impl Reducer for Pitome {
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
        let Site::MidBlock(layer) = view.site else { unreachable!("PiToMe acts mid-block") };
        let state = view.state;
        let keys = keys_mean_heads(view.attn.keys.as_ref().expect("needs() asked for keys"))?;
        let cos = super::ops::cosine_matrix(&keys, &keys)?;
        // CLS is neither a candidate nor part of any token's energy (PiToMe strips it first).
        let patches = super::ops::patch_tokens(state.num_special, state.num_tokens());
        let e = with_special_nan(state.num_special, energy(&cos, &patches, self.margin(layer), self.alpha));
        let e: Vec<f32> = e.into_iter().map(|v| if v.is_nan() { f32::NEG_INFINITY } else { v }).collect();
        let order = argsort_desc(&e);
        let candidates = &order[..2 * r];
        let (set_a, set_b): (Vec<usize>, Vec<usize>) =
            (candidates.iter().step_by(2).copied().collect(), candidates.iter().skip(1).step_by(2).copied().collect());
        let mut into: Vec<Vec<usize>> = vec![Vec::new(); set_b.len()];
        for &a in &set_a {
            let best =
                (0..set_b.len()).fold(0, |best, j| if cos[a][set_b[j]] > cos[a][set_b[best]] { j } else { best });
            into[best].push(a);
        }
        let mut protected: Vec<usize> = order[2 * r..].to_vec();
        protected.sort_unstable();
        let mut groups: Vec<Group> = protected.into_iter().map(Group::single).collect();
        let mut merged: Vec<(usize, Vec<usize>)> = set_b.into_iter().zip(into).collect();
        merged.sort_unstable_by_key(|(b, _)| *b);
        for (b, srcs) in merged {
            let members: Vec<usize> = std::iter::once(b).chain(srcs).collect();
            let weights = members.iter().map(|&m| state.sizes[m]).collect();
            groups.push(Group::mean(members, weights, b));
        }
        let scores = e.iter().map(|&v| if v.is_finite() { v } else { f32::NAN }).collect();
        Ok(Plan { groups, scores: Some(scores) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn energy_by_hand() {
        // Two identical tokens and one orthogonal, margin 0.5, alpha 1:
        // token 0: f(0.5) + f(0.5) + f(-0.5) = 1 + (e^-0.5 - 1), over 3.
        let cos = vec![vec![1.0, 1.0, 0.0], vec![1.0, 1.0, 0.0], vec![0.0, 0.0, 1.0]];
        let e = energy(&cos, &[0, 1, 2], 0.5, 1.0);
        assert!((e[0] - (1.0 + (-0.5f32).exp() - 1.0) / 3.0).abs() < 1e-6);
        assert!(e[0] > e[2], "the clustered token has more energy than the isolated one");
    }
}
