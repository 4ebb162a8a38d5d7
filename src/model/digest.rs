//! A checkpoint folder's weights identified in kilobytes: the sampled sha256 a VLM sidecar
//! records (`WeightsDigest::SafetensorsSampledV1`) and the quantized cache's key builds on
//! ([`super::quant_cache`]).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Blocks of tensor data [`sampled_sha256`] reads per file, and their size.
pub const SAMPLE_BLOCKS: u64 = 64;
pub const SAMPLE_BYTES: u64 = 4096;
/// Largest safetensors header read (the format's own limit).
const MAX_HEADER: u64 = 100 << 20;

/// The folder's `.safetensors` files in name order; an error where there are none.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::weights(dir, format!("cannot list: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    match files.is_empty() {
        true => Err(Error::weights(dir, "no .safetensors weights")),
        false => Ok(files),
    }
}

/// The sha256 of `files` (in the order given), version 1: for each file its name, its byte
/// size, its JSON header (every tensor's name, dtype, shape and offsets, and the metadata) and
/// [`SAMPLE_BLOCKS`] blocks of [`SAMPLE_BYTES`] of its tensor data spaced evenly from the first
/// byte to the last (all of it when smaller). A fine-tune of the same architecture changes the
/// sampled blocks; a change confined to bytes between them is not seen.
pub fn sampled_sha256(files: &[PathBuf]) -> Result<String> {
    let mut hasher = Sha256::new();
    for f in files {
        sample_safetensors(f, &mut hasher)?;
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Feeds [`sampled_sha256`]'s bytes of one file to `hasher`, each part length-prefixed. The
/// header's length is checked against the file before it is read.
fn sample_safetensors(path: &Path, hasher: &mut Sha256) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |reason: String| Error::weights(path, reason);
    let cannot = |e: std::io::Error| bad(format!("cannot read: {e}"));
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    let size = file.metadata().map_err(cannot)?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| bad(format!("not a safetensors file (no header length: {e})")))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER || header_len > size.saturating_sub(8) {
        return Err(bad(format!("a safetensors header of {header_len} bytes in a file of {size}")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(cannot)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let part = |hasher: &mut Sha256, bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    part(hasher, name.as_bytes());
    part(hasher, &size.to_le_bytes());
    part(hasher, &header);
    let start = 8 + header_len;
    let data = size - start;
    let blocks: Vec<(u64, u64)> = match data <= SAMPLE_BLOCKS * SAMPLE_BYTES {
        true => vec![(start, data)],
        false => (0..SAMPLE_BLOCKS)
            .map(|i| (start + (data - SAMPLE_BYTES) * i / (SAMPLE_BLOCKS - 1), SAMPLE_BYTES))
            .collect(),
    };
    let mut buf = Vec::new();
    for (at, n) in blocks {
        buf.resize(n as usize, 0);
        file.seek(SeekFrom::Start(at)).map_err(cannot)?;
        file.read_exact(&mut buf).map_err(cannot)?;
        part(hasher, &buf);
    }
    Ok(())
}
