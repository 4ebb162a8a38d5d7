//! Our Idefics3 (SmolVLM) assembly against transformers on a tiny random-weight
//! `Idefics3ForConditionalGeneration` (`scripts/make_vlm_fixtures.py`): the two Pillow LANCZOS
//! resizes, the SigLIP tower, the pixel-shuffle connector, and the decoder with the image merged.

mod common;

use candle_core::{Device, Tensor};
use common::{fixture, json_ints, json_tensor, max_diff};
use serde_json::Value;
use tokenlens::Cancel;
use tokenlens::model::chat::{ChatTemplate, encode_prompt, load_tokenizer};
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
    common::references::check_idefics3_logits_and_greedy();
}

#[test]
fn the_folder_default_for_splitting_is_read_and_no_longer_refused() {
    let (model, _) = load();
    assert!(!model.preprocessor.split);
    assert_eq!(model.image_seq_len, 9);
    let dir = common::copy_fixture("vlm/idefics3");
    let path = dir.path().join("processor_config.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["image_processor"]["do_image_splitting"] = true.into();
    std::fs::write(&path, json.to_string()).unwrap();
    assert!(Idefics3::load(dir.path()).unwrap().preprocessor.split);
    json["image_seq_len"] = 16.into();
    std::fs::write(&path, json.to_string()).unwrap();
    let err = Idefics3::load(dir.path()).err().expect("a wrong image_seq_len must not load").to_string();
    assert!(err.contains("image_seq_len 16") && err.contains("processor_config.json"), "{err}");
}

#[test]
fn the_chat_prompt_expanded_tokenizes_to_the_reference_ids() {
    let (model, r) = load();
    let dir = fixture("vlm/idefics3");
    let prompt = ChatTemplate::load(&dir).unwrap().unwrap().render_image_question("what is in the image?").unwrap();
    assert_eq!(prompt, r["prompt"].as_str().unwrap());
    let tiles = model.preprocessor.tiles(&chelsea(), false).unwrap();
    assert_eq!((tiles.rows, tiles.cols, tiles.images.len()), (0, 0, 1));
    let expanded = model.expand_image(&prompt, tiles.rows, tiles.cols);
    let tok = load_tokenizer(&dir).unwrap();
    assert_eq!(encode_prompt(&tok, &expanded).unwrap(), json_ints(&r["input_ids"]));
}

fn chelsea() -> image::RgbImage {
    image::open(common::asset("chelsea.png")).unwrap().to_rgb8()
}

fn split_fixture() -> (Idefics3, Value) {
    let r = std::fs::read_to_string(fixture("vlm/idefics3_split/reference.json")).unwrap();
    (Idefics3::load(&fixture("vlm/idefics3_split")).unwrap(), serde_json::from_str(&r).unwrap())
}

/// The tiles' uint8 pixels in transformers' CHW layout.
fn chw(img: &image::RgbImage) -> Vec<u32> {
    let (w, h) = img.dimensions();
    let mut out = Vec::with_capacity((3 * w * h) as usize);
    for c in 0..3 {
        out.extend(img.pixels().map(|p| u32::from(p.0[c])));
    }
    assert_eq!(out.len(), (3 * w * h) as usize);
    out
}

#[test]
fn split_tiles_match_transformers_pixel_for_pixel() {
    let (model, r) = split_fixture();
    assert!(model.preprocessor.split);
    let tiles = model.preprocessor.tiles(&chelsea(), true).unwrap();
    assert_eq!((tiles.rows, tiles.cols), (r["rows"].as_u64().unwrap() as usize, r["cols"].as_u64().unwrap() as usize));
    assert!(tiles.is_split());
    let want = json_ints(&r["pixel_values_u8"]);
    let shape: Vec<u64> =
        r["pixel_values_u8"]["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(shape[0] as usize, tiles.images.len());
    let got: Vec<u32> = tiles.images.iter().flat_map(chw).collect();
    assert_eq!(got.len(), want.len());
    let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "uint8 tiles differ");
    // The float pixel values: tile 0 as transformers returned it, every tile from its uint8.
    let pixels = model.preprocessor.tile_pixels(&tiles, &Device::Cpu).unwrap();
    let d = max_diff(&pixels[0].squeeze(0).unwrap(), &json_tensor(&r["pixel_values_tile0"]));
    assert!(d < 1e-6, "tile 0 pixel values differ by {d}");
    let all = Tensor::cat(&pixels, 0).unwrap();
    let from_u8: Vec<f32> = want.iter().map(|&v| ((f64::from(v) * (1.0 / 255.0)) as f32 - 0.5) / 0.5).collect();
    let from_u8 = Tensor::from_vec(from_u8, all.dims(), &Device::Cpu).unwrap();
    let d = max_diff(&all, &from_u8);
    assert!(d < 1e-6, "pixel values differ by {d}");
}

#[test]
fn split_prompt_ids_features_and_logits_match_transformers() {
    let (model, r) = split_fixture();
    let dir = fixture("vlm/idefics3_split");
    let tiles = model.preprocessor.tiles(&chelsea(), true).unwrap();
    let prompt = ChatTemplate::load(&dir).unwrap().unwrap().render_image_question("what is in the image?").unwrap();
    let expanded = model.expand_image(&prompt, tiles.rows, tiles.cols);
    let want_text = r["prompt_expanded"].as_str().unwrap();
    assert_eq!(want_text.strip_prefix("<|begin_of_text|>"), Some(expanded.as_str()));
    let ids = encode_prompt(&load_tokenizer(&dir).unwrap(), &expanded).unwrap();
    assert_eq!(ids, json_ints(&r["input_ids"]));

    let pixels = model.preprocessor.tile_pixels(&tiles, &Device::Cpu).unwrap();
    let image = model.image_features_tiles(&pixels, &Cancel::default()).unwrap();
    let d = max_diff(&image, &json_tensor(&r["image_features"]));
    assert!(d < 1e-4, "image features differ by {d}");
    let embeds = model.lm.embed_with_image(&ids, model.image_token, &image).unwrap();
    let positions: Vec<u32> = (0..ids.len() as u32).collect();
    let mut cache = KvCache::default();
    let (hidden, _) = model.lm.forward(&embeds, &positions, &mut cache, &[], false).unwrap();
    let d = max_diff(&model.lm.logits(&hidden).unwrap(), &json_tensor(&r["logits"]));
    assert!(d < 1e-4, "logits differ by {d}");
    assert_eq!(common::references::greedy(&model, &hidden, &mut cache, &r), json_ints(&r["generate"]["generated_ids"]));
}

/// The fixture's synthetic image: pixel (x, y) = ((7x + 13y) % 256, 3x % 256, 5y % 256).
fn pattern(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([((x * 7 + y * 13) % 256) as u8, ((x * 3) % 256) as u8, ((y * 5) % 256) as u8])
    })
}

#[test]
fn extreme_sizes_split_and_resize_as_in_transformers() {
    use sha2::{Digest, Sha256};
    let (model, r) = split_fixture();
    for case in r["extreme_sizes"].as_array().unwrap() {
        let (w, h) = (case["width"].as_u64().unwrap() as u32, case["height"].as_u64().unwrap() as u32);
        let split = case["split"].as_bool().unwrap();
        let tiles = model.preprocessor.tiles(&pattern(w, h), split).unwrap();
        let what = format!("{w}x{h} split {split}");
        assert_eq!(tiles.rows as u64, case["rows"].as_u64().unwrap(), "{what}");
        assert_eq!(tiles.cols as u64, case["cols"].as_u64().unwrap(), "{what}");
        let hashes: Vec<String> = tiles
            .images
            .iter()
            .map(|t| Sha256::digest(t.as_raw()).iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        let want: Vec<String> =
            case["sha256_u8_hwc"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        // 5x4000 -> 1x64 is one of Pillow's vertical-pass-first resizes.
        assert_eq!(hashes, want, "{what}");
    }
}

#[test]
fn an_empty_image_is_an_error_not_a_panic() {
    let (model, _) = split_fixture();
    for (w, h) in [(0, 0), (0, 5), (7, 0)] {
        for split in [true, false] {
            let err = model.preprocessor.tiles(&image::RgbImage::new(w, h), split).unwrap_err().to_string();
            assert!(err.contains(&format!("{w}x{h}")), "{err}");
        }
    }
    // Extreme aspect ratios go through (transformers accepts them too).
    for (w, h) in [(20_000, 1), (1, 20_000), (1, 1)] {
        let tiles = model.preprocessor.tiles(&pattern(w, h), true).unwrap();
        assert!(tiles.images.iter().all(|t| t.dimensions() == (32, 32)));
    }
}
