//! The "reduced model" source of the attention views (the app's attention, rollout and norm maps
//! from the reduced run's own blocks) against the full model's: equal where nothing was reduced,
//! and a merged token's value spread over its patches (tiny vit fixture).

mod common;

use common::{asset, fixture};
use tokenlens::Cancel;
use tokenlens::model::ModelSource;
use tokenlens::reduce::{Budget, ReducerConfig};
use tokenlens::session::{RunSpec, Session};

fn spec(method: &str, removed: f64) -> RunSpec {
    RunSpec::vision(ReducerConfig::from_name(method).unwrap(), Budget::RemoveFraction(removed))
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
}

#[test]
fn reduced_maps_equal_the_full_ones_where_nothing_is_reduced_and_spread_merges() {
    let mut session = Session::load(&ModelSource::File(fixture("encoders/vit")), &mut |_| {}).unwrap();
    let input = session.open_image(&asset("chelsea.png")).unwrap();
    let analysis = session.open(&input, &Cancel::default()).unwrap();
    let layers = analysis.cls_attention.len();

    // Nothing removed: the reduced model is the full one, block for block (for the methods that
    // still re-run blocks at 0 %; one that re-runs none leaves the maps to the analysis).
    let mut recorded = 0;
    for method in ["tome", "evit", "pitome"] {
        let mut at_zero = spec(method, 0.0);
        at_zero.reducer_mut().unwrap().set_layer(0); // the fixture has 2 blocks
        let none = session.reduce(&at_zero, &Cancel::default()).unwrap();
        let Some(maps) = none.maps.as_ref().map(|m| m.get().unwrap()) else {
            assert_eq!(none.recomputed_from_block, layers, "{method}: blocks re-ran but no maps");
            continue;
        };
        recorded += 1;
        assert_eq!(maps.cls_attention, analysis.cls_attention, "{method}");
        assert_eq!(maps.cls_attention_heads, analysis.cls_attention_heads, "{method}");
        assert_eq!(maps.token_norms, analysis.token_norms, "{method}");
        let (got, want) = (&maps.rollout, &analysis.rollout);
        assert!(close(got, want, 1e-5), "{method}: {:?}\n{:?}", &got[..4], &want[..4]);
    }
    assert!(recorded > 0, "no method re-ran a block at 0 %: the equality was not checked");

    // A method acting on the encoder output changes no block: its maps are the full model's,
    // and the run leaves them to the analysis (no cost on the slider).
    let topk = session.reduce(&spec("cls_topk", 0.5), &Cancel::default()).unwrap();
    assert_eq!(topk.recomputed_from_block, layers);
    assert!(topk.maps.is_none());

    // ToMe at 50 %: block 0 attends before its first merge (as the full model); later blocks
    // attend over merged tokens, whose share is split evenly over their patches.
    let tome = session.reduce(&spec("tome", 0.5), &Cancel::default()).unwrap();
    let maps = tome.maps.as_ref().unwrap().get().unwrap();
    assert_eq!(maps.cls_attention[0], analysis.cls_attention[0]);
    assert_ne!(maps.cls_attention[layers - 1], analysis.cls_attention[layers - 1]);
    let last = layers - 1;
    let merged: Vec<&Vec<u32>> = tome.groups.iter().filter(|g| g.len() > 1).collect();
    assert!(!merged.is_empty());
    for group in merged {
        // The last block's output tokens are the run's groups: one norm on all their patches.
        let norms: Vec<f32> = group.iter().map(|&p| maps.token_norms[last][p as usize]).collect();
        assert!(norms.iter().all(|&n| n == norms[0] && n.is_finite()), "{group:?}: {norms:?}");
    }
    // Block 1 attends over block 0's output tokens (the patches sharing a norm after block 0):
    // each such token's share is split evenly over its patches.
    let mut tokens: std::collections::HashMap<u32, Vec<usize>> = Default::default();
    for (p, n) in maps.token_norms[0].iter().enumerate() {
        tokens.entry(n.to_bits()).or_default().push(p);
    }
    let merged_after_0: Vec<&Vec<usize>> = tokens.values().filter(|ps| ps.len() > 1).collect();
    assert!(!merged_after_0.is_empty(), "ToMe merges in block 0");
    for patches in merged_after_0 {
        let shares: Vec<f32> = patches.iter().map(|&p| maps.cls_attention[1][p]).collect();
        assert!(shares.iter().all(|&a| a == shares[0] && a > 0.0), "{patches:?}: {shares:?}");
    }
    // ToMe drops nothing: every patch has a value, and the CLS row still sums to at most 1.
    for l in 0..layers {
        assert!(maps.cls_attention[l].iter().all(|v| v.is_finite()), "layer {l}");
        let sum: f32 = maps.cls_attention[l].iter().sum();
        assert!(sum > 0.0 && sum <= 1.0 + 1e-5, "layer {l}: {sum}");
    }
    let rollout_sum: f32 = maps.rollout.iter().sum();
    let full_sum: f32 = analysis.rollout.iter().sum();
    assert!(rollout_sum > 0.0 && rollout_sum <= 1.0 + 1e-5 && full_sum <= 1.0 + 1e-5, "{rollout_sum} {full_sum}");
}
