//! A Hugging Face `config.json` read as transformers reads it.
//!
//! transformers saves only the fields that differ from its class defaults, transformers 4 full
//! dumps write `null` for unset fields, and composite models nest a `vision_config` and a
//! `text_config` whose class the parent picks. One mechanism covers all of it: every section is
//! [`resolve`]d by dropping its `null`s ([`strip_nulls`]: `null` means "absent", as transformers'
//! keyword defaults treat it) and laying what is left over the defaults of the transformers class
//! that section becomes ([`Class::defaults`], each table naming its class). Loaders then
//! deserialize the resolved section into strict structs, so a missing default is an error in the
//! tests, never a silent zero. `tests/published_configs.rs` checks the tables against
//! transformers' own `Class().to_dict()` and the resolved published configs against
//! `AutoConfig.from_pretrained(folder).to_dict()`.
//!
//! Both transformers 4 and 5 names are read: `rope_scaling` / `rope_parameters` (the Llama
//! module resolves them), `torch_dtype` / `dtype` ([`dtype`]).

use serde_json::{Map, Value, json};

/// The transformers configuration classes whose files we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Vit,
    Deit,
    Dinov2,
    ClipVision,
    SiglipVision,
    Idefics3Vision,
    ClipText,
    SiglipText,
    Llama,
    Clip,
    Siglip,
    Llava,
    Idefics3,
}

impl Class {
    pub const ALL: [Class; 13] = [
        Class::Vit,
        Class::Deit,
        Class::Dinov2,
        Class::ClipVision,
        Class::SiglipVision,
        Class::Idefics3Vision,
        Class::ClipText,
        Class::SiglipText,
        Class::Llama,
        Class::Clip,
        Class::Siglip,
        Class::Llava,
        Class::Idefics3,
    ];

    /// The transformers class this mirrors.
    pub fn name(self) -> &'static str {
        match self {
            Class::Vit => "ViTConfig",
            Class::Deit => "DeiTConfig",
            Class::Dinov2 => "Dinov2Config",
            Class::ClipVision => "CLIPVisionConfig",
            Class::SiglipVision => "SiglipVisionConfig",
            Class::Idefics3Vision => "Idefics3VisionConfig",
            Class::ClipText => "CLIPTextConfig",
            Class::SiglipText => "SiglipTextConfig",
            Class::Llama => "LlamaConfig",
            Class::Clip => "CLIPConfig",
            Class::Siglip => "SiglipConfig",
            Class::Llava => "LlavaConfig",
            Class::Idefics3 => "Idefics3Config",
        }
    }

    /// The `model_type` transformers writes for this class.
    pub fn model_type(self) -> &'static str {
        match self {
            Class::Vit => "vit",
            Class::Deit => "deit",
            Class::Dinov2 => "dinov2",
            Class::ClipVision => "clip_vision_model",
            Class::SiglipVision => "siglip_vision_model",
            Class::Idefics3Vision => "idefics3_vision",
            Class::ClipText => "clip_text_model",
            Class::SiglipText => "siglip_text_model",
            Class::Llama => "llama",
            Class::Clip => "clip",
            Class::Siglip => "siglip",
            Class::Llava => "llava",
            Class::Idefics3 => "idefics3",
        }
    }

    /// The class transformers' `CONFIG_MAPPING` gives a `model_type`.
    pub fn for_model_type(model_type: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.model_type() == model_type)
    }

    /// The class's defaults (transformers 5 `__init__` keywords), for the fields we read.
    /// Fields a class does not have but our structs read carry the value its model hard-codes
    /// (CLIP and SigLIP projections always have biases: `qkv_bias: true`).
    pub fn defaults(self) -> Value {
        let vision = |hidden: usize, inter: usize, heads: usize, image: usize, patch: usize, act: &str, eps: f64| {
            json!({
                "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": 12,
                "num_attention_heads": heads, "num_channels": 3, "image_size": image,
                "patch_size": patch, "hidden_act": act, "layer_norm_eps": eps, "qkv_bias": true,
            })
        };
        let mut d = match self {
            // ViTConfig and DeiTConfig share their defaults.
            Class::Vit | Class::Deit => vision(768, 3072, 12, 224, 16, "gelu", 1e-12),
            Class::Dinov2 => {
                let mut d = vision(768, 0, 12, 224, 14, "gelu", 1e-6);
                let m = d.as_object_mut().expect("object");
                m.remove("intermediate_size"); // Dinov2Config sizes its MLP by mlp_ratio
                m.insert("mlp_ratio".into(), json!(4));
                m.insert("use_swiglu_ffn".into(), json!(false));
                d
            }
            Class::ClipVision => {
                let mut d = vision(768, 3072, 12, 224, 32, "quick_gelu", 1e-5);
                d["projection_dim"] = json!(512);
                d
            }
            Class::SiglipVision => vision(768, 3072, 12, 224, 16, "gelu_pytorch_tanh", 1e-6),
            Class::Idefics3Vision => vision(1152, 3072, 16, 224, 32, "gelu_pytorch_tanh", 1e-6),
            Class::ClipText => json!({
                "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
                "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
                "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 512,
                "pad_token_id": 1, "bos_token_id": 49406, "eos_token_id": 49407,
            }),
            // No `projection_size`: transformers makes it the text `hidden_size` when unset
            // (google/siglip-so400m-patch14-384 leaves it out at width 1152), not the class's 768.
            Class::SiglipText => json!({
                "vocab_size": 32000, "hidden_size": 768, "intermediate_size": 3072,
                "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 64,
                "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
                "pad_token_id": 1, "bos_token_id": 49406, "eos_token_id": 49407,
            }),
            Class::Llama => json!({
                "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                "num_hidden_layers": 32, "num_attention_heads": 32, "hidden_act": "silu",
                "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": false,
                "rope_theta": 10000.0, "attention_bias": false, "mlp_bias": false,
                "bos_token_id": 1, "eos_token_id": 2,
            }),
            Class::Clip => json!({ "projection_dim": 512, "logit_scale_init_value": 2.6592 }),
            Class::Siglip => json!({}),
            Class::Llava => json!({
                "image_token_index": 32000, "projector_hidden_act": "gelu",
                "vision_feature_select_strategy": "default", "vision_feature_layer": -2,
                "image_seq_length": 576, "multimodal_projector_bias": true,
                "tie_word_embeddings": false,
            }),
            Class::Idefics3 => json!({ "image_token_id": 128257, "tie_word_embeddings": false, "scale_factor": 2 }),
        };
        d["model_type"] = json!(self.model_type());
        d
    }

    /// The class of a composite config's `key` section, and what the parent's `__init__` fills
    /// in when the section is absent, as transformers picks them: Idefics3 always builds
    /// `Idefics3VisionConfig` (SmolVLM's files say `"model_type": "idefics3"` there); LLaVA and
    /// Idefics3 build their text model from its `model_type` (default `llama`); LLaVA's vision
    /// tower from its `model_type` (default `clip_vision_model`).
    fn section(self, key: &str, section_type: Option<&str>) -> Result<(Class, Value), String> {
        let by_type = |default: Class, allowed: &[Class]| -> Result<Class, String> {
            let Some(t) = section_type else { return Ok(default) };
            match Class::for_model_type(t).filter(|c| allowed.contains(c)) {
                Some(c) => Ok(c),
                None => Err(format!(
                    "{key}.model_type `{t}` is not supported (supported: {})",
                    allowed.iter().map(|c| c.model_type()).collect::<Vec<_>>().join(", ")
                )),
            }
        };
        let none = json!({});
        Ok(match (self, key) {
            (Class::Idefics3, "vision_config") => (Class::Idefics3Vision, none),
            (Class::Idefics3, "text_config") => {
                (by_type(Class::Llama, &[Class::Llama])?, json!({ "rms_norm_eps": 1e-5, "pad_token_id": 128002 }))
            }
            (Class::Llava, "text_config") => (by_type(Class::Llama, &[Class::Llama])?, none),
            (Class::Llava, "vision_config") => (
                by_type(Class::ClipVision, &[Class::ClipVision, Class::SiglipVision])?,
                json!({
                    "intermediate_size": 4096, "hidden_size": 1024, "patch_size": 14, "image_size": 336,
                    "num_hidden_layers": 24, "num_attention_heads": 16, "projection_dim": 768,
                }),
            ),
            (Class::Clip, "vision_config") => (Class::ClipVision, none),
            (Class::Clip, "text_config") => (Class::ClipText, none),
            (Class::Siglip, "vision_config") => (Class::SiglipVision, none),
            (Class::Siglip, "text_config") => (Class::SiglipText, none),
            _ => return Err(format!("{} has no {key}", self.name())),
        })
    }
}

/// Drops every `null` object member, at any depth: transformers treats `null` as "not given".
pub fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// `section` (nulls dropped) laid over `base`, member by member (top level only: nested
/// values replace the base's, as keyword arguments do). `model_type` becomes `class`'s.
fn overlay(base: Value, section: &Value, class: Class) -> Value {
    let mut out: Map<String, Value> = match base {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let mut section = section.clone();
    strip_nulls(&mut section);
    if let Value::Object(m) = section {
        out.extend(m);
    }
    out.insert("model_type".into(), json!(class.model_type()));
    Value::Object(out)
}

/// A standalone config (the file's top level) resolved as `class`.
pub fn resolve(json: &Value, class: Class) -> Value {
    overlay(class.defaults(), json, class)
}

/// A composite config's `key` section (`vision_config`, `text_config`), resolved as the class
/// transformers builds for it. CLIP's old `text_config_dict` / `vision_config_dict` update the
/// section as `CLIPConfig` does: the dict is first completed with the class defaults, and that
/// whole result replaces the section's values (so a size given only in `vision_config` gives way
/// to the default when a `vision_config_dict` is present). Errors name the field.
pub fn resolve_section(parent: Class, json: &Value, key: &str) -> Result<(Class, Value), String> {
    let given = json.get(key).filter(|v| !v.is_null());
    let section_type = given.and_then(|s| s["model_type"].as_str());
    let (class, absent) = parent.section(key, section_type)?;
    let mut resolved = match given {
        Some(s) if s.is_object() => resolve(s, class),
        Some(other) => return Err(format!("{key} is {other}, not an object")),
        None => overlay(class.defaults(), &absent, class),
    };
    if let Some(Value::Object(update)) = json.get(format!("{key}_dict")) {
        resolved = overlay(resolved, &resolve(&Value::Object(update.clone()), class), class);
    }
    Ok((class, resolved))
}

/// The weights' stored dtype the folder states: transformers 5's `dtype`, else 4's
/// `torch_dtype`.
pub fn dtype(json: &Value) -> Option<&str> {
    json.get("dtype").and_then(Value::as_str).or_else(|| json.get("torch_dtype").and_then(Value::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_are_absent_and_defaults_fill_the_rest() {
        let file = json!({ "hidden_size": 64, "hidden_act": null, "architectures": null, "model_type": "idefics3" });
        let (class, v) = resolve_section(Class::Idefics3, &json!({ "vision_config": file }), "vision_config").unwrap();
        assert_eq!(class, Class::Idefics3Vision);
        assert_eq!(v["hidden_size"], 64);
        assert_eq!(v["hidden_act"], "gelu_pytorch_tanh");
        assert_eq!(v["model_type"], "idefics3_vision");
        assert!(v.get("architectures").is_none());
    }

    #[test]
    fn an_old_config_dict_replaces_the_section_with_its_completed_self() {
        // `CLIPConfig.__post_init__`: `vision_config.update(CLIPVisionConfig(**vision_config_dict).to_dict())`.
        let file = json!({
            "vision_config": { "hidden_size": 16, "patch_size": 32, "image_size": 64 },
            "vision_config_dict": { "patch_size": 16 },
        });
        let (_, v) = resolve_section(Class::Clip, &file, "vision_config").unwrap();
        assert_eq!(
            (v["patch_size"].clone(), v["hidden_size"].clone(), v["image_size"].clone()),
            (json!(16), json!(768), json!(224))
        );
        let (_, v) =
            resolve_section(Class::Clip, &json!({ "vision_config": { "hidden_size": 16 } }), "vision_config").unwrap();
        assert_eq!(v["hidden_size"], 16);
    }

    #[test]
    fn an_unknown_text_model_is_refused_by_name() {
        let e = resolve_section(Class::Llava, &json!({ "text_config": { "model_type": "mistral" } }), "text_config")
            .unwrap_err();
        assert!(e.contains("text_config.model_type `mistral`") && e.contains("llama"), "{e}");
    }

    #[test]
    fn both_dtype_names_are_read() {
        assert_eq!(dtype(&json!({ "torch_dtype": "float16" })), Some("float16"));
        assert_eq!(dtype(&json!({ "dtype": "bfloat16", "torch_dtype": "float16" })), Some("bfloat16"));
    }
}
