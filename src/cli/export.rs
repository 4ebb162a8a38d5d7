//! `tokenlens export` (one panel, or re-made from a sidecar) and `tokenlens figure` (a method x
//! ratio grid). Both write the figure and its `NAME.json` sidecar atomically.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokenlens::export::{self, ExportSpec, Figure, Format, MapScale, MapSource, View};
use tokenlens::reduce::{Budget, PositionMode, ReducerConfig};
use tokenlens::render::Colormap;
use tokenlens::session::{DropFill, RunSpec, Session};

use super::ModelArgs;

/// `--scale`: how maps without a fixed range are scaled.
#[derive(clap::ValueEnum, Clone, Copy)]
pub enum MapScaleArg {
    MinMax,
    P99,
    Log,
}

/// How a figure looks, shared by `export` and `figure`.
#[derive(clap::Args, Clone)]
pub struct LookArgs {
    #[arg(long, default_value = "viridis")]
    pub colormap: Colormap,
    #[arg(long, default_value_t = 0.6)]
    pub opacity: f32,
    /// Leave out the title.
    #[arg(long)]
    pub no_title: bool,
    /// The title to print instead of the made-up one (the method, or the model and the image's
    /// file name).
    #[arg(long, conflicts_with = "no_title")]
    pub title: Option<String>,
    /// Leave out the colour bar (and a token view's legend).
    #[arg(long)]
    pub no_colorbar: bool,
    /// How maps without a fixed range are scaled: min-max, p99 (outliers saturate) or log.
    #[arg(long, default_value = "min-max", value_enum)]
    pub scale: MapScaleArg,
    /// Text size relative to the default, which keeps every text at least 6 pt when the figure
    /// is printed one paper column (3.25 in) wide, or at its --dpi size.
    #[arg(long, default_value_t = 1.0)]
    pub font_scale: f32,
    /// Longest side of each panel's photo, in pixels (PNG) or units (SVG).
    #[arg(long, default_value_t = 512)]
    pub size: u32,
    /// Dots per inch: sets the size from --width-in and records the DPI in the PNG.
    #[arg(long)]
    pub dpi: Option<u32>,
    /// Physical width of a panel for --dpi, in inches (default: one paper column).
    #[arg(long, default_value_t = export::COLUMN_WIDTH_IN)]
    pub width_in: f64,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// `figure`: each method's metrics under its panels, the best per column highlighted.
    #[arg(long)]
    pub metrics: bool,
}

impl LookArgs {
    /// The look applied to `spec`; a size, DPI, width or opacity out of range is refused here,
    /// before the model runs.
    fn apply(&self, spec: ExportSpec) -> anyhow::Result<ExportSpec> {
        let look = export::Look {
            colormap: self.colormap,
            opacity: self.opacity,
            scale: match self.scale {
                MapScaleArg::MinMax => MapScale::MinMax,
                MapScaleArg::P99 => MapScale::P99,
                MapScaleArg::Log => MapScale::Log,
            },
            title: !self.no_title,
            title_text: self.title.clone(),
            colorbar: !self.no_colorbar,
            font_scale: self.font_scale,
            panel_px: self.size,
            dpi: self.dpi,
            width_in: self.width_in,
            metrics: self.metrics,
        };
        spec.with_look(&look).context("--size, --dpi, --width-in, --opacity or --font-scale")
    }
}

/// Renders `spec` and writes it with its sidecar; prints where.
fn finish(session: &Session, spec: &ExportSpec, out: &Path, force: bool) -> anyhow::Result<()> {
    let bytes = export::render(session, spec)?;
    let sidecar = export::write(out, &bytes, spec, force).with_context(|| format!("writing {out:?}"))?;
    println!("wrote {} and {}", out.display(), sidecar.display());
    Ok(())
}

/// The view as given on the command line; layers default to the model's last.
pub struct ViewArgs {
    pub name: String,
    pub layer: Option<usize>,
    pub head: Option<usize>,
}

impl ViewArgs {
    fn view(&self, num_layers: usize) -> anyhow::Result<View> {
        let layer = self.layer.unwrap_or(num_layers - 1);
        Ok(match self.name.as_str() {
            "tokens" => View::Tokens,
            "scores" => View::Scores,
            "attention" => View::Attention { layer, head: self.head },
            "rollout" => View::Rollout,
            "token_norms" => View::TokenNorms { layer },
            "saliency" => View::Saliency { reduced: true },
            "saliency_full" => View::Saliency { reduced: false },
            other => bail!(
                "unknown view `{other}`; choose tokens, scores, attention, rollout, token_norms, saliency or saliency_full"
            ),
        })
    }
}

/// `export IMAGE --out F`: one view of one run; `source`: where an attention, rollout or norm
/// view comes from (the reduced model's needs `--reducer`).
#[allow(clippy::too_many_arguments)]
pub fn export_panel(
    image: &Path,
    model: &ModelArgs,
    view: &ViewArgs,
    run: Option<RunSpec>,
    source: MapSource,
    look: &LookArgs,
    out: &Path,
) -> anyhow::Result<()> {
    let session = model.load()?;
    let view = view.view(session.model()?.encoder.num_layers())?;
    let has_source = matches!(view, View::Attention { .. } | View::Rollout | View::TokenNorms { .. });
    if source == MapSource::Reduced && !has_source {
        bail!("--source applies to the attention, rollout and token_norms views, not {}", view_name(&view));
    }
    let needs_run =
        matches!(view, View::Tokens | View::Scores | View::Saliency { reduced: true }) || source == MapSource::Reduced;
    if run.is_none() && needs_run {
        let what = if source == MapSource::Reduced { "the reduced model's" } else { "the" };
        bail!("{what} {} view needs a method: pass --reducer", view_name(&view));
    }
    let input = session.open_image(image)?;
    let spec = look.apply(ExportSpec::new(
        &session,
        image,
        &input.sha256,
        Figure::Panel { view, run, source },
        Format::from_path(out)?,
    ))?;
    finish(&session, &spec, out, look.force)
}

fn view_name(view: &View) -> &'static str {
    match view {
        View::Tokens => "tokens",
        View::Scores => "scores",
        View::Attention { .. } => "attention",
        View::Rollout => "rollout",
        View::TokenNorms { .. } => "token_norms",
        View::Saliency { .. } => "saliency",
    }
}

/// `export --from NAME.json [--out F]`: the same figure again.
pub fn export_from(sidecar: &Path, model: &ModelArgs, out: Option<PathBuf>, force: bool) -> anyhow::Result<()> {
    let spec = export::read_spec(sidecar)?;
    // `fig.png.json` -> `fig.png`.
    let out = match out {
        Some(o) => o,
        None => sidecar.with_extension(""),
    };
    if Format::from_path(&out)? != spec.format {
        bail!("{out:?} does not match the sidecar's format ({:?})", spec.format);
    }
    finish(&model.load()?, &spec, &out, force)
}

/// A grid's columns: budgets, or layers at one budget.
pub struct Columns {
    pub budgets: Vec<Budget>,
    pub layers: Vec<usize>,
}

/// `figure IMAGE --reducers .. --ratios .. --out F`: rows = methods, columns = budgets or layers.
#[allow(clippy::too_many_arguments)]
pub fn figure_grid(
    image: &Path,
    model: &ModelArgs,
    methods: Vec<ReducerConfig>,
    columns: Columns,
    output_row: bool,
    fill: DropFill,
    look: &LookArgs,
    out: &Path,
) -> anyhow::Result<()> {
    let session = model.load()?;
    let input = session.open_image(image)?;
    let Columns { budgets, layers } = columns;
    let figure = Figure::Grid {
        methods,
        budgets,
        layers,
        output_row,
        fill,
        positions: PositionMode::default(),
        view: View::Tokens,
        source: MapSource::Full,
    };
    let spec = look.apply(ExportSpec::new(&session, image, &input.sha256, figure, Format::from_path(out)?))?;
    finish(&session, &spec, out, look.force)
}
