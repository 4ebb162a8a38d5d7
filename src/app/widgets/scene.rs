//! The photo with a model's token grid over it, as every view draws it: the pan-and-zoom scene,
//! the patch under the pointer and its tooltip, merge-group outlines, HiPrune's role marks, the
//! token legend, the value maps an overlay shows and their colour bar.

use eframe::egui;
use egui::{Color32, Pos2, Rect, Stroke};

use crate::app::{Head, MapScale, MapSource, Overlay};
use crate::figures;
use crate::reduce::hiprune::Role;
use crate::render::{Colormap, Placement};
use crate::session::ImageInput;

/// A per-patch value map for the current overlay, with a legend title.
#[derive(Clone)]
pub struct ValueMap {
    pub title: String,
    pub values: Vec<f32>,
}

/// The map `overlay` shows, from the full model's `analysis` or from `run`'s reduced model
/// (`source`), titled with where it comes from.
pub fn map_of(
    a: &crate::session::Analysis,
    run: Option<&crate::session::EncoderRun>,
    overlay: Overlay,
    layer: usize,
    head: Head,
    source: MapSource,
) -> Option<ValueMap> {
    let layer = layer.min(a.cls_attention.len() - 1);
    let attention = if a.num_special > 0 { "CLS attention" } else { "Attention received" };
    let (from, maps) = match source {
        MapSource::Full => ("full model".to_string(), None),
        MapSource::Reduced if overlay.has_source() => {
            // No maps: the method changed no block, so the full model's are the reduced one's.
            let run = run?;
            let maps = match &run.maps {
                Some(lazy) => Some(lazy.get().ok()?),
                None => None,
            };
            (figures::reduced_label(run), maps)
        }
        MapSource::Reduced => (String::new(), None),
    };
    let figures::MapsRef { cls_attention, cls_attention_heads, rollout, token_norms } =
        maps.map_or_else(|| figures::MapsRef::of_analysis(a), figures::MapsRef::of_run);
    Some(match overlay {
        Overlay::Attention => match head {
            Head::Mean => ValueMap {
                title: format!("{attention}, layer {layer}, mean of heads ({from})"),
                values: cls_attention.get(layer)?.clone(),
            },
            Head::One(h) => ValueMap {
                title: format!("{attention}, layer {layer}, head {h} ({from})"),
                values: cls_attention_heads.get(layer)?.get(h)?.clone(),
            },
        },
        Overlay::Rollout => {
            ValueMap { title: format!("Attention rollout, all layers ({from})"), values: rollout.to_vec() }
        }
        Overlay::TokenNorms => ValueMap {
            title: format!("Token norms after layer {layer} ({from})"),
            values: token_norms.get(layer)?.clone(),
        },
        Overlay::Scores => {
            let run = run?;
            let scores = run.scores.as_ref()?;
            ValueMap {
                title: format!("{} score: {}", run.reducer().info().label, figures::score_name(run.reducer())),
                values: scores.iter().map(|v| v.unwrap_or(f32::NAN)).collect(),
            }
        }
        Overlay::Tokens => return None,
    })
}

/// One role's mark in a patch's rectangle: anchors a filled dot, buffers a ring, registers a
/// small hollow square.
pub fn mark_role(painter: &egui::Painter, rect: Rect, role: Role) {
    let r = 0.3 * rect.width().min(rect.height());
    match role {
        Role::Anchor => {
            painter.circle(rect.center(), r, Color32::from_rgb(255, 150, 0), Stroke::new(1.0, Color32::BLACK));
        }
        Role::Buffer => {
            painter.circle_stroke(rect.center(), r, Stroke::new(1.5, Color32::from_rgb(255, 210, 60)));
        }
        Role::Register => {
            // Hollow: registers are most of the kept patches, and the photo must stay visible.
            let square = Rect::from_center_size(rect.center(), egui::vec2(r, r));
            painter.rect_stroke(
                square,
                0.0,
                Stroke::new(1.5, Color32::from_rgb(80, 200, 255)),
                egui::StrokeKind::Outside,
            );
        }
    }
}

/// What each way of drawing a token means, as a row of swatches drawn like the figure draws it:
/// kept (the photo, outlined), merged (tinted) or, for pruning methods, fused (tinted, hatched),
/// and dropped (faded).
/// The middle swatch only where it applies: merge methods, or a run that fused some patches.
/// `note`: the tokens the view leaves out, as the exported figure says it under its key.
pub fn token_legend(ui: &mut egui::Ui, merges: bool, groups: &[Vec<u32>], note: Option<&str>) {
    let fused = !merges;
    let shows_groups = merges || groups.iter().any(|g| g.len() > 1);
    let photo = egui::Color32::from_rgb(150, 130, 100);
    let tint = egui::Color32::from_rgb(110, 120, 160);
    let faded = egui::Color32::from_rgb(62, 57, 49); // `photo` 75 % towards #202020
    let white = egui::Stroke::new(1.5, egui::Color32::WHITE);
    let swatch = |ui: &mut egui::Ui, fill: egui::Color32, outline: bool, hatch: bool, label: &str, tip: &str| {
        let (rect, _) = ui.allocate_exact_size(egui::vec2(14.0, 14.0), egui::Sense::hover());
        let painter = ui.painter();
        painter.rect_filled(rect, 0.0, fill);
        if hatch {
            for i in 0..4 {
                let x = rect.left() + i as f32 * 5.0;
                painter.line_segment([Pos2::new(x, rect.bottom()), Pos2::new(x + 14.0, rect.top())], white);
            }
        }
        if outline {
            painter.rect_stroke(rect, 0.0, white, egui::StrokeKind::Inside);
        }
        ui.label(label).on_hover_text(tip);
    };
    ui.horizontal(|ui| {
        ui.spacing_mut().item_spacing.x = 4.0;
        swatch(ui, photo, true, false, "kept  ", "a patch kept as itself: the photo, outlined");
        if shows_groups && fused {
            swatch(ui, tint, true, true, "fused  ", "patches fused into one token: tinted by opacity, hatched");
        } else if shows_groups {
            swatch(ui, tint, true, false, "merged  ", "patches merged into one token: tinted by opacity, outlined");
        }
        swatch(ui, faded, false, false, "dropped", "a patch no token carries: faded");
        if let Some(note) = note {
            ui.label(egui::RichText::new(format!("· {note}")).small().weak());
        }
    });
}

/// A grid of tokens over a photo: the photo's size, where the grid's canvas lies, its shape.
#[derive(Debug, Clone, Copy)]
pub struct GridFrame {
    pub photo: (u32, u32),
    pub place: Placement,
    pub grid: [usize; 2],
}

impl GridFrame {
    pub fn of(input: &ImageInput, grid: [usize; 2]) -> Self {
        Self { photo: input.photo.dimensions(), place: figures::grid_placement(input, grid), grid }
    }
}

/// The image in a pan-and-zoom scene; under the pointer, the token's outline (and its merge
/// group's) and a tooltip with `info(token)`. A double-click fits the image again.
pub fn image_scene_ui(
    ui: &mut egui::Ui,
    scene_rect: &mut Rect,
    tex: &egui::TextureHandle,
    frame: &GridFrame,
    groups: Option<&[Vec<u32>]>,
    roles: &[Option<Role>],
    info: impl Fn(usize) -> String,
) {
    let size = tex.size_vec2();
    // The scroll wheel zooms, as the help says (egui's default pans; drag pans).
    let response = egui::Scene::new().zoom_range(0.2..=12.0).scroll_zooms(true).show(ui, scene_rect, |ui| {
        let img = ui.add(egui::Image::new(tex).fit_to_exact_size(size).sense(egui::Sense::click()));
        for (patch, role) in roles.iter().enumerate() {
            if let Some(role) = role {
                mark_role(ui.painter(), patch_rect(frame, img.rect, patch), *role);
            }
        }
        if let Some(pos) = img.hover_pos()
            && let Some(patch) = patch_at(frame, img.rect, pos)
        {
            highlight(ui, frame, img.rect, patch, groups);
            let info = info(patch);
            img.clone().on_hover_ui_at_pointer(|ui| {
                ui.label(info);
            });
        }
        img.double_clicked()
    });
    if response.inner {
        *scene_rect = Rect::ZERO; // fit again
    }
}

/// The patch under `pos`, if the point is on the model's grid.
pub fn patch_at(frame: &GridFrame, image_rect: Rect, pos: Pos2) -> Option<usize> {
    let ((pw, ph), place, grid) = (frame.photo, frame.place, frame.grid);
    // Screen -> photo pixels -> grid cell.
    let x = (pos.x - image_rect.left()) / image_rect.width() * pw as f32;
    let y = (pos.y - image_rect.top()) / image_rect.height() * ph as f32;
    let col = ((x - place.x0) / (place.x1 - place.x0) * grid[1] as f32).floor();
    let row = ((y - place.y0) / (place.y1 - place.y0) * grid[0] as f32).floor();
    let inside = (0.0..grid[1] as f32).contains(&col) && (0.0..grid[0] as f32).contains(&row);
    inside.then(|| row as usize * grid[1] + col as usize)
}

/// The screen rectangle of a patch (clipped to the photo).
fn patch_rect(frame: &GridFrame, image_rect: Rect, patch: usize) -> Rect {
    let ((pw, ph), place, grid) = (frame.photo, frame.place, frame.grid);
    let (row, col) = ((patch / grid[1]) as f32, (patch % grid[1]) as f32);
    let cell_w = (place.x1 - place.x0) / grid[1] as f32;
    let cell_h = (place.y1 - place.y0) / grid[0] as f32;
    let to_screen = |x: f32, y: f32| {
        Pos2::new(
            image_rect.left() + x.clamp(0.0, pw as f32) / pw as f32 * image_rect.width(),
            image_rect.top() + y.clamp(0.0, ph as f32) / ph as f32 * image_rect.height(),
        )
    };
    let (x0, y0) = (place.x0 + col * cell_w, place.y0 + row * cell_h);
    Rect::from_min_max(to_screen(x0, y0), to_screen(x0 + cell_w, y0 + cell_h))
}

/// Outlines the hovered patch and, if it was merged, every patch of its group.
pub fn highlight(ui: &egui::Ui, frame: &GridFrame, image_rect: Rect, patch: usize, groups: Option<&[Vec<u32>]>) {
    let painter = ui.painter();
    if let Some(group) = groups.and_then(|gs| gs.iter().find(|g| g.contains(&(patch as u32))))
        && group.len() > 1
    {
        for &p in group {
            painter.rect_stroke(
                patch_rect(frame, image_rect, p as usize),
                0.0,
                Stroke::new(1.5, Color32::from_rgb(255, 200, 0)),
                egui::StrokeKind::Inside,
            );
        }
    }
    painter.rect_stroke(
        patch_rect(frame, image_rect, patch),
        0.0,
        Stroke::new(2.0, Color32::WHITE),
        egui::StrokeKind::Outside,
    );
}

/// What a reduced run did to the tokens: the method, its score per patch, the original
/// tokens each surviving token carries, and the patch's role (HiPrune).
pub struct Fate<'a> {
    pub method: String,
    pub scores: Option<&'a [Option<f32>]>,
    pub groups: &'a [Vec<u32>],
    pub role: Option<Role>,
}

/// "patch 37 (row 2, col 5) · value 0.0123, rank 4 of 256 · merged with 3 other patches".
pub fn patch_info(patch: usize, grid: [usize; 2], map: Option<&ValueMap>, fate: Option<Fate>) -> String {
    let mut lines = vec![format!("patch {patch}  (row {}, col {})", patch / grid[1], patch % grid[1])];
    if let Some(m) = map
        && let Some(&v) = m.values.get(patch)
        && v.is_finite()
    {
        let rank = 1 + m.values.iter().filter(|&&o| o > v).count();
        lines.push(format!("{}: {v:.5}  (rank {rank} of {})", short_title(&m.title), m.values.len()));
    }
    if let Some(f) = fate {
        if let Some(scores) = f.scores
            && let Some(score) = scores.get(patch).copied().flatten()
        {
            // Rank 1 = the highest score; patches without a score are not ranked.
            let ranked = scores.iter().flatten().filter(|v| v.is_finite());
            let rank = 1 + ranked.clone().filter(|&&o| o > score).count();
            lines.push(format!("{} score: {score:.5}  (rank {rank} of {})", f.method, ranked.count()));
        }
        let what = match f.groups.iter().position(|g| g.contains(&(patch as u32))) {
            None => "dropped".to_string(),
            Some(i) if f.groups[i].len() == 1 => match f.role {
                Some(role) => format!("kept (token {i}), {}", format!("{role:?}").to_lowercase()),
                None => format!("kept (token {i})"),
            },
            Some(i) => {
                let others = f.groups[i].len() - 1;
                format!("merged into token {i} with {others} other patch{}", if others == 1 { "" } else { "es" })
            }
        };
        lines.push(format!("{}: {what}", f.method));
    }
    lines.join("\n")
}

fn short_title(title: &str) -> &str {
    title.split(',').next().unwrap_or(title)
}

pub fn finite_range(values: &[f32]) -> Option<(f32, f32)> {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let lo = finite.clone().fold(f32::INFINITY, f32::min);
    let hi = finite.fold(f32::NEG_INFINITY, f32::max);
    (lo <= hi).then_some((lo, hi))
}

/// The colour scale of a map of `values` under `scale`: the range it spans, its colours, its name.
pub fn colorbar_ui(ui: &mut egui::Ui, colormap: Colormap, scale: MapScale, values: &[f32]) {
    if finite_range(values).is_none() {
        return;
    }
    let heat = crate::render::Heatmap::new(1, values.len(), values.to_vec());
    let (lo, hi) = scale.norm().resolve(&heat);
    let (ends, name) = (bar_ends(lo, hi, scale == MapScale::Log), scale.label());
    bar_ui(ui, colormap, ends, name);
}

/// A colour bar over `lo..hi` (with `log10`: the log10 of the maps' values, as the compare view
/// shares a log scale), its ends in the maps' own units.
pub fn colorbar_range_ui(ui: &mut egui::Ui, colormap: Colormap, (lo, hi): (f32, f32), log10: bool, name: &str) {
    let ends = if log10 { bar_ends(10f32.powf(lo), 10f32.powf(hi), true) } else { bar_ends(lo, hi, false) };
    bar_ui(ui, colormap, ends, name);
}

/// The end labels of a bar from `lo` to `hi` (values, not their logs): a log scale's as its
/// ticks in exports (0.00012, 0.250), a linear one's with the decimals that tell them apart.
pub fn bar_ends(lo: f32, hi: f32, log: bool) -> [String; 2] {
    match log {
        true => [crate::render::heat::log_tick_label(lo), crate::render::heat::log_tick_label(hi)],
        false => {
            let labels = crate::render::tick_labels(&[lo, hi]);
            [labels[0].clone(), labels[1].clone()]
        }
    }
}

/// A horizontal colour bar between its end labels, then the scale's name.
fn bar_ui(ui: &mut egui::Ui, colormap: Colormap, [lo, hi]: [String; 2], name: &str) {
    ui.label(egui::RichText::new(lo).small().monospace());
    let (rect, _) = ui.allocate_exact_size(egui::vec2(160.0, 12.0), egui::Sense::hover());
    let steps = 64;
    for i in 0..steps {
        let t = i as f32 / (steps - 1) as f32;
        let [r, g, b] = colormap.rgb(t);
        let x0 = rect.left() + rect.width() * i as f32 / steps as f32;
        let x1 = rect.left() + rect.width() * (i + 1) as f32 / steps as f32;
        ui.painter().rect_filled(
            Rect::from_min_max(Pos2::new(x0, rect.top()), Pos2::new(x1 + 0.5, rect.bottom())),
            0.0,
            Color32::from_rgb(r, g, b),
        );
    }
    ui.label(egui::RichText::new(hi).small().monospace());
    ui.label(egui::RichText::new(name).small().weak());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::preprocess;

    fn input(w: u32, h: u32) -> ImageInput {
        let photo = image::RgbImage::from_pixel(w, h, image::Rgb([90, 120, 150]));
        let prepared = preprocess::prepare(&photo, 224, &candle_core::Device::Cpu).unwrap();
        ImageInput { photo, prepared, sha256: String::new() }
    }

    #[test]
    fn the_scroll_wheel_zooms_as_the_help_says() {
        // The image under the pointer: a wheel turn changes the scene's scale, not only its place.
        let ctx = egui::Context::default();
        let tex = ctx.load_texture(
            "t",
            egui::ColorImage::new([64, 48], vec![egui::Color32::GRAY; 64 * 48]),
            Default::default(),
        );
        let frame = GridFrame::of(&input(64, 48), [4, 4]);
        let mut scene_rect = Rect::ZERO;
        let screen = Rect::from_min_size(Pos2::ZERO, egui::vec2(400.0, 300.0));
        let frame_with = |events: Vec<egui::Event>, scene_rect: &mut Rect| {
            let input = egui::RawInput { screen_rect: Some(screen), events, ..Default::default() };
            let _ = ctx.run_ui(input, |ui| {
                image_scene_ui(ui, scene_rect, &tex, &frame, None, &[], |_| String::new());
            });
        };
        let centre = screen.center();
        frame_with(vec![egui::Event::PointerMoved(centre)], &mut scene_rect);
        frame_with(vec![egui::Event::PointerMoved(centre)], &mut scene_rect);
        let before = scene_rect;
        let wheel = egui::Event::MouseWheel {
            unit: egui::MouseWheelUnit::Line,
            delta: egui::vec2(0.0, 3.0),
            modifiers: egui::Modifiers::NONE,
            phase: egui::TouchPhase::Move,
            source: egui::MouseWheelSource::Unknown,
        };
        frame_with(vec![wheel], &mut scene_rect);
        for _ in 0..20 {
            frame_with(Vec::new(), &mut scene_rect);
        }
        assert!(before.width() > 0.0, "{before:?}");
        assert!(scene_rect.width() < 0.95 * before.width(), "zoomed in: {before:?} -> {scene_rect:?}");
    }

    #[test]
    fn the_pointer_maps_to_the_patch_under_it() {
        // A 448 x 224 photo sits in the middle rows of the canvas: the 16 x 16 grid covers
        // y from -112 to 336 in photo pixels, so the photo shows grid rows 4..12.
        let input = input(448, 224);
        let rect = Rect::from_min_size(Pos2::new(100.0, 50.0), egui::vec2(448.0, 224.0)); // 1 px per photo px
        let frame = GridFrame::of(&input, [16, 16]);
        let at = |x: f32, y: f32| patch_at(&frame, rect, Pos2::new(100.0 + x, 50.0 + y));
        assert_eq!(at(0.5, 0.5), Some(4 * 16));
        assert_eq!(at(447.5, 223.5), Some(11 * 16 + 15));
        assert_eq!(at(28.5, 0.5), Some(4 * 16 + 1)); // 28 photo px = one 14 px canvas cell
        assert_eq!(at(-1.0, 10.0), None);
        // And back: a patch's screen rectangle contains the point that found it.
        let r = patch_rect(&frame, rect, 4 * 16 + 1);
        assert!(r.contains(Pos2::new(128.5, 50.5)), "{r:?}");
    }

    #[test]
    fn the_tooltip_tells_value_rank_and_fate() {
        let map = ValueMap { title: "CLS attention, layer 3".into(), values: vec![0.1, 0.4, 0.2, 0.3] };
        let text = patch_info(2, [2, 2], Some(&map), None);
        assert!(text.contains("patch 2  (row 1, col 0)"), "{text}");
        assert!(text.contains("CLS attention: 0.20000  (rank 3 of 4)"), "{text}");
    }

    #[test]
    fn the_token_tooltip_tells_the_score_rank_and_hipruning_role() {
        // The token view has no value map: the rank comes from the method's scores.
        let scores = [Some(0.5), None, Some(0.9), Some(0.7)];
        let groups = vec![vec![0], vec![2]];
        let fate = Fate { method: "HiPrune".into(), scores: Some(&scores), groups: &groups, role: Some(Role::Anchor) };
        let text = patch_info(0, [2, 2], None, Some(fate));
        assert!(text.contains("HiPrune score: 0.50000  (rank 3 of 3)"), "{text}");
        assert!(text.contains("HiPrune: kept (token 0), anchor"), "{text}");
    }

    #[test]
    fn colour_bar_ends_read_in_the_maps_units() {
        // A log scale's small end read "0.000" (three decimals): now three significant digits.
        assert_eq!(bar_ends(0.000_123_4, 0.5, true), ["1.23e-4", "0.500"]);
        assert_eq!(bar_ends(0.0, 0.25, false), ["0.000", "0.250"]);
    }

    #[test]
    fn colour_range_ignores_missing_values() {
        assert_eq!(finite_range(&[f32::NAN, 0.5, -1.0, f32::INFINITY]), Some((-1.0, 0.5)));
        assert_eq!(finite_range(&[f32::NAN]), None);
    }
}
