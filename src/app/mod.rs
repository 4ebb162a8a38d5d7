//! The desktop app (eframe/egui). It draws from state and sends jobs to the worker; the model
//! lives on the worker thread only, and every picture comes from `render`, the same code the
//! CLI exports with.

mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use eframe::egui;
use egui::{ColorImage, TextureHandle, TextureOptions};

use crate::model::ModelSource;
use crate::render::{self, Colormap, Heatmap, Norm, OverlayStyle, Placement};
use crate::session;
pub use worker::{Analyzed, Event, Job, WorkerHandle};

/// The bundled sample photo the app opens with.
pub const SAMPLE_IMAGE: &[u8] = include_bytes!("../../assets/chelsea.png");
pub const SAMPLE_NAME: &str = "chelsea.png (sample)";

/// Which importance view the main panel shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    ClsAttention,
    Rollout,
    TokenNorms,
}

impl View {
    const ALL: [View; 3] = [View::ClsAttention, View::Rollout, View::TokenNorms];

    fn label(self) -> &'static str {
        match self {
            View::ClsAttention => "CLS attention",
            View::Rollout => "Attention rollout",
            View::TokenNorms => "Token norms",
        }
    }

    fn uses_layer(self) -> bool {
        self != View::Rollout
    }
}

/// View parameters: changing them re-renders from the cached analysis, never re-runs the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewParams {
    pub view: View,
    pub layer: usize,
    pub colormap: Colormap,
    pub opacity: f32,
}

pub struct TokenlensApp {
    worker: WorkerHandle,
    status: String,
    error: Option<String>,
    model_id: Option<String>,
    busy: bool,
    current: Option<Arc<Analyzed>>,
    params: ViewParams,
    dark: bool,
    /// Textures keyed by what they show, so unchanged views are not re-rendered.
    heat_tex: Option<(ViewParams, TextureHandle)>,
    output_tex: Option<(Colormap, TextureHandle)>,
}

impl TokenlensApp {
    pub fn new(ctx: &egui::Context, model: ModelSource, image: Option<PathBuf>) -> Self {
        let wake_ctx = ctx.clone();
        let mut worker = WorkerHandle::spawn(model, move || wake_ctx.request_repaint());
        worker.submit(match image {
            Some(path) => Job::Analyze {
                label: path,
                bytes: None,
            },
            None => Job::Analyze {
                label: SAMPLE_NAME.into(),
                bytes: Some(Arc::from(SAMPLE_IMAGE)),
            },
        });
        Self {
            worker,
            status: "Loading the model…".into(),
            error: None,
            model_id: None,
            busy: true,
            current: None,
            params: ViewParams {
                view: View::ClsAttention,
                layer: 11,
                colormap: Colormap::Viridis,
                opacity: 0.6,
            },
            dark: true,
            heat_tex: None,
            output_tex: None,
        }
    }

    /// Applies a worker event to the state.
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::Status(line) => self.status = line,
            Event::ModelReady { id } => {
                self.status = format!("Model ready: {id}");
                self.model_id = Some(id);
            }
            Event::Analyzed(done) => {
                self.busy = false;
                self.error = None;
                let t = &done.analysis.timings_ms;
                self.status = format!(
                    "{}: encoder {:.0} ms, saliency head {:.0} ms",
                    done.label.display(),
                    t.encoder_ms,
                    t.decoder_ms
                );
                self.params.layer = self
                    .params
                    .layer
                    .min(done.analysis.cls_attention.len().saturating_sub(1));
                self.current = Some(done);
                self.heat_tex = None;
                self.output_tex = None;
            }
            Event::Failed(message) => {
                self.busy = false;
                self.error = Some(message);
            }
        }
    }

    pub fn open(&mut self, path: PathBuf) {
        self.busy = true;
        self.status = format!("Analysing {}…", path.display());
        self.worker.submit(Job::Analyze {
            label: path,
            bytes: None,
        });
    }

    fn open_dialog(&mut self) {
        let picked = rfd::FileDialog::new()
            .add_filter("Images", &["png", "jpg", "jpeg"])
            .pick_file();
        if let Some(path) = picked {
            self.open(path);
        }
    }

    fn controls_ui(&mut self, ui: &mut egui::Ui) {
        ui.heading("tokenlens");
        ui.label(
            egui::RichText::new(self.model_id.as_deref().unwrap_or("loading model…"))
                .small()
                .weak(),
        );
        ui.separator();
        if ui.button("Open image…  (Ctrl+O)").clicked() {
            self.open_dialog();
        }
        ui.label(
            egui::RichText::new("or drop a PNG/JPEG on the window")
                .small()
                .weak(),
        );
        ui.add_space(8.0);
        ui.add_enabled(false, egui::TextEdit::singleline(&mut String::new()).hint_text("Prompt"))
            .on_disabled_hover_text("This vision-only model takes no prompt; text-guided methods and language models use it.");
        ui.separator();

        ui.strong("View");
        for view in View::ALL {
            ui.radio_value(&mut self.params.view, view, view.label());
        }
        let num_layers = self
            .current
            .as_ref()
            .map_or(12, |c| c.analysis.cls_attention.len());
        ui.add_enabled(
            self.params.view.uses_layer(),
            egui::Slider::new(&mut self.params.layer, 0..=num_layers.saturating_sub(1))
                .text("layer"),
        );
        ui.add_space(8.0);
        egui::ComboBox::from_label("colormap")
            .selected_text(self.params.colormap.name())
            .show_ui(ui, |ui| {
                for cm in Colormap::ALL {
                    ui.selectable_value(&mut self.params.colormap, cm, cm.name());
                }
            });
        ui.add(egui::Slider::new(&mut self.params.opacity, 0.0..=1.0).text("opacity"));
        ui.separator();
        if ui.checkbox(&mut self.dark, "dark theme").changed() {
            ui.ctx().set_theme(if self.dark {
                egui::Theme::Dark
            } else {
                egui::Theme::Light
            });
        }
    }

    /// The overlay for the current view, rendered by `render::overlay` and cached as a texture.
    fn heat_texture(&mut self, ctx: &egui::Context) -> Option<TextureHandle> {
        let current = self.current.as_ref()?;
        if let Some((params, tex)) = &self.heat_tex
            && *params == self.params
        {
            return Some(tex.clone());
        }
        let a = &current.analysis;
        let p = self.params;
        let (values, title) = match p.view {
            View::ClsAttention => (
                &a.cls_attention[p.layer],
                format!("CLS attention, layer {} (mean of heads)", p.layer),
            ),
            View::Rollout => (&a.rollout, "Attention rollout, all layers".to_string()),
            View::TokenNorms => (
                &a.token_norms[p.layer],
                format!("Token norms after layer {}", p.layer),
            ),
        };
        let heat = Heatmap {
            rows: a.grid[0],
            cols: a.grid[1],
            values: values.clone(),
        };
        let style = OverlayStyle {
            colormap: p.colormap,
            opacity: p.opacity,
            title: Some(title),
            max_side: 640,
            ..OverlayStyle::default()
        };
        let tex = to_texture(
            ctx,
            "heat",
            &render::overlay(&current.input.photo, &heat, &placement(current), &style),
        );
        self.heat_tex = Some((p, tex.clone()));
        Some(tex)
    }

    fn output_texture(&mut self, ctx: &egui::Context) -> Option<TextureHandle> {
        let current = self.current.as_ref()?;
        if let Some((cm, tex)) = &self.output_tex
            && *cm == self.params.colormap
        {
            return Some(tex.clone());
        }
        let out = &current.analysis.output;
        let heat = Heatmap {
            rows: out.shape[0],
            cols: out.shape[1],
            values: out.values.clone(),
        };
        let style = OverlayStyle {
            colormap: self.params.colormap,
            opacity: 0.6,
            norm: Norm::Range { lo: 0.0, hi: 1.0 },
            title: Some("Saliency (model output)".into()),
            max_side: 400,
            smooth: true,
            ..OverlayStyle::default()
        };
        let tex = to_texture(
            ctx,
            "output",
            &render::overlay(&current.input.photo, &heat, &placement(current), &style),
        );
        self.output_tex = Some((self.params.colormap, tex.clone()));
        Some(tex)
    }
}

fn placement(current: &Analyzed) -> Placement {
    let input = &current.input;
    let (x0, y0, x1, y1) = session::canvas_in_photo(
        &input.prepared.content,
        input.photo.dimensions(),
        input.prepared.canvas.width(),
    );
    Placement { x0, y0, x1, y1 }
}

fn to_texture(ctx: &egui::Context, name: &str, img: &image::RgbImage) -> TextureHandle {
    let size = [img.width() as usize, img.height() as usize];
    ctx.load_texture(
        name,
        ColorImage::from_rgb(size, img.as_raw()),
        TextureOptions::LINEAR,
    )
}

impl eframe::App for TokenlensApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        while let Ok(event) = self.worker.events.try_recv() {
            self.apply(event);
        }
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        if let Some(path) = dropped.into_iter().next() {
            self.open(path);
        }
        if ctx.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, egui::Key::O)) {
            self.open_dialog();
        }

        egui::Panel::bottom("status").show(ui, |ui| {
            ui.horizontal(|ui| {
                if self.busy {
                    ui.spinner();
                }
                match &self.error {
                    Some(e) => ui.colored_label(ui.visuals().error_fg_color, format!("⚠ {e}")),
                    None => ui.label(&self.status),
                };
            });
        });
        egui::Panel::left("controls")
            .size_range(220.0..=320.0)
            .show(ui, |ui| self.controls_ui(ui));
        let output = self.output_texture(&ctx);
        egui::Panel::right("output")
            .size_range(320.0..=640.0)
            .default_size(400.0)
            .show(ui, |ui| {
                ui.strong("Output");
                if let Some(tex) = output {
                    let width = ui.available_width();
                    let aspect = tex.size_vec2().y / tex.size_vec2().x;
                    ui.add(
                        egui::Image::new(&tex).fit_to_exact_size(egui::vec2(width, width * aspect)),
                    );
                }
            });
        let heat = self.heat_texture(&ctx);
        egui::CentralPanel::default().show(ui, |ui| match heat {
            Some(tex) => {
                ui.centered_and_justified(|ui| ui.add(egui::Image::new(&tex).shrink_to_fit()));
            }
            None => {
                ui.centered_and_justified(|ui| ui.spinner());
            }
        });
    }
}

/// Opens the window; blocks until it is closed.
pub fn run(model: ModelSource, image: Option<PathBuf>) -> Result<(), String> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("tokenlens")
            .with_inner_size([1280.0, 760.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "tokenlens",
        options,
        Box::new(move |cc| Ok(Box::new(TokenlensApp::new(&cc.egui_ctx, model, image)))),
    )
    .map_err(|e| format!("could not open a window: {e}"))
}
