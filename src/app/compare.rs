//! The compare view: two to four methods at the same budget, side by side, each with its kept /
//! merged tokens, its reduced output on the shared 0–1 scale, and its drift metrics.

use eframe::egui;

use super::TokenlensApp;
use super::output::fidelity_ui;
use crate::figures;
use crate::reduce::ReducerConfig;

pub fn compare_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    app.textures.begin_frame();
    ui.horizontal(|ui| {
        ui.strong(format!("All at {}", app.settings.spec.budget.describe(app.num_patches())));
        ui.label("· ratio and options come from the left panel");
        if app.settings.compare.len() < 4 && ui.button("+ method").clicked() {
            app.settings.compare.push(ReducerConfig::from_name("random").expect("a built-in method"));
        }
    });
    let Some(opened) = app.opened.clone() else { return };
    let results = app.compared.value.clone().unwrap_or_default();
    let n = app.settings.compare.len();
    let width = (ui.available_width() - 12.0 * (n as f32 - 1.0)) / n as f32;
    let grid = opened.analysis.grid;
    let cm = app.settings.colormap;
    let s_opacity = app.settings.opacity;
    let mut remove = None;
    ui.columns(n, |cols| {
        for (i, col) in cols.iter_mut().enumerate() {
            let current = app.settings.compare[i].clone();
            col.horizontal(|ui| {
                egui::ComboBox::from_id_salt(("compare", i)).selected_text(current.info().label).show_ui(ui, |ui| {
                    for config in ReducerConfig::defaults() {
                        if ui.selectable_label(config.name() == current.name(), config.info().label).clicked() {
                            app.settings.compare[i] = config;
                        }
                    }
                });
                if n > 2 && ui.small_button("remove").on_hover_text("remove this method").clicked() {
                    remove = Some(i);
                }
            });
            let Some(r) = results.get(i).filter(|r| r.spec.reducer == current) else {
                col.spinner();
                continue;
            };
            let tokens = app.textures.get(
                col.ctx(),
                &format!("cmp_tokens_{i}"),
                format!("{:?}|{:?}|{}", opened.label, r.spec, s_opacity),
                || figures::tokens_body(&opened.input, grid, r, s_opacity, 512),
            );
            let mut textures = vec![tokens];
            if r.output.is_map() {
                textures.push(app.textures.get(
                    col.ctx(),
                    &format!("cmp_out_{i}"),
                    format!("{:?}|{:?}|{cm:?}", opened.label, r.spec),
                    || figures::saliency_body(&opened.input, &r.output, cm, 512),
                ));
            }
            for tex in textures {
                let h = width * tex.size_vec2().y / tex.size_vec2().x;
                col.add(egui::Image::new(&tex).fit_to_exact_size(egui::vec2(width, h)));
            }
            if !r.output.is_map() && !r.output.values.is_empty() {
                super::output::labels_ui(col, &opened.analysis.output, Some(&r.output));
            }
            col.label(egui::RichText::new(figures::run_title(r)).small());
            fidelity_ui(col, &r.fidelity);
            col.label(
                egui::RichText::new(format!("{} FLOPs, {:.0} ms", super::output::flops(r.flops), r.timings_ms.run_ms))
                    .small()
                    .weak(),
            );
        }
    });
    if let Some(i) = remove {
        app.settings.compare.remove(i);
    }
}
