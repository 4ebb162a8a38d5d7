//! Published model folders (tests/fixtures/published: config, processor, generation and tokenizer
//! files as their publishers wrote them) against transformers (`scripts/make_published_fixtures.py`):
//! our default tables equal transformers' class defaults, each published config resolves to
//! what `AutoConfig.from_pretrained(folder).to_dict()` gives on every field we use, and the
//! published folder with tiny random weights (every setting kept but the sizes) gives
//! transformers' prompt ids, greedy answer and log-probabilities.

mod common;

use common::fixture;
use serde_json::Value;
use tokenlens::Cancel;
use tokenlens::model::config::{Activation, VitConfig};
use tokenlens::model::hf_config::{Class, dtype};
use tokenlens::model::idefics3::Idefics3Settings;
use tokenlens::model::llama::LlamaConfig;
use tokenlens::model::llava::LlavaSettings;
use tokenlens::session::RunSpec;
use tokenlens::session::vlm::Vlm;

fn read(rel: &str) -> Value {
    let path = fixture(rel);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))).unwrap()
}

/// Numbers compare as numbers (`1e-05` and `0.00001`, `10000` and `10000.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[test]
fn default_tables_are_transformers_class_defaults() {
    let want = read("published/class_defaults.json");
    let mut checked = 0;
    for class in Class::ALL {
        let theirs = &want[class.name()];
        assert!(theirs.is_object(), "{} missing from class_defaults.json", class.name());
        for (key, ours) in class.defaults().as_object().unwrap() {
            // transformers 5 keeps `rope_theta` inside `rope_parameters`.
            let t = match (&theirs[key], key.as_str()) {
                (Value::Null, "rope_theta") => &theirs["rope_parameters"]["rope_theta"],
                (t, _) => t,
            };
            // Fields the class does not have carry what its model hard-codes (CLIP's biases).
            if t.is_null() && key == "qkv_bias" {
                continue;
            }
            assert!(same(ours, t), "{}.{key}: ours {ours}, transformers {t}", class.name());
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} defaults compared");
}

fn act_name(a: Activation) -> &'static str {
    match a {
        Activation::Gelu => "gelu",
        Activation::GeluPytorchTanh => "gelu_pytorch_tanh",
        Activation::QuickGelu => "quick_gelu",
    }
}

fn check_vision(name: &str, ours: &VitConfig, t: &Value) {
    let fields: [(&str, Value); 8] = [
        ("hidden_size", ours.hidden_size.into()),
        ("intermediate_size", ours.intermediate_size.into()),
        ("num_hidden_layers", ours.num_hidden_layers.into()),
        ("num_attention_heads", ours.num_attention_heads.into()),
        ("layer_norm_eps", ours.layer_norm_eps.into()),
        ("image_size", ours.image_size.into()),
        ("patch_size", ours.patch_size.into()),
        ("num_channels", ours.num_channels.into()),
    ];
    for (key, v) in fields {
        assert!(same(&v, &t[key]), "{name} vision_config.{key}: ours {v}, transformers {}", t[key]);
    }
    assert_eq!(act_name(ours.hidden_act), t["hidden_act"], "{name} vision_config.hidden_act");
}

fn check_text(name: &str, ours: &LlamaConfig, t: &Value) {
    let (theta, factor) = ours.rope().unwrap();
    let fields: [(&str, Value); 13] = [
        ("hidden_size", ours.hidden_size.into()),
        ("intermediate_size", ours.intermediate_size.into()),
        ("num_hidden_layers", ours.num_hidden_layers.into()),
        ("num_attention_heads", ours.num_attention_heads.into()),
        ("num_key_value_heads", ours.kv_heads().into()),
        ("head_dim", ours.head_dim().into()),
        ("rms_norm_eps", ours.rms_norm_eps.into()),
        ("vocab_size", ours.vocab_size.into()),
        ("tie_word_embeddings", ours.tie_word_embeddings.into()),
        ("max_position_embeddings", ours.max_position_embeddings.into()),
        ("hidden_act", ours.hidden_act.clone().into()),
        ("attention_bias", ours.attention_bias.into()),
        ("mlp_bias", ours.mlp_bias.into()),
    ];
    for (key, v) in fields {
        assert!(same(&v, &t[key]), "{name} text_config.{key}: ours {v}, transformers {}", t[key]);
    }
    let rope = &t["rope_parameters"];
    assert!(same(&theta.into(), &rope["rope_theta"]), "{name} rope_theta: ours {theta}, transformers {rope}");
    assert_eq!(rope["rope_type"], "default", "{name}");
    assert_eq!(factor, 1.0, "{name}");
}

#[test]
fn published_vlm_configs_resolve_as_transformers_resolves_them() {
    for name in ["SmolVLM-256M-Instruct", "llava-1.5-7b-hf"] {
        let file = read(&format!("published/{name}/config.json"));
        let t = read(&format!("published/resolved/{name}.json"));
        assert_eq!(dtype(&file), t["dtype"].as_str(), "{name} dtype");
        assert_eq!(dtype(&file["text_config"]), t["text_config"]["dtype"].as_str(), "{name} text dtype");
        match t["model_type"].as_str().unwrap() {
            "idefics3" => {
                let c = Idefics3Settings::from_hf(&file).unwrap();
                check_vision(name, &c.vision, &t["vision_config"]);
                check_text(name, &c.text, &t["text_config"]);
                assert_eq!(c.scale_factor as u64, t["scale_factor"].as_u64().unwrap());
                assert_eq!(u64::from(c.image_token), t["image_token_id"].as_u64().unwrap());
            }
            "llava" => {
                let c = LlavaSettings::from_hf(&file).unwrap();
                check_vision(name, &c.vision, &t["vision_config"]);
                check_text(name, &c.text, &t["text_config"]);
                assert_eq!(u64::from(c.image_token), t["image_token_index"].as_u64().unwrap());
                let layer = t["vision_feature_layer"].as_i64().unwrap();
                assert_eq!(c.feature_blocks as i64, c.vision.num_hidden_layers as i64 + 1 + layer);
                assert_eq!(c.keep_cls, t["vision_feature_select_strategy"] == "full");
                assert_eq!(t["projector_hidden_act"], "gelu");
            }
            other => panic!("{other}"),
        }
    }
}

#[test]
fn published_folders_with_tiny_weights_answer_as_transformers_does() {
    // `llava-variants` turns on attention and MLP biases, linear rope scaling (factor 4, v4
    // spelling) and the tanh GELU in the decoder: implemented, so checked here too.
    let variants = read("published/tiny/llava-variants/config.json");
    let text = LlamaConfig::from_hf(&variants["text_config"], "text_config").unwrap();
    assert!(text.attention_bias && text.mlp_bias && text.hidden_act == "gelu_pytorch_tanh");
    assert_eq!(text.rope().unwrap().1, 4.0);
    for (tiny, split) in [("SmolVLM-256M-Instruct", true), ("llava-1.5-7b-hf", false), ("llava-variants", false)] {
        let (dir, r) = common::assemble_tiny(tiny);
        let vlm = Vlm::load(dir.path()).unwrap_or_else(|e| panic!("{tiny}: {e}"));
        // SmolVLM's published processor splits images; the switch starts there.
        assert_eq!(vlm.split_image, split, "{tiny}: image splitting follows the folder");
        let image = vlm.open_image(&common::asset("chelsea.png")).unwrap();
        let question = r["meta"]["question"].as_str().unwrap();
        let spec = RunSpec { max_new_tokens: r["generated_ids"].as_array().unwrap().len(), ..Default::default() };
        let full = vlm.full(image, question, &spec, &mut |_| {}, &Cancel::default()).unwrap();
        assert_eq!(full.prompt.ids, common::json_ints(&r["input_ids"]), "{tiny}: prompt ids");
        assert_eq!(full.run.answer.ids, common::json_ints(&r["generated_ids"]), "{tiny}: greedy ids");
        for (i, (want, got)) in r["logprobs"].as_array().unwrap().iter().zip(&full.run.answer.logprobs).enumerate() {
            let want = want.as_f64().unwrap() as f32;
            assert!((want - got).abs() < 1e-4, "{tiny} token {i}: log p {got}, transformers {want}");
        }
    }
}

#[test]
fn published_encoder_configs_resolve_as_transformers_resolves_them() {
    use tokenlens::model::hf::vision_config;
    use tokenlens::model::hf_config::resolve_section;
    for (name, class) in [("clip-vit-base-patch16", Class::Clip), ("siglip-so400m-patch14-384", Class::Siglip)] {
        let file = read(&format!("published/{name}/config.json"));
        let t = read(&format!("published/resolved/{name}.json"));
        assert_eq!(dtype(&file), t["dtype"].as_str(), "{name} dtype");
        let vision = vision_config(class, &file).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_vision(name, &vision, &t["vision_config"]);
        // The text tower reads these fields of the resolved section (`zero_shot::TextConfig`).
        let (_, text) = resolve_section(class, &file, "text_config").unwrap();
        for key in [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "layer_norm_eps",
            "hidden_act",
            "eos_token_id",
            "pad_token_id",
        ] {
            let theirs = &t["text_config"][key];
            assert!(same(&text[key], theirs), "{name} text_config.{key}: ours {}, transformers {theirs}", text[key]);
        }
        assert!(same(&file["projection_dim"], &t["projection_dim"]), "{name} projection_dim");
    }
}

#[test]
fn published_zero_shot_folders_with_tiny_weights_score_as_transformers_does() {
    // CLIP's published preprocessor gives `size` and `crop_size` as numbers (the shortest edge,
    // and a square crop); SigLIP's pads prompts to full length and scores with a sigmoid.
    for name in ["clip-vit-base-patch16", "siglip-so400m-patch14-384"] {
        zero_shot_scores_as_transformers_does(name);
    }
}

fn zero_shot_scores_as_transformers_does(name: &str) {
    use tokenlens::model::{ModelSource, OutputHead};
    use tokenlens::session::Session;
    let (dir, r) = common::assemble_tiny(name);
    let mut session =
        Session::load(&ModelSource::File(dir.path().into()), &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
    let labels: Vec<&str> = r["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    let OutputHead::ZeroShot(zs) = &session.model().unwrap().head else { panic!("a CLIP folder scores labels") };
    for (label, want) in labels.iter().zip(r["input_ids"].as_array().unwrap()) {
        assert_eq!(zs.token_ids(label).unwrap(), common::json_ints(want), "{name} {label}: token ids");
    }
    session.set_prompt(&labels.join(", "));
    let input = session.open_image(&common::asset("chelsea.png")).unwrap();
    let pixels = input.prepared.pixels.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d = common::max_abs_diff(&pixels, &common::json_floats(&r["pixel_values"]));
    assert!(d < 1e-5, "{name}: pixel values differ from transformers' by {d}");
    let full = session.full_run(&input.prepared.pixels, &Cancel::default()).unwrap();
    assert_eq!(full.output.labels, labels);
    let d = common::max_abs_diff(&full.output.values, &common::json_floats(&r["probs"]));
    assert!(d < 1e-5, "{name}: zero-shot probabilities differ from transformers' by {d}");
}

#[test]
fn published_feature_encoder_config_resolves_as_transformers_resolves_it() {
    use tokenlens::model::hf_config::resolve;
    // facebook/dinov2-base's config.json (its published preprocessor was not found: README).
    let file = read("published/dinov2-base/config.json");
    let t = read("published/resolved/dinov2-base.json");
    assert_eq!(dtype(&file), t["dtype"].as_str());
    let ours = resolve(&file, Class::Dinov2);
    let mut checked = 0;
    for key in Class::Dinov2.defaults().as_object().unwrap().keys() {
        assert!(same(&ours[key], &t[key]), "dinov2-base {key}: ours {}, transformers {}", ours[key], t[key]);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} fields compared");
}

/// The published DINOv2 config with tiny weights, behind a preprocessor config that names only
/// the class and the sizes: every other processor field must take `BitImageProcessor`'s own
/// default (centre crop on, bicubic, CLIP's mean and std), as transformers fills it.
#[test]
fn published_feature_encoder_with_tiny_weights_matches_transformers() {
    use tokenlens::model::hf::HfVision;
    use tokenlens::model::hf_preprocess::HfPreprocessor;
    let (dir, r) = common::assemble_tiny("dinov2-base");
    let pre = HfPreprocessor::load(dir.path()).unwrap();
    let photo = tokenlens::model::preprocess::load_image(&common::asset("chelsea.png")).unwrap();
    let pixels = pre.pixels(&pre.resize_and_crop(&photo).unwrap(), &candle_core::Device::Cpu).unwrap();
    let d = common::max_diff(&pixels, &common::json_tensor(&r["pixel_values"]));
    assert!(d < 1e-5, "pixel values differ from transformers' by {d}");
    let model = HfVision::load(dir.path()).unwrap();
    let enc = &model.encoder;
    let state = enc.forward_to(&pixels, enc.num_layers(), &Cancel::default()).unwrap();
    let d = common::max_diff(&enc.final_norm(&state).unwrap(), &common::json_tensor(&r["last_hidden_state"]));
    assert!(d < 1e-4, "last_hidden_state differs from transformers' by {d}");
}

/// Our image processor default tables ([`image_processor_defaults`]) against transformers'
/// `Class().to_dict()` for every field we read; a class without a centre crop has it off.
#[test]
fn image_processor_defaults_are_transformers_class_defaults() {
    use tokenlens::model::hf_preprocess::image_processor_defaults;
    let want = read("published/image_processor_defaults.json");
    let mut checked = 0;
    for (class, theirs) in want.as_object().unwrap() {
        let ours = image_processor_defaults(Some(class));
        for (key, v) in ours.as_object().unwrap() {
            let t = &theirs[key.as_str()];
            match (key.as_str(), t) {
                ("do_center_crop", Value::Null) => assert_eq!(v, false, "{class}: no centre crop"),
                (_, Value::Null) => panic!("{class}.{key}: ours {v}, transformers has no such field"),
                _ => {
                    let equal = match (v.as_array(), t.as_array()) {
                        (Some(a), Some(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y)),
                        _ => same(v, t),
                    };
                    assert!(equal, "{class}.{key}: ours {v}, transformers {t}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} defaults compared");
}

/// Drops from `section` every field equal to transformers' default for `class` (what a writer
/// that saves only non-defaults leaves) and writes `null` for a few that remain unset, as
/// transformers 4 full dumps do.
fn as_published(section: &mut Value, class: &str, defaults: &Value) {
    let theirs = &defaults[class];
    let map = section.as_object_mut().unwrap();
    map.retain(|k, v| k == "model_type" || !same(v, &theirs[k.as_str()]));
    for k in ["architectures", "torch_dtype", "bad_words_ids"] {
        map.entry(k).or_insert(Value::Null);
    }
}

#[test]
fn encoder_folders_written_with_defaults_left_out_load_the_same_model() {
    let defaults = read("published/class_defaults.json");
    let classes = [("vit", "ViTConfig"), ("deit", "DeiTConfig"), ("dinov2", "Dinov2Config")];
    for name in ["vit", "vit_model", "deit", "deit_distilled", "dinov2", "clip", "siglip"] {
        let rel = format!("encoders/{name}");
        let dir = common::copy_fixture(&rel);
        let mut json = read(&format!("{rel}/config.json"));
        let before = json.to_string();
        match json["model_type"].as_str().unwrap() {
            "clip" | "siglip" => {
                let prefix = if json["model_type"] == "clip" { "CLIP" } else { "Siglip" };
                as_published(&mut json["vision_config"], &format!("{prefix}VisionConfig"), &defaults);
                as_published(&mut json["text_config"], &format!("{prefix}TextConfig"), &defaults);
            }
            t => {
                let class = classes.iter().find(|(m, _)| *m == t).unwrap().1;
                as_published(&mut json, class, &defaults);
            }
        }
        assert_ne!(json.to_string(), before, "{name}: nothing was left out");
        std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
        let full = tokenlens::model::hf::HfVision::load(&fixture(&rel)).unwrap();
        let sparse = tokenlens::model::hf::HfVision::load(dir.path()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(sparse.encoder.cfg, full.encoder.cfg, "{name}: vision config");
        assert_eq!(
            (sparse.architecture.as_str(), sparse.labels.len()),
            (full.architecture.as_str(), full.labels.len())
        );
        if let (Some(a), Some(b)) = (&full.zero_shot, &sparse.zero_shot) {
            let prompts = ["a cat", "a dog"];
            let d = common::max_diff(&a.text_embeddings(&prompts).unwrap(), &b.text_embeddings(&prompts).unwrap());
            assert_eq!(d, 0.0, "{name}: text tower");
        }
        assert_eq!(full.zero_shot.is_some(), sparse.zero_shot.is_some(), "{name}");
    }
}

/// Published SigLIP tokenizers name only `input_ids` as model inputs, so transformers' processor
/// passes no attention mask and the padding is attended (as in big_vision); the same folder with
/// the class default (`input_ids`, `attention_mask`) masks it. Both against transformers.
#[test]
fn siglip_pads_are_attended_when_the_tokenizer_gives_no_mask() {
    use tokenlens::model::hf::HfVision;
    let r = common::json_fixture("encoders/siglip/reference.json");
    let prompts: Vec<&str> = r["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    let masked = HfVision::load(&fixture("encoders/siglip")).unwrap();
    let d = common::max_diff(
        &masked.zero_shot.as_ref().unwrap().text_embeddings(&prompts).unwrap(),
        &common::json_tensor(&r["text_embeds"]),
    );
    assert!(d < 1e-4, "with the mask: text embeddings differ by {d}");
    let dir = common::copy_fixture("encoders/siglip");
    let path = dir.path().join("tokenizer_config.json");
    let mut config = read("encoders/siglip/tokenizer_config.json");
    config["model_input_names"] = serde_json::json!(["input_ids"]);
    std::fs::write(&path, config.to_string()).unwrap();
    let unmasked = HfVision::load(dir.path()).unwrap();
    let ours = unmasked.zero_shot.as_ref().unwrap().text_embeddings(&prompts).unwrap();
    let d = common::max_diff(&ours, &common::json_tensor(&r["without_attention_mask"]["text_embeds"]));
    assert!(d < 1e-4, "without the mask: text embeddings differ by {d}");
}
