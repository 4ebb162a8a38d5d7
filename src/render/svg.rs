//! The vector back-end: a [`Scene`] as an SVG document, looking like its PNG twin.
//!
//! Each distinct photo is embedded once, as a PNG data URI in `<defs>` (scaled exactly as the
//! PNG scales it), and placed with `<use>`; everything drawn over it is vector: one `<rect>` per
//! heatmap cell, one `<path>` per token group, one `<path>` for all group outlines, a vector
//! colour bar and `<text>` labels. Positions and colours all come from the scene, so an SVG and
//! a PNG of the same figure line up (see `tests` in [`super::scene`]).
//!
//! Elements carry classes for tooling and tests: `panel`, `photo`, `cell` (with `data-patch`),
//! `heat-layer`, `group` (with `data-group`, `data-kind`), `hatch`, `dropped`, `outline`,
//! `colorbar`, `tick`, `norm`, `title`, `legend`, `row-label`, `col-label`, `note` (what a figure
//! leaves out).
//! Output is deterministic: attributes are written sorted, numbers with at most two decimals,
//! ids are derived from the figure's structure.

use base64::Engine as _;
use image::RgbImage;
use svg::Document;
use svg::Node;
use svg::node::element::path::Data;
use svg::node::element::{ClipPath, Definitions, Element, Group, Image, Path, Pattern, Rectangle, Use};

use super::scene::Panel;
use super::scene::{
    self, CellsLayer, ColorBarItem, FieldLayer, Hatch, Item, Layer, PanelScene, Rect, Scene, SwatchItem, TextItem,
    TokenKind, TokensLayer,
};
use super::text;

pub use super::scene::MAX_VECTOR_CELLS;

/// Font stack of every `<text>`: the PNGs' font (Ubuntu) first.
pub(crate) const FONT_FAMILY: &str = "Ubuntu, DejaVu Sans, sans-serif";
/// Stripes of a vector colour bar.
const BAR_STRIPES: usize = 128;

/// A single panel as a standalone SVG document, laid out as the PNG figures are (see
/// [`scene::panel_scene`]): title strip above (if the panel has a title), the photo (`body_px`
/// on its longest side) with its content, and with `key` a colour bar on the right (heat
/// panels) or the kept/merged/dropped legend under the photo (token panels).
pub fn panel_svg(panel: &Panel, body_px: u32, key: bool) -> String {
    draw(&scene::panel_scene(panel, body_px, key, scene::OUTLINE_RGB))
}

/// The whole scene as an SVG document.
pub fn draw(scene: &Scene) -> String {
    let mut defs = Definitions::new();
    // Distinct photos (by content) in order of first use; one clip path per distinct size.
    let mut photos: Vec<&RgbImage> = Vec::new();
    let mut clips: Vec<(u32, u32)> = Vec::new();
    let mut hatches: Vec<Hatch> = Vec::new();
    for item in &scene.items {
        if let Item::Swatch(sw) = item
            && let Some(h) = &sw.hatch
            && !hatches.contains(h)
        {
            defs = defs.add(hatch_pattern(h));
            hatches.push(*h);
        }
        let Item::Panel(p) = item else { continue };
        if !photos.contains(&&p.photo) {
            defs = defs.add(photo_image(&p.photo).set("id", format!("photo{}", photos.len())));
            photos.push(&p.photo);
        }
        if !clips.contains(&p.photo.dimensions()) {
            let (w, h) = p.photo.dimensions();
            defs = defs
                .add(ClipPath::new().set("id", clip_id((w, h))).add(Rectangle::new().set("width", w).set("height", h)));
            clips.push((w, h));
        }
        if let Layer::Tokens(t) = &p.layer
            && t.groups.iter().any(|g| g.kind == TokenKind::Fused)
            && !hatches.contains(&t.hatch)
        {
            defs = defs.add(hatch_pattern(&t.hatch));
            hatches.push(t.hatch);
        }
    }
    let mut doc = document(scene.width, scene.height, scene.background).add(defs);
    for item in &scene.items {
        doc = match item {
            Item::Panel(p) => {
                let i = photos.iter().position(|q| *q == &p.photo).expect("every photo is in defs");
                doc.add(panel_group(p, i))
            }
            Item::Text(t) => doc.add(label(t)),
            Item::ColorBar(b) => doc.add(colorbar_group(b)),
            Item::Swatch(sw) => doc.add(swatch_group(sw)),
            Item::Mark(m) => doc.add(
                Rectangle::new()
                    .set("class", m.class)
                    .set("x", m.rect.x0)
                    .set("y", m.rect.y0)
                    .set("width", m.rect.x1 - m.rect.x0)
                    .set("height", m.rect.y1 - m.rect.y0)
                    .set("fill", hex(m.rgb))
                    .set("shape-rendering", "crispEdges"),
            ),
        };
    }
    doc.to_string()
}

fn clip_id((w, h): (u32, u32)) -> String {
    format!("clip-{w}x{h}")
}

fn hatch_id(h: &Hatch) -> String {
    format!("hatch-{}-{}", h.period, h.width)
}

/// An empty document `width` x `height` px with a background.
fn document(width: u32, height: u32, background: [u8; 3]) -> Document {
    Document::new()
        .set("xmlns:xlink", "http://www.w3.org/1999/xlink")
        .set("width", width)
        .set("height", height)
        .set("viewBox", (0, 0, width, height))
        .add(Rectangle::new().set("width", width).set("height", height).set("fill", hex(background)))
}

/// A panel at its place: the photo (`<use>` of `#photo{photo}`), then the layer clipped to it.
fn panel_group(p: &PanelScene, photo: usize) -> Group {
    let content = match &p.layer {
        Layer::None => Group::new(),
        Layer::Cells(l) => cells_group(l).set("class", "heat"),
        Layer::Field(l) => field_group(l).set("class", "heat"),
        Layer::Tokens(l) => tokens_group(l).set("class", "tokens"),
    };
    let photo = Use::new().set("xlink:href", format!("#photo{photo}")).set("class", "photo");
    let mut g = Group::new()
        .set("class", "panel")
        .set("transform", format!("translate({},{})", p.x, p.y))
        .add(photo)
        .add(content.set("clip-path", format!("url(#{})", clip_id(p.photo.dimensions()))));
    if let Some((r, c)) = p.grid_cell {
        g = g.set("data-row", r).set("data-col", c);
    }
    g
}

/// The (already scaled) photo as an `<image>` at the origin, embedded as a PNG data URI.
fn photo_image(scaled: &RgbImage) -> Image {
    let image =
        Image::new().set("width", scaled.width()).set("height", scaled.height()).set("preserveAspectRatio", "none");
    // An empty photo has no PNG encoding; the <image> is then left without data.
    if scaled.width() == 0 || scaled.height() == 0 {
        image
    } else {
        image.set("xlink:href", data_uri(scaled.as_raw(), scaled.dimensions(), image::ExtendedColorType::Rgb8))
    }
}

fn data_uri(raw: &[u8], (w, h): (u32, u32), colour: image::ExtendedColorType) -> String {
    let mut bytes = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new(&mut bytes);
    // Encoding an in-memory buffer of consistent size cannot fail.
    image::ImageEncoder::write_image(encoder, raw, w, h, colour).expect("PNG encoding of an in-memory buffer");
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&bytes))
}

fn rect_attrs(r: &Rect) -> Rectangle {
    Rectangle::new().set("x", r.x0).set("y", r.y0).set("width", r.x1 - r.x0).set("height", r.y1 - r.y0)
}

/// One `<rect class="cell">` per cell; grid lines as one translucent path.
fn cells_group(l: &CellsLayer) -> Group {
    // crispEdges: neighbouring cells share edges without anti-aliasing seams, as in the PNG.
    let mut g = Group::new().set("shape-rendering", "crispEdges");
    let mut lines = Data::new();
    for cell in &l.cells {
        g = g.add(
            rect_attrs(&cell.rect)
                .set("class", "cell")
                .set("data-patch", cell.patch)
                .set("fill", hex(cell.rgb))
                .set("fill-opacity", num(f64::from(l.alpha))),
        );
        let r = &cell.rect;
        if cell.col > 0 {
            lines = lines.move_to((r.x0 as f32 + 0.5, r.y0 as f32)).vertical_line_to(r.y1 as f32);
        }
        if cell.row > 0 {
            lines = lines.move_to((r.x0 as f32, r.y0 as f32 + 0.5)).horizontal_line_to(r.x1 as f32);
        }
    }
    if let Some((rgb, alpha)) = l.grid_lines {
        g = g.add(
            Path::new()
                .set("class", "grid-lines")
                .set("fill", "none")
                .set("stroke", hex(rgb))
                .set("stroke-opacity", num(f64::from(alpha)))
                .set("d", lines),
        );
    }
    g
}

/// One semi-transparent `<image class="heat-layer">` over the grid's extent, a pixel per cell.
fn field_group(l: &FieldLayer) -> Group {
    let heat = &l.heat;
    let alpha = (l.alpha * 255.0).round() as u8;
    let layer = image::RgbaImage::from_fn(heat.cols as u32, heat.rows as u32, |c, r| {
        match l.colour(heat.get(r as usize, c as usize)) {
            Some([red, green, blue]) => image::Rgba([red, green, blue, alpha]),
            None => image::Rgba([0, 0, 0, 0]),
        }
    });
    let e = l.grid.extent();
    let mut img = Image::new().set("class", "heat-layer").set("preserveAspectRatio", "none");
    for (k, v) in [("x", e.x0), ("y", e.y0), ("width", e.x1 - e.x0), ("height", e.y1 - e.y0)] {
        img = img.set(k, v);
    }
    if l.smooth {
        img = img.set("image-rendering", "optimizeQuality");
    } else {
        img = img.set("image-rendering", "pixelated");
    }
    let img = img.set("xlink:href", data_uri(layer.as_raw(), layer.dimensions(), image::ExtendedColorType::Rgba8));
    Group::new().add(img)
}

fn rects_path(rects: &[Rect]) -> Data {
    rects.iter().fold(Data::new(), |d, r| {
        d.move_to((r.x0 as f32, r.y0 as f32))
            .horizontal_line_to(r.x1 as f32)
            .vertical_line_to(r.y1 as f32)
            .horizontal_line_to(r.x0 as f32)
            .close()
    })
}

/// Group fills (`class="group"`), hatching, the dropped patches (`class="dropped"`) and all
/// group boundaries as one stroked path (`class="outline"`).
fn tokens_group(l: &TokensLayer) -> Group {
    let mut g = Group::new();
    for shape in &l.groups {
        let d = rects_path(&shape.rects);
        let fill = shape.tint.map_or("none".to_owned(), hex);
        let path = Path::new()
            .set("class", "group")
            .set("data-group", shape.id)
            .set("data-kind", shape.kind.name())
            .set("fill", fill);
        let path =
            if shape.kind == TokenKind::Kept { path } else { path.set("fill-opacity", num(f64::from(shape.alpha))) };
        g = g.add(path.set("d", d.clone()));
        if shape.kind == TokenKind::Fused {
            g = g.add(
                Path::new().set("class", "hatch").set("fill", format!("url(#{})", hatch_id(&l.hatch))).set("d", d),
            );
        }
    }
    if !l.dropped.is_empty() {
        g = g.add(
            Path::new()
                .set("class", "dropped")
                .set("fill", hex(l.fade.0))
                .set("fill-opacity", num(f64::from(l.fade.1)))
                .set("d", rects_path(&l.dropped)),
        );
    }
    if !l.outline.is_empty() {
        let d = l.outline.iter().fold(Data::new(), |d, s| {
            let d = d.move_to((s.x0 as f32, s.y0 as f32));
            if s.x0 == s.x1 { d.vertical_line_to(s.y1 as f32) } else { d.horizontal_line_to(s.x1 as f32) }
        });
        g = g.add(
            Path::new()
                .set("class", "outline")
                .set("fill", "none")
                .set("stroke", hex(l.outline_rgb))
                .set("stroke-width", 2 * l.reach)
                .set("stroke-linecap", "square")
                .set("d", d),
        );
    }
    g
}

/// Diagonal stripes as a pattern (the PNG's `(x + y) % period < width`).
fn hatch_pattern(h: &Hatch) -> Pattern {
    let stripe = Rectangle::new()
        .set("width", h.width)
        .set("height", h.period)
        .set("fill", hex(h.rgb))
        .set("fill-opacity", num(f64::from(h.alpha)));
    Pattern::new()
        .set("id", hatch_id(h))
        .set("patternUnits", "userSpaceOnUse")
        .set("width", h.period)
        .set("height", h.period)
        .set("patternTransform", "rotate(-45)")
        .add(stripe)
}

/// A legend swatch as the PNG draws it: fill, stripes (from its corner), the outline inside
/// and a 1 px frame, all in a group translated to its corner.
fn swatch_group(sw: &SwatchItem) -> Group {
    let r = sw.rect;
    let side = |k: i64| (r.x1 - r.x0 - 2 * k).max(0);
    let mut g = Group::new()
        .set("class", "swatch")
        .set("data-kind", sw.kind.name())
        .set("transform", format!("translate({},{})", r.x0, r.y0))
        .set("shape-rendering", "crispEdges")
        .add(Rectangle::new().set("width", side(0)).set("height", r.y1 - r.y0).set("fill", hex(sw.fill)));
    if let Some(h) = &sw.hatch {
        g = g.add(
            Rectangle::new()
                .set("width", side(0))
                .set("height", r.y1 - r.y0)
                .set("fill", format!("url(#{})", hatch_id(h))),
        );
    }
    // A stroke of width w centred w/2 inside covers the w px ring the PNG draws.
    let ring = |inset: f64, width: f64, rgb: [u8; 3]| {
        Rectangle::new()
            .set("x", num(inset + width / 2.0))
            .set("y", num(inset + width / 2.0))
            .set("width", num((side(0) as f64 - 2.0 * inset - width).max(0.0)))
            .set("height", num(((r.y1 - r.y0) as f64 - 2.0 * inset - width).max(0.0)))
            .set("fill", "none")
            .set("stroke", hex(rgb))
            .set("stroke-width", num(width))
    };
    let frame = f64::from(sw.frame_w.max(1));
    if let Some((rgb, w)) = sw.outline {
        g = g.add(ring(frame, f64::from(w), rgb));
    }
    g.add(ring(0.0, frame, sw.frame_rgb).set("class", "frame"))
}

/// A vector colour bar: stripes, frame, ticks, tick labels, norm name.
fn colorbar_group(bar: &ColorBarItem) -> Group {
    let r = &bar.rect;
    let (x, y, bw, bh) = (r.x0 as f64, r.y0 as f64, (r.x1 - r.x0) as f64, (r.y1 - r.y0) as f64);
    let mut stripes = Group::new().set("class", "stripes").set("shape-rendering", "crispEdges");
    for i in 0..BAR_STRIPES {
        // Top is the colormap's end; each stripe shows the colour of its centre.
        let t = 1.0 - (i as f32 + 0.5) / BAR_STRIPES as f32;
        let y0 = y + bh * i as f64 / BAR_STRIPES as f64;
        let y1 = y + bh * (i + 1) as f64 / BAR_STRIPES as f64;
        stripes = stripes.add(
            Rectangle::new()
                .set("x", num(x))
                .set("y", num(y0))
                .set("width", num(bw))
                .set("height", num(y1 - y0))
                .set("fill", hex(bar.colormap.rgb(t))),
        );
    }
    let frame = Rectangle::new()
        .set("x", num(x + 0.5))
        .set("y", num(y + 0.5))
        .set("width", num((bw - 1.0).max(0.0)))
        .set("height", num((bh - 1.0).max(0.0)))
        .set("fill", "none")
        .set("stroke", hex(bar.frame_rgb))
        .set("stroke-width", 1);
    let ticks = bar.ticks.iter().fold(Data::new(), |d, &ty| {
        d.move_to(((x + bw) as f32, ty as f32 + 0.5)).horizontal_line_by(bar.tick_len as f32)
    });
    let mut g = Group::new().set("class", "colorbar").add(stripes).add(frame);
    g = g.add(Path::new().set("class", "ticks").set("fill", "none").set("stroke", hex(bar.frame_rgb)).set("d", ticks));
    bar.labels.iter().fold(g, |g, t| g.add(label(t)))
}

/// A text item as `<text class=…>`: its line box top-left is where the raster back-end draws
/// it, and its anchor ("middle", "end") keeps it in place in a substitute font.
///
/// A plain `Element` rather than `element::Text`: the latter is printed with
/// newlines around its content, which some renderers show as spaces.
fn label(t: &TextItem) -> Element {
    let mut e = Element::new("text");
    e.assign("class", t.class);
    e.assign("x", num(f64::from(t.anchor_x())));
    e.assign("y", num(f64::from(t.top + text::ascent(t.px))));
    e.assign("font-family", FONT_FAMILY);
    e.assign("font-size", num(f64::from(t.px)));
    e.assign("fill", hex(t.rgb));
    match t.anchor {
        scene::Anchor::Start => {}
        scene::Anchor::Middle => e.assign("text-anchor", "middle"),
        scene::Anchor::End => e.assign("text-anchor", "end"),
    }
    e.append(svg::node::Text::new(&t.text));
    e
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::colormap::Colormap;
    use crate::render::groups::{GroupStyle, TokenGroups};
    use crate::render::heat::Norm;
    use crate::render::heat::{Heatmap, Placement};
    use crate::render::scene::HeatLook;
    use crate::render::scene::PanelContent;
    use image::Rgb;

    fn photo(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, 120]))
    }

    fn with_class<'a>(doc: &'a roxmltree::Document, tag: &str, class: &str) -> Vec<roxmltree::Node<'a, 'a>> {
        doc.descendants().filter(|n| n.has_tag_name(tag) && n.attribute("class") == Some(class)).collect()
    }

    fn look(norm: Norm, colormap: Colormap, opacity: f32) -> HeatLook {
        HeatLook { norm, colormap, opacity, smooth: false, grid_lines: false }
    }

    fn heat_panel<'a>(p: &'a RgbImage, heat: &'a Heatmap) -> Panel<'a> {
        Panel {
            photo: p,
            place: Placement::full(p.width(), p.height()),
            content: PanelContent::Heat { heat, look: look(Norm::Range { lo: 0.0, hi: 1.0 }, Colormap::Viridis, 0.6) },
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
        panel.content = PanelContent::Heat { heat: &nan, look: look(Norm::MinMax, Colormap::Turbo, 0.5) };
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
    }
}
