//! The app in a real window under Xvfb: it opens an image, draws the overlay, and captures its
//! own frame (`--screenshot`). Two captures that differ only in the heatmap's opacity must
//! differ exactly where the heatmap is: in the central view.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::asset;

/// An Xvfb server on a private display, stopped on drop.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Option<Self> {
        let n = 90 + std::process::id() % 100;
        let child = Command::new("Xvfb")
            .args([format!(":{n}").as_str(), "-screen", "0", "1400x900x24", "-nolisten", "tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
        let start = Instant::now();
        while !socket.exists() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self { child, display: format!(":{n}") })
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn screenshot(x: &Xvfb, image: &Path, opacity: f32, out: &Path) -> image::RgbImage {
    let _ = common::session(); // the model is cached before the app starts
    let run = Command::new(env!("CARGO_BIN_EXE_tokenlens"))
        .env("DISPLAY", &x.display)
        .arg("gui")
        .arg(image)
        .args(["--overlay", "attention", "--opacity", &opacity.to_string(), "--screenshot"])
        .arg(out)
        .output()
        .expect("the app starts");
    assert!(run.status.success(), "app failed: {}", String::from_utf8_lossy(&run.stderr));
    image::open(out).unwrap_or_else(|e| panic!("{out:?}: {e}")).to_rgb8()
}

#[test]
fn the_window_draws_the_attention_overlay() {
    let Some(x) = Xvfb::start() else {
        assert!(std::env::var_os("CI").is_none(), "CI must install Xvfb (see .ci/run)");
        eprintln!("Xvfb not installed: skipping the screenshot test");
        return;
    };
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
    if std::env::var_os("TOKENLENS_KEEP_SHOTS").is_some() {
        let keep = std::env::temp_dir().join("tokenlens-shots");
        std::fs::create_dir_all(&keep).unwrap();
        for f in ["plain.png", "heat.png"] {
            std::fs::copy(dir.path().join(f), keep.join(f)).unwrap();
        }
    }
    assert!(changed > area / 5, "only {changed} of {area} central pixels changed: no overlay drawn?");
    // The window itself rendered: not a blank frame.
    let distinct: std::collections::HashSet<[u8; 3]> = heat.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 1000, "the window looks blank ({} colours)", distinct.len());
}
