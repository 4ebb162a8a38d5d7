//! Quantized weights cached on disk: a `--quantize` load writes the blocks it made to one file,
//! and the next load of the same checkpoint in the same format reads them instead of quantizing
//! (LLaVA-1.5-7B's shapes on two cores: 1,386 s of q4k quantizing, 110 s of q8_0).
//!
//! # Where
//! `quantized/` in the cache folder of the default model ([`super::fetch::cache_dir`]:
//! `$TOKENLENS_CACHE`, else `~/.cache/tokenlens`), one file per checkpoint and format:
//! `<folder>-<format>-<key>.safetensors`. `--no-quant-cache`, or [`ENV_OFF`] set to anything but
//! `0`, turns it off. A changed checkpoint leaves its old file behind (another key): delete the
//! folder to reclaim the space.
//!
//! # Format: a safetensors file of byte blobs
//! One `U8` tensor per quantized weight, named as the checkpoint names the weight (the tower's
//! fused attention input `<block>.qkv`, `<block>.out`, `<block>.fc1`, `<block>.fc2`), holding its
//! GGML blocks as candle lays them out; the metadata holds [`VERSION`], the key, the format and,
//! per weight, its format, shape and CRC-32. Not GGUF (candle's `quantized::gguf_file`, which
//! llama.cpp's tools read), for two reasons. Safety: candle's GGUF reader allocates the strings and
//! arrays a file's header announces at the length it announces, so a corrupt cache could ask for
//! any allocation before anything is checked; a safetensors header is bounded (here
//! [`MAX_HEADER`]) and its offsets are checked to tile the file exactly before any tensor is
//! touched, and the file is memory-mapped, each weight's pages handed back once copied, as the
//! checkpoint's are ([`super::weights`]). Use: these blocks are no llama.cpp model anyway (the
//! tower's Q, K and V are fused with Q pre-scaled; the names are the checkpoint's), so its tools
//! could not run the file.
//!
//! # Key and checks
//! The key is the sha256 of [`VERSION`], the format, the tower's format, and each `.safetensors`
//! file's name, size and modification time plus the sampled digest VLM sidecars record
//! ([`super::digest::sampled_sha256`]). Before any weight is read the file must be a whole
//! safetensors file whose version, key and format match and whose every blob has the byte size
//! its shape and format give; each weight's CRC-32 is checked as it is read. A file that fails is
//! reported, ignored (the weights are quantized as without a cache) and rewritten at the end of
//! the load; writes go to a temporary file renamed into place, and one that fails (a full disk,
//! an unwritable folder) is a warning: the load goes on uncached.
//!
//! A cached load reads from the checkpoint only what is not quantized: neither the decoder's
//! nor the tower's quantized weights (the tower's biases, fused and scaled as its QKV, still are).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::quant::{QuantStore, QuantWeight, Quantize, TOWER_FORMAT};
use super::weights::release_pages;
use crate::{Error, Result};

/// The cache's layout version: bumped whenever the blocks written for the same checkpoint and
/// format could differ (candle's block types, how the tower fuses and scales its QKV, the names,
/// this module's metadata). A file of another version is ignored and rewritten.
pub const VERSION: u32 = 1;

/// Set to anything but empty or `0`, the environment variable turns the cache off, as
/// `--no-quant-cache` does.
pub const ENV_OFF: &str = "TOKENLENS_NO_QUANT_CACHE";

const META_VERSION: &str = "tokenlens_quant_cache";
const META_KEY: &str = "key";
const META_FORMAT: &str = "format";
const META_LAYERS: &str = "layers";
/// Largest header read: ours take ~150 bytes a weight (LLaVA-1.5-7B: ~50 kB).
const MAX_HEADER: u64 = 16 << 20;

static OFF: AtomicBool = AtomicBool::new(false);

/// Turns the cache off (or on again) for this process's later loads (`--no-quant-cache`).
pub fn set_off(off: bool) {
    OFF.store(off, Ordering::Relaxed);
}

/// The folder this process's quantized loads are cached in; `None` when the cache is turned off
/// (`--no-quant-cache`, [`ENV_OFF`]) or there is no cache folder (no home and no
/// `$TOKENLENS_CACHE`).
pub fn process_dir() -> Option<PathBuf> {
    let env_off = std::env::var_os(ENV_OFF).is_some_and(|v| !v.is_empty() && v != "0");
    if OFF.load(Ordering::Relaxed) || env_off {
        return None;
    }
    super::fetch::cache_dir().ok().map(|d| d.join("quantized"))
}

/// A weight as the file's `layers` metadata lists it.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    format: String,
    shape: [usize; 2],
    crc32: u32,
}

/// One load's cache: reads the weights the file holds, records every quantized weight of the
/// load, and at its end ([`QuantStore::finish`]) writes the file unless every weight came from it.
pub struct QuantCache {
    path: PathBuf,
    key: String,
    format: Quantize,
    file: RefCell<Option<CacheFile>>,
    /// Why the file on disk was ignored, wholly or in part.
    rejected: RefCell<Option<String>>,
    /// The load's quantized weights by name (the blocks are shared, not copied).
    made: RefCell<BTreeMap<String, QuantWeight>>,
    /// Weights read from the file, and quantized because it lacked them.
    read: Cell<usize>,
    missed: Cell<usize>,
}

impl std::fmt::Debug for QuantCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantCache({:?})", self.path)
    }
}

impl QuantCache {
    /// The cache in `dir` of the checkpoint folder `checkpoint` quantized to `format`, its file
    /// checked (not yet read) when there is one. An error where the key cannot be computed (the
    /// checkpoint's files cannot be read: the load would fail too).
    pub fn open(dir: &Path, checkpoint: &Path, format: Quantize) -> Result<Self> {
        let key = key(checkpoint, format)?;
        let path = dir.join(file_name(checkpoint, format, &key));
        let (file, rejected) = match path.exists() {
            false => (None, None),
            true => match CacheFile::check(&path, &key, format) {
                Ok(file) => (Some(file), None),
                Err(reason) => (None, Some(reason)),
            },
        };
        Ok(Self {
            path,
            key,
            format,
            file: RefCell::new(file),
            rejected: RefCell::new(rejected),
            made: RefCell::default(),
            read: Cell::new(0),
            missed: Cell::new(0),
        })
    }

    /// The cache file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name`'s blocks from the file; `Ok(None)` without a file, `Err` with why the file's
    /// entry cannot serve.
    fn lookup(
        &self,
        name: &str,
        format: Quantize,
        dims: (usize, usize),
    ) -> std::result::Result<Option<QuantWeight>, String> {
        let file = self.file.borrow();
        let Some(file) = file.as_ref() else { return Ok(None) };
        let Some((entry, (start, end))) = file.entries.get(name) else {
            return Err(format!("it holds no `{name}`"));
        };
        if entry.format != format.name() || entry.shape != [dims.0, dims.1] {
            return Err(format!(
                "its `{name}` is {} {:?}, the model's is {format} {:?}",
                entry.format,
                entry.shape,
                [dims.0, dims.1]
            ));
        }
        let bytes = &file.map[file.data_start + start..file.data_start + end];
        let weight = match crc32fast::hash(bytes) == entry.crc32 {
            true => QuantWeight::from_blocks(format, dims, bytes).map(Some).map_err(|e| e.to_string()),
            false => Err(format!("`{name}`'s blocks fail their CRC-32 (the file is corrupt)")),
        };
        release_pages(bytes);
        weight
    }
}

impl QuantStore for QuantCache {
    fn get_or(
        &self,
        name: &str,
        format: Quantize,
        dims: (usize, usize),
        make: Box<dyn FnOnce() -> Result<QuantWeight> + '_>,
    ) -> Result<QuantWeight> {
        let weight = match self.lookup(name, format, dims) {
            Ok(Some(w)) => {
                self.read.set(self.read.get() + 1);
                w
            }
            fault => {
                if let Err(reason) = fault {
                    self.rejected.borrow_mut().get_or_insert(reason);
                }
                self.missed.set(self.missed.get() + 1);
                make()?
            }
        };
        self.made.borrow_mut().insert(name.to_string(), weight.clone());
        Ok(weight)
    }

    fn cached(&self, name: &str, format: Quantize, dims: (usize, usize)) -> Option<QuantWeight> {
        let weight = self.lookup(name, format, dims).ok()??;
        self.read.set(self.read.get() + 1);
        self.made.borrow_mut().insert(name.to_string(), weight.clone());
        Some(weight)
    }

    /// Writes the file unless every weight came from it; the line says where the weights were
    /// read from or written to, or why not.
    fn finish(&self) -> Option<String> {
        let made = self.made.take();
        let file = self.file.take();
        let path = self.path.display();
        if made.is_empty() {
            return None;
        }
        let whole = file.as_ref().is_some_and(|f| f.entries.len() == made.len());
        if whole && self.missed.get() == 0 && self.rejected.borrow().is_none() {
            return Some(format!("Quantized weights read from {path} ({} layers).", self.read.get()));
        }
        drop(file); // unmapped before it is replaced
        let ignored = match self.rejected.take() {
            Some(reason) => format!("The quantized cache {path} was ignored: {reason}. "),
            None => String::new(),
        };
        Some(match write(&self.path, &self.key, self.format, &made) {
            Ok(bytes) => format!(
                "{ignored}Quantized weights written to {path} ({} layers, {:.2} GB); later loads read them.",
                made.len(),
                bytes as f64 / 1e9
            ),
            Err(reason) => format!(
                "{ignored}Warning: the quantized weights could not be cached at {path} ({reason}); this run goes on \
                 uncached."
            ),
        })
    }
}

/// A cache file, memory-mapped and checked.
struct CacheFile {
    map: memmap2::Mmap,
    /// Where the tensor data starts (the offsets are from here).
    data_start: usize,
    entries: HashMap<String, (Entry, (usize, usize))>,
}

impl CacheFile {
    /// Maps `path` and checks, before anything else is read or allocated, its header's length,
    /// that the header tiles the file exactly, the version, key and format, and each blob's
    /// size against its listed shape and format.
    fn check(path: &Path, key: &str, format: Quantize) -> std::result::Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
        // SAFETY: a read-only mapping; caches are replaced by renaming a new file over them
        // (another inode), never written in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("cannot map it: {e}"))?;
        let header = map.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        match header {
            None => return Err(format!("{} bytes, too short for a header", map.len())),
            Some(n) if n > MAX_HEADER => {
                return Err(format!("a header of {n} bytes (a cache's is under {MAX_HEADER})"));
            }
            Some(_) => {}
        }
        let (n, meta) =
            SafeTensors::read_metadata(&map[..]).map_err(|e| format!("not a whole safetensors file ({e})"))?;
        let empty = HashMap::new();
        let info = meta.metadata().as_ref().unwrap_or(&empty);
        let get = |k: &str| info.get(k).map(String::as_str);
        if get(META_VERSION) != Some(&VERSION.to_string()) {
            return Err(format!(
                "not a tokenlens quantized cache of version {VERSION} ({META_VERSION}: {:?})",
                get(META_VERSION)
            ));
        }
        if get(META_FORMAT) != Some(format.name()) {
            return Err(format!("it holds {:?}, not {format}", get(META_FORMAT)));
        }
        if get(META_KEY) != Some(key) {
            return Err("it was made from another checkpoint (its key differs)".into());
        }
        let layers: HashMap<String, Entry> = serde_json::from_str(get(META_LAYERS).unwrap_or_default())
            .map_err(|e| format!("its list of layers does not parse: {e}"))?;
        if layers.len() != meta.tensors().len() {
            return Err(format!("it lists {} layers and holds {}", layers.len(), meta.tensors().len()));
        }
        let mut entries = HashMap::with_capacity(layers.len());
        for (name, entry) in layers {
            let tensor = meta.info(&name).ok_or_else(|| format!("`{name}` is listed but absent"))?;
            let q: Quantize = entry.format.parse()?;
            let [out, inp] = entry.shape;
            let (start, end) = tensor.data_offsets;
            let size = q.blocks_bytes(out, inp);
            if tensor.dtype != Dtype::U8 || tensor.shape != [end - start] || size != Some(end - start) {
                return Err(format!(
                    "`{name}` has {} bytes of {:?}; {q} blocks of {:?} take {size:?}",
                    end - start,
                    tensor.dtype,
                    entry.shape
                ));
            }
            entries.insert(name, (entry, (start, end)));
        }
        Ok(Self { map, data_start: 8 + n, entries })
    }
}

/// Writes `made` to `path`: into a synced temporary file beside it, renamed into place.
/// Returns the bytes written.
fn write(
    path: &Path,
    key: &str,
    format: Quantize,
    made: &BTreeMap<String, QuantWeight>,
) -> std::result::Result<u64, String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let layers: BTreeMap<&str, Entry> = made
        .iter()
        .map(|(name, w)| {
            let (out, inp) = w.dims();
            (
                name.as_str(),
                Entry { format: w.format().name().into(), shape: [out, inp], crc32: crc32fast::hash(w.bytes()) },
            )
        })
        .collect();
    let meta = HashMap::from([
        (META_VERSION.to_string(), VERSION.to_string()),
        (META_KEY.to_string(), key.to_string()),
        (META_FORMAT.to_string(), format.name().to_string()),
        (META_LAYERS.to_string(), serde_json::to_string(&layers).map_err(|e| e.to_string())?),
    ]);
    let views = made
        .iter()
        .map(|(name, w)| {
            safetensors::tensor::TensorView::new(Dtype::U8, vec![w.bytes().len()], w.bytes())
                .map(|v| (name.as_str(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let tmp = tempfile::Builder::new()
        .prefix(".quantized.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create a file in {}: {e}", dir.display()))?;
    // safetensors writes beside `tmp` and renames over it; `tmp` still deletes it on failure.
    safetensors::serialize_to_file(views, Some(meta), tmp.path()).map_err(|e| e.to_string())?;
    let written = std::fs::File::open(tmp.path()).and_then(|f| f.sync_all().and(f.metadata()));
    let bytes = written.map_err(|e| e.to_string())?.len();
    tmp.persist(path).map_err(|e| e.error.to_string())?;
    Ok(bytes)
}

/// The key of `checkpoint`'s weights quantized to `format` (see the module's doc).
fn key(checkpoint: &Path, format: Quantize) -> Result<String> {
    let files = super::digest::safetensors_files(checkpoint)?;
    let mut hasher = Sha256::new();
    hasher.update(format!("tokenlens quantized cache v{VERSION}: {format}, tower {TOWER_FORMAT}\n"));
    for f in &files {
        let meta = std::fs::metadata(f).map_err(|e| Error::weights(f, format!("cannot read: {e}")))?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        hasher.update(format!("{name} {} {}\n", meta.len(), mtime.map_or(0, |d| d.as_nanos())));
    }
    hasher.update(super::digest::sampled_sha256(&files)?);
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `<folder>-<format>-<key's first 16 hex digits>.safetensors`, the folder's name kept to
/// letters, digits, `-`, `_` and `.`.
fn file_name(checkpoint: &Path, format: Quantize, key: &str) -> String {
    let folder = checkpoint.canonicalize().unwrap_or_else(|_| checkpoint.to_path_buf());
    let folder: String = folder
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .take(48)
        .collect();
    format!("{folder}-{format}-{}.safetensors", &key[..16])
}
