//! The main view: the photo with the chosen overlay, pan and zoom, a colour bar, and a tooltip
//! that tells, for the patch under the pointer, its value, rank, fate and group.

use eframe::egui;
use egui::Color32;

use super::widgets::{
    Fate, GridFrame, ValueMap, colorbar_ui, image_scene_ui, map_of, mark_role, patch_info, token_legend,
};
use super::{MapSource, Overlay, TokenlensApp};
use crate::figures;
use crate::reduce::ReducerConfig;
use crate::reduce::hiprune::{self, Role};
use crate::session::EncoderRun;

/// Longest side of the on-screen overlay, in texture pixels.
const VIEW_SIDE: u32 = 768;

/// The values the current overlay shows per patch (none for the token view, and none while the
/// reduced run a reduced-model map needs is on its way).
pub fn value_map(app: &TokenlensApp) -> Option<ValueMap> {
    let opened = app.results.opened.as_ref()?;
    let s = &app.settings;
    let run = app.results.run.value.as_deref();
    map_of(&opened.analysis, run, s.overlay, s.layer, s.head, s.source)
}

pub fn main_view_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    app.runtime.textures.begin_frame();
    let Some(opened) = app.results.opened.clone() else {
        ui.centered_and_justified(|ui| {
            if app.results.opening {
                ui.spinner();
            } else {
                ui.label(egui::RichText::new("Open an image (Ctrl+O) or drop a PNG or JPEG here").heading().weak());
            }
        });
        return;
    };
    let grid = opened.analysis.grid;
    let map = value_map(app);
    let run = app.results.run.value.clone();
    let s = app.settings.clone();

    // Header: what is shown, and its colour scale.
    ui.horizontal_wrapped(|ui| match (&map, s.overlay, &run) {
        (Some(m), _, _) => {
            ui.strong(&m.title);
            colorbar_ui(ui, s.colormap, s.scale, &m.values);
        }
        (None, Overlay::Tokens, Some(r)) => {
            ui.strong(figures::run_title(r));
            let merged: usize = r.groups.iter().filter(|g| g.len() > 1).count();
            let dropped = r.num_patches - r.groups.iter().map(Vec::len).sum::<usize>();
            ui.label(format!(
                "· kept {} · merged {} · dropped {dropped} of {}",
                r.kept.len(),
                crate::render::text::count(merged, "group", "groups"),
                r.num_patches
            ));
        }
        (None, Overlay::Scores, Some(r)) => {
            ui.strong(format!("{} has no score map", r.reducer().info().label));
        }
        _ => {
            ui.label("waiting for the reduced run…");
        }
    });
    if map.is_none() && s.overlay != Overlay::Tokens && s.overlay != Overlay::Scores {
        // A reduced-model map before its run has come.
        ui.centered_and_justified(|ui| {
            ui.spinner();
        });
        return;
    }

    let key_common = format!("{:?}|{:?}|{}|{:?}", opened.label, s.colormap, s.opacity, s.scale);
    let tex = match (&map, &run) {
        (Some(m), _) => Some(app.runtime.textures.get(
            ui.ctx(),
            "main",
            format!("{key_common}|{}|{:?}", m.title, run.as_ref().map(|r| r.spec.clone())),
            || figures::grid_map_body(&opened.input, grid, &m.values, s.colormap, s.scale.norm(), s.opacity, VIEW_SIDE),
        )),
        (None, Some(r)) => {
            Some(app.runtime.textures.get(ui.ctx(), "main", format!("{key_common}|tokens|{:?}", r.spec), || {
                figures::tokens_body(&opened.input, grid, r, s.opacity, VIEW_SIDE)
            }))
        }
        _ => None,
    };
    let Some(tex) = tex else {
        ui.centered_and_justified(|ui| {
            ui.spinner();
        });
        return;
    };

    // A slow run: the last result stays on screen, marked as such, until the new one lands.
    let shows_run = matches!(s.overlay, Overlay::Tokens | Overlay::Scores)
        || (s.overlay.has_source() && s.source == MapSource::Reduced);
    if shows_run
        && app.results.run.is_stale()
        && let Some(r) = &run
    {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.colored_label(
                ui.visuals().warn_fg_color,
                format!("stale: showing the last run ({}) while the new one computes", figures::run_title(r)),
            );
        });
    }
    if map.is_none()
        && let Some(r) = &run
    {
        let note = figures::special_tokens_note(opened.analysis.num_special);
        token_legend(ui, r.reducer().info().merges, &r.groups, note.as_deref());
    }
    let roles = run.as_deref().and_then(|r| hiprune_roles(r, grid)).unwrap_or_default();
    if map.is_none() && !roles.is_empty() {
        roles_legend(ui);
    }
    let frame = GridFrame::of(&opened.input, grid);
    let groups = run.as_ref().map(|r| r.groups.as_slice());
    let marks = if map.is_none() { roles.as_slice() } else { &[] };
    image_scene_ui(ui, &mut app.screen.scene_rect, &tex, &frame, groups, marks, |patch| {
        let fate = run.as_deref().map(|r| Fate {
            method: r.reducer().info().label.to_string(),
            scores: r.scores.as_deref(),
            groups: &r.groups,
            role: roles.get(patch).copied().flatten(),
        });
        patch_info(patch, grid, map.as_ref(), fate)
    });
}

/// HiPrune's role of each patch (anchor, buffer, register; none where dropped), told from the
/// run's object-layer scores as HiPrune picks them; none for other methods.
pub fn hiprune_roles(run: &EncoderRun, grid: [usize; 2]) -> Option<Vec<Option<Role>>> {
    roles_of(run.reducer(), run.scores.as_ref()?, &run.kept, grid)
}

/// [`hiprune_roles`] from a run's method, its scores per patch and its kept patches.
fn roles_of(
    reducer: &ReducerConfig,
    scores: &[Option<f32>],
    kept: &[u32],
    grid: [usize; 2],
) -> Option<Vec<Option<Role>>> {
    let ReducerConfig::Hiprune(cfg) = reducer else { return None };
    let object: Vec<f32> = scores.iter().map(|v| v.unwrap_or(f32::NEG_INFINITY)).collect();
    let keep = kept.len();
    let num_anchors = hiprune::num_anchors(cfg.alpha, keep);
    let mut roles = vec![None; scores.len()];
    for &p in kept {
        roles[p as usize] = Some(Role::Register);
    }
    for (p, role) in hiprune::anchors_and_buffers(&object, (grid[0], grid[1]), keep, num_anchors, cfg.buffers) {
        roles[p] = Some(role);
    }
    Some(roles)
}

/// The marks [`mark_roles`] draws, as a legend row.
fn roles_legend(ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.spacing_mut().item_spacing.x = 4.0;
        for (role, label, tip) in [
            (Role::Anchor, "anchor  ", "most attended at the object layer"),
            (Role::Buffer, "buffer  ", "an anchor's neighbour, kept for spatial continuity"),
            (Role::Register, "register", "most attended at the output layer among the rest"),
        ] {
            let (rect, _) = ui.allocate_exact_size(egui::vec2(14.0, 14.0), egui::Sense::hover());
            ui.painter().rect_filled(rect, 0.0, Color32::from_gray(60));
            mark_role(ui.painter(), rect, role);
            ui.label(label).on_hover_text(tip);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hiprune_roles_follow_its_picks() {
        // 3x3 grid, keep 7, alpha 0.75 -> round(7 * 0.75 / 5) = 1 anchor: the top object score
        // (patch 4), its 4 neighbours as buffers, the two other kept patches registers.
        let hiprune = ReducerConfig::Hiprune(hiprune::HipruneConfig { alpha: 0.75, ..Default::default() });
        let scores: Vec<Option<f32>> = [0.1, 0.2, 0.3, 0.4, 0.9, 0.5, 0.6, 0.7, 0.8].map(Some).to_vec();
        let kept = [1, 3, 4, 5, 6, 7, 8];
        let roles = roles_of(&hiprune, &scores, &kept, [3, 3]).unwrap();
        use Role::*;
        let want = [None, Some(Buffer), None, Some(Buffer), Some(Anchor), Some(Buffer), Some(Register)];
        assert_eq!(roles[..7], want);
        assert_eq!(roles[7..], [Some(Buffer), Some(Register)]);
        assert_eq!(roles_of(&ReducerConfig::from_name("tome").unwrap(), &scores, &kept, [3, 3]), None);
    }
}
