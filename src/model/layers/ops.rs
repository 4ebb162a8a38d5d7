//! The blocks as candle tensor ops: the path every device runs where the fused CPU kernels do
//! not ([`super::super::kernels::fused`]). The same steps as [`super::fused`]: one QKV
//! projection with Q's rows pre-scaled by `1/sqrt(head_dim)`, softmax over the logits plus the
//! bias, the output projection, the residuals with DINOv2's layer scale.

use candle_core::{Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::super::config::{Activation, VitConfig};
use super::{AttnRecord, Names, bias_shape, tokens};
use crate::Result;

fn linear(inp: usize, out: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let b = if bias { Some(vb.get(out, "bias")?) } else { None };
    Ok(Linear::new(vb.get((out, inp), "weight")?, b))
}

fn norm(d: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm::new(vb.get(d, "weight")?, vb.get(d, "bias")?, eps))
}

struct Attention {
    qkv: Linear,
    output: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let (q, k, v, out) = Names::attention(cfg.block_names, vb);
        let scale = (cfg.head_dim() as f64).powf(-0.5);
        let (mut weights, mut biases) = (Vec::with_capacity(3), Vec::with_capacity(3));
        for (i, vb) in [q, k, v].into_iter().enumerate() {
            let part = linear(d, d, cfg.qkv_bias, vb)?;
            let s = if i == 0 { scale } else { 1.0 };
            weights.push((part.weight() * s)?);
            biases.extend(part.bias().map(|b| b * s));
        }
        let bias = match biases.len() {
            3 => Some(Tensor::cat(&biases.into_iter().collect::<candle_core::Result<Vec<_>>>()?, 0)?),
            _ => None,
        };
        Ok(Self {
            qkv: Linear::new(Tensor::cat(&weights, 0)?, bias),
            output: linear(d, d, true, out)?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `softmax(q kᵀ / sqrt(head_dim) + bias) v` through the output projection.
    ///
    /// # Shapes
    /// `x`: `[1, n, d]` -> `[1, n, d]`.
    fn forward(&self, x: &Tensor, bias: Option<&Tensor>, want: (bool, bool)) -> Result<(Tensor, AttnRecord)> {
        let (h, hd) = (self.num_heads, self.head_dim);
        let n = x.dim(1)?;
        // [1, n, 3d] -> [3, 1, h, n, hd]
        let qkv = self.qkv.forward(x)?.reshape((1, n, 3, h, hd))?.permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (qkv.get(0)?.contiguous()?, qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?);
        let logits = q.matmul(&k.t()?)?;
        let logits = match bias {
            Some(b) => {
                bias_shape(b, n)?;
                logits.broadcast_add(b)?
            }
            None => logits,
        };
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((1, n, h * hd))?;
        let (want_probs, want_keys) = want;
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
    pub(super) fn new(cfg: &VitConfig, vb_fc1: VarBuilder, vb_fc2: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(cfg.hidden_size, cfg.intermediate_size, true, vb_fc1)?,
            fc2: linear(cfg.intermediate_size, cfg.hidden_size, true, vb_fc2)?,
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

/// DINOv2's learned per-channel residual scale (`layer_scale*.lambda1`); `None` when absent.
fn layer_scale(enabled: bool, dim: usize, vb: VarBuilder) -> Result<Option<Tensor>> {
    Ok(if enabled { Some(vb.get(dim, "lambda1")?) } else { None })
}

/// `x + scale · branch`.
fn residual(x: &Tensor, branch: Tensor, scale: Option<&Tensor>) -> Result<Tensor> {
    let branch = match scale {
        Some(s) => branch.broadcast_mul(s)?,
        None => branch,
    };
    Ok((x + branch)?)
}

pub struct Block {
    norm1: LayerNorm,
    attention: Attention,
    layer_scale1: Option<Tensor>,
    norm2: LayerNorm,
    mlp: Mlp,
    layer_scale2: Option<Tensor>,
    dim: usize,
}

impl Block {
    pub(super) fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let Names { norm1, attention, norm2, fc1, fc2 } = Names::block(cfg.block_names, &vb);
        Ok(Self {
            norm1: norm(d, eps, vb.pp(norm1))?,
            attention: Attention::new(cfg, vb.pp(attention))?,
            layer_scale1: layer_scale(cfg.layerscale, d, vb.pp("layer_scale1"))?,
            norm2: norm(d, eps, vb.pp(norm2))?,
            mlp: Mlp::new(cfg, fc1, fc2)?,
            layer_scale2: layer_scale(cfg.layerscale, d, vb.pp("layer_scale2"))?,
            dim: d,
        })
    }

    pub(super) fn attend(
        &self,
        xs: &Tensor,
        bias: Option<&Tensor>,
        want_probs: bool,
        want_keys: bool,
    ) -> Result<(Tensor, AttnRecord)> {
        tokens(xs, self.dim)?;
        let (branch, record) = self.attention.forward(&self.norm1.forward(xs)?, bias, (want_probs, want_keys))?;
        Ok((residual(xs, branch, self.layer_scale1.as_ref())?, record))
    }

    pub(super) fn feed_forward(&self, xs: &Tensor) -> Result<Tensor> {
        tokens(xs, self.dim)?;
        let branch = self.mlp.forward(&self.norm2.forward(xs)?)?;
        residual(xs, branch, self.layer_scale2.as_ref())
    }
}
