//! What a heatmap figure is made of, below the scene that lays it out: the scalar field and its
//! normalisation, where its grid sits on the photo, the photo's scaling, the colour bar, and the
//! shared inks. The figure builders ([`super::overlay`], [`super::tokens`], [`super::grid`]) and
//! the scene and its back-ends all read these; these read none of them.

use image::{RgbImage, imageops};

use super::text;

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

    /// The part of this placement (of a canvas `canvas` px wide and high) that a grid of
    /// `grid` (rows, cols) whole patches read from the canvas's top-left: a strided patch
    /// convolution leaves the last `side mod patch` pixels unread (SigLIP: 27 patches of 14 px
    /// read 378 of 384). The patch is the largest that makes the grid (`side / cells`, floored):
    /// exact when the patch divides the side or a side has at least √side cells, as every
    /// encoder tokenlens loads has.
    pub fn read_by_grid(&self, canvas: (u32, u32), grid: [usize; 2]) -> Self {
        let part = |side: u32, cells: usize| {
            let cells = cells as u32;
            if side == 0 || cells == 0 || cells > side {
                return 1.0;
            }
            (side / cells * cells) as f32 / side as f32
        };
        let (fy, fx) = (part(canvas.1, grid[0]), part(canvas.0, grid[1]));
        Placement {
            x0: self.x0,
            y0: self.y0,
            x1: self.x0 + (self.x1 - self.x0) * fx,
            y1: self.y0 + (self.y1 - self.y0) * fy,
        }
    }

    fn centred_square(photo_w: u32, photo_h: u32, side: f32) -> Self {
        let (cx, cy) = (photo_w as f32 / 2.0, photo_h as f32 / 2.0);
        Placement { x0: cx - side / 2.0, y0: cy - side / 2.0, x1: cx + side / 2.0, y1: cy + side / 2.0 }
    }
}

pub(crate) const BACKGROUND: [u8; 3] = [255, 255, 255];

pub(crate) const INK: [u8; 3] = [28, 28, 32];

pub(crate) const MUTED_INK: [u8; 3] = [100, 100, 108];

pub(crate) const FRAME: [u8; 3] = [70, 70, 78];

/// Label size for a figure whose longest side is `max_side` px, before any print sizing.
pub fn default_label_px(max_side: u32) -> f32 {
    (max_side as f32 / 512.0 * 13.0).clamp(10.0, 26.0)
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
        Self::with_label(default_label_px(max_side), has_title)
    }

    /// Sizes from the labels' size in px.
    pub(crate) fn with_label(label_px: f32, has_title: bool) -> Self {
        let label_px = label_px.clamp(4.0, 1000.0);
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
///
/// The last few results (up to a megapixel each) are kept, keyed by the photo's size and a hash
/// of its pixels: a slider move redraws the same photo at the same sizes, and the resize was
/// ~5 % of a move's profile. Hashing the pixels costs far less than resizing them.
pub(crate) fn scale_photo(photo: &RgbImage, max_side: u32) -> RgbImage {
    type Scaled = ((u64, u32, u32, u32, u32), std::sync::Arc<RgbImage>);
    static RECENT: std::sync::Mutex<Vec<Scaled>> = std::sync::Mutex::new(Vec::new());
    const KEEP: usize = 4;
    let (w, h) = photo.dimensions();
    let (nw, nh) = scaled_size(w, h, max_side);
    if (nw, nh) == (w, h) {
        return photo.clone();
    }
    let cache = u64::from(nw) * u64::from(nh) <= 1 << 20;
    let key = cache.then(|| {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        photo.as_raw().hash(&mut hasher);
        (hasher.finish(), w, h, nw, nh)
    });
    if let Some(key) = key {
        let recent = RECENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, hit)) = recent.iter().find(|(k, _)| *k == key) {
            return RgbImage::clone(hit);
        }
    }
    let filter = if max_side < w.max(h) { imageops::FilterType::Triangle } else { imageops::FilterType::CatmullRom };
    let scaled = imageops::resize(photo, nw, nh, filter);
    if let Some(key) = key {
        let mut recent = RECENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() >= KEEP {
            recent.remove(0);
        }
        recent.push((key, std::sync::Arc::new(scaled.clone())));
    }
    scaled
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

/// The colour bar column: a thin bar with ticks and tick labels beside it, and the norm name
/// under the bar (right-aligned to the column, so a long name reaches under the body rather than
/// widening the figure: at one column's width every px of width shrinks the text).
pub(crate) struct ColorBar {
    pub(crate) lo: f32,
    pub(crate) hi: f32,
    pub(crate) ticks: Vec<(f32, String)>,
    pub(crate) norm_name: String,
    pub(crate) label_px: f32,
    pub(crate) bar_w: u32,
    pub(crate) bar_h: u32,
    /// The widest tick label.
    pub(crate) label_w: u32,
    pub(crate) tick_len: u32,
    pub(crate) tick_gap: u32,
    /// The bar's height (the body's); the norm name takes [`ColorBar::norm_h`] more below.
    pub(crate) height: u32,
    /// Where a value sits on the bar (log maps space their ticks by decades).
    pub(crate) norm: Norm,
}

impl ColorBar {
    pub(crate) fn layout(lo: f32, hi: f32, norm: &str, label_px: f32, height: u32) -> Self {
        Self::layout_as(lo, hi, norm, Norm::MinMax, label_px, height)
    }

    /// The bar of a map drawn with `norm` over `lo..hi` (as [`Norm::resolve`] gave them).
    pub(crate) fn layout_norm(lo: f32, hi: f32, norm: &Norm, label_px: f32, height: u32) -> Self {
        Self::layout_as(lo, hi, norm.name(), *norm, label_px, height)
    }

    /// The bar of maps whose values were replaced by their log10 (`lo..hi` in decades, see
    /// `export::share_scale`): ticks labelled in the maps' own units, at whole decades where
    /// two to five of them lie on the bar ("0.001", "0.01", "0.1"), else evenly.
    pub(crate) fn layout_log10(lo: f32, hi: f32, norm_label: &str, label_px: f32, height: u32) -> Self {
        let mut bar = Self::layout_as(lo, hi, norm_label, Norm::MinMax, label_px, height);
        let n = bar.ticks.len();
        let decades: Vec<i32> = (lo.ceil() as i32..=hi.floor() as i32).collect();
        bar.ticks = if (2..=n.max(2)).contains(&decades.len()) {
            decades.iter().map(|&k| (k as f32, decade_label(k))).collect()
        } else {
            bar.ticks.iter().map(|&(v, _)| (v, log_tick_label(10f32.powf(v)))).collect()
        };
        bar.label_w = bar.ticks.iter().map(|(_, l)| text::text_width(label_px, l).ceil() as u32).max().unwrap_or(0);
        bar
    }

    fn layout_as(lo: f32, hi: f32, norm_label: &str, scale: Norm, label_px: f32, height: u32) -> Self {
        let bar_h = height.max(8);
        // As many ticks (5..3) as fit with comfortable spacing.
        let spacing = text::line_height(label_px) * 1.4;
        let n = (3..=5).rev().find(|&n| (n - 1) as f32 * spacing <= bar_h as f32).unwrap_or(3);
        let log = matches!(scale, Norm::Log) && lo > 0.0;
        let values: Vec<f32> = if log {
            // Evenly spaced on the bar: geometric in value.
            (0..n).map(|i| lo * (hi / lo).powf(i as f32 / (n - 1) as f32)).collect()
        } else {
            (0..n).map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32).collect()
        };
        let labels = if log { values.iter().map(|&v| log_tick_label(v)).collect() } else { tick_labels(&values) };
        let label_w = labels.iter().map(|l| text::text_width(label_px, l).ceil() as u32).max().unwrap_or(0);
        // A thin bar: its colours read at a glance, the ticks carry the values.
        let bar_w = (label_px * 0.45).round().max(3.0) as u32;
        let ticks = values.into_iter().zip(labels).collect();
        let tick_len = (label_px * 0.3).round().max(1.0) as u32;
        let tick_gap = (label_px * 0.2).round() as u32;
        ColorBar {
            lo,
            hi,
            ticks,
            norm_name: norm_label.to_owned(),
            label_px,
            bar_w,
            bar_h,
            label_w,
            tick_len,
            tick_gap,
            height: bar_h,
            norm: scale,
        }
    }

    /// Bar, ticks and tick labels.
    pub(crate) fn width(&self) -> u32 {
        self.bar_w + self.tick_len + self.tick_gap + self.label_w
    }

    /// The gap between the body and the bar.
    pub(crate) fn gap(&self) -> u32 {
        (self.label_px * 0.5).round() as u32
    }

    /// The norm name's strip under the bar: a small gap and one line.
    pub(crate) fn norm_h(&self) -> u32 {
        (text::line_height(self.label_px) + self.label_px * 0.6).ceil() as u32
    }

    /// The norm name's width.
    pub(crate) fn norm_w(&self) -> u32 {
        text::text_width(self.label_px, &self.norm_name).ceil() as u32
    }
}

/// 10^`k` as printed: "0.001" to "1000", else "1e-4", "1e5".
fn decade_label(k: i32) -> String {
    match k {
        -3..=-1 => format!("0.{}1", "0".repeat((-k - 1) as usize)),
        0..=3 => format!("1{}", "0".repeat(k as usize)),
        _ => format!("1e{k}"),
    }
}

/// A log bar's tick: three significant digits, scientific past 1e4 or under 1e-3.
pub fn log_tick_label(v: f32) -> String {
    if !(1e-3..1e4).contains(&v.abs()) {
        return format!("{v:.2e}");
    }
    let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 5) as usize;
    format!("{v:.decimals$}")
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
mod log_bar_tests {
    use super::*;

    #[test]
    fn a_log10_bar_is_labelled_in_the_maps_units() {
        // Values 10^-3.2 ..= 10^0.1: the decades 0.001, 0.01, 0.1, 1 on the bar.
        let bar = ColorBar::layout_log10(-3.2, 0.1, "log", 12.0, 400);
        let labels: Vec<&str> = bar.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0.001", "0.01", "0.1", "1"]);
        assert!(bar.ticks.iter().all(|(v, _)| (-3.2..=0.1).contains(v)));
        // Less than two decades: evenly spaced, in units (never a negative log10).
        let bar = ColorBar::layout_log10(-2.5, -2.1, "log", 12.0, 400);
        for (v, l) in &bar.ticks {
            let printed: f32 = l.parse().unwrap();
            assert!((printed / 10f32.powf(*v) - 1.0).abs() < 0.01, "{v} printed {l}");
        }
        assert_eq!((decade_label(-4), decade_label(4), decade_label(2)), ("1e-4".into(), "1e4".into(), "100".into()));
    }
}
