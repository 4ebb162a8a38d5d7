//! `tokenlens bench`: what a ratio change costs against a full run, per method, measured in
//! one process. The ratio-only path is exactly what the app's slider triggers: a reduced run
//! resumed from the cached full run, then the figures drawn.

use std::path::Path;
use std::time::Instant;

use tokenlens::reduce::budget::PRESETS_REMOVED;
use tokenlens::reduce::{Budget, ReducerConfig};
use tokenlens::render::Colormap;
use tokenlens::session::{RunSpec, Session};
use tokenlens::vlm::{VlmMethod, VlmRunSpec};
use tokenlens::{Cancel, figures};

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

/// The samples of one `bench` invocation (milliseconds), as `--json` prints them for
/// `scripts/bench_vs_onnxruntime.py`.
#[derive(serde::Serialize)]
struct EncoderSamples {
    image: String,
    threads: usize,
    /// Full run: every block with attention and keys recorded, final norm, output head.
    full: Vec<f64>,
    /// The encoder part of each full run (embedding, blocks, final norm).
    encoder: Vec<f64>,
    /// The output head part of each full run.
    head: Vec<f64>,
    methods: Vec<MethodSamples>,
}

#[derive(serde::Serialize)]
struct MethodSamples {
    name: String,
    /// Ratio change: the reduced run resumed from the cached full run.
    run: Vec<f64>,
    /// Ratio change plus the two figures the app redraws.
    run_figures: Vec<f64>,
    from_block: usize,
}

pub fn bench(
    image: &Path,
    session: &Session,
    reducers: &[ReducerConfig],
    repeats: usize,
    json: bool,
) -> anyhow::Result<()> {
    let input = session.open_image(image)?;
    let cancel = Cancel::default();
    drop(session.full_run(&input.prepared.pixels, &cancel)?); // warm-up: first-touch allocations, thread pool
    let mut samples = EncoderSamples {
        image: image.display().to_string(),
        threads: candle_core::utils::get_num_threads(),
        full: Vec::new(),
        encoder: Vec::new(),
        head: Vec::new(),
        methods: Vec::new(),
    };
    for _ in 0..repeats {
        let mut run = None;
        samples.full.push(time_ms(|| run = Some(session.full_run(&input.prepared.pixels, &cancel))));
        let run = run.expect("timed")?;
        samples.encoder.push(run.encoder_ms);
        samples.head.push(run.time_ms - run.encoder_ms);
    }
    let full = session.full_run(&input.prepared.pixels, &cancel)?;
    let grid = [full.states[0].grid.0, full.states[0].grid.1];
    for reducer in reducers {
        let mut m =
            MethodSamples { name: reducer.name().into(), run: Vec::new(), run_figures: Vec::new(), from_block: 0 };
        for i in 0..repeats {
            // Alternate presets, as a slider moving between them does.
            let budget = Budget::RemoveFraction(PRESETS_REMOVED[i % PRESETS_REMOVED.len()]);
            let spec = RunSpec { reducer: reducer.clone(), budget, ..RunSpec::default() };
            let mut result = None;
            let run_ms = time_ms(|| result = Some(session.run(&full, &spec, &cancel)));
            let result = result.expect("timed")?;
            m.from_block = result.recomputed_from_block;
            m.run.push(run_ms);
            m.run_figures.push(
                run_ms
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
        samples.methods.push(m);
    }
    if json {
        println!("{}", serde_json::to_string(&samples)?);
        return Ok(());
    }
    let (full_med, full_p95) = summary(samples.full);
    let (enc_med, _) = summary(samples.encoder);
    let (head_med, _) = summary(samples.head);
    println!(
        "image {}, {repeats} repeats per row, {} threads; full run (all blocks + head): median {full_med:.1} ms \
         (encoder {enc_med:.1}, head {head_med:.1}), p95 {full_p95:.1} ms",
        image.display(),
        samples.threads
    );
    println!(
        "{:<10} {:>16} {:>16} {:>22} {:>9} {:>10}",
        "method", "ratio-only med", "ratio-only p95", "ratio+figures med/p95", "vs full", "from block"
    );
    for m in samples.methods {
        let (med, p95) = summary(m.run);
        let (fmed, fp95) = summary(m.run_figures);
        println!(
            "{:<10} {:>13.1} ms {:>13.1} ms {:>12.1} / {:>5.1} ms {:>8.2}x {:>10}",
            m.name,
            med,
            p95,
            fmed,
            fp95,
            med / full_med,
            m.from_block
        );
    }
    Ok(())
}

/// The VLM bench: per method at the default budget, prefill and decode time against the full
/// model's (medians over `repeats`, same process), with the KV cache and FLOPs ratios.
pub fn bench_vlm(image: &Path, session: &Session, methods: &[VlmMethod], repeats: usize) -> anyhow::Result<()> {
    let vlm = session.vlm()?;
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
