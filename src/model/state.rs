//! The token state that flows through the encoder and that reducers change between blocks.

use candle_core::{DType, Tensor};

use crate::Result;

/// Tokens in flight, with the provenance every overlay needs to map a token back to pixels.
///
/// Invariants: the first `num_special` tokens are CLS / registers (never reduced, empty
/// `source`); `sizes[i] == source[i].len()` for patch-derived tokens; vectors have one entry per
/// token of `hidden`.
#[derive(Debug, Clone)]
pub struct TokenState {
    /// `[1, tokens, dim]`.
    pub hidden: Tensor,
    /// Original patches each token stands for (1 for an untouched patch; special tokens: 1).
    pub sizes: Vec<f32>,
    /// For each token, the original patch indices (raster order over the grid) it stands for.
    pub source: Vec<Vec<u32>>,
    /// Position ids carried downstream (for a ViT: 0 = CLS, 1 + patch index).
    pub positions: Vec<u32>,
    /// Leading special tokens (CLS, registers).
    pub num_special: usize,
    /// Original patch grid (rows, cols).
    pub grid: (usize, usize),
    /// Blocks already applied: a state with `layer == l` resumes at block `l`.
    pub layer: usize,
    /// ToMe's proportional attention: add `log(size)` to the attention logits of each key.
    pub proportional_attention: bool,
}

impl TokenState {
    /// The state right after embedding: specials first, then one token per patch in raster order.
    pub fn fresh(hidden: Tensor, num_special: usize, grid: (usize, usize)) -> Self {
        let num_patches = grid.0 * grid.1;
        let source = (0..num_special).map(|_| Vec::new()).chain((0..num_patches as u32).map(|p| vec![p])).collect();
        Self {
            hidden,
            sizes: vec![1.0; num_special + num_patches],
            source,
            positions: (0..(num_special + num_patches) as u32).collect(),
            num_special,
            grid,
            layer: 0,
            proportional_attention: false,
        }
    }

    pub fn num_tokens(&self) -> usize {
        self.sizes.len()
    }

    pub fn num_patches(&self) -> usize {
        self.grid.0 * self.grid.1
    }

    /// `[1, 1, 1, tokens]` additive bias `log(size)` for the attention logits, when
    /// proportional attention is on and some token stands for more than one patch.
    pub fn attention_bias(&self) -> Result<Option<Tensor>> {
        if !self.proportional_attention || self.sizes.iter().all(|&s| s == 1.0) {
            return Ok(None);
        }
        let logs: Vec<f32> = self.sizes.iter().map(|s| s.ln()).collect();
        let n = logs.len();
        Ok(Some(Tensor::from_vec(logs, (1, 1, 1, n), self.hidden.device())?.to_dtype(DType::F32)?))
    }
}
