//! Zero-shot scores of CLIP and SigLIP: the prompt box's labels ("a cat, a dog, a car") against
//! the image, so the answer is a label that can flip as tokens go.
//!
//! - CLIP (Radford et al., 2021): image = visual_projection(post_layernorm(CLS)); text = a causal
//!   transformer pooled at the first end-of-text token, then text_projection; logits =
//!   exp(scale) · cos; softmax over the labels.
//! - SigLIP (Zhai et al., 2023): image = an attention-pooling head (a learned probe query over
//!   all tokens); text = a bidirectional transformer over the prompt padded to its full length,
//!   pooled at the last position, then a linear head; logits = exp(scale) · cos + bias; each
//!   label's sigmoid is its own probability.
//!
//! The text tower reuses our [`Block`] under CLIP's names.
//!
//! Config: `text_config` resolved with `CLIPTextConfig` / `SiglipTextConfig` defaults; honoured
//! are the sizes, `hidden_act`, `layer_norm_eps`, `eos_token_id` (CLIP pools there; configs with
//! the old value 2 pool at the highest id, as transformers does), `pad_token_id` (SigLIP pads
//! with it), `projection_dim` (CLIP) / `projection_size` (SigLIP). From `tokenizer_config.json`:
//! `model_input_names` ([`pads_masked`]): whether the tokenizer hands the model an attention
//! mask, so whether padding is masked or attended.

use std::path::Path;

use candle_core::{D, DType, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder, layer_norm, linear, linear_no_bias};
use serde::Deserialize;
use tokenizers::Tokenizer;

use super::config::{Activation, BlockNames, MAX_POSITIONS, MAX_VOCAB, MAX_WIDTH, VitConfig, check_sizes, check_stack};
use super::hf_config::{Class, resolve, resolve_section};
use super::layers::{Block, Mlp};
use crate::{Error, Result};

/// The `text_config` fields we read, after [`resolve_section`] filled in `CLIPTextConfig`'s or
/// `SiglipTextConfig`'s defaults. Honoured: the sizes below, `hidden_act` (gelu,
/// gelu_pytorch_tanh, gelu_new, quick_gelu), `eos_token_id` (CLIP pools there), `pad_token_id`
/// (SigLIP pads with it), and the top level's `projection_dim` (CLIP) or the text config's
/// `projection_size` (SigLIP). Dropouts and initialisers are ignored.
#[derive(Debug, Deserialize)]
struct TextConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    layer_norm_eps: f64,
    hidden_act: String,
    eos_token_id: u32,
    pad_token_id: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Clip,
    Siglip,
}

/// SigLIP's attention-pooling head (`vision_model.head`): a learned probe attends over all
/// tokens (`nn.MultiheadAttention`, q/k/v packed in `in_proj`), then `x + mlp(layernorm(x))`.
struct MapHead {
    probe: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: Linear,
    layernorm: LayerNorm,
    mlp: Mlp,
    num_heads: usize,
}

impl MapHead {
    fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let attn = vb.pp("attention");
        Ok(Self {
            probe: vb.get((1, 1, d), "probe")?,
            in_proj_weight: attn.get((3 * d, d), "in_proj_weight")?,
            in_proj_bias: attn.get(3 * d, "in_proj_bias")?,
            out_proj: linear(d, d, attn.pp("out_proj"))?,
            layernorm: layer_norm(d, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp").pp("fc1"), vb.pp("mlp").pp("fc2"))?,
            num_heads: cfg.num_attention_heads,
        })
    }

    /// `[1, tokens, d]` (after post_layernorm) -> `[1, d]`.
    fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let d = self.probe.dim(2)?;
        let hd = d / self.num_heads;
        let project = |x: &Tensor, i: usize| -> Result<Tensor> {
            let w = self.in_proj_weight.narrow(0, i * d, d)?;
            let b = self.in_proj_bias.narrow(0, i * d, d)?;
            let (_, n, _) = x.dims3()?;
            let y = x.broadcast_matmul(&w.t()?)?.broadcast_add(&b)?;
            Ok(y.reshape((1, n, self.num_heads, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let (q, k, v) = (project(&self.probe, 0)?, project(hidden, 1)?, project(hidden, 2)?);
        let attn = candle_nn::ops::softmax_last_dim(&(q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?)?;
        let pooled = attn.matmul(&v)?.transpose(1, 2)?.reshape((1, 1, d))?;
        let x = self.out_proj.forward(&pooled)?;
        let x = (&x + self.mlp.forward(&self.layernorm.forward(&x)?)?)?;
        Ok(x.squeeze(1)?)
    }
}

/// The text tower: embeddings, blocks, final norm, pooling and the output linear.
struct TextTower {
    token_embedding: Tensor,
    position_embedding: Tensor,
    blocks: Vec<Block>,
    final_norm: LayerNorm,
    /// CLIP: `text_projection` (no bias); SigLIP: `text_model.head`.
    out: Linear,
    family: Family,
    eos: u32,
    pad: u32,
    max_len: usize,
    /// Whether padding is masked as keys ([`pads_masked`]).
    mask_pads: bool,
}

/// Whether the folder's tokenizer returns an `attention_mask` with the ids: its
/// `tokenizer_config.json` `model_input_names`, else the class default (CLIPTokenizer's and
/// SiglipTokenizer's include it). Published SigLIP folders name only `input_ids`, so
/// transformers' processor hands the model no mask and the pads are attended, as in big_vision
/// where SigLIP was trained; with a mask they are not. (CLIP is causal and pools at or before
/// the end token, so its pads never reach the pooled position either way.)
fn pads_masked(dir: &Path) -> Result<bool> {
    let path = dir.join("tokenizer_config.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(true) };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::weights(&path, format!("not JSON: {e}")))?;
    Ok(match json.get("model_input_names").and_then(|v| v.as_array()) {
        Some(names) => names.iter().any(|n| n == "attention_mask"),
        None => true,
    })
}

impl TextTower {
    fn new(tc: &TextConfig, family: Family, vb: VarBuilder, projection_dim: usize, mask_pads: bool) -> Result<Self> {
        let act = activation(&tc.hidden_act)?;
        let cfg = VitConfig {
            hidden_size: tc.hidden_size,
            num_hidden_layers: tc.num_hidden_layers,
            num_attention_heads: tc.num_attention_heads,
            intermediate_size: tc.intermediate_size,
            layer_norm_eps: tc.layer_norm_eps,
            hidden_act: act,
            block_names: BlockNames::Clip,
            layerscale: false,
            ..VitConfig::default()
        };
        let text = vb.pp("text_model");
        let layers = text.pp("encoder").pp("layers");
        let d = tc.hidden_size;
        Ok(Self {
            token_embedding: text.pp("embeddings").pp("token_embedding").get((tc.vocab_size, d), "weight")?,
            position_embedding: text
                .pp("embeddings")
                .pp("position_embedding")
                .get((tc.max_position_embeddings, d), "weight")?,
            blocks: (0..tc.num_hidden_layers).map(|i| Block::new(&cfg, layers.pp(i))).collect::<Result<_>>()?,
            final_norm: layer_norm(d, tc.layer_norm_eps, text.pp("final_layer_norm"))?,
            out: match family {
                Family::Clip => linear_no_bias(d, projection_dim, vb.pp("text_projection"))?,
                Family::Siglip => linear(d, projection_dim, text.pp("head"))?,
            },
            family,
            eos: tc.eos_token_id,
            pad: tc.pad_token_id,
            max_len: tc.max_position_embeddings,
            mask_pads,
        })
    }

    /// One prompt's token ids (with specials) -> its (unnormalised) embedding `[out]`.
    fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let real = ids.len().min(self.max_len);
        let mut ids = ids[..real].to_vec();
        if self.family == Family::Siglip {
            ids.resize(self.max_len, self.pad); // SigLIP reads the prompt padded to full length
        }
        let n = ids.len();
        let dev = self.token_embedding.device();
        let idx = Tensor::from_vec(ids.clone(), n, dev)?;
        let x = self.token_embedding.index_select(&idx, 0)?;
        let mut x = (x + self.position_embedding.narrow(0, 0, n)?)?.unsqueeze(0)?; // [1, n, d]
        // Additive mask [1, 1, n, n]: CLIP is causal; padding is masked as keys when the
        // tokenizer hands the model a mask.
        let mut mask = vec![0f32; n * n];
        for q in 0..n {
            for k in 0..n {
                if (self.family == Family::Clip && k > q) || (self.mask_pads && k >= real) {
                    mask[q * n + k] = f32::NEG_INFINITY;
                }
            }
        }
        let mask = Tensor::from_vec(mask, (1, 1, n, n), dev)?;
        for block in &self.blocks {
            let (h, _) = block.attend(&x, Some(&mask), false, false)?;
            x = block.feed_forward(&h)?;
        }
        let x = self.final_norm.forward(&x)?.squeeze(0)?;
        let pool = match self.family {
            // `CLIPTextTransformer`: configs from before the fix say eos 2 and pool at the
            // highest id (end-of-text); newer ones pool at the first `eos_token_id`.
            Family::Clip if self.eos == 2 => (0..n).max_by_key(|&i| (ids[i], std::cmp::Reverse(i))).unwrap_or(n - 1),
            Family::Clip => ids.iter().position(|&t| t == self.eos).unwrap_or(n - 1),
            Family::Siglip => n - 1,
        };
        Ok(self.out.forward(&x.narrow(0, pool, 1)?)?.squeeze(0)?)
    }
}

fn activation(name: &str) -> Result<Activation> {
    match name {
        "gelu" => Ok(Activation::Gelu),
        "gelu_pytorch_tanh" | "gelu_new" => Ok(Activation::GeluPytorchTanh),
        "quick_gelu" => Ok(Activation::QuickGelu),
        other => Err(Error::Config { field: "hidden_act", reason: format!("unsupported activation `{other}`") }),
    }
}

/// How the image side becomes an embedding.
enum ImageOut {
    /// CLIP: `visual_projection` of the post-layernormed CLS token.
    Projection(Linear),
    /// SigLIP: the attention-pooling head over all post-layernormed tokens.
    Map(Box<MapHead>),
}

/// Zero-shot scoring of labels for a CLIP or SigLIP folder.
pub struct ZeroShot {
    pub family: Family,
    tokenizer: Tokenizer,
    text: TextTower,
    image_out: ImageOut,
    logit_scale: f32,
    logit_bias: f32,
}

/// Scores of the labels for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub logits: Vec<f32>,
    /// Softmax over the labels (CLIP) or each label's sigmoid (SigLIP).
    pub probs: Vec<f32>,
}

impl ZeroShot {
    /// Loads the text side and heads of a `CLIPModel` / `SiglipModel` folder; `vision` is the
    /// tower's config (its width and heads size the SigLIP pooling head).
    pub fn load(dir: &Path, config: &serde_json::Value, vision: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let family = match config["model_type"].as_str() {
            Some("clip") => Family::Clip,
            Some("siglip") => Family::Siglip,
            other => {
                return Err(Error::Config { field: "model_type", reason: format!("{other:?} has no text tower") });
            }
        };
        let bad = |reason: String| Error::weights(dir.join("config.json"), reason);
        let parent = if family == Family::Clip { Class::Clip } else { Class::Siglip };
        let (_, text_json) = resolve_section(parent, config, "text_config").map_err(bad)?;
        let tc: TextConfig = serde_json::from_value(text_json.clone()).map_err(|e| bad(format!("text_config: {e}")))?;
        check_stack(tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers, tc.num_attention_heads)
            .and_then(|()| {
                check_sizes(&[
                    ("vocab_size", tc.vocab_size, MAX_VOCAB),
                    ("max_position_embeddings", tc.max_position_embeddings, MAX_POSITIONS),
                ])
            })
            .and_then(|()| match tc.hidden_size % tc.num_attention_heads {
                0 => Ok(()),
                _ => Err(format!(
                    "num_attention_heads {} does not divide hidden_size {}",
                    tc.num_attention_heads, tc.hidden_size
                )),
            })
            .map_err(|e| bad(format!("text_config.{e}")))?;
        let top = resolve(config, parent);
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            Error::weights(&tokenizer_path, format!("cannot read the tokenizer ({e}); the folder needs tokenizer.json"))
        })?;
        let (image_out, projection_dim) = match family {
            Family::Clip => {
                let dim =
                    top["projection_dim"].as_u64().filter(|&d| d > 0 && d as usize <= MAX_WIDTH).ok_or_else(|| {
                        bad(format!(
                            "projection_dim = {} is out of range (supported: 1 to {MAX_WIDTH})",
                            top["projection_dim"]
                        ))
                    })? as usize;
                (ImageOut::Projection(linear_no_bias(vision.hidden_size, dim, vb.pp("visual_projection"))?), dim)
            }
            Family::Siglip => {
                let dim = text_json["projection_size"].as_u64().map_or(tc.hidden_size, |d| d as usize);
                (ImageOut::Map(Box::new(MapHead::new(vision, vb.pp("vision_model").pp("head"))?)), dim)
            }
        };
        let scalar =
            |name: &str| -> Result<f32> { Ok(vb.get_unchecked_dtype(name, DType::F32)?.flatten_all()?.to_vec1()?[0]) };
        let logit_scale = scalar("logit_scale")?;
        let logit_bias = if family == Family::Siglip { scalar("logit_bias")? } else { 0.0 };
        Ok(Self {
            family,
            tokenizer,
            text: TextTower::new(&tc, family, vb, projection_dim, pads_masked(dir)?)?,
            image_out,
            logit_scale,
            logit_bias,
        })
    }

    /// Token ids of a prompt, with the tokenizer's special tokens.
    pub fn token_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| Error::Config { field: "prompt", reason: format!("cannot tokenize {prompt:?}: {e}") })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The L2-normalised image embedding `[out]` from the tower's final-norm features.
    pub fn image_embedding(&self, features: &Tensor) -> Result<Tensor> {
        let e = match &self.image_out {
            ImageOut::Projection(p) => p.forward(&features.narrow(1, 0, 1)?.squeeze(1)?)?.squeeze(0)?,
            ImageOut::Map(head) => head.forward(features)?.squeeze(0)?,
        };
        normalize(&e)
    }

    /// The SigLIP pooled image vector before normalisation (what transformers calls the vision
    /// `pooler_output`); `None` for CLIP.
    pub fn pooled(&self, features: &Tensor) -> Result<Option<Tensor>> {
        match &self.image_out {
            ImageOut::Map(head) => Ok(Some(head.forward(features)?)),
            ImageOut::Projection(_) => Ok(None),
        }
    }

    /// L2-normalised text embeddings `[labels, out]`.
    pub fn text_embeddings(&self, prompts: &[&str]) -> Result<Tensor> {
        let rows =
            prompts.iter().map(|p| normalize(&self.text.embed(&self.token_ids(p)?)?)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// Logits and probabilities of `prompts` for an image embedding.
    pub fn scores(&self, image: &Tensor, prompts: &[&str]) -> Result<Scores> {
        let text = self.text_embeddings(prompts)?;
        let cos = text.matmul(&image.unsqueeze(1)?)?.squeeze(1)?; // [labels]
        let logits = ((cos * f64::from(self.logit_scale.exp()))? + f64::from(self.logit_bias))?;
        let probs = match self.family {
            Family::Clip => candle_nn::ops::softmax_last_dim(&logits)?,
            Family::Siglip => candle_nn::ops::sigmoid(&logits)?,
        };
        Ok(Scores { logits: logits.to_vec1()?, probs: probs.to_vec1()? })
    }
}

fn normalize(v: &Tensor) -> Result<Tensor> {
    Ok(v.broadcast_div(&v.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?)
}
