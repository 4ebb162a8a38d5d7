//! A settings file written by the app before its state was split (2026-11-30: `Settings` with
//! non-default values, as `serde_json` wrote it) still loads, field for field.

use tokenlens::app::{Head, Overlay, Settings, Tab, VlmOverlay};
use tokenlens::reduce::Budget;

const SAVED: &str = r#"{"spec":{"reducer":{"method":"cls_topk","layer":null,"average_layers":[]},"budget":{"remove_fraction":0.5},"fill":"zeros","positions":"preserve"},"overlay":"attention","layer":7,"head":{"One":2},"colormap":"viridis","opacity":0.35,"scale":"min_max","source":"full","dark":false,"recent":["/img/cat.png"],"compare":[{"method":"tome","first_layer":0,"last_layer":null,"proportional_attention":true},{"method":"cls_topk","layer":null,"average_layers":[]},{"method":"divprune"}],"prompt":"a cat, a dog, a car, a cup of coffee, a rocket, a person","vlm":{"question":"How many cats?","method":{"method":"cls_topk","layer":null,"average_layers":[]},"max_new_tokens":12,"view_layer":1,"overlay":"text_to_image","split_image":false,"compare":[{"method":"fastv","layer":2,"query":"last"},{"method":"sparsevlm","layers":null,"decay":0.5,"recycle":0.3,"recycle_group":10},{"method":"divprune"},{"method":"random","seed":0}]},"tab":"compare"}"#;

#[test]
fn settings_saved_before_the_split_still_load() {
    let s: Settings = serde_json::from_str(SAVED).unwrap();
    let mut expected = Settings {
        opacity: 0.35,
        dark: false,
        recent: vec!["/img/cat.png".into()],
        overlay: Overlay::Attention,
        layer: 7,
        head: Head::One(2),
        tab: Tab::Compare,
        ..Settings::default()
    };
    expected.spec.budget = Budget::RemoveFraction(0.5);
    expected.vlm.question = "How many cats?".into();
    expected.vlm.max_new_tokens = 12;
    expected.vlm.view_layer = Some(1);
    expected.vlm.overlay = VlmOverlay::TextToImage;
    expected.compare.truncate(3);
    assert_eq!(s, expected);
    // And it is written back the same way.
    assert_eq!(serde_json::to_string(&s).unwrap(), SAVED);
}
