//! Transformer building blocks with inspection: the attention returns its probabilities and
//! keys when asked, and a block runs in two halves so a reducer can act between attention and
//! MLP (where ToMe merges).

use candle_core::{Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder, layer_norm, linear, linear_b};

use super::config::{Activation, BlockNames, VitConfig};
use crate::Result;

/// Multi-head self-attention (Hugging Face `Dinov2Attention` / `ViTAttention` names).
pub struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    num_heads: usize,
    head_dim: usize,
}

/// What one attention call recorded besides its output.
#[derive(Debug, Clone, Default)]
pub struct AttnRecord {
    /// `[1, heads, tokens, tokens]`, if requested.
    pub probs: Option<Tensor>,
    /// `[1, heads, tokens, head_dim]`, if requested.
    pub keys: Option<Tensor>,
}

impl Attention {
    /// `vb` at the attention subtree (`attention` or `self_attn`).
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let (q, k, v, out) = match cfg.block_names {
            BlockNames::Clip => (vb.pp("q_proj"), vb.pp("k_proj"), vb.pp("v_proj"), vb.pp("out_proj")),
            BlockNames::Dinov2 | BlockNames::Vit => {
                let inner = vb.pp("attention");
                (inner.pp("query"), inner.pp("key"), inner.pp("value"), vb.pp("output").pp("dense"))
            }
        };
        Ok(Self {
            query: linear_b(d, d, cfg.qkv_bias, q)?,
            key: linear_b(d, d, cfg.qkv_bias, k)?,
            value: linear_b(d, d, cfg.qkv_bias, v)?,
            output: linear(d, d, out)?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `softmax(q kᵀ / sqrt(head_dim) + bias) v` through the output projection, with `bias`
    /// broadcast over the logits.
    ///
    /// # Shapes
    /// `xs`: `[1, tokens, dim]` -> `[1, tokens, dim]`; `bias`: `[1, 1, 1, tokens]`.
    pub fn forward(
        &self,
        xs: &Tensor,
        bias: Option<&Tensor>,
        want_probs: bool,
        want_keys: bool,
    ) -> Result<(Tensor, AttnRecord)> {
        let (b, n, d) = xs.dims3()?;
        let heads = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, n, self.num_heads, self.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads(self.query.forward(xs)?)?;
        let k = heads(self.key.forward(xs)?)?;
        let v = heads(self.value.forward(xs)?)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let mut logits = (q.matmul(&k.t()?)? * scale)?;
        if let Some(bias) = bias {
            logits = logits.broadcast_add(bias)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?;
        let record = AttnRecord { probs: want_probs.then_some(probs), keys: want_keys.then_some(k) };
        Ok((self.output.forward(&ctx)?, record))
    }
}

pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    /// `vb_fc1` / `vb_fc2`: the two projections (`mlp.fc1` or `intermediate.dense`, ...).
    pub fn new(cfg: &VitConfig, vb_fc1: VarBuilder, vb_fc2: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(cfg.hidden_size, cfg.intermediate_size, vb_fc1)?,
            fc2: linear(cfg.intermediate_size, cfg.hidden_size, vb_fc2)?,
            act: cfg.hidden_act,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.fc1.forward(xs)?;
        let h = match self.act {
            Activation::Gelu => h.gelu_erf()?,
            Activation::GeluPytorchTanh => h.gelu()?,
            Activation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
        };
        self.fc2.forward(&h)
    }
}

/// DINOv2's learned per-channel residual scale (`layer_scale*.lambda1`); identity when absent.
struct LayerScale(Option<Tensor>);

impl LayerScale {
    fn new(enabled: bool, dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self(if enabled { Some(vb.get(dim, "lambda1")?) } else { None }))
    }

    fn forward(&self, xs: Tensor) -> Result<Tensor> {
        Ok(match &self.0 {
            Some(lambda) => xs.broadcast_mul(lambda)?,
            None => xs,
        })
    }
}

/// A pre-norm transformer block: `x + ls1·attn(norm1(x))`, then `x + ls2·mlp(norm2(x))`.
pub struct Block {
    norm1: LayerNorm,
    attention: Attention,
    layer_scale1: LayerScale,
    norm2: LayerNorm,
    mlp: Mlp,
    layer_scale2: LayerScale,
}

impl Block {
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        // The same computation under each family's checkpoint names.
        let (norm1, attention, norm2, fc1, fc2) = match cfg.block_names {
            BlockNames::Dinov2 => ("norm1", "attention", "norm2", vb.pp("mlp").pp("fc1"), vb.pp("mlp").pp("fc2")),
            BlockNames::Vit => (
                "layernorm_before",
                "attention",
                "layernorm_after",
                vb.pp("intermediate").pp("dense"),
                vb.pp("output").pp("dense"),
            ),
            BlockNames::Clip => {
                ("layer_norm1", "self_attn", "layer_norm2", vb.pp("mlp").pp("fc1"), vb.pp("mlp").pp("fc2"))
            }
        };
        Ok(Self {
            norm1: layer_norm(d, eps, vb.pp(norm1))?,
            attention: Attention::new(cfg, vb.pp(attention))?,
            layer_scale1: LayerScale::new(cfg.layerscale, d, vb.pp("layer_scale1"))?,
            norm2: layer_norm(d, eps, vb.pp(norm2))?,
            mlp: Mlp::new(cfg, fc1, fc2)?,
            layer_scale2: LayerScale::new(cfg.layerscale, d, vb.pp("layer_scale2"))?,
        })
    }

    /// First half: the attention residual branch. Returns the new hidden states and what the
    /// attention recorded.
    pub fn attend(
        &self,
        xs: &Tensor,
        bias: Option<&Tensor>,
        want_probs: bool,
        want_keys: bool,
    ) -> Result<(Tensor, AttnRecord)> {
        let (branch, record) = self.attention.forward(&self.norm1.forward(xs)?, bias, want_probs, want_keys)?;
        Ok(((self.layer_scale1.forward(branch)? + xs)?, record))
    }

    /// Second half: the MLP residual branch.
    pub fn feed_forward(&self, xs: &Tensor) -> Result<Tensor> {
        let branch = self.mlp.forward(&self.norm2.forward(xs)?)?;
        Ok((self.layer_scale2.forward(branch)? + xs)?)
    }
}
