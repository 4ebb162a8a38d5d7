//! Hub ids (`openai/clip-vit-base-patch16`): the model folder's files are downloaded with the
//! `hf-hub` crate into the standard Hugging Face cache (`HF_HOME`, default
//! `~/.cache/huggingface`), once; `HF_HUB_OFFLINE=1` reads the cache only; `HF_ENDPOINT` is
//! respected. Without network, the message says how to bring a folder instead.

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};

use crate::{Error, Result};

/// Files a vision folder needs, and those it uses when present (the tokenizer's settings, the
/// processor and the generation settings are a vision-language model's).
const REQUIRED: [&str; 2] = ["config.json", "model.safetensors"];
const OPTIONAL: [&str; 6] = [
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
    "generation_config.json",
    "special_tokens_map.json",
];

/// Whether `text` looks like a hub id (`org/name`) rather than a path on this machine.
pub fn looks_like_hub_id(text: &str) -> bool {
    let parts: Vec<&str> = text.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'))
        && !text.contains('\\')
        && !std::path::Path::new(text).exists()
}

/// The local folder holding `id`'s files, downloading what the cache lacks.
pub fn fetch(id: &str, say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let hint = "download the model folder on a machine with network and pass --model DIR";
    let mut folder = None;
    if offline {
        let repo = Cache::from_env().repo(Repo::model(id.to_string()));
        for file in REQUIRED {
            let path = repo.get(file).ok_or_else(|| {
                Error::Fetch(format!("{id}: {file} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; {hint}"))
            })?;
            folder = path.parent().map(PathBuf::from);
        }
    } else {
        let api = ApiBuilder::from_env()
            .with_progress(false)
            .build()
            .map_err(|e| Error::Fetch(format!("cannot use the Hugging Face cache: {e}")))?;
        let repo = api.model(id.to_string());
        for file in REQUIRED {
            say(&format!("Fetching {id}/{file} (cached after the first time)"));
            let path = repo.get(file).map_err(|e| {
                Error::Fetch(format!("could not download {id}/{file} ({e}); is the network reachable? Or {hint}"))
            })?;
            folder = path.parent().map(PathBuf::from);
        }
        for file in OPTIONAL {
            let _ = repo.get(file); // absent files are fine: not every model has a tokenizer
        }
    }
    folder.ok_or_else(|| Error::Fetch(format!("{id}: no files")))
}
