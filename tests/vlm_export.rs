//! VLM figures exported by the app's worker (tests/fixtures/vlm/llava): the answer figure (token
//! grid, one answer token's text-to-image map, both answers with the diff) and the compare
//! figure, each as PNG and SVG with a sidecar. The worker draws from its cached full answer; a
//! fresh session re-makes every figure from its sidecar alone, byte for byte.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{asset, fixture};
use tokenlens::app::{Event, ImageSource, Job, Look, OpenedImage, VlmOpened, WorkerHandle};
use tokenlens::export::vlm::{AnswerToken, WeightsDigest};
use tokenlens::export::{self, Figure};
use tokenlens::model::ModelSource;
use tokenlens::reduce::{Budget, Method};
use tokenlens::session::vlm::VlmRun;
use tokenlens::session::{Ask, RunResult, RunSpec, Session};

fn next(worker: &WorkerHandle) -> Event {
    worker.events.recv_timeout(Duration::from_secs(120)).expect("the worker answers within 2 minutes")
}

fn until<T>(worker: &WorkerHandle, pick: impl Fn(Event) -> Option<T>) -> T {
    loop {
        match next(worker) {
            Event::Failed(e) => panic!("{e}"),
            e => {
                if let Some(t) = pick(e) {
                    return t;
                }
            }
        }
    }
}

fn run_spec(method: Option<&str>) -> RunSpec {
    RunSpec {
        method: method.map(|m| Method::from_name(m).unwrap()),
        budget: Budget::RemoveFraction(0.75),
        max_new_tokens: 8,
        ..RunSpec::default()
    }
}

/// Exports `figure` to `path` through the worker; returns the figure's bytes.
fn export(worker: &mut WorkerHandle, figure: &Figure, path: &Path) -> Vec<u8> {
    let look = Look { panel_px: 256, ..Look::default() };
    worker.submit(Job::Export { figure: figure.clone(), look, path: path.to_path_buf(), force: false });
    let (written, sidecar) = until(worker, |e| match e {
        Event::Exported(f, s) => Some((f, s)),
        _ => None,
    });
    assert_eq!((written.as_path(), sidecar.clone()), (path, export::sidecar_path(path)));
    if std::env::var_os("TOKENLENS_KEEP_SHOTS").is_some() {
        let keep = std::env::temp_dir().join("tokenlens-shots");
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(path, keep.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::read(path).unwrap()
}

/// The `<text>` contents of an SVG whose class is one `class` accepts, in document order.
fn svg_texts(svg: &str, class: impl Fn(&str) -> bool) -> Vec<String> {
    let unescape = |s: &str| {
        s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
    };
    svg.split("<text")
        .skip(1)
        .filter_map(|el| {
            let c = el.split("class=\"").nth(1)?.split('"').next()?;
            let body = el.split_once('>')?.1.split("</text>").next()?;
            class(c).then(|| unescape(body))
        })
        .collect()
}

fn squeeze(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Re-makes `figure_path` from its sidecar with `session` and compares the bytes.
fn remade(session: &Session, figure_path: &Path) {
    let spec = export::read_spec(&export::sidecar_path(figure_path)).unwrap();
    let again = export::render(session, &spec).unwrap();
    assert!(again == std::fs::read(figure_path).unwrap(), "{figure_path:?} is not re-made byte for byte");
}

#[test]
fn vlm_figures_export_as_png_and_svg_and_their_sidecars_remake_them() {
    let model = fixture("vlm/llava");
    let mut worker = WorkerHandle::spawn(ModelSource::File(model.clone()), || {});
    until(&worker, |e| matches!(e, Event::Ready { vlm: Some(_), .. }).then_some(()));
    let question = "what is in the image?".to_string();
    let source = ImageSource { label: asset("chelsea.png"), bytes: None };
    worker.submit(Job::Open {
        id: 1,
        source,
        ask: Ask { prompt: question.clone(), spec: run_spec(None), split: false },
    });
    let opened: Arc<VlmOpened> = until(&worker, |e| match e {
        Event::Opened { id: 1, image: OpenedImage::Answer(opened) } => Some(opened),
        _ => None,
    });
    worker.submit(Job::Run { id: 2, spec: run_spec(Some("random")) });
    let run: Arc<VlmRun> = until(&worker, |e| match e {
        Event::Ran { id: 2, result: RunResult::Answer(run) } => Some(run),
        _ => None,
    });
    assert!(!opened.run.answer.ids.is_empty() && !run.answer.ids.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let token = AnswerToken { reduced: true, index: run.answer.ids.len() - 1 };
    let answer = Figure::VlmAnswer {
        question: question.clone(),
        split_image: false,
        load: serde_json::Value::Null,
        run: Box::new(run.spec.clone()),
        token,
    };
    let png_path = dir.path().join("answer.png");
    let png = export(&mut worker, &answer, &png_path);
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    assert!(img.width() > 2 * 256 && img.height() > 256, "two panels and the text: {:?}", img.dimensions());
    let svg_path = dir.path().join("answer.svg");
    let svg = String::from_utf8(export(&mut worker, &answer, &svg_path)).unwrap();

    // The SVG holds both answers' text, the full one first, each whole (wrapped or split by the
    // diff marks only between tokens), and the diff's marks where the answers differ.
    let tokens = svg_texts(&svg, |c| ["answer", "answer-removed", "answer-added"].contains(&c)).concat();
    let labels = svg_texts(&svg, |c| c == "answer-label").concat();
    assert_eq!(squeeze(&tokens), squeeze(&format!("{}{}", opened.run.answer.text, run.answer.text)), "{svg}");
    assert!(labels.contains("Full model:") && labels.contains("Random"), "{labels}");
    assert!(labels.contains(&format!("Q: {question}")), "{labels}");
    if run.answer_changed {
        assert!(svg.contains("class=\"answer-removed\"") || svg.contains("class=\"answer-added\""), "no diff marks");
    }
    assert!(svg.contains(&format!("token {}", token.index)), "the map's title names its token");

    // The sidecars: the figure, the model's weights and how it was loaded.
    let spec = export::read_spec(&export::sidecar_path(&svg_path)).unwrap();
    assert_eq!(spec.image, asset("chelsea.png"));
    assert_eq!(spec.weights_digest, WeightsDigest::SafetensorsSampledV1, "read in kilobytes, not every byte");
    assert_eq!(spec.weights_sha256, export::vlm::weights_sha256(&model, spec.weights_digest).unwrap());
    let Figure::VlmAnswer { load, run: recorded, token: t, .. } = &spec.figure else { panic!("{:?}", spec.figure) };
    assert!(load.is_object(), "load options recorded: {load}");
    assert_eq!((&**recorded, t), (&run.spec, &token));

    // The compare figure: the full model and two methods at one budget.
    let runs = vec![run_spec(Some("random")), run_spec(Some("fastv"))];
    let compare = Figure::VlmCompare { question, split_image: false, load: serde_json::Value::Null, runs };
    let cmp_png = dir.path().join("compare.png");
    export(&mut worker, &compare, &cmp_png);
    let cmp_svg = String::from_utf8(export(&mut worker, &compare, &dir.path().join("compare.svg"))).unwrap();
    let headers = svg_texts(&cmp_svg, |c| c == "column-title").join(" ");
    for title in ["Full model", "Random", "FastV"] {
        assert!(headers.contains(title), "column {title}: {headers}");
    }
    assert!(cmp_svg.contains("75.0\u{a0}% removed") || cmp_svg.contains("75.0 % removed"), "the budget is named");
    // The run the app's compare view marks best (the full answer most likely under it) is
    // marked so in the figure, and only that one (ties aside).
    let notes = squeeze(&svg_texts(&cmp_svg, |c| c == "answer-label").concat());
    let scored: Vec<(f64, bool)> = notes
        .split("logp(full)")
        .skip(1)
        .map(|rest| {
            let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).unwrap_or(rest.len());
            (rest[..end].parse().unwrap(), rest[end..].starts_with("·best"))
        })
        .collect();
    assert_eq!(scored.len(), 2, "{notes}");
    let top = scored.iter().map(|s| s.0).fold(f64::NEG_INFINITY, f64::max);
    assert!(scored.iter().all(|&(lp, best)| best == (lp == top)), "{notes}");
    assert!(notes.contains("best:thefullanswermostlikelyunderit"), "the mark is explained: {notes}");

    // A fresh session (no cached answer) re-makes every figure from its sidecar alone.
    let session = Session::load(&ModelSource::File(model.clone()), &mut |_| {}).unwrap();
    for f in ["answer.png", "answer.svg", "compare.png", "compare.svg"] {
        remade(&session, &dir.path().join(f));
    }
    // A sidecar from before `weights_digest` (the sha256 of the weight file's bytes, no field)
    // still re-makes its figure; one with other weights' checksum is refused.
    let old_path = dir.path().join("old.png");
    std::fs::copy(dir.path().join("answer.png"), &old_path).unwrap();
    let new = export::read_spec(&export::sidecar_path(&dir.path().join("answer.png"))).unwrap();
    let mut old = serde_json::to_value(&new).unwrap();
    assert!(old.as_object_mut().unwrap().remove("weights_digest").is_some(), "new sidecars write it");
    old["weights_sha256"] = tokenlens::model::fetch::sha256_file(&model.join("model.safetensors")).unwrap().into();
    std::fs::write(export::sidecar_path(&old_path), old.to_string()).unwrap();
    assert_eq!(export::read_spec(&export::sidecar_path(&old_path)).unwrap().weights_digest, WeightsDigest::FileBytes);
    remade(&session, &old_path);
    old["weights_sha256"] = "0".repeat(64).into();
    let other: export::ExportSpec = serde_json::from_value(old).unwrap();
    let err = export::render(&session, &other).unwrap_err().to_string();
    assert!(err.contains("the figure was made with weights 0000"), "{err}");
    // An answer token the answer does not have is refused, not drawn empty.
    let mut bad = spec.clone();
    if let Figure::VlmAnswer { token, .. } = &mut bad.figure {
        token.index = 999;
    }
    let err = export::render(&session, &bad).unwrap_err().to_string();
    assert!(err.contains("no token 999"), "{err}");
}

/// A compare figure of four methods printed one column wide (3.25 in, issue 16): every text at
/// least 6 pt, every column header whole (a long name is hyphenated, not cut to "SparseV…"),
/// and the kept / merged / dropped key drawn once for the figure, not under each of the five
/// panels.
#[test]
fn a_four_method_compare_reads_at_one_column_with_one_legend() {
    let model = fixture("vlm/idefics3");
    let session = Session::load(&ModelSource::File(model), &mut |_| {}).unwrap();
    let image = asset("chelsea.png");
    let sha = session.vlm_image(&std::fs::read(&image).unwrap(), &image, false).unwrap().sha256;
    let runs = ["fastv", "sparsevlm", "divprune", "random"].map(|m| run_spec(Some(m))).to_vec();
    let figure = Figure::VlmCompare {
        question: "What is in the image?".into(),
        split_image: false,
        load: Default::default(),
        runs,
    };
    let look = Look { panel_px: 256, ..Look::default() };
    let spec = export::ExportSpec::new(&session, &image, &sha, figure, export::Format::Svg).with_look(&look).unwrap();
    let svg = String::from_utf8(export::render(&session, &spec).unwrap()).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let width: f64 = doc.root_element().attribute("width").unwrap().parse().unwrap();
    for t in doc.descendants().filter(|n| n.has_tag_name("text")) {
        let px: f64 = t.attribute("font-size").unwrap().parse().unwrap();
        assert!(px * 3.25 * 72.0 / width >= 6.0 - 1e-9, "{:?} at {px} px of {width}", t.text());
    }
    let headers = svg_texts(&svg, |c| c == "column-title");
    assert!(headers.iter().all(|h| !h.contains('…')), "cut: {headers:?}");
    let joined = squeeze(&headers.concat()).replace('-', "");
    for name in ["Fullmodel", "FastV", "SparseVLM", "DivPrune", "Random"] {
        assert!(joined.contains(name), "{name} in {headers:?}");
    }
    let keys = svg_texts(&svg, |c| c == "legend-key");
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert!(keys.contains(&"kept".to_string()) && keys.len() == distinct.len(), "one legend: {keys:?}");
    let swatches = doc.descendants().filter(|n| n.attribute("class") == Some("swatch")).count();
    assert_eq!(swatches, keys.len());
}
