//! CLI paths no other test runs: `sweep --out x.jsonl`, `bench` on an encoder and on a
//! vision-language model, `run --fill mean_token`, and `vlm --split-image --positions compact
//! --view-layer` (issue 13). Expectations come from each path's definition, not from a run of
//! the same code.

mod common;

use std::process::Command;

use common::{asset, fixture};
use serde_json::Value;

fn tokenlens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tokenlens"))
}

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sweep_writes_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.jsonl");
    ok(tokenlens()
        .arg("sweep")
        .arg(asset("chelsea.png"))
        .args(["--reducers", "tome,random", "--ratios", "tokens:14,tokens:100", "--out"])
        .arg(&path)
        .output()
        .unwrap());
    let text = std::fs::read_to_string(&path).unwrap();
    let rows: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4, "2 methods x 2 budgets");
    let sha: String = {
        use sha2::{Digest, Sha256};
        Sha256::digest(std::fs::read(asset("chelsea.png")).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
    };
    let mut seen = Vec::new();
    for r in &rows {
        let keep = r["keep"].as_u64().unwrap();
        assert_eq!(r["tokens_out"].as_u64().unwrap(), keep);
        // 256 patches on the default model: removed = 1 - keep / 256.
        assert!((r["removed_fraction"].as_f64().unwrap() - (1.0 - keep as f64 / 256.0)).abs() < 1e-12);
        assert_eq!(r["image_sha256"], sha.as_str());
        seen.push((r["reducer"].as_str().unwrap().to_string(), keep));
    }
    seen.sort();
    let want = [("random", 14), ("random", 100), ("tome", 14), ("tome", 100)].map(|(m, k)| (m.to_string(), k));
    assert_eq!(seen, want);
}

/// The method rows of a `bench` table (first word = method), split into columns.
fn bench_rows(stdout: &str, methods: &[&str]) -> Vec<Vec<String>> {
    methods
        .iter()
        .map(|m| {
            let line = stdout
                .lines()
                .find(|l| l.split_whitespace().next() == Some(m))
                .unwrap_or_else(|| panic!("no row for {m} in:\n{stdout}"));
            line.split_whitespace().map(str::to_string).collect()
        })
        .collect()
}

#[test]
fn bench_runs_on_an_encoder_and_on_a_vision_language_model() {
    // Encoder: ToMe merges from block 0, Random acts after the two blocks of the vit fixture.
    let out = ok(tokenlens()
        .args(["bench", "--reducers", "tome,random", "--repeats", "1", "--model"])
        .arg(fixture("encoders/vit"))
        .output()
        .unwrap());
    let rows = bench_rows(&out, &["tome", "random"]);
    assert_eq!(rows[0].last().unwrap(), "0", "{out}");
    assert_eq!(rows[1].last().unwrap(), "2", "{out}");
    // VLM: Random prunes before the decoder; FastV at its default K = 2 of 2 layers removes nothing.
    let out = ok(tokenlens()
        .args(["bench", "--reducers", "fastv,random", "--repeats", "1", "--decode-tokens", "2", "--model"])
        .arg(fixture("vlm/llava"))
        .output()
        .unwrap());
    assert!(out.contains("prefill") && out.contains("KV") && out.contains("(2 steps)"), "{out}");
    let rows = bench_rows(&out, &["fastv", "random"]);
    assert_eq!(rows[1][1], "pre_llm", "{out}");
    // The decode column: tokens/s ("-" would mean an answer ended before its two steps, which
    // this fixture's greedy answers do not), for the full model and each method.
    let rate = |s: &str| s.parse::<f64>().is_ok_and(|r| r > 0.0 && r.is_finite());
    let full = out.split(", decode ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or("");
    assert!(rate(full), "{out}");
    for row in &rows {
        assert!(rate(row.last().unwrap()), "{out}");
    }
    assert!(rows[0][1..].join(" ").starts_with("none (nothing removed)"), "{out}");
}

#[test]
fn run_fills_dropped_patches_with_the_mean_token() {
    let dir = tempfile::tempdir().unwrap();
    let run = |fill: &str, tokens: &str| -> Value {
        let out = dir.path().join(format!("{fill}-{tokens}"));
        ok(tokenlens()
            .arg("run")
            .arg(asset("coffee.png"))
            .args(["--reducer", "random", "--tokens", tokens, "--fill", fill, "--out"])
            .arg(&out)
            .output()
            .unwrap());
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap()
    };
    let (zeros, mean) = (run("zeros", "64"), run("mean_token", "64"));
    assert_eq!(mean["spec"]["fill"], "mean_token");
    assert_eq!(mean["kept"], zeros["kept"], "the fill does not change the selection");
    assert_ne!(mean["output"], zeros["output"], "the saliency head sees a different fill");
    // Nothing dropped, nothing filled: both fills give the full output.
    let (zeros, mean) = (run("zeros", "256"), run("mean_token", "256"));
    assert_eq!(mean["output"], zeros["output"]);
    assert_eq!(mean["fidelity"]["output_l1"], 0.0);
}

#[test]
fn vlm_splits_the_image_compacts_positions_and_reads_the_view_layer() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    ok(tokenlens()
        .arg("vlm")
        .arg(asset("chelsea.png"))
        .arg("--model")
        .arg(fixture("vlm/idefics3_split"))
        .args(["--split-image", "--reducer", "fastv", "--layer", "1", "--remove", "0.5"])
        .args(["--positions", "compact", "--view-layer", "1", "--max-tokens", "4", "--out"])
        .arg(&out)
        .output()
        .unwrap());
    let v: Value = serde_json::from_str(&std::fs::read_to_string(out.join("vlm.json")).unwrap()).unwrap();
    // 2 x 2 tiles plus the global image, 4 tokens each after the pixel shuffle.
    assert_eq!(v["prompt"]["image_slots"].as_array().unwrap().len(), 20);
    let reduced = &v["reduced"];
    assert_eq!(reduced["spec"]["positions"], "compact");
    assert_eq!(reduced["spec"]["view_layer"], 1);
    // FastV K = 1: layer 0 sees all 20 rows, layer 1 the 10 kept: 15 on average.
    assert_eq!(reduced["image_rows_per_layer"], serde_json::json!([20, 10]));
    assert_eq!(reduced["layer_averaged_image_rows"], 15.0);
    assert_eq!(reduced["kept"].as_array().unwrap().len(), 10);
}

/// `export --from` re-makes a figure only from the same image and weights: after either
/// changed it says which, and exits non-zero.
#[test]
fn export_from_refuses_a_changed_image_or_changed_weights() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("photo.png");
    std::fs::copy(asset("chelsea.png"), &image).unwrap();
    let model = dir.path().join("vit");
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(fixture("encoders/vit")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let fig = dir.path().join("fig.png");
    ok(tokenlens()
        .arg("export")
        .arg(&image)
        .args(["--view", "tokens", "--reducer", "random", "--tokens", "8", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&fig)
        .output()
        .unwrap());
    let sidecar = dir.path().join("fig.png.json");
    // The sidecar records the weights' hash, not where they were: --model names them again.
    let remake = |name: &str| {
        let out = dir.path().join(name);
        tokenlens()
            .arg("export")
            .arg("--from")
            .arg(&sidecar)
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    ok(remake("same.png"));
    assert_eq!(std::fs::read(&fig).unwrap(), std::fs::read(dir.path().join("same.png")).unwrap());

    std::fs::copy(asset("coffee.png"), &image).unwrap();
    let out = remake("image.png");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("the file changed since the figure was made"), "{err}");
    std::fs::copy(asset("chelsea.png"), &image).unwrap();

    // One weight changed (the last byte of the data, past the safetensors header).
    let weights = model.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    let out = remake("weights.png");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("the figure was made with weights"), "{err}");
}
