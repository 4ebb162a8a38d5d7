//! The desktop app (eframe/egui). Panels draw from state and edit [`Settings`]; anything else
//! they ask for (open, export, switch the model, pin a token) they queue as a [`Command`]. After
//! drawing, the app applies the commands, compares the settings with what it last asked for and
//! submits only the work that changed. The model lives on the worker thread, and every picture
//! comes from `render` through `figures`, the same code the CLI writes PNGs with.
//!
//! A vision-language model folder switches the app to VLM mode (`vlm`): the prompt box takes the
//! question, the right panel shows the answers with their diff and the ratio sweep (`answer`)
//! and the cost (`vlm_cost`), and the view draws on the image-token grid (`vlm_view`).

mod answer;
mod compare;
mod controls;
mod export_options;
mod file_dialog;
mod output;
mod textures;
mod view;
mod vlm;
mod vlm_compare;
mod vlm_cost;
mod vlm_view;
mod widgets;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use eframe::egui;
use serde::{Deserialize, Serialize};

use crate::export::{self, Figure, View};
use crate::model::ModelSource;
use crate::reduce::{Budget, ReducerConfig};
use crate::render::Colormap;
use crate::session::{Ask, EncoderRun, RunResult, RunSpec};
pub use file_dialog::ask_before_replacing;
use file_dialog::{FileDialogs, Outcome, Picker, Purpose, Request};
pub use vlm::{Pick, VlmOverlay, VlmSettings, VlmState};
pub use worker::{Event, ImageSource, Job, Look, Opened, OpenedImage, VlmInfo, VlmOpened, WorkerHandle};

/// The left panel's width (the most its widest method's parameters need).
const CONTROLS_WIDTH: f32 = 360.0;

/// The bundled sample photo the app opens with.
pub const SAMPLE_IMAGE: &[u8] = include_bytes!("../../assets/chelsea.png");
pub const SAMPLE_NAME: &str = "chelsea.png (sample)";

/// How a map's values are spread over the colormap (the exports' own setting).
pub use crate::export::MapScale;

/// Which model the attention, rollout and norm maps come from (the exports' own setting).
pub use crate::export::MapSource;

/// What the main view draws over the photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlay {
    Attention,
    Rollout,
    Scores,
    Tokens,
    TokenNorms,
}

impl Overlay {
    pub const ALL: [Overlay; 5] =
        [Overlay::Attention, Overlay::Rollout, Overlay::Scores, Overlay::Tokens, Overlay::TokenNorms];

    pub fn label(self) -> &'static str {
        match self {
            Overlay::Attention => "CLS attention",
            Overlay::Rollout => "Attention rollout",
            Overlay::Scores => "Method score",
            Overlay::Tokens => "Kept / merged tokens",
            Overlay::TokenNorms => "Token norms",
        }
    }

    pub fn uses_layer(self) -> bool {
        matches!(self, Overlay::Attention | Overlay::TokenNorms)
    }

    /// A map of the model's own attention or tokens (full or reduced model, [`MapSource`]).
    pub fn has_source(self) -> bool {
        matches!(self, Overlay::Attention | Overlay::Rollout | Overlay::TokenNorms)
    }
}

/// Which attention head the attention view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Head {
    Mean,
    One(usize),
}

/// Everything the user sets. Run parameters (`spec`, `compare`) submit work when they change;
/// view parameters re-render from cached results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub spec: RunSpec,
    pub overlay: Overlay,
    pub layer: usize,
    pub head: Head,
    pub colormap: Colormap,
    pub opacity: f32,
    /// How maps (attention, rollout, norms, scores) are scaled.
    pub scale: MapScale,
    /// Whether attention, rollout and norms come from the full or the reduced model.
    pub source: MapSource,
    pub dark: bool,
    pub recent: Vec<PathBuf>,
    /// Methods of the compare view (2 to 4), all at `spec`'s budget.
    pub compare: Vec<ReducerConfig>,
    /// The labels a CLIP or SigLIP model scores, comma-separated.
    pub prompt: String,
    /// The question, method and views of a vision-language model.
    pub vlm: VlmSettings,
    /// The view the app opens in (the last one used).
    pub tab: Tab,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            spec: RunSpec::vision(ReducerConfig::from_name("cls_topk").expect("a built-in method"), Budget::default()),
            overlay: Overlay::Tokens,
            layer: 11,
            head: Head::Mean,
            colormap: Colormap::Viridis,
            opacity: 0.6,
            scale: MapScale::MinMax,
            source: MapSource::Full,
            dark: true,
            recent: Vec::new(),
            compare: ["tome", "cls_topk", "divprune", "random"]
                .iter()
                .map(|n| ReducerConfig::from_name(n).expect("a built-in method"))
                .collect(),
            prompt: "a cat, a dog, a car, a cup of coffee, a rocket, a person".into(),
            vlm: VlmSettings::default(),
            tab: Tab::Single,
        }
    }
}

impl Settings {
    fn path() -> Option<PathBuf> {
        dirs::config_dir().map(|d| d.join("tokenlens").join("settings.json"))
    }

    /// The settings saved by the last session, or the defaults (a missing or unreadable file is
    /// not an error: settings are a convenience).
    pub fn load() -> Self {
        Self::path()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// The settings with a vision-side method if they name none (a hand-written or older
    /// settings file): an encoder's views need one, and without it the app waited for ever for
    /// a run that could not be made.
    pub fn with_a_method(mut self) -> Self {
        if self.spec.reducer().is_none() {
            self.spec.method = Self::default().spec.method;
        }
        self
    }

    /// Saves the settings for the next session; a failure is reported, never fatal.
    pub fn save(&self) -> Result<(), String> {
        let path = Self::path().ok_or("no config directory")?;
        std::fs::create_dir_all(path.parent().expect("a file in a folder")).map_err(|e| e.to_string())?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        crate::atomic::write_atomic(&path, &json).map_err(|e| e.to_string())
    }

    /// Removes `path` from the recent list and puts it first (at most 8 kept).
    pub fn remember(&mut self, path: PathBuf) {
        self.recent.retain(|p| p != &path);
        self.recent.insert(0, path);
        self.recent.truncate(8);
    }

    /// The compare view as a figure: rows = its methods (with their outputs where the output is a
    /// map, beside the full model's), one column at the budget on screen, each panel the view on
    /// screen: tokens, or a map (attention, rollout and norms from each method's reduced model,
    /// beside the full model's, as the panels show them).
    pub fn compare_figure(&self, output_is_map: bool) -> Figure {
        let view = self.view();
        let source = if view.has_source() { MapSource::Reduced } else { MapSource::Full };
        Figure::Grid {
            methods: self.compare.clone(),
            budgets: vec![self.spec.budget],
            layers: Vec::new(),
            output_row: output_is_map,
            fill: self.spec.fill,
            positions: self.spec.positions,
            view,
            source,
        }
    }

    /// The figure view of the overlay on screen.
    pub fn view(&self) -> View {
        let head = match self.head {
            Head::Mean => None,
            Head::One(h) => Some(h),
        };
        match self.overlay {
            Overlay::Attention => View::Attention { layer: self.layer, head },
            Overlay::Rollout => View::Rollout,
            Overlay::TokenNorms => View::TokenNorms { layer: self.layer },
            Overlay::Scores => View::Scores,
            Overlay::Tokens => View::Tokens,
        }
    }

    /// The compare view's runs: each method at the main budget and options.
    pub fn compare_specs(&self) -> Vec<RunSpec> {
        self.compare
            .iter()
            .map(|r| RunSpec { method: Some(crate::reduce::Method::Vision(r.clone())), ..self.spec.clone() })
            .collect()
    }
}

/// The main view: one method in depth, or several side by side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tab {
    #[default]
    Single,
    Compare,
}

/// What a panel asks of the app beyond editing [`Settings`]: opening, switching the model,
/// dialogs, exports, the theme, the answer token pinned. Panels queue commands while they draw
/// ([`TokenlensApp::command`]); the app applies them after the frame is drawn, so no panel
/// changes what a later panel of the same frame reads, and only `apply_commands` and
/// `submit_changes` touch the worker. (The pointer's hover is the one thing a panel sets while
/// drawing: the view under it outlines what is hovered in the same frame.)
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Open(PathBuf),
    OpenDialog,
    ModelDialog,
    SwitchModel(ModelSource),
    /// Run the image again (the prompt changed).
    Reopen,
    /// Export what the current tab shows.
    ExportView,
    /// Write `figure` to `path` with its sidecar (`force`: replace what is there).
    Export {
        figure: Figure,
        path: PathBuf,
        force: bool,
    },
    /// Pin an answer token's text-to-image map, or unpin it if it is the pinned one.
    PickToken(Pick),
    ToggleExportOptions,
    ToggleTheme,
    ToggleHelp,
    DismissError,
}

/// The newest answer to one kind of request, and whether a newer one is on its way.
pub struct Slot<T> {
    pub id: u64,
    pub value: Option<T>,
    pub pending: bool,
    pub sent_at: Option<Instant>,
    /// Submit-to-answer time of the last answer, in ms.
    pub latency_ms: Option<f64>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self { id: 0, value: None, pending: false, sent_at: None, latency_ms: None }
    }
}

impl<T> Slot<T> {
    pub(crate) fn submitted(&mut self, id: u64) {
        self.id = id;
        self.pending = true;
        self.sent_at = Some(Instant::now());
    }

    /// The value shown belongs to an older request than the one computing now.
    pub fn is_stale(&self) -> bool {
        self.pending && self.value.is_some()
    }

    /// Stores an answer unless a newer request superseded it.
    pub(crate) fn answer(&mut self, id: u64, value: T) {
        if id == self.id {
            self.value = Some(value);
            self.pending = false;
            self.latency_ms = self.sent_at.map(|t| t.elapsed().as_secs_f64() * 1e3);
        }
    }
}

/// The app's state, in groups: what the user sets (persisted), the model and what it computed,
/// what the window shows beside them, and the handles that run it all.
pub struct TokenlensApp {
    /// Everything the user sets; saved between sessions through `settings_file`.
    pub settings: Settings,
    settings_file: SettingsFile,
    /// The model the worker runs, and what it turned out to be once loaded.
    pub model: LoadedModel,
    /// The image on screen and an encoder's results for it (with what was asked for them).
    pub results: Results,
    /// VLM mode: present while a vision-language model is loaded (its own results).
    pub vlm: Option<VlmState>,
    /// What the window shows beside the results: status, error, pan and zoom, hover, help.
    pub screen: Screen,
    /// The worker, the egui context, textures, file dialogs and request ids.
    runtime: Runtime,
    /// Commands the panels queued this frame.
    commands: Vec<Command>,
    /// Screenshot mode (tests): what to capture and press first.
    capture: Capture,
}

/// The model the worker runs: asked for (`source`), and known once it is ready.
pub struct LoadedModel {
    pub source: ModelSource,
    /// Its id once loaded (None while it loads).
    pub id: Option<String>,
    /// It scores prompt labels (CLIP, SigLIP).
    pub takes_prompt: bool,
}

/// The image on screen and what the worker computed for it with an encoder, each beside what was
/// last asked for it (the app submits only what changed).
#[derive(Default)]
pub struct Results {
    /// The image on screen (re-opened when the model or the prompt changes), and the prompt it
    /// was opened with.
    image: Option<ImageSource>,
    opened_prompt: String,
    pub opened: Option<Arc<Opened>>,
    pub opening: bool,
    pub run: Slot<Arc<EncoderRun>>,
    sent_spec: Option<RunSpec>,
    pub compared: Slot<Vec<Arc<EncoderRun>>>,
    sent_compare: Option<Vec<RunSpec>>,
    /// Drift curve points (removed fraction, saliency L1) for `drift_key`.
    pub drift: Vec<[f64; 2]>,
    drift_id: u64,
    drift_key: Option<RunSpec>,
}

impl Results {
    /// Drops the reduced runs, the comparison and the drift curve (and what was asked for them);
    /// the image and its full run stay.
    fn forget_runs(&mut self) {
        self.run = Slot::default();
        self.sent_spec = None;
        self.compared = Slot::default();
        self.sent_compare = None;
        self.drift.clear();
        self.drift_key = None;
    }
}

/// What the window shows that is neither a setting nor a result.
pub struct Screen {
    pub status: String,
    pub error: Option<String>,
    /// The main view's pan and zoom (reset when a new image opens).
    scene_rect: egui::Rect,
    /// The patch under the pointer in the compare view (outlined in every panel).
    compare_hover: Option<usize>,
    show_help: bool,
    /// Size, DPI, font scale, title and key of exported figures (and whether their window is
    /// open).
    export_options: export_options::ExportOptions,
    /// How much wider than the central panel its content was last frame, in points (0 when it
    /// fits): content that overflows is clipped and pushes centred images under the side panel.
    central_overflow: f32,
}

impl Screen {
    /// Records how far `ui`'s content spilled past `panel`, the rect it was given (egui widens
    /// a `Ui`'s own rect to what overflows it).
    fn note_overflow(&mut self, panel: egui::Rect, ui: &egui::Ui) {
        self.central_overflow = (ui.min_rect().right() - panel.right()).max(0.0);
    }
}

/// The handles the app runs with: not state the user sees.
struct Runtime {
    worker: WorkerHandle,
    ctx: egui::Context,
    /// The last request id handed out (answers carry it back).
    next_id: u64,
    textures: textures::Textures,
    /// The file dialog on screen: the system's, or the in-app browser where there is none.
    dialogs: FileDialogs,
    /// An export waiting for "replace the existing file?".
    confirm_overwrite: Option<(Figure, PathBuf)>,
}

impl Runtime {
    fn spawn(ctx: &egui::Context, model: ModelSource) -> WorkerHandle {
        let wake_ctx = ctx.clone();
        WorkerHandle::spawn(model, move || wake_ctx.request_repaint())
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// Where [`Settings`] persist between sessions: what was last written, and when (saves are
/// throttled); `enabled` is off in screenshot mode (tests stay reproducible).
struct SettingsFile {
    saved: Settings,
    at: Instant,
    enabled: bool,
}

/// Screenshot mode (`--screenshot`, for tests): its state, apart from the app's own.
#[derive(Default)]
struct Capture {
    /// `--screenshot PATH`: save the first frame that shows a result, then close.
    path: Option<PathBuf>,
    requested: bool,
    done: Arc<std::sync::atomic::AtomicBool>,
    /// `--export-to` (with `--screenshot`): the figure on screen is exported there first.
    export_to: Option<ExportTo>,
    /// `--press` (with `--screenshot`): the button pressed once a result is on screen, and when.
    press: Option<Press>,
    pressed_at: Option<Instant>,
    in_app_since: Option<Instant>,
    /// The error that ended the capture without a result.
    failed: Arc<std::sync::Mutex<Option<String>>>,
}

impl TokenlensApp {
    pub fn new(ctx: &egui::Context, model: ModelSource, image: Option<PathBuf>, settings: Settings) -> Self {
        let settings = settings.with_a_method();
        let worker = Runtime::spawn(ctx, model.clone());
        ctx.set_theme(if settings.dark { egui::Theme::Dark } else { egui::Theme::Light });
        let settings_copy = settings.clone();
        let mut app = Self {
            settings,
            settings_file: SettingsFile { saved: settings_copy, at: Instant::now(), enabled: false },
            model: LoadedModel { source: model, id: None, takes_prompt: false },
            results: Results::default(),
            vlm: None,
            screen: Screen {
                status: "Loading the model…".into(),
                error: None,
                scene_rect: egui::Rect::ZERO,
                compare_hover: None,
                show_help: false,
                export_options: Default::default(),
                central_overflow: 0.0,
            },
            runtime: Runtime {
                worker,
                ctx: ctx.clone(),
                next_id: 1,
                textures: textures::Textures::default(),
                dialogs: FileDialogs::default(),
                confirm_overwrite: None,
            },
            commands: Vec::new(),
            capture: Capture::default(),
        };
        match image {
            Some(path) => app.open(path),
            None => app.open_source(ImageSource { label: SAMPLE_NAME.into(), bytes: Some(Arc::from(SAMPLE_IMAGE)) }),
        }
        app
    }

    /// Applies a worker event to the state.
    pub fn apply(&mut self, event: Event) {
        if let Some(vlm) = self.vlm.as_mut()
            && vlm.apply(&event)
        {
            if let Event::Opened { id, image: OpenedImage::Answer(opened) } = &event
                && *id == vlm.full.id
            {
                self.screen.error = None;
                let r = &opened.run;
                self.screen.status = format!(
                    "{}: full answer in {:.0} ms ({:.1} tokens/s)",
                    opened.label.display(),
                    r.cost.encoder_ms + r.cost.prefill_ms + r.cost.decode_ms,
                    r.cost.tokens_per_s
                );
                let fitted = r.spec.max_new_tokens;
                if fitted < self.settings.vlm.max_new_tokens {
                    self.screen.status = format!(
                        "{}; the answer limit is now {} (was {}): the prompt is {} and the model's context {}",
                        self.screen.status,
                        crate::render::text::count(fitted, "token", "tokens"),
                        self.settings.vlm.max_new_tokens,
                        crate::render::text::count(opened.prompt_tokens, "token", "tokens"),
                        vlm.context.map_or_else(|| "?".into(), |c| c.to_string())
                    );
                    vlm.answer_limit_fitted(fitted);
                    self.settings.vlm.max_new_tokens = fitted;
                }
                self.screen.scene_rect = egui::Rect::ZERO;
                self.remember_opened(&opened.label);
            }
            return;
        }
        match event {
            Event::Ready { id, vlm: Some(info), .. } => {
                self.vlm_ready(id, info.num_layers, info.context, info.split_image);
                if let Some(vlm) = &mut self.vlm {
                    vlm.memory = info.memory;
                    vlm.capabilities = info.capabilities;
                }
            }
            Event::Status(line) => self.screen.status = line,
            Event::Ready { id, takes_prompt, vlm: None } => {
                self.screen.status = format!("Model ready: {id}");
                self.model.id = Some(id);
                self.model.takes_prompt = takes_prompt;
                // The image asked for before the model was known.
                if let Some(source) = self.results.image.clone().filter(|_| self.results.opening) {
                    self.open_source(source);
                }
            }
            Event::Opened { image: OpenedImage::Encoder(opened), .. } => {
                self.results.opening = false;
                self.screen.error = None;
                let t = &opened.analysis.timings_ms;
                self.screen.status = format!("{}: full run {:.0} ms", opened.label.display(), t.total_ms);
                self.remember_opened(&opened.label.clone()); // `opened` moves below
                self.settings.layer = self.settings.layer.min(opened.analysis.cls_attention.len().saturating_sub(1));
                self.results.opened = Some(opened);
                // Everything computed for the previous image is stale now.
                self.results.forget_runs();
                self.screen.scene_rect = egui::Rect::ZERO;
            }
            Event::Ran { id, result: RunResult::Encoder(result) } => {
                if id == self.results.run.id {
                    self.screen.error = None;
                }
                self.results.run.answer(id, result);
            }
            Event::Compared { id, results } => {
                self.results.compared.answer(id, results.iter().filter_map(|r| r.encoder().cloned()).collect())
            }
            Event::SweepPoint { id, removed, result: RunResult::Encoder(r) } => {
                if id == self.results.drift_id {
                    self.results.drift.push([100.0 * removed, r.fidelity.output_l1]);
                    self.results.drift.sort_by(|a, b| a[0].total_cmp(&b[0]));
                }
            }
            // A VLM's events when the app is not (or no longer) in VLM mode: stale.
            Event::Token { .. }
            | Event::Opened { .. }
            | Event::Ran { .. }
            | Event::SweepPoint { .. }
            | Event::SweepStopped { .. } => {}
            Event::Exported(figure, sidecar) => {
                if let Some(e) = self.capture.export_to.as_mut().filter(|e| e.path == figure) {
                    e.done = true;
                }
                self.screen.status = format!("Exported {} (sidecar {})", figure.display(), sidecar.display());
            }
            Event::Failed(message) => {
                if let Some(e) = self.capture.export_to.as_mut().filter(|e| e.submitted) {
                    e.done = true;
                }
                if let Some(vlm) = self.vlm.as_mut() {
                    vlm.failed();
                }
                self.results.opening = false;
                self.results.run.pending = false;
                self.results.compared.pending = false;
                self.screen.error = Some(message);
            }
        }
    }

    /// Queues `command` for after this frame is drawn.
    pub fn command(&mut self, command: Command) {
        self.commands.push(command);
    }

    /// Applies the commands the panels queued, in order; the next frame shows what they changed.
    fn apply_commands(&mut self, ctx: &egui::Context) {
        let commands = std::mem::take(&mut self.commands);
        if !commands.is_empty() {
            ctx.request_repaint();
        }
        for command in commands {
            match command {
                Command::Open(path) => self.open(path),
                Command::OpenDialog => self.open_dialog(),
                Command::ModelDialog => self.model_dialog(),
                Command::SwitchModel(source) => self.switch_model(source),
                Command::Reopen => self.reopen(),
                Command::ExportView => self.export_view(),
                Command::Export { figure, path, force } => self.submit_export(figure, path, force),
                Command::PickToken(pick) => {
                    if let Some(vlm) = self.vlm.as_mut() {
                        vlm.picked = if vlm.picked == Some(pick) { None } else { Some(pick) };
                    }
                }
                Command::ToggleExportOptions => self.screen.export_options.open ^= true,
                Command::ToggleTheme => {
                    self.settings.dark = !self.settings.dark;
                    ctx.set_theme(if self.settings.dark { egui::Theme::Dark } else { egui::Theme::Light });
                }
                Command::ToggleHelp => self.screen.show_help = !self.screen.show_help,
                Command::DismissError => self.screen.error = None,
            }
        }
    }

    /// Asks where to export what the current tab shows.
    fn export_view(&mut self) {
        match self.figure_on_screen() {
            Some((figure, name)) => self.export_dialog(figure, name),
            None => self.screen.status = "Nothing to export yet: the first result is not on screen".into(),
        }
    }

    /// What the current tab shows as a figure, and a file name for it; none before a result.
    pub fn figure_on_screen(&self) -> Option<(Figure, &'static str)> {
        let s = &self.settings;
        match (&self.vlm, s.tab) {
            (Some(vlm), Tab::Single) => Some((vlm.answer_figure(&s.vlm)?, "tokenlens-answer.svg")),
            (Some(vlm), Tab::Compare) => {
                Some((vlm.compare_figure(&s.vlm, s.spec.budget, s.spec.positions)?, "tokenlens-vlm-compare.svg"))
            }
            (None, _) if self.results.opened.is_none() => None,
            (None, Tab::Single) => Some((self.current_figure(), "tokenlens-figure.svg")),
            (None, Tab::Compare) => Some((self.compare_figure(), "tokenlens-grid.svg")),
        }
    }

    /// Opens an image file; it joins Recent once it has opened (a file that fails does not).
    pub fn open(&mut self, path: PathBuf) {
        self.open_source(ImageSource { label: path, bytes: None });
    }

    /// Puts the file just opened (`label`) first in Recent, if it came from a file.
    fn remember_opened(&mut self, label: &Path) {
        if let Some(source) = &self.results.image
            && source.bytes.is_none()
            && source.label == label
        {
            self.settings.remember(label.to_path_buf());
        }
    }

    fn open_source(&mut self, source: ImageSource) {
        if self.vlm.is_some() {
            // VLM mode: the full run is submitted with the question (see `submit_vlm_changes`).
            self.results.image = Some(source);
            return;
        }
        self.results.opening = true;
        self.screen.status = format!("Analysing {}…", source.label.display());
        self.results.image = Some(source.clone());
        if self.model.id.is_none() {
            return; // opened when the model is ready: a VLM opens it with its question instead
        }
        self.results.opened_prompt = self.settings.prompt.clone();
        let id = self.runtime.fresh_id();
        self.runtime.worker.submit(Job::Open {
            id,
            source,
            ask: Ask { prompt: self.settings.prompt.clone(), ..Ask::default() },
        });
    }

    /// The prompt differs from the one the current image was run with.
    pub fn prompt_changed(&self) -> bool {
        self.results.opened_prompt != self.settings.prompt
    }

    /// Runs the current image again (after the prompt changed).
    pub fn reopen(&mut self) {
        if let Some(source) = self.results.image.clone() {
            self.open_source(source);
        }
    }

    /// Loads another model on a fresh worker and opens the current image with it.
    pub fn switch_model(&mut self, source: ModelSource) {
        self.runtime.worker = Runtime::spawn(&self.runtime.ctx, source.clone());
        self.model.source = source;
        self.model.id = None;
        self.vlm = None;
        self.model.takes_prompt = false;
        self.results.opened = None;
        self.results.forget_runs();
        self.screen.error = None;
        self.screen.status = "Loading the model…".into();
        self.reopen();
    }

    /// Asks for a Hugging Face model folder (ViT, DeiT, DINOv2, CLIP, SigLIP).
    pub fn model_dialog(&mut self) {
        self.runtime.dialogs.ask(Request { purpose: Purpose::Model, start: None, name: String::new() });
    }

    /// Asks for an image, beginning in the folder of the last one.
    pub fn open_dialog(&mut self) {
        let start = self.settings.recent.first().and_then(|p| p.parent()).map(Path::to_path_buf);
        self.runtime.dialogs.ask(Request { purpose: Purpose::Open, start, name: String::new() });
    }

    /// Asks where to save `figure` (a PNG or an SVG, with its sidecar beside it).
    pub fn export_dialog(&mut self, figure: Figure, default_name: &str) {
        self.runtime.dialogs.ask(Request { purpose: Purpose::Export(figure), start: None, name: default_name.into() });
    }

    /// The figure of what the main view shows now.
    pub fn current_figure(&self) -> Figure {
        let s = &self.settings;
        let view = s.view();
        // A map of the reduced model is its run's, as on screen.
        let needs_run = !view.has_source() || s.source == MapSource::Reduced;
        let source = if s.overlay.has_source() { s.source } else { MapSource::Full };
        Figure::Panel { view, run: needs_run.then(|| s.spec.clone()), source }
    }

    /// What the compare view shows, as a grid figure.
    pub fn compare_figure(&self) -> Figure {
        // The output row shows saliency maps; other outputs are not maps.
        self.settings.compare_figure(self.results.opened.as_ref().is_some_and(|o| o.analysis.output.is_map()))
    }

    fn submit_export(&mut self, figure: Figure, path: PathBuf, force: bool) {
        self.screen.status = format!("Exporting {}…", path.display());
        let look = self.screen.export_options.look(&self.settings);
        self.runtime.worker.submit(Job::Export { figure, look, path, force });
    }

    /// Asks before replacing an existing figure or sidecar.
    fn overwrite_ui(&mut self, ctx: &egui::Context) {
        let Some((figure, path)) = self.runtime.confirm_overwrite.clone() else { return };
        let mut answer = None;
        egui::Modal::new(egui::Id::unique("tokenlens-overwrite")).show(ctx, |ui| {
            ui.heading("Replace the existing figure?");
            ui.label(format!("{} or its sidecar {} exists.", path.display(), export::sidecar_path(&path).display()));
            ui.horizontal(|ui| {
                if ui.button("Replace").clicked() {
                    answer = Some(true);
                }
                if ui.button("Cancel").clicked() {
                    answer = Some(false);
                }
            });
        });
        if let Some(replace) = answer {
            self.runtime.confirm_overwrite = None;
            if replace {
                self.command(Command::Export { figure, path, force: true });
            }
        }
    }

    /// Draws the in-app browser if it is on screen, and queues what a picked path asks for.
    fn dialogs_ui(&mut self, ctx: &egui::Context) {
        let (purpose, path, picker) = match self.runtime.dialogs.ui(ctx) {
            None => return,
            Some(Outcome::FellBack) => {
                self.screen.status = "No system file dialog here (no desktop portal, no zenity): the built-in browser \
                               is open; type or paste a path in its top line"
                    .into();
                return;
            }
            Some(Outcome::Picked(purpose, path, picker)) => (purpose, path, picker),
        };
        match purpose {
            Purpose::Open => self.command(Command::Open(path)),
            Purpose::Model => self.command(Command::SwitchModel(ModelSource::File(path))),
            Purpose::Export(figure) => {
                let picked = path.clone();
                let path = if path.extension().is_none() { path.with_extension("svg") } else { path };
                // The system dialog has asked already about the file it returned.
                let confirmed = (picker == Picker::System).then_some(picked.as_path());
                if ask_before_replacing(&path, confirmed) {
                    self.runtime.confirm_overwrite = Some((figure, path));
                } else {
                    self.command(Command::Export { figure, path, force: false });
                }
            }
        }
    }

    /// Submits what the settings ask for and was not asked yet.
    fn submit_changes(&mut self) {
        if self.vlm.is_some() {
            self.submit_vlm_changes();
            return;
        }
        if self.results.opened.is_none() || self.results.opening {
            return;
        }
        let spec = self.settings.spec.clone();
        if self.results.sent_spec.as_ref() != Some(&spec) {
            let id = self.runtime.fresh_id();
            self.results.run.submitted(id);
            self.runtime.worker.submit(Job::Run { id, spec: spec.clone() });
            self.results.sent_spec = Some(spec.clone());
        }
        // The drift curve depends on everything but the budget.
        let key = RunSpec { budget: Budget::Keep(1), ..spec };
        if self.results.drift_key.as_ref() != Some(&key) {
            self.results.drift_id = self.runtime.fresh_id();
            self.results.drift.clear();
            // Popped from the end: coarse presets first, then the rest of the curve.
            let mut ratios: Vec<f64> = (1..=19).map(|i| f64::from(i) * 0.05).collect();
            ratios.extend(crate::reduce::budget::PRESETS_REMOVED.iter().rev());
            self.runtime.worker.submit(Job::Sweep { id: self.results.drift_id, spec: key.clone(), fractions: ratios });
            self.results.drift_key = Some(key);
        }
        if self.settings.tab == Tab::Compare {
            let specs = self.settings.compare_specs();
            if self.results.sent_compare.as_ref() != Some(&specs) {
                let id = self.runtime.fresh_id();
                self.results.compared.submitted(id);
                self.runtime.worker.submit(Job::Compare { id, specs: specs.clone() });
                self.results.sent_compare = Some(specs);
            }
        }
    }

    fn shortcuts(&mut self, ctx: &egui::Context) {
        use egui::{Key, Modifiers};
        let pressed = |m, k| ctx.input_mut(|i| i.consume_key(m, k));
        if pressed(Modifiers::COMMAND, Key::O) {
            self.command(Command::OpenDialog);
        }
        if pressed(Modifiers::COMMAND, Key::E) {
            self.command(Command::ExportView);
        }
        if pressed(Modifiers::NONE, Key::F1) {
            self.command(Command::ToggleHelp);
        }
        if pressed(Modifiers::COMMAND, Key::T) {
            self.command(Command::ToggleTheme);
        }
        if pressed(Modifiers::NONE, Key::F2) {
            self.settings.tab = if self.settings.tab == Tab::Single { Tab::Compare } else { Tab::Single };
        }
        // Ratio: step between the presets.
        if pressed(Modifiers::NONE, Key::ArrowRight) {
            widgets::step_preset(&mut self.settings.spec.budget, 1);
        }
        if pressed(Modifiers::NONE, Key::ArrowLeft) {
            widgets::step_preset(&mut self.settings.spec.budget, -1);
        }
        let num_layers = self.num_layers();
        if pressed(Modifiers::NONE, Key::CloseBracket) {
            self.settings.layer = (self.settings.layer + 1).min(num_layers - 1);
        }
        if pressed(Modifiers::NONE, Key::OpenBracket) {
            self.settings.layer = self.settings.layer.saturating_sub(1);
        }
        for (key, overlay) in [Key::Num1, Key::Num2, Key::Num3, Key::Num4, Key::Num5].into_iter().zip(Overlay::ALL) {
            if pressed(Modifiers::NONE, key) {
                self.settings.overlay = overlay;
            }
        }
    }

    /// Patches on the current model's grid (256 for the default model).
    pub fn num_patches(&self) -> usize {
        if let Some(o) = self.vlm.as_ref().and_then(VlmState::opened) {
            return o.run.num_image_tokens; // a split image's global tokens are off the grid
        }
        self.results.opened.as_ref().map_or(256, |o| o.analysis.grid[0] * o.analysis.grid[1])
    }

    /// Patches (VLM: image tokens) of the result on screen; none before the first one.
    pub fn known_num_patches(&self) -> Option<usize> {
        match &self.vlm {
            Some(vlm) => vlm.opened().map(|o| o.run.num_image_tokens),
            None => self.results.opened.as_ref().map(|o| o.analysis.grid[0] * o.analysis.grid[1]),
        }
    }

    pub fn num_layers(&self) -> usize {
        self.results.opened.as_ref().map_or(12, |o| o.analysis.cls_attention.len())
    }

    fn help_ui(&mut self, ctx: &egui::Context) {
        egui::Window::new("Keyboard shortcuts")
            .open(&mut self.screen.show_help)
            .resizable(false)
            .collapsible(false)
            .show(ctx, |ui| {
                egui::Grid::new("shortcuts").num_columns(2).striped(true).show(ui, |ui| {
                    for (keys, what) in [
                        ("Ctrl+O", "open an image"),
                        ("Left / Right", "previous / next ratio preset"),
                        ("[ / ]", "previous / next layer"),
                        ("1 to 5", "overlay: attention, rollout, score, tokens, norms"),
                        ("F2", "single / compare view"),
                        ("Ctrl+T", "light / dark theme"),
                        ("Ctrl+E", "export the view (or the compare grid) as SVG or PNG"),
                        ("drag / scroll", "pan / zoom the image; double-click to reset"),
                        ("F1", "this help"),
                    ] {
                        ui.monospace(keys);
                        ui.label(what);
                        ui.end_row();
                    }
                });
            });
    }

    /// With `--screenshot`: once a reduced result is on screen and no texture changes any more,
    /// capture the frame, write it, and close.
    fn screenshot_step(&mut self, ctx: &egui::Context) {
        let Some(path) = self.capture.path.clone() else { return };
        let failed = !self.capture.requested && !self.result_on_screen() && !self.busy();
        if self.capture.done.load(std::sync::atomic::Ordering::Acquire) {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        } else if let Some(error) = self.screen.error.as_ref().filter(|_| failed) {
            // An error and nothing computing: no result will come to capture. Close, and say
            // why (`run` returns it: the command exits non-zero).
            *self.capture.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error.clone());
            self.capture.done.store(true, std::sync::atomic::Ordering::Release);
        } else if !self.capture.requested && self.result_on_screen() && self.runtime.textures.is_settled() {
            if !self.pressed_ui() || !self.exported_ui() {
                ctx.request_repaint();
                return;
            }
            self.capture.requested = true;
            let summary = match (&self.vlm, self.capture.press) {
                (Some(vlm), _) => {
                    let mut summary = vlm.summary();
                    summary["central_overflow"] = self.screen.central_overflow.into();
                    Some(summary)
                }
                (None, Some(_)) => Some(serde_json::json!({
                    "in_app_browser": self.runtime.dialogs.in_app_open(),
                    "status": self.screen.status,
                })),
                (None, None) => None,
            };
            if let Some(summary) = summary {
                // What the VLM panels show, for tests to read beside the picture.
                let json = serde_json::to_vec_pretty(&summary).expect("json values serialise");
                if let Err(e) = crate::atomic::write_atomic(&path.with_extension("json"), &json) {
                    eprintln!("screenshot summary: {e}");
                }
            }
            let (done, wake) = (self.capture.done.clone(), ctx.clone());
            ctx.request_screenshot(move |image| {
                let [w, h] = image.size;
                let rgb: Vec<u8> = image.pixels.iter().flat_map(|c| [c.r(), c.g(), c.b()]).collect();
                let saved = image::RgbImage::from_raw(w as u32, h as u32, rgb)
                    .ok_or_else(|| "bad screenshot buffer".to_string())
                    .and_then(|img| crate::render::write_png_atomic(&path, &img).map_err(|e| e.to_string()));
                if let Err(e) = saved {
                    eprintln!("screenshot: {e}");
                }
                done.store(true, std::sync::atomic::Ordering::Release);
                wake.request_repaint();
            });
        }
        ctx.request_repaint();
    }
}

/// `--export-to PATH`: where the figure on screen goes before the screenshot (for tests).
struct ExportTo {
    path: PathBuf,
    submitted: bool,
    /// Written, or failed (the error is on screen).
    done: bool,
}

/// A button `--press` presses (with `--screenshot`, for tests): the capture waits until its
/// dialog is on screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Press {
    /// Open…
    Open,
    /// Export figure…
    Export,
}

impl TokenlensApp {
    /// With `--press`: presses the button once, then true once its dialog has answered or the
    /// in-app browser has been on screen for half a second (its window fades in).
    fn pressed_ui(&mut self) -> bool {
        let Some(press) = self.capture.press else { return true };
        let Some(at) = self.capture.pressed_at else {
            match press {
                Press::Open => self.open_dialog(),
                Press::Export => self.export_view(),
            }
            self.capture.pressed_at = Some(Instant::now());
            return false;
        };
        if self.runtime.dialogs.in_app_open() {
            let since = *self.capture.in_app_since.get_or_insert_with(Instant::now);
            return since.elapsed().as_secs_f32() > 0.5;
        }
        // A system dialog that has answered (or a cancelled one): give it time to come back.
        !self.runtime.dialogs.is_open() && at.elapsed().as_secs_f32() > 0.5
    }

    /// With `--export-to`: exports the figure on screen there once, then true once it is written
    /// or has failed.
    fn exported_ui(&mut self) -> bool {
        let Some(e) = &self.capture.export_to else { return true };
        if !e.submitted {
            let path = e.path.clone();
            match self.figure_on_screen() {
                Some((figure, _)) => self.submit_export(figure, path, true),
                None => self.screen.error = Some("--export-to: nothing to export".into()),
            }
            let e = self.capture.export_to.as_mut().expect("checked above");
            e.submitted = true;
            e.done = self.screen.error.is_some();
            return false;
        }
        e.done
    }

    /// A reduced result is on screen and nothing is on its way (VLM: the sweep is complete too;
    /// the compare view: its runs too).
    fn result_on_screen(&self) -> bool {
        let compared = self.settings.tab == Tab::Single
            || self.vlm.as_ref().map_or(self.results.compared.value.is_some(), |v| v.compared.value.is_some());
        compared
            && match &self.vlm {
                Some(v) => v.run.value.is_some() && !v.busy() && v.sweep_done(),
                None => self.results.run.value.is_some() && !self.results.run.pending && !self.results.compared.pending,
            }
    }

    fn busy(&self) -> bool {
        self.results.opening
            || self.results.run.pending
            || self.results.compared.pending
            || self.vlm.as_ref().is_some_and(VlmState::busy)
    }
}

impl TokenlensApp {
    /// The central panel, drawn by `view`, with how far its content overflowed noted.
    fn central_panel(&mut self, ui: &mut egui::Ui, view: fn(&mut TokenlensApp, &mut egui::Ui)) {
        egui::CentralPanel::default().show(ui, |ui| {
            let panel = ui.max_rect();
            view(self, ui);
            self.screen.note_overflow(panel, ui);
        });
    }
}

impl eframe::App for TokenlensApp {
    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.persist_settings(true);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        while let Ok(event) = self.runtime.worker.events.try_recv() {
            self.apply(event);
        }
        let dropped: Vec<PathBuf> = ctx.input(|i| i.raw.dropped_files.iter().map(|f| f.path().to_path_buf()).collect());
        if let Some(path) = dropped.into_iter().next() {
            self.command(Command::Open(path));
        }
        self.shortcuts(&ctx);

        egui::Panel::top("tabs").show(ui, |ui| self.top_bar_ui(ui));
        egui::Panel::bottom("status").show(ui, |ui| self.status_ui(ui));
        self.controls_panel(ui);
        match self.settings.tab {
            Tab::Compare if self.vlm.is_some() => {
                self.central_panel(ui, vlm_compare::compare_ui);
            }
            _ if self.vlm.is_some() => {
                egui::Panel::right("output").size_range(340.0..=620.0).default_size(460.0).show(ui, |ui| {
                    egui::ScrollArea::vertical().show(ui, |ui| {
                        answer::answers_ui(self, ui);
                        vlm_cost::cost_ui(self, ui);
                    });
                });
                self.central_panel(ui, vlm_view::view_ui);
            }
            Tab::Single => {
                egui::Panel::right("output").size_range(300.0..=520.0).default_size(360.0).show(ui, |ui| {
                    egui::ScrollArea::vertical().show(ui, |ui| output::output_ui(self, ui));
                });
                self.central_panel(ui, view::main_view_ui);
            }
            Tab::Compare => {
                self.central_panel(ui, compare::compare_ui);
            }
        }
        self.help_ui(&ctx);
        self.dialogs_ui(&ctx);
        self.overwrite_ui(&ctx);
        self.screen.export_options.ui(&ctx);
        drop_hint_ui(&ctx);
        self.apply_commands(&ctx);
        self.submit_changes();
        self.persist_settings(false);
        self.screenshot_step(&ctx);
        if self.busy() {
            ctx.request_repaint_after(std::time::Duration::from_millis(100)); // spinners
        }
    }
}

impl TokenlensApp {
    /// The left panel, opened at its widest: a method with wider parameters (ToMe's) cannot
    /// widen it and make the image jump. Its rectangle.
    fn controls_panel(&mut self, ui: &mut egui::Ui) -> egui::Rect {
        let panel = egui::Panel::left("controls").size_range(260.0..=CONTROLS_WIDTH).default_size(CONTROLS_WIDTH);
        panel.show(ui, |ui| egui::ScrollArea::vertical().show(ui, |ui| controls::controls_ui(self, ui))).response.rect
    }

    /// Writes changed settings at most every 2 s (sliders change them every frame), or now.
    fn persist_settings(&mut self, now: bool) {
        let file = &self.settings_file;
        if !file.enabled || file.saved == self.settings || (!now && file.at.elapsed().as_secs() < 2) {
            return;
        }
        if let Err(e) = self.settings.save() {
            self.screen.status = format!("settings not saved: {e}");
        }
        (self.settings_file.saved, self.settings_file.at) = (self.settings.clone(), Instant::now());
    }

    fn top_bar_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading("tokenlens");
            ui.separator();
            if let Some(vlm) = &self.vlm {
                ui.label(egui::RichText::new(format!("vision-language model: {}", vlm.model_id)).strong());
                ui.separator();
            }
            ui.selectable_value(&mut self.settings.tab, Tab::Single, "Single method");
            ui.selectable_value(&mut self.settings.tab, Tab::Compare, "Compare methods");
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if ui.button("?").on_hover_text("Keyboard shortcuts (F1)").clicked() {
                    self.command(Command::ToggleHelp);
                }
                let (label, hint) = match self.settings.tab {
                    Tab::Single => {
                        ("Export figure…", "The view as SVG or PNG, with a sidecar that re-makes it (Ctrl+E)")
                    }
                    Tab::Compare => {
                        ("Export grid…", "The methods at this budget with their outputs, as SVG or PNG (Ctrl+E)")
                    }
                };
                if ui.button("Export options").on_hover_text("Size, DPI, font scale, title, key").clicked() {
                    self.command(Command::ToggleExportOptions);
                }
                let on_screen =
                    self.results.opened.is_some() || self.vlm.as_ref().is_some_and(|v| v.opened().is_some());
                if ui.add_enabled(on_screen, egui::Button::new(label)).on_hover_text(hint).clicked() {
                    self.command(Command::ExportView);
                }
                let theme = if self.settings.dark { "Light theme" } else { "Dark theme" };
                if ui.button(theme).on_hover_text("Ctrl+T").clicked() {
                    self.command(Command::ToggleTheme);
                }
            });
        });
    }

    fn status_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            if self.busy() {
                ui.spinner();
            }
            match &self.screen.error {
                Some(e) => {
                    ui.colored_label(ui.visuals().error_fg_color, format!("Error: {e}")).on_hover_text(e);
                    if ui.small_button("dismiss").clicked() {
                        self.command(Command::DismissError);
                    }
                }
                None => {
                    ui.label(&self.screen.status);
                }
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if let Some(ms) = self.results.run.latency_ms {
                    ui.label(egui::RichText::new(format!("last update {ms:.0} ms")).weak());
                }
            });
        });
    }
}

/// Opens the window with `settings`; blocks until it is closed. `screenshot`: save the first
/// finished frame there and exit (for tests under Xvfb).
/// While a file is dragged over the window, says that dropping it opens it.
fn drop_hint_ui(ctx: &egui::Context) {
    let hovering = ctx.input(|i| !i.raw.hovered_files.is_empty());
    if !hovering {
        return;
    }
    let painter =
        ctx.layer_painter(egui::LayerId::new(egui::Order::Foreground, egui::Id::unique("tokenlens-drop-hint")));
    let rect = ctx.content_rect();
    painter.rect_filled(rect, 0.0, egui::Color32::from_black_alpha(170));
    painter.text(
        rect.center(),
        egui::Align2::CENTER_CENTER,
        "Drop the image to open it",
        egui::FontId::proportional(28.0),
        egui::Color32::WHITE,
    );
}

/// Settings persist between sessions, except in screenshot mode (tests stay reproducible).
pub fn run(
    model: ModelSource,
    image: Option<PathBuf>,
    settings: Settings,
    screenshot: Option<PathBuf>,
    press: Option<Press>,
    export_to: Option<PathBuf>,
) -> Result<(), String> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("tokenlens")
            .with_inner_size([1360.0, 820.0])
            .with_min_inner_size([900.0, 560.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    let failed: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let capture_failed = failed.clone();
    eframe::run_native(
        "tokenlens",
        options,
        Box::new(move |cc| {
            let persist = screenshot.is_none();
            let mut app = TokenlensApp::new(&cc.egui_ctx, model, image, settings);
            app.capture.failed = capture_failed;
            app.capture.path = screenshot;
            app.capture.press = press;
            app.capture.export_to = export_to.map(|path| ExportTo { path, submitted: false, done: false });
            app.settings_file.enabled = persist;
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| format!("could not open a window: {e}"))?;
    match failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
        Some(error) => Err(format!("--screenshot: no result to capture: {error}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_answers_are_dropped() {
        let mut slot: Slot<u32> = Slot::default();
        slot.submitted(1);
        slot.submitted(2); // the slider moved again before the first answer came
        slot.answer(1, 10);
        assert_eq!(slot.value, None);
        assert!(slot.pending);
        slot.answer(2, 20);
        assert_eq!(slot.value, Some(20));
        assert!(!slot.pending && slot.latency_ms.is_some());
    }

    #[test]
    fn a_result_is_stale_while_a_newer_request_computes() {
        let mut slot: Slot<u32> = Slot::default();
        slot.submitted(1);
        assert!(!slot.is_stale(), "nothing shown yet");
        slot.answer(1, 10);
        assert!(!slot.is_stale());
        slot.submitted(2);
        assert!(slot.is_stale(), "the answer to 1 is on screen while 2 computes");
        slot.answer(1, 11); // a late answer to the superseded request changes nothing
        assert!(slot.is_stale());
        slot.answer(2, 20);
        assert!(!slot.is_stale());
    }

    #[test]
    fn a_file_that_fails_to_open_is_not_remembered() {
        let ctx = egui::Context::default();
        let mut app = TokenlensApp::new(&ctx, ModelSource::Default, None, Settings::default());
        app.open(PathBuf::from("/img/broken.png"));
        app.apply(Event::Failed("broken.png: not an image".into()));
        assert!(app.settings.recent.is_empty(), "{:?}", app.settings.recent);
    }

    #[test]
    fn panel_commands_wait_until_the_frame_is_drawn() {
        let ctx = egui::Context::default();
        let mut app = TokenlensApp::new(&ctx, ModelSource::Default, None, Settings::default());
        let (dark, label) = (app.settings.dark, app.results.image.as_ref().map(|s| s.label.clone()));
        app.command(Command::ToggleTheme);
        app.command(Command::Open(PathBuf::from("/img/next.png")));
        app.command(Command::ToggleHelp);
        // Queued: nothing a later panel of this frame reads has changed.
        assert_eq!((app.settings.dark, app.results.image.as_ref().map(|s| s.label.clone())), (dark, label));
        assert!(!app.screen.show_help);
        app.apply_commands(&ctx);
        assert_eq!(app.settings.dark, !dark);
        assert_eq!(app.results.image.as_ref().map(|s| s.label.clone()), Some(PathBuf::from("/img/next.png")));
        assert!(app.screen.show_help && app.commands.is_empty());
    }

    #[test]
    fn token_pins_exports_and_the_options_window_wait_until_the_frame_is_drawn() {
        let ctx = egui::Context::default();
        let mut app = TokenlensApp::new(&ctx, ModelSource::Default, None, Settings::default());
        app.vlm = Some(VlmState::new("tiny".into(), 2, None));
        let picked = |app: &TokenlensApp| app.vlm.as_ref().and_then(|v| v.picked);
        let pick = Pick { reduced: true, index: 1 };
        let path = PathBuf::from("/nonexistent/figure.svg");
        app.command(Command::PickToken(pick));
        app.command(Command::ToggleExportOptions);
        app.command(Command::Export { figure: app.current_figure(), path: path.clone(), force: false });
        assert_eq!(picked(&app), None);
        assert!(!app.screen.export_options.open);
        assert!(!app.screen.status.starts_with("Exporting"), "{}", app.screen.status);
        app.apply_commands(&ctx);
        assert_eq!(picked(&app), Some(pick));
        assert!(app.screen.export_options.open);
        assert_eq!(app.screen.status, format!("Exporting {}…", path.display()));
        // A second click on the pinned token unpins it.
        app.command(Command::PickToken(pick));
        app.apply_commands(&ctx);
        assert_eq!(picked(&app), None);
    }

    #[test]
    fn recent_files_are_unique_newest_first_and_bounded() {
        let mut s = Settings::default();
        for i in 0..10 {
            s.remember(PathBuf::from(format!("/img/{i}.png")));
        }
        s.remember(PathBuf::from("/img/5.png"));
        assert_eq!(s.recent.len(), 8);
        assert_eq!(s.recent[0], PathBuf::from("/img/5.png"));
        assert_eq!(s.recent.iter().filter(|p| p.ends_with("5.png")).count(), 1);
    }

    #[test]
    fn settings_round_trip_and_compare_shares_the_budget() {
        let mut s = Settings::default();
        s.spec.budget = Budget::RemoveFraction(0.5);
        let back: Settings = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(s.compare_specs().iter().all(|spec| spec.budget == s.spec.budget && spec.fill == s.spec.fill));
        // A settings file from an older version still loads: missing fields take defaults.
        let partial: Settings = serde_json::from_str(r#"{"opacity": 0.25}"#).unwrap();
        assert_eq!(partial.opacity, 0.25);
        assert_eq!(partial.compare.len(), 4);
    }

    #[test]
    fn settings_without_a_vision_method_get_the_default_one() {
        let mut s = Settings { opacity: 0.3, ..Settings::default() };
        s.spec.method = None;
        let fixed = s.clone().with_a_method();
        assert_eq!(fixed.spec.method, Settings::default().spec.method);
        assert_eq!(fixed.opacity, 0.3, "the rest kept");
        // A language-side method is no encoder's method either.
        s.spec.method = Some(crate::reduce::Method::from_name("fastv").unwrap());
        assert_eq!(s.with_a_method().spec.method, Settings::default().spec.method);
        let tome = Settings {
            spec: RunSpec::vision(ReducerConfig::from_name("tome").unwrap(), Budget::default()),
            ..Settings::default()
        };
        assert_eq!(tome.clone().with_a_method(), tome, "a vision method stays");
    }

    /// Picking ToMe (the widest parameters) leaves the left panel as wide as it was: it made the
    /// panel wider for good and the image jumped (issue 16).
    #[test]
    fn picking_tome_does_not_widen_the_left_panel() {
        let ctx = egui::Context::default();
        let mut app = TokenlensApp::new(&ctx, ModelSource::Default, None, Settings::default());
        let screen = egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(1360.0, 820.0));
        let width = |app: &mut TokenlensApp| {
            let mut rect = egui::Rect::NOTHING;
            for _ in 0..4 {
                let input = egui::RawInput { screen_rect: Some(screen), ..Default::default() };
                let _ = ctx.run_ui(input, |ui| rect = app.controls_panel(ui));
            }
            rect.width()
        };
        let method = |name: &str| Some(crate::reduce::Method::Vision(ReducerConfig::from_name(name).unwrap()));
        let first = width(&mut app);
        app.settings.spec.method = method("tome");
        let tome = width(&mut app);
        app.settings.spec.method = method("cls_topk");
        let back = width(&mut app);
        assert!(first > 0.0, "{first}");
        assert_eq!((tome, back), (first, first), "the panel's width with CLS top-K, ToMe, CLS top-K again");
    }
}
