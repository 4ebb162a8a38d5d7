//! The memory guard: estimates from published configs against transformers' parameter counts
//! (scripts/count_parameters.py) and against the tensors the fixtures' checkpoints hold; a model
//! estimated over the limit is refused before any weight is read; the tiny fixtures load.

mod common;

use std::path::Path;
use std::process::Command;

use candle_core::DType;
use common::fixture;
use tokenlens::model::ModelSource;
use tokenlens::model::memory::{self, Available, Budget};
use tokenlens::model::quant::Quantize;
use tokenlens::session::Session;
use tokenlens::session::vlm::Arch;

/// transformers' count for a published folder (tests/fixtures/published/parameter_counts.json).
fn transformers_count(folder: &str) -> u64 {
    let text = std::fs::read_to_string(fixture("published/parameter_counts.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["parameters"][folder].as_u64().unwrap()
}

/// Elements in a checkpoint's tensors that tokenlens reads, from its header.
fn stored_count(file: &Path) -> u64 {
    let bytes = std::fs::read(file).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.tensors()
        .iter()
        // Integer buffers, and ViTModel's pooler (never read: the views use the tokens).
        .filter(|(name, _)| !name.ends_with("position_ids") && !name.starts_with("pooler."))
        .map(|(_, info)| info.shape.iter().product::<usize>() as u64)
        .sum()
}

fn within(estimate: u64, reference: u64, tolerance: f64) {
    let rel = (estimate as f64 - reference as f64).abs() / reference as f64;
    assert!(rel <= tolerance, "estimate {estimate} vs {reference}: {:.3} % off", rel * 100.0);
}

#[test]
fn published_vlm_configs_estimate_transformers_parameter_counts() {
    for (folder, name) in [("llava-1.5-7b-hf", "LLaVA"), ("SmolVLM-256M-Instruct", "SmolVLM")] {
        let estimate = Arch::memory_estimate(&fixture(&format!("published/{folder}"))).unwrap().unwrap();
        assert!(estimate.model.starts_with(name), "{}", estimate.model);
        within(estimate.parameters, transformers_count(folder), 0.01);
    }
    // LLaVA-1.5-7B at f32: 7.06 B x 4 bytes of weights, its KV cache at 2048 tokens:
    // 2 (k, v) x 32 layers x 4096 x 2048 x 4 bytes.
    // The embedding table stays in the published float16 (2 bytes).
    let llava = Arch::memory_estimate(&fixture("published/llava-1.5-7b-hf")).unwrap().unwrap();
    within(llava.weight_bytes(), (7_063_427_072 - TABLE) * 4 + TABLE * 2, 0.01);
    // One image's 576 tokens and 128 of text: 2 (k, v) x 32 layers x 4096 x 704 x 4 bytes.
    assert_eq!((llava.kv_tokens, llava.kv_bytes()), (704, 2 * 32 * 4096 * 704 * 4));
}

#[test]
fn estimates_count_the_tensors_the_fixtures_hold() {
    for folder in ["vlm/llava", "vlm/idefics3"] {
        let estimate = Arch::memory_estimate(&fixture(folder)).unwrap().unwrap();
        within(estimate.parameters, stored_count(&fixture(&format!("{folder}/model.safetensors"))), 0.01);
    }
}

/// LLaVA-1.5-7B's token embedding table: 32,064 x 4,096.
const TABLE: u64 = 32_064 * 4_096;

/// A folder holding only LLaVA-1.5-7B's published config.json: no weights, no tokenizer.
fn config_only_7b() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("published/llava-1.5-7b-hf/config.json"), dir.path().join("config.json")).unwrap();
    dir
}

#[test]
fn a_model_over_the_limit_is_refused_by_the_guard_before_any_weight_is_read() {
    let dir = config_only_7b();
    let estimate = Arch::memory_estimate(dir.path()).unwrap().unwrap();
    let msg = memory::check(&estimate, Available::Limit(16_000_000_000)).unwrap_err().to_string();
    for needed in ["LLaVA", "needs about", "16.00 GB is the --memory-limit", "7.06 B parameters", "--quantize q8_0"] {
        assert!(msg.contains(needed), "`{needed}` missing from: {msg}");
    }
    // What each format would need, from the quantized byte sizes: q8_0 fits in 16 GB, q4k too.
    assert!(msg.contains("Load it with --quantize q8_0 (") && msg.contains("--quantize q4k ("), "{msg}");
    let q8 = estimate.clone().with_quantize(Some(Quantize::Q8_0));
    assert!(memory::check(&q8, Available::Limit(16_000_000_000)).is_ok(), "{}", q8.summary());
    // Every decoder linear (32 x 7) and lm_head and the projector's two: 227 layers at 34/32
    // bytes per weight; the embedding table at 2, norms and the tower's embeddings at 4.
    assert_eq!(q8.quantized_layers(), (227, 0));
    let linear: u64 =
        32 * (3 * 4096 * 4096 + 4096 * 4096 + 3 * 4096 * 11008) + 4096 * 32064 + 1024 * 4096 + 4096 * 4096;
    // The tower's 24 blocks (QKV, output, MLP): q8_0 under any quantization.
    let tower: u64 = 24 * (1024 * 3072 + 1024 * 1024 + 2 * 1024 * 4096);
    let quantized = (linear + tower) as f64 * 34.0 / 32.0;
    let expected = (7_063_427_072 - linear - tower - TABLE) as f64 * 4.0 + TABLE as f64 * 2.0 + quantized;
    within(q8.weight_bytes(), expected as u64, 0.001);
    assert!(memory::check(&estimate, Available::Limit(estimate.total())).is_ok());
    assert!(memory::check(&estimate, Available::Unknown).is_ok());
}

/// On a GPU the device holds the weights, caches and work; LLaVA-1.5-7B's shapes by hand:
/// parameters 7,063,427,072 (tower 303,507,456, projector 20,979,712, decoder 6,738,939,904);
/// the linear layers (decoder, lm_head, projector) 6,628,311,040, kept in bf16 with the float16
/// embedding table (131,334,144), the rest (303,781,888: tower, biases, norms) f32.
#[test]
fn on_a_gpu_the_7b_is_checked_against_the_device_in_half_precision_before_any_weight_is_read() {
    let dir = config_only_7b();
    let cpu = Arch::memory_estimate(dir.path()).unwrap().unwrap();
    assert_eq!(cpu.parameters, 7_063_427_072);
    let bf16 = cpu.clone().on_device("cuda:0", Some(DType::BF16));
    assert_eq!(bf16.weight_bytes(), 303_781_888 * 4 + (6_628_311_040 + TABLE) * 2);
    // A run: two f32 KV caches (2 x 32 x 4096 x 704 x 4), the layer inputs (32 x 704 x 4096 x 4),
    // the tower's maps, keys and states (4 x 24 x (16 x 577² + 2 x 577 x 1024)), one decoder
    // layer at work (4 x (3 x 32 x 704² + 3 x 704 x 11008)); then 256 MiB and 5 %.
    let run: u64 = 2 * 738_197_504 + 369_098_752 + 624_821_760 + 283_312_128;
    let base = 14_734_417_920 + run + (256 << 20);
    assert_eq!(bf16.total(), base + base * 5 / 100);
    // The host: the largest tensor (the float16 table, or lm_head) while it is copied over.
    let host = TABLE * 2 + (256 << 20);
    assert_eq!(bf16.host_bytes(), host + host * 5 / 100);
    assert!(bf16.summary().contains("(bf16 linear layers, the rest f32)"), "{}", bf16.summary());
    // `--dtype auto`: the published float16.
    let auto = cpu.clone().on_device("cuda:0", None);
    assert_eq!((auto.linear_dtype, auto.weight_bytes()), (DType::F16, bf16.weight_bytes()));
    // A 24 GB GPU: f32 is refused, naming the device, the numbers and the flags that fit.
    let f32 = cpu.clone().on_device("cuda:0", Some(DType::F32));
    let gpu = |device| Budget { host: Available::Limit(16_000_000_000), device };
    let msg = memory::check(&f32, gpu(Available::DeviceFree(24_000_000_000))).unwrap_err().to_string();
    for needed in [
        "LLaVA (llava) needs about 32.56 GB on cuda:0",
        "24.00 GB is free on cuda:0 (cuMemGetInfo)",
        "--dtype bf16 or f16 (18.64 GB on cuda:0, fits)",
        "--device cpu --quantize q8_0 (",
        "--device cpu --quantize q4k (",
    ] {
        assert!(msg.contains(needed), "`{needed}` missing from: {msg}");
    }
    assert_eq!(msg.matches("of host RAM, fits)").count(), 2, "{msg}");
    assert!(memory::check(&bf16, gpu(Available::DeviceFree(24_000_000_000))).is_ok());
    // A 16 GB GPU: half precision does not fit either; the CPU with a quantization does.
    let msg = memory::check(&bf16, gpu(Available::DeviceLimit(16_000_000_000))).unwrap_err().to_string();
    assert!(msg.contains("16.00 GB is the --device-memory-limit") && !msg.contains("--dtype"), "{msg}");
    assert!(msg.contains("--device cpu --quantize q4k (") && msg.contains("of host RAM, fits)"), "{msg}");
}

fn tokenlens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tokenlens"))
}

#[test]
fn the_cli_refuses_with_the_guard_not_a_missing_file() {
    let dir = config_only_7b();
    let image = fixture("images/astronaut_crop224.png");
    let out = tempfile::tempdir().unwrap();
    let run = |limit: &str, model: &Path| {
        tokenlens()
            .args(["--memory-limit", limit, "vlm", "--out"])
            .arg(out.path())
            .arg("--model")
            .arg(model)
            .arg(&image)
            .output()
            .unwrap()
    };
    let refused = run("16", dir.path());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("not enough memory") && stderr.contains("16.00 GB"), "{stderr}");
    assert!(!stderr.contains("safetensors") && !stderr.contains("tokenizer"), "{stderr}");
    // The flag reaches the guard: even the tiny fixture is refused under a tiny limit.
    let tiny = run("0.001", &fixture("vlm/llava"));
    let stderr = String::from_utf8_lossy(&tiny.stderr);
    assert!(!tiny.status.success() && stderr.contains("not enough memory"), "{stderr}");
    let zero = run("0", &fixture("vlm/llava"));
    assert!(!zero.status.success() && String::from_utf8_lossy(&zero.stderr).contains("--memory-limit"));
    let zero = tokenlens()
        .args(["--device-memory-limit", "0", "vlm", "--out"])
        .arg(out.path())
        .arg("--model")
        .arg(fixture("vlm/llava"))
        .arg(&image)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&zero.stderr);
    assert!(!zero.status.success() && stderr.contains("--device-memory-limit must be a positive"), "{stderr}");
}

#[test]
fn tiny_fixtures_load_under_the_default_guard() {
    for folder in ["vlm/llava", "vlm/idefics3", "encoders/vit", "encoders/clip"] {
        let estimate = Arch::memory_estimate(&fixture(folder)).unwrap();
        assert!(estimate.as_ref().is_none_or(|e| e.total() < 1_000_000_000), "{folder}: {estimate:?}");
        Session::load(&ModelSource::File(fixture(folder)), &mut |_| {}).unwrap();
    }
}

#[test]
fn encoder_estimates_count_the_tensors_the_fixtures_hold() {
    use tokenlens::model::hf::HfVision;
    let mut counts = Vec::new();
    for folder in ["vit", "vit_model", "deit", "deit_distilled", "dinov2", "clip", "siglip"] {
        let dir = fixture(&format!("encoders/{folder}"));
        let estimate = HfVision::memory_estimate(&dir).unwrap();
        let stored = stored_count(&dir.join("model.safetensors"));
        println!("{folder}: estimate {} stored {stored}", estimate.parameters);
        counts.push((folder, estimate.parameters, stored));
    }
    for (folder, estimate, stored) in counts {
        println!("{folder}");
        // Left out, never read: DINOv2's mask token, CLIP's and SigLIP's logit scale (and bias).
        within(estimate, stored, 0.005);
    }
}

/// The whole `vlm` run measured on LLaVA-1.5-7B's shapes under `--quantize q4k` (README, Speed:
/// `/usr/bin/time -v`'s maximum resident set size, kB, of `vlm --reducer fastv --max-tokens 2`).
const MEASURED_Q4K_KB: u64 = 5_840_428;

#[test]
fn the_7b_estimate_is_within_15_percent_of_the_measured_run_and_f32_is_refused_on_24_gb() {
    let dir = config_only_7b();
    let f32 = Arch::memory_estimate(dir.path()).unwrap().unwrap();
    let q4k = f32.clone().with_quantize(Some(Quantize::Q4K));
    within(q4k.total(), MEASURED_Q4K_KB * 1024, 0.15);
    // q8_0 differs from q4k by the decoder's and projector's weights alone (exact byte counts).
    let q8 = f32.clone().with_quantize(Some(Quantize::Q8_0));
    let linear: u64 =
        32 * (3 * 4096 * 4096 + 4096 * 4096 + 3 * 4096 * 11008) + 4096 * 32064 + 1024 * 4096 + 4096 * 4096;
    assert_eq!(q8.weight_bytes() - q4k.weight_bytes(), (linear as f64 * (34.0 / 32.0 - 144.0 / 256.0)) as u64);
    // This machine: 24 GB. f32 is refused, naming the flags that fit.
    let msg = memory::check(&f32, Available::Limit(24_000_000_000)).unwrap_err().to_string();
    assert!(msg.contains("needs about 3") && msg.contains("24.00 GB is the --memory-limit"), "{msg}");
    assert!(msg.contains("--quantize q8_0 (") && msg.contains("--quantize q4k ("), "{msg}");
    assert!(msg.matches(", fits)").count() == 2, "{msg}");
    assert!(memory::check(&q8, Available::Limit(24_000_000_000)).is_ok());
    assert!(q8.total() < 12_000_000_000 && q4k.total() < 8_000_000_000, "{} / {}", q8.summary(), q4k.summary());
}
