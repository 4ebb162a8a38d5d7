//! Vision-language models end to end: an image and a question in, the answer out, with a
//! reducer acting on the vision side (before the projector or inside the tower) or on the
//! language side (before or inside the decoder), and everything the views need: what was kept,
//! what each answer word looked at, the answer diff and the cost.
//!
//! `arch` hides the two architectures (LLaVA, Idefics3/SmolVLM) behind one shape: image ->
//! vision run (cached per image) -> image tokens on a grid -> decoder sequence. `decode` runs the
//! decoder with reducers between layers; `answer` compares answers.
//!
//! # Design
//! Question: how does a ratio change rerun only what follows the method's stage?
//! Decision: [`Vlm::full`] keeps the vision run (the tower's states and trace) and the full
//! prefill (the hidden states entering every decoder layer, the KV cache, rows and positions).
//! [`Vlm::run`] resumes from them: a vision-side method inside the tower (LLaVA) reruns the tower
//! from its block, then the projector and every decoder layer; a pre-LLM method (vision-side, or
//! language-side acting before layer 0) reruns only the projector (SmolVLM's connector output is
//! reused as it is) and the decoder, never the tower; a language-side method first acting after
//! decoder layer k reruns layers k+1.. only. [`VlmRun::recomputed_from_layer`] and
//! [`VlmRun::tower_recomputed_from`] say where a run started. The same run with
//! [`Resume::FromScratch`] prefills from layer 0; resumed answers equal it bit for bit
//! (tests/vlm_resume.rs). The session keeps the recent reduced runs besides.
//! Trade-off: the full prefill's per-layer hidden states stay in memory with the image.

pub mod answer;
mod arch;
pub mod decode;

pub use answer::{Answer, DiffOp, diff_tokens};
pub use arch::{Arch, Loaded, VisionRun, VlmImage};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::analysis::cost::{BlockTokens, decoder_layer_flops};
use crate::model::TokenState;
use crate::model::quant::{LoadOptions, QuantCount};
use crate::reduce::{Budget, Context, Method, Reducer, Stage};
use crate::session::RunSpec;
use crate::{Cancel, Error, Result};
use decode::{FullPrefill, Prefill, Rows};

/// The prompt as the decoder reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prompt {
    pub question: String,
    /// The chat template's output with the image placeholders expanded.
    pub text: String,
    pub ids: Vec<u32>,
    /// Indices into `ids` of the image tokens, in order.
    pub image_slots: Vec<usize>,
}

/// Theoretical and measured cost of one run (REDUCERS.md, "Cost accounting").
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VlmCost {
    pub encoder_flops: f64,
    pub projector_flops: f64,
    /// Prefill FLOPs of each decoder layer, with its own token count.
    pub decoder_flops: Vec<f64>,
    /// Tokens each decoder layer processed in the prefill.
    pub decoder_tokens: Vec<usize>,
    /// Keys and values cached after the prefill, and at the end of the answer (f32).
    pub kv_bytes_prefill: usize,
    pub kv_bytes_end: usize,
    pub encoder_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// Answer tokens per second of decoding.
    pub tokens_per_s: f64,
}

impl VlmCost {
    pub fn total_flops(&self) -> f64 {
        self.encoder_flops + self.projector_flops + self.decoder_flops.iter().sum::<f64>()
    }
}

/// Where a VLM run's method acted, written in `vlm.json` as `full`, `encoder(l)`, `pre_llm`,
/// `llm(k)` or `none (nothing removed)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunStage {
    /// The unreduced model.
    #[default]
    Full,
    /// The first place the method changed the tokens.
    At(Stage),
    /// A method that changed nothing (its site lies past the last decoder layer).
    NothingRemoved,
}

impl std::fmt::Display for RunStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Full => f.write_str("full"),
            Self::At(Stage::Encoder(l)) => write!(f, "encoder({l})"),
            Self::At(Stage::PreLlm) => f.write_str("pre_llm"),
            Self::At(Stage::Llm(k)) => write!(f, "llm({k})"),
            Self::NothingRemoved => f.write_str("none (nothing removed)"),
        }
    }
}

impl std::str::FromStr for RunStage {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let layer = |prefix: &str| s.strip_prefix(prefix)?.strip_suffix(')')?.parse::<usize>().ok();
        match s {
            "full" => Ok(Self::Full),
            "pre_llm" => Ok(Self::At(Stage::PreLlm)),
            "none (nothing removed)" => Ok(Self::NothingRemoved),
            _ => layer("encoder(")
                .map(|l| Self::At(Stage::Encoder(l)))
                .or_else(|| layer("llm(").map(|k| Self::At(Stage::Llm(k))))
                .ok_or_else(|| format!("unknown stage {s:?}")),
        }
    }
}

impl Serialize for RunStage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RunStage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// One run's results, in the machine-readable form of `vlm.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VlmRun {
    pub spec: RunSpec,
    /// Image tokens the budget keeps.
    pub keep: usize,
    pub num_image_tokens: usize,
    /// Where the method acted.
    pub stage: RunStage,
    /// Image rows each decoder layer processed, and their mean over layers.
    pub image_rows_per_layer: Vec<usize>,
    pub layer_averaged_image_rows: f64,
    /// The method's scores per original image token (null where it has none).
    pub scores: Option<Vec<Option<f32>>>,
    /// One entry per image row the last decoder layer saw: the original image tokens it carries.
    pub groups: Vec<Vec<u32>>,
    /// Image tokens that survive as themselves to the last layer, sorted.
    pub kept: Vec<u32>,
    pub answer: Answer,
    /// Log-probability of the full model's answer under this run (teacher-forced), summed and
    /// per token; absent for the full run itself.
    pub full_answer_logprob: Option<f64>,
    pub full_answer_token_logprobs: Vec<f32>,
    /// Token-level diff from the full answer to this one.
    pub diff: Vec<DiffOp>,
    pub answer_changed: bool,
    /// Where the answer first departs from the full one (token index; None: the same answer,
    /// or the full run itself).
    #[serde(default)]
    pub first_difference: Option<usize>,
    pub cost: VlmCost,
    /// The first decoder layer this run computed; earlier layers came from the cached full
    /// prefill (`num_layers`: none did). 0 for the full run and for every method acting before
    /// the decoder.
    #[serde(default)]
    pub recomputed_from_layer: usize,
    /// The first vision-tower block this run computed (a vision-side method inside the tower);
    /// None where the tower's cached run served (every other method).
    #[serde(default)]
    pub tower_recomputed_from: Option<usize>,
}

impl VlmRun {
    /// A method ran with a budget that removes tokens, yet every decoder layer saw every image
    /// row: its site lies past the model's last layer (FastV with K equal to the depth).
    pub fn removed_nothing(&self) -> bool {
        let rows = &self.image_rows_per_layer;
        self.spec.method.is_some()
            && self.keep < self.num_image_tokens
            && !rows.is_empty()
            && rows.iter().all(|&n| n >= self.num_image_tokens)
    }
}

/// A loaded VLM with its tokenizer.
pub struct Vlm {
    pub id: String,
    pub dir: PathBuf,
    pub arch: Arch,
    /// Shared: a token stream can decode while the session is busy answering.
    pub tokenizer: std::sync::Arc<tokenizers::Tokenizer>,
    /// Ids that end an answer.
    pub eos: Vec<u32>,
    /// SmolVLM's image splitting (tiles plus the global image) for images opened from now on;
    /// starts as the folder's processor says (`do_image_splitting`, on in the published
    /// SmolVLM folders). Other models ignore it.
    pub split_image: bool,
    /// How it was loaded (`--quantize`, `--dtype`).
    pub options: LoadOptions,
    /// Its linear layers as loaded: quantized, kept f32, bytes.
    pub linears: QuantCount,
    /// Where its quantized weights were read from or written to, or why not (a cached load).
    pub quant_cache: Option<String>,
}

/// The cached work for one image and question: the vision run, the full prefill (what a
/// language-side method resumes from) and the full answer.
pub struct VlmFull {
    pub image: VlmImage,
    pub prompt: Prompt,
    pub vision: VisionRun,
    pub prefill: FullPrefill,
    pub run: VlmRun,
}

impl Vlm {
    /// Whether `dir` holds a vision-language model this module reads.
    pub fn is_vlm_folder(dir: &Path) -> bool {
        arch::model_type(dir).is_some_and(|t| arch::SUPPORTED.contains(&t.as_str()))
    }

    /// Loads the folder's model in f32.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, LoadOptions::default())
    }

    /// Loads the folder's model as `options` say (quantized linear layers, dtype).
    pub fn load_with(dir: &Path, options: LoadOptions) -> Result<Self> {
        Self::load_cached(dir, options, None)
    }

    /// [`Vlm::load_with`], quantized weights cached in the folder `cache` when given
    /// ([`Arch::load_cached`]).
    pub fn load_cached(dir: &Path, options: LoadOptions, cache: Option<&Path>) -> Result<Self> {
        let Loaded { arch, options, linears, quant_cache } = Arch::load_cached(dir, options, cache)?;
        let tokenizer = crate::model::chat::load_tokenizer(dir)?;
        let eos = arch::eos_ids(dir, &tokenizer);
        let id = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        let split_image = arch.default_split();
        let tokenizer = tokenizer.into();
        Ok(Self { id, dir: dir.to_path_buf(), arch, tokenizer, eos, split_image, options, linears, quant_cache })
    }

    /// The memory guard's estimate for this model as loaded (weights, dtype, quantization, KV).
    pub fn memory_estimate(&self) -> Option<crate::model::memory::Estimate> {
        Arch::memory_estimate_with(&self.dir, self.options).ok().flatten()
    }

    pub fn num_layers(&self) -> usize {
        self.arch.lm().num_layers()
    }

    /// Decodes and prepares an image file.
    pub fn open_image(&self, path: &Path) -> Result<VlmImage> {
        let bytes = std::fs::read(path).map_err(|e| Error::image(path, format!("cannot read: {e}")))?;
        self.image_from_bytes(&bytes, path)
    }

    /// Decodes and prepares encoded image bytes; `label` names them in errors.
    pub fn image_from_bytes(&self, bytes: &[u8], label: &Path) -> Result<VlmImage> {
        self.arch.image_from_bytes(bytes, label, self.split_image)
    }

    /// The chat prompt for `question` about one image (`tiles`: SmolVLM's split), tokenised.
    pub fn prompt(&self, question: &str, tiles: (usize, usize), num_image_tokens: usize) -> Result<Prompt> {
        let text = self.arch.prompt_text(&self.dir, question, tiles)?;
        let ids = crate::model::chat::encode_prompt(&self.tokenizer, &text)?;
        let image_token = self.arch.image_token();
        let image_slots: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == image_token).collect();
        if image_slots.len() != num_image_tokens {
            return Err(Error::Config {
                field: "prompt",
                reason: format!(
                    "the prompt holds {} image tokens but the image gives {num_image_tokens} (does the question contain `<image>`?)",
                    image_slots.len()
                ),
            });
        }
        Ok(Prompt { question: question.into(), text, ids, image_slots })
    }

    /// Runs the vision side and the full model: the reference every reduced run is compared to.
    pub fn full(
        &self,
        image: VlmImage,
        question: &str,
        spec: &RunSpec,
        on_token: &mut dyn FnMut(u32),
        cancel: &Cancel,
    ) -> Result<VlmFull> {
        // The prompt and its length first: an overflow is refused before the tower runs.
        let prompt = self.prompt(question, image.tiles, self.arch.num_image_tokens(image.tiles))?;
        self.check_context(&prompt, spec.max_new_tokens)?;
        let vision = self.arch.vision(&image, cancel)?;
        debug_assert_eq!(vision.num_image_tokens(), prompt.image_slots.len());
        let spec = RunSpec { method: None, ..spec.clone() };
        let (run, prefill) = self.run_with(&prompt, &vision, &spec, Against::Nothing, on_token, cancel)?;
        let prefill = prefill.expect("the full run keeps its prefill");
        Ok(VlmFull { image, prompt, vision, prefill, run })
    }

    /// A reduced run against `full` (same image, question and answer length). The vision side
    /// comes from `full`'s cached run (a method inside the tower reruns it from its block);
    /// with [`Resume::FromCache`] the decoder resumes from the cached full prefill too: a
    /// language-side method whose first site is after decoder layer k reruns layers k+1.. only.
    pub fn run(
        &self,
        full: &VlmFull,
        spec: &RunSpec,
        resume: Resume,
        on_token: &mut dyn FnMut(u32),
        cancel: &Cancel,
    ) -> Result<VlmRun> {
        let against = Against::Full { full, resume };
        Ok(self.run_with(&full.prompt, &full.vision, spec, against, on_token, cancel)?.0)
    }

    /// The answer length that fits the model's context after this image's prompt: `max_new`, or
    /// less where the prompt leaves less room (at least 1: a prompt that fills the context is
    /// refused by [`Self::full`], with its length).
    pub fn fit_answer(&self, question: &str, image: &VlmImage, max_new: usize) -> Result<usize> {
        let Some(context) = self.arch.lm().cfg.max_position_embeddings else { return Ok(max_new) };
        let prompt = self.prompt(question, image.tiles, self.arch.num_image_tokens(image.tiles))?;
        Ok(max_new.min(context.saturating_sub(prompt.ids.len())).max(1))
    }

    /// Refuses an answer limit that does not fit the model's context after this image's
    /// prompt (where [`Self::fit_answer`] would shorten it).
    pub fn check_answer_limit(&self, question: &str, image: &VlmImage, max_new: usize) -> Result<()> {
        let prompt = self.prompt(question, image.tiles, self.arch.num_image_tokens(image.tiles))?;
        self.check_context(&prompt, max_new)
    }

    fn check_context(&self, prompt: &Prompt, max_new: usize) -> Result<()> {
        let Some(context) = self.arch.lm().cfg.max_position_embeddings else { return Ok(()) };
        if prompt.ids.len() + max_new > context {
            return Err(Error::Config {
                field: "prompt",
                reason: format!(
                    "the prompt is {} tokens ({} of them image tokens) and the answer may take {max_new} more: \
                     together more than the model's context of {context}; shorten the question or the answer limit",
                    prompt.ids.len(),
                    prompt.image_slots.len()
                ),
            });
        }
        Ok(())
    }

    fn view_layer(&self, spec: &RunSpec) -> Result<usize> {
        let layers = self.num_layers();
        let l = spec.view_layer.unwrap_or(layers / 2);
        if l >= layers {
            return Err(Error::Config {
                field: "view_layer",
                reason: format!("layer {l} is out of range 0..={}", layers - 1),
            });
        }
        Ok(l)
    }

    /// One run; the full run (`Against::Nothing`) also returns its prefill, kept for resuming.
    fn run_with(
        &self,
        prompt: &Prompt,
        vision: &VisionRun,
        spec: &RunSpec,
        against: Against<'_>,
        on_token: &mut dyn FnMut(u32),
        cancel: &Cancel,
    ) -> Result<(VlmRun, Option<FullPrefill>)> {
        let lm = self.arch.lm();
        let n = vision.num_image_tokens();
        let keep = spec.budget.resolve(n)?;
        let view_layer = self.view_layer(spec)?;
        let Start { seq, blocks, projected, stage, vision_scores, llm_reducer, tower_from } =
            self.start(prompt, vision, spec, keep, cancel)?;
        let saliency = &vision.saliency;
        let unreduced = || self.arch.sequence(prompt, vision);
        let (mut prefill, keep_full): (Prefill, Option<FullPrefill>) = match (against, llm_reducer) {
            (Against::Nothing, _) => {
                let full = decode::full_prefill(lm, seq.map_or_else(unreduced, Ok)?, saliency, view_layer, cancel)?;
                (full.prefill.clone(), Some(full))
            }
            (Against::Full { full, resume: Resume::FromCache }, Some(reducer)) => {
                (decode::resume(lm, &full.prefill, reducer, saliency, spec.positions, view_layer, cancel)?, None)
            }
            (_, reducer) => {
                let seq = seq.map_or_else(unreduced, Ok)?;
                (decode::prefill(lm, seq, reducer, saliency, spec.positions, view_layer, cancel)?, None)
            }
        };
        let full_answer = match against {
            Against::Full { full, .. } => Some(&full.run.answer),
            Against::Nothing => None,
        };
        let stage = stage.unwrap_or_else(|| llm_stage(&spec.method, &prefill, n));
        let kv_bytes_prefill = prefill.cache.bytes();
        let decoder_tokens: Vec<usize> = prefill.rows_per_layer.iter().map(Rows::len).collect();
        let scores = prefill.scores.clone().or(vision_scores);
        let scoring = prefill.clone();
        let generated =
            decode::generate(lm, &mut prefill, spec.max_new_tokens, &self.eos, view_layer, on_token, cancel)?;
        let answer =
            Answer::new(&self.tokenizer, generated.ids, generated.logprobs, generated.looks, generated.stopped_at_eos);
        let (full_answer_logprob, full_answer_token_logprobs, diff) = match full_answer {
            Some(full) => {
                let lp = decode::score_answer(lm, &scoring, &full.ids)?;
                (Some(lp.iter().map(|&v| f64::from(v)).sum()), lp, diff_tokens(&full.ids, &answer.ids))
            }
            None => (None, Vec::new(), diff_tokens(&answer.ids, &answer.ids)),
        };
        let answer_changed = full_answer.is_some_and(|f| f.ids != answer.ids);
        let first_difference = full_answer.and_then(|f| answer::first_difference(&f.ids, &answer.ids));
        let image_rows_per_layer = prefill.image_rows_per_layer();
        let last_rows = prefill.rows_per_layer.last().cloned().unwrap_or_default();
        let groups: Vec<Vec<u32>> = last_rows.image_tokens();
        let mut kept: Vec<u32> = groups.iter().filter(|g| g.len() == 1).map(|g| g[0]).collect();
        kept.sort_unstable();
        let cfg = &lm.cfg;
        let kv_dim = cfg.kv_heads() * cfg.head_dim();
        let decoder_flops = decoder_tokens
            .iter()
            .map(|&t| decoder_layer_flops(t, cfg.hidden_size, kv_dim, cfg.intermediate_size))
            .collect();
        let decode_s = generated.time_ms / 1e3;
        let run = VlmRun {
            spec: spec.clone(),
            keep,
            num_image_tokens: n,
            stage,
            layer_averaged_image_rows: image_rows_per_layer.iter().sum::<usize>() as f64
                / image_rows_per_layer.len().max(1) as f64,
            image_rows_per_layer,
            scores,
            groups,
            kept,
            full_answer_logprob,
            full_answer_token_logprobs,
            diff,
            answer_changed,
            first_difference,
            cost: VlmCost {
                encoder_flops: vision.encoder_flops(&blocks),
                projector_flops: self.arch.projector_flops(projected),
                decoder_flops,
                decoder_tokens,
                kv_bytes_prefill,
                kv_bytes_end: prefill.cache.bytes(),
                encoder_ms: vision.time_ms,
                prefill_ms: scoring.time_ms,
                decode_ms: generated.time_ms,
                tokens_per_s: if decode_s > 0.0 { answer.ids.len() as f64 / decode_s } else { 0.0 },
            },
            answer,
            recomputed_from_layer: scoring.recomputed_from,
            tower_recomputed_from: tower_from,
        };
        Ok((run, keep_full))
    }
}

/// Where a reduced run's decoder starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// From the full run's cached prefill at the method's first layer (what a ratio change
    /// costs).
    FromCache,
    /// From layer 0: the reference a resumed run must equal bit for bit, and the bench's
    /// baseline.
    FromScratch,
}

/// What a run is compared to and resumes from.
#[derive(Clone, Copy)]
enum Against<'a> {
    /// Nothing: this is the full run.
    Nothing,
    /// The full run of the same image and question, the decoder starting as `resume` says
    /// (from layer 0 where the method allows no other).
    Full { full: &'a VlmFull, resume: Resume },
}

/// A run up to the decoder: the sequence it reads and what the vision side cost.
struct Start {
    /// None: the unreduced sequence (made by the caller, or taken from the full prefill).
    seq: Option<TokenState>,
    blocks: Vec<BlockTokens>,
    /// Rows the projector (or connector) ran on.
    projected: usize,
    /// None when a language-side method will tell.
    stage: Option<RunStage>,
    vision_scores: Option<Vec<Option<f32>>>,
    llm_reducer: Option<Box<dyn Reducer>>,
    /// The first tower block a vision-side method reran (None: none).
    tower_from: Option<usize>,
}

impl Vlm {
    /// The decoder's input for `spec` (after any vision-side reduction): rows, embeddings and
    /// position ids, for inspection.
    pub fn sequence(&self, full: &VlmFull, spec: &RunSpec, cancel: &Cancel) -> Result<TokenState> {
        let keep = spec.budget.resolve(full.vision.num_image_tokens())?;
        match self.start(&full.prompt, &full.vision, spec, keep, cancel)?.seq {
            Some(seq) => Ok(seq),
            None => self.arch.sequence(&full.prompt, &full.vision),
        }
    }

    fn start(
        &self,
        prompt: &Prompt,
        vision: &VisionRun,
        spec: &RunSpec,
        keep: usize,
        cancel: &Cancel,
    ) -> Result<Start> {
        let n = vision.num_image_tokens();
        if let Some(method) = &spec.method {
            method.check(&self.arch.capabilities())?;
        }
        Ok(match &spec.method {
            None => Start {
                seq: None,
                blocks: vision.full_blocks(),
                projected: n,
                stage: Some(RunStage::Full),
                vision_scores: None,
                llm_reducer: None,
                tower_from: None,
            },
            Some(Method::Vision(cfg)) => {
                self.arch.check_unsplit(cfg, vision)?;
                let mut reducer = cfg.build(keep, &vision.context())?;
                let reduced = self.arch.reduce_vision(vision, reducer.as_mut(), cancel)?;
                let stage = Some(RunStage::At(match reduced.stage {
                    Stage::Encoder(l) => Stage::Encoder(l),
                    _ => Stage::PreLlm,
                }));
                let (seq, blocks, projected) = self.arch.reduced_sequence(prompt, vision, &reduced, spec.positions)?;
                let tower_from = (reduced.resume_at < vision.states.len() - 1).then_some(reduced.resume_at);
                let vision_scores = reduced.patch_scores;
                Start { seq: Some(seq), blocks, projected, stage, vision_scores, llm_reducer: None, tower_from }
            }
            Some(Method::Llm(cfg)) => {
                let ctx = Context::decoder(self.num_layers(), n, vision.grid);
                Start {
                    seq: None,
                    blocks: vision.full_blocks(),
                    projected: n,
                    stage: None,
                    vision_scores: None,
                    llm_reducer: Some(cfg.build(keep, &ctx)?),
                    tower_from: None,
                }
            }
        })
    }
}

/// The image tokens each row of the unreduced sequence carries, None for a text row
/// (`slot_token`: the image token each image slot holds).
fn full_sequence_rows(prompt: &Prompt, slot_token: &[u32]) -> Vec<Option<Vec<u32>>> {
    let mut rows = vec![None; prompt.ids.len()];
    for (&slot, &token) in prompt.image_slots.iter().zip(slot_token) {
        rows[slot] = Some(vec![token]);
    }
    rows
}

/// `pre_llm` or `llm(k)` from where the language-side method first changed the rows.
fn llm_stage(method: &Option<Method>, prefill: &Prefill, num_image_tokens: usize) -> RunStage {
    let Some(Method::Llm(_)) = method else { return RunStage::Full };
    let counts = prefill.image_rows_per_layer();
    if counts.first().is_some_and(|&c| c != num_image_tokens) {
        return RunStage::At(Stage::PreLlm);
    }
    match counts.windows(2).position(|w| w[1] != w[0]) {
        Some(k) => RunStage::At(Stage::Llm(k)),
        None => RunStage::NothingRemoved,
    }
}

/// One budget of a ratio sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepPoint {
    pub removed: f64,
    pub keep: usize,
    pub answer: String,
    pub ids: Vec<u32>,
    pub changed: bool,
    /// Where the answer first departs from the full one (token index).
    pub first_difference: Option<usize>,
    pub full_answer_logprob: Option<f64>,
}

impl SweepPoint {
    /// The point of `run`, a reduced run at `removed`.
    pub fn of(removed: f64, run: &VlmRun) -> Self {
        Self {
            removed,
            keep: run.keep,
            first_difference: run.first_difference,
            changed: run.answer_changed,
            answer: run.answer.text.clone(),
            ids: run.answer.ids.clone(),
            full_answer_logprob: run.full_answer_logprob,
        }
    }
}

/// The removed fractions a sweep visits by default: 0 %, then the shared presets in between.
pub fn sweep_fractions() -> Vec<f64> {
    let mut f = vec![0.0, 0.25, 0.5];
    f.extend(crate::reduce::budget::PRESETS_REMOVED);
    f
}

impl crate::session::Session {
    /// Runs `spec`'s method on the open image at each removed fraction (ascending), through the
    /// session's runs (a fraction run before answers from its cache), reporting each point as it
    /// lands. The answer's first change is the first point with `changed`.
    pub fn sweep_answers(
        &mut self,
        spec: &RunSpec,
        fractions: &[f64],
        on_point: &mut dyn FnMut(&SweepPoint),
        cancel: &Cancel,
    ) -> Result<Vec<SweepPoint>> {
        let mut points = Vec::with_capacity(fractions.len());
        for &removed in fractions {
            let s = RunSpec { budget: Budget::RemoveFraction(removed), ..spec.clone() };
            let run = self.answer_reduced(&s, &mut |_| {}, cancel)?;
            let point = SweepPoint::of(removed, &run);
            on_point(&point);
            points.push(point);
        }
        Ok(points)
    }
}

/// The smallest removed fraction at which the answer changed.
pub fn first_change(points: &[SweepPoint]) -> Option<f64> {
    points.iter().filter(|p| p.changed).map(|p| p.removed).reduce(f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_read_back_as_vlm_json_writes_them() {
        let stages = [
            (RunStage::Full, "full"),
            (RunStage::At(Stage::Encoder(3)), "encoder(3)"),
            (RunStage::At(Stage::PreLlm), "pre_llm"),
            (RunStage::At(Stage::Llm(12)), "llm(12)"),
            (RunStage::NothingRemoved, "none (nothing removed)"),
        ];
        for (stage, text) in stages {
            assert_eq!(serde_json::to_string(&stage).unwrap(), format!("{text:?}"));
            assert_eq!(serde_json::from_str::<RunStage>(&format!("{text:?}")).unwrap(), stage);
        }
        assert!(serde_json::from_str::<RunStage>("\"llm(x)\"").is_err());
        assert!(serde_json::from_str::<RunStage>("\"middle\"").is_err());
    }
}
