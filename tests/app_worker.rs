//! The app's worker on a vision model (the tiny vit fixture): its Compare, Drift and Export jobs
//! give what the session gives for the same specs, and an export writes a figure and its sidecar.

mod common;

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use common::{asset, fixture};
use tokenlens::Cancel;
use tokenlens::app::{Event, ImageSource, Job, Look, WorkerHandle};
use tokenlens::export::{Figure, View};
use tokenlens::model::ModelSource;
use tokenlens::reduce::{Budget, ReducerConfig};
use tokenlens::session::{RunSpec, Session};

fn next(worker: &WorkerHandle) -> Event {
    match worker.events.recv_timeout(Duration::from_secs(120)) {
        Ok(Event::Failed(e)) => panic!("{e}"),
        Ok(e) => e,
        Err(RecvTimeoutError::Timeout) => panic!("the worker said nothing for 2 minutes"),
        Err(RecvTimeoutError::Disconnected) => panic!("the worker stopped"),
    }
}

fn spec(method: &str, removed: f64) -> RunSpec {
    RunSpec {
        reducer: ReducerConfig::from_name(method).unwrap(),
        budget: Budget::RemoveFraction(removed),
        ..RunSpec::default()
    }
}

#[test]
fn compare_drift_and_export_jobs_answer_as_the_session_does() {
    let model = ModelSource::File(fixture("encoders/vit"));
    let mut worker = WorkerHandle::spawn(model.clone(), || {});
    worker
        .submit(Job::Open { source: ImageSource { label: asset("chelsea.png"), bytes: None }, prompt: String::new() });
    while !matches!(next(&worker), Event::Opened(_)) {}

    // The same runs through the session directly.
    let session = Session::load(&model, &mut |_| {}).unwrap();
    let input = session.open_image(&asset("chelsea.png")).unwrap();
    let full = session.full_run(&input.prepared.pixels, &Cancel::default()).unwrap();
    let direct = |s: &RunSpec| session.run(&full, s, &Cancel::default()).unwrap();

    let specs = vec![spec("cls_topk", 0.5), spec("random", 0.75)];
    worker.submit(Job::Compare { id: 1, specs: specs.clone() });
    let results = loop {
        if let Event::Compared { id: 1, results } = next(&worker) {
            break results;
        }
    };
    assert_eq!(results.len(), 2);
    for (got, s) in results.iter().zip(&specs) {
        let want = direct(s);
        assert_eq!((got.keep, &got.kept), (want.keep, &want.kept), "{}", s.reducer.name());
        assert_eq!(got.output.values, want.output.values, "{}", s.reducer.name());
    }

    let ratios = vec![0.0, 0.5, 0.75];
    worker.submit(Job::Drift { id: 2, spec: spec("random", 0.0), ratios: ratios.clone() });
    let mut points = Vec::new();
    while points.len() < ratios.len() {
        if let Event::DriftPoint { id: 2, removed, l1 } = next(&worker) {
            points.push((removed, l1));
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
    let figure = Figure::Panel { view: View::Tokens, run: Some(spec("random", 0.5)) };
    let look = Look { colormap: Default::default(), opacity: 0.6 };
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
