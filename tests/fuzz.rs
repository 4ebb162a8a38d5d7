//! Fuzzing as a plain test: committed seeds, mutated by a fixed-seed RNG (bit flips, byte
//! overwrites with boundary values, big-endian u32 pokes at header fields, truncations, splices
//! across seeds, insertions; PNG chunk CRCs repaired half the time so mutations reach the
//! decoder). Every input must end in `Ok` or an error: a panic caught by the decoder guard is
//! counted as a finding, one that escapes fails the test.
//!
//! The suite runs a short pass. The long pass (100,000 inputs each, or `TOKENLENS_FUZZ_N`):
//! `cargo test --release --test fuzz -- --ignored --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use common::fixture;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenlens::model::onnx::{GraphProto, ModelProto, NodeProto, TensorProto};
use tokenlens::model::preprocess::{decode_image, set_max_pixels};
use tokenlens::model::{Model, ModelSource};

const SHORT_RUN: usize = 2_000;

/// How many inputs ended which way, and the distinct messages of panics caught.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    refused: usize,
    guarded_panics: BTreeMap<String, usize>,
    escaped_panics: BTreeMap<String, usize>,
}

impl Tally {
    fn total(&self) -> usize {
        self.ok
            + self.refused
            + self.guarded_panics.values().sum::<usize>()
            + self.escaped_panics.values().sum::<usize>()
    }
}

fn long_run_size() -> usize {
    std::env::var("TOKENLENS_FUZZ_N").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Rewrites every complete PNG chunk's CRC, so a mutated chunk is parsed instead of refused.
fn repair_png_crcs(data: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= data.len() {
        let len = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= data.len()) else { return };
        let crc = crc32(&data[at + 4..end]);
        data[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

/// One mutated input from the seeds.
fn mutate(rng: &mut ChaCha8Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.random_range(0..seeds.len())].clone();
    for _ in 0..rng.random_range(1..=4) {
        if data.is_empty() {
            data.push(rng.random());
        }
        let at = rng.random_range(0..data.len());
        match rng.random_range(0..7) {
            0 => data[at] ^= 1 << rng.random_range(0..8),
            1 => data[at] = [0x00, 0xff, 0x7f, 0x80, 0x01][rng.random_range(0..5)],
            2 if data.len() >= at + 4 => {
                let v: u32 =
                    [0, 1, 3, 4, 0x7fff_ffff, 0xffff_ffff, 16_000, 65_535, rng.random()][rng.random_range(0..9)];
                data[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
            3 => data.truncate(at),
            4 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                let from = rng.random_range(0..other.len());
                let len = rng.random_range(1..=64).min(other.len() - from);
                data.splice(at..at, other[from..from + len].iter().copied());
            }
            5 => {
                let len = rng.random_range(1..=16);
                data.splice(at..at, (0..len).map(|_| rng.random::<u8>()));
            }
            _ => {
                let len = rng.random_range(1..=32).min(data.len() - at);
                data.drain(at..at + len);
            }
        }
    }
    if data.starts_with(b"\x89PNG") && rng.random_bool(0.5) {
        repair_png_crcs(&mut data);
    }
    data
}

/// Runs `check` on `n` inputs; `check` says Ok(()) or the error message.
fn fuzz(n: usize, seed: u64, seeds: &[Vec<u8>], mut check: impl FnMut(&[u8]) -> Result<(), String>) -> Tally {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tally = Tally::default();
    for _ in 0..n {
        let input = mutate(&mut rng, seeds);
        match catch_unwind(AssertUnwindSafe(|| check(&input))) {
            Ok(Ok(())) => tally.ok += 1,
            Ok(Err(msg)) if msg.contains("the decoder failed (") => {
                let key = msg.split("the decoder failed (").nth(1).unwrap_or_default();
                let key = key.split("); the file").next().unwrap_or_default();
                *tally.guarded_panics.entry(key.to_string()).or_default() += 1;
            }
            Ok(Err(_)) => tally.refused += 1,
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                *tally.escaped_panics.entry(msg).or_default() += 1;
            }
        }
    }
    tally
}

fn image_seeds() -> Vec<Vec<u8>> {
    let dir = fixture("bad");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| (n.starts_with("seed_") || n.starts_with("exif_") || n == "palette4.png") && !n.ends_with(".rgb"))
        .collect();
    names.sort();
    assert!(names.len() >= 15, "seeds missing: {names:?}");
    names.iter().map(|n| std::fs::read(dir.join(n)).unwrap()).collect()
}

fn fuzz_images(n: usize) -> Tally {
    // Mutated headers may declare up to the limit; a small one keeps each input fast (the limit
    // itself is tested in bad_inputs.rs).
    set_max_pixels(1 << 20);
    fuzz(n, 0x1_3A6E, &image_seeds(), |bytes| decode_image(bytes).map(drop))
}

#[test]
fn mutated_images_decode_or_are_refused() {
    let tally = fuzz_images(SHORT_RUN);
    eprintln!("image loader, {} inputs: {tally:?}", tally.total());
    assert!(tally.escaped_panics.is_empty(), "{tally:?}");
    assert!(tally.ok > 0 && tally.refused > 0, "the mutations reach both outcomes: {tally:?}");
}

#[test]
#[ignore = "long: 100,000 inputs (TOKENLENS_FUZZ_N)"]
fn mutated_images_long() {
    let tally = fuzz_images(long_run_size());
    eprintln!("image loader, {} inputs: {tally:?}", tally.total());
    assert!(tally.escaped_panics.is_empty(), "{tally:?}");
}

/// A tiny ONNX export shaped like the default model's: a MatMul weight named by its bias Add,
/// the CLS and patch position rows.
fn onnx_seed() -> Vec<u8> {
    use prost::Message;
    let weight = |name: &str, dims: Vec<i64>| {
        let count: i64 = dims.iter().product();
        let raw_data = (0..count).flat_map(|i| (i as f32 * 0.1).to_le_bytes()).collect();
        TensorProto { dims, data_type: 1, name: name.into(), raw_data, ..Default::default() }
    };
    let node = |op: &str, input: &[&str], output: &str| NodeProto {
        input: input.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: format!("{op}_{output}"),
        op_type: op.into(),
    };
    let graph = GraphProto {
        node: vec![
            node("MatMul", &["x", "onnx::MatMul_1"], "y"),
            node("Add", &["y", "backbone.encoder.layer.0.attention.query.bias"], "z"),
        ],
        initializer: vec![
            weight("onnx::MatMul_1", vec![2, 2]),
            weight("backbone.encoder.layer.0.attention.query.bias", vec![2]),
            weight("onnx::Cls_2", vec![1, 1, 2]),
            weight("onnx::Pos_3", vec![1, 4, 2]),
        ],
    };
    ModelProto { graph: Some(graph) }.encode_to_vec()
}

/// Where each kind of loader input goes, and how it is loaded.
#[derive(Clone, Copy)]
enum Kind {
    Safetensors,
    Onnx,
    PreprocessorConfig,
    Config,
}

fn kind_of(bytes: &[u8]) -> Kind {
    match bytes.first() {
        Some(b'{') if bytes.windows(10).any(|w| w == b"model_type") => Kind::Config,
        Some(b'{') => Kind::PreprocessorConfig,
        _ if bytes.windows(5).any(|w| w == b"dtype") => Kind::Safetensors,
        _ => Kind::Onnx,
    }
}

fn load(dir: &Path, bytes: &[u8]) -> Result<(), String> {
    let vit = fixture("encoders/vit");
    let err = |e: tokenlens::Error| e.to_string();
    match kind_of(bytes) {
        Kind::Safetensors | Kind::Onnx => {
            let ext = if matches!(kind_of(bytes), Kind::Onnx) { "onnx" } else { "safetensors" };
            let path = dir.join(format!("weights.{ext}"));
            std::fs::write(&path, bytes).unwrap();
            Model::load(&ModelSource::File(path), &mut |_| {}).map(drop).map_err(err)
        }
        Kind::PreprocessorConfig => {
            std::fs::write(dir.join("preprocessor_config.json"), bytes).unwrap();
            let pre = tokenlens::model::hf_preprocess::HfPreprocessor::load(dir).map_err(err)?;
            pre.resize_and_crop(&image::RgbImage::new(40, 30)).map(drop).map_err(err)
        }
        Kind::Config => {
            let folder = dir.join("vit");
            if !folder.exists() {
                std::fs::create_dir(&folder).unwrap();
                for f in ["model.safetensors", "preprocessor_config.json"] {
                    std::fs::copy(vit.join(f), folder.join(f)).unwrap();
                }
            }
            std::fs::write(folder.join("config.json"), bytes).unwrap();
            Model::load(&ModelSource::File(folder), &mut |_| {}).map(drop).map_err(err)
        }
    }
}

fn loader_seeds() -> Vec<Vec<u8>> {
    // A small safetensors file: the DINOv2 names the default model's loader asks for first.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.safetensors");
    let t = |dims: &[usize]| candle_core::Tensor::ones(dims, candle_core::DType::F32, &candle_core::Device::Cpu);
    let tensors = std::collections::HashMap::from([
        ("backbone.embeddings.cls_token".to_string(), t(&[1, 1, 384]).unwrap()),
        ("backbone.embeddings.position_embeddings".to_string(), t(&[1, 2, 384]).unwrap()),
        ("x.weight".to_string(), t(&[2, 2]).unwrap()),
    ]);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let vit = fixture("encoders/vit");
    vec![
        std::fs::read(&path).unwrap(),
        onnx_seed(),
        std::fs::read(vit.join("preprocessor_config.json")).unwrap(),
        std::fs::read(fixture("encoders/clip/preprocessor_config.json")).unwrap(),
        std::fs::read(vit.join("config.json")).unwrap(),
    ]
}

fn fuzz_loaders(n: usize) -> Tally {
    let dir = tempfile::tempdir().unwrap();
    fuzz(n, 0x10AD, &loader_seeds(), |bytes| load(dir.path(), bytes))
}

#[test]
fn mutated_weights_and_configs_load_or_are_refused() {
    let tally = fuzz_loaders(SHORT_RUN / 2);
    eprintln!("safetensors/ONNX/config loaders, {} inputs: {tally:?}", tally.total());
    assert!(tally.escaped_panics.is_empty(), "{tally:?}");
    assert!(tally.ok > 0 && tally.refused > 0, "the mutations reach both outcomes: {tally:?}");
}

#[test]
#[ignore = "long: 100,000 inputs (TOKENLENS_FUZZ_N)"]
fn mutated_weights_and_configs_long() {
    let tally = fuzz_loaders(long_run_size());
    eprintln!("safetensors/ONNX/config loaders, {} inputs: {tally:?}", tally.total());
    assert!(tally.escaped_panics.is_empty(), "{tally:?}");
}
