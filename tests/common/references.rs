//! Reference checks shared by the test binaries that run them on different paths: the fused CPU
//! kernels (`hf_encoders.rs`, `vlm_*.rs`) and the tensor-op path a GPU runs (`tensor_ops.rs`).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Value;
use tokenlens::Cancel;
use tokenlens::model::hf::HfVision;
use tokenlens::model::idefics3::Idefics3;
use tokenlens::model::llama::KvCache;
use tokenlens::model::llava::Llava;
use tokenlens::model::{HookPoint, NoIntervention, Probe, Trace};

use super::{asset, fixture, json_ints, json_tensor, max_diff};

pub fn encoder_folder(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoders").join(name)
}

pub fn encoder_reference(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(encoder_folder(name).join("reference.json")).unwrap()).unwrap()
}

/// Runs the folder's encoder on the reference's pixel values; checks every layer's attention,
/// the final features and (for classifiers) the logits.
pub fn check_hf_encoder(name: &str) {
    let model = HfVision::load(&encoder_folder(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let r = encoder_reference(name);
    let pixels = json_tensor(&r["pixel_values"]);
    let enc = &model.encoder;
    let layers = enc.num_layers();
    let mut trace = Trace::default();
    let mut state = enc.embed(&pixels).unwrap();
    enc.run_blocks(&mut state, layers, &Probe::attention(layers), &mut trace, &mut NoIntervention, &Cancel::default())
        .unwrap();
    for (l, want) in r["attentions"].as_array().unwrap().iter().enumerate() {
        let d = max_diff(trace.require(HookPoint::AttnProbs(l)).unwrap(), &json_tensor(want));
        assert!(d < 1e-4, "{name}: layer {l} attention differs by {d}");
    }
    let features = enc.final_norm(&state).unwrap();
    let d = max_diff(&features, &json_tensor(&r["last_hidden_state"]));
    assert!(d < 1e-4, "{name}: last_hidden_state differs by {d}");
    match (model.logits(&features).unwrap(), r.get("logits")) {
        (Some(ours), Some(want)) => {
            let d = max_diff(&ours, &json_tensor(want));
            assert!(d < 1e-4, "{name}: logits differ by {d}");
            assert_eq!(model.labels.len(), ours.dim(1).unwrap());
        }
        (None, None) => {}
        (ours, want) => panic!("{name}: head mismatch (ours {}, reference {})", ours.is_some(), want.is_some()),
    }
}

pub fn vlm_reference(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(&format!("vlm/{name}/reference.json"))).unwrap()).unwrap()
}

/// The image tokens LLaVA makes of `assets/chelsea.png`, through our preprocessing.
pub fn llava_image_tokens(model: &Llava) -> Tensor {
    let photo = image::open(asset("chelsea.png")).unwrap().to_rgb8();
    let img = model.preprocessor.resize_and_crop(&photo).unwrap();
    let pixels = model.preprocessor.pixels(&img, &Device::Cpu).unwrap();
    model.project(&model.vision_state(&pixels, &Cancel::default()).unwrap()).unwrap()
}

/// LLaVA's merged embeddings, logits and every layer's attention against transformers.
pub fn check_llava_logits_and_attention() {
    let model = Llava::load(&fixture("vlm/llava")).unwrap();
    let r = vlm_reference("llava");
    let ids = json_ints(&r["input_ids"]);
    let embeds = model.merge(&ids, &llava_image_tokens(&model)).unwrap();
    let d = max_diff(&embeds, &json_tensor(&r["hidden_states"][0]));
    assert!(d < 1e-4, "merged embeddings differ by {d}");
    let positions: Vec<u32> = (0..ids.len() as u32).collect();
    let layers: Vec<usize> = (0..model.lm.num_layers()).collect();
    let (hidden, trace) = model.lm.forward(&embeds, &positions, &mut KvCache::default(), &layers, false).unwrap();
    let d = max_diff(&model.lm.logits(&hidden).unwrap(), &json_tensor(&r["logits"]));
    assert!(d < 1e-4, "logits differ by {d}");
    for (l, want) in r["attentions"].as_array().unwrap().iter().enumerate() {
        let d = max_diff(&trace.attentions[&l], &json_tensor(want));
        assert!(d < 1e-4, "layer {l} attention differs by {d}");
    }
}

/// SmolVLM's (Idefics3) logits, every layer's attention and greedy tokens against transformers.
pub fn check_idefics3_logits_and_greedy() {
    let model = Idefics3::load(&fixture("vlm/idefics3")).unwrap();
    let r = vlm_reference("idefics3");
    let photo = image::open(asset("chelsea.png")).unwrap().to_rgb8();
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
    assert_eq!(greedy(&model, &hidden, &mut cache, &r), json_ints(&r["generate"]["generated_ids"]));
}

/// Plain argmax decoding after a prefill whose last layer output is `hidden`, continuing the
/// cache, for as many tokens as the reference generated.
pub fn greedy(model: &Idefics3, hidden: &Tensor, cache: &mut KvCache, r: &Value) -> Vec<u32> {
    let n = hidden.dim(1).unwrap();
    let mut next = model.lm.logits(&hidden.narrow(1, n - 1, 1).unwrap()).unwrap();
    let mut got = Vec::new();
    for step in 0..r["generate"]["max_new_tokens"].as_u64().unwrap() as u32 {
        let id = next.flatten_all().unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap();
        got.push(id);
        let (h, _) = model.lm.forward(&model.lm.embed(&[id]).unwrap(), &[n as u32 + step], cache, &[], false).unwrap();
        next = model.lm.logits(&h).unwrap();
    }
    got
}
