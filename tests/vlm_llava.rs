//! Our LLaVA assembly against transformers on a tiny random-weight
//! `LlavaForConditionalGeneration` (`scripts/make_vlm_fixtures.py`): preprocessing, the vision
//! features the projector reads, the projected image tokens, the decoder's logits and attention
//! with the image merged in, greedy decoding, and FastV's selection from that attention.

mod common;

use candle_core::{Device, IndexOp, Tensor};
use common::references::llava_image_tokens as image_tokens;
use common::{fixture, json_ints, json_tensor, max_diff};
use serde_json::Value;
use tokenlens::Cancel;
use tokenlens::model::chat::{ChatTemplate, encode_prompt, load_tokenizer};
use tokenlens::model::llama::KvCache;
use tokenlens::model::llava::Llava;

fn reference(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(&format!("vlm/{name}/reference.json"))).unwrap()).unwrap()
}

fn load() -> (Llava, Value) {
    (Llava::load(&fixture("vlm/llava")).unwrap(), reference("llava"))
}

#[test]
fn preprocessing_and_image_features_match_transformers() {
    let (model, r) = load();
    let photo = image::open(common::asset("chelsea.png")).unwrap().to_rgb8();
    let img = model.preprocessor.resize_and_crop(&photo).unwrap();
    assert_eq!(img.as_raw().iter().map(|&b| u32::from(b)).collect::<Vec<_>>(), json_ints(&r["image_u8_hwc"]));
    let pixels = model.preprocessor.pixels(&img, &Device::Cpu).unwrap();
    let d = max_diff(&pixels, &json_tensor(&r["pixel_values"]));
    assert!(d < 1e-5, "pixel values differ by {d}");
    let state = model.vision_state(&pixels, &Cancel::default()).unwrap();
    // vision_feature_layer -2 with 2 layers: the output of block 0, CLS dropped.
    assert_eq!(model.feature_blocks, 1);
    let selected = state.hidden.i((.., 1..)).unwrap().contiguous().unwrap();
    let d = max_diff(&selected, &json_tensor(&r["selected_vision_features"]));
    assert!(d < 1e-4, "selected vision features differ by {d}");
    let d = max_diff(&model.project(&state).unwrap(), &json_tensor(&r["image_features"]));
    assert!(d < 1e-4, "image features differ by {d}");
}

#[test]
fn logits_and_attention_with_the_image_match_transformers() {
    common::references::check_llava_logits_and_attention();
}

#[test]
fn a_prompt_whose_image_slots_do_not_fit_is_refused() {
    let (model, r) = load();
    let mut ids = json_ints(&r["input_ids"]);
    ids.retain(|&t| t != model.image_token);
    let err = model.merge(&ids, &image_tokens(&model)).unwrap_err().to_string();
    assert!(err.contains("0 <image> tokens") && err.contains("16"), "{err}");
}

#[test]
fn greedy_decoding_with_the_image_yields_the_same_tokens() {
    let (model, r) = load();
    let ids = json_ints(&r["input_ids"]);
    let mut cache = KvCache::default();
    let mut x = model.merge(&ids, &image_tokens(&model)).unwrap();
    let mut pos = 0u32;
    let mut got = Vec::new();
    for _ in 0..r["generate"]["max_new_tokens"].as_u64().unwrap() {
        let n = x.dim(1).unwrap() as u32;
        let positions: Vec<u32> = (pos..pos + n).collect();
        let (hidden, _) = model.lm.forward(&x, &positions, &mut cache, &[], false).unwrap();
        pos += n;
        let last = model.lm.logits(&hidden.narrow(1, n as usize - 1, 1).unwrap()).unwrap();
        let next = last.flatten_all().unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap();
        got.push(next);
        x = model.lm.embed(&[next]).unwrap();
    }
    assert_eq!(got, json_ints(&r["generate"]["generated_ids"]));
}

/// FastV (Chen et al., 2024) scores image token i by the attention the last prompt token pays
/// it in layer K-1, averaged over heads, and keeps the top half: the crate's reducer on our
/// decoder's attention, against the scores and selection computed from transformers'.
#[test]
fn fastv_reducer_on_our_attention_matches_the_reference() {
    use tokenlens::model::layers::AttnRecord;
    use tokenlens::model::{TokenState, Trace};
    use tokenlens::reduce::llm::fastv::{Fastv, FastvConfig};
    use tokenlens::reduce::{Context, Reducer, Site, SiteView};
    let (model, r) = load();
    let fastv = reference("fastv");
    let ids = json_ints(&r["input_ids"]);
    let slots: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == model.image_token).collect();
    let embeds = model.merge(&ids, &image_tokens(&model)).unwrap();
    let positions: Vec<u32> = (0..ids.len() as u32).collect();
    let layers: Vec<usize> = (0..model.lm.num_layers()).collect();
    let (hidden, trace) = model.lm.forward(&embeds, &positions, &mut KvCache::default(), &layers, false).unwrap();
    let image = (0..ids.len()).map(|i| slots.binary_search(&i).ok().map(|t| vec![t as u32])).collect();
    let ctx = Context::decoder(model.lm.num_layers(), slots.len(), (1, slots.len()));
    let rows = TokenState::sequence(hidden, image, (1, slots.len()));
    let no_trace = Trace::default();
    for key in ["K1", "K2"] {
        let want = &fastv[key];
        let layer = want["attention_layer"].as_u64().unwrap() as usize;
        let attn = AttnRecord { probs: Some(trace.attentions[&layer].clone()), keys: None };
        let view = SiteView {
            site: Site::AfterLayer(layer),
            state: &rows,
            attn: &attn,
            full_trace: &no_trace,
            vision_saliency: &[],
        };
        let cfg = FastvConfig { layer: layer + 1, ..Default::default() };
        let mut reducer = Fastv::new(&cfg, want["num_keep"].as_u64().unwrap() as usize, &ctx).unwrap();
        assert_eq!(reducer.sites(), [Site::AfterLayer(layer)], "{key}");
        let plan = reducer.plan(&view).unwrap();
        let kept_rows = plan.kept(&rows);
        let all = plan.scores.unwrap();
        let scores: Vec<f32> = slots.iter().map(|&s| all[s]).collect();
        let d = max_diff(&Tensor::new(scores.as_slice(), &Device::Cpu).unwrap(), &json_tensor(&want["scores"]));
        assert!(d < 1e-5, "{key} scores differ by {d}");
        let kept: Vec<u32> = kept_rows.iter().map(|&row| slots.binary_search(&row).unwrap() as u32).collect();
        assert_eq!(kept, json_ints(&want["kept_image_indices"]), "{key}");
    }
}

#[test]
fn the_expanded_chat_prompt_tokenizes_to_the_reference_ids() {
    let (_, r) = load();
    let tok = tokenizers::Tokenizer::from_file(fixture("vlm/llava/tokenizer.json")).unwrap();
    // The chat template writes BOS itself, so the processor adds no special tokens.
    let enc = tok.encode(r["prompt_expanded"].as_str().unwrap(), false).unwrap();
    assert_eq!(enc.get_ids(), json_ints(&r["input_ids"]).as_slice());
}

#[test]
fn a_config_that_does_not_match_the_weights_is_a_clear_error() {
    let dir = common::copy_fixture("vlm/llava");
    let config = dir.path().join("config.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["text_config"]["intermediate_size"] = 48.into();
    std::fs::write(&config, json.to_string()).unwrap();
    let err = Llava::load(dir.path()).err().expect("a mismatched config must not load").to_string();
    assert!(err.contains("does not match config.json"), "{err}");
    std::fs::write(dir.path().join("model.safetensors"), b"truncated").unwrap();
    let err = Llava::load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn the_rendered_and_expanded_chat_prompt_gives_the_reference_ids() {
    let (model, r) = load();
    let dir = fixture("vlm/llava");
    let prompt = ChatTemplate::load(&dir).unwrap().unwrap().render_image_question("what is in the image?").unwrap();
    assert_eq!(prompt, r["prompt"].as_str().unwrap());
    assert_eq!(model.image_seq_len, 16);
    let expanded = model.expand_image(&prompt);
    assert_eq!(r["prompt_expanded"].as_str().unwrap().strip_prefix("<|begin_of_text|>"), Some(expanded.as_str()));
    let ids = encode_prompt(&load_tokenizer(&dir).unwrap(), &expanded).unwrap();
    assert_eq!(ids, json_ints(&r["input_ids"]));
}

/// The fixture's weights renamed into transformers 5's module tree (`model.language_model.*`,
/// `lm_head`, `model.vision_tower[.vision_model].*`, `model.multi_modal_projector.*`).
fn module_tree_copy(vision_model_level: bool) -> tempfile::TempDir {
    let dir = common::copy_fixture("vlm/llava");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tower = if vision_model_level { "model.vision_tower.vision_model." } else { "model.vision_tower." };
    let renamed: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let new = if let Some(rest) = name.strip_prefix("language_model.model.") {
                format!("model.language_model.{rest}")
            } else if name == "language_model.lm_head.weight" {
                "lm_head.weight".to_string()
            } else if let Some(rest) = name.strip_prefix("vision_tower.") {
                format!("{tower}{rest}")
            } else if let Some(rest) = name.strip_prefix("multi_modal_projector.") {
                format!("model.multi_modal_projector.{rest}")
            } else {
                panic!("unexpected weight {name}")
            };
            (new, view)
        })
        .collect();
    let out = safetensors::serialize(renamed, None).unwrap();
    std::fs::write(&path, out).unwrap();
    dir
}

#[test]
fn module_tree_weight_names_load_and_give_the_same_logits() {
    let r = reference("llava");
    for level in [false, true] {
        let dir = module_tree_copy(level);
        let model = Llava::load(dir.path()).unwrap();
        let ids = json_ints(&r["input_ids"]);
        let embeds = model.merge(&ids, &image_tokens(&model)).unwrap();
        let positions: Vec<u32> = (0..ids.len() as u32).collect();
        let (hidden, _) = model.lm.forward(&embeds, &positions, &mut KvCache::default(), &[], false).unwrap();
        let d = max_diff(&model.lm.logits(&hidden).unwrap(), &json_tensor(&r["logits"]));
        assert!(d < 1e-4, "logits differ by {d} (vision_model level: {level})");
    }
}

#[test]
fn tiny_empty_and_extreme_images_do_not_panic() {
    let (model, _) = load();
    let err = model.preprocessor.resize_and_crop(&image::RgbImage::new(0, 3)).unwrap_err().to_string();
    assert!(err.contains("0x3"), "{err}");
    for (w, h) in [(1, 1), (4000, 1), (1, 4000), (3, 2)] {
        let img = model.preprocessor.resize_and_crop(&image::RgbImage::new(w, h)).unwrap();
        assert_eq!(img.dimensions(), (32, 32), "{w}x{h}");
    }
}
