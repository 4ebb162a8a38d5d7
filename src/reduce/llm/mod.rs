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

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

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
}

pub trait LlmReducer {
    /// Sites where [`LlmReducer::plan`] is called, in forward order.
    fn sites(&self) -> Vec<LlmSite>;
    /// Whether decoder layer `layer`'s attention must be materialised for a plan after it.
    fn needs_attention(&self, _layer: usize) -> bool {
        false
    }
    fn plan(&mut self, view: &LlmView<'_>) -> Result<LlmPlan>;
}

/// Every language-side method, with its parameters. `serde` tag `method` (names distinct from
/// the vision-side methods'); unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum LlmReducerConfig {}

impl LlmReducerConfig {
    /// Every method with its default parameters, in menu order.
    pub fn defaults() -> Vec<LlmReducerConfig> {
        vec![]
    }

    pub fn name(&self) -> &'static str {
        match *self {}
    }

    /// Builds the reducer for a run keeping `keep` image tokens (layer-averaged for methods
    /// that prune at several layers).
    pub fn build(&self, _keep: usize, _ctx: &LlmContext) -> Result<Box<dyn LlmReducer>> {
        match *self {}
    }

    /// The default config of the method called `name`.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::defaults()
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| Error::Config { field: "reducer", reason: format!("unknown language-side method `{name}`") })
    }
}
