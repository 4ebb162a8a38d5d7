//! Safetensors checkpoints, memory-mapped (candle's [`MmapedSafetensors`], which routes names
//! across shards): only the headers are read up front; each tensor's bytes are read when the
//! model asks for it, converted to f32, and its pages handed back to the kernel (Linux), so the
//! load never holds a shard whole on top of its f32 copy. Before any tensor is read, every
//! header entry is checked: weights must be floating point.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::{Error, Result};

/// A checkpoint's tensors, mapped and checked, not yet read.
pub(crate) struct Weights {
    /// The file errors should name (the index of a sharded checkpoint).
    pub path: PathBuf,
    tensors: Released,
}

impl Weights {
    /// Maps `files` (one checkpoint, possibly in shards); `path` names it in errors. Corrupt or
    /// truncated files are refused here (the headers must cover the files exactly), as are
    /// integer tensors, by name.
    pub fn map(path: &Path, files: &[PathBuf], unreadable: impl Fn(&Path, String) -> Error) -> Result<Self> {
        let mut tensors = Vec::with_capacity(files.len());
        for file in files {
            // SAFETY: the mapping is read-only; a file changed under it while loading is the
            // caller's to avoid, as for any memory-mapped read (candle's contract).
            let one = unsafe { MmapedSafetensors::new(file) }.map_err(|e| unreadable(file, e.to_string()))?;
            check_float(file, &one)?;
            tensors.push(file);
        }
        // One mapping over all shards (names routed to their shard); each was checked above.
        // SAFETY: as above.
        let all = unsafe { MmapedSafetensors::multi(&tensors) }.map_err(|e| unreadable(path, e.to_string()))?;
        Ok(Self { path: path.to_path_buf(), tensors: Released(Arc::new(all)) })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.0.get(name).is_ok()
    }

    /// The mapped tensors' stored bytes, for readers that convert them themselves (the
    /// quantizer streams a weight's rows from here instead of building its f32 copy).
    pub fn raw(&self) -> Raw {
        Raw(Arc::clone(&self.tensors.0))
    }

    /// A var builder that reads each tensor on request, as f32 on `device` (unless asked
    /// for another dtype: [`super::quant::Linears`]).
    pub fn into_var_builder(self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.tensors), DType::F32, device.clone())
    }
}

/// Every weight must be floating point: the loader would otherwise cast an integer tensor to
/// f32 and run with it. Integer index buffers that older checkpoints save beside the weights
/// (`embeddings.position_ids`, which the model computes itself) are never read, so they are let
/// be. Judged from the header alone.
fn check_float(path: &Path, st: &MmapedSafetensors) -> Result<()> {
    let mut wrong: Vec<(String, String)> = st
        .tensors()
        .into_iter()
        .filter_map(|(name, view)| match DType::try_from(view.dtype()) {
            Ok(d) if d.is_float() => None,
            Ok(_) if name.ends_with("position_ids") => None,
            Ok(d) => Some((name, d.as_str().to_string())),
            Err(_) => Some((name, format!("{:?}", view.dtype()))),
        })
        .collect();
    wrong.sort_unstable();
    match wrong.first() {
        None => Ok(()),
        Some((name, dtype)) => Err(Error::weights(
            path,
            format!(
                "tensor `{name}` is stored as {dtype} ({} integer tensor(s) in all); weights must be floating point \
                 (F32, F16 or BF16): the file is not a model checkpoint or was converted wrongly",
                wrong.len()
            ),
        )),
    }
}

/// The mapped checkpoint as a var-builder backend that releases a tensor's pages once it is
/// converted (the mapped pages otherwise stay resident beside the f32 copies until the whole
/// load ends).
struct Released(Arc<MmapedSafetensors>);

impl Released {
    fn release(&self, name: &str) {
        if let Ok(view) = self.0.get(name) {
            release_pages(view.data());
        }
    }
}

impl SimpleBackend for Released {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = SimpleBackend::get(&*self.0, s, name, h, dtype, dev)?;
        self.release(name);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = SimpleBackend::get_unchecked(&*self.0, name, dtype, dev)?;
        self.release(name);
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.get(name).is_ok()
    }
}

/// A mapped checkpoint's tensors as stored ([`Weights::raw`]).
#[derive(Clone)]
pub struct Raw(Arc<MmapedSafetensors>);

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Raw({} tensors)", self.0.tensors().len())
    }
}

impl Raw {
    /// `f` of the tensor `name`'s stored dtype, shape and bytes, or `None` where there is no
    /// such tensor; its pages are released afterwards, as a var builder's read does.
    pub fn with<R>(&self, name: &str, f: impl FnOnce(DType, &[usize], &[u8]) -> R) -> Option<R> {
        let view = self.0.get(name).ok()?;
        let dtype = DType::try_from(view.dtype()).ok()?;
        let out = f(dtype, view.shape(), view.data());
        release_pages(view.data());
        Some(out)
    }
}

/// Drops the whole pages inside `bytes` (a slice of a read-only file mapping) from this
/// process's resident set; they are read from the file again if touched.
#[cfg(target_os = "linux")]
pub(crate) fn release_pages(bytes: &[u8]) {
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let (start, end) = (bytes.as_ptr() as usize, bytes.as_ptr() as usize + bytes.len());
    let (first, last) = (start.next_multiple_of(page), end / page * page);
    if last > first {
        // SAFETY: [first, last) lies inside a read-only shared file mapping that outlives this
        // call; MADV_DONTNEED on it only drops page-table entries (contents come back from the
        // file), so no reference into it is invalidated.
        unsafe { libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_DONTNEED) };
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn release_pages(_: &[u8]) {}
