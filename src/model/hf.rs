//! Vision encoders from Hugging Face model folders (`config.json` + `model.safetensors`), run by
//! the same [`VisionTransformer`] as the default model: ViT (`ViTModel`,
//! `ViTForImageClassification`), DeiT (with or without the distillation token), DINOv2, and
//! the vision towers of CLIP and SigLIP (`CLIPModel`, `SiglipModel` folders). Families differ
//! only in config axes ([`VitConfig`]: names, qkv bias, prefix tokens, layer scale, pre-norm),
//! never in a second forward pass. Zero-shot scores (CLIP/SigLIP text towers and heads) are in
//! [`super::zero_shot`].
//!
//! `config.json` is read as transformers reads it ([`super::hf_config`]: class defaults, `null`
//! as absent). Honoured: `model_type` (vit, deit, dinov2, clip, siglip, clip_vision_model,
//! siglip_vision_model; idefics3_vision inside SmolVLM), `architectures`, `hidden_size`,
//! `num_hidden_layers`, `num_attention_heads`, `intermediate_size` (DINOv2: `mlp_ratio`),
//! `layer_norm_eps`, `image_size`, `patch_size`, `num_channels` (3 only), `hidden_act` (gelu,
//! gelu_pytorch_tanh, gelu_new, quick_gelu), `qkv_bias`, `id2label`. Refused: other activations
//! and model types, DINOv2's `use_swiglu_ffn: true`, sizes out of range. Ignored (they do not
//! change the features): dropouts, initialisers, pooler and backbone settings, dtypes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Module, Tensor};
use candle_nn::{Linear, linear};
use serde::Deserialize;

use super::config::{Activation, BlockNames, VitConfig, unsupported};
use super::hf_config::{Class, resolve, resolve_section};
use super::memory::{self, Estimate};
use super::quant::DeviceChoice;
use super::vit::VisionTransformer;
use super::weights::Weights;
use super::zero_shot::ZeroShot;
use crate::{Error, Result};

/// The fields of a vision config we read (the module doc lists what they mean to us), after
/// [`resolve`] filled in its class's defaults.
#[derive(Debug, Clone, Deserialize)]
struct HfConfig {
    model_type: String,
    #[serde(default)]
    architectures: Vec<String>,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: Option<usize>,
    mlp_ratio: Option<f64>,
    layer_norm_eps: f64,
    image_size: usize,
    patch_size: usize,
    num_channels: usize,
    hidden_act: String,
    qkv_bias: bool,
    /// Dinov2Config only.
    #[serde(default)]
    use_swiglu_ffn: bool,
    #[serde(default)]
    id2label: BTreeMap<String, String>,
}

/// The image classes of a classifier, or none for a bare encoder.
#[derive(Debug)]
pub enum Head {
    None,
    /// `classifier` on the CLS token.
    Cls(Linear),
    /// DeiT with a teacher: the mean of `cls_classifier` on CLS and `distillation_classifier`
    /// on the distillation token.
    ClsAndDistillation(Linear, Linear),
}

/// A loaded Hugging Face vision model.
pub struct HfVision {
    pub model_type: String,
    pub architecture: String,
    pub encoder: VisionTransformer,
    pub head: Head,
    /// Class names, by class index.
    pub labels: Vec<String>,
    /// CLIP and SigLIP: the text tower and heads that score prompt labels.
    pub zero_shot: Option<ZeroShot>,
}

impl HfVision {
    /// The memory guard's estimate for the folder's model, from its config alone.
    pub fn memory_estimate(dir: &Path) -> Result<Estimate> {
        Ok(Settings::read(dir)?.estimate())
    }

    /// Loads `dir/config.json` and `dir/model.safetensors`, after the memory guard, on the
    /// `auto` device ([`DeviceChoice::resolve`]).
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_on(dir, &DeviceChoice::Auto.resolve()?)
    }

    /// [`HfVision::load`] on `device`.
    pub fn load_on(dir: &Path, device: &Device) -> Result<Self> {
        let settings = Settings::read(dir)?;
        memory::guard(&settings.estimate().placed(device, None), device)?;
        let Settings { json, hf, architecture, cfg, tower_root, .. } = settings;
        let bad = |path: &Path, reason: String| Error::weights(path, reason);

        let weights = read_weights(dir)?;
        let weights_path = weights.path.clone();
        // Classifiers keep the encoder under `vit.` / `deit.`; bare models at the root.
        let root = tower_root.unwrap_or_else(|| {
            [hf.model_type.as_str(), "vit", "deit"]
                .into_iter()
                .find(|p| weights.contains(&format!("{p}.embeddings.cls_token")))
                .unwrap_or("")
        });
        let vb = weights.into_var_builder(device);
        let mismatch = |e: Error| bad(&weights_path, format!("does not match config.json ({architecture}): {e}"));
        let encoder_vb = if root.is_empty() { vb.clone() } else { vb.pp(root) };
        let encoder = VisionTransformer::new(&cfg, encoder_vb).map_err(mismatch)?;
        let num_labels = hf.id2label.len();
        let head = match architecture.as_str() {
            "DeiTForImageClassificationWithTeacher" => Head::ClsAndDistillation(
                linear(cfg.hidden_size, num_labels, vb.pp("cls_classifier")).map_err(|e| mismatch(e.into()))?,
                linear(cfg.hidden_size, num_labels, vb.pp("distillation_classifier"))
                    .map_err(|e| mismatch(e.into()))?,
            ),
            a if a.ends_with("ForImageClassification") => {
                Head::Cls(linear(cfg.hidden_size, num_labels, vb.pp("classifier")).map_err(|e| mismatch(e.into()))?)
            }
            _ => Head::None,
        };
        let labels = (0..num_labels).map(|i| hf.id2label.get(&i.to_string()).cloned().unwrap_or_default()).collect();
        let zero_shot = match json.get("text_config") {
            Some(_) => Some(ZeroShot::load(dir, &json, &cfg, vb).map_err(mismatch)?),
            None => None,
        };
        Ok(Self { model_type: hf.model_type, architecture, encoder, head, labels, zero_shot })
    }

    /// Class logits from the final-norm features `[1, tokens, dim]` (prefix tokens first).
    pub fn logits(&self, features: &Tensor) -> Result<Option<Tensor>> {
        self.head.logits(features)
    }
}

/// A vision folder's config, read and checked before any weight.
struct Settings {
    json: serde_json::Value,
    class: Class,
    hf: HfConfig,
    architecture: String,
    cfg: VitConfig,
    /// Where the tower's weights are (CLIP, SigLIP); `None`: found from the names.
    tower_root: Option<&'static str>,
}

impl Settings {
    fn read(dir: &Path) -> Result<Self> {
        let (config_path, json) = read_config(dir)?;
        let bad = |path: &Path, reason: String| Error::weights(path, reason);
        let model_type = json["model_type"].as_str().unwrap_or_default();
        let class = Class::for_model_type(model_type).ok_or_else(|| {
            bad(
                &config_path,
                format!(
                    "unsupported model_type `{model_type}`; tokenlens reads vit, deit, dinov2, clip and siglip folders"
                ),
            )
        })?;
        // CLIP and SigLIP keep the vision tower's config in `vision_config` and its weights under
        // `vision_model`; `CLIPVisionModel` / `SiglipVisionModel` folders hold the tower's own
        // config, with the same weight names.
        let (vision_json, tower_root) = match class {
            Class::Clip | Class::Siglip => {
                let (_, v) = resolve_section(class, &json, "vision_config").map_err(|r| bad(&config_path, r))?;
                (v, Some("vision_model"))
            }
            Class::ClipVision | Class::SiglipVision => (resolve(&json, class), Some("vision_model")),
            Class::Vit | Class::Deit | Class::Dinov2 => (resolve(&json, class), None),
            _ => {
                return Err(bad(
                    &config_path,
                    format!("model_type `{model_type}` is not a vision encoder; open it as a vision-language model"),
                ));
            }
        };
        let mut hf: HfConfig = serde_json::from_value(vision_json)
            .map_err(|e| bad(&config_path, format!("not a vision config.json: {e}")))?;
        if hf.architectures.is_empty() {
            hf.architectures = serde_json::from_value(json["architectures"].clone()).unwrap_or_default();
        }
        let architecture = hf.architectures.first().cloned().unwrap_or_else(|| hf.model_type.clone());
        let cfg = vit_config(&hf).map_err(|reason| bad(&config_path, reason))?;
        Ok(Self { json, class, hf, architecture, cfg, tower_root })
    }

    fn estimate(&self) -> Estimate {
        memory::encoder(&self.architecture, &self.cfg, self.hf.id2label.len(), self.class, &self.json)
    }
}

impl Head {
    /// `[1, classes]` logits from the final-norm features `[1, tokens, dim]`.
    pub fn logits(&self, features: &Tensor) -> Result<Option<Tensor>> {
        let token = |i: usize| features.narrow(1, i, 1).and_then(|t| t.squeeze(1));
        Ok(match self {
            Head::None => None,
            Head::Cls(classifier) => Some(classifier.forward(&token(0)?)?),
            Head::ClsAndDistillation(cls, dist) => {
                Some(((cls.forward(&token(0)?)? + dist.forward(&token(1)?)?)? / 2.0)?)
            }
        })
    }
}

/// `dir/config.json`, parsed, with its path (for error messages).
pub(crate) fn read_config(dir: &Path) -> Result<(PathBuf, serde_json::Value)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::weights(&path, format!("cannot read: {e}")))?;
    let json = serde_json::from_str(&text).map_err(|e| Error::weights(&path, format!("not JSON: {e}")))?;
    Ok((path, json))
}

/// The folder's weights, memory-mapped: `model.safetensors`, or the shards
/// `model.safetensors.index.json` lists (how big checkpoints such as LLaVA-1.5-7B are saved).
/// [`Weights::path`] is the file errors should name.
pub(crate) fn read_weights(dir: &Path) -> Result<Weights> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.is_file() || !index.is_file() {
        return Weights::map(&single, std::slice::from_ref(&single), |path, e| {
            Error::weights(path, format!("cannot read the weights ({e}); the folder needs model.safetensors"))
        });
    }
    let text = std::fs::read_to_string(&index).map_err(|e| Error::weights(&index, format!("cannot read: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::weights(&index, format!("not JSON: {e}")))?;
    let mut shards: Vec<PathBuf> = json["weight_map"]
        .as_object()
        .ok_or_else(|| Error::weights(&index, "no weight_map"))?
        .values()
        .filter_map(|v| v.as_str())
        .map(|shard| dir.join(shard))
        .collect();
    shards.sort_unstable();
    shards.dedup();
    Weights::map(&index, &shards, |path, e| {
        Error::weights(path, format!("cannot read this shard of the weights ({e})"))
    })
}

/// Our config axes for a composite model's vision tower (CLIP, SigLIP, a VLM): `parent`'s
/// `vision_config`, resolved as transformers resolves it. Errors name the field.
pub fn vision_config(parent: Class, json: &serde_json::Value) -> std::result::Result<VitConfig, String> {
    let (_, resolved) = resolve_section(parent, json, "vision_config")?;
    let hf: HfConfig =
        serde_json::from_value(resolved).map_err(|e| format!("vision_config is not a vision config: {e}"))?;
    vit_config(&hf).map_err(|e| format!("vision_config.{e}"))
}

/// Our config axes for a Hugging Face config.
fn vit_config(hf: &HfConfig) -> std::result::Result<VitConfig, String> {
    // (names, layer scale, prefix tokens, pre-norm, patch bias)
    let (block_names, layerscale, num_prefix_tokens, pre_norm, patch_bias) = match hf.model_type.as_str() {
        "vit" => (BlockNames::Vit, false, 1, false, true),
        // Every DeiT carries the distillation token; the plain classifier reads only CLS.
        "deit" => (BlockNames::Vit, false, 2, false, true),
        "dinov2" => (BlockNames::Dinov2, true, 1, false, true),
        "clip_vision_model" => (BlockNames::Clip, false, 1, true, false),
        // Idefics3 (SmolVLM) uses SigLIP's tower.
        "siglip_vision_model" | "idefics3_vision" => (BlockNames::Clip, false, 0, false, true),
        other => {
            return Err(unsupported(
                "model_type",
                other,
                "vit, deit, dinov2, clip_vision_model, siglip_vision_model, idefics3_vision",
            ));
        }
    };
    let hidden_act = match hf.hidden_act.as_str() {
        "gelu" => Activation::Gelu,
        "gelu_pytorch_tanh" | "gelu_new" => Activation::GeluPytorchTanh,
        "quick_gelu" => Activation::QuickGelu,
        other => {
            return Err(unsupported("hidden_act", other, "gelu, gelu_pytorch_tanh, gelu_new, quick_gelu"));
        }
    };
    if hf.use_swiglu_ffn {
        return Err(unsupported("use_swiglu_ffn", true, "false (DINOv2's GELU MLP)"));
    }
    if hf.num_channels != 3 {
        return Err(unsupported("num_channels", hf.num_channels, "3 (RGB)"));
    }
    let intermediate_size = match (hf.intermediate_size, hf.mlp_ratio) {
        (Some(n), _) => n,
        // `Dinov2MLP`: `int(hidden_size * mlp_ratio)`.
        (None, Some(r)) if r.is_finite() && r > 0.0 && r < 64.0 => (hf.hidden_size as f64 * r) as usize,
        (None, Some(r)) => return Err(unsupported("mlp_ratio", r, "a ratio in (0, 64)")),
        (None, None) => return Err("config.json gives neither intermediate_size nor mlp_ratio".into()),
    };
    let cfg = VitConfig {
        hidden_size: hf.hidden_size,
        num_hidden_layers: hf.num_hidden_layers,
        num_attention_heads: hf.num_attention_heads,
        intermediate_size,
        layer_norm_eps: hf.layer_norm_eps,
        patch_size: hf.patch_size,
        image_size: hf.image_size,
        num_channels: hf.num_channels,
        hidden_act,
        layerscale,
        position_grid: hf.image_size.checked_div(hf.patch_size).unwrap_or(0), // a 0 patch is refused below
        block_names,
        qkv_bias: hf.qkv_bias,
        num_prefix_tokens,
        pre_norm,
        patch_bias,
    };
    cfg.check()?; // patch size divides the image, heads divide the width, eps
    Ok(cfg)
}
