//! [CLS]-attention top-K at the encoder output: FasterVLM (Zhang et al., 2024, "[CLS]
//! Attention is All You Need for Training-Free Visual Token Pruning",
//! <https://arxiv.org/abs/2412.01818>) and VTC-CLS (Wang et al., 2024, "[CLS] Token Tells
//! Everything Needed for Training-free Efficient MLLMs", <https://arxiv.org/abs/2412.05819>).
//!
//! Score = mean over heads of attn[CLS, patch] at the layer whose features feed the head
//! (here the last; LLaVA uses the penultimate). VTC-CLS option: average that score over several
//! layers. Keep the top K in raster order; drop the rest before the output head. Encoders
//! without CLS (SigLIP) score by mean attention received instead.

use serde::{Deserialize, Serialize};

use super::ops::{cls_or_received, patch_tokens, top_k_in_order, with_special_nan};
use super::registry::{Part, Side, VisionMethod};
use super::{Context, MethodInfo, Plan, Reducer, Site, SiteView};
use crate::Result;
use crate::model::HookPoint;

pub const INFO: MethodInfo = MethodInfo {
    name: "cls_topk",
    label: "ClsTopK",
    description: "Keeps the patches with the highest CLS attention at the encoder output (FasterVLM; VTC-CLS averages layers).",
    paper: "Zhang et al., FasterVLM, 2024; Wang et al., VTC-CLS, 2024",
    merges: false,
    caveat: None,
    side: Side::Vision,
    acts_on: &[Part::PreLlm],
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClsTopkConfig {
    /// Layer whose CLS attention scores the tokens (default: the last).
    pub layer: Option<usize>,
    /// VTC-CLS: average the score over these layers instead (empty: off).
    pub average_layers: Vec<usize>,
}

impl VisionMethod for ClsTopkConfig {
    const INFO: MethodInfo = INFO;

    fn layer(&self, num_layers: usize) -> Option<usize> {
        Some(self.layer.unwrap_or(num_layers - 1))
    }

    fn set_layer(&mut self, layer: usize) {
        self.layer = Some(layer);
    }

    fn build(&self, keep: usize, ctx: &Context) -> Result<Box<dyn Reducer>> {
        Ok(Box::new(ClsTopk::new(self, keep, ctx, |f, l| ctx.check_layer(f, l))?))
    }
}

pub struct ClsTopk {
    keep: usize,
    layers: Vec<usize>,
}

impl ClsTopk {
    pub fn new(
        cfg: &ClsTopkConfig,
        keep: usize,
        ctx: &Context,
        check_layer: impl Fn(&'static str, usize) -> Result<usize>,
    ) -> Result<Self> {
        let layers = if cfg.average_layers.is_empty() {
            vec![check_layer("layer", cfg.layer.unwrap_or(ctx.num_layers - 1))?]
        } else {
            cfg.average_layers.iter().map(|&l| check_layer("average_layers", l)).collect::<Result<_>>()?
        };
        Ok(Self { keep, layers })
    }
}

impl Reducer for ClsTopk {
    fn sites(&self) -> Vec<Site> {
        vec![Site::EncoderOutput]
    }

    fn plan(&mut self, view: &SiteView<'_>) -> Result<Plan> {
        let state = view.state;
        let mut score = vec![0f32; state.num_tokens()];
        for &l in &self.layers {
            let row = cls_or_received(view.full_trace.require(HookPoint::AttnProbs(l))?, state.num_special)?;
            for (s, r) in score.iter_mut().zip(row) {
                *s += r / self.layers.len() as f32;
            }
        }
        let patches = patch_tokens(state.num_special, state.num_tokens());
        let kept = top_k_in_order(&score, &patches, self.keep);
        Ok(Plan::keep(state.num_special, &kept)
            .with_scores(with_special_nan(state.num_special, score[state.num_special..].iter().copied())))
    }
}
