//! VLM mode's main view: the photo with the image-token grid (each language-model image token
//! over the patches it came from) and the chosen overlay: kept / merged tokens, the method's
//! scores, the vision saliency, or what one answer token looked at.

use eframe::egui;

use super::TokenlensApp;
use super::vlm::{Pick, VlmOverlay, VlmState, method_label, run_label};
use super::widgets::{Fate, GridFrame, ValueMap, colorbar_ui, image_scene_ui, patch_info, shown_piece, token_legend};
use super::worker::VlmOpened;
use crate::figures;
use crate::render::Placement;
use crate::session::vlm::VlmRun;

const VIEW_SIDE: u32 = 768;

/// The image-token grid over the photo.
pub fn frame(opened: &VlmOpened) -> GridFrame {
    let [x0, y0, x1, y1] = opened.image.place;
    GridFrame { photo: opened.image.photo.dimensions(), place: Placement { x0, y0, x1, y1 }, grid: opened.grid }
}

/// The answer token `pick` refers to, and the run it belongs to.
fn picked_run<'a>(vlm: &'a VlmState, opened: &'a VlmOpened, pick: Pick) -> Option<&'a VlmRun> {
    if pick.reduced { vlm.run.value.as_deref().filter(|_| !vlm.run.pending) } else { Some(&opened.run) }
}

/// The per-token values the overlay shows (none for the token view), with a legend title.
pub fn value_map(vlm: &VlmState, opened: &VlmOpened, overlay: VlmOverlay, method: &str) -> Option<ValueMap> {
    match overlay {
        VlmOverlay::Tokens => None,
        VlmOverlay::Saliency => Some(ValueMap {
            title: "Vision saliency (the tower's attention to each image token)".into(),
            values: opened.saliency.clone(),
        }),
        VlmOverlay::Scores => {
            let scores = vlm.run.value.as_ref()?.scores.as_ref()?;
            Some(ValueMap {
                title: format!("{method} score per image token"),
                values: scores.iter().map(|v| v.unwrap_or(f32::NAN)).collect(),
            })
        }
        VlmOverlay::TextToImage => {
            let pick = vlm.shown_pick()?;
            let run = picked_run(vlm, opened, pick)?;
            let attention = run.answer.image_attention.get(pick.index)?;
            let piece = run.answer.pieces.get(pick.index).map_or(String::new(), |p| shown_piece(p));
            let side = if pick.reduced { "reduced" } else { "full" };
            let layer = run.spec.view_layer.unwrap_or(vlm.num_layers / 2);
            Some(ValueMap {
                title: format!(
                    "“{piece}” ({side} answer, token {}): its attention to the image, decoder layer {layer}",
                    pick.index
                ),
                values: attention.iter().map(|v| v.unwrap_or(f32::NAN)).collect(),
            })
        }
    }
}

pub fn view_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    app.runtime.textures.begin_frame();
    let Some(vlm) = app.vlm.as_ref() else { return };
    let Some(opened) = vlm.opened().cloned() else {
        ui.centered_and_justified(|ui| {
            if vlm.full.pending {
                ui.spinner();
            } else if app.screen.error.is_some() {
                ui.label(egui::RichText::new("No answer: see the error below").heading().weak());
            } else {
                ui.label(egui::RichText::new("Open an image (Ctrl+O) or drop a PNG or JPEG here").heading().weak());
            }
        });
        return;
    };
    let s = app.settings.clone();
    // Every label names the run it describes (the settings may ask for another by now).
    let run = vlm.run.value.clone();
    let method = run.as_ref().and_then(|r| r.spec.method.as_ref()).map_or_else(|| "full model".into(), method_label);
    let run_pending = vlm.run.pending;
    let map = value_map(vlm, &opened, s.vlm.overlay, &method);
    let frame = frame(&opened);

    // Wrapped: a long run label (FastV's "nothing removed in any of …") must not widen the view.
    ui.horizontal_wrapped(|ui| match (&map, s.vlm.overlay, &run) {
        (Some(m), _, _) => {
            ui.strong(&m.title);
            colorbar_ui(ui, s.colormap, s.scale, &m.values);
        }
        (None, VlmOverlay::Tokens, Some(r)) => {
            let merged = r.groups.iter().filter(|g| g.len() > 1).count();
            let dropped = r.num_image_tokens - r.groups.iter().map(Vec::len).sum::<usize>();
            ui.strong(run_label(r));
            ui.label(format!(
                "· {}×{} image tokens · kept {} · merged {} · dropped {dropped} · stage {}",
                opened.grid[0],
                opened.grid[1],
                r.kept.len(),
                crate::render::text::count(merged, "group", "groups"),
                r.stage
            ));
        }
        (None, VlmOverlay::Scores, Some(_)) => {
            ui.strong(format!("{method} has no score map"));
        }
        (None, VlmOverlay::TextToImage, _) => {
            ui.strong("Hover or click a token of an answer to see what it looked at");
        }
        _ if run_pending => {
            ui.label("waiting for the reduced run…");
        }
        _ => {
            ui.label("no reduced run: see the error below");
        }
    });

    let key_common = format!("{:?}|{}|{:?}|{}|{:?}", opened.label, opened.question, s.colormap, s.opacity, s.scale);
    let tex = match (&map, &run) {
        (Some(m), _) => Some(app.runtime.textures.get(
            ui.ctx(),
            "vlm_main",
            format!("{key_common}|{}|{:?}", m.title, run.as_ref().map(|r| r.spec.clone())),
            || {
                figures::grid_map_body_at(
                    &opened.image.photo,
                    frame.place,
                    opened.grid,
                    &m.values,
                    s.colormap,
                    s.scale.norm(),
                    s.opacity,
                    VIEW_SIDE,
                )
            },
        )),
        (None, Some(r)) => {
            let merges = matches!(&r.spec.method, Some(crate::reduce::Method::Vision(c)) if c.info().merges)
                || r.groups.iter().any(|g| g.len() > 1);
            Some(app.runtime.textures.get(ui.ctx(), "vlm_main", format!("{key_common}|tokens|{:?}", r.spec), || {
                figures::groups_body_at(
                    &opened.image.photo,
                    frame.place,
                    opened.grid,
                    &r.groups,
                    merges,
                    s.opacity,
                    VIEW_SIDE,
                )
            }))
        }
        // No reduced run yet (or no token picked): the plain photo under the grid.
        (None, None) => Some(app.runtime.textures.get(ui.ctx(), "vlm_main", format!("{key_common}|plain"), || {
            let nan = vec![f32::NAN; opened.grid[0] * opened.grid[1]];
            figures::grid_map_body_at(
                &opened.image.photo,
                frame.place,
                opened.grid,
                &nan,
                s.colormap,
                s.scale.norm(),
                0.0,
                VIEW_SIDE,
            )
        })),
    };
    let Some(tex) = tex else { return };
    if map.is_none()
        && let Some(r) = &run
    {
        let merges = matches!(&r.spec.method, Some(crate::reduce::Method::Vision(c)) if c.info().merges)
            || r.groups.iter().any(|g| g.len() > 1);
        let note = figures::off_grid_note((opened.grid[0], opened.grid[1]), r.num_image_tokens, &r.groups);
        token_legend(ui, merges, &r.groups, note.as_deref());
    }
    let groups = run.as_ref().map(|r| r.groups.as_slice());
    let (grid, block) = (opened.grid, opened.patch_block);
    image_scene_ui(ui, &mut app.screen.scene_rect, &tex, &frame, groups, &[], |token| {
        let fate = run.as_deref().map(|r| Fate {
            method: method.clone(),
            scores: r.scores.as_deref(),
            groups: &r.groups,
            role: None,
        });
        let info = patch_info(token, grid, map.as_ref(), fate)
            .replace("patches", "image tokens")
            .replace("patch", "image token");
        match block {
            1 => info,
            b => {
                // SmolVLM: one language-model token per b x b block of the tower's patches.
                let (r, c) = (token / grid[1], token % grid[1]);
                let covers =
                    format!("vision patches rows {}-{}, cols {}-{}", r * b, r * b + b - 1, c * b, c * b + b - 1);
                format!("{info}\n{covers}")
            }
        }
    });
}
