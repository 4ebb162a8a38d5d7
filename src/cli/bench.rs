//! `tokenlens bench`: what a ratio change costs against a full run, per method, measured in
//! one process. The ratio-only path is exactly what the app's slider triggers: a reduced run
//! resumed from the cached full run, then the figures drawn.

use std::path::Path;
use std::time::Instant;

use tokenlens::reduce::budget::PRESETS_REMOVED;
use tokenlens::reduce::{Budget, ReducerConfig};
use tokenlens::render::Colormap;
use tokenlens::session::RunSpec;
use tokenlens::vlm::{Vlm, VlmMethod, VlmRunSpec};
use tokenlens::{Cancel, figures};

use super::ModelArgs;

/// Median and 95th percentile of `samples` (milliseconds).
fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (pick(0.5), pick(0.95))
}

fn time_ms(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

pub fn bench(image: &Path, model: &ModelArgs, reducers: &[ReducerConfig], repeats: usize) -> anyhow::Result<()> {
    let session = model.load()?;
    let input = session.open_image(image)?;
    let cancel = Cancel::default();
    let full_ms: Vec<f64> = (0..repeats)
        .map(|_| time_ms(|| drop(session.full_run(&input.prepared.pixels, &cancel).expect("full run"))))
        .collect();
    let (full_med, full_p95) = summary(full_ms);
    let full = session.full_run(&input.prepared.pixels, &cancel)?;
    let grid = [full.states[0].grid.0, full.states[0].grid.1];
    println!(
        "image {}, {repeats} repeats per row; full run (all blocks + head): median {full_med:.1} ms, p95 {full_p95:.1} ms",
        image.display()
    );
    println!(
        "{:<10} {:>16} {:>16} {:>22} {:>9} {:>10}",
        "method", "ratio-only med", "ratio-only p95", "ratio+figures med/p95", "vs full", "from block"
    );
    for reducer in reducers {
        let (mut run_ms, mut fig_ms, mut from_block) = (Vec::new(), Vec::new(), 0);
        for i in 0..repeats {
            // Alternate presets, as a slider moving between them does.
            let budget = Budget::RemoveFraction(PRESETS_REMOVED[i % PRESETS_REMOVED.len()]);
            let spec = RunSpec { reducer: reducer.clone(), budget, ..RunSpec::default() };
            let mut result = None;
            run_ms.push(time_ms(|| result = Some(session.run(&full, &spec, &cancel))));
            let result = result.expect("timed")?;
            from_block = result.recomputed_from_block;
            fig_ms.push(
                run_ms.last().copied().unwrap_or(0.0)
                    + time_ms(|| {
                        let _ = figures::tokens(&input, grid, &result, 640);
                        let _ = figures::saliency(
                            &input,
                            &result.output,
                            figures::run_title(&result),
                            Colormap::Viridis,
                            400,
                        );
                    }),
            );
        }
        let (med, p95) = summary(run_ms);
        let (fmed, fp95) = summary(fig_ms);
        println!(
            "{:<10} {:>13.1} ms {:>13.1} ms {:>12.1} / {:>5.1} ms {:>8.2}x {:>10}",
            reducer.name(),
            med,
            p95,
            fmed,
            fp95,
            med / full_med,
            from_block
        );
    }
    Ok(())
}

/// The VLM bench: per method at the default budget, prefill and decode time against the full
/// model's (medians over `repeats`, same process), with the KV cache and FLOPs ratios.
pub fn bench_vlm(image: &Path, folder: &Path, methods: &[VlmMethod], repeats: usize) -> anyhow::Result<()> {
    let vlm = Vlm::load(folder)?;
    let cancel = Cancel::default();
    let spec = VlmRunSpec { max_new_tokens: 16, ..VlmRunSpec::default() };
    let question = "What is in this image?";
    let full = vlm.full(vlm.open_image(image)?, question, &spec, &mut |_| {}, &cancel)?;
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        let run = vlm.run(&full, &VlmRunSpec { method: None, ..spec.clone() }, &mut |_| {}, &cancel)?;
        prefill.push(run.cost.prefill_ms);
        decode.push(run.cost.decode_ms / run.answer.ids.len().max(1) as f64);
    }
    let (full_prefill, _) = summary(prefill);
    let (full_decode, _) = summary(decode);
    println!(
        "{} on {}, {repeats} repeats; full model: prefill {full_prefill:.1} ms, decode {full_decode:.2} ms/token, \
         KV {:.1} KiB, {:.2} GFLOPs",
        vlm.id,
        image.display(),
        full.run.cost.kv_bytes_prefill as f64 / 1024.0,
        full.run.cost.total_flops() / 1e9
    );
    println!(
        "{:<12} {:>10} {:>12} {:>9} {:>14} {:>9} {:>9}",
        "method", "stage", "prefill ms", "vs full", "decode ms/tok", "KV", "FLOPs"
    );
    for method in methods {
        let s = VlmRunSpec { method: Some(method.clone()), ..spec.clone() };
        let (mut prefill, mut decode, mut last) = (Vec::new(), Vec::new(), None);
        for _ in 0..repeats {
            let run = match vlm.run(&full, &s, &mut |_| {}, &cancel) {
                Ok(run) => run,
                Err(e) => {
                    println!("{:<12} skipped: {e}", method.name());
                    break;
                }
            };
            prefill.push(run.cost.prefill_ms);
            decode.push(run.cost.decode_ms / run.answer.ids.len().max(1) as f64);
            last = Some(run);
        }
        let Some(run) = last else { continue };
        let (p, _) = summary(prefill);
        let (d, _) = summary(decode);
        println!(
            "{:<12} {:>10} {:>12.1} {:>8.2}x {:>14.2} {:>8.2}x {:>8.2}x",
            method.name(),
            run.stage,
            p,
            p / full_prefill,
            d,
            run.cost.kv_bytes_prefill as f64 / full.run.cost.kv_bytes_prefill as f64,
            run.cost.total_flops() / full.run.cost.total_flops()
        );
    }
    Ok(())
}
