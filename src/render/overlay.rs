//! Photo + heatmap compositing, with a title strip and a labelled colour bar.
//!
//! Every output pixel is mapped back into heatmap coordinates through the
//! [`Placement`] rather than resizing the heatmap as an image: that keeps token
//! cells crisp (nearest sampling, no blur across cell edges), lets the heatmap
//! extend over padding the photo doesn't have, and leaves photo pixels outside
//! the heatmap untinted. The colour bar prints the real value range used for
//! normalisation, so two figures are only compared when their ticks agree.

use image::{RgbImage, imageops};

use super::colormap::Colormap;
use super::scene::{self, Anchor, ColorBarItem, HeatLook, Rect, TextItem};
use super::svg::{Panel, PanelContent};
use super::{raster, text};

/// A scalar field on a regular grid (token grid 16x16, or a pixel map 224x224), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f32>,
}

impl Heatmap {
    /// # Panics
    /// If `values.len() != rows * cols`.
    pub fn new(rows: usize, cols: usize, values: Vec<f32>) -> Self {
        assert_eq!(values.len(), rows * cols, "heatmap is {rows}x{cols}");
        Heatmap { rows, cols, values }
    }

    /// Value at (`row`, `col`); NaN when out of range (drawn untinted).
    pub fn get(&self, row: usize, col: usize) -> f32 {
        if row < self.rows && col < self.cols {
            self.values.get(row * self.cols + col).copied().unwrap_or(f32::NAN)
        } else {
            f32::NAN
        }
    }

    /// The `p`-th percentile (0..=100, nearest rank) of the finite values; NaN if none.
    pub fn percentile(&self, p: f32) -> f32 {
        let mut v: Vec<f32> = self.values.iter().copied().filter(|v| v.is_finite()).collect();
        if v.is_empty() {
            return f32::NAN;
        }
        v.sort_by(f32::total_cmp);
        let rank = (p.clamp(0.0, 100.0) / 100.0 * (v.len() - 1) as f32).round() as usize;
        v[rank]
    }

    /// Smallest and largest finite values, if any.
    pub fn finite_range(&self) -> Option<(f32, f32)> {
        self.values.iter().copied().filter(|v| v.is_finite()).fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
    }
}

/// How values map to [0,1]; the legend prints which one was used.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Norm {
    /// This heatmap's own finite min..max.
    #[default]
    MinMax,
    /// A fixed range, e.g. shared across layers so figures are comparable.
    Range { lo: f32, hi: f32 },
    /// min..the given percentile (e.g. 99): a few outliers (DINOv2's artifact tokens) saturate at
    /// the top colour instead of squashing everything else to the bottom.
    Percentile(f32),
    /// Logarithmic between the largest value and the smallest positive one (at most four decades
    /// below it); zero and negative values get the bottom colour.
    Log,
}

/// The decades a [`Norm::Log`] map spans at most.
const LOG_DECADES: f32 = 4.0;

impl Norm {
    /// Label for the legend.
    pub fn name(&self) -> &'static str {
        match self {
            Norm::MinMax => "min-max",
            Norm::Range { .. } => "fixed range",
            Norm::Percentile(_) => "percentile",
            Norm::Log => "log",
        }
    }

    /// Where `v` falls on the colour scale, 0..=1, given [`resolve`](Self::resolve)'s `(lo, hi)`.
    pub fn unit(&self, v: f32, lo: f32, hi: f32) -> f32 {
        let t = match self {
            Norm::Log if lo > 0.0 => (v.max(lo) / lo).ln() / (hi / lo).ln(),
            _ => (v - lo) / (hi - lo),
        };
        t.clamp(0.0, 1.0)
    }

    /// The `(lo, hi)` actually used, with `lo < hi` guaranteed. A constant
    /// field (or a degenerate fixed range) is widened symmetrically so it maps
    /// to the middle of the colormap; no finite values gives (0, 1).
    pub fn resolve(&self, heat: &Heatmap) -> (f32, f32) {
        let (lo, hi) = match *self {
            Norm::Range { lo, hi } if lo.is_finite() && hi.is_finite() => (lo.min(hi), lo.max(hi)),
            Norm::Percentile(p) => match heat.finite_range() {
                Some((lo, _)) => (lo, heat.percentile(p)),
                None => (0.0, 1.0),
            },
            Norm::Log => match heat.finite_range() {
                Some((_, hi)) if hi > 0.0 => {
                    let floor = hi * 10f32.powf(-LOG_DECADES);
                    let min_pos = heat.values.iter().copied().filter(|v| v.is_finite() && *v > 0.0).fold(hi, f32::min);
                    (min_pos.max(floor), hi)
                }
                // Nothing positive to take a log of: linear, as min-max.
                other => other.unwrap_or((0.0, 1.0)),
            },
            _ => heat.finite_range().unwrap_or((0.0, 1.0)),
        };
        if hi > lo {
            (lo, hi)
        } else {
            let half = (lo.abs() * 0.5).max(0.5);
            (lo - half, lo + half)
        }
    }
}

/// Where the heatmap lies over the photo: the rectangle (in photo pixel
/// coordinates, may extend past the photo's edges, e.g. over padding that the
/// model saw but the photo doesn't have) that the heatmap's full extent covers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

impl Placement {
    /// The heatmap covers exactly the photo (plain resize preprocessing).
    pub fn full(photo_w: u32, photo_h: u32) -> Self {
        Placement { x0: 0.0, y0: 0.0, x1: photo_w as f32, y1: photo_h as f32 }
    }

    /// The model saw the photo scaled to fit a square canvas, centred, with
    /// padding on the short axis: the heatmap covers a `max(w, h)` square
    /// centred on the photo. E.g. 451x300 → y from -75.5 to 375.5.
    pub fn letterbox(photo_w: u32, photo_h: u32) -> Self {
        let side = photo_w.max(photo_h) as f32;
        Self::centred_square(photo_w, photo_h, side)
    }

    /// The model saw a centred square crop covering `fraction` of the short
    /// side (1.0 = largest centred square; 224/256 = "resize 256, crop 224").
    pub fn center_crop(photo_w: u32, photo_h: u32, fraction: f32) -> Self {
        let side = photo_w.min(photo_h) as f32 * fraction;
        Self::centred_square(photo_w, photo_h, side)
    }

    fn centred_square(photo_w: u32, photo_h: u32, side: f32) -> Self {
        let (cx, cy) = (photo_w as f32 / 2.0, photo_h as f32 / 2.0);
        Placement { x0: cx - side / 2.0, y0: cy - side / 2.0, x1: cx + side / 2.0, y1: cy + side / 2.0 }
    }
}

/// Appearance of an [`overlay`] figure.
#[derive(Debug, Clone, PartialEq)]
pub struct OverlayStyle {
    pub colormap: Colormap,
    /// Heatmap opacity, 0 (photo only) ..= 1 (heatmap only).
    pub opacity: f32,
    pub norm: Norm,
    /// Drawn in a strip above the photo; shortened with "…" if too long.
    pub title: Option<String>,
    /// Vertical colour bar with tick values on the right.
    pub colorbar: bool,
    /// The photo is scaled so its longest side is this many px in the output
    /// (upscaling small photos too). Text sizes follow it.
    pub max_side: u32,
    /// false = each grid cell a sharp rectangle (nearest); true = bilinear,
    /// for pixel-resolution maps.
    pub smooth: bool,
    /// Thin translucent lines at cell borders (for coarse token grids).
    pub grid_lines: bool,
}

impl Default for OverlayStyle {
    fn default() -> Self {
        OverlayStyle {
            colormap: Colormap::Viridis,
            opacity: 0.55,
            norm: Norm::MinMax,
            title: None,
            colorbar: true,
            max_side: 512,
            smooth: false,
            grid_lines: false,
        }
    }
}

pub(crate) const BACKGROUND: [u8; 3] = [255, 255, 255];
pub(crate) const INK: [u8; 3] = [28, 28, 32];
pub(crate) const MUTED_INK: [u8; 3] = [100, 100, 108];
pub(crate) const FRAME: [u8; 3] = [70, 70, 78];

/// Photo + heatmap blended, plus an optional title strip above and a colour
/// bar with 3-5 numeric tick labels (the real values of the normalisation
/// range) and the norm name on the right. Pure function, deterministic output.
pub fn overlay(photo: &RgbImage, heat: &Heatmap, place: &Placement, style: &OverlayStyle) -> RgbImage {
    let panel = heat_panel(photo, heat, place, style);
    raster::draw(&scene::panel_scene(&panel, style.max_side, style.colorbar, scene::OUTLINE_RGB))
}

/// The photo with the heatmap blended in, without title or colour bar (what the app shows).
pub fn overlay_body(photo: &RgbImage, heat: &Heatmap, place: &Placement, style: &OverlayStyle) -> RgbImage {
    let panel = heat_panel(photo, heat, place, style);
    raster::body(&scene::panel_body(&panel, style.max_side, scene::OUTLINE_RGB))
}

fn heat_panel<'a>(photo: &'a RgbImage, heat: &'a Heatmap, place: &Placement, style: &OverlayStyle) -> Panel<'a> {
    let look = HeatLook {
        norm: style.norm,
        colormap: style.colormap,
        opacity: style.opacity,
        smooth: style.smooth,
        grid_lines: style.grid_lines,
    };
    Panel { photo, place: *place, content: PanelContent::Heat { heat, look }, title: style.title.clone() }
}

/// Text sizes and margins shared by the figures in this module and
/// [`super::tokens`]; they scale with the figure so a 1024 px export isn't tiny-texted.
pub(crate) struct Frame {
    pub(crate) label_px: f32,
    pub(crate) title_px: f32,
    pub(crate) pad: u32,
    /// Height of the title strip (0 without a title).
    pub(crate) title_h: u32,
}

impl Frame {
    pub(crate) fn new(max_side: u32, has_title: bool) -> Self {
        let label_px = (max_side as f32 / 512.0 * 13.0).clamp(10.0, 26.0);
        let title_px = label_px * 1.3;
        let pad = (label_px * 0.8).round() as u32;
        let title_h = if has_title { (text::line_height(title_px) + label_px * 0.4).ceil() as u32 } else { 0 };
        Frame { label_px, title_px, pad, title_h }
    }
}

pub(crate) fn mix(dst: &mut [u8; 3], src: [u8; 3], a: f32) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = (f32::from(*d) + (f32::from(s) - f32::from(*d)) * a).round() as u8;
    }
}

/// Scales so the longest side is `max_side` (an exact-size photo is copied untouched).
pub(crate) fn scale_photo(photo: &RgbImage, max_side: u32) -> RgbImage {
    let (w, h) = photo.dimensions();
    let (nw, nh) = scaled_size(w, h, max_side);
    if (nw, nh) == (w, h) {
        return photo.clone();
    }
    let filter = if max_side < w.max(h) { imageops::FilterType::Triangle } else { imageops::FilterType::CatmullRom };
    imageops::resize(photo, nw, nh, filter)
}

/// The size [`scale_photo`] gives a `w` x `h` photo.
pub(crate) fn scaled_size(w: u32, h: u32, max_side: u32) -> (u32, u32) {
    let longest = w.max(h);
    if longest == 0 || longest == max_side {
        return (w, h);
    }
    let s = f64::from(max_side) / f64::from(longest);
    (((f64::from(w) * s).round() as u32).max(1), ((f64::from(h) * s).round() as u32).max(1))
}

/// The colour bar column: bar, ticks, labels, and the norm name underneath.
pub(crate) struct ColorBar {
    pub(crate) lo: f32,
    pub(crate) hi: f32,
    pub(crate) ticks: Vec<(f32, String)>,
    pub(crate) norm_name: String,
    pub(crate) label_px: f32,
    pub(crate) bar_w: u32,
    pub(crate) bar_h: u32,
    pub(crate) label_w: u32,
    pub(crate) tick_len: u32,
    pub(crate) tick_gap: u32,
    pub(crate) height: u32,
}

impl ColorBar {
    pub(crate) fn layout(lo: f32, hi: f32, norm: &str, label_px: f32, height: u32) -> Self {
        let norm_px = label_px * 0.9;
        let norm_h = (text::line_height(norm_px) + label_px * 0.6).ceil() as u32;
        let bar_h = height.saturating_sub(norm_h).max(8);
        // As many ticks (5..3) as fit with comfortable spacing.
        let spacing = text::line_height(label_px) * 1.4;
        let n = (3..=5).rev().find(|&n| (n - 1) as f32 * spacing <= bar_h as f32).unwrap_or(3);
        let values: Vec<f32> = (0..n).map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32).collect();
        let labels = tick_labels(&values);
        let label_w = labels.iter().map(|l| text::text_width(label_px, l).ceil() as u32).max().unwrap_or(0);
        let norm_name = norm.to_owned();
        let bar_w = (label_px * 1.1).round() as u32;
        let norm_w = text::text_width(norm_px, &norm_name).ceil() as u32;
        let ticks = values.into_iter().zip(labels).collect();
        let tick_len = (label_px * 0.35).round() as u32;
        let tick_gap = (label_px * 0.25).round() as u32;
        // The norm name sits under the bar and may be wider than bar + labels.
        let label_w = label_w.max(norm_w.saturating_sub(bar_w + tick_len + tick_gap));
        ColorBar { lo, hi, ticks, norm_name, label_px, bar_w, bar_h, label_w, tick_len, tick_gap, height }
    }

    pub(crate) fn width(&self) -> u32 {
        self.bar_w + self.tick_len + self.tick_gap + self.label_w
    }

    /// The bar with its top-left at (`x`, `y`), its ticks and its labels, as a scene item.
    pub(crate) fn item(&self, x: u32, y: u32, colormap: Colormap) -> ColorBarItem {
        let (bw, bh) = (self.bar_w, self.bar_h);
        let digit_h = text::digit_height(self.label_px);
        let ascent = text::ascent(self.label_px);
        let label = |text: String, left: f32, top: f32, px: f32, rgb: [u8; 3], class: &'static str| TextItem {
            text,
            left,
            top,
            px,
            rgb,
            anchor: Anchor::Start,
            class,
        };
        let mut ticks = Vec::new();
        let mut labels = Vec::new();
        for (value, text) in &self.ticks {
            let t = (value - self.lo) / (self.hi - self.lo);
            let ty = (y as f32 + (1.0 - t) * (bh - 1) as f32).round() as u32;
            ticks.push(ty);
            // Vertically centre the digits on the tick.
            let top = (ty as f32 + digit_h / 2.0 - ascent).round();
            let lx = (x + bw + self.tick_len + self.tick_gap) as f32;
            labels.push(label(text.clone(), lx, top, self.label_px, INK, "tick"));
        }
        let norm_px = self.label_px * 0.9;
        let norm_top = (y + self.height) as f32 - text::line_height(norm_px);
        labels.push(label(self.norm_name.clone(), x as f32, norm_top.round(), norm_px, MUTED_INK, "norm"));
        let rect = Rect { x0: x.into(), y0: y.into(), x1: i64::from(x + bw), y1: i64::from(y + bh) };
        ColorBarItem { rect, colormap, frame_rgb: FRAME, ticks, tick_len: self.tick_len, labels }
    }
}

/// Formats tick values with just enough decimals to tell neighbours apart
/// ("0.000", "0.003", ...), switching to scientific notation for extreme magnitudes.
pub fn tick_labels(values: &[f32]) -> Vec<String> {
    let max_abs = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let step = values.windows(2).map(|w| (w[1] - w[0]).abs()).fold(f32::INFINITY, f32::min);
    let clean = |s: String| {
        // "-0.000" reads as a sign bug; print it as "0.000".
        if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') { s[1..].to_owned() } else { s }
    };
    if !step.is_finite() || step <= 0.0 {
        return values.iter().map(|v| clean(format!("{v:.3}"))).collect();
    }
    if max_abs >= 1e5 || step < 1e-5 {
        return values.iter().map(|v| format!("{v:.2e}")).collect();
    }
    let mut decimals = (-step.log10()).ceil().max(0.0) as usize;
    // One more decimal if the step isn't round at that precision (0.25 needs 2, not 1).
    let scaled = step * 10f32.powi(decimals as i32);
    if (scaled - scaled.round()).abs() > 1e-3 * scaled.max(1.0) {
        decimals += 1;
    }
    // Small values keep at least 3 decimals so a figure's labels look uniform ("0.000", "0.250").
    if max_abs < 10.0 {
        decimals = decimals.max(3);
    }
    values.iter().map(|v| clean(format!("{v:.decimals$}"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use std::collections::BTreeSet;

    fn photo(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, 120]))
    }

    /// Finds the photo inside the figure: the top-left offset and size of the body.
    fn body_origin(style: &OverlayStyle) -> (u32, u32) {
        let label_px = (style.max_side as f32 / 512.0 * 13.0).clamp(10.0, 26.0);
        let pad = (label_px * 0.8).round() as u32;
        let title_h =
            style.title.as_ref().map_or(0, |_| (text::line_height(label_px * 1.3) + label_px * 0.4).ceil() as u32);
        (pad, pad + title_h)
    }

    #[test]
    fn opacity_zero_returns_the_photo() {
        let p = photo(64, 40);
        let heat = Heatmap::new(4, 4, (0..16).map(|i| i as f32).collect());
        let style =
            OverlayStyle { opacity: 0.0, max_side: 64, title: Some("opacity zero".into()), ..Default::default() };
        let out = overlay(&p, &heat, &Placement::letterbox(64, 40), &style);
        let (ox, oy) = body_origin(&style);
        for (x, y, px) in p.enumerate_pixels() {
            assert_eq!(out.get_pixel(ox + x, oy + y), px, "at {x},{y}");
        }
    }

    #[test]
    fn outside_the_rect_is_untinted() {
        let p = photo(100, 100);
        let heat = Heatmap::new(2, 2, vec![0.0, 1.0, 2.0, 3.0]);
        let place = Placement { x0: 50.0, y0: 0.0, x1: 100.0, y1: 100.0 };
        let style = OverlayStyle { opacity: 1.0, max_side: 100, colorbar: false, ..Default::default() };
        let out = overlay(&p, &heat, &place, &style);
        let (ox, oy) = body_origin(&style);
        for y in 0..100 {
            for x in 0..50 {
                assert_eq!(out.get_pixel(ox + x, oy + y), p.get_pixel(x, y));
            }
            assert_ne!(out.get_pixel(ox + 75, oy + y), p.get_pixel(75, y));
        }
    }

    #[test]
    fn cells_are_crisp_without_smoothing() {
        // Odd size so the cell boundary doesn't land on a pixel edge by luck.
        let p = RgbImage::from_pixel(101, 101, Rgb([128, 128, 128]));
        let heat = Heatmap::new(2, 2, vec![0.0, 1.0, 0.3, 0.7]);
        for opacity in [1.0, 0.6] {
            let style = OverlayStyle { opacity, max_side: 257, colorbar: false, ..Default::default() };
            let out = overlay(&p, &heat, &Placement::full(101, 101), &style);
            let (ox, oy) = body_origin(&style);
            for y in [0, 60, 128, 200, 256] {
                let row: BTreeSet<[u8; 3]> = (0..257).map(|x| out.get_pixel(ox + x, oy + y).0).collect();
                assert_eq!(row.len(), 2, "row {y}: {row:?}");
            }
        }
        // Smooth mode blends across the boundary instead.
        let style = OverlayStyle { opacity: 1.0, max_side: 257, smooth: true, colorbar: false, ..Default::default() };
        let out = overlay(&p, &heat, &Placement::full(101, 101), &style);
        let (ox, oy) = body_origin(&style);
        let row: BTreeSet<[u8; 3]> = (0..257).map(|x| out.get_pixel(ox + x, oy + 60).0).collect();
        assert!(row.len() > 10);
    }

    #[test]
    fn grid_lines_mark_cell_borders_only() {
        let p = RgbImage::from_pixel(64, 64, Rgb([0, 0, 0]));
        let heat = Heatmap::new(4, 4, vec![0.0; 16]);
        let style =
            OverlayStyle { opacity: 1.0, max_side: 64, grid_lines: true, colorbar: false, ..Default::default() };
        let out = overlay(&p, &heat, &Placement::full(64, 64), &style);
        let (ox, oy) = body_origin(&style);
        let fill = out.get_pixel(ox + 5, oy + 5).0;
        let lines: Vec<u32> = (0..64).filter(|&x| out.get_pixel(ox + x, oy + 5).0 != fill).collect();
        assert_eq!(lines, vec![16, 32, 48]);
    }

    #[test]
    fn deterministic_and_sized() {
        let p = photo(451, 300);
        let heat = Heatmap::new(16, 16, (0..256).map(|i| (i as f32 * 0.37).sin()).collect());
        let style = OverlayStyle { title: Some("t".into()), grid_lines: true, ..Default::default() };
        let a = overlay(&p, &heat, &Placement::letterbox(451, 300), &style);
        let b = overlay(&p, &heat, &Placement::letterbox(451, 300), &style);
        assert_eq!(a, b);
        assert!(a.width() > 512 && a.height() > 341);
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let p = photo(30, 20);
        let style = OverlayStyle::default();
        let empty = Heatmap { rows: 0, cols: 0, values: vec![] };
        overlay(&p, &empty, &Placement::full(30, 20), &style);
        let constant = Heatmap::new(2, 2, vec![5.0; 4]);
        overlay(&p, &constant, &Placement::full(30, 20), &style);
        let nan = Heatmap::new(1, 2, vec![f32::NAN, f32::INFINITY]);
        overlay(&p, &nan, &Placement { x0: 3.0, y0: 3.0, x1: 3.0, y1: 9.0 }, &style);
        let short = Heatmap { rows: 3, cols: 3, values: vec![1.0] };
        overlay(&p, &short, &Placement::full(30, 20), &style);
        overlay(&RgbImage::new(0, 0), &constant, &Placement::full(0, 0), &style);
    }

    #[test]
    fn norms_resolve() {
        let heat = Heatmap::new(1, 3, vec![0.5, f32::NAN, 2.0]);
        assert_eq!(Norm::MinMax.resolve(&heat), (0.5, 2.0));
        assert_eq!(Norm::Range { lo: 1.0, hi: 0.0 }.resolve(&heat), (0.0, 1.0));
        assert_eq!(Norm::Range { lo: f32::NAN, hi: 1.0 }.resolve(&heat), (0.5, 2.0));
        let (lo, hi) = Norm::MinMax.resolve(&Heatmap::new(1, 1, vec![3.0]));
        assert!(lo < 3.0 && hi > 3.0);
    }

    #[test]
    fn one_outlier_does_not_swamp_percentile_or_log() {
        // 99 tokens spread over 0..1 and one artifact token at 100 (DINOv2's high-norm tokens).
        let mut values: Vec<f32> = (0..99).map(|i| i as f32 / 98.0).collect();
        values.push(100.0);
        let heat = Heatmap::new(10, 10, values);
        let mid = 0.5;
        // Min-max puts the middle token at the bottom of the scale.
        let (lo, hi) = Norm::MinMax.resolve(&heat);
        assert!(Norm::MinMax.unit(mid, lo, hi) < 0.01);
        // The 99th percentile ends at the largest ordinary token: the middle one is mid-scale,
        // the outlier saturates.
        let p99 = Norm::Percentile(99.0);
        let (lo, hi) = p99.resolve(&heat);
        assert_eq!((lo, hi), (0.0, 1.0));
        assert!((p99.unit(mid, lo, hi) - 0.5).abs() < 1e-6);
        assert_eq!(p99.unit(100.0, lo, hi), 1.0);
        // Log: from the smallest positive value (1/98) to 100; 1.0 sits at log(98)/log(9800).
        let (lo, hi) = Norm::Log.resolve(&heat);
        assert_eq!((lo, hi), (1.0 / 98.0, 100.0));
        let want = 98f32.ln() / 9800f32.ln();
        assert!((Norm::Log.unit(1.0, lo, hi) - want).abs() < 1e-5);
        assert_eq!(Norm::Log.unit(0.0, lo, hi), 0.0);
        // No positive value: log falls back to the linear range.
        assert_eq!(Norm::Log.resolve(&Heatmap::new(1, 2, vec![-2.0, -1.0])), (-2.0, -1.0));
    }

    #[test]
    fn placements() {
        let p = Placement::letterbox(451, 300);
        assert_eq!((p.x0, p.y0, p.x1, p.y1), (0.0, -75.5, 451.0, 375.5));
        let c = Placement::center_crop(451, 300, 1.0);
        assert_eq!((c.x0, c.y0, c.x1, c.y1), (75.5, 0.0, 375.5, 300.0));
    }

    #[test]
    fn tick_label_formats() {
        assert_eq!(tick_labels(&[0.0, 0.003, 0.006, 0.009, 0.012]), ["0.000", "0.003", "0.006", "0.009", "0.012"]);
        assert_eq!(tick_labels(&[0.0, 0.25, 0.5, 0.75, 1.0]), ["0.000", "0.250", "0.500", "0.750", "1.000"]);
        assert_eq!(tick_labels(&[0.0, 50.0, 100.0]), ["0", "50", "100"]);
        assert_eq!(tick_labels(&[-0.00001, 0.5, 1.0]), ["0.000", "0.500", "1.000"]);
        assert_eq!(tick_labels(&[1e-7, 2e-7, 3e-7]), ["1.00e-7", "2.00e-7", "3.00e-7"]);
        let odd = tick_labels(&[0.0123, 0.0456, 0.0789]);
        assert_eq!(odd.iter().collect::<BTreeSet<_>>().len(), 3, "{odd:?}");
    }
}
