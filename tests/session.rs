//! `Session` is the one entry point: it tells encoders from vision-language models at load, each
//! kind refuses the other's operations by name, and it holds the open image's runs (a reduced
//! run asked again, as a count or as a fraction, is the cached one; a new image clears them).

mod common;

use std::path::PathBuf;

use common::fixture;
use tokenlens::model::ModelSource;
use tokenlens::reduce::{Budget, ReducerConfig};
use tokenlens::session::vlm::VlmRunSpec;
use tokenlens::session::{Backend, RunSpec, Session};
use tokenlens::{Cancel, Error};

fn load(path: PathBuf) -> Session {
    Session::load(&ModelSource::File(path), &mut |_| {}).unwrap()
}

#[test]
fn load_tells_encoders_from_vlms_and_each_refuses_the_others_work() {
    let encoder = load(fixture("encoders/vit"));
    assert!(!encoder.is_vlm() && matches!(encoder.backend(), Backend::Encoder(_)));
    let err = encoder.vlm().err().expect("an encoder is not a VLM").to_string();
    assert!(err.contains("image encoder, not a vision-language model"), "{err}");

    for name in ["llava", "idefics3"] {
        let vlm = load(fixture(&format!("vlm/{name}")));
        assert!(vlm.is_vlm() && matches!(vlm.backend(), Backend::Vlm(_)), "{name}");
        assert_eq!(vlm.id, name);
        let err = vlm.model().err().expect("a VLM is not an encoder").to_string();
        assert!(err.contains(&format!("{name} is a vision-language model")), "{err}");
        // Encoder work on a VLM fails with that message, not a panic or a wrong answer.
        let image = vlm.open_image(&common::asset("chelsea.png")).expect_err("no encoder preprocessing");
        assert!(image.to_string().contains("vision-language model"), "{image}");
    }
}

#[test]
fn nothing_runs_before_an_image_is_open() {
    let mut encoder = load(fixture("encoders/vit"));
    let spec = RunSpec::default();
    assert!(matches!(encoder.reduce(&spec, &Cancel::default()), Err(Error::NotReady(m)) if m == "no image is open"));
    let vlm = load(fixture("vlm/llava"));
    let run = vlm.answer_reduced(&VlmRunSpec::default(), &mut |_| {}, &Cancel::default());
    assert!(matches!(run, Err(Error::NotReady(m)) if m == "no image is open"));
}

#[test]
fn reduced_runs_are_cached_per_token_count_and_cleared_by_a_new_image() {
    let mut session = load(fixture("encoders/vit"));
    let cancel = Cancel::default();
    let input = session.open_image(&common::asset("chelsea.png")).unwrap();
    session.open(&input, &cancel).unwrap();
    let full = session.opened_full().unwrap();
    let patches = full.states[0].num_patches();

    let fraction = RunSpec {
        reducer: ReducerConfig::from_name("divprune").unwrap(),
        budget: Budget::RemoveFraction(0.5),
        ..RunSpec::default()
    };
    let first = session.reduce(&fraction, &cancel).unwrap();
    let keep = Budget::RemoveFraction(0.5).resolve(patches).unwrap();
    let as_count = RunSpec { budget: Budget::Keep(keep), ..fraction.clone() };
    let second = session.reduce(&as_count, &cancel).unwrap();
    // The same tokens, answered with the spec as asked, and from the cache: the timing is the
    // first run's, which a recomputation would not reproduce to the nanosecond.
    assert_eq!(second.spec, as_count);
    assert_eq!((&second.groups, second.keep), (&first.groups, first.keep));
    assert_eq!(second.timings_ms.run_ms, first.timings_ms.run_ms);
    // Independent of the cache: a direct run of the stateless core gives the same tokens.
    let direct = session.run(&full, &as_count, &cancel).unwrap();
    assert_eq!(direct.groups, first.groups);

    // A new image drops the old runs: the same spec is computed anew on it.
    let other = session.open_image(&common::asset("astronaut.png")).unwrap();
    session.open(&other, &cancel).unwrap();
    let again = session.reduce(&fraction, &cancel).unwrap();
    assert_ne!(again.output.values, first.output.values);
    let direct = session.run(&session.opened_full().unwrap(), &fraction, &cancel).unwrap();
    assert_eq!(again.output.values, direct.output.values);
}
