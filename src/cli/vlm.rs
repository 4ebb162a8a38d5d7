//! `tokenlens vlm`: a question about an image to a vision-language model, answered by the full
//! model and by a reduced one, with the answer diff, an optional ratio sweep, the cost, and
//! `vlm.json` plus pictures.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use tokenlens::model::ModelSource;
use tokenlens::render::Colormap;
use tokenlens::session::vlm::{DiffOp, Vlm, VlmRun, first_change, sweep_fractions};
use tokenlens::session::{RunSpec, Session};
use tokenlens::{Cancel, figures};

use super::{MethodArgs, write_json, write_png};

pub struct Options {
    pub max_tokens: usize,
    pub view_layer: Option<usize>,
    pub sweep: bool,
    /// SmolVLM's image splitting; `None`: the folder's processor setting.
    pub split_image: Option<bool>,
}

pub struct VlmArgs {
    pub image: PathBuf,
    pub model: PathBuf,
    pub question: String,
    pub method: MethodArgs,
    pub options: Options,
    pub colormap: Colormap,
    pub out: PathBuf,
}

/// Prints tokens as they stream in.
fn streamer(tokenizer: &tokenizers::Tokenizer) -> impl FnMut(u32) + '_ {
    move |id| {
        print!("{}", tokenizer.decode(&[id], true).unwrap_or_default());
        let _ = std::io::stdout().flush();
    }
}

pub fn run(args: &VlmArgs) -> anyhow::Result<()> {
    let source = ModelSource::File(args.model.clone());
    let started = std::time::Instant::now();
    let mut session = Session::load(&source, &mut |line| eprintln!("{line}"))
        .with_context(|| format!("loading the model folder {:?}", args.model))?;
    if let Some(split) = args.options.split_image {
        session.vlm_mut()?.split_image = split;
    }
    let vlm = session.vlm()?;
    // Quantized: the estimate's account of each part; else the dtype and device asked for.
    let weights = match vlm.options.quantize {
        Some(_) => vlm.memory_estimate().map_or_else(|| vlm.options.describe(), |m| m.format()),
        None => vlm.options.describe(),
    };
    eprintln!(
        "{} ({}), {} decoder layers, weights {weights}, loaded in {:.1} s",
        vlm.id,
        vlm.arch.name(),
        vlm.num_layers(),
        started.elapsed().as_secs_f64()
    );
    let spec = RunSpec {
        method: args.method.vlm_method(vlm.num_layers())?,
        budget: args.method.budget.budget(),
        positions: args.method.positions,
        max_new_tokens: args.options.max_tokens,
        view_layer: args.options.view_layer,
        ..RunSpec::default()
    };
    let image = vlm.open_image(&args.image)?;
    // A flag is not shortened to fit (the app's answer limit is): too long is refused.
    vlm.check_answer_limit(&args.question, &image, spec.max_new_tokens)?;
    let cancel = Cancel::default();
    print!("full model: ");
    let tokenizer = vlm.tokenizer.clone();
    let full_spec = RunSpec { method: None, ..spec.clone() };
    let full = session.answer(image, &args.question, &full_spec, &mut streamer(&tokenizer), &cancel)?;
    println!();
    let vlm = session.vlm()?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {:?}", args.out))?;
    let grid = full.vision.grid;
    let mut json = serde_json::json!({
        "model": vlm.id,
        "architecture": vlm.arch.name(),
        "load": {
            "options": vlm.options,
            "linears": vlm.linears,
            "memory": vlm.memory_estimate().map(|m| m.report()),
        },
        "image": { "path": super::path_text(&args.image), "sha256": full.image.sha256 },
        "question": args.question,
        "prompt": full.prompt,
        "grid": [grid.0, grid.1],
        "vision_saliency": full.vision.saliency,
        "full": full.run,
    });
    write_png(
        &args.out.join("vision_saliency.png"),
        &figures::vlm_map(
            &full.image,
            grid,
            &full.vision.saliency.iter().map(|&v| Some(v)).collect::<Vec<_>>(),
            "Vision tower: attention to each image token".into(),
            args.colormap,
            512,
        ),
    )?;
    let mut wrote = vec!["vlm.json", "vision_saliency.png"];
    if let Some(method) = &spec.method {
        print!("{} ({}): ", method.label(), spec.budget.describe(full.run.num_image_tokens));
        let result = session.run(&spec, &mut streamer(&tokenizer), &cancel)?;
        let run = result.answer().expect("a vision-language model answers");
        println!();
        let vlm = session.vlm()?;
        if run.removed_nothing() {
            eprintln!(
                "note: {} removed nothing: its site lies past the last of the {} decoder layers",
                method.label(),
                run.image_rows_per_layer.len()
            );
        }
        print_diff(vlm, &full.run, run);
        write_png(&args.out.join("tokens.png"), &figures::vlm_tokens(&full.image, grid, run, 512))?;
        wrote.push("tokens.png");
        if let Some(scores) = &run.scores {
            let title = format!("{} score", method.label());
            write_png(
                &args.out.join("scores.png"),
                &figures::vlm_map(&full.image, grid, scores, title, args.colormap, 512),
            )?;
            wrote.push("scores.png");
        }
        if let Some(first) = run.answer.image_attention.first() {
            let title =
                format!("What answer token 1 ({:?}) looked at", run.answer.pieces.first().cloned().unwrap_or_default());
            write_png(
                &args.out.join("look_token1.png"),
                &figures::vlm_map(&full.image, grid, first, title, args.colormap, 512),
            )?;
            wrote.push("look_token1.png");
        }
        print_cost(&full.run, run);
        json["reduced"] = serde_json::to_value(&result)?;
        if args.options.sweep {
            println!("sweep ({}):", method.name());
            let points = session.sweep_answers(
                &spec,
                &sweep_fractions(),
                &mut |p| {
                    println!(
                        "  {:5.1} % removed ({:>4} kept): {} {:?}",
                        p.removed * 100.0,
                        p.keep,
                        if p.changed { "CHANGED  " } else { "unchanged" },
                        p.answer
                    )
                },
                &cancel,
            )?;
            match first_change(&points) {
                Some(f) => println!("the answer first changes at {:.1} % removed", f * 100.0),
                None => println!("the answer never changes over the sweep"),
            }
            json["sweep"] = serde_json::json!({ "points": points, "first_change": first_change(&points) });
        }
    }
    write_json(&args.out.join("vlm.json"), &json)?;
    println!("wrote {} to {}", wrote.join(", "), args.out.display());
    Ok(())
}

/// The token-level diff: `[-removed-]` from the full answer, `{+added+}` in the reduced one.
fn print_diff(vlm: &Vlm, full: &VlmRun, run: &VlmRun) {
    let piece = |ids: &[u32], i: usize| vlm.tokenizer.decode(&[ids[i]], false).unwrap_or_default();
    let text: String = run
        .diff
        .iter()
        .map(|op| match *op {
            DiffOp::Same { a, .. } => piece(&full.answer.ids, a),
            DiffOp::Removed { a } => format!("[-{}-]", piece(&full.answer.ids, a)),
            DiffOp::Added { b } => format!("{{+{}+}}", piece(&run.answer.ids, b)),
        })
        .collect();
    println!("diff: {}", if run.answer_changed { text } else { "(the same answer)".into() });
    if let Some(lp) = run.full_answer_logprob {
        let n = full.answer.ids.len().max(1) as f64;
        println!("log-prob of the full answer under the reduced model: {lp:.3} ({:.3} per token)", lp / n);
    }
}

fn print_cost(full: &VlmRun, run: &VlmRun) {
    let g = |f: f64| f / 1e9;
    let kib = |b: usize| b as f64 / 1024.0;
    println!(
        "image rows: {} of {} at layer 0, {:.1} averaged over layers ({})",
        run.image_rows_per_layer.first().copied().unwrap_or(0),
        run.num_image_tokens,
        run.layer_averaged_image_rows,
        run.stage
    );
    println!(
        "cost: {:.3} GFLOPs (full {:.3}): encoder {:.3}, projector {:.3}, decoder {:.3}; KV cache {:.1} KiB (full {:.1}); \
         vision {:.0} ms, prefill {:.0} ms (full {:.0}), decode {:.2} tokens/s (full {:.2})",
        g(run.cost.total_flops()),
        g(full.cost.total_flops()),
        g(run.cost.encoder_flops),
        g(run.cost.projector_flops),
        g(run.cost.decoder_flops.iter().sum()),
        kib(run.cost.kv_bytes_end),
        kib(full.cost.kv_bytes_end),
        full.cost.encoder_ms,
        run.cost.prefill_ms,
        full.cost.prefill_ms,
        run.cost.tokens_per_s,
        full.cost.tokens_per_s
    );
}
