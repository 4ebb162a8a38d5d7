//! Hugging Face vision folders (ViT, DeiT, DINOv2) through our encoder, against transformers
//! outputs of tiny random-weight checkpoints (`scripts/make_encoder_fixtures.py`).

mod common;

use common::references::{check_hf_encoder as check, encoder_folder as folder, encoder_reference as reference};
use common::{json_tensor, max_diff};
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Value;
use tokenlens::Cancel;
use tokenlens::model::hf::HfVision;
use tokenlens::model::{HookPoint, NoIntervention, Probe, Trace};

#[test]
fn vit_classifier_matches_transformers() {
    check("vit");
}

#[test]
fn vit_without_qkv_bias_matches_transformers() {
    check("vit_model");
}

#[test]
fn deit_matches_transformers() {
    check("deit");
}

#[test]
fn deit_with_a_distillation_token_matches_transformers() {
    check("deit_distilled");
}

#[test]
fn dinov2_at_another_size_interpolates_positions_like_transformers() {
    check("dinov2");
    // The position table resized to the 5 x 6 grid, on its own.
    let model = HfVision::load(&folder("dinov2")).unwrap();
    let r = reference("dinov2");
    let want = json_tensor(&r["interpolated_position_embeddings"]);
    let ours = model.encoder.embeddings().position_for(5, 6, 32).unwrap();
    let d = max_diff(&ours, &want);
    assert!(d < 1e-5, "interpolated positions differ by {d}");
}

/// The vision tower of a CLIP / SigLIP folder against `reference["vision"]`.
fn check_tower(name: &str, normed_last_hidden: bool) {
    let model = HfVision::load(&folder(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let r = reference(name);
    let v = &r["vision"];
    let enc = &model.encoder;
    let layers = enc.num_layers();
    let mut trace = Trace::default();
    let mut state = enc.embed(&json_tensor(&r["pixel_values"])).unwrap();
    enc.run_blocks(&mut state, layers, &Probe::attention(layers), &mut trace, &mut NoIntervention, &Cancel::default())
        .unwrap();
    for (l, want) in v["attentions"].as_array().unwrap().iter().enumerate() {
        let d = max_diff(trace.require(HookPoint::AttnProbs(l)).unwrap(), &json_tensor(want));
        assert!(d < 1e-4, "{name}: layer {l} attention differs by {d}");
    }
    let normed = enc.final_norm(&state).unwrap();
    let last = if normed_last_hidden { &normed } else { &state.hidden };
    let d = max_diff(last, &json_tensor(&v["last_hidden_state"]));
    assert!(d < 1e-4, "{name}: last_hidden_state differs by {d}");
    if !normed_last_hidden {
        // CLIP: image features = visual_projection(post_layernorm(CLS)).
        let weights = candle_core::safetensors::load(folder(name).join("model.safetensors"), &Device::Cpu).unwrap();
        let projection = &weights["visual_projection.weight"]; // [projection_dim, hidden]
        let cls = normed.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
        let features = cls.matmul(&projection.t().unwrap()).unwrap();
        let d = max_diff(&features, &json_tensor(&r["image_features"]));
        assert!(d < 1e-4, "{name}: projected CLS differs by {d}");
    }
}

#[test]
fn clip_vision_tower_matches_transformers() {
    check_tower("clip", false);
}

#[test]
fn siglip_vision_tower_without_cls_matches_transformers() {
    check_tower("siglip", true);
    let model = HfVision::load(&folder("siglip")).unwrap();
    let state = model.encoder.embed(&json_tensor(&reference("siglip")["pixel_values"])).unwrap();
    assert_eq!((state.num_special, state.num_tokens()), (0, 16), "SigLIP has no CLS token");
}

/// Prompts scored against the image: token ids, embeddings, logits and probabilities.
fn check_zero_shot(name: &str) {
    let model = HfVision::load(&folder(name)).unwrap();
    let zs = model.zero_shot.as_ref().expect("a text tower");
    let r = reference(name);
    let prompts: Vec<&str> = r["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    // Token ids as the Python tokenizer gives them (SigLIP's are padded to full length there).
    let ids = json_tensor(&r["input_ids"]);
    for (i, p) in prompts.iter().enumerate() {
        let want: Vec<u32> = ids.get(i).unwrap().to_vec1::<f32>().unwrap().iter().map(|&v| v as u32).collect();
        let ours = zs.token_ids(p).unwrap();
        assert_eq!(ours[..], want[..ours.len()], "{name}: ids of {p:?}");
    }
    let enc = &model.encoder;
    let mut state = enc.embed(&json_tensor(&r["pixel_values"])).unwrap();
    enc.run_blocks(
        &mut state,
        enc.num_layers(),
        &Probe::default(),
        &mut Trace::default(),
        &mut NoIntervention,
        &Cancel::default(),
    )
    .unwrap();
    let features = enc.final_norm(&state).unwrap();
    if let Some(pooled) = zs.pooled(&features).unwrap() {
        let d = max_diff(&pooled, &json_tensor(&r["vision"]["pooler_output"]));
        assert!(d < 1e-4, "{name}: pooled image differs by {d}");
    }
    let image = zs.image_embedding(&features).unwrap();
    let d = max_diff(&image.unsqueeze(0).unwrap(), &json_tensor(&r["image_embeds"]));
    assert!(d < 1e-4, "{name}: image embedding differs by {d}");
    let d = max_diff(&zs.text_embeddings(&prompts).unwrap(), &json_tensor(&r["text_embeds"]));
    assert!(d < 1e-4, "{name}: text embeddings differ by {d}");
    let scores = zs.scores(&image, &prompts).unwrap();
    let as_row = |v: &[f32]| Tensor::from_slice(v, (1, v.len()), &Device::Cpu).unwrap();
    let d = max_diff(&as_row(&scores.logits), &json_tensor(&r["logits_per_image"]));
    assert!(d < 1e-4, "{name}: logits differ by {d}");
    let d = max_diff(&as_row(&scores.probs), &json_tensor(&r["probs"]));
    assert!(d < 1e-4, "{name}: probabilities differ by {d}");
}

#[test]
fn clip_zero_shot_matches_transformers() {
    check_zero_shot("clip");
}

#[test]
fn siglip_zero_shot_matches_transformers() {
    check_zero_shot("siglip");
}

#[test]
fn unsupported_and_broken_folders_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type": "swin", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "intermediate_size": 64, "layer_norm_eps": 1e-5, "image_size": 32, "patch_size": 4, "hidden_act": "gelu"}"#,
    )
    .unwrap();
    let err = HfVision::load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("unsupported model_type `swin`"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    assert!(HfVision::load(dir.path()).err().unwrap().to_string().contains("cannot read"));
    std::fs::copy(folder("vit").join("config.json"), dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"not weights").unwrap();
    assert!(HfVision::load(dir.path()).err().unwrap().to_string().contains("cannot read the weights"));
    // Weights that do not fit the config: a ViT config over the DINOv2 weights.
    std::fs::copy(folder("dinov2").join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    assert!(HfVision::load(dir.path()).err().unwrap().to_string().contains("does not match config.json"));
}

/// Resize (Pillow-exact), crop, rescale and normalise from each folder's preprocessor config,
/// against what the Python processor produced from the same photo.
#[test]
fn preprocessing_matches_the_python_processors() {
    use tokenlens::model::hf_preprocess::HfPreprocessor;
    let photo =
        tokenlens::model::preprocess::load_image(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/chelsea.png"))
            .unwrap();
    for name in ["vit", "deit", "clip", "siglip", "dinov2"] {
        let r = reference(name);
        let pre = HfPreprocessor::load(&folder(name)).unwrap();
        let img = pre.resize_and_crop(&photo).unwrap();
        let want = &r["image_u8_hwc"];
        let dims: Vec<u64> = want["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!([u64::from(img.height()), u64::from(img.width()), 3], dims[..], "{name}: size");
        let want_px: Vec<u8> = want["data"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
        let differing = img.as_raw().iter().zip(&want_px).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{name}: {differing} resized bytes differ from Pillow's");
        let d = max_diff(&pre.pixels(&img, &Device::Cpu).unwrap(), &json_tensor(&r["pixel_values"]));
        assert!(d < 1e-6, "{name}: pixel values differ by {d}");
    }
}

#[test]
fn cls_based_methods_fall_back_to_attention_received_without_cls() {
    use tokenlens::model::layers::AttnRecord;
    use tokenlens::reduce::{Context, ReducerConfig, Site, SiteView, ops};
    let model = HfVision::load(&folder("siglip")).unwrap();
    let enc = &model.encoder;
    let layers = enc.num_layers();
    let mut trace = Trace::default();
    let mut state = enc.embed(&json_tensor(&reference("siglip")["pixel_values"])).unwrap();
    enc.run_blocks(&mut state, layers, &Probe::attention(layers), &mut trace, &mut NoIntervention, &Cancel::default())
        .unwrap();
    let mut out = state.clone();
    out.hidden = enc.final_norm(&state).unwrap();
    let ctx = Context::encoder(layers, state.grid, 0);
    // The expectation from transformers' attention, by hand: mean over heads and queries of the
    // attention each token receives at the last layer, the 5 largest.
    let r = reference("siglip");
    let want_attn = &r["vision"]["attentions"][layers - 1];
    let dims: Vec<usize> =
        want_attn["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let (heads, n) = (dims[1], dims[3]);
    let data: Vec<f64> = want_attn["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let received: Vec<f64> =
        (0..n).map(|key| (0..heads * n).map(|hq| data[hq * n + key]).sum::<f64>() / (heads * n) as f64).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| received[b].total_cmp(&received[a]));
    assert!(received[order[4]] - received[order[5]] > 1e-5, "the 5th and 6th are too close to rank");
    let mut want: Vec<usize> = order[..5].to_vec();
    want.sort_unstable();
    let config = ReducerConfig::from_name("cls_topk").unwrap();
    assert_eq!(config.note_for(&ctx), Some(ops::NO_CLS_NOTE));
    let mut reducer = config.build(5, &ctx).unwrap();
    let view = SiteView {
        site: Site::EncoderOutput,
        state: &out,
        attn: &AttnRecord::default(),
        full_trace: &trace,
        vision_saliency: &[],
    };
    let plan = reducer.plan(&view).unwrap();
    let kept: Vec<usize> = plan.groups.iter().map(|g| g.members[0]).collect();
    assert_eq!(kept, want, "ClsTopK keeps the 5 most attended tokens");
    for (got, want) in plan.scores.unwrap().iter().zip(&received) {
        assert!((f64::from(*got) - want).abs() < 1e-5, "score {got} vs {want}");
    }
    // A CLS-free model keeps a CLS-free state through the plan.
    let reduced = reducer.plan(&view).unwrap().apply(&out, Default::default()).unwrap();
    assert_eq!((reduced.num_special, reduced.num_tokens()), (0, 5));
}

/// Every method through the session on a CLIP and a SigLIP folder: budgets honoured, the
/// zero-shot answer reported, nothing changed at 0 % removed.
#[test]
fn every_method_runs_on_clip_and_siglip_folders() {
    use tokenlens::model::ModelSource;
    use tokenlens::reduce::{Budget, ReducerConfig};
    use tokenlens::session::{RunSpec, Session};
    for name in ["clip", "siglip"] {
        let mut session = Session::load(&ModelSource::File(folder(name)), &mut |_| {}).unwrap();
        assert!(session.takes_prompt());
        session.set_prompt("a cat, a dog, a car");
        let input = session.open_image(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/coffee.png")).unwrap();
        let full = session.full_run(&input.prepared.pixels, &Cancel::default()).unwrap();
        assert_eq!((full.output.kind.name(), full.output.labels.len()), ("zero_shot", 3));
        for mut reducer in ReducerConfig::defaults() {
            if reducer.has_layer() {
                reducer.set_layer(0); // the tiny towers have two blocks
            }
            for removed in [0.0, 0.5] {
                let spec = RunSpec::vision(reducer.clone(), Budget::RemoveFraction(removed));
                let r = session
                    .run_against(&full, &spec, &Cancel::default())
                    .unwrap_or_else(|e| panic!("{name} {}: {e}", reducer.name()));
                assert_eq!(r.groups.len(), r.keep, "{name} {}", reducer.name());
                assert!(r.fidelity.top1_agrees.is_some());
                // KL between distributions: CLIP's softmax, not SigLIP's independent sigmoids.
                assert_eq!(r.fidelity.kl_divergence.is_some(), name == "clip");
                if removed == 0.0 {
                    assert_eq!(r.output.values, full.output.values, "{name} {}: changed at 0 %", reducer.name());
                }
            }
        }
    }
    // Without labels, a zero-shot model says what it needs.
    let session = Session::load(&ModelSource::File(folder("clip")), &mut |_| {}).unwrap();
    let input = session.open_image(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/coffee.png")).unwrap();
    let err = session.full_run(&input.prepared.pixels, &Cancel::default()).err().unwrap().to_string();
    assert!(err.contains("comma-separated"), "{err}");
}

/// A hub id resolves through the standard Hugging Face cache (`HF_HOME/hub/models--org--name`);
/// offline, a cached model loads and a missing one says what to do. (No network is used.)
#[cfg(feature = "hub")]
#[test]
fn hub_ids_load_from_the_hugging_face_cache() {
    let home = tempfile::tempdir().unwrap();
    let snapshot = home.path().join("hub/models--tiny--clip/snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(home.path().join("hub/models--tiny--clip/refs")).unwrap();
    std::fs::write(home.path().join("hub/models--tiny--clip/refs/main"), "0123abcd").unwrap();
    for f in ["config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"] {
        std::fs::copy(folder("clip").join(f), snapshot.join(f)).unwrap();
    }
    let analyze = |id: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokenlens"))
            .env("HF_HOME", home.path())
            .env("HF_HUB_OFFLINE", "1")
            .args(["analyze", concat!(env!("CARGO_MANIFEST_DIR"), "/assets/coffee.png"), "--model", id])
            .args(["--prompt", "a cup, a cat", "--out"])
            .arg(home.path().join("out"))
            .output()
            .unwrap()
    };
    let ok = analyze("tiny/clip");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("zero_shot: a "));
    let missing = analyze("tiny/absent");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && stderr.contains("HF_HUB_OFFLINE") && stderr.contains("--model DIR"),
        "{stderr}"
    );
}

/// A `CLIPVisionModel` folder (the tower's config at the top level, weights under
/// `vision_model.`) loads the same tower as the `CLIPModel` folder it is cut from.
#[test]
fn a_standalone_vision_tower_folder_loads() {
    let dir = tempfile::tempdir().unwrap();
    let full: Value =
        serde_json::from_str(&std::fs::read_to_string(folder("clip").join("config.json")).unwrap()).unwrap();
    let mut vision = full["vision_config"].clone();
    vision["architectures"] = serde_json::json!(["CLIPVisionModel"]);
    std::fs::write(dir.path().join("config.json"), vision.to_string()).unwrap();
    std::fs::copy(folder("clip").join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let model = HfVision::load(dir.path()).unwrap();
    assert!(model.zero_shot.is_none());
    let r = reference("clip");
    let mut state = model.encoder.embed(&json_tensor(&r["pixel_values"])).unwrap();
    let layers = model.encoder.num_layers();
    model
        .encoder
        .run_blocks(
            &mut state,
            layers,
            &Probe::default(),
            &mut Trace::default(),
            &mut NoIntervention,
            &Cancel::default(),
        )
        .unwrap();
    let d = max_diff(&state.hidden, &json_tensor(&r["vision"]["last_hidden_state"]));
    assert!(d < 1e-4, "standalone tower differs by {d}");
}
