//! The two VLM architectures behind one shape: image -> vision run -> image tokens on a grid ->
//! decoder sequence.
//!
//! # Design
//! Question: how do the vision-side methods (written for a ViT's patch tokens) run on SmolVLM,
//! whose language model sees one token per 4x4 block of patches?
//! Decision: the image-token grid is what every view and method works on. For LLaVA it is the
//! patch grid (the tower's states and trace are used as they are). For SmolVLM the pre-LLM
//! methods see the connector's tokens on their grid, with the tower's attention pooled to it
//! (`pool_attention`: rows averaged over a block's patches, columns summed, so rows still sum
//! to one); methods that act inside the tower are refused, since the pixel shuffle needs every
//! patch ([`Arch::capabilities`]: the method registry words the refusal, for the runs and the
//! app's method pickers alike).

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Tensor};
use image::RgbImage;

use super::Prompt;
use crate::analysis::attention;
use crate::analysis::cost::BlockTokens;
use crate::model::hf::read_config;
use crate::model::idefics3::{Idefics3, Idefics3Settings};
use crate::model::llama::Llama;
use crate::model::llava::{Llava, LlavaSettings};
use crate::model::quant::{Linears, LoadOptions, QuantCount, Quantize};
use crate::model::quant_cache::QuantCache;
use crate::model::{HookPoint, Probe, TokenState, Trace, chat, fetch, memory, preprocess};
use crate::reduce::{Capabilities, Context, Method, PositionMode, Reducer, ReducerConfig};
use crate::session::{EncoderCache, ReducedEncoder, encoder_states, reduce_encoder};
use crate::{Cancel, Error, Result};

/// `model_type`s this module reads.
pub const SUPPORTED: [&str; 2] = ["llava", "idefics3"];

pub enum Arch {
    Llava(Llava),
    Idefics3(Idefics3),
}

/// A loaded VLM and how its linear layers were loaded.
pub struct Loaded {
    pub arch: Arch,
    pub options: LoadOptions,
    /// Linear layers quantized and kept f32 (with `--quantize`), and their bytes.
    pub linears: QuantCount,
    /// Where the quantized weights were read from or written to, or why not (a cached load).
    pub quant_cache: Option<String>,
}

/// A decoded photo and what the vision tower sees of it.
#[derive(Debug, Clone)]
pub struct VlmImage {
    pub photo: RgbImage,
    /// The 8-bit image the tower reads (the image-token grid covers it).
    pub canvas: RgbImage,
    /// Where the canvas lies in the photo, `[x0, y0, x1, y1]` in photo pixels.
    pub place: [f32; 4],
    /// `[1, 3, h, w]` per tower input: one, or SmolVLM's tiles then its global image.
    pub pixels: Vec<Tensor>,
    /// SmolVLM's tile rows and columns (0 x 0: one image, not split).
    pub tiles: (usize, usize),
    pub sha256: String,
}

/// The vision side of one image, unreduced, kept so reduced runs resume from it.
pub struct VisionRun {
    /// States a vision-side reducer resumes from, on the image-token grid (LLaVA: the tower's
    /// states up to the layer the projector reads; SmolVLM: the connector's tokens).
    pub states: Vec<TokenState>,
    pub trace: Trace,
    pub features: Tensor,
    /// Projected image tokens `[n, text_dim]`.
    pub image_tokens: Tensor,
    /// The image-token grid (rows, cols) drawn over the canvas. With SmolVLM's image splitting:
    /// the tiles' tokens side by side; the global image's tokens follow it, off the grid.
    pub grid: (usize, usize),
    /// Image tokens in all (the grid's, then any off it).
    pub num_tokens: usize,
    /// Each image token covers a `patch_block` x `patch_block` square of the tower's patches
    /// (LLaVA 1; SmolVLM its pixel-shuffle scale, 4).
    pub patch_block: usize,
    /// For each image slot of the prompt, in order, the image token it holds (raster order on
    /// the grid; the identity unless the image is split into tiles).
    pub slot_token: Vec<u32>,
    /// Per image token, the tower's importance (CLS attention, or attention received).
    pub saliency: Vec<f32>,
    /// Tokens each tower block saw (for the cost).
    pub tower_blocks: Vec<BlockTokens>,
    pub tower_dims: (usize, usize),
    pub time_ms: f64,
}

impl VisionRun {
    pub fn num_image_tokens(&self) -> usize {
        self.num_tokens
    }

    /// Whether the image was split into tiles (the vision-side methods need one image).
    pub fn is_split(&self) -> bool {
        self.num_tokens != self.grid.0 * self.grid.1
    }

    pub fn context(&self) -> Context {
        Context::encoder(self.states.len() - 1, self.grid, self.states[0].num_special)
    }

    pub fn full_blocks(&self) -> Vec<BlockTokens> {
        self.tower_blocks.clone()
    }

    pub fn encoder_flops(&self, blocks: &[BlockTokens]) -> f64 {
        crate::analysis::cost::encoder_flops(blocks, self.tower_dims.0, self.tower_dims.1)
    }
}

pub fn model_type(dir: &Path) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).ok()?).ok()?;
    json["model_type"].as_str().map(String::from)
}

/// Ids that end an answer: `generation_config.json`'s `eos_token_id` (one or a list), the
/// tokenizer's EOS and the chat turn end (`<end_of_utterance>`, SmolVLM's).
pub fn eos_ids(dir: &Path, tokenizer: &tokenizers::Tokenizer) -> Vec<u32> {
    let mut ids = Vec::new();
    let read =
        |name: &str| -> Option<serde_json::Value> { serde_json::from_slice(&std::fs::read(dir.join(name)).ok()?).ok() };
    if let Some(json) = read("generation_config.json") {
        match &json["eos_token_id"] {
            serde_json::Value::Number(n) => ids.extend(n.as_u64().map(|v| v as u32)),
            serde_json::Value::Array(a) => ids.extend(a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32)),
            _ => {}
        }
    }
    let eos_token = read("tokenizer_config.json").and_then(|j| match &j["eos_token"] {
        serde_json::Value::String(s) => Some(s.clone()),
        v => v["content"].as_str().map(String::from),
    });
    for token in eos_token.iter().map(String::as_str).chain(["<end_of_utterance>"]) {
        ids.extend(tokenizer.token_to_id(token));
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

impl Arch {
    /// Loads the folder's model in f32.
    pub fn load(dir: &Path) -> Result<Self> {
        Ok(Self::load_with(dir, LoadOptions::default())?.arch)
    }

    /// Loads the folder's model as `options` say, after the memory guard (from the config
    /// alone, before any weight is read, at the quantization asked).
    pub fn load_with(dir: &Path, options: LoadOptions) -> Result<Loaded> {
        Self::load_cached(dir, options, None)
    }

    /// [`Arch::load_with`], quantized weights cached in `cache` (a folder) when given: read
    /// from it where a former load of the same checkpoint and format wrote them, else written
    /// ([`QuantCache`]). A cache that cannot be opened is a warning, not an error.
    pub fn load_cached(dir: &Path, options: LoadOptions, cache: Option<&Path>) -> Result<Loaded> {
        let (device, _) = options.resolve()?;
        if let Some(estimate) = Self::memory_estimate_with(dir, options)? {
            memory::guard(&estimate, &device)?;
        }
        let mut linears = Linears::for_options(&options)?;
        let mut warning = None;
        if let (Some(q), Some(cache)) = (options.quantize, cache) {
            match QuantCache::open(cache, dir, q) {
                Ok(c) => linears = linears.with_cache(Box::new(c)),
                Err(e) => warning = Some(format!("Warning: the quantized weights are not cached ({e}).")),
            }
        }
        let arch = Self::load_arch(dir, &linears)?;
        let quant_cache = warning.or_else(|| linears.finish_cache());
        Ok(Loaded { arch, options, linears: linears.count(), quant_cache })
    }

    fn load_arch(dir: &Path, linears: &Linears) -> Result<Self> {
        match model_type(dir).as_deref() {
            Some("llava") => {
                let m = Llava::load_with(dir, linears)?;
                if m.keep_cls {
                    return Err(Error::weights(
                        dir.join("config.json"),
                        "vision_feature_select_strategy \"full\" (CLS as an image token) is not supported",
                    ));
                }
                Ok(Arch::Llava(m))
            }
            Some("idefics3") => Ok(Arch::Idefics3(Idefics3::load_with(dir, linears)?)),
            other => Err(Error::weights(
                dir.join("config.json"),
                format!(
                    "model_type {other:?} is not a vision-language model tokenlens reads ({})",
                    SUPPORTED.join(", ")
                ),
            )),
        }
    }

    /// The memory guard's estimate for a VLM folder (LLaVA, Idefics3) loaded in f32 on the CPU,
    /// from `config.json` alone; `None` for other model types. A config the loader would refuse
    /// is refused here, with its reason. [`memory::Estimate::on_device`] places it on a GPU.
    pub fn memory_estimate(dir: &Path) -> Result<Option<memory::Estimate>> {
        Self::estimate(dir, None)
    }

    /// [`Arch::memory_estimate`] for the model loaded as `options` say: quantized, or on the
    /// device they resolve to with the linear layers in its dtype.
    pub fn memory_estimate_with(dir: &Path, options: LoadOptions) -> Result<Option<memory::Estimate>> {
        let (device, linear) = options.resolve()?;
        let estimate = Self::estimate(dir, options.quantize)?;
        Ok(estimate.map(|e| e.placed(&device, linear)))
    }

    fn estimate(dir: &Path, quantize: Option<Quantize>) -> Result<Option<memory::Estimate>> {
        let (path, json) = read_config(dir)?;
        let bad = |reason: String| Error::weights(&path, reason);
        let linear = |in_dim, out_dim| memory::LinearShape { in_dim, out_dim, count: 1 };
        // The embedding table stays in the checkpoint's half precision (see `Llama::from_parts`).
        let half = match crate::model::hf_config::dtype(&json) {
            Some("float16") => Some(DType::F16),
            Some("bfloat16") => Some(DType::BF16),
            _ => None,
        };
        let estimate = match json["model_type"].as_str() {
            Some("llava") => {
                let c = LlavaSettings::from_hf(&json).map_err(bad)?;
                // Two linears with biases.
                let (dv, dt) = (c.vision.hidden_size, c.text.hidden_size);
                let projector = [linear(dv, dt), linear(dt, dt)];
                let patches = c.vision.image_size / c.vision.patch_size;
                let image = patches * patches + if c.keep_cls { c.vision.num_prefix_tokens } else { 0 };
                memory::vlm("LLaVA (llava)", &c.vision, &c.text, &projector, 2 * dt as u64, image, half)
            }
            Some("idefics3") => {
                let c = Idefics3Settings::from_hf(&json).map_err(bad)?;
                // The pixel shuffle's s² patches into one linear, no bias.
                let s = c.scale_factor;
                let connector = [linear(c.vision.hidden_size * s * s, c.text.hidden_size)];
                // With image splitting: up to 4 x 4 tiles and the global image (SmolVLM's
                // processor at its default longest edge, 4 x 512).
                let per_image = (c.vision.image_size / c.vision.patch_size / s).pow(2);
                memory::vlm("SmolVLM (idefics3)", &c.vision, &c.text, &connector, 0, 17 * per_image, half)
            }
            _ => return Ok(None),
        };
        Ok(Some(estimate.with_quantize(quantize)))
    }

    pub fn lm(&self) -> &Llama {
        match self {
            Arch::Llava(m) => &m.lm,
            Arch::Idefics3(m) => &m.lm,
        }
    }

    /// Whether the folder's processor splits images (SmolVLM's `do_image_splitting`).
    pub fn default_split(&self) -> bool {
        match self {
            Arch::Llava(_) => false,
            Arch::Idefics3(m) => m.preprocessor.split,
        }
    }

    pub fn image_token(&self) -> u32 {
        match self {
            Arch::Llava(m) => m.image_token,
            Arch::Idefics3(m) => m.image_token,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Arch::Llava(_) => "LLaVA",
            Arch::Idefics3(_) => "SmolVLM (Idefics3)",
        }
    }

    /// Decodes encoded image bytes, transparency as the folder's processor treats it, and
    /// prepares them; `label` names them in errors. `split`: SmolVLM's image splitting (tiles
    /// plus a global image); other models ignore it.
    pub fn image_from_bytes(&self, bytes: &[u8], label: &Path, split: bool) -> Result<VlmImage> {
        let alpha = match self {
            Arch::Llava(m) => m.preprocessor.alpha,
            Arch::Idefics3(m) => m.preprocessor.alpha,
        };
        let photo = preprocess::decode_image_as(bytes, alpha).map_err(|reason| Error::image(label, reason))?;
        let device = self.lm().device();
        let image_error = |e: Error| Error::image(label, e.to_string());
        let (canvas, place, pixels, tiles) = match self {
            Arch::Llava(m) => {
                let p = &m.preprocessor;
                let canvas = p.resize_and_crop(&photo).map_err(image_error)?;
                let pixels = vec![p.pixels(&canvas, device)?];
                (canvas, p.canvas_in_photo(photo.width(), photo.height()), pixels, (0, 0))
            }
            Arch::Idefics3(m) => {
                let tiles = m.preprocessor.tiles(&photo, split).map_err(image_error)?;
                let pixels = m.preprocessor.tile_pixels(&tiles, device)?;
                let canvas = tiles.images.last().expect("the global image").clone();
                let whole = [0.0, 0.0, photo.width() as f32, photo.height() as f32];
                (canvas, whole, pixels, (tiles.rows, tiles.cols))
            }
        };
        Ok(VlmImage { photo, canvas, place, pixels, tiles, sha256: fetch::sha256_hex(bytes) })
    }

    /// The chat prompt for one image and `question` (the folder's chat template, else the
    /// family's published prompt), with the image placeholder expanded as the processor does.
    pub fn prompt_text(&self, dir: &Path, question: &str, tiles: (usize, usize)) -> Result<String> {
        let model_type = match self {
            Arch::Llava(_) => "llava",
            Arch::Idefics3(_) => "idefics3",
        };
        let rendered = chat::image_question_prompt(dir, model_type, question)?;
        if rendered.matches("<image>").count() != 1 {
            return Err(Error::Config {
                field: "prompt",
                reason: "the question must not contain `<image>`: the prompt holds exactly one image".into(),
            });
        }
        Ok(match self {
            Arch::Llava(m) => m.expand_image(&rendered),
            Arch::Idefics3(m) => m.expand_image(&rendered, tiles.0, tiles.1),
        })
    }

    /// Image tokens one image gives (`tiles`: SmolVLM's split, 0 x 0 for one image).
    pub fn num_image_tokens(&self, tiles: (usize, usize)) -> usize {
        match self {
            Arch::Llava(m) => m.image_seq_len,
            Arch::Idefics3(m) => m.image_seq_len * (tiles.0 * tiles.1 + 1),
        }
    }

    /// Runs the vision side unreduced.
    pub fn vision(&self, image: &VlmImage, cancel: &Cancel) -> Result<VisionRun> {
        let start = Instant::now();
        match self {
            Arch::Llava(m) => {
                let (states, trace) = encoder_states(&m.vision, &image.pixels[0], m.feature_blocks, cancel)?;
                let last = states.last().expect("the embedding state");
                let features = last.hidden.clone();
                let image_tokens = m.project(last)?;
                let special = last.num_special;
                let saliency = match m.feature_blocks {
                    0 => vec![1.0; last.num_patches()],
                    l => attention::cls_attention(trace.require(HookPoint::AttnProbs(l - 1))?, special)?,
                };
                let n = states[0].num_tokens();
                let cfg = &m.vision.cfg;
                let num_tokens = last.num_patches();
                Ok(VisionRun {
                    grid: last.grid,
                    num_tokens,
                    patch_block: 1,
                    slot_token: (0..num_tokens as u32).collect(),
                    tower_blocks: vec![BlockTokens { attn: n, mlp: n }; m.feature_blocks],
                    tower_dims: (cfg.hidden_size, cfg.intermediate_size),
                    states,
                    trace,
                    features,
                    image_tokens,
                    saliency,
                    time_ms: start.elapsed().as_secs_f64() * 1e3,
                })
            }
            Arch::Idefics3(m) if image.tiles != (0, 0) => split_vision(m, image, start, cancel),
            Arch::Idefics3(m) => {
                let layers = m.vision.num_layers();
                let (states, tower_trace) = encoder_states(&m.vision, &image.pixels[0], layers, cancel)?;
                let last = states.last().expect("the embedding state");
                let image_tokens = m.connect(&m.vision.final_norm(last)?)?;
                let s = m.scale_factor;
                let grid = (last.grid.0 / s, last.grid.1 / s);
                let pool = BlockPool::new(last.grid, s, image_tokens.device())?;
                let mut trace = Trace::default();
                let probe = Probe::attention(layers);
                for l in 0..layers {
                    let probs = tower_trace.require(HookPoint::AttnProbs(l))?;
                    probe.tap(HookPoint::AttnProbs(l), &mut trace, || pool.attention(probs))?;
                }
                let saliency = attention::cls_attention(trace.require(HookPoint::AttnProbs(layers - 1))?, 0)?;
                let tokens = TokenState::fresh(image_tokens.unsqueeze(0)?, 0, grid);
                let states: Vec<TokenState> = (0..=layers).map(|l| TokenState { layer: l, ..tokens.clone() }).collect();
                let n = last.num_tokens();
                let cfg = &m.vision.cfg;
                let num_tokens = grid.0 * grid.1;
                Ok(VisionRun {
                    states,
                    trace,
                    features: tokens.hidden.clone(),
                    image_tokens,
                    grid,
                    num_tokens,
                    patch_block: s,
                    slot_token: (0..num_tokens as u32).collect(),
                    saliency,
                    tower_blocks: vec![BlockTokens { attn: n, mlp: n }; layers],
                    tower_dims: (cfg.hidden_size, cfg.intermediate_size),
                    time_ms: start.elapsed().as_secs_f64() * 1e3,
                })
            }
        }
    }

    /// Refuses a vision-side method on a split image (its tokens are not one grid), with the
    /// reason the method pickers give.
    pub fn check_unsplit(&self, cfg: &ReducerConfig, vision: &VisionRun) -> Result<()> {
        Method::Vision(cfg.clone()).check(&self.capabilities().with_split_image(vision.is_split()))
    }

    /// What this architecture offers a method (the registry's refusals follow from it).
    pub fn capabilities(&self) -> Capabilities {
        match self {
            Arch::Llava(_) => Capabilities { language_model: true, fixed_encoder: None, split_image: None },
            Arch::Idefics3(_) => Capabilities {
                language_model: true,
                fixed_encoder: Some("SmolVLM's pixel shuffle needs every patch"),
                split_image: Some(false),
            },
        }
    }

    /// Runs a vision-side reducer against the cached vision run.
    pub(crate) fn reduce_vision(
        &self,
        vision: &VisionRun,
        reducer: &mut dyn Reducer,
        cancel: &Cancel,
    ) -> Result<ReducedEncoder> {
        let cached = EncoderCache { states: &vision.states, trace: &vision.trace, features: &vision.features };
        let tower = match self {
            Arch::Llava(m) => &m.vision,
            Arch::Idefics3(m) => &m.vision, // no block runs: the states are already at the end
        };
        // Preserve: the decoder positions are made from each token's anchor (see `reduced_sequence`).
        reduce_encoder(tower, &cached, reducer, PositionMode::Preserve, false, false, cancel)
    }

    /// The unreduced decoder sequence.
    pub fn sequence(&self, prompt: &Prompt, vision: &VisionRun) -> Result<TokenState> {
        let embeds = self.lm().embed_with_image(&prompt.ids, self.image_token(), &vision.image_tokens)?;
        let rows = super::full_sequence_rows(prompt, &vision.slot_token);
        Ok(TokenState::sequence(embeds, rows, vision.grid))
    }

    /// The decoder sequence after a vision-side reduction, with the tower blocks it ran and the
    /// rows the projector saw. The image block's rows are the surviving tokens; in `preserve`
    /// mode each takes the position of its anchor's original slot.
    pub(crate) fn reduced_sequence(
        &self,
        prompt: &Prompt,
        vision: &VisionRun,
        reduced: &ReducedEncoder,
        mode: PositionMode,
    ) -> Result<(TokenState, Vec<BlockTokens>, usize)> {
        let out = &reduced.out;
        let special = out.num_special;
        let (image, blocks) = match self {
            Arch::Llava(m) => (m.project(out)?, reduced.blocks.clone()),
            Arch::Idefics3(_) => (out.hidden.squeeze(0)?, vision.tower_blocks.clone()),
        };
        let slots = &prompt.image_slots;
        let (first, last) = (slots[0], slots[slots.len() - 1]);
        if last - first + 1 != slots.len() {
            return Err(Error::Config {
                field: "reducer",
                reason: "vision-side methods need the image tokens in one block (turn image splitting off)".into(),
            });
        }
        let text = self.lm().embed(&prompt.ids)?;
        let count = image.dim(0)?;
        let embeds = Tensor::cat(
            &[
                &text.narrow(1, 0, first)?,
                &image.unsqueeze(0)?,
                &text.narrow(1, last + 1, prompt.ids.len() - last - 1)?,
            ],
            1,
        )?;
        let mut rows = vec![None; first];
        let mut positions: Vec<u32> = (0..first as u32).collect();
        for t in special..out.num_tokens() {
            rows.push(Some(out.source[t].clone()));
            let anchor = out.positions[t] as usize - special;
            positions.push(slots[anchor] as u32);
        }
        rows.extend(std::iter::repeat_n(None, prompt.ids.len() - last - 1));
        positions.extend(last as u32 + 1..prompt.ids.len() as u32);
        if mode == PositionMode::Compact {
            positions = (0..rows.len() as u32).collect();
        }
        let projected = match self {
            Arch::Llava(_) => count,
            Arch::Idefics3(_) => vision.num_image_tokens(),
        };
        let mut seq = TokenState::sequence(embeds, rows, vision.grid);
        seq.positions = positions;
        Ok((seq, blocks, projected))
    }

    /// FLOPs of the projector (LLaVA: two linears) or connector (SmolVLM) on `rows` tokens.
    pub fn projector_flops(&self, rows: usize) -> f64 {
        let dt = self.lm().cfg.hidden_size as f64;
        let n = rows as f64;
        match self {
            Arch::Llava(m) => 2.0 * n * (m.vision.cfg.hidden_size as f64 * dt + dt * dt),
            Arch::Idefics3(m) => {
                let s = m.scale_factor as f64;
                2.0 * n * m.vision.cfg.hidden_size as f64 * s * s * dt
            }
        }
    }
}

/// SmolVLM with image splitting: every tile, then the global image, through the tower and the
/// connector. The tiles' tokens form one grid over the image; the global image's follow.
fn split_vision(m: &Idefics3, image: &VlmImage, start: Instant, cancel: &Cancel) -> Result<VisionRun> {
    let layers = m.vision.num_layers();
    let s = m.scale_factor;
    let (rows, cols) = image.tiles;
    let (mut parts, mut saliency_parts) = (Vec::new(), Vec::new());
    let (mut side, mut n) = (0, 0);
    for pixels in &image.pixels {
        let (states, trace) = encoder_states(&m.vision, pixels, layers, cancel)?;
        let last = states.last().expect("the embedding state");
        parts.push(m.connect(&m.vision.final_norm(last)?)?);
        let pool = BlockPool::new(last.grid, s, pixels.device())?;
        let pooled = pool.attention(trace.require(HookPoint::AttnProbs(layers - 1))?)?;
        saliency_parts.push(attention::cls_attention(&pooled, 0)?);
        side = last.grid.0 / s;
        n = last.num_tokens();
    }
    let image_tokens = Tensor::cat(&parts, 0)?;
    let per_tile = side * side;
    let grid = (rows * side, cols * side);
    let on_grid = grid.0 * grid.1;
    // Slot k of tile (r, c), local cell (i, j) -> grid cell (r*side + i, c*side + j).
    let slot_token: Vec<u32> = (0..image_tokens.dim(0)?)
        .map(|k| {
            let (tile, local) = (k / per_tile, k % per_tile);
            if tile == rows * cols {
                return k as u32; // the global image: after the grid
            }
            let (r, c, i, j) = (tile / cols, tile % cols, local / side, local % side);
            ((r * side + i) * grid.1 + c * side + j) as u32
        })
        .collect();
    let mut saliency = vec![0.0; on_grid + per_tile];
    for (k, v) in saliency_parts.concat().into_iter().enumerate() {
        saliency[slot_token[k] as usize] = v;
    }
    let tokens = TokenState::fresh(image_tokens.unsqueeze(0)?, 0, (1, image_tokens.dim(0)?));
    let cfg = &m.vision.cfg;
    Ok(VisionRun {
        states: vec![tokens.clone()],
        trace: Trace::default(),
        features: tokens.hidden,
        num_tokens: on_grid + per_tile,
        patch_block: s,
        image_tokens,
        grid,
        slot_token,
        saliency,
        tower_blocks: vec![BlockTokens { attn: n, mlp: n }; layers * image.pixels.len()],
        tower_dims: (cfg.hidden_size, cfg.intermediate_size),
        time_ms: start.elapsed().as_secs_f64() * 1e3,
    })
}

/// Pools patch-level attention to SmolVLM's image tokens (one per `s`x`s` block of patches).
struct BlockPool {
    /// `[1, 1, tokens, patches]`: 1/s² where the patch is in the token's block.
    mean: Tensor,
    /// `[1, 1, patches, tokens]`: 1 where the patch is in the token's block.
    sum: Tensor,
}

impl BlockPool {
    fn new(grid: (usize, usize), s: usize, device: &candle_core::Device) -> Result<Self> {
        let (rows, cols) = grid;
        let tokens = (rows / s) * (cols / s);
        let patches = rows * cols;
        let mut member = vec![0f32; tokens * patches];
        for p in 0..patches {
            let t = (p / cols / s) * (cols / s) + (p % cols) / s;
            member[t * patches + p] = 1.0;
        }
        let member = Tensor::from_vec(member, (1, 1, tokens, patches), device)?;
        Ok(Self { mean: (&member / (s * s) as f64)?, sum: member.transpose(2, 3)?.contiguous()? })
    }

    /// `[1, heads, patches, patches]` -> `[1, heads, tokens, tokens]`; rows still sum to one.
    fn attention(&self, probs: &Tensor) -> Result<Tensor> {
        Ok(self.mean.broadcast_matmul(&probs.to_dtype(DType::F32)?)?.broadcast_matmul(&self.sum)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn pooled_attention_sums_blocks_and_keeps_rows_stochastic() {
        // 4x4 patches, s = 2: 4 tokens. Attention: every patch attends only to patch 5 (row 1, col 1).
        let mut p = vec![0f32; 16 * 16];
        for q in 0..16 {
            p[q * 16 + 5] = 1.0;
        }
        let probs = Tensor::from_vec(p, (1, 1, 16, 16), &Device::Cpu).unwrap();
        let pooled = BlockPool::new((4, 4), 2, &Device::Cpu).unwrap().attention(&probs).unwrap();
        let rows = pooled.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        // Patch 5 is in token 0's block (rows 0-1, cols 0-1): all attention goes to token 0.
        for row in rows {
            assert_eq!(row, vec![1.0, 0.0, 0.0, 0.0]);
        }
    }
}
