//! The decoder side of one VLM run: prefill with a language-side reducer acting between layers,
//! greedy decoding that records what each new word looked at, and the teacher-forced score of
//! another answer.
//!
//! # Design
//! Question: where do pruned tokens go inside the language model, and how does a ratio change
//! avoid re-running the layers it cannot have changed?
//! Decision: the reducer acts through the decoder's [`LayerIntervene`] hook ([`Llama::run_layers`],
//! the ViT's mechanism). After a reducer's site it gathers the surviving rows' hidden states and
//! position ids (merged rows are weighted means at their first member's place), so deeper layers
//! never see, nor cache, the dropped tokens; the layers before keep their full KV entries, as
//! FastV does. Rows carry the original image tokens they stand for, so every later view maps
//! back to the image grid. The unreduced prefill ([`full_prefill`]) keeps the hidden states
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
use crate::model::llama::{DecoderState, KvCache, LayerIntervene, Llama};
use crate::model::{HookPoint, Needs, NoIntervention, Probe, Trace};
use crate::reduce::PositionMode;
use crate::reduce::llm::{LlmPlan, LlmReducer, LlmSite, LlmView, Row};
use crate::{Cancel, Error, Result};

/// The sequence entering the decoder.
pub struct Sequence {
    /// `[1, n, d]` input embeddings (image rows = projected image tokens).
    pub embeds: Tensor,
    pub rows: Vec<Row>,
    pub positions: Vec<u32>,
}

impl Sequence {
    /// A text-only prompt (`ids`) at positions 0..n.
    pub fn text(lm: &Llama, ids: &[u32]) -> Result<Self> {
        Ok(Self {
            embeds: lm.embed(ids)?,
            rows: vec![Row::Text; ids.len()],
            positions: (0..ids.len() as u32).collect(),
        })
    }
}

/// What a prefill leaves for decoding and for the views.
#[derive(Clone)]
pub struct Prefill {
    pub cache: KvCache,
    /// The last layer's output for the rows it processed, `[1, n, d]` (before the final norm).
    pub output: Tensor,
    /// The rows each layer processed (`num_layers` entries).
    pub rows_per_layer: Vec<Vec<Row>>,
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
        self.rows_per_layer.iter().map(|rows| rows.iter().filter(|r| r.is_image()).count()).collect()
    }
}

/// The unreduced prefill, kept with what a resumed run needs.
#[derive(Clone)]
pub struct FullPrefill {
    pub prefill: Prefill,
    /// Hidden states entering each layer, `[1, n, d]` (`num_layers` entries; `[0]` is the input
    /// embeddings).
    pub inputs: Vec<Tensor>,
    /// The rows entering layer 0 (every layer's, unreduced).
    pub rows: Vec<Row>,
    /// The layer whose attention `prefill.first_look` read.
    pub view_layer: usize,
}

impl FullPrefill {
    /// The sequence the full prefill read.
    pub fn sequence(&self) -> Sequence {
        Sequence { embeds: self.inputs[0].clone(), rows: self.rows.clone(), positions: self.prefill.positions.clone() }
    }
}

/// Per original image token, the value of the row that carries it (None if none does).
fn per_image_token(rows: &[Row], values: &[f32], num_image_tokens: usize) -> Vec<Option<f32>> {
    let mut out = vec![None; num_image_tokens];
    for (row, &v) in rows.iter().zip(values) {
        if let Row::Image(tokens) = row {
            for &t in tokens {
                out[t as usize] = Some(v).filter(|v| v.is_finite());
            }
        }
    }
    out
}

/// The last query's attention `[1, heads, q, keys]`, mean over heads, over the first
/// `rows.len()` keys, per original image token.
fn look(probs: &Tensor, rows: &[Row], num_image_tokens: usize) -> Result<Vec<Option<f32>>> {
    let q = probs.dim(2)?;
    let last = probs.narrow(2, q - 1, 1)?.mean(1)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(per_image_token(rows, &last[..rows.len()], num_image_tokens))
}

/// Applies `plan` to the rows: text and kept rows stay, merged groups become one row each (the
/// mean of their members weighted by the image tokens they carry), the rest go.
pub fn apply_plan(
    plan: &LlmPlan,
    x: &Tensor,
    rows: &[Row],
    positions: &[u32],
    mode: PositionMode,
) -> Result<(Tensor, Vec<Row>, Vec<u32>)> {
    if let Err(reason) = plan.validate(rows) {
        panic!("invalid language-side plan: {reason}"); // a reducer bug, not user input
    }
    let keep: std::collections::HashSet<usize> = plan.keep.iter().copied().collect();
    let dest: std::collections::HashMap<usize, usize> =
        plan.merged.iter().enumerate().map(|(g, members)| (members[0], g)).collect();
    let n = rows.len();
    let mut merged_rows = Vec::with_capacity(plan.merged.len());
    for members in &plan.merged {
        let weights: Vec<f32> = members.iter().map(|&i| carried(&rows[i]) as f32).collect();
        let total: f32 = weights.iter().sum();
        let idx = Tensor::from_vec(members.iter().map(|&i| i as u32).collect::<Vec<_>>(), members.len(), x.device())?;
        let w =
            Tensor::from_vec(weights.iter().map(|w| w / total).collect::<Vec<_>>(), (1, members.len(), 1), x.device())?;
        merged_rows.push(x.index_select(&idx, 1)?.broadcast_mul(&w)?.sum_keepdim(1)?);
    }
    let (mut index, mut out_rows, mut out_pos) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        if let Some(&g) = dest.get(&i) {
            index.push((n + g) as u32);
            let mut tokens: Vec<u32> = plan.merged[g].iter().flat_map(|&m| image_tokens(&rows[m])).collect();
            tokens.sort_unstable();
            out_rows.push(Row::Image(tokens));
            out_pos.push(positions[i]);
        } else if !rows[i].is_image() || keep.contains(&i) {
            index.push(i as u32);
            out_rows.push(rows[i].clone());
            out_pos.push(positions[i]);
        }
    }
    if mode == PositionMode::Compact {
        out_pos = (0..out_rows.len() as u32).collect();
    }
    let all = if merged_rows.is_empty() {
        x.clone()
    } else {
        let mut parts = vec![x.clone()];
        parts.extend(merged_rows);
        Tensor::cat(&parts, 1)?
    };
    let len = index.len();
    let x = all.index_select(&Tensor::from_vec(index, len, x.device())?, 1)?;
    Ok((x, out_rows, out_pos))
}

fn carried(row: &Row) -> usize {
    match row {
        Row::Image(tokens) => tokens.len(),
        Row::Text => 1,
    }
}

fn image_tokens(row: &Row) -> Vec<u32> {
    match row {
        Row::Image(tokens) => tokens.clone(),
        Row::Text => Vec::new(),
    }
}

/// Whether a plan changes nothing.
fn is_identity(plan: &LlmPlan, rows: &[Row]) -> bool {
    plan.merged.is_empty() && plan.keep.len() == rows.iter().filter(|r| r.is_image()).count()
}

/// A reducer in the prefill: asks for plans at its sites and applies them to the state and the
/// rows, recording the rows and the time of every layer.
struct Method<'r> {
    reducer: Option<Box<dyn LlmReducer>>,
    sites: Vec<LlmSite>,
    vision_saliency: &'r [f32],
    /// The first plan's scores, per original image token.
    scores: Option<Vec<Option<f32>>>,
    /// The rows now (those the next layer reads).
    rows: Vec<Row>,
    rows_per_layer: Vec<Vec<Row>>,
    layer_end_ms: Vec<f64>,
    /// Where the first answer token's look over the image is read.
    view_layer: usize,
    /// Time already spent before `start` (a resumed prefill: the cached layers' time).
    offset_ms: f64,
    start: Instant,
}

impl<'r> Method<'r> {
    fn new(
        reducer: Option<Box<dyn LlmReducer>>,
        vision_saliency: &'r [f32],
        rows: Vec<Row>,
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
        self.sites.contains(&LlmSite::AfterLayer(layer))
            && self.reducer.as_ref().is_some_and(|r| r.needs_attention(layer))
    }

    fn at(&mut self, site: LlmSite, state: &mut DecoderState, attn: Option<&Tensor>, mode: PositionMode) -> Result<()> {
        let Some(reducer) = self.reducer.as_deref_mut() else { return Ok(()) };
        if !self.sites.contains(&site) {
            return Ok(());
        }
        let hidden = state.hidden.squeeze(0)?;
        let attn = attn.map(|a| a.squeeze(0)).transpose()?;
        let rows = &self.rows;
        let view = LlmView { site, rows, hidden: &hidden, attn: attn.as_ref(), vision_saliency: self.vision_saliency };
        let plan = reducer.plan(&view)?;
        if self.scores.is_none() {
            self.scores = plan.scores.as_ref().map(|s| per_image_token(rows, s, self.vision_saliency.len()));
        }
        if !is_identity(&plan, rows) {
            (state.hidden, self.rows, state.positions) =
                apply_plan(&plan, &state.hidden, rows, &state.positions, mode)?;
        }
        Ok(())
    }
}

impl LayerIntervene for Method<'_> {
    fn needs(&self, layer: usize) -> Needs {
        Needs { probs: self.needs_attention(layer), keys: false }
    }

    fn after_layer(&mut self, layer: usize, state: &mut DecoderState, attn: &AttnRecord) -> Result<()> {
        self.rows_per_layer.push(self.rows.clone());
        // Only attention the method asked for: a resumed run has no other to give.
        let probs = attn.probs.as_ref().filter(|_| self.needs_attention(layer));
        self.at(LlmSite::AfterLayer(layer), state, probs, PositionMode::Preserve)?;
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

/// Runs the prompt through the decoder from scratch with `reducer` acting at its sites.
/// `pre_llm_positions` applies to a plan before layer 0; inside the model pruned rows keep
/// their position ids (the cached keys were rotated with them). `view_layer`: where the first
/// answer token's look over the image is read.
pub fn prefill(
    lm: &Llama,
    seq: Sequence,
    reducer: Option<Box<dyn LlmReducer>>,
    vision_saliency: &[f32],
    pre_llm_positions: PositionMode,
    view_layer: usize,
    cancel: &Cancel,
) -> Result<Prefill> {
    let Sequence { embeds, rows, positions } = seq;
    let mut method = Method::new(reducer, vision_saliency, rows, view_layer, 0.0);
    let mut state = DecoderState::fresh(embeds, positions);
    method.at(LlmSite::PreLlm, &mut state, None, pre_llm_positions)?;
    Ok(run(lm, state, KvCache::default(), method, None, Probe::default(), cancel)?.0)
}

/// The unreduced prefill, keeping the hidden states entering every layer for [`resume`].
pub fn full_prefill(
    lm: &Llama,
    seq: Sequence,
    vision_saliency: &[f32],
    view_layer: usize,
    cancel: &Cancel,
) -> Result<FullPrefill> {
    let layers = lm.num_layers();
    let Sequence { embeds, rows, positions } = seq;
    let method = Method::new(None, vision_saliency, rows.clone(), view_layer, 0.0);
    let probe = Probe::default().with_all((0..layers).map(HookPoint::LlmResidPre));
    let state = DecoderState::fresh(embeds, positions);
    let (prefill, mut trace) = run(lm, state, KvCache::default(), method, None, probe, cancel)?;
    let inputs = (0..layers)
        .map(|l| trace.take(HookPoint::LlmResidPre(l)).expect("every layer's input was asked for"))
        .collect();
    Ok(FullPrefill { prefill, inputs, rows, view_layer })
}

/// The prefill of `reducer` resumed from `full`: a method whose first site is after layer k
/// reruns layers k+1.. only (layers 0..=k read the unreduced rows, as in the full prefill); one
/// acting before layer 0 reruns every layer. Equal, bit for bit, to [`prefill`] from scratch.
pub fn resume(
    lm: &Llama,
    full: &FullPrefill,
    reducer: Box<dyn LlmReducer>,
    vision_saliency: &[f32],
    pre_llm_positions: PositionMode,
    view_layer: usize,
    cancel: &Cancel,
) -> Result<Prefill> {
    let layers = lm.num_layers();
    let k = match reducer.sites().first() {
        Some(&LlmSite::AfterLayer(k)) if k < layers => k,
        _ => {
            let seq = full.sequence();
            return prefill(lm, seq, Some(reducer), vision_saliency, pre_llm_positions, view_layer, cancel);
        }
    };
    let base = &full.prefill;
    if base.rows_per_layer.len() != layers || full.inputs.len() != layers || view_layer >= layers {
        return Err(Error::Config {
            field: "view_layer",
            reason: format!("the full prefill has {} layers; view layer {view_layer}", base.rows_per_layer.len()),
        });
    }
    let cache = base.cache.truncated(k + 1);
    let mut method = Method::new(Some(reducer), vision_saliency, full.rows.clone(), view_layer, base.layer_end_ms[k]);
    method.rows_per_layer = base.rows_per_layer[..k].to_vec();
    method.layer_end_ms = base.layer_end_ms[..k].to_vec();
    // Where layer k left the rows, and its attention if the plan reads it (not stored: made
    // again from its cached input and keys).
    let output_k = full.inputs.get(k + 1).unwrap_or(&base.output).clone();
    let mut state = DecoderState { hidden: output_k, positions: base.positions.clone(), layer: k + 1 };
    let attention = |l: usize| lm.attention_from_cache(l, &full.inputs[l], &base.positions, &cache);
    let probs = if method.needs_attention(k) { Some(attention(k)?) } else { None };
    method.after_layer(k, &mut state, &AttnRecord { probs, keys: None })?;
    let first_look = match view_layer {
        l if l > k => None,
        l if l == full.view_layer => Some(base.first_look.clone()),
        l => Some(look(&attention(l)?, &full.rows, vision_saliency.len())?),
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
