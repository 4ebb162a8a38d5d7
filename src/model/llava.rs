//! LLaVA (Liu et al., 2023, <https://arxiv.org/abs/2304.08485>; `LlavaForConditionalGeneration`):
//! a CLIP vision tower read at `vision_feature_layer`, a two-layer GELU projector, and a Llama
//! decoder whose `<image>` token embeddings are replaced by the projected patches.
//!
//! The tower is our [`VisionTransformer`] (so vision-side reducers and probes work unchanged) and
//! the decoder our [`Llama`] (attention at any layer, explicit position ids for pruning).
//!
//! Config: see [`LlavaSettings`] for the fields honoured and refused.

use std::path::Path;

use candle_core::{Module, Tensor};

use super::config::{VitConfig, unsupported};
use super::hf::{read_config, read_weights, vision_config};
use super::hf_config::{Class, resolve};
use super::hf_preprocess::HfPreprocessor;
use super::llama::{Llama, LlamaConfig};
use super::quant::{Linears, LoadOptions, Proj};
use super::state::TokenState;
use super::vit::VisionTransformer;
use crate::{Cancel, Error, Result};

/// A LLaVA `config.json` (`LlavaConfig`) resolved and checked, before any weight is read.
///
/// Honoured: `vision_config` (a CLIP or SigLIP tower, see [`super::hf`]), `text_config` (see
/// [`LlamaConfig::from_hf`]), `image_token_index` (or `image_token_id`), `vision_feature_layer`
/// (one layer), `vision_feature_select_strategy` (`default`, `full`), `projector_hidden_act`
/// (gelu only), `multimodal_projector_bias` (true only), `tie_word_embeddings` (must agree with
/// the text config's). Refused otherwise, by name. Ignored: `image_seq_length` (derived from the
/// tower), `ignore_index`, `pad_token_id`, dtypes.
#[derive(Debug, Clone)]
pub struct LlavaSettings {
    pub vision: VitConfig,
    pub text: LlamaConfig,
    pub image_token: u32,
    pub feature_blocks: usize,
    pub keep_cls: bool,
}

impl LlavaSettings {
    pub fn from_hf(json: &serde_json::Value) -> std::result::Result<Self, String> {
        let top = resolve(json, Class::Llava);
        let vision = vision_config(Class::Llava, json)?;
        let (_, text_json) = super::hf_config::resolve_section(Class::Llava, json, "text_config")?;
        let text = LlamaConfig::from_hf(&text_json, "text_config")?;
        check_tied(json, &text)?; // only what the file states
        let layers = vision.num_hidden_layers as i64;
        let feature_layer = top["vision_feature_layer"]
            .as_i64()
            .ok_or_else(|| unsupported("vision_feature_layer", &top["vision_feature_layer"], "one layer index"))?;
        // transformers indexes `hidden_states` (L + 1 entries): negative from the end.
        let feature_blocks = if feature_layer < 0 { layers + 1 + feature_layer } else { feature_layer };
        if !(0..=layers).contains(&feature_blocks) {
            return Err(format!("vision_feature_layer = {feature_layer} is out of range for {layers} vision layers"));
        }
        let keep_cls = match top["vision_feature_select_strategy"].as_str() {
            Some("default") => false,
            Some("full") => true,
            _ => {
                return Err(unsupported(
                    "vision_feature_select_strategy",
                    &top["vision_feature_select_strategy"],
                    "default, full",
                ));
            }
        };
        if top["projector_hidden_act"] != "gelu" {
            return Err(unsupported("projector_hidden_act", &top["projector_hidden_act"], "gelu"));
        }
        if top["multimodal_projector_bias"] != true {
            return Err(unsupported("multimodal_projector_bias", &top["multimodal_projector_bias"], "true"));
        }
        let image_token = top["image_token_id"]
            .as_u64()
            .or_else(|| top["image_token_index"].as_u64())
            .filter(|&t| t < text.vocab_size as u64)
            .ok_or_else(|| {
                format!(
                    "image_token_index = {} is not a token of the {}-token vocabulary",
                    top["image_token_index"], text.vocab_size
                )
            })? as u32;
        Ok(Self { vision, text, image_token, feature_blocks: feature_blocks as usize, keep_cls })
    }
}

/// The composite config's `tie_word_embeddings`, when the file states it, must agree with the
/// text config's, which decides whether `lm_head` is its own matrix.
pub(crate) fn check_tied(top: &serde_json::Value, text: &LlamaConfig) -> std::result::Result<(), String> {
    match top["tie_word_embeddings"].as_bool() {
        Some(t) if t != text.tie_word_embeddings => Err(format!(
            "tie_word_embeddings = {t} but text_config.tie_word_embeddings = {}; tokenlens needs them to agree",
            text.tie_word_embeddings
        )),
        _ => Ok(()),
    }
}

pub struct Llava {
    pub vision: VisionTransformer,
    /// The number of vision blocks whose output feeds the projector (`vision_feature_layer`
    /// counts transformers' hidden states, the embeddings first; -2 skips the last block).
    pub feature_blocks: usize,
    /// `"default"` drops CLS before projecting; `"full"` keeps it.
    pub keep_cls: bool,
    linear_1: Proj,
    linear_2: Proj,
    pub lm: Llama,
    pub image_token: u32,
    pub preprocessor: HfPreprocessor,
    /// `<image>` tokens per image: the patches, plus CLS with strategy `"full"` (what
    /// `LlavaProcessor` counts, and what [`Llava::project`] returns).
    pub image_seq_len: usize,
}

impl Llava {
    /// Loads a LLaVA folder: `config.json`, `model.safetensors`, and the image processor.
    /// Weight names follow either the saved LLaVA layout (`language_model.model.*`,
    /// `language_model.lm_head`, `vision_tower.*`, `multi_modal_projector.*`) or transformers 5's
    /// module tree (`model.language_model.*`, `lm_head`, `model.vision_tower.*`,
    /// `model.multi_modal_projector.*`), with or without the tower's `vision_model.` level.
    /// On the `auto` device, linear layers in f32 on the CPU ([`LoadOptions::default`]).
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, &Linears::for_options(&LoadOptions::default())?)
    }

    /// [`Llava::load`] with the linear layers made by `linears` (f32 or quantized).
    pub fn load_with(dir: &Path, linears: &Linears) -> Result<Self> {
        let (config_path, json) = read_config(dir)?;
        let bad = |path: &Path, reason: String| Error::weights(path, reason);
        if json["model_type"] != "llava" {
            return Err(bad(&config_path, format!("model_type is {}, not llava", json["model_type"])));
        }
        let c = LlavaSettings::from_hf(&json).map_err(|r| bad(&config_path, r))?;
        let (vision_cfg, text_cfg, image_token) = (c.vision, c.text, c.image_token);
        let (feature_blocks, keep_cls) = (c.feature_blocks, c.keep_cls);

        let weights = read_weights(dir)?;
        let weights_path = weights.path.clone();
        // The module tree keeps everything under `model.` but `lm_head`.
        let root = if weights.contains("model.language_model.embed_tokens.weight") { "model." } else { "" };
        let tower = if weights.contains(&format!("{root}vision_tower.vision_model.embeddings.class_embedding")) {
            format!("{root}vision_tower.vision_model")
        } else {
            format!("{root}vision_tower")
        };
        linears.stream_from(weights.raw());
        let vb = weights.into_var_builder(linears.device());
        let mismatch = |e: Error| bad(&weights_path, format!("does not match config.json (llava): {e}"));
        let lm = if root.is_empty() {
            Llama::from_parts(&text_cfg, vb.pp("language_model.model"), vb.pp("language_model.lm_head"), linears)
        } else {
            Llama::from_parts(&text_cfg, vb.pp("model.language_model"), vb.pp("lm_head"), linears)
        };
        let projector = vb.pp(format!("{root}multi_modal_projector"));
        let grid = vision_cfg.image_size / vision_cfg.patch_size;
        let image_seq_len = grid * grid + if keep_cls { vision_cfg.num_prefix_tokens } else { 0 };
        let (dv, dt) = (vision_cfg.hidden_size, text_cfg.hidden_size);
        Ok(Self {
            vision: VisionTransformer::load_with(&vision_cfg, vb.pp(tower), linears).map_err(mismatch)?,
            feature_blocks,
            keep_cls,
            linear_1: linears.linear(dv, dt, true, projector.pp("linear_1")).map_err(mismatch)?,
            linear_2: linears.linear(dt, dt, true, projector.pp("linear_2")).map_err(mismatch)?,
            lm: lm.map_err(mismatch)?,
            image_token,
            preprocessor: HfPreprocessor::load(dir)?,
            image_seq_len,
        })
    }

    /// The vision state the projector reads: `feature_blocks` blocks run on the pixels.
    pub fn vision_state(&self, pixels: &Tensor, cancel: &Cancel) -> Result<TokenState> {
        self.vision.forward_to(pixels, self.feature_blocks, cancel)
    }

    /// Projected image tokens `[n, text_dim]` from a vision state.
    pub fn project(&self, state: &TokenState) -> Result<Tensor> {
        let hidden = state.hidden.squeeze(0)?;
        let skip = if self.keep_cls { 0 } else { self.vision.cfg.num_prefix_tokens };
        let patches = hidden.narrow(0, skip, hidden.dim(0)? - skip)?;
        Ok(self.linear_2.forward(&self.linear_1.forward(&patches)?.gelu_erf()?)?)
    }

    /// The decoder's input `[1, n, d]` with the image tokens in the `<image>` slots.
    pub fn merge(&self, ids: &[u32], image: &Tensor) -> Result<Tensor> {
        self.lm.embed_with_image(ids, self.image_token, image)
    }

    /// `rendered` (a chat prompt) with every `<image>` repeated `image_seq_len` times, as
    /// `LlavaProcessor` expands it.
    pub fn expand_image(&self, rendered: &str) -> String {
        rendered.replace("<image>", &"<image>".repeat(self.image_seq_len))
    }
}
