//! One config-driven ViT encoder with inspection points and a resumable forward.
//!
//! DINOv2 (Oquab et al., 2023, <https://arxiv.org/abs/2304.07193>); weights under Hugging Face
//! `Dinov2Model` names (`transformers/models/dinov2/modeling_dinov2.py`).
//!
//! # Design
//! Question: how can reducers change tokens mid-network, and sliders re-run only what follows?
//! Decision: the forward is a loop over blocks on a [`TokenState`]; an [`Intervene`] hook is
//! called between attention and MLP and after each block, and [`VisionTransformer::run_blocks`]
//! resumes from any state (a `TokenState` is cheap to clone: tensors are reference-counted).
//! Trade-off: batch size is 1, which is what an interactive tool needs.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, VarBuilder, layer_norm};

use super::config::{BlockNames, VitConfig};
use super::hooks::{HookPoint, Probe, Trace};
use super::layers::{AttnRecord, Block};
use super::quant::{Linears, TOWER_FORMAT};
use super::resize::{Kernel, resize2d};
use super::state::TokenState;
use crate::{Cancel, Error, Result};

/// What an intervention needs recorded at a block, computed even when the probe does not ask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub probs: bool,
    pub keys: bool,
}

/// A change to the rows between blocks (the model decides where, the reducer how), for the
/// encoder (`S`: its [`TokenState`]) and the decoder (`S`: [`super::llama::DecoderState`], whose
/// layers call only `after_block`: they have no merge point between attention and MLP).
pub trait Intervene<S = TokenState> {
    fn needs(&self, _layer: usize) -> Needs {
        Needs::default()
    }
    /// Between block `layer`'s attention and its MLP (ToMe merges here).
    fn after_attention(&mut self, _layer: usize, _state: &mut S, _attn: &AttnRecord) -> Result<()> {
        Ok(())
    }
    /// After block (or decoder layer) `layer`: pruning methods act here (`state.layer` is
    /// `layer + 1`).
    fn after_block(&mut self, _layer: usize, _state: &mut S, _attn: &AttnRecord) -> Result<()> {
        Ok(())
    }
}

/// The full model: no intervention.
pub struct NoIntervention;
impl<S> Intervene<S> for NoIntervention {}

/// Patch embedding, the prefix tokens (CLS, DeiT's distillation token) and the position table
/// resized to the grid.
pub struct Embeddings {
    patch: Conv2d,
    /// `[1, prefix, dim]`; `None` for encoders without prefix tokens (SigLIP).
    prefix: Option<Tensor>,
    /// `[1, prefix + g*g, dim]` at the training grid `g`.
    position: Tensor,
    position_grid: usize,
}

impl Embeddings {
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let conv = Conv2dConfig { stride: cfg.patch_size, ..Default::default() };
        let (g, d, p) = (cfg.position_grid, cfg.hidden_size, cfg.num_prefix_tokens);
        let clip = cfg.block_names == BlockNames::Clip;
        let patch_vb = if clip { vb.pp("patch_embedding") } else { vb.pp("patch_embeddings").pp("projection") };
        let patch = if cfg.patch_bias {
            candle_nn::conv2d(cfg.num_channels, d, cfg.patch_size, conv, patch_vb)?
        } else {
            candle_nn::conv2d_no_bias(cfg.num_channels, d, cfg.patch_size, conv, patch_vb)?
        };
        let mut prefix = Vec::new();
        if p >= 1 {
            prefix.push(if clip {
                vb.get(d, "class_embedding")?.reshape((1, 1, d))?
            } else {
                vb.get((1, 1, d), "cls_token")?
            });
        }
        if p == 2 {
            prefix.push(vb.get((1, 1, d), "distillation_token")?);
        }
        let position = if clip {
            vb.pp("position_embedding").get((p + g * g, d), "weight")?.unsqueeze(0)?
        } else {
            vb.get((1, p + g * g, d), "position_embeddings")?
        };
        Ok(Self {
            patch,
            prefix: if prefix.is_empty() { None } else { Some(Tensor::cat(&prefix, 1)?) },
            position,
            position_grid: g,
        })
    }

    /// `[1, prefix + rows*cols, dim]` embeddings and the patch grid (rows, cols).
    pub fn forward(&self, pixels: &Tensor) -> Result<(Tensor, (usize, usize))> {
        let patches = self.patch.forward(pixels)?; // [1, dim, rows, cols]
        let (_, d, rows, cols) = patches.dims4()?;
        let patches = patches.flatten_from(2)?.transpose(1, 2)?; // [1, rows*cols, dim]
        let tokens = match &self.prefix {
            Some(prefix) => Tensor::cat(&[prefix, &patches], 1)?,
            None => patches,
        };
        Ok((tokens.broadcast_add(&self.position_for(rows, cols, d)?)?, (rows, cols)))
    }

    /// The position table resized bicubically (a = -0.75, half-pixel) from the training grid,
    /// exactly as the exported graph's `Resize` (and PyTorch's bicubic interpolate) does.
    pub fn position_for(&self, rows: usize, cols: usize, d: usize) -> Result<Tensor> {
        let g = self.position_grid;
        let p = self.prefix.as_ref().map_or(Ok(0), |t| t.dim(1))?;
        let table = self.position.narrow(1, p, g * g)?.reshape((1, g, g, d))?.permute((0, 3, 1, 2))?; // [1, d, g, g]
        let table = if (rows, cols) == (g, g) {
            table
        } else {
            resize2d(&table.contiguous()?, rows, cols, Kernel::Cubic { a: -0.75 })?
        };
        let table = table.permute((0, 2, 3, 1))?.reshape((1, rows * cols, d))?;
        if p == 0 {
            return Ok(table);
        }
        Ok(Tensor::cat(&[&self.position.narrow(1, 0, p)?, &table], 1)?)
    }
}

pub struct VisionTransformer {
    pub cfg: VitConfig,
    embeddings: Embeddings,
    pre_norm: Option<LayerNorm>,
    blocks: Vec<Block>,
    layernorm: LayerNorm,
}

impl VisionTransformer {
    /// `vb` at the encoder's root (`backbone` in the default model).
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        Self::load_with(cfg, vb, &Linears::f32())
    }

    /// [`VisionTransformer::new`] for a VLM's tower: under a quantization (`linears`) each
    /// block's linear layers are quantized to [`TOWER_FORMAT`] as soon as the block is read and
    /// counted in `linears`, so one block's f32 weights exist at a time (quantizing the whole
    /// tower after reading it left LLaVA-1.5-7B's freed 1.2 GB of f32 pages resident: the
    /// allocator keeps them for reuse).
    pub fn load_with(cfg: &VitConfig, vb: VarBuilder, linears: &Linears) -> Result<Self> {
        cfg.validate()?;
        let clip = cfg.block_names == BlockNames::Clip;
        let layers = vb.pp("encoder").pp(if clip { "layers" } else { "layer" });
        let block = |i: usize| -> Result<Block> {
            let prefix = layers.pp(i).prefix();
            let cached = |part: &str, dims| linears.cached(&format!("{prefix}.{part}"), TOWER_FORMAT, dims);
            let mut block = Block::new_cached(cfg, layers.pp(i), &cached)?;
            if linears.quantize().is_some() {
                linears.count_tower(block.quantize_linears(TOWER_FORMAT, &prefix, linears)?);
            }
            Ok(block)
        };
        let blocks = (0..cfg.num_hidden_layers).map(block).collect::<Result<_>>()?;
        let norm = |name: &str| layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp(name));
        Ok(Self {
            cfg: cfg.clone(),
            embeddings: Embeddings::new(cfg, vb.pp("embeddings"))?,
            pre_norm: if cfg.pre_norm { Some(norm("pre_layrnorm")?) } else { None }, // sic, CLIP's name
            blocks,
            layernorm: norm(if clip { "post_layernorm" } else { "layernorm" })?,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    pub fn embeddings(&self) -> &Embeddings {
        &self.embeddings
    }

    /// Embeds `[1, channels, h, w]` pixels: the state before block 0. Sides that are not a
    /// multiple of the patch leave their last pixels unread, as transformers' strided patch
    /// convolution does (SigLIP so400m: 384 px, patch 14).
    pub fn embed(&self, pixels: &Tensor) -> Result<TokenState> {
        let (_, c, h, w) = pixels.dims4()?;
        let p = self.cfg.patch_size;
        if c != self.cfg.num_channels || h < p || w < p {
            return Err(Error::Config {
                field: "pixels",
                reason: format!(
                    "expected [1, {}, h, w] with h, w at least {p}, got [1, {c}, {h}, {w}]",
                    self.cfg.num_channels
                ),
            });
        }
        // Pixels made on the host go to the model's device (a no-op on the CPU).
        let pixels = &pixels.to_device(self.embeddings.position.device())?;
        let (tokens, grid) = self.embeddings.forward(pixels)?;
        let tokens = match &self.pre_norm {
            Some(norm) => norm.forward(&tokens)?,
            None => tokens,
        };
        Ok(TokenState::fresh(tokens, self.cfg.num_prefix_tokens, grid))
    }

    /// Runs blocks `state.layer..until`, recording what `probe` asks and letting `intervene`
    /// change the state between blocks. Checks `cancel` before each block.
    pub fn run_blocks(
        &self,
        state: &mut TokenState,
        until: usize,
        probe: &Probe,
        trace: &mut Trace,
        intervene: &mut dyn Intervene,
        cancel: &Cancel,
    ) -> Result<()> {
        let until = until.min(self.blocks.len());
        while state.layer < until {
            cancel.check()?;
            let l = state.layer;
            let needs = intervene.needs(l);
            let want_probs = needs.probs || probe.wants(HookPoint::AttnProbs(l));
            let want_keys = needs.keys || probe.wants(HookPoint::Keys(l));
            let bias = state.attention_bias()?;
            let block = &self.blocks[l];
            let (hidden, attn) = block.attend(&state.hidden, bias.as_ref(), want_probs, want_keys)?;
            if let Some(p) = &attn.probs {
                probe.tap(HookPoint::AttnProbs(l), trace, || Ok(p.clone()))?;
            }
            if let Some(k) = &attn.keys {
                probe.tap(HookPoint::Keys(l), trace, || Ok(k.clone()))?;
            }
            state.hidden = hidden;
            intervene.after_attention(l, state, &attn)?;
            state.hidden = block.feed_forward(&state.hidden)?;
            probe.tap(HookPoint::Resid(l), trace, || Ok(state.hidden.clone()))?;
            probe.tap(HookPoint::TokenNorms(l), trace, || {
                Ok(state.hidden.sqr()?.sum_keepdim(2)?.sqrt()?.flatten_all()?)
            })?;
            state.layer = l + 1;
            intervene.after_block(l, state, &attn)?;
        }
        Ok(())
    }

    /// Embeds `pixels` and runs blocks `0..until` with nothing recorded or changed (how a VLM
    /// reads its tower).
    pub fn forward_to(&self, pixels: &Tensor, until: usize, cancel: &Cancel) -> Result<TokenState> {
        let mut state = self.embed(pixels)?;
        self.run_blocks(&mut state, until, &Probe::default(), &mut Trace::default(), &mut NoIntervention, cancel)?;
        Ok(state)
    }

    /// The final LayerNorm over all tokens: `[1, tokens, dim]`.
    pub fn final_norm(&self, state: &TokenState) -> Result<Tensor> {
        Ok(self.layernorm.forward(&state.hidden)?)
    }
}
