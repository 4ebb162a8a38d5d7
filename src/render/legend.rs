//! The token legend's key: a row of swatches (kept / merged / fused / dropped), each drawn by
//! the rules the token views use (the photo outlined, tinted, tinted and hatched, faded), with
//! its word beside it. The same colours as the app's legend (`app::view::token_legend`), so a
//! figure and the screen read alike.

use super::groups::{FADE, FADE_RGB, GroupStyle, HATCH_ALPHA, HATCH_PERIOD, HATCH_WIDTH};
use super::heat::{FRAME, INK, mix};
use super::scene::{Anchor, Hatch, Item, Rect, TextItem, reach_scale};
use super::text;

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
    pub frame_rgb: [u8; 3],
}

/// The kinds a token view's legend shows, by the app's rule: kept and dropped always; merged for
/// merge methods, fused for pruning methods that fused patches (`multi`: some group has more
/// than one patch).
pub fn kinds(style: GroupStyle, multi: bool) -> Vec<LegendKind> {
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
pub fn key_items(
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
    let (gap, sep) = (label_px * 0.35, label_px * 1.1);
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
mod tests {
    use super::*;

    #[test]
    fn the_app_rule_picks_the_middle_swatch() {
        use LegendKind::*;
        assert_eq!(kinds(GroupStyle::MergeGroups, false), [Kept, Merged, Dropped]);
        assert_eq!(kinds(GroupStyle::KeptDropped, false), [Kept, Dropped]);
        assert_eq!(kinds(GroupStyle::KeptDropped, true), [Kept, Fused, Dropped]);
    }

    #[test]
    fn a_narrow_key_wraps_without_splitting_an_entry() {
        let all = [LegendKind::Kept, LegendKind::Merged, LegendKind::Fused, LegendKind::Dropped];
        let (wide, h1) = key_items(&all, (10.0, 5.0), 14.0, 1000.0, [255; 3], 512);
        let (narrow, h2) = key_items(&all, (10.0, 5.0), 14.0, 90.0, [255; 3], 512);
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
