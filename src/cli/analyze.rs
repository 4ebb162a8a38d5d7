//! `tokenlens analyze`: the full model on one image.

use std::path::Path;

use anyhow::{Context, bail};
use tokenlens::render::Colormap;
use tokenlens::{Cancel, figures};

use super::{ModelArgs, write_json, write_png};

pub fn analyze(
    image: &Path,
    model: &ModelArgs,
    layer: Option<usize>,
    colormap: Colormap,
    out: &Path,
) -> anyhow::Result<()> {
    let session = model.load()?;
    let num_layers = session.model()?.encoder.num_layers();
    let layer = layer.unwrap_or(num_layers - 1);
    if layer >= num_layers {
        bail!("--layer {layer} is out of range: the model has layers 0..={}", num_layers - 1);
    }
    let t0 = std::time::Instant::now();
    let input = session.open_image(image)?;
    let preprocess_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut analysis = session.analyze(&input.prepared, &Cancel::default())?;
    analysis.timings_ms.preprocess_ms = preprocess_ms;
    analysis.timings_ms.total_ms += preprocess_ms;

    std::fs::create_dir_all(out).with_context(|| format!("creating {out:?}"))?;
    let json = serde_json::json!({
        "model": analysis.model,
        "weights_sha256": analysis.weights_sha256,
        "image": { "path": super::path_text(image), "sha256": input.sha256, "width": input.photo.width(), "height": input.photo.height() },
        "content": input.prepared.content,
        "grid": analysis.grid,
        "layer": layer,
        "cls_attention": analysis.cls_attention,
        "rollout": analysis.rollout,
        "token_norms": analysis.token_norms,
        "output": analysis.output,
        "timings_ms": analysis.timings_ms,
    });
    write_json(&out.join("analysis.json"), &json)?;
    let cls = if session.model()?.encoder.cfg.num_prefix_tokens > 0 {
        format!("CLS attention, layer {layer} (mean of heads)")
    } else {
        format!("Attention received, layer {layer} (no CLS token)")
    };
    let mut pngs = vec![
        (
            format!("cls_attention_layer{layer}.png"),
            figures::grid_map(&input, analysis.grid, &analysis.cls_attention[layer], cls, colormap, 0.6, 512),
        ),
        (
            "rollout.png".to_string(),
            figures::grid_map(
                &input,
                analysis.grid,
                &analysis.rollout,
                "Attention rollout, all layers".into(),
                colormap,
                0.6,
                512,
            ),
        ),
    ];
    if analysis.output.is_map() {
        let saliency = figures::saliency(&input, &analysis.output, "Saliency (model output)".into(), colormap, 512);
        pngs.push(("saliency.png".into(), saliency));
    } else if !analysis.output.values.is_empty() {
        let top: Vec<String> = analysis.output.top(5).iter().map(|(l, p)| format!("{l} {p:.3}")).collect();
        println!("{}: {}", analysis.output.kind, top.join(", "));
    }
    for (name, png) in &pngs {
        write_png(&out.join(name), png)?;
    }
    let t = &analysis.timings_ms;
    println!(
        "wrote analysis.json, cls_attention_layer{layer}.png, rollout.png{} to {} (encoder {:.0} ms, head {:.0} ms)",
        if analysis.output.is_map() { ", saliency.png" } else { "" },
        out.display(),
        t.encoder_ms,
        t.decoder_ms
    );
    Ok(())
}
