//! The compare view: two to four methods at one budget beside the full model, each column with
//! its tokens (or the chosen map from its own reduced model), its output, and its drift metrics,
//! the best of each highlighted. Maps share one colour scale; hovering a patch in any panel
//! outlines that patch (and the token carrying it) in every panel. Methods, budget and view are
//! set in the left panel (`controls`).

use std::sync::Arc;

use eframe::egui;
use egui::{Color32, RichText};

use super::widgets::{Fate, GridFrame, ValueMap, flops, highlight, labels_ui, map_of, patch_at, patch_info};
use super::{MapScale, MapSource, TokenlensApp};
use crate::analysis::metrics::Fidelity;
use crate::figures;
use crate::render::Norm;
use crate::session::EncoderRun;

/// Panel textures' longest side.
const PANEL_SIDE: u32 = 640;
/// Room under the images for a column's title, metrics and cost, in points.
const TEXT_HEIGHT: f32 = 190.0;
/// Width of the text beside the images when the methods are rows.
const TEXT_WIDTH: f32 = 230.0;
const GAP: f32 = 8.0;

pub fn compare_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    app.runtime.textures.begin_frame();
    let Some(opened) = app.results.opened.clone() else {
        ui.centered_and_justified(|ui| {
            ui.spinner();
        });
        return;
    };
    let s = app.settings.clone();
    let results = app.results.compared.value.clone().unwrap_or_default();
    let runs: Vec<Option<Arc<EncoderRun>>> = s
        .compare
        .iter()
        .enumerate()
        .map(|(i, m)| results.get(i).filter(|r| r.spec.reducer() == Some(m)).cloned())
        .collect();
    ui.horizontal(|ui| {
        ui.strong(format!("All at {}", s.spec.budget.describe(app.num_patches())));
        ui.label(RichText::new("· methods, budget and view in the left panel · best metric in green").weak());
        if app.results.compared.is_stale() {
            ui.spinner();
            ui.colored_label(ui.visuals().warn_fg_color, "stale: the new budget computes");
        }
    });

    let a = &opened.analysis;
    let grid = a.grid;
    // One map per column (the full model's, then each method's reduced model), on one scale.
    let maps: Vec<Option<ValueMap>> = std::iter::once(map_of(a, None, s.overlay, s.layer, s.head, MapSource::Full))
        .chain(
            runs.iter()
                .map(|r| r.as_deref().and_then(|r| map_of(a, Some(r), s.overlay, s.layer, s.head, MapSource::Reduced))),
        )
        .collect();
    // The tooltips tell each patch's own value; the panels draw it on the shared scale (a log
    // scale's maps hold their log10).
    let raw_maps = maps.clone();
    let (maps, norm) = shared_scale(maps, s.scale);
    if let Some(title) = maps.iter().flatten().next().map(|m| short_map_title(&m.title)) {
        ui.horizontal(|ui| {
            ui.label(RichText::new(format!("{title} · one {} scale across the panels", s.scale.label())).small());
            if let Norm::Range { lo, hi } = norm {
                let log10 = s.scale == MapScale::Log;
                super::widgets::colorbar_range_ui(ui, s.colormap, (lo, hi), log10, s.scale.label());
            }
        });
    } else if s.overlay == super::Overlay::Tokens {
        let note = figures::special_tokens_note(a.num_special);
        super::widgets::token_legend(ui, true, &[], note.as_deref());
    }

    let fidelities: Vec<Option<&Fidelity>> = runs.iter().map(|r| r.as_deref().map(|r| &r.fidelity)).collect();
    let best = best_values(&fidelities);
    let output_rows = usize::from(a.output.is_map());
    let (w, h) = opened.input.photo.dimensions();
    let columns = runs.len() + 1;
    let aspect = h as f32 / w as f32;
    let (panel, arrangement) = layout(ui.available_size(), columns, 1 + output_rows, aspect);
    let frame = GridFrame::of(&opened.input, grid);
    let key = format!("{:?}|{:?}|{}|{:?}|{:?}|{}", opened.label, s.colormap, s.opacity, s.scale, s.overlay, s.layer);
    let mut method = Method {
        textures: &mut app.runtime.textures,
        opened: &opened,
        settings: &s,
        runs: &runs,
        maps: &maps,
        raw_maps: &raw_maps,
        norm,
        best: &best,
        output_rows,
        panel,
        frame,
        key,
        hovered: app.screen.compare_hover,
        hover_now: None,
    };
    match arrangement {
        Layout::Columns => {
            ui.horizontal_top(|ui| {
                ui.spacing_mut().item_spacing.x = GAP;
                for col in 0..columns {
                    ui.allocate_ui_with_layout(
                        egui::vec2(panel.x, ui.available_height()),
                        egui::Layout::top_down(egui::Align::Min),
                        |ui| {
                            ui.set_width(panel.x);
                            if method.header_ui(ui, col) {
                                let images = method.images_ui(ui, col);
                                method.hover(ui, col, images);
                                method.text_ui(ui, col);
                            }
                        },
                    );
                }
            });
        }
        // A wide photo: each method a row, its text beside its images, so the images take the
        // width instead of leaving an empty band under short columns.
        Layout::Rows => {
            egui::ScrollArea::vertical().auto_shrink([false; 2]).show(ui, |ui| {
                for col in 0..columns {
                    ui.horizontal_top(|ui| {
                        ui.spacing_mut().item_spacing.x = GAP;
                        ui.allocate_ui_with_layout(
                            egui::vec2(TEXT_WIDTH, panel.y),
                            egui::Layout::top_down(egui::Align::Min),
                            |ui| {
                                ui.set_width(TEXT_WIDTH);
                                if method.header_ui(ui, col) {
                                    method.text_ui(ui, col);
                                }
                            },
                        );
                        if col == 0 || method.runs[col - 1].is_some() {
                            let images = method.images_ui(ui, col);
                            method.hover(ui, col, images);
                        }
                    });
                    ui.add_space(GAP);
                }
            });
        }
    }
    if method.hover_now != app.screen.compare_hover {
        app.screen.compare_hover = method.hover_now;
        ui.ctx().request_repaint();
    }
}

/// One column (or row) of the compare view: the full model's (`col` 0) or a method's.
struct Method<'a> {
    textures: &'a mut super::textures::Textures,
    opened: &'a super::Opened,
    settings: &'a super::Settings,
    runs: &'a [Option<Arc<EncoderRun>>],
    maps: &'a [Option<ValueMap>],
    /// The maps' own values, for tooltips.
    raw_maps: &'a [Option<ValueMap>],
    norm: Norm,
    best: &'a [Option<f64>],
    output_rows: usize,
    panel: egui::Vec2,
    frame: GridFrame,
    key: String,
    hovered: Option<usize>,
    hover_now: Option<usize>,
}

impl Method<'_> {
    fn run(&self, col: usize) -> Option<Arc<EncoderRun>> {
        col.checked_sub(1).and_then(|i| self.runs[i].clone())
    }

    /// The column's name; false (after a spinner) while its run computes.
    fn header_ui(&self, ui: &mut egui::Ui, col: usize) -> bool {
        let name = match col {
            0 => "Full model".to_string(),
            i => self.settings.compare[i - 1].info().label.to_string(),
        };
        ui.strong(name);
        if col > 0 && self.run(col).is_none() {
            ui.spinner();
            return false;
        }
        true
    }

    /// The column's images (its tokens or map, then its output), hover-sensitive.
    fn images_ui(&mut self, ui: &mut egui::Ui, col: usize) -> Vec<egui::Response> {
        let (opened, s, key, norm) = (self.opened, self.settings, &self.key, self.norm);
        let (a, grid) = (&opened.analysis, opened.analysis.grid);
        let run = self.run(col);
        let tex = match (self.maps[col].as_ref(), &run) {
            (Some(m), _) => self.textures.get(
                ui.ctx(),
                &format!("cmp_main_{col}"),
                format!("{key}|{}|{:?}|{:?}", m.title, run.as_ref().map(|r| &r.spec), norm),
                || figures::grid_map_body(&opened.input, grid, &m.values, s.colormap, norm, s.opacity, PANEL_SIDE),
            ),
            (None, Some(r)) => {
                self.textures.get(ui.ctx(), &format!("cmp_main_{col}"), format!("{key}|tokens|{:?}", r.spec), || {
                    figures::tokens_body(&opened.input, grid, r, s.opacity, PANEL_SIDE)
                })
            }
            // Every patch kept, as the export's full-model column and the legend's "kept" draw it.
            (None, None) => self.textures.get(ui.ctx(), "cmp_main_0", format!("{key}|all kept"), || {
                figures::full_tokens_body(&opened.input, grid, PANEL_SIDE)
            }),
        };
        let mut textures = vec![tex];
        if self.output_rows > 0 {
            let output = run.as_ref().map_or(&a.output, |r| &r.output);
            textures.push(self.textures.get(
                ui.ctx(),
                &format!("cmp_out_{col}"),
                format!("{:?}|{:?}|{:?}", opened.label, run.as_ref().map(|r| &r.spec), s.colormap),
                || figures::saliency_body(&opened.input, output, s.colormap, PANEL_SIDE),
            ));
        }
        let panel = self.panel;
        textures
            .iter()
            .map(|tex| ui.add(egui::Image::new(tex).fit_to_exact_size(panel).sense(egui::Sense::hover())))
            .collect()
    }

    /// Hover on any of `images`: the patch's tooltip, and the patch outlined in every panel.
    fn hover(&mut self, ui: &mut egui::Ui, col: usize, images: Vec<egui::Response>) {
        let run = self.run(col);
        let grid = self.opened.analysis.grid;
        let groups = run.as_ref().map(|r| r.groups.as_slice());
        for response in images {
            let rect = response.rect;
            if let Some(pos) = response.hover_pos()
                && let Some(patch) = patch_at(&self.frame, rect, pos)
            {
                self.hover_now = Some(patch);
                let fate = run.as_deref().map(|r| Fate {
                    method: r.reducer().info().label.to_string(),
                    scores: r.scores.as_deref(),
                    groups: &r.groups,
                    role: None,
                });
                let info = patch_info(patch, grid, self.raw_maps[col].as_ref(), fate);
                response.on_hover_ui_at_pointer(|ui| {
                    ui.label(info);
                });
            }
            if let Some(patch) = self.hovered {
                highlight(ui, &self.frame, rect, patch, groups);
            }
        }
    }

    /// The run's title, metrics and cost (the full model's: "the reference"), and class labels.
    fn text_ui(&self, ui: &mut egui::Ui, col: usize) {
        let a = &self.opened.analysis;
        let run = self.run(col);
        match &run {
            Some(r) => {
                ui.label(RichText::new(figures::run_title(r)).small());
                metrics_ui(ui, &r.fidelity, self.best);
                ui.label(
                    RichText::new(format!(
                        "{} FLOPs ({:.0} % of full), {:.0} ms",
                        flops(r.flops),
                        100.0 * r.flops / r.flops_full.max(1.0),
                        r.timings_ms.run_ms
                    ))
                    .small()
                    .weak(),
                );
            }
            None => {
                ui.label(RichText::new(format!("all {} patches, the reference", a.grid[0] * a.grid[1])).small());
            }
        }
        if !a.output.is_map() && !a.output.values.is_empty() {
            labels_ui(ui, &a.output, run.as_ref().map(|r| &r.output));
        }
    }
}

fn short_map_title(title: &str) -> &str {
    title.split(" (").next().unwrap_or(title)
}

/// The size of one panel image: the columns share the width, the image rows (and the text under
/// them) the height; the photo's aspect (`h / w`) decides which one binds.
pub fn panel_size(available: egui::Vec2, columns: usize, image_rows: usize, aspect: f32) -> egui::Vec2 {
    let width = (available.x - GAP * (columns as f32 - 1.0)) / columns as f32;
    let row_height = (available.y - TEXT_HEIGHT - 24.0 * image_rows as f32) / image_rows as f32;
    let w = width.min(row_height / aspect).max(48.0);
    egui::vec2(w, w * aspect)
}

/// How the compare view arranges its methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Side by side, text under the images.
    Columns,
    /// One above the other, text beside the images (wide photos).
    Rows,
}

/// The arrangement that gives the larger panels, and their size: `columns` methods (the full
/// model's included), `image_rows` images each, a photo `aspect` (`h / w`) high. In rows, the
/// images share the width beside the text, and a row is at least the text's height (the view
/// scrolls if the rows need more than the height).
pub fn layout(available: egui::Vec2, columns: usize, image_rows: usize, aspect: f32) -> (egui::Vec2, Layout) {
    let by_columns = panel_size(available, columns, image_rows, aspect);
    let n = image_rows as f32;
    let width = (available.x - TEXT_WIDTH - GAP * n - 16.0) / n;
    // Rows as high as the height allows, but never under the text's height.
    let row_h = ((available.y - GAP * columns as f32) / columns as f32).max(TEXT_HEIGHT - 40.0);
    let w = width.min(row_h / aspect).max(48.0);
    let by_rows = egui::vec2(w, w * aspect);
    // Rows only where they make the panels clearly larger (wide photos).
    if by_rows.x > 1.2 * by_columns.x { (by_rows, Layout::Rows) } else { (by_columns, Layout::Columns) }
}

/// Puts `maps` on one colour scale (the compare export's, [`crate::export::share_scale`]), as a
/// fixed-range norm.
pub fn shared_scale(mut maps: Vec<Option<ValueMap>>, scale: MapScale) -> (Vec<Option<ValueMap>>, Norm) {
    let (lo, hi) = crate::export::share_scale(maps.iter_mut().flatten().map(|m| &mut m.values), scale);
    (maps, Norm::Range { lo, hi })
}

/// Per metric, the best of the methods' (the compare grid export's rule).
pub use crate::figures::best_values;

/// One method's metrics, the ones it is best at (or tied best) in green.
fn metrics_ui(ui: &mut egui::Ui, f: &Fidelity, best: &[Option<f64>]) {
    let green = Color32::from_rgb(70, 200, 110);
    egui::Grid::new(ui.next_auto_id()).num_columns(2).striped(true).show(ui, |ui| {
        for (m, best) in figures::METRICS.iter().zip(best) {
            let v = (m.get)(f);
            ui.label(RichText::new(m.name).small()).on_hover_text(m.hint);
            let text = RichText::new(if v.is_finite() { format!("{v:.4}") } else { "n/a".into() }).monospace();
            if *best == Some(v) {
                ui.label(text.color(green).strong()).on_hover_text("the best of the methods shown");
            } else {
                ui.label(text);
            }
            ui.end_row();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fidelity(pearson: f64, l1: f64) -> Fidelity {
        Fidelity {
            output_l1: l1,
            output_pearson: pearson,
            output_iou_top20: 0.5,
            cls_cosine: f64::NAN,
            patch_cosine_mean: 0.9,
            top1_agrees: None,
            kl_divergence: None,
        }
    }

    #[test]
    fn the_best_metric_is_the_highest_or_the_lowest_as_it_should_be() {
        let (a, b, c) = (fidelity(0.9, 0.2), fidelity(0.95, 0.1), fidelity(0.3, 0.05));
        let best = best_values(&[Some(&a), None, Some(&b), Some(&c)]);
        assert_eq!(best[0], Some(0.95), "Pearson: higher is better");
        assert_eq!(best[1], Some(0.05), "L1: lower is better");
        assert_eq!(best[2], Some(0.5), "a tie: every column reaching it is best");
        assert_eq!(best[3], None, "no finite value, no best");
    }

    #[test]
    fn panels_fill_the_width_or_the_height() {
        // Wide window, square photo, 5 columns: the width binds and is used up.
        let p = panel_size(egui::vec2(1000.0, 900.0), 5, 2, 1.0);
        assert!((5.0 * p.x + 4.0 * GAP - 1000.0).abs() < 0.01, "{p:?}");
        // Short window: the height binds; the images and the text fill it.
        let p = panel_size(egui::vec2(1600.0, 600.0), 3, 2, 1.0);
        assert!((2.0 * p.y + TEXT_HEIGHT + 48.0 - 600.0).abs() < 0.01, "{p:?}");
    }

    #[test]
    fn wide_photos_lay_the_methods_out_in_rows() {
        // A 3:1 photo, 5 columns in 1060 x 760 points: side by side the images are 204 px
        // wide, over a band of some 400 px left empty; as rows they are nearly twice as large.
        let avail = egui::vec2(1060.0, 760.0);
        let (cols, layout_cols) = layout(avail, 5, 2, 1.0 / 3.0);
        assert_eq!(layout_cols, Layout::Rows);
        assert!(cols.x >= 1.8 * panel_size(avail, 5, 2, 1.0 / 3.0).x, "{cols:?}");
        // Rows of images beside their text fit the width.
        assert!(2.0 * cols.x + TEXT_WIDTH + 2.0 * GAP <= avail.x, "{cols:?}");
        // A square photo keeps its columns.
        assert_eq!(layout(avail, 5, 2, 1.0).1, Layout::Columns);
        assert_eq!(layout(avail, 3, 2, 300.0 / 451.0).1, Layout::Columns);
    }

    /// The app on the compare view of the tiny ViT fixture (4 x 4 patches, 2 layers, labels
    /// out): its analysis of chelsea.png and the four default methods' runs, as the worker
    /// hands them over.
    fn compare_app(ctx: &egui::Context) -> TokenlensApp {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let model = crate::model::ModelSource::File(root.join("tests/fixtures/encoders/vit"));
        let session = crate::session::Session::load(&model, &mut |_| {}).unwrap();
        let label = root.join("assets/chelsea.png");
        let input = session.open_image(&label).unwrap();
        let cancel = crate::Cancel::default();
        let full = session.full_run(&input.prepared.pixels, &cancel).unwrap();
        let analysis = session.analysis_of(&full).unwrap();
        let settings = super::super::Settings { tab: super::super::Tab::Compare, ..Default::default() };
        let runs = settings
            .compare_specs()
            .iter()
            .map(|s| Arc::new(session.run_against(&full, s, &cancel).unwrap()))
            .collect();
        let mut app = TokenlensApp::new(ctx, model, Some(label.clone()), settings);
        app.results.opened = Some(Arc::new(super::super::Opened { label, input, analysis }));
        app.results.compared.value = Some(runs);
        app
    }

    fn frame(ctx: &egui::Context, app: &mut TokenlensApp, events: Vec<egui::Event>) -> egui::FullOutput {
        let screen = egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(1200.0, 800.0));
        let input = egui::RawInput { screen_rect: Some(screen), events, ..Default::default() };
        ctx.run_ui(input, |ui| compare_ui(app, ui))
    }

    /// Every shape of a frame, nested ones included.
    fn shapes(out: &egui::FullOutput) -> Vec<egui::Shape> {
        fn flat(shape: &egui::Shape, all: &mut Vec<egui::Shape>) {
            match shape {
                egui::Shape::Vec(v) => v.iter().for_each(|s| flat(s, all)),
                s => all.push(s.clone()),
            }
        }
        let mut all = Vec::new();
        out.shapes.iter().for_each(|c| flat(&c.shape, &mut all));
        all
    }

    /// Where the texture of `slot` is drawn.
    fn drawn_at(app: &TokenlensApp, out: &egui::FullOutput, slot: &str) -> egui::Rect {
        let id = app.runtime.textures.handle(slot).unwrap_or_else(|| panic!("no texture {slot}")).id();
        let found = shapes(out).into_iter().find(|s| s.texture_id() == id);
        found.unwrap_or_else(|| panic!("{slot} is not drawn")).visual_bounding_rect()
    }

    #[test]
    fn the_full_model_column_shows_every_patch_kept_as_the_export_does() {
        let ctx = egui::Context::default();
        let mut app = compare_app(&ctx);
        let out = frame(&ctx, &mut app, Vec::new());
        let id = app.runtime.textures.handle("cmp_main_0").unwrap().id();
        let deltas = out.textures_delta.set.get(&id).expect("uploaded this frame");
        let egui::ImageData::Color(shown) = &deltas[0].image;
        // What the export's full-model column draws (`figures::every_patch_kept`), not the photo.
        let opened = app.results.opened.clone().unwrap();
        let grid = opened.analysis.grid;
        let want = figures::full_tokens_body(&opened.input, grid, PANEL_SIDE);
        let want = egui::ColorImage::from_rgb([want.width() as usize, want.height() as usize], want.as_raw());
        assert!(shown.size == want.size && shown.pixels == want.pixels, "the app's full column is not the export's");
        // It is the photo under the token grid's white outlines: the legend's "kept".
        let photo = crate::render::heat::scale_photo(&opened.input.photo, PANEL_SIDE);
        let outlined = (0..photo.height())
            .flat_map(|y| (0..photo.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let p = shown.pixels[(y * photo.width() + x) as usize];
                [p.r(), p.g(), p.b()] == [255; 3] && photo.get_pixel(x, y).0 != [255; 3]
            })
            .count();
        assert!(outlined > (photo.width() + photo.height()) as usize, "no token outlines: {outlined} px");
    }

    #[test]
    fn hovering_a_patch_outlines_it_in_every_panel() {
        let ctx = egui::Context::default();
        let mut app = compare_app(&ctx);
        let out = frame(&ctx, &mut app, Vec::new());
        let columns = app.settings.compare.len() + 1;
        let images: Vec<egui::Rect> = (0..columns).map(|c| drawn_at(&app, &out, &format!("cmp_main_{c}"))).collect();
        let white = |s: &egui::Shape| match s {
            egui::Shape::Rect(r) => r.stroke.width == 2.0 && r.stroke.color == egui::Color32::WHITE,
            _ => false,
        };
        assert!(!shapes(&out).iter().any(white), "nothing outlined before the pointer comes");
        // The pointer over ToMe's panel (the second column), a quarter in from its top-left.
        let over = images[1].min + images[1].size() * 0.3;
        let frame_of = super::GridFrame::of(&app.results.opened.as_ref().unwrap().input, [4, 4]);
        let patch = patch_at(&frame_of, images[1], over).expect("over a patch");
        let mut out = frame(&ctx, &mut app, vec![egui::Event::PointerMoved(over)]);
        for _ in 0..3 {
            out = frame(&ctx, &mut app, Vec::new());
        }
        assert_eq!(app.screen.compare_hover, Some(patch));
        // One outline per panel, each at the same place within its panel.
        let outlines: Vec<egui::Rect> = shapes(&out)
            .iter()
            .filter(|s| white(s))
            .map(|s| if let egui::Shape::Rect(r) = s { r.rect } else { unreachable!() })
            .collect();
        assert_eq!(outlines.len(), columns, "{outlines:?}");
        let within = |r: egui::Rect, image: egui::Rect| (r.min - image.min) / image.size();
        let at = within(outlines[1], images[1]);
        for (c, image) in images.iter().enumerate() {
            let o = outlines.iter().find(|o| image.contains_rect(**o)).unwrap_or_else(|| panic!("column {c}"));
            assert!((within(*o, *image) - at).length() < 0.01, "column {c}: {o:?} in {image:?}");
        }
    }

    #[test]
    fn compare_maps_share_one_scale() {
        let map = |values: Vec<f32>| Some(ValueMap { title: "t".into(), values });
        let (maps, norm) = shared_scale(vec![map(vec![0.0, 1.0]), None, map(vec![2.0, 4.0])], MapScale::MinMax);
        assert_eq!(norm, Norm::Range { lo: 0.0, hi: 4.0 });
        assert_eq!(maps[2].as_ref().unwrap().values, [2.0, 4.0]);
        let (maps, norm) = shared_scale(vec![map(vec![0.01, 1.0]), map(vec![10.0])], MapScale::Log);
        let Norm::Range { lo, hi } = norm else { panic!("{norm:?}") };
        assert!((lo + 2.0).abs() < 1e-5 && (hi - 1.0).abs() < 1e-6, "{lo} {hi}");
        let v = &maps[0].as_ref().unwrap().values;
        assert!((v[0] + 2.0).abs() < 1e-5 && v[1] == 0.0, "{v:?}");
    }
}
