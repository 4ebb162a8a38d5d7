//! VLM mode: the app's state for a vision-language model (the question, the full answer and the
//! reduced run as they stream in, the ratio sweep, the answer token picked for the text-to-image
//! map), what it submits to the worker, and the left panel's VLM controls.

use std::sync::Arc;

use eframe::egui;
use serde::{Deserialize, Serialize};

pub use super::widgets::Pick;
use super::widgets::{self, method_menu, params_ui};
use super::worker::{Event, Job, OpenedImage, VlmOpened};
use super::{Slot, TokenlensApp};
use crate::export::Figure;
use crate::export::vlm::AnswerToken;
use crate::reduce::llm::LlmReducerConfig;
use crate::reduce::{Budget, Capabilities, Method, PositionMode, ReducerConfig};
use crate::session::vlm::{SweepPoint, VlmRun, sweep_fractions};
use crate::session::{Ask, RunResult, RunSpec};

/// How to get a vision-language model: the app cannot download one on every machine.
pub const HOW_TO_GET: &str = "Vision-language models are opened from a local Hugging Face folder:\n\
    - SmolVLM-256M-Instruct (hub id HuggingFaceTB/SmolVLM-256M-Instruct): about 1 GB in f32, runs on a CPU;\n\
    - LLaVA-1.5-7B (hub id llava-hf/llava-1.5-7b-hf): needs about 28 GB of RAM in f32 (sharded \
    weights are read as they come).\n\
    On a machine with network: huggingface-cli download <hub id> --local-dir <folder>, \
    then open the folder here (Model > Hugging Face folder…). \
    With network on this machine, `--model <hub id>` fetches the folder into the Hugging Face cache.";

/// What the VLM view draws over the photo, on the image-token grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VlmOverlay {
    Tokens,
    Scores,
    Saliency,
    TextToImage,
}

impl VlmOverlay {
    pub const ALL: [VlmOverlay; 4] =
        [VlmOverlay::Tokens, VlmOverlay::Scores, VlmOverlay::Saliency, VlmOverlay::TextToImage];

    pub fn label(self) -> &'static str {
        match self {
            VlmOverlay::Tokens => "Kept / merged tokens",
            VlmOverlay::Scores => "Method score",
            VlmOverlay::Saliency => "Vision saliency",
            VlmOverlay::TextToImage => "Text-to-image (answer token)",
        }
    }
}

/// The VLM settings (the budget and position ids are the main ones, shared with encoders).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VlmSettings {
    pub question: String,
    pub method: Method,
    pub max_new_tokens: usize,
    /// The decoder layer the text-to-image maps read (None: the middle one).
    pub view_layer: Option<usize>,
    pub overlay: VlmOverlay,
    /// SmolVLM's image splitting (tiles plus the global image); off: one tile. Set from the
    /// folder's processor when a model loads.
    pub split_image: bool,
    /// Methods of the compare view (2 to 4), all at the shared budget.
    pub compare: Vec<Method>,
}

impl Default for VlmSettings {
    fn default() -> Self {
        Self {
            question: "What is in the image?".into(),
            method: Method::Vision(ReducerConfig::from_name("cls_topk").expect("a built-in method")),
            max_new_tokens: 32,
            view_layer: None,
            overlay: VlmOverlay::Tokens,
            split_image: false,
            compare: ["fastv", "sparsevlm", "divprune", "random"]
                .iter()
                .map(|n| Method::from_name(n).expect("a built-in method"))
                .collect(),
        }
    }
}

impl VlmSettings {
    /// Swaps the vision-side methods (the single one and the compare view's) for language-side
    /// ones, for a split image whose tiles are not one grid (the session refuses them there:
    /// opening a SmolVLM folder, which splits by default, would otherwise start on an error).
    /// Says what was swapped, or None when nothing was.
    fn language_side_only(&mut self) -> Option<String> {
        let mut swapped = Vec::new();
        if matches!(self.method, Method::Vision(_)) {
            swapped.push(format!("{} became FastV", self.method.label()));
            self.method = Method::from_name("fastv").expect("a built-in method");
        }
        let mut spare = ["fastv", "sparsevlm", "text_guided", "mmtok", "todre"]
            .into_iter()
            .map(|n| Method::from_name(n).expect("a built-in method"))
            .filter(|m| !self.compare.contains(m))
            .collect::<Vec<_>>()
            .into_iter();
        let mut compare_swapped = 0;
        for m in self.compare.iter_mut().filter(|m| matches!(m, Method::Vision(_))) {
            let Some(next) = spare.next() else { break };
            *m = next;
            compare_swapped += 1;
        }
        if compare_swapped > 0 {
            swapped.push(format!(
                "{} in the compare view",
                crate::render::text::count(compare_swapped, "method", "methods")
            ));
        }
        (!swapped.is_empty()).then(|| swapped.join(", "))
    }
}

/// What the full run depends on: changing any of it runs the full model again.
#[derive(Debug, Clone, PartialEq)]
struct FullKey {
    image: std::path::PathBuf,
    question: String,
    max_new_tokens: usize,
    view_layer: Option<usize>,
    split_image: bool,
}

/// The state of VLM mode (present while a vision-language model is loaded).
#[derive(Default)]
pub struct VlmState {
    pub model_id: String,
    pub num_layers: usize,
    pub context: Option<usize>,
    /// What the model offers a method (the method pickers grey out what it refuses).
    pub capabilities: Capabilities,
    /// The memory guard's estimate for the model (shown with the cost).
    pub memory: Option<crate::model::memory::Estimate>,
    /// The full run of the current image and question.
    pub full: Slot<Arc<VlmOpened>>,
    sent_full: Option<FullKey>,
    /// Tokens of the full answer (`full.id`) and the reduced one (`run.id`) as they stream in,
    /// and each answer so far as text.
    pub full_stream: Vec<String>,
    pub full_text: String,
    pub run: Slot<Arc<VlmRun>>,
    sent_run: Option<RunSpec>,
    /// The compare view's runs, in the order of the settings' methods.
    pub compared: Slot<Vec<Arc<VlmRun>>>,
    sent_compare: Option<Vec<RunSpec>>,
    pub run_stream: Vec<String>,
    pub run_text: String,
    /// Points of the ratio sweep of `sweep_key`'s method, sorted by removed fraction.
    pub sweep: Vec<SweepPoint>,
    sweep_id: u64,
    sweep_key: Option<RunSpec>,
    /// The sweep stopped on an error (shown in the status bar).
    pub sweep_stopped: bool,
    /// The answer token the text-to-image map shows: hovered this frame, or clicked.
    pub hovered: Option<Pick>,
    pub picked: Option<Pick>,
    /// The question box's text (it becomes the question when editing ends).
    pub draft: String,
}

impl VlmState {
    pub fn new(model_id: String, num_layers: usize, context: Option<usize>) -> Self {
        Self { model_id, num_layers, context, ..Self::default() }
    }

    pub fn opened(&self) -> Option<&Arc<VlmOpened>> {
        self.full.value.as_ref()
    }

    pub fn busy(&self) -> bool {
        self.full.pending || self.run.pending || self.compared.pending
    }

    /// The sweep has all its points (those a method cannot reach are skipped), or stopped.
    pub fn sweep_done(&self) -> bool {
        self.sweep_stopped || self.sweep.len() >= sweep_fractions().len()
    }

    /// The token the text-to-image map shows: the hovered one, else the clicked one.
    pub fn shown_pick(&self) -> Option<Pick> {
        self.hovered.or(self.picked)
    }

    /// Applies a VLM event; false if `event` is not one.
    pub fn apply(&mut self, event: &Event) -> bool {
        match event {
            Event::Token { id, piece, text } => {
                if *id == self.full.id && self.full.pending {
                    self.full_stream.push(piece.clone());
                    self.full_text.clone_from(text);
                } else if *id == self.run.id && self.run.pending {
                    self.run_stream.push(piece.clone());
                    self.run_text.clone_from(text);
                }
            }
            Event::Opened { id, image: OpenedImage::Answer(opened) } => {
                if *id == self.full.id {
                    // Runs against the previous full answer are stale now.
                    self.run = Slot::default();
                    self.sent_run = None;
                    self.compared = Slot::default();
                    self.sent_compare = None;
                    self.sweep.clear();
                    self.sweep_key = None;
                    self.picked = None;
                }
                self.full.answer(*id, opened.clone());
            }
            Event::Ran { id, result: RunResult::Answer(run) } => self.run.answer(*id, run.clone()),
            Event::Compared { id, results } => {
                self.compared.answer(*id, results.iter().filter_map(|r| r.answer().cloned()).collect())
            }
            Event::SweepStopped { id } => self.sweep_stopped |= *id == self.sweep_id,
            Event::SweepPoint { id, removed, result: RunResult::Answer(run) } => {
                if *id == self.sweep_id {
                    self.sweep.push(SweepPoint::of(*removed, run));
                    self.sweep.sort_by(|a, b| a.removed.total_cmp(&b.removed));
                }
            }
            _ => return false,
        }
        true
    }

    /// What the answer and sweep panels show now (written beside a `--screenshot`).
    pub fn summary(&self) -> serde_json::Value {
        let opened = self.opened();
        let run = self.run.value.as_deref();
        serde_json::json!({
            "model": self.model_id,
            "question": opened.map(|o| o.question.clone()),
            "full_answer": opened.map(|o| o.run.answer.pieces.clone()),
            "reduced_answer": run.map(|r| r.answer.pieces.clone()),
            "reduced_label": run.map(run_label),
            "diff": run.map(|r| r.diff.clone()),
            "answer_changed": run.map(|r| r.answer_changed),
            "full_answer_logprob": run.and_then(|r| r.full_answer_logprob),
            "sweep": self.sweep.iter().map(|p| serde_json::json!({
                "removed": p.removed, "changed": p.changed, "full_answer_logprob": p.full_answer_logprob,
            })).collect::<Vec<_>>(),
            "first_change": crate::session::vlm::first_change(&self.sweep),
            "compared": self.compared.value.iter().flatten().map(|r| serde_json::json!({
                "label": run_label(r), "answer": r.answer.pieces, "answer_changed": r.answer_changed,
                "full_answer_logprob": r.full_answer_logprob, "image_rows": r.image_rows_per_layer.first(),
            })).collect::<Vec<_>>(),
        })
    }

    /// The worker shortened the answer limit to fit the context: the full run it answered is
    /// the one for the shortened limit (no second full run).
    pub fn answer_limit_fitted(&mut self, max_new_tokens: usize) {
        if let Some(key) = self.sent_full.as_mut() {
            key.max_new_tokens = max_new_tokens;
        }
    }

    /// The method the sweep on screen was asked for.
    pub fn sweep_method(&self) -> Option<&Method> {
        self.sweep_key.as_ref()?.method.as_ref()
    }

    /// The reduced run on screen, and a note when it is not the one last asked for (that one
    /// failed or is still running): after a method is refused, the last good run stays, under its
    /// own name.
    pub fn shown_run(&self) -> Option<(Arc<VlmRun>, Option<String>)> {
        let run = self.run.value.clone().filter(|_| !self.run.pending)?;
        let note = match &self.sent_run {
            Some(asked) if *asked != run.spec => {
                let what = asked.method.as_ref().map_or_else(|| "the full model".to_string(), method_label);
                Some(format!("the last good run: {what} gave no result (see the error)"))
            }
            _ => None,
        };
        Some((run, note))
    }

    /// The answer figure of what is on screen: the run shown, the picked answer token (else
    /// the reduced answer's first, else the full answer's first).
    pub fn answer_figure(&self, settings: &VlmSettings) -> Option<Figure> {
        let opened = self.opened()?;
        let (run, _) = self.shown_run()?;
        let pick = self.shown_pick().unwrap_or(Pick { reduced: !run.answer.ids.is_empty(), index: 0 });
        Some(Figure::VlmAnswer {
            question: opened.question.clone(),
            split_image: settings.split_image,
            load: serde_json::Value::Null, // the worker's session records it
            run: Box::new(run.spec.clone()),
            token: AnswerToken { reduced: pick.reduced, index: pick.index },
        })
    }

    /// The compare view as a figure: the runs on screen, else the ones asked for.
    pub fn compare_figure(&self, settings: &VlmSettings, budget: Budget, positions: PositionMode) -> Option<Figure> {
        let opened = self.opened()?;
        let runs = match &self.compared.value {
            Some(runs) if !self.compared.pending => runs.iter().map(|r| r.spec.clone()).collect(),
            _ => settings.compare_specs(budget, positions),
        };
        Some(Figure::VlmCompare {
            question: opened.question.clone(),
            split_image: settings.split_image,
            load: serde_json::Value::Null,
            runs,
        })
    }

    pub fn failed(&mut self) {
        if self.full.pending && self.sweep.len() < sweep_fractions().len() {
            // The worker dropped the sweep when the full run was asked for: ask for it again.
            self.sweep_key = None;
        }
        self.full.pending = false;
        self.run.pending = false;
        self.compared.pending = false;
    }
}

impl VlmSettings {
    /// The reduced run these settings ask for, at the shared budget and position mode.
    pub fn spec(&self, budget: Budget, positions: crate::reduce::PositionMode) -> RunSpec {
        self.spec_for(&self.method, budget, positions)
    }

    /// The compare view's runs: each of its methods with everything else as [`Self::spec`].
    pub fn compare_specs(&self, budget: Budget, positions: crate::reduce::PositionMode) -> Vec<RunSpec> {
        self.compare.iter().map(|m| self.spec_for(m, budget, positions)).collect()
    }

    fn spec_for(&self, method: &Method, budget: Budget, positions: crate::reduce::PositionMode) -> RunSpec {
        RunSpec {
            method: Some(method.clone()),
            budget,
            positions,
            max_new_tokens: self.max_new_tokens,
            view_layer: self.view_layer,
            ..RunSpec::default()
        }
    }
}

impl TokenlensApp {
    /// A vision-language model is loaded: the app switches to VLM mode.
    /// The image-splitting switch starts from the folder's setting.
    pub(super) fn vlm_ready(&mut self, id: String, num_layers: usize, context: Option<usize>, split_image: bool) {
        self.settings.vlm.split_image = split_image;
        self.screen.status = format!("Vision-language model ready: {id}");
        if split_image && let Some(swapped) = self.settings.vlm.language_side_only() {
            self.screen.status = format!(
                "{} ready. Its processor splits the image into tiles, where only language-side methods run: \
                 {swapped}. Turn splitting off (Answer) for the vision-side ones.",
                id
            );
        }
        self.model.id = Some(id.clone());
        self.results.opening = false;
        self.results.opened = None;
        self.results.forget_runs();
        if let Some(l) = self.settings.vlm.view_layer {
            self.settings.vlm.view_layer = Some(l.min(num_layers.saturating_sub(1)));
        }
        let mut state = VlmState::new(id, num_layers, context);
        state.draft = self.settings.vlm.question.clone();
        self.vlm = Some(state);
    }

    /// Submits the full run, the reduced run and the sweep the settings ask for and were not
    /// asked yet (the full run first: the others compare against it).
    pub(super) fn submit_vlm_changes(&mut self) {
        let (Some(vlm), Some(source)) = (self.vlm.as_mut(), self.results.image.as_ref()) else { return };
        let (settings, shared) = (&self.settings.vlm, &self.settings.spec);
        let runtime = &mut self.runtime;
        let spec = settings.spec(shared.budget, shared.positions);
        let key = FullKey {
            image: source.label.clone(),
            question: settings.question.clone(),
            max_new_tokens: settings.max_new_tokens,
            view_layer: settings.view_layer,
            split_image: settings.split_image,
        };
        if vlm.sent_full.as_ref() != Some(&key) {
            let id = runtime.fresh_id();
            vlm.full.submitted(id);
            vlm.full_stream.clear();
            vlm.full_text.clear();
            vlm.sent_full = Some(key);
            self.screen.status = format!("Answering about {}…", source.label.display());
            let ask = Ask {
                prompt: settings.question.clone(),
                spec: RunSpec { method: None, ..spec },
                split: settings.split_image,
            };
            runtime.worker.submit(Job::Open { id, source: source.clone(), ask });
            return;
        }
        if vlm.full.pending || vlm.full.value.is_none() {
            return;
        }
        if vlm.sent_run.as_ref() != Some(&spec) {
            let id = runtime.fresh_id();
            vlm.run.submitted(id);
            vlm.run_stream.clear();
            vlm.run_text.clear();
            vlm.sent_run = Some(spec.clone());
            runtime.worker.submit(Job::Run { id, spec: spec.clone() });
        }
        if self.settings.tab == super::Tab::Compare {
            let specs = settings.compare_specs(shared.budget, shared.positions);
            if vlm.sent_compare.as_ref() != Some(&specs) {
                let id = runtime.fresh_id();
                vlm.compared.submitted(id);
                vlm.sent_compare = Some(specs.clone());
                runtime.worker.submit(Job::Compare { id, specs });
            }
        }
        // The sweep depends on everything but the budget.
        let key = RunSpec { budget: Budget::Keep(1), ..spec };
        if vlm.sweep_key.as_ref() != Some(&key) {
            let id = runtime.fresh_id();
            vlm.sweep_id = id;
            vlm.sweep.clear();
            vlm.sweep_stopped = false;
            vlm.sweep_key = Some(key.clone());
            // Popped from the end: the presets first, then 50 %, 25 % and the full model.
            runtime.worker.submit(Job::Sweep { id, spec: key, fractions: sweep_fractions() });
        }
    }
}

/// The left panel's method, parameters, answer and view settings in VLM mode.
pub fn controls_ui(app: &mut TokenlensApp, ui: &mut egui::Ui) {
    let Some(vlm) = app.vlm.as_ref() else { return };
    let caps = vlm.capabilities.with_split_image(app.settings.vlm.split_image);
    let decoder_layers = vlm.num_layers;
    let tower_layers = vlm.opened().map_or(1, |o| o.tower_layers);
    // The compare view picks its methods in its columns and shows their tokens: the single
    // method's picker, parameters and views would do nothing there.
    let compare = app.settings.tab == super::Tab::Compare;
    let s = &mut app.settings.vlm;

    if !compare {
        widgets::section(ui, "Method");
        method_menu(ui, "main", 200.0, &caps, &mut s.method);
    }
    let mut tower_layer_param = false;
    if let Method::Vision(c) = &s.method
        && !compare
    {
        let json = serde_json::to_value(c).unwrap_or_default();
        tower_layer_param = json.as_object().is_some_and(|o| o.keys().any(|k| k.contains("layer")));
        let info = c.info();
        ui.label(egui::RichText::new(info.description).small());
        ui.label(egui::RichText::new(info.paper).small().weak().italics());
        if let Some(caveat) = info.caveat {
            ui.label(egui::RichText::new(format!("Note: {caveat}")).small().color(ui.visuals().warn_fg_color));
        }
    }
    widgets::section(ui, "Budget");
    widgets::budget_ui(app, ui);
    let s = &mut app.settings.vlm;
    widgets::section(ui, if compare { "Options" } else { "Parameters" });
    match &mut s.method {
        _ if compare => {}
        Method::Vision(c) => params_ui(ui, c, 0..=tower_layers.saturating_sub(1)),
        // FastV's `layer` is K: it prunes after layer K - 1, so K runs 1..=L.
        Method::Llm(c @ LlmReducerConfig::Fastv(_)) => params_ui(ui, c, 1..=decoder_layers),
        Method::Llm(c) => params_ui(ui, c, 0..=decoder_layers.saturating_sub(1)),
    }
    if tower_layer_param {
        ui.label(egui::RichText::new("layers: of the vision tower").small().weak());
    }
    ui.horizontal(|ui| {
        ui.label("Positions").on_hover_text(
            "Position ids of the tokens left before the decoder: preserve keeps each token's original id \
             (gaps remain), compact renumbers them. This changes the rotary angles, so it can change the answer.",
        );
        ui.radio_value(&mut app.settings.spec.positions, crate::reduce::PositionMode::Preserve, "preserve");
        ui.radio_value(&mut app.settings.spec.positions, crate::reduce::PositionMode::Compact, "compact");
    });

    widgets::section(ui, "Answer");
    let s = &mut app.settings.vlm;
    ui.horizontal(|ui| {
        ui.label("max answer tokens").on_hover_text("greedy decoding stops here or at the end-of-answer token");
        ui.add(egui::DragValue::new(&mut s.max_new_tokens).range(1..=512));
    });
    ui.checkbox(&mut s.split_image, "split the image into tiles").on_hover_text(
        "SmolVLM: tiles plus a global image, as its processor does by default (more image tokens; only the \
         language-side methods run on a split image). Off: one 512 tile. Other models ignore it.",
    );
    let mut layer = s.view_layer.unwrap_or(decoder_layers / 2);
    let slider = egui::Slider::new(&mut layer, 0..=decoder_layers.saturating_sub(1)).text("view layer");
    if ui
        .add(slider)
        .on_hover_text("The decoder layer whose attention the text-to-image maps read (runs the full model again)")
        .changed()
    {
        s.view_layer = Some(layer);
    }

    widgets::section(ui, "View");
    for overlay in VlmOverlay::ALL.into_iter().filter(|_| !compare) {
        ui.radio_value(&mut s.overlay, overlay, overlay.label());
    }
    if s.overlay == VlmOverlay::TextToImage && !compare {
        ui.label(egui::RichText::new("hover or click a token of an answer (right panel)").small().weak());
    }
    widgets::look_ui(&mut app.settings, ui);
}

/// What a run was, from the run itself: its method and budget (never the settings', which may
/// ask for something else by now).
pub fn run_label(run: &VlmRun) -> String {
    let method = run.spec.method.as_ref().map_or_else(|| "full model".to_string(), method_label);
    let asked = run.spec.budget.describe(run.num_image_tokens);
    // Say so when the method's site lies past the model's last layer, instead of the budget it
    // was asked for.
    if run.removed_nothing() {
        let layers = run.image_rows_per_layer.len();
        format!("{method}: nothing removed in any of the {layers} decoder layers (asked: {asked})")
    } else {
        format!("{method}, {asked}")
    }
}

/// The method's name as its paper writes it (FastV, SparseVLM, DivPrune).
pub fn method_label(method: &Method) -> String {
    method.label().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_image_swaps_vision_side_methods_for_language_side_ones() {
        let names = |s: &VlmSettings| s.compare.iter().map(|m| m.name().to_string()).collect::<Vec<_>>();
        // The defaults: CLS top-K, and fastv, sparsevlm, divprune, random to compare.
        let mut s = VlmSettings::default();
        let said = s.language_side_only().expect("the defaults hold vision-side methods");
        assert_eq!(s.method, Method::from_name("fastv").unwrap());
        assert_eq!(names(&s), ["fastv", "sparsevlm", "text_guided", "mmtok"]);
        assert!(said.contains("became FastV") && said.contains("2 methods in the compare view"), "{said}");
        // Nothing vision-side left: nothing to say, nothing changed.
        let before = s.clone();
        assert_eq!(s.language_side_only(), None);
        assert_eq!(s, before);
    }

    #[test]
    fn tokens_stream_into_the_request_they_belong_to() {
        let mut v = VlmState::new("tiny".into(), 2, Some(64));
        v.full.submitted(3);
        let token = |id, piece: &str| Event::Token { id, piece: piece.into(), text: format!("so far {piece}") };
        v.apply(&token(3, "a"));
        v.apply(&token(2, "stale"));
        assert_eq!(v.full_stream, vec!["a".to_string()]);
        assert_eq!(v.full_text, "so far a");
        v.run.submitted(5);
        v.apply(&token(5, "b"));
        assert_eq!(v.run_stream, vec!["b".to_string()]);
        assert!(v.busy());
        v.failed();
        assert!(!v.busy());
    }

    #[test]
    fn sweep_points_of_an_old_request_are_dropped_and_the_rest_sorted() {
        let mut v = VlmState::new("tiny".into(), 2, None);
        v.sweep_id = 7;
        let run = |removed: f64| VlmRun {
            keep: 1,
            answer_changed: removed > 0.5,
            full_answer_logprob: Some(-removed),
            ..VlmRun::default()
        };
        for (id, r) in [(7, 0.9), (6, 0.1), (7, 0.0), (7, 0.5)] {
            v.apply(&Event::SweepPoint { id, removed: r, result: RunResult::Answer(Arc::new(run(r))) });
        }
        let removed: Vec<f64> = v.sweep.iter().map(|p| p.removed).collect();
        assert_eq!(removed, vec![0.0, 0.5, 0.9]);
        assert_eq!(v.sweep.iter().map(|p| p.changed).collect::<Vec<_>>(), vec![false, false, true]);
        assert!(!v.sweep_done());
        v.apply(&Event::SweepStopped { id: 6 });
        assert!(!v.sweep_done(), "an old sweep's stop");
        v.apply(&Event::SweepStopped { id: 7 });
        assert!(v.sweep_done());
    }

    #[test]
    fn a_hovered_token_wins_over_the_clicked_one() {
        let mut v = VlmState { picked: Some(Pick { reduced: false, index: 2 }), ..VlmState::default() };
        assert_eq!(v.shown_pick(), v.picked);
        v.hovered = Some(Pick { reduced: true, index: 0 });
        assert_eq!(v.shown_pick(), Some(Pick { reduced: true, index: 0 }));
    }

    #[test]
    fn vlm_settings_round_trip() {
        let s = VlmSettings { max_new_tokens: 7, view_layer: Some(1), ..VlmSettings::default() };
        let back: VlmSettings = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let spec = s.spec(Budget::RemoveFraction(0.5), Default::default());
        assert_eq!(spec.max_new_tokens, 7);
        assert_eq!(spec.method.as_ref().map(Method::name), Some("cls_topk"));
    }

    #[test]
    fn a_run_is_labelled_by_itself_not_by_the_settings() {
        let spec = |name: &str, removed: f64| RunSpec {
            method: Some(Method::from_name(name).unwrap()),
            budget: Budget::RemoveFraction(removed),
            ..RunSpec::default()
        };
        let fastv = VlmRun { spec: spec("fastv", 0.5), num_image_tokens: 64, ..VlmRun::default() };
        let mut v = VlmState::default();
        v.run.submitted(1);
        v.sent_run = Some(fastv.spec.clone());
        v.run.answer(1, Arc::new(fastv));
        let (shown, note) = v.shown_run().unwrap();
        assert_eq!(run_label(&shown), "FastV, 50.0 % removed (32 of 64 kept)");
        assert_eq!(note, None);
        // ToMe is asked for and refused: FastV's run stays, named FastV, with a note.
        v.run.submitted(2);
        v.sent_run = Some(spec("tome", 0.75));
        v.failed();
        let (shown, note) = v.shown_run().unwrap();
        assert_eq!(run_label(&shown), "FastV, 50.0 % removed (32 of 64 kept)");
        assert!(note.unwrap().contains("ToMe gave no result"));
    }

    #[test]
    fn a_method_that_removed_nothing_does_not_claim_its_budget() {
        // FastV at K = 2 on a 2-layer decoder prunes after the last layer: both saw all 64 rows.
        let spec = RunSpec {
            method: Some(Method::from_name("fastv").unwrap()),
            budget: Budget::RemoveFraction(0.5),
            ..RunSpec::default()
        };
        let mut run = VlmRun { spec, keep: 32, num_image_tokens: 64, ..VlmRun::default() };
        run.image_rows_per_layer = vec![64, 64];
        assert_eq!(
            run_label(&run),
            "FastV: nothing removed in any of the 2 decoder layers (asked: 50.0 % removed (32 of 64 kept))"
        );
        // Pruned after layer 0: the budget is what happened.
        run.image_rows_per_layer = vec![64, 32];
        assert_eq!(run_label(&run), "FastV, 50.0 % removed (32 of 64 kept)");
    }
}
