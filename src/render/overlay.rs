//! Photo + heatmap compositing, with a title strip and a labelled colour bar.
//!
//! Every output pixel is mapped back into heatmap coordinates through the
//! [`Placement`] rather than resizing the heatmap as an image: that keeps token
//! cells crisp (nearest sampling, no blur across cell edges), lets the heatmap
//! extend over padding the photo doesn't have, and leaves photo pixels outside
//! the heatmap untinted. The colour bar prints the real value range used for
//! normalisation, so two figures are only compared when their ticks agree.

use image::RgbImage;

use super::colormap::Colormap;
use super::heat::{Heatmap, Norm, Placement};
use super::raster;
use super::scene::{self, HeatLook, Panel, PanelContent};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::heat::tick_labels;
    use crate::render::text;
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
