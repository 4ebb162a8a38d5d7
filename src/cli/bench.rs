//! `tokenlens bench`: what a ratio change costs against a full run, per method, measured in
//! one process. The ratio change is timed on the path the app's slider takes, `Session::run` on
//! the open image: a ratio not visited yet is a reduced run resumed from the cached full run
//! (the session's recent runs are forgotten before each one, so it is computed), then the
//! figures drawn; moving back to a visited ratio answers from the session's recent runs, timed
//! apart ("revisit").

use std::path::Path;
use std::time::Instant;

use tokenlens::model::llama::KvCache;
use tokenlens::reduce::budget::PRESETS_REMOVED;
use tokenlens::reduce::{Budget, Method, ReducerConfig};
use tokenlens::render::Colormap;
use tokenlens::session::vlm::{Arch, Resume, Vlm, VlmRun};
use tokenlens::session::{RunSpec, Session};
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
    /// Ratio change to a ratio not visited yet: `Session::run`, the reduced run resumed from
    /// the cached full run.
    run: Vec<f64>,
    /// Ratio change plus the two figures the app redraws.
    run_figures: Vec<f64>,
    /// Back to a visited ratio: `Session::run` answering from the session's recent runs.
    revisit: Vec<f64>,
    from_block: usize,
}

pub fn bench(
    image: &Path,
    session: &mut Session,
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
    // The open image's full run, which the slider's runs resume from.
    session.open(&input, &cancel)?;
    let full = session.opened_full()?;
    let grid = [full.states[0].grid.0, full.states[0].grid.1];
    for reducer in reducers {
        let mut m = MethodSamples {
            name: reducer.name().into(),
            run: Vec::new(),
            run_figures: Vec::new(),
            revisit: Vec::new(),
            from_block: 0,
        };
        for i in 0..repeats {
            // Alternate presets, as a slider moving between them does.
            let budget = Budget::RemoveFraction(PRESETS_REMOVED[i % PRESETS_REMOVED.len()]);
            let spec = RunSpec::vision(reducer.clone(), budget);
            session.forget_runs(); // a ratio not visited yet
            let mut result = None;
            let run_ms = time_ms(|| result = Some(session.run(&spec, &mut |_| {}, &cancel)));
            let result = result.expect("timed")?;
            let result = result.encoder().expect("an encoder's run");
            m.revisit.push(time_ms(|| drop(session.run(&spec, &mut |_| {}, &cancel))));
            m.from_block = result.recomputed_from_block;
            m.run.push(run_ms);
            m.run_figures.push(
                run_ms
                    + time_ms(|| {
                        let _ = figures::tokens(&input, grid, result, 640);
                        let _ = figures::saliency(
                            &input,
                            &result.output,
                            figures::run_title(result),
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
        "ratio-only: Session::run to a ratio not visited yet (resumed from the cached full run); +figures: with \
         the two figures the app redraws; revisit: back to a visited ratio (the session's recent runs)"
    );
    println!(
        "{:<10} {:>16} {:>16} {:>22} {:>9} {:>12} {:>10}",
        "method", "ratio-only med", "ratio-only p95", "ratio+figures med/p95", "vs full", "revisit med", "from block"
    );
    for m in samples.methods {
        let (med, p95) = summary(m.run);
        let (fmed, fp95) = summary(m.run_figures);
        let (rmed, _) = summary(m.revisit);
        println!(
            "{:<10} {:>13.1} ms {:>13.1} ms {:>12.1} / {:>5.1} ms {:>8.2}x {:>9.3} ms {:>10}",
            m.name,
            med,
            p95,
            fmed,
            fp95,
            med / full_med,
            rmed,
            m.from_block
        );
    }
    Ok(())
}

/// One method's row of the VLM bench.
struct VlmRow {
    method: Method,
    /// Wall time of the ratio change (`Session::run` on the open image with its recent runs
    /// forgotten: resumed from the cached full run), of the same run prefilled from layer 0
    /// (`Vlm::run` with `Resume::FromScratch`), and of moving back to it (`Session::run` from
    /// the session's recent runs), ms.
    change: Vec<f64>,
    scratch: Vec<f64>,
    revisit: Vec<f64>,
    last: Option<std::sync::Arc<VlmRun>>,
    skipped: Option<String>,
    /// With `--decode-tokens`: the method's decode speed, tokens/s (see [`decode_rate`]).
    decode: Option<f64>,
}

/// Greedy decode speed after a run's prefill: `run` answered `1 + steps` tokens, the first from
/// the prefill's last row, so its decode time is `steps` one-token forward passes. `None` when
/// the answer stopped early (end of sequence), which would time fewer steps.
fn decode_rate(run: &VlmRun, steps: usize) -> Option<f64> {
    (run.answer.ids.len() == steps + 1 && run.cost.decode_ms > 0.0).then(|| steps as f64 / (run.cost.decode_ms / 1e3))
}

/// The VLM bench: per method at the default budget, what a ratio change costs (`Session::run`,
/// what the app's slider calls, on a ratio not visited yet: resumed from the cached full run)
/// against the full prefill (the unreduced decoder from layer 0), both timed as whole runs with
/// a one-token answer (picked from the prefill's logits: no decoding step), alternating in one
/// process; medians over `repeats`.
/// `decode`: when set, each method (and the full model) also answers `1 + decode` tokens once,
/// after the timed runs, for its decode speed.
pub fn bench_vlm(
    image: &Path,
    session: &mut Session,
    methods: &[Method],
    repeats: usize,
    decode: Option<usize>,
) -> anyhow::Result<()> {
    let vlm = session.vlm_mut()?;
    let split = std::mem::replace(&mut vlm.split_image, false); // vision-side methods need one image
    let image_in = vlm.open_image(image)?;
    let cancel = Cancel::default();
    let spec = RunSpec { max_new_tokens: 1, ..RunSpec::default() };
    let question = "What is in this image?";
    // The open image's full run, which the ratio changes resume from.
    let full = session.answer(image_in, question, &spec, &mut |_| {}, &cancel)?;
    let full_spec = RunSpec { method: None, ..spec.clone() };
    let scratch = |session: &Session, s: &RunSpec| -> anyhow::Result<VlmRun> {
        Ok(session.vlm()?.run(&full, s, Resume::FromScratch, &mut |_| {}, &cancel)?)
    };
    drop(scratch(&*session, &full_spec)?); // warm-up
    let mut rows: Vec<VlmRow> = methods
        .iter()
        .map(|m| VlmRow {
            method: m.clone(),
            change: Vec::new(),
            scratch: Vec::new(),
            revisit: Vec::new(),
            last: None,
            skipped: None,
            decode: None,
        })
        .collect();
    let mut full_ms = Vec::new();
    for _ in 0..repeats {
        let mut run = None;
        full_ms.push(time_ms(|| run = Some(scratch(&*session, &full_spec))));
        run.expect("timed")?;
        for row in rows.iter_mut().filter(|r| r.skipped.is_none()) {
            let s = RunSpec { method: Some(row.method.clone()), ..spec.clone() };
            session.forget_runs(); // a ratio not visited yet
            let mut run = None;
            let change = time_ms(|| run = Some(session.run(&s, &mut |_| {}, &cancel)));
            match run.expect("timed") {
                Ok(run) => row.last = run.answer().cloned(),
                Err(e) => {
                    row.skipped = Some(e.to_string());
                    continue;
                }
            }
            row.change.push(change);
            row.revisit.push(time_ms(|| drop(session.run(&s, &mut |_| {}, &cancel))));
            row.scratch.push(time_ms(|| drop(scratch(&*session, &s))));
        }
    }
    // Decode speed, apart from the timed runs (which answer one token, as the slider's).
    let mut full_decode = None;
    if let Some(steps) = decode.filter(|&d| d > 0) {
        let long = |s: &RunSpec| RunSpec { max_new_tokens: 1 + steps, ..s.clone() };
        full_decode = decode_rate(&scratch(&*session, &long(&full_spec))?, steps);
        for row in rows.iter_mut().filter(|r| r.skipped.is_none()) {
            let s = long(&RunSpec { method: Some(row.method.clone()), ..spec.clone() });
            let run = session.run(&s, &mut |_| {}, &cancel)?;
            row.decode = run.answer().and_then(|run| decode_rate(run, steps));
        }
    }
    let rate = |r: Option<f64>| r.map_or_else(|| "-".to_string(), |r| format!("{r:.3}"));
    let (full_med, full_p95) = summary(full_ms);
    let vlm = session.vlm()?;
    let layers = vlm.num_layers();
    println!(
        "{} on {}, {} image tokens{}, {} decoder layers, {repeats} repeats, {} threads, default budget; \
         full prefill (the unreduced decoder from layer 0): median {full_med:.1} ms, p95 {full_p95:.1} ms; \
         full model KV {:.1} KiB, {:.2} GFLOPs{}",
        vlm.id,
        image.display(),
        full.vision.num_image_tokens(),
        if split { " (image splitting off: vision-side methods need one image)" } else { "" },
        layers,
        candle_core::utils::get_num_threads(),
        full.run.cost.kv_bytes_prefill as f64 / 1024.0,
        full.run.cost.total_flops() / 1e9,
        decode.map_or_else(String::new, |d| format!(", decode {} tokens/s ({d} steps)", rate(full_decode)))
    );
    println!(
        "timed: ratio change = Session::run, as the app's slider calls it, to a ratio not visited yet (vision side \
         from the cached full run, decoder resumed from the first layer whose input changes), from scratch = the \
         same run prefilled from layer 0; both whole runs with a one-token answer, as the full prefill; revisit = \
         Session::run back to a visited ratio (the session's recent runs); medians; decode = greedy tokens/s \
         after the method's prefill (--decode-tokens; one run each, - when not asked for or the answer ended \
         early)"
    );
    println!(
        "{:<12} {:>10} {:>6} {:>6} {:>13} {:>8} {:>13} {:>8} {:>7} {:>7} {:>10} {:>8}",
        "method",
        "stage",
        "tower",
        "layer",
        "ratio change",
        "vs full",
        "from scratch",
        "vs full",
        "KV",
        "FLOPs",
        "revisit",
        "decode"
    );
    for row in rows {
        let name = row.method.name();
        let (Some(run), None) = (&row.last, &row.skipped) else {
            println!("{name:<12} skipped: {}", row.skipped.unwrap_or_default());
            continue;
        };
        let (change, _) = summary(row.change);
        let (scratch, _) = summary(row.scratch);
        let (revisit, _) = summary(row.revisit);
        let tower = run.tower_recomputed_from.map_or_else(|| "-".into(), |b| b.to_string());
        println!(
            "{:<12} {:>10} {:>6} {:>6} {:>10.1} ms {:>7.3}x {:>10.1} ms {:>7.3}x {:>6.2}x {:>6.2}x {:>7.3} ms {:>8}",
            name,
            run.stage,
            tower,
            run.recomputed_from_layer,
            change,
            change / full_med,
            scratch,
            scratch / full_med,
            run.cost.kv_bytes_prefill as f64 / full.run.cost.kv_bytes_prefill as f64,
            run.cost.total_flops() / full.run.cost.total_flops(),
            revisit,
            rate(row.decode)
        );
        if name == "fastv" && run.recomputed_from_layer < layers {
            let ideal = (layers - run.recomputed_from_layer) as f64 / layers as f64;
            println!(
                "{:<12} target: ratio change <= 1.1 x {}/{layers} = {:.3}x of the full prefill: {:.3}x ({})",
                "",
                layers - run.recomputed_from_layer,
                1.1 * ideal,
                change / full_med,
                if change / full_med <= 1.1 * ideal { "met" } else { "NOT met" }
            );
        }
    }
    println!("tower: first vision-tower block rerun (- none); layer: first decoder layer rerun ({layers}: none)");
    Ok(())
}

/// What `tokenlens bench` times on a VLM folder.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VlmPart {
    /// Per method, a ratio change against the full prefill.
    Methods,
    /// The vision tower alone (embedding, blocks, final norm) on the unsplit image.
    Tower,
    /// The language model alone: a prefill, then greedy decode steps.
    Decoder,
}

/// The vision tower alone on the image's global square (SmolVLM: not split), as
/// `scripts/bench_smolvlm.py` times the same tower exported to ONNX: one JSON line of samples
/// (ms), after a warm-up call. `paced`: `ready` after the warm-up, then one call per line on
/// standard input, each call's ms on its own line as it ends (the JSON line still closes).
pub fn bench_tower(image: &Path, vlm: &Vlm, repeats: usize, paced: bool) -> anyhow::Result<()> {
    let Arch::Idefics3(m) = &vlm.arch else { anyhow::bail!("--part tower times SmolVLM (idefics3) towers") };
    let bytes = std::fs::read(image)?;
    let pixels = vlm.arch.image_from_bytes(&bytes, image, false)?.pixels.remove(0);
    let cancel = Cancel::default();
    drop(m.vision_features(&pixels, &cancel)?); // warm-up
    let mut go = paced.then(|| {
        println!("ready");
        std::io::stdin().lines()
    });
    let mut tower = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        if let Some(lines) = &mut go
            && lines.next().transpose()?.is_none()
        {
            break; // the pacing script is done
        }
        let mut out = None;
        tower.push(time_ms(|| out = Some(m.vision_features(&pixels, &cancel))));
        out.expect("timed")?;
        if paced {
            println!("{:.3}", tower[tower.len() - 1]);
        }
    }
    let shape = pixels.dims().to_vec();
    println!(
        "{}",
        serde_json::json!({ "threads": candle_core::utils::get_num_threads(), "pixels": shape, "tower": tower })
    );
    Ok(())
}

/// The language model alone: `prefill` tokens (fixed ids) through every layer and the head's
/// last row, then `decode` steps of one token each against the KV cache (the greedy pick fed
/// back), per repeat. One JSON line: prefill ms and whole-decode ms per repeat.
pub fn bench_decoder(vlm: &Vlm, prefill: usize, decode: usize, repeats: usize) -> anyhow::Result<()> {
    let lm = vlm.arch.lm();
    let vocab = lm.cfg.vocab_size;
    anyhow::ensure!(prefill > 0, "--prefill-tokens must be at least 1");
    // Bounded by the context before anything is allocated (a flag is not a size to trust).
    // A config without `max_position_embeddings` gets the bench's own cap.
    let context = lm.cfg.max_position_embeddings.unwrap_or(32_768);
    anyhow::ensure!(
        prefill.saturating_add(decode) <= context,
        "--prefill-tokens {prefill} + --decode-tokens {decode} exceed the model's context of {context} tokens"
    );
    // The same ids as scripts/bench_smolvlm.py: (37 i + 11) mod vocab.
    let ids: Vec<u32> = (0..prefill).map(|i| ((37 * i + 11) % vocab) as u32).collect();
    let run = || -> anyhow::Result<(f64, f64)> {
        let start = Instant::now();
        let mut cache = KvCache::default();
        let positions: Vec<u32> = (0..prefill as u32).collect();
        let (hidden, _) = lm.forward(&lm.embed(&ids)?, &positions, &mut cache, &[], false)?;
        let mut next = lm.logits(&hidden.narrow(1, prefill - 1, 1)?)?.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        let prefill_ms = start.elapsed().as_secs_f64() * 1e3;
        let start = Instant::now();
        for step in 0..decode {
            let at = [(prefill + step) as u32];
            let (hidden, _) = lm.forward(&lm.embed(&[next])?, &at, &mut cache, &[], false)?;
            next = lm.logits(&hidden)?.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        }
        Ok((prefill_ms, start.elapsed().as_secs_f64() * 1e3))
    };
    run()?; // warm-up
    let (mut prefill_ms, mut decode_ms) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        let (p, d) = run()?;
        prefill_ms.push(p);
        decode_ms.push(d);
    }
    println!(
        "{}",
        serde_json::json!({
            "threads": candle_core::utils::get_num_threads(),
            "prefill_tokens": prefill,
            "decode_tokens": decode,
            "prefill": prefill_ms,
            "decode": decode_ms,
        })
    );
    Ok(())
}
