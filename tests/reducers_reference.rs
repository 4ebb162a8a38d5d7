//! ToMe's matching and DivPrune's selection against the original Python code
//! (`tests/fixtures/reducers_reference.json`, from `scripts/make_reducer_reference.py`).

mod common;

use candle_core::{Device, Tensor};
use common::{json_fixture, json_indices as indices, json_matrix as matrix};
use serde_json::Value;
use tokenlens::model::TokenState;
use tokenlens::reduce::PositionMode;
use tokenlens::reduce::divprune::greedy_max_min;
use tokenlens::reduce::ops::cosine_matrix;
use tokenlens::reduce::tome::bipartite_soft_matching;

fn fixture() -> Value {
    json_fixture("reducers_reference.json")
}

#[test]
fn tome_matches_the_reference_merge() {
    let fx = fixture();
    for case in fx["tome"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (inp, out) = (&case["inputs"], &case["outputs"]);
        let metric = matrix(&inp["metric"]);
        let class_token = inp["class_token"].as_bool().unwrap();
        let m = bipartite_soft_matching(&metric, inp["r"].as_u64().unwrap() as usize, class_token);
        assert_eq!(m.unm_idx, indices(&out["unm_idx"]), "{name}: unm_idx");
        assert_eq!(m.src_idx, indices(&out["src_idx"]), "{name}: src_idx");
        assert_eq!(m.dst_idx, indices(&out["dst_idx"]), "{name}: dst_idx");

        // Apply the plan to x with sizes, as merge_wavg does; compare rows, sizes, sources.
        let x = matrix(&inp["x"]);
        let (t, c2) = (x.len(), x[0].len());
        let hidden = Tensor::from_vec(x.concat(), (1, t, c2), &Device::Cpu).unwrap();
        let mut state = TokenState::fresh(hidden, 0, (1, t)); // every token a "patch": sources = token ids
        if let Some(sizes) = inp["size"].as_array() {
            state.sizes = sizes.iter().map(|s| s.as_f64().unwrap() as f32).collect();
        }
        let merged = m.plan(&state.sizes).apply(&state, PositionMode::Preserve).unwrap();
        let got = merged.hidden.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let want = matrix(&out["x"]);
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{name}: merged x {g} vs {w}");
        }
        let sizes: Vec<f32> = out["size"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap() as f32).collect();
        assert_eq!(merged.sizes, sizes, "{name}: sizes");
        let groups: Vec<Vec<u32>> = out["source_groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| indices(g).into_iter().map(|i| i as u32).collect())
            .collect();
        assert_eq!(merged.source, groups, "{name}: source");
    }
}

#[test]
fn divprune_matches_the_reference_selection() {
    let fx = fixture();
    for case in fx["divprune"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let inp = &case["inputs"];
        let k = inp["k"].as_u64().unwrap() as usize;
        let dist = if inp["distance"].is_null() {
            let f = matrix(&inp["features"]);
            let t = Tensor::from_vec(f.concat(), (f.len(), f[0].len()), &Device::Cpu).unwrap();
            cosine_matrix(&t, &t).unwrap().into_iter().map(|r| r.into_iter().map(|c| 1.0 - c).collect()).collect()
        } else {
            matrix(&inp["distance"])
        };
        assert_eq!(greedy_max_min(&dist, k), indices(&case["outputs"]["s"]), "{name}: selection order");
    }
}
