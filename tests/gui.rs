//! The app in a real window under Xvfb: it opens an image, draws the overlay, and captures its
//! own frame (`--screenshot`). Two captures that differ only in the heatmap's opacity must
//! differ exactly where the heatmap is: in the central view. With a tiny vision-language model,
//! the answer diff and the ratio sweep must be on screen.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::asset;

/// An Xvfb server on a private display, stopped on drop.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    /// Xvfb picks a free display itself (`-displayfd`) and says which once it accepts
    /// connections: no clash with other servers, no race with its start-up. `Ok(None)` only
    /// where Xvfb is not installed; an installed Xvfb that fails to start is an error.
    fn start() -> Result<Option<Self>, String> {
        use std::io::BufRead;
        let spawned = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1400x900x24", "-nolisten", "tcp"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("Xvfb is installed but could not be started: {e}")),
        };
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout is piped");
        let read = std::io::BufReader::new(stdout).read_line(&mut line);
        match (read, line.trim().parse::<u32>()) {
            (Ok(_), Ok(n)) => Ok(Some(Self { child, display: format!(":{n}") })),
            (read, _) => {
                child.kill().ok();
                let status = child.wait().ok();
                Err(format!("Xvfb started but gave no display number (read {read:?}, line {line:?}, exit {status:?})"))
            }
        }
    }

    /// A server, or None where Xvfb is not installed outside CI. On CI (`CI` set, as CI
    /// systems do) a missing Xvfb fails the test; a failed start fails it everywhere.
    fn start_or_skip() -> Option<Self> {
        match Self::start() {
            Ok(Some(x)) => Some(x),
            Ok(None) => {
                assert!(std::env::var_os("CI").is_none(), "CI must install Xvfb (see .ci/run)");
                eprintln!("Xvfb not installed: skipping the screenshot test");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// `tokenlens gui IMAGE ARGS --screenshot OUT` on the server; the captured frame.
fn run_app(x: &Xvfb, image: &Path, args: &[&std::ffi::OsStr], out: &Path) -> image::RgbImage {
    let run = Command::new(env!("CARGO_BIN_EXE_tokenlens"))
        .env("DISPLAY", &x.display)
        .arg("gui")
        .arg(image)
        .args(args)
        .arg("--screenshot")
        .arg(out)
        .output()
        .expect("the app starts");
    assert!(run.status.success(), "app failed: {}", String::from_utf8_lossy(&run.stderr));
    if std::env::var_os("TOKENLENS_KEEP_SHOTS").is_some() {
        let keep = std::env::temp_dir().join("tokenlens-shots");
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(out, keep.join(out.file_name().unwrap())).unwrap();
    }
    image::open(out).unwrap_or_else(|e| panic!("{out:?}: {e}")).to_rgb8()
}

fn screenshot(x: &Xvfb, image: &Path, opacity: f32, out: &Path) -> image::RgbImage {
    let _ = common::session(); // the model is cached before the app starts
    let opacity = opacity.to_string();
    let args = ["--overlay", "attention", "--opacity", &opacity].map(std::ffi::OsStr::new);
    run_app(x, image, &args, out)
}

#[test]
fn the_window_draws_the_attention_overlay() {
    let Some(x) = Xvfb::start_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let image = asset("coffee.png");
    let plain = screenshot(&x, &image, 0.0, &dir.path().join("plain.png"));
    let heat = screenshot(&x, &image, 0.8, &dir.path().join("heat.png"));
    assert_eq!(plain.dimensions(), heat.dimensions());
    let (w, h) = plain.dimensions();
    // The central view lies between the controls (left) and the output panel (right).
    let (x0, x1, y0, y1) = (w * 25 / 100, w * 74 / 100, h * 10 / 100, h * 90 / 100);
    let mut changed = 0;
    for y in y0..y1 {
        for x in x0..x1 {
            let (a, b) = (plain.get_pixel(x, y).0, heat.get_pixel(x, y).0);
            if a.iter().zip(b).map(|(p, q)| p.abs_diff(q) as u32).sum::<u32>() > 30 {
                changed += 1;
            }
        }
    }
    let area = (x1 - x0) * (y1 - y0);
    assert!(changed > area / 5, "only {changed} of {area} central pixels changed: no overlay drawn?");
    // The window itself rendered: not a blank frame.
    let distinct: std::collections::HashSet<[u8; 3]> = heat.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 1000, "the window looks blank ({} colours)", distinct.len());
}

/// Runs the app on a tiny VLM fixture until the full answer, a reduced run and the whole ratio
/// sweep are on screen; returns the frame and what the answer panels showed.
fn vlm_screenshot(x: &Xvfb, model: &str, reducer: &str, out: &Path) -> (image::RgbImage, serde_json::Value) {
    vlm_app(x, model, &["--reducer", reducer, "--max-answer-tokens", "12"], out)
}

/// The app on the VLM fixture `model` with `flags`: the frame and the screenshot's summary.
fn vlm_app(x: &Xvfb, model: &str, flags: &[&str], out: &Path) -> (image::RgbImage, serde_json::Value) {
    let model = common::fixture(&format!("vlm/{model}"));
    let args = ["--model".as_ref(), model.as_os_str()]
        .into_iter()
        .chain(flags.iter().map(std::ffi::OsStr::new))
        .collect::<Vec<_>>();
    let frame = run_app(x, &asset("chelsea.png"), &args, out);
    let summary = serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
    (frame, summary)
}

#[test]
fn the_vlm_answer_diff_and_sweep_appear() {
    let Some(x) = Xvfb::start_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    for model in ["llava", "idefics3"] {
        let out = dir.path().join(format!("vlm-{model}.png"));
        let (frame, s) = vlm_screenshot(&x, model, "random", &out);
        // Both answers and their diff, the log-probability, and every sweep point.
        let full = s["full_answer"].as_array().expect("a full answer");
        let reduced = s["reduced_answer"].as_array().expect("a reduced answer");
        assert!(!full.is_empty() && !reduced.is_empty(), "{model}: {s}");
        assert!(s["diff"].as_array().is_some_and(|d| d.len() >= full.len().max(reduced.len())), "{model}: {s}");
        assert!(s["full_answer_logprob"].is_number(), "{model}: {s}");
        let sweep = s["sweep"].as_array().unwrap();
        assert_eq!(sweep.len(), tokenlens::session::vlm::sweep_fractions().len(), "{model}: {s}");
        assert_eq!(sweep[0]["changed"], false, "{model}: nothing removed, the same answer");
        // On screen: the sweep's green "same answer" markers (and any green added tokens) in the
        // right panel.
        let (w, h) = frame.dimensions();
        let count = |rgb: [u8; 3]| {
            (0..h)
                .flat_map(|y| (w * 60 / 100..w).map(move |x| (x, y)))
                .filter(|&(x, y)| frame.get_pixel(x, y).0.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) < 12))
                .count()
        };
        assert!(count([60, 200, 90]) > 20, "{model}: no sweep markers on screen");
    }
}

/// FastV on the 2-layer fixture removes nothing, and its header says so at length: the header
/// wraps instead of widening the view (which pushed the photo under the answer panel).
#[test]
fn a_long_vlm_header_wraps_inside_the_view() {
    let Some(x) = Xvfb::start_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_, s) = vlm_screenshot(&x, "llava", "fastv", &dir.path().join("fastv.png"));
    assert!(s["reduced_label"].as_str().is_some_and(|l| l.contains("nothing removed")), "{s}");
    assert_eq!(s["central_overflow"], 0.0, "the view is wider than its panel: {s}");
}

/// A folder whose processor splits the image (as the published SmolVLM folders do) opens on
/// the default settings with a result, not an error: the vision-side default method (refused on
/// a split image's tiles) is swapped for FastV.
#[test]
fn a_splitting_smolvlm_opens_on_a_method_that_runs() {
    let Some(x) = Xvfb::start_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_, s) = vlm_app(&x, "idefics3_split", &["--max-answer-tokens", "4"], &dir.path().join("split.png"));
    assert!(s["reduced_label"].as_str().is_some_and(|l| l.starts_with("FastV")), "{s}");
    assert!(s["reduced_answer"].as_array().is_some_and(|a| !a.is_empty()), "{s}");
}

/// The compare view with a VLM: the full model and the four default methods at one budget, each
/// with its answer and the full answer's log-probability under it, drawn side by side.
#[test]
fn the_vlm_compare_view_answers_every_method() {
    let Some(x) = Xvfb::start_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixture("vlm/llava");
    let out = dir.path().join("vlm-compare.png");
    let args = ["--model".as_ref(), model.as_os_str()]
        .into_iter()
        .chain(["--tab", "compare", "--max-answer-tokens", "8"].map(std::ffi::OsStr::new))
        .collect::<Vec<_>>();
    let frame = run_app(&x, &asset("chelsea.png"), &args, &out);
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
    let compared = s["compared"].as_array().expect("the compare runs");
    let labels: Vec<&str> = compared.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(compared.len(), 4, "{s}");
    for (run, method) in compared.iter().zip(["FastV", "SparseVLM", "DivPrune", "Random"]) {
        assert!(run["label"].as_str().unwrap().contains(method), "{labels:?}");
        assert!(!run["answer"].as_array().unwrap().is_empty(), "{s}");
        assert!(run["full_answer_logprob"].is_number(), "{s}");
    }
    if std::env::var_os("TOKENLENS_KEEP_SHOTS").is_some() {
        let keep = std::env::temp_dir().join("tokenlens-shots");
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&out, keep.join("vlm-compare.png")).unwrap();
    }
    let distinct: std::collections::HashSet<[u8; 3]> = frame.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 1000, "the window looks blank ({} colours)", distinct.len());
}

/// VLM mode exports what it shows: the answer figure from the single view, the compare figure
/// from the compare view, each written with its sidecar by the app's own export path (the
/// figure on screen, the export options' look, the worker's export job).
#[test]
fn the_vlm_views_export_their_figures() {
    let Some(x) = Xvfb::start_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixture("vlm/llava");
    for (tab, figure) in [("single", "vlm_answer"), ("compare", "vlm_compare")] {
        let exported = dir.path().join(format!("{tab}-figure.png"));
        let args = ["--model".as_ref(), model.as_os_str(), "--export-to".as_ref(), exported.as_os_str()]
            .into_iter()
            .chain(["--tab", tab, "--reducer", "random", "--max-answer-tokens", "8"].map(std::ffi::OsStr::new))
            .collect::<Vec<_>>();
        let out = dir.path().join(format!("vlm-export-{tab}.png"));
        run_app(&x, &asset("chelsea.png"), &args, &out);
        let spec = tokenlens::export::read_spec(&tokenlens::export::sidecar_path(&exported))
            .unwrap_or_else(|e| panic!("{tab}: no sidecar: {e}"));
        let kind = serde_json::to_value(&spec.figure).unwrap()["kind"].clone();
        assert_eq!(kind, figure, "{tab}");
        assert_eq!(spec.image, asset("chelsea.png"), "{tab}");
        let img = image::open(&exported).unwrap().to_rgb8();
        assert!(img.width() >= 2 * spec.panel_px, "{tab}: at least two panels wide: {:?}", img.dimensions());
        if std::env::var_os("TOKENLENS_KEEP_SHOTS").is_some() {
            let keep = std::env::temp_dir().join("tokenlens-shots");
            std::fs::copy(&exported, keep.join(exported.file_name().unwrap())).unwrap();
        }
    }
}

/// `--press BUTTON` with no desktop portal (no session bus) and no zenity (an empty PATH): the
/// in-app browser must take over, and the status bar must say why.
#[test]
fn open_and_export_fall_back_to_the_in_app_browser() {
    let Some(x) = Xvfb::start_or_skip() else { return };
    let _ = common::session();
    let dir = tempfile::tempdir().unwrap();
    let empty_path = dir.path().join("bin");
    std::fs::create_dir(&empty_path).unwrap();
    for press in ["open", "export"] {
        let out = dir.path().join(format!("{press}.png"));
        let run = Command::new(env!("CARGO_BIN_EXE_tokenlens"))
            .env("DISPLAY", &x.display)
            .env("PATH", &empty_path)
            .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus")
            .arg("gui")
            .arg(asset("chelsea.png"))
            .args(["--press", press, "--screenshot"])
            .arg(&out)
            .output()
            .expect("the app starts");
        assert!(run.status.success(), "{press}: {}", String::from_utf8_lossy(&run.stderr));
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
        assert_eq!(summary["in_app_browser"], true, "{press}: {summary}");
        assert!(summary["status"].as_str().unwrap().contains("No system file dialog"), "{press}: {summary}");
        if std::env::var_os("TOKENLENS_KEEP_SHOTS").is_some() {
            let keep = std::env::temp_dir().join("tokenlens-shots");
            std::fs::create_dir_all(&keep).unwrap();
            std::fs::copy(&out, keep.join(out.file_name().unwrap())).unwrap();
        }
        // The browser window is drawn over the view: its title is on screen.
        let frame = image::open(&out).unwrap().to_rgb8();
        let distinct: std::collections::HashSet<[u8; 3]> = frame.pixels().map(|p| p.0).collect();
        assert!(distinct.len() > 1000, "{press}: the window looks blank");
    }
}

/// ToMe's merge view keeps the photo: the groups' tint follows the opacity slider (it painted
/// every token one flat colour whatever the opacity), and the legend is on screen.
#[test]
fn merge_groups_follow_the_opacity() {
    let Some(x) = Xvfb::start_or_skip() else { return };
    let _ = common::session();
    let dir = tempfile::tempdir().unwrap();
    let shot = |opacity: &str, name: &str| {
        let args = ["--reducer", "tome", "--overlay", "tokens", "--opacity", opacity].map(std::ffi::OsStr::new);
        run_app(&x, &asset("coffee.png"), &args, &dir.path().join(name))
    };
    let (clear, tinted) = (shot("0", "tome-clear.png"), shot("0.9", "tome-tinted.png"));
    let (w, h) = clear.dimensions();
    let (x0, x1, y0, y1) = (w * 25 / 100, w * 74 / 100, h * 10 / 100, h * 90 / 100);
    let changed = (y0..y1)
        .flat_map(|y| (x0..x1).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let (a, b) = (clear.get_pixel(x, y).0, tinted.get_pixel(x, y).0);
            a.iter().zip(b).map(|(p, q)| p.abs_diff(q) as u32).sum::<u32>() > 30
        })
        .count();
    let area = ((x1 - x0) * (y1 - y0)) as usize;
    assert!(changed > area / 20, "only {changed} of {area} central pixels changed with the opacity");
}

/// The "reduced model" source: ToMe's last-layer CLS attention over its own merged tokens differs
/// from the full model's on screen (same method, same budget, only `--source` changes; about a
/// third of the view's pixels when measured).
#[test]
fn the_reduced_model_source_draws_its_own_map() {
    let Some(x) = Xvfb::start_or_skip() else { return };
    let _ = common::session();
    let dir = tempfile::tempdir().unwrap();
    let shot = |source: &str| {
        let args = ["--reducer", "tome", "--overlay", "attention", "--source", source].map(std::ffi::OsStr::new);
        run_app(&x, &asset("chelsea.png"), &args, &dir.path().join(format!("{source}.png")))
    };
    let (full, reduced) = (shot("full"), shot("reduced"));
    let (w, h) = full.dimensions();
    let (x0, x1, y0, y1) = (w * 25 / 100, w * 74 / 100, h * 15 / 100, h * 90 / 100);
    let changed = (y0..y1)
        .flat_map(|y| (x0..x1).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let (a, b) = (full.get_pixel(x, y).0, reduced.get_pixel(x, y).0);
            a.iter().zip(b).map(|(p, q)| p.abs_diff(q) as u32).sum::<u32>() > 30
        })
        .count() as u32;
    let area = (x1 - x0) * (y1 - y0);
    assert!(changed > area / 10, "only {changed} of {area} central pixels differ: the same map twice?");
}

/// The hidden `gui --settings SPEC` in screenshot mode with a spec that names no method (or a
/// language-side one, on an image encoder): the app used to wait for ever for a run it could
/// not make. It takes the default method and captures its frame, well within the time limit.
#[test]
fn a_settings_file_without_a_method_does_not_hang() {
    let Some(x) = Xvfb::start_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixture("encoders/vit");
    let defaults = serde_json::to_value(tokenlens::app::Settings::default()).unwrap();
    let mut no_method = defaults.clone();
    no_method["spec"].as_object_mut().unwrap().remove("reducer");
    let mut null_method = defaults.clone();
    null_method["spec"]["reducer"] = serde_json::Value::Null;
    let mut language_side = defaults;
    language_side["spec"]["reducer"] = serde_json::json!({"method": "fastv", "layer": 2, "query": "last"});
    for (name, settings) in [("none", no_method), ("null", null_method), ("fastv", language_side)] {
        let spec = dir.path().join(format!("{name}.json"));
        std::fs::write(&spec, settings.to_string()).unwrap();
        let out = dir.path().join(format!("{name}.png"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_tokenlens"))
            .env("DISPLAY", &x.display)
            .arg("gui")
            .arg(asset("chelsea.png"))
            .arg("--model")
            .arg(&model)
            .arg("--settings")
            .arg(&spec)
            .arg("--screenshot")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the app starts");
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > std::time::Duration::from_secs(90) {
                child.kill().ok();
                child.wait().ok();
                panic!("{name}: the app still runs after 90 s: it hangs");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(status.success(), "{name}: {err}");
        assert!(image::open(&out).is_ok(), "{name}: a screenshot");
    }
}
