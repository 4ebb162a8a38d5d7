//! Theoretical cost per REDUCERS.md: a transformer layer with n tokens, width d and MLP width m
//! costs about 2 (4 n d² + 2 n² d + k n d m) FLOPs, k = 2 for GELU MLPs. A block that merges
//! mid-way (ToMe) runs attention on n_attn tokens and the MLP on n_mlp.

use serde::{Deserialize, Serialize};

/// Tokens one block saw: in its attention and in its MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockTokens {
    pub attn: usize,
    pub mlp: usize,
}

/// FLOPs of one block (multiply-adds counted as 2).
pub fn block_flops(t: BlockTokens, d: usize, m: usize, mlp_mats: usize) -> f64 {
    let (na, nm, d, m) = (t.attn as f64, t.mlp as f64, d as f64, m as f64);
    2.0 * (4.0 * na * d * d + 2.0 * na * na * d) + 2.0 * (mlp_mats as f64 * nm * d * m)
}

pub fn encoder_flops(blocks: &[BlockTokens], d: usize, m: usize) -> f64 {
    blocks.iter().map(|&t| block_flops(t, d, m, 2)).sum()
}

/// FLOPs of one Llama-family decoder layer on `n` tokens: REDUCERS.md's formula with the key and
/// value projections at their grouped-query width `kv_dim` and a gated, three-matrix MLP.
pub fn decoder_layer_flops(n: usize, d: usize, kv_dim: usize, m: usize) -> f64 {
    let (n, d, kv, m) = (n as f64, d as f64, kv_dim as f64, m as f64);
    2.0 * (2.0 * n * d * d + 2.0 * n * d * kv + 2.0 * n * n * d) + 2.0 * 3.0 * n * d * m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_by_hand() {
        // n = 2, d = 1, m = 1, k = 2: 2 (4*2 + 2*4) + 2 (2*2) = 32 + 8 = 40.
        assert_eq!(block_flops(BlockTokens { attn: 2, mlp: 2 }, 1, 1, 2), 40.0);
        // DINOv2-S at 257 tokens, per block: 2 (4·257·384² + 2·257²·384 + 2·257·384·1536)
        // = 1 010 959 872; twelve blocks: 12.13 GFLOPs.
        let full = encoder_flops(&[BlockTokens { attn: 257, mlp: 257 }; 12], 384, 1536);
        assert_eq!(full, 12.0 * 1_010_959_872.0);
    }

    #[test]
    fn decoder_layer_by_hand() {
        // n = 2, d = 4, kv = 2, m = 8: 2 (2*2*16 + 2*2*4*2 + 2*4*4) + 6*2*4*8 = 2 (64 + 32 + 32) + 384 = 640.
        assert_eq!(decoder_layer_flops(2, 4, 2, 8), 640.0);
        // Without grouped queries (kv = d) and with a two-matrix MLP it is the encoder formula.
        let gqa_free = decoder_layer_flops(3, 4, 4, 8) - 2.0 * 3.0 * 4.0 * 8.0;
        assert_eq!(gqa_free, block_flops(BlockTokens { attn: 3, mlp: 3 }, 4, 8, 2));
    }
}
