//! One description of a figure, drawn by two back-ends.
//!
//! A [`Scene`] is plain data in output px: where each panel's (scaled) photo sits and what lies
//! over it (heatmap cells, token groups as runs of cells, dropped cells, group outlines,
//! hatching), text items and colour bars. Every position and colour is decided
//! here, once, from the figure's inputs; [`super::raster`] (PNG) and [`super::svg`] (SVG) only
//! draw what the scene says, so the two outputs of one figure cannot drift apart.
//!
//! Geometry inside a panel is in body px (the scaled photo's top-left at 0, 0). Cell edges are
//! whole pixels: the first pixel whose centre lies on or past the edge ([`Axis::edge`]). That is
//! where nearest sampling changes cell, so raster cells are exactly the rectangles the SVG draws,
//! and neighbouring SVG cells share edges without anti-aliasing seams.

use std::collections::BTreeMap;

use image::RgbImage;

use super::colormap::Colormap;
use super::groups::{FADE, FADE_RGB, GroupStyle, HATCH_ALPHA, HATCH_PERIOD, HATCH_WIDTH, TokenGroups, legend_lines};
use super::heat::mix;
use super::heat::{ColorBar, FRAME, Frame, Heatmap, INK, MUTED_INK, Norm, Placement, scale_photo};
use super::text;

/// What one panel draws over the photo.
#[derive(Debug, Clone)]
pub enum PanelContent<'a> {
    /// A heatmap: one flat-coloured cell per grid cell (NaN cells left out), or with
    /// `look.smooth` (or more than [`MAX_VECTOR_CELLS`] cells) one sampled layer.
    Heat { heat: &'a Heatmap, look: HeatLook },
    /// A reducer's token groups, drawn as by [`super::tokens_overlay`]; `opacity` is the
    /// merged/fused groups' fill opacity.
    Tokens { groups: &'a TokenGroups, style: GroupStyle, opacity: f32 },
}

/// One photo with something drawn over it; the unit of [`panel_svg`] and of grids.
#[derive(Debug, Clone)]
pub struct Panel<'a> {
    pub photo: &'a RgbImage,
    /// Where the heatmap / token grid lies over the photo.
    pub place: Placement,
    pub content: PanelContent<'a>,
    /// Drawn above the photo by [`panel_svg`]; grids label their edges instead.
    pub title: Option<String>,
}

/// Maps with more cells than this (pixel-resolution outputs such as a 224 x 224 saliency map)
/// are a [`Layer::Field`]: in an SVG one image layer, not tens of thousands of rectangles.
pub const MAX_VECTOR_CELLS: usize = 4096;

/// Thin translucent lines at inner cell borders (heat maps with `grid_lines`).
const GRID_LINE: [u8; 3] = [255, 255, 255];
const GRID_ALPHA: f32 = 0.35;

/// A whole figure: a white canvas and what is drawn on it, in drawing order.
#[derive(Debug, Clone)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub background: [u8; 3],
    pub items: Vec<Item>,
}

#[derive(Debug, Clone)]
pub enum Item {
    Panel(Box<PanelScene>),
    Text(TextItem),
    ColorBar(ColorBarItem),
    /// A legend swatch (see [`super::legend`]).
    Swatch(SwatchItem),
    /// A flat rectangle: a diff mark behind or through answer text (see [`super::answers`]).
    Mark(MarkItem),
}

/// A filled rectangle of whole pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkItem {
    pub rect: Rect,
    pub rgb: [u8; 3],
    /// What it marks, for tooling (an SVG class): "added", "removed", "strike".
    pub class: &'static str,
}

impl Scene {
    /// Every text of the figure: labels, titles, legends, colour-bar ticks.
    pub fn texts(&self) -> impl Iterator<Item = &TextItem> {
        self.items.iter().flat_map(|item| -> Box<dyn Iterator<Item = &TextItem> + '_> {
            match item {
                Item::Text(t) => Box::new(std::iter::once(t)),
                Item::ColorBar(b) => Box::new(b.labels.iter()),
                Item::Panel(_) | Item::Swatch(_) | Item::Mark(_) => Box::new(std::iter::empty()),
            }
        })
    }

    /// The smallest text's size in points when the figure is printed `width_in` inches wide.
    pub fn smallest_text_pt(&self, width_in: f64) -> Option<f64> {
        let smallest = self.texts().map(|t| t.px).reduce(f32::min)?;
        Some(f64::from(smallest) * width_in * 72.0 / f64::from(self.width.max(1)))
    }
}

/// A rectangle of whole pixels, `x0..x1` by `y0..y1`; may extend past the body (letterbox
/// padding), back-ends clip it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x0: i64,
    pub y0: i64,
    pub x1: i64,
    pub y1: i64,
}

impl Rect {
    /// The part inside `0..w` x `0..h`, as pixel ranges; `None` if empty.
    pub fn clip(&self, w: u32, h: u32) -> Option<(std::ops::Range<u32>, std::ops::Range<u32>)> {
        let c = |a: i64, n: u32| a.clamp(0, i64::from(n)) as u32;
        let (x0, x1, y0, y1) = (c(self.x0, w), c(self.x1, w), c(self.y0, h), c(self.y1, h));
        (x0 < x1 && y0 < y1).then_some((x0..x1, y0..y1))
    }
}

/// One photo with what is drawn over it.
#[derive(Debug, Clone)]
pub struct PanelScene {
    /// Top-left of the body in the figure.
    pub x: u32,
    pub y: u32,
    /// The photo scaled to the body's size.
    pub photo: RgbImage,
    pub layer: Layer,
    /// Row and column in a grid figure.
    pub grid_cell: Option<(usize, usize)>,
}

/// What lies over a panel's photo, in body px.
#[derive(Debug, Clone)]
pub enum Layer {
    /// Nothing (a degenerate grid or placement): the photo alone.
    None,
    Cells(CellsLayer),
    Field(FieldLayer),
    Tokens(TokensLayer),
}

/// A heatmap as flat-coloured cells (nearest sampling).
#[derive(Debug, Clone)]
pub struct CellsLayer {
    /// One per finite cell that touches the body, in raster order.
    pub cells: Vec<HeatCell>,
    pub alpha: f32,
    /// Colour and opacity of 1 px lines on each cell's inner top and left border.
    pub grid_lines: Option<([u8; 3], f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeatCell {
    pub row: usize,
    pub col: usize,
    /// `row * cols + col`.
    pub patch: usize,
    pub rect: Rect,
    pub rgb: [u8; 3],
}

/// A pixel-resolution (or smoothly sampled) map: sampled per output pixel by the raster
/// back-end, one image layer over [`CellGrid::extent`] in the SVG.
#[derive(Debug, Clone)]
pub struct FieldLayer {
    pub grid: CellGrid,
    pub heat: Heatmap,
    pub norm: Norm,
    pub lo: f32,
    pub hi: f32,
    pub colormap: Colormap,
    pub alpha: f32,
    /// Bilinear between cell centres instead of nearest.
    pub smooth: bool,
}

impl FieldLayer {
    /// The colour of value `v` (None for a missing value: left untinted).
    pub fn colour(&self, v: f32) -> Option<[u8; 3]> {
        v.is_finite().then(|| self.colormap.rgb(self.norm.unit(v, self.lo, self.hi)))
    }
}

/// A reducer's tokens: groups as runs of cells, dropped cells, outlines and hatching.
#[derive(Debug, Clone)]
pub struct TokensLayer {
    /// Ascending id; groups with no cell on the grid are left out.
    pub groups: Vec<GroupShape>,
    pub dropped: Vec<Rect>,
    /// Dropped cells fade towards this colour by this much.
    pub fade: ([u8; 3], f32),
    /// Boundaries between tokens (or a token and a dropped or off-grid cell), strictly inside
    /// the body; collinear pieces joined. Each is axis-aligned (`x0 == x1` or `y0 == y1`).
    pub outline: Vec<Rect>,
    pub outline_rgb: [u8; 3],
    /// Outlines cover `reach` px on each side of a boundary.
    pub reach: u32,
    /// Stripes over fused groups.
    pub hatch: Hatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A singleton group: a patch kept as itself, drawn as the photo.
    Kept,
    /// Several patches merged into one token: tinted.
    Merged,
    /// Several patches fused into one token by a pruning method (EViT): tinted and hatched.
    Fused,
}

impl TokenKind {
    pub fn name(self) -> &'static str {
        match self {
            TokenKind::Kept => "kept",
            TokenKind::Merged => "merged",
            TokenKind::Fused => "fused",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GroupShape {
    pub id: u32,
    pub kind: TokenKind,
    /// Horizontal runs of cells, one per row the group spans (unclipped).
    pub rects: Vec<Rect>,
    /// The mean photo colour over the group's pixels, for merged and fused groups that show.
    pub tint: Option<[u8; 3]>,
    pub alpha: f32,
}

/// Diagonal stripes `width` px of every `period` px (x + y), the colour blended in at `alpha`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hatch {
    pub period: u32,
    pub width: u32,
    pub rgb: [u8; 3],
    pub alpha: f32,
}

impl Hatch {
    pub fn covers(&self, x: u32, y: u32) -> bool {
        (x + y) % self.period < self.width
    }
}

/// Where a text's anchor point is: the SVG keeps it there if a viewer substitutes a wider font.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextItem {
    pub text: String,
    /// Left edge of the line box as laid out with the raster font (Ubuntu Light), and its top.
    pub left: f32,
    pub top: f32,
    pub px: f32,
    pub rgb: [u8; 3],
    pub anchor: Anchor,
    /// What the text is, for tooling (an SVG class): "title", "tick", "legend", ...
    pub class: &'static str,
}

impl TextItem {
    /// The x of the anchor point: `left` plus none, half or all of the laid-out width.
    pub fn anchor_x(&self) -> f32 {
        let w = text::text_width(self.px, &self.text);
        match self.anchor {
            Anchor::Start => self.left,
            Anchor::Middle => self.left + w / 2.0,
            Anchor::End => self.left + w,
        }
    }
}

/// A vertical colour bar: top is the colormap's end, bottom its start, framed; ticks to its right.
#[derive(Debug, Clone)]
pub struct ColorBarItem {
    pub rect: Rect,
    pub colormap: Colormap,
    pub frame_rgb: [u8; 3],
    /// Row of each tick (figure px) and its length from the bar's right edge.
    pub ticks: Vec<u32>,
    pub tick_len: u32,
    /// Tick labels and the norm name.
    pub labels: Vec<TextItem>,
}

/// One axis of a grid over a body: output pixel `i` ↔ grid coordinate (in cells).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Axis {
    /// Output pixels and photo pixels along the axis.
    px: u32,
    photo: u32,
    /// The grid's extent in photo pixels.
    a0: f32,
    a1: f32,
    cells: usize,
}

impl Axis {
    /// Grid coordinate of the centre of output pixel `i`: the one mapping both back-ends use.
    pub fn coord(&self, i: i64) -> f64 {
        let to_photo = f64::from(self.photo) / f64::from(self.px);
        let span = f64::from(self.a1) - f64::from(self.a0);
        let p = (i as f64 + 0.5) * to_photo;
        (p - f64::from(self.a0)) / span * self.cells as f64
    }

    /// The first pixel whose centre lies on or past cell edge `c` (`coord >= c`): pixel `i` is
    /// in cell `c` exactly when `edge(c) <= i < edge(c + 1)`, as nearest sampling puts it.
    fn edge(&self, c: usize) -> i64 {
        let to_photo = f64::from(self.photo) / f64::from(self.px);
        let span = f64::from(self.a1) - f64::from(self.a0);
        let at = f64::from(self.a0) + span * c as f64 / self.cells as f64;
        // The closed form, then nudged to agree with `coord` to the last bit.
        let mut i = (at / to_photo - 0.5).ceil() as i64;
        let c = c as f64;
        for _ in 0..4 {
            if self.coord(i.saturating_sub(1)) >= c {
                i = i.saturating_sub(1);
            } else if self.coord(i) < c {
                i = i.saturating_add(1);
            } else {
                break;
            }
        }
        i
    }
}

/// Where a `rows` x `cols` grid lies over a body of `w` x `h` px.
#[derive(Debug, Clone, PartialEq)]
pub struct CellGrid {
    pub rows: usize,
    pub cols: usize,
    /// `xs[c]`: the first pixel column of grid column `c` (`cols + 1` values); `ys` likewise.
    pub xs: Vec<i64>,
    pub ys: Vec<i64>,
    pub x: Axis,
    pub y: Axis,
    pub w: u32,
    pub h: u32,
}

impl CellGrid {
    /// `None` when nothing can be drawn: an empty photo or grid, or a degenerate placement.
    pub fn new(photo: (u32, u32), body: (u32, u32), place: &Placement, rows: usize, cols: usize) -> Option<Self> {
        let ((pw, ph), (w, h)) = (photo, body);
        if pw == 0 || ph == 0 || w == 0 || h == 0 || rows == 0 || cols == 0 {
            return None;
        }
        if !(place.x1 > place.x0 && place.y1 > place.y0) {
            return None;
        }
        let x = Axis { px: w, photo: pw, a0: place.x0, a1: place.x1, cells: cols };
        let y = Axis { px: h, photo: ph, a0: place.y0, a1: place.y1, cells: rows };
        // Coordinates grow with the pixel index: finite at both ends means finite throughout.
        let finite = |a: &Axis| a.coord(-1).is_finite() && a.coord(i64::from(a.px) - 1).is_finite();
        if !(finite(&x) && finite(&y)) {
            return None;
        }
        let xs = (0..=cols).map(|c| x.edge(c)).collect();
        let ys = (0..=rows).map(|r| y.edge(r)).collect();
        Some(CellGrid { rows, cols, xs, ys, x, y, w, h })
    }

    pub fn cell(&self, r: usize, c: usize) -> Rect {
        Rect { x0: self.xs[c], y0: self.ys[r], x1: self.xs[c + 1], y1: self.ys[r + 1] }
    }

    /// The whole grid (it may extend past the body).
    pub fn extent(&self) -> Rect {
        Rect { x0: self.xs[0], y0: self.ys[0], x1: self.xs[self.cols], y1: self.ys[self.rows] }
    }

    fn touches_body(&self, r: Rect) -> bool {
        r.x1 > 0 && r.x0 < i64::from(self.w) && r.y1 > 0 && r.y0 < i64::from(self.h)
    }
}

/// How heat cells look.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeatLook {
    pub norm: Norm,
    pub colormap: Colormap,
    pub opacity: f32,
    pub smooth: bool,
    pub grid_lines: bool,
}

/// How token groups look.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokensLook {
    pub style: GroupStyle,
    pub opacity: f32,
    pub outline_rgb: [u8; 3],
}

fn opacity(a: f32) -> f32 {
    if a.is_nan() { 0.0 } else { a.clamp(0.0, 1.0) }
}

/// A heatmap's layer over a body of `body` px.
pub fn heat_layer(photo: (u32, u32), body: (u32, u32), place: &Placement, heat: &Heatmap, look: &HeatLook) -> Layer {
    let Some(grid) = CellGrid::new(photo, body, place, heat.rows, heat.cols) else {
        return Layer::None;
    };
    let alpha = opacity(look.opacity);
    let (lo, hi) = look.norm.resolve(heat);
    if look.smooth || heat.rows * heat.cols > MAX_VECTOR_CELLS {
        let (norm, colormap, smooth) = (look.norm, look.colormap, look.smooth);
        return Layer::Field(FieldLayer { grid, heat: heat.clone(), norm, lo, hi, colormap, alpha, smooth });
    }
    let mut cells = Vec::new();
    for row in 0..heat.rows {
        for col in 0..heat.cols {
            let rect = grid.cell(row, col);
            let v = heat.get(row, col);
            if !v.is_finite() || !grid.touches_body(rect) {
                continue;
            }
            let rgb = look.colormap.rgb(look.norm.unit(v, lo, hi));
            cells.push(HeatCell { row, col, patch: row * heat.cols + col, rect, rgb });
        }
    }
    Layer::Cells(CellsLayer { cells, alpha, grid_lines: look.grid_lines.then_some((GRID_LINE, GRID_ALPHA)) })
}

/// What a grid cell holds, with a ring of off-grid cells around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    OffGrid,
    Dropped,
    Group(u32),
}

/// Line widths grow with the output: 1 per 512 px of the body's longest side, at least 1.
pub(crate) fn reach_scale(body_px: u32) -> u32 {
    ((body_px as f32 / 512.0).round() as u32).max(1)
}

/// A reducer's groups over the `scaled` photo (the body), see [`TokensLayer`]; `body_px` sets
/// line widths and hatch spacing.
pub fn tokens_layer(
    photo: (u32, u32),
    scaled: &RgbImage,
    place: &Placement,
    groups: &TokenGroups,
    look: &TokensLook,
    body_px: u32,
) -> Layer {
    let Some(grid) = CellGrid::new(photo, scaled.dimensions(), place, groups.rows, groups.cols) else {
        return Layer::None;
    };
    let (rows, cols) = (groups.rows, groups.cols);
    let label = |r: isize, c: isize| -> Label {
        if r < 0 || c < 0 || r as usize >= rows || c as usize >= cols {
            Label::OffGrid
        } else {
            groups.group(r as usize, c as usize).map_or(Label::Dropped, Label::Group)
        }
    };

    // Fills: horizontal runs of one label per row.
    let mut runs_of: BTreeMap<u32, Vec<Rect>> = BTreeMap::new();
    let mut sizes: BTreeMap<u32, usize> = BTreeMap::new();
    let mut dropped = Vec::new();
    for r in 0..rows {
        let mut c0 = 0;
        while c0 < cols {
            let l = label(r as isize, c0 as isize);
            let mut c1 = c0 + 1;
            while c1 < cols && label(r as isize, c1 as isize) == l {
                c1 += 1;
            }
            let rect = Rect { x0: grid.xs[c0], y0: grid.ys[r], x1: grid.xs[c1], y1: grid.ys[r + 1] };
            match l {
                Label::Group(id) => {
                    runs_of.entry(id).or_default().push(rect);
                    *sizes.entry(id).or_default() += c1 - c0;
                }
                Label::Dropped => dropped.push(rect),
                Label::OffGrid => {}
            }
            c0 = c1;
        }
    }

    let alpha = opacity(look.opacity);
    let fused = look.style == GroupStyle::KeptDropped;
    let (w, h) = scaled.dimensions();
    let shapes = runs_of
        .into_iter()
        .map(|(id, rects)| {
            let kind = match (sizes[&id] > 1, fused) {
                (false, _) => TokenKind::Kept,
                (true, false) => TokenKind::Merged,
                (true, true) => TokenKind::Fused,
            };
            let tint = if kind == TokenKind::Kept { None } else { mean_colour(scaled, &rects, w, h) };
            GroupShape { id, kind, rects, tint, alpha }
        })
        .collect();

    // Outlines: cell edges whose two sides differ, unless neither side is a token, strictly
    // inside the body (the photo's border is not outlined). Collinear pieces are joined.
    let boundary = |a: Label, b: Label| a != b && (matches!(a, Label::Group(_)) || matches!(b, Label::Group(_)));
    let mut outline = Vec::new();
    for c in 0..=cols {
        let x = grid.xs[c];
        if x <= 0 || x >= i64::from(w) {
            continue;
        }
        let on = |r: usize| boundary(label(r as isize, c as isize - 1), label(r as isize, c as isize));
        for (r0, r1) in runs(rows, on) {
            outline.push(Rect { x0: x, y0: grid.ys[r0], x1: x, y1: grid.ys[r1] });
        }
    }
    for r in 0..=rows {
        let y = grid.ys[r];
        if y <= 0 || y >= i64::from(h) {
            continue;
        }
        let on = |c: usize| boundary(label(r as isize - 1, c as isize), label(r as isize, c as isize));
        for (c0, c1) in runs(cols, on) {
            outline.push(Rect { x0: grid.xs[c0], y0: y, x1: grid.xs[c1], y1: y });
        }
    }
    let scale = reach_scale(body_px);
    Layer::Tokens(TokensLayer {
        groups: shapes,
        dropped,
        fade: (FADE_RGB, FADE),
        outline,
        outline_rgb: look.outline_rgb,
        reach: scale,
        hatch: Hatch {
            period: HATCH_PERIOD * scale,
            width: HATCH_WIDTH * scale,
            rgb: look.outline_rgb,
            alpha: HATCH_ALPHA,
        },
    })
}

/// Maximal runs `[i0, i1)` of `0..n` where `on(i)` holds.
fn runs(n: usize, on: impl Fn(usize) -> bool) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for i in 0..=n {
        match (start, i < n && on(i)) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// Mean colour of `img` over the pixels of `rects` inside it; `None` if there are none. Sums are
/// exact integers, so the result doesn't depend on order.
fn mean_colour(img: &RgbImage, rects: &[Rect], w: u32, h: u32) -> Option<[u8; 3]> {
    let mut s = [0u64; 4];
    for (xr, yr) in rects.iter().filter_map(|r| r.clip(w, h)) {
        for y in yr {
            for x in xr.clone() {
                for (sum, c) in s.iter_mut().zip(img.get_pixel(x, y).0) {
                    *sum += u64::from(c);
                }
                s[3] += 1;
            }
        }
    }
    let n = s[3];
    let mean = |c: usize| ((s[c] + n / 2) / n) as u8;
    (n > 0).then(|| [mean(0), mean(1), mean(2)])
}

/// A panel's body at the origin: the photo scaled to `body_px` on its longest side, with the
/// panel's content over it.
pub fn panel_body(panel: &Panel, body_px: u32, outline_rgb: [u8; 3]) -> PanelScene {
    let body_px = body_px.max(1);
    let scaled = scale_photo(panel.photo, body_px);
    let photo = panel.photo.dimensions();
    let layer = match &panel.content {
        PanelContent::Heat { heat, look } => heat_layer(photo, scaled.dimensions(), &panel.place, heat, look),
        PanelContent::Tokens { groups, style, opacity } => {
            let look = TokensLook { style: *style, opacity: *opacity, outline_rgb };
            tokens_layer(photo, &scaled, &panel.place, groups, &look, body_px)
        }
    };
    PanelScene { x: 0, y: 0, photo: scaled, layer, grid_cell: None }
}

/// The white outline of token groups unless told otherwise.
pub const OUTLINE_RGB: [u8; 3] = [255, 255, 255];

/// A single panel as a figure: the panel's title in a strip above, the body, and with `key` its
/// key: a colour bar on the right (heat) or the kept/merged/dropped legend under the body
/// (tokens): swatches, then the counts.
pub fn panel_scene(panel: &Panel, body_px: u32, key: bool, outline_rgb: [u8; 3]) -> Scene {
    panel_scene_sized(panel, body_px, key, outline_rgb, None)
}

/// [`panel_scene`] with labels `label_px` tall (`None`: sized for the body, see [`Frame::new`]).
pub fn panel_scene_sized(panel: &Panel, body_px: u32, key: bool, outline_rgb: [u8; 3], label_px: Option<f32>) -> Scene {
    let body_px = body_px.max(1);
    let mut body = panel_body(panel, body_px, outline_rgb);
    let (bw, bh) = body.photo.dimensions();
    let has_title = panel.title.is_some();
    let mut frame = label_px.map_or_else(|| Frame::new(body_px, has_title), |px| Frame::with_label(px, has_title));
    let (label_px, pad) = (frame.label_px, frame.pad);
    let body_x = pad;

    let bar = match (&panel.content, key) {
        (PanelContent::Heat { heat, look }, true) => {
            let (lo, hi) = look.norm.resolve(heat);
            Some((ColorBar::layout_norm(lo, hi, &look.norm, label_px, bh), look.colormap))
        }
        _ => None,
    };
    let legend = match (&panel.content, key) {
        (PanelContent::Tokens { groups, style, .. }, true) => {
            let stats = groups.stats();
            Some((legend_lines(&stats, *style), legend_kinds(*style, stats.merged_groups > 0)))
        }
        _ => None,
    };
    // Room past the tick labels for a substitute font wider than Ubuntu Light (e.g. DejaVu Sans).
    let right_w = bar.as_ref().map_or(0, |(b, _)| b.gap() + b.width() + font_slack(b.label_w));
    let width = body_x + bw + right_w + pad;
    // The norm name under the bar.
    let norm_h = bar.as_ref().map_or(0, |(b, _)| b.norm_h());
    // A long title (a map's source, "(reduced: ToMe, 67 % removed)") takes a second line
    // rather than being cut; laid out with room for a wider substitute font, as `title_item`.
    let title_lines = panel
        .title
        .as_ref()
        .map_or_else(Vec::new, |t| text::wrap(frame.title_px, t, width.saturating_sub(2 * pad) as f32 / 1.25, 2));
    let title_line_h = text::line_height(frame.title_px).ceil() as u32;
    frame.title_h += title_line_h * title_lines.len().saturating_sub(1) as u32;
    let body_y = pad + frame.title_h;
    (body.x, body.y) = (body_x, body_y);
    let legend_gap = (label_px * 0.5).round() as u32;
    let avail = (width - 2 * pad) as f32;
    let key_top = (body_y + bh + legend_gap) as f32;
    let (key_items, key_h) = match &legend {
        Some((_, kinds)) => legend_key_items(kinds, (body_x as f32, key_top), label_px, avail, outline_rgb, body_px),
        None => (Vec::new(), 0),
    };
    let legend_h = if legend.is_some() { legend_gap + key_h + text::line_height(label_px).ceil() as u32 } else { 0 };
    let height = body_y + bh + legend_h.max(norm_h) + pad;

    let mut items = vec![Item::Panel(Box::new(body))];
    for (i, line) in title_lines.iter().enumerate() {
        let mut item = frame.title_item(line, width, body_x, bw);
        item.top += (i as u32 * title_line_h) as f32;
        items.push(Item::Text(item));
    }
    if let Some((bar, colormap)) = bar {
        items.push(Item::ColorBar(bar.item(body_x + bw + bar.gap(), body_y, colormap)));
    }
    if let Some((lines, _)) = legend {
        items.extend(key_items);
        // The longest wording that fits; the shortest one is cut with "…" if even it doesn't.
        let shown = lines
            .iter()
            .find(|l| text::text_width(label_px, l) <= avail)
            .cloned()
            .unwrap_or_else(|| text::fit_text(label_px, &lines[lines.len() - 1], avail));
        items.push(Item::Text(TextItem {
            text: shown,
            left: body_x as f32,
            top: key_top + key_h as f32,
            px: label_px,
            rgb: MUTED_INK,
            anchor: Anchor::Start,
            class: "legend",
        }));
    }
    Scene { width, height, background: super::heat::BACKGROUND, items }
}

/// `scene` with `note` under everything, in muted text `label_px` tall, wrapped to the scene's
/// width (at most three lines, with room for a wider substitute font): what a figure leaves out.
pub fn with_note(mut scene: Scene, note: &str, label_px: f32) -> Scene {
    let pad = (label_px * 0.8).round();
    let lines = text::wrap(label_px, note, (scene.width as f32 - 2.0 * pad).max(label_px) / 1.15, 3);
    let line_h = text::line_height(label_px);
    // The old bottom margin becomes the gap above the note.
    let top = scene.height as f32;
    for (i, line) in lines.iter().enumerate() {
        scene.items.push(Item::Text(TextItem {
            text: line.clone(),
            left: pad,
            top: (top + i as f32 * line_h).round(),
            px: label_px,
            rgb: MUTED_INK,
            anchor: Anchor::Start,
            class: "note",
        }));
    }
    scene.height += (line_h * lines.len() as f32 + pad).ceil() as u32;
    scene
}

// The token legend's key: a row of swatches (kept / merged / fused / dropped), each drawn by
// the rules the token views use, in the app's legend colours (`app::view::token_legend`).

/// What a swatch stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LegendKind {
    Kept,
    Merged,
    Fused,
    Dropped,
}

impl LegendKind {
    pub fn name(self) -> &'static str {
        match self {
            LegendKind::Kept => "kept",
            LegendKind::Merged => "merged",
            LegendKind::Fused => "fused",
            LegendKind::Dropped => "dropped",
        }
    }
}

/// A stand-in for the photo under a swatch, and the tint of a merged or fused token (the app's).
pub const SWATCH_PHOTO: [u8; 3] = [150, 130, 100];
pub const SWATCH_TINT: [u8; 3] = [110, 120, 160];

/// One swatch: a square filled as its kind is drawn, framed so it shows on white.
#[derive(Debug, Clone, PartialEq)]
pub struct SwatchItem {
    pub kind: LegendKind,
    pub rect: Rect,
    pub fill: [u8; 3],
    /// The token outline's colour and width, drawn inside the square.
    pub outline: Option<([u8; 3], u32)>,
    /// Stripes, counted from the swatch's top-left as a panel's from its body's.
    pub hatch: Option<Hatch>,
    /// The dark frame around the square, as wide as the outline inside it: a 1 px frame beside a
    /// white outline read as a stray line once the figure was scaled down (or vanished on one
    /// side, as an SVG's crisp edges rounded it).
    pub frame_rgb: [u8; 3],
    pub frame_w: u32,
}

/// The kinds a token view's legend shows, by the app's rule: kept and dropped always; merged for
/// merge methods, fused for pruning methods that fused patches (`multi`: some group has more
/// than one patch).
pub fn legend_kinds(style: GroupStyle, multi: bool) -> Vec<LegendKind> {
    let middle = match style {
        GroupStyle::MergeGroups => Some(LegendKind::Merged),
        GroupStyle::KeptDropped => multi.then_some(LegendKind::Fused),
    };
    [Some(LegendKind::Kept), middle, Some(LegendKind::Dropped)].into_iter().flatten().collect()
}

/// The swatch of `kind`, `side` px square at (`x`, `y`); `body_px` sets the hatch spacing as in
/// the panels beside it.
fn swatch(kind: LegendKind, x: i64, y: i64, side: u32, outline_rgb: [u8; 3], body_px: u32) -> SwatchItem {
    let scale = reach_scale(body_px);
    let line = ((side as f32 / 10.0).round() as u32).max(1);
    let mut faded = SWATCH_PHOTO;
    mix(&mut faded, FADE_RGB, FADE);
    let (fill, outline, hatch) = match kind {
        LegendKind::Kept => (SWATCH_PHOTO, true, false),
        LegendKind::Merged => (SWATCH_TINT, true, false),
        LegendKind::Fused => (SWATCH_TINT, true, true),
        LegendKind::Dropped => (faded, false, false),
    };
    SwatchItem {
        kind,
        rect: Rect { x0: x, y0: y, x1: x + i64::from(side), y1: y + i64::from(side) },
        fill,
        outline: outline.then_some((outline_rgb, line)),
        hatch: hatch.then_some(Hatch {
            period: HATCH_PERIOD * scale,
            width: HATCH_WIDTH * scale,
            rgb: outline_rgb,
            alpha: HATCH_ALPHA,
        }),
        frame_rgb: FRAME,
        frame_w: line,
    }
}

/// Width of one entry: swatch, gap, word.
fn entry_w(kind: LegendKind, label_px: f32) -> f32 {
    let side = swatch_side(label_px) as f32;
    side + label_px * 0.35 + text::text_width(label_px, kind.name())
}

fn swatch_side(label_px: f32) -> u32 {
    (label_px * 0.85).round().max(4.0) as u32
}

/// The key laid out from (`left`, `top`) in lines at most `max_w` px wide (an entry never
/// splits); the items and the height they take.
pub fn legend_key_items(
    kinds: &[LegendKind],
    (left, top): (f32, f32),
    label_px: f32,
    max_w: f32,
    outline_rgb: [u8; 3],
    body_px: u32,
) -> (Vec<Item>, u32) {
    if kinds.is_empty() {
        return (Vec::new(), 0);
    }
    let line_h = text::line_height(label_px);
    // The space between entries leaves room for a wider substitute font in an SVG viewer.
    let (gap, sep) = (label_px * 0.35, label_px * 1.5);
    let side = swatch_side(label_px);
    let mut items = Vec::new();
    let (mut x, mut line) = (left, 0u32);
    for &kind in kinds {
        let w = entry_w(kind, label_px);
        if x > left && x - left + w > max_w {
            (x, line) = (left, line + 1);
        }
        let y = top + line as f32 * line_h * 1.15;
        let sy = (y + (line_h - side as f32) / 2.0).round() as i64;
        items.push(Item::Swatch(swatch(kind, x.round() as i64, sy, side, outline_rgb, body_px)));
        items.push(Item::Text(TextItem {
            text: kind.name().into(),
            left: (x + side as f32 + gap).round(),
            top: y.round(),
            px: label_px,
            rgb: INK,
            anchor: Anchor::Start,
            class: "legend-key",
        }));
        x += w + sep;
    }
    let height = (line_h * (1.0 + 1.15 * line as f32)).ceil() as u32;
    (items, height)
}

#[cfg(test)]
mod legend_tests {
    use super::*;

    #[test]
    fn the_app_rule_picks_the_middle_swatch() {
        use LegendKind::*;
        assert_eq!(legend_kinds(GroupStyle::MergeGroups, false), [Kept, Merged, Dropped]);
        assert_eq!(legend_kinds(GroupStyle::KeptDropped, false), [Kept, Dropped]);
        assert_eq!(legend_kinds(GroupStyle::KeptDropped, true), [Kept, Fused, Dropped]);
    }

    #[test]
    fn a_narrow_key_wraps_without_splitting_an_entry() {
        let all = [LegendKind::Kept, LegendKind::Merged, LegendKind::Fused, LegendKind::Dropped];
        let (wide, h1) = legend_key_items(&all, (10.0, 5.0), 14.0, 1000.0, [255; 3], 512);
        let (narrow, h2) = legend_key_items(&all, (10.0, 5.0), 14.0, 90.0, [255; 3], 512);
        assert_eq!(wide.len(), 8);
        assert_eq!(narrow.len(), 8);
        assert!(h2 > h1);
        for item in &narrow {
            if let Item::Text(t) = item {
                assert!(t.left + text::text_width(t.px, &t.text) <= 10.0 + 90.0 + 0.5, "{t:?}");
            }
        }
    }
}

/// Extra px for text laid out `w` px wide with Ubuntu Light metrics, in case an SVG viewer
/// substitutes a wider font (DejaVu Sans runs ~20 % wider).
pub(crate) fn font_slack(w: u32) -> u32 {
    (w as f32 * 0.25).ceil() as u32
}

impl Frame {
    /// `title` in the strip above a body of width `bw` at `body_x`, centred over it but kept
    /// inside a canvas `width` px wide, shortened with "…" to fit.
    pub(crate) fn title_item(&self, title: &str, width: u32, body_x: u32, bw: u32) -> TextItem {
        let (pad, title_px) = (self.pad, self.title_px);
        let avail = width.saturating_sub(2 * pad) as f32;
        // Fitted with room for a wider substitute font, so an SVG's title stays on the canvas too.
        let shown = text::fit_text(title_px, title, avail / 1.25);
        let tw = text::text_width(title_px, &shown);
        // Centred over the body, but far enough in that the title stays on the canvas in a font
        // 25 % wider too (it is drawn anchored at its middle).
        let half = tw * 1.25 / 2.0;
        let (lo, hi) = (pad as f32 + half, (width - pad) as f32 - half);
        let centre = body_x as f32 + bw as f32 / 2.0;
        let centre = if lo <= hi { centre.clamp(lo, hi) } else { width as f32 / 2.0 };
        let x = centre - tw / 2.0;
        TextItem {
            text: shown,
            left: x.round(),
            top: pad as f32,
            px: title_px,
            rgb: INK,
            anchor: Anchor::Middle,
            class: "title",
        }
    }
}

impl ColorBar {
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
            let t = self.norm.unit(*value, self.lo, self.hi);
            let ty = (y as f32 + (1.0 - t) * (bh - 1) as f32).round() as u32;
            ticks.push(ty);
            // Vertically centre the digits on the tick.
            let top = (ty as f32 + digit_h / 2.0 - ascent).round();
            let lx = (x + bw + self.tick_len + self.tick_gap) as f32;
            labels.push(label(text.clone(), lx, top, self.label_px, INK, "tick"));
        }
        // Under the bar, its right end at the tick labels' (a long name reaches left, under the
        // body, instead of widening the column).
        // Clear of the bottom tick's label, centred on the bar's end.
        let norm_top = (y + self.height) as f32 + self.label_px * 0.6;
        let right = (x + self.width()) as f32;
        let norm_left = right - text::text_width(self.label_px, &self.norm_name);
        let mut norm =
            label(self.norm_name.clone(), norm_left.round(), norm_top.round(), self.label_px, MUTED_INK, "norm");
        norm.anchor = Anchor::End;
        labels.push(norm);
        let rect = Rect { x0: x.into(), y0: y.into(), x1: i64::from(x + bw), y1: i64::from(y + bh) };
        ColorBarItem { rect, colormap, frame_rgb: FRAME, ticks, tick_len: self.tick_len, labels }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_where_nearest_sampling_changes_cell() {
        // Odd sizes and a letterbox, so edges fall between pixel centres unevenly.
        for (photo, body, place) in [
            ((451, 300), (257, 171), Placement::letterbox(451, 300)),
            ((101, 101), (257, 257), Placement::full(101, 101)),
            ((451, 300), (512, 341), Placement::center_crop(451, 300, 224.0 / 256.0)),
        ] {
            let g = CellGrid::new(photo, body, &place, 16, 16).unwrap();
            for i in -3..i64::from(body.0) + 3 {
                let c = g.x.coord(i);
                let by_edges = (0..16).find(|&k| g.xs[k] <= i && i < g.xs[k + 1]);
                let by_coord = (0.0..16.0).contains(&c).then_some(c as usize);
                assert_eq!(by_edges, by_coord, "pixel {i} at {c}");
            }
        }
        let flat = Placement { x0: 3.0, y0: 3.0, x1: 3.0, y1: 9.0 };
        assert!(CellGrid::new((30, 20), (30, 20), &flat, 2, 2).is_none());
        assert!(CellGrid::new((0, 0), (1, 1), &Placement::full(0, 0), 2, 2).is_none());
    }
}

/// The PNG and the SVG of one figure agree on geometry: every SVG cell, group run, dropped run,
/// outline and colour bar marks exactly the PNG pixels it says it covers.
#[cfg(test)]
mod agreement {
    use super::*;
    use crate::render::{raster, svg};
    use image::Rgb;

    /// The panels' translate offsets and every element of `class` inside them, with its offset.
    fn in_panels<'a>(doc: &'a roxmltree::Document, class: &str) -> Vec<((i64, i64), roxmltree::Node<'a, 'a>)> {
        let mut out = Vec::new();
        for panel in doc.descendants().filter(|n| n.attribute("class") == Some("panel")) {
            let t = panel.attribute("transform").unwrap();
            let (x, y) = t.trim_start_matches("translate(").trim_end_matches(')').split_once(',').unwrap();
            let off = (x.parse().unwrap(), y.parse().unwrap());
            out.extend(panel.descendants().filter(|n| n.attribute("class") == Some(class)).map(|n| (off, n)));
        }
        out
    }

    fn int(n: &roxmltree::Node, a: &str) -> i64 {
        n.attribute(a).unwrap().parse().unwrap()
    }

    /// Rectangles of a path made of "M x,y H x1 V y1 H x0 z" pieces.
    fn path_rects(d: &str) -> Vec<Rect> {
        let nums: Vec<i64> = d
            .split(|c: char| !(c.is_ascii_digit() || c == '-'))
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        nums.chunks(5).map(|c| Rect { x0: c[0], y0: c[1], x1: c[2], y1: c[3] }).collect()
    }

    fn colour(hex: &str) -> [u8; 3] {
        let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap();
        [(v >> 16) as u8, (v >> 8) as u8, v as u8]
    }

    #[test]
    fn heat_cells_mark_the_same_pixels() {
        // An odd-sized, letterboxed photo in a colour the colormap never gives, opaque cells.
        let photo = RgbImage::from_pixel(90, 61, Rgb([255, 0, 0]));
        let heat = Heatmap::new(5, 7, (0..35).map(|i| (i as f32 * 0.7).sin()).collect());
        let look = HeatLook {
            norm: Norm::MinMax,
            colormap: Colormap::Viridis,
            opacity: 1.0,
            smooth: false,
            grid_lines: false,
        };
        let panel = Panel {
            photo: &photo,
            place: Placement::letterbox(90, 61),
            content: PanelContent::Heat { heat: &heat, look },
            title: Some("agreement".into()),
        };
        let scene = panel_scene(&panel, 131, true, OUTLINE_RGB);
        let png = raster::draw(&scene);
        let text = svg::draw(&scene);
        let doc = roxmltree::Document::parse(&text).unwrap();
        assert_eq!(
            (int(&doc.root_element(), "width"), int(&doc.root_element(), "height")),
            (png.width().into(), png.height().into())
        );

        let Item::Panel(body) = &scene.items[0] else { panic!("the panel comes first") };
        let (bw, bh) = body.photo.dimensions();
        // Which SVG cell covers each body pixel, clipped to the photo as the clip path does.
        let mut covered = vec![None; (bw * bh) as usize];
        let cells = in_panels(&doc, "cell");
        assert_eq!(cells.len(), 35, "rows 0 and 4 lie partly on the photo");
        for ((ox, oy), cell) in &cells {
            assert_eq!((*ox, *oy), (i64::from(body.x), i64::from(body.y)));
            let (x, y) = (int(cell, "x"), int(cell, "y"));
            let rect = Rect { x0: x, y0: y, x1: x + int(cell, "width"), y1: y + int(cell, "height") };
            let (xr, yr) = rect.clip(bw, bh).unwrap();
            for py in yr {
                for px in xr.clone() {
                    let slot = &mut covered[(py * bw + px) as usize];
                    assert!(slot.is_none(), "cells overlap at {px},{py}");
                    *slot = Some(colour(cell.attribute("fill").unwrap()));
                }
            }
        }
        for py in 0..bh {
            for px in 0..bw {
                let want = covered[(py * bw + px) as usize].unwrap_or([255, 0, 0]);
                assert_eq!(png.get_pixel(body.x + px, body.y + py).0, want, "body pixel {px},{py}");
            }
        }

        // The colour bar's frame is where the SVG draws it.
        let bar = doc.descendants().find(|n| n.attribute("class") == Some("colorbar")).unwrap();
        let frame = bar.children().find(|n| n.attribute("fill") == Some("none")).unwrap();
        let fx: f64 = frame.attribute("x").unwrap().parse().unwrap();
        let fy: f64 = frame.attribute("y").unwrap().parse().unwrap();
        let fw: f64 = frame.attribute("width").unwrap().parse().unwrap();
        let fh: f64 = frame.attribute("height").unwrap().parse().unwrap();
        let (x0, y0) = ((fx - 0.5) as u32, (fy - 0.5) as u32);
        let (x1, y1) = (x0 + fw as u32, y0 + fh as u32);
        for (x, y) in [(x0, y0), (x1, y0), (x0, y1), (x1, y1), ((x0 + x1) / 2, y0), (x0, (y0 + y1) / 2)] {
            assert_eq!(png.get_pixel(x, y).0, crate::render::heat::FRAME, "{x},{y}");
        }
        assert_ne!(png.get_pixel(x0 + 1, y0 + 1).0, crate::render::heat::FRAME, "the frame is 1 px");
    }

    #[test]
    fn token_runs_and_outlines_mark_the_same_pixels() {
        let photo = RgbImage::from_fn(77, 50, |x, y| Rgb([(x * 3) as u8, (y * 5) as u8, 90]));
        // 4 x 6 grid: a merged pair, a merged L-shape, singletons, the rest dropped.
        let groups = TokenGroups::from_groups(4, 6, &[vec![0, 1], vec![8, 14, 15], vec![3], vec![22]]).unwrap();
        for (style, body_px) in [(GroupStyle::MergeGroups, 203), (GroupStyle::KeptDropped, 1100)] {
            let panel = Panel {
                photo: &photo,
                place: Placement::center_crop(77, 50, 0.9),
                content: PanelContent::Tokens { groups: &groups, style, opacity: 1.0 },
                title: None,
            };
            let scene = panel_scene(&panel, body_px, true, OUTLINE_RGB);
            let png = raster::draw(&scene);
            let doc_text = svg::draw(&scene);
            let doc = roxmltree::Document::parse(&doc_text).unwrap();
            let Item::Panel(body) = &scene.items[0] else { panic!("the panel comes first") };
            let (bw, bh) = body.photo.dimensions();
            let at = |x: i64, y: i64| png.get_pixel(body.x + x as u32, body.y + y as u32).0;

            // Outlines: the stroke (2 * reach wide, centred) is exactly the white band.
            let outline = in_panels(&doc, "outline");
            let stroke = int(&outline[0].1, "stroke-width");
            let d = outline[0].1.attribute("d").unwrap();
            let nums: Vec<i64> =
                d.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
            let mut white = vec![false; (bw * bh) as usize];
            let mut k = 0;
            for piece in d.split('M').filter(|p| !p.trim().is_empty()) {
                let (x0, y0, to) = (nums[k], nums[k + 1], nums[k + 2]);
                k += 3;
                let band = if piece.contains('V') {
                    Rect { x0: x0 - stroke / 2, x1: x0 + stroke / 2, y0, y1: to }
                } else {
                    Rect { x0, x1: to, y0: y0 - stroke / 2, y1: y0 + stroke / 2 }
                };
                let (xr, yr) = band.clip(bw, bh).expect("outlines lie inside the photo");
                for y in yr {
                    for x in xr.clone() {
                        white[(y * bw + x) as usize] = true;
                    }
                }
            }
            // Groups: away from the outline, a merged run is its fill colour and a kept one the photo.
            for (_, g) in in_panels(&doc, "group") {
                for rect in path_rects(g.attribute("d").unwrap()) {
                    let Some((xr, yr)) = rect.clip(bw, bh) else { continue };
                    for y in yr {
                        for x in xr.clone() {
                            let p = at(x.into(), y.into());
                            if white[(y * bw + x) as usize] {
                                assert_eq!(p, OUTLINE_RGB, "{style:?} outline at {x},{y}");
                            } else if g.attribute("data-kind") == Some("kept") {
                                assert_eq!(p, body.photo.get_pixel(x, y).0, "{style:?} kept at {x},{y}");
                            } else if g.attribute("data-kind") == Some("merged") {
                                assert_eq!(p, colour(g.attribute("fill").unwrap()), "{style:?} merged at {x},{y}");
                            }
                        }
                    }
                }
            }
            // Dropped runs: the photo faded, wherever not outlined.
            let dropped = in_panels(&doc, "dropped");
            for rect in path_rects(dropped[0].1.attribute("d").unwrap()) {
                let Some((xr, yr)) = rect.clip(bw, bh) else { continue };
                for y in yr {
                    for x in xr.clone() {
                        if !white[(y * bw + x) as usize] {
                            let mut want = body.photo.get_pixel(x, y).0;
                            crate::render::heat::mix(&mut want, FADE_RGB, FADE);
                            assert_eq!(at(x.into(), y.into()), want, "{style:?} dropped at {x},{y}");
                        }
                    }
                }
            }
            // And nothing else is white inside the body.
            for y in 0..bh {
                for x in 0..bw {
                    if !white[(y * bw + x) as usize] && at(x.into(), y.into()) == OUTLINE_RGB {
                        panic!("{style:?}: white at {x},{y} off the SVG's outline");
                    }
                }
            }
        }
    }
}
