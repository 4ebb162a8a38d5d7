//! Sidecars written before `RunSpec` and `RunResult` became one type for every model
//! (tests/fixtures/sidecars, made by the binary of 2026-11-30): an export sidecar of an encoder
//! run, and `tokenlens vlm`'s `vlm.json` with its `tokens.png`. They still parse, and the same
//! figures come back from them. So do a compare grid (`tokenlens figure`) and a VLM compare
//! figure (the app's export, made smaller with `export --from`) made by the binary of 2026-11-30
//! before grids drew maps and figures gained revision 1's notes and best mark. The two PNGs are redrawn when the drawing changes on purpose (last:
//! the legend swatches' frame, 2026-11-30, which changed only the legend's pixels); the JSON files
//! stay as first written.

mod common;

use std::process::Command;

use common::{asset, fixture, json_fixture};
use tokenlens::Cancel;
use tokenlens::model::ModelSource;
use tokenlens::reduce::Budget;
use tokenlens::session::{Ask, Opened, RunResult, RunSpec, Session};

#[test]
fn an_encoder_sidecar_from_before_re_makes_its_figure_byte_for_byte() {
    let _ = common::session(); // the default model is fetched on first use
    let dir = fixture("sidecars");
    let sidecar = json_fixture("sidecars/encoder_tokens.png.json");
    let spec: RunSpec = serde_json::from_value(sidecar["figure"]["run"].clone()).unwrap();
    assert_eq!((spec.budget, spec.reducer().unwrap().name()), (Budget::Keep(40), "random"));
    // Written again, the spec is what the sidecar holds: new sidecars keep the format.
    assert_eq!(serde_json::to_value(&spec).unwrap(), sidecar["figure"]["run"]);
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

/// `tokenlens export --from NAME.json` run in the fixtures' folder re-makes NAME byte for byte.
fn remakes_byte_for_byte(name: &str, model: Option<&str>) {
    let dir = fixture("sidecars");
    let out = tempfile::tempdir().unwrap();
    let again = out.path().join(name);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenlens"));
    cmd.current_dir(&dir).args(["export", "--from", &format!("{name}.json"), "--out"]).arg(&again);
    if let Some(model) = model {
        cmd.args(["--model", model]);
    }
    let run = cmd.output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(std::fs::read(dir.join(name)).unwrap() == std::fs::read(&again).unwrap(), "{name} changed");
}

#[test]
fn a_grid_and_a_vlm_compare_sidecar_from_before_re_make_their_figures_byte_for_byte() {
    let _ = common::session(); // the default model is fetched on first use
    let grid = json_fixture("sidecars/encoder_grid.png.json");
    assert!(grid.get("revision").is_none() && grid["figure"].get("source").is_none(), "written before them");
    remakes_byte_for_byte("encoder_grid.png", None);
    remakes_byte_for_byte("vlm_compare.png", Some("../vlm/idefics3"));
}

#[test]
fn a_vlm_json_from_before_parses_and_its_spec_re_makes_the_tokens_figure() {
    let json = json_fixture("sidecars/vlm_divprune/vlm.json");
    let parsed: RunResult = serde_json::from_value(json["reduced"].clone()).unwrap();
    let old = parsed.answer().expect("vlm.json's reduced run is an answer");
    assert_eq!(old.spec.method.as_ref().map(|m| m.name()), Some("divprune"));
    let full_old: RunResult = serde_json::from_value(json["full"].clone()).unwrap();
    assert!(full_old.answer().is_some_and(|f| f.spec.method.is_none()));
    let want = image::open(fixture("sidecars/vlm_divprune/tokens.png")).unwrap().to_rgb8();
    let grid = (json["grid"][0].as_u64().unwrap() as usize, json["grid"][1].as_u64().unwrap() as usize);

    // Its spec runs again, through the one entry point, to the same tokens, answer and figure.
    let mut session = Session::load(&ModelSource::File(fixture("vlm/idefics3")), &mut |_| {}).unwrap();
    let cancel = Cancel::default();
    let bytes = std::fs::read(asset("chelsea.png")).unwrap();
    let split = session.vlm().unwrap().split_image;
    let ask = Ask { prompt: json["question"].as_str().unwrap().into(), spec: old.spec.clone(), split };
    let Opened::Answer(full) = session.open_bytes(&bytes, &asset("chelsea.png"), &ask, &mut |_| {}, &cancel).unwrap()
    else {
        panic!("a VLM opens to its full answer")
    };
    assert_eq!(full.image.sha256, json["image"]["sha256"].as_str().unwrap());
    // The parsed result draws the figure it was drawn from.
    assert_eq!(tokenlens::figures::vlm_tokens(&full.image, grid, old, 512), want);
    let ran = session.run(&old.spec, &mut |_| {}, &cancel).unwrap();
    let run = ran.answer().expect("an answer");
    assert_eq!((&run.groups, &run.answer.ids), (&old.groups, &old.answer.ids));
    assert_eq!(tokenlens::figures::vlm_tokens(&full.image, grid, run, 512), want);
}
