//! Sidecars written before `RunSpec` and `RunResult` became one type for every model
//! (tests/fixtures/sidecars, made by the binary of 2026-11-30): an export sidecar of an encoder
//! run, and `tokenlens vlm`'s `vlm.json` with its `tokens.png`. They still parse, and the same
//! figures come back from them.

mod common;

use std::process::Command;

use common::{asset, fixture, json_fixture};
use tokenlens::Cancel;
use tokenlens::model::ModelSource;
use tokenlens::reduce::Budget;
use tokenlens::session::vlm::VlmRun;
use tokenlens::session::{RunSpec, Session};

#[test]
fn an_encoder_sidecar_from_before_re_makes_its_figure_byte_for_byte() {
    let _ = common::session(); // the default model is fetched on first use
    let dir = fixture("sidecars");
    let sidecar = json_fixture("sidecars/encoder_tokens.png.json");
    let spec: RunSpec = serde_json::from_value(sidecar["figure"]["run"].clone()).unwrap();
    assert_eq!(spec.budget, Budget::Keep(40));
    let out = tempfile::tempdir().unwrap();
    let again = out.path().join("again.png");
    // The sidecar names its image relative to where it was made.
    let run = Command::new(env!("CARGO_BIN_EXE_tokenlens"))
        .current_dir(&dir)
        .args(["export", "--from", "encoder_tokens.png.json", "--out"])
        .arg(&again)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(std::fs::read(dir.join("encoder_tokens.png")).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn a_vlm_json_from_before_parses_and_its_spec_re_makes_the_tokens_figure() {
    let json = json_fixture("sidecars/vlm_divprune/vlm.json");
    let old: VlmRun = serde_json::from_value(json["reduced"].clone()).unwrap();
    let want = image::open(fixture("sidecars/vlm_divprune/tokens.png")).unwrap().to_rgb8();
    let session = Session::load(&ModelSource::File(fixture("vlm/idefics3")), &mut |_| {}).unwrap();
    let vlm = session.vlm().unwrap();
    let image = vlm.open_image(&asset("chelsea.png")).unwrap();
    assert_eq!(image.sha256, json["image"]["sha256"].as_str().unwrap());
    let grid = (json["grid"][0].as_u64().unwrap() as usize, json["grid"][1].as_u64().unwrap() as usize);
    // The parsed result draws the figure it was drawn from.
    assert_eq!(tokenlens::figures::vlm_tokens(&image, grid, &old, 512), want);
    // Its spec runs again to the same tokens, answer and figure.
    let cancel = Cancel::default();
    let question = json["question"].as_str().unwrap();
    let full = vlm.full(image, question, &old.spec, &mut |_| {}, &cancel).unwrap();
    let run = vlm.run(&full, &old.spec, &mut |_| {}, &cancel).unwrap();
    assert_eq!((&run.groups, &run.answer.ids), (&old.groups, &old.answer.ids));
    assert_eq!(tokenlens::figures::vlm_tokens(&full.image, grid, &run, 512), want);
}
