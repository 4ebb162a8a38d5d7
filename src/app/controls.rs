//! The left panel: image, method, budget, parameters and view settings.

use eframe::egui;
use serde_json::Value;

use super::{Head, Overlay, TokenlensApp};
use crate::model::ModelSource;
use crate::reduce::budget::PRESETS_REMOVED;
use crate::reduce::{Budget, PositionMode, ReducerConfig};
use crate::render::Colormap;
use crate::session::DropFill;

/// A slider value within this many percentage points of a preset snaps to it.
const SNAP_POINTS: f64 = 1.2;
/// The slider works in fractions; a token count only enters `Budget::Keep`, which it never makes.
const NUM_PATCHES: usize = 256;

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

pub fn controls_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    ui.spacing_mut().slider_width = 150.0;
    section(ui, "Image");
    ui.horizontal(|ui| {
        if ui.button("Open…").on_hover_text("Ctrl+O, or drop a PNG/JPEG on the window").clicked() {
            app.open_dialog();
        }
        let recent = app.settings.recent.clone();
        ui.add_enabled_ui(!recent.is_empty(), |ui| {
            ui.menu_button("Recent", |ui| {
                for path in recent {
                    if ui.button(path.display().to_string()).clicked() {
                        app.open(path);
                        ui.close();
                    }
                }
            });
        });
    });
    if let Some(opened) = &app.opened {
        let (w, h) = opened.input.photo.dimensions();
        ui.label(egui::RichText::new(format!("{}  ·  {w}×{h}", short_name(&opened.label))).small());
    }
    model_ui(app, ui);
    if app.vlm.is_some() {
        super::vlm::controls_ui(app, ui);
        return;
    }

    section(ui, "Method");
    method_ui(app, ui);

    section(ui, "Budget");
    budget_ui(app, ui);

    section(ui, "Parameters");
    let num_layers = app.num_layers();
    params_ui(ui, &mut app.settings.spec.reducer, 0..=num_layers - 1);
    ui.horizontal(|ui| {
        ui.label("Dropped patches").on_hover_text("What the saliency head sees where no token survives");
        ui.radio_value(&mut app.settings.spec.fill, DropFill::Zeros, "zeros");
        ui.radio_value(&mut app.settings.spec.fill, DropFill::MeanToken, "mean token");
    });
    ui.horizontal(|ui| {
        ui.label("Positions").on_hover_text(
            "Position ids after pruning: matters for language models; a ViT adds positions before block 0",
        );
        ui.radio_value(&mut app.settings.spec.positions, PositionMode::Preserve, "preserve");
        ui.radio_value(&mut app.settings.spec.positions, PositionMode::Compact, "compact");
    });

    section(ui, "View");
    view_ui(app, ui);
}

/// The model picker and the prompt box (enabled for models that score labels).
fn model_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    let (mut to_default, mut pick_folder) = (false, false);
    ui.horizontal(|ui| {
        ui.label("Model");
        let current = app.model_id.clone().unwrap_or_else(|| "loading…".into());
        egui::ComboBox::from_id_salt("model").selected_text(current).width(200.0).show_ui(ui, |ui| {
            let on_default = app.model_source == ModelSource::Default;
            to_default = ui.selectable_label(on_default, "DINOv2-S/14 saliency (default)").clicked() && !on_default;
            pick_folder = ui
                .button("Hugging Face folder…")
                .on_hover_text(
                    "config.json + model.safetensors + preprocessor_config.json (+ tokenizer.json for CLIP/SigLIP): \
                     ViT, DeiT, DINOv2, CLIP and SigLIP; or a vision-language model (LLaVA, SmolVLM) with its \
                     tokenizer files",
                )
                .clicked();
            ui.separator();
            ui.set_max_width(420.0);
            ui.add(egui::Label::new(egui::RichText::new(super::vlm::HOW_TO_GET).small()).wrap());
        });
    });
    if to_default {
        app.switch_model(ModelSource::Default);
    }
    if pick_folder {
        app.model_dialog();
    }
    if let Some(vlm) = app.vlm.as_mut() {
        if let Some(q) = question_box(ui, &mut vlm.draft, &app.settings.vlm.question) {
            app.settings.vlm.question = q;
        }
        return;
    }
    let prompt = egui::TextEdit::singleline(&mut app.settings.prompt).hint_text("labels, comma-separated");
    let response = ui.add_enabled(app.takes_prompt, prompt);
    if !app.takes_prompt {
        response.on_disabled_hover_text(
            "This model takes no prompt. CLIP and SigLIP score the labels typed here; \
             text-guided methods and vision-language models use it too.",
        );
    } else if response.lost_focus() && app.prompt_changed() {
        app.reopen();
    }
}

pub(super) fn section(ui: &mut egui::Ui, title: &str) {
    ui.add_space(6.0);
    ui.label(egui::RichText::new(title).strong());
    ui.separator();
}

fn short_name(path: &std::path::Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn method_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    let current = app.settings.spec.reducer.info();
    egui::ComboBox::from_id_salt("method").selected_text(current.label).width(200.0).show_ui(ui, |ui| {
        for config in ReducerConfig::defaults() {
            let info = config.info();
            let chosen = app.settings.spec.reducer.name() == info.name;
            if ui.selectable_label(chosen, info.label).on_hover_text(info.description).clicked() && !chosen {
                app.settings.spec.reducer = config;
            }
        }
    });
    ui.label(egui::RichText::new(current.description).small());
    ui.label(egui::RichText::new(current.paper).small().weak().italics());
    if let Some(opened) = &app.opened {
        let ctx = crate::reduce::Context {
            num_layers: opened.analysis.cls_attention.len(),
            grid: (opened.analysis.grid[0], opened.analysis.grid[1]),
            num_special: opened.analysis.num_special,
        };
        if let Some(note) = app.settings.spec.reducer.note_for(&ctx) {
            ui.label(egui::RichText::new(format!("Note: {note}")).small().color(ui.visuals().warn_fg_color));
        }
    }
    if let Some(caveat) = current.caveat {
        ui.label(egui::RichText::new(format!("Note: {caveat}")).small().color(ui.visuals().warn_fg_color));
    }
}

pub(super) fn budget_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
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

fn view_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    let s = &mut app.settings;
    for (i, overlay) in Overlay::ALL.into_iter().enumerate() {
        ui.radio_value(&mut s.overlay, overlay, overlay.label()).on_hover_text(format!("key {}", i + 1));
    }
    let num_layers = app.opened.as_ref().map_or(12, |o| o.analysis.cls_attention.len());
    ui.add_enabled(s.overlay.uses_layer(), egui::Slider::new(&mut s.layer, 0..=num_layers - 1).text("layer"))
        .on_hover_text("[ and ] step the layer");
    let num_heads = app.opened.as_ref().map_or(6, |o| o.analysis.cls_attention_heads.first().map_or(6, Vec::len));
    ui.add_enabled_ui(s.overlay == Overlay::Attention, |ui| {
        egui::ComboBox::from_label("head")
            .selected_text(match s.head {
                Head::Mean => "mean of heads".to_string(),
                Head::One(h) => format!("head {h}"),
            })
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut s.head, Head::Mean, "mean of heads");
                for h in 0..num_heads {
                    ui.selectable_value(&mut s.head, Head::One(h), format!("head {h}"));
                }
            });
    });
    look_ui(s, ui);
}

/// The question box and its Ask button; the new question when it is sent (Enter, Ask, or leaving
/// the box) and differs from `asked`. Shift+Enter is a newline.
fn question_box(ui: &mut egui::Ui, draft: &mut String, asked: &str) -> Option<String> {
    let id = ui.make_persistent_id("vlm_question");
    // Taken before the text edit sees it, which would insert a newline.
    // (`consume_key` matches Shift+Enter too: it ignores Shift for keys that have no shifted form.)
    let plain_enter = |e: &egui::Event| matches!(e, egui::Event::Key { key: egui::Key::Enter, pressed: true, modifiers, .. } if modifiers.is_none());
    let enter = ui.memory(|m| m.has_focus(id))
        && ui.input_mut(|i| {
            let before = i.events.len();
            i.events.retain(|e| !plain_enter(e));
            i.events.len() < before
        });
    let question = egui::TextEdit::multiline(draft).id(id).hint_text("a question about the image").desired_rows(2);
    let response = ui.add(question).on_hover_text("Enter asks the question; Shift+Enter starts a new line");
    let ask = ui.button("Ask").on_hover_text("run the model on this question").clicked();
    ((enter || ask || response.lost_focus()) && question_to_send(draft, asked)).then(|| draft.trim_end().to_owned())
}

/// The question box's text is a new question: not blank and not the one already asked.
fn question_to_send(draft: &str, asked: &str) -> bool {
    let draft = draft.trim_end();
    !draft.trim().is_empty() && draft != asked
}

/// The colormap, the heatmap's opacity and the maps' scale.
pub(super) fn look_ui(s: &mut super::Settings, ui: &mut egui::Ui) {
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
mod question_tests {
    use super::*;

    /// One frame of the question box with `events`; what it sent, and the box's text.
    fn frame(ctx: &egui::Context, draft: &mut String, events: Vec<egui::Event>) -> Option<String> {
        let input = egui::RawInput { events, ..Default::default() };
        let mut sent = None;
        let _ = ctx.run_ui(input, |ui| {
            sent = question_box(ui, draft, "What is in the image?");
        });
        sent
    }

    fn key(key: egui::Key, modifiers: egui::Modifiers) -> egui::Event {
        egui::Event::Key { key, physical_key: None, pressed: true, repeat: false, modifiers }
    }

    #[test]
    fn enter_sends_and_shift_enter_adds_a_line() {
        let ctx = egui::Context::default();
        let mut draft = "What is in the image?".to_owned();
        frame(&ctx, &mut draft, vec![]);
        // Focus the box by its id as the box makes it.
        let _ = ctx.run_ui(Default::default(), |ui| {
            let id = ui.make_persistent_id("vlm_question");
            ui.memory_mut(|m| m.request_focus(id));
        });
        frame(&ctx, &mut draft, vec![]);
        let typed = frame(&ctx, &mut draft, vec![egui::Event::Text(" Why".into())]);
        assert_eq!(typed, None, "typing sends nothing");
        let newline = frame(&ctx, &mut draft, vec![key(egui::Key::Enter, egui::Modifiers::SHIFT)]);
        assert_eq!(newline, None);
        assert!(draft.contains('\n'), "{draft:?}");
        let sent = frame(&ctx, &mut draft, vec![key(egui::Key::Enter, egui::Modifiers::NONE)]);
        assert_eq!(sent.as_deref(), Some(draft.trim_end()));
        assert!(question_to_send("a new one", "asked") && !question_to_send("  \n", "asked"));
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
