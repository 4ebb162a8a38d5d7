//! FastV (Chen et al., ECCV 2024, "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play
//! Inference Acceleration for Large Vision-Language Models", <https://arxiv.org/abs/2403.06764>).
//!
//! Prefill layers 0..K-1 in full, materialising attention only at layer K-1. Score every image
//! row by the attention it receives there, averaged over heads and over a query set (the last
//! prompt token, as the reference implementation does; or all text rows; or all rows), keep the
//! top `keep` in sequence order; layers K.. see only those. Defaults K = 2 (the paper's).
//!
//! Queries that cannot see an image row (causally before it) contribute their zero attention
//! to the mean: the mean is over the query set, not over the queries that see the row. For
//! `last` that changes nothing (the last row sees every row); for `text` and `all` every image
//! row has the same divisor, so the ranking is that of the summed attention.

use serde::{Deserialize, Serialize};

use super::ops::{plan, received_from, required_attention, scores_on_rows};
use crate::model::Needs;
use crate::reduce::ops::top_k_in_order;
use crate::reduce::registry::{LanguageMethod, Part, Side};
use crate::reduce::{Context, MethodInfo, Plan, Reducer, Site, SiteView};
use crate::{Error, Result};

pub const INFO: MethodInfo = MethodInfo {
    name: "fastv",
    label: "FastV",
    description: "Inside the LLM: after layer K-1, keeps the image tokens that receive the most attention from the last prompt token (or all text / all tokens).",
    paper: "Chen et al., An Image is Worth 1/2 Tokens After Layer 2 (FastV), ECCV 2024",
    merges: false,
    caveat: None,
    side: Side::Language,
    acts_on: &[Part::LanguageModel],
};

/// Which queries' attention scores the image rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FastvQuery {
    /// The last prompt token (the last row), as the FastV reference does.
    #[default]
    Last,
    /// Every text row.
    Text,
    /// Every row.
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FastvConfig {
    /// K: layers 0..K-1 see every image row, layers K.. the kept ones (1..=num_layers).
    pub layer: usize,
    pub query: FastvQuery,
}

impl Default for FastvConfig {
    fn default() -> Self {
        Self { layer: 2, query: FastvQuery::Last }
    }
}

impl LanguageMethod for FastvConfig {
    const INFO: MethodInfo = INFO;

    fn layer(&self, _num_layers: usize) -> Option<usize> {
        Some(self.layer)
    }

    fn set_layer(&mut self, layer: usize, _num_layers: usize) {
        self.layer = layer;
    }

    fn build(&self, keep: usize, ctx: &Context) -> Result<Box<dyn Reducer>> {
        Ok(Box::new(Fastv::new(self, keep, ctx)?))
    }
}

pub struct Fastv {
    keep: usize,
    /// The layer whose attention scores (K - 1).
    attn_layer: usize,
    query: FastvQuery,
}

impl Fastv {
    pub fn new(cfg: &FastvConfig, keep: usize, ctx: &Context) -> Result<Self> {
        if cfg.layer == 0 || cfg.layer > ctx.num_layers {
            return Err(Error::Config {
                field: "layer",
                reason: format!(
                    "FastV's K = {} must be in 1..={} (it prunes after layer K-1 of {} decoder layers)",
                    cfg.layer, ctx.num_layers, ctx.num_layers
                ),
            });
        }
        Ok(Self { keep, attn_layer: cfg.layer - 1, query: cfg.query })
    }

    /// Each image row's score (in `view.image_rows()` order), as defined above.
    pub fn scores(&self, view: &SiteView<'_>) -> Result<Vec<f32>> {
        let a = required_attention(view, "FastV")?;
        let queries: Vec<usize> = match self.query {
            FastvQuery::Last => vec![view.num_rows() - 1],
            FastvQuery::Text => view.text_rows(),
            FastvQuery::All => (0..view.num_rows()).collect(),
        };
        Ok(received_from(&a, &queries, &view.image_rows()))
    }
}

impl Reducer for Fastv {
    fn sites(&self) -> Vec<Site> {
        vec![Site::AfterLayer(self.attn_layer)]
    }

    fn needs(&self, layer: usize) -> Needs {
        Needs { probs: layer == self.attn_layer, keys: false }
    }

    fn plan(&mut self, view: &SiteView<'_>) -> Result<Plan> {
        let image = view.image_rows();
        let s = self.scores(view)?;
        let all_rows = scores_on_rows(view.num_rows(), &image, &s);
        let keep = if self.keep >= image.len() { image } else { top_k_in_order(&all_rows, &image, self.keep) };
        Ok(plan(view, all_rows, keep, Vec::new()))
    }

    fn schedule(&self) -> Vec<(Site, usize)> {
        vec![(Site::AfterLayer(self.attn_layer), self.keep)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{TokenState, Trace};
    use crate::reduce::llm::testing;
    use candle_core::{Device, Tensor};

    fn view_plan(query: FastvQuery, keep: usize) -> (Plan, TokenState) {
        // Rows: T I I T(last). One head; attention by hand (causal, rows sum to 1).
        let attn = Tensor::new(
            &[[[1f32, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.6, 0.0], [0.1, 0.5, 0.3, 0.1]]],
            &Device::Cpu,
        )
        .unwrap();
        let hidden = Tensor::zeros((4, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let rows = testing::rows(&[None, Some(vec![0]), Some(vec![1]), None], &hidden);
        let (attn, trace) = (testing::attention(&attn), Trace::default());
        let view =
            SiteView { site: Site::AfterLayer(0), state: &rows, attn: &attn, full_trace: &trace, vision_saliency: &[] };
        let ctx = Context::decoder(2, 2, (1, 2));
        let cfg = FastvConfig { layer: 1, query };
        let p = Fastv::new(&cfg, keep, &ctx).unwrap().plan(&view).unwrap();
        p.validate(&rows).unwrap();
        (p, rows)
    }

    #[test]
    fn query_sets_by_hand() {
        // Last: image 1 gets 0.5, image 2 gets 0.3.
        let (p, rows) = view_plan(FastvQuery::Last, 1);
        assert_eq!(p.kept(&rows), [1]);
        let s = p.scores.unwrap();
        assert!(s[0].is_nan() && s[3].is_nan());
        assert!((s[1] - 0.5).abs() < 1e-6 && (s[2] - 0.3).abs() < 1e-6);
        // Text (rows 0, 3): row 1 (0 + 0.5) / 2 = 0.25, row 2 (0 + 0.3) / 2 = 0.15.
        let s = view_plan(FastvQuery::Text, 1).0.scores.unwrap();
        assert!((s[1] - 0.25).abs() < 1e-6 && (s[2] - 0.15).abs() < 1e-6);
        // All: row 1 (0 + 0.5 + 0.2 + 0.5) / 4 = 0.3, row 2 (0.6 + 0.3) / 4 = 0.225.
        let s = view_plan(FastvQuery::All, 1).0.scores.unwrap();
        assert!((s[1] - 0.3).abs() < 1e-6 && (s[2] - 0.225).abs() < 1e-6);
        // Keep everything: identity.
        let (p, rows) = view_plan(FastvQuery::Last, 2);
        assert_eq!(p.kept(&rows), [1, 2]);
    }

    #[test]
    fn layer_is_checked() {
        let ctx = Context::decoder(2, 4, (2, 2));
        for k in [0, 3] {
            let err = Fastv::new(&FastvConfig { layer: k, ..Default::default() }, 2, &ctx).err().unwrap();
            assert!(err.to_string().contains("1..=2"), "{err}");
        }
        assert!(Fastv::new(&FastvConfig { layer: 2, ..Default::default() }, 2, &ctx).is_ok());
    }
}
