//! Image resizing exactly as Pillow's `Image.resize` does it (libImaging `Resample.c`), because
//! Hugging Face image processors resize with Pillow: a separable convolution whose support
//! grows with the downscale factor, 8-bit fixed-point coefficients (22 fractional bits), each
//! pass rounded to 8 bits before the next, in Pillow's order.

use image::RgbImage;

/// Pillow's resampling filters (the numbers are Pillow's `resample` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// 1 (a 3-lobed windowed sinc, as Pillow)
    Lanczos,
    /// 4
    Box,
    /// 2
    Bilinear,
    /// 3 (Keys' cubic with a = -0.5, as Pillow)
    Bicubic,
}

impl Filter {
    /// From a `preprocessor_config.json` `resample` code.
    pub fn from_pil(code: u64) -> Option<Self> {
        match code {
            1 => Some(Filter::Lanczos),
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            4 => Some(Filter::Box),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Lanczos => 3.0,
            Filter::Box => 0.5,
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Lanczos => {
                let sinc =
                    |x: f64| if x == 0.0 { 1.0 } else { (x * std::f64::consts::PI).sin() / (x * std::f64::consts::PI) };
                if (-3.0..3.0).contains(&x) { sinc(x) * sinc(x / 3.0) } else { 0.0 }
            }
            Filter::Box => f64::from(u8::from(x > -0.5 && x <= 0.5)),
            Filter::Bilinear => (1.0 - x.abs()).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output sample: first input index and fixed-point weights (Pillow's `precompute_coeffs`
/// then `normalize_coeffs_8bpc`).
fn coefficients(len_in: usize, len_out: usize, filter: Filter) -> Vec<(usize, Vec<i32>)> {
    let scale = len_in as f64 / len_out as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    // Pillow multiplies by the reciprocal (`ss` in `precompute_coeffs`); dividing can differ in
    // the last bit.
    let ss = 1.0 / filterscale;
    (0..len_out)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero; negative values are clamped to 0 anyway.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = (((center + support + 0.5) as i64).min(len_in as i64) as usize).saturating_sub(xmin);
            let w: Vec<f64> = (0..xmax).map(|x| filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss)).collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&k| {
                    let k = if total != 0.0 { k / total } else { k };
                    let scaled = k * f64::from(1u32 << PRECISION_BITS);
                    (if k < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32 // truncation, as in C
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `img.resize((width, height), filter)` as Pillow computes it: two 8-bit passes, the horizontal
/// one first unless the height shrinks by more than twice as many pixels as the width does
/// (then Pillow 13, the version pinned in `scripts/requirements-vlm.txt`, runs the vertical pass
/// first; the two orders round differently).
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    let shrink_y = i64::from(img.height()) - i64::from(height);
    let shrink_x = i64::from(img.width()) - i64::from(width);
    let vertical_first = shrink_y > 0 && shrink_y > shrink_x * 2;
    let src = img.as_raw();
    let out = if vertical_first {
        let tmp = vertical(src, w, h, oh, filter);
        horizontal(&tmp, w, oh, ow, filter)
    } else {
        let tmp = horizontal(src, w, h, ow, filter);
        vertical(&tmp, ow, h, oh, filter)
    };
    RgbImage::from_raw(width, height, out).expect("sized buffer")
}

/// One horizontal pass over `w` x `h` RGB bytes to width `ow`, rounded to 8 bits (skipped when
/// the width does not change).
fn horizontal(src: &[u8], w: usize, h: usize, ow: usize, filter: Filter) -> Vec<u8> {
    if ow == w {
        return src.to_vec();
    }
    let round = 1i64 << (PRECISION_BITS - 1);
    let coeffs = coefficients(w, ow, filter);
    let mut out = vec![0u8; h * ow * 3];
    for y in 0..h {
        for (ox, (xmin, k)) in coeffs.iter().enumerate() {
            for c in 0..3 {
                let acc: i64 = k
                    .iter()
                    .enumerate()
                    .map(|(i, &kk)| i64::from(src[(y * w + xmin + i) * 3 + c]) * i64::from(kk))
                    .sum();
                out[(y * ow + ox) * 3 + c] = clip8(acc + round);
            }
        }
    }
    out
}

/// One vertical pass over `w` x `h` RGB bytes to height `oh`, rounded to 8 bits (skipped when
/// the height does not change).
fn vertical(src: &[u8], w: usize, h: usize, oh: usize, filter: Filter) -> Vec<u8> {
    if oh == h {
        return src.to_vec();
    }
    let round = 1i64 << (PRECISION_BITS - 1);
    let coeffs = coefficients(h, oh, filter);
    let mut out = vec![0u8; oh * w * 3];
    for (oy, (ymin, k)) in coeffs.iter().enumerate() {
        for x in 0..w {
            for c in 0..3 {
                let acc: i64 = k
                    .iter()
                    .enumerate()
                    .map(|(i, &kk)| i64::from(src[((ymin + i) * w + x) * 3 + c]) * i64::from(kk))
                    .sum();
                out[(oy * w + x) * 3 + c] = clip8(acc + round);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for filter in [Filter::Box, Filter::Bilinear, Filter::Bicubic] {
            for (i, o) in [(451, 32), (300, 40), (32, 32), (10, 37)] {
                for (_, k) in coefficients(i, o, filter) {
                    let sum: i64 = k.iter().map(|&v| i64::from(v)).sum();
                    assert!((sum - (1i64 << PRECISION_BITS)).abs() <= k.len() as i64, "{filter:?} {i}->{o}: {sum}");
                }
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let img = RgbImage::from_pixel(17, 9, image::Rgb([12, 200, 77]));
        for filter in [Filter::Box, Filter::Bilinear, Filter::Bicubic] {
            let out = resize(&img, 5, 13, filter);
            assert!(out.pixels().all(|p| p.0 == [12, 200, 77]), "{filter:?}");
        }
    }
}
