//! A ratio change resumes from the cached full run: a language-side method first acting after
//! decoder layer k reruns layers k+1.. only, one acting before the decoder reruns every layer but
//! never the tower, and the answers equal a run from scratch bit for bit (ids, log-probabilities,
//! looks, scores, rows). `idefics3_deep` has 6 decoder layers (scripts/make_random_smolvlm.py
//! --fixture), so the methods' sites have layers on both sides.

mod common;

use common::{vlm_full as full, vlm_spec as spec};
use tokenlens::Cancel;
use tokenlens::reduce::llm::LlmReducerConfig;
use tokenlens::reduce::{Budget, Context, Method, ReducerConfig, Site};
use tokenlens::session::RunSpec;
use tokenlens::session::vlm::{Resume, VlmRun};

/// Everything a run reports that resuming could change, compared exactly.
fn assert_same(resumed: &VlmRun, scratch: &VlmRun, what: &str) {
    assert_eq!(resumed.answer, scratch.answer, "{what}: answer (ids, log-probabilities, looks)");
    assert_eq!(resumed.full_answer_token_logprobs, scratch.full_answer_token_logprobs, "{what}: full answer scored");
    assert_eq!(resumed.scores, scratch.scores, "{what}: scores");
    assert_eq!(resumed.image_rows_per_layer, scratch.image_rows_per_layer, "{what}: rows per layer");
    assert_eq!(resumed.groups, scratch.groups, "{what}: groups");
    assert_eq!(resumed.stage, scratch.stage, "{what}: stage");
    assert_eq!(resumed.cost.decoder_tokens, scratch.cost.decoder_tokens, "{what}: decoder tokens");
    assert_eq!(resumed.cost.kv_bytes_prefill, scratch.cost.kv_bytes_prefill, "{what}: KV cache");
    assert_eq!(resumed.cost.kv_bytes_end, scratch.cost.kv_bytes_end, "{what}: KV cache at the end");
}

#[test]
fn language_side_methods_resumed_equal_runs_from_scratch() {
    for name in ["idefics3_deep", "llava"] {
        let (vlm, full) = full(name);
        let layers = vlm.num_layers();
        let n = full.vision.num_image_tokens();
        assert_eq!(full.prefill.inputs.len(), layers, "{name}: one cached input per layer");
        assert_eq!(full.run.recomputed_from_layer, 0);
        let ctx = Context::decoder(layers, n, full.vision.grid);
        let mut reduced_somewhere = 0;
        for mut cfg in LlmReducerConfig::defaults() {
            // The tiny decoders are shallow: bring default layers into range.
            if let Some(l) = cfg.layer(layers) {
                cfg.set_layer(l.min(layers - 1).max(1), layers);
            }
            let first = cfg.sites(&ctx).unwrap()[0];
            let want_from = match first {
                Site::PreLlm => 0,
                Site::AfterLayer(k) => k + 1,
                other => panic!("{other:?} is not a language-side site"),
            };
            // The view layer before, at and after the site (the full run read the middle one).
            for view_layer in [None, Some(0), Some(want_from.saturating_sub(1)), Some(layers - 1)] {
                for removed in [0.0, 0.5, 0.75] {
                    let s = RunSpec {
                        method: Some(Method::Llm(cfg.clone())),
                        budget: Budget::RemoveFraction(removed),
                        view_layer,
                        ..spec()
                    };
                    let what = format!("{name} {} removed {removed} view {view_layer:?}", cfg.name());
                    let resumed = vlm.run(&full, &s, Resume::FromCache, &mut |_| {}, &Cancel::default()).unwrap();
                    let scratch = vlm.run(&full, &s, Resume::FromScratch, &mut |_| {}, &Cancel::default()).unwrap();
                    assert_same(&resumed, &scratch, &what);
                    assert_eq!(resumed.recomputed_from_layer, want_from, "{what}");
                    assert_eq!(scratch.recomputed_from_layer, 0, "{what}");
                    assert_eq!(resumed.tower_recomputed_from, None, "{what}: the tower never reruns");
                    if resumed.image_rows_per_layer.last() < Some(&n) {
                        reduced_somewhere += 1;
                    }
                }
            }
        }
        assert!(reduced_somewhere > 0, "{name}: no method removed a row: the comparison would be vacuous");
    }
}

#[test]
fn fastv_at_k2_reruns_layers_2_on_with_the_answer_of_a_run_from_scratch() {
    let (vlm, full) = full("idefics3_deep");
    let s =
        RunSpec { method: Some(Method::from_name("fastv").unwrap()), budget: Budget::RemoveFraction(0.5), ..spec() };
    let resumed = vlm.run(&full, &s, Resume::FromCache, &mut |_| {}, &Cancel::default()).unwrap();
    let scratch = vlm.run(&full, &s, Resume::FromScratch, &mut |_| {}, &Cancel::default()).unwrap();
    assert_same(&resumed, &scratch, "fastv K=2");
    assert_eq!(resumed.recomputed_from_layer, 2);
    assert_eq!(resumed.stage.to_string(), "llm(1)");
    let n = full.vision.num_image_tokens();
    assert_eq!(resumed.image_rows_per_layer[..2], [n, n]);
    assert!(resumed.image_rows_per_layer[2..].iter().all(|&r| r == n - n / 2), "{:?}", resumed.image_rows_per_layer);
    assert!(!resumed.answer.ids.is_empty());
}

#[test]
fn vision_side_methods_rerun_the_tower_only_from_their_block() {
    for name in ["llava", "idefics3_deep"] {
        let (vlm, full) = full(name);
        let n = full.vision.num_image_tokens();
        let tower_layers = full.vision.context().num_layers;
        for mut cfg in ReducerConfig::defaults() {
            if let Some(l) = cfg.layer(tower_layers) {
                cfg.set_layer(l.min(tower_layers - 1));
            }
            let s = RunSpec { method: Some(Method::Vision(cfg.clone())), budget: Budget::Keep(n / 2), ..spec() };
            let what = format!("{name} {}", cfg.name());
            let Ok(resumed) = vlm.run(&full, &s, Resume::FromCache, &mut |_| {}, &Cancel::default()) else {
                continue; // refused (SmolVLM's tower; merging more than half): vlm_run.rs checks why
            };
            let scratch = vlm.run(&full, &s, Resume::FromScratch, &mut |_| {}, &Cancel::default()).unwrap();
            assert_same(&resumed, &scratch, &what);
            assert_eq!(resumed.recomputed_from_layer, 0, "{what}: the decoder's input changed");
            match resumed.stage.to_string().as_str() {
                "pre_llm" => assert_eq!(resumed.tower_recomputed_from, None, "{what}: pre-LLM never reruns the tower"),
                _ => {
                    let block = resumed.tower_recomputed_from.expect("an in-tower method reruns the tower");
                    assert!(block < tower_layers, "{what}: {block}");
                }
            }
        }
    }
}
