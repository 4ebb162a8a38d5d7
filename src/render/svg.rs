//! Figures as real vector graphics (SVG), looking like their PNG twins.
//!
//! The photo is embedded once as a PNG data URI (scaled exactly as the PNG
//! figures scale it); everything drawn over it is vector: one `<rect>` per
//! heatmap cell, one `<path>` per token group, one `<path>` for all group
//! outlines, a vector colour bar and `<text>` labels. Layout (margins, text
//! sizes, colour-bar ticks) comes from the same code as [`super::overlay()`]
//! and [`super::tokens_overlay`], so an SVG and a PNG of the same figure line up.
//!
//! Elements carry classes for tooling and tests: `cell` (with `data-patch`),
//! `group` (with `data-group`), `dropped`, `outline`, `colorbar`, `title`, `legend`.
//! Output is deterministic: attributes are written sorted, numbers with at
//! most two decimals, ids are derived from the figure's structure.

use std::collections::BTreeMap;

use base64::Engine as _;
use image::RgbImage;
use svg::Document;
use svg::Node;
use svg::node::element::path::Data;
use svg::node::element::{ClipPath, Definitions, Element, Group, Image, Path, Pattern, Rectangle};

use super::colormap::Colormap;
use super::overlay::{BACKGROUND, ColorBar, FRAME, Frame, Heatmap, INK, MUTED_INK, Norm, Placement, scale_photo};
use super::text;
use super::tokens::{
    FADE, FADE_RGB, GroupStyle, HATCH_ALPHA, HATCH_PERIOD, HATCH_WIDTH, TokenGroups, group_means, group_sizes,
    legend_lines, pixel_labels, reach_scale,
};

/// What one panel draws over the photo.
#[derive(Debug, Clone)]
pub enum PanelContent<'a> {
    /// A heatmap, one flat-coloured cell per grid cell (NaN cells left out).
    Heat { heat: &'a Heatmap, norm: Norm, colormap: Colormap, opacity: f32 },
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

/// Font stack of every `<text>`: the PNGs' font (Ubuntu) first.
pub(crate) const FONT_FAMILY: &str = "Ubuntu, DejaVu Sans, sans-serif";
/// Stripes of a vector colour bar.
const BAR_STRIPES: usize = 128;
const OUTLINE_RGB: [u8; 3] = [255, 255, 255];

/// A single panel as a standalone SVG document, laid out like the PNG figures:
/// title strip above (if the panel has a title), the photo (`body_px` on its
/// longest side) with its content, and with `colorbar` a vector colour bar on
/// the right (heat panels) or the kept/merged/dropped legend under the photo
/// (token panels).
pub fn panel_svg(panel: &Panel, body_px: u32, colorbar: bool) -> String {
    let body_px = body_px.max(1);
    let scaled = scale_photo(panel.photo, body_px);
    let (bw, bh) = scaled.dimensions();
    let frame = Frame::new(body_px, panel.title.is_some());
    let (label_px, pad) = (frame.label_px, frame.pad);
    let (body_x, body_y) = (pad, pad + frame.title_h);

    let bar = match (&panel.content, colorbar) {
        (PanelContent::Heat { heat, norm, .. }, true) => {
            let (lo, hi) = norm.resolve(heat);
            Some(ColorBar::layout(lo, hi, norm.name(), label_px, bh))
        }
        _ => None,
    };
    let legend = match (&panel.content, colorbar) {
        (PanelContent::Tokens { groups, style, .. }, true) => Some(legend_lines(&groups.stats(), *style)),
        _ => None,
    };
    let legend_gap = (label_px * 0.5).round() as u32;
    let legend_h = if legend.is_some() { legend_gap + text::line_height(label_px).ceil() as u32 } else { 0 };
    // Room for a substitute font wider than Ubuntu Light (e.g. DejaVu Sans) past the tick labels.
    let right_w = bar.as_ref().map_or(0, |b| pad + b.width() + font_slack(b.label_w));
    let width = body_x + bw + right_w + pad;
    let height = body_y + bh + legend_h + pad;

    let clip_id = "body-clip";
    let defs = Definitions::new().add(clip_path(clip_id, bw, bh));
    let mut doc = document(width, height).add(defs);
    let photo = photo_image(&scaled).set("class", "photo");
    let body = panel_group(panel, &scaled, body_px, photo, clip_id).set("transform", translate(body_x, body_y));
    doc = doc.add(body);
    if let Some(title) = &panel.title {
        doc = doc.add(title_text(&frame, title, width, body_x, bw));
    }
    if let (Some(bar), PanelContent::Heat { colormap, .. }) = (&bar, &panel.content) {
        doc = doc.add(colorbar_group(bar, *colormap).set("transform", translate(body_x + bw + pad, body_y)));
    }
    if let Some(lines) = legend {
        let avail = (width - 2 * pad) as f32;
        let shown = lines
            .iter()
            .find(|l| text::text_width(label_px, l) <= avail)
            .cloned()
            .unwrap_or_else(|| text::fit_text(label_px, &lines[lines.len() - 1], avail));
        let top = (body_y + bh + legend_gap) as f32;
        doc = doc.add(label(&shown, body_x as f32, top, label_px, MUTED_INK, "legend", None));
    }
    doc.to_string()
}

/// An empty document `width` x `height` px with a white background.
pub(crate) fn document(width: u32, height: u32) -> Document {
    Document::new()
        .set("xmlns:xlink", "http://www.w3.org/1999/xlink")
        .set("width", width)
        .set("height", height)
        .set("viewBox", (0, 0, width, height))
        .add(Rectangle::new().set("width", width).set("height", height).set("fill", hex(BACKGROUND)))
}

/// A panel's elements in body coordinates (photo at the origin, `scaled` px):
/// `photo` (an `<image>` or a `<use>` of one), then the content clipped to the
/// photo by the `<clipPath>` `clip_id` (a rect at the origin of the photo's size).
pub(crate) fn panel_group(
    panel: &Panel,
    scaled: &RgbImage,
    body_px: u32,
    photo: impl Into<Box<dyn Node>>,
    clip_id: &str,
) -> Group {
    let geom = Geometry::new(panel.photo, scaled, &panel.place);
    let content = match &panel.content {
        PanelContent::Heat { heat, norm, colormap, opacity } => {
            heat_group(heat, *norm, *colormap, *opacity, geom.as_ref()).set("class", "heat")
        }
        PanelContent::Tokens { groups, style, opacity } => {
            tokens_group(panel, groups, *style, *opacity, scaled, body_px, geom.as_ref()).set("class", "tokens")
        }
    };
    Group::new().set("class", "panel").add(photo).add(content.set("clip-path", format!("url(#{clip_id})")))
}

/// A `<clipPath>` with one rect at the origin.
pub(crate) fn clip_path(id: &str, w: u32, h: u32) -> ClipPath {
    ClipPath::new().set("id", id).add(Rectangle::new().set("width", w).set("height", h))
}

/// The (already scaled) photo as an `<image>` at the origin, embedded as a PNG data URI.
pub(crate) fn photo_image(scaled: &RgbImage) -> Image {
    let image =
        Image::new().set("width", scaled.width()).set("height", scaled.height()).set("preserveAspectRatio", "none");
    // An empty photo has no PNG encoding; the <image> is then left without data.
    if scaled.width() == 0 || scaled.height() == 0 { image } else { image.set("xlink:href", png_data_uri(scaled)) }
}

fn rgba_data_uri(img: &image::RgbaImage) -> String {
    let mut bytes = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new(&mut bytes);
    image::ImageEncoder::write_image(encoder, img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgba8)
        .expect("PNG encoding of an RGBA buffer");
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&bytes))
}

fn png_data_uri(img: &RgbImage) -> String {
    let mut bytes = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new(&mut bytes);
    // Encoding an in-memory RGB8 buffer of consistent size cannot fail.
    image::ImageEncoder::write_image(encoder, img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .expect("PNG encoding of an RGB buffer");
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&bytes))
}

/// Cell edges of the grid in body px: `xs[c]` is the left edge of column `c`
/// (`cols + 1` values), `ys[r]` the top of row `r`.
struct Edges {
    xs: Vec<f64>,
    ys: Vec<f64>,
    /// Body size in px, for clipping decisions.
    w: f64,
    h: f64,
}

/// The photo → body scale and the placement, or `None` when nothing can be drawn.
struct Geometry {
    sx: f64,
    sy: f64,
    place: Placement,
    w: f64,
    h: f64,
}

impl Geometry {
    fn new(photo: &RgbImage, scaled: &RgbImage, place: &Placement) -> Option<Self> {
        let (pw, ph) = photo.dimensions();
        let (w, h) = scaled.dimensions();
        let finite = [place.x0, place.y0, place.x1, place.y1].iter().all(|v| v.is_finite());
        if pw == 0 || ph == 0 || !finite || place.x1 <= place.x0 || place.y1 <= place.y0 {
            return None;
        }
        let sx = f64::from(w) / f64::from(pw);
        let sy = f64::from(h) / f64::from(ph);
        Some(Geometry { sx, sy, place: *place, w: f64::from(w), h: f64::from(h) })
    }

    fn edges(&self, rows: usize, cols: usize) -> Option<Edges> {
        if rows == 0 || cols == 0 {
            return None;
        }
        let p = &self.place;
        // Each edge snapped to where the PNG's cells change: the first pixel
        // whose centre lies past it. That keeps SVG and PNG cells identical and
        // leaves no anti-aliasing seams between neighbouring cells.
        let axis = |a0: f32, a1: f32, n: usize, s: f64| -> Vec<f64> {
            let (a0, a1) = (f64::from(a0), f64::from(a1));
            (0..=n).map(|i| ((a0 + (a1 - a0) * i as f64 / n as f64) * s - 0.5).ceil()).collect()
        };
        Some(Edges { xs: axis(p.x0, p.x1, cols, self.sx), ys: axis(p.y0, p.y1, rows, self.sy), w: self.w, h: self.h })
    }
}

/// Maps with more cells than this (pixel-resolution outputs such as a 224 x 224 saliency map)
/// are drawn as one image layer: as vectors they would be tens of thousands of elements.
pub const MAX_VECTOR_CELLS: usize = 4096;

/// One `<rect class="cell">` per finite cell that touches the photo; for a pixel-resolution
/// map, one semi-transparent `<image class="heat-layer">` over the photo instead.
fn heat_group(heat: &Heatmap, norm: Norm, colormap: Colormap, opacity: f32, geom: Option<&Geometry>) -> Group {
    // crispEdges: neighbouring cells share edges without anti-aliasing seams, as in the PNG.
    let mut g = Group::new().set("shape-rendering", "crispEdges");
    let Some(e) = geom.and_then(|geom| geom.edges(heat.rows, heat.cols)) else {
        return g;
    };
    let alpha = if opacity.is_nan() { 0.0 } else { opacity.clamp(0.0, 1.0) };
    let (lo, hi) = norm.resolve(heat);
    if heat.rows * heat.cols > MAX_VECTOR_CELLS {
        let layer = image::RgbaImage::from_fn(heat.cols as u32, heat.rows as u32, |c, r| {
            let v = heat.get(r as usize, c as usize);
            if !v.is_finite() {
                return image::Rgba([0, 0, 0, 0]);
            }
            let [red, green, blue] = colormap.rgb(norm.unit(v, lo, hi));
            image::Rgba([red, green, blue, (alpha * 255.0).round() as u8])
        });
        let (x0, y0) = (e.xs[0], e.ys[0]);
        let (x1, y1) = (e.xs[heat.cols], e.ys[heat.rows]);
        return Group::new().add(
            Image::new()
                .set("class", "heat-layer")
                .set("x", num(x0))
                .set("y", num(y0))
                .set("width", num(x1 - x0))
                .set("height", num(y1 - y0))
                .set("preserveAspectRatio", "none")
                .set("xlink:href", rgba_data_uri(&layer)),
        );
    }
    for r in 0..heat.rows {
        let (y0, y1) = (e.ys[r], e.ys[r + 1]);
        if y1 <= 0.0 || y0 >= e.h {
            continue;
        }
        for c in 0..heat.cols {
            let (x0, x1) = (e.xs[c], e.xs[c + 1]);
            let v = heat.get(r, c);
            if !v.is_finite() || x1 <= 0.0 || x0 >= e.w {
                continue;
            }
            let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
            g = g.add(
                Rectangle::new()
                    .set("class", "cell")
                    .set("data-patch", r * heat.cols + c)
                    .set("x", num(x0))
                    .set("y", num(y0))
                    .set("width", num(x1 - x0))
                    .set("height", num(y1 - y0))
                    .set("fill", hex(colormap.rgb(t)))
                    .set("fill-opacity", num(f64::from(alpha))),
            );
        }
    }
    g
}

/// Group fills (`class="group"`), the dropped patches (`class="dropped"`) and
/// all group boundaries as one stroked path (`class="outline"`).
fn tokens_group(
    panel: &Panel,
    groups: &TokenGroups,
    style: GroupStyle,
    opacity: f32,
    scaled: &RgbImage,
    body_px: u32,
    geom: Option<&Geometry>,
) -> Group {
    let mut g = Group::new();
    let Some(e) = geom.and_then(|geom| geom.edges(groups.rows, groups.cols)) else {
        return g;
    };
    let (rows, cols) = (groups.rows, groups.cols);
    // Label per cell, with the off-grid ring handled by `label`.
    let label = |r: isize, c: isize| -> Label {
        if r < 0 || c < 0 || r as usize >= rows || c as usize >= cols {
            Label::OffGrid
        } else {
            groups.group(r as usize, c as usize).map_or(Label::Dropped, Label::Group)
        }
    };

    // Fills: horizontal runs of one label per row, one sub-path each.
    let mut fills: BTreeMap<u32, Data> = BTreeMap::new();
    let mut dropped = Data::new();
    let mut any_dropped = false;
    for r in 0..rows {
        let mut c0 = 0;
        while c0 < cols {
            let l = label(r as isize, c0 as isize);
            let mut c1 = c0 + 1;
            while c1 < cols && label(r as isize, c1 as isize) == l {
                c1 += 1;
            }
            let rect = |d: Data| rect_subpath(d, e.xs[c0], e.ys[r], e.xs[c1], e.ys[r + 1]);
            match l {
                Label::Group(id) => {
                    let d = fills.remove(&id).unwrap_or_default();
                    fills.insert(id, rect(d));
                }
                Label::Dropped => {
                    dropped = rect(dropped);
                    any_dropped = true;
                }
                Label::OffGrid => {}
            }
            c0 = c1;
        }
    }

    // As the PNG: kept singletons show the photo (no fill), merged groups their mean colour at
    // `opacity`, fused groups (pruning style) the same plus a hatch pattern.
    let means = pixel_labels(panel.photo, groups, &panel.place, scaled.dimensions())
        .map(|labels| group_means(scaled, &labels))
        .unwrap_or_default();
    let sizes = group_sizes(groups);
    let alpha = if opacity.is_nan() { 0.0 } else { opacity.clamp(0.0, 1.0) };
    let fused = style == GroupStyle::KeptDropped;
    let mut any_fused = false;
    for (id, d) in fills {
        let many = sizes.get(&i64::from(id)).is_some_and(|&n| n > 1);
        let fill = match means.get(&i64::from(id)) {
            Some(&c) if many => hex(c),
            _ => "none".to_owned(),
        };
        let kind = match (many, fused) {
            (false, _) => "kept",
            (true, false) => "merged",
            (true, true) => "fused",
        };
        let path = Path::new().set("class", "group").set("data-group", id).set("data-kind", kind).set("fill", fill);
        let path = if many { path.set("fill-opacity", num(f64::from(alpha))) } else { path };
        g = g.add(path.set("d", d.clone()));
        if many && fused {
            any_fused = true;
            g = g.add(Path::new().set("class", "hatch").set("fill", "url(#tokens-hatch)").set("d", d));
        }
    }
    if any_fused {
        let period = (HATCH_PERIOD * reach_scale(body_px)) as f64;
        let width = (HATCH_WIDTH * reach_scale(body_px)) as f64;
        let stripe = Rectangle::new()
            .set("width", num(width))
            .set("height", num(period))
            .set("fill", "#ffffff")
            .set("fill-opacity", num(f64::from(HATCH_ALPHA)));
        let pattern = Pattern::new()
            .set("id", "tokens-hatch")
            .set("patternUnits", "userSpaceOnUse")
            .set("width", num(period))
            .set("height", num(period))
            .set("patternTransform", "rotate(-45)")
            .add(stripe);
        g = g.add(pattern);
    }
    if any_dropped {
        g = g.add(
            Path::new()
                .set("class", "dropped")
                .set("fill", hex(FADE_RGB))
                .set("fill-opacity", num(f64::from(FADE)))
                .set("d", dropped),
        );
    }

    // Outlines: cell edges whose two sides differ, unless neither side is a
    // token. The grid's outer edge counts only strictly inside the photo (the
    // PNG doesn't outline the photo's border). Collinear pieces are joined.
    let boundary = |a: Label, b: Label| a != b && (matches!(a, Label::Group(_)) || matches!(b, Label::Group(_)));
    let inside = |v: f64, max: f64| v > 0.01 && v < max - 0.01;
    let mut outline = Data::new();
    let mut any_outline = false;
    // Vertical edges: x = xs[c], between columns c-1 and c.
    for c in 0..=cols {
        let outer = c == 0 || c == cols;
        if outer && !inside(e.xs[c], e.w) {
            continue;
        }
        let on = |r: usize| boundary(label(r as isize, c as isize - 1), label(r as isize, c as isize));
        for (r0, r1) in runs(rows, on) {
            outline = outline.move_to((r2(e.xs[c]), r2(e.ys[r0]))).vertical_line_to(r2(e.ys[r1]));
            any_outline = true;
        }
    }
    // Horizontal edges: y = ys[r], between rows r-1 and r.
    for r in 0..=rows {
        let outer = r == 0 || r == rows;
        if outer && !inside(e.ys[r], e.h) {
            continue;
        }
        let on = |c: usize| boundary(label(r as isize - 1, c as isize), label(r as isize, c as isize));
        for (c0, c1) in runs(cols, on) {
            outline = outline.move_to((r2(e.xs[c0]), r2(e.ys[r]))).horizontal_line_to(r2(e.xs[c1]));
            any_outline = true;
        }
    }
    if any_outline {
        // The PNG marks `reach` px on both sides of a boundary.
        let reach = (body_px as f32 / 512.0).round().max(1.0);
        g = g.add(
            Path::new()
                .set("class", "outline")
                .set("fill", "none")
                .set("stroke", hex(OUTLINE_RGB))
                .set("stroke-width", num(f64::from(2.0 * reach)))
                .set("stroke-linecap", "square")
                .set("d", outline),
        );
    }
    g
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    OffGrid,
    Dropped,
    Group(u32),
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

fn rect_subpath(d: Data, x0: f64, y0: f64, x1: f64, y1: f64) -> Data {
    d.move_to((r2(x0), r2(y0))).horizontal_line_to(r2(x1)).vertical_line_to(r2(y1)).horizontal_line_to(r2(x0)).close()
}

/// A vector colour bar at the origin, laid out as the PNG's (`bar` from
/// [`ColorBar::layout`]): stripes, frame, ticks, tick labels, norm name.
pub(crate) fn colorbar_group(bar: &ColorBar, cmap: Colormap) -> Group {
    let (bw, bh) = (f64::from(bar.bar_w), f64::from(bar.bar_h));
    let mut stripes = Group::new().set("class", "stripes").set("shape-rendering", "crispEdges");
    for i in 0..BAR_STRIPES {
        // Top is hi; each stripe shows the colour of its centre.
        let t = 1.0 - (i as f32 + 0.5) / BAR_STRIPES as f32;
        let y0 = bh * i as f64 / BAR_STRIPES as f64;
        let y1 = bh * (i + 1) as f64 / BAR_STRIPES as f64;
        stripes = stripes.add(
            Rectangle::new()
                .set("y", num(y0))
                .set("width", num(bw))
                .set("height", num(y1 - y0))
                .set("fill", hex(cmap.rgb(t))),
        );
    }
    let frame = Rectangle::new()
        .set("x", 0.5)
        .set("y", 0.5)
        .set("width", num((bw - 1.0).max(0.0)))
        .set("height", num((bh - 1.0).max(0.0)))
        .set("fill", "none")
        .set("stroke", hex(FRAME))
        .set("stroke-width", 1);
    let mut g = Group::new().set("class", "colorbar").add(stripes).add(frame);

    let digit_h = text::digit_height(bar.label_px);
    let ascent = text::ascent(bar.label_px);
    let mut ticks = Data::new();
    let mut labels = Vec::new();
    for (value, text) in &bar.ticks {
        let t = f64::from((value - bar.lo) / (bar.hi - bar.lo));
        let ty = ((1.0 - t) * (bh - 1.0)).round();
        ticks = ticks.move_to((r2(bw), r2(ty + 0.5))).horizontal_line_by(bar.tick_len);
        // Digits vertically centred on the tick, as in the PNG (whose line top is rounded).
        let top = (ty as f32 + digit_h / 2.0 - ascent).round();
        let lx = (bar.bar_w + bar.tick_len + bar.tick_gap) as f32;
        labels.push(label(text, lx, top, bar.label_px, INK, "tick", None));
    }
    g = g.add(Path::new().set("class", "ticks").set("fill", "none").set("stroke", hex(FRAME)).set("d", ticks));
    for l in labels {
        g = g.add(l);
    }
    let norm_px = bar.label_px * 0.9;
    let norm_top = (bar.height as f32 - text::line_height(norm_px)).round();
    g.add(label(&bar.norm_name, 0.0, norm_top, norm_px, MUTED_INK, "norm", None))
}

/// `s` as a `<text class=…>` whose line box top-left is (`x`, `top`), like
/// [`text::draw_text`]; `anchor` "middle"/"end" makes `x` its centre/right end.
///
/// A plain `Element` rather than `element::Text`: the latter is printed with
/// newlines around its content, which some renderers show as spaces.
pub(crate) fn label(s: &str, x: f32, top: f32, px: f32, rgb: [u8; 3], class: &str, anchor: Option<&str>) -> Element {
    let mut t = Element::new("text");
    t.assign("class", class);
    t.assign("x", num(f64::from(x)));
    t.assign("y", num(f64::from(top + text::ascent(px))));
    t.assign("font-family", FONT_FAMILY);
    t.assign("font-size", num(f64::from(px)));
    t.assign("fill", hex(rgb));
    if let Some(anchor) = anchor {
        t.assign("text-anchor", anchor);
    }
    t.append(svg::node::Text::new(s));
    t
}

/// The title placed as [`Frame::draw_title`] places it (centred over the body,
/// kept inside the canvas, shortened with "…"), anchored at its middle so a
/// substitute font stays centred.
pub(crate) fn title_text(frame: &Frame, title: &str, width: u32, body_x: u32, bw: u32) -> Element {
    let (pad, title_px) = (frame.pad, frame.title_px);
    let avail = width.saturating_sub(2 * pad) as f32;
    let shown = text::fit_text(title_px, title, avail);
    let tw = text::text_width(title_px, &shown);
    let x = (body_x as f32 + (bw as f32 - tw) / 2.0).clamp(pad as f32, ((width - pad) as f32 - tw).max(pad as f32));
    label(&shown, x.round() + tw / 2.0, pad as f32, title_px, INK, "title", Some("middle"))
}

/// Extra px for text laid out `w` px wide with Ubuntu Light metrics, in case
/// the viewer substitutes a wider font (DejaVu Sans runs ~20 % wider).
pub(crate) fn font_slack(w: u32) -> u32 {
    (w as f32 * 0.25).ceil() as u32
}

pub(crate) fn translate(x: u32, y: u32) -> String {
    format!("translate({x},{y})")
}

pub(crate) fn hex([r, g, b]: [u8; 3]) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// At most two decimals, no trailing zeros, no "-0".
pub(crate) fn num(v: f64) -> String {
    let s = format!("{:.2}", v);
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
    if s == "-0" { "0".to_owned() } else { s.to_owned() }
}

/// Rounded to two decimals for path data (printed by the `svg` crate as the shortest f32).
fn r2(v: f64) -> f32 {
    ((v * 100.0).round() / 100.0 + 0.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn photo(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, 120]))
    }

    fn with_class<'a>(doc: &'a roxmltree::Document, tag: &str, class: &str) -> Vec<roxmltree::Node<'a, 'a>> {
        doc.descendants().filter(|n| n.has_tag_name(tag) && n.attribute("class") == Some(class)).collect()
    }

    fn heat_panel<'a>(p: &'a RgbImage, heat: &'a Heatmap) -> Panel<'a> {
        Panel {
            photo: p,
            place: Placement::full(p.width(), p.height()),
            content: PanelContent::Heat {
                heat,
                norm: Norm::Range { lo: 0.0, hi: 1.0 },
                colormap: Colormap::Viridis,
                opacity: 0.6,
            },
            title: Some("a <heat> & title".into()),
        }
    }

    #[test]
    fn heat_cells_colours_image_and_colorbar() {
        let p = photo(40, 30);
        let values = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0];
        let heat = Heatmap::new(2, 2, values.to_vec());
        let s = panel_svg(&heat_panel(&p, &heat), 200, true);
        let doc = roxmltree::Document::parse(&s).unwrap();
        let cells = with_class(&doc, "rect", "cell");
        assert_eq!(cells.len(), 4);
        for (cell, v) in cells.iter().zip(values) {
            assert_eq!(cell.attribute("fill"), Some(hex(Colormap::Viridis.rgb(v)).as_str()));
            assert_eq!(cell.attribute("fill-opacity"), Some("0.6"));
        }
        let patches: Vec<&str> = cells.iter().map(|c| c.attribute("data-patch").unwrap()).collect();
        assert_eq!(patches, ["0", "1", "2", "3"]);
        // Cells cover the body: 200 x 150 for a 40 x 30 photo.
        assert_eq!(cells[3].attribute("x"), Some("100"));
        assert_eq!(cells[3].attribute("height"), Some("75"));
        assert_eq!(doc.descendants().filter(|n| n.has_tag_name("image")).count(), 1);
        assert_eq!(s.matches("data:image/png;base64,").count(), 1);
        let bar = with_class(&doc, "g", "colorbar");
        assert_eq!(bar.len(), 1);
        let ticks: Vec<&str> = with_class(&doc, "text", "tick").iter().filter_map(|t| t.text()).collect();
        assert_eq!(ticks.first(), Some(&"0.000"));
        assert_eq!(ticks.last(), Some(&"1.000"));
        let title = with_class(&doc, "text", "title");
        assert_eq!(title[0].text(), Some("a <heat> & title"));
        assert_eq!(title[0].attribute("font-family"), Some(FONT_FAMILY));

        // A NaN cell is left out; without colorbar there is none.
        let heat = Heatmap::new(2, 2, vec![0.0, f32::NAN, 2.0 / 3.0, 1.0]);
        let s = panel_svg(&heat_panel(&p, &heat), 200, false);
        let doc = roxmltree::Document::parse(&s).unwrap();
        let cells = with_class(&doc, "rect", "cell");
        assert_eq!(cells.len(), 3);
        assert!(cells.iter().all(|c| c.attribute("data-patch") != Some("1")));
        assert!(with_class(&doc, "g", "colorbar").is_empty());
    }

    #[test]
    fn heat_cells_are_clipped_to_the_photo() {
        let p = photo(40, 20);
        let heat = Heatmap::new(4, 4, (0..16).map(|i| i as f32).collect());
        let panel = Panel { place: Placement::letterbox(40, 20), title: None, ..heat_panel(&p, &heat) };
        let s = panel_svg(&panel, 80, true);
        let doc = roxmltree::Document::parse(&s).unwrap();
        // Rows 0 and 3 lie in the letterbox padding (y -10..0 and 20..30 in photo px).
        assert_eq!(with_class(&doc, "rect", "cell").len(), 8);
        let clip = doc.descendants().find(|n| n.has_tag_name("clipPath")).unwrap();
        let id = clip.attribute("id").unwrap();
        let heat_g = with_class(&doc, "g", "heat");
        assert_eq!(heat_g[0].attribute("clip-path"), Some(format!("url(#{id})").as_str()));
        let rect = clip.first_element_child().unwrap();
        assert_eq!((rect.attribute("width"), rect.attribute("height")), (Some("80"), Some("40")));
    }

    fn tokens_panel<'a>(p: &'a RgbImage, groups: &'a TokenGroups, style: GroupStyle) -> Panel<'a> {
        Panel {
            photo: p,
            place: Placement::full(p.width(), p.height()),
            content: PanelContent::Tokens { groups, style, opacity: 1.0 },
            title: None,
        }
    }

    #[test]
    fn token_groups_dropped_and_outline() {
        // Left half red, right half blue: group 0 = top row, group 1 = bottom right, patch 2 dropped.
        let p = RgbImage::from_fn(64, 64, |x, _| if x < 32 { Rgb([200, 0, 0]) } else { Rgb([0, 0, 200]) });
        let groups = TokenGroups::from_groups(2, 2, &[vec![0, 1], vec![3]]).unwrap();
        for style in [GroupStyle::MergeGroups, GroupStyle::KeptDropped] {
            let s = panel_svg(&tokens_panel(&p, &groups, style), 64, true);
            let doc = roxmltree::Document::parse(&s).unwrap();
            let paths = with_class(&doc, "path", "group");
            assert_eq!(paths.len(), 2, "{style:?}");
            let ids: Vec<&str> = paths.iter().map(|g| g.attribute("data-group").unwrap()).collect();
            assert_eq!(ids, ["0", "1"]);
            let fills: Vec<&str> = paths.iter().map(|g| g.attribute("fill").unwrap()).collect();
            let kinds: Vec<&str> = paths.iter().map(|g| g.attribute("data-kind").unwrap()).collect();
            // The singleton (a kept patch) shows the photo; the pair is tinted at the opacity,
            // and hatched as a fused token under the pruning style.
            assert_eq!(fills, ["#640064", "none"]);
            assert_eq!(paths[0].attribute("fill-opacity"), Some("1"));
            let hatch = with_class(&doc, "path", "hatch");
            match style {
                GroupStyle::MergeGroups => {
                    assert_eq!(kinds, ["merged", "kept"]);
                    assert!(hatch.is_empty());
                }
                GroupStyle::KeptDropped => {
                    assert_eq!(kinds, ["fused", "kept"]);
                    assert_eq!(hatch.len(), 1);
                    assert_eq!(hatch[0].attribute("d"), paths[0].attribute("d"));
                }
            }
            let dropped = with_class(&doc, "path", "dropped");
            assert_eq!(dropped.len(), 1);
            assert_eq!(dropped[0].attribute("d"), Some("M0,32 H32 V64 H0 z"));
            assert_eq!(dropped[0].attribute("fill"), Some("#202020"));
            let outline = with_class(&doc, "path", "outline");
            assert_eq!(outline.len(), 1);
            // Group 0 / group 1 / dropped meet at y = 32 (full width) and x = 32 (bottom half);
            // nothing on the photo's border.
            assert_eq!(outline[0].attribute("d"), Some("M32,32 V64 M0,32 H64"));
            assert_eq!(outline[0].attribute("stroke"), Some("#ffffff"));
            let legend = with_class(&doc, "text", "legend");
            let word = if style == GroupStyle::MergeGroups { "merg" } else { "fused" };
            assert!(legend[0].text().unwrap().starts_with(&format!("kept 1 · {word}")), "{:?}", legend[0].text());
        }
    }

    #[test]
    fn outer_grid_edge_is_outlined_inside_the_photo_only() {
        let p = photo(100, 100);
        let groups = TokenGroups::from_kept(1, 1, &[0]).unwrap();
        let mut panel = tokens_panel(&p, &groups, GroupStyle::KeptDropped);
        panel.place = Placement { x0: 25.0, y0: 25.0, x1: 75.0, y1: 75.0 };
        let s = panel_svg(&panel, 100, false);
        let doc = roxmltree::Document::parse(&s).unwrap();
        let outline = with_class(&doc, "path", "outline");
        assert_eq!(outline[0].attribute("d"), Some("M25,25 V75 M75,25 V75 M25,25 H75 M25,75 H75"));
        // Covering the photo exactly: no outline at all.
        panel.place = Placement::full(100, 100);
        let s = panel_svg(&panel, 100, false);
        assert!(!s.contains("outline"));
    }

    #[test]
    fn deterministic() {
        let p = photo(451, 300);
        let heat = Heatmap::new(16, 16, (0..256).map(|i| (i as f32 * 0.37).sin()).collect());
        let a = panel_svg(&heat_panel(&p, &heat), 256, true);
        assert_eq!(a, panel_svg(&heat_panel(&p, &heat), 256, true));
        let groups: Vec<Vec<u32>> = (0..128u32).filter(|i| i % 3 != 0).map(|i| vec![2 * i, 2 * i + 1]).collect();
        let groups = TokenGroups::from_groups(16, 16, &groups).unwrap();
        let mut panel = tokens_panel(&p, &groups, GroupStyle::MergeGroups);
        panel.place = Placement::letterbox(451, 300);
        let a = panel_svg(&panel, 256, true);
        assert_eq!(a, panel_svg(&panel, 256, true));
        roxmltree::Document::parse(&a).unwrap();
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let p = photo(30, 20);
        let empty = Heatmap { rows: 0, cols: 0, values: vec![] };
        let flat = Placement { x0: 3.0, y0: 3.0, x1: 3.0, y1: 9.0 };
        let mut panel = heat_panel(&p, &empty);
        panel_svg(&panel, 64, true);
        let nan = Heatmap::new(1, 2, vec![f32::NAN, f32::INFINITY]);
        panel.content = PanelContent::Heat { heat: &nan, norm: Norm::MinMax, colormap: Colormap::Turbo, opacity: 0.5 };
        panel.place = flat;
        panel_svg(&panel, 64, true);
        let short = TokenGroups { rows: 3, cols: 3, group_of_patch: vec![Some(7)] };
        panel_svg(&tokens_panel(&p, &short, GroupStyle::MergeGroups), 64, true);
        let zero = RgbImage::new(0, 0);
        panel_svg(&tokens_panel(&zero, &short, GroupStyle::MergeGroups), 0, true);
    }

    #[test]
    fn numbers_are_stable() {
        assert_eq!(num(12.5), "12.5");
        assert_eq!(num(3.0), "3");
        assert_eq!(num(-0.001), "0");
        assert_eq!(num(1.0 / 3.0), "0.33");
        assert_eq!(r2(-0.001).to_string(), "0");
        assert_eq!(r2(75.5 * 1.13).to_string(), "85.32");
    }
}
