//! Idefics3 / SmolVLM (Laurençon et al., 2024, <https://arxiv.org/abs/2408.12637>;
//! `Idefics3ForConditionalGeneration`): a SigLIP tower, a pixel-shuffle connector that folds
//! each `s`x`s` block of patches into one token, and a Llama decoder.
//!
//! Images are read as one global square, or (SmolVLM's image splitting) as a grid of square
//! tiles followed by the global square, each tile through the tower and connector on its own;
//! the prompt then spells the tiles out (`<row_r_col_c>` markers), as `Idefics3Processor` does.
//! Whether to split starts from the folder (`do_image_splitting`, default true as in
//! transformers); callers may override it per image.
//!
//! Config: see [`Idefics3Settings`] for the fields honoured and refused.

use std::path::Path;

use candle_core::{Device, Module, Tensor};
use image::RgbImage;

use super::config::{VitConfig, unsupported};
use super::hf::{read_config, read_weights, vision_config};
use super::hf_config::{Class, resolve, resolve_section};
use super::hf_preprocess::{alpha_rule, read_image_processor, to_pixels};
use super::llama::{Llama, LlamaConfig};
use super::llava::check_tied;
use super::pil_resize::{Filter, resize};
use super::preprocess::Alpha;
use super::quant::{Linears, LoadOptions, Proj};
use super::vit::VisionTransformer;
use crate::{Cancel, Error, Result};

/// transformers' `MAX_IMAGE_SIZE`: the first resize never makes a side longer than this.
const MAX_IMAGE_SIZE: u32 = 4096;

/// `Idefics3ImageProcessor` (Pillow backend): the longest edge to `longest_edge` (aspect kept),
/// then either a square of `max_edge` (aspect not kept), or, with image splitting, each side up
/// to a multiple of `max_edge`, cut into `max_edge` tiles, plus the whole resized to the square;
/// rescaled to [-1, 1] by mean/std.
#[derive(Debug, Clone)]
pub struct Idefics3Preprocessor {
    pub longest_edge: u32,
    pub max_edge: u32,
    /// `do_image_splitting` in the folder: what the model was trained with. Callers choose per
    /// image ([`Idefics3Preprocessor::tiles`]); this is only the folder's default.
    pub split: bool,
    /// How transparency becomes RGB (`do_convert_rgb`, on by default: onto white).
    pub alpha: Alpha,
    filter: Filter,
    rescale: f64,
    mean: [f32; 3],
    std: [f32; 3],
}

/// The square images the tower sees for one photo, in the order transformers feeds them: the
/// `rows` x `cols` tiles row by row, then the global image; without splitting (`rows == cols
/// == 0`), the global image alone.
#[derive(Debug, Clone)]
pub struct Tiles {
    pub images: Vec<RgbImage>,
    pub rows: usize,
    pub cols: usize,
}

impl Tiles {
    /// Whether the photo was split (transformers' `rows == cols == 0` means it was not).
    pub fn is_split(&self) -> bool {
        self.rows * self.cols > 0
    }
}

impl Idefics3Preprocessor {
    fn from_json(file: &serde_json::Value) -> std::result::Result<Self, String> {
        // Missing fields take `Idefics3ImageProcessor`'s defaults.
        let json = &super::hf_preprocess::resolve_image_processor(file, Some("Idefics3ImageProcessor"));
        let edge = |key: &str| match json[key]["longest_edge"].as_u64() {
            Some(e) => super::hf_preprocess::checked_side(&format!("{key}.longest_edge"), e),
            None => Err(format!("no {key}.longest_edge")),
        };
        let resample = json["resample"].as_u64().ok_or("resample must be a number")?;
        let triple = |key: &str| -> std::result::Result<[f32; 3], String> {
            serde_json::from_value(json[key].clone()).map_err(|e| format!("{key}: {e}"))
        };
        Ok(Self {
            longest_edge: edge("size")?,
            max_edge: edge("max_image_size")?,
            split: json["do_image_splitting"].as_bool().ok_or("do_image_splitting must be true or false")?,
            alpha: alpha_rule(file)?,
            filter: Filter::from_pil(resample).ok_or_else(|| format!("resample {resample} is not supported"))?,
            rescale: json["rescale_factor"].as_f64().ok_or("rescale_factor must be a number")?,
            mean: triple("image_mean")?,
            std: triple("image_std")?,
        })
    }

    /// The size `(w, h)` after the first resize: transformers' `get_resize_output_image_size`
    /// (the longest edge to `longest_edge`, the other truncated then rounded up to even, at
    /// least 1; then both kept within 4096).
    pub fn resized_size(&self, w: u32, h: u32) -> (u32, u32) {
        let (fw, fh) = (f64::from(w), f64::from(h));
        let edge = self.longest_edge;
        let even = |v: u32| (v + v % 2).max(1);
        let (w1, h1) = if w >= h {
            (edge, even((f64::from(edge) / (fw / fh)) as u32))
        } else {
            (even((f64::from(edge) * (fw / fh)) as u32), edge)
        };
        // `_resize_output_size_scale_below_upper_bound`
        let aspect = f64::from(w1) / f64::from(h1);
        let (w2, h2) = if w1 >= h1 && w1 > MAX_IMAGE_SIZE {
            (MAX_IMAGE_SIZE, (f64::from(MAX_IMAGE_SIZE) / aspect) as u32)
        } else if h1 > w1 && h1 > MAX_IMAGE_SIZE {
            ((f64::from(MAX_IMAGE_SIZE) * aspect) as u32, MAX_IMAGE_SIZE)
        } else {
            (w1, h1)
        };
        (w2.max(1), h2.max(1))
    }

    /// The 8-bit square the tower sees without splitting.
    pub fn resize(&self, photo: &RgbImage) -> RgbImage {
        let (ow, oh) = self.resized_size(photo.width(), photo.height());
        let first = resize(photo, ow, oh, self.filter);
        resize(&first, self.max_edge, self.max_edge, self.filter)
    }

    /// The squares the tower sees, with (`split`) or without image splitting, exactly as
    /// `Idefics3ImageProcessor` (Pillow backend) makes them. An empty image is an error.
    pub fn tiles(&self, photo: &RgbImage, split: bool) -> Result<Tiles> {
        let (w, h) = photo.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::Config { field: "image", reason: format!("the image is {w}x{h} pixels") });
        }
        if !split {
            return Ok(Tiles { images: vec![self.resize(photo)], rows: 0, cols: 0 });
        }
        let (ow, oh) = self.resized_size(w, h);
        let first = resize(photo, ow, oh, self.filter);
        // `resize_for_vision_encoder`: the long side up to a multiple of the tile, the other
        // side from the aspect ratio (truncated), then up to a multiple too.
        let m = self.max_edge;
        let up = |v: u32| v.div_ceil(m) * m;
        let aspect = f64::from(ow) / f64::from(oh);
        let (tw, th) = if ow >= oh {
            let tw = up(ow);
            (tw, up((f64::from(tw) / aspect) as u32))
        } else {
            let th = up(oh);
            (up((f64::from(th) * aspect) as u32), th)
        };
        if tw == 0 || th == 0 {
            return Err(Error::Config {
                field: "image",
                reason: format!("a {w}x{h} image cannot be split into {m}x{m} tiles (it would be {tw}x{th})"),
            });
        }
        let grid = resize(&first, tw, th, self.filter);
        if tw <= m && th <= m {
            // One tile: transformers feeds it as it is, as an unsplit image.
            return Ok(Tiles { images: vec![grid], rows: 0, cols: 0 });
        }
        let (rows, cols) = ((th - m) / m + 1, (tw - m) / m + 1);
        let mut images = Vec::with_capacity((rows * cols + 1) as usize);
        for r in 0..rows {
            for c in 0..cols {
                images.push(image::imageops::crop_imm(&grid, c * m, r * m, m, m).to_image());
            }
        }
        images.push(resize(&grid, m, m, self.filter));
        Ok(Tiles { images, rows: rows as usize, cols: cols as usize })
    }

    /// `[1, 3, h, w]` pixel values.
    pub fn pixels(&self, img: &RgbImage, device: &Device) -> Result<Tensor> {
        to_pixels(img, Some(self.rescale), Some((self.mean, self.std)), device)
    }

    /// `[1, 3, h, w]` pixel values of each tile, in order.
    pub fn tile_pixels(&self, tiles: &Tiles, device: &Device) -> Result<Vec<Tensor>> {
        tiles.images.iter().map(|img| self.pixels(img, device)).collect()
    }
}

/// An Idefics3 / SmolVLM `config.json` (`Idefics3Config`) resolved and checked, before any
/// weight is read.
///
/// Honoured: `vision_config` (always an `Idefics3VisionConfig`, whatever its `model_type` says:
/// SmolVLM's files say `idefics3`), `text_config` (see [`LlamaConfig::from_hf`]; SmolVLM's
/// `VLlama3` fields `qk_layer_norms`, `rope_interleaved`, `use_resampler` are refused when
/// on), `scale_factor`, `image_token_id`, `tie_word_embeddings` (must agree with the text
/// config's). Ignored: `pixel_shuffle_factor` (transformers reads `scale_factor`),
/// `perceiver_config` (only used with the resampler), the vision config's processor sizes.
#[derive(Debug, Clone)]
pub struct Idefics3Settings {
    pub vision: VitConfig,
    pub text: LlamaConfig,
    pub scale_factor: usize,
    pub image_token: u32,
}

impl Idefics3Settings {
    pub fn from_hf(json: &serde_json::Value) -> std::result::Result<Self, String> {
        let top = resolve(json, Class::Idefics3);
        let vision = vision_config(Class::Idefics3, json)?;
        let (_, text_json) = resolve_section(Class::Idefics3, json, "text_config")?;
        let text = LlamaConfig::from_hf(&text_json, "text_config")?;
        check_tied(json, &text)?; // only what the file states
        let scale_factor = top["scale_factor"].as_u64().unwrap_or(0) as usize;
        let grid = vision.image_size / vision.patch_size;
        if scale_factor == 0 || !grid.is_multiple_of(scale_factor) {
            return Err(unsupported(
                "scale_factor",
                &top["scale_factor"],
                &format!("a divisor of the {grid}x{grid} patch grid"),
            ));
        }
        let image_token = top["image_token_id"].as_u64().filter(|&t| t < text.vocab_size as u64).ok_or_else(|| {
            format!(
                "image_token_id = {} is not a token of the {}-token vocabulary",
                top["image_token_id"], text.vocab_size
            )
        })? as u32;
        Ok(Self { vision, text, scale_factor, image_token })
    }
}

pub struct Idefics3 {
    pub vision: VisionTransformer,
    pub scale_factor: usize,
    proj: Proj,
    pub lm: Llama,
    pub image_token: u32,
    pub preprocessor: Idefics3Preprocessor,
    /// `<image>` tokens per tile: `(image_size / patch_size / scale_factor)²`.
    pub image_seq_len: usize,
}

impl Idefics3 {
    /// Loads an Idefics3 / SmolVLM folder: `config.json`, `model.safetensors`,
    /// `processor_config.json` (or `preprocessor_config.json`). On the `auto` device, linear layers
    /// in f32 on the CPU ([`LoadOptions::default`]).
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, &Linears::for_options(&LoadOptions::default())?)
    }

    /// [`Idefics3::load`] with the linear layers made by `linears` (f32 or quantized).
    pub fn load_with(dir: &Path, linears: &Linears) -> Result<Self> {
        let (config_path, json) = read_config(dir)?;
        let bad = |path: &Path, reason: String| Error::weights(path, reason);
        if json["model_type"] != "idefics3" {
            return Err(bad(&config_path, format!("model_type is {}, not idefics3", json["model_type"])));
        }
        let c = Idefics3Settings::from_hf(&json).map_err(|r| bad(&config_path, r))?;
        let (vision_cfg, text_cfg, scale_factor, image_token) = (c.vision, c.text, c.scale_factor, c.image_token);
        let grid = vision_cfg.image_size / vision_cfg.patch_size;
        let preprocessor = Self::read_preprocessor(dir)?;
        let image_seq_len = (grid / scale_factor) * (grid / scale_factor);
        if preprocessor.max_edge as usize != vision_cfg.image_size {
            return Err(bad(
                &config_path,
                format!(
                    "the image processor's max_image_size {} is not the vision tower's image_size {}",
                    preprocessor.max_edge, vision_cfg.image_size
                ),
            ));
        }
        // `image_seq_len` is the processor's (processor_config.json, next to or around the image
        // processor's settings); folders with a flat preprocessor_config.json may repeat it there.
        let processor_path = dir.join("processor_config.json");
        let processor: serde_json::Value = std::fs::read_to_string(&processor_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let (image_path, image_json) = read_image_processor(dir)?;
        let stated = [(&processor_path, &processor), (&image_path, &image_json)]
            .into_iter()
            .find_map(|(path, json)| json["image_seq_len"].as_u64().map(|n| (path, n)));
        if let Some((path, n)) = stated
            && n as usize != image_seq_len
        {
            return Err(bad(
                path,
                format!("image_seq_len {n} does not match the {image_seq_len} tokens the connector makes per tile"),
            ));
        }

        let weights = read_weights(dir)?;
        let weights_path = weights.path.clone();
        linears.stream_from(weights.raw());
        let vb = weights.into_var_builder(linears.device());
        let mismatch = |e: Error| bad(&weights_path, format!("does not match config.json (idefics3): {e}"));
        let model = vb.pp("model");
        let width = vision_cfg.hidden_size * scale_factor * scale_factor;
        Ok(Self {
            vision: VisionTransformer::load_with(&vision_cfg, model.pp("vision_model"), linears).map_err(mismatch)?,
            scale_factor,
            proj: linears
                .linear(width, text_cfg.hidden_size, false, model.pp("connector.modality_projection.proj"))
                .map_err(mismatch)?,
            lm: Llama::from_parts(&text_cfg, model.pp("text_model"), vb.pp("lm_head"), linears).map_err(mismatch)?,
            image_token,
            preprocessor,
            image_seq_len,
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

    /// Image tokens `[tiles * image_seq_len, text_dim]` for the tiles' pixels (each `[1, 3, s, s]`,
    /// in [`Tiles`] order): each tile through the tower and the connector on its own.
    pub fn image_features_tiles(&self, tiles: &[Tensor], cancel: &Cancel) -> Result<Tensor> {
        let parts = tiles
            .iter()
            .map(|pixels| {
                cancel.check()?;
                self.connect(&self.vision_features(pixels, cancel)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// The text that stands for one image of `rows` x `cols` tiles (0 x 0: not split), as
    /// `Idefics3Processor` writes it: per tile `<fake_token_around_image><row_r_col_c>` and
    /// `image_seq_len` `<image>`, a newline after each row, then a newline and the global image
    /// `<fake_token_around_image><global-img>` `<image>`... `<fake_token_around_image>`.
    pub fn image_prompt(&self, rows: usize, cols: usize) -> String {
        const FAKE: &str = "<fake_token_around_image>";
        let image = "<image>".repeat(self.image_seq_len);
        let global = format!("{FAKE}<global-img>{image}{FAKE}");
        if rows == 0 && cols == 0 {
            return global;
        }
        let mut out = String::new();
        for r in 1..=rows {
            for c in 1..=cols {
                out.push_str(&format!("{FAKE}<row_{r}_col_{c}>{image}"));
            }
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&global);
        out
    }

    /// `rendered` (a chat prompt) with every `<image>` replaced by [`Idefics3::image_prompt`].
    pub fn expand_image(&self, rendered: &str, rows: usize, cols: usize) -> String {
        rendered.replace("<image>", &self.image_prompt(rows, cols))
    }
}
