//! Figure grids: rows = methods, columns = ratios or layers, as PNG or SVG.
//!
//! Both outputs share one [`GridLayout`], so a grid's PNG and SVG line up:
//! row labels on the left (right-aligned, centred on their row), column
//! labels on top, an optional title above, an optional shared colour bar on
//! the right, white margins. Panels are drawn without titles (the edges say
//! what they are); each sits centred in its cell, sized like the PNG figures
//! (`cell_px` on the photo's longest side).

use image::{Rgb, RgbImage, imageops};
use svg::node::element::{Definitions, Group, Use};

use super::colormap::Colormap;
use super::overlay::{BACKGROUND, ColorBar, Frame, INK, OverlayStyle, overlay_body, scale_photo};
use super::svg::{
    Panel, PanelContent, clip_path, colorbar_group, document, font_slack, label, panel_group, photo_image, translate,
};
use super::text;
use super::tokens::{TokensStyle, tokens_body};

/// Panels in rows and columns with labelled edges.
#[derive(Debug, Clone)]
pub struct GridFigure<'a> {
    /// `rows[r][c]`; `None` = empty cell. Rows may be shorter than others.
    pub rows: Vec<Vec<Option<Panel<'a>>>>,
    /// Left edge, one per row (e.g. "ToMe", "ToMe output").
    pub row_labels: Vec<String>,
    /// Top edge, one per column (e.g. "66.7 %", "77.8 %").
    pub col_labels: Vec<String>,
    /// Drawn above everything, centred over the panels.
    pub title: Option<String>,
    /// One shared colour bar on the right for every Heat panel: colormap, lo,
    /// hi, norm name. All Heat panels must then use `Norm::Range { lo, hi }`
    /// with these values (the caller guarantees it).
    pub colorbar: Option<(Colormap, f32, f32, &'static str)>,
}

/// Where everything of a grid goes, in output px.
struct GridLayout {
    width: u32,
    height: u32,
    frame: Frame,
    label_px: f32,
    /// Left edge and width of each column of panels.
    col_x: Vec<u32>,
    col_w: Vec<u32>,
    /// Top edge and height of each row of panels.
    row_y: Vec<u32>,
    row_h: Vec<u32>,
    /// Panels area.
    area_x: u32,
    area_w: u32,
    /// Row labels end this far left of the panels; column labels' line top.
    label_gap: u32,
    col_label_top: u32,
    /// Row labels, shortened to fit their column.
    row_labels: Vec<String>,
    bar: Option<(ColorBar, Colormap, u32, u32)>,
}

/// Size of a photo scaled so its longest side is `cell_px`, as `scale_photo` does.
fn body_dims(photo: &RgbImage, cell_px: u32) -> (u32, u32) {
    let (w, h) = photo.dimensions();
    let longest = w.max(h);
    if longest == 0 || longest == cell_px {
        return (w, h);
    }
    let s = f64::from(cell_px) / f64::from(longest);
    (((f64::from(w) * s).round() as u32).max(1), ((f64::from(h) * s).round() as u32).max(1))
}

impl GridLayout {
    fn new(fig: &GridFigure, cell_px: u32) -> Self {
        let n_rows = fig.rows.len().max(fig.row_labels.len());
        let n_cols = fig.rows.iter().map(Vec::len).max().unwrap_or(0).max(fig.col_labels.len());
        let panel = |r: usize, c: usize| fig.rows.get(r).and_then(|row| row.get(c)).and_then(Option::as_ref);
        let dims = |r: usize, c: usize| panel(r, c).map(|p| body_dims(p.photo, cell_px));
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
        let frame = Frame::new(cell_px.saturating_mul(2), fig.title.is_some());
        let (label_px, pad) = (frame.label_px, frame.pad);
        let gap = ((label_px * 0.4).round() as u32).max(2);
        let label_gap = (label_px * 0.7).round() as u32;

        let max_label_w = cell_px as f32 * 1.5;
        let row_labels: Vec<String> = (0..n_rows)
            .map(|r| fig.row_labels.get(r).map_or(String::new(), |l| text::fit_text(label_px, l, max_label_w)))
            .collect();
        let row_label_w = row_labels.iter().map(|l| text::text_width(label_px, l).ceil() as u32).max().unwrap_or(0);
        // Right-aligned labels grow leftwards in a wider substitute font: leave room.
        let row_label_w = row_label_w + font_slack(row_label_w);
        let has_col_labels = fig.col_labels.iter().any(|l| !l.is_empty());

        let area_x = pad + if row_label_w > 0 { row_label_w + label_gap } else { 0 };
        let col_label_top = pad + frame.title_h;
        let col_label_h = if has_col_labels { text::line_height(label_px).ceil() as u32 + gap } else { 0 };
        let area_y = col_label_top + col_label_h;

        let offsets = |sizes: &[u32], start: u32| -> Vec<u32> {
            sizes.iter().scan(start, |at, &s| Some(std::mem::replace(at, *at + s + gap))).collect()
        };
        let col_x = offsets(&col_w, area_x);
        let row_y = offsets(&row_h, area_y);
        let span = |sizes: &[u32]| (sizes.iter().sum::<u32>() + gap * sizes.len().saturating_sub(1) as u32).max(1);
        let (area_w, area_h) = (span(&col_w), span(&row_h));

        let bar = fig.colorbar.map(|(cmap, lo, hi, name)| {
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 0.5, lo + 0.5) };
            let bar = ColorBar::layout(lo, hi, name, label_px, area_h);
            (bar, cmap, area_x + area_w + pad, area_y)
        });
        let right = bar.as_ref().map_or(area_x + area_w, |(b, _, x, _)| x + b.width() + font_slack(b.label_w));
        // The title may be wider than everything else.
        let title_w = fig.title.as_ref().map_or(0, |t| text::text_width(frame.title_px, t).ceil() as u32);
        let width = (right + pad).max((title_w + 2 * pad).min(2 * (right + pad)));
        let height = area_y + area_h + pad;
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
            col_label_top,
            row_labels,
            bar,
        }
    }

    /// Top-left of a `(w, h)` panel centred in cell (`r`, `c`).
    fn panel_origin(&self, r: usize, c: usize, (w, h): (u32, u32)) -> (u32, u32) {
        (self.col_x[c] + self.col_w[c].saturating_sub(w) / 2, self.row_y[r] + self.row_h[r].saturating_sub(h) / 2)
    }

    /// Line top of a label vertically centred on row `r`.
    fn row_label_top(&self, r: usize) -> f32 {
        (self.row_y[r] as f32 + self.row_h[r] as f32 / 2.0 - text::line_height(self.label_px) / 2.0).round()
    }

    /// Column labels, shortened to their column width plus the gap.
    fn col_label(&self, c: usize, label: &str) -> String {
        text::fit_text(self.label_px, label, (self.col_w[c] + self.label_gap) as f32)
    }
}

fn panels<'f, 'a>(fig: &'f GridFigure<'a>) -> impl Iterator<Item = (usize, usize, &'f Panel<'a>)> {
    fig.rows
        .iter()
        .enumerate()
        .flat_map(|(r, row)| row.iter().enumerate().filter_map(move |(c, p)| Some((r, c, p.as_ref()?))))
}

/// The grid as a raster image: panels drawn as the app draws them
/// ([`overlay_body`] / [`tokens_body`] at `cell_px`), labels with [`text`].
pub fn grid_png(fig: &GridFigure, cell_px: u32) -> RgbImage {
    let cell_px = cell_px.max(1);
    let lay = GridLayout::new(fig, cell_px);
    let mut canvas = RgbImage::from_pixel(lay.width, lay.height, Rgb(BACKGROUND));
    for (r, c, panel) in panels(fig) {
        let body = match &panel.content {
            PanelContent::Heat { heat, norm, colormap, opacity } => {
                let style = OverlayStyle {
                    colormap: *colormap,
                    opacity: *opacity,
                    norm: *norm,
                    title: None,
                    colorbar: false,
                    max_side: cell_px,
                    smooth: false,
                    grid_lines: false,
                };
                overlay_body(panel.photo, heat, &panel.place, &style)
            }
            PanelContent::Tokens { groups, style, opacity } => {
                let style = TokensStyle {
                    style: *style,
                    max_side: cell_px,
                    legend: false,
                    fill_opacity: *opacity,
                    ..Default::default()
                };
                tokens_body(panel.photo, groups, &panel.place, &style)
            }
        };
        let (x, y) = lay.panel_origin(r, c, body.dimensions());
        imageops::replace(&mut canvas, &body, i64::from(x), i64::from(y));
    }
    let px = lay.label_px;
    for (r, l) in lay.row_labels.iter().enumerate() {
        let x = (lay.area_x - lay.label_gap) as f32 - text::text_width(px, l);
        text::draw_text(&mut canvas, x.round(), lay.row_label_top(r), px, INK, l);
    }
    for (c, l) in fig.col_labels.iter().enumerate().take(lay.col_x.len()) {
        let l = lay.col_label(c, l);
        let x = lay.col_x[c] as f32 + (lay.col_w[c] as f32 - text::text_width(px, &l)) / 2.0;
        text::draw_text(&mut canvas, x.round(), lay.col_label_top as f32, px, INK, &l);
    }
    if let Some(title) = &fig.title {
        lay.frame.draw_title(&mut canvas, title, lay.area_x, lay.area_w);
    }
    if let Some((bar, cmap, x, y)) = &lay.bar {
        bar.draw(&mut canvas, *x, *y, *cmap);
    }
    canvas
}

/// The grid as an SVG document: each panel a `<g class="panel" transform="translate(..)">`
/// with the same elements as [`super::panel_svg`]; each distinct photo embedded
/// once in `<defs>` (`id="photo0"`, ...) and placed with `<use>`; labels as `<text>`
/// (`class="row-label"`, `"col-label"`, `"title"`); the shared colour bar as in `panel_svg`.
pub fn grid_svg(fig: &GridFigure, cell_px: u32) -> String {
    let cell_px = cell_px.max(1);
    let lay = GridLayout::new(fig, cell_px);

    // Distinct photos (by content) in order of first use, scaled once each.
    let mut photos: Vec<(&RgbImage, RgbImage)> = Vec::new();
    let mut photo_of = Vec::new();
    for (_, _, panel) in panels(fig) {
        let same = |p: &RgbImage| std::ptr::eq(p, panel.photo) || p == panel.photo;
        let i = photos.iter().position(|(p, _)| same(p)).unwrap_or_else(|| {
            photos.push((panel.photo, scale_photo(panel.photo, cell_px)));
            photos.len() - 1
        });
        photo_of.push(i);
    }
    // One clip path per distinct photo size (clip paths are in the panel's own coordinates).
    let mut clips: Vec<(u32, u32)> = photos.iter().map(|(_, s)| s.dimensions()).collect();
    clips.sort_unstable();
    clips.dedup();
    let clip_id = |(w, h): (u32, u32)| format!("clip-{w}x{h}");

    let mut defs = Definitions::new();
    for (i, (_, scaled)) in photos.iter().enumerate() {
        defs = defs.add(photo_image(scaled).set("id", format!("photo{i}")));
    }
    for &d in &clips {
        defs = defs.add(clip_path(&clip_id(d), d.0, d.1));
    }
    let mut doc = document(lay.width, lay.height).add(defs);

    for ((r, c, panel), i) in panels(fig).zip(photo_of) {
        let scaled = &photos[i].1;
        let (x, y) = lay.panel_origin(r, c, scaled.dimensions());
        let photo = Use::new().set("xlink:href", format!("#photo{i}")).set("class", "photo");
        let g = panel_group(panel, scaled, cell_px, photo, &clip_id(scaled.dimensions()))
            .set("transform", translate(x, y))
            .set("data-row", r)
            .set("data-col", c);
        doc = doc.add(g);
    }

    let px = lay.label_px;
    let mut labels = Group::new().set("class", "labels");
    for (r, l) in lay.row_labels.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
        let right = (lay.area_x - lay.label_gap) as f32;
        labels = labels.add(label(l, right, lay.row_label_top(r), px, INK, "row-label", Some("end")));
    }
    for (c, l) in fig.col_labels.iter().enumerate().take(lay.col_x.len()).filter(|(_, l)| !l.is_empty()) {
        let cx = lay.col_x[c] as f32 + lay.col_w[c] as f32 / 2.0;
        let l = lay.col_label(c, l);
        labels = labels.add(label(&l, cx, lay.col_label_top as f32, px, INK, "col-label", Some("middle")));
    }
    doc = doc.add(labels);
    if let Some(title) = &fig.title {
        doc = doc.add(super::svg::title_text(&lay.frame, title, lay.width, lay.area_x, lay.area_w));
    }
    if let Some((bar, cmap, x, y)) = &lay.bar {
        doc = doc.add(colorbar_group(bar, *cmap).set("transform", translate(*x, *y)));
    }
    doc.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::overlay::{Heatmap, Norm, Placement};
    use crate::render::tokens::{GroupStyle, TokenGroups};

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
                norm: Norm::Range { lo: 0.0, hi: 1.0 },
                colormap: Colormap::Magma,
                opacity: 0.7,
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
            title: Some("Token reduction & <friends>".into()),
            colorbar: Some((Colormap::Magma, 0.0, 1.0, "fixed range")),
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
        let empty = GridFigure { rows: vec![], row_labels: vec![], col_labels: vec![], title: None, colorbar: None };
        assert!(grid_png(&empty, 64).width() > 0);
        roxmltree::Document::parse(&grid_svg(&empty, 64)).unwrap();
        let labels_only = GridFigure {
            rows: vec![vec![None]],
            row_labels: vec!["a".into(), "b".into()],
            col_labels: vec!["x".into(), "y".into()],
            title: Some("t".into()),
            colorbar: Some((Colormap::Gray, 1.0, 1.0, "fixed range")),
        };
        grid_png(&labels_only, 0);
        roxmltree::Document::parse(&grid_svg(&labels_only, 0)).unwrap();
    }
}
