//! The compare view with a vision-language model: the full model and two to four methods at the
//! shared budget, side by side, each with its kept / merged image tokens on the photo, its
//! answer marked against the full one, and how likely it finds the full answer. The method that
//! keeps the full answer most likely is marked best.

use eframe::egui;
use egui::RichText;

use super::TokenlensApp;
use super::vlm::method_label;
use super::widgets::{Mark, flops, method_menu, side_of_diff, tokens_ui};
use crate::figures;
use crate::reduce::Method;
use crate::session::vlm::VlmRun;

/// The column whose run gives the full answer the highest log-probability (the export's).
pub use crate::export::vlm::best_run;

pub fn compare_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    app.runtime.textures.begin_frame();
    let Some(vlm) = app.vlm.as_ref() else { return };
    let caps = vlm.capabilities.with_split_image(app.settings.vlm.split_image);
    let Some(opened) = vlm.opened().cloned() else {
        ui.label("Open an image: the full model answers first, then each method at the shared budget.");
        return;
    };
    let full = &opened.run;
    let methods = app.settings.vlm.compare.clone();
    ui.horizontal(|ui| {
        ui.strong(format!("All at {}", app.settings.spec.budget.describe(full.num_image_tokens)));
        ui.label(format!("· Q: {}", opened.question));
        if methods.len() < 4 && ui.button("+ method").clicked() {
            app.settings.vlm.compare.push(Method::from_name("random").expect("a built-in method"));
        }
    });
    ui.label(RichText::new("ratio, answer limit and positions come from the left panel").small().weak());
    super::widgets::token_legend(ui, true, &[], None);
    // Runs answer the methods asked: a column shows its run only once it matches its method.
    let runs: Vec<Option<std::sync::Arc<VlmRun>>> = (0..methods.len())
        .map(|i| {
            let runs = vlm.compared.value.as_ref()?;
            runs.get(i).filter(|r| r.spec.method.as_ref() == Some(&methods[i])).cloned()
        })
        .collect();
    let pending = vlm.compared.pending;
    let landed: Vec<&VlmRun> = runs.iter().flatten().map(|r| &**r).collect();
    let best = best_run(&landed).and_then(|i| landed[i].full_answer_logprob);
    let grid = (opened.grid[0], opened.grid[1]);
    let n = methods.len() + 1;
    let width = (ui.available_width() - 12.0 * (n as f32 - 1.0)) / n as f32;
    let mut remove = None;
    // Answer tokens are not picked here (no map to show them on); the widget asks anyway.
    let (mut picked_hover, mut picked_click) = (None, None);
    let mut chosen: Vec<Method> = methods.clone();
    ui.columns(n, |cols| {
        let col = &mut cols[0];
        col.strong("Full model");
        let opacity = app.settings.opacity;
        let tex = app.runtime.textures.get(col.ctx(), "vlm_cmp_full", format!("{:?}|{opacity}", opened.label), || {
            figures::vlm_tokens_body(&opened.image, grid, full, opacity, 512)
        });
        let h = width * tex.size_vec2().y / tex.size_vec2().x;
        col.add(egui::Image::new(&tex).fit_to_exact_size(egui::vec2(width, h)));
        let marks: Vec<(usize, Mark)> = (0..full.answer.ids.len()).map(|i| (i, Mark::Same)).collect();
        tokens_ui(col, full, &marks, false, None, &mut picked_hover, &mut picked_click);
        let own: f64 = full.answer.logprobs.iter().map(|&v| f64::from(v)).sum();
        col.label(RichText::new(format!("log p(answer) = {own:.3}")).small());
        col.label(
            RichText::new(format!("{} image tokens · {} FLOPs", full.num_image_tokens, flops(full.cost.total_flops())))
                .small()
                .weak(),
        );

        for (i, col) in cols[1..].iter_mut().enumerate() {
            col.horizontal(|ui| {
                // Room for the remove button: the column never grows past its share.
                method_menu(ui, ("compare", i), (width - 90.0).max(60.0), &caps, &mut chosen[i]);
                if methods.len() > 2 && ui.small_button("remove").on_hover_text("remove this method").clicked() {
                    remove = Some(i);
                }
            });
            let Some(r) = &runs[i] else {
                if pending {
                    col.spinner();
                } else {
                    col.label(
                        RichText::new(format!("{}: no result (see the error)", method_label(&methods[i]))).weak(),
                    );
                }
                continue;
            };
            let tex = app.runtime.textures.get(
                col.ctx(),
                &format!("vlm_cmp_{i}"),
                format!("{:?}|{:?}|{opacity}", opened.label, r.spec),
                || figures::vlm_tokens_body(&opened.image, grid, r, opacity, 512),
            );
            let h = width * tex.size_vec2().y / tex.size_vec2().x;
            col.add(egui::Image::new(&tex).fit_to_exact_size(egui::vec2(width, h)));
            if r.removed_nothing() {
                let note = format!(
                    "removed nothing: its site lies past the last of the {} decoder layers",
                    r.image_rows_per_layer.len()
                );
                col.add(egui::Label::new(RichText::new(note).small().color(col.visuals().warn_fg_color)).wrap());
            }
            tokens_ui(col, r, &side_of_diff(&r.diff, true), true, None, &mut picked_hover, &mut picked_click);
            col.horizontal(|ui| {
                if r.answer_changed {
                    ui.colored_label(ui.visuals().warn_fg_color, RichText::new("answer changed").strong());
                } else {
                    ui.colored_label(egui::Color32::from_rgb(60, 200, 90), RichText::new("answer unchanged").strong());
                }
                if best.is_some() && r.full_answer_logprob == best && landed.len() > 1 {
                    ui.label(RichText::new("best").strong().underline())
                        .on_hover_text("of these methods, the one under which the full answer is most likely");
                }
            });
            if let Some(lp) = r.full_answer_logprob {
                col.label(RichText::new(format!("log p(full answer) = {lp:.3} (Δ {:+.3})", lp - own)).small())
                    .on_hover_text("the full model's answer scored by this reduced model, teacher-forced");
            }
            col.label(
                RichText::new(format!(
                    "{} of {} image rows at layer 0, {:.1} averaged · {} FLOPs ({:.0} %)",
                    r.image_rows_per_layer.first().copied().unwrap_or(0),
                    r.num_image_tokens,
                    r.layer_averaged_image_rows,
                    flops(r.cost.total_flops()),
                    100.0 * r.cost.total_flops() / full.cost.total_flops().max(1.0)
                ))
                .small()
                .weak(),
            );
        }
    });
    ui.label(RichText::new("red, struck: only in the full answer · green: only in the method's answer").small().weak());
    app.settings.vlm.compare = chosen;
    if let Some(i) = remove {
        app.settings.vlm.compare.remove(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(logprob: Option<f64>) -> VlmRun {
        VlmRun { full_answer_logprob: logprob, ..Default::default() }
    }

    #[test]
    fn best_is_the_highest_log_probability_of_the_full_answer() {
        let (a, b, c) = (run(Some(-3.0)), run(Some(-1.5)), run(None));
        assert_eq!(best_run(&[&a, &b, &c]), Some(1));
        assert_eq!(best_run(&[&c, &a]), Some(1));
        assert_eq!(best_run(&[&c]), None);
        let tie = run(Some(-3.0));
        assert_eq!(best_run(&[&a, &tie]), Some(0));
    }
}
