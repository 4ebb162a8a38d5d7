//! `Session` is the one entry point: it tells encoders from vision-language models at load, each
//! kind refuses the other's operations by name, and it holds the open image's runs (a reduced
//! run asked again, as a count or as a fraction, is the cached one, for encoders and VLMs; the
//! cache is bounded; a new image clears it).

mod common;

use std::path::PathBuf;

use common::fixture;
use tokenlens::model::ModelSource;
use tokenlens::reduce::{Budget, Method, ReducerConfig};
use tokenlens::session::vlm::{Resume, VlmRun};
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
    let mut vlm = load(fixture("vlm/llava"));
    let run = vlm.answer_reduced(&RunSpec::default(), &mut |_| {}, &Cancel::default());
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

    let fraction = RunSpec::vision(ReducerConfig::from_name("divprune").unwrap(), Budget::RemoveFraction(0.5));
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
    let direct = session.run_against(&full, &as_count, &cancel).unwrap();
    assert_eq!(direct.groups, first.groups);

    // A new image drops the old runs: the same spec is computed anew on it.
    let other = session.open_image(&common::asset("astronaut.png")).unwrap();
    session.open(&other, &cancel).unwrap();
    let again = session.reduce(&fraction, &cancel).unwrap();
    assert_ne!(again.output.values, first.output.values);
    let direct = session.run_against(&session.opened_full().unwrap(), &fraction, &cancel).unwrap();
    assert_eq!(again.output.values, direct.output.values);
}

/// `run` with what differs between two computations of one run (wall times) zeroed.
fn without_times(run: &VlmRun) -> serde_json::Value {
    let mut run = run.clone();
    (run.cost.encoder_ms, run.cost.prefill_ms, run.cost.decode_ms, run.cost.tokens_per_s) = (0.0, 0.0, 0.0, 0.0);
    serde_json::to_value(run).unwrap()
}

#[test]
fn vlm_reduced_runs_are_cached_per_token_count_bounded_and_cleared_by_a_new_question() {
    let mut session = load(fixture("vlm/idefics3_deep")); // 6 decoder layers: FastV at K=2 fits
    let cancel = Cancel::default();
    let bytes = std::fs::read(common::asset("chelsea.png")).unwrap();
    let image = session.vlm_image(&bytes, std::path::Path::new("chelsea.png"), false).unwrap();
    session.answer(image.clone(), common::QUESTION, &common::vlm_spec(), &mut |_| {}, &cancel).unwrap();
    let full = session.answered().unwrap();
    let n = full.vision.num_image_tokens();

    for name in ["fastv", "divprune"] {
        let fraction = RunSpec {
            method: Some(Method::from_name(name).unwrap()),
            budget: Budget::RemoveFraction(0.5),
            ..common::vlm_spec()
        };
        let mut streamed = Vec::new();
        let first = session.run(&fraction, &mut |id| streamed.push(id), &cancel).unwrap();
        let first = first.answer().unwrap();
        assert_eq!(streamed, first.answer.ids, "{name}: a run streams its answer");
        let as_count = RunSpec { budget: Budget::Keep(Budget::RemoveFraction(0.5).resolve(n).unwrap()), ..fraction };
        let mut replayed = Vec::new();
        let second = session.run(&as_count, &mut |id| replayed.push(id), &cancel).unwrap();
        let second = second.answer().unwrap();
        // From the cache (the wall times are the first run's, which no recomputation repeats
        // to the nanosecond), answered with the spec as asked and its tokens sent again.
        assert_eq!(second.spec, as_count, "{name}");
        assert_eq!(second.cost.prefill_ms, first.cost.prefill_ms, "{name}: not from the cache");
        assert_eq!(replayed, first.answer.ids, "{name}: a cached run streams its answer too");
        // Equal to a fresh run of the model, resumed and from scratch, in everything but time.
        let vlm = session.vlm().unwrap();
        for resume in [Resume::FromCache, Resume::FromScratch] {
            let fresh = vlm.run(&full, &as_count, resume, &mut |_| {}, &cancel).unwrap();
            assert_ne!(fresh.cost.prefill_ms, first.cost.prefill_ms, "{name}: computed anew");
            let fresh = VlmRun { recomputed_from_layer: second.recomputed_from_layer, ..fresh };
            assert_eq!(without_times(&fresh), without_times(second), "{name} {resume:?}");
        }
    }

    // Bounded: past 32 runs, the least recently used goes.
    assert_eq!(session.cached_runs(), 2);
    let spec = |keep: usize, answer: usize| RunSpec {
        method: Some(Method::from_name("random").unwrap()),
        budget: Budget::Keep(keep),
        max_new_tokens: answer,
        ..RunSpec::default()
    };
    let keeps: Vec<usize> = (1..n).step_by((n / 8).max(1)).take(8).collect();
    let mut asked = 0;
    for answer in 1..=6 {
        for &keep in &keeps {
            session.run(&spec(keep, answer), &mut |_| {}, &cancel).unwrap();
            asked += 1;
        }
    }
    assert!(asked > 32 + 2, "{asked} distinct runs: too few to fill the cache");
    assert_eq!(session.cached_runs(), 32);
    let last = spec(*keeps.last().unwrap(), 6);
    let before = session.run(&last, &mut |_| {}, &cancel).unwrap().answer().unwrap().cost.prefill_ms;
    let again = session.run(&last, &mut |_| {}, &cancel).unwrap().answer().unwrap().cost.prefill_ms;
    assert_eq!(before, again, "the most recent run stays");
    assert_eq!(session.cached_runs(), 32);
    session.forget_runs();
    assert_eq!(session.cached_runs(), 0);

    // A new question is a new full run: the runs of the old one are gone.
    session.run(&last, &mut |_| {}, &cancel).unwrap();
    assert_eq!(session.cached_runs(), 1);
    session.answer(image, "what colour is it?", &common::vlm_spec(), &mut |_| {}, &cancel).unwrap();
    assert_eq!(session.cached_runs(), 0);
}

/// The method registry's refusals are the sessions': for each model kind (an image encoder,
/// LLaVA, SmolVLM) a method the registry refuses fails to run with that reason, and every other
/// method runs. The pickers grey out exactly what the runs would refuse.
#[test]
fn the_registry_refuses_what_each_model_kind_refuses() {
    use tokenlens::reduce::Capabilities;
    let cancel = Cancel::default();
    // Layers of the tiny fixtures: defaults brought into range.
    let in_range = |m: &mut Method, tower: usize, decoder: usize| {
        if let Some(l) = m.layer(tower, decoder) {
            let top = if m.is_language_side() { decoder - 1 } else { tower - 1 };
            m.set_layer(l.min(top).max(usize::from(m.is_language_side())), decoder);
        }
    };

    let mut encoder = load(fixture("encoders/vit"));
    assert_eq!(encoder.capabilities(), Capabilities::ENCODER);
    let input = encoder.open_image(&common::asset("chelsea.png")).unwrap();
    encoder.open(&input, &cancel).unwrap();
    let layers = encoder.opened_full().unwrap().num_layers();
    let mut refused = Vec::new();
    for mut method in Method::all() {
        in_range(&mut method, layers, 1);
        let refusal = encoder.refusal(&method);
        // An encoder's runs take the vision-side configs the registry lets through.
        match method.clone().for_encoder() {
            Ok(reducer) => {
                assert!(refusal.is_none(), "{}", method.name());
                let spec = RunSpec::vision(reducer, Budget::RemoveFraction(0.5));
                encoder.reduce(&spec, &cancel).unwrap_or_else(|e| panic!("{}: {e}", method.name()));
            }
            Err(e) => {
                let why = refusal.unwrap_or_else(|| panic!("{}: refused but not by the registry", method.name()));
                assert!(e.to_string().contains(&why), "{}: {e} vs {why}", method.name());
                refused.push(method.name());
            }
        }
    }
    assert_eq!(refused, ["fastv", "text_guided", "sparsevlm", "mmtok", "todre"]);

    for (name, expected) in [("llava", vec![]), ("idefics3", vec!["tome", "pitome", "evit"])] {
        let mut vlm = load(fixture(&format!("vlm/{name}")));
        let bytes = std::fs::read(common::asset("chelsea.png")).unwrap();
        let image = vlm.vlm_image(&bytes, std::path::Path::new("chelsea.png"), false).unwrap();
        vlm.answer(image, common::QUESTION, &common::vlm_spec(), &mut |_| {}, &cancel).unwrap();
        let full = vlm.answered().unwrap();
        let (tower, decoder) = (full.vision.context().num_layers, vlm.vlm().unwrap().num_layers());
        let keep = full.vision.num_image_tokens() / 2;
        let mut refused = Vec::new();
        for mut method in Method::all() {
            in_range(&mut method, tower, decoder);
            let refusal = vlm.refusal(&method);
            let spec = RunSpec { method: Some(method.clone()), budget: Budget::Keep(keep), ..common::vlm_spec() };
            match (vlm.answer_reduced(&spec, &mut |_| {}, &cancel), refusal) {
                (Ok(_), None) => {}
                (Err(e), Some(why)) => {
                    assert!(e.to_string().contains(&why), "{name} {}: {e} vs {why}", method.name());
                    refused.push(method.name());
                }
                (run, why) => panic!("{name} {}: ran {:?}, registry refusal {why:?}", method.name(), run.err()),
            }
        }
        assert_eq!(refused, expected, "{name}");
    }
}
