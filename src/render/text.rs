//! Anti-aliased text for titles and colour-bar labels.
//!
//! Uses `ab_glyph` with the Ubuntu font that egui already ships
//! (`epaint_default_fonts`), so exported PNGs match the GUI's look without
//! bundling another font file. The font is parsed once, lazily.
//!
//! Coordinates: `x` is the left edge of the first glyph's advance box and `y`
//! the top of the line box (the baseline sits at `y + ascent`).

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use image::RgbImage;

static FONT: OnceLock<FontRef<'static>> = OnceLock::new();

/// The shared font (Ubuntu Light from `epaint_default_fonts`).
pub fn font() -> &'static FontRef<'static> {
    FONT.get_or_init(|| {
        FontRef::try_from_slice(epaint_default_fonts::UBUNTU_LIGHT).expect("epaint_default_fonts ships a valid TTF")
    })
}

/// Width in pixels of `s` at `px_size` (advances plus kerning).
pub fn text_width(px_size: f32, s: &str) -> f32 {
    let f = font().as_scaled(PxScale::from(px_size));
    let mut width = 0.0;
    let mut prev = None;
    for c in s.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = prev {
            width += f.kern(p, id);
        }
        width += f.h_advance(id);
        prev = Some(id);
    }
    width
}

/// Distance from the line top to the baseline.
pub fn ascent(px_size: f32) -> f32 {
    font().as_scaled(PxScale::from(px_size)).ascent()
}

/// Height of one line box (ascent − descent), excluding line gap.
pub fn line_height(px_size: f32) -> f32 {
    let f = font().as_scaled(PxScale::from(px_size));
    f.ascent() - f.descent()
}

/// Height of a digit above the baseline, for centring numbers on a tick.
pub fn digit_height(px_size: f32) -> f32 {
    let f = font();
    let glyph = f.glyph_id('0').with_scale_and_position(PxScale::from(px_size), point(0.0, 0.0));
    f.outline_glyph(glyph).map(|g| -g.px_bounds().min.y).unwrap_or(px_size * 0.7)
}

/// Draws `s` with its line box top-left at (`x`, `y`), alpha-blending glyph
/// coverage over the existing pixels. Anything outside the image is clipped.
pub fn draw_text(img: &mut RgbImage, x: f32, y: f32, px_size: f32, rgb: [u8; 3], s: &str) {
    let f = font();
    let scale = PxScale::from(px_size);
    let scaled = f.as_scaled(scale);
    let baseline = y + scaled.ascent();
    let (w, h) = img.dimensions();
    let mut caret = x;
    let mut prev = None;
    for c in s.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            caret += scaled.kern(p, id);
        }
        let glyph = id.with_scale_and_position(scale, point(caret, baseline));
        caret += scaled.h_advance(id);
        prev = Some(id);
        let Some(outlined) = f.outline_glyph(glyph) else {
            continue; // whitespace
        };
        let bounds = outlined.px_bounds();
        outlined.draw(|gx, gy, coverage| {
            let px = bounds.min.x as i64 + i64::from(gx);
            let py = bounds.min.y as i64 + i64::from(gy);
            if px < 0 || py < 0 || px >= i64::from(w) || py >= i64::from(h) {
                return;
            }
            // A mild gamma lifts the thin strokes of the Light face at small sizes.
            let a = coverage.clamp(0.0, 1.0).powf(0.7);
            let dst = img.get_pixel_mut(px as u32, py as u32);
            for (d, s) in dst.0.iter_mut().zip(rgb) {
                *d = (f32::from(*d) + (f32::from(s) - f32::from(*d)) * a).round() as u8;
            }
        });
    }
}

/// `s` shortened with a trailing "…" so that it fits in `max_width` pixels.
pub fn fit_text(px_size: f32, s: &str, max_width: f32) -> String {
    if text_width(px_size, s) <= max_width {
        return s.to_owned();
    }
    let mut chars: Vec<char> = s.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().collect::<String>().trim_end().to_owned() + "…";
        if text_width(px_size, &candidate) <= max_width {
            return candidate;
        }
    }
    String::new()
}

/// `s` in lines at most `max_width` px wide, broken at spaces (not at no-break spaces), at most `max_lines` of them (the
/// last shortened with "…" if words are left over, as is a single word too wide for a line).
pub fn wrap(px_size: f32, s: &str, max_width: f32, max_lines: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in s.split([' ', '\n', '\t']).filter(|w| !w.is_empty()) {
        match lines.last_mut() {
            Some(line) if text_width(px_size, &format!("{line} {word}")) <= max_width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    if lines.len() > max_lines {
        let rest = lines.split_off(max_lines - 1).join(" ");
        lines.push(rest);
    }
    lines.iter().map(|l| fit_text(px_size, l, max_width)).collect()
}

/// `n` and the noun, singular for one: "1 group", "3 groups", "1 patch", "0 patches".
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// [`wrap`], but a word too wide for a line is split with a hyphen (at a change from lower to
/// upper case where one fits, "Sparse-" "VLM", else after the most letters that fit) instead of
/// being cut with "…". Lines still number at most `max_lines` (the last cut if words are left).
pub fn wrap_hyphenated(px_size: f32, s: &str, max_width: f32, max_lines: usize) -> Vec<String> {
    let pieces: Vec<String> =
        s.split([' ', '\n', '\t']).filter(|w| !w.is_empty()).flat_map(|w| hyphenate(px_size, w, max_width)).collect();
    // A hyphenated word's pieces never share a line: together they are wider than the word,
    // which did not fit.
    wrap(px_size, &pieces.join(" "), max_width, max_lines)
}

/// `word` in pieces at most `max_width` wide, each but the last ending in "-".
fn hyphenate(px_size: f32, word: &str, max_width: f32) -> Vec<String> {
    if text_width(px_size, word) <= max_width {
        return vec![word.to_owned()];
    }
    let chars: Vec<char> = word.chars().collect();
    let fits = |n: usize| text_width(px_size, &format!("{}-", chars[..n].iter().collect::<String>())) <= max_width;
    // The last case change that fits, else the most letters that fit (at least one).
    let camel = (1..chars.len()).rev().find(|&i| chars[i - 1].is_lowercase() && chars[i].is_uppercase() && fits(i));
    let cut = camel.unwrap_or_else(|| (1..chars.len()).rev().find(|&i| fits(i)).unwrap_or(1));
    let mut out = vec![format!("{}-", chars[..cut].iter().collect::<String>())];
    out.extend(hyphenate(px_size, &chars[cut..].iter().collect::<String>(), max_width));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn metrics_are_sane() {
        let w1 = text_width(14.0, "0.000");
        let w2 = text_width(28.0, "0.000");
        assert!(w1 > 10.0 && (w2 / w1 - 2.0).abs() < 0.01, "{w1} {w2}");
        assert_eq!(text_width(14.0, ""), 0.0);
        assert!(line_height(14.0) > 14.0 * 0.9);
        let d = digit_height(14.0);
        assert!(d > 6.0 && d < 14.0, "{d}");
    }

    #[test]
    fn draws_inside_its_box_and_clips() {
        let mut img = RgbImage::from_pixel(80, 30, Rgb([255, 255, 255]));
        draw_text(&mut img, 2.0, 4.0, 16.0, [0, 0, 0], "Hg 0.5");
        let inked: Vec<(u32, u32)> =
            img.enumerate_pixels().filter(|(_, _, p)| p.0 != [255, 255, 255]).map(|(x, y, _)| (x, y)).collect();
        assert!(inked.len() > 30);
        let right = 2.0 + text_width(16.0, "Hg 0.5");
        assert!(inked.iter().all(|&(x, y)| x + 1 >= 2 && (x as f32) <= right + 1.0 && y >= 4));
        // Partially off-image text must not panic.
        draw_text(&mut img, -10.0, -8.0, 16.0, [0, 0, 0], "clipped");
        draw_text(&mut img, 70.0, 25.0, 16.0, [0, 0, 0], "clipped");
    }

    #[test]
    fn fit_text_truncates() {
        let long = "a very long title that will not fit in the space given";
        let fitted = fit_text(14.0, long, 100.0);
        assert!(fitted.ends_with('…'));
        assert!(text_width(14.0, &fitted) <= 100.0);
        assert_eq!(fit_text(14.0, "short", 100.0), "short");
    }

    #[test]
    fn wrap_breaks_at_spaces_and_keeps_within_width() {
        let lines = wrap(14.0, "66.7 % removed (85 kept)", 70.0, 3);
        assert!(lines.len() > 1, "{lines:?}");
        assert!(lines.iter().all(|l| text_width(14.0, l) <= 70.0), "{lines:?}");
        assert_eq!(lines.join(" ").replace('…', ""), "66.7 % removed (85 kept)");
        assert_eq!(wrap(14.0, "a b c d e f g h", 10.0, 2).len(), 2);
        assert!(wrap(14.0, "", 50.0, 3).is_empty());
        assert_eq!(wrap(14.0, "66.7\u{a0}% removed", 60.0, 3)[0], "66.7\u{a0}%");
    }

    #[test]
    fn long_words_are_hyphenated_not_cut() {
        let w = text_width(14.0, "SparseVLM") * 0.8;
        assert!(wrap(14.0, "SparseVLM", w, 2)[0].ends_with('…'));
        assert_eq!(wrap_hyphenated(14.0, "SparseVLM", w, 2), ["Sparse-", "VLM"]);
        assert_eq!(wrap_hyphenated(14.0, "Full model", 1000.0, 2), ["Full model"]);
        // No case change: as many letters as fit, every line within the width.
        let lines = wrap_hyphenated(14.0, "abcdefghij", text_width(14.0, "abcd-"), 3);
        assert_eq!(lines.concat().replace('-', ""), "abcdefghij");
        assert!(lines.iter().all(|l| text_width(14.0, l) <= text_width(14.0, "abcd-")), "{lines:?}");
        assert_eq!((count(1, "group", "groups"), count(2, "group", "groups")), ("1 group".into(), "2 groups".into()));
    }
}
