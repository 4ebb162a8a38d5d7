//! The right panel: the model's output, full versus reduced, with drift metrics; drift against
//! the ratio (computed in the background); and the cost of the run.

use eframe::egui;
use egui_plot::{Bar, BarChart, Line, Plot, PlotPoints, Points, VLine};

use super::TokenlensApp;
use super::widgets::{flops, labels_ui, removed_percent};
use super::worker::Opened;
use crate::analysis::metrics::Fidelity;
use crate::figures;
use crate::session::EncoderRun;

const THUMB: u32 = 320;

pub fn output_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    let Some(opened) = app.results.opened.clone() else { return };
    let run = app.results.run.value.clone();
    let full_output = &opened.analysis.output;
    if full_output.is_map() {
        saliency_pair_ui(app, ui, &opened, run.as_deref());
    } else if full_output.values.is_empty() {
        ui.strong("Output");
        ui.label("This encoder has no output head: compare its attention and tokens.");
    } else {
        ui.strong(format!("Output: {}, full vs reduced", full_output.kind.name().replace('_', "-")));
        labels_ui(ui, full_output, run.as_ref().map(|r| &r.output));
    }
    if let Some(r) = &run {
        ui.add_space(4.0);
        fidelity_ui(ui, &r.fidelity);
        if let Some(caveat) = r.reducer().info().caveat {
            ui.label(egui::RichText::new(caveat).small().color(ui.visuals().warn_fg_color));
        }
    }

    ui.add_space(8.0);
    ui.strong("Drift against the ratio");
    drift_plot_ui(app, ui);

    if let Some(r) = &run {
        ui.add_space(8.0);
        ui.strong("Cost");
        cost_ui(app, ui, r);
    }
}

/// Full and reduced saliency maps side by side.
fn saliency_pair_ui(app: &mut TokenlensApp, ui: &mut egui::Ui, opened: &Opened, run: Option<&EncoderRun>) {
    let cm = app.settings.colormap;
    ui.strong("Output: saliency, full vs reduced");
    let width = (ui.available_width() - 8.0) / 2.0;
    let full_tex = app.runtime.textures.get(ui.ctx(), "out_full", format!("{:?}|{cm:?}", opened.label), || {
        figures::saliency_body(&opened.input, &opened.analysis.output, cm, THUMB)
    });
    let reduced_tex = run.map(|r| {
        app.runtime.textures.get(ui.ctx(), "out_reduced", format!("{:?}|{cm:?}|{:?}", opened.label, r.spec), || {
            figures::saliency_body(&opened.input, &r.output, cm, THUMB)
        })
    });
    ui.horizontal(|ui| {
        for (label, tex) in [("full", Some(full_tex)), ("reduced", reduced_tex)] {
            ui.vertical(|ui| {
                ui.label(egui::RichText::new(label).small());
                match tex {
                    Some(t) => {
                        let h = width * t.size_vec2().y / t.size_vec2().x;
                        ui.add(egui::Image::new(&t).fit_to_exact_size(egui::vec2(width, h)));
                    }
                    None => {
                        ui.spinner();
                    }
                }
            });
        }
    });
    ui.label(egui::RichText::new("saliency on a fixed 0–1 scale, same colormap").small().weak());
}

pub fn fidelity_ui(ui: &mut egui::Ui, f: &Fidelity) {
    egui::Grid::new(ui.next_auto_id()).num_columns(2).striped(true).show(ui, |ui| {
        for (name, value, hint) in [
            ("output L1", f.output_l1, "mean |full − reduced| per pixel or label (0 = identical)"),
            ("Pearson r", f.output_pearson, "correlation of the two outputs (1 = same shape)"),
            ("top-20 % IoU", f.output_iou_top20, "overlap of the top fifth (pixels or labels)"),
            ("CLS cosine", f.cls_cosine, "final CLS embedding, reduced vs full"),
            ("patch cosine", f.patch_cosine_mean, "final features of surviving patches"),
        ] {
            ui.label(name).on_hover_text(hint);
            ui.monospace(if value.is_finite() { format!("{value:.4}") } else { "n/a".into() });
            ui.end_row();
        }
        if let Some(same) = f.top1_agrees {
            ui.label("same answer").on_hover_text("the reduced model's most probable label is the full model's");
            ui.monospace(if same { "yes" } else { "NO" });
            ui.end_row();
        }
        if let Some(kl) = f.kl_divergence {
            ui.label("KL(full || reduced)").on_hover_text("how far the probabilities moved, in nats");
            ui.monospace(format!("{kl:.4}"));
            ui.end_row();
        }
    });
}

fn drift_plot_ui(app: &TokenlensApp, ui: &mut egui::Ui) {
    let now = removed_percent(&app.settings.spec.budget);
    let points = app.results.drift.clone();
    let computing = points.len() < 23;
    Plot::new("drift")
        .height(150.0)
        .include_x(0.0)
        .include_x(100.0)
        .include_y(0.0)
        .x_axis_label("% removed")
        .y_axis_label("saliency L1")
        .allow_zoom(false)
        .allow_drag(false)
        .allow_scroll(false)
        .show(ui, |plot| {
            plot.line(Line::new("drift", PlotPoints::from(points.clone())).width(2.0));
            plot.points(Points::new("runs", PlotPoints::from(points)).radius(2.5));
            plot.vline(VLine::new("current", now).color(egui::Color32::from_rgb(255, 170, 0)));
        });
    let method = app.settings.spec.method.as_ref().map_or("the method", |m| m.label());
    let note =
        if computing { format!("{method}: computing in the background…") } else { format!("{method}, this image") };
    ui.label(egui::RichText::new(note).small().weak());
}

fn cost_ui(app: &TokenlensApp, ui: &mut egui::Ui, r: &EncoderRun) {
    let bars: Vec<Bar> =
        r.tokens_per_layer.iter().enumerate().map(|(l, &n)| Bar::new(l as f64, n as f64).width(0.7)).collect();
    Plot::new("tokens_per_layer")
        .height(110.0)
        .include_y(0.0)
        .include_y(r.tokens_per_layer.first().copied().unwrap_or(0) as f64)
        .x_axis_label("block")
        .y_axis_label("tokens")
        .allow_zoom(false)
        .allow_drag(false)
        .allow_scroll(false)
        .show(ui, |plot| plot.bar_chart(BarChart::new("tokens", bars)));
    egui::Grid::new("cost").num_columns(2).striped(true).show(ui, |ui| {
        ui.label("encoder FLOPs");
        ui.monospace(format!(
            "{} of {} ({:.0} %)",
            flops(r.flops),
            flops(r.flops_full),
            100.0 * r.flops / r.flops_full
        ));
        ui.end_row();
        ui.label("this run").on_hover_text("resumed from the cached full run: only what follows the method's stage");
        ui.monospace(format!("{:.0} ms (from block {})", r.timings_ms.run_ms, r.recomputed_from_block));
        ui.end_row();
        ui.label("full run");
        ui.monospace(format!("{:.0} ms", r.timings_ms.full_ms));
        ui.end_row();
        if let Some(ms) = app.results.run.latency_ms {
            ui.label("slider to screen").on_hover_text("from the settings change to the result arriving");
            ui.monospace(format!("{ms:.0} ms"));
            ui.end_row();
        }
    });
    ui.label(
        egui::RichText::new("FLOPs per block ≈ 2 (4 n d² + 2 n² d + 2 n d m): n tokens, width d, MLP width m; summed with each block's own n")
            .small()
            .weak(),
    );
}
