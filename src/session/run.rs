//! Reduced runs against a cached full run.
//!
//! # Design
//! Question: how can a ratio slider move in well under 100 ms?
//! Decision: [`Session::full_run`] runs the unreduced model once per image and keeps the state
//! after every block plus all attention and keys. [`Session::run_against`] resumes from the state at
//! the reducer's first site, so changing the ratio or a parameter recomputes only what follows.
//! Pre-LLM methods (which act on the encoder output) only re-run the output head.

use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::reduced_maps::{BlockSeen, LazyMaps};
use super::{Output, OutputKind, Session, ms_since};
use crate::analysis::cost::{BlockTokens, encoder_flops};
use crate::analysis::metrics::{self, Fidelity};
use crate::model::layers::AttnRecord;
use crate::model::{
    HookPoint, Intervene, Needs, NoIntervention, OutputHead, Probe, TokenState, Trace, VisionTransformer,
};
use crate::reduce::{
    Budget, Capabilities, Context, Method, PositionMode, Reducer, ReducerConfig, Site, SiteView, Stage,
};
use crate::session::vlm::VlmRun;
use crate::{Cancel, Error, Result};

/// What fills the patches no surviving token stands for when the output head needs the full grid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropFill {
    /// Zero features.
    #[default]
    Zeros,
    /// The mean of the surviving tokens' features.
    MeanToken,
}

/// Everything that defines a run, for every model: plain data, stored in sidecars, `run.json`
/// and `vlm.json`. Encoders read `method` (a vision-side one), `budget`, `fill` and
/// `positions`; vision-language models `method` (either side, or none: the full model),
/// `budget`, `positions`, `max_new_tokens` and `view_layer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSpec {
    /// The method; None: the unreduced model. Written `reducer` (`vlm.json` before one spec
    /// served both called it `method`).
    #[serde(rename = "reducer", alias = "method")]
    pub method: Option<Method>,
    pub budget: Budget,
    /// Encoders: what fills dropped patches for the saliency head.
    pub fill: DropFill,
    /// Position ids of the rows left after a reduction (VLMs: before the decoder; inside it,
    /// rows always keep theirs: the cached keys were rotated with them).
    pub positions: PositionMode,
    /// VLMs: the answer's length limit (written only where it is not the default).
    #[serde(skip_serializing_if = "is_default_answer_limit")]
    pub max_new_tokens: usize,
    /// VLMs: the decoder layer whose attention the text-to-image views read (None: the middle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view_layer: Option<usize>,
}

/// Answer tokens a VLM run may generate unless its spec says otherwise.
pub const DEFAULT_ANSWER_LIMIT: usize = 32;

fn is_default_answer_limit(n: &usize) -> bool {
    *n == DEFAULT_ANSWER_LIMIT
}

impl Default for RunSpec {
    fn default() -> Self {
        Self {
            method: None,
            budget: Budget::default(),
            fill: DropFill::default(),
            positions: PositionMode::default(),
            max_new_tokens: DEFAULT_ANSWER_LIMIT,
            view_layer: None,
        }
    }
}

impl RunSpec {
    /// A run of the vision-side method `reducer` at `budget`.
    pub fn vision(reducer: ReducerConfig, budget: Budget) -> Self {
        Self { method: Some(Method::Vision(reducer)), budget, ..Self::default() }
    }

    /// The vision-side method, if that is what the spec names.
    pub fn reducer(&self) -> Option<&ReducerConfig> {
        match &self.method {
            Some(Method::Vision(c)) => Some(c),
            _ => None,
        }
    }

    pub fn reducer_mut(&mut self) -> Option<&mut ReducerConfig> {
        match &mut self.method {
            Some(Method::Vision(c)) => Some(c),
            _ => None,
        }
    }

    /// The vision-side method an encoder run needs, or why this spec cannot run on an encoder.
    pub fn encoder_reducer(&self) -> Result<&ReducerConfig> {
        match &self.method {
            Some(Method::Vision(c)) => Ok(c),
            Some(m) => Err(m.check(&Capabilities::ENCODER).err().unwrap_or_else(|| Error::Config {
                field: "reducer",
                reason: format!("{} does not run on an image encoder", m.label()),
            })),
            None => Err(Error::Config {
                field: "reducer",
                reason: "an image encoder run needs a method (the full run is the open image's)".into(),
            }),
        }
    }
}

/// The unreduced run of one image, kept so reduced runs can resume from any block.
pub struct FullRun {
    /// `states[l]`: the tokens after `l` blocks (`l = 0..=num_layers`).
    pub states: Vec<TokenState>,
    /// Attention probabilities and keys of every block.
    pub trace: Trace,
    /// Final-norm features `[1, tokens, dim]`.
    pub features: Tensor,
    /// The model's output (saliency map, classes or zero-shot scores).
    pub output: Output,
    /// Time of the encoder alone, and of the whole run (encoder + output head).
    pub encoder_ms: f64,
    pub time_ms: f64,
}

impl FullRun {
    pub fn num_layers(&self) -> usize {
        self.states.len() - 1
    }

    fn block_tokens(&self) -> BlockTokens {
        let n = self.states[0].num_tokens();
        BlockTokens { attn: n, mlp: n }
    }
}

/// An image encoder's reduced run, in the machine-readable form of `run.json`: its output is a
/// saliency map, class probabilities or zero-shot scores ([`Output::kind`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncoderRun {
    pub spec: RunSpec,
    pub stage: Stage,
    /// Visual tokens kept.
    pub keep: usize,
    pub num_patches: usize,
    /// The method's score per original patch at its first site (null where it has none).
    pub scores: Option<Vec<Option<f32>>>,
    /// One entry per surviving visual token, in output order: the patches it stands for.
    pub groups: Vec<Vec<u32>>,
    /// Patches that survive as themselves (singleton groups), sorted.
    pub kept: Vec<u32>,
    /// Tokens (CLS included) entering each block's attention.
    pub tokens_per_layer: Vec<usize>,
    /// The first block this run computed; earlier blocks came from the cached full run
    /// (`num_layers` = only the output head ran).
    pub recomputed_from_block: usize,
    pub flops: f64,
    pub flops_full: f64,
    pub output: Output,
    pub fidelity: Fidelity,
    /// Per patch, cosine of reduced and full final features (null where dropped).
    pub patch_cosine: Vec<Option<f32>>,
    pub timings_ms: RunTimings,
    /// The reduced model's own attention, rollout and norms on the patch grid (the app's
    /// "reduced model" source; not part of `run.json`). None when no block changed (the
    /// method acts on the encoder output): the full model's maps are the reduced model's.
    /// Computed when first asked.
    #[serde(skip)]
    pub maps: Option<LazyMaps>,
}

impl EncoderRun {
    /// The vision-side method this run ran (every encoder run has one: [`RunSpec::encoder_reducer`]).
    pub fn reducer(&self) -> &ReducerConfig {
        self.spec.reducer().expect("an encoder run is made from a vision-side method")
    }
}

/// What [`Session::run`] answers, for every model: an encoder's reduced run (saliency map,
/// class probabilities or zero-shot scores) or a vision-language model's answer. Serialised as
/// its run (`run.json`, `vlm.json`'s runs), and read back from either.
#[derive(Debug, Clone)]
pub enum RunResult {
    Encoder(Arc<EncoderRun>),
    Answer(Arc<VlmRun>),
}

impl RunResult {
    pub fn spec(&self) -> &RunSpec {
        match self {
            Self::Encoder(r) => &r.spec,
            Self::Answer(r) => &r.spec,
        }
    }

    pub fn encoder(&self) -> Option<&Arc<EncoderRun>> {
        match self {
            Self::Encoder(r) => Some(r),
            Self::Answer(_) => None,
        }
    }

    pub fn answer(&self) -> Option<&Arc<VlmRun>> {
        match self {
            Self::Answer(r) => Some(r),
            Self::Encoder(_) => None,
        }
    }

    /// Image tokens (patches) the budget keeps.
    pub fn keep(&self) -> usize {
        match self {
            Self::Encoder(r) => r.keep,
            Self::Answer(r) => r.keep,
        }
    }

    /// One entry per surviving image token: the original tokens it stands for.
    pub fn groups(&self) -> &[Vec<u32>] {
        match self {
            Self::Encoder(r) => &r.groups,
            Self::Answer(r) => &r.groups,
        }
    }
}

impl Serialize for RunResult {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Encoder(r) => r.serialize(serializer),
            Self::Answer(r) => r.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for RunResult {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        /// An answer has `answer`, an encoder run `output`: the first that reads is the one.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Encoder(EncoderRun),
            Answer(VlmRun),
        }
        Ok(match Either::deserialize(deserializer)? {
            Either::Encoder(r) => Self::Encoder(Arc::new(r)),
            Either::Answer(r) => Self::Answer(Arc::new(r)),
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunTimings {
    /// This reduced run (from the cached prefix).
    pub run_ms: f64,
    /// The full run it resumed from.
    pub full_ms: f64,
}

impl Session {
    /// Runs the unreduced model, keeping every intermediate state, attention and keys.
    pub fn full_run(&self, pixels: &Tensor, cancel: &Cancel) -> Result<FullRun> {
        let start = Instant::now();
        let enc = &self.model()?.encoder;
        let (states, trace) = encoder_states(enc, pixels, enc.num_layers(), cancel)?;
        let state = states.last().expect("the embedding state").clone();
        let features = enc.final_norm(&state)?;
        let encoder_ms = ms_since(start);
        let mut normed = state.clone();
        normed.hidden = features.clone();
        let output = self.output(&features, &normed)?;
        Ok(FullRun { states, trace, features, output, encoder_ms, time_ms: ms_since(start) })
    }

    /// Runs `spec` on an encoder against `full`, re-computing only what follows the reducer's
    /// first site (uncached: [`Session::run`] serves the open image from its cache).
    pub fn run_against(&self, full: &FullRun, spec: &RunSpec, cancel: &Cancel) -> Result<EncoderRun> {
        let start = Instant::now();
        let enc = &self.model()?.encoder;
        let layers = full.num_layers();
        let first = &full.states[0];
        let ctx = Context::encoder(layers, first.grid, first.num_special);
        let keep = spec.budget.resolve(ctx.num_patches())?;
        let mut reducer = spec.encoder_reducer()?.build(keep, &ctx)?;
        let cached = EncoderCache { states: &full.states, trace: &full.trace, features: &full.features };
        let reduced = reduce_encoder(enc, &cached, reducer.as_mut(), spec.positions, true, true, cancel)?;
        // A method acting on the encoder output changes no block: its maps are the full model's.
        let maps = match reduced.resume_at < layers {
            true => Some(self.maps_of(full, reduced.resume_at, reduced.seen)?),
            false => None,
        };
        let (out, stage, resume_at, blocks) = (reduced.out, reduced.stage, reduced.resume_at, reduced.blocks);
        let grid_features = scatter(&out, spec.fill)?;
        let output = self.output(&grid_features, &out)?;
        let (fidelity, patch_cosine) = fidelity(full, &out, &grid_features, &output)?;
        let cfg = &enc.cfg;
        let groups: Vec<Vec<u32>> = out.source[out.num_special..].to_vec();
        let mut kept: Vec<u32> = groups.iter().filter(|g| g.len() == 1).map(|g| g[0]).collect();
        kept.sort_unstable();
        Ok(EncoderRun {
            spec: spec.clone(),
            stage,
            keep,
            num_patches: ctx.num_patches(),
            scores: reduced.patch_scores,
            groups,
            kept,
            tokens_per_layer: blocks.iter().map(|b| b.attn).collect(),
            recomputed_from_block: resume_at,
            flops: encoder_flops(&blocks, cfg.hidden_size, cfg.intermediate_size),
            flops_full: encoder_flops(&vec![full.block_tokens(); layers], cfg.hidden_size, cfg.intermediate_size),
            output,
            fidelity,
            patch_cosine,
            timings_ms: RunTimings { run_ms: ms_since(start), full_ms: full.time_ms },
            maps,
        })
    }

    /// The reduced run's attention views: blocks before `resume_at` are the full run's, the
    /// rest what the reduced run `seen`.
    fn maps_of(&self, full: &FullRun, resume_at: usize, seen: Vec<BlockSeen>) -> Result<LazyMaps> {
        let first = &full.states[0];
        let mut blocks = (0..resume_at.min(full.num_layers()))
            .map(|l| {
                let probs = full.trace.require(HookPoint::AttnProbs(l))?.clone();
                BlockSeen::new(probs, first.source.clone(), &full.states[l + 1].hidden, first.source.clone())
            })
            .collect::<Result<Vec<_>>>()?;
        blocks.extend(seen);
        Ok(LazyMaps::new(blocks, first.num_special, first.num_patches()))
    }

    /// The model's output. The saliency head reads `grid_features` (`[1, special + rows*cols,
    /// dim]`: every patch, dropped ones filled); the other heads read the final-norm tokens as
    /// they are (`tokens.hidden`): CLS for classifiers and CLIP, all tokens for SigLIP's pooling.
    fn output(&self, grid_features: &Tensor, tokens: &TokenState) -> Result<Output> {
        let probabilities = |kind: OutputKind, probs: Vec<f32>, labels: Vec<String>| Output {
            kind,
            shape: [1, probs.len()],
            values: probs,
            labels,
        };
        match &self.model()?.head {
            OutputHead::Saliency(decoder) => {
                let patches = grid_features.narrow(1, tokens.num_special, tokens.num_patches())?;
                let map = decoder.forward(&patches, tokens.grid)?.squeeze(0)?.squeeze(0)?;
                let (h, w) = map.dims2()?;
                Ok(Output {
                    kind: OutputKind::Saliency,
                    shape: [h, w],
                    values: map.flatten_all()?.to_vec1()?,
                    labels: vec![],
                })
            }
            OutputHead::Classes { head, labels } => {
                let logits = head.logits(&tokens.hidden)?.expect("a classifier head");
                let probs = candle_nn::ops::softmax_last_dim(&logits)?.squeeze(0)?.to_vec1()?;
                Ok(probabilities(OutputKind::Classes, probs, labels.clone()))
            }
            OutputHead::ZeroShot(zs) => {
                if self.labels.is_empty() {
                    return Err(crate::Error::Config {
                        field: "prompt",
                        reason: "this model scores labels: give them in the prompt, comma-separated (\"a cat, a dog\")"
                            .into(),
                    });
                }
                let image = zs.image_embedding(&tokens.hidden)?;
                let labels: Vec<&str> = self.labels.iter().map(String::as_str).collect();
                Ok(probabilities(OutputKind::ZeroShot, zs.scores(&image, &labels)?.probs, self.labels.clone()))
            }
            OutputHead::None => Ok(Output { kind: OutputKind::None, shape: [0, 0], values: vec![], labels: vec![] }),
        }
    }
}

/// Puts every surviving token's features back on the patches it stands for:
/// `[1, special + tokens, d]` -> `[1, special + rows*cols, d]`; uncovered patches get `fill`.
fn scatter(out: &TokenState, fill: DropFill) -> Result<Tensor> {
    let (n, s) = (out.num_tokens(), out.num_special);
    let fill_row = match fill {
        DropFill::Zeros => out.hidden.narrow(1, 0, 1)?.zeros_like()?,
        DropFill::MeanToken => out.hidden.narrow(1, s, n - s)?.mean_keepdim(1)?,
    };
    let rows = Tensor::cat(&[&out.hidden, &fill_row], 1)?; // row n = the fill
    let mut index: Vec<u32> = (0..s as u32).collect();
    let mut patch_row = vec![n as u32; out.num_patches()];
    for (t, src) in out.source.iter().enumerate().skip(s) {
        for &p in src {
            patch_row[p as usize] = t as u32;
        }
    }
    index.extend(patch_row);
    let index = Tensor::from_vec(index, s + out.num_patches(), out.hidden.device())?;
    Ok(rows.index_select(&index, 1)?)
}

fn fidelity(full: &FullRun, out: &TokenState, grid: &Tensor, output: &Output) -> Result<(Fidelity, Vec<Option<f32>>)> {
    let s = out.num_special;
    let full_rows = full.features.squeeze(0)?.to_vec2::<f32>()?;
    let grid_rows = grid.squeeze(0)?.to_vec2::<f32>()?;
    let mut covered = vec![false; out.num_patches()];
    for &p in out.source.iter().flatten() {
        covered[p as usize] = true;
    }
    let patch_cosine: Vec<Option<f32>> = (0..out.num_patches())
        .map(|p| covered[p].then(|| metrics::cosine(&full_rows[s + p], &grid_rows[s + p]) as f32))
        .collect();
    let present: Vec<f64> = patch_cosine.iter().flatten().map(|&c| f64::from(c)).collect();
    let (a, b) = (&full.output.values, &output.values);
    // For class-like outputs: does the answer stay, and how far did the distribution move.
    let classes = !output.is_map() && !a.is_empty();
    // KL only between distributions (softmax outputs); SigLIP's labels are independent sigmoids.
    let distribution = |v: &[f32]| (v.iter().sum::<f32>() - 1.0).abs() < 1e-3;
    let kl_applies = classes && distribution(a) && distribution(b);
    let argmax = |v: &[f32]| v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best });
    let cls_cosine = if s > 0 { metrics::cosine(&full_rows[0], &grid_rows[0]) } else { f64::NAN };
    Ok((
        Fidelity {
            output_l1: metrics::mean_abs_diff(a, b),
            output_pearson: metrics::pearson(a, b),
            output_iou_top20: metrics::top_iou(a, b, 0.2),
            cls_cosine,
            patch_cosine_mean: present.iter().sum::<f64>() / present.len().max(1) as f64,
            top1_agrees: classes.then(|| argmax(a) == argmax(b)),
            kl_divergence: kl_applies.then(|| metrics::kl(a, b)),
        },
        patch_cosine,
    ))
}

/// Runs `blocks` blocks of `enc` on `pixels`, keeping the state after each (`blocks + 1`
/// states, the embedding first) and every block's attention and keys.
pub(crate) fn encoder_states(
    enc: &VisionTransformer,
    pixels: &Tensor,
    blocks: usize,
    cancel: &Cancel,
) -> Result<(Vec<TokenState>, Trace)> {
    let mut probe = Probe::attention(blocks);
    for l in 0..blocks {
        probe = probe.with(HookPoint::Keys(l));
    }
    let mut trace = Trace::default();
    let mut state = enc.embed(pixels)?;
    let mut states = vec![state.clone()];
    for l in 0..blocks {
        enc.run_blocks(&mut state, l + 1, &probe, &mut trace, &mut NoIntervention, cancel)?;
        states.push(state.clone());
    }
    Ok((states, trace))
}

/// An unreduced encoder run to resume from: `states[l]` after `l` blocks, the attention and keys
/// of every block, and the output features (`states.last()`, final-normed where the model does).
pub(crate) struct EncoderCache<'a> {
    pub states: &'a [TokenState],
    pub trace: &'a Trace,
    pub features: &'a Tensor,
}

/// An encoder run with a vision-side reducer applied.
pub(crate) struct ReducedEncoder {
    /// The output tokens (hidden = output features), with provenance.
    pub out: TokenState,
    pub stage: Stage,
    /// The first block re-computed (`num_layers` = none).
    pub resume_at: usize,
    /// Tokens each block saw.
    pub blocks: Vec<BlockTokens>,
    /// The first plan's scores, per original patch.
    pub patch_scores: Option<Vec<Option<f32>>>,
    /// With `record`: what each re-computed block attended over, from `resume_at` on.
    pub seen: Vec<BlockSeen>,
}

/// Runs `reducer` through the encoder, resuming from `cached` at its first site. `final_norm`:
/// whether the output features are the final norm of the last state (a ViT's head) or the last
/// state itself (LLaVA reads a middle layer's raw hidden states). `record`: keep each
/// re-computed block's attention and token sources ([`ReducedEncoder::seen`]).
pub(crate) fn reduce_encoder(
    enc: &VisionTransformer,
    cached: &EncoderCache<'_>,
    reducer: &mut dyn Reducer,
    positions: PositionMode,
    final_norm: bool,
    record: bool,
    cancel: &Cancel,
) -> Result<ReducedEncoder> {
    let layers = cached.states.len() - 1;
    let sites = reducer.sites();
    let stage = match sites.first() {
        Some(Site::MidBlock(l) | Site::AfterBlock(l)) => Stage::Encoder(*l),
        _ => Stage::PreLlm,
    };
    let mut apply = Apply::new(reducer, &sites, cached.trace, positions);
    apply.record = record;
    let full_tokens = BlockTokens { attn: cached.states[0].num_tokens(), mlp: cached.states[0].num_tokens() };

    // Resume from the cached state at the first site.
    let (mut state, resume_at) = match sites.first() {
        Some(&Site::MidBlock(l)) => (cached.states[l].clone(), l),
        Some(&Site::AfterBlock(l)) => {
            let mut state = cached.states[l + 1].clone();
            let record = AttnRecord {
                probs: cached.trace.get(HookPoint::AttnProbs(l)).cloned(),
                keys: cached.trace.get(HookPoint::Keys(l)).cloned(),
            };
            apply.at(Site::AfterBlock(l), &mut state, &record)?;
            (state, l + 1)
        }
        // The output (a vision-side reducer has no decoder sites).
        _ => (cached.states[layers].clone(), layers),
    };
    let mut blocks = vec![full_tokens; resume_at];
    let probe = if record { Probe::attention(layers) } else { Probe::default() };
    enc.run_blocks(&mut state, layers, &probe, &mut Trace::default(), &mut apply, cancel)?;
    blocks.append(&mut apply.blocks);

    let mut out = state.clone();
    out.hidden = if resume_at == layers && out.num_tokens() == cached.states[layers].num_tokens() {
        cached.features.clone() // nothing changed before the output: reuse the exact features
    } else if final_norm {
        enc.final_norm(&state)?
    } else {
        state.hidden.clone()
    };
    apply.at(Site::EncoderOutput, &mut out, &AttnRecord::default())?;
    cancel.check()?;
    Ok(ReducedEncoder { out, stage, resume_at, blocks, patch_scores: apply.patch_scores, seen: apply.seen })
}

/// Bridges a [`Reducer`] to the encoder's [`Intervene`] hook: asks for plans at the reducer's
/// sites, applies them, and counts the tokens each block saw.
struct Apply<'a> {
    reducer: &'a mut dyn Reducer,
    sites: &'a [Site],
    full_trace: &'a Trace,
    positions: PositionMode,
    /// The first plan's scores, per original patch.
    patch_scores: Option<Vec<Option<f32>>>,
    blocks: Vec<BlockTokens>,
    attn_tokens: usize,
    /// Keep what each block attended over (`seen`); `attended`: this block's attention and
    /// token sources, until its output is known.
    record: bool,
    attended: Option<(Tensor, Vec<Vec<u32>>)>,
    seen: Vec<BlockSeen>,
}

impl<'a> Apply<'a> {
    fn new(reducer: &'a mut dyn Reducer, sites: &'a [Site], full_trace: &'a Trace, positions: PositionMode) -> Self {
        Self {
            reducer,
            sites,
            full_trace,
            positions,
            patch_scores: None,
            blocks: Vec::new(),
            attn_tokens: 0,
            record: false,
            attended: None,
            seen: Vec::new(),
        }
    }

    fn at(&mut self, site: Site, state: &mut TokenState, attn: &AttnRecord) -> Result<()> {
        if !self.sites.contains(&site) {
            return Ok(());
        }
        let plan =
            self.reducer.plan(&SiteView { site, state, attn, full_trace: self.full_trace, vision_saliency: &[] })?;
        if self.patch_scores.is_none() {
            self.patch_scores = plan.scores.as_ref().map(|scores| {
                let mut per_patch = vec![None; state.num_patches()];
                for (t, src) in state.source.iter().enumerate() {
                    for &p in src {
                        per_patch[p as usize] = Some(scores[t]).filter(|v| v.is_finite());
                    }
                }
                per_patch
            });
        }
        *state = plan.apply(state, self.positions)?;
        if self.reducer.proportional_attention() {
            state.proportional_attention = true;
        }
        Ok(())
    }
}

impl Intervene for Apply<'_> {
    fn needs(&self, layer: usize) -> Needs {
        self.reducer.needs(layer)
    }

    fn after_attention(&mut self, layer: usize, state: &mut TokenState, attn: &AttnRecord) -> Result<()> {
        self.attn_tokens = state.num_tokens();
        if self.record
            && let Some(probs) = &attn.probs
        {
            self.attended = Some((probs.clone(), state.source.clone()));
        }
        self.at(Site::MidBlock(layer), state, attn)
    }

    fn after_block(&mut self, layer: usize, state: &mut TokenState, attn: &AttnRecord) -> Result<()> {
        self.blocks.push(BlockTokens { attn: self.attn_tokens, mlp: state.num_tokens() });
        if let Some((probs, sources)) = self.attended.take() {
            self.seen.push(BlockSeen::new(probs, sources, &state.hidden, state.source.clone())?);
        }
        self.at(Site::AfterBlock(layer), state, attn)
    }
}
