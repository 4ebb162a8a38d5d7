//! The quantized cache (`model::quant_cache`) on the wide LLaVA fixture, whose decoder (width
//! 256) and tower (width 32) are quantized under both formats: a cached load equals a fresh
//! quantized load bit for bit; truncated, corrupt and foreign caches are rejected and rebuilt;
//! `--no-quant-cache` and `TOKENLENS_NO_QUANT_CACHE` write nothing. Every cache lives in a
//! temporary folder.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use common::{QUESTION, asset, fixture, vlm_spec};
use tokenlens::Cancel;
use tokenlens::model::llama::KvCache;
use tokenlens::model::quant::{LoadOptions, QuantWeight, Quantize};
use tokenlens::session::vlm::Vlm;

fn options(q: Quantize) -> LoadOptions {
    LoadOptions { quantize: Some(q), ..LoadOptions::default() }
}

/// Loads `checkpoint` quantized to `q` with its cache in `cache`; the load's cache line.
fn load(checkpoint: &Path, q: Quantize, cache: &Path) -> (Vlm, String) {
    let vlm = Vlm::load_cached(checkpoint, options(q), Some(cache)).unwrap();
    let line = vlm.quant_cache.clone().expect("a quantized load says where its weights went");
    (vlm, line)
}

/// The one cache file in `cache`.
fn cache_file(cache: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// The full answer's ids, and the decoder's logits and every layer's attention over its prompt
/// (the image tokens come through the quantized tower and projector).
fn outputs(vlm: &Vlm) -> (Vec<u32>, Tensor, Vec<Tensor>) {
    let image = vlm.open_image(&asset("chelsea.png")).unwrap();
    let full = vlm.full(image, QUESTION, &vlm_spec(), &mut |_| {}, &Cancel::default()).unwrap();
    let lm = vlm.arch.lm();
    let inputs = full.prefill.inputs[0].to_dtype(DType::F32).unwrap();
    let positions: Vec<u32> = (0..inputs.dim(1).unwrap() as u32).collect();
    let layers: Vec<usize> = (0..lm.num_layers()).collect();
    let (out, trace) = lm.forward(&inputs, &positions, &mut KvCache::default(), &layers, false).unwrap();
    let attention = layers.iter().map(|l| trace.attentions[l].clone()).collect();
    (full.run.answer.ids.clone(), lm.logits(&out).unwrap(), attention)
}

fn assert_same(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}");
    let d: f32 = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    assert_eq!(d, 0.0, "{what}");
}

#[test]
fn a_cached_load_equals_a_fresh_one_bit_for_bit() {
    let model = fixture("vlm/llava_wide");
    for q in Quantize::ALL {
        let cache = tempfile::tempdir().unwrap();
        let fresh = Vlm::load_with(&model, options(q)).unwrap();
        assert!(fresh.quant_cache.is_none(), "no cache asked, none used");
        let (first, written) = load(&model, q, cache.path());
        assert!(written.contains("written to"), "{q}: {written}");
        let file = cache_file(cache.path());
        let (cached, read) = load(&model, q, cache.path());
        assert!(read.contains("read from") && read.contains(&file.display().to_string()), "{q}: {read}");
        assert_eq!((cached.linears.quantized, cached.linears.tower), (fresh.linears.quantized, fresh.linears.tower));
        assert_eq!(cached.linears.bytes, fresh.linears.bytes, "{q}");

        // The blobs are the blocks quantizing the checkpoint's weight gives, byte for byte, and
        // the tower's fused layers are there in q8_0.
        let bytes = std::fs::read(&file).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let checkpoint = std::fs::read(model.join("model.safetensors")).unwrap();
        let weights = safetensors::SafeTensors::deserialize(&checkpoint).unwrap();
        let mut decoder = 0;
        for (name, blob) in st.tensors() {
            let Ok(stored) = weights.tensor(&name) else {
                assert!(name.contains("vision_tower") && !name.ends_with(".weight"), "{name}");
                continue;
            };
            let dtype = DType::try_from(stored.dtype()).unwrap();
            let want = QuantWeight::from_stored(dtype, stored.shape(), stored.data(), q).unwrap();
            assert_eq!(blob.data(), want.bytes(), "{q} {name}");
            decoder += 1;
        }
        assert_eq!(decoder, fresh.linears.quantized, "{q}: every decoder and projector layer cached");
        assert_eq!(st.tensors().len(), fresh.linears.quantized + fresh.linears.tower, "{q}");

        // Logits, attention and the answer: identical.
        let (ids, logits, attention) = outputs(&fresh);
        for (vlm, how) in [(&first, "written"), (&cached, "read")] {
            let (i, l, a) = outputs(vlm);
            assert_eq!(i, ids, "{q} {how}");
            assert_same(&l, &logits, &format!("{q} {how} logits"));
            for (layer, (x, y)) in a.iter().zip(&attention).enumerate() {
                assert_same(x, y, &format!("{q} {how} attention {layer}"));
            }
        }
    }
}

/// `damage` done to a good cache: the next load says it ignored the file and rewrote it, and
/// gives the fresh load's logits; the load after reads the rewritten file.
fn rejected_and_rebuilt(damage: impl Fn(&Path), says: &str, logits: &Tensor) {
    let model = fixture("vlm/llava_wide");
    let cache = tempfile::tempdir().unwrap();
    load(&model, Quantize::Q8_0, cache.path());
    damage(&cache_file(cache.path()));
    let (vlm, line) = load(&model, Quantize::Q8_0, cache.path());
    assert!(line.contains("was ignored") && line.contains(says) && line.contains("written to"), "{says}: {line}");
    assert_same(&outputs(&vlm).1, logits, says);
    let (_, line) = load(&model, Quantize::Q8_0, cache.path());
    assert!(line.contains("read from"), "{says}: {line}");
}

fn header_len(file: &Path) -> usize {
    let bytes = std::fs::read(file).unwrap();
    u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

fn flip(file: &Path, at: usize) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[at] ^= 1;
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn truncated_corrupt_and_foreign_caches_are_rejected_and_rebuilt() {
    let model = fixture("vlm/llava_wide");
    let (_, logits, _) = outputs(&Vlm::load_with(&model, options(Quantize::Q8_0)).unwrap());
    let truncate = |f: &Path| {
        let len = std::fs::metadata(f).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(f).unwrap().set_len(len - 100).unwrap();
    };
    rejected_and_rebuilt(truncate, "not a whole safetensors file", &logits);
    // A header length no file could have is refused before anything is allocated.
    let huge = |f: &Path| {
        let mut bytes = std::fs::read(f).unwrap();
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(f, bytes).unwrap();
    };
    rejected_and_rebuilt(huge, "a header of", &logits);
    // A flipped byte anywhere in the header (keys, names, offsets, the layer list, padding),
    // and one in the blocks (their CRC-32).
    for part in [0, 1, 2, 3, 5, 7] {
        rejected_and_rebuilt(|f| flip(f, 8 + header_len(f) * part / 8 + 3), "", &logits);
    }
    rejected_and_rebuilt(|f| flip(f, std::fs::metadata(f).unwrap().len() as usize - 5), "CRC-32", &logits);
    rejected_and_rebuilt(|f| std::fs::write(f, b"short").unwrap(), "too short", &logits);

    // Another checkpoint's cache under this one's name: its key differs. (A copy of the fixture
    // is another checkpoint: its files' modification times differ.)
    let other = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&model).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, other.path().join(path.file_name().unwrap())).unwrap();
    }
    let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    load(&model, Quantize::Q8_0, ours.path());
    load(other.path(), Quantize::Q8_0, theirs.path());
    let target = cache_file(theirs.path());
    std::fs::copy(cache_file(ours.path()), &target).unwrap();
    let (_, line) = load(other.path(), Quantize::Q8_0, theirs.path());
    assert!(line.contains("another checkpoint") && line.contains("written to"), "{line}");
    let (_, line) = load(other.path(), Quantize::Q8_0, theirs.path());
    assert!(line.contains("read from"), "{line}");
    // Another format's file is another name; the q8_0 one is left alone.
    let (_, line) = load(other.path(), Quantize::Q4K, theirs.path());
    assert!(line.contains("written to"), "{line}");
    assert_eq!(std::fs::read_dir(theirs.path()).unwrap().count(), 2);
}

#[test]
fn an_unwritable_cache_is_a_warning_and_the_load_goes_on() {
    let model = fixture("vlm/llava_wide");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a file");
    std::fs::write(&file, b"x").unwrap();
    let (vlm, line) = load(&model, Quantize::Q8_0, &file.join("quantized"));
    assert!(line.starts_with("Warning") && line.contains("goes on uncached"), "{line}");
    assert_eq!(vlm.linears.quantized, 17);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
}

#[test]
fn the_cli_caches_unless_told_not_to() {
    let run = |cache: &Path, flags: &[&str], env: Option<(&str, &str)>| {
        let out = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tokenlens"));
        cmd.env("TOKENLENS_CACHE", cache).env_remove("TOKENLENS_NO_QUANT_CACHE").args(["--quantize", "q8_0"]);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let output = cmd
            .args(flags)
            .args(["vlm", "--max-tokens", "1", "--out"])
            .arg(out.path())
            .arg("--model")
            .arg(fixture("vlm/llava_wide"))
            .arg(asset("chelsea.png"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        stderr
    };
    let cache = tempfile::tempdir().unwrap();
    let stderr = run(cache.path(), &["--no-quant-cache"], None);
    assert!(!stderr.contains("Quantized weights"), "{stderr}");
    run(cache.path(), &[], Some(("TOKENLENS_NO_QUANT_CACHE", "1")));
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0, "nothing written");
    let stderr = run(cache.path(), &[], None);
    let folder = cache.path().join("quantized");
    assert!(stderr.contains(&format!("Quantized weights written to {}", folder.display())), "{stderr}");
    let stderr = run(cache.path(), &[], Some(("TOKENLENS_NO_QUANT_CACHE", "0")));
    assert!(stderr.contains("Quantized weights read from"), "{stderr}");
}
