//! Our Idefics3 (SmolVLM) assembly against transformers on a tiny random-weight
//! `Idefics3ForConditionalGeneration` (`scripts/make_vlm_fixtures.py`): the two Pillow LANCZOS
//! resizes, the SigLIP tower, the pixel-shuffle connector, and the decoder with the image merged.

mod common;

use candle_core::Device;
use common::{fixture, json_ints, json_tensor, max_diff};
use serde_json::Value;
use tokenlens::Cancel;
use tokenlens::model::idefics3::Idefics3;
use tokenlens::model::llama::KvCache;

fn load() -> (Idefics3, Value) {
    let r = std::fs::read_to_string(fixture("vlm/idefics3/reference.json")).unwrap();
    (Idefics3::load(&fixture("vlm/idefics3")).unwrap(), serde_json::from_str(&r).unwrap())
}

#[test]
fn preprocessing_tower_and_connector_match_transformers() {
    let (model, r) = load();
    let photo = image::open(common::asset("chelsea.png")).unwrap().to_rgb8();
    let pixels = model.preprocessor.pixels(&model.preprocessor.resize(&photo), &Device::Cpu).unwrap();
    let want = json_tensor(&r["pixel_values"]).squeeze(0).unwrap();
    let d = max_diff(&pixels, &want);
    assert!(d < 1e-5, "pixel values differ by {d}");
    let features = model.vision_features(&pixels, &Cancel::default()).unwrap();
    let d = max_diff(&features, &json_tensor(&r["vision_last_hidden_state"]));
    assert!(d < 1e-4, "vision features differ by {d}");
    let image = model.connect(&features).unwrap();
    let want = json_tensor(&r["image_features"]);
    let d = max_diff(&image, &want.reshape(image.dims()).unwrap());
    assert!(d < 1e-4, "image features differ by {d}");
}

#[test]
fn logits_and_greedy_tokens_with_the_image_match_transformers() {
    let (model, r) = load();
    let photo = image::open(common::asset("chelsea.png")).unwrap().to_rgb8();
    let pixels = model.preprocessor.pixels(&model.preprocessor.resize(&photo), &Device::Cpu).unwrap();
    let image = model.connect(&model.vision_features(&pixels, &Cancel::default()).unwrap()).unwrap();
    let ids = json_ints(&r["input_ids"]);
    let embeds = model.lm.embed_with_image(&ids, model.image_token, &image).unwrap();
    let positions: Vec<u32> = (0..ids.len() as u32).collect();
    let layers: Vec<usize> = (0..model.lm.num_layers()).collect();
    let mut cache = KvCache::default();
    let (hidden, trace) = model.lm.forward(&embeds, &positions, &mut cache, &layers, false).unwrap();
    let d = max_diff(&model.lm.logits(&hidden).unwrap(), &json_tensor(&r["logits"]));
    assert!(d < 1e-4, "logits differ by {d}");
    for (l, want) in r["attentions"].as_array().unwrap().iter().enumerate() {
        let d = max_diff(&trace.attentions[&l], &json_tensor(want));
        assert!(d < 1e-4, "layer {l} attention differs by {d}");
    }
    // Greedy continuation with the cache.
    let n = ids.len();
    let mut next = model.lm.logits(&hidden.narrow(1, n - 1, 1).unwrap()).unwrap();
    let mut got = Vec::new();
    for step in 0..r["generate"]["max_new_tokens"].as_u64().unwrap() as u32 {
        let id = next.flatten_all().unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap();
        got.push(id);
        let (h, _) =
            model.lm.forward(&model.lm.embed(&[id]).unwrap(), &[n as u32 + step], &mut cache, &[], false).unwrap();
        next = model.lm.logits(&h).unwrap();
    }
    assert_eq!(got, json_ints(&r["generate"]["generated_ids"]));
}

#[test]
fn image_splitting_is_refused_with_a_clear_error() {
    let dir = common::copy_fixture("vlm/idefics3");
    let path = dir.path().join("processor_config.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["image_processor"]["do_image_splitting"] = true.into();
    std::fs::write(&path, json.to_string()).unwrap();
    let err = Idefics3::load(dir.path()).err().expect("splitting is not read yet").to_string();
    assert!(err.contains("do_image_splitting") && err.contains("processor_config.json"), "{err}");
}
