//! What a token reducer did, drawn on the image grid.
//!
//! A ViT splits the image into a grid of patches (raster order, 0-based). A
//! reducer keeps, drops or merges them; its result is a list of groups, each
//! surviving token standing for a set of original patches (a singleton for a
//! kept patch, several for a merged token). Patches in no group were dropped.
//!
//! [`tokens_overlay`] draws that over the photo with the conventions of
//! [`overlay`](super::overlay()): the same [`Placement`] of the grid, output
//! scaling, title strip and white margins, crisp cell edges. Groups are
//! outlined where neighbouring output pixels belong to different groups, so the
//! photo stays visible under every token:
//! - kept (a singleton group): the photo itself, outlined;
//! - merged (a group of two or more under [`GroupStyle::MergeGroups`]): the
//!   group's mean photo colour blended over the photo at the fill opacity;
//! - fused (a group of two or more under [`GroupStyle::KeptDropped`], EViT's
//!   one token for all inattentive patches): the same tint, hatched;
//! - dropped: faded towards a dark grey.

use image::RgbImage;

use super::groups::{DEFAULT_FILL_OPACITY, GroupStyle, TokenGroups};
use super::heat::Placement;
use super::scene::{Panel, PanelContent};
use super::{raster, scene};

/// Appearance of a [`tokens_overlay`] figure.
#[derive(Debug, Clone, PartialEq)]
pub struct TokensStyle {
    pub style: GroupStyle,
    /// Colour of group outlines (default white).
    pub outline_rgb: [u8; 3],
    /// Drawn in a strip above the photo; shortened with "…" if too long.
    pub title: Option<String>,
    /// The photo is scaled so its longest side is this many px in the output.
    pub max_side: u32,
    /// A strip under the photo: "kept N · merged M groups (P patches) · dropped D of T patches".
    pub legend: bool,
    /// How strongly a merged or fused group's mean colour covers the photo (0 = photo only);
    /// the app's opacity slider.
    pub fill_opacity: f32,
}

impl Default for TokensStyle {
    fn default() -> Self {
        TokensStyle {
            style: GroupStyle::KeptDropped,
            outline_rgb: [255, 255, 255],
            title: None,
            max_side: 512,
            legend: true,
            fill_opacity: DEFAULT_FILL_OPACITY,
        }
    }
}

/// The photo with the reducer's groups drawn over it (see [`GroupStyle`]),
/// an optional title strip above and legend strip below. Only the photo area
/// is drawn: parts of the grid past the photo's edges (letterbox padding) are
/// cropped away, and photo pixels off the grid are left as they are. Pure
/// function, deterministic output.
pub fn tokens_overlay(photo: &RgbImage, groups: &TokenGroups, place: &Placement, style: &TokensStyle) -> RgbImage {
    let panel = tokens_panel(photo, groups, place, style);
    raster::draw(&scene::panel_scene(&panel, style.max_side, style.legend, style.outline_rgb))
}

/// The photo with the groups drawn, without title or legend (what the app shows).
pub fn tokens_body(photo: &RgbImage, groups: &TokenGroups, place: &Placement, style: &TokensStyle) -> RgbImage {
    let panel = tokens_panel(photo, groups, place, style);
    raster::body(&scene::panel_body(&panel, style.max_side, style.outline_rgb))
}

fn tokens_panel<'a>(photo: &'a RgbImage, groups: &'a TokenGroups, place: &Placement, style: &TokensStyle) -> Panel<'a> {
    let content = PanelContent::Tokens { groups, style: style.style, opacity: style.fill_opacity };
    Panel { photo, place: *place, content, title: style.title.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::groups::{TokenGroupsError, TokenStats, legend_lines};
    use crate::render::heat::Frame;
    use image::Rgb;
    use std::collections::BTreeSet;

    fn photo(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, 120]))
    }

    /// Top-left of the photo inside the figure.
    fn body_origin(style: &TokensStyle) -> (u32, u32) {
        let f = Frame::new(style.max_side, style.title.is_some());
        (f.pad, f.pad + f.title_h)
    }

    fn luma(p: &Rgb<u8>) -> u32 {
        p.0.iter().map(|&c| u32::from(c)).sum()
    }

    #[test]
    fn from_groups_rejects_overlaps_and_bad_indices() {
        let ok = TokenGroups::from_groups(2, 3, &[vec![0, 1], vec![], vec![5, 5]]).unwrap();
        assert_eq!(ok.group_of_patch, vec![Some(0), Some(0), None, None, None, Some(2)]);
        assert_eq!(
            TokenGroups::from_groups(2, 3, &[vec![0, 1], vec![1, 2]]),
            Err(TokenGroupsError::Overlap { patch: 1, first: 0, second: 1 })
        );
        let err = TokenGroups::from_groups(2, 3, &[vec![6]]).unwrap_err();
        assert!(matches!(err, TokenGroupsError::OutOfRange { patch: 6, .. }));
        assert!(err.to_string().contains("0..6"), "{err}");
        assert!(TokenGroups::from_kept(2, 3, &[4, 4]).is_err());
    }

    #[test]
    fn stats_count_every_patch_once() {
        let g = TokenGroups::from_groups(4, 4, &[vec![0], vec![1, 2, 3], vec![5], vec![8, 9]]).unwrap();
        assert_eq!(g.stats(), TokenStats { kept: 2, merged_groups: 2, merged_patches: 5, dropped: 9, total: 16 });
    }

    #[test]
    fn legend_wording() {
        let s = TokenStats { kept: 56, merged_groups: 54, merged_patches: 200, dropped: 0, total: 256 };
        assert_eq!(
            legend_lines(&s, GroupStyle::MergeGroups),
            [
                "kept 56 · merged 54 groups (200 patches) · dropped 0 of 256 patches",
                "kept 56 · merged 54 (200) · dropped 0/256"
            ]
        );
        let pruned = TokenStats { kept: 85, dropped: 171, total: 256, ..Default::default() };
        assert_eq!(legend_lines(&pruned, GroupStyle::KeptDropped)[0], "kept 85 · dropped 171 of 256 patches");
        let evit = TokenStats { kept: 20, merged_groups: 1, merged_patches: 236, dropped: 0, total: 256 };
        assert_eq!(legend_lines(&evit, GroupStyle::KeptDropped)[1], "kept 20 · fused 1 (236) · dropped 0/256");
        // One group is one group (it said "fused 1 groups").
        assert_eq!(
            legend_lines(&evit, GroupStyle::KeptDropped)[0],
            "kept 20 · fused 1 group (236 patches) · dropped 0 of 256 patches"
        );
    }

    #[test]
    fn kept_patches_show_the_photo_and_dropped_ones_are_darker() {
        // 4x4 grid over a 64x64 photo: 16 px cells, no scaling.
        let p = RgbImage::from_fn(64, 64, |x, y| Rgb([100 + x as u8, 150, 90 + y as u8]));
        let groups = TokenGroups::from_kept(4, 4, &[0, 5, 10]).unwrap();
        let style = TokensStyle { max_side: 64, title: Some("kept".into()), ..Default::default() };
        let out = tokens_overlay(&p, &groups, &Placement::full(64, 64), &style);
        let (ox, oy) = body_origin(&style);
        // Interior of kept patch 5 (row 1, col 1): pixels 17..=30 both ways.
        for y in 17..31 {
            for x in 17..31 {
                assert_eq!(out.get_pixel(ox + x, oy + y), p.get_pixel(x, y), "{x},{y}");
            }
        }
        // Its edge is outlined in white.
        assert_eq!(out.get_pixel(ox + 16, oy + 20).0, [255; 3]);
        assert_eq!(out.get_pixel(ox + 31, oy + 20).0, [255; 3]);
        // Dropped patch 7 (row 1, col 3) is darker everywhere, and not outlined inside.
        for y in 18..30 {
            for x in 50..64 {
                let (o, i) = (out.get_pixel(ox + x, oy + y), p.get_pixel(x, y));
                assert!(luma(o) < luma(i) / 2, "{x},{y}: {o:?} vs {i:?}");
            }
        }
        // No line between two dropped patches (patches 6 and 7 meet at x = 48).
        assert_ne!(out.get_pixel(ox + 48, oy + 20).0, [255; 3]);
    }

    #[test]
    fn merge_groups_fill_and_outline() {
        let p = photo(64, 64);
        // Group 0 = patches 0 and 1 (top-left, side by side), group 1 = patch 2, rest dropped.
        let groups = TokenGroups::from_groups(4, 4, &[vec![0, 1], vec![2]]).unwrap();
        let style = TokensStyle {
            style: GroupStyle::MergeGroups,
            max_side: 64,
            legend: false,
            fill_opacity: 1.0,
            ..Default::default()
        };
        let out = tokens_overlay(&p, &groups, &Placement::full(64, 64), &style);
        let (ox, oy) = body_origin(&style);
        let at = |x: u32, y: u32| out.get_pixel(ox + x, oy + y).0;
        // At full opacity, one fill colour over both patches of group 0 (away from outlines),
        // and it is the mean of the photo there.
        let fill: BTreeSet<[u8; 3]> =
            (2..14).flat_map(|y| (0..30).map(move |x| (x, y))).map(|(x, y)| at(x, y)).collect();
        assert_eq!(fill.len(), 1, "{fill:?}");
        let fill = *fill.first().unwrap();
        assert_ne!(fill, [255; 3]);
        let n = 32 * 16;
        let mean_r = (0..16)
            .flat_map(|y| (0..32).map(move |x| (x, y)))
            .map(|(x, y)| u32::from(p.get_pixel(x, y).0[0]))
            .sum::<u32>() as f32
            / n as f32;
        assert!((f32::from(fill[0]) - mean_r).abs() <= 0.5);
        // No outline inside the group (cell edge at x = 16), one between groups (x = 32).
        for y in 2..14 {
            assert_eq!(at(15, y), fill);
            assert_eq!(at(16, y), fill);
            assert_eq!(at(31, y), [255; 3]);
            assert_eq!(at(32, y), [255; 3]);
        }
        // Group 1 is a singleton (a kept patch): the photo, not a flat colour.
        for (x, y) in [(36, 4), (40, 8), (44, 12)] {
            assert_eq!(at(x, y), p.get_pixel(x, y).0);
        }
        // Under group 0, the dropped row is outlined at the boundary, faded below it.
        assert_eq!(at(8, 16), [255; 3]);
        assert!(luma(&Rgb(at(8, 24))) < luma(p.get_pixel(8, 24)));
    }

    #[test]
    fn merge_fill_follows_the_opacity_and_keeps_the_photo() {
        let p = photo(64, 64);
        let groups = TokenGroups::from_groups(4, 4, &[vec![0, 1], vec![2]]).unwrap();
        let draw = |fill_opacity: f32, style: GroupStyle| {
            let s = TokensStyle { style, max_side: 64, legend: false, fill_opacity, ..Default::default() };
            tokens_body(&p, &groups, &Placement::full(64, 64), &s)
        };
        // Opacity 0: merged patches show the photo exactly (away from outlines).
        let clear = draw(0.0, GroupStyle::MergeGroups);
        for (x, y) in [(4, 4), (20, 8), (28, 12)] {
            assert_eq!(clear.get_pixel(x, y), p.get_pixel(x, y), "{x},{y}");
        }
        // Half opacity: halfway between the photo and the full fill.
        let full = draw(1.0, GroupStyle::MergeGroups);
        let half = draw(0.5, GroupStyle::MergeGroups);
        for (x, y) in [(4, 4), (20, 8)] {
            for c in 0..3 {
                let want = (f32::from(p.get_pixel(x, y).0[c]) + f32::from(full.get_pixel(x, y).0[c])) / 2.0;
                assert!((f32::from(half.get_pixel(x, y).0[c]) - want).abs() <= 1.0, "{x},{y}");
            }
        }
        // The same group as a fused token (pruning style) is hatched: along a
        // row inside it, some pixels are the merge tint and some are lighter stripes.
        let fused = draw(0.5, GroupStyle::KeptDropped);
        let row: Vec<[u8; 3]> = (2..30).map(|x| fused.get_pixel(x, 8).0).collect();
        let tinted = (2..30).filter(|&x| fused.get_pixel(x, 8) == half.get_pixel(x, 8)).count();
        assert!(tinted > 10 && tinted < 28, "{row:?}");
        // The singleton is the photo in both styles.
        assert_eq!(fused.get_pixel(40, 8), p.get_pixel(40, 8));
    }

    #[test]
    fn deterministic_and_crisp_over_a_letterboxed_photo() {
        let p = photo(451, 300);
        let groups: Vec<Vec<u32>> = (0..128u32).filter(|i| i % 3 != 0).map(|i| vec![2 * i, 2 * i + 1]).collect();
        let groups = TokenGroups::from_groups(16, 16, &groups).unwrap();
        for s in [GroupStyle::KeptDropped, GroupStyle::MergeGroups] {
            let style = TokensStyle { style: s, title: Some("t".into()), ..Default::default() };
            let place = Placement::letterbox(451, 300);
            let a = tokens_overlay(&p, &groups, &place, &style);
            let b = tokens_overlay(&p, &groups, &place, &style);
            assert_eq!(a, b);
            assert!(a.width() > 512 && a.height() > 341);
        }
        // Crisp: a merge fill is one colour per group along a row, with only
        // the outline colour between groups.
        let p = RgbImage::from_pixel(101, 101, Rgb([40, 90, 200]));
        let all = TokenGroups::from_groups(2, 2, &[vec![0], vec![1], vec![2], vec![3]]).unwrap();
        let style = TokensStyle { style: GroupStyle::MergeGroups, max_side: 257, legend: false, ..Default::default() };
        let out = tokens_overlay(&p, &all, &Placement::full(101, 101), &style);
        let (ox, oy) = body_origin(&style);
        let row: BTreeSet<[u8; 3]> = (0..257).map(|x| out.get_pixel(ox + x, oy + 60).0).collect();
        assert_eq!(row, BTreeSet::from([[40, 90, 200], [255, 255, 255]]));
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let p = photo(30, 20);
        let style = TokensStyle::default();
        let empty = TokenGroups::from_groups(0, 0, &[]).unwrap();
        tokens_overlay(&p, &empty, &Placement::full(30, 20), &style);
        let one = TokenGroups::from_kept(2, 2, &[3]).unwrap();
        let flat = Placement { x0: 3.0, y0: 3.0, x1: 3.0, y1: 9.0 };
        tokens_overlay(&p, &one, &flat, &style);
        let short = TokenGroups { rows: 3, cols: 3, group_of_patch: vec![Some(7)] };
        tokens_overlay(&p, &short, &Placement::full(30, 20), &style);
        tokens_overlay(&RgbImage::new(0, 0), &one, &Placement::full(0, 0), &style);
    }
}
