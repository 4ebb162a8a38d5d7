//! The Rust model against onnxruntime running the original ONNX graph
//! (fixtures from `scripts/make_reference.py`).

mod common;

use candle_core::{DType, Tensor};
use common::{asset, fixture, max_abs_diff, reference, session};
use tokenlens::Cancel;
use tokenlens::analysis::attention::cls_attention;
use tokenlens::model::preprocess::{self, Prepared};
use tokenlens::model::{HookPoint, NoIntervention, Probe, Trace};

/// (fixture stem, image path) for every reference image.
fn cases() -> Vec<(&'static str, std::path::PathBuf)> {
    vec![
        ("chelsea", asset("chelsea.png")),
        ("astronaut", asset("astronaut.png")),
        ("coffee", asset("coffee.png")),
        ("rocket", asset("rocket.jpg")),
        ("astronaut_crop224", fixture("images/astronaut_crop224.png")),
    ]
}

/// The reference's own padded canvas, normalised by us (normalisation is checked separately).
fn prepared_from_reference(stem: &str) -> Prepared {
    let r = reference(stem);
    let u8s = r["padded_u8"].flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let canvas = image::RgbImage::from_raw(224, 224, u8s).unwrap();
    let c = r["content"].to_vec1::<i64>().unwrap();
    let content =
        preprocess::ContentRect { top: c[0] as u32, left: c[1] as u32, height: c[2] as u32, width: c[3] as u32 };
    let pixels = preprocess::normalize(&canvas, &candle_core::Device::Cpu).unwrap();
    let place = preprocess::letterbox_place(&content, (224, 224), 224); // unused by these tests
    Prepared { canvas, content, pixels, place }
}

#[test]
fn saliency_and_cls_attention_match_onnxruntime() {
    let s = session();
    for (stem, _) in cases() {
        let r = reference(stem);
        let a = s.analyze(&prepared_from_reference(stem), &Cancel::default()).unwrap();
        let sal_ref = r["saliency"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let d = max_abs_diff(&a.output.values, &sal_ref);
        assert!(d < 1e-3, "{stem}: saliency max abs diff {d}");
        let cls_ref = r["cls_attn"].to_dtype(DType::F32).unwrap(); // [12, 6, 257]
        for (l, ours) in a.cls_attention.iter().enumerate() {
            let want = cls_ref.get(l).unwrap().mean(0).unwrap().to_vec1::<f32>().unwrap();
            let d = max_abs_diff(ours, &want[1..]);
            assert!(d < 1e-4, "{stem}: layer {l} CLS attention max abs diff {d}");
        }
        eprintln!("{stem}: saliency max diff {:.2e}", max_abs_diff(&a.output.values, &sal_ref));
    }
}

#[test]
fn every_head_and_the_full_last_layer_match() {
    let s = session();
    let r = reference("chelsea");
    let prepared = prepared_from_reference("chelsea");
    let enc = &s.model().unwrap().encoder;
    let probe = Probe::attention(enc.num_layers());
    let mut trace = Trace::default();
    let mut state = s.embed(&prepared).unwrap();
    enc.run_blocks(&mut state, enc.num_layers(), &probe, &mut trace, &mut NoIntervention, &Cancel::default()).unwrap();
    for l in 0..enc.num_layers() {
        let ours = trace.require(HookPoint::AttnProbs(l)).unwrap().squeeze(0).unwrap().narrow(1, 0, 1).unwrap();
        let want = r["cls_attn"].get(l).unwrap();
        let d = max_abs_diff(
            &ours.flatten_all().unwrap().to_vec1().unwrap(),
            &want.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert!(d < 1e-4, "layer {l}: per-head CLS rows differ by {d}");
    }
    let ours = trace.require(HookPoint::AttnProbs(11)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want = r["attn_l11"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d = max_abs_diff(&ours, &want);
    assert!(d < 1e-4, "layer 11 full attention differs by {d}");
    let cls = enc.final_norm(&state).unwrap().get(0).unwrap().get(0).unwrap().to_vec1::<f32>().unwrap();
    let d = max_abs_diff(&cls, &r["cls_final"].to_vec1::<f32>().unwrap());
    assert!(d < 1e-3, "final CLS token differs by {d}");
    // Mean-over-heads helper agrees with the per-head rows it summarises (onnxruntime's).
    let mean = cls_attention(trace.require(HookPoint::AttnProbs(3)).unwrap(), 1).unwrap();
    let rows = r["cls_attn"].get(3).unwrap().to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap(); // [heads][tokens]
    assert_eq!(mean.len(), 256);
    for (p, got) in mean.iter().enumerate() {
        let want = rows.iter().map(|h| h[1 + p]).sum::<f32>() / rows.len() as f32;
        assert!((got - want).abs() < 1e-5, "patch {p}: mean over heads {got} vs {want}");
    }
}

#[test]
fn preprocessing_matches_the_package_pipeline() {
    let s = session();
    for (stem, path) in cases() {
        let r = reference(stem);
        let input = s.open_image(&path).unwrap();
        let want = prepared_from_reference(stem);
        assert_eq!(input.prepared.content, want.content, "{stem}: content rect");
        let ours: Vec<f32> = input.prepared.canvas.as_raw().iter().map(|&v| f32::from(v)).collect();
        let theirs: Vec<f32> = want.canvas.as_raw().iter().map(|&v| f32::from(v)).collect();
        let d = max_abs_diff(&ours, &theirs);
        let mean = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).sum::<f32>() / ours.len() as f32;
        // PNGs: OpenCV INTER_AREA and ours differ at most by rounding. JPEG: decoders differ too.
        let (max_ok, mean_ok) = if stem == "rocket" { (12.0, 1.0) } else { (1.0, 0.05) };
        assert!(d <= max_ok && mean <= mean_ok, "{stem}: canvas max diff {d}, mean {mean}");
        if let Some(input_ref) = r.get("input") {
            let d = max_abs_diff(
                &input.prepared.pixels.flatten_all().unwrap().to_vec1().unwrap(),
                &input_ref.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert!(d < 1.0 / 255.0 / 0.224 + 1e-4, "{stem}: normalised input differs by {d}");
        }
    }
}

#[test]
fn end_to_end_from_files_matches_for_pngs() {
    let s = session();
    for (stem, path) in cases().into_iter().filter(|(s, _)| *s != "rocket") {
        let r = reference(stem);
        let input = s.open_image(&path).unwrap();
        let a = s.analyze(&input.prepared, &Cancel::default()).unwrap();
        let d = max_abs_diff(&a.output.values, &r["saliency"].flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(d < 1e-3, "{stem}: end-to-end saliency differs by {d}");
    }
}

#[test]
fn resuming_from_a_cached_state_equals_one_pass() {
    let s = session();
    let enc = &s.model().unwrap().encoder;
    let prepared = prepared_from_reference("coffee");
    let (probe, cancel) = (Probe::default(), Cancel::default());
    let mut one = s.embed(&prepared).unwrap();
    enc.run_blocks(&mut one, 12, &probe, &mut Trace::default(), &mut NoIntervention, &cancel).unwrap();
    let mut prefix = s.embed(&prepared).unwrap();
    enc.run_blocks(&mut prefix, 5, &probe, &mut Trace::default(), &mut NoIntervention, &cancel).unwrap();
    assert_eq!(prefix.layer, 5);
    let mut resumed = prefix.clone();
    enc.run_blocks(&mut resumed, 12, &probe, &mut Trace::default(), &mut NoIntervention, &cancel).unwrap();
    let diff = (one.hidden - resumed.hidden).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0);
    // The prefix is untouched by the resumed run, so it can be reused for the next slider move.
    assert_eq!(prefix.layer, 5);
    let _: &Tensor = &prefix.hidden;
}

#[test]
fn cancelled_runs_stop_between_blocks() {
    let s = session();
    let prepared = prepared_from_reference("coffee");
    let cancel = Cancel::default();
    cancel.cancel();
    let err = s.analyze(&prepared, &cancel).unwrap_err();
    assert!(matches!(err, tokenlens::Error::Cancelled), "{err}");
}

/// The README's claim that JPEGs decode byte-identical to Pillow: `assets/rocket.jpg` decoded,
/// against the SHA-256 of `numpy.asarray(Image.open(path).convert("RGB"))` from Pillow 13.0.0
/// (libjpeg-turbo 6.2 API), the version `scripts/make_reference.py` used.
#[test]
fn jpeg_decoding_is_byte_identical_to_pillow() {
    use sha2::{Digest, Sha256};
    let img = preprocess::load_image(&asset("rocket.jpg")).unwrap();
    assert_eq!((img.width(), img.height()), (640, 427));
    let digest: String = Sha256::digest(img.as_raw()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(digest, "3d4435cc745752b7f9724df88c6e18817de3ce7e3d2d71c55f85f7831e68f197");
}
