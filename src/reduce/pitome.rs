//! PiToMe: energy-preserving token merging (Tran et al., NeurIPS 2024, "Accelerating
//! Transformers with Spectrum-Preserving Token Merging", <https://arxiv.org/abs/2405.16148>).
//!
//! In each block of the range, between attention and MLP, on keys averaged over heads
//! (patch tokens only: CLS is set aside and never merges):
//! 1. energy of token i: E_i = mean_j f(cos(k_i, k_j) - m), f = ELU (x if x > 0, else
//!    alpha (exp x - 1)), with a margin m that shrinks with depth;
//! 2. tokens sorted by energy (high energy = inside a big cluster of similar tokens) and split
//!    alternately by energy rank into A and B, then either
//!    - *energy-ordered bipartite matching* (the authors' `pitome_bsm`): every a in A finds its
//!      most similar b in B and the r most similar edges merge, as ToMe does; or
//!    - *energy candidates* (the authors' `pitome`): only the top 2r by energy are split, and
//!      each of their r A tokens merges into its most similar B token; the rest are protected.
//! 3. merges are size-weighted means (`merge_wavg`); the energy map is the score overlay.
//!
//! Recipes ([`PitomeRecipe`]), both from `hchautran/PiToMe` (`algo/pitome/merge.py`):
//! - `authors_vit` (default): the authors' ViT patch at HEAD (`algo/pitome/patch/deit.py` with
//!   `timm.py`'s `PiToMeBlock`): energy-ordered bipartite matching in the first ceil(L/2) blocks
//!   (`use_bsm_pitome`), energy candidates after; margin 0.75 (1 - l/L); no proportional
//!   attention (`PiToMeBlock` calls `self.attn(self.norm1(x))` without sizes).
//! - `energy_every_block`: tokenlens' first recipe: energy candidates in every block, margin
//!   0.9 (1 - l/L) (the authors' BLIP and HF-CLIP patches; their LAVIS CLIP patch uses 0.95 and
//!   measures similarity on hidden states), proportional attention.
//!
//! Outputs are ordered as the authors concatenate them: CLS, the tokens that stay (protected
//! tokens by energy, or unmerged A tokens by edge order), then B in energy order.
//! DEVIATION: the authors merge a fixed ratio of the remaining tokens per block; here the
//! budget is spread over the blocks as for ToMe ([`MergeSchedule`]).

use serde::{Deserialize, Serialize};

use super::ops::{argsort_desc, cosine_matrix, keys_mean_heads, patch_tokens};
use super::registry::{Part, Side, VisionMethod};
use super::tome::MergeSchedule;
use super::{Context, Group, MethodInfo, Plan, Reducer, Site, SiteView};
use crate::model::Needs;
use crate::{Error, Result};

pub const INFO: MethodInfo = MethodInfo {
    name: "pitome",
    label: "PiToMe",
    description: "Merges tokens inside large clusters (high energy) and protects isolated, informative ones.",
    paper: "Tran et al., Accelerating Transformers with Spectrum-Preserving Token Merging (PiToMe), NeurIPS 2024",
    merges: true,
    caveat: None,
    side: Side::Vision,
    acts_on: &[Part::VisionEncoder],
};

/// Which of the authors' recipes runs (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PitomeRecipe {
    /// The authors' ViT patch at HEAD: energy-ordered bipartite matching in the first half of
    /// the blocks, margin 0.75 (1 - l/L), no proportional attention.
    #[default]
    AuthorsVit,
    /// Energy candidates in every block, margin 0.9 (1 - l/L), proportional attention.
    EnergyEveryBlock,
}

impl PitomeRecipe {
    /// m0 of the margin schedule m = m0 (1 - l/L).
    fn margin0(self) -> f64 {
        match self {
            PitomeRecipe::AuthorsVit => 0.75,
            PitomeRecipe::EnergyEveryBlock => 0.9,
        }
    }
}

/// How one block pairs tokens (the authors' `pitome_bsm` and `pitome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    /// All tokens split by energy rank; the r best A-to-B edges merge.
    EnergyBipartite,
    /// The top 2r by energy split by rank; all r A tokens merge.
    EnergyCandidates,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PitomeConfig {
    pub first_layer: usize,
    /// Last block that merges (default: the last block).
    pub last_layer: Option<usize>,
    pub recipe: PitomeRecipe,
    /// Fixed margin m (default: the recipe's m0 (1 - l/L), shrinking with depth).
    pub margin: Option<f32>,
    /// ELU slope below the margin.
    pub alpha: f32,
    /// Add log(size) to attention logits after merging (default: the recipe's).
    pub proportional_attention: Option<bool>,
}

impl Default for PitomeConfig {
    fn default() -> Self {
        Self {
            first_layer: 0,
            last_layer: None,
            recipe: PitomeRecipe::default(),
            margin: None,
            alpha: 1.0,
            proportional_attention: None,
        }
    }
}

impl VisionMethod for PitomeConfig {
    const INFO: MethodInfo = INFO;

    fn layer(&self, _num_layers: usize) -> Option<usize> {
        Some(self.first_layer)
    }

    fn set_layer(&mut self, layer: usize) {
        self.first_layer = layer;
    }

    fn build(&self, keep: usize, ctx: &Context) -> Result<Box<dyn Reducer>> {
        Ok(Box::new(Pitome::new(self, keep, ctx, |f, l| ctx.check_layer(f, l))?))
    }
}

pub struct Pitome {
    schedule: MergeSchedule,
    num_layers: usize,
    recipe: PitomeRecipe,
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
        if let Some(m) = cfg.margin.filter(|m| !m.is_finite()) {
            return Err(Error::Config { field: "margin", reason: format!("{m} is not a finite number") });
        }
        Ok(Self {
            schedule: MergeSchedule::new("PiToMe", cfg.first_layer, cfg.last_layer, keep, ctx, check_layer)?,
            num_layers: ctx.num_layers,
            recipe: cfg.recipe,
            margin: cfg.margin,
            alpha: cfg.alpha,
            proportional_attention: cfg.proportional_attention.unwrap_or(cfg.recipe == PitomeRecipe::EnergyEveryBlock),
        })
    }

    /// The margin at block `layer`: as the authors' patches compute it (`m0 - m0 * (l / L)` in
    /// Python floats, rounded to f32 where it meets the f32 similarities).
    pub fn margin(&self, layer: usize) -> f32 {
        let m0 = self.recipe.margin0();
        self.margin.unwrap_or((m0 - m0 * (layer as f64 / self.num_layers as f64)) as f32)
    }

    /// The matching at block `layer` (`deit.py`: `use_bsm_pitome` for the first
    /// `ceil(L * 0.5)` blocks).
    pub fn matching(&self, layer: usize) -> Matching {
        match self.recipe {
            PitomeRecipe::AuthorsVit if layer < self.num_layers.div_ceil(2) => Matching::EnergyBipartite,
            _ => Matching::EnergyCandidates,
        }
    }
}

/// Energy of each token over `tokens` (its own similarity included, as in PiToMe's code:
/// `F.elu(sim - margin, alpha).mean(-1)`).
pub fn energy(cos: &[Vec<f32>], tokens: &[usize], margin: f32, alpha: f32) -> Vec<f32> {
    let elu = |x: f32| if x > 0.0 { x } else { alpha * (x.exp() - 1.0) };
    tokens.iter().map(|&i| tokens.iter().map(|&j| elu(cos[i][j] - margin)).sum::<f32>() / tokens.len() as f32).collect()
}

/// The index in `cands` of the most similar to `a` (torch's `max`: the first maximum).
fn most_similar(cos: &[Vec<f32>], a: usize, cands: &[usize]) -> (usize, f32) {
    cands
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (j, &b)| if cos[a][b] > best.1 { (j, cos[a][b]) } else { best })
}

/// One PiToMe merge of `r` tokens: `cos` is the cosine matrix of the metric over all tokens,
/// the first `num_special` of which are set aside. Output groups follow the authors' order
/// (specials, the tokens that stay, then B in energy order); scores are the energies.
pub fn merge_plan(
    cos: &[Vec<f32>],
    num_special: usize,
    sizes: &[f32],
    r: usize,
    margin: f32,
    alpha: f32,
    matching: Matching,
) -> Plan {
    let patches = patch_tokens(num_special, cos.len());
    let e = energy(cos, &patches, margin, alpha);
    let order: Vec<usize> = argsort_desc(&e).into_iter().map(|i| patches[i]).collect();
    let split = |tokens: &[usize]| -> (Vec<usize>, Vec<usize>) {
        (tokens.iter().step_by(2).copied().collect(), tokens.iter().skip(1).step_by(2).copied().collect())
    };
    // (tokens that stay, B, for each merged A token the index into B it joins)
    let (stay, set_b, merges): (Vec<usize>, Vec<usize>, Vec<(usize, usize)>) = match matching {
        Matching::EnergyCandidates => {
            let (set_a, set_b) = split(&order[..2 * r]);
            let merges = set_a.iter().map(|&a| (a, most_similar(cos, a, &set_b).0)).collect();
            (order[2 * r..].to_vec(), set_b, merges)
        }
        Matching::EnergyBipartite => {
            let (set_a, set_b) = split(&order);
            let best: Vec<(usize, f32)> = set_a.iter().map(|&a| most_similar(cos, a, &set_b)).collect();
            let edges = argsort_desc(&best.iter().map(|b| b.1).collect::<Vec<_>>());
            let merges = edges[..r].iter().map(|&i| (set_a[i], best[i].0)).collect();
            (edges[r..].iter().map(|&i| set_a[i]).collect(), set_b, merges)
        }
    };
    let mut into: Vec<Vec<usize>> = vec![Vec::new(); set_b.len()];
    for (a, j) in merges {
        into[j].push(a);
    }
    let mut groups: Vec<Group> = (0..num_special).chain(stay).map(Group::single).collect();
    for (b, srcs) in set_b.into_iter().zip(into) {
        let members: Vec<usize> = std::iter::once(b).chain(srcs).collect();
        let weights = members.iter().map(|&m| sizes[m]).collect();
        groups.push(Group::mean(members, weights, b));
    }
    let scores = super::ops::with_special_nan(num_special, e);
    Plan { groups, scores: Some(scores) }
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
        let keys = keys_mean_heads(view.attn.keys.as_ref().expect("needs() asked for keys"))?;
        let cos = cosine_matrix(&keys, &keys)?;
        let state = view.state;
        Ok(merge_plan(&cos, state.num_special, &state.sizes, r, self.margin(layer), self.alpha, self.matching(layer)))
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

    #[test]
    fn recipes_follow_the_authors_patches() {
        let ctx = Context::encoder(12, (4, 4), 1);
        let ok = |_: &'static str, l: usize| Ok(l);
        let authors = Pitome::new(&PitomeConfig::default(), 16, &ctx, ok).unwrap();
        // deit.py: margins = [.75 - .75*(i/num_layers)], use_bsm_pitome for ceil(12 * 0.5) blocks.
        assert_eq!(authors.margin(0), 0.75);
        assert!((authors.margin(4) - 0.5).abs() < 1e-7);
        assert_eq!(authors.matching(5), Matching::EnergyBipartite);
        assert_eq!(authors.matching(6), Matching::EnergyCandidates);
        assert!(!authors.proportional_attention());
        let cfg = PitomeConfig { recipe: PitomeRecipe::EnergyEveryBlock, ..Default::default() };
        let ours = Pitome::new(&cfg, 16, &ctx, ok).unwrap();
        assert!((ours.margin(4) - 0.6).abs() < 1e-7);
        assert_eq!(ours.matching(0), Matching::EnergyCandidates);
        assert!(ours.proportional_attention());
    }
}
