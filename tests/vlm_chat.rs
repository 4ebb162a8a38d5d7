//! Chat templates and tokenizers of model folders: the rendered prompts must be what
//! transformers' `apply_chat_template` gives (`reference.json` `prompt`), whichever file holds
//! the template, and a folder without a tokenizer must say so.

mod common;

use std::path::Path;

use common::{copy_fixture, fixture};
use serde_json::{Value, json};
use tokenlens::model::chat::{ChatTemplate, fallback_image_question, image_question_prompt, load_tokenizer};

const QUESTION: &str = "what is in the image?";

fn reference_prompt(name: &str) -> String {
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(&format!("vlm/{name}/reference.json"))).unwrap())
            .unwrap();
    r["prompt"].as_str().unwrap().to_string()
}

fn render(dir: &Path) -> String {
    ChatTemplate::load(dir).unwrap().expect("a chat template").render_image_question(QUESTION).unwrap()
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut json);
    std::fs::write(path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
}

#[test]
fn the_fixtures_templates_render_the_reference_prompts() {
    for name in ["llava", "idefics3", "idefics3_split"] {
        let template = ChatTemplate::load(&fixture(&format!("vlm/{name}"))).unwrap().unwrap();
        assert!(template.origin().ends_with("chat_template.jinja"), "{name}: {:?}", template.origin());
        assert_eq!(template.render_image_question(QUESTION).unwrap(), reference_prompt(name), "{name}");
    }
}

#[test]
fn the_template_is_found_in_each_file_transformers_reads() {
    for name in ["llava", "idefics3"] {
        let want = reference_prompt(name);
        let source = std::fs::read_to_string(fixture(&format!("vlm/{name}/chat_template.jinja"))).unwrap();
        let dir = copy_fixture(&format!("vlm/{name}"));
        let d = dir.path();
        std::fs::remove_file(d.join("chat_template.jinja")).unwrap();
        assert!(ChatTemplate::load(d).unwrap().is_none(), "{name}: no template left");

        // processor_config.json
        edit_json(&d.join("processor_config.json"), |j| j["chat_template"] = source.clone().into());
        assert_eq!(render(d), want, "{name}: processor_config.json");
        // tokenizer_config.json, a list of named templates: `default` is taken
        edit_json(&d.join("tokenizer_config.json"), |j| {
            j["chat_template"] =
                json!([{"name": "tool_use", "template": "tools!"}, {"name": "default", "template": source.clone()}])
        });
        let t = ChatTemplate::load(d).unwrap().unwrap();
        assert!(t.origin().ends_with("tokenizer_config.json"));
        assert_eq!(t.render_image_question(QUESTION).unwrap(), want, "{name}: tokenizer_config.json list");
        // tokenizer_config.json, a string
        edit_json(&d.join("tokenizer_config.json"), |j| j["chat_template"] = source.clone().into());
        assert_eq!(render(d), want, "{name}: tokenizer_config.json");
        // chat_template.json comes first
        std::fs::write(d.join("chat_template.json"), json!({"chat_template": source.clone()}).to_string()).unwrap();
        edit_json(&d.join("tokenizer_config.json"), |j| j["chat_template"] = "wrong".into());
        let t = ChatTemplate::load(d).unwrap().unwrap();
        assert!(t.origin().ends_with("chat_template.json"));
        assert_eq!(t.render_image_question(QUESTION).unwrap(), want, "{name}: chat_template.json");
        // chat_template.jinja before everything
        std::fs::write(d.join("chat_template.jinja"), "{{ bos_token }}jinja").unwrap();
        assert_eq!(render(d), "<|begin_of_text|>jinja");
    }
}

#[test]
fn without_a_template_the_family_prompt_is_the_reference_prompt() {
    for (name, model_type) in [("llava", "llava"), ("idefics3", "idefics3")] {
        assert_eq!(fallback_image_question(model_type, QUESTION).unwrap(), reference_prompt(name));
        let dir = copy_fixture(&format!("vlm/{name}"));
        std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
        assert_eq!(image_question_prompt(dir.path(), model_type, QUESTION).unwrap(), reference_prompt(name));
    }
    assert!(fallback_image_question("qwen2_vl", QUESTION).is_none());
}

#[test]
fn special_tokens_may_be_strings_or_added_token_objects() {
    let dir = copy_fixture("vlm/llava");
    let d = dir.path();
    std::fs::write(d.join("chat_template.jinja"), "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}").unwrap();
    assert_eq!(render(d), "<|begin_of_text|>|<|end_of_text|>|<pad>");
    edit_json(&d.join("tokenizer_config.json"), |j| {
        j["bos_token"] = json!({"content": "<s>", "lstrip": false, "normalized": false, "__type": "AddedToken"});
        j["eos_token"] = json!({"content": "</s>"});
    });
    assert_eq!(render(d), "<s>|</s>|<pad>");
}

/// The LLaVA-1.5 conversions' template (with transformers' `{% generation %}` tag) and the one
/// SmolVLM's processor ships (`processing_smolvlm.DEFAULT_CHAT_TEMPLATE`); the expected strings
/// are what transformers 5.23 renders.
#[test]
fn published_llava_and_smolvlm_templates_render_as_in_transformers() {
    let llava15 = "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}\
{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}\
{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}{% for content in \
message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}{% for \
content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}\
{% endgeneration %}{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";
    let smolvlm = "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]\
['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == \
'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ \
'<video>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}\
{% endif %}";
    let t = ChatTemplate::from_source(llava15).with_token("bos_token", "<s>").with_token("eos_token", "</s>");
    assert_eq!(t.render_image_question(QUESTION).unwrap(), "USER: <image>\nwhat is in the image? ASSISTANT:");
    // A finished turn goes through the `generation` tag's body.
    let turns = json!([
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]}
    ]);
    assert_eq!(t.render(&turns, false).unwrap(), "USER: <image>\nhi ASSISTANT: a cat ");
    let t = ChatTemplate::from_source(smolvlm);
    assert_eq!(
        t.render_image_question(QUESTION).unwrap(),
        "<|im_start|>User:<image>what is in the image?<end_of_utterance>\nAssistant:"
    );
}

#[test]
fn a_folder_without_tokenizer_json_is_a_clear_error() {
    let tok = load_tokenizer(&fixture("vlm/llava")).unwrap();
    assert_eq!(tok.token_to_id("<image>"), Some(147));
    let dir = copy_fixture("vlm/llava");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = load_tokenizer(dir.path()).unwrap_err().to_string();
    assert!(err.contains("has no tokenizer.json") && err.contains("needs its tokenizer files"), "{err}");
    std::fs::write(dir.path().join("tokenizer.model"), b"sentencepiece").unwrap();
    let err = load_tokenizer(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tokenizer.model"), "{err}");
    std::fs::write(dir.path().join("tokenizer.json"), b"{ not json").unwrap();
    let err = load_tokenizer(dir.path()).unwrap_err().to_string();
    assert!(err.contains("not a tokenizer.json"), "{err}");
}
