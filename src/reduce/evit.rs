//! EViT-style keep + fuse by [CLS] attention (Liang et al., ICLR 2022, "Not All Patches are
//! What You Need", <https://arxiv.org/abs/2202.07800>, §3; reference `youweiliang/evit`).
//!
//! Inside block l, after attention and before the MLP (as `evit.py`'s `Block.forward` does, so
//! the MLP runs on the kept and fused tokens): score a_i = mean over heads of this block's
//! attn[CLS, i] (without CLS: mean attention received). Keep the top patches; fuse the rest
//! into one token x_f = Σ a_i x_i, appended after the kept ones. With a budget of K visual
//! tokens, K-1 are kept and the fused token is the K-th.
//!
//! DEVIATION(REDUCERS.md): the fused token is the attention-weighted *sum*, as in EViT's code
//! (`evit.py`: `extra_token = torch.sum(non_topk * non_topk_attn, ...)`), not a normalised mean.
//! DEVIATION(evit.py): kept tokens stay in raster order (EViT orders them by attention); a ViT's
//! blocks are permutation-equivariant, so only provenance bookkeeping differs.

use serde::{Deserialize, Serialize};

use super::ops::{cls_or_received, patch_tokens, top_k_in_order, with_special_nan};
use super::registry::{Part, Side, VisionMethod};
use super::{Context, Group, MethodInfo, Plan, Reducer, Site, SiteView};
use crate::Result;
use crate::model::Needs;

pub const INFO: MethodInfo = MethodInfo {
    name: "evit",
    label: "EViT",
    description: "Keeps the patches the CLS token attends to most at one layer and fuses the rest into one token.",
    paper: "Liang et al., Not All Patches are What You Need (EViT), ICLR 2022",
    merges: true,
    caveat: Some("EViT trains with this reduction; applied off the shelf it loses some accuracy."),
    side: Side::Vision,
    acts_on: &[Part::VisionEncoder],
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvitConfig {
    /// The block inside which tokens are reduced, between attention and MLP (EViT's first
    /// reduction is in the 4th block).
    pub layer: usize,
    /// Fuse the inattentive tokens into one (else drop them).
    pub fuse: bool,
}

impl Default for EvitConfig {
    fn default() -> Self {
        Self { layer: 3, fuse: true }
    }
}

impl VisionMethod for EvitConfig {
    const INFO: MethodInfo = INFO;

    fn layer(&self, _num_layers: usize) -> Option<usize> {
        Some(self.layer)
    }

    fn set_layer(&mut self, layer: usize) {
        self.layer = layer;
    }

    fn build(&self, keep: usize, ctx: &Context) -> Result<Box<dyn Reducer>> {
        Ok(Box::new(Evit::new(self, keep, ctx.check_layer("layer", self.layer)?)))
    }
}

pub struct Evit {
    keep: usize,
    layer: usize,
    fuse: bool,
}

impl Evit {
    pub fn new(cfg: &EvitConfig, keep: usize, layer: usize) -> Self {
        Self { keep, layer, fuse: cfg.fuse }
    }
}

impl Reducer for Evit {
    fn sites(&self) -> Vec<Site> {
        vec![Site::MidBlock(self.layer)]
    }

    fn needs(&self, layer: usize) -> Needs {
        Needs { probs: layer == self.layer, keys: false }
    }

    fn plan(&mut self, view: &SiteView<'_>) -> Result<Plan> {
        let state = view.state;
        let probs = view.attn.probs.as_ref().expect("needs() asked for attention");
        let attn = cls_or_received(probs, state.num_special)?;
        let patches = patch_tokens(state.num_special, state.num_tokens());
        let fuse = self.fuse && self.keep < patches.len();
        let kept = top_k_in_order(&attn, &patches, self.keep - usize::from(fuse));
        let mut plan = Plan::keep(state.num_special, &kept);
        if fuse {
            let rest: Vec<usize> = patches.iter().copied().filter(|p| kept.binary_search(p).is_err()).collect();
            let weights: Vec<f32> = rest.iter().map(|&i| attn[i]).collect();
            let anchor = rest[super::ops::argsort_desc(&weights)[0]];
            plan.groups.push(Group { members: rest, weights, anchor, normalize: false });
        }
        Ok(plan.with_scores(with_special_nan(state.num_special, attn[state.num_special..].iter().copied())))
    }
}
