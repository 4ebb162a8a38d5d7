//! `tokenlens sweep`: methods x ratios x images, one row per run (CSV or JSON lines). Each image
//! is opened in the session and each run goes through `Session::run`, as the app's: resumed from
//! the image's full run, and budgets that resolve to one token count run once.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;
use tokenlens::Cancel;
use tokenlens::reduce::{Budget, ReducerConfig};
use tokenlens::session::RunSpec;

use super::ModelArgs;

/// One row of the sweep table: flat, so spreadsheets and plotting scripts read it directly.
#[derive(Debug, Serialize)]
struct Row {
    image: String,
    image_sha256: String,
    reducer: String,
    params: String,
    removed_fraction: f64,
    keep: usize,
    tokens_out: usize,
    output_l1: f64,
    output_pearson: f64,
    output_iou_top20: f64,
    cls_cosine: f64,
    patch_cosine_mean: f64,
    gflops: f64,
    gflops_full: f64,
    run_ms: f64,
    full_ms: f64,
}

pub fn sweep(
    images: &[PathBuf],
    model: &ModelArgs,
    reducers: &[ReducerConfig],
    budgets: &[Budget],
    out: &Path,
    force: bool,
) -> anyhow::Result<()> {
    let jsonl = match out.extension().and_then(|e| e.to_str()) {
        Some("csv") => false,
        Some("jsonl") => true,
        _ => bail!("--out must end in .csv or .jsonl, got {out:?}"),
    };
    if out.exists() && !force {
        bail!("{out:?} exists; pass --force to overwrite it");
    }
    let mut session = model.load()?;
    let total = (images.len() * reducers.len() * budgets.len()) as u64;
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} runs, {elapsed} elapsed, ~{eta} left  {msg}")
            .expect("a valid template"),
    );
    let mut rows = Vec::with_capacity(total as usize);
    for path in images {
        let input = session.open_image(path)?;
        session.open(&input, &Cancel::default())?;
        for reducer in reducers {
            for budget in budgets {
                bar.set_message(format!(
                    "{} {}",
                    path.file_name().unwrap_or_default().to_string_lossy(),
                    reducer.name()
                ));
                let spec = RunSpec::vision(reducer.clone(), *budget);
                let result = session
                    .run(&spec, &mut |_| {}, &Cancel::default())
                    .with_context(|| format!("{} on {path:?} at {budget:?}", reducer.name()))?;
                let r = result.encoder().context("an image encoder's run")?;
                let mut params = serde_json::to_value(reducer)?;
                params.as_object_mut().map(|o| o.remove("method"));
                rows.push(Row {
                    image: path.display().to_string(),
                    image_sha256: input.sha256.clone(),
                    reducer: reducer.name().into(),
                    params: params.to_string(),
                    removed_fraction: 1.0 - r.keep as f64 / r.num_patches as f64,
                    keep: r.keep,
                    tokens_out: r.groups.len(),
                    output_l1: r.fidelity.output_l1,
                    output_pearson: r.fidelity.output_pearson,
                    output_iou_top20: r.fidelity.output_iou_top20,
                    cls_cosine: r.fidelity.cls_cosine,
                    patch_cosine_mean: r.fidelity.patch_cosine_mean,
                    gflops: r.flops / 1e9,
                    gflops_full: r.flops_full / 1e9,
                    run_ms: r.timings_ms.run_ms,
                    full_ms: r.timings_ms.full_ms,
                });
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let bytes = if jsonl {
        rows.iter().map(|r| serde_json::to_string(r).map(|l| l + "\n")).collect::<Result<String, _>>()?.into_bytes()
    } else {
        let mut w = csv::Writer::from_writer(Vec::new());
        for r in &rows {
            w.serialize(r)?;
        }
        w.into_inner().context("finishing the CSV")?
    };
    tokenlens::atomic::write_atomic(out, &bytes).with_context(|| format!("writing {out:?}"))?;
    println!("wrote {} rows to {}", rows.len(), out.display());
    Ok(())
}
