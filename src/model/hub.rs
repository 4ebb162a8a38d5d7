//! Hub ids (`openai/clip-vit-base-patch16`): the model folder's files are downloaded with the
//! `hf-hub` crate into the standard Hugging Face cache (`HF_HOME`, default
//! `~/.cache/huggingface`), once; `HF_HUB_OFFLINE=1` reads the cache only; `HF_ENDPOINT` is
//! respected. Without network, the message says how to bring a folder instead.

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};

use crate::{Error, Result};

/// Files a model folder uses when present (vision processors, tokenizers, chat templates).
const OPTIONAL: [&str; 9] = [
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
];

/// Whether `text` looks like a hub id (`org/name`) rather than a path on this machine.
pub fn looks_like_hub_id(text: &str) -> bool {
    let parts: Vec<&str> = text.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'))
        && !text.contains('\\')
        && !std::path::Path::new(text).exists()
}

/// The shard files a `model.safetensors.index.json` lists.
fn shards(index: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::Fetch(format!("{}: {e}", index.display())))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Fetch(format!("{}: {e}", index.display())))?;
    let mut files: Vec<String> = json["weight_map"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    files.sort_unstable();
    files.dedup();
    Ok(files)
}

/// The local folder holding `id`'s files, downloading what the cache lacks. The weights are
/// `model.safetensors` or the shards of `model.safetensors.index.json` (big checkpoints).
pub fn fetch(id: &str, say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let hint = "download the model folder on a machine with network and pass --model DIR";
    if offline {
        let repo = Cache::from_env().repo(Repo::model(id.to_string()));
        let missing = |file: &str| {
            Error::Fetch(format!("{id}: {file} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; {hint}"))
        };
        let config = repo.get("config.json").ok_or_else(|| missing("config.json"))?;
        if repo.get("model.safetensors").is_none() {
            let index = repo.get("model.safetensors.index.json").ok_or_else(|| missing("model.safetensors"))?;
            for shard in shards(&index)? {
                repo.get(&shard).ok_or_else(|| missing(&shard))?;
            }
        }
        return config.parent().map(PathBuf::from).ok_or_else(|| Error::Fetch(format!("{id}: no files")));
    }
    let api = ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| Error::Fetch(format!("cannot use the Hugging Face cache: {e}")))?;
    let repo = api.model(id.to_string());
    let mut get = |file: &str| {
        say(&format!("Fetching {id}/{file} (cached after the first time)"));
        repo.get(file).map_err(|e| {
            Error::Fetch(format!("could not download {id}/{file} ({e}); is the network reachable? Or {hint}"))
        })
    };
    let config = get("config.json")?;
    if get("model.safetensors").is_err() {
        let index = get("model.safetensors.index.json")?;
        for shard in shards(&index)? {
            get(&shard)?;
        }
    }
    for file in OPTIONAL {
        let _ = repo.get(file); // absent files are fine: not every model has a tokenizer
    }
    config.parent().map(PathBuf::from).ok_or_else(|| Error::Fetch(format!("{id}: no files")))
}
