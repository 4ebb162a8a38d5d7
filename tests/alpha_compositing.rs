//! Transparency becomes RGB as each model's reference pipeline makes it
//! (`scripts/make_alpha_fixtures.py`): transformers' `convert_to_rgb` (onto white) where the
//! image processor converts, Pillow's `convert("RGB")` (alpha dropped) where it does not, for
//! every PNG kind of transparency; and the processed pixels of an RGBA image equal
//! transformers' processors for CLIP, SigLIP, DINOv2, ViT, LLaVA-1.5 and SmolVLM.

mod common;

use std::path::Path;

use candle_core::Tensor;
use common::{fixture, json_fixture, json_floats};
use image::RgbImage;
use tokenlens::model::ModelSource;
use tokenlens::model::hf_preprocess::{CONVERT_RGB_DEFAULTS, alpha_rule};
use tokenlens::model::preprocess::{Alpha, decode_image, decode_image_as};
use tokenlens::session::Session;
use tokenlens::session::vlm::Vlm;

const KINDS: [&str; 6] = ["rgba", "la", "palette_trns", "grey_trns", "rgb_trns", "blend"];

fn bytes(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap()
}

fn reference_rgb(rel: &str) -> RgbImage {
    image::open(fixture(rel)).unwrap().into_rgb8()
}

#[test]
fn every_kind_of_transparency_decodes_as_transformers_and_pillow_convert_it() {
    for kind in KINDS {
        let png = bytes(&format!("alpha/{kind}.png"));
        let white = decode_image_as(&png, Alpha::OntoWhite).unwrap();
        assert!(white == reference_rgb(&format!("alpha/{kind}.white.png")), "{kind}: onto white != convert_to_rgb");
        let dropped = decode_image_as(&png, Alpha::Drop).unwrap();
        assert!(dropped == reference_rgb(&format!("alpha/{kind}.drop.png")), "{kind}: drop != convert(\"RGB\")");
        assert!(decode_image(&png).unwrap() == dropped, "{kind}: decode_image drops alpha");
        // The fixtures are made so that the two rules differ: a test of one cannot pass on the other.
        assert!(white != dropped, "{kind}: the two rules agree on this image");
    }
}

#[test]
fn do_convert_rgb_defaults_are_transformers_class_defaults() {
    let theirs = &json_fixture("alpha/processors.json")["do_convert_rgb_defaults"];
    for (class, ours) in CONVERT_RGB_DEFAULTS {
        // transformers leaves the ViT and DeiT default unset (None): no conversion.
        assert_eq!(ours, theirs[class].as_bool().unwrap_or(false), "{class}");
    }
    let rule = |json: serde_json::Value| alpha_rule(&json).unwrap();
    use serde_json::json;
    assert_eq!(rule(json!({"image_processor_type": "CLIPImageProcessor"})), Alpha::OntoWhite);
    assert_eq!(rule(json!({"feature_extractor_type": "CLIPFeatureExtractor"})), Alpha::OntoWhite);
    assert_eq!(rule(json!({"image_processor_type": "SiglipImageProcessorFast"})), Alpha::OntoWhite);
    assert_eq!(rule(json!({"feature_extractor_type": "ViTFeatureExtractor"})), Alpha::Drop);
    assert_eq!(rule(json!({"image_processor_type": "ViTImageProcessor", "do_convert_rgb": true})), Alpha::OntoWhite);
    // transformers reads an explicit null as None: no conversion.
    assert_eq!(rule(json!({"image_processor_type": "CLIPImageProcessor", "do_convert_rgb": null})), Alpha::Drop);
    assert_eq!(rule(json!({"image_processor_type": "CLIPImageProcessor", "do_convert_rgb": false})), Alpha::Drop);
    let err = alpha_rule(&json!({"do_convert_rgb": "yes"})).unwrap_err();
    assert!(err.contains("do_convert_rgb is \"yes\""), "{err}");
}

fn check(name: &str, got: &Tensor, want: &serde_json::Value, field: &str) {
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want = json_floats(&want[field]);
    assert_eq!(got.len(), want.len(), "{name} {field}: size");
    let d = common::max_abs_diff(&got, &want);
    assert!(d < 1e-5, "{name} {field}: pixel values differ from transformers' by {d}");
}

#[test]
fn encoder_processors_treat_an_rgba_image_as_transformers_does() {
    let r = json_fixture("alpha/processors.json");
    let png = bytes("alpha/rgba.png");
    for (name, alpha) in
        [("clip", Alpha::OntoWhite), ("siglip", Alpha::OntoWhite), ("dinov2", Alpha::OntoWhite), ("vit", Alpha::Drop)]
    {
        let want = &r["outputs"][name];
        let folder = fixture(want["folder"].as_str().unwrap());
        let session = Session::load(&ModelSource::File(folder), &mut |_| {}).unwrap();
        assert_eq!(session.model().unwrap().preprocessor.alpha(), alpha, "{name}");
        let input = session.image_from_bytes(&png, Path::new("rgba.png")).unwrap();
        check(name, &input.prepared.pixels, want, "pixel_values");
    }
    // ViT's processor does not convert: transformers refuses the 4-channel image as opened,
    // and its reference is the processor on `load_image`'s RGB.
    assert!(r["outputs"]["vit"]["refused_as_opened"].as_str().unwrap().contains("mean must have 4 elements"));
}

#[test]
fn vlm_processors_composite_an_rgba_image_onto_white_as_transformers_does() {
    let r = json_fixture("alpha/processors.json");
    let png = bytes("alpha/rgba.png");
    let label = Path::new("rgba.png");
    let (dir, _) = common::assemble_tiny("llava-1.5-7b-hf");
    let vlm = Vlm::load(dir.path()).unwrap();
    let image = vlm.arch.image_from_bytes(&png, label, false).unwrap();
    check("llava", &image.pixels[0], &r["outputs"]["llava-1.5-7b-hf"], "pixel_values");

    let want = &r["outputs"]["SmolVLM-256M-Instruct"];
    let (dir, _) = common::assemble_tiny("SmolVLM-256M-Instruct");
    let vlm = Vlm::load(dir.path()).unwrap();
    let whole = vlm.arch.image_from_bytes(&png, label, false).unwrap();
    assert_eq!(whole.pixels.len(), 1);
    check("smolvlm", &whole.pixels[0], want, "pixel_values");
    let split = vlm.arch.image_from_bytes(&png, label, true).unwrap();
    assert_eq!(split.pixels.len() as u64, want["split_images"].as_u64().unwrap(), "smolvlm: tiles + global");
    check("smolvlm split", &split.pixels[0], want, "split_first");
    check("smolvlm split", split.pixels.last().unwrap(), want, "split_last");
}
