//! The decoder side of one VLM run: prefill with a language-side reducer acting between layers,
//! greedy decoding that records what each new word looked at, and the teacher-forced score of
//! another answer.
//!
//! # Design
//! Question: where do pruned tokens go inside the language model, and how does a ratio change
//! avoid re-running the layers it cannot have changed?
//! Decision: the reducer acts through the ViT's [`Intervene`] hook, after each decoder layer
//! ([`Llama::run_layers`]). The rows are a [`TokenState`] (roles: text or image); after a reducer's
//! site its plan is applied by `reduce/plan.rs`, as in the encoder, which gathers the surviving
//! rows' hidden states and position ids (merged rows are weighted means at their first member's
//! place), so deeper layers never see, nor cache, the dropped tokens; the layers before keep
//! their full KV entries, as FastV does. Rows carry the original image tokens they stand for
//! (`source`), so every later view maps back to the image grid. The unreduced prefill ([`full_prefill`]) keeps the hidden states
//! entering every layer and the KV cache; [`resume`] starts a method whose first site is after
//! layer k from there and reruns only layers k+1.. (layer k's attention, if the method reads it,
//! is recomputed from its cached input and keys: [`Llama::attention_from_cache`]). A method that
//! acts before layer 0 changes every layer's input and reruns them all. [`prefill`] is the run
//! from scratch that resuming must equal bit for bit.
//! Trade-off: the full prefill holds `num_layers` hidden-state tensors besides its KV cache
//! (SmolVLM-256M, 1,000 rows: about 70 MB); no layer's full attention is stored.

use std::time::Instant;

use candle_core::{D, DType, Tensor};

use crate::model::layers::AttnRecord;
use crate::model::llama::{DecoderState, KvCache, Llama};
use crate::model::{HookPoint, Intervene, Needs, NoIntervention, Probe, Role, TokenState, Trace};
use crate::reduce::{PositionMode, Reducer, Site, SiteView};
use crate::{Cancel, Error, Result};

/// A text-only prompt (`ids`) at positions 0..n, as the decoder's rows.
pub fn text_sequence(lm: &Llama, ids: &[u32]) -> Result<TokenState> {
    Ok(TokenState::sequence(lm.embed(ids)?, vec![None; ids.len()], (0, 0)))
}

/// The rows a decoder layer processed: each row's role and the original image tokens it stands
/// for (a [`TokenState`]'s provenance without its hidden states, which the layers do not keep).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows {
    pub roles: Vec<Role>,
    pub source: Vec<Vec<u32>>,
}

impl Rows {
    pub fn of(state: &TokenState) -> Self {
        Self { roles: state.roles.clone(), source: state.source.clone() }
    }

    pub fn len(&self) -> usize {
        self.roles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roles.is_empty()
    }

    pub fn image_count(&self) -> usize {
        self.roles.iter().filter(|&&r| r == Role::Image).count()
    }

    /// The image rows' original image tokens, in order.
    pub fn image_tokens(&self) -> Vec<Vec<u32>> {
        self.roles.iter().zip(&self.source).filter(|(r, _)| **r == Role::Image).map(|(_, s)| s.clone()).collect()
    }
}

/// What a prefill leaves for decoding and for the views.
#[derive(Clone)]
pub struct Prefill {
    pub cache: KvCache,
    /// The last layer's output for the rows it processed, `[1, n, d]` (before the final norm).
    pub output: Tensor,
    /// The rows each layer processed (`num_layers` entries).
    pub rows_per_layer: Vec<Rows>,
    /// Position ids of the rows the last layer processed.
    pub positions: Vec<u32>,
    /// The position id of the first generated token.
    pub next_position: u32,
    /// The last prompt row's attention at the view layer, mean over heads, per original image
    /// token (None where no row carries it): what the first answer token looked at.
    pub first_look: Vec<Option<f32>>,
    /// The reducer's scores at its first site, per original image token.
    pub scores: Option<Vec<Option<f32>>>,
    /// The prefill's time: for a resumed one, the cached layers count with the time they took
    /// in the full prefill (the time of the model this prefill stands for).
    pub time_ms: f64,
    /// Per layer, `time_ms` so far at its end (plan included).
    pub layer_end_ms: Vec<f64>,
    /// The first layer this prefill computed; earlier layers came from the cached full prefill
    /// (`num_layers`: none was recomputed).
    pub recomputed_from: usize,
}

impl Prefill {
    /// The last prompt row's output, `[1, 1, d]`.
    pub fn last_hidden(&self) -> Result<Tensor> {
        let n = self.output.dim(1)?;
        Ok(self.output.narrow(1, n - 1, 1)?)
    }

    /// Image rows each layer processed.
    pub fn image_rows_per_layer(&self) -> Vec<usize> {
        self.rows_per_layer.iter().map(Rows::image_count).collect()
    }
}

/// The unreduced prefill, kept with what a resumed run needs.
#[derive(Clone)]
pub struct FullPrefill {
    pub prefill: Prefill,
    /// Hidden states entering each layer, `[1, n, d]` (`num_layers` entries; `[0]` is the input
    /// embeddings), in the decoder's cache dtype (f16 under `--quantize`, exactly: see
    /// [`Llama::cache_dtype`]).
    pub inputs: Vec<Tensor>,
    /// The rows entering layer 0 (every layer's, unreduced), with the input embeddings.
    pub rows: TokenState,
    /// The layer whose attention `prefill.first_look` read.
    pub view_layer: usize,
}

impl FullPrefill {
    /// The sequence the full prefill read.
    pub fn sequence(&self) -> TokenState {
        self.rows.clone()
    }
}

/// Per original image token, the value of the row that carries it (None if none does; text rows
/// carry none).
fn per_image_token(source: &[Vec<u32>], values: &[f32], num_image_tokens: usize) -> Vec<Option<f32>> {
    let mut out = vec![None; num_image_tokens];
    for (tokens, &v) in source.iter().zip(values) {
        for &t in tokens {
            out[t as usize] = Some(v).filter(|v| v.is_finite());
        }
    }
    out
}

/// The last query's attention `[1, heads, q, keys]`, mean over heads, over the first
/// `rows.len()` keys, per original image token.
fn look(probs: &Tensor, rows: &Rows, num_image_tokens: usize) -> Result<Vec<Option<f32>>> {
    let q = probs.dim(2)?;
    let last = probs.narrow(2, q - 1, 1)?.mean(1)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(per_image_token(&rows.source, &last[..rows.len()], num_image_tokens))
}

/// A reducer in the prefill: asks for plans at its sites and has `reduce/plan.rs` apply them to
/// the rows and the decoder state, recording the rows and the time of every layer.
struct Method<'r> {
    reducer: Option<Box<dyn Reducer>>,
    sites: Vec<Site>,
    vision_saliency: &'r [f32],
    /// The first plan's scores, per original image token.
    scores: Option<Vec<Option<f32>>>,
    /// The rows now (those the next layer reads); their hidden states and position ids are
    /// brought up to date from the decoder state at each site.
    rows: TokenState,
    rows_per_layer: Vec<Rows>,
    layer_end_ms: Vec<f64>,
    /// Where the first answer token's look over the image is read.
    view_layer: usize,
    /// Time already spent before `start` (a resumed prefill: the cached layers' time).
    offset_ms: f64,
    start: Instant,
}

impl<'r> Method<'r> {
    fn new(
        reducer: Option<Box<dyn Reducer>>,
        vision_saliency: &'r [f32],
        rows: TokenState,
        view_layer: usize,
        offset_ms: f64,
    ) -> Self {
        let sites = reducer.as_ref().map(|r| r.sites()).unwrap_or_default();
        Self {
            reducer,
            sites,
            vision_saliency,
            scores: None,
            rows,
            rows_per_layer: Vec::new(),
            layer_end_ms: Vec::new(),
            view_layer,
            offset_ms,
            start: Instant::now(),
        }
    }

    fn ms(&self) -> f64 {
        self.offset_ms + self.start.elapsed().as_secs_f64() * 1e3
    }

    /// Whether the plan after `layer` reads that layer's attention.
    fn needs_attention(&self, layer: usize) -> bool {
        self.sites.contains(&Site::AfterLayer(layer)) && self.reducer.as_ref().is_some_and(|r| r.needs(layer).probs)
    }

    fn at(&mut self, site: Site, state: &mut DecoderState, attn: &AttnRecord, mode: PositionMode) -> Result<()> {
        let Some(reducer) = self.reducer.as_deref_mut() else { return Ok(()) };
        if !self.sites.contains(&site) {
            return Ok(());
        }
        self.rows.hidden = state.hidden.clone();
        self.rows.positions = state.positions.clone();
        let no_trace = Trace::default(); // the encoder's records; a decoder site has none
        let view =
            SiteView { site, state: &self.rows, attn, full_trace: &no_trace, vision_saliency: self.vision_saliency };
        let plan = reducer.plan(&view)?;
        if self.scores.is_none() {
            let n = self.vision_saliency.len();
            self.scores = plan.scores.as_ref().map(|s| per_image_token(&self.rows.source, s, n));
        }
        if !plan.is_identity(self.rows.num_tokens()) {
            self.rows = plan.apply(&self.rows, mode)?;
            state.hidden = self.rows.hidden.clone();
            state.positions = self.rows.positions.clone();
        }
        Ok(())
    }
}

impl Intervene<DecoderState> for Method<'_> {
    fn needs(&self, layer: usize) -> Needs {
        Needs { probs: self.needs_attention(layer), keys: false }
    }

    fn after_block(&mut self, layer: usize, state: &mut DecoderState, attn: &AttnRecord) -> Result<()> {
        self.rows_per_layer.push(Rows::of(&self.rows));
        // Only attention the method asked for: a resumed run has no other to give.
        let probs = attn.probs.clone().filter(|_| self.needs_attention(layer));
        self.at(Site::AfterLayer(layer), state, &AttnRecord { probs, keys: None }, PositionMode::Preserve)?;
        self.layer_end_ms.push(self.ms());
        Ok(())
    }
}

/// Runs the layers from `state.layer` on with `method` acting after each, recording what
/// `probe` asks, and collects the prefill. `first_look`: already known (the view layer lies
/// before `state.layer`), else read at the method's view layer on the way.
fn run(
    lm: &Llama,
    mut state: DecoderState,
    mut cache: KvCache,
    mut method: Method<'_>,
    first_look: Option<Vec<Option<f32>>>,
    probe: Probe,
    cancel: &Cancel,
) -> Result<(Prefill, Trace)> {
    let (num_image_tokens, view_layer) = (method.vision_saliency.len(), method.view_layer);
    let recomputed_from = state.layer;
    let probe = if first_look.is_none() { probe.with(HookPoint::LlmAttnProbs(view_layer)) } else { probe };
    let mut trace = Trace::default();
    lm.run_layers(&mut state, &mut cache, lm.num_layers(), &probe, &mut trace, &mut method, cancel)?;
    let first_look = match first_look {
        Some(look) => look,
        None => match (trace.take(HookPoint::LlmAttnProbs(view_layer)), method.rows_per_layer.get(view_layer)) {
            (Some(probs), Some(rows)) => look(&probs, rows, num_image_tokens)?,
            _ => vec![None; num_image_tokens],
        },
    };
    let time_ms = method.ms();
    let DecoderState { hidden: output, positions, .. } = state;
    Ok((
        Prefill {
            cache,
            output,
            rows_per_layer: method.rows_per_layer,
            next_position: positions.last().map_or(0, |p| p + 1),
            positions,
            first_look,
            scores: method.scores,
            time_ms,
            layer_end_ms: method.layer_end_ms,
            recomputed_from,
        },
        trace,
    ))
}

/// Runs the prompt's rows `seq` through the decoder from scratch with `reducer` acting at its
/// sites. `pre_llm_positions` applies to a plan before layer 0; inside the model pruned rows
/// keep their position ids (the cached keys were rotated with them). `view_layer`: where the
/// first answer token's look over the image is read.
pub fn prefill(
    lm: &Llama,
    seq: TokenState,
    reducer: Option<Box<dyn Reducer>>,
    vision_saliency: &[f32],
    pre_llm_positions: PositionMode,
    view_layer: usize,
    cancel: &Cancel,
) -> Result<Prefill> {
    let mut state = DecoderState::fresh(seq.hidden.clone(), seq.positions.clone());
    let mut method = Method::new(reducer, vision_saliency, seq, view_layer, 0.0);
    method.at(Site::PreLlm, &mut state, &AttnRecord::default(), pre_llm_positions)?;
    Ok(run(lm, state, KvCache::default(), method, None, Probe::default(), cancel)?.0)
}

/// The unreduced prefill, keeping the hidden states entering every layer for [`resume`].
pub fn full_prefill(
    lm: &Llama,
    seq: TokenState,
    vision_saliency: &[f32],
    view_layer: usize,
    cancel: &Cancel,
) -> Result<FullPrefill> {
    let layers = lm.num_layers();
    let state = DecoderState::fresh(seq.hidden.clone(), seq.positions.clone());
    let method = Method::new(None, vision_saliency, seq.clone(), view_layer, 0.0);
    let probe = Probe::default().with_all((0..layers).map(HookPoint::LlmResidPre));
    let (prefill, mut trace) = run(lm, state, KvCache::default(), method, None, probe, cancel)?;
    let inputs = (0..layers)
        .map(|l| trace.take(HookPoint::LlmResidPre(l)).expect("every layer's input was asked for"))
        .collect();
    Ok(FullPrefill { prefill, inputs, rows: seq, view_layer })
}

/// The prefill of `reducer` resumed from `full`: a method whose first site is after layer k
/// reruns layers k+1.. only (layers 0..=k read the unreduced rows, as in the full prefill); one
/// acting before layer 0 reruns every layer. Equal, bit for bit, to [`prefill`] from scratch.
pub fn resume(
    lm: &Llama,
    full: &FullPrefill,
    reducer: Box<dyn Reducer>,
    vision_saliency: &[f32],
    pre_llm_positions: PositionMode,
    view_layer: usize,
    cancel: &Cancel,
) -> Result<Prefill> {
    let layers = lm.num_layers();
    let k = match reducer.sites().first() {
        Some(&Site::AfterLayer(k)) if k < layers => k,
        _ => {
            let seq = full.sequence();
            return prefill(lm, seq, Some(reducer), vision_saliency, pre_llm_positions, view_layer, cancel);
        }
    };
    let base = &full.prefill;
    if base.rows_per_layer.len() != layers || full.inputs.len() != layers || view_layer >= layers {
        return Err(Error::Config {
            field: "view_layer",
            reason: format!(
                "the full prefill has {}; view layer {view_layer}",
                crate::render::text::count(base.rows_per_layer.len(), "layer", "layers")
            ),
        });
    }
    let cache = base.cache.truncated(k + 1);
    let mut method = Method::new(Some(reducer), vision_saliency, full.rows.clone(), view_layer, base.layer_end_ms[k]);
    method.rows_per_layer = base.rows_per_layer[..k].to_vec();
    method.layer_end_ms = base.layer_end_ms[..k].to_vec();
    // Where layer k left the rows, and its attention if the plan reads it (not stored: made
    // again from its cached input and keys).
    let output_k = full.inputs.get(k + 1).unwrap_or(&base.output).to_dtype(DType::F32)?;
    let mut state = DecoderState { hidden: output_k, positions: base.positions.clone(), layer: k + 1 };
    let attention =
        |l: usize| lm.attention_from_cache(l, &full.inputs[l].to_dtype(DType::F32)?, &base.positions, &cache);
    let probs = if method.needs_attention(k) { Some(attention(k)?) } else { None };
    method.after_block(k, &mut state, &AttnRecord { probs, keys: None })?;
    let first_look = match view_layer {
        l if l > k => None,
        l if l == full.view_layer => Some(base.first_look.clone()),
        l => Some(look(&attention(l)?, &Rows::of(&full.rows), vision_saliency.len())?),
    };
    Ok(run(lm, state, cache, method, first_look, Probe::default(), cancel)?.0)
}

/// A greedy answer.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub ids: Vec<u32>,
    /// Log-probability of each chosen token.
    pub logprobs: Vec<f32>,
    /// Per answer token, the attention (view layer, mean over heads) of the query that chose it
    /// over the original image tokens.
    pub looks: Vec<Vec<Option<f32>>>,
    pub stopped_at_eos: bool,
    pub time_ms: f64,
}

fn log_softmax_last(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::log_softmax(&logits.flatten_to(1)?, D::Minus1)?)
}

/// Greedy decoding after `prefill` (its cache is extended in place), up to `max_new` tokens or
/// one of `eos`. `on_token` sees each id as it is chosen.
pub fn generate(
    lm: &Llama,
    prefill: &mut Prefill,
    max_new: usize,
    eos: &[u32],
    view_layer: usize,
    on_token: &mut dyn FnMut(u32),
    cancel: &Cancel,
) -> Result<Generated> {
    let start = Instant::now();
    let num_image_tokens = prefill.first_look.len();
    let mut out = Generated::default();
    let mut logits = lm.logits(&prefill.last_hidden()?)?;
    let mut look_now = prefill.first_look.clone();
    let mut position = prefill.next_position;
    let view_rows = prefill.rows_per_layer.get(view_layer).cloned().unwrap_or_default();
    let probe = Probe::default().with(HookPoint::LlmAttnProbs(view_layer));
    while out.ids.len() < max_new {
        cancel.check()?;
        let logp = log_softmax_last(&logits)?.squeeze(0)?;
        let next = logp.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_scalar::<u32>()?;
        out.logprobs.push(logp.get(next as usize)?.to_scalar::<f32>()?);
        out.ids.push(next);
        out.looks.push(look_now);
        on_token(next);
        if eos.contains(&next) {
            out.stopped_at_eos = true;
            break;
        }
        if out.ids.len() == max_new {
            break;
        }
        let mut state = DecoderState::fresh(lm.embed(&[next])?, vec![position]);
        let mut trace = Trace::default();
        lm.run_layers(
            &mut state,
            &mut prefill.cache,
            lm.num_layers(),
            &probe,
            &mut trace,
            &mut NoIntervention,
            cancel,
        )?;
        look_now = match trace.get(HookPoint::LlmAttnProbs(view_layer)) {
            Some(probs) => look(probs, &view_rows, num_image_tokens)?,
            None => vec![None; num_image_tokens],
        };
        logits = lm.logits(&state.hidden)?;
        position += 1;
    }
    out.time_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(out)
}

/// Log-probabilities of `answer` under the model after `prefill`, in one teacher-forced pass:
/// how likely the reduced model finds the full model's answer.
pub fn score_answer(lm: &Llama, prefill: &Prefill, answer: &[u32]) -> Result<Vec<f32>> {
    if answer.is_empty() {
        return Ok(Vec::new());
    }
    let mut cache = prefill.cache.clone();
    let mut logits = vec![lm.logits(&prefill.last_hidden()?)?];
    if answer.len() > 1 {
        let fed = &answer[..answer.len() - 1];
        let positions: Vec<u32> = (0..fed.len() as u32).map(|i| prefill.next_position + i).collect();
        let mut state = DecoderState::fresh(lm.embed(fed)?, positions);
        let (probe, mut trace) = (Probe::default(), Trace::default());
        let layers = lm.num_layers();
        lm.run_layers(&mut state, &mut cache, layers, &probe, &mut trace, &mut NoIntervention, &Cancel::default())?;
        logits.push(lm.logits(&state.hidden)?);
    }
    let logp = candle_nn::ops::log_softmax(&Tensor::cat(&logits, 1)?.squeeze(0)?, D::Minus1)?;
    let idx = Tensor::from_vec(answer.to_vec(), (answer.len(), 1), logp.device())?;
    Ok(logp.gather(&idx, 1)?.flatten_all()?.to_vec1()?)
}
