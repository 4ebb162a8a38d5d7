//! The pictures of an analysis or a reduced run, built from session results with `render`.
//! The CLI writes them and the app shows them, so both always agree.

use image::RgbImage;

use crate::reduce::ReducerConfig;
use crate::render::{self, Colormap, GroupStyle, Heatmap, Norm, OverlayStyle, Placement, TokenGroups, TokensStyle};
use crate::session::{Analysis, EncoderRun, ImageInput, Output, ReducedMaps};

/// Where the model's square canvas lies over the photo.
pub fn placement(input: &ImageInput) -> Placement {
    let [x0, y0, x1, y1] = input.prepared.place;
    Placement { x0, y0, x1, y1 }
}

/// Where the patch grid lies over the photo: the part of the canvas the model read (the pixels
/// past the last whole patch are not under any token; see [`Placement::read_by_grid`]).
pub fn grid_placement(input: &ImageInput, grid: [usize; 2]) -> Placement {
    placement(input).read_by_grid(input.prepared.canvas.dimensions(), grid)
}

/// A per-patch map (attention, scores, norms) over the photo: crisp cells, min-max colour bar.
pub fn grid_map(
    input: &ImageInput,
    grid: [usize; 2],
    values: &[f32],
    title: String,
    colormap: Colormap,
    opacity: f32,
    max_side: u32,
) -> RgbImage {
    let heat = Heatmap { rows: grid[0], cols: grid[1], values: values.to_vec() };
    let style = OverlayStyle { colormap, opacity, title: Some(title), max_side, ..OverlayStyle::default() };
    render::overlay(&input.photo, &heat, &grid_placement(input, grid), &style)
}

/// [`grid_map`] without title or colour bar: what the app shows (it draws its own legend).
pub fn grid_map_body(
    input: &ImageInput,
    grid: [usize; 2],
    values: &[f32],
    colormap: Colormap,
    norm: Norm,
    opacity: f32,
    max_side: u32,
) -> RgbImage {
    grid_map_body_at(&input.photo, grid_placement(input, grid), grid, values, colormap, norm, opacity, max_side)
}

/// A per-token map on any grid placed over `photo` (the app's VLM view uses the image-token grid).
#[allow(clippy::too_many_arguments)] // the look's three knobs, as the callers hold them
pub fn grid_map_body_at(
    photo: &RgbImage,
    place: Placement,
    grid: [usize; 2],
    values: &[f32],
    colormap: Colormap,
    norm: Norm,
    opacity: f32,
    max_side: u32,
) -> RgbImage {
    // Values past the grid (SmolVLM's global image when split) are not drawn.
    let values = values.iter().copied().take(grid[0] * grid[1]).collect();
    let heat = Heatmap { rows: grid[0], cols: grid[1], values };
    let style =
        OverlayStyle { colormap, opacity, norm, title: None, colorbar: false, max_side, ..OverlayStyle::default() };
    render::overlay_body(photo, &heat, &place, &style)
}

/// `groups` restricted to the tokens on a `rows` x `cols` grid (SmolVLM's split image puts its
/// global image's tokens after the grid); groups left empty are dropped.
fn on_grid(groups: &[Vec<u32>], rows: usize, cols: usize) -> Vec<Vec<u32>> {
    let cells = (rows * cols) as u32;
    groups
        .iter()
        .map(|g| g.iter().copied().filter(|&t| t < cells).collect::<Vec<_>>())
        .filter(|g| !g.is_empty())
        .collect()
}

/// What a token view cannot place on the photo, said under its key (figures and the app's
/// legend alike): an encoder's special tokens, which every method keeps (a plan leaves them
/// first and unchanged).
pub fn special_tokens_note(num_special: usize) -> Option<String> {
    match num_special {
        0 => None,
        1 => Some("Not drawn: the CLS token, which every method keeps.".into()),
        n => Some(format!("Not drawn: {n} special tokens (CLS, registers), which every method keeps.")),
    }
}

/// A VLM run's image tokens past the `grid` (SmolVLM's global image when split), which token
/// views do not draw, and how many of them the run still carries.
pub fn off_grid_note(grid: (usize, usize), num_image_tokens: usize, groups: &[Vec<u32>]) -> Option<String> {
    let cells = grid.0 * grid.1;
    let off = num_image_tokens.checked_sub(cells).filter(|&n| n > 0)?;
    let carried = groups.iter().flatten().filter(|&&t| t as usize >= cells).count();
    Some(format!("Not drawn: the global image's {off} tokens, {carried} of them still carried."))
}

/// The saliency body on the fixed 0..1 scale, without title or colour bar.
pub fn saliency_body(input: &ImageInput, output: &Output, colormap: Colormap, max_side: u32) -> RgbImage {
    let heat = Heatmap { rows: output.shape[0], cols: output.shape[1], values: output.values.clone() };
    let style = OverlayStyle {
        colormap,
        opacity: 0.6,
        norm: Norm::Range { lo: 0.0, hi: 1.0 },
        title: None,
        colorbar: false,
        max_side,
        smooth: true,
        ..OverlayStyle::default()
    };
    render::overlay_body(&input.photo, &heat, &placement(input), &style)
}

/// [`tokens`] without title or legend; `opacity` is the merged groups' fill opacity.
pub fn tokens_body(input: &ImageInput, grid: [usize; 2], run: &EncoderRun, opacity: f32, max_side: u32) -> RgbImage {
    let merges = run.reducer().info().merges;
    groups_body_at(&input.photo, grid_placement(input, grid), grid, &run.groups, merges, opacity, max_side)
}

/// Surviving tokens (`groups`: the original tokens each carries) on any grid over `photo`:
/// merge methods as filled groups, pruning methods as kept versus faded dropped cells.
pub fn groups_body_at(
    photo: &RgbImage,
    place: Placement,
    grid: [usize; 2],
    groups: &[Vec<u32>],
    merges: bool,
    opacity: f32,
    max_side: u32,
) -> RgbImage {
    let groups = TokenGroups::from_groups(grid[0], grid[1], &on_grid(groups, grid[0], grid[1]))
        .expect("a run's groups are disjoint");
    let style = if merges { GroupStyle::MergeGroups } else { GroupStyle::KeptDropped };
    let tokens_style = TokensStyle { style, max_side, fill_opacity: opacity, ..TokensStyle::default() };
    render::tokens_body(photo, &groups, &place, &tokens_style)
}

/// The saliency output over the photo, on the fixed 0..1 scale so maps compare directly.
pub fn saliency(input: &ImageInput, output: &Output, title: String, colormap: Colormap, max_side: u32) -> RgbImage {
    let heat = Heatmap { rows: output.shape[0], cols: output.shape[1], values: output.values.clone() };
    let style = OverlayStyle {
        colormap,
        opacity: 0.6,
        norm: Norm::Range { lo: 0.0, hi: 1.0 },
        title: Some(title),
        max_side,
        smooth: true,
        ..OverlayStyle::default()
    };
    render::overlay(&input.photo, &heat, &placement(input), &style)
}

/// A run's groups on the grid, and how to draw them: merge methods as filled groups (ToMe's
/// figure), pruning methods as kept versus faded dropped patches.
pub fn token_groups(grid: [usize; 2], run: &EncoderRun) -> (TokenGroups, GroupStyle) {
    let groups =
        TokenGroups::from_groups(grid[0], grid[1], &run.groups).expect("a run's groups are disjoint and on the grid");
    let style = if run.reducer().info().merges { GroupStyle::MergeGroups } else { GroupStyle::KeptDropped };
    (groups, style)
}

/// The attention views of one model: the full model's (an [`Analysis`]) or a reduced run's
/// ([`ReducedMaps`]), per patch.
#[derive(Clone, Copy)]
pub struct MapsRef<'a> {
    pub cls_attention: &'a [Vec<f32>],
    pub cls_attention_heads: &'a [Vec<Vec<f32>>],
    pub rollout: &'a [f32],
    pub token_norms: &'a [Vec<f32>],
}

impl<'a> MapsRef<'a> {
    pub fn of_analysis(a: &'a Analysis) -> Self {
        Self {
            cls_attention: &a.cls_attention,
            cls_attention_heads: &a.cls_attention_heads,
            rollout: &a.rollout,
            token_norms: &a.token_norms,
        }
    }

    pub fn of_run(m: &'a ReducedMaps) -> Self {
        Self {
            cls_attention: &m.cls_attention,
            cls_attention_heads: &m.cls_attention_heads,
            rollout: &m.rollout,
            token_norms: &m.token_norms,
        }
    }
}

/// "reduced: ToMe, 67 % removed": the run a reduced-model map comes from (the app's titles and
/// the exports' alike).
pub fn reduced_label(run: &EncoderRun) -> String {
    let removed = 100.0 * (1.0 - run.keep as f64 / run.num_patches.max(1) as f64);
    format!("reduced: {}, {removed:.0} % removed", run.reducer().info().label)
}

/// "ToMe, 66.7 % removed (85 of 256)".
pub fn run_title(run: &EncoderRun) -> String {
    format!("{}, {}", run.reducer().info().label, run.spec.budget.describe(run.num_patches))
}

/// Which patches survive and how they group: merge methods as filled groups (ToMe's figure),
/// pruning methods as kept versus faded dropped patches.
pub fn tokens(input: &ImageInput, grid: [usize; 2], run: &EncoderRun, max_side: u32) -> RgbImage {
    let (groups, style) = token_groups(grid, run);
    let tokens_style = TokensStyle { style, title: Some(run_title(run)), max_side, ..TokensStyle::default() };
    render::tokens_overlay(&input.photo, &groups, &grid_placement(input, grid), &tokens_style)
}

/// The method's own score per patch (attention, energy, coverage...), if it has one.
pub fn scores(
    input: &ImageInput,
    grid: [usize; 2],
    run: &EncoderRun,
    colormap: Colormap,
    max_side: u32,
) -> Option<RgbImage> {
    let scores = run.scores.as_ref()?;
    let values: Vec<f32> = scores.iter().map(|s| s.unwrap_or(f32::NAN)).collect();
    let title = format!("{} score: {}", run.reducer().info().label, score_name(run.reducer()));
    Some(grid_map(input, grid, &values, title, colormap, 0.6, max_side))
}

/// What a method's score means, for legends.
pub fn score_name(reducer: &ReducerConfig) -> &'static str {
    match reducer {
        ReducerConfig::Tome(_) => "best-match key similarity (first merging block)",
        ReducerConfig::Pitome(_) => "energy (first merging block)",
        ReducerConfig::Evit(_) | ReducerConfig::ClsTopk(_) => "CLS attention",
        ReducerConfig::Hiprune(_) => "attention received at the object layer",
        ReducerConfig::Divprune(_) => "distance to the nearest kept token",
        ReducerConfig::Random(_) | ReducerConfig::Pool(_) => "none",
    }
}

/// Images side by side on white, top-aligned, with a gap.
pub fn side_by_side(images: &[RgbImage], gap: u32) -> RgbImage {
    let width = images.iter().map(|i| i.width()).sum::<u32>() + gap * images.len().saturating_sub(1) as u32;
    let height = images.iter().map(|i| i.height()).max().unwrap_or(0);
    let mut out = RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let mut x = 0;
    for img in images {
        image::imageops::replace(&mut out, img, i64::from(x), 0);
        x += img.width() + gap;
    }
    out
}

/// Where a VLM's canvas lies over the photo.
pub fn vlm_placement(image: &crate::session::vlm::VlmImage) -> Placement {
    let [x0, y0, x1, y1] = image.place;
    Placement { x0, y0, x1, y1 }
}

/// A VLM run's surviving image tokens on the image-token grid (each token drawn over the patches
/// it covers: SmolVLM's tokens are blocks of patches).
pub fn vlm_tokens(
    image: &crate::session::vlm::VlmImage,
    grid: (usize, usize),
    run: &crate::session::vlm::VlmRun,
    max_side: u32,
) -> RgbImage {
    let (groups, style) = vlm_token_groups(grid, run);
    let title = format!("{}: {} of {} image tokens", vlm_run_title(run), run.groups.len(), run.num_image_tokens);
    let tokens_style = TokensStyle { style, title: Some(title), max_side, ..TokensStyle::default() };
    render::tokens_overlay(&image.photo, &groups, &vlm_placement(image), &tokens_style)
}

/// [`vlm_tokens`] without title or legend (the app's compare columns, which say both in text):
/// merged groups filled, else kept versus dropped, as the figure draws them.
pub fn vlm_tokens_body(
    image: &crate::session::vlm::VlmImage,
    grid: (usize, usize),
    run: &crate::session::vlm::VlmRun,
    opacity: f32,
    max_side: u32,
) -> RgbImage {
    let merges = run.groups.iter().any(|g| g.len() > 1);
    let place = vlm_placement(image);
    groups_body_at(&image.photo, place, [grid.0, grid.1], &run.groups, merges, opacity, max_side)
}

/// A VLM run's groups on the image-token grid (tokens off the grid left out), and how to draw
/// them: merged groups filled, else kept versus dropped.
pub fn vlm_token_groups(grid: (usize, usize), run: &crate::session::vlm::VlmRun) -> (TokenGroups, GroupStyle) {
    let groups = TokenGroups::from_groups(grid.0, grid.1, &on_grid(&run.groups, grid.0, grid.1))
        .expect("a run's groups are disjoint");
    let merges = run.groups.iter().any(|g| g.len() > 1);
    (groups, if merges { GroupStyle::MergeGroups } else { GroupStyle::KeptDropped })
}

/// A per-image-token map over a VLM's photo (null values drawn as missing).
pub fn vlm_map(
    image: &crate::session::vlm::VlmImage,
    grid: (usize, usize),
    values: &[Option<f32>],
    title: String,
    colormap: Colormap,
    max_side: u32,
) -> RgbImage {
    let values = values.iter().take(grid.0 * grid.1).map(|v| v.unwrap_or(f32::NAN)).collect();
    let heat = Heatmap { rows: grid.0, cols: grid.1, values };
    let style = OverlayStyle { colormap, opacity: 0.6, title: Some(title), max_side, ..OverlayStyle::default() };
    render::overlay(&image.photo, &heat, &vlm_placement(image), &style)
}

/// "FastV, 66.7 % removed" for a VLM run ("Full model" without a method).
pub fn vlm_run_title(run: &crate::session::vlm::VlmRun) -> String {
    match &run.spec.method {
        None => "Full model".into(),
        Some(m) => format!("{}, {}", m.label(), run.spec.budget.describe(run.num_image_tokens)),
    }
}

/// Every patch of a `grid` kept as itself: the full model's token view (app and exports alike:
/// the photo under the token grid's outlines, the legend's "kept").
pub fn every_patch_kept(grid: [usize; 2]) -> TokenGroups {
    let all: Vec<Vec<u32>> = (0..(grid[0] * grid[1]) as u32).map(|p| vec![p]).collect();
    TokenGroups::from_groups(grid[0], grid[1], &all).expect("one group per patch")
}

/// [`every_patch_kept`] over the photo, without title or legend (the app's compare column).
pub fn full_tokens_body(input: &ImageInput, grid: [usize; 2], max_side: u32) -> RgbImage {
    let tokens_style = TokensStyle { style: GroupStyle::KeptDropped, max_side, ..TokensStyle::default() };
    render::tokens_body(&input.photo, &every_patch_kept(grid), &grid_placement(input, grid), &tokens_style)
}

/// A reduced run's drift from the full model by one measure: the compare view's metrics and the
/// compare grid's metrics rows.
pub struct Metric {
    pub name: &'static str,
    pub get: fn(&crate::analysis::metrics::Fidelity) -> f64,
    pub higher_is_better: bool,
    pub hint: &'static str,
}

pub const METRICS: [Metric; 5] = [
    metric("Pearson r", |f| f.output_pearson, true, "correlation of the reduced and full outputs (1 = same shape)"),
    metric("output L1", |f| f.output_l1, false, "mean |full − reduced| per pixel or label (0 = identical)"),
    metric("top-20 % IoU", |f| f.output_iou_top20, true, "overlap of the top fifth (pixels or labels)"),
    metric("CLS cosine", |f| f.cls_cosine, true, "final CLS embedding, reduced vs full"),
    metric("patch cosine", |f| f.patch_cosine_mean, true, "final features of surviving patches"),
];

const fn metric(
    name: &'static str,
    get: fn(&crate::analysis::metrics::Fidelity) -> f64,
    higher_is_better: bool,
    hint: &'static str,
) -> Metric {
    Metric { name, get, higher_is_better, hint }
}

/// Under a grid with metrics rows.
pub const METRICS_NOTE: &str = "Metrics: each run against the full model (L1: lower is better; the rest: higher); the best at each column in \
     green, underlined.";

/// Per metric (in [`METRICS`] order), the best finite value among `fidelities` (the highest or
/// the lowest, as the metric goes), if any: every run that reaches it is highlighted.
pub fn best_values(fidelities: &[Option<&crate::analysis::metrics::Fidelity>]) -> Vec<Option<f64>> {
    METRICS
        .iter()
        .map(|m| {
            let finite = fidelities.iter().flatten().map(|f| (m.get)(f)).filter(|v| v.is_finite());
            if m.higher_is_better { finite.reduce(f64::max) } else { finite.reduce(f64::min) }
        })
        .collect()
}

/// A metric's value in a figure: three decimals, or two significant digits in scientific
/// notation under 0.001.
pub fn metric_text(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 { format!("{v:.1e}") } else { format!("{v:.3}") }
}
