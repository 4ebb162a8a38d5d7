//! Figure grids: rows = methods, columns = ratios or layers, as PNG or SVG.
//!
//! Both outputs share one [`GridLayout`], so a grid's PNG and SVG line up:
//! row labels on the left (right-aligned, centred on their row), column
//! labels on top, an optional title above, an optional shared colour bar on
//! the right, white margins. Panels are drawn without titles (the edges say
//! what they are); each sits centred in its cell, sized like the PNG figures
//! (`cell_px` on the photo's longest side).

use image::RgbImage;

use super::colormap::Colormap;
use super::heat::{BACKGROUND, ColorBar, Frame, INK, MUTED_INK, scaled_size};
use super::scene::{self, Anchor, Item, MarkItem, Rect, Scene, TextItem, font_slack};
use super::scene::{LegendKind, Panel, PanelContent};
use super::{raster, text};

/// Panels in rows and columns with labelled edges.
#[derive(Debug, Clone)]
pub struct GridFigure<'a> {
    /// `rows[r][c]`; `None` = empty cell. Rows may be shorter than others.
    pub rows: Vec<Vec<Option<Panel<'a>>>>,
    /// Left edge, one per row (e.g. "ToMe", "ToMe output").
    pub row_labels: Vec<String>,
    /// Top edge, one per column (e.g. "66.7 %", "77.8 %").
    pub col_labels: Vec<String>,
    /// Shorter wordings of the column labels, used where a word of the long one would not fit
    /// its column (may be empty).
    pub compact_col_labels: Vec<String>,
    /// Drawn above everything, centred over the panels.
    pub title: Option<String>,
    /// Colour bars on the right, side by side, each shared by the Heat panels of one kind (a
    /// grid's maps, its outputs). The names go under the bars, each a line below the one
    /// before, so they never overlap.
    pub colorbars: Vec<SharedBar>,
    /// Label size in px; `None`: sized for the panels (see [`super::heat::default_label_px`]).
    pub label_px: Option<f32>,
    /// Lines of text under row `r`'s panels (a method's metrics), one value per column; rows
    /// past the end have none.
    pub tables: Vec<Vec<TableLine>>,
}

/// A colour bar shared by Heat panels, which must use `Norm::Range { lo, hi }` with these
/// values (the caller guarantees it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedBar {
    pub colormap: Colormap,
    pub lo: f32,
    pub hi: f32,
    pub name: &'static str,
    /// The panels hold the log10 of their maps (`export::share_scale` with a log scale): the
    /// ticks are labelled in the maps' own units.
    pub log10: bool,
}

/// One line of a row's table: its name at the left edge, a value per column (`None`: blank),
/// each with whether it is the best of its column (drawn in green and underlined).
#[derive(Debug, Clone, PartialEq)]
pub struct TableLine {
    pub name: String,
    pub cells: Vec<Option<(String, bool)>>,
}

/// The ink of a table's best values: green, and underlined so it survives grey-scale printing.
pub const BEST_INK: [u8; 3] = [20, 120, 50];

/// Where everything of a grid goes, in output px.
struct GridLayout {
    width: u32,
    height: u32,
    frame: Frame,
    label_px: f32,
    /// Left edge and width of each column of panels.
    col_x: Vec<u32>,
    col_w: Vec<u32>,
    /// Top edge and height of each row of panels (a row's table, if any, lies under it).
    row_y: Vec<u32>,
    row_h: Vec<u32>,
    /// Panels area.
    area_x: u32,
    area_w: u32,
    /// Row labels end this far left of the panels; column labels' line top.
    label_gap: u32,
    /// Between rows and columns of panels.
    gap: u32,
    col_label_top: u32,
    /// Row labels, shortened to fit their column; column labels as wrapped lines.
    row_labels: Vec<Vec<String>>,
    col_labels: Vec<Vec<String>>,
    bars: Vec<(ColorBar, Colormap, u32, u32)>,
    /// The token legend's swatches and words, under the panels.
    key: Vec<Item>,
}

impl GridLayout {
    fn new(fig: &GridFigure, cell_px: u32) -> Self {
        let n_rows = fig.rows.len().max(fig.row_labels.len());
        let n_cols = fig.rows.iter().map(Vec::len).max().unwrap_or(0).max(fig.col_labels.len());
        let panel = |r: usize, c: usize| fig.rows.get(r).and_then(|row| row.get(c)).and_then(Option::as_ref);
        let dims = |r: usize, c: usize| panel(r, c).map(|p| scaled_size(p.photo.width(), p.photo.height(), cell_px));
        // Empty rows/columns take the size of the largest panel (or a square).
        let all: Vec<(u32, u32)> = (0..n_rows).flat_map(|r| (0..n_cols).filter_map(move |c| dims(r, c))).collect();
        let default_w = all.iter().map(|d| d.0).max().unwrap_or(cell_px);
        let default_h = all.iter().map(|d| d.1).max().unwrap_or(cell_px);
        let col_w: Vec<u32> = (0..n_cols)
            .map(|c| (0..n_rows).filter_map(|r| dims(r, c)).map(|d| d.0).max().unwrap_or(default_w))
            .collect();
        let row_h: Vec<u32> = (0..n_rows)
            .map(|r| (0..n_cols).filter_map(|c| dims(r, c)).map(|d| d.1).max().unwrap_or(default_h))
            .collect();

        // Text sized for a figure twice as large as one panel: a grid is read at a glance.
        let frame = match fig.label_px {
            Some(px) => Frame::with_label(px, fig.title.is_some()),
            None => Frame::new(cell_px.saturating_mul(2), fig.title.is_some()),
        };
        let (label_px, pad) = (frame.label_px, frame.pad);
        let gap = ((label_px * 0.4).round() as u32).max(2);
        let label_gap = (label_px * 0.7).round() as u32;

        // Row labels wrap onto two lines (then "…") rather than take the panels' width.
        let max_label_w = (cell_px as f32 * 1.5).max(label_px * 6.0);
        let row_labels: Vec<Vec<String>> = (0..n_rows)
            .map(|r| fig.row_labels.get(r).map_or(Vec::new(), |l| text::wrap(label_px, l, max_label_w, 2)))
            .collect();
        let table_names = fig.tables.iter().flatten().map(|t| t.name.as_str());
        let row_label_w = row_labels
            .iter()
            .flatten()
            .map(String::as_str)
            .chain(table_names)
            .map(|l| text::text_width(label_px, l).ceil() as u32)
            .max()
            .unwrap_or(0);
        // Right-aligned labels grow leftwards in a wider substitute font: leave room.
        let row_label_w = row_label_w + font_slack(row_label_w);

        let area_x = pad + if row_label_w > 0 { row_label_w + label_gap } else { 0 };
        let col_label_top = pad + frame.title_h;
        // Column labels wrap at spaces onto at most three lines within their column.
        let col_labels: Vec<Vec<String>> = (0..n_cols)
            .map(|c| {
                // Within the column and its gap, with room for a wider substitute font.
                let wrap = |label: &str| text::wrap(label_px, label, (col_w[c] + gap) as f32 / 1.25, 3);
                let long = wrap(fig.col_labels.get(c).map_or("", String::as_str));
                let cut = long.iter().any(|l| l.ends_with('…'));
                match fig.compact_col_labels.get(c) {
                    Some(short) if cut => wrap(short),
                    _ => long,
                }
            })
            .collect();
        let col_lines = col_labels.iter().map(Vec::len).max().unwrap_or(0);
        let col_label_h =
            if col_lines > 0 { (text::line_height(label_px) * col_lines as f32).ceil() as u32 + gap } else { 0 };
        let area_y = col_label_top + col_label_h;

        let offsets = |sizes: &[u32], start: u32| -> Vec<u32> {
            sizes.iter().scan(start, |at, &s| Some(std::mem::replace(at, *at + s + gap))).collect()
        };
        // A table's lines under its row, a small gap above them and a wider one below, so it
        // reads with the panels above it, not the next row's.
        let table_h: Vec<u32> = (0..n_rows)
            .map(|r| match fig.tables.get(r).map_or(0, Vec::len) {
                0 => 0,
                n => 2 * gap + (text::line_height(label_px) * n as f32).ceil() as u32 + label_px.round() as u32,
            })
            .collect();
        let row_span: Vec<u32> = row_h.iter().zip(&table_h).map(|(h, t)| h + t).collect();
        let col_x = offsets(&col_w, area_x);
        let row_y = offsets(&row_span, area_y);
        let span = |sizes: &[u32]| (sizes.iter().sum::<u32>() + gap * sizes.len().saturating_sub(1) as u32).max(1);
        let (area_w, area_h) = (span(&col_w), span(&row_span));

        // Each bar right of the one before; the figure ends after the last.
        let mut right = area_x + area_w;
        let bars: Vec<(ColorBar, Colormap, u32, u32)> = fig
            .colorbars
            .iter()
            .map(|b| {
                let (lo, hi) = (b.lo.min(b.hi), b.lo.max(b.hi));
                let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 0.5, lo + 0.5) };
                let bar = match b.log10 {
                    true => ColorBar::layout_log10(lo, hi, b.name, label_px, area_h),
                    false => ColorBar::layout(lo, hi, b.name, label_px, area_h),
                };
                let x = right + bar.gap();
                right = x + bar.width() + font_slack(bar.label_w);
                (bar, b.colormap, x, area_y)
            })
            .collect();
        // The title is shortened to fit (it never widens the figure, which would shrink its text
        // in print).
        let width = right + pad;
        let kinds = legend_kinds(fig);
        let key_top = area_y + area_h + gap.max((label_px * 0.5).round() as u32);
        // The bars' names sit under them, right-aligned, a line apart: the key keeps clear of
        // the leftmost reach of any (measured from the figure's right, as for one bar).
        let line = name_step(label_px);
        let mut norm_w = 0;
        let mut norm_bottom = 0;
        for (i, (b, _, x, y)) in bars.iter().enumerate() {
            let to_right = right - (x + b.width() + font_slack(b.label_w));
            norm_w = norm_w.max(to_right + b.norm_w() + label_px.round() as u32);
            norm_bottom = norm_bottom.max(y + b.height + b.norm_h() + (line * i as f32).ceil() as u32);
        }
        let (key, key_h) = scene::legend_key_items(
            &kinds,
            (area_x as f32, key_top as f32),
            label_px,
            width.saturating_sub(area_x + pad + norm_w) as f32,
            scene::OUTLINE_RGB,
            cell_px,
        );
        let bottom = if key.is_empty() { area_y + area_h } else { key_top + key_h };
        let height = bottom.max(norm_bottom) + pad;
        GridLayout {
            width,
            height,
            frame,
            label_px,
            col_x,
            col_w,
            row_y,
            row_h,
            area_x,
            area_w,
            label_gap,
            gap,
            col_label_top,
            row_labels,
            col_labels,
            bars,
            key,
        }
    }

    /// Top-left of a `(w, h)` panel centred in cell (`r`, `c`).
    fn panel_origin(&self, r: usize, c: usize, (w, h): (u32, u32)) -> (u32, u32) {
        (self.col_x[c] + self.col_w[c].saturating_sub(w) / 2, self.row_y[r] + self.row_h[r].saturating_sub(h) / 2)
    }

    /// Line top of the first of `lines` label lines vertically centred on row `r`.
    fn row_label_top(&self, r: usize, lines: usize) -> f32 {
        let h = text::line_height(self.label_px) * lines as f32;
        (self.row_y[r] as f32 + self.row_h[r] as f32 / 2.0 - h / 2.0).round()
    }
}

/// The legend's kinds over every token panel of the grid, by the app's rule per panel.
fn legend_kinds(fig: &GridFigure) -> Vec<LegendKind> {
    let mut kinds: Vec<LegendKind> = panels(fig)
        .filter_map(|(_, _, p)| match &p.content {
            PanelContent::Tokens { groups, style, .. } => {
                Some(scene::legend_kinds(*style, groups.stats().merged_groups > 0))
            }
            PanelContent::Heat { .. } => None,
        })
        .flatten()
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

fn panels<'f, 'a>(fig: &'f GridFigure<'a>) -> impl Iterator<Item = (usize, usize, &'f Panel<'a>)> {
    fig.rows
        .iter()
        .enumerate()
        .flat_map(|(r, row)| row.iter().enumerate().filter_map(move |(c, p)| Some((r, c, p.as_ref()?))))
}

/// The grid as a scene: each panel's body at its place (as [`scene::panel_body`] draws it at
/// `cell_px`), row labels right-aligned, column labels centred, the title and the shared bar.
pub fn grid_scene(fig: &GridFigure, cell_px: u32) -> Scene {
    let cell_px = cell_px.max(1);
    let lay = GridLayout::new(fig, cell_px);
    let mut items = Vec::new();
    for (r, c, panel) in panels(fig) {
        let mut body = scene::panel_body(panel, cell_px, scene::OUTLINE_RGB);
        (body.x, body.y) = lay.panel_origin(r, c, body.photo.dimensions());
        body.grid_cell = Some((r, c));
        items.push(Item::Panel(Box::new(body)));
    }
    let px = lay.label_px;
    let text = |text: String, left: f32, top: f32, anchor: Anchor, class: &'static str| {
        Item::Text(TextItem { text, left, top, px, rgb: INK, anchor, class })
    };
    let line_h = text::line_height(px);
    for (r, lines) in lay.row_labels.iter().enumerate() {
        let top = lay.row_label_top(r, lines.len());
        for (i, l) in lines.iter().enumerate() {
            let left = (lay.area_x - lay.label_gap) as f32 - text::text_width(px, l);
            let top = (top + i as f32 * line_h).round();
            items.push(text(l.clone(), left.round(), top, Anchor::End, "row-label"));
        }
    }
    for (c, lines) in lay.col_labels.iter().enumerate() {
        for (i, l) in lines.iter().enumerate() {
            let left = lay.col_x[c] as f32 + (lay.col_w[c] as f32 - text::text_width(px, l)) / 2.0;
            let top = (lay.col_label_top as f32 + i as f32 * line_h).round();
            items.push(text(l.clone(), left.round(), top, Anchor::Middle, "col-label"));
        }
    }
    table_items(fig, &lay, &mut items);
    if let Some(title) = &fig.title {
        items.push(Item::Text(lay.frame.title_item(title, lay.width, lay.area_x, lay.area_w)));
    }
    for (i, (bar, cmap, x, y)) in lay.bars.iter().enumerate() {
        let mut item = bar.item(*x, *y, *cmap);
        // Each name a line under the one before (the first where a lone bar's goes).
        if let Some(name) = item.labels.iter_mut().find(|l| l.class == "norm") {
            name.top += (name_step(px) * i as f32).ceil();
        }
        items.push(Item::ColorBar(item));
    }
    items.extend(lay.key.iter().cloned());
    Scene { width: lay.width, height: lay.height, background: BACKGROUND, items }
}

/// How far each bar's name sits under the one before: a line, and never less than the text's
/// size (the line box of the font is a little smaller at some sizes).
fn name_step(label_px: f32) -> f32 {
    text::line_height(label_px).max(label_px)
}

/// Each row's table under its panels: names right-aligned as the row labels, values centred in
/// their columns, the best in [`BEST_INK`] over an underline.
fn table_items(fig: &GridFigure, lay: &GridLayout, items: &mut Vec<Item>) {
    let px = lay.label_px;
    let line_h = text::line_height(px);
    for (r, lines) in fig.tables.iter().enumerate().take(lay.row_y.len()) {
        let top = (lay.row_y[r] + lay.row_h[r] + 2 * lay.gap) as f32;
        for (i, line) in lines.iter().enumerate() {
            let y = (top + i as f32 * line_h).round();
            let name_left = (lay.area_x - lay.label_gap) as f32 - text::text_width(px, &line.name);
            items.push(Item::Text(TextItem {
                text: line.name.clone(),
                left: name_left.round(),
                top: y,
                px,
                rgb: MUTED_INK,
                anchor: Anchor::End,
                class: "table-name",
            }));
            for (c, cell) in line.cells.iter().enumerate().take(lay.col_x.len()) {
                let Some((value, best)) = cell else { continue };
                let w = text::text_width(px, value);
                let left = (lay.col_x[c] as f32 + (lay.col_w[c] as f32 - w) / 2.0).round();
                let (rgb, class) = if *best { (BEST_INK, "table-best") } else { (INK, "table-value") };
                items.push(Item::Text(TextItem {
                    text: value.clone(),
                    left,
                    top: y,
                    px,
                    rgb,
                    anchor: Anchor::Middle,
                    class,
                }));
                if *best {
                    let base = y + text::ascent(px) + (px * 0.08).max(1.0);
                    let rect = Rect {
                        x0: left as i64,
                        y0: base.round() as i64,
                        x1: (left + w).round() as i64,
                        y1: (base + (px / 14.0).max(1.0)).round() as i64,
                    };
                    items.push(Item::Mark(MarkItem { rect, rgb: BEST_INK, class: "underline" }));
                }
            }
        }
    }
}

/// The grid as a raster image: panels drawn as the app draws them, labels with [`text`].
pub fn grid_png(fig: &GridFigure, cell_px: u32) -> RgbImage {
    raster::draw(&grid_scene(fig, cell_px))
}

/// The grid as an SVG document: each panel a `<g class="panel" transform="translate(..)">`
/// (with `data-row`, `data-col`) holding the same elements as [`super::panel_svg`]; each
/// distinct photo embedded once; labels as `<text>` (`class="row-label"`, `"col-label"`,
/// `"title"`); the shared colour bar as in `panel_svg`.
pub fn grid_svg(fig: &GridFigure, cell_px: u32) -> String {
    super::svg::draw(&grid_scene(fig, cell_px))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::groups::{GroupStyle, TokenGroups};
    use crate::render::heat::{Heatmap, Norm, Placement};
    use crate::render::scene::HeatLook;
    use image::Rgb;

    fn photo(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, 120]))
    }

    fn figure<'a>(p: &'a RgbImage, groups: &'a [TokenGroups], heat: &'a Heatmap) -> GridFigure<'a> {
        let place = Placement::letterbox(p.width(), p.height());
        let tokens = |g, style| {
            Some(Panel {
                photo: p,
                place,
                content: PanelContent::Tokens { groups: g, style, opacity: 0.6 },
                title: None,
            })
        };
        let heat_panel = Some(Panel {
            photo: p,
            place,
            content: PanelContent::Heat {
                heat,
                look: HeatLook {
                    norm: Norm::Range { lo: 0.0, hi: 1.0 },
                    colormap: Colormap::Magma,
                    opacity: 0.7,
                    smooth: false,
                    grid_lines: false,
                },
            },
            title: Some("not drawn".into()),
        });
        GridFigure {
            rows: vec![
                vec![tokens(&groups[0], GroupStyle::MergeGroups), tokens(&groups[1], GroupStyle::MergeGroups), None],
                vec![
                    tokens(&groups[0], GroupStyle::KeptDropped),
                    heat_panel,
                    tokens(&groups[1], GroupStyle::KeptDropped),
                ],
            ],
            row_labels: vec!["ToMe".into(), "ToMe output".into()],
            col_labels: vec!["66.7 %".into(), "77.8 %".into(), "88.9 %".into()],
            compact_col_labels: Vec::new(),
            title: Some("Token reduction & <friends>".into()),
            colorbars: vec![SharedBar {
                colormap: Colormap::Magma,
                lo: 0.0,
                hi: 1.0,
                name: "fixed range",
                log10: false,
            }],
            label_px: None,
            tables: Vec::new(),
        }
    }

    fn groups() -> Vec<TokenGroups> {
        let a: Vec<Vec<u32>> = (0..8u32).map(|i| vec![2 * i, 2 * i + 1]).collect();
        let b: Vec<Vec<u32>> = (0..16u32).filter(|i| i % 3 != 0).map(|i| vec![i]).collect();
        vec![TokenGroups::from_groups(4, 4, &a).unwrap(), TokenGroups::from_groups(4, 4, &b).unwrap()]
    }

    #[test]
    fn svg_embeds_the_shared_photo_once() {
        let p = photo(90, 60);
        let (g, heat) = (groups(), Heatmap::new(4, 4, (0..16).map(|i| i as f32 / 15.0).collect()));
        let fig = figure(&p, &g, &heat);
        let s = grid_svg(&fig, 128);
        let doc = roxmltree::Document::parse(&s).unwrap();
        assert_eq!(s.matches("data:image/png;base64,").count(), 1);
        assert_eq!(doc.descendants().filter(|n| n.has_tag_name("image")).count(), 1);
        let uses: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("use")).collect();
        assert_eq!(uses.len(), 5);
        let panels: Vec<_> = doc.descendants().filter(|n| n.attribute("class") == Some("panel")).collect();
        assert_eq!(panels.len(), 5);
        assert!(panels.iter().all(|p| p.attribute("transform").is_some_and(|t| t.starts_with("translate("))));
        let class_count = |c: &str| doc.descendants().filter(|n| n.attribute("class") == Some(c)).count();
        assert_eq!(class_count("row-label"), 2);
        assert_eq!(class_count("col-label"), 3);
        assert_eq!(class_count("title"), 1);
        assert_eq!(class_count("colorbar"), 1);
        assert_eq!(class_count("cell"), 16);
        assert!(!s.contains("not drawn"));
        assert_eq!(s, grid_svg(&fig, 128));

        // A second, different photo gets its own embedding; an equal copy does not.
        let (q, copy) = (photo(60, 90), p.clone());
        let mut fig = figure(&p, &g, &heat);
        fig.rows[0][2] = Some(Panel { photo: &q, ..fig.rows[0][0].clone().unwrap() });
        fig.rows[1][0] = Some(Panel { photo: &copy, ..fig.rows[1][0].clone().unwrap() });
        let s = grid_svg(&fig, 128);
        assert_eq!(s.matches("data:image/png;base64,").count(), 2);
        roxmltree::Document::parse(&s).unwrap();
    }

    #[test]
    fn png_grows_with_cell_px() {
        let p = photo(90, 60);
        let (g, heat) = (groups(), Heatmap::new(4, 4, (0..16).map(|i| i as f32 / 15.0).collect()));
        let fig = figure(&p, &g, &heat);
        let small = grid_png(&fig, 96);
        let large = grid_png(&fig, 192);
        assert!(large.width() >= small.width() + 3 * 96 && large.height() >= small.height() + 2 * 64);
        assert_eq!(small, grid_png(&fig, 96));
        // SVG and PNG share the layout.
        let s = grid_svg(&fig, 96);
        let doc = roxmltree::Document::parse(&s).unwrap();
        let root = doc.root_element();
        assert_eq!(root.attribute("width"), Some(small.width().to_string().as_str()));
        assert_eq!(root.attribute("height"), Some(small.height().to_string().as_str()));
    }

    #[test]
    fn degenerate_grids_do_not_panic() {
        let empty = GridFigure {
            rows: vec![],
            row_labels: vec![],
            col_labels: vec![],
            compact_col_labels: vec![],
            title: None,
            colorbars: Vec::new(),
            label_px: None,
            tables: Vec::new(),
        };
        assert!(grid_png(&empty, 64).width() > 0);
        roxmltree::Document::parse(&grid_svg(&empty, 64)).unwrap();
        let labels_only = GridFigure {
            rows: vec![vec![None]],
            row_labels: vec!["a".into(), "b".into()],
            col_labels: vec!["x".into(), "y".into()],
            compact_col_labels: vec![],
            title: Some("t".into()),
            colorbars: vec![SharedBar {
                colormap: Colormap::Gray,
                lo: 1.0,
                hi: 1.0,
                name: "fixed range",
                log10: false,
            }],
            label_px: None,
            tables: vec![vec![TableLine { name: "r".into(), cells: vec![None, Some(("0.5".into(), true))] }]; 3],
        };
        grid_png(&labels_only, 0);
        roxmltree::Document::parse(&grid_svg(&labels_only, 0)).unwrap();
    }
}
