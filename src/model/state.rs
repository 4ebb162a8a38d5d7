//! The token state that flows through the encoder and the decoder, and that reducers change
//! between blocks and layers.

use candle_core::{DType, Tensor};

use crate::Result;

/// What a row of a [`TokenState`] is; only image rows are ever dropped or merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An encoder's CLS or register token.
    Special,
    /// A language model's prompt token (chat template, question, special tokens).
    Text,
    /// A token standing for original image patches (encoder) or image tokens (decoder).
    Image,
}

/// Tokens in flight, with the provenance every overlay needs to map a token back to pixels: an
/// encoder's tokens, or a language model's rows (text and image tokens in prompt order).
///
/// Invariants: the first `num_special` tokens are CLS / registers (never reduced, empty
/// `source`); text rows have empty `source` and size 1; `sizes[i] == source[i].len()` for
/// image rows; vectors have one entry per token of `hidden`.
#[derive(Debug, Clone)]
pub struct TokenState {
    /// `[1, tokens, dim]`.
    pub hidden: Tensor,
    /// Original patches each token stands for (1 for an untouched patch; special tokens: 1).
    pub sizes: Vec<f32>,
    /// For each token, the original patch indices (raster order over the grid) it stands for.
    pub source: Vec<Vec<u32>>,
    /// Each token's role.
    pub roles: Vec<Role>,
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
            roles: (0..num_special + num_patches)
                .map(|i| if i < num_special { Role::Special } else { Role::Image })
                .collect(),
            positions: (0..(num_special + num_patches) as u32).collect(),
            num_special,
            grid,
            layer: 0,
            proportional_attention: false,
        }
    }

    /// A language model's rows: `image[i]` lists the original image tokens row `i` stands for,
    /// None for a text row; positions 0..n. `grid`: the image tokens' grid (raster order).
    pub fn sequence(hidden: Tensor, image: Vec<Option<Vec<u32>>>, grid: (usize, usize)) -> Self {
        let n = image.len();
        let roles = image.iter().map(|t| if t.is_some() { Role::Image } else { Role::Text }).collect();
        let source: Vec<Vec<u32>> = image.into_iter().map(Option::unwrap_or_default).collect();
        Self {
            hidden,
            sizes: source.iter().map(|s| if s.is_empty() { 1.0 } else { s.len() as f32 }).collect(),
            source,
            roles,
            positions: (0..n as u32).collect(),
            num_special: 0,
            grid,
            layer: 0,
            proportional_attention: false,
        }
    }

    pub fn is_image(&self, token: usize) -> bool {
        self.roles[token] == Role::Image
    }

    /// Indices of the image tokens, in order.
    pub fn image_rows(&self) -> Vec<usize> {
        (0..self.num_tokens()).filter(|&i| self.is_image(i)).collect()
    }

    /// Indices of the text rows (a language model's prompt tokens), in order.
    pub fn text_rows(&self) -> Vec<usize> {
        (0..self.num_tokens()).filter(|&i| self.roles[i] == Role::Text).collect()
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
