//! VLM mode's right panel, top: the full and the reduced answer side by side with the token
//! diff, the log-probability of the full answer under the reduced model, and the ratio sweep.
//! Hovering or clicking an answer token picks it for the text-to-image map.

use eframe::egui;
use egui::{Color32, RichText};
use egui_plot::{HoverPosition, Line, Plot, PlotPoints, Points, VLine};

use super::vlm::{method_label, run_label};
use super::widgets::{Mark, removed_percent, shown_piece, side_of_diff, tokens_ui};
use super::{Command, TokenlensApp};
use crate::session::vlm::{SweepPoint, VlmRun, first_change};

pub fn answers_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    let Some(vlm) = app.vlm.as_mut() else { return };
    vlm.hovered = None;
    let Some(opened) = vlm.opened().cloned() else {
        ui.strong("Answer");
        if vlm.full.pending {
            ui.horizontal_wrapped(|ui| {
                ui.spinner();
                ui.label(&vlm.full_text);
            });
        } else if app.screen.error.is_some() {
            ui.label("No answer: see the error below (a shorter question or answer limit may help).");
        } else {
            ui.label("Open an image: the model answers the question about it.");
        }
        return;
    };
    ui.label(RichText::new(format!("Q: {}", opened.question)).italics());
    if vlm.full.pending {
        ui.horizontal_wrapped(|ui| {
            ui.spinner();
            ui.label(RichText::new(format!("new full answer: {}", vlm.full_text)).weak());
        });
    }
    let full = &opened.run;
    let (run, stale_note) = vlm.shown_run().map_or((None, None), |(r, note)| (Some(r), note));
    let mut hovered = None;
    let mut clicked = None;
    ui.columns(2, |cols| {
        cols[0].strong("Full model");
        match &run {
            Some(r) => cols[1].strong(format!("Reduced: {}", run_label(r))),
            // What is being computed: the request, from the settings.
            None => cols[1].strong(format!(
                "Reduced: {}, {}",
                method_label(&app.settings.vlm.method),
                app.settings.spec.budget.describe(full.num_image_tokens)
            )),
        };
        if let Some(note) = &stale_note {
            cols[1].label(RichText::new(note).small().color(cols[1].visuals().warn_fg_color));
        }
        let full_marks = match &run {
            Some(r) => side_of_diff(&r.diff, false),
            None => (0..full.answer.ids.len()).map(|i| (i, Mark::Same)).collect(),
        };
        let picked = vlm.picked;
        tokens_ui(&mut cols[0], full, &full_marks, false, picked, &mut hovered, &mut clicked);
        match &run {
            Some(r) => {
                tokens_ui(&mut cols[1], r, &side_of_diff(&r.diff, true), true, picked, &mut hovered, &mut clicked)
            }
            None if vlm.run.pending => {
                cols[1].horizontal_wrapped(|ui| {
                    ui.spinner();
                    ui.label(&vlm.run_text);
                });
            }
            None if vlm.full.pending || vlm.full.value.is_none() => {
                cols[1].label(RichText::new("waiting for the full answer…").weak());
            }
            None => {
                cols[1].label(RichText::new("no reduced answer: see the error below").weak());
            }
        }
    });
    vlm.hovered = hovered;
    if let Some(p) = clicked {
        app.command(Command::PickToken(p));
    }
    ui.label(
        RichText::new(
            "red, struck: only in the full answer · green: only in the reduced one · click a token to pin its map",
        )
        .small()
        .weak(),
    );
    if let Some(r) = &run {
        verdict_ui(ui, full, r);
    }
    ui.add_space(8.0);
    ui.strong("Ratio sweep: the full answer's log-probability");
    sweep_ui(app, ui);
}

/// Changed or not, and how likely the reduced model finds the full answer.
fn verdict_ui(ui: &mut egui::Ui, full: &VlmRun, r: &VlmRun) {
    ui.horizontal(|ui| {
        if r.answer_changed {
            ui.colored_label(ui.visuals().warn_fg_color, RichText::new("answer changed").strong());
        } else {
            ui.colored_label(Color32::from_rgb(60, 200, 90), RichText::new("answer unchanged").strong());
        }
        ui.label(RichText::new(format!("· stage {}", r.stage)).small());
    });
    let own: f64 = full.answer.logprobs.iter().map(|&v| f64::from(v)).sum();
    if let Some(lp) = r.full_answer_logprob {
        ui.label(format!("log p(full answer | reduced) = {lp:.3}   (full model: {own:.3}, Δ {:+.3})", lp - own))
            .on_hover_text("the full model's answer scored by the reduced model, teacher-forced, summed over tokens");
    }
    egui::CollapsingHeader::new("per token").id_salt("lp_per_token").show(ui, |ui| {
        egui::Grid::new("lp_tokens").num_columns(3).striped(true).show(ui, |ui| {
            ui.label(RichText::new("full answer token").small());
            ui.label(RichText::new("full").small());
            ui.label(RichText::new("reduced").small());
            ui.end_row();
            for (i, piece) in full.answer.pieces.iter().enumerate() {
                ui.monospace(shown_piece(piece));
                ui.monospace(format!("{:.3}", full.answer.logprobs.get(i).copied().unwrap_or(f32::NAN)));
                ui.monospace(format!("{:.3}", r.full_answer_token_logprobs.get(i).copied().unwrap_or(f32::NAN)));
                ui.end_row();
            }
        });
    });
}

/// The sweep's points as (removed %, log-prob), split by whether the answer changed.
pub fn sweep_series(points: &[SweepPoint]) -> (Vec<[f64; 2]>, Vec<[f64; 2]>) {
    let xy = |p: &SweepPoint| [100.0 * p.removed, p.full_answer_logprob.unwrap_or(f64::NAN)];
    let same = points.iter().filter(|p| !p.changed).map(xy).collect();
    let changed = points.iter().filter(|p| p.changed).map(xy).collect();
    (same, changed)
}

/// The sweep point nearest `x` (removed %), for the hover label.
pub fn nearest_point(points: &[SweepPoint], x: f64) -> Option<&SweepPoint> {
    points.iter().min_by(|a, b| (100.0 * a.removed - x).abs().total_cmp(&(100.0 * b.removed - x).abs()))
}

fn sweep_ui(app: &TokenlensApp, ui: &mut egui::Ui) {
    let Some(vlm) = &app.vlm else { return };
    let points = vlm.sweep.clone();
    let now = removed_percent(&app.settings.spec.budget);
    let first = first_change(&points);
    let (same, changed) = sweep_series(&points);
    let line: Vec<[f64; 2]> =
        points.iter().map(|p| [100.0 * p.removed, p.full_answer_logprob.unwrap_or(f64::NAN)]).collect();
    let red = ui.visuals().error_fg_color;
    let label_points = points.clone();
    Plot::new("vlm_sweep")
        .height(170.0)
        .include_x(0.0)
        .include_x(100.0)
        .x_axis_label("% of image tokens removed")
        .y_axis_label("log p(full answer)")
        .allow_zoom(false)
        .allow_drag(false)
        .allow_scroll(false)
        .label_formatter(move |pos| {
            let x = match pos {
                HoverPosition::NearDataPoint { position, .. } | HoverPosition::Elsewhere { position } => position.x,
            };
            let p = nearest_point(&label_points, x)?;
            let verdict = if p.changed { "changed" } else { "same answer" };
            let lp = p.full_answer_logprob.map_or("n/a".into(), |v| format!("{v:.3}"));
            Some(format!("{:.1} % removed (keep {}): {verdict}\nlog p {lp}\n“{}”", 100.0 * p.removed, p.keep, p.answer))
        })
        .show(ui, |plot| {
            plot.line(Line::new("log p", PlotPoints::from(line)).width(1.5));
            plot.points(
                Points::new("same answer", PlotPoints::from(same)).radius(3.5).color(Color32::from_rgb(60, 200, 90)),
            );
            plot.points(
                Points::new("answer changed", PlotPoints::from(changed))
                    .radius(5.0)
                    .shape(egui_plot::MarkerShape::Cross)
                    .color(red),
            );
            if let Some(f) = first {
                plot.vline(VLine::new("first change", 100.0 * f).color(red).width(1.5));
            }
            plot.vline(VLine::new("current", now).color(Color32::from_rgb(255, 170, 0)).width(1.5));
        });
    // The sweep's own method (the one it was asked for), not the settings'.
    let method = vlm.sweep_method().map_or_else(|| method_label(&app.settings.vlm.method), method_label);
    let total = crate::session::vlm::sweep_fractions().len();
    let status = match (vlm.sweep_done(), first) {
        _ if vlm.sweep_stopped => format!("{method}: the sweep stopped on an error (see below)"),
        (false, _) => format!("{method}: {} of {total} ratios, computing in the background…", points.len()),
        (true, Some(f)) => format!("{method}: the answer first changes at {:.1} % removed (red line)", 100.0 * f),
        (true, None) => format!("{method}: the answer never changes over the sweep"),
    };
    ui.label(RichText::new(status).small().weak());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_points_split_by_change_and_hover_finds_the_nearest() {
        let point = |removed: f64, changed: bool| SweepPoint {
            removed,
            keep: 1,
            answer: format!("a{removed}"),
            ids: vec![],
            changed,
            first_difference: None,
            full_answer_logprob: Some(-removed),
        };
        let points = vec![point(0.0, false), point(0.5, false), point(0.9, true)];
        let (same, changed) = sweep_series(&points);
        assert_eq!(same, vec![[0.0, -0.0], [50.0, -0.5]]);
        assert_eq!(changed, vec![[90.0, -0.9]]);
        assert_eq!(nearest_point(&points, 80.0).map(|p| p.removed), Some(0.9));
        assert_eq!(first_change(&points), Some(0.9));
    }
}
