//! Idefics3 / SmolVLM (Laurençon et al., 2024, <https://arxiv.org/abs/2408.12637>;
//! `Idefics3ForConditionalGeneration`): a SigLIP tower, a pixel-shuffle connector that folds
//! each `s`x`s` block of patches into one token, and a Llama decoder.
//!
//! Image splitting (SmolVLM's tiles) is not read yet: one global image per prompt.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder, linear_no_bias};
use image::RgbImage;

use super::hf::{read_config, read_weights, vision_config};
use super::hf_preprocess::{read_image_processor, to_pixels};
use super::llama::{Llama, LlamaConfig};
use super::pil_resize::{Filter, resize};
use super::vit::VisionTransformer;
use crate::{Cancel, Error, Result};

/// `Idefics3ImageProcessor` without splitting: the longest edge to `longest_edge` (aspect
/// kept), then a square of `max_edge` (aspect not kept), rescaled to [-1, 1] by mean/std.
#[derive(Debug, Clone)]
pub struct Idefics3Preprocessor {
    pub longest_edge: u32,
    pub max_edge: u32,
    filter: Filter,
    rescale: f64,
    mean: [f32; 3],
    std: [f32; 3],
}

impl Idefics3Preprocessor {
    fn from_json(json: &serde_json::Value) -> std::result::Result<Self, String> {
        let edge = |key: &str| {
            json[key]["longest_edge"].as_u64().map(|e| e as u32).ok_or_else(|| format!("no {key}.longest_edge"))
        };
        if json["do_image_splitting"].as_bool() == Some(true) {
            return Err("do_image_splitting is not supported yet".into());
        }
        let resample = json["resample"].as_u64().unwrap_or(1);
        let triple = |key: &str| -> [f32; 3] { serde_json::from_value(json[key].clone()).unwrap_or([0.5; 3]) };
        Ok(Self {
            longest_edge: edge("size")?,
            max_edge: edge("max_image_size")?,
            filter: Filter::from_pil(resample).ok_or_else(|| format!("resample {resample} is not supported"))?,
            rescale: json["rescale_factor"].as_f64().unwrap_or(1.0 / 255.0),
            mean: triple("image_mean"),
            std: triple("image_std"),
        })
    }

    /// The 8-bit square the tower sees.
    pub fn resize(&self, photo: &RgbImage) -> RgbImage {
        let (w, h) = photo.dimensions();
        let edge = self.longest_edge;
        // transformers' `_resize_output_size_rescale_to_max_len`: the short side truncated, then
        // rounded up to even.
        let even = |v: u32| (v + v % 2).max(1);
        let (ow, oh) = if w >= h {
            (edge, even((f64::from(edge) / (f64::from(w) / f64::from(h))) as u32))
        } else {
            (even((f64::from(edge) * (f64::from(w) / f64::from(h))) as u32), edge)
        };
        let first = resize(photo, ow, oh, self.filter);
        resize(&first, self.max_edge, self.max_edge, self.filter)
    }

    /// `[1, 3, h, w]` pixel values.
    pub fn pixels(&self, img: &RgbImage, device: &Device) -> Result<Tensor> {
        to_pixels(img, Some(self.rescale), Some((self.mean, self.std)), device)
    }
}

pub struct Idefics3 {
    pub vision: VisionTransformer,
    pub scale_factor: usize,
    proj: Linear,
    pub lm: Llama,
    pub image_token: u32,
    pub preprocessor: Idefics3Preprocessor,
}

impl Idefics3 {
    /// Loads an Idefics3 / SmolVLM folder: `config.json`, `model.safetensors`,
    /// `processor_config.json` (or `preprocessor_config.json`).
    pub fn load(dir: &Path) -> Result<Self> {
        let (config_path, json) = read_config(dir)?;
        let bad = |path: &Path, reason: String| Error::weights(path, reason);
        if json["model_type"] != "idefics3" {
            return Err(bad(&config_path, format!("model_type is {}, not idefics3", json["model_type"])));
        }
        let vision_cfg = vision_config(&json["vision_config"]).map_err(|r| bad(&config_path, r))?;
        let text_cfg: LlamaConfig = serde_json::from_value(json["text_config"].clone())
            .map_err(|e| bad(&config_path, format!("text_config is not a Llama config: {e}")))?;
        let scale_factor = json["scale_factor"].as_u64().unwrap_or(2) as usize;
        let grid = vision_cfg.image_size / vision_cfg.patch_size;
        if scale_factor == 0 || !grid.is_multiple_of(scale_factor) {
            return Err(bad(
                &config_path,
                format!("scale_factor {scale_factor} does not divide the {grid}x{grid} grid"),
            ));
        }
        let image_token =
            json["image_token_id"].as_u64().ok_or_else(|| bad(&config_path, "no image_token_id".into()))? as u32;
        let preprocessor = Self::read_preprocessor(dir)?;

        let (weights_path, weights) = read_weights(dir)?;
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let mismatch = |e: Error| bad(&weights_path, format!("does not match config.json (idefics3): {e}"));
        let model = vb.pp("model");
        let width = vision_cfg.hidden_size * scale_factor * scale_factor;
        Ok(Self {
            vision: VisionTransformer::new(&vision_cfg, model.pp("vision_model")).map_err(mismatch)?,
            scale_factor,
            proj: linear_no_bias(width, text_cfg.hidden_size, model.pp("connector.modality_projection.proj"))
                .map_err(|e| mismatch(e.into()))?,
            lm: Llama::from_parts(&text_cfg, model.pp("text_model"), vb.pp("lm_head")).map_err(mismatch)?,
            image_token,
            preprocessor,
        })
    }

    fn read_preprocessor(dir: &Path) -> Result<Idefics3Preprocessor> {
        let (path, json) = read_image_processor(dir)?;
        Idefics3Preprocessor::from_json(&json).map_err(|reason| Error::weights(&path, reason))
    }

    /// The tower's output after its final norm, `[1, patches, dim]`.
    pub fn vision_features(&self, pixels: &Tensor, cancel: &Cancel) -> Result<Tensor> {
        self.vision.final_norm(&self.vision.forward_to(pixels, self.vision.num_layers(), cancel)?)
    }

    /// The connector: pixel shuffle (transformers' exact reshapes) then the projection, giving
    /// image tokens `[patches / s², text_dim]`.
    pub fn connect(&self, features: &Tensor) -> Result<Tensor> {
        let (_, seq, d) = features.dims3()?;
        let s = self.scale_factor;
        let side = (seq as f64).sqrt().round() as usize;
        if side * side != seq || !side.is_multiple_of(s) {
            return Err(Error::Config {
                field: "image",
                reason: format!("{seq} patches do not form a grid divisible by {s}"),
            });
        }
        let x = features.reshape((1, side, side / s, d * s))?.permute((0, 2, 1, 3))?.contiguous()?;
        let x = x.reshape((1, side / s, side / s, d * s * s))?.permute((0, 2, 1, 3))?.contiguous()?;
        let x = x.reshape((seq / (s * s), d * s * s))?;
        Ok(self.proj.forward(&x)?)
    }
}
