//! The raster back-end: a [`Scene`] as an RGB image (PNG figures, the app's views).
//!
//! Cells and runs are filled as whole-pixel rectangles clipped to the photo, alpha-blended over
//! it; smooth fields are sampled per output pixel through the scene's [`Axis`] mapping; outlines
//! cover `reach` px on both sides of each boundary; text is drawn with [`text::draw_text`].

use image::{Rgb, RgbImage, imageops};

use super::heat::{Heatmap, mix};
use super::scene::{
    CellsLayer, ColorBarItem, FieldLayer, Item, Layer, PanelScene, Rect, Scene, SwatchItem, TextItem, TokenKind,
    TokensLayer,
};
use super::text;

/// The whole figure.
pub fn draw(scene: &Scene) -> RgbImage {
    let mut canvas = RgbImage::from_pixel(scene.width, scene.height, Rgb(scene.background));
    for item in &scene.items {
        match item {
            Item::Panel(p) => {
                imageops::replace(&mut canvas, &body(p), i64::from(p.x), i64::from(p.y));
            }
            Item::Text(t) => draw_text(&mut canvas, t),
            Item::ColorBar(b) => draw_colorbar(&mut canvas, b),
            Item::Swatch(sw) => draw_swatch(&mut canvas, sw),
            Item::Mark(m) => blend_rect(&mut canvas, &m.rect, m.rgb, 1.0),
        }
    }
    canvas
}

/// One panel's body: its photo with the layer drawn over it.
pub fn body(panel: &PanelScene) -> RgbImage {
    let mut out = panel.photo.clone();
    match &panel.layer {
        Layer::None => {}
        Layer::Cells(l) => draw_cells(&mut out, l),
        Layer::Field(l) => draw_field(&mut out, l),
        Layer::Tokens(l) => draw_tokens(&mut out, l),
    }
    out
}

/// Blends `rgb` at `alpha` over the pixels of `rect` inside `img`.
fn blend_rect(img: &mut RgbImage, rect: &Rect, rgb: [u8; 3], alpha: f32) {
    let Some((xr, yr)) = rect.clip(img.width(), img.height()) else {
        return;
    };
    for y in yr {
        for x in xr.clone() {
            mix(&mut img.get_pixel_mut(x, y).0, rgb, alpha);
        }
    }
}

fn draw_cells(img: &mut RgbImage, layer: &CellsLayer) {
    let (w, h) = img.dimensions();
    for cell in &layer.cells {
        blend_rect(img, &cell.rect, cell.rgb, layer.alpha);
        let Some((line_rgb, line_alpha)) = layer.grid_lines else {
            continue;
        };
        let Some((xr, yr)) = cell.rect.clip(w, h) else {
            continue;
        };
        // Inner borders only: each cell's first column (but the grid's first) and first row.
        let left = cell.col > 0 && cell.rect.x0 >= 0;
        let top = cell.row > 0 && cell.rect.y0 >= 0;
        for y in yr {
            for x in xr.clone() {
                if (left && i64::from(x) == cell.rect.x0) || (top && i64::from(y) == cell.rect.y0) {
                    mix(&mut img.get_pixel_mut(x, y).0, line_rgb, line_alpha);
                }
            }
        }
    }
}

fn draw_field(img: &mut RgbImage, layer: &FieldLayer) {
    let (w, h) = img.dimensions();
    let (rows, cols) = (layer.heat.rows, layer.heat.cols);
    let inside = |g: f64, cells: usize| g >= 0.0 && g < cells as f64;
    let gx: Vec<f64> = (0..i64::from(w)).map(|i| layer.grid.x.coord(i)).collect();
    for py in 0..h {
        let y = layer.grid.y.coord(i64::from(py));
        if !inside(y, rows) {
            continue;
        }
        for (px, &x) in gx.iter().enumerate() {
            if !inside(x, cols) {
                continue;
            }
            let v = if layer.smooth { bilinear(&layer.heat, x, y) } else { layer.heat.get(y as usize, x as usize) };
            if let Some(rgb) = layer.colour(v) {
                mix(&mut img.get_pixel_mut(px as u32, py).0, rgb, layer.alpha);
            }
        }
    }
}

/// Bilinear sample with cell centres at `i + 0.5`, clamped at the edges.
fn bilinear(heat: &Heatmap, x: f64, y: f64) -> f32 {
    let fx = (x - 0.5).clamp(0.0, (heat.cols - 1) as f64);
    let fy = (y - 0.5).clamp(0.0, (heat.rows - 1) as f64);
    let (c0, r0) = (fx.floor() as usize, fy.floor() as usize);
    let (c1, r1) = ((c0 + 1).min(heat.cols - 1), (r0 + 1).min(heat.rows - 1));
    let (wx, wy) = ((fx - c0 as f64) as f32, (fy - r0 as f64) as f32);
    let top = heat.get(r0, c0) * (1.0 - wx) + heat.get(r0, c1) * wx;
    let bottom = heat.get(r1, c0) * (1.0 - wx) + heat.get(r1, c1) * wx;
    top * (1.0 - wy) + bottom * wy
}

fn draw_tokens(img: &mut RgbImage, layer: &TokensLayer) {
    let (w, h) = img.dimensions();
    for g in &layer.groups {
        let Some(tint) = g.tint else {
            continue; // kept patches show the photo
        };
        for (xr, yr) in g.rects.iter().filter_map(|r| r.clip(w, h)) {
            for y in yr {
                for x in xr.clone() {
                    let p = &mut img.get_pixel_mut(x, y).0;
                    mix(p, tint, g.alpha);
                    if g.kind == TokenKind::Fused && layer.hatch.covers(x, y) {
                        mix(p, layer.hatch.rgb, layer.hatch.alpha);
                    }
                }
            }
        }
    }
    for r in &layer.dropped {
        blend_rect(img, r, layer.fade.0, layer.fade.1);
    }
    let reach = i64::from(layer.reach);
    for seg in &layer.outline {
        // A boundary between pixels x - 1 and x covers x - reach .. x + reach.
        let band = if seg.x0 == seg.x1 {
            Rect { x0: seg.x0 - reach, x1: seg.x0 + reach, ..*seg }
        } else {
            Rect { y0: seg.y0 - reach, y1: seg.y0 + reach, ..*seg }
        };
        blend_rect(img, &band, layer.outline_rgb, 1.0);
    }
}

/// A legend swatch: fill, stripes counted from its corner, the outline inside, a 1 px frame.
fn draw_swatch(img: &mut RgbImage, sw: &SwatchItem) {
    let r = sw.rect;
    blend_rect(img, &r, sw.fill, 1.0);
    if let Some(hatch) = &sw.hatch
        && let Some((xr, yr)) = r.clip(img.width(), img.height())
    {
        for y in yr {
            for x in xr.clone() {
                if hatch.covers((i64::from(x) - r.x0) as u32, (i64::from(y) - r.y0) as u32) {
                    mix(&mut img.get_pixel_mut(x, y).0, hatch.rgb, hatch.alpha);
                }
            }
        }
    }
    let ring = |img: &mut RgbImage, k: i64, rgb: [u8; 3]| {
        let (x0, y0, x1, y1) = (r.x0 + k, r.y0 + k, r.x1 - k, r.y1 - k);
        for side in [
            Rect { x0, y0, x1, y1: y0 + 1 },
            Rect { x0, y0: y1 - 1, x1, y1 },
            Rect { x0, y0, x1: x0 + 1, y1 },
            Rect { x0: x1 - 1, y0, x1, y1 },
        ] {
            blend_rect(img, &side, rgb, 1.0);
        }
    };
    let frame = i64::from(sw.frame_w.max(1));
    if let Some((rgb, width)) = sw.outline {
        for k in frame..frame + i64::from(width) {
            ring(img, k, rgb);
        }
    }
    for k in 0..frame {
        ring(img, k, sw.frame_rgb);
    }
}

fn draw_text(img: &mut RgbImage, t: &TextItem) {
    text::draw_text(img, t.left, t.top, t.px, t.rgb, &t.text);
}

fn draw_colorbar(img: &mut RgbImage, bar: &ColorBarItem) {
    let Some((xr, yr)) = bar.rect.clip(img.width(), img.height()) else {
        return;
    };
    let bh = yr.len() as f32;
    for (i, y) in yr.clone().enumerate() {
        // Top is the colormap's end; each row shows the colour of its centre.
        let c = bar.colormap.rgb(1.0 - (i as f32 + 0.5) / bh);
        for x in xr.clone() {
            img.put_pixel(x, y, Rgb(c));
        }
    }
    // 1 px frame around the bar.
    let (x0, x1, y0, y1) = (xr.start, xr.end - 1, yr.start, yr.end - 1);
    for x in xr.clone() {
        img.put_pixel(x, y0, Rgb(bar.frame_rgb));
        img.put_pixel(x, y1, Rgb(bar.frame_rgb));
    }
    for y in yr {
        img.put_pixel(x0, y, Rgb(bar.frame_rgb));
        img.put_pixel(x1, y, Rgb(bar.frame_rgb));
    }
    for &ty in &bar.ticks {
        let tick = Rect {
            x0: i64::from(x1) + 1,
            x1: i64::from(x1) + 1 + i64::from(bar.tick_len),
            y0: ty.into(),
            y1: i64::from(ty) + 1,
        };
        blend_rect(img, &tick, bar.frame_rgb, 1.0);
    }
    for t in &bar.labels {
        draw_text(img, t);
    }
}
