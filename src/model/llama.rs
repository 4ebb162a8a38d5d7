//! A Llama-family decoder with inspection points, for vision-language models (SmolVLM's and
//! LLaVA's language models): grouped-query attention, rotary position embeddings (Hugging Face's
//! `rotate_half` convention) applied at explicit position ids (pruned tokens leave gaps, or
//! positions are compacted: the caller decides), a KV cache, and attention probabilities
//! materialised only at the layers asked for. Weights under `LlamaForCausalLM` names
//! (`model.layers.N.self_attn.q_proj`, ...; `lm_head`).
//!
//! # Design
//! Question: how do reducers change the decoder's rows mid-network, and the views read any
//! layer, without a second inspection mechanism beside the ViT's?
//! Decision: the decoder mirrors [`super::vit`]: [`Llama::run_layers`] loops over layers on a
//! [`DecoderState`] (rows, position ids, layers done), records the `llm.*` [`HookPoint`]s a
//! [`Probe`] names into a [`Trace`], and calls the ViT's [`Intervene`] hook (`after_block`) after
//! each layer (the language-side reducers act there). It resumes from any state given the KV cache of the layers
//! before it ([`KvCache::truncated`]); [`Llama::attention_from_cache`] recomputes a layer's
//! attention from its cached input and keys, so a resumed run need not rerun that layer.
//! Trade-off: batch size 1; attention is computed in full (no fused kernel) and only kept where
//! asked.
//!
//! Config ([`LlamaConfig::from_hf`], transformers' `LlamaConfig` defaults): honoured
//! `hidden_size`, `intermediate_size`, `num_hidden_layers`, `num_attention_heads`,
//! `num_key_value_heads`, `head_dim`, `rms_norm_eps`, `vocab_size`, `tie_word_embeddings`,
//! `max_position_embeddings`, `hidden_act` (silu, gelu, gelu_pytorch_tanh, gelu_new),
//! `attention_bias`, `mlp_bias`, `rope_theta`, rope scaling default or linear (`rope_scaling` in
//! transformers 4, `rope_parameters` in 5). Refused when on: other rope types,
//! `partial_rotary_factor`, `sliding_window`, `use_sliding_window`, `qk_layer_norms`,
//! `rope_interleaved`, `use_resampler`.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder, embedding};
use rayon::prelude::*;
use serde::Deserialize;

use super::config::{MAX_HEADS, MAX_POSITIONS, MAX_VOCAB, MAX_WIDTH, check_eps, check_sizes, check_stack, unsupported};
use super::hf_config::{Class, resolve};
use super::hooks::{HookPoint, Probe, Trace};
use super::kernels::{self, Act, View, gemm, with_scratch, with_slice};
use super::layers::AttnRecord;
use super::quant::{Linears, Proj};
use super::vit::{Intervene, Needs, NoIntervention};
use crate::{Cancel, Error, Result};

/// A Llama `config.json` (`LlamaConfig`), as [`LlamaConfig::from_hf`] resolves it.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    /// transformers 4's name; 5 keeps it in `rope_parameters`.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers 5: `rope_type`, `rope_theta` and the scaling's parameters.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    /// transformers 4: `type` or `rope_type`, and the scaling's parameters.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    pub vocab_size: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// The context length the model was trained for (prompt + answer must fit).
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default = "silu")]
    pub hidden_act: String,
    /// Biases on the q, k, v and o projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the gate, up and down projections.
    #[serde(default)]
    pub mlp_bias: bool,
}

fn silu() -> String {
    "silu".into()
}

/// Settings of Llama-family files that change the computation and are not implemented, with
/// the value that is (SmolVLM's `VLlama3` files carry several, all at the supported value).
const REFUSED: &[(&str, &str)] = &[
    ("sliding_window", "null (full causal attention)"),
    ("use_sliding_window", "false"),
    ("qk_layer_norms", "false"),
    ("rope_interleaved", "false"),
    ("use_resampler", "false"),
];

/// The decoder's MLP activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderAct {
    Silu,
    /// Exact GELU.
    Gelu,
    /// `gelu_pytorch_tanh` / `gelu_new`: the tanh approximation.
    GeluTanh,
}

impl LlamaConfig {
    /// A `text_config` or Llama `config.json` read as transformers' `LlamaConfig` reads it
    /// (missing fields take its defaults, `null` is absent), then checked: sizes before anything
    /// is allocated, and every setting that would change the computation and is not
    /// implemented refused by name. `section` prefixes field names in errors (`text_config`).
    ///
    /// Honoured: `hidden_size`, `intermediate_size`, `num_hidden_layers`, `num_attention_heads`,
    /// `num_key_value_heads`, `head_dim`, `rms_norm_eps`, `vocab_size`, `tie_word_embeddings`,
    /// `max_position_embeddings`, `hidden_act` (silu, gelu, gelu_pytorch_tanh, gelu_new),
    /// `attention_bias`, `mlp_bias`, `rope_theta` and rope scaling (`rope_scaling` /
    /// `rope_parameters`: default and linear). Refused when set otherwise: other rope types,
    /// `partial_rotary_factor`, `sliding_window`, `use_sliding_window`, `qk_layer_norms`,
    /// `rope_interleaved`, `use_resampler`. The rest (dropouts, token ids, `pretraining_tp`,
    /// generation defaults) does not change the logits and is ignored.
    pub fn from_hf(json: &serde_json::Value, section: &str) -> std::result::Result<Self, String> {
        let field = |f: &str| if section.is_empty() { f.to_string() } else { format!("{section}.{f}") };
        let resolved = resolve(json, Class::Llama);
        for &(name, supported) in REFUSED {
            let value = &resolved[name];
            let off = value.is_null() || *value == false || (name == "sliding_window" && *value == 0);
            if !off {
                return Err(unsupported(&field(name), value, supported));
            }
        }
        let cfg: Self =
            serde_json::from_value(resolved).map_err(|e| format!("{section} is not a Llama config: {e}"))?;
        cfg.check().map_err(|e| field(&e))?;
        Ok(cfg)
    }

    /// Sizes, divisibility, epsilon, activation and rotary settings (the error starts with the
    /// field's name).
    pub fn check(&self) -> std::result::Result<(), String> {
        check_stack(self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.num_attention_heads)?;
        check_sizes(&[
            ("num_key_value_heads", self.num_key_value_heads.unwrap_or(self.num_attention_heads), MAX_HEADS),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("max_position_embeddings", self.max_position_embeddings.unwrap_or(1), MAX_POSITIONS),
        ])?;
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "num_attention_heads {} does not divide hidden_size {} (and no head_dim is given)",
                self.num_attention_heads, self.hidden_size
            ));
        }
        let hd = self.head_dim();
        if hd == 0 || hd % 2 == 1 || hd > MAX_WIDTH {
            return Err(format!("head_dim = {hd} is out of range (supported: even, 2 to {MAX_WIDTH})"));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(format!(
                "num_key_value_heads {} does not divide num_attention_heads {}",
                self.kv_heads(),
                self.num_attention_heads
            ));
        }
        check_eps("rms_norm_eps", self.rms_norm_eps)?;
        self.act()?;
        self.rope()?;
        Ok(())
    }

    /// The MLP activation.
    pub fn act(&self) -> std::result::Result<DecoderAct, String> {
        match self.hidden_act.as_str() {
            "silu" | "swish" => Ok(DecoderAct::Silu),
            "gelu" => Ok(DecoderAct::Gelu),
            "gelu_pytorch_tanh" | "gelu_new" => Ok(DecoderAct::GeluTanh),
            other => Err(unsupported("hidden_act", other, "silu, gelu, gelu_pytorch_tanh, gelu_new")),
        }
    }

    /// Rotary base and the linear scaling factor positions are divided by (1: none), from
    /// transformers 5's `rope_parameters` or 4's `rope_theta` + `rope_scaling`.
    pub fn rope(&self) -> std::result::Result<(f64, f64), String> {
        let params = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref()).filter(|p| !p.is_null());
        let name = if self.rope_parameters.is_some() { "rope_parameters" } else { "rope_scaling" };
        let theta = params.and_then(|p| p["rope_theta"].as_f64()).or(self.rope_theta).unwrap_or(10_000.0);
        if !(theta.is_finite() && theta > 1.0) {
            return Err(format!("rope_theta = {theta} is out of range (supported: > 1)"));
        }
        let Some(p) = params else { return Ok((theta, 1.0)) };
        if let Some(f) = p.get("partial_rotary_factor").filter(|f| f.as_f64() != Some(1.0)) {
            return Err(unsupported(&format!("{name}.partial_rotary_factor"), f, "1.0"));
        }
        let kind = p["rope_type"].as_str().or_else(|| p["type"].as_str()).unwrap_or("default");
        match kind {
            "default" => Ok((theta, 1.0)),
            "linear" => match p["factor"].as_f64() {
                Some(f) if f.is_finite() && f >= 1.0 => Ok((theta, f)),
                _ => Err(unsupported(&format!("{name}.factor"), &p["factor"], "a number >= 1")),
            },
            other => Err(unsupported(&format!("{name}.rope_type"), other, "default, linear")),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
}

/// Linear layers reading one input (q, k and v; gate and up), in that order, or one layer (o,
/// down).
///
/// # Design
/// Question: SmolVLM-256M's decoder projections are small (576 wide; k and v 192), so each is a
/// GEMM with its own pool dispatch and packing of the input, and its prefill trailed transformers'.
/// Decision: on the fused CPU path, layers with f32 weights are joined at load into one
/// `[Σ out, in]` weight (the parts' weights freed: no more bytes), multiplied by one GEMM
/// computed transposed ([`Joined::product_t`]: the weight is read in place, not packed), whose
/// parts the steps after it read in place (heads split, SwiGLU, the residual add turning it).
/// Trade-off: quantized layers (the quantized cache keeps each under its own name),
/// half-precision ones and the tensor-op path stay apart.
enum Group {
    Joined(Joined),
    Apart(Vec<Proj>),
}

/// Joined f32 layers: `weight` `[Σ widths, in]`, `bias` `[Σ widths]` where the layers have one.
struct Joined {
    weight: Tensor,
    bias: Option<Tensor>,
    widths: Vec<usize>,
}

impl Group {
    /// `parts` joined where the fused CPU kernels run on `device` and all are f32 layers with
    /// biases alike, else kept apart.
    fn new(parts: Vec<Proj>, device: &Device) -> Result<Self> {
        let linears: Vec<&candle_nn::Linear> = parts
            .iter()
            .filter_map(|p| match p {
                Proj::F32(l) if l.weight().dtype() == DType::F32 => Some(l),
                _ => None,
            })
            .collect();
        let biases = linears.iter().filter(|l| l.bias().is_some()).count();
        if !kernels::fused(device) || linears.len() != parts.len() || !(biases == 0 || biases == parts.len()) {
            return Ok(Self::Apart(parts));
        }
        let widths = linears.iter().map(|l| l.weight().dim(0)).collect::<candle_core::Result<_>>()?;
        let weight = Tensor::cat(&linears.iter().map(|l| l.weight()).collect::<Vec<_>>(), 0)?;
        let bias = match biases {
            0 => None,
            _ => Some(Tensor::cat(&linears.iter().filter_map(|l| l.bias()).collect::<Vec<_>>(), 0)?),
        };
        Ok(Self::Joined(Joined { weight, bias, widths }))
    }

    /// `x` plus the output of this one layer on `input` (`[1, n, in]`); joined, from the
    /// transposed product, turned in the same pass.
    fn residual(&self, x: &Tensor, input: &Tensor) -> Result<Tensor> {
        let j = match self {
            Group::Joined(j) if j.widths.len() == 1 => j,
            _ => {
                let mut parts = self.forward(input)?;
                let y = match parts.len() {
                    1 => parts.remove(0),
                    _ => Tensor::cat(&parts, input.rank() - 1)?,
                };
                return add(x, &y);
            }
        };
        let (n, out) = (j.rows_of(input)?, j.out());
        with_slice(input, |input| {
            with_scratch(out * n, |yt| {
                j.product_t(View::rows(input, n, j.inp()), n, yt)?;
                add_transposed(x, yt)
            })
        })
    }

    /// Each layer's output, in order (the joined product's columns as views).
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Group::Apart(parts) => Ok(parts.iter().map(|p| p.forward(x)).collect::<candle_core::Result<_>>()?),
            Group::Joined(j) => {
                let y = j.rows(x, |y, _| Ok(y.to_vec()))?;
                let mut dims = x.dims().to_vec();
                *dims.last_mut().expect("checked by rows") = j.widths.iter().sum();
                let y = Tensor::from_vec(y, dims, x.device())?;
                let last = y.rank() - 1;
                let mut at = 0;
                let mut out = Vec::with_capacity(j.widths.len());
                for &w in &j.widths {
                    out.push(y.narrow(last, at, w)?);
                    at += w;
                }
                Ok(out)
            }
        }
    }
}

impl Joined {
    /// Rows of `x` (its values over the input width), after checking its last dimension.
    fn rows_of(&self, x: &Tensor) -> Result<usize> {
        let inp = self.weight.dim(1)?;
        if x.dims().last() != Some(&inp) {
            return Err(Error::Config {
                field: "decoder",
                reason: format!("a projection from {inp} on {:?}", x.dims()),
            });
        }
        Ok(x.elem_count() / inp)
    }

    fn inp(&self) -> usize {
        self.weight.dim(1).unwrap_or(0)
    }

    fn out(&self) -> usize {
        self.widths.iter().sum()
    }

    /// `W xᵀ + b`, the product transposed (`[Σ widths, rows]`), of the `rows` rows of `x`
    /// (`[rows, in]`, any strides) into `yt`.
    ///
    /// Why transposed: gemm computes a row-major product `x Wᵀ` as its transpose with `W` on
    /// the left, which it packs (the whole weight, on every thread that uses it) before each
    /// product: 16 % of the 256M-shaped decoder's prefill. With `W` on the left of a product it
    /// is asked for as it is, gemm reads the weight in place and packs `x`, the smaller operand.
    fn product_t(&self, x: View<'_>, rows: usize, yt: &mut [f32]) -> Result<()> {
        let (out, inp) = (self.out(), self.inp());
        with_slice(&self.weight, |w| {
            gemm(yt, rows, View::rows(w, out, inp), x.t(), false, kernels::threads());
            Ok(())
        })?;
        if let Some(b) = &self.bias {
            with_slice(b, |b| {
                for (row, &b) in yt.chunks_mut(rows.max(1)).zip(b) {
                    row.iter_mut().for_each(|v| *v += b);
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// `f` on `x Wᵀ + b` (`[rows, Σ widths]`, in a scratch buffer) and the row count.
    fn rows<R>(&self, x: &Tensor, f: impl FnOnce(&[f32], usize) -> Result<R>) -> Result<R> {
        let n = self.rows_of(x)?;
        let (out, inp) = self.weight.dims2()?;
        with_slice(x, |x| {
            with_slice(&self.weight, |w| {
                with_scratch(n * out, |y| {
                    gemm(y, out, View::rows(x, n, inp), View::rows(w, out, inp).t(), false, kernels::threads());
                    if let Some(b) = &self.bias {
                        with_slice(b, |b| {
                            kernels::bias_activation(y, b, Act::None);
                            Ok(())
                        })?;
                    }
                    f(y, n)
                })
            })
        })
    }
}

/// `x` (`[1, n, d]`) plus `yt` (`[d, n]`, a transposed product) turned, in bands of rows.
fn add_transposed(x: &Tensor, yt: &[f32]) -> Result<Tensor> {
    let d = x.dims().last().copied().unwrap_or(0);
    let n = x.elem_count() / d.max(1);
    if yt.len() != n * d {
        return Err(Error::Config {
            field: "decoder",
            reason: format!("{} values to add to {:?}", yt.len(), x.dims()),
        });
    }
    const BAND: usize = 16;
    let mut out = vec![0f32; n * d];
    with_slice(x, |x| {
        let band = |(b, (out, x)): (usize, (&mut [f32], &[f32]))| {
            let (t0, rows) = (b * BAND, out.len() / d.max(1));
            for c in 0..d {
                let col = &yt[c * n + t0..][..rows];
                for (t, &y) in col.iter().enumerate() {
                    out[t * d + c] = x[t * d + c] + y;
                }
            }
        };
        if out.len() <= 16_384 {
            out.chunks_mut(BAND * d).zip(x.chunks(BAND * d)).enumerate().for_each(band);
        } else {
            out.par_chunks_mut(BAND * d).zip(x.par_chunks(BAND * d)).enumerate().for_each(band);
        }
        Ok(())
    })?;
    Ok(Tensor::from_vec(out, x.shape(), x.device())?)
}

struct Attention {
    /// q, k and v.
    qkv: Group,
    o_proj: Group,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// `[1, n, count * head_dim]` -> `[1, count, n, head_dim]`, rotated by `rope` when given,
    /// in one pass (`kernels::split_heads`).
    fn heads(&self, t: &Tensor, count: usize, rope: Option<&Rope>) -> Result<Tensor> {
        let hd = self.head_dim;
        let (_, n, width) = t.dims3()?;
        if width != count * hd || rope.is_some_and(|(cos, _)| cos.dims() != [n, hd / 2]) {
            return Err(Error::Config {
                field: "decoder",
                reason: format!("{width} columns for {count} heads of {hd}, {n} rows: shapes disagree"),
            });
        }
        if !kernels::fused(t.device()) {
            let t = t.reshape((1, n, count, hd))?.transpose(1, 2)?.contiguous()?;
            return Ok(match rope {
                Some((cos, sin)) => candle_nn::rotary_emb::rope(&t, cos, sin)?,
                None => t,
            });
        }
        let mut out = vec![0f32; n * width];
        with_slice(t, |x| match rope {
            Some((cos, sin)) => with_slice(cos, |c| {
                with_slice(sin, |s| {
                    kernels::split_heads(x, n, count, hd, Some((c, s)), &mut out);
                    Ok(())
                })
            }),
            None => {
                kernels::split_heads(x, n, count, hd, None, &mut out);
                Ok(())
            }
        })?;
        Ok(Tensor::from_vec(out, (1, count, n, hd), t.device())?)
    }

    /// Rotated queries `[1, heads, n, head_dim]` of the normed input `h` (joined, the whole
    /// product: the queries the layer ran on, bit for bit).
    fn queries(&self, h: &Tensor, rope: &Rope) -> Result<Tensor> {
        match &self.qkv {
            Group::Apart(p) => self.heads(&p[0].forward(h)?, self.num_heads, Some(rope)),
            Group::Joined(_) => Ok(self.project(h, rope)?.0),
        }
    }

    /// Rotated queries, rotated keys and values `[1, heads, n, head_dim]` of the normed input
    /// `h`; joined, each read from the transposed product in place.
    fn project(&self, h: &Tensor, rope: &Rope) -> Result<(Tensor, Tensor, Tensor)> {
        let j = match &self.qkv {
            Group::Apart(p) => {
                let (q, k, v) = (p[0].forward(h)?, p[1].forward(h)?, p[2].forward(h)?);
                return Ok((
                    self.heads(&q, self.num_heads, Some(rope))?,
                    self.heads(&k, self.num_kv_heads, Some(rope))?,
                    self.heads(&v, self.num_kv_heads, None)?,
                ));
            }
            Group::Joined(j) => j,
        };
        let hd = self.head_dim;
        let counts = [self.num_heads, self.num_kv_heads, self.num_kv_heads];
        let n = j.rows_of(h)?;
        if j.widths != counts.map(|c| c * hd) || rope.0.dims() != [n, hd / 2] {
            return Err(Error::Config {
                field: "decoder",
                reason: format!(
                    "q, k, v of {:?} columns for {counts:?} heads of {hd}, {n} rows: shapes disagree",
                    j.widths
                ),
            });
        }
        with_slice(&rope.0, |cos| {
            with_slice(&rope.1, |sin| {
                with_slice(h, |x| {
                    with_scratch(j.out() * n, |yt| {
                        j.product_t(View::rows(x, n, j.inp()), n, yt)?;
                        let mut at = 0;
                        let mut part = |count: usize, rope: Option<kernels::RopeTables<'_>>| -> Result<Tensor> {
                            let mut out = vec![0f32; n * count * hd];
                            let yt = yt.get(at * n..).unwrap_or(&[]);
                            kernels::split_heads_strided(yt, (1, n), n, count, hd, rope, &mut out);
                            at += count * hd;
                            Ok(Tensor::from_vec(out, (1, count, n, hd), h.device())?)
                        };
                        let rope = Some((cos, sin));
                        Ok((part(counts[0], rope)?, part(counts[1], rope)?, part(counts[2], None)?))
                    })
                })
            })
        })
    }

    /// Post-softmax attention `[1, heads, n, past + n]` of queries `q` over keys `k` (repeated
    /// to every head), causal over the `past` cached and the `n` new tokens. `mask(n, past)`
    /// gives the tensor-op path's causal mask (see [`PositionTables::causal_mask`]).
    fn probs(
        &self,
        q: &Tensor,
        k: &Tensor,
        past: usize,
        mask: impl FnOnce(usize, usize) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let n = q.dim(2)?;
        let scale = (self.head_dim as f32).powf(-0.5);
        let logits = q.matmul(&k.t()?)?;
        if !kernels::fused(q.device()) {
            // The same scale, mask and softmax as tensor ops. One row (a decode step) sees every
            // key, so it needs no mask.
            let logits = (logits * f64::from(scale))?;
            let logits = if n > 1 { logits.broadcast_add(&mask(n, past)?)? } else { logits };
            return Ok(candle_nn::ops::softmax_last_dim(&logits)?);
        }
        let shape = logits.shape().clone();
        let mut probs = logits.flatten_all()?.to_vec1::<f32>()?;
        // Query i (at slot past + i) sees keys 0..=past + i; scale, mask and softmax in one pass.
        kernels::causal_softmax(&mut probs, n, past + n, past, scale);
        Ok(Tensor::from_vec(probs, shape, q.device())?)
    }
}

struct Mlp {
    /// gate and up.
    gate_up: Group,
    down_proj: Group,
    act: DecoderAct,
}

impl Mlp {
    /// `x` plus the MLP's output on the normed input `h`. Joined under SiLU, in the transposed
    /// domain: gate and up come out as two blocks (`[width, n]` each), SwiGLU is one pass over
    /// them, the down projection reads its product in place and the residual add turns it.
    fn residual(&self, x: &Tensor, h: &Tensor) -> Result<Tensor> {
        let (gu, down) = match (&self.gate_up, &self.down_proj, self.act) {
            (Group::Joined(gu), Group::Joined(down), DecoderAct::Silu)
                if gu.widths.len() == 2 && gu.widths[0] == gu.widths[1] && down.inp() == gu.widths[0] =>
            {
                (gu, down)
            }
            _ => return self.down_proj.residual(x, &self.gated(h)?),
        };
        let (n, width) = (gu.rows_of(h)?, gu.widths[0]);
        with_slice(h, |h| {
            with_scratch(2 * width * n, |yt| {
                gu.product_t(View::rows(h, n, gu.inp()), n, yt)?;
                with_scratch(width * n, |gated_t| {
                    let (gate, up) = yt.split_at(width * n);
                    kernels::silu_mul(gate, up, gated_t);
                    with_scratch(down.out() * n, |out_t| {
                        down.product_t(View::rows(gated_t, width, n).t(), n, out_t)?;
                        add_transposed(x, out_t)
                    })
                })
            })
        })
    }

    /// `act(gate) · up` of the normed input `h`.
    fn gated(&self, h: &Tensor) -> Result<Tensor> {
        let parts = self.gate_up.forward(h)?;
        let (gate, up) = (&parts[0], &parts[1]);
        Ok(match self.act {
            DecoderAct::Silu => silu_mul(gate, up)?,
            DecoderAct::Gelu => (gate.gelu_erf()? * up)?,
            DecoderAct::GeluTanh => (gate.gelu()? * up)?,
        })
    }
}

/// RMSNorm on `kernels::rms_norm` on the CPU (candle's op waits on its spinning thread pool),
/// candle's elsewhere.
struct RmsNorm {
    /// `[d]`, f32.
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn load(d: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(d, "weight")?.to_dtype(candle_core::DType::F32)?, eps: eps as f32 })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = self.weight.elem_count();
        if x.dims().last() != Some(&d) {
            return Err(Error::Config { field: "decoder", reason: format!("RMSNorm of width {d} on {:?}", x.dims()) });
        }
        if !kernels::fused(x.device()) {
            return Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)?);
        }
        let mut out = vec![0f32; x.elem_count()];
        with_slice(x, |x| {
            with_slice(&self.weight, |w| {
                kernels::rms_norm(x, w, self.eps, &mut out);
                Ok(())
            })
        })?;
        Ok(Tensor::from_vec(out, x.shape(), x.device())?)
    }
}

/// `a + b` (same shapes) on `kernels::add` on the CPU.
fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, |a, b| a + b, kernels::add)
}

/// `silu(gate) · up` (same shapes) on `kernels::silu_mul` on the CPU.
fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    binary(gate, up, |g, u| candle_nn::ops::silu(g)? * u, kernels::silu_mul)
}

/// An element-wise step of two same-shaped tensors: `kernel` on the CPU's slices, `op` (candle's
/// tensor ops) elsewhere.
fn binary(
    a: &Tensor,
    b: &Tensor,
    op: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    kernel: fn(&[f32], &[f32], &mut [f32]),
) -> Result<Tensor> {
    if a.dims() != b.dims() {
        return Err(Error::Config { field: "decoder", reason: format!("{:?} and {:?} differ", a.dims(), b.dims()) });
    }
    if !kernels::fused(a.device()) {
        return Ok(op(a, b)?);
    }
    let mut out = vec![0f32; a.elem_count()];
    with_slice(a, |a| {
        with_slice(b, |b| {
            kernel(a, b, &mut out);
            Ok(())
        })
    })?;
    Ok(Tensor::from_vec(out, a.shape(), a.device())?)
}

struct Layer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// Keys and values of every layer for the tokens seen so far: `[1, kv_heads, seen, head_dim]`.
/// Layers may hold different counts: tokens pruned after layer k have entries only up to k.
///
/// Each layer keeps the chunks it was given (the prefill's, then one per decoded token) and
/// joins them only for the product: a decoded token after a shared prefill (the full run's
/// cache, kept for resuming) adds its own entries, not a copy of the prefill's. Entries are in
/// the model's KV dtype (f16 under `--quantize`, else f32); the layer that writes them computes
/// its attention from the stored values too, so a run that resumes from cached entries reads
/// exactly what a run from scratch read.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Vec<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Tokens cached at layer 0.
    pub fn len(&self) -> usize {
        self.len_at(0)
    }

    /// Tokens cached at layer `l`.
    pub fn len_at(&self, l: usize) -> usize {
        self.layers.get(l).map_or(0, |chunks| chunks.iter().map(|(k, _)| k.dim(2).unwrap_or(0)).sum())
    }

    /// Tokens cached at each layer.
    pub fn lens(&self) -> Vec<usize> {
        (0..self.layers.len()).map(|l| self.len_at(l)).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries of layers `0..layers` only: where a resumed prefill starts, the layers from
    /// `layers` on being recomputed.
    pub fn truncated(&self, layers: usize) -> KvCache {
        KvCache { layers: self.layers.iter().take(layers).cloned().collect() }
    }

    /// Bytes held by the cache (keys and values, in their stored dtype).
    pub fn bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.layers.iter().flatten().map(|(k, v)| bytes(k) + bytes(v)).sum()
    }

    /// Layer `l`'s keys and values joined, in f32; None where it holds none.
    fn joined(&self, l: usize) -> Result<Option<(Tensor, Tensor)>> {
        let Some(chunks) = self.layers.get(l).filter(|c| !c.is_empty()) else { return Ok(None) };
        let join = |part: &dyn Fn(&(Tensor, Tensor)) -> &Tensor| -> Result<Tensor> {
            let parts: Vec<&Tensor> = chunks.iter().map(part).collect();
            Ok(Tensor::cat(&parts, 2)?.to_dtype(DType::F32)?)
        };
        Ok(Some((join(&|(k, _)| k)?, join(&|(_, v)| v)?)))
    }
}

/// What [`Llama::forward`] recorded (its [`Trace`] in the older shape the tests read).
#[derive(Debug, Default)]
pub struct DecoderTrace {
    /// Post-softmax attention `[1, heads, queries, keys]` at the requested layers.
    pub attentions: BTreeMap<usize, Tensor>,
    /// Hidden states entering each layer, then the last layer's output (before the final
    /// norm), when requested: `num_layers + 1` tensors `[1, n, d]`.
    pub hidden_states: Vec<Tensor>,
}

/// cos and sin tables `[n, head_dim / 2]` for a run of tokens at explicit position ids.
pub type Rope = (Tensor, Tensor);

/// The tensor-op path's (a GPU's) rotary tables and slot numbers, built on the model's device
/// for positions `0..len` and kept, so a decode step selects its rows there instead of
/// computing them on the host and copying them over each step. Grown (at least doubled) when
/// a run reaches past them. Values as the host made them: `p as f32 * inv_freq`, then cos/sin.
#[derive(Clone)]
struct PositionTables {
    /// `[len, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    /// `0..len` in f32 (exact: positions stay below 2^24, [`MAX_POSITIONS`]): what causal
    /// masks compare.
    slots: Tensor,
}

impl PositionTables {
    /// Positions this small are built at once: a prompt and an answer rarely grow them.
    const MIN_LEN: usize = 1024;

    fn build(inv_freq: &[f32], len: usize, device: &Device) -> Result<Self> {
        let slots = Tensor::arange(0u32, len as u32, device)?.to_dtype(DType::F32)?;
        let freq = Tensor::from_slice(inv_freq, (1, inv_freq.len()), device)?;
        let angles = slots.reshape((len, 1))?.broadcast_mul(&freq)?;
        Ok(Self { cos: angles.cos()?, sin: angles.sin()?, slots })
    }

    fn len(&self) -> usize {
        self.slots.elem_count()
    }

    /// The rows at `positions` (each below [`PositionTables::len`]): a slice when they run on
    /// consecutively (a decode step, an unpruned prefill), else gathered on the device.
    fn rope(&self, positions: &[u32]) -> Result<Rope> {
        let first = positions.first().map_or(0, |&p| p as usize);
        if positions.iter().enumerate().all(|(i, &p)| p as usize == first + i) {
            let n = positions.len();
            return Ok((self.cos.narrow(0, first, n)?, self.sin.narrow(0, first, n)?));
        }
        let ids = Tensor::from_slice(positions, positions.len(), self.cos.device())?;
        Ok((self.cos.index_select(&ids, 0)?, self.sin.index_select(&ids, 0)?))
    }

    /// `[1, 1, n, past + n]`: 0 where query i (at slot past + i) sees key j (j <= past + i),
    /// -inf after it; made on the device.
    fn causal_mask(&self, n: usize, past: usize) -> Result<Tensor> {
        let seen = past + n;
        let rows = self.slots.narrow(0, past, n)?.reshape((n, 1))?;
        let keys = self.slots.narrow(0, 0, seen)?.reshape((1, seen))?;
        let after = keys.broadcast_gt(&rows)?;
        let device = self.slots.device();
        let blocked = Tensor::full(f32::NEG_INFINITY, (n, seen), device)?;
        let open = Tensor::zeros((n, seen), DType::F32, device)?;
        Ok(after.where_cond(&blocked, &open)?.reshape((1, 1, n, seen))?)
    }
}

/// The decoder's rows in flight: what an [`Intervene`] hook changes between layers (the
/// decoder's [`super::TokenState`]).
#[derive(Debug, Clone)]
pub struct DecoderState {
    /// `[1, n, d]`: the input embeddings before layer 0, then each layer's output.
    pub hidden: Tensor,
    /// Position ids of the rows (rotary): pruned rows leave gaps unless the caller compacts them.
    pub positions: Vec<u32>,
    /// Layers already applied: a state with `layer == l` resumes at layer `l`.
    pub layer: usize,
}

impl DecoderState {
    /// Rows entering layer 0.
    pub fn fresh(embeds: Tensor, positions: Vec<u32>) -> Self {
        Self { hidden: embeds, positions, layer: 0 }
    }
}

pub struct Llama {
    pub cfg: LlamaConfig,
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Proj,
    inv_freq: Vec<f32>,
    /// The tensor-op path's rotary tables and slots on the model's device (built at first use).
    tables: std::sync::Mutex<Option<PositionTables>>,
    /// What the KV cache keeps keys and values in, and the layer inputs a probe records
    /// (`llm.N.resid_pre`: what a resumed run starts from): f16 under `--quantize`, half the
    /// bytes, else f32. DEVIATION (f16 only): the rows between layers are rounded to f16
    /// (relative 2^-11, against a quantized weight's ~1e-2), so the recorded inputs are exact
    /// and a resumed run equals a run from scratch bit for bit.
    cache_dtype: DType,
}

impl Llama {
    /// `vb` at the checkpoint root of a `LlamaForCausalLM` (`model.*`, `lm_head`); a VLM passes
    /// its language model's subtree.
    pub fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        Self::from_parts(cfg, vb.pp("model"), vb.pp("lm_head"), &Linears::f32())
    }

    /// `model` at the decoder body (`embed_tokens`, `layers`, `norm`), `head` at `lm_head`, for
    /// checkpoints that keep them apart (Idefics3: `model.text_model.*` and a root `lm_head`).
    /// `linears` makes the linear layers (q, k, v, o, gate, up, down, an untied `lm_head`):
    /// f32, or quantized one at a time as they are read.
    pub fn from_parts(cfg: &LlamaConfig, model: VarBuilder, head: VarBuilder, linears: &Linears) -> Result<Self> {
        // Checked again here for configs built in code; `from_hf` has checked files already.
        cfg.check().map_err(|reason| Error::Config { field: "text_config", reason })?;
        let (theta, factor) = cfg.rope().map_err(|reason| Error::Config { field: "text_config", reason })?;
        let act = cfg.act().map_err(|reason| Error::Config { field: "text_config", reason })?;
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
        // The table stays in the half-precision dtype it is stored in (half the f32 bytes: 0.26 GB
        // for LLaVA-1.5-7B), rows converted on lookup, exactly; a table tied to `lm_head` is f32.
        let table = model.pp("embed_tokens");
        let table = match linears.stored_dtype(&format!("{}.weight", table.prefix())) {
            Some(half @ (DType::BF16 | DType::F16)) if !cfg.tie_word_embeddings => table.set_dtype(half),
            _ => table,
        };
        let embed_tokens = embedding(cfg.vocab_size, d, table)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let vb = model.pp("layers").pp(i);
                let attn = vb.pp("self_attn");
                let mlp = vb.pp("mlp");
                Ok(Layer {
                    input_layernorm: RmsNorm::load(d, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
                    self_attn: Attention {
                        qkv: Group::new(
                            vec![
                                linears.linear(d, cfg.num_attention_heads * hd, ab, attn.pp("q_proj"))?,
                                linears.linear(d, cfg.kv_heads() * hd, ab, attn.pp("k_proj"))?,
                                linears.linear(d, cfg.kv_heads() * hd, ab, attn.pp("v_proj"))?,
                            ],
                            linears.device(),
                        )?,
                        o_proj: Group::new(
                            vec![linears.linear(cfg.num_attention_heads * hd, d, ab, attn.pp("o_proj"))?],
                            linears.device(),
                        )?,
                        num_heads: cfg.num_attention_heads,
                        num_kv_heads: cfg.kv_heads(),
                        head_dim: hd,
                    },
                    post_attention_layernorm: RmsNorm::load(d, cfg.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
                    mlp: Mlp {
                        gate_up: Group::new(
                            vec![
                                linears.linear(d, cfg.intermediate_size, mb, mlp.pp("gate_proj"))?,
                                linears.linear(d, cfg.intermediate_size, mb, mlp.pp("up_proj"))?,
                            ],
                            linears.device(),
                        )?,
                        down_proj: Group::new(
                            vec![linears.linear(cfg.intermediate_size, d, mb, mlp.pp("down_proj"))?],
                            linears.device(),
                        )?,
                        act,
                    },
                })
            })
            .collect::<Result<_>>()?;
        let lm_head = if cfg.tie_word_embeddings {
            Proj::F32(candle_nn::Linear::new(embed_tokens.embeddings().clone(), None))
        } else {
            linears.linear(d, cfg.vocab_size, false, head)?
        };
        // Linear rope scaling divides the positions by `factor`, i.e. the frequencies.
        let inv_freq = (0..hd / 2).map(|i| (1.0 / (theta.powf(2.0 * i as f64 / hd as f64) * factor)) as f32).collect();
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm: RmsNorm::load(d, cfg.rms_norm_eps, model.pp("norm"))?,
            lm_head,
            inv_freq,
            tables: Default::default(),
            cache_dtype: if linears.quantize().is_some() { DType::F16 } else { DType::F32 },
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// What the token embedding table is kept in (the checkpoint's f16/bf16, or f32).
    pub fn embedding_dtype(&self) -> DType {
        self.embed_tokens.embeddings().dtype()
    }

    /// What cached keys, values and recorded layer inputs are stored in (f16 or f32).
    pub fn cache_dtype(&self) -> DType {
        self.cache_dtype
    }

    /// `x` rounded to the cache dtype, in f32 (itself under f32).
    fn rounded(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.cache_dtype {
            DType::F32 => x.clone(),
            half => x.to_dtype(half)?.to_dtype(DType::F32)?,
        })
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.embeddings().device()
    }

    /// Token embeddings `[1, n, d]`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::from_slice(ids, ids.len(), self.embed_tokens.embeddings().device())?;
        Ok(self.embed_tokens.forward(&ids)?.to_dtype(DType::F32)?.unsqueeze(0)?)
    }

    /// Token embeddings `[1, n, d]` with the `image_token` rows replaced by `image` (`[count, d]`,
    /// in order): how VLMs feed a projected image to the decoder.
    pub fn embed_with_image(&self, ids: &[u32], image_token: u32, image: &Tensor) -> Result<Tensor> {
        let slots: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == image_token).collect();
        let count = image.dim(0)?;
        if slots.len() != count {
            return Err(Error::Config {
                field: "prompt",
                reason: format!("the prompt has {} <image> tokens but the image gives {count}", slots.len()),
            });
        }
        let text = self.embed(ids)?.squeeze(0)?;
        let mut rows = Vec::with_capacity(ids.len());
        let mut next = 0;
        for i in 0..ids.len() {
            if slots.get(next) == Some(&i) {
                rows.push(image.narrow(0, next, 1)?);
                next += 1;
            } else {
                rows.push(text.narrow(0, i, 1)?);
            }
        }
        Ok(Tensor::cat(&rows, 0)?.unsqueeze(0)?)
    }

    /// cos and sin tables `[n, head_dim / 2]` at the given position ids: made here on the host
    /// for the CPU's fused kernels, rows of the device's [`PositionTables`] on the tensor-op path.
    fn rope_tables(&self, positions: &[u32], device: &Device) -> Result<Rope> {
        if !kernels::fused(device) {
            let len = positions.iter().max().map_or(0, |&p| p as usize + 1);
            return self.position_tables(len, device)?.rope(positions);
        }
        let half = self.inv_freq.len();
        let angles: Vec<f32> =
            positions.iter().flat_map(|&p| self.inv_freq.iter().map(move |f| p as f32 * f)).collect();
        let angles = Tensor::from_vec(angles, (positions.len(), half), device)?;
        Ok((angles.cos()?, angles.sin()?))
    }

    /// The device's rotary tables and slots, covering at least `0..len` (built or grown here).
    fn position_tables(&self, len: usize, device: &Device) -> Result<PositionTables> {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let held = tables.as_ref().filter(|t| t.slots.device().same_device(device));
        if let Some(t) = held.filter(|t| t.len() >= len) {
            return Ok(t.clone());
        }
        let len = len.max(2 * held.map_or(0, PositionTables::len)).max(PositionTables::MIN_LEN);
        let built = PositionTables::build(&self.inv_freq, len, device)?;
        *tables = Some(built.clone());
        Ok(built)
    }

    /// The tensor-op path's causal mask for `n` queries after `past` cached keys, on `device`.
    fn causal_mask(&self, n: usize, past: usize, device: &Device) -> Result<Tensor> {
        self.position_tables(past + n, device)?.causal_mask(n, past)
    }

    /// Runs `embeds` (`[1, n, d]`) at `positions` after what `cache` holds, appending to it.
    /// Records attention at `attend_layers` and, if `want_hidden`, every layer's input.
    /// Returns the last layer's output `[1, n, d]` (before the final norm). A convenience over
    /// [`Llama::run_layers`] with no intervention.
    pub fn forward(
        &self,
        embeds: &Tensor,
        positions: &[u32],
        cache: &mut KvCache,
        attend_layers: &[usize],
        want_hidden: bool,
    ) -> Result<(Tensor, DecoderTrace)> {
        let layers = self.layers.len();
        let mut probe = Probe::default().with_all(attend_layers.iter().map(|&l| HookPoint::LlmAttnProbs(l)));
        if want_hidden {
            probe = probe.with_all((0..layers).map(HookPoint::LlmResidPre));
        }
        let mut state = DecoderState::fresh(embeds.clone(), positions.to_vec());
        let mut trace = Trace::default();
        self.run_layers(&mut state, cache, layers, &probe, &mut trace, &mut NoIntervention, &Cancel::default())?;
        let mut out = DecoderTrace::default();
        for l in 0..layers {
            out.attentions.extend(trace.take(HookPoint::LlmAttnProbs(l)).map(|p| (l, p)));
            let input = trace.take(HookPoint::LlmResidPre(l)).map(|t| t.to_dtype(DType::F32)).transpose()?;
            out.hidden_states.extend(input);
        }
        if want_hidden {
            out.hidden_states.push(state.hidden.clone());
        }
        Ok((state.hidden, out))
    }

    /// Runs layers `state.layer..until` on the rows after what `cache` holds (appending their
    /// keys and values), recording what `probe` asks and letting `intervene` change the rows
    /// after each layer. Attention is materialised only where the probe or the hook asks.
    /// Checks `cancel` before each layer.
    #[allow(clippy::too_many_arguments)]
    pub fn run_layers(
        &self,
        state: &mut DecoderState,
        cache: &mut KvCache,
        until: usize,
        probe: &Probe,
        trace: &mut Trace,
        intervene: &mut (dyn Intervene<DecoderState> + Send),
        cancel: &Cancel,
    ) -> Result<()> {
        // On the CPU the layers run on a pool thread (see `kernels::in_pool`: the 128-token
        // prefill 0.86x the time); a GPU's context stays on the calling thread.
        let mut run = move || -> Result<()> {
            let until = until.min(self.layers.len());
            // The rotary tables of the positions they were made for (remade when a hook moved rows).
            let mut rope: Option<(Vec<u32>, Rope)> = None;
            while state.layer < until {
                cancel.check()?;
                let l = state.layer;
                if rope.as_ref().is_none_or(|(at, _)| *at != state.positions) {
                    rope = Some((state.positions.clone(), self.rope_tables(&state.positions, state.hidden.device())?));
                }
                let tables = &rope.as_ref().expect("made above").1;
                state.hidden = self.rounded(&state.hidden)?;
                probe.tap(HookPoint::LlmResidPre(l), trace, || Ok(state.hidden.to_dtype(self.cache_dtype)?))?;
                let hook = intervene.needs(l);
                let needs = Needs { probs: hook.probs || probe.wants(HookPoint::LlmAttnProbs(l)), keys: hook.keys };
                let (out, attn) = self.layer(l, &state.hidden, tables, cache, needs)?;
                if let Some(p) = &attn.probs {
                    probe.tap(HookPoint::LlmAttnProbs(l), trace, || Ok(p.clone()))?;
                }
                state.hidden = self.rounded(&out)?;
                probe.tap(HookPoint::LlmResid(l), trace, || Ok(state.hidden.clone()))?;
                state.layer = l + 1;
                intervene.after_block(l, state, &attn)?;
            }
            Ok(())
        };
        if self.device().is_cpu() { kernels::in_pool(run) } else { run() }
    }

    /// Layer `l`'s post-softmax attention `[1, heads, n, cached]` for the rows `x` (`[1, n, d]`,
    /// that layer's input at `positions`, the last `n` rows `cache` holds at `l`), recomputed
    /// from the cached keys: what [`Llama::run_layers`] would have recorded there, bit for bit,
    /// at the cost of the query projection (on the CPU, the joined q, k and v one). How a
    /// resumed prefill gets the attention of a layer it does not rerun.
    pub fn attention_from_cache(&self, l: usize, x: &Tensor, positions: &[u32], cache: &KvCache) -> Result<Tensor> {
        let (_, n, _) = x.dims3()?;
        let seen = cache.len_at(l);
        let keys = if l < self.layers.len() { cache.joined(l)? } else { None };
        let Some((k, _)) = keys.filter(|_| seen >= n && positions.len() == n) else {
            return Err(Error::Config {
                field: "cache",
                reason: format!(
                    "layer {l}'s cache holds {seen} tokens; {n} rows at {} positions asked",
                    positions.len()
                ),
            });
        };
        let rope = self.rope_tables(positions, x.device())?;
        let layer = &self.layers[l];
        let a = &layer.self_attn;
        let q = a.queries(&layer.input_layernorm.forward(x)?, &rope)?;
        let k = candle_transformers::utils::repeat_kv(k, a.num_heads / a.num_kv_heads)?.contiguous()?;
        a.probs(&q, &k, seen - n, |n, past| self.causal_mask(n, past, x.device()))
    }

    /// Decoder layer `l` on `x` (`[1, n, d]`, the tokens after what `cache` holds at this layer,
    /// causal), appending their keys and values to the cache. Returns the layer's output and
    /// what `needs` asked for: its post-softmax attention `[1, heads, n, cached + n]`, its keys.
    fn layer(
        &self,
        l: usize,
        x: &Tensor,
        rope: &Rope,
        cache: &mut KvCache,
        needs: Needs,
    ) -> Result<(Tensor, AttnRecord)> {
        if cache.layers.len() < self.layers.len() {
            cache.layers.resize(self.layers.len(), Vec::new());
        }
        let past = cache.len_at(l);
        let layer = &self.layers[l];
        let a = &layer.self_attn;
        let h = layer.input_layernorm.forward(x)?;
        let (q, k, v) = a.project(&h, rope)?;
        cache.layers[l].push((k.to_dtype(self.cache_dtype)?, v.to_dtype(self.cache_dtype)?));
        let (k, v) = cache.joined(l)?.expect("pushed above");
        let keys = needs.keys.then(|| k.clone());
        let rep = a.num_heads / a.num_kv_heads;
        let (k, v) = (
            candle_transformers::utils::repeat_kv(k, rep)?.contiguous()?,
            candle_transformers::utils::repeat_kv(v, rep)?.contiguous()?,
        );
        let probs = a.probs(&q, &k, past, |n, past| self.causal_mask(n, past, x.device()))?;
        let n = q.dim(2)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((1, n, a.num_heads * a.head_dim))?;
        let x = a.o_proj.residual(x, &ctx)?;
        let h = layer.post_attention_layernorm.forward(&x)?;
        let x = layer.mlp.residual(&x, &h)?;
        Ok((x, AttnRecord { probs: needs.probs.then_some(probs), keys }))
    }

    /// Logits `[1, n, vocab]` from the last layer's output.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(&self.norm.forward(hidden)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quant::{QuantWeight, Quantize};
    use candle_core::DType;
    use candle_nn::VarMap;

    fn tiny() -> Llama {
        let cfg = LlamaConfig {
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: None,
            rope_parameters: None,
            rope_scaling: None,
            vocab_size: 40,
            tie_word_embeddings: false,
            max_position_embeddings: None,
            hidden_act: "silu".into(),
            attention_bias: false,
            mlp_bias: false,
        };
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        Llama::new(&cfg, vb).unwrap()
    }

    #[test]
    fn the_kv_cache_gives_the_same_logits_as_one_pass() {
        let model = tiny();
        let ids = [3u32, 17, 5, 29, 11, 2];
        let positions: Vec<u32> = (0..ids.len() as u32).collect();
        let (all, _) =
            model.forward(&model.embed(&ids).unwrap(), &positions, &mut KvCache::default(), &[], false).unwrap();
        let all = model.logits(&all).unwrap();
        // The same tokens, one at a time through the cache.
        let mut cache = KvCache::default();
        let (first, _) =
            model.forward(&model.embed(&ids[..3]).unwrap(), &positions[..3], &mut cache, &[], false).unwrap();
        let mut rows = vec![model.logits(&first).unwrap()];
        for i in 3..ids.len() {
            let (h, _) =
                model.forward(&model.embed(&ids[i..=i]).unwrap(), &positions[i..=i], &mut cache, &[], false).unwrap();
            rows.push(model.logits(&h).unwrap());
        }
        assert_eq!(cache.len(), ids.len());
        let stepped = Tensor::cat(&rows, 1).unwrap();
        let d: f32 =
            (all - stepped).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        assert!(d < 1e-5, "cached decoding differs by {d}");
    }

    #[test]
    fn attention_is_causal_and_recorded_only_where_asked() {
        let model = tiny();
        let ids = [1u32, 2, 3, 4];
        let (_, trace) =
            model.forward(&model.embed(&ids).unwrap(), &[0, 1, 2, 3], &mut KvCache::default(), &[1], true).unwrap();
        assert_eq!(trace.attentions.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(trace.hidden_states.len(), 3);
        let p = trace.attentions[&1].squeeze(0).unwrap().to_vec3::<f32>().unwrap();
        for head in &p {
            for (q, row) in head.iter().enumerate() {
                assert!(row[q + 1..].iter().all(|&v| v == 0.0), "query {q} sees the future");
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
    }

    /// A random f32 layer `[out, inp]`, with a bias when asked.
    fn random_proj(inp: usize, out: usize, bias: bool) -> Proj {
        let w = Tensor::randn(0f32, 1.0, (out, inp), &Device::Cpu).unwrap();
        let b = bias.then(|| Tensor::randn(0f32, 1.0, out, &Device::Cpu).unwrap());
        Proj::F32(candle_nn::Linear::new(w, b))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    #[test]
    fn joined_projections_equal_the_separate_ones() {
        let (d, hd, heads, kv, inter) = (64, 16, 4, 2, 96);
        // 200 rows: the SwiGLU pass runs on the pool; 1 row: a decode step.
        for (n, bias) in [(200, false), (200, true), (1, false)] {
            let x = Tensor::randn(0f32, 1.0, (1, n, d), &Device::Cpu).unwrap();
            let parts =
                vec![random_proj(d, heads * hd, bias), random_proj(d, kv * hd, bias), random_proj(d, kv * hd, bias)];
            let joined = Group::new(parts.clone(), &Device::Cpu).unwrap();
            assert!(matches!(joined, Group::Joined(_)), "f32 layers on the CPU are joined");
            let apart = Group::Apart(parts);
            for (a, b) in joined.forward(&x).unwrap().iter().zip(apart.forward(&x).unwrap()) {
                assert!(max_diff(a, &b) < 1e-5, "rows {n}, bias {bias}: {}", max_diff(a, &b));
            }
            // Heads read in place from the joined rows, rotated, as from the separate outputs.
            let attention = |qkv| Attention {
                qkv,
                o_proj: Group::Apart(vec![random_proj(heads * hd, d, false)]),
                num_heads: heads,
                num_kv_heads: kv,
                head_dim: hd,
            };
            let (joined, apart) = (attention(joined), attention(apart));
            let rope = (
                Tensor::randn(0f32, 1.0, (n, hd / 2), &Device::Cpu).unwrap(),
                Tensor::randn(0f32, 1.0, (n, hd / 2), &Device::Cpu).unwrap(),
            );
            let (j, a) = (joined.project(&x, &rope).unwrap(), apart.project(&x, &rope).unwrap());
            for (j, a) in [(&j.0, &a.0), (&j.1, &a.1), (&j.2, &a.2)] {
                assert!(max_diff(j, a) < 1e-5, "rows {n}, bias {bias}: {}", max_diff(j, a));
            }
            assert!(max_diff(&joined.queries(&x, &rope).unwrap(), &a.0) < 1e-5);
            // A residual branch of one layer, turned from the transposed product.
            let o = vec![random_proj(d, d, bias)];
            let resid = Tensor::randn(0f32, 1.0, (1, n, d), &Device::Cpu).unwrap();
            let (j, a) = (
                Group::new(o.clone(), &Device::Cpu).unwrap().residual(&resid, &x).unwrap(),
                Group::Apart(o).residual(&resid, &x).unwrap(),
            );
            assert!(max_diff(&j, &a) < 1e-5, "rows {n}, bias {bias}: {}", max_diff(&j, &a));
            for act in [DecoderAct::Silu, DecoderAct::GeluTanh] {
                let parts = [random_proj(d, inter, bias), random_proj(d, inter, bias), random_proj(inter, d, bias)];
                let mlp = |gate_up, down_proj| Mlp { gate_up, down_proj, act };
                let joined = mlp(
                    Group::new(parts[..2].to_vec(), &Device::Cpu).unwrap(),
                    Group::new(parts[2..].to_vec(), &Device::Cpu).unwrap(),
                );
                let apart = mlp(Group::Apart(parts[..2].to_vec()), Group::Apart(parts[2..].to_vec()));
                let (j, a) = (joined.gated(&x).unwrap(), apart.gated(&x).unwrap());
                assert!(max_diff(&j, &a) < 1e-5, "rows {n}, {act:?}: {}", max_diff(&j, &a));
                let (j, a) = (joined.residual(&resid, &x).unwrap(), apart.residual(&resid, &x).unwrap());
                assert!(max_diff(&j, &a) < 1e-4, "rows {n}, {act:?}: {}", max_diff(&j, &a));
            }
        }
    }

    #[test]
    fn quantized_layers_stay_apart() {
        let q = Proj::Quantized {
            weight: QuantWeight::quantize(&Tensor::randn(0f32, 1.0, (32, 64), &Device::Cpu).unwrap(), Quantize::Q8_0)
                .unwrap(),
            bias: None,
        };
        let group = Group::new(vec![random_proj(64, 32, false), q], &Device::Cpu).unwrap();
        assert!(matches!(group, Group::Apart(_)));
    }

    #[test]
    fn hook_points_are_named_like_the_encoders() {
        assert_eq!(HookPoint::LlmAttnProbs(3).to_string(), "llm.3.attn.probs");
        assert_eq!(HookPoint::LlmResidPre(0).to_string(), "llm.0.resid_pre");
        assert_eq!(HookPoint::LlmResid(1).to_string(), "llm.1.resid_post");
    }

    #[test]
    fn a_run_resumed_from_a_cached_layer_input_is_bit_identical() {
        let model = tiny();
        let ids = [5u32, 9, 1, 30, 7];
        let positions: Vec<u32> = (0..ids.len() as u32).collect();
        let mut cache = KvCache::default();
        let (out, trace) = model.forward(&model.embed(&ids).unwrap(), &positions, &mut cache, &[0, 1], true).unwrap();
        for l in 0..2 {
            // Attention made again from the layer's cached input and keys: exactly what was recorded.
            let again = model.attention_from_cache(l, &trace.hidden_states[l], &positions, &cache).unwrap();
            let recorded = &trace.attentions[&l];
            assert_eq!(
                again.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                recorded.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        // Layer 1 again from its cached input and layer 0's cache: the same output, bit for bit.
        let mut resumed = cache.truncated(1);
        assert_eq!(resumed.lens(), [ids.len()]);
        let mut state = DecoderState { hidden: trace.hidden_states[1].clone(), positions: positions.clone(), layer: 1 };
        let probe = Probe::default().with(HookPoint::LlmResid(1)).with(HookPoint::LlmResidPre(0));
        let mut t = Trace::default();
        model.run_layers(&mut state, &mut resumed, 2, &probe, &mut t, &mut NoIntervention, &Cancel::default()).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&state.hidden), flat(&out));
        assert_eq!(flat(t.require(HookPoint::LlmResid(1)).unwrap()), flat(&out));
        assert!(t.get(HookPoint::LlmResidPre(0)).is_none(), "layer 0 did not run");
        assert!(model.attention_from_cache(1, &trace.hidden_states[1], &positions[..2], &cache).is_err());
    }

    #[test]
    fn device_tables_give_the_host_tables_rows_and_the_causal_mask() {
        let model = tiny();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Gaps (pruned rows) are gathered, a run of positions sliced: both as the host makes them.
        for positions in [vec![0u32, 3, 4, 9], vec![5, 6, 7], vec![1400]] {
            let len = *positions.iter().max().unwrap() as usize + 1;
            let (cos, sin) = model.position_tables(len, &Device::Cpu).unwrap().rope(&positions).unwrap();
            let (host_cos, host_sin) = model.rope_tables(&positions, &Device::Cpu).unwrap();
            assert_eq!((flat(&cos), flat(&sin)), (flat(&host_cos), flat(&host_sin)), "{positions:?}");
        }
        // Built at 1024 positions, then doubled for 1401.
        assert_eq!(model.position_tables(1, &Device::Cpu).unwrap().len(), 2048);
        let mask = model.causal_mask(2, 3, &Device::Cpu).unwrap();
        assert_eq!(mask.dims(), [1, 1, 2, 5]);
        let inf = f32::NEG_INFINITY;
        assert_eq!(flat(&mask), [0.0, 0.0, 0.0, 0.0, inf, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }

    /// Drops every other row after layer 0, as a pruning method does through the hook.
    struct DropOdd;
    impl Intervene<DecoderState> for DropOdd {
        fn needs(&self, layer: usize) -> Needs {
            Needs { probs: layer == 0, keys: false }
        }
        fn after_block(&mut self, layer: usize, state: &mut DecoderState, attn: &AttnRecord) -> Result<()> {
            // Layer 0's because the hook asked, layer 1's because the probe did.
            assert!(attn.probs.is_some(), "layer {layer}");
            if layer == 0 {
                let idx = Tensor::new(&[0u32, 2, 4], state.hidden.device())?;
                state.hidden = state.hidden.index_select(&idx, 1)?;
                state.positions = vec![0, 2, 4];
            }
            Ok(())
        }
    }

    #[test]
    fn a_hook_that_drops_rows_leaves_later_layers_with_the_survivors() {
        let model = tiny();
        let ids = [5u32, 9, 1, 30, 7];
        let mut state = DecoderState::fresh(model.embed(&ids).unwrap(), (0..5).collect());
        let mut cache = KvCache::default();
        let probe = Probe::default().with(HookPoint::LlmAttnProbs(1));
        let mut trace = Trace::default();
        model.run_layers(&mut state, &mut cache, 2, &probe, &mut trace, &mut DropOdd, &Cancel::default()).unwrap();
        assert_eq!(cache.lens(), [5, 3]);
        assert_eq!(trace.require(HookPoint::LlmAttnProbs(1)).unwrap().dims(), [1, 4, 3, 3]);
        assert!(trace.get(HookPoint::LlmAttnProbs(0)).is_none(), "the probe did not ask for layer 0");
        assert_eq!(state.hidden.dims(), [1, 3, 16]);
    }
}
