//! What is not implemented is refused by name, and impossible sizes before anything is
//! allocated: one config per refused setting, each a published config (tests/fixtures/published)
//! with that one setting changed, or for the encoders a config written as transformers writes it
//! (only the fields that differ from the class defaults). Each error must name the field and its
//! value; none may panic. No weights are needed: every check runs before the weights are read.

use serde_json::{Value, json};
use tokenlens::model::hf::HfVision;
use tokenlens::session::vlm::Vlm;

fn published(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/published").join(name);
    serde_json::from_str(&std::fs::read_to_string(path.join("config.json")).unwrap()).unwrap()
}

/// `json` as a folder's `config.json` (with the published processor files, so that only the
/// config can be at fault), loaded as a VLM or an encoder; the error text.
fn refusal(json: &Value, vlm: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    if let Some(name) = vlm {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/published").join(name);
        for f in std::fs::read_dir(src).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
    let err = match vlm {
        Some(_) => Vlm::load(dir.path()).err().map(|e| e.to_string()),
        None => HfVision::load(dir.path()).err().map(|e| e.to_string()),
    };
    err.unwrap_or_else(|| panic!("loaded: {json}"))
}

/// Sets `path` (`a.b.c`) in a copy of `base` to `value`.
fn with(base: &Value, path: &str, value: Value) -> Value {
    let mut out = base.clone();
    let mut at = &mut out;
    let keys: Vec<&str> = path.split('.').collect();
    for k in &keys[..keys.len() - 1] {
        at = &mut at[*k];
    }
    at[keys[keys.len() - 1]] = value;
    out
}

fn expect<P: AsRef<str>>(cases: &[(P, Value, &str)], base: &Value, vlm: Option<&str>) {
    for (path, value, needle) in cases {
        let path = path.as_ref();
        let err = refusal(&with(base, path, value.clone()), vlm);
        assert!(err.contains(needle), "{path} = {value}: the error should name it ({needle:?}), got: {err}");
        assert!(err.contains("config.json"), "{path}: the error should name the file: {err}");
    }
}

#[test]
fn unimplemented_decoder_settings_are_refused_by_name() {
    let llava = published("llava-1.5-7b-hf");
    expect(
        &[
            ("text_config.rope_scaling", json!({"type": "dynamic", "factor": 2.0}), "rope_scaling.rope_type = dynamic"),
            (
                "text_config.rope_scaling",
                json!({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}),
                "rope_scaling.rope_type = llama3 is not supported (supported: default, linear)",
            ),
            (
                "text_config.rope_parameters",
                json!({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}),
                "rope_parameters.rope_type = yarn",
            ),
            (
                "text_config.rope_parameters",
                json!({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
                "rope_parameters.partial_rotary_factor = 0.5",
            ),
            ("text_config.rope_scaling", json!({"type": "linear", "factor": 0.0}), "rope_scaling.factor = 0.0"),
            ("text_config.hidden_act", json!("relu"), "text_config.hidden_act = relu"),
            ("text_config.sliding_window", json!(4096), "text_config.sliding_window = 4096"),
            ("text_config.use_sliding_window", json!(true), "text_config.use_sliding_window = true"),
            ("text_config.model_type", json!("mistral"), "text_config.model_type `mistral`"),
        ],
        &llava,
        Some("llava-1.5-7b-hf"),
    );
    let smol = published("SmolVLM-256M-Instruct");
    expect(
        &[
            ("text_config.qk_layer_norms", json!(true), "text_config.qk_layer_norms = true"),
            ("text_config.rope_interleaved", json!(true), "text_config.rope_interleaved = true"),
            ("text_config.use_resampler", json!(true), "text_config.use_resampler = true"),
        ],
        &smol,
        Some("SmolVLM-256M-Instruct"),
    );
}

#[test]
fn unimplemented_vlm_settings_are_refused_by_name() {
    let llava = published("llava-1.5-7b-hf");
    expect(
        &[
            ("vision_config.hidden_act", json!("relu"), "vision_config.hidden_act = relu"),
            ("vision_config.model_type", json!("dinov2"), "vision_config.model_type `dinov2`"),
            ("projector_hidden_act", json!("relu"), "projector_hidden_act = \"relu\""),
            ("multimodal_projector_bias", json!(false), "multimodal_projector_bias = false"),
            ("vision_feature_layer", json!([-2, -5]), "vision_feature_layer = [-2,-5]"),
            ("vision_feature_select_strategy", json!("cls"), "vision_feature_select_strategy = \"cls\""),
            ("tie_word_embeddings", json!(true), "tie_word_embeddings = true"),
            ("image_token_index", json!(99999), "image_token_index = 99999"),
        ],
        &llava,
        Some("llava-1.5-7b-hf"),
    );
    let smol = published("SmolVLM-256M-Instruct");
    expect(
        &[
            ("vision_config.num_channels", json!(1), "vision_config.num_channels = 1"),
            ("scale_factor", json!(3), "scale_factor = 3"),
        ],
        &smol,
        Some("SmolVLM-256M-Instruct"),
    );
}

#[test]
fn unimplemented_encoder_settings_are_refused_by_name() {
    let dinov2 = json!({"architectures": ["Dinov2Model"], "model_type": "dinov2", "hidden_size": 384,
                        "num_attention_heads": 6, "image_size": 518});
    expect(
        &[
            ("use_swiglu_ffn", json!(true), "use_swiglu_ffn = true"),
            ("hidden_act", json!("swiglu"), "hidden_act = swiglu"),
            ("model_type", json!("beit"), "model_type `beit`"),
        ],
        &dinov2,
        None,
    );
}

/// Issue 12: sizes that would divide by zero or size an absurd allocation, in every family.
#[test]
fn impossible_sizes_are_refused_before_anything_is_allocated() {
    let llava = published("llava-1.5-7b-hf");
    expect(
        &[
            ("text_config.num_attention_heads", json!(0), "text_config.num_attention_heads = 0"),
            ("text_config.num_key_value_heads", json!(0), "text_config.num_key_value_heads = 0"),
            (
                "text_config.num_key_value_heads",
                json!(3),
                "num_key_value_heads 3 does not divide num_attention_heads 32",
            ),
            ("text_config.num_attention_heads", json!(5), "num_attention_heads 5 does not divide hidden_size 4096"),
            ("text_config.hidden_size", json!(0), "text_config.hidden_size = 0"),
            ("text_config.head_dim", json!(3), "text_config.head_dim = 3"),
            ("text_config.vocab_size", json!(1_000_000_000_000u64), "text_config.vocab_size = 1000000000000"),
            ("text_config.num_hidden_layers", json!(1_000_000_000), "text_config.num_hidden_layers = 1000000000"),
            ("text_config.intermediate_size", json!(0), "text_config.intermediate_size = 0"),
            ("text_config.rms_norm_eps", json!(0.0), "text_config.rms_norm_eps = 0"),
            ("vision_config.num_attention_heads", json!(0), "vision_config.num_attention_heads = 0"),
            ("vision_config.num_attention_heads", json!(7), "num_attention_heads 7 does not divide hidden_size 1024"),
            ("vision_config.patch_size", json!(0), "vision_config.patch_size = 0"),
            ("vision_config.image_size", json!(1u64 << 40), "vision_config.image_size = 1099511627776"),
            ("vision_config.hidden_size", json!(1u64 << 40), "vision_config.hidden_size = 1099511627776"),
        ],
        &llava,
        Some("llava-1.5-7b-hf"),
    );
    let smol = published("SmolVLM-256M-Instruct");
    expect(
        &[
            ("text_config.num_attention_heads", json!(0), "text_config.num_attention_heads = 0"),
            ("vision_config.num_attention_heads", json!(0), "vision_config.num_attention_heads = 0"),
            ("vision_config.num_hidden_layers", json!(0), "vision_config.num_hidden_layers = 0"),
        ],
        &smol,
        Some("SmolVLM-256M-Instruct"),
    );
    // The encoders, each as transformers writes a config (non-default fields only).
    for base in [
        json!({"model_type": "vit", "architectures": ["ViTForImageClassification"]}),
        json!({"model_type": "deit", "architectures": ["DeiTForImageClassificationWithTeacher"]}),
        json!({"model_type": "dinov2", "hidden_size": 384, "num_attention_heads": 6}),
        json!({"model_type": "clip", "vision_config": {"patch_size": 16}, "text_config": {}}),
        json!({"model_type": "siglip", "vision_config": {}, "text_config": {}}),
        json!({"model_type": "clip_vision_model"}),
    ] {
        let section = if base.get("vision_config").is_some() { "vision_config." } else { "" };
        let cases = [
            ("num_attention_heads", json!(0), "num_attention_heads = 0"),
            ("hidden_size", json!(0), "hidden_size = 0"),
            ("patch_size", json!(0), "patch_size = 0"),
            // A patch that does not divide the image is fine (siglip-so400m-patch14-384); one
            // larger than the image leaves no patch grid.
            ("patch_size", json!(4096), "patch_size 4096 is larger than image_size"),
            ("num_hidden_layers", json!(100_000), "num_hidden_layers = 100000"),
            ("layer_norm_eps", json!(-1.0), "layer_norm_eps = -1"),
        ];
        for (field, value, needle) in cases {
            expect(&[(&format!("{section}{field}"), value, needle)], &base, None);
        }
    }
}
