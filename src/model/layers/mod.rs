//! Transformer building blocks with inspection: the attention returns its probabilities and
//! keys when asked, and a block runs in two halves so a reducer can act between attention and
//! MLP (where ToMe merges).
//!
//! # Design
//! Question: the fused CPU kernels that make the encoders fast read `f32` slices in host memory;
//! how does the same model run on a GPU?
//! Decision: each block is built for its device ([`kernels::fused`]): on the CPU the fused
//! kernels ([`fused`]), elsewhere the same steps as candle tensor ops ([`ops`]), which every
//! backend implements. The checkpoint names, the shapes checked and what is recorded are shared.
//! Trade-off: two implementations of one block; the tests run the tensor-op path on the CPU
//! too ([`kernels::set_fused`]) against the same references.

mod fused;
mod ops;

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::config::{BlockNames, VitConfig};
use super::kernels;
use super::quant::{Linears, QuantCount, QuantWeight, Quantize};

/// A block's quantized layers already made (the quantized cache's), by part (`qkv`, `out`,
/// `fc1`, `fc2`) and `[out, in]`.
pub type Cached<'a> = &'a dyn Fn(&str, (usize, usize)) -> Option<QuantWeight>;
use crate::{Error, Result};

/// What one attention call recorded besides its output.
#[derive(Debug, Clone, Default)]
pub struct AttnRecord {
    /// `[1, heads, tokens, tokens]`, if requested.
    pub probs: Option<Tensor>,
    /// `[1, heads, tokens, head_dim]`, if requested.
    pub keys: Option<Tensor>,
}

/// A pre-norm transformer block: `x + ls1·attn(norm1(x))`, then `x + ls2·mlp(norm2(x))`.
pub enum Block {
    /// Boxed: a block is built once and used by reference; the variants differ in size.
    Fused(Box<fused::Block>),
    Ops(ops::Block),
}

impl Block {
    /// `vb` at the block's subtree; built for `vb`'s device.
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        Self::new_cached(cfg, vb, &|_, _| None)
    }

    /// [`Block::new`], the linear layers `cached` gives quantized blocks for not read in f32
    /// (the CPU kernels; elsewhere quantized layers are refused anyway).
    pub fn new_cached(cfg: &VitConfig, vb: VarBuilder, cached: Cached) -> Result<Self> {
        Ok(match kernels::fused(vb.device()) {
            true => Block::Fused(Box::new(fused::Block::new(cfg, vb, cached)?)),
            false => Block::Ops(ops::Block::new(cfg, vb)?),
        })
    }

    /// First half: the attention residual branch. Returns the new hidden states and what the
    /// attention recorded.
    ///
    /// # Shapes
    /// `xs`: `[1, tokens, dim]`; `bias`: `[1, 1, 1, tokens]` or `[1, 1, tokens, tokens]`.
    pub fn attend(
        &self,
        xs: &Tensor,
        bias: Option<&Tensor>,
        want_probs: bool,
        want_keys: bool,
    ) -> Result<(Tensor, AttnRecord)> {
        match self {
            Block::Fused(b) => b.attend(xs, bias, want_probs, want_keys),
            Block::Ops(b) => b.attend(xs, bias, want_probs, want_keys),
        }
    }

    /// Quantizes the block's linear layers (the attention's fused QKV and output, the MLP's two)
    /// whose input width fits `format`'s blocks, counting them; read from `linears`' cache by
    /// `prefix` (the block's) where it holds them. CPU kernels only.
    pub fn quantize_linears(&mut self, format: Quantize, prefix: &str, linears: &Linears) -> Result<QuantCount> {
        match self {
            Block::Fused(b) => b.quantize_linears(format, prefix, linears),
            Block::Ops(_) => Err(Error::Config {
                field: "--quantize",
                reason: "quantized layers run on the CPU kernels only".into(),
            }),
        }
    }

    /// Second half: the MLP residual branch.
    pub fn feed_forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Block::Fused(b) => b.feed_forward(xs),
            Block::Ops(b) => b.feed_forward(xs),
        }
    }
}

/// `fc2(act(fc1(x)))`.
pub enum Mlp {
    Fused(fused::Mlp),
    Ops(ops::Mlp),
}

impl Mlp {
    /// `vb_fc1` / `vb_fc2`: the two projections (`mlp.fc1` or `intermediate.dense`, ...).
    pub fn new(cfg: &VitConfig, vb_fc1: VarBuilder, vb_fc2: VarBuilder) -> Result<Self> {
        Ok(match kernels::fused(vb_fc1.device()) {
            true => Mlp::Fused(fused::Mlp::new(cfg, vb_fc1, vb_fc2, &|_, _| None)?),
            false => Mlp::Ops(ops::Mlp::new(cfg, vb_fc1, vb_fc2)?),
        })
    }
}

impl Module for Mlp {
    /// `[..., d]` -> `[..., d]`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Mlp::Fused(m) => m.forward(xs),
            Mlp::Ops(m) => m.forward(xs),
        }
    }
}

/// A block's parts under each family's checkpoint names.
struct Names<'a> {
    norm1: &'static str,
    attention: &'static str,
    norm2: &'static str,
    fc1: VarBuilder<'a>,
    fc2: VarBuilder<'a>,
}

impl<'a> Names<'a> {
    fn block(names: BlockNames, vb: &VarBuilder<'a>) -> Self {
        let (norm1, attention, norm2, fc1, fc2) = match names {
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
        Self { norm1, attention, norm2, fc1, fc2 }
    }

    /// The query, key, value and output projections of the attention subtree `vb`.
    fn attention(
        names: BlockNames,
        vb: VarBuilder<'a>,
    ) -> (VarBuilder<'a>, VarBuilder<'a>, VarBuilder<'a>, VarBuilder<'a>) {
        match names {
            BlockNames::Clip => (vb.pp("q_proj"), vb.pp("k_proj"), vb.pp("v_proj"), vb.pp("out_proj")),
            BlockNames::Dinov2 | BlockNames::Vit => {
                let inner = vb.pp("attention");
                (inner.pp("query"), inner.pp("key"), inner.pp("value"), vb.pp("output").pp("dense"))
            }
        }
    }
}

/// Checks an additive attention bias over `n` tokens: `[1, 1, 1, n]` (one row for every query:
/// `false`) or `[1, 1, n, n]` (a row per query: `true`).
fn bias_shape(bias: &Tensor, n: usize) -> Result<bool> {
    let dims = bias.dims();
    let (q, k) = match dims {
        [1, 1, q, k] => (*q, *k),
        _ => (0, 0),
    };
    if k != n || (q != 1 && q != n) {
        return Err(Error::Config {
            field: "attention bias",
            reason: format!("expected [1, 1, 1 or {n}, {n}], got {dims:?}"),
        });
    }
    Ok(q != 1)
}

/// The token count of `[1, tokens, d]` hidden states.
fn tokens(xs: &Tensor, d: usize) -> Result<usize> {
    match xs.dims() {
        [1, n, dd] if *dd == d => Ok(*n),
        dims => {
            Err(Error::Config { field: "hidden states", reason: format!("expected [1, tokens, {d}], got {dims:?}") })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// The fused block, whose attention runs queries in tiles, against the tensor-op block on
    /// the same random weights: 600 tokens (a tile and a larger last one), no bias, one bias
    /// row for every query or a row per query, probabilities recorded or not.
    #[test]
    fn fused_attention_matches_tensor_ops_across_tiles() {
        let dev = Device::Cpu;
        let cfg =
            VitConfig { hidden_size: 128, num_attention_heads: 2, intermediate_size: 256, ..VitConfig::dinov2_small() };
        let (d, n) = (cfg.hidden_size, 600);
        let randn = |shape: &[usize], std: f32| Tensor::randn(0f32, std, shape, &dev).unwrap();
        let mut w: HashMap<String, Tensor> = HashMap::new();
        // Weights scaled so the states stay near unit size, where 1e-4 is a tight tolerance.
        let mut dense = |name: &str, out: usize, inp: usize| {
            w.insert(format!("{name}.weight"), randn(&[out, inp], (inp as f32).powf(-0.5)));
            w.insert(format!("{name}.bias"), randn(&[out], 0.1));
        };
        for part in ["query", "key", "value"] {
            dense(&format!("attention.attention.{part}"), d, d);
        }
        dense("attention.output.dense", d, d);
        dense("mlp.fc1", cfg.intermediate_size, d);
        dense("mlp.fc2", d, cfg.intermediate_size);
        for name in
            ["norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "layer_scale1.lambda1", "layer_scale2.lambda1"]
        {
            w.insert(name.into(), randn(&[d], 1.0));
        }
        let vb = VarBuilder::from_tensors(w, DType::F32, &dev);
        let fused = fused::Block::new(&cfg, vb.clone(), &|_, _| None).unwrap();
        let ops = ops::Block::new(&cfg, vb).unwrap();
        let xs = randn(&[1, n, d], 1.0);
        let (row, per_query) = (randn(&[1, 1, 1, n], 1.0), randn(&[1, 1, n, n], 1.0));
        for bias in [None, Some(&row), Some(&per_query)] {
            for want_probs in [true, false] {
                let (a, rec_a) = fused.attend(&xs, bias, want_probs, true).unwrap();
                let (b, rec_b) = ops.attend(&xs, bias, want_probs, true).unwrap();
                assert!(max_diff(&a, &b) < 1e-4, "states differ by {}", max_diff(&a, &b));
                assert!(max_diff(rec_a.keys.as_ref().unwrap(), rec_b.keys.as_ref().unwrap()) < 1e-4);
                match (rec_a.probs, rec_b.probs) {
                    (Some(pa), Some(pb)) => assert!(max_diff(&pa, &pb) < 1e-5, "probabilities differ"),
                    (None, None) => assert!(!want_probs),
                    _ => panic!("one path recorded probabilities, the other did not"),
                }
            }
        }
        assert!(max_diff(&fused.feed_forward(&xs).unwrap(), &ops.feed_forward(&xs).unwrap()) < 1e-4);
    }
}
