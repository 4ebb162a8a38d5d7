//! The export options window: a figure's size (inches at a DPI, or pixels), font scale, title
//! (on, off or one's own), key (colour bar or legend) and the compare grid's metrics. The look on screen (colormap, opacity,
//! map scale) comes from the settings, so an export shows what the view shows.

use eframe::egui;

use super::Settings;
use crate::export::{self, Look};

/// What the window holds; kept for the session.
pub struct ExportOptions {
    pub open: bool,
    pub title: bool,
    /// Blank: the made-up title (the method, or the model and the image's file name).
    pub title_text: String,
    pub colorbar: bool,
    /// The compare grid's metrics under each method (as the compare view shows them).
    pub metrics: bool,
    pub font_scale: f32,
    /// Size by DPI and inches, else by pixels.
    pub by_dpi: bool,
    pub dpi: u32,
    pub width_in: f64,
    pub panel_px: u32,
}

impl Default for ExportOptions {
    fn default() -> Self {
        let look = Look::default();
        Self {
            open: false,
            title: look.title,
            title_text: String::new(),
            colorbar: look.colorbar,
            metrics: true,
            font_scale: look.font_scale,
            by_dpi: false,
            dpi: 300,
            width_in: export::COLUMN_WIDTH_IN,
            panel_px: look.panel_px,
        }
    }
}

impl ExportOptions {
    /// The look of an export now: these options with the view's colormap, opacity and scale.
    pub fn look(&self, settings: &Settings) -> Look {
        Look {
            colormap: settings.colormap,
            opacity: settings.opacity,
            scale: settings.scale,
            title: self.title,
            title_text: Some(self.title_text.clone()).filter(|t| !t.trim().is_empty()),
            colorbar: self.colorbar,
            font_scale: self.font_scale,
            panel_px: self.panel_px,
            dpi: self.by_dpi.then_some(self.dpi),
            width_in: self.width_in,
            metrics: self.metrics,
        }
    }

    pub fn ui(&mut self, ctx: &egui::Context) {
        let mut open = self.open;
        egui::Window::new("Export options").open(&mut open).resizable(false).show(ctx, |ui| {
            egui::Grid::new("export-options").num_columns(2).show(ui, |ui| {
                ui.label("Size");
                ui.horizontal(|ui| {
                    ui.radio_value(&mut self.by_dpi, false, "pixels");
                    ui.radio_value(&mut self.by_dpi, true, "inches at a DPI");
                });
                ui.end_row();
                if self.by_dpi {
                    ui.label("Panel width");
                    ui.add(egui::DragValue::new(&mut self.width_in).range(0.25..=20.0).speed(0.05).suffix(" in"));
                    ui.end_row();
                    ui.label("DPI");
                    ui.add(egui::DragValue::new(&mut self.dpi).range(30..=export::MAX_DPI));
                    ui.end_row();
                } else {
                    ui.label("Panel size");
                    ui.add(
                        egui::DragValue::new(&mut self.panel_px)
                            .range(export::MIN_PANEL_PX..=export::MAX_PANEL_PX)
                            .suffix(" px"),
                    )
                    .on_hover_text("the photo's longest side in each panel");
                    ui.end_row();
                }
                ui.label("Font scale");
                ui.add(egui::Slider::new(
                    &mut self.font_scale,
                    *export::FONT_SCALES.start()..=*export::FONT_SCALES.end(),
                ))
                .on_hover_text("1: every text at least 6 pt with the figure one paper column (3.25 in) wide");
                ui.end_row();
                ui.label("Title");
                ui.horizontal(|ui| {
                    ui.checkbox(&mut self.title, "");
                    ui.add_enabled(
                        self.title,
                        egui::TextEdit::singleline(&mut self.title_text).hint_text("automatic").desired_width(180.0),
                    );
                });
                ui.end_row();
                ui.label("Key");
                ui.checkbox(&mut self.colorbar, "colour bar / token legend");
                ui.end_row();
                ui.label("Metrics");
                ui.checkbox(&mut self.metrics, "compare grid: each method's metrics, the best highlighted");
                ui.end_row();
            });
        });
        self.open = open;
    }
}
