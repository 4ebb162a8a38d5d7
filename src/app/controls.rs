//! The left panel: image, method, budget, parameters and view settings.

use eframe::egui;

use super::widgets::{budget_ui, look_ui, method_entry, params_ui, section};
use super::{Command, Head, MapSource, Overlay, Tab, TokenlensApp};
use crate::model::ModelSource;
use crate::reduce::{Capabilities, Method, PositionMode, ReducerConfig};
use crate::session::DropFill;

pub fn controls_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    ui.spacing_mut().slider_width = 150.0;
    section(ui, "Image");
    ui.horizontal(|ui| {
        if ui.button("Open…").on_hover_text("Ctrl+O, or drop a PNG/JPEG on the window").clicked() {
            app.command(Command::OpenDialog);
        }
        let recent = app.settings.recent.clone();
        ui.add_enabled_ui(!recent.is_empty(), |ui| {
            ui.menu_button("Recent", |ui| {
                for path in recent {
                    if ui.button(path.display().to_string()).clicked() {
                        app.command(Command::Open(path));
                        ui.close();
                    }
                }
            });
        });
    });
    if let Some(opened) = &app.results.opened {
        let (w, h) = opened.input.photo.dimensions();
        ui.label(egui::RichText::new(format!("{}  ·  {w}×{h}", short_name(&opened.label))).small());
    }
    model_ui(app, ui);
    if app.vlm.is_some() {
        super::vlm::controls_ui(app, ui);
        return;
    }
    if app.settings.tab == Tab::Compare {
        compare_controls_ui(app, ui);
        return;
    }

    section(ui, "Method");
    method_ui(app, ui);

    section(ui, "Budget");
    budget_ui(app, ui);

    section(ui, "Parameters");
    let num_layers = app.num_layers();
    if let Some(reducer) = app.settings.spec.reducer_mut() {
        params_ui(ui, reducer, 0..=num_layers - 1);
    }
    options_ui(app, ui);

    section(ui, "View");
    view_ui(app, ui, false);
}

/// The compare view's controls: its methods, the one budget, the options all runs share, and
/// what the panels show. (The single method's picker and parameters do nothing there.)
fn compare_controls_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    section(ui, "Methods (2 to 4)");
    let n = app.settings.compare.len();
    let mut remove = None;
    for i in 0..n {
        ui.horizontal(|ui| {
            let current = app.settings.compare[i].clone();
            egui::ComboBox::from_id_salt(("compare", i)).selected_text(current.info().label).width(170.0).show_ui(
                ui,
                |ui| {
                    for config in ReducerConfig::defaults() {
                        let info = config.info();
                        if ui
                            .selectable_label(config.name() == current.name(), info.label)
                            .on_hover_text(info.description)
                            .clicked()
                        {
                            app.settings.compare[i] = config;
                        }
                    }
                },
            );
            if n > 2 && ui.small_button("remove").on_hover_text("remove this method").clicked() {
                remove = Some(i);
            }
        });
    }
    if let Some(i) = remove {
        app.settings.compare.remove(i);
    }
    if n < 4 && ui.button("+ method").clicked() {
        app.settings.compare.push(ReducerConfig::from_name("random").expect("a built-in method"));
    }
    ui.label(egui::RichText::new("Each method with its default parameters.").small().weak());

    section(ui, "Budget (all methods)");
    budget_ui(app, ui);
    options_ui(app, ui);

    section(ui, "View");
    view_ui(app, ui, true);
}

/// What fills dropped patches, and how positions are carried.
fn options_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
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
}

/// Where the model runs and what its linear weights are kept in (the CLI's `--device` and
/// `--dtype`); a change reloads the model. A choice the machine cannot honour (a GPU it lacks,
/// half precision on the CPU) is refused by the load, and its message shown.
fn device_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    use crate::model::quant::{DTypeChoice, DeviceChoice, LoadOptions};
    let mut options = LoadOptions::process();
    let before = options;
    ui.horizontal(|ui| {
        ui.label("Device");
        let mut devices = vec![DeviceChoice::Auto, DeviceChoice::Cpu];
        devices.extend([DeviceChoice::Cuda(0), DeviceChoice::Metal].into_iter().filter(|d| d.compiled()));
        egui::ComboBox::from_id_salt("device")
            .selected_text(options.device.to_string())
            .show_ui(ui, |ui| {
                for d in devices {
                    ui.selectable_value(&mut options.device, d, d.to_string());
                }
            })
            .response
            .on_hover_text("auto: the first CUDA GPU of a build with the `cuda` feature, else the CPU");
        ui.label("weights");
        egui::ComboBox::from_id_salt("dtype")
            .selected_text(options.dtype.to_string())
            .show_ui(ui, |ui| {
                for d in [DTypeChoice::Auto, DTypeChoice::F32, DTypeChoice::F16, DTypeChoice::Bf16] {
                    ui.selectable_value(&mut options.dtype, d, d.to_string());
                }
            })
            .response
            .on_hover_text(
                "what a vision-language model's decoder and projector weights are kept in; f16 and bf16 run on a \
             GPU only, attention and softmax stay f32",
            );
    });
    if options != before {
        options.set_process();
        app.command(Command::SwitchModel(app.model.source.clone()));
    }
}

/// The model picker and the prompt box (enabled for models that score labels).
fn model_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    let (mut to_default, mut pick_folder) = (false, false);
    ui.horizontal(|ui| {
        ui.label("Model");
        let current = app.model.id.clone().unwrap_or_else(|| "loading…".into());
        egui::ComboBox::from_id_salt("model").selected_text(current).width(200.0).show_ui(ui, |ui| {
            let on_default = app.model.source == ModelSource::Default;
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
    device_ui(app, ui);
    if to_default {
        app.command(Command::SwitchModel(ModelSource::Default));
    }
    if pick_folder {
        app.command(Command::ModelDialog);
    }
    if let Some(vlm) = app.vlm.as_mut() {
        if let Some(q) = question_box(ui, &mut vlm.draft, &app.settings.vlm.question) {
            app.settings.vlm.question = q;
        }
        return;
    }
    let prompt = egui::TextEdit::singleline(&mut app.settings.prompt).hint_text("labels, comma-separated");
    let response = ui.add_enabled(app.model.takes_prompt, prompt);
    if !app.model.takes_prompt {
        response.on_disabled_hover_text(
            "This model takes no prompt. CLIP and SigLIP score the labels typed here; \
             text-guided methods and vision-language models use it too.",
        );
    } else if response.lost_focus() && app.prompt_changed() {
        app.command(Command::Reopen);
    }
}

fn short_name(path: &std::path::Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn method_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    let current = app.settings.spec.method.as_ref().map_or_else(|| Method::all()[0].info(), Method::info);
    egui::ComboBox::from_id_salt("method").selected_text(current.label).width(200.0).show_ui(ui, |ui| {
        // Every method of the registry: an image encoder greys out the language-side ones.
        for method in Method::all() {
            let chosen = app.settings.spec.method.as_ref().is_some_and(|m| m.name() == method.name());
            if method_entry(ui, &method, chosen, &Capabilities::ENCODER)
                && let Method::Vision(config) = method
            {
                app.settings.spec.method = Some(Method::Vision(config));
            }
        }
    });
    ui.label(egui::RichText::new(current.description).small());
    ui.label(egui::RichText::new(current.paper).small().weak().italics());
    if let Some(opened) = &app.results.opened {
        let ctx = crate::reduce::Context::encoder(
            opened.analysis.cls_attention.len(),
            (opened.analysis.grid[0], opened.analysis.grid[1]),
            opened.analysis.num_special,
        );
        if let Some(note) = app.settings.spec.reducer().and_then(|r| r.note_for(&ctx)) {
            ui.label(egui::RichText::new(format!("Note: {note}")).small().color(ui.visuals().warn_fg_color));
        }
    }
    if let Some(caveat) = current.caveat {
        ui.label(egui::RichText::new(format!("Note: {caveat}")).small().color(ui.visuals().warn_fg_color));
    }
}

/// The overlay and its layer, head, source and look. `compare`: the compare view's panels, where
/// the full model's column shows the full model and each method's its own reduced model.
fn view_ui(app: &mut TokenlensApp, ui: &mut egui::Ui, compare: bool) {
    let s = &mut app.settings;
    for (i, overlay) in Overlay::ALL.into_iter().enumerate() {
        ui.radio_value(&mut s.overlay, overlay, overlay.label()).on_hover_text(format!("key {}", i + 1));
    }
    if compare {
        ui.label(
            egui::RichText::new("Maps: the full model in its column, each method's reduced model in its own")
                .small()
                .weak(),
        );
    }
    ui.add_enabled_ui(s.overlay.has_source() && !compare, |ui| {
        ui.horizontal(|ui| {
            ui.label("from").on_hover_text(
                "The full model's attention, or the reduced run's own: its blocks attend over the kept and merged \
                 tokens; a merged token's attention is split over its patches, its norm shown on each",
            );
            for source in [MapSource::Full, MapSource::Reduced] {
                ui.radio_value(&mut s.source, source, source.label());
            }
        });
    });
    let num_layers = app.results.opened.as_ref().map_or(12, |o| o.analysis.cls_attention.len());
    ui.add_enabled(s.overlay.uses_layer(), egui::Slider::new(&mut s.layer, 0..=num_layers - 1).text("layer"))
        .on_hover_text("[ and ] step the layer");
    let num_heads =
        app.results.opened.as_ref().map_or(6, |o| o.analysis.cls_attention_heads.first().map_or(6, Vec::len));
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
