//! The `tokenlens` binary as a user runs it.

mod common;

use std::process::Command;

use common::{asset, fixture, reference};

fn tokenlens() -> Command {
    let _ = common::session(); // the model is cached before the binary runs
    Command::new(env!("CARGO_BIN_EXE_tokenlens"))
}

#[test]
fn analyze_writes_json_and_overlays() {
    let out = tempfile::tempdir().unwrap();
    let image = fixture("images/astronaut_crop224.png");
    let status =
        tokenlens().arg("analyze").arg(&image).args(["--layer", "7", "--out"]).arg(out.path()).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("analysis.json")).unwrap()).unwrap();
    assert!(json["model"].as_str().unwrap().contains("dinov2"));
    assert_eq!(json["grid"], serde_json::json!([16, 16]));
    let cls = json["cls_attention"].as_array().unwrap();
    assert_eq!(cls.len(), 12);
    assert!(cls.iter().all(|l| l.as_array().unwrap().len() == 256));
    assert_eq!(json["output"]["kind"], "saliency");
    assert_eq!(json["output"]["shape"], serde_json::json!([224, 224]));
    assert!(json["timings_ms"]["total_ms"].as_f64().unwrap() > 0.0);

    // Numbers in the file are the model's, not rounded away: compare with onnxruntime.
    let values: Vec<f32> =
        json["output"]["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let want = reference("astronaut_crop224")["saliency"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(common::max_abs_diff(&values, &want) < 1e-3);

    for png in ["cls_attention_layer7.png", "rollout.png", "saliency.png"] {
        let img = image::open(out.path().join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(img.width() >= 224 && img.height() >= 224, "{png} is {}x{}", img.width(), img.height());
    }
}

#[test]
fn bad_input_exits_non_zero_with_a_message() {
    let out = tempfile::tempdir().unwrap();
    for (image, expect) in [
        (fixture("bad/truncated.png"), "truncated or corrupt"),
        (fixture("bad/huge_header.png"), "too large"),
        (fixture("bad/does_not_exist.png"), "cannot read"),
    ] {
        let run = tokenlens().arg("analyze").arg(&image).arg("--out").arg(out.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{image:?} should fail");
        assert!(stderr.contains(expect) && !stderr.contains("panicked"), "{image:?}: {stderr}");
    }
    let run = tokenlens()
        .arg("analyze")
        .arg(asset("coffee.png"))
        .args(["--layer", "12", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("out of range"));
    // Nothing half-written was left behind by the failures.
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}
