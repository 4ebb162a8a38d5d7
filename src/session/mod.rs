//! The single entry point the CLI, the GUI and the tests call: a loaded model plus the
//! operations on an image. Neither front end holds model code.

mod run;

pub use run::{DropFill, FullRun, RunResult, RunSpec, RunTimings};

use std::path::Path;
use std::time::Instant;

use candle_core::Tensor;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::analysis::attention;
use crate::model::preprocess::{self, ContentRect, Prepared};
use crate::model::{FocusModel, HookPoint, ModelSource, TokenState, fetch};
use crate::{Cancel, Result};

/// A decoded photo and what the model sees of it.
#[derive(Debug, Clone)]
pub struct ImageInput {
    pub photo: RgbImage,
    pub prepared: Prepared,
    /// sha256 of the file's bytes (or of the decoded pixels when built from memory).
    pub sha256: String,
}

/// Model output, in the machine-readable form of `analysis.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Output {
    pub kind: String,
    pub shape: [usize; 2],
    pub values: Vec<f32>,
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
    pub model: FocusModel,
}

impl Session {
    pub fn load(source: &ModelSource, say: &mut dyn FnMut(&str)) -> Result<Self> {
        Ok(Self { model: FocusModel::load(source, say)? })
    }

    /// Decodes and prepares an image file.
    pub fn open_image(&self, path: &Path) -> Result<ImageInput> {
        let bytes = std::fs::read(path).map_err(|e| crate::Error::image(path, format!("cannot read: {e}")))?;
        self.image_from_bytes(&bytes, path)
    }

    /// Decodes and prepares encoded image bytes; `label` names them in errors.
    pub fn image_from_bytes(&self, bytes: &[u8], label: &Path) -> Result<ImageInput> {
        let photo = preprocess::decode_image(bytes).map_err(|reason| crate::Error::image(label, reason))?;
        let prepared = preprocess::prepare(&photo, self.model.image_size(), &self.model.device)?;
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
            cls_attention,
            cls_attention_heads,
            rollout: attention::rollout(&probs, special)?,
            token_norms,
            output: full.saliency.clone(),
            timings_ms: Timings {
                preprocess_ms: 0.0,
                encoder_ms: full.encoder_ms,
                decoder_ms: full.time_ms - full.encoder_ms,
                total_ms: full.time_ms,
            },
        })
    }
}

/// The photo-space rectangle the model's square canvas covers (it extends past the photo where
/// the canvas was padded): `(x0, y0, x1, y1)` in photo pixels.
pub fn canvas_in_photo(content: &ContentRect, photo: (u32, u32), canvas_side: u32) -> (f32, f32, f32, f32) {
    let scale = canvas_side as f32 / photo.0.max(photo.1) as f32; // canvas px per photo px
    let x0 = -(content.left as f32) / scale;
    let y0 = -(content.top as f32) / scale;
    let side = canvas_side as f32 / scale;
    (x0, y0, x0 + side, y0 + side)
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
