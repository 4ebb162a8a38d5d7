//! Preprocessing from a Hugging Face `preprocessor_config.json` (`ViTImageProcessor`,
//! `DeiTImageProcessor`, `CLIPImageProcessor`, `SiglipImageProcessor`, `BitImageProcessor`):
//! resize (to a size, or the shortest edge), centre crop, rescale, normalise, as the Pillow
//! processors do; and how each processor turns transparency into RGB ([`alpha_rule`]).
//!
//! A field the file leaves out (or writes as `null`) takes its class's own default, as
//! transformers fills it: [`resolve_image_processor`] lays the file over
//! [`image_processor_defaults`], one table per class (`tests/published_configs.rs` checks each
//! against transformers' `Class().to_dict()`).

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::Deserialize;
use serde_json::{Value, json};

use super::pil_resize::{Filter, resize};
use super::preprocess::Alpha;
use crate::{Error, Result};

/// Largest side a processor may resize or crop to. Published processors use 224 to 2048;
/// transformers' Idefics3 processor caps its resize at 4096 too. Checked before any buffer is
/// sized from the config.
pub const MAX_PROCESSOR_SIDE: u32 = 4096;
/// Most pixels the resize step may produce: a shortest-edge resize of a very thin photo grows
/// its long side without bound (16 x `MAX_PROCESSOR_SIDE`^2 / 4, 64 Mpx, 768 MB as f32).
pub const MAX_RESIZED_PIXELS: u64 = 4 * (MAX_PROCESSOR_SIDE as u64) * (MAX_PROCESSOR_SIDE as u64);

/// A processor side (`size.height`, `crop_size.width`, `longest_edge`, ...), checked to be
/// 1..=[`MAX_PROCESSOR_SIDE`].
pub(crate) fn checked_side(key: &str, value: u64) -> std::result::Result<u32, String> {
    match u32::try_from(value) {
        Ok(side) if (1..=MAX_PROCESSOR_SIDE).contains(&side) => Ok(side),
        _ => Err(format!("{key} is {value}; a processor side must be 1 to {MAX_PROCESSOR_SIDE} pixels")),
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Size {
    height: Option<u32>,
    width: Option<u32>,
    shortest_edge: Option<u32>,
}

/// `size` or `crop_size`: a dict, or in older files one number, whose meaning depends on the
/// processor class ([`size_from_number`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Side(u32),
    Dict(Size),
}

/// What transformers' `get_size_dict` makes of a `size` given as one number: a square for ViT and
/// DeiT (`default_to_square`), the shortest edge for CLIP, SigLIP, Bit and LLaVA. A `crop_size`
/// number is always a square.
fn size_from_number(class: Option<&str>, n: u32) -> std::result::Result<Size, String> {
    let square = Size { height: Some(n), width: Some(n), shortest_edge: None };
    match class {
        Some("ViTImageProcessor" | "DeiTImageProcessor") => Ok(square),
        Some("CLIPImageProcessor" | "SiglipImageProcessor" | "BitImageProcessor" | "LlavaImageProcessor") => {
            Ok(Size { height: None, width: None, shortest_edge: Some(n) })
        }
        other => Err(format!(
            "size is the number {n}, whose meaning depends on the processor class, and the class {} is not one \
             tokenlens knows (ViT, DeiT, CLIP, SigLIP, Bit, LLaVA image processors): give size as a dict",
            other.map_or_else(|| "(none named)".to_string(), |c| format!("`{c}`"))
        )),
    }
}

/// A resolved image processor config ([`resolve_image_processor`]): every field present.
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    do_resize: bool,
    size: Option<SizeSpec>,
    resample: u64,
    do_center_crop: bool,
    crop_size: Option<SizeSpec>,
    do_rescale: bool,
    rescale_factor: f64,
    do_normalize: bool,
    image_mean: [f32; 3],
    image_std: [f32; 3],
}

/// transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`.
const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// The defaults of the image processor class `class` names (bare, as [`processor_class`] gives
/// it), for the fields tokenlens reads: transformers 5.23's `Class().to_dict()` (Pillow
/// backend). A class without a centre crop gets `do_center_crop: false`. An unknown class (or
/// none named) gets the generic base: resize (bicubic) and rescale by 1/255, normalise by 0.5,
/// no crop; its `size` must then be in the file.
pub fn image_processor_defaults(class: Option<&str>) -> Value {
    let mut d = json!({
        "do_resize": true, "resample": 3, "do_center_crop": false, "do_rescale": true,
        "rescale_factor": 1.0 / 255.0, "do_normalize": true, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    });
    let square = |side: u32| json!({"height": side, "width": side});
    let extra = match class {
        // ViTImageProcessor: 224 x 224, bilinear, no crop.
        Some("ViTImageProcessor") => json!({"size": square(224), "resample": 2}),
        // DeiTImageProcessor: 256 x 256, then a 224 crop.
        Some("DeiTImageProcessor") => json!({"size": square(256), "do_center_crop": true, "crop_size": square(224)}),
        // CLIPImageProcessor, and the BitImageProcessor (DINOv2) and LlavaImageProcessor built on it:
        // the shortest edge to 224, a 224 crop, CLIP's mean and std.
        Some("CLIPImageProcessor" | "BitImageProcessor" | "LlavaImageProcessor") => json!({
            "size": {"shortest_edge": 224}, "do_center_crop": true, "crop_size": square(224),
            "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        }),
        // SiglipImageProcessor: 224 x 224, no crop.
        Some("SiglipImageProcessor") => json!({"size": square(224)}),
        // Idefics3ImageProcessor: the longest edge to 4 x 364, tiles of 364, bilinear, splitting on.
        Some("Idefics3ImageProcessor") => json!({
            "size": {"longest_edge": 1456}, "max_image_size": {"longest_edge": 364}, "resample": 1,
            "do_image_splitting": true,
        }),
        _ => json!({}),
    };
    for (k, v) in extra.as_object().into_iter().flatten() {
        d[k] = v.clone();
    }
    d
}

/// An image processor config as transformers reads it: the file's fields (a `null` is absent)
/// over its class's defaults ([`image_processor_defaults`]); the class is the one the file
/// names, else `known` (a loader that knows its processor: Idefics3).
pub fn resolve_image_processor(json: &Value, known: Option<&str>) -> Value {
    let mut out = image_processor_defaults(processor_class(json).as_deref().or(known));
    for (k, v) in json.as_object().into_iter().flatten() {
        if !v.is_null() {
            out[k] = v.clone();
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Resize {
    Exact { width: u32, height: u32 },
    ShortestEdge(u32),
}

/// Image processor classes whose `do_convert_rgb` defaults to true in transformers (their
/// Pillow-backend classes set it), each composites transparency onto white; the rest named
/// here leave it unset, so a transparent or grey image reaches them unconverted (transformers
/// raises). Checked against transformers by `tests/alpha_compositing.rs`.
pub const CONVERT_RGB_DEFAULTS: [(&str, bool); 7] = [
    ("CLIPImageProcessor", true),
    ("SiglipImageProcessor", true),
    ("BitImageProcessor", true),
    ("LlavaImageProcessor", true),
    ("Idefics3ImageProcessor", true),
    ("ViTImageProcessor", false),
    ("DeiTImageProcessor", false),
];

/// The image processor class an image processor config names (`image_processor_type`, or the
/// older `feature_extractor_type`, whose `…FeatureExtractor` is the same class), without
/// transformers' backend suffixes.
fn processor_class(json: &serde_json::Value) -> Option<String> {
    let named = json["image_processor_type"]
        .as_str()
        .map(String::from)
        .or_else(|| json["feature_extractor_type"].as_str().map(|n| n.replace("FeatureExtractor", "ImageProcessor")))?;
    let bare = named.strip_suffix("Fast").or_else(|| named.strip_suffix("Pil")).unwrap_or(&named);
    Some(bare.to_string())
}

/// How the processor described by `json` turns transparency into RGB: transformers'
/// `do_convert_rgb` as the file sets it (`null` is transformers' `None`: no conversion), else
/// its class's default ([`CONVERT_RGB_DEFAULTS`]). With conversion the image is composited onto
/// white ([`Alpha::OntoWhite`]). Without it transformers refuses any image that is not already
/// RGB, so the image is made RGB as transformers' `load_image` makes it before a processor
/// ([`Alpha::Drop`], Pillow's `convert("RGB")`); an unknown class without the field does the same.
pub fn alpha_rule(json: &serde_json::Value) -> std::result::Result<Alpha, String> {
    let convert = match json.get("do_convert_rgb") {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::Null) => false,
        Some(other) => return Err(format!("do_convert_rgb is {other}; it must be true, false or null")),
        None => processor_class(json)
            .and_then(|class| CONVERT_RGB_DEFAULTS.iter().find(|(c, _)| *c == class).map(|(_, d)| *d))
            .unwrap_or(false),
    };
    Ok(if convert { Alpha::OntoWhite } else { Alpha::Drop })
}

/// A parsed, checked preprocessor.
#[derive(Debug, Clone)]
pub struct HfPreprocessor {
    /// How transparency becomes RGB before the resize.
    pub alpha: Alpha,
    resize: Option<(Resize, Filter)>,
    crop: Option<(u32, u32)>,
    rescale: Option<f64>,
    normalize: Option<([f32; 3], [f32; 3])>,
}

/// The image processor's settings and their file: `preprocessor_config.json`, or the
/// `image_processor` entry of `processor_config.json`, where newer VLM folders (LLaVA, SmolVLM)
/// nest it.
pub(crate) fn read_image_processor(dir: &Path) -> Result<(std::path::PathBuf, serde_json::Value)> {
    let flat = dir.join("preprocessor_config.json");
    let nested = dir.join("processor_config.json");
    let path = if flat.exists() || !nested.exists() { flat } else { nested };
    let bad = |reason: String| Error::weights(&path, reason);
    let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    if let Some(inner) = json.get_mut("image_processor") {
        json = inner.take();
    }
    Ok((path, json))
}

impl HfPreprocessor {
    pub fn load(dir: &Path) -> Result<Self> {
        let (path, json) = read_image_processor(dir)?;
        let bad = |reason: String| Error::weights(&path, reason);
        let alpha = alpha_rule(&json).map_err(bad)?;
        let raw: RawConfig = serde_json::from_value(resolve_image_processor(&json, None))
            .map_err(|e| bad(format!("not a preprocessor config: {e}")))?;
        let side = |key: &str, v: u32| checked_side(key, v.into()).map_err(bad);
        let resize = if raw.do_resize {
            let size = match raw.size.ok_or_else(|| bad("do_resize without a size".into()))? {
                SizeSpec::Dict(size) => size,
                SizeSpec::Side(n) => size_from_number(processor_class(&json).as_deref(), n).map_err(bad)?,
            };
            let how = match (size.height, size.width, size.shortest_edge) {
                (Some(height), Some(width), _) => {
                    Resize::Exact { width: side("size.width", width)?, height: side("size.height", height)? }
                }
                (_, _, Some(edge)) => Resize::ShortestEdge(side("size.shortest_edge", edge)?),
                _ => return Err(bad("size needs height and width, or shortest_edge".into())),
            };
            let filter = Filter::from_pil(raw.resample).ok_or_else(|| {
                bad(format!("resample {} is not supported (lanczos 1, bilinear 2, bicubic 3, box 4)", raw.resample))
            })?;
            Some((how, filter))
        } else {
            None
        };
        let crop = if raw.do_center_crop {
            let c = match raw.crop_size.ok_or_else(|| bad("do_center_crop without a crop_size".into()))? {
                SizeSpec::Dict(c) => c,
                SizeSpec::Side(n) => Size { height: Some(n), width: Some(n), shortest_edge: None },
            };
            match (c.height, c.width) {
                (Some(h), Some(w)) => Some((side("crop_size.width", w)?, side("crop_size.height", h)?)),
                _ => return Err(bad("crop_size needs height and width".into())),
            }
        } else {
            None
        };
        let normalize = raw.do_normalize.then_some((raw.image_mean, raw.image_std));
        Ok(Self { alpha, resize, crop, rescale: raw.do_rescale.then_some(raw.rescale_factor), normalize })
    }

    /// The size of a `w` x `h` photo after the resize step, in u64: a thin photo's long side
    /// can outgrow u32.
    fn resized_size(&self, w: u32, h: u32) -> (u64, u64) {
        let (w, h) = (u64::from(w), u64::from(h));
        match self.resize {
            Some((Resize::Exact { width, height }, _)) => (width.into(), height.into()),
            Some((Resize::ShortestEdge(edge), _)) => {
                // transformers: the short side becomes `edge`, the long one int(edge * long / short).
                let (short, long) = (w.min(h).max(1), w.max(h));
                let long_out = u64::from(edge) * long / short;
                if w <= h { (edge.into(), long_out) } else { (long_out, edge.into()) }
            }
            None => (w, h),
        }
    }

    /// The photo-space rectangle `[x0, y0, x1, y1]` the model's input covers.
    pub fn canvas_in_photo(&self, w: u32, h: u32) -> [f32; 4] {
        let (ow, oh) = self.resized_size(w, h);
        let (cw, ch) = self.crop.map_or((ow, oh), |(cw, ch)| (cw.into(), ch.into()));
        let (left, top) = (ow.saturating_sub(cw) / 2, oh.saturating_sub(ch) / 2);
        let (sx, sy) = (ow as f32 / w as f32, oh as f32 / h as f32);
        [left as f32 / sx, top as f32 / sy, (left + cw) as f32 / sx, (top + ch) as f32 / sy]
    }

    /// The 8-bit image after resize and crop; an empty image is an error.
    pub fn resize_and_crop(&self, photo: &RgbImage) -> Result<RgbImage> {
        if photo.width() == 0 || photo.height() == 0 {
            let (w, h) = photo.dimensions();
            return Err(Error::Config { field: "image", reason: format!("the image is {w}x{h} pixels") });
        }
        let (ow, oh) = self.resized_size(photo.width(), photo.height());
        let mut img = match self.resize {
            Some(_) if ow.saturating_mul(oh) > MAX_RESIZED_PIXELS => {
                let (w, h) = photo.dimensions();
                return Err(Error::Config {
                    field: "image",
                    reason: format!(
                        "a {w}x{h} photo would be resized to {ow}x{oh}, over {MAX_RESIZED_PIXELS} pixels: \
                         crop it to a less extreme aspect ratio"
                    ),
                });
            }
            // Both sides fit u32: their product is at most MAX_RESIZED_PIXELS and each is >= 1.
            Some((_, filter)) => resize(photo, ow as u32, oh as u32, filter),
            None => photo.clone(),
        };
        if let Some((cw, ch)) = self.crop {
            let (w, h) = img.dimensions();
            if cw > w || ch > h {
                return Err(Error::Config {
                    field: "crop_size",
                    reason: format!("a {cw}x{ch} crop does not fit the resized {w}x{h} image"),
                });
            }
            img = image::imageops::crop_imm(&img, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image();
        }
        Ok(img)
    }

    /// `[1, 3, h, w]` pixel values, as the processor returns them.
    pub fn pixels(&self, img: &RgbImage, device: &Device) -> Result<Tensor> {
        to_pixels(img, self.rescale, self.normalize, device)
    }
}

/// `[1, 3, h, w]` pixel values: rescaled in float64 then cast, normalised in float32, as the
/// Hugging Face image processors do.
pub(crate) fn to_pixels(
    img: &RgbImage,
    rescale: Option<f64>,
    normalize: Option<([f32; 3], [f32; 3])>,
    device: &Device,
) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    let plane = w as usize * h as usize;
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            let mut v = match rescale {
                Some(f) => (f64::from(px.0[c]) * f) as f32,
                None => f32::from(px.0[c]),
            };
            if let Some((mean, std)) = normalize {
                v = (v - mean[c]) / std[c];
            }
            data[c * plane + i] = v;
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, h as usize, w as usize), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_size_means_what_transformers_makes_of_it() {
        // transformers 5.23, `AutoImageProcessor` on `{"size": 224}` per class.
        let vit = size_from_number(Some("ViTImageProcessor"), 224).unwrap();
        assert_eq!((vit.height, vit.width, vit.shortest_edge), (Some(224), Some(224), None));
        for class in ["CLIPImageProcessor", "SiglipImageProcessor", "BitImageProcessor", "LlavaImageProcessor"] {
            let s = size_from_number(Some(class), 224).unwrap();
            assert_eq!((s.height, s.width, s.shortest_edge), (None, None, Some(224)), "{class}");
        }
        let e = size_from_number(Some("ConvNextImageProcessor"), 224).unwrap_err();
        assert!(e.contains("`ConvNextImageProcessor`") && e.contains("give size as a dict"), "{e}");
        assert_eq!(
            processor_class(&serde_json::json!({"feature_extractor_type": "DeiTFeatureExtractor"})).as_deref(),
            Some("DeiTImageProcessor")
        );
    }
}
