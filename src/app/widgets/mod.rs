//! What more than one panel draws, in one place: section headers, the budget slider with its
//! presets, the look (colormap, opacity, map scale), the method pickers, a generic editor over a
//! method's parameters, label probabilities, FLOP counts; the photo with its token grid
//! (`scene`) and an answer's marked tokens (`tokens`). Panels share only these (no panel imports
//! another; `tests/layering.rs` checks it), and these import no panel.

mod scene;
mod tokens;

use eframe::egui;
use serde_json::Value;

pub use scene::{
    Fate, GridFrame, ValueMap, colorbar_range_ui, colorbar_ui, highlight, image_scene_ui, map_of, mark_role, patch_at,
    patch_info, token_legend,
};
pub use tokens::{Mark, Pick, shown_piece, side_of_diff, tokens_ui};

use super::TokenlensApp;
use crate::reduce::budget::PRESETS_REMOVED;
use crate::reduce::{Budget, Capabilities, Method, Side};
use crate::render::Colormap;
use crate::session::Output;

/// A slider value within this many percentage points of a preset snaps to it.
const SNAP_POINTS: f64 = 1.2;

/// The slider works in fractions; a token count only enters `Budget::Keep`, which it never makes.
const NUM_PATCHES: usize = 256;

/// One entry of a method picker: greyed out, with the reason on hover, where the loaded model
/// (`caps`) refuses the method (the registry's refusal, the one its runs give). Whether the
/// entry was picked.
pub fn method_entry(ui: &mut egui::Ui, method: &Method, chosen: bool, caps: &Capabilities) -> bool {
    let info = method.info();
    let refusal = method.refusal(caps);
    let response = ui.add_enabled_ui(refusal.is_none(), |ui| ui.selectable_label(chosen, info.label)).inner;
    match refusal {
        Some(why) => {
            response.on_disabled_hover_text(why);
            false
        }
        None => response.on_hover_text(info.description).clicked() && !chosen,
    }
}

/// The removed percentage a budget stands for on the default grid.
pub fn removed_percent(budget: &Budget) -> f64 {
    100.0 * budget.removed_fraction(NUM_PATCHES)
}

/// The budget for a slider position, snapped to a preset when close to one.
pub fn snapped(percent: f64) -> Budget {
    let fraction =
        PRESETS_REMOVED.iter().copied().find(|p| (100.0 * p - percent).abs() < SNAP_POINTS).unwrap_or(percent / 100.0);
    Budget::RemoveFraction(fraction)
}

/// Moves to the next (`dir` = 1) or previous (-1) preset from the current budget.
pub fn step_preset(budget: &mut Budget, dir: i32) {
    let now = budget.removed_fraction(NUM_PATCHES);
    let next = if dir > 0 {
        PRESETS_REMOVED.iter().copied().find(|&p| p > now + 1e-9)
    } else {
        PRESETS_REMOVED.iter().rev().copied().find(|&p| p < now - 1e-9)
    };
    if let Some(p) = next {
        *budget = Budget::RemoveFraction(p);
    } else if dir < 0 {
        *budget = Budget::RemoveFraction(0.0);
    }
}

pub fn section(ui: &mut egui::Ui, title: &str) {
    ui.add_space(6.0);
    ui.label(egui::RichText::new(title).strong());
    ui.separator();
}

pub fn budget_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    let mut percent = removed_percent(&app.settings.spec.budget);
    let slider = egui::Slider::new(&mut percent, 0.0..=98.0).suffix(" % removed").max_decimals(1);
    if ui.add(slider).changed() {
        app.settings.spec.budget = snapped(percent);
    }
    ui.horizontal(|ui| {
        for p in PRESETS_REMOVED {
            let label = format!("{:.1}", 100.0 * p);
            let on = (app.settings.spec.budget.removed_fraction(NUM_PATCHES) - p).abs() < 1e-9;
            if ui.selectable_label(on, label).on_hover_text("preset (Left / Right arrow)").clicked() {
                app.settings.spec.budget = Budget::RemoveFraction(p);
            }
        }
    });
    // The count comes from what is on screen; none is known before the first result (a guess
    // from another model would be stale).
    let text = match app.known_num_patches() {
        Some(n) => app.settings.spec.budget.describe(n),
        None => {
            format!("{:.1} % removed (token count: with the first result)", removed_percent(&app.settings.spec.budget))
        }
    };
    ui.label(egui::RichText::new(text).small());
}

/// A generic editor over the method's serde fields: booleans, numbers, optional numbers ("auto"),
/// lists of layers and enum choices. Layer fields get sliders over the model's depth.
pub fn params_ui<T: serde::Serialize + serde::de::DeserializeOwned>(
    ui: &mut egui::Ui,
    reducer: &mut T,
    layers: std::ops::RangeInclusive<usize>,
) {
    let mut json = serde_json::to_value(&*reducer).expect("configs serialise");
    let Some(obj) = json.as_object_mut() else { return };
    let keys: Vec<String> = obj.keys().filter(|k| *k != "method").cloned().collect();
    if keys.is_empty() {
        ui.label(egui::RichText::new("no parameters").weak().small());
        return;
    }
    let mut changed = false;
    let probe = json.clone();
    let obj = json.as_object_mut().expect("checked above");
    egui::Grid::new("params").num_columns(2).spacing([8.0, 4.0]).show(ui, |ui| {
        for key in keys {
            ui.label(key.replace('_', " "));
            let value = obj.get_mut(&key).expect("key from the map");
            changed |= match value {
                Value::String(current) => choice_ui(ui, &key, current, &variants::<T>(&probe, &key)),
                _ => value_ui(ui, &key, value, &layers),
            };
            ui.end_row();
        }
    });
    if changed && let Ok(updated) = serde_json::from_value(json) {
        *reducer = updated;
    }
}

/// The values an enum field `key` of `T` accepts, read from serde's "expected one of" message
/// (empty when the field is free text).
fn variants<T: serde::de::DeserializeOwned>(json: &Value, key: &str) -> Vec<String> {
    let mut probe = json.clone();
    probe[key] = Value::from("\u{1}");
    let Err(e) = serde_json::from_value::<T>(probe) else { return Vec::new() };
    let message = e.to_string();
    let Some(list) = message.split("expected one of ").nth(1) else { return Vec::new() };
    list.split(',').map(|v| v.trim().trim_matches('`').to_string()).filter(|v| !v.is_empty()).collect()
}

/// A choice among an enum field's values (or the value as text when there is no list).
fn choice_ui(ui: &mut egui::Ui, key: &str, current: &mut String, choices: &[String]) -> bool {
    if choices.is_empty() {
        ui.label(current.as_str());
        return false;
    }
    let before = current.clone();
    egui::ComboBox::from_id_salt(("param", key)).selected_text(current.as_str()).show_ui(ui, |ui| {
        for choice in choices {
            ui.selectable_value(current, choice.clone(), choice);
        }
    });
    *current != before
}

/// One parameter's editor; `layers`: the values a layer parameter may take.
fn value_ui(ui: &mut egui::Ui, key: &str, value: &mut Value, layers: &std::ops::RangeInclusive<usize>) -> bool {
    let is_layer = key.contains("layer");
    match value {
        Value::Bool(b) => ui.checkbox(b, "").changed(),
        Value::Number(n) if n.is_u64() && is_layer => {
            let mut v = n.as_u64().unwrap_or(0) as usize;
            let changed = ui.add(egui::Slider::new(&mut v, layers.clone())).changed();
            *value = Value::from(v);
            changed
        }
        Value::Number(n) if n.is_u64() => {
            let mut v = n.as_u64().unwrap_or(0);
            let changed = ui.add(egui::DragValue::new(&mut v)).changed();
            *value = Value::from(v);
            changed
        }
        Value::Number(n) => {
            let mut v = n.as_f64().unwrap_or(0.0);
            let changed = ui.add(egui::DragValue::new(&mut v).speed(0.01).max_decimals(3)).changed();
            *value = Value::from(v);
            changed
        }
        Value::Null => {
            // An optional parameter left to the method's default.
            let mut auto = true;
            ui.horizontal(|ui| {
                if ui.checkbox(&mut auto, "auto").changed() && !auto {
                    *value = if is_layer { Value::from(*layers.end()) } else { Value::from(0.5) };
                    return true;
                }
                false
            })
            .inner
        }
        Value::Array(items) if is_layer => {
            let mut text = items.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
            let edited =
                ui.add(egui::TextEdit::singleline(&mut text).hint_text("e.g. 8, 9, 10").desired_width(120.0)).changed();
            if edited {
                let layers: Vec<Value> = text
                    .split(',')
                    .filter_map(|t| t.trim().parse::<usize>().ok())
                    .filter(|l| layers.contains(l))
                    .map(Value::from)
                    .collect();
                *items = layers;
            }
            edited
        }
        other => {
            ui.label(other.to_string());
            false
        }
    }
}

/// The colormap, the heatmap's opacity and the maps' scale.
pub fn look_ui(s: &mut super::Settings, ui: &mut egui::Ui) {
    egui::ComboBox::from_label("colormap").selected_text(s.colormap.name()).show_ui(ui, |ui| {
        for cm in Colormap::ALL {
            ui.selectable_value(&mut s.colormap, cm, cm.name());
        }
    });
    ui.add(egui::Slider::new(&mut s.opacity, 0.0..=1.0).text("opacity"));
    egui::ComboBox::from_label("map scale").selected_text(s.scale.label()).show_ui(ui, |ui| {
        for scale in super::MapScale::ALL {
            ui.selectable_value(&mut s.scale, scale, scale.label());
        }
    });
}

/// The most probable labels with the full and the reduced model's probabilities.
pub fn labels_ui(ui: &mut egui::Ui, full: &Output, reduced: Option<&Output>) {
    let bar = ((ui.available_width() - 110.0) / 2.0).clamp(36.0, 90.0);
    egui::Grid::new(ui.next_auto_id()).num_columns(3).spacing([8.0, 4.0]).show(ui, |ui| {
        ui.label("");
        ui.label(egui::RichText::new("full").small());
        ui.label(egui::RichText::new("reduced").small());
        ui.end_row();
        let index = |o: &Output, label: &str| o.labels.iter().position(|l| l == label);
        for (label, p) in full.top(8) {
            ui.label(&label);
            ui.add(egui::ProgressBar::new(p).text(format!("{p:.3}")).desired_width(bar));
            match reduced.and_then(|r| index(r, &label).map(|i| r.values[i])) {
                Some(q) => ui.add(egui::ProgressBar::new(q).text(format!("{q:.3}")).desired_width(bar)),
                None => ui.spinner(),
            };
            ui.end_row();
        }
    });
}

/// "12.13 G", "38.2 M".
pub fn flops(v: f64) -> String {
    if v >= 1e9 { format!("{:.2} G", v / 1e9) } else { format!("{:.1} M", v / 1e6) }
}

/// The method picker (`id`: one per picker on screen; `width` of its button), vision side then
/// language side; methods the model (`caps`) refuses are greyed out with the reason.
pub fn method_menu(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug,
    width: f32,
    caps: &Capabilities,
    method: &mut Method,
) {
    let label = method.label();
    egui::ComboBox::from_id_salt(("vlm_method", id)).selected_text(label).width(width).height(480.0).show_ui(
        ui,
        |ui| {
            let all = Method::all();
            for (title, side) in [("Vision side", Side::Vision), ("Language side", Side::Language)] {
                ui.label(egui::RichText::new(title).strong().small());
                for m in all.iter().filter(|m| m.info().side == side) {
                    let chosen = m.name() == method.name();
                    if method_entry(ui, m, chosen, caps) {
                        *method = m.clone();
                    }
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slider_snaps_near_presets_only() {
        assert_eq!(snapped(66.0), Budget::RemoveFraction(2.0 / 3.0));
        assert_eq!(snapped(94.0), Budget::RemoveFraction(17.0 / 18.0));
        assert_eq!(snapped(50.0), Budget::RemoveFraction(0.5));
    }

    #[test]
    fn arrow_keys_step_through_presets() {
        let mut b = Budget::RemoveFraction(0.5);
        step_preset(&mut b, 1);
        assert_eq!(b, Budget::RemoveFraction(2.0 / 3.0));
        step_preset(&mut b, 1);
        assert_eq!(b, Budget::RemoveFraction(7.0 / 9.0));
        step_preset(&mut b, -1);
        step_preset(&mut b, -1);
        assert_eq!(b, Budget::RemoveFraction(0.0));
        let mut top = Budget::RemoveFraction(17.0 / 18.0);
        step_preset(&mut top, 1);
        assert_eq!(top, Budget::RemoveFraction(17.0 / 18.0));
    }
}

#[cfg(test)]
mod param_tests {
    use super::*;
    use crate::reduce::llm::LlmReducerConfig;

    #[test]
    fn enum_fields_offer_their_values_and_free_fields_none() {
        let fastv = serde_json::to_value(LlmReducerConfig::from_name("fastv").unwrap()).unwrap();
        assert_eq!(variants::<LlmReducerConfig>(&fastv, "query"), ["last", "text", "all"]);
        let random = serde_json::to_value(crate::reduce::ReducerConfig::from_name("random").unwrap()).unwrap();
        assert!(variants::<crate::reduce::ReducerConfig>(&random, "seed").is_empty());
    }
}
