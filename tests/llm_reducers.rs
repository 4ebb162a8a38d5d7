//! Language-side reducers without a decoder: FastV against the independent Python reference,
//! and every method on random sequences pushed through a small simulator that applies plans the
//! way the decoder loop does (text rows stay, kept rows stay, merge groups become one row at the
//! first member's place, the rest go), counting image rows per layer against hand rules (the
//! selections themselves are checked against the authors' code in `methods_reference`).

mod common;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenlens::model::TokenState;
use tokenlens::model::layers::AttnRecord;
use tokenlens::reduce::llm::fastv::{FastvConfig, FastvQuery};
use tokenlens::reduce::llm::sparsevlm::SparsevlmConfig;
use tokenlens::reduce::llm::text_guided::TextGuidedConfig;
use tokenlens::reduce::llm::todre::TodreConfig;
use tokenlens::reduce::llm::*;
use tokenlens::reduce::{Context, Plan, Reducer, Site, SiteView};

/// A row of a simulated sequence: a text row, or an image row carrying these image tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Row {
    Text,
    Image(Vec<u32>),
}

impl Row {
    fn is_image(&self) -> bool {
        matches!(self, Row::Image(_))
    }
}

/// The decoder's rows for `rows` with hidden states `hidden` (`[n, d]`).
fn rows_state(rows: &[Row], hidden: &Tensor) -> TokenState {
    let image = rows.iter().map(|r| if let Row::Image(t) = r { Some(t.clone()) } else { None }).collect();
    TokenState::sequence(hidden.unsqueeze(0).unwrap(), image, (1, 1))
}

/// A plan as the simulator reads it: image rows kept, merge groups (first member: the place).
#[derive(Debug, Clone, PartialEq)]
struct Decided {
    keep: Vec<usize>,
    merged: Vec<Vec<usize>>,
    scores: Option<Vec<f32>>,
}

impl Decided {
    fn of(plan: &Plan, state: &TokenState) -> Self {
        let mut keep = plan.kept(state);
        keep.sort_unstable();
        let merged = plan.merged().into_iter().map(<[usize]>::to_vec).collect();
        Self { keep, merged, scores: plan.scores.clone() }
    }

    fn output_image_rows(&self) -> usize {
        self.keep.len() + self.merged.len()
    }
}

#[test]
fn fastv_matches_the_python_reference_on_llava() {
    let llava: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("vlm/llava/reference.json")).unwrap()).unwrap();
    let fastv: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("vlm/fastv/reference.json")).unwrap()).unwrap();
    let positions = common::json_ints(&llava["meta"]["image_token_positions"]);
    assert_eq!(positions, (4..20).collect::<Vec<u32>>());
    let rows: Vec<Row> = (0..33u32)
        .map(|i| if positions.contains(&i) { Row::Image(vec![i - positions[0]]) } else { Row::Text })
        .collect();
    let hidden = Tensor::zeros((33, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    let rows = rows_state(&rows, &hidden);
    let no_trace = tokenlens::model::Trace::default();
    let ctx = Context::decoder(2, 16, (4, 4));
    for k in [1usize, 2] {
        let want = &fastv[format!("K{k}")];
        let attn = common::json_tensor(&llava["attentions"][k - 1]);
        assert_eq!(attn.dims(), [1, 4, 33, 33]);
        let cfg = LlmReducerConfig::Fastv(FastvConfig { layer: k, query: FastvQuery::Last });
        let mut r = cfg.build(8, &ctx).unwrap();
        assert_eq!(r.sites(), [Site::AfterLayer(k - 1)]);
        assert!(r.needs(k - 1).probs && !r.needs(2 - k).probs);
        let attn = AttnRecord { probs: Some(attn), keys: None };
        let view = SiteView {
            site: Site::AfterLayer(k - 1),
            state: &rows,
            attn: &attn,
            full_trace: &no_trace,
            vision_saliency: &[],
        };
        let plan = r.plan(&view).unwrap();
        plan.validate(&rows).unwrap();
        let scores = plan.scores.as_ref().unwrap();
        let got: Vec<f32> = positions.iter().map(|&p| scores[p as usize]).collect();
        let reference: Vec<f32> =
            want["scores"]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert!(common::max_abs_diff(&got, &reference) < 1e-5, "K{k}: {got:?} vs {reference:?}");
        assert!(scores.iter().enumerate().all(|(i, s)| positions.contains(&(i as u32)) != s.is_nan()));
        let kept: Vec<u32> = plan.kept(&rows).iter().map(|&r| r as u32 - positions[0]).collect();
        assert_eq!(kept, common::json_ints(&want["kept_image_indices"]), "K{k}");
        let kept_pos: Vec<u32> = plan.kept(&rows).iter().map(|&r| r as u32).collect();
        assert_eq!(kept_pos, common::json_ints(&want["kept_positions"]), "K{k}");
        assert!(plan.merged().is_empty());
    }
}

const LAYERS: usize = 8;
const IMAGES: usize = 24;
const DIM: usize = 16;
const HEADS: usize = 2;

/// T T [12 x I] T T [12 x I] T T: six text rows around 24 image rows; the last row is text.
fn sequence() -> Vec<Row> {
    let mut rows = vec![Row::Text, Row::Text];
    rows.extend((0..12).map(|i| Row::Image(vec![i])));
    rows.extend([Row::Text, Row::Text]);
    rows.extend((12..24).map(|i| Row::Image(vec![i])));
    rows.extend([Row::Text, Row::Text]);
    rows
}

fn tensor(h: &[Vec<f32>]) -> Tensor {
    Tensor::from_vec(h.concat(), (h.len(), DIM), &Device::Cpu).unwrap()
}

/// Random causal softmax attention `[heads, n, n]`.
fn attention(rng: &mut ChaCha8Rng, n: usize) -> Tensor {
    let mut data = Vec::with_capacity(HEADS * n * n);
    for _ in 0..HEADS {
        for q in 0..n {
            let logits: Vec<f32> =
                (0..n).map(|k| if k <= q { rng.random_range(-2.0..2.0) } else { f32::NEG_INFINITY }).collect();
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
            let s: f32 = e.iter().sum();
            data.extend(e.iter().map(|x| x / s));
        }
    }
    Tensor::from_vec(data, (HEADS, n, n), &Device::Cpu).unwrap()
}

/// What a simulated prefill saw.
#[derive(Debug)]
struct Trace {
    /// Image rows each layer processed.
    per_layer: Vec<usize>,
    /// (site, image rows before, plan).
    plans: Vec<(Site, usize, Decided)>,
    final_rows: Vec<Row>,
}

impl Trace {
    fn layer_average(&self) -> f64 {
        self.per_layer.iter().sum::<usize>() as f64 / LAYERS as f64
    }
}

/// Applies a plan: text and kept rows stay; each merge group becomes one row at its first
/// member's place (token-weighted mean of the hidden states, union of the tokens).
fn apply(rows: &[Row], hidden: &[Vec<f32>], plan: &Decided) -> (Vec<Row>, Vec<Vec<f32>>) {
    let (mut r, mut h) = (Vec::new(), Vec::new());
    for i in 0..rows.len() {
        if !rows[i].is_image() || plan.keep.contains(&i) {
            r.push(rows[i].clone());
            h.push(hidden[i].clone());
        } else if let Some(g) = plan.merged.iter().find(|g| g[0] == i) {
            let weight = |j: usize| match &rows[j] {
                Row::Image(t) => t.len() as f32,
                Row::Text => unreachable!(),
            };
            let total: f32 = g.iter().map(|&j| weight(j)).sum();
            let mean = (0..DIM).map(|d| g.iter().map(|&j| weight(j) * hidden[j][d]).sum::<f32>() / total).collect();
            let mut tokens: Vec<u32> =
                g.iter().flat_map(|&j| if let Row::Image(t) = &rows[j] { t.clone() } else { vec![] }).collect();
            tokens.sort_unstable();
            r.push(Row::Image(tokens));
            h.push(mean);
        }
    }
    (r, h)
}

/// One plan at one site, validated and applied.
fn act(
    reducer: &mut dyn Reducer,
    name: &str,
    saliency: &[f32],
    site: Site,
    (rows, hidden): (&mut Vec<Row>, &mut Vec<Vec<f32>>),
    attn: Option<&Tensor>,
    plans: &mut Vec<(Site, usize, Decided)>,
) {
    let state = rows_state(rows, &tensor(hidden));
    let attn = AttnRecord { probs: attn.map(|a| a.unsqueeze(0).unwrap()), keys: None };
    let no_trace = tokenlens::model::Trace::default();
    let view = SiteView { site, state: &state, attn: &attn, full_trace: &no_trace, vision_saliency: saliency };
    let plan = reducer.plan(&view).unwrap();
    plan.validate(&state).unwrap_or_else(|e| panic!("{name} at {site:?}: {e}"));
    let plan = Decided::of(&plan, &state);
    let before = rows.iter().filter(|r| r.is_image()).count();
    let (r, h) = apply(rows, hidden, &plan);
    assert_eq!(r.iter().filter(|r| r.is_image()).count(), plan.output_image_rows());
    plans.push((site, before, plan));
    (*rows, *hidden) = (r, h);
}

fn simulate(cfg: &LlmReducerConfig, keep: usize, seed: u64) -> Trace {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = sequence();
    let mut hidden: Vec<Vec<f32>> =
        rows.iter().map(|_| (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
    let saliency: Vec<f32> = (0..IMAGES).map(|_| rng.random::<f32>()).collect();
    let ctx = Context::decoder(LAYERS, IMAGES, (4, 6));
    let mut reducer = cfg.build(keep, &ctx).unwrap();
    let sites = reducer.sites();
    assert!(sites.windows(2).all(|w| w[0] < w[1]), "{}: sites in forward order", cfg.name());
    let mut trace = Trace { per_layer: vec![], plans: vec![], final_rows: vec![] };
    let name = cfg.name();
    if sites.contains(&Site::PreLlm) {
        act(&mut *reducer, name, &saliency, Site::PreLlm, (&mut rows, &mut hidden), None, &mut trace.plans);
    }
    for layer in 0..LAYERS {
        trace.per_layer.push(rows.iter().filter(|r| r.is_image()).count());
        // The layer: new hidden states, attention only where asked for.
        let needs = reducer.needs(layer).probs;
        let attn = attention(&mut rng, rows.len());
        for h in hidden.iter_mut() {
            h.iter_mut().for_each(|x| *x += rng.random_range(-0.3..0.3));
        }
        let site = Site::AfterLayer(layer);
        if sites.contains(&site) {
            act(
                &mut *reducer,
                name,
                &saliency,
                site,
                (&mut rows, &mut hidden),
                needs.then_some(&attn),
                &mut trace.plans,
            );
        } else {
            assert!(!needs, "{name}: attention at layer {layer} with no site after it");
        }
    }
    // Provenance: every original image token in at most one row.
    let mut seen = [false; IMAGES];
    for r in &rows {
        if let Row::Image(t) = r {
            assert!(t.windows(2).all(|w| w[0] < w[1]));
            for &i in t {
                assert!(!std::mem::replace(&mut seen[i as usize], true), "token {i} twice");
            }
        }
    }
    assert_eq!(rows.iter().filter(|r| !r.is_image()).count(), 6, "text rows always stay");
    trace.final_rows = rows;
    trace
}

fn configs() -> Vec<LlmReducerConfig> {
    let mut all = LlmReducerConfig::defaults();
    all.push(LlmReducerConfig::Fastv(FastvConfig { layer: 3, query: FastvQuery::Text }));
    all.push(LlmReducerConfig::Fastv(FastvConfig { layer: 1, query: FastvQuery::All }));
    all.push(LlmReducerConfig::TextGuided(TextGuidedConfig { merge_rest: true, diverse: 0.3, ..Default::default() }));
    all.push(LlmReducerConfig::Sparsevlm(SparsevlmConfig { recycle: 0.0, ..Default::default() }));
    all.push(LlmReducerConfig::Sparsevlm(SparsevlmConfig {
        layers: Some(vec![0, 3]),
        recycle: 1.0,
        ..Default::default()
    }));
    all.push(LlmReducerConfig::Todre(TodreConfig { start_layer: Some(3), threshold: 1.0 }));
    all
}

const BUDGETS: [usize; 6] = [IMAGES, 16, 8, 5, 3, 1];

#[test]
fn every_method_keeps_what_the_budget_asks() {
    let ctx = Context::decoder(LAYERS, IMAGES, (4, 6));
    for cfg in configs() {
        for keep in BUDGETS {
            let t = simulate(&cfg, keep, 11);
            let name = format!("{} keep {keep}", serde_json::to_string(&cfg).unwrap());
            let predicted = cfg.layer_averaged(keep, &ctx).unwrap();
            match &cfg {
                LlmReducerConfig::Fastv(c) => {
                    // Layers 0..K-1 see all rows, K.. the kept ones.
                    let want: Vec<usize> = (0..LAYERS).map(|l| if l < c.layer { IMAGES } else { keep }).collect();
                    assert_eq!(t.per_layer, want, "{name}");
                    let by_hand = (c.layer * IMAGES + (LAYERS - c.layer) * keep) as f64 / LAYERS as f64;
                    assert_eq!(predicted, by_hand, "{name}: the reported average");
                }
                LlmReducerConfig::TextGuided(_) | LlmReducerConfig::Mmtok(_) => {
                    assert_eq!(t.per_layer, vec![keep; LAYERS], "{name}");
                    assert_eq!(predicted, keep as f64);
                }
                LlmReducerConfig::Sparsevlm(c) => {
                    // Not the crate's own prediction: hand rules. The pre-LLM site only picks the
                    // raters; the layers before the first pruning site see every row.
                    let first = c.layers_for(LAYERS)[0];
                    let (site0, before0, p0) = &t.plans[0];
                    assert_eq!((*site0, p0.keep.len(), p0.merged.len()), (Site::PreLlm, *before0, 0), "{name}");
                    assert!(t.per_layer[..=first].iter().all(|&n| n == IMAGES), "{name}: {:?}", t.per_layer);
                    assert!(t.per_layer.windows(2).all(|w| w[0] >= w[1]), "{name}: {:?}", t.per_layer);
                    let floor = ((first + 1) * IMAGES + (LAYERS - first - 1)) as f64 / LAYERS as f64;
                    if floor <= keep as f64 {
                        assert!((t.layer_average() - keep as f64).abs() <= 1.0, "{name}: {:?}", t.per_layer);
                    } else {
                        // Infeasible: one row after every site.
                        assert_eq!(*t.per_layer.last().unwrap(), 1, "{name}: {:?}", t.per_layer);
                        assert_eq!(t.layer_average(), floor, "{name}");
                    }
                    // Recycling as the authors' code counts it: int(recycle * pruned) + 1 rows
                    // into int(recycled / recycle_group) + 1 clusters (none with recycle 0).
                    let rule = |pruned: usize| {
                        let r = ((c.recycle * pruned as f32).floor() as usize + 1).min(pruned);
                        (r, (r / c.recycle_group + 1).min(r))
                    };
                    for (site, before, p) in &t.plans[1..] {
                        // A recycled cluster of one row is a kept row in a plan (the same row out):
                        // `ones` of the kept rows may be such clusters.
                        let fits = |ones: usize| {
                            let kept = p.keep.len() - ones;
                            let pruned = before - kept;
                            let clusters = p.merged.len() + ones;
                            let recycled = p.merged.iter().map(Vec::len).sum::<usize>() + ones;
                            if c.recycle == 0.0 || pruned == 0 {
                                clusters == 0
                            } else if kept == 0 {
                                // The fallback below the smallest feasible count: all clusters,
                                // recycling at least one row each.
                                recycled == rule(pruned).0.max(clusters).min(pruned)
                            } else {
                                (recycled, clusters) == rule(pruned)
                            }
                        };
                        assert!((0..=p.keep.len()).any(fits), "{name} at {site:?}: {p:?}");
                    }
                }
                LlmReducerConfig::Todre(c) => {
                    assert_eq!(t.per_layer[0], keep, "{name}");
                    assert!(t.per_layer.iter().all(|&n| n == keep || n == 0), "{name}: {:?}", t.per_layer);
                    assert!(t.layer_average() <= predicted, "{name}");
                    if c.threshold >= 1.0 && keep < IMAGES {
                        // The mass is always under 1 (text rows get some): fires at the start.
                        let s = c.start(LAYERS);
                        assert_eq!(t.per_layer.iter().filter(|&&n| n > 0).count(), s + 1, "{name}: {:?}", t.per_layer);
                    }
                }
            }
        }
    }
}

#[test]
fn keeping_everything_changes_nothing() {
    for cfg in configs() {
        let t = simulate(&cfg, IMAGES, 5);
        assert_eq!(t.final_rows, sequence(), "{}", cfg.name());
        assert_eq!(t.per_layer, vec![IMAGES; LAYERS], "{}", cfg.name());
        for (site, before, p) in &t.plans {
            assert!(p.merged.is_empty() && p.keep.len() == *before, "{} at {site:?}", cfg.name());
        }
    }
}

/// A plan's keep, merge groups and score bits (NaN scores compare equal as bits).
type PlanBits = (Vec<usize>, Vec<Vec<usize>>, Vec<u32>);

#[test]
fn plans_are_deterministic() {
    let bits = |t: &Trace| -> Vec<PlanBits> {
        t.plans
            .iter()
            .map(|(_, _, p)| {
                let s = p.scores.as_ref().map(|s| s.iter().map(|x| x.to_bits()).collect()).unwrap_or_default();
                (p.keep.clone(), p.merged.clone(), s)
            })
            .collect()
    };
    for cfg in configs() {
        for keep in [16, 5] {
            let (a, b) = (simulate(&cfg, keep, 3), simulate(&cfg, keep, 3));
            assert_eq!(bits(&a), bits(&b), "{}", cfg.name());
            assert_eq!(a.final_rows, b.final_rows);
        }
    }
}

#[test]
fn methods_that_merge_do_merge() {
    // Text-guided with merge_rest: 8 image rows = 4 merged + 4 kept, carrying every token.
    let cfg = LlmReducerConfig::TextGuided(TextGuidedConfig { merge_rest: true, ..Default::default() });
    let t = simulate(&cfg, 8, 2);
    let p = &t.plans[0].2;
    assert_eq!((p.keep.len(), p.merged.len()), (4, 4));
    let carried: usize = t.final_rows.iter().map(|r| if let Row::Image(t) = r { t.len() } else { 0 }).sum();
    assert_eq!(carried, IMAGES);
    // SparseVLM recycles: some merged rows at the first pruning site (after the rater site).
    let t = simulate(&LlmReducerConfig::from_name("sparsevlm").unwrap(), 8, 2);
    assert!(!t.plans[1].2.merged.is_empty(), "{:?}", t.plans[1].2);
}
