//! Prompts for vision-language models: the model folder's chat template (Jinja, rendered as
//! transformers renders it) and its tokenizer.
//!
//! transformers renders chat templates with Jinja2 (`trim_blocks`, `lstrip_blocks`, loop
//! controls, `raise_exception`, a `tojson` that does not escape HTML, Python string methods);
//! we render them with `minijinja` set up the same way. The template is looked for, in order,
//! in `chat_template.jinja`, `chat_template.json` (`{"chat_template": ...}`),
//! `tokenizer_config.json`'s `chat_template` (a string, or a list of `{name, template}` of which
//! `default` is taken) and `processor_config.json`'s `chat_template`. A folder without one gets
//! [`fallback_image_question`], the published prompt format of its model family.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, ErrorKind};

use crate::{Error, Result};

/// A chat template with the special tokens it may print (`bos_token`, `eos_token`, ...).
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    /// The file the template came from (for error messages).
    origin: PathBuf,
    /// `bos_token`, `eos_token`, `unk_token`, `pad_token` from `tokenizer_config.json`.
    special_tokens: Vec<(String, String)>,
}

impl ChatTemplate {
    /// The folder's chat template, or `None` when it has none. Special tokens are read from
    /// `tokenizer_config.json` when it exists.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let Some((origin, source)) = find_template(dir)? else { return Ok(None) };
        let tokenizer_config = dir.join("tokenizer_config.json");
        let special_tokens = match read_json(&tokenizer_config)? {
            Some(json) => ["bos_token", "eos_token", "unk_token", "pad_token"]
                .into_iter()
                .filter_map(|key| token_text(&json[key]).map(|t| (key.to_string(), t)))
                .collect(),
            None => Vec::new(),
        };
        Ok(Some(Self { source, origin, special_tokens }))
    }

    /// A template from its source, with no special tokens (see [`ChatTemplate::with_token`]).
    pub fn from_source(source: impl Into<String>) -> Self {
        Self { source: source.into(), origin: PathBuf::from("<chat template>"), special_tokens: Vec::new() }
    }

    /// Sets a special-token variable (`bos_token`, `eos_token`, ...) the template can print.
    pub fn with_token(mut self, name: &str, text: &str) -> Self {
        self.special_tokens.retain(|(k, _)| k != name);
        self.special_tokens.push((name.to_string(), text.to_string()));
        self
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The file the template was read from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Renders `messages` (transformers' chat format: a list of `{role, content}`, content a
    /// string or a list of `{type: "image"}` / `{type: "text", text}` items).
    pub fn render(&self, messages: &serde_json::Value, add_generation_prompt: bool) -> Result<String> {
        let bad = |e: minijinja::Error| {
            let mut reason = format!("cannot render the chat template: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(inner) = source {
                reason.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            Error::weights(&self.origin, reason)
        };
        let env = environment();
        let source = strip_generation_tags(&self.source);
        let template = env.template_from_str(&source).map_err(bad)?;
        let mut ctx: BTreeMap<String, Value> =
            self.special_tokens.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        ctx.insert("messages".into(), Value::from(Serde(messages)));
        ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        template.render(Value::from(ctx)).map_err(bad)
    }

    /// One user turn holding an image then `question`, with the generation prompt:
    /// `[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]`.
    pub fn render_image_question(&self, question: &str) -> Result<String> {
        self.render(&image_question_messages(question), true)
    }
}

/// The messages [`ChatTemplate::render_image_question`] renders.
pub fn image_question_messages(question: &str) -> serde_json::Value {
    serde_json::json!([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}])
}

/// The published single-image prompt of a model family, for folders without a chat template
/// (`model_type` from `config.json`): LLaVA-1.5 `USER: <image>\n{q} ASSISTANT:`, Idefics3 /
/// SmolVLM `User:<image>{q}<end_of_utterance>\nAssistant:`. `None` for other families.
pub fn fallback_image_question(model_type: &str, question: &str) -> Option<String> {
    match model_type {
        "llava" => Some(format!("USER: <image>\n{question} ASSISTANT:")),
        "idefics3" | "smolvlm" => Some(format!("User:<image>{question}<end_of_utterance>\nAssistant:")),
        _ => None,
    }
}

/// The prompt for one image and `question`: the folder's chat template, else the family's
/// [`fallback_image_question`] (`model_type` as in `config.json`).
pub fn image_question_prompt(dir: &Path, model_type: &str, question: &str) -> Result<String> {
    match ChatTemplate::load(dir)? {
        Some(template) => template.render_image_question(question),
        None => fallback_image_question(model_type, question).ok_or_else(|| {
            Error::weights(dir, format!("the folder has no chat template and `{model_type}` has no built-in prompt"))
        }),
    }
}

/// The folder's tokenizer (`tokenizer.json`, what the Rust `tokenizers` crate reads).
pub fn load_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        let slow = ["tokenizer.model", "vocab.json", "spiece.model"].into_iter().find(|f| dir.join(f).is_file());
        let hint = match slow {
            Some(f) => format!(
                " It has {f} (a slow tokenizer) only: save the fast tokenizer with transformers \
                 (AutoTokenizer.from_pretrained(folder).save_pretrained(folder)) to write tokenizer.json."
            ),
            None => String::new(),
        };
        return Err(Error::weights(
            dir,
            format!(
                "the model folder has no tokenizer.json; a Hugging Face model folder needs its tokenizer files \
                 (tokenizer.json, tokenizer_config.json) next to config.json: copy them from the model's \
                 repository.{hint}"
            ),
        ));
    }
    tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::weights(&path, format!("not a tokenizer.json: {e}")))
}

/// Token ids of a rendered (and image-expanded) prompt, as a processor called on the text
/// tokenizes it: special tokens on, so the tokenizer's post-processor adds BOS where it does.
pub fn encode_prompt(tokenizer: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
    let encoding = tokenizer
        .encode(text, true)
        .map_err(|e| Error::Config { field: "prompt", reason: format!("cannot tokenize the prompt: {e}") })?;
    Ok(encoding.get_ids().to_vec())
}

/// The template source and its file, in transformers' order of precedence.
fn find_template(dir: &Path) -> Result<Option<(PathBuf, String)>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let text = std::fs::read_to_string(&jinja).map_err(|e| Error::weights(&jinja, format!("cannot read: {e}")))?;
        // Python reads the file with universal newlines: a copy saved with CRLF line ends
        // (git on Windows) renders `\n`, not `\r\n`, in transformers.
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        return Ok(Some((jinja, text)));
    }
    for name in ["chat_template.json", "tokenizer_config.json", "processor_config.json"] {
        let path = dir.join(name);
        let Some(json) = read_json(&path)? else { continue };
        let template = match &json["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            // Several named templates: transformers uses `default` unless told otherwise.
            serde_json::Value::Array(named) => {
                named.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str()).map(str::to_string)
            }
            _ => None,
        };
        if let Some(t) = template {
            return Ok(Some((path, t)));
        }
    }
    Ok(None)
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::weights(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::weights(path, format!("not JSON: {e}")))
}

/// A special token in `tokenizer_config.json`: a string, or an added-token object `{content, ...}`.
fn token_text(v: &serde_json::Value) -> Option<String> {
    v.as_str().or_else(|| v["content"].as_str()).map(str::to_string)
}

/// transformers' `{% generation %}...{% endgeneration %}` (it marks assistant text for training
/// masks) is an extension tag: rendering keeps the body, so the tags are dropped.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else { break };
        let tag = &rest[start..start + len + 2];
        let inner = tag[2..tag.len() - 2].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        if inner != "generation" && inner != "endgeneration" {
            out.push_str(tag);
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Jinja set up as transformers sets up Jinja2 for chat templates.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> std::result::Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
    });
    env.add_filter("tojson", |value: &Value, indent: Option<usize>, kwargs: Kwargs| {
        // Python's other json.dumps options (ensure_ascii, separators, sort_keys) are accepted
        // and left at transformers' defaults.
        for unused in ["ensure_ascii", "separators", "sort_keys"] {
            let _: Option<Value> = kwargs.get(unused)?;
        }
        python_json(value, indent.or(kwargs.get::<Option<usize>>("indent")?))
    });
    env
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`: `", "` and `": "` between
/// items, or one item per line with `indent` spaces; no HTML escaping.
fn python_json(value: &Value, indent: Option<usize>) -> std::result::Result<String, minijinja::Error> {
    fn write(
        v: &Value,
        indent: Option<usize>,
        depth: usize,
        out: &mut String,
    ) -> std::result::Result<(), minijinja::Error> {
        let newline = |out: &mut String, depth: usize| {
            if let Some(n) = indent {
                out.push('\n');
                out.push_str(&" ".repeat(n * depth));
            }
        };
        let item_sep = if indent.is_some() { "," } else { ", " };
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                if v.is_integer() {
                    out.push_str(&v.to_string());
                } else {
                    let f = f64::try_from(v.clone())?;
                    out.push_str(&if f.fract() == 0.0 && f.abs() < 1e16 { format!("{f:.1}") } else { f.to_string() });
                }
            }
            ValueKind::String => {
                out.push_str(&serde_json::to_string(v.as_str().unwrap_or_default()).unwrap_or_default())
            }
            ValueKind::Map => {
                let keys: Vec<Value> = v.try_iter()?.collect();
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                out.push('{');
                for (i, key) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    newline(out, depth + 1);
                    let name = key.as_str().map(str::to_string).unwrap_or_else(|| key.to_string());
                    out.push_str(&serde_json::to_string(&name).unwrap_or_default());
                    out.push_str(": ");
                    write(&v.get_item(key)?, indent, depth + 1, out)?;
                }
                newline(out, depth);
                out.push('}');
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    newline(out, depth + 1);
                    write(item, indent, depth + 1, out)?;
                }
                newline(out, depth);
                out.push(']');
            }
            _ => out.push_str(&serde_json::to_string(&v.to_string()).unwrap_or_default()),
        }
        Ok(())
    }
    let mut out = String::new();
    write(value, indent, 0, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_are_dropped_and_their_body_kept() {
        let s = "{% for m in messages %}{%- generation -%}{{ m }}{% endgeneration %}{% endfor %}";
        assert_eq!(strip_generation_tags(s), "{% for m in messages %}{{ m }}{% endfor %}");
    }

    #[test]
    fn tojson_writes_python_json() {
        let t = ChatTemplate::from_source("{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}");
        let out = t.render(&serde_json::json!([{"n": [1, 2.5, true, null], "role": "user", "s": "<a>"}]), false);
        assert_eq!(
            out.unwrap(),
            "[{\"n\": [1, 2.5, true, null], \"role\": \"user\", \"s\": \"<a>\"}]|\
             {\n  \"n\": [\n    1,\n    2.5,\n    true,\n    null\n  ],\n  \"role\": \"user\",\n  \"s\": \"<a>\"\n}"
        );
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let t = ChatTemplate::from_source("{{ raise_exception('only user and assistant roles') }}");
        let err = t.render(&serde_json::json!([]), true).unwrap_err().to_string();
        assert!(err.contains("only user and assistant roles"), "{err}");
    }

    #[test]
    fn python_string_methods_and_whitespace_control_work_as_in_transformers() {
        let t = ChatTemplate::from_source(
            "{% for m in messages %}\n  {{ m['role'].upper() }}: {{ m['content'].strip() }}\n{% endfor %}",
        );
        let out = t.render(&serde_json::json!([{"role": "user", "content": "  hi  "}]), false).unwrap();
        assert_eq!(out, "  USER: hi\n");
    }
}
