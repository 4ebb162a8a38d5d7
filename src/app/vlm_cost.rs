//! VLM mode's right panel, bottom: the cost of the full and the reduced run: times, tokens per
//! second, KV-cache bytes, and theoretical FLOPs for the encoder, the projector and each decoder
//! layer with its own token count.

use eframe::egui;
use egui::{Color32, RichText};
use egui_plot::{Bar, BarChart, Plot};

use super::TokenlensApp;
use super::widgets::flops;
use crate::model::memory::{Estimate, gb};
use crate::session::vlm::{VlmCost, VlmRun};

/// "1.50 MB", "12.0 kB".
pub fn bytes(b: usize) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}

/// The bars of one run's per-layer decoder FLOPs, shifted by `offset` so two runs sit side by
/// side; each bar is named with its layer's token count (shown on hover).
pub fn layer_bars(cost: &VlmCost, offset: f64, who: &str) -> Vec<Bar> {
    cost.decoder_flops
        .iter()
        .zip(&cost.decoder_tokens)
        .enumerate()
        .map(|(l, (&f, &n))| {
            Bar::new(l as f64 + offset, f / 1e6)
                .width(0.38)
                .name(format!("{who}, layer {l}: {}", crate::render::text::count(n, "token", "tokens")))
        })
        .collect()
}

pub fn cost_ui(app: &TokenlensApp, ui: &mut egui::Ui) {
    let Some(vlm) = &app.vlm else { return };
    let Some(opened) = vlm.opened() else { return };
    let full = &opened.run;
    let reduced = vlm.run.value.as_deref().filter(|_| !vlm.run.pending);
    ui.add_space(8.0);
    ui.strong("Cost");
    if let Some(m) = &vlm.memory {
        ui.label(RichText::new(memory_line(m)).small()).on_hover_text(m.summary());
    }
    cost_table_ui(ui, full, reduced);
    let mut charts = vec![BarChart::new("full", layer_bars(&full.cost, -0.2, "full")).color(Color32::GRAY)];
    if let Some(r) = reduced {
        charts
            .push(BarChart::new("reduced", layer_bars(&r.cost, 0.2, "reduced")).color(Color32::from_rgb(80, 160, 255)));
    }
    Plot::new("vlm_layer_flops")
        .height(150.0)
        .include_y(0.0)
        .x_axis_label("decoder layer")
        .y_axis_label("prefill MFLOPs")
        .allow_zoom(false)
        .allow_drag(false)
        .allow_scroll(false)
        .show(ui, |plot| {
            for chart in charts {
                plot.bar_chart(chart);
            }
        });
    ui.label(
        RichText::new("grey: full model · blue: reduced · hover a bar for its layer's token count").small().weak(),
    );
    let tokens = |r: &VlmRun| r.cost.decoder_tokens.iter().map(usize::to_string).collect::<Vec<_>>().join(" ");
    ui.label(RichText::new(format!("tokens per layer, full: {}", tokens(full))).small());
    if let Some(r) = reduced {
        ui.label(RichText::new(format!("tokens per layer, reduced: {}", tokens(r))).small());
        ui.label(
            RichText::new(format!(
                "image rows, layer-averaged: {:.1} of {} (stage {})",
                r.layer_averaged_image_rows, r.num_image_tokens, r.stage
            ))
            .small(),
        );
    }
    ui.label(
        RichText::new("decoder layer FLOPs ≈ 2 (2 n d² + 2 n d kv + 2 n² d) + 6 n d m, with each layer's own n")
            .small()
            .weak(),
    );
}

/// The model's memory as the guard estimated it at load: weights in their dtype (with
/// `--quantize`: how many linear layers are quantized), the KV cache; on a GPU, the device's
/// total and the host's.
pub fn memory_line(m: &Estimate) -> String {
    let on = m.device.as_ref().map_or(String::new(), |d| format!(" on {d} (host {})", gb(m.host_bytes())));
    format!(
        "weights {} ({}, {:.2} B parameters) · KV cache {} ({}, {}) · estimate {}{on}",
        gb(m.weight_bytes()),
        m.format(),
        m.parameters as f64 / 1e9,
        gb(m.kv_bytes()),
        crate::render::text::count(m.kv_tokens, "token", "tokens"),
        m.kv_dtype(),
        gb(m.total())
    )
}

fn cost_table_ui(ui: &mut egui::Ui, full: &VlmRun, reduced: Option<&VlmRun>) {
    type Row = (&'static str, &'static str, fn(&VlmCost) -> String);
    let rows: [Row; 9] = [
        ("encoder", "vision tower FLOPs", |c| flops(c.encoder_flops)),
        ("projector", "projector / connector FLOPs", |c| flops(c.projector_flops)),
        ("decoder", "prefill FLOPs summed over the decoder layers", |c| flops(c.decoder_flops.iter().sum())),
        ("total FLOPs", "encoder + projector + decoder prefill", |c| flops(c.total_flops())),
        ("prefill", "the decoder over the prompt (measured)", |c| format!("{:.0} ms", c.prefill_ms)),
        ("decode", "generating the answer (measured)", |c| format!("{:.0} ms", c.decode_ms)),
        ("tokens / s", "answer tokens per second of decoding", |c| format!("{:.1}", c.tokens_per_s)),
        ("KV after prefill", "keys and values cached (f16 under --quantize, else f32)", |c| bytes(c.kv_bytes_prefill)),
        ("KV at the end", "after the last answer token", |c| bytes(c.kv_bytes_end)),
    ];
    egui::Grid::new("vlm_cost").num_columns(3).striped(true).show(ui, |ui| {
        ui.label("");
        ui.label(RichText::new("full").small());
        ui.label(RichText::new("reduced").small());
        ui.end_row();
        for (name, hint, value) in rows {
            ui.label(name).on_hover_text(hint);
            ui.monospace(value(&full.cost));
            ui.monospace(reduced.map_or_else(|| "…".into(), |r| value(&r.cost)));
            ui.end_row();
        }
        ui.label("vision (ms)").on_hover_text("the vision tower, run once per image and shared");
        ui.monospace(format!("{:.0} ms", full.cost.encoder_ms));
        ui.monospace("cached");
        ui.end_row();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_plainly() {
        assert_eq!(bytes(1_500_000), "1.50 MB");
        assert_eq!(bytes(12_000), "12.0 kB");
    }

    #[test]
    fn the_memory_line_shows_weights_dtype_and_kv() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/published/llava-1.5-7b-hf");
        let m = crate::session::vlm::Arch::memory_estimate(&dir).unwrap().unwrap();
        let line = memory_line(&m);
        // 7,063,427,072 parameters x 4 bytes but the float16 embedding table's 131,334,144 x 2;
        // 2 x 32 layers x 4096 x 704 tokens (576 of the image, 128 of text) x 4 bytes.
        assert!(
            line.starts_with("weights 27.99 GB (f32, 7.06 B parameters) · KV cache 0.74 GB (704 tokens, f32)"),
            "{line}"
        );
        // With --quantize q8_0: the quantized bytes, and how many linear layers took it.
        let options = crate::model::quant::LoadOptions {
            quantize: Some(crate::model::quant::Quantize::Q8_0),
            ..Default::default()
        };
        let q8 = crate::session::vlm::Arch::memory_estimate_with(&dir, options).unwrap().unwrap();
        let line = memory_line(&q8);
        assert!(
            line.contains("(q8_0: 227 of 227 linear layers, the tower's 96 q8_0, the rest f32, 7.06 B parameters)"),
            "{line}"
        );
        assert!(q8.weight_bytes() < m.weight_bytes() / 3, "{line}");
        // On a GPU in bf16: the device's estimate, and the host's beside it.
        let line = memory_line(&m.on_device("cuda:0", Some(candle_core::DType::BF16)));
        assert!(
            line.contains("(bf16 linear layers, the rest f32, 7.06 B") && line.contains(" on cuda:0 (host "),
            "{line}"
        );
    }

    #[test]
    fn each_layer_bar_carries_its_token_count() {
        let cost = VlmCost { decoder_flops: vec![2e6, 1e6], decoder_tokens: vec![33, 25], ..VlmCost::default() };
        let bars = layer_bars(&cost, 0.2, "reduced");
        assert_eq!(bars.len(), 2);
        assert_eq!(bars[1].name, "reduced, layer 1: 25 tokens");
        assert!((bars[1].argument - 1.2).abs() < 1e-12 && (bars[0].value - 2.0).abs() < 1e-12);
    }
}
