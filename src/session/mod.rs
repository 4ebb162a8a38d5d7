//! The single entry point the CLI, the GUI and the tests call: a loaded model plus the
//! operations on an image. Neither front end holds model code.

mod run;

pub use run::{DropFill, FullRun, RunResult, RunSpec, RunTimings};
pub(crate) use run::{EncoderCache, ReducedEncoder, encoder_states, reduce_encoder};

use std::path::Path;
use std::time::Instant;

use candle_core::Tensor;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::analysis::attention;
use crate::model::preprocess::{self, Prepared};
use crate::model::{HookPoint, Model, ModelSource, OutputHead, Preprocessor, TokenState, fetch};
use crate::{Cancel, Result};

/// A decoded photo and what the model sees of it.
#[derive(Debug, Clone)]
pub struct ImageInput {
    pub photo: RgbImage,
    pub prepared: Prepared,
    /// sha256 of the file's bytes (or of the decoded pixels when built from memory).
    pub sha256: String,
}

/// Model output, in the machine-readable form of `analysis.json`: a saliency map
/// (`saliency`, `[h, w]`), class probabilities (`classes`, `[1, classes]`), the prompt labels'
/// probabilities (`zero_shot`, `[1, labels]`), or nothing (`none`) for a bare encoder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Output {
    pub kind: String,
    pub shape: [usize; 2],
    pub values: Vec<f32>,
    /// Names of the values, for `classes` and `zero_shot`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

impl Output {
    pub fn is_map(&self) -> bool {
        self.kind == "saliency"
    }

    /// The `n` most probable labels with their probabilities (for class-like outputs).
    pub fn top(&self, n: usize) -> Vec<(String, f32)> {
        let mut idx: Vec<usize> = (0..self.values.len()).collect();
        idx.sort_by(|&a, &b| self.values[b].total_cmp(&self.values[a]));
        idx.into_iter().take(n).map(|i| (self.labels.get(i).cloned().unwrap_or_default(), self.values[i])).collect()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    pub preprocess_ms: f64,
    pub encoder_ms: f64,
    pub decoder_ms: f64,
    pub total_ms: f64,
}

/// Everything `tokenlens analyze` reports about one image on the full model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Analysis {
    pub model: String,
    pub weights_sha256: String,
    pub grid: [usize; 2],
    /// Leading special tokens (CLS, distillation); 0 means the attention views show attention
    /// received instead of CLS attention.
    pub num_special: usize,
    /// Per layer, CLS-to-patch attention averaged over heads, raster order.
    pub cls_attention: Vec<Vec<f32>>,
    /// Per layer and head, CLS-to-patch attention.
    pub cls_attention_heads: Vec<Vec<Vec<f32>>>,
    /// Attention rollout through all layers, CLS row over the patches.
    pub rollout: Vec<f32>,
    /// Per layer, the L2 norm of each patch token after the block (high-norm outliers are the
    /// "artifact" tokens that soak up attention).
    pub token_norms: Vec<Vec<f32>>,
    pub output: Output,
    pub timings_ms: Timings,
}

pub struct Session {
    pub model: Model,
    /// The labels a zero-shot model scores (the prompt box, comma-separated).
    pub labels: Vec<String>,
}

impl Session {
    pub fn load(source: &ModelSource, say: &mut dyn FnMut(&str)) -> Result<Self> {
        Ok(Self { model: Model::load(source, say)?, labels: Vec::new() })
    }

    /// Sets the zero-shot labels from a prompt like "a cat, a dog, a car".
    pub fn set_prompt(&mut self, prompt: &str) {
        self.labels = prompt.split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    }

    /// Whether this model reads the prompt.
    pub fn takes_prompt(&self) -> bool {
        matches!(self.model.head, OutputHead::ZeroShot(_))
    }

    /// Decodes and prepares an image file.
    pub fn open_image(&self, path: &Path) -> Result<ImageInput> {
        let bytes = std::fs::read(path).map_err(|e| crate::Error::image(path, format!("cannot read: {e}")))?;
        self.image_from_bytes(&bytes, path)
    }

    /// Decodes and prepares encoded image bytes; `label` names them in errors.
    pub fn image_from_bytes(&self, bytes: &[u8], label: &Path) -> Result<ImageInput> {
        let photo = preprocess::decode_image_as(bytes, self.model.preprocessor.alpha())
            .map_err(|reason| crate::Error::image(label, reason))?;
        let prepared = match &self.model.preprocessor {
            Preprocessor::Letterbox { size } => preprocess::prepare(&photo, *size, &self.model.device)?,
            Preprocessor::Hf(p) => {
                let canvas = p.resize_and_crop(&photo)?;
                let pixels = p.pixels(&canvas, &self.model.device)?;
                let (w, h) = canvas.dimensions();
                let content = preprocess::ContentRect { top: 0, left: 0, height: h, width: w };
                Prepared { place: p.canvas_in_photo(photo.width(), photo.height()), canvas, content, pixels }
            }
        };
        Ok(ImageInput { photo, prepared, sha256: fetch::sha256_hex(bytes) })
    }

    /// The state before block 0.
    pub fn embed(&self, prepared: &Prepared) -> Result<TokenState> {
        self.model.encoder.embed(&prepared.pixels)
    }

    /// Runs the full model and summarises it: attention per layer, rollout, token norms and
    /// the saliency output.
    pub fn analyze(&self, prepared: &Prepared, cancel: &Cancel) -> Result<Analysis> {
        let full = self.full_run(&prepared.pixels, cancel)?;
        self.analysis_of(&full)
    }

    /// The [`Analysis`] of a full run already computed.
    pub fn analysis_of(&self, full: &FullRun) -> Result<Analysis> {
        let layers = full.num_layers();
        let special = full.states[0].num_special;
        let probs: Vec<&Tensor> =
            (0..layers).map(|l| full.trace.require(HookPoint::AttnProbs(l))).collect::<Result<_>>()?;
        let cls_attention = probs.iter().map(|p| attention::cls_attention(p, special)).collect::<Result<_>>()?;
        let cls_attention_heads =
            probs.iter().map(|p| attention::cls_attention_heads(p, special)).collect::<Result<_>>()?;
        let token_norms = full.states[1..]
            .iter()
            .map(|s| Ok(s.hidden.sqr()?.sum(2)?.sqrt()?.flatten_all()?.to_vec1::<f32>()?[special..].to_vec()))
            .collect::<Result<_>>()?;
        let grid = full.states[0].grid;
        Ok(Analysis {
            model: self.model.id.clone(),
            weights_sha256: self.model.weights_sha256.clone(),
            grid: [grid.0, grid.1],
            num_special: special,
            cls_attention,
            cls_attention_heads,
            rollout: attention::rollout(&probs, special)?,
            token_norms,
            output: full.output.clone(),
            timings_ms: Timings {
                preprocess_ms: 0.0,
                encoder_ms: full.encoder_ms,
                decoder_ms: full.time_ms - full.encoder_ms,
                total_ms: full.time_ms,
            },
        })
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
