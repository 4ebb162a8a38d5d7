//! Language-side reducers (REDUCERS.md 9-13): methods that act on a vision-language model's
//! decoder sequence, before layer 0 (`pre_llm`, on the projected image tokens and the prompt's
//! embeddings) or after decoder layer k (`llm(k)`, on hidden states and attention).
//!
//! # Design
//! Question: how do methods that see text, decoder hidden states and decoder attention share one
//! interface with the decoder loop, without touching it?
//! Decision: the same shape as the vision-side [`crate::reduce::Reducer`]: a method names its
//! sites and the layers whose attention it needs, and returns an [`LlmPlan`] (data: which image
//! rows stay, which are averaged into one). `vlm::prefill` alone gathers hidden states, position
//! ids and rows, so provenance is kept the same way for every method. Text rows always stay.

pub mod fastv;
pub mod mmtok;
pub mod ops;
pub mod sparsevlm;
pub mod text_guided;
pub mod todre;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

pub use super::LlmReducerConfig;
use super::{Method, Stage};
use crate::{Error, Result};

/// Where a language-side reducer acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LlmSite {
    /// On the decoder's input embeddings, before layer 0.
    PreLlm,
    /// On the hidden states leaving decoder layer `k`; layers `k + 1..` see the reduced rows.
    AfterLayer(usize),
}

/// One row of the decoder's sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// A prompt token (chat template, question, special tokens).
    Text,
    /// A visual token standing for these original image tokens (sorted; one unless merged).
    Image(Vec<u32>),
}

impl Row {
    pub fn is_image(&self) -> bool {
        matches!(self, Row::Image(_))
    }
}

/// The model facts a language-side reducer is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlmContext {
    /// Decoder layers.
    pub num_layers: usize,
    /// Image tokens in the unreduced sequence.
    pub num_image_tokens: usize,
    /// The image tokens' grid (rows, cols), raster order (SmolVLM: after the pixel shuffle).
    pub grid: (usize, usize),
}

/// What a language-side reducer sees at one of its sites.
pub struct LlmView<'a> {
    pub site: LlmSite,
    /// The sequence now, in order. The last row is the last prompt token.
    pub rows: &'a [Row],
    /// `[n, d]`, one per row: the decoder's input embeddings at [`LlmSite::PreLlm`] (image rows
    /// are the projected image tokens, text rows the prompt's token embeddings), else the
    /// hidden states leaving layer k.
    pub hidden: &'a Tensor,
    /// Layer k's post-softmax attention `[heads, n, n]` (causal: row = query), present at
    /// [`LlmSite::AfterLayer`] when [`LlmReducer::needs_attention`] asked for layer k.
    pub attn: Option<&'a Tensor>,
    /// Per original image token, the vision tower's own importance: CLS attention at the layer
    /// the projector reads, mean over heads (attention received where the tower has no CLS),
    /// summed over the patches the token covers. Length `num_image_tokens`.
    pub vision_saliency: &'a [f32],
}

impl LlmView<'_> {
    /// Indices (into `rows`) of the image rows, in order.
    pub fn image_rows(&self) -> Vec<usize> {
        (0..self.rows.len()).filter(|&i| self.rows[i].is_image()).collect()
    }

    /// Indices (into `rows`) of the text rows, in order.
    pub fn text_rows(&self) -> Vec<usize> {
        (0..self.rows.len()).filter(|&i| !self.rows[i].is_image()).collect()
    }
}

/// What a language-side reducer decides at one site. Text rows always stay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmPlan {
    /// One score per row (NaN for text rows and rows the method does not score), as the method
    /// defines importance; drawn on the image grid.
    pub scores: Option<Vec<f32>>,
    /// Image rows that stay as they are (indices into `rows`, ascending).
    pub keep: Vec<usize>,
    /// Groups of image rows (disjoint from `keep` and from each other) each averaged into one
    /// new row, weighted by how many image tokens each member carries. The first member is the
    /// destination: the new row takes its place in the sequence and its position id.
    pub merged: Vec<Vec<usize>>,
}

impl LlmPlan {
    /// Image rows after the plan.
    pub fn output_image_rows(&self) -> usize {
        self.keep.len() + self.merged.len()
    }

    /// Checks the plan against the rows it was made for (a malformed plan is a reducer bug).
    pub fn validate(&self, rows: &[Row]) -> std::result::Result<(), String> {
        let mut seen = vec![false; rows.len()];
        for &i in self.keep.iter().chain(self.merged.iter().flatten()) {
            if i >= rows.len() || !rows[i].is_image() {
                return Err(format!("row {i} is not an image row"));
            }
            if std::mem::replace(&mut seen[i], true) {
                return Err(format!("row {i} is used twice"));
            }
        }
        if !self.keep.windows(2).all(|w| w[0] < w[1]) {
            return Err("keep is not ascending".into());
        }
        if self.merged.iter().any(Vec::is_empty) {
            return Err("an empty merge group".into());
        }
        if self.scores.as_ref().is_some_and(|s| s.len() != rows.len()) {
            return Err("one score per row expected".into());
        }
        Ok(())
    }

    /// The plan that changes nothing: every image row of `rows` kept, no merges.
    pub fn identity(rows: &[Row]) -> Self {
        LlmPlan { scores: None, keep: (0..rows.len()).filter(|&i| rows[i].is_image()).collect(), merged: Vec::new() }
    }
}

/// The layer-averaged number of image rows: the mean over the `num_layers` decoder layers of the
/// image rows each layer processes, when the sequence starts with `num_image_rows` and
/// `schedule` lists the image rows left after each site (a [`LlmSite::PreLlm`] plan counts for
/// every layer, an [`LlmSite::AfterLayer`]`(k)` plan for layers `k + 1..`).
pub fn layer_averaged_rows(num_layers: usize, num_image_rows: usize, schedule: &[(LlmSite, usize)]) -> f64 {
    if num_layers == 0 {
        return num_image_rows as f64;
    }
    let mut sorted = schedule.to_vec();
    sorted.sort_by_key(|&(site, _)| site);
    let total: usize = (0..num_layers)
        .map(|l| {
            let applies = |site: LlmSite| match site {
                LlmSite::PreLlm => true,
                LlmSite::AfterLayer(k) => k < l,
            };
            sorted.iter().rev().find(|&&(site, _)| applies(site)).map_or(num_image_rows, |&(_, n)| n)
        })
        .sum();
    total as f64 / num_layers as f64
}

pub trait LlmReducer {
    /// Sites where [`LlmReducer::plan`] is called, in forward order.
    fn sites(&self) -> Vec<LlmSite>;
    /// Whether decoder layer `layer`'s attention must be materialised for a plan after it.
    fn needs_attention(&self, _layer: usize) -> bool {
        false
    }
    fn plan(&mut self, view: &LlmView<'_>) -> Result<LlmPlan>;
    /// The image rows left after each site, as planned when the reducer was built. Sites whose
    /// count depends on the data (ToDRE's stage 2) are left out, so [`layer_averaged_rows`] of
    /// this schedule is an upper bound for such methods and exact for the others.
    fn schedule(&self) -> Vec<(LlmSite, usize)> {
        Vec::new()
    }
}

impl LlmReducerConfig {
    pub fn name(&self) -> &'static str {
        self.info().name
    }

    /// The default config of the language-side method called `name`.
    pub fn from_name(name: &str) -> Result<Self> {
        match Method::from_name(name)? {
            Method::Llm(c) => Ok(c),
            Method::Vision(_) => Err(Error::Config {
                field: "reducer",
                reason: format!("`{name}` is a vision-side method, not a language-side one"),
            }),
        }
    }

    /// Sets one parameter from text (`--param k=v`), re-validating the config.
    pub fn set_param(&mut self, key: &str, value: &str) -> Result<()> {
        crate::reduce::set_param_json(self, self.name(), key, value)
    }

    /// Where the method acts, in forward order (its first site is its stage).
    pub fn sites(&self, ctx: &LlmContext) -> Result<Vec<LlmSite>> {
        Ok(self.build(ctx.num_image_tokens, ctx)?.sites())
    }

    /// The stage of the method's first action, in the shared vocabulary (`pre_llm` or `llm(k)`).
    pub fn stage(&self, ctx: &LlmContext) -> Result<Stage> {
        let sites = self.sites(ctx)?;
        // SparseVLM's pre-LLM site only picks its raters; it first prunes after a layer.
        let acts = |s: &&LlmSite| !matches!(self, LlmReducerConfig::Sparsevlm(_)) || **s != LlmSite::PreLlm;
        Ok(match sites.iter().find(acts) {
            Some(LlmSite::AfterLayer(k)) => Stage::Llm(*k),
            _ => Stage::PreLlm,
        })
    }

    /// The layer-averaged image-row count a run keeping `keep` will have (an upper bound for
    /// ToDRE, whose stage 2 depends on the data); see [`layer_averaged_rows`].
    pub fn layer_averaged(&self, keep: usize, ctx: &LlmContext) -> Result<f64> {
        let schedule = self.build(keep, ctx)?.schedule();
        Ok(layer_averaged_rows(ctx.num_layers, ctx.num_image_tokens, &schedule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_distinct_from_vision_side_and_round_trip() {
        let all = LlmReducerConfig::defaults();
        let vision: Vec<&str> = crate::reduce::ReducerConfig::defaults().iter().map(|c| c.name()).collect();
        let mut names: Vec<_> = all.iter().map(|c| c.name()).collect();
        for c in &all {
            assert_eq!(&LlmReducerConfig::from_name(c.name()).unwrap(), c);
            let json = serde_json::to_string(c).unwrap();
            assert!(json.contains(&format!("\"method\":\"{}\"", c.name())), "{json}");
            assert_eq!(&serde_json::from_str::<LlmReducerConfig>(&json).unwrap(), c, "{json}");
            assert!(!vision.contains(&c.name()), "{} is also a vision-side name", c.name());
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert!(LlmReducerConfig::from_name("tome").is_err());
        assert!(serde_json::from_str::<LlmReducerConfig>(r#"{"method":"fastv","layr":2}"#).is_err());
    }

    #[test]
    fn params_are_checked() {
        let mut c = LlmReducerConfig::from_name("fastv").unwrap();
        c.set_param("layer", "5").unwrap();
        assert_eq!(c.layer(32), Some(5));
        c.set_param("query", "text").unwrap();
        assert!(serde_json::to_string(&c).unwrap().contains(r#""query":"text""#));
        assert!(c.set_param("query", "everything").is_err());
        assert!(c.set_param("layr", "5").unwrap_err().to_string().contains("no parameter `layr`"));
        let mut m = LlmReducerConfig::from_name("mmtok").unwrap();
        m.set_param("lambda", "0.25").unwrap();
        assert_eq!(m, LlmReducerConfig::Mmtok(mmtok::MmtokConfig { lambda: 0.25, ..Default::default() }));
        assert_eq!(m.layer(32), None);
    }

    #[test]
    fn layers_move() {
        let ctx = LlmContext { num_layers: 32, num_image_tokens: 576, grid: (24, 24) };
        let mut s = LlmReducerConfig::from_name("sparsevlm").unwrap();
        assert_eq!(s.layer(32), Some(2));
        s.set_layer(4, 32);
        assert_eq!(
            s.sites(&ctx).unwrap(),
            [LlmSite::PreLlm, LlmSite::AfterLayer(4), LlmSite::AfterLayer(8), LlmSite::AfterLayer(17)]
        );
        let mut f = LlmReducerConfig::from_name("fastv").unwrap();
        assert_eq!(f.sites(&ctx).unwrap(), [LlmSite::AfterLayer(1)]);
        f.set_layer(3, 32);
        assert_eq!(f.sites(&ctx).unwrap(), [LlmSite::AfterLayer(2)]);
        let mut t = LlmReducerConfig::from_name("todre").unwrap();
        t.set_layer(30, 32);
        assert_eq!(t.sites(&ctx).unwrap(), [LlmSite::PreLlm, LlmSite::AfterLayer(30)]);
        assert_eq!(LlmReducerConfig::from_name("mmtok").unwrap().sites(&ctx).unwrap(), [LlmSite::PreLlm]);
        assert_eq!(f.stage(&ctx).unwrap(), Stage::Llm(2));
        assert_eq!(t.stage(&ctx).unwrap(), Stage::PreLlm);
        assert_eq!(s.stage(&ctx).unwrap(), Stage::Llm(4));
        // Out of range: a clear error.
        f.set_layer(33, 32);
        assert!(f.stage(&ctx).unwrap_err().to_string().contains("1..=32"));
    }

    #[test]
    fn layer_average_by_hand() {
        // 4 layers, 10 rows; 6 after layer 0, 2 after layer 2: (10 + 6 + 6 + 2) / 4 = 6.
        let s = [(LlmSite::AfterLayer(0), 6), (LlmSite::AfterLayer(2), 2)];
        assert_eq!(layer_averaged_rows(4, 10, &s), 6.0);
        assert_eq!(layer_averaged_rows(4, 10, &[(LlmSite::PreLlm, 3)]), 3.0);
        assert_eq!(layer_averaged_rows(4, 10, &[]), 10.0);
        // After the last layer: nothing follows.
        assert_eq!(layer_averaged_rows(4, 10, &[(LlmSite::AfterLayer(3), 0)]), 10.0);
    }
}
