//! The blocks on the fused CPU kernels ([`crate::model::kernels`]): weights as plain `f32`
//! vectors, every step on slices.

use candle_core::{Device, Module, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::super::config::{Activation, VitConfig};
use super::super::kernels::{self, Act, View, gemm, transposed, with_scratch, with_slice};
use super::super::quant::{Linears, QuantCount, QuantWeight, Quantize};
use super::{AttnRecord, Cached, Names, bias_shape, tokens};
use crate::Result;

/// A linear layer's weight, stored transposed as `[in, out]` (checkpoints store `[out, in]`), and
/// bias `[out]`; once [`Dense::quantize`]d, the weight is its GGML blocks alone.
struct Dense {
    /// `Wᵀ`, `[in, out]` row-major: gemm's micro-kernel runs along the output columns, and with a
    /// unit stride there (and a width a multiple of 16) it packs the weight into its per-thread
    /// buffer instead of allocating a copy of the whole weight on every call.
    weight_t: Vec<f32>,
    /// Boxed: most towers are never quantized, and `Dense` sits in several enums' variants.
    quantized: Option<Box<QuantWeight>>,
    bias: Vec<f32>,
    out: usize,
    inp: usize,
}

impl Dense {
    /// The layer at `vb`; with `cached` blocks (the quantized cache's) its weight is not read.
    fn load(inp: usize, out: usize, bias: bool, vb: VarBuilder, cached: Option<QuantWeight>) -> Result<Self> {
        let (weight, quantized) = match cached {
            Some(q) => (Vec::new(), Some(Box::new(q))),
            None => (transposed(&vb.get((out, inp), "weight")?.flatten_all()?.to_vec1()?, out, inp), None),
        };
        Ok(Self { weight_t: weight, quantized, bias: load_bias(out, bias, &vb)?, out, inp })
    }

    /// The weight quantized to `format` (its f32 values freed), or read from the cache by
    /// `name`; the bias stays f32. A layer loaded quantized is counted as it is.
    fn quantize(&mut self, format: Quantize, name: &str, linears: &Linears) -> Result<QuantCount> {
        if let Some(q) = &self.quantized {
            return Ok(QuantCount { quantized: 1, bytes: q.size_in_bytes() as u64, ..QuantCount::default() });
        }
        let (weight_t, shape) = (std::mem::take(&mut self.weight_t), (self.out, self.inp));
        let q = linears.quantized(name, format, shape, || {
            let weight = transposed(&weight_t, shape.1, shape.0); // back to `[out, in]` rows
            QuantWeight::quantize(&Tensor::from_vec(weight, shape, &Device::Cpu)?, format)
        })?;
        let count = QuantCount { quantized: 1, bytes: q.size_in_bytes() as u64, ..QuantCount::default() };
        self.quantized = Some(Box::new(q));
        Ok(count)
    }

    /// `x · Wᵀ` for `rows` rows of `x` into `y`, without the bias (the caller's epilogue adds it).
    fn matmul_into(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        if let Some(q) = &self.quantized {
            return q.matmul_into(x, rows, y);
        }
        let w = View::rows(&self.weight_t, self.inp, self.out);
        gemm(y, self.out, View::rows(x, rows, self.inp), w, false, kernels::threads());
    }

    fn matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = vec![0f32; rows * self.out];
        self.matmul_into(x, rows, &mut y);
        y
    }
}

/// The bias `[out]` at `vb`, zeros where the layer has none.
fn load_bias(out: usize, bias: bool, vb: &VarBuilder) -> Result<Vec<f32>> {
    Ok(if bias { vb.get(out, "bias")?.to_vec1()? } else { vec![0.0; out] })
}

/// LayerNorm weights (`weight`, `bias`) and epsilon.
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn load(d: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(d, "weight")?.to_vec1()?, bias: vb.get(d, "bias")?.to_vec1()?, eps: eps as f32 })
    }

    /// `f` on the normalised rows of `x` (in a scratch buffer).
    fn with<R>(&self, x: &[f32], f: impl FnOnce(&[f32]) -> R) -> R {
        with_scratch(x.len(), |out| {
            kernels::layer_norm(x, &self.weight, &self.bias, self.eps, out);
            f(out)
        })
    }
}

/// Multi-head self-attention (Hugging Face `Dinov2Attention` / `ViTAttention` names).
///
/// # Design
/// Q, K and V are one `[3d, d]` projection with Q's rows pre-scaled by `1/sqrt(head_dim)` (exact
/// for head_dim 64, a power of two). Each head reads its Q, K and V in place from the `[n, 3d]`
/// output through strides, and runs logits, softmax and `P·V` as one task; heads run in
/// parallel.
struct Attention {
    qkv: Dense,
    output: Dense,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// `vb` at the attention subtree (`attention` or `self_attn`).
    fn new(cfg: &VitConfig, vb: VarBuilder, cached: Cached) -> Result<Self> {
        let d = cfg.hidden_size;
        let (q, k, v, out) = Names::attention(cfg.block_names, vb);
        let scale = (cfg.head_dim() as f64).powf(-0.5) as f32;
        let fused = cached("qkv", (3 * d, d));
        let mut qkv = Dense {
            weight_t: Vec::new(),
            quantized: fused.map(Box::new),
            bias: Vec::with_capacity(3 * d),
            out: 3 * d,
            inp: d,
        };
        let mut rows = Vec::with_capacity(if qkv.quantized.is_some() { 0 } else { 3 * d * d });
        for (i, vb) in [q, k, v].into_iter().enumerate() {
            let s = if i == 0 { scale } else { 1.0 };
            if qkv.quantized.is_none() {
                let weight = vb.get((d, d), "weight")?.flatten_all()?.to_vec1::<f32>()?;
                rows.extend(weight.iter().map(|w| w * s));
            }
            qkv.bias.extend(load_bias(d, cfg.qkv_bias, &vb)?.iter().map(|b| b * s));
        }
        if qkv.quantized.is_none() {
            qkv.weight_t = transposed(&rows, 3 * d, d);
        }
        Ok(Self {
            qkv,
            output: Dense::load(d, d, true, out, cached("out", (d, d)))?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `softmax(q kᵀ / sqrt(head_dim) + bias) v` through the output projection, without the
    /// output bias (the residual epilogue adds it).
    ///
    /// # Shapes
    /// `x`: `[n, d]` -> `[n, d]`; `bias`: `[1, 1, 1, n]` or `[1, 1, n, n]`.
    fn forward(
        &self,
        x: &[f32],
        n: usize,
        bias: Option<&Tensor>,
        want: (bool, bool),
    ) -> Result<(Vec<f32>, AttnRecord)> {
        let (h, hd) = (self.num_heads, self.head_dim);
        let d = h * hd;
        let (want_probs, want_keys) = want;
        let bias = match bias {
            Some(b) => Some(attention_bias(b, n)?),
            None => None,
        };
        with_scratch(n * 3 * d, |qkv| {
            self.qkv.matmul_into(x, n, qkv);
            kernels::bias_activation(qkv, &self.qkv.bias, Act::None);
            let qkv = &*qkv;
            // Recorded probabilities become a tensor; otherwise each tile's live in scratch.
            let mut recorded = want_probs.then(|| vec![0f32; h * n * n]);
            let branch = with_scratch(n * d, |ctx| {
                self.heads(qkv, n, bias.as_ref(), recorded.as_deref_mut(), ctx);
                self.output.matmul(ctx, n)
            });
            let keys = want_keys.then(|| {
                let mut k = Vec::with_capacity(n * d);
                for head in 0..h {
                    for row in qkv.chunks(3 * d) {
                        k.extend_from_slice(&row[d + head * hd..][..hd]);
                    }
                }
                Tensor::from_vec(k, (1, h, n, hd), &candle_core::Device::Cpu)
            });
            let probs = recorded.map(|p| Tensor::from_vec(p, (1, h, n, n), &candle_core::Device::Cpu));
            Ok((branch, AttnRecord { probs: probs.transpose()?, keys: keys.transpose()? }))
        })
    }

    /// Per head, in parallel, [`TILE_ROWS`] queries at a time: logits `q kᵀ`, softmax with
    /// `bias` in place, then `P v` into the head's columns of `ctx` (`[n, d]`). The logits go
    /// to `probs` (`[heads, n, n]`) when recorded, else to a tile of scratch.
    fn heads(
        &self,
        qkv: &[f32],
        n: usize,
        bias: Option<&(Vec<f32>, usize)>,
        probs: Option<&mut [f32]>,
        ctx: &mut [f32],
    ) {
        let (h, hd) = (self.num_heads, self.head_dim);
        let d = h * hd;
        let head = |head: usize, probs: Option<&mut [f32]>| {
            let at = |part: usize, row: usize, rows: usize| {
                View::new(&qkv[row * 3 * d + part * d + head * hd..], rows, hd, 3 * d, 1)
            };
            let (keys, values) = (at(1, 0, n), at(2, 0, n));
            let mut out = vec![0f32; n * hd];
            // The tile's queries are rows `first..first + out.len() / hd`; `p` their logits.
            let tile = |first: usize, p: &mut [f32], out: &mut [f32]| {
                let rows = out.len() / hd;
                gemm(p, n, at(0, first, rows), keys.t(), false, 1);
                for (i, row) in p.chunks_mut(n).enumerate() {
                    kernels::softmax_row(row, bias.map(|(values, rs)| &values[(first + i) * rs..][..n]));
                }
                gemm(out, hd, View::rows(p, rows, n), values, false, 1);
            };
            // Tiles of TILE_ROWS queries, the last taking the remainder (so it is the largest,
            // and a head of fewer than 2 · TILE_ROWS tokens is one tile: DINOv2's 257).
            let tiles = (n / TILE_ROWS).max(1);
            let rows = |t: usize| if t + 1 == tiles { n - t * TILE_ROWS } else { TILE_ROWS };
            match probs {
                Some(p) => {
                    for t in 0..tiles {
                        let (first, r) = (t * TILE_ROWS, rows(t));
                        tile(first, &mut p[first * n..][..r * n], &mut out[first * hd..][..r * hd]);
                    }
                }
                None => with_scratch(rows(tiles - 1) * n, |p| {
                    for t in 0..tiles {
                        let (first, r) = (t * TILE_ROWS, rows(t));
                        tile(first, &mut p[..r * n], &mut out[first * hd..][..r * hd]);
                    }
                }),
            }
            out
        };
        let heads: Vec<Vec<f32>> = match probs {
            Some(p) => p.par_chunks_mut(n * n).enumerate().map(|(i, p)| head(i, Some(p))).collect(),
            None => (0..h).into_par_iter().map(|i| head(i, None)).collect(),
        };
        debug_assert_eq!(heads.len(), h);
        for (head, values) in heads.iter().enumerate() {
            for (dst, src) in ctx.chunks_mut(d).zip(values.chunks(hd)) {
                dst[head * hd..][..hd].copy_from_slice(src);
            }
        }
    }
}

/// Queries per attention tile (at least). Unrecorded logits need one tile of scratch per thread
/// (SigLIP's 1024 tokens: 1 MiB) instead of every head's `n × n` (48 MiB, kept by the scratch
/// pools).
/// Speed is unchanged: whole heads, 128 and 256 rows measured within 2 % of each other; under
/// 128 rows gemm packs the keys and values once per tile and slows (64 rows: 0.7× its rate).
const TILE_ROWS: usize = 256;

/// The additive attention bias as values and a row stride (0: one row for every query).
fn attention_bias(bias: &Tensor, n: usize) -> Result<(Vec<f32>, usize)> {
    let per_query = bias_shape(bias, n)?;
    Ok((bias.flatten_all()?.to_vec1()?, if per_query { n } else { 0 }))
}

pub struct Mlp {
    fc1: Dense,
    fc2: Dense,
    act: Act,
}

impl Mlp {
    /// `vb_fc1` / `vb_fc2`: the two projections (`mlp.fc1` or `intermediate.dense`, ...).
    pub(super) fn new(cfg: &VitConfig, vb_fc1: VarBuilder, vb_fc2: VarBuilder, cached: Cached) -> Result<Self> {
        let (d, inner) = (cfg.hidden_size, cfg.intermediate_size);
        let act = match cfg.hidden_act {
            Activation::Gelu => Act::GeluErf,
            Activation::GeluPytorchTanh => Act::GeluTanh,
            Activation::QuickGelu => Act::QuickGelu,
        };
        Ok(Self {
            fc1: Dense::load(d, inner, true, vb_fc1, cached("fc1", (inner, d)))?,
            fc2: Dense::load(inner, d, true, vb_fc2, cached("fc2", (d, inner)))?,
            act,
        })
    }

    /// `fc2(act(fc1(x)))` on `rows` rows, without fc2's bias.
    fn forward_rows(&self, x: &[f32], rows: usize) -> Vec<f32> {
        with_scratch(rows * self.fc1.out, |h| {
            self.fc1.matmul_into(x, rows, h);
            kernels::bias_activation(h, &self.fc1.bias, self.act);
            self.fc2.matmul(h, rows)
        })
    }
}

impl Module for Mlp {
    /// `[..., d]` -> `[..., d]`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let rows = xs.elem_count() / self.fc1.inp;
        let y = with_slice(xs, |x| {
            let mut y = self.forward_rows(x, rows);
            kernels::bias_activation(&mut y, &self.fc2.bias, Act::None);
            Ok(y)
        })
        .map_err(candle_core::Error::wrap)?;
        Tensor::from_vec(y, xs.shape(), xs.device())
    }
}

/// DINOv2's learned per-channel residual scale (`layer_scale*.lambda1`); `None` when absent.
fn layer_scale(enabled: bool, dim: usize, vb: VarBuilder) -> Result<Option<Vec<f32>>> {
    Ok(if enabled { Some(vb.get(dim, "lambda1")?.to_vec1()?) } else { None })
}

/// A pre-norm transformer block: `x + ls1·attn(norm1(x))`, then `x + ls2·mlp(norm2(x))`.
pub struct Block {
    norm1: Norm,
    attention: Attention,
    layer_scale1: Option<Vec<f32>>,
    norm2: Norm,
    mlp: Mlp,
    layer_scale2: Option<Vec<f32>>,
}

impl Block {
    /// Quantizes the block's linear layers (the attention's fused QKV and output, the MLP's two)
    /// whose input width fits `format`'s blocks, counting them; `linears`' cache knows them as
    /// `<prefix>.qkv`, `.out`, `.fc1`, `.fc2`.
    pub(super) fn quantize_linears(&mut self, format: Quantize, prefix: &str, linears: &Linears) -> Result<QuantCount> {
        let mut count = QuantCount::default();
        let (a, m) = (&mut self.attention, &mut self.mlp);
        for (dense, part) in [(&mut a.qkv, "qkv"), (&mut a.output, "out"), (&mut m.fc1, "fc1"), (&mut m.fc2, "fc2")] {
            match format.fits(dense.inp) {
                true => count.add(dense.quantize(format, &format!("{prefix}.{part}"), linears)?),
                false => count.add(QuantCount {
                    kept_f32: 1,
                    bytes: (dense.weight_t.len() * 4) as u64,
                    ..QuantCount::default()
                }),
            }
        }
        Ok(count)
    }

    /// The block at `vb`, the layers `cached` gives blocks for not read in f32.
    pub(super) fn new(cfg: &VitConfig, vb: VarBuilder, cached: Cached) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let Names { norm1, attention, norm2, fc1, fc2 } = Names::block(cfg.block_names, &vb);
        Ok(Self {
            norm1: Norm::load(d, eps, vb.pp(norm1))?,
            attention: Attention::new(cfg, vb.pp(attention), cached)?,
            layer_scale1: layer_scale(cfg.layerscale, d, vb.pp("layer_scale1"))?,
            norm2: Norm::load(d, eps, vb.pp(norm2))?,
            mlp: Mlp::new(cfg, fc1, fc2, cached)?,
            layer_scale2: layer_scale(cfg.layerscale, d, vb.pp("layer_scale2"))?,
        })
    }

    /// First half: the attention residual branch. Returns the new hidden states and what the
    /// attention recorded.
    ///
    /// # Shapes
    /// `xs`: `[1, tokens, dim]`.
    pub(super) fn attend(
        &self,
        xs: &Tensor,
        bias: Option<&Tensor>,
        want_probs: bool,
        want_keys: bool,
    ) -> Result<(Tensor, AttnRecord)> {
        let n = tokens(xs, self.norm1.weight.len())?;
        let (hidden, record) = with_slice(xs, |x| {
            let (mut branch, record) =
                self.norm1.with(x, |normed| self.attention.forward(normed, n, bias, (want_probs, want_keys)))?;
            kernels::residual(&mut branch, &self.attention.output.bias, self.layer_scale1.as_deref(), x);
            Ok((branch, record))
        })?;
        Ok((Tensor::from_vec(hidden, xs.shape(), xs.device())?, record))
    }

    /// Second half: the MLP residual branch.
    pub(super) fn feed_forward(&self, xs: &Tensor) -> Result<Tensor> {
        let n = tokens(xs, self.norm2.weight.len())?;
        let hidden = with_slice(xs, |x| {
            let mut branch = self.norm2.with(x, |normed| self.mlp.forward_rows(normed, n));
            kernels::residual(&mut branch, &self.mlp.fc2.bias, self.layer_scale2.as_deref(), x);
            Ok(branch)
        })?;
        Ok(Tensor::from_vec(hidden, xs.shape(), xs.device())?)
    }
}
