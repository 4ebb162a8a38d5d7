//! PiToMe, EViT, CLS top-K (FasterVLM), HiPrune and FastV, and on the language side SparseVLM and
//! MMTok, against their authors' code (`tests/fixtures/methods_reference.json` and
//! `llm_methods_reference.json`, from `scripts/make_method_reference.py`, which runs the authors'
//! functions verbatim). ToDRE and text-guided have no released code to check against (see their
//! module docs). Selections are asserted exactly: the script checks
//! that float32 and float64 agree, so no case is a near-tie; merged and fused tokens within 1e-4.

mod common;

use candle_core::{Device, Tensor};
use common::json_tensor;
use common::{json_fixture, json_floats as floats, json_indices as indices, json_matrix as matrix};
use serde_json::Value;
use tokenlens::model::layers::AttnRecord;
use tokenlens::model::{HookPoint, Probe, TokenState, Trace};
use tokenlens::reduce::hiprune::{self, Buffers};
use tokenlens::reduce::ops::cosine_matrix;
use tokenlens::reduce::pitome::{self, Matching, Pitome, PitomeConfig};
use tokenlens::reduce::{Context, Plan, PositionMode, ReducerConfig, Site, SiteView};

fn fixture() -> Value {
    json_fixture("methods_reference.json")
}

fn tensor(rows: &[Vec<f32>]) -> Tensor {
    Tensor::from_vec(rows.concat(), (1, rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{what}: {g} vs {w}");
    }
}

/// A trace holding the given per-layer attention probabilities.
fn trace_of(attns: &[Tensor]) -> Trace {
    let probe = Probe::attention(attns.len());
    let mut trace = Trace::default();
    for (l, a) in attns.iter().enumerate() {
        probe.tap(HookPoint::AttnProbs(l), &mut trace, || Ok(a.clone())).unwrap();
    }
    trace
}

/// The encoder fixture's transformers attentions, or the script's random ones.
fn attentions(fx: &Value, source: &str) -> Vec<Tensor> {
    let list = match source.strip_suffix("_fixture") {
        Some(folder) => {
            let path = common::fixture(&format!("encoders/{folder}/reference.json"));
            let r: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            r.get("vision").unwrap_or(&r)["attentions"].clone()
        }
        None => fx["random_cls_attentions"].clone(),
    };
    list.as_array().unwrap().iter().map(json_tensor).collect()
}

/// Kept patch indices (0 = first patch) of a keep-only plan.
fn kept_patches(plan: &Plan, num_special: usize) -> Vec<usize> {
    plan.groups[num_special..].iter().map(|g| g.members[0] - num_special).collect()
}

/// Checks recipe `authors_vit` (the default) and one merge step of each matching, against
/// `pitome_vision` / `pitome_bsm` / `pitome` and `merge_wavg` on raw key metrics.
#[test]
fn pitome_matches_the_authors_merge() {
    let fx = fixture();
    for case in fx["pitome"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (inp, out) = (&case["inputs"], &case["outputs"]);
        let metric = matrix(&inp["metric"]);
        let num_special = usize::from(inp["class_token"].as_bool().unwrap());
        let matching = if inp["use_bsm_pitome"].as_bool().unwrap() {
            Matching::EnergyBipartite
        } else {
            Matching::EnergyCandidates
        };
        let m = tensor(&metric).squeeze(0).unwrap();
        let cos = cosine_matrix(&m, &m).unwrap();
        let x = matrix(&inp["x"]);
        let t = x.len();
        let mut state = TokenState::fresh(tensor(&x), num_special, (1, t - num_special));
        if let Some(sizes) = inp["size"].as_array() {
            state.sizes = sizes.iter().map(|s| s.as_f64().unwrap() as f32).collect();
        }
        let r = inp["r"].as_u64().unwrap() as usize;
        let margin = inp["margin"].as_f64().unwrap() as f32;
        let plan = pitome::merge_plan(&cos, num_special, &state.sizes, r, margin, 1.0, matching);
        let scores = plan.scores.clone().unwrap();
        assert_close(&scores[num_special..], &floats(&out["energy"]), &format!("{name}: energy"));
        let merged = plan.apply(&state, PositionMode::Preserve).unwrap();
        // Rows in the authors' order; sources are patch indices (the authors' token ids less CLS).
        let want: Vec<Vec<u32>> = out["source_groups"].as_array().unwrap()[num_special..]
            .iter()
            .map(|g| indices(g).into_iter().map(|i| (i - num_special) as u32).collect())
            .collect();
        assert_eq!(merged.source[num_special..], want[..], "{name}: merged groups");
        let got = merged.hidden.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        assert_close(&got.concat(), &matrix(&out["x"]).concat(), &format!("{name}: merged x"));
        assert_eq!(merged.sizes, floats(&out["size"]), "{name}: sizes");
    }
}

#[test]
fn pitome_default_recipe_is_the_authors_vit_patch() {
    let fx = fixture();
    for (layers, want) in fx["pitome_recipe"].as_object().unwrap() {
        let num_layers: usize = layers.parse().unwrap();
        let ctx = Context::encoder(num_layers, (4, 4), 1);
        let p = Pitome::new(&PitomeConfig::default(), 16, &ctx, |_, l| Ok(l)).unwrap();
        for (l, m) in want["margins"].as_array().unwrap().iter().enumerate() {
            assert_eq!(p.margin(l), m.as_f64().unwrap() as f32, "L={num_layers}: margin at block {l}");
        }
        for (l, bsm) in want["use_bsm_pitome"].as_array().unwrap().iter().enumerate() {
            let expected = if bsm.as_bool().unwrap() { Matching::EnergyBipartite } else { Matching::EnergyCandidates };
            assert_eq!(p.matching(l), expected, "L={num_layers}: matching at block {l}");
        }
        assert!(!tokenlens::reduce::Reducer::proportional_attention(&p), "deit.py's blocks pass no sizes");
    }
}

/// EViT inside a block (between attention and MLP), on the authors' attention and stream:
/// the kept patches and the stream the MLP reads (kept rows, then the fused token).
#[test]
fn evit_matches_the_authors_block() {
    let fx = fixture();
    for case in fx["evit"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (inp, out) = (&case["inputs"], &case["outputs"]);
        let attn = json_tensor(&inp["attn"]);
        let mid = json_tensor(&inp["mid"]);
        let n = mid.dim(1).unwrap();
        let fuse = inp["fuse_token"].as_bool().unwrap();
        let tokens = inp["tokens"].as_u64().unwrap() as usize;
        let state = TokenState::fresh(mid, 1, (1, n - 1));
        let ctx = Context::encoder(1, (1, n - 1), 1);
        let mut config = ReducerConfig::from_name("evit").unwrap();
        config.set_param("layer", "0").unwrap();
        config.set_param("fuse", &fuse.to_string()).unwrap();
        // Our budget counts the fused token: EViT's `tokens` kept + 1.
        let mut reducer = config.build(tokens + usize::from(fuse), &ctx).unwrap();
        assert_eq!(reducer.sites(), [Site::MidBlock(0)], "{name}: EViT acts between attention and MLP");
        let record = AttnRecord { probs: Some(attn), keys: None };
        let view = SiteView {
            site: Site::MidBlock(0),
            state: &state,
            attn: &record,
            full_trace: &Trace::default(),
            vision_saliency: &[],
        };
        let plan = reducer.plan(&view).unwrap();
        let idx = indices(&out["idx"]);
        let mut want_kept = idx.clone();
        want_kept.sort_unstable();
        let kept: Vec<usize> = kept_patches(&plan, 1).into_iter().take(tokens).collect();
        assert_eq!(kept, want_kept, "{name}: kept patches");
        assert_eq!(plan.groups.len(), 1 + tokens + usize::from(fuse), "{name}: token count");
        // Rows: ours keep raster order, the authors' topk order; compare row by row.
        let got =
            plan.apply(&state, PositionMode::Preserve).unwrap().hidden.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let want = json_tensor(&out["fused"]).squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        assert_close(&got[0], &want[0], &format!("{name}: CLS"));
        for (k, &p) in idx.iter().enumerate() {
            let ours = 1 + want_kept.binary_search(&p).unwrap();
            assert_close(&got[ours], &want[1 + k], &format!("{name}: kept patch {p}"));
        }
        if fuse {
            assert_close(&got[tokens + 1], &want[tokens + 1], &format!("{name}: fused token"));
        }
    }
}

/// CLS top-K at one layer, as FasterVLM's `feature_select` + `encode_images` keep them.
#[test]
fn cls_topk_matches_fastervlm() {
    let fx = fixture();
    for case in fx["cls_topk"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let inp = &case["inputs"];
        let attns = attentions(&fx, inp["source"].as_str().unwrap());
        let n = attns[0].dim(3).unwrap();
        let layer = inp["layer"].as_u64().unwrap() as usize;
        let keep = inp["keep"].as_u64().unwrap() as usize;
        let ctx = Context::encoder(attns.len(), (1, n - 1), 1);
        let mut config = ReducerConfig::from_name("cls_topk").unwrap();
        config.set_layer(layer);
        let mut reducer = config.build(keep, &ctx).unwrap();
        let trace = trace_of(&attns);
        let state =
            TokenState::fresh(Tensor::zeros((1, n, 2), candle_core::DType::F32, &Device::Cpu).unwrap(), 1, ctx.grid);
        let view = SiteView {
            site: Site::EncoderOutput,
            state: &state,
            attn: &AttnRecord::default(),
            full_trace: &trace,
            vision_saliency: &[],
        };
        let plan = reducer.plan(&view).unwrap();
        assert_eq!(kept_patches(&plan, 1), indices(&case["outputs"]["kept"]), "{name}");
    }
}

/// HiPrune's anchors, buffers and registers. `buffers: flat` is checked on every case; the
/// default `grid` where no anchor is on the border (the one place the two differ).
#[test]
fn hiprune_matches_the_authors_selection() {
    let fx = fixture();
    let mut grid_checked = 0;
    for case in fx["hiprune"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (inp, out) = (&case["inputs"], &case["outputs"]);
        let grid = indices(&inp["grid"]);
        let grid = (grid[0], grid[1]);
        let keep = inp["keep"].as_u64().unwrap() as usize;
        let alpha = inp["alpha"].as_f64().unwrap() as f32;
        let want = indices(&out["kept"]);
        let anchors = hiprune::num_anchors(alpha, keep);
        assert_eq!(anchors, out["anchors"].as_array().unwrap().len(), "{name}: anchors");
        let object = floats(&inp["scores"]["object"]);
        let register = floats(&inp["scores"]["register"]);
        let mut buffers = vec![Buffers::Flat];
        if !out["anchor_on_border"].as_bool().unwrap() {
            buffers.push(Buffers::Grid);
            grid_checked += 1;
        }
        for b in buffers {
            assert_eq!(hiprune::select(&object, &register, grid, keep, anchors, b), want, "{name}: {b:?}");
            // The whole reducer, scoring the fixture's transformers attentions itself.
            if let Some(source) = inp["source"].as_str() {
                let attns = attentions(&fx, source);
                let n = attns[0].dim(3).unwrap();
                let ctx = Context::encoder(attns.len(), grid, 1);
                let mut config = ReducerConfig::from_name("hiprune").unwrap();
                config.set_param("object_layer", &inp["object_layer"].to_string()).unwrap();
                config.set_param("alpha", &inp["alpha"].to_string()).unwrap();
                config.set_param("buffers", &serde_json::to_string(&b).unwrap()).unwrap();
                assert_eq!(inp["register_layer"].as_u64().unwrap() as usize, attns.len() - 1);
                let mut reducer = config.build(keep, &ctx).unwrap();
                let trace = trace_of(&attns);
                let state = TokenState::fresh(
                    Tensor::zeros((1, n, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
                    1,
                    grid,
                );
                let view = SiteView {
                    site: Site::EncoderOutput,
                    state: &state,
                    attn: &AttnRecord::default(),
                    full_trace: &trace,
                    vision_saliency: &[],
                };
                assert_eq!(kept_patches(&reducer.plan(&view).unwrap(), 1), want, "{name}: reducer, {b:?}");
            }
        }
    }
    assert!(grid_checked >= 3, "too few cases check the default buffers ({grid_checked})");
}

/// FastV's pruning after layer K-1. `last` is the authors' query (their code, verbatim);
/// `text` and `all` are tokenlens options checked against an independent numpy computation.
#[test]
fn fastv_matches_the_authors_selection() {
    use tokenlens::reduce::Reducer;
    use tokenlens::reduce::llm::fastv::{Fastv, FastvConfig, FastvQuery};
    let fx = fixture();
    for case in fx["fastv"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (inp, out) = (&case["inputs"], &case["outputs"]);
        let attn = json_tensor(&inp["attn"]);
        let n = attn.dim(1).unwrap();
        let (sys, img) = (inp["sys_length"].as_u64().unwrap() as usize, inp["image_length"].as_u64().unwrap() as usize);
        let hidden = Tensor::zeros((n, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let rows = llm_state(sys, img, n - sys - img, &hidden);
        let (attn, no_trace) = (llm_attention(&attn), Trace::default());
        let view = SiteView {
            site: Site::AfterLayer(1),
            state: &rows,
            attn: &attn,
            full_trace: &no_trace,
            vision_saliency: &[],
        };
        let ctx = Context::decoder(4, img, (1, img));
        for (query, key) in [(FastvQuery::Last, "last"), (FastvQuery::Text, "text"), (FastvQuery::All, "all")] {
            let cfg = FastvConfig { layer: 2, query };
            let mut fastv = Fastv::new(&cfg, inp["rank"].as_u64().unwrap() as usize, &ctx).unwrap();
            assert_eq!(fastv.sites(), [Site::AfterLayer(1)], "K = 2 scores layer 1's attention");
            let keep: Vec<usize> = fastv.plan(&view).unwrap().kept(&rows).iter().map(|r| r - sys).collect();
            assert_eq!(keep, indices(&out[key]), "{name}: {key}");
        }
    }
}

/// ToMe's proportional attention (log size added to every key's logit, `model/state.rs`),
/// against ToMe's attention lines on the vit fixture's block 0 with token sizes 1..n.
#[test]
fn proportional_attention_matches_tomes_attention() {
    use tokenlens::Cancel;
    use tokenlens::model::NoIntervention;
    use tokenlens::model::hf::HfVision;
    let fx = fixture();
    let case = &fx["proportional_attention"];
    let folder = common::fixture("encoders/vit");
    let model = HfVision::load(&folder).unwrap();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(folder.join("reference.json")).unwrap()).unwrap();
    let enc = &model.encoder;
    let mut state = enc.embed(&json_tensor(&r["pixel_values"])).unwrap();
    state.sizes = floats(&case["sizes"]);
    state.proportional_attention = true;
    let mut trace = Trace::default();
    enc.run_blocks(&mut state, 1, &Probe::attention(1), &mut trace, &mut NoIntervention, &Cancel::default()).unwrap();
    let d = common::max_diff(trace.require(HookPoint::AttnProbs(0)).unwrap(), &json_tensor(&case["probs"]));
    assert!(d < 1e-5, "attention with log-size bias differs by {d}");
    let d = common::max_diff(&state.hidden, &json_tensor(&case["hidden"]));
    assert!(d < 1e-4, "block output with log-size bias differs by {d}");
    // And the bias matters here: without it block 0 gives transformers' unbiased attention.
    let unbiased = json_tensor(&r["attentions"][0]);
    let d = common::max_diff(&unbiased, &json_tensor(&case["probs"]));
    assert!(d > 1e-2, "sizes 1..n should change the attention ({d})");
}

/// EViT through a whole model: the vit fixture with EViT in block 0 (between its attention and
/// MLP, as evit.py's Block), against the authors' lines run on the transformers blocks. Block 1
/// reads the fused token, so the class probabilities tell whether block 0's MLP ran on it
/// (EViT in the last block could not: the classifier reads CLS, which the MLP treats alone).
#[test]
fn evit_run_matches_the_authors_block_in_the_model() {
    use tokenlens::Cancel;
    use tokenlens::model::ModelSource;
    use tokenlens::reduce::Budget;
    use tokenlens::session::{RunSpec, Session};
    let fx = fixture();
    let case = &fx["evit_run"];
    let folder = common::fixture("encoders/vit");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(folder.join("reference.json")).unwrap()).unwrap();
    let session = Session::load(&ModelSource::File(folder), &mut |_| {}).unwrap();
    let full = session.full_run(&json_tensor(&r["pixel_values"]), &Cancel::default()).unwrap();
    let mut evit = ReducerConfig::from_name("evit").unwrap();
    evit.set_layer(case["layer"].as_u64().unwrap() as usize);
    let tokens = case["tokens"].as_u64().unwrap() as usize;
    let spec = RunSpec::vision(evit, Budget::Keep(tokens + 1));
    let run = session.run_against(&full, &spec, &Cancel::default()).unwrap();
    let kept: Vec<usize> = run.kept.iter().map(|&p| p as usize).collect();
    assert_eq!(kept, indices(&case["kept"]), "kept patches");
    // Tighter than 1e-4: fusing after the MLP moves these probabilities by about 1.5e-4.
    let want = floats(&case["probs"]);
    let d = run.output.values.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max);
    assert!(d < 2e-5, "class probabilities differ by {d}");
}

/// The language-side references (`tests/fixtures/llm_methods_reference.json`).
fn llm_fixture() -> Value {
    json_fixture("llm_methods_reference.json")
}

/// Decoder rows: `pre` text, `image` image (one token each), `text` text; `hidden` `[n, d]`.
fn llm_state(pre: usize, image: usize, text: usize, hidden: &Tensor) -> tokenlens::model::TokenState {
    let mut rows = vec![None; pre];
    rows.extend((0..image as u32).map(|i| Some(vec![i])));
    rows.extend(std::iter::repeat_n(None, text));
    tokenlens::model::TokenState::sequence(hidden.unsqueeze(0).unwrap(), rows, (1, image))
}

/// A decoder layer's attention record from its probabilities (`[heads, n, n]` or with a batch).
fn llm_attention(probs: &Tensor) -> AttnRecord {
    let probs = if probs.rank() == 3 { probs.unsqueeze(0).unwrap() } else { probs.clone() };
    AttnRecord { probs: Some(probs), keys: None }
}

fn matrix_tensor(rows: &[Vec<f32>]) -> Tensor {
    tensor(rows).squeeze(0).unwrap()
}

/// SparseVLM against the authors' code (Gumpest/SparseVLMs, version 1_0): the raters picked on
/// the decoder input embeddings, then at every site the scores, the kept rows (the authors'
/// count), the recycled rows and their density-peak clusters (centre and members), site after
/// site on the authors' sequence (kept rows, then the merged ones). Each merged row, as the
/// decoder averages the members (every member one token here), within 1e-4 of the authors'.
#[test]
fn sparsevlm_matches_the_authors_sites() {
    use tokenlens::reduce::Reducer;
    use tokenlens::reduce::llm::sparsevlm::{Sparsevlm, SparsevlmConfig};
    let fx = llm_fixture();
    for case in fx["sparsevlm"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (inp, out) = (&case["inputs"], &case["outputs"]);
        let (pre, image, text) = (
            inp["pre_prompt"].as_u64().unwrap() as usize,
            inp["image"].as_u64().unwrap() as usize,
            inp["text"].as_u64().unwrap() as usize,
        );
        let sites = indices(&inp["sites"]);
        let kept = indices(&inp["kept"]);
        let ctx = Context::decoder(sites.last().unwrap() + 2, image, (1, image));
        let cfg = SparsevlmConfig { layers: Some(sites.clone()), ..Default::default() };
        let mut sv = Sparsevlm::new(&cfg, image / 2, &ctx).unwrap();
        assert_eq!(sv.sites()[0], Site::PreLlm, "{name}: raters are picked before layer 0");
        // Pre-LLM: the raters; nothing changes.
        let embeds = matrix_tensor(&matrix(&inp["embeds"]));
        let rows = llm_state(pre, image, text, &embeds);
        let (no_attn, no_trace) = (AttnRecord::default(), Trace::default());
        let view =
            SiteView { site: Site::PreLlm, state: &rows, attn: &no_attn, full_trace: &no_trace, vision_saliency: &[] };
        let p = sv.plan(&view).unwrap();
        assert_eq!((p.kept(&rows).len(), p.merged().len()), (image, 0), "{name}: the pre-LLM site only picks raters");
        let raters: Vec<usize> = sv.raters().unwrap().iter().map(|&k| k - pre).collect();
        assert_eq!(raters, indices(&out["raters"]), "{name}: raters (text rows after the image)");
        let mut v = image;
        for (j, site) in out["sites"].as_array().unwrap().iter().enumerate() {
            let attn = llm_attention(&json_tensor(&inp["attn"][j]));
            let hidden_rows = matrix(&inp["hidden"][j]);
            let hidden = matrix_tensor(&hidden_rows);
            let rows = llm_state(pre, v, text, &hidden);
            let view = SiteView {
                site: Site::AfterLayer(sites[j]),
                state: &rows,
                attn: &attn,
                full_trace: &no_trace,
                vision_saliency: &[],
            };
            let plan = sv.prune(&view, kept[j]).unwrap();
            plan.validate(&rows).unwrap();
            let what = format!("{name}, site {j} (after layer {})", sites[j]);
            let scores: Vec<f32> = plan.scores.as_ref().unwrap()[pre..pre + v].to_vec();
            assert_close(&scores, &floats(&site["relation"]), &format!("{what}: scores"));
            let got_kept: Vec<usize> = plan.kept(&rows).iter().map(|r| r - pre).collect();
            assert_eq!(got_kept, indices(&site["kept"]), "{what}: kept");
            let mut got: Vec<(usize, Vec<usize>)> = plan
                .merged()
                .iter()
                .map(|g| {
                    let mut m: Vec<usize> = g.iter().map(|r| r - pre).collect();
                    m.sort_unstable();
                    (g[0] - pre, m)
                })
                .collect();
            let want: Vec<(usize, Vec<usize>)> = site["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| (g["centre"].as_u64().unwrap() as usize, indices(&g["members"])))
                .collect();
            let mut recycled: Vec<usize> = got.iter().flat_map(|(_, m)| m.clone()).collect();
            recycled.sort_unstable();
            let mut want_recycled = indices(&site["recycled"]);
            want_recycled.sort_unstable();
            assert_eq!(recycled, want_recycled, "{what}: recycled rows");
            // The authors' merged rows are in centre order; ours sit at their centres.
            let merged_want = if want.is_empty() { Vec::new() } else { matrix(&site["merged"]) };
            for ((centre, members), authors) in want.iter().zip(&merged_want) {
                let mean: Vec<f32> = (0..authors.len())
                    .map(|d| members.iter().map(|&m| hidden_rows[pre + m][d]).sum::<f32>() / members.len() as f32)
                    .collect();
                assert_close(&mean, authors, &format!("{what}: merged row of centre {centre}"));
            }
            got.sort();
            let mut want = want;
            want.sort();
            assert_eq!(got, want, "{what}: clusters (centre, members)");
            let after = plan.kept(&rows).len() + plan.merged().len();
            assert_eq!(after, site["rows_after"].as_u64().unwrap() as usize, "{what}: rows after");
            v = after;
        }
    }
}

/// MMTok against the authors' `mm_coverage_selection` (Ironieser/MMTok; its plain greedy and
/// its JIT kernel both exercised): the kept image rows, and the greedy order against the same
/// formula in float64. Image-image coverage on the decoder input rows (our DEVIATION; the
/// reference was run with those rows as its CLIP features).
#[test]
fn mmtok_matches_the_authors_selection() {
    use tokenlens::reduce::Reducer;
    use tokenlens::reduce::llm::mmtok::{Coverage, Mmtok, MmtokConfig, coverage_matrix};
    let fx = llm_fixture();
    for case in fx["mmtok"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (inp, out) = (&case["inputs"], &case["outputs"]);
        let (text, image) = (matrix(&inp["text"]), matrix(&inp["image"]));
        let (m, n) = (text.len(), image.len());
        let hidden = matrix_tensor(&[text, image].concat());
        let rows = llm_state(m, n, 0, &hidden);
        let cfg = MmtokConfig {
            lambda: inp["alpha"].as_f64().unwrap() as f32,
            tv_temperature: inp["tv_temperature"].as_f64().unwrap() as f32,
            vv_temperature: inp["vv_temperature"].as_f64().unwrap() as f32,
        };
        let keep = inp["keep"].as_u64().unwrap() as usize;
        let (no_attn, no_trace) = (AttnRecord::default(), Trace::default());
        let view =
            SiteView { site: Site::PreLlm, state: &rows, attn: &no_attn, full_trace: &no_trace, vision_saliency: &[] };
        let plan = Mmtok::new(&cfg, keep).unwrap().plan(&view).unwrap();
        let kept: Vec<usize> = plan.kept(&rows).iter().map(|r| r - m).collect();
        assert_eq!(kept, indices(&out["kept"]), "{name}: kept");
        let w = coverage_matrix(&hidden, &(0..m).collect::<Vec<_>>(), &(m..m + n).collect::<Vec<_>>(), &cfg).unwrap();
        let ones = vec![1f32; m + n];
        let order = Coverage { w: &w, target_weight: &ones }.lazy_greedy(keep);
        assert_eq!(order, indices(&out["order_float64"]), "{name}: greedy order");
    }
}
