//! Figures for papers: single panels and method x ratio grids, as PNG (sharp token cells, DPI
//! recorded) or SVG (real vector graphics). An [`ExportSpec`] fully determines a figure and is
//! written beside it as `NAME.json`; [`render`] of the same spec gives the same bytes, so
//! `tokenlens export --from NAME.json` re-makes a figure exactly (or refuses, if the image or
//! the weights changed).
//!
//! The sidecar is the figure's name plus `.json`: `fig.svg` -> `fig.svg.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::analysis::metrics::Fidelity;
use crate::reduce::{Budget, Method, PositionMode, ReducerConfig};
use crate::render::grid::{GridFigure, SharedBar, TableLine, grid_scene};
use crate::render::{self, Colormap, GroupStyle, HeatLook, Heatmap, Norm, Panel, PanelContent, Scene, TokenGroups};
use crate::session::{Analysis, DropFill, EncoderRun, FullRun, ImageInput, RunSpec, Session};
use crate::{Cancel, Error, Result, figures};

pub mod vlm;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Default physical width of a figure when a DPI is given: one column of a two-column paper.
pub const COLUMN_WIDTH_IN: f64 = 3.25;
/// The sizes a panel may be drawn at (its photo's longest side): pixels in a PNG, user units
/// in an SVG. 8192 px is a 27-inch panel at 300 DPI; a bigger one is a typo.
pub const MIN_PANEL_PX: u32 = 16;
pub const MAX_PANEL_PX: u32 = 8192;
/// The DPIs a PNG may record: 1 to 2400 (the finest print resolution journals ask for is 1200).
pub const MAX_DPI: u32 = 2400;
/// Most pixels in one figure, a grid's panels counted at full size: 2^28 (268 Mpx, 805 MB as
/// RGB), e.g. 8 methods x 4 ratios with output rows at 2048 px.
pub const MAX_FIGURE_PIXELS: u64 = 1 << 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    pub fn from_path(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => Err(Error::Config { field: "out", reason: format!("{path:?}: the figure must end in .png or .svg") }),
        }
    }
}

/// What a panel shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum View {
    /// Kept, dropped and merged tokens of the run.
    Tokens,
    /// The method's score per patch.
    Scores,
    /// CLS attention at a layer: one head, or the mean of heads.
    Attention {
        layer: usize,
        head: Option<usize>,
    },
    Rollout,
    TokenNorms {
        layer: usize,
    },
    /// The saliency output: the full model's, or the run's.
    Saliency {
        reduced: bool,
    },
}

/// Which model the attention, rollout and norm maps come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapSource {
    /// The unreduced model (computed once per image).
    #[default]
    Full,
    /// The reduced run's own attention over its kept and merged tokens, put back on the patches
    /// they stand for.
    Reduced,
}

impl MapSource {
    pub fn label(self) -> &'static str {
        match self {
            MapSource::Full => "full model",
            MapSource::Reduced => "reduced model",
        }
    }

    fn is_full(&self) -> bool {
        *self == MapSource::Full
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Figure {
    /// One view, of one run if the view needs one. `source`: where an attention, rollout or
    /// norm view comes from (the reduced model's needs the run; absent in older sidecars and
    /// for the full model).
    Panel {
        view: View,
        run: Option<RunSpec>,
        #[serde(default, skip_serializing_if = "MapSource::is_full")]
        source: MapSource,
    },
    /// Rows = methods, columns = budgets (or, with `layers`, each method's main layer at the
    /// first budget), each panel the run's `view`; with `output_row`, each method gets a second
    /// row of its reduced saliency, beside the full model's. A map view's panels share one scale
    /// (the spec's), with its own colour bar, and an attention, rollout or norm view gets the
    /// full model's column too: the compare view as the app shows it.
    Grid {
        methods: Vec<ReducerConfig>,
        budgets: Vec<Budget>,
        #[serde(default)]
        layers: Vec<usize>,
        output_row: bool,
        fill: DropFill,
        positions: PositionMode,
        /// What each method's panels show: its tokens (sidecars made before this field), or a
        /// map such as its scores.
        #[serde(default = "tokens_view")]
        view: View,
        /// Where an attention, rollout or norm view of the methods' panels comes from: each
        /// run's reduced model (the app's compare view), or the full model (absent in older
        /// sidecars).
        #[serde(default, skip_serializing_if = "MapSource::is_full")]
        source: MapSource,
    },
    /// A vision-language model's answer to `question`: the token grid of `run`'s method, what
    /// one answer token looked at (its text-to-image map), and both answers (the full model's
    /// and `run`'s) with their token diff. The full run is `run` without its method.
    VlmAnswer {
        question: String,
        /// SmolVLM's image splitting.
        split_image: bool,
        /// How the model was loaded (quantization, dtype): it changes the answers.
        load: serde_json::Value,
        /// Boxed: the other figures are smaller.
        run: Box<RunSpec>,
        token: vlm::AnswerToken,
    },
    /// The VLM compare view: the full model and each run (2 to 4 methods at one budget) side by
    /// side, each with its token grid, its answer marked against the full one and the full
    /// answer's log-probability under it.
    VlmCompare { question: String, split_image: bool, load: serde_json::Value, runs: Vec<RunSpec> },
}

fn tokens_view() -> View {
    View::Tokens
}

impl View {
    /// A map of the model's own attention or tokens, from the full or a reduced model
    /// ([`MapSource`]).
    pub fn has_source(&self) -> bool {
        matches!(self, View::Attention { .. } | View::Rollout | View::TokenNorms { .. })
    }
}

/// Puts `maps` on one colour scale: their common range under `scale` (log: the values' log10,
/// over at most four decades below the largest), the `(lo, hi)` of the fixed range to draw them
/// all with. The app's compare view and the compare grid export share it: the same colours.
pub fn share_scale<'a>(maps: impl IntoIterator<Item = &'a mut Vec<f32>>, scale: MapScale) -> (f32, f32) {
    let mut maps: Vec<&mut Vec<f32>> = maps.into_iter().collect();
    let all: Vec<f32> = maps.iter().flat_map(|m| m.iter().copied()).collect();
    let (lo, hi) = scale.norm().resolve(&Heatmap::new(1, all.len(), all));
    if scale == MapScale::Log {
        let floor = lo.max(f32::MIN_POSITIVE);
        for m in &mut maps {
            m.iter_mut().filter(|v| v.is_finite()).for_each(|v| *v = v.max(floor).log10());
        }
        return (floor.log10(), hi.max(floor).log10());
    }
    (lo, hi)
}

/// How maps that have no fixed range (attention, rollout, norms, scores) are scaled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapScale {
    #[default]
    MinMax,
    /// Min to the 99th percentile: outlier tokens saturate instead of flattening the rest.
    P99,
    Log,
}

impl MapScale {
    pub const ALL: [MapScale; 3] = [MapScale::MinMax, MapScale::P99, MapScale::Log];

    pub fn label(self) -> &'static str {
        match self {
            MapScale::MinMax => "min-max",
            MapScale::P99 => "99th percentile",
            MapScale::Log => "log",
        }
    }

    /// The colour bar's name for maps sharing this scale ([`share_scale`]); `units`: a log
    /// bar's ticks are in the maps' units (figures of [`REVISION`] 2 on), not their log10.
    pub fn shared_name(self, units: bool) -> &'static str {
        match (self, units) {
            (MapScale::MinMax, _) => "maps: min-max, shared",
            (MapScale::P99, _) => "maps: 99th pct., shared",
            (MapScale::Log, false) => "maps: log10, shared",
            (MapScale::Log, true) => "maps: log scale, shared",
        }
    }

    pub fn norm(self) -> Norm {
        match self {
            MapScale::MinMax => Norm::MinMax,
            MapScale::P99 => Norm::Percentile(99.0),
            MapScale::Log => Norm::Log,
        }
    }
}

/// Everything that determines a figure; written beside it as its sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    pub tokenlens_version: String,
    pub model: String,
    /// The weights the figure was made with: the sha256 of what `weights_digest` says.
    pub weights_sha256: String,
    /// What `weights_sha256` covers: the weight files' bytes (encoders; every sidecar made
    /// before this field, which it is then absent from), or a VLM folder's safetensors headers
    /// and sampled blocks ([`vlm::WeightsDigest`]).
    #[serde(default, skip_serializing_if = "vlm::WeightsDigest::is_file_bytes")]
    pub weights_digest: vlm::WeightsDigest,
    pub image: PathBuf,
    pub image_sha256: String,
    pub figure: Figure,
    pub colormap: Colormap,
    pub opacity: f32,
    pub title: bool,
    /// The key: the colour bar of a map, the kept / merged / dropped legend of a token view.
    pub colorbar: bool,
    /// Longest side of one panel's photo: pixels in a PNG, user units in an SVG.
    pub panel_px: u32,
    /// Dots per inch recorded in a PNG.
    pub dpi: Option<u32>,
    pub format: Format,
    /// Text size relative to the readable default (≥ [`MIN_TEXT_PT`] in print, see
    /// [`text_print_width_in`]); absent in sidecars made before it existed.
    #[serde(default = "one")]
    pub font_scale: f32,
    /// The title to print instead of the made-up one (with `title` on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title_text: Option<String>,
    /// The scale of maps without a fixed range.
    #[serde(default)]
    pub scale: MapScale,
    /// The drawing rules the figure was made with ([`REVISION`]); 0 (absent) in sidecars made
    /// before figures said which tokens they leave out and marked the VLM compare's best run, so
    /// those re-make their figures byte for byte.
    #[serde(default)]
    pub revision: u32,
    /// A compare grid's metrics under each method's panels, the best per column highlighted
    /// (absent: off, as in sidecars made before it existed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metrics: bool,
}

/// The drawing rules of figures made now: 1 adds the note of the tokens a token view leaves out
/// (special tokens, a split image's global tokens) and the VLM compare's best-run mark; 2 draws
/// the VLM compare's token legend once for the figure (not under every panel) and labels a grid's
/// shared log colour bar in the maps' own units (it printed their log10).
pub const REVISION: u32 = 2;

/// How a figure looks beyond what it shows: the CLI's flags and the app's export dialog.
#[derive(Debug, Clone, PartialEq)]
pub struct Look {
    pub colormap: Colormap,
    pub opacity: f32,
    pub scale: MapScale,
    pub title: bool,
    /// Printed instead of the made-up title (blank: the made-up one).
    pub title_text: Option<String>,
    /// The colour bar of maps, the legend of token views.
    pub colorbar: bool,
    pub font_scale: f32,
    /// A panel's longest side in px, unless `dpi` sets it from `width_in`.
    pub panel_px: u32,
    pub dpi: Option<u32>,
    /// A panel's width in inches at `dpi`.
    pub width_in: f64,
    /// A compare grid's metrics row under each method.
    pub metrics: bool,
}

impl Default for Look {
    fn default() -> Self {
        Look {
            colormap: Colormap::Viridis,
            opacity: 0.6,
            scale: MapScale::MinMax,
            title: true,
            title_text: None,
            colorbar: true,
            font_scale: 1.0,
            panel_px: 512,
            dpi: None,
            width_in: COLUMN_WIDTH_IN,
            metrics: false,
        }
    }
}

fn one() -> f32 {
    1.0
}

/// Smallest text in a figure at the default font scale, in points, as printed (see
/// [`text_print_width_in`]).
pub const MIN_TEXT_PT: f64 = 6.0;
/// Font scales allowed: a quarter to four times the default.
pub const FONT_SCALES: std::ops::RangeInclusive<f32> = 0.25..=4.0;

/// The width a figure `width_px` wide is printed at, for sizing its text: its physical width at
/// its DPI, or without one a paper column.
pub fn text_print_width_in(width_px: u32, dpi: Option<u32>) -> f64 {
    dpi.map_or(COLUMN_WIDTH_IN, |d| f64::from(width_px) / f64::from(d.max(1)))
}

impl ExportSpec {
    /// A spec for `image` on the session's model, with the usual look.
    pub fn new(session: &Session, image: &Path, image_sha256: &str, figure: Figure, format: Format) -> Self {
        let weights_digest = match session.is_vlm() {
            true => vlm::WeightsDigest::SafetensorsSampledV1,
            false => vlm::WeightsDigest::FileBytes,
        };
        Self {
            tokenlens_version: VERSION.into(),
            model: session.id.clone(),
            weights_sha256: weights_sha256(session, weights_digest).unwrap_or_default(),
            weights_digest,
            image: image.to_path_buf(),
            image_sha256: image_sha256.into(),
            figure: figure.with_load(session),
            colormap: Colormap::Viridis,
            opacity: 0.6,
            title: true,
            colorbar: true,
            panel_px: 512,
            dpi: None,
            format,
            font_scale: 1.0,
            title_text: None,
            scale: MapScale::MinMax,
            revision: REVISION,
            metrics: false,
        }
    }

    /// The notes of what a figure leaves out are drawn (see [`REVISION`]), under the key.
    pub(crate) fn notes(&self) -> bool {
        self.revision >= 1 && self.colorbar
    }

    /// The spec drawn with `look` (from the CLI's flags or the app's export dialog); refuses a
    /// size, DPI, width, opacity or font scale out of range before anything is drawn.
    pub fn with_look(mut self, look: &Look) -> Result<Self> {
        self.colormap = look.colormap;
        self.opacity = look.opacity;
        self.scale = look.scale;
        self.title = look.title;
        self.title_text = look.title_text.clone().filter(|t| !t.trim().is_empty());
        self.colorbar = look.colorbar;
        self.font_scale = look.font_scale;
        self.panel_px = look.panel_px;
        self.metrics = look.metrics;
        if let Some(dpi) = look.dpi {
            self = self.with_dpi(dpi, look.width_in)?;
        }
        self.validate()?;
        Ok(self)
    }

    /// Sets the pixel size from a DPI and a physical width (inches) of the whole panel; refuses
    /// a DPI, a width or a product out of range.
    pub fn with_dpi(mut self, dpi: u32, width_in: f64) -> Result<Self> {
        check_dpi(dpi)?;
        if !(width_in.is_finite() && width_in > 0.0) {
            return Err(Error::Config {
                field: "width_in",
                reason: format!("{width_in}: a width must be over 0 inches"),
            });
        }
        let px = (f64::from(dpi) * width_in).round();
        if !(f64::from(MIN_PANEL_PX)..=f64::from(MAX_PANEL_PX)).contains(&px) {
            return Err(Error::Config {
                field: "width_in",
                reason: format!(
                    "{dpi} DPI x {width_in} in = {px} px; a panel is {MIN_PANEL_PX} to {MAX_PANEL_PX} px \
                     (at {dpi} DPI: {:.2} to {:.2} in)",
                    f64::from(MIN_PANEL_PX) / f64::from(dpi),
                    f64::from(MAX_PANEL_PX) / f64::from(dpi)
                ),
            });
        }
        self.dpi = Some(dpi);
        self.panel_px = px as u32;
        Ok(self)
    }

    /// Every size and value the figure is drawn with, in range: checked before anything is
    /// rendered, for a spec from flags, the app or a sidecar alike.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_PANEL_PX..=MAX_PANEL_PX).contains(&self.panel_px) {
            return Err(Error::Config {
                field: "panel_px",
                reason: format!("{}: a panel is {MIN_PANEL_PX} to {MAX_PANEL_PX} px", self.panel_px),
            });
        }
        if let Some(dpi) = self.dpi {
            check_dpi(dpi)?;
        }
        if !(0.0..=1.0).contains(&self.opacity) {
            return Err(Error::Config { field: "opacity", reason: format!("{}: opacity is 0 to 1", self.opacity) });
        }
        if !FONT_SCALES.contains(&self.font_scale) {
            return Err(Error::Config {
                field: "font_scale",
                reason: format!(
                    "{}: a font scale is {} to {}",
                    self.font_scale,
                    FONT_SCALES.start(),
                    FONT_SCALES.end()
                ),
            });
        }
        Ok(())
    }
}

fn check_dpi(dpi: u32) -> Result<()> {
    if (1..=MAX_DPI).contains(&dpi) {
        Ok(())
    } else {
        Err(Error::Config { field: "dpi", reason: format!("{dpi}: a DPI is 1 to {MAX_DPI}") })
    }
}

/// The sidecar path of a figure: `fig.png` -> `fig.png.json` (a PNG and an SVG of the same
/// name keep their own sidecars).
pub fn sidecar_path(figure: &Path) -> PathBuf {
    let mut name = figure.file_name().unwrap_or_default().to_os_string();
    name.push(".json");
    figure.with_file_name(name)
}

/// Renders the figure `spec` describes. Fails if the image or the weights are not the ones
/// the spec was made with.
pub fn render(session: &Session, spec: &ExportSpec) -> Result<Vec<u8>> {
    spec.validate()?;
    let weights_sha256 = &weights_sha256(session, spec.weights_digest)?;
    if spec.weights_sha256 != *weights_sha256 {
        return Err(Error::Config {
            field: "weights_sha256",
            reason: format!(
                "the figure was made with weights {}, but the loaded model has {}; load the same model to re-make it",
                short(&spec.weights_sha256),
                short(weights_sha256)
            ),
        });
    }
    if spec.figure.is_vlm() {
        return vlm::render(session, spec);
    }
    let input = session.open_image(&spec.image)?;
    if input.sha256 != spec.image_sha256 {
        return Err(Error::image(
            &spec.image,
            format!("the file changed since the figure was made (sha256 {} expected)", short(&spec.image_sha256)),
        ));
    }
    let cancel = Cancel::default();
    let full = session.full_run(&input.prepared.pixels, &cancel)?;
    let analysis = session.analysis_of(&full)?;
    let ctx = Ctx { session, spec, input: &input, full: &full, analysis: &analysis };
    match &spec.figure {
        Figure::Panel { view, run, source } => ctx.panel(view, run.as_ref(), *source),
        Figure::Grid { methods, budgets, layers, output_row, fill, positions, view, source } => {
            let rows = GridRows { view, source: *source, output_row: *output_row, fill: *fill, positions: *positions };
            ctx.grid(methods, &columns(budgets, layers)?, &rows)
        }
        Figure::VlmAnswer { .. } | Figure::VlmCompare { .. } => unreachable!("drawn by `vlm::render` above"),
    }
}

impl Figure {
    /// A figure of a vision-language model's answers.
    pub fn is_vlm(&self) -> bool {
        matches!(self, Figure::VlmAnswer { .. } | Figure::VlmCompare { .. })
    }
}

/// The checksum that identifies the session's weights as `digest` says: the encoder's, or the
/// VLM's weight files' (see [`vlm::weights_sha256`]).
fn weights_sha256(session: &Session, digest: vlm::WeightsDigest) -> Result<String> {
    match (session.vlm(), digest) {
        (Ok(v), digest) => vlm::weights_sha256(&v.dir, digest),
        (Err(_), vlm::WeightsDigest::FileBytes) => Ok(session.model()?.weights_sha256.clone()),
        (Err(_), other) => Err(Error::Config {
            field: "weights_digest",
            reason: format!("{other:?} checksums a vision-language model's folder; this is an image encoder"),
        }),
    }
}

/// What a grid's rows show, and how its runs are made.
struct GridRows<'a> {
    view: &'a View,
    source: MapSource,
    output_row: bool,
    fill: DropFill,
    positions: PositionMode,
}

/// One grid column: a budget, and the method layer it sets (if columns are layers).
#[derive(Debug, Clone, Copy)]
struct Column {
    budget: Budget,
    layer: Option<usize>,
}

fn columns(budgets: &[Budget], layers: &[usize]) -> Result<Vec<Column>> {
    if layers.is_empty() {
        return Ok(budgets.iter().map(|&budget| Column { budget, layer: None }).collect());
    }
    match budgets {
        [budget] => Ok(layers.iter().map(|&l| Column { budget: *budget, layer: Some(l) }).collect()),
        _ => Err(Error::Config { field: "figure", reason: "columns of layers need exactly one budget".into() }),
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

struct Ctx<'a> {
    session: &'a Session,
    spec: &'a ExportSpec,
    input: &'a ImageInput,
    full: &'a FullRun,
    analysis: &'a Analysis,
}

/// The data one panel draws, before it is drawn as pixels or vectors.
enum Content {
    Heat { heat: Heatmap, norm: Norm, title: String, smooth: bool },
    Tokens { groups: TokenGroups, style: GroupStyle, title: String },
}

impl Ctx<'_> {
    fn grid_dims(&self) -> [usize; 2] {
        self.analysis.grid
    }

    fn run(&self, spec: &RunSpec) -> Result<EncoderRun> {
        self.session.run_against(self.full, spec, &Cancel::default())
    }

    fn content(&self, view: &View, run: Option<&EncoderRun>) -> Result<Content> {
        self.content_from(view, run, MapSource::Full)
    }

    /// The content of `view`; its attention, rollout and norms from `source` (the reduced
    /// model's are `run`'s), the title saying which, as the app's do.
    fn content_from(&self, view: &View, run: Option<&EncoderRun>, source: MapSource) -> Result<Content> {
        let [rows, cols] = self.grid_dims();
        let a = self.analysis;
        let grid_heat = |values: Vec<f32>| Heatmap { rows, cols, values };
        let needs_run =
            || Error::Config { field: "figure", reason: format!("the {view:?} view needs a run (a method)") };
        let check_layer = |l: usize| {
            if l < a.cls_attention.len() {
                Ok(l)
            } else {
                Err(Error::Config {
                    field: "layer",
                    reason: format!("layer {l} is out of range 0..{}", a.cls_attention.len()),
                })
            }
        };
        // Where the attention, rollout and norms come from. A run without maps changed no block:
        // the full model's are its own.
        let (maps, from) = match source {
            MapSource::Full => (figures::MapsRef::of_analysis(a), MapSource::Full.label().to_string()),
            MapSource::Reduced => {
                let run = run.ok_or_else(needs_run)?;
                let maps = match &run.maps {
                    Some(lazy) => figures::MapsRef::of_run(lazy.get()?),
                    None => figures::MapsRef::of_analysis(a),
                };
                (maps, figures::reduced_label(run))
            }
        };
        Ok(match view {
            View::Tokens => {
                let run = run.ok_or_else(needs_run)?;
                let (groups, style) = figures::token_groups([rows, cols], run);
                Content::Tokens { groups, style, title: figures::run_title(run) }
            }
            View::Scores => {
                let run = run.ok_or_else(needs_run)?;
                let scores = run.scores.as_ref().ok_or_else(|| Error::Config {
                    field: "view",
                    reason: format!("{} has no score map", run.reducer().info().label),
                })?;
                Content::Heat {
                    heat: grid_heat(scores.iter().map(|s| s.unwrap_or(f32::NAN)).collect()),
                    norm: self.spec.scale.norm(),
                    title: format!("{} score: {}", run.reducer().info().label, figures::score_name(run.reducer())),
                    smooth: false,
                }
            }
            View::Attention { layer, head } => {
                let l = check_layer(*layer)?;
                let (values, which) = match head {
                    None => (maps.cls_attention[l].clone(), "mean of heads".to_string()),
                    Some(h) => (
                        maps.cls_attention_heads[l].get(*h).cloned().ok_or_else(|| Error::Config {
                            field: "head",
                            reason: format!("head {h} does not exist"),
                        })?,
                        format!("head {h}"),
                    ),
                };
                Content::Heat {
                    heat: grid_heat(values),
                    norm: self.spec.scale.norm(),
                    title: format!("CLS attention, layer {l}, {which} ({from})"),
                    smooth: false,
                }
            }
            View::Rollout => Content::Heat {
                heat: grid_heat(maps.rollout.to_vec()),
                norm: self.spec.scale.norm(),
                title: format!("Attention rollout ({from})"),
                smooth: false,
            },
            View::TokenNorms { layer } => {
                let l = check_layer(*layer)?;
                Content::Heat {
                    heat: grid_heat(maps.token_norms[l].clone()),
                    norm: self.spec.scale.norm(),
                    title: format!("Token norms after layer {l} ({from})"),
                    smooth: false,
                }
            }
            View::Saliency { .. } if !a.output.is_map() => {
                return Err(Error::Config {
                    field: "view",
                    reason: format!("this model's output is {}, not a saliency map", a.output.kind),
                });
            }
            View::Saliency { reduced } => {
                let (output, title) = if *reduced {
                    let run = run.ok_or_else(needs_run)?;
                    (&run.output, format!("Saliency, {}", figures::run_title(run)))
                } else {
                    (&a.output, "Saliency, full model".to_string())
                };
                Content::Heat {
                    heat: Heatmap { rows: output.shape[0], cols: output.shape[1], values: output.values.clone() },
                    norm: Norm::Range { lo: 0.0, hi: 1.0 },
                    title,
                    smooth: true,
                }
            }
        })
    }

    fn panel(&self, view: &View, run_spec: Option<&RunSpec>, source: MapSource) -> Result<Vec<u8>> {
        let run = run_spec.map(|r| self.run(r)).transpose()?;
        let content = self.content_from(view, run.as_ref(), source)?;
        let s = self.spec;
        let mut panel = self.panel_of(&content, s.title, true);
        if s.title {
            panel.title = Some(self.title_or(|| panel.title.clone().unwrap_or_default()));
        }
        // The key: a colour bar for maps, the kept/merged/dropped legend for tokens.
        let outline = render::scene::OUTLINE_RGB;
        let default_px = render::heat::default_label_px(s.panel_px);
        let note = self.note(view);
        self.encode(&self.readable(default_px, |px| {
            let scene = render::scene::panel_scene_sized(&panel, s.panel_px, s.colorbar, outline, Some(px));
            with_note(scene, note.as_deref(), px)
        }))
    }

    /// What a grid's maps show and which model they come from (its panels have no titles), if
    /// the spec draws notes.
    fn map_note(&self, view: &View, source: MapSource) -> Result<Option<String>> {
        if !self.spec.notes() {
            return Ok(None);
        }
        Ok(match view {
            View::Scores => Some("Maps: each method's own score.".into()),
            View::Attention { .. } | View::Rollout | View::TokenNorms { .. } => {
                // The full model's title without its source: "CLS attention, layer 11, mean of heads".
                let Content::Heat { title, .. } = self.content(view, None)? else { return Ok(None) };
                let what = title.split(" (").next().unwrap_or(&title).to_string();
                let from = match source {
                    MapSource::Reduced => {
                        "the full model's in its column, each method's own reduced model's in its row"
                    }
                    MapSource::Full => "all of the full model",
                };
                Some(format!("Maps: {what}; {from}."))
            }
            View::Tokens | View::Saliency { .. } => None,
        })
    }

    /// What a token view leaves out (the special tokens), if the spec draws notes.
    fn note(&self, view: &View) -> Option<String> {
        let tokens = *view == View::Tokens && self.spec.notes();
        tokens.then(|| figures::special_tokens_note(self.analysis.num_special)).flatten()
    }

    /// The custom title if one was given, else `made`.
    fn title_or(&self, made: impl FnOnce() -> String) -> String {
        self.spec.title_text.clone().unwrap_or_else(made)
    }

    /// See [`readable`].
    fn readable(&self, default_px: f32, make: impl Fn(f32) -> Scene) -> Scene {
        readable(self.spec, default_px, make)
    }

    /// The scene as the spec's format.
    fn encode(&self, scene: &Scene) -> Result<Vec<u8>> {
        encode(self.spec, scene)
    }

    /// The panel of `content`; `smooth` allows smooth sampling of pixel-resolution maps (grids
    /// sample them nearest, each panel being small).
    fn panel_of<'c>(&'c self, content: &'c Content, with_title: bool, smooth: bool) -> Panel<'c> {
        let s = self.spec;
        // Token maps lie over the part of the canvas the patches read; pixel maps over all of it.
        let grid_place = figures::grid_placement(self.input, self.grid_dims());
        let (content, title, place) = match content {
            Content::Heat { heat, norm, title, smooth: smooth_map } => {
                let smooth = smooth && *smooth_map;
                let look =
                    HeatLook { norm: *norm, colormap: s.colormap, opacity: s.opacity, smooth, grid_lines: false };
                let place = if *smooth_map { figures::placement(self.input) } else { grid_place };
                (PanelContent::Heat { heat, look }, title, place)
            }
            Content::Tokens { groups, style, title } => {
                (PanelContent::Tokens { groups, style: *style, opacity: s.opacity }, title, grid_place)
            }
        };
        Panel { photo: &self.input.photo, place, content, title: with_title.then(|| title.clone()) }
    }

    fn grid(&self, methods: &[ReducerConfig], columns: &[Column], rows: &GridRows) -> Result<Vec<u8>> {
        let GridRows { view, source, output_row, fill, positions } = *rows;
        if methods.is_empty() || columns.is_empty() {
            return Err(Error::Config {
                field: "figure",
                reason: "a grid needs at least one method and one column".into(),
            });
        }
        if source == MapSource::Reduced && !view.has_source() {
            return Err(Error::Config {
                field: "source",
                reason: format!("a reduced model's maps are attention, rollout or token norms, not {view:?}"),
            });
        }
        if columns.iter().any(|c| c.layer.is_some())
            && let Some(m) = methods.iter().find(|m| !m.has_layer())
        {
            return Err(Error::Config {
                field: "figure",
                reason: format!("columns of layers need methods with a layer; {} has none", m.name()),
            });
        }
        // The full model's column: its outputs beside the methods', and its own map.
        let full_column = output_row || view.has_source();
        let (num_rows, num_cols) =
            (methods.len() * (1 + usize::from(output_row)), columns.len() + usize::from(full_column));
        let panel_px = u64::from(self.spec.panel_px);
        let pixels = (num_rows * num_cols) as u64 * panel_px * panel_px;
        if pixels > MAX_FIGURE_PIXELS {
            return Err(Error::Config {
                field: "figure",
                reason: format!(
                    "{num_rows} x {num_cols} panels of {panel_px} px are {pixels} pixels, over the limit of \
                     {MAX_FIGURE_PIXELS}: use a smaller --size or fewer methods or columns"
                ),
            });
        }
        let n = self.full.states[0].num_patches();
        let mut contents: Vec<Vec<Option<Content>>> = Vec::new();
        let mut row_labels = Vec::new();
        // Each method's runs' drift from the full model, per column.
        let mut fidelities: Vec<Vec<Fidelity>> = Vec::new();
        for method in methods {
            let runs = columns
                .iter()
                .map(|c| {
                    let mut reducer = method.clone();
                    if let Some(l) = c.layer {
                        reducer.set_layer(l);
                    }
                    self.run(&RunSpec {
                        method: Some(Method::Vision(reducer)),
                        budget: c.budget,
                        fill,
                        positions,
                        ..RunSpec::default()
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            fidelities.push(runs.iter().map(|r| r.fidelity.clone()).collect());
            let mut tokens_row: Vec<Option<Content>> =
                runs.iter().map(|r| self.content_from(view, Some(r), source).map(Some)).collect::<Result<_>>()?;
            // The full model's column shows its grid and its output once, in the first method's
            // rows: the same for every method, repeating it would only say it again.
            let first = contents.is_empty();
            if full_column {
                tokens_row.insert(0, if first { self.full_view(view)? } else { None });
            }
            contents.push(tokens_row);
            row_labels.push(method.info().label.to_string());
            if output_row {
                let full_output =
                    if first { Some(self.content(&View::Saliency { reduced: false }, None)?) } else { None };
                let mut out_row = vec![full_output];
                for r in &runs {
                    out_row.push(Some(self.content(&View::Saliency { reduced: true }, Some(r))?));
                }
                contents.push(out_row);
                row_labels.push(format!("{} output", method.info().label));
            }
        }
        // The maps (all but the outputs, which keep their fixed range) on one scale, as the
        // app's compare view draws them.
        let mut maps: Vec<&mut Vec<f32>> = Vec::new();
        let mut norms: Vec<&mut Norm> = Vec::new();
        for content in contents.iter_mut().flatten().flatten() {
            if let Content::Heat { heat, norm, smooth: false, .. } = content {
                maps.push(&mut heat.values);
                norms.push(norm);
            }
        }
        let map_bar = (!maps.is_empty()).then(|| {
            let (lo, hi) = share_scale(maps, self.spec.scale);
            norms.into_iter().for_each(|n| *n = Norm::Range { lo, hi });
            let log10 = self.spec.scale == MapScale::Log && self.spec.revision >= 2;
            let name = self.spec.scale.shared_name(log10);
            SharedBar { colormap: self.spec.colormap, lo, hi, name, log10 }
        });
        // "66.7 % removed (85 kept)", or in a narrow column "−67%" over "85 kept" (a wide grid
        // printed one column wide); no-break spaces keep a number with its unit when it wraps.
        let label = |c: &Column, compact: bool| {
            let keep = c.budget.resolve(n).unwrap_or(n);
            let removed = 100.0 * c.budget.removed_fraction(n);
            match (c.layer, compact) {
                (None, false) => format!("{removed:.1}\u{a0}% removed ({keep}\u{a0}kept)"),
                (None, true) => format!("−{removed:.0}% {keep} kept"),
                (Some(l), _) => format!("layer {l}, {keep} kept"),
            }
        };
        let mut col_labels: Vec<String> = columns.iter().map(|c| label(c, false)).collect();
        let mut compact_col_labels: Vec<String> = columns.iter().map(|c| label(c, true)).collect();
        if full_column {
            col_labels.insert(0, "full model".into());
            compact_col_labels.insert(0, "full".into());
        }
        let rows = contents
            .iter()
            .map(|row| row.iter().map(|c| c.as_ref().map(|c| self.panel_of(c, false, false))).collect())
            .collect();
        let fig = GridFigure {
            rows,
            row_labels,
            col_labels,
            compact_col_labels,
            title: self.spec.title.then(|| self.title_or(|| format!("{} · {}", self.spec.model, self.image_name()))),
            colorbars: map_bar
                .into_iter()
                .chain(output_row.then_some(SharedBar {
                    colormap: self.spec.colormap,
                    lo: 0.0,
                    hi: 1.0,
                    name: "saliency, fixed range",
                    log10: false,
                }))
                .filter(|_| self.spec.colorbar)
                .collect(),
            label_px: None,
            tables: if self.spec.metrics { metric_tables(&fidelities, output_row, full_column) } else { Vec::new() },
        };
        let default_px = render::heat::default_label_px(self.spec.panel_px.saturating_mul(2));
        let note = match self.note(view) {
            Some(note) => Some(note),
            None => self.map_note(view, source)?,
        };
        let metrics_note = self.spec.metrics.then_some(figures::METRICS_NOTE);
        let scene = self.readable(default_px, |px| {
            let scene = grid_scene(&GridFigure { label_px: Some(px), ..fig.clone() }, self.spec.panel_px);
            with_note(with_note(scene, note.as_deref(), px), metrics_note, px)
        });
        self.encode(&scene)
    }

    /// The full model's panel of `view`: every patch kept as itself for tokens, the map for
    /// views of the full model, nothing for views of a run (scores).
    fn full_view(&self, view: &View) -> Result<Option<Content>> {
        Ok(match view {
            View::Tokens => {
                let groups = figures::every_patch_kept(self.grid_dims());
                Some(Content::Tokens { groups, style: GroupStyle::KeptDropped, title: "Full model".into() })
            }
            View::Scores | View::Saliency { reduced: true } => None,
            other => Some(self.content(other, None)?),
        })
    }

    /// The image's file name: a title never shows where the file lives.
    fn image_name(&self) -> String {
        self.spec
            .image
            .file_name()
            .map_or_else(|| self.spec.image.display().to_string(), |n| n.to_string_lossy().into())
    }
}

/// The metrics under each method's rows (its last row: under its output row if it has one), one
/// value per column, the best of the methods at each column marked; the full model's column
/// (`full_column`) blank. Metrics no run has a value of are left out.
fn metric_tables(fidelities: &[Vec<Fidelity>], output_row: bool, full_column: bool) -> Vec<Vec<TableLine>> {
    let columns = fidelities.iter().map(Vec::len).max().unwrap_or(0);
    let best: Vec<Vec<Option<f64>>> = (0..columns)
        .map(|c| figures::best_values(&fidelities.iter().map(|row| row.get(c)).collect::<Vec<_>>()))
        .collect();
    let mut tables = Vec::new();
    for row in fidelities {
        if output_row {
            tables.push(Vec::new());
        }
        let lines = figures::METRICS
            .iter()
            .enumerate()
            .filter(|(_, m)| fidelities.iter().flatten().any(|f| (m.get)(f).is_finite()))
            .map(|(k, m)| {
                let values = row.iter().enumerate().map(|(c, f)| {
                    let v = (m.get)(f);
                    v.is_finite().then(|| (figures::metric_text(v), best[c][k] == Some(v)))
                });
                let cells = if full_column { std::iter::once(None).chain(values).collect() } else { values.collect() };
                TableLine { name: m.name.into(), cells }
            })
            .collect();
        tables.push(lines);
    }
    tables
}

/// The scene `make(label_px)` draws for `spec`, with labels large enough that its smallest text
/// is at least [`MIN_TEXT_PT`] x the font scale in print (see [`text_print_width_in`]); labels
/// never below `default_px` x the font scale. Text grows the figure a little, so the size is
/// found by a few fixed-point steps.
fn readable(spec: &ExportSpec, default_px: f32, make: impl Fn(f32) -> Scene) -> Scene {
    let (scale, dpi) = (spec.font_scale, spec.dpi);
    let target = MIN_TEXT_PT * f64::from(scale);
    let mut px = default_px * scale;
    let mut scene = make(px);
    for _ in 0..12 {
        let Some(pt) = scene.smallest_text_pt(text_print_width_in(scene.width, dpi)) else { break };
        if pt >= target {
            break;
        }
        // A little over the ratio, so the steps end above the target, not just under it.
        px = (f64::from(px) * target / pt * 1.01) as f32;
        scene = make(px);
    }
    scene
}

/// `scene` with `note` under it, if there is one.
fn with_note(scene: Scene, note: Option<&str>, label_px: f32) -> Scene {
    match note {
        Some(note) => render::scene::with_note(scene, note, label_px),
        None => scene,
    }
}

/// The scene as `spec`'s format.
fn encode(spec: &ExportSpec, scene: &Scene) -> Result<Vec<u8>> {
    match spec.format {
        Format::Png => png_bytes(&render::raster::draw(scene), spec.dpi),
        Format::Svg => Ok(render::svg::draw(scene).into_bytes()),
    }
}

/// PNG bytes, with the DPI recorded (pHYs) when given. Deterministic for the same image.
pub fn png_bytes(img: &image::RgbImage, dpi: Option<u32>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, img.width(), img.height());
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    if let Some(dpi) = dpi {
        let per_metre = (f64::from(dpi) / 0.0254).round() as u32;
        enc.set_pixel_dims(Some(png::PixelDimensions { xppu: per_metre, yppu: per_metre, unit: png::Unit::Meter }));
    }
    let encode = |e: png::EncodingError| Error::Render(format!("PNG encoding failed: {e}"));
    let mut writer = enc.write_header().map_err(encode)?;
    writer.write_image_data(img.as_raw()).map_err(encode)?;
    writer.finish().map_err(encode)?;
    Ok(out)
}

/// Writes a figure and its sidecar, atomically and together. Existing files are kept unless `force`: both
/// paths are checked before anything is written.
pub fn write(path: &Path, bytes: &[u8], spec: &ExportSpec, force: bool) -> Result<PathBuf> {
    let sidecar = sidecar_path(path);
    if !force && let Some(existing) = [path, sidecar.as_path()].into_iter().find(|p| p.exists()) {
        return Err(Error::Config {
            field: "out",
            reason: format!("{existing:?} exists; pass --force to overwrite it"),
        });
    }
    // Only a non-UTF-8 image path fails to serialise: a sidecar must name the image exactly.
    let json = serde_json::to_vec_pretty(spec).map_err(|e| Error::Config {
        field: "image",
        reason: format!("{:?} cannot be recorded in the sidecar ({e}): rename it to a UTF-8 name", spec.image),
    })?;
    // One unit: a figure without its sidecar cannot be re-made, a sidecar without its figure
    // describes nothing.
    crate::atomic::write_atomic_all(&[(path, bytes), (&sidecar, &json)]).map_err(|e| Error::Render(e.to_string()))?;
    Ok(sidecar)
}

/// Reads a sidecar.
pub fn read_spec(path: &Path) -> Result<ExportSpec> {
    let bytes = std::fs::read(path).map_err(|e| Error::Config { field: "from", reason: format!("{path:?}: {e}") })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Config { field: "from", reason: format!("{path:?} is not a tokenlens sidecar: {e}") })
}
