//! The single entry point the CLI, the GUI and the tests call, for every model: [`Session::load`]
//! decides once whether a source is an image encoder (ViT, DeiT, DINOv2, CLIP, SigLIP, the
//! default saliency model) or a vision-language model (LLaVA, SmolVLM), and the session owns the
//! work worth keeping between requests: the open image's unreduced run (encoders) or its vision
//! run, full prefill and full answer (VLMs), and its recent reduced runs (both, bounded: `recent`).
//! Neither front end holds
//! model code or caches of its own. One [`RunSpec`] in ([`Session::open_bytes`] opens an image,
//! [`Session::run`] runs a spec on it), one [`RunResult`] out: an encoder's run (saliency map,
//! class probabilities or zero-shot scores) or a VLM's answer.

mod recent;
mod reduced_maps;
mod run;
pub mod vlm;

pub use reduced_maps::{LazyMaps, ReducedMaps};
pub use run::{DEFAULT_ANSWER_LIMIT, DropFill, EncoderRun, FullRun, RunResult, RunSpec, RunTimings};
pub(crate) use run::{EncoderCache, ReducedEncoder, encoder_states, reduce_encoder};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::analysis::attention;
use crate::model::preprocess::{self, Prepared};
use crate::model::quant::LoadOptions;
use crate::model::{HookPoint, Model, ModelSource, OutputHead, Preprocessor, TokenState, fetch};
use crate::reduce::{Capabilities, Method};
use crate::session::vlm::{Resume, Vlm, VlmFull, VlmImage, VlmRun};
use crate::{Cancel, Error, Result};
use recent::Recent;

/// A decoded photo and what the model sees of it.
#[derive(Debug, Clone)]
pub struct ImageInput {
    pub photo: RgbImage,
    pub prepared: Prepared,
    /// sha256 of the file's bytes (or of the decoded pixels when built from memory).
    pub sha256: String,
}

/// What opening an image asks besides the image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ask {
    /// A VLM's question, or the labels a zero-shot encoder scores ("a cat, a dog").
    pub prompt: String,
    /// A VLM's answer limit and view layer (its method is ignored: opening runs the full model).
    pub spec: RunSpec,
    /// SmolVLM's image splitting.
    pub split: bool,
}

/// An opened image's full run.
#[allow(clippy::large_enum_variant)] // one per opened image, moved once
pub enum Opened {
    /// An encoder's: the image as the model sees it and the full run's analysis.
    Encoder { input: ImageInput, analysis: Analysis },
    /// A VLM's: the vision run, the prompt and the full answer.
    Answer(Arc<VlmFull>),
}

/// Model output, in the machine-readable form of `analysis.json`: a saliency map
/// (`saliency`, `[h, w]`), class probabilities (`classes`, `[1, classes]`), the prompt labels'
/// probabilities (`zero_shot`, `[1, labels]`), or nothing (`none`) for a bare encoder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Output {
    pub kind: OutputKind,
    pub shape: [usize; 2],
    pub values: Vec<f32>,
    /// Names of the values, for `classes` and `zero_shot`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

/// What an [`Output`] holds (its `kind` in `analysis.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    Saliency,
    Classes,
    ZeroShot,
    None,
}

impl OutputKind {
    /// The name `analysis.json` uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Saliency => "saliency",
            Self::Classes => "classes",
            Self::ZeroShot => "zero_shot",
            Self::None => "none",
        }
    }
}

impl std::fmt::Display for OutputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Output {
    pub fn is_map(&self) -> bool {
        self.kind == OutputKind::Saliency
    }

    /// The `n` most probable labels with their probabilities (for class-like outputs).
    pub fn top(&self, n: usize) -> Vec<(String, f32)> {
        let mut idx: Vec<usize> = (0..self.values.len()).collect();
        idx.sort_by(|&a, &b| self.values[b].total_cmp(&self.values[a]));
        idx.into_iter().take(n).map(|i| (self.labels.get(i).cloned().unwrap_or_default(), self.values[i])).collect()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    pub preprocess_ms: f64,
    pub encoder_ms: f64,
    pub decoder_ms: f64,
    pub total_ms: f64,
}

/// Everything `tokenlens analyze` reports about one image on the full model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Analysis {
    pub model: String,
    pub weights_sha256: String,
    pub grid: [usize; 2],
    /// Leading special tokens (CLS, distillation); 0 means the attention views show attention
    /// received instead of CLS attention.
    pub num_special: usize,
    /// Per layer, CLS-to-patch attention averaged over heads, raster order.
    pub cls_attention: Vec<Vec<f32>>,
    /// Per layer and head, CLS-to-patch attention.
    pub cls_attention_heads: Vec<Vec<Vec<f32>>>,
    /// Attention rollout through all layers, CLS row over the patches.
    pub rollout: Vec<f32>,
    /// Per layer, the L2 norm of each patch token after the block (high-norm outliers are the
    /// "artifact" tokens that soak up attention).
    pub token_norms: Vec<Vec<f32>>,
    pub output: Output,
    pub timings_ms: Timings,
}

/// What a loaded source is: an image encoder with its output head, or a vision-language model.
#[allow(clippy::large_enum_variant)] // one per session, never moved in a loop
pub enum Backend {
    Encoder(Model),
    Vlm(Vlm),
}

/// A loaded model and the cached work of the image open in it.
pub struct Session {
    /// The model's name (file or folder name, or the default model's id).
    pub id: String,
    backend: Backend,
    /// The labels a zero-shot model scores (the prompt box, comma-separated).
    pub labels: Vec<String>,
    /// Encoders: the open image's unreduced run and the reduced runs made from it.
    opened: Option<OpenRuns<FullRun, EncoderRun>>,
    /// VLMs: the open image's vision run, full prefill and full answer (one question), and the
    /// reduced runs made from them.
    answered: Option<OpenRuns<VlmFull, VlmRun>>,
}

/// The unreduced run of the open image and its recent reduced runs, by spec at a resolved token
/// count ([`recent::key`]): a new image (or question) starts a new cache.
struct OpenRuns<F, R> {
    full: Arc<F>,
    runs: Recent<R>,
}

impl<F, R> OpenRuns<F, R> {
    fn new(full: Arc<F>, capacity: usize) -> Self {
        Self { full, runs: Recent::new(capacity) }
    }
}

/// Reduced encoder runs kept per image (each ~0.3 MB).
const CACHE_RUNS: usize = 128;
/// Reduced VLM runs kept per image and question (each holds its answer's text-to-image maps:
/// answer tokens x image tokens, ~75 kB for LLaVA's 576 tokens and 32 answer tokens).
const CACHE_VLM_RUNS: usize = 32;

impl Session {
    /// Loads `source`: the default model, a model file, or a Hugging Face folder (or hub id,
    /// fetched first) of an encoder or a vision-language model.
    /// Loads as this process's options say (the CLI's `--quantize`, `--dtype`:
    /// [`LoadOptions::process`]).
    pub fn load(source: &ModelSource, say: &mut dyn FnMut(&str)) -> Result<Self> {
        Self::load_with(source, LoadOptions::process(), say)
    }

    /// Loads `source` as `options` say. `--quantize` applies to vision-language models (their
    /// decoder and projector); an encoder asked to be quantized is refused, not run in f32.
    pub fn load_with(source: &ModelSource, options: LoadOptions, say: &mut dyn FnMut(&str)) -> Result<Self> {
        let (device, _) = options.resolve()?;
        let backend = match local_folder(source, say)? {
            Some(dir) if Vlm::is_vlm_folder(&dir) => {
                let how = options.quantize.map_or(String::new(), |q| format!(" ({q} linear layers)"));
                say(&format!("Loading the vision-language model in {}{how}…", dir.display()));
                let cache = options.quantize.and_then(|_| crate::model::quant_cache::process_dir());
                let start = std::time::Instant::now();
                let vlm = Vlm::load_cached(&dir, options, cache.as_deref())?;
                if let Some(line) = &vlm.quant_cache {
                    say(line);
                }
                // A 7B load takes minutes without the quantized cache: say what it took.
                say(&format!("Loaded in {:.1} s.", start.elapsed().as_secs_f64()));
                Backend::Vlm(vlm)
            }
            _ if options.quantize.is_some() => {
                return Err(Error::Config {
                    field: "--quantize",
                    reason: "quantization applies to vision-language models' decoders and projectors; image \
                             encoders run in f32 (leave --quantize out)"
                        .into(),
                });
            }
            Some(dir) => Backend::Encoder(Model::load_on(&ModelSource::File(dir), &device, say)?),
            None => Backend::Encoder(Model::load_on(source, &device, say)?),
        };
        let id = match &backend {
            Backend::Encoder(m) => m.id.clone(),
            Backend::Vlm(v) => v.id.clone(),
        };
        Ok(Self { id, backend, labels: Vec::new(), opened: None, answered: None })
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The image encoder, or an error saying this is a vision-language model.
    pub fn model(&self) -> Result<&Model> {
        match &self.backend {
            Backend::Encoder(m) => Ok(m),
            Backend::Vlm(v) => Err(Error::Config {
                field: "model",
                reason: format!(
                    "{} is a vision-language model; this needs an image encoder (ask it with `tokenlens vlm`)",
                    v.id
                ),
            }),
        }
    }

    /// The vision-language model, or an error saying this is an image encoder.
    pub fn vlm(&self) -> Result<&Vlm> {
        match &self.backend {
            Backend::Vlm(v) => Ok(v),
            Backend::Encoder(m) => Err(not_a_vlm(m)),
        }
    }

    pub fn vlm_mut(&mut self) -> Result<&mut Vlm> {
        match &mut self.backend {
            Backend::Vlm(v) => Ok(v),
            Backend::Encoder(m) => Err(not_a_vlm(m)),
        }
    }

    pub fn is_vlm(&self) -> bool {
        matches!(self.backend, Backend::Vlm(_))
    }

    /// What the loaded model offers a method: the method registry's refusals
    /// ([`Method::refusal`]) follow from it, and the runs refuse through the same function.
    pub fn capabilities(&self) -> Capabilities {
        match &self.backend {
            Backend::Encoder(_) => Capabilities::ENCODER,
            Backend::Vlm(v) => v.arch.capabilities(),
        }
    }

    /// Why the loaded model cannot run `method` (None: it can).
    pub fn refusal(&self, method: &Method) -> Option<String> {
        method.refusal(&self.capabilities())
    }

    /// Sets the zero-shot labels from a prompt like "a cat, a dog, a car".
    pub fn set_prompt(&mut self, prompt: &str) {
        self.labels = prompt.split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    }

    /// Whether this model reads the prompt as labels.
    pub fn takes_prompt(&self) -> bool {
        self.model().is_ok_and(|m| matches!(m.head, OutputHead::ZeroShot(_)))
    }

    /// Runs the full model on `input` and keeps the run as the open image's: the reduced runs
    /// asked next ([`Self::reduce`]) resume from it. On failure the image open before stays.
    pub fn open(&mut self, input: &ImageInput, cancel: &Cancel) -> Result<Analysis> {
        let full = self.full_run(&input.prepared.pixels, cancel)?;
        let analysis = self.analysis_of(&full)?;
        self.opened = Some(OpenRuns::new(Arc::new(full), CACHE_RUNS));
        Ok(analysis)
    }

    /// The open image's unreduced run.
    pub fn opened_full(&self) -> Result<Arc<FullRun>> {
        self.opened.as_ref().map(|o| o.full.clone()).ok_or_else(|| Error::NotReady("no image is open".into()))
    }

    /// A reduced run of the open image, from the cache when the same method, parameters and
    /// token count ran before (asked as another fraction, it answers with the spec as asked).
    pub fn reduce(&mut self, spec: &RunSpec, cancel: &Cancel) -> Result<Arc<EncoderRun>> {
        let full = self.opened_full()?;
        let key = recent::key(spec, spec.budget.resolve(full.states[0].num_patches())?);
        if let Some(hit) = self.opened.as_mut().and_then(|o| o.runs.get(&key)) {
            return Ok(Arc::new(EncoderRun { spec: spec.clone(), ..(*hit).clone() }));
        }
        let result = Arc::new(self.run_against(&full, spec, cancel)?);
        if let Some(opened) = self.opened.as_mut() {
            opened.runs.insert(key, result.clone());
        }
        Ok(result)
    }

    /// How many reduced runs of the open image the session keeps now (bounded: at most 128 for
    /// an encoder, 32 for a VLM).
    pub fn cached_runs(&self) -> usize {
        self.opened.as_ref().map_or(0, |o| o.runs.len()) + self.answered.as_ref().map_or(0, |a| a.runs.len())
    }

    /// Forgets the open image's reduced runs (its full run stays): the next [`Self::run`] of any
    /// spec computes it (`tokenlens bench` times that).
    pub fn forget_runs(&mut self) {
        self.opened.iter_mut().for_each(|o| o.runs.clear());
        self.answered.iter_mut().for_each(|a| a.runs.clear());
    }

    /// Opens an image for every later [`Self::run`]: an encoder's full run (`ask.prompt`: the
    /// labels a zero-shot model scores), or a VLM's vision run and full answer (`ask.prompt`:
    /// the question; answer tokens go to `on_token` as they come). `bytes` are an image file's,
    /// `label` names them. On failure the image open before stays.
    pub fn open_bytes(
        &mut self,
        bytes: &[u8],
        label: &Path,
        ask: &Ask,
        on_token: &mut dyn FnMut(u32),
        cancel: &Cancel,
    ) -> Result<Opened> {
        if self.is_vlm() {
            let image = self.vlm_image(bytes, label, ask.split)?;
            let full_spec = RunSpec { method: None, ..ask.spec.clone() };
            return Ok(Opened::Answer(self.answer(image, &ask.prompt, &full_spec, on_token, cancel)?));
        }
        self.set_prompt(&ask.prompt);
        let input = self.image_from_bytes(bytes, label)?;
        let analysis = self.open(&input, cancel)?;
        Ok(Opened::Encoder { input, analysis })
    }

    /// One run of the open image, for every model, from the cache when the same method,
    /// parameters and token count ran before (asked as another fraction, it answers with the
    /// spec as asked): an encoder's reduced run, or a VLM's answer with `spec`'s method against
    /// the full one (its tokens go to `on_token` as they come, or all at once from the cache).
    pub fn run(&mut self, spec: &RunSpec, on_token: &mut dyn FnMut(u32), cancel: &Cancel) -> Result<RunResult> {
        match self.is_vlm() {
            true => Ok(RunResult::Answer(self.answer_reduced(spec, on_token, cancel)?)),
            false => Ok(RunResult::Encoder(self.reduce(spec, cancel)?)),
        }
    }

    /// Prepares `bytes` (an image file's) for the VLM; `split`: SmolVLM's image splitting.
    pub fn vlm_image(&self, bytes: &[u8], label: &Path, split: bool) -> Result<VlmImage> {
        self.vlm()?.arch.image_from_bytes(bytes, label, split)
    }

    /// The VLM's vision run and full answer for `image` and `question`, kept as the open
    /// image's: reduced runs ([`Self::answer_reduced`]) compare with it (on failure the one
    /// before stays). An answer limit past the context is shortened to fit, not refused: the
    /// limit is a setting, the context a property of the model.
    pub fn answer(
        &mut self,
        image: VlmImage,
        question: &str,
        spec: &RunSpec,
        on_token: &mut dyn FnMut(u32),
        cancel: &Cancel,
    ) -> Result<Arc<VlmFull>> {
        let vlm = self.vlm()?;
        let spec = RunSpec { max_new_tokens: vlm.fit_answer(question, &image, spec.max_new_tokens)?, ..spec.clone() };
        let full = Arc::new(vlm.full(image, question, &spec, on_token, cancel)?);
        self.answered = Some(OpenRuns::new(full.clone(), CACHE_VLM_RUNS));
        Ok(full)
    }

    /// The open image's full VLM run.
    pub fn answered(&self) -> Result<Arc<VlmFull>> {
        self.answered.as_ref().map(|a| a.full.clone()).ok_or_else(|| Error::NotReady("no image is open".into()))
    }

    /// A reduced VLM run against the open image's full answer, resumed from its cached work, or
    /// from the recent runs when the same spec (at the same token count) ran before: then its
    /// answer's ids go to `on_token` at once, as a run would have sent them.
    pub fn answer_reduced(
        &mut self,
        spec: &RunSpec,
        on_token: &mut dyn FnMut(u32),
        cancel: &Cancel,
    ) -> Result<Arc<VlmRun>> {
        let full = self.answered()?;
        let key = recent::key(spec, spec.budget.resolve(full.vision.num_image_tokens())?);
        if let Some(hit) = self.answered.as_mut().and_then(|a| a.runs.get(&key)) {
            hit.answer.ids.iter().for_each(|&id| on_token(id));
            return Ok(Arc::new(VlmRun { spec: spec.clone(), ..(*hit).clone() }));
        }
        let run = Arc::new(self.vlm()?.run(&full, spec, Resume::FromCache, on_token, cancel)?);
        if let Some(answered) = self.answered.as_mut() {
            answered.runs.insert(key, run.clone());
        }
        Ok(run)
    }

    /// Decodes and prepares an image file.
    pub fn open_image(&self, path: &Path) -> Result<ImageInput> {
        let bytes = std::fs::read(path).map_err(|e| crate::Error::image(path, format!("cannot read: {e}")))?;
        self.image_from_bytes(&bytes, path)
    }

    /// Decodes and prepares encoded image bytes; `label` names them in errors.
    pub fn image_from_bytes(&self, bytes: &[u8], label: &Path) -> Result<ImageInput> {
        let model = self.model()?;
        let photo = preprocess::decode_image_as(bytes, model.preprocessor.alpha())
            .map_err(|reason| crate::Error::image(label, reason))?;
        let prepared = match &model.preprocessor {
            Preprocessor::Letterbox { size } => preprocess::prepare(&photo, *size, &model.device)?,
            Preprocessor::Hf(p) => {
                let canvas = p.resize_and_crop(&photo)?;
                let pixels = p.pixels(&canvas, &model.device)?;
                let (w, h) = canvas.dimensions();
                let content = preprocess::ContentRect { top: 0, left: 0, height: h, width: w };
                Prepared { place: p.canvas_in_photo(photo.width(), photo.height()), canvas, content, pixels }
            }
        };
        Ok(ImageInput { photo, prepared, sha256: fetch::sha256_hex(bytes) })
    }

    /// The state before block 0.
    pub fn embed(&self, prepared: &Prepared) -> Result<TokenState> {
        self.model()?.encoder.embed(&prepared.pixels)
    }

    /// Runs the full model and summarises it: attention per layer, rollout, token norms and
    /// the saliency output.
    pub fn analyze(&self, prepared: &Prepared, cancel: &Cancel) -> Result<Analysis> {
        let full = self.full_run(&prepared.pixels, cancel)?;
        self.analysis_of(&full)
    }

    /// The [`Analysis`] of a full run already computed.
    pub fn analysis_of(&self, full: &FullRun) -> Result<Analysis> {
        let layers = full.num_layers();
        let special = full.states[0].num_special;
        let probs: Vec<&Tensor> =
            (0..layers).map(|l| full.trace.require(HookPoint::AttnProbs(l))).collect::<Result<_>>()?;
        let cls_attention = probs.iter().map(|p| attention::cls_attention(p, special)).collect::<Result<_>>()?;
        let cls_attention_heads =
            probs.iter().map(|p| attention::cls_attention_heads(p, special)).collect::<Result<_>>()?;
        let token_norms = full.states[1..]
            .iter()
            .map(|s| Ok(s.hidden.sqr()?.sum(2)?.sqrt()?.flatten_all()?.to_vec1::<f32>()?[special..].to_vec()))
            .collect::<Result<_>>()?;
        let grid = full.states[0].grid;
        Ok(Analysis {
            model: self.id.clone(),
            weights_sha256: self.model()?.weights_sha256.clone(),
            grid: [grid.0, grid.1],
            num_special: special,
            cls_attention,
            cls_attention_heads,
            rollout: attention::rollout(&probs, special)?,
            token_norms,
            output: full.output.clone(),
            timings_ms: Timings {
                preprocess_ms: 0.0,
                encoder_ms: full.encoder_ms,
                decoder_ms: full.time_ms - full.encoder_ms,
                total_ms: full.time_ms,
            },
        })
    }
}

fn not_a_vlm(m: &Model) -> Error {
    Error::Config { field: "model", reason: format!("{} is an image encoder, not a vision-language model", m.id) }
}

/// The local folder `source` names, if it names one (a hub id is fetched first).
fn local_folder(source: &ModelSource, say: &mut dyn FnMut(&str)) -> Result<Option<PathBuf>> {
    let ModelSource::File(path) = source else { return Ok(None) };
    if path.is_dir() {
        return Ok(Some(path.clone()));
    }
    #[cfg(feature = "hub")]
    if crate::model::hub::looks_like_hub_id(&path.to_string_lossy()) {
        return Ok(Some(crate::model::hub::fetch(&path.to_string_lossy(), say)?));
    }
    let _ = say;
    Ok(None)
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
