//! `tokenlens run`: one reducer on one image, with its pictures and `run.json`.

use std::path::Path;

use anyhow::Context;
use tokenlens::render::Colormap;
use tokenlens::session::RunSpec;
use tokenlens::{Cancel, figures};

use super::{ModelArgs, write_json, write_png};

pub fn run(image: &Path, model: &ModelArgs, spec: &RunSpec, colormap: Colormap, out: &Path) -> anyhow::Result<()> {
    let mut session = model.load()?;
    let input = session.open_image(image)?;
    let cancel = Cancel::default();
    session.open(&input, &cancel)?;
    let full = session.opened_full()?;
    let ran = session.run(spec, &mut |_| {}, &cancel)?;
    let result: &tokenlens::session::EncoderRun =
        ran.encoder().expect("an image encoder's run (open_image refuses a vision-language model)");
    std::fs::create_dir_all(out).with_context(|| format!("creating {out:?}"))?;

    let grid = [full.states[0].grid.0, full.states[0].grid.1];
    let mut json = serde_json::to_value(result)?;
    let extra = serde_json::json!({
        "model": session.id,
        "weights_sha256": session.model()?.weights_sha256,
        "image": { "path": super::path_text(image), "sha256": input.sha256 },
        "grid": grid,
        "reducer": result.reducer().name(),
        "paper": result.reducer().info().paper,
    });
    json.as_object_mut().expect("a run serialises to an object").extend(extra.as_object().cloned().unwrap_or_default());
    write_json(&out.join("run.json"), &json)?;

    write_png(&out.join("tokens.png"), &figures::tokens(&input, grid, result, 512))?;
    if let Some(scores) = figures::scores(&input, grid, result, colormap, 512) {
        write_png(&out.join("scores.png"), &scores)?;
    }
    if result.output.is_map() {
        let pair = figures::side_by_side(
            &[
                figures::saliency(&input, &full.output, "Saliency, full model".into(), colormap, 448),
                figures::saliency(
                    &input,
                    &result.output,
                    format!("Saliency, {}", figures::run_title(result)),
                    colormap,
                    448,
                ),
            ],
            16,
        );
        write_png(&out.join("saliency_full_vs_reduced.png"), &pair)?;
    } else if !result.output.values.is_empty() {
        let show = |o: &tokenlens::session::Output| {
            o.top(5).iter().map(|(l, p)| format!("{l} {p:.3}")).collect::<Vec<_>>().join(", ")
        };
        println!("full model: {}\nreduced:    {}", show(&full.output), show(&result.output));
    }

    let f = &result.fidelity;
    println!(
        "{}: kept {}; output L1 {:.4}, Pearson {:.3}, top-20% IoU {:.3}; CLS cosine {:.4}; \
         {:.2} of {:.2} GFLOPs; {:.0} ms (full run {:.0} ms). Wrote run.json, tokens.png, {}{}to {}",
        figures::run_title(result),
        tokenlens::render::text::count(result.groups.len(), "token", "tokens"),
        f.output_l1,
        f.output_pearson,
        f.output_iou_top20,
        f.cls_cosine,
        result.flops / 1e9,
        result.flops_full / 1e9,
        result.timings_ms.run_ms,
        result.timings_ms.full_ms,
        if result.scores.is_some() { "scores.png, " } else { "" },
        if result.output.is_map() { "saliency_full_vs_reduced.png " } else { "" },
        out.display()
    );
    if let Some(caveat) = result.reducer().info().caveat {
        println!("note: {caveat}");
    }
    Ok(())
}
