//! Inspection points: the caller says what to record in a [`Probe`], the model fills a
//! [`Trace`]. A point nobody asked for costs one set lookup and no tensor work.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use candle_core::Tensor;

use crate::{Error, Result};

/// A place inside the encoder (`blocks.*`) or a VLM's decoder (`llm.*`) where a tensor can be
/// recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// Post-softmax attention of block `i`, `[1, heads, q, k]` (`blocks.{i}.attn.probs`).
    AttnProbs(usize),
    /// Keys of block `i`, `[1, heads, tokens, head_dim]` (`blocks.{i}.attn.keys`).
    Keys(usize),
    /// Hidden states after block `i`, `[1, tokens, dim]` (`blocks.{i}.resid_post`).
    Resid(usize),
    /// L2 norm of each token after block `i`, `[tokens]` (`blocks.{i}.token_norms`).
    TokenNorms(usize),
    /// Hidden states entering decoder layer `i`, `[1, n, d]` (`llm.{i}.resid_pre`; layer 0's are
    /// the input embeddings).
    LlmResidPre(usize),
    /// Post-softmax attention of decoder layer `i`, `[1, heads, n, cached + n]` (`llm.{i}.attn.probs`).
    LlmAttnProbs(usize),
    /// Hidden states leaving decoder layer `i`, before any reduction after it, `[1, n, d]`
    /// (`llm.{i}.resid_post`).
    LlmResid(usize),
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AttnProbs(i) => write!(f, "blocks.{i}.attn.probs"),
            Self::Keys(i) => write!(f, "blocks.{i}.attn.keys"),
            Self::Resid(i) => write!(f, "blocks.{i}.resid_post"),
            Self::TokenNorms(i) => write!(f, "blocks.{i}.token_norms"),
            Self::LlmResidPre(i) => write!(f, "llm.{i}.resid_pre"),
            Self::LlmAttnProbs(i) => write!(f, "llm.{i}.attn.probs"),
            Self::LlmResid(i) => write!(f, "llm.{i}.resid_post"),
        }
    }
}

/// The set of points to record. `Probe::default()` records nothing (the fast path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    points: BTreeSet<HookPoint>,
}

impl Probe {
    pub fn with(mut self, point: HookPoint) -> Self {
        self.points.insert(point);
        self
    }

    /// Every point of `points` too.
    pub fn with_all(mut self, points: impl IntoIterator<Item = HookPoint>) -> Self {
        self.points.extend(points);
        self
    }

    /// Attention probabilities of every block.
    pub fn attention(num_layers: usize) -> Self {
        Self { points: (0..num_layers).map(HookPoint::AttnProbs).collect() }
    }

    pub fn wants(&self, point: HookPoint) -> bool {
        self.points.contains(&point)
    }

    /// Records the tensor `make` builds, only if `point` was requested.
    pub fn tap(&self, point: HookPoint, trace: &mut Trace, make: impl FnOnce() -> Result<Tensor>) -> Result<()> {
        if self.wants(point) {
            trace.map.insert(point, make()?);
        }
        Ok(())
    }
}

/// What a forward pass recorded.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    map: BTreeMap<HookPoint, Tensor>,
}

impl Trace {
    pub fn get(&self, point: HookPoint) -> Option<&Tensor> {
        self.map.get(&point)
    }

    /// The tensor at `point`, or an error naming the point that was not captured.
    pub fn require(&self, point: HookPoint) -> Result<&Tensor> {
        self.get(point).ok_or_else(|| Error::Config { field: "probe", reason: format!("{point} was not captured") })
    }

    pub fn points(&self) -> impl Iterator<Item = &HookPoint> {
        self.map.keys()
    }

    /// Moves the tensor at `point` out of the trace.
    pub fn take(&mut self, point: HookPoint) -> Option<Tensor> {
        self.map.remove(&point)
    }

    /// Keeps the records of `other` too (a resumed run adds to the prefix's trace).
    pub fn extend(&mut self, other: Trace) {
        self.map.extend(other.map);
    }
}
