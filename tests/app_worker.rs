//! The app's worker on a vision model (the tiny vit fixture): its Compare, Drift and Export jobs
//! give what the session gives for the same specs, and an export writes a figure and its sidecar.

mod common;

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use common::{asset, fixture};
use tokenlens::Cancel;
use tokenlens::app::{Event, ImageSource, Job, Look, MapScale, Settings, WorkerHandle, ask_before_replacing};
use tokenlens::export::{Figure, MapSource, View};
use tokenlens::model::ModelSource;
use tokenlens::reduce::{Budget, ReducerConfig};
use tokenlens::session::{Ask, RunSpec, Session};

fn next(worker: &WorkerHandle) -> Event {
    match worker.events.recv_timeout(Duration::from_secs(120)) {
        Ok(Event::Failed(e)) => panic!("{e}"),
        Ok(e) => e,
        Err(RecvTimeoutError::Timeout) => panic!("the worker said nothing for 2 minutes"),
        Err(RecvTimeoutError::Disconnected) => panic!("the worker stopped"),
    }
}

fn spec(method: &str, removed: f64) -> RunSpec {
    RunSpec::vision(ReducerConfig::from_name(method).unwrap(), Budget::RemoveFraction(removed))
}

#[test]
fn compare_drift_and_export_jobs_answer_as_the_session_does() {
    let model = ModelSource::File(fixture("encoders/vit"));
    let mut worker = WorkerHandle::spawn(model.clone(), || {});
    let source = ImageSource { label: asset("chelsea.png"), bytes: None };
    worker.submit(Job::Open { id: 0, source, ask: Ask::default() });
    while !matches!(next(&worker), Event::Opened { .. }) {}

    // The same runs through the session directly.
    let session = Session::load(&model, &mut |_| {}).unwrap();
    let input = session.open_image(&asset("chelsea.png")).unwrap();
    let full = session.full_run(&input.prepared.pixels, &Cancel::default()).unwrap();
    let direct = |s: &RunSpec| session.run_against(&full, s, &Cancel::default()).unwrap();

    let specs = vec![spec("cls_topk", 0.5), spec("random", 0.75)];
    worker.submit(Job::Compare { id: 1, specs: specs.clone() });
    let results = loop {
        if let Event::Compared { id: 1, results } = next(&worker) {
            break results;
        }
    };
    assert_eq!(results.len(), 2);
    for (got, s) in results.iter().zip(&specs) {
        let (got, want) = (got.encoder().expect("an encoder's run"), direct(s));
        let name = s.reducer().unwrap().name();
        assert_eq!((got.keep, &got.kept), (want.keep, &want.kept), "{name}");
        assert_eq!(got.output.values, want.output.values, "{name}");
    }

    let ratios = vec![0.0, 0.5, 0.75];
    worker.submit(Job::Sweep { id: 2, spec: spec("random", 0.0), fractions: ratios.clone() });
    let mut points = Vec::new();
    while points.len() < ratios.len() {
        if let Event::SweepPoint { id: 2, removed, result } = next(&worker) {
            points.push((removed, result.encoder().expect("an encoder's run").fidelity.output_l1));
        }
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    for ((removed, l1), want) in points.iter().zip(&ratios) {
        assert_eq!(removed, want);
        let direct_l1 = direct(&spec("random", *removed)).fidelity.output_l1;
        assert_eq!(*l1, direct_l1, "drift at {removed}");
    }
    assert_eq!(points[0].1, 0.0, "nothing removed, no drift");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.png");
    let figure = Figure::Panel { view: View::Tokens, run: Some(spec("random", 0.5)), source: MapSource::Full };
    let look = Look { colormap: Default::default(), opacity: 0.6, ..Look::default() };
    worker.submit(Job::Export { figure, look, path: path.clone(), force: false });
    let (written, sidecar) = loop {
        if let Event::Exported(p, s) = next(&worker) {
            break (p, s);
        }
    };
    assert_eq!(written, path);
    let png = image::open(&written).unwrap();
    assert!(png.width() > 0 && png.height() > 0);
    let side: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&sidecar).unwrap()).unwrap();
    assert!(side.to_string().contains("random"), "{side}");
}

/// The worker's answer to an export: the written paths, or the error's text.
fn exported(worker: &WorkerHandle) -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    loop {
        match worker.events.recv_timeout(Duration::from_secs(120)) {
            Ok(Event::Exported(p, s)) => return Ok((p, s)),
            Ok(Event::Failed(e)) => return Err(e.to_string()),
            Ok(_) => {}
            Err(e) => panic!("no answer to the export: {e:?}"),
        }
    }
}

#[test]
fn the_compare_export_is_what_is_on_screen_with_the_dialog_options() {
    // The compare view's grid: its methods at the budget on screen (not the four presets).
    let mut settings = Settings::default();
    settings.spec.budget = Budget::RemoveFraction(0.8);
    settings.compare = vec![ReducerConfig::from_name("cls_topk").unwrap(), ReducerConfig::from_name("random").unwrap()];
    settings.scale = MapScale::P99;
    let figure = settings.compare_figure(true);
    let Figure::Grid { budgets, methods, output_row, view, .. } = &figure else { panic!("a grid") };
    assert_eq!((budgets.as_slice(), methods.len(), *output_row), ([Budget::RemoveFraction(0.8)].as_slice(), 2, true));
    assert_eq!(*view, View::Tokens);
    // The tiny fixture classifies: no output rows.
    let figure = settings.compare_figure(false);

    let model = ModelSource::File(fixture("encoders/vit"));
    let mut worker = WorkerHandle::spawn(model, || {});
    let source = ImageSource { label: asset("chelsea.png"), bytes: None };
    worker.submit(Job::Open { id: 0, source, ask: Ask::default() });
    while !matches!(next(&worker), Event::Opened { .. }) {}
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grid.svg");
    let look = Look {
        scale: settings.scale,
        title_text: Some("Two methods at 80 %".into()),
        colorbar: false,
        font_scale: 1.25,
        dpi: Some(150),
        width_in: 1.5,
        ..Look::default()
    };
    worker.submit(Job::Export { figure: figure.clone(), look: look.clone(), path: path.clone(), force: false });
    let (_, sidecar) = exported(&worker).unwrap();
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    assert_eq!(spec["figure"]["budgets"], serde_json::json!([{ "remove_fraction": 0.8 }]), "{spec}");
    assert_eq!((spec["scale"].as_str(), spec["font_scale"].as_f64()), (Some("p99"), Some(1.25)));
    assert_eq!(
        (spec["dpi"].as_u64(), spec["panel_px"].as_u64(), spec["colorbar"].as_bool()),
        (Some(150), Some(225), Some(false))
    );
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.contains(">Two methods at 80 %<") && !svg.contains("class=\"colorbar\""));

    // The worker never replaces without being told to (the app asks first, once).
    worker.submit(Job::Export { figure: figure.clone(), look: look.clone(), path: path.clone(), force: false });
    let refused = exported(&worker).unwrap_err();
    assert!(refused.contains("exists"), "{refused}");
    worker.submit(Job::Export { figure, look: Look { title: false, ..look }, path: path.clone(), force: true });
    exported(&worker).unwrap();
    assert!(!std::fs::read_to_string(&path).unwrap().contains("Two methods"), "replaced");
}

#[test]
fn replacing_a_file_is_asked_about_once() {
    let dir = tempfile::tempdir().unwrap();
    let fig = dir.path().join("fig.svg");
    let sidecar = dir.path().join("fig.svg.json");
    // Nothing there: nothing to ask.
    assert!(!ask_before_replacing(&fig, None));
    assert!(!ask_before_replacing(&fig, Some(&fig)));
    // A figure the system dialog has asked about is not asked about again, sidecar or not; the
    // in-app browser asks nothing, so the app asks.
    std::fs::write(&fig, "old").unwrap();
    assert!(!ask_before_replacing(&fig, Some(&fig)));
    assert!(ask_before_replacing(&fig, None));
    std::fs::write(&sidecar, "{}").unwrap();
    assert!(!ask_before_replacing(&fig, Some(&fig)));
    assert!(ask_before_replacing(&fig, None));
    // The dialog confirmed "fig" and the app added ".svg": that file was never asked about.
    assert!(ask_before_replacing(&fig, Some(&dir.path().join("fig"))));
    // An orphan sidecar: the dialog saw no figure to ask about.
    std::fs::remove_file(&fig).unwrap();
    assert!(ask_before_replacing(&fig, Some(&fig)));
}

#[test]
fn the_compare_export_draws_the_map_on_screen_from_each_reduced_model_on_one_scale() {
    // The compare view showing rollout: the full model's in its column, each method's reduced
    // model's in its own, all on one 99th-percentile scale.
    let mut settings = Settings::default();
    settings.spec.budget = Budget::RemoveFraction(0.5);
    settings.compare = vec![ReducerConfig::from_name("tome").unwrap(), ReducerConfig::from_name("random").unwrap()];
    settings.overlay = tokenlens::app::Overlay::Rollout;
    settings.scale = MapScale::P99;
    let figure = settings.compare_figure(false);
    let Figure::Grid { view, source, .. } = &figure else { panic!("a grid") };
    assert_eq!((view, *source), (&View::Rollout, MapSource::Reduced));
    settings.overlay = tokenlens::app::Overlay::Scores;
    let Figure::Grid { view, source, .. } = settings.compare_figure(false) else { panic!("a grid") };
    assert_eq!((view, source), (View::Scores, MapSource::Full), "scores are each run's own");

    let model = ModelSource::File(fixture("encoders/vit"));
    let mut worker = WorkerHandle::spawn(model.clone(), || {});
    let source = ImageSource { label: asset("chelsea.png"), bytes: None };
    worker.submit(Job::Open { id: 0, source, ask: Ask::default() });
    while !matches!(next(&worker), Event::Opened { .. }) {}
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grid.svg");
    let look = Look { scale: MapScale::P99, panel_px: 128, ..Look::default() };
    worker.submit(Job::Export { figure: figure.clone(), look, path: path.clone(), force: false });
    exported(&worker).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();

    // The same maps from the session: the full model's, then each run's reduced model's.
    let session = Session::load(&model, &mut |_| {}).unwrap();
    let input = session.open_image(&asset("chelsea.png")).unwrap();
    let full = session.full_run(&input.prepared.pixels, &Cancel::default()).unwrap();
    let analysis = session.analysis_of(&full).unwrap();
    let mut maps = vec![analysis.rollout.clone()];
    for method in &settings.compare {
        let run =
            session.run_against(&full, &RunSpec::vision(method.clone(), settings.spec.budget), &Cancel::default());
        let run = run.unwrap();
        let reduced = run.maps.as_ref().map(|m| m.get().unwrap().rollout.clone());
        maps.push(reduced.unwrap_or_else(|| analysis.rollout.clone()));
    }
    assert_ne!(maps[1], maps[0], "ToMe's reduced model attends otherwise");
    let (lo, hi) = tokenlens::export::share_scale(maps.iter_mut(), MapScale::P99);
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let panel = |r: &str, c: &str| {
        doc.descendants()
            .find(|n| {
                n.attribute("class") == Some("panel")
                    && n.attribute("data-row") == Some(r)
                    && n.attribute("data-col") == Some(c)
            })
            .unwrap_or_else(|| panic!("panel {r},{c}"))
    };
    // Rows: ToMe, Random; columns: the full model, the budget (the full model's once).
    for ((r, c), values) in [(("0", "0"), &maps[0]), (("0", "1"), &maps[1]), (("1", "1"), &maps[2])] {
        let cells: Vec<_> = panel(r, c).descendants().filter(|n| n.attribute("class") == Some("cell")).collect();
        assert_eq!(cells.len(), values.len(), "panel {r},{c}");
        for cell in cells {
            let v = values[cell.attribute("data-patch").unwrap().parse::<usize>().unwrap()];
            let want = tokenlens::render::Colormap::Viridis.rgb(((v - lo) / (hi - lo)).clamp(0.0, 1.0));
            assert_eq!(cell.attribute("fill"), Some(common::hex(want).as_str()), "panel {r},{c}");
        }
    }
    let texts = |class: &str| -> Vec<String> {
        doc.descendants()
            .filter(|n| n.attribute("class") == Some(class))
            .filter_map(|n| n.text())
            .map(String::from)
            .collect()
    };
    assert_eq!(texts("col-label").first().map(String::as_str), Some("full model"));
    assert_eq!(texts("norm"), ["maps: 99th pct., shared"], "one colour bar, named for the shared scale");
    // The sidecar re-makes it.
    let spec = tokenlens::export::read_spec(&tokenlens::export::sidecar_path(&path)).unwrap();
    assert!(tokenlens::export::render(&session, &spec).unwrap() == svg.as_bytes(), "re-made byte for byte");
}
