//! How a model is loaded: `--quantize q8_0|q4k` (quantized linear layers, candle's GGML
//! blocks) and `--dtype auto|f32|f16|bf16` (what the weights are computed in).
//!
//! What is quantized: the decoder's linear layers (q, k, v, o, gate, up, down), `lm_head` when it
//! is its own matrix, and the projector's or connector's linear layers. Each weight is read from
//! the memory-mapped checkpoint, converted to f32 and quantized at once ([`Linears::linear`]), so
//! only one layer's f32 copy exists at a time. The vision tower's linear layers are quantized
//! to [`TOWER_FORMAT`] (q8_0) under either format, one block at a time as it is read. What stays f32: a
//! `lm_head` tied to the embeddings, RMSNorms and LayerNorms, rotary tables, attention scores,
//! softmax and probabilities (the maps the views draw are f32 products of quantized q/k
//! projections), biases, the tower's embeddings. The decoder's embedding table stays in the
//! checkpoint's f16/bf16 (rows converted on lookup), and its KV cache and cached layer inputs
//! are f16 under a quantization ([`super::llama::Llama::cache_dtype`]). How a product is
//! computed depends on its row count ([`QuantKernel::for_rows`]): few rows (decoding) with
//! candle's block kernel, whose activations are themselves quantized on the fly (q8_0 rows for
//! q8_0, q8_K for q4k: candle's `vec_dot` types); many rows (prefills, the tower) as the
//! dequantized weight's f32 product, activations unrounded (a DEVIATION from candle's kernels,
//! for speed: [`QuantKernel::Dequantized`]).
//!
//! Dimensions: a block spans the input dimension (q8_0: 32 weights, q4k: 256); a layer whose
//! input width is not a multiple stays f32, and [`QuantCount`] says how many were quantized
//! (the tiny test fixtures' widths are below 32, so nothing of theirs is). A real model's
//! widths (4096, 11008, 576, 1536, ...) are multiples of 32; of 256 most are, SmolVLM-256M's
//! 576 is not (its layers stay f32 under q4k).

use std::cell::{Cell, RefCell};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0, GgmlType};
use candle_core::quantized::{GgmlDType, QuantizedType};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Shape, Storage, Tensor};
use candle_nn::VarBuilder;
use half::{bf16, f16};
use rayon::prelude::*;
use serde::Serialize;

use super::kernels::{self, View, gemm};
use super::weights::Raw;
use crate::{Error, Result};

/// A quantized weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Quantize {
    /// 8-bit, one f16 scale per 32 weights: 34 bytes per 32 weights.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit k-quants: 144 bytes per 256 weights (scales and minima in 6 bits).
    #[serde(rename = "q4k")]
    Q4K,
}

impl Quantize {
    pub const ALL: [Quantize; 2] = [Quantize::Q8_0, Quantize::Q4K];

    pub fn name(self) -> &'static str {
        match self {
            Quantize::Q8_0 => "q8_0",
            Quantize::Q4K => "q4k",
        }
    }

    pub fn ggml(self) -> GgmlDType {
        match self {
            Quantize::Q8_0 => GgmlDType::Q8_0,
            Quantize::Q4K => GgmlDType::Q4K,
        }
    }

    /// Weights per block: a quantized layer's input width must be a multiple.
    pub fn block_size(self) -> usize {
        self.ggml().block_size()
    }

    /// Bytes per weight as stored (q8_0: 34/32, q4k: 144/256).
    pub fn bytes_per_weight(self) -> f64 {
        self.ggml().type_size() as f64 / self.block_size() as f64
    }

    /// Whether a linear layer of input width `in_dim` is quantized (else it stays f32).
    pub fn fits(self, in_dim: usize) -> bool {
        in_dim > 0 && in_dim.is_multiple_of(self.block_size())
    }

    /// Bytes of an `[out, in]` weight's blocks; `None` where `in` does not fit or the size
    /// overflows.
    pub fn blocks_bytes(self, out_dim: usize, in_dim: usize) -> Option<usize> {
        match self.fits(in_dim) {
            true => out_dim.checked_mul(in_dim / self.block_size())?.checked_mul(self.ggml().type_size()),
            false => None,
        }
    }
}

impl std::fmt::Display for Quantize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Quantize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" => Ok(Quantize::Q8_0),
            "q4k" | "q4_k" => Ok(Quantize::Q4K),
            _ => Err(format!("unknown quantization `{s}` (supported: q8_0, q4k)")),
        }
    }
}

/// `--dtype`: what the weights are computed in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DTypeChoice {
    /// The checkpoint's dtype where the device computes in it; f32 on the CPU.
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

impl DTypeChoice {
    /// The dtype the decoder's and projector's linear weights are kept and multiplied in on
    /// `device`; `None`: as the checkpoint stores each one (`auto` on a GPU). Everything else
    /// (the vision tower, norms, embeddings, attention probabilities, softmax) computes in f32.
    /// The CPU computes in f32 (candle's CPU matmul has no fast f16/bf16 path and tokenlens'
    /// CPU kernels are f32), so f16 and bf16 are refused there rather than silently run in f32.
    /// `auto` reads `TOKENLENS_DTYPE` first, when set.
    pub fn resolve(self, device: &Device) -> Result<Option<DType>> {
        let choice = match self {
            DTypeChoice::Auto => match std::env::var("TOKENLENS_DTYPE") {
                Ok(v) => v.parse().map_err(|reason| Error::Config { field: "TOKENLENS_DTYPE", reason })?,
                Err(_) => DTypeChoice::Auto,
            },
            other => other,
        };
        match (choice, device) {
            (DTypeChoice::Auto, Device::Cpu) | (DTypeChoice::F32, _) => Ok(Some(DType::F32)),
            (DTypeChoice::Auto, _) => Ok(None),
            (DTypeChoice::F16 | DTypeChoice::Bf16, Device::Cpu) => Err(Error::Config {
                field: "--dtype",
                reason: format!(
                    "{choice} is not computed on the CPU: tokenlens computes in f32 there (candle's CPU matmul has \
                     no fast half-precision path); use --dtype auto or f32, or --quantize q8_0|q4k to save memory"
                ),
            }),
            (DTypeChoice::F16, _) => Ok(Some(DType::F16)),
            (DTypeChoice::Bf16, _) => Ok(Some(DType::BF16)),
        }
    }
}

impl std::fmt::Display for DTypeChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DTypeChoice::Auto => "auto",
            DTypeChoice::F32 => "f32",
            DTypeChoice::F16 => "f16",
            DTypeChoice::Bf16 => "bf16",
        })
    }
}

impl FromStr for DTypeChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(DTypeChoice::Auto),
            "f32" | "float32" => Ok(DTypeChoice::F32),
            "f16" | "float16" => Ok(DTypeChoice::F16),
            "bf16" | "bfloat16" => Ok(DTypeChoice::Bf16),
            _ => Err(format!("unknown dtype `{s}` (supported: auto, f32, f16, bf16)")),
        }
    }
}

/// `--device`: where a model runs. The GPU backends are cargo features (`cuda`, `metal`: candle's);
/// a device whose feature this build lacks is refused by name. `auto` is `TOKENLENS_DEVICE` when
/// set, else the first CUDA GPU when the build has one and it answers, else the CPU. On the CPU
/// the models run tokenlens' fused kernels; elsewhere candle's tensor ops
/// ([`super::kernels::fused`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    /// A CUDA GPU by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
    Metal,
}

impl DeviceChoice {
    /// The cargo feature a device needs, if any.
    pub fn feature(self) -> Option<&'static str> {
        match self {
            DeviceChoice::Auto | DeviceChoice::Cpu => None,
            DeviceChoice::Cuda(_) => Some("cuda"),
            DeviceChoice::Metal => Some("metal"),
        }
    }

    /// Whether this build has the device's backend.
    pub fn compiled(self) -> bool {
        match self {
            DeviceChoice::Auto | DeviceChoice::Cpu => true,
            DeviceChoice::Cuda(_) => cfg!(feature = "cuda"),
            DeviceChoice::Metal => cfg!(feature = "metal"),
        }
    }

    /// The device models are loaded on, or an error naming what is missing (the cargo feature,
    /// or the device).
    pub fn resolve(self) -> Result<Device> {
        let refuse = |reason: String| Err(Error::Config { field: "--device", reason });
        let choice = match self {
            DeviceChoice::Auto => match std::env::var("TOKENLENS_DEVICE") {
                Ok(v) => v.parse().map_err(|reason| Error::Config { field: "TOKENLENS_DEVICE", reason })?,
                Err(_) if cfg!(feature = "cuda") => return Ok(gpu(DeviceChoice::Cuda(0)).unwrap_or(Device::Cpu)),
                Err(_) => DeviceChoice::Cpu,
            },
            other => other,
        };
        match (choice, choice.feature()) {
            (DeviceChoice::Auto | DeviceChoice::Cpu, _) => Ok(Device::Cpu),
            (_, Some(feature)) if !choice.compiled() => refuse(format!(
                "{choice} needs a build with the `{feature}` feature (cargo build --release --features {feature}); \
                 this build runs on the CPU only: use --device cpu"
            )),
            (_, _) => gpu(choice).or_else(|e| refuse(format!("{choice} is not available: {e}"))),
        }
    }
}

/// One [`Device`] per GPU for the process: candle gives each `Device::new_cuda` its own id, and
/// tensors of two ids do not mix, so every load and input of a run must share one.
fn gpu(choice: DeviceChoice) -> candle_core::Result<Device> {
    static GPUS: Mutex<Vec<(DeviceChoice, Device)>> = Mutex::new(Vec::new());
    let mut gpus = GPUS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, d)) = gpus.iter().find(|(c, _)| *c == choice) {
        return Ok(d.clone());
    }
    let device = match choice {
        DeviceChoice::Cuda(n) => Device::new_cuda(n)?,
        _ => Device::new_metal(0)?,
    };
    gpus.push((choice, device.clone()));
    Ok(device)
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceChoice::Metal => f.write_str("metal"),
        }
    }
}

impl Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        match lower.split_once(':') {
            None if lower == "auto" => Ok(DeviceChoice::Auto),
            None if lower == "cpu" => Ok(DeviceChoice::Cpu),
            None if lower == "cuda" => Ok(DeviceChoice::Cuda(0)),
            None if lower == "metal" => Ok(DeviceChoice::Metal),
            Some(("cuda", n)) => n
                .parse()
                .map(DeviceChoice::Cuda)
                .map_err(|_| format!("`{s}`: the CUDA device is cuda:N, N a GPU ordinal (0, 1, ...)")),
            _ => Err(format!("unknown device `{s}` (supported: auto, cpu, cuda, cuda:N, metal)")),
        }
    }
}

/// "cpu", "cuda:0", "metal:0": a device as the flags name it.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// How a model is loaded ([`crate::session::Session::load_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct LoadOptions {
    /// Quantize the decoder's and projector's linear layers (vision-language models only).
    pub quantize: Option<Quantize>,
    pub dtype: DTypeChoice,
    pub device: DeviceChoice,
}

/// The options [`crate::session::Session::load`] uses: the CLI's `--quantize`, `--dtype` and
/// `--device` for this process (the app's loads included).
static PROCESS: Mutex<LoadOptions> =
    Mutex::new(LoadOptions { quantize: None, dtype: DTypeChoice::Auto, device: DeviceChoice::Auto });

impl LoadOptions {
    /// Sets the options of every later [`crate::session::Session::load`] in this process.
    pub fn set_process(self) {
        *PROCESS.lock().unwrap_or_else(|e| e.into_inner()) = self;
    }

    pub fn process() -> Self {
        *PROCESS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device and the dtype of the linear weights (`None`: as stored), or why not (see
    /// [`DeviceChoice::resolve`], [`DTypeChoice::resolve`]). Quantized layers are CPU code: on
    /// another device they are refused, pointing at half precision.
    pub fn resolve(&self) -> Result<(Device, Option<DType>)> {
        let device = self.device.resolve()?;
        let dtype = self.dtype.resolve(&device)?;
        if let Some(q) = self.quantize.filter(|_| !device.is_cpu()) {
            return Err(Error::Config {
                field: "--quantize",
                reason: format!(
                    "{q} layers run on the CPU only (candle's block kernels); on {} use --dtype f16 or bf16 \
                     to halve the weights, or --device cpu",
                    device_name(&device)
                ),
            });
        }
        Ok((device, dtype))
    }

    /// "f32", "q8_0 linear layers, f32 elsewhere", "bf16 linear layers on cuda:0, f32
    /// elsewhere": for the cost panel and messages (as asked; `auto` as such).
    pub fn describe(&self) -> String {
        let on = match self.device {
            DeviceChoice::Auto | DeviceChoice::Cpu => String::new(),
            d => format!(" on {d}"),
        };
        match (self.quantize, self.dtype) {
            (Some(q), _) => format!("{q} linear layers, f32 elsewhere{on}"),
            (None, DTypeChoice::Auto | DTypeChoice::F32) => format!("f32{on}"),
            (None, d) => format!("{d} linear layers, f32 elsewhere{on}"),
        }
    }
}

/// What a VLM's vision tower's linear layers are quantized to under any `--quantize`: 8 bits
/// keep the tower's attention maps (what the vision-side views draw) close to f32, and take its
/// weights from 4 to 34/32 bytes (LLaVA-1.5-7B's CLIP-L: 1.21 GB to 0.32 GB).
pub const TOWER_FORMAT: Quantize = Quantize::Q8_0;

/// Linear layers quantized and kept f32 at load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QuantCount {
    /// The decoder's and projector's layers quantized.
    pub quantized: usize,
    /// Layers kept f32 because their input width is not a multiple of the block size.
    pub kept_f32: usize,
    /// The vision tower's layers quantized to [`TOWER_FORMAT`].
    pub tower: usize,
    /// Bytes the linear weights take as loaded.
    pub bytes: u64,
}

impl QuantCount {
    pub fn add(&mut self, other: QuantCount) {
        self.quantized += other.quantized;
        self.kept_f32 += other.kept_f32;
        self.tower += other.tower;
        self.bytes += other.bytes;
    }
}

/// A linear layer `y = x Wᵀ + b`, its weight in f32 or quantized (the bias stays f32).
#[derive(Debug, Clone)]
pub enum Proj {
    F32(candle_nn::Linear),
    /// Weight and bias in f16 or bf16 (on a GPU): the input is cast to their dtype for the
    /// product and the output back to f32.
    Half(candle_nn::Linear),
    Quantized {
        weight: QuantWeight,
        bias: Option<Tensor>,
    },
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Proj::F32(l) => l.forward(x),
            Proj::Half(l) => l.forward(&x.to_dtype(l.weight().dtype())?)?.to_dtype(x.dtype()),
            Proj::Quantized { weight, bias } => {
                let y = weight.forward(x)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }
}

/// A quantized `[out, in]` weight on the CPU: candle's GGML blocks, and nothing else kept.
/// Multiplied by candle's block kernel (`QuantizedType::matmul_t`: the activations rounded to
/// the format's `vec_dot` type, rows in parallel) for few rows, by transient f32 tiles of the
/// weight and gemm for many ([`QuantKernel`]).
///
/// Why not candle's `QMatMul`: from candle 0.11 its x86 path repacks a q4k weight (and, on
/// AVX512-VNNI, a q8_0 one) into wider tiles at its first product and keeps them beside the
/// blocks for the process's life: q4k's 0.5625 bytes per weight become 1.3125, which took
/// LLaVA-1.5-7B's q4k run to 12.5 GB, more than q8_0's. The tiled kernel is faster for long
/// prefills; the memory target comes first (see the README's Speed section).
#[derive(Clone)]
pub struct QuantWeight {
    blocks: Arc<dyn QuantizedType>,
    format: Quantize,
    out_dim: usize,
    in_dim: usize,
}

impl std::fmt::Debug for QuantWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantWeight({} [{}, {}])", self.format, self.out_dim, self.in_dim)
    }
}

impl QuantWeight {
    /// Quantizes the contiguous f32 `[out, in]` weight `w`, groups of rows in parallel (candle's
    /// `QTensor::quantize` runs on one thread: 20 minutes of k-quants for a 7B decoder). Each
    /// block depends on its 32 or 256 weights alone, so the blocks are byte for byte candle's.
    pub fn quantize(w: &Tensor, format: Quantize) -> Result<Self> {
        let (out_dim, in_dim) = w.dims2()?;
        if !format.fits(in_dim) || w.dtype() != DType::F32 || !w.device().is_cpu() {
            return Err(Error::Config {
                field: "--quantize",
                reason: format!(
                    "cannot quantize a {:?} {:?} weight of input width {in_dim} to {format} on {:?}",
                    w.dtype(),
                    w.dims(),
                    w.device()
                ),
            });
        }
        let w = w.contiguous()?;
        let (storage, layout) = w.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else { unreachable!("checked to be on the CPU") };
        let (start, end) = layout.contiguous_offsets().expect("made contiguous above");
        let values = &cpu.as_slice::<f32>()?[start..end];
        Ok(Self::from_rows(format, out_dim, in_dim, |at, row| row.copy_from_slice(&values[at..at + row.len()])))
    }

    /// Quantizes a `[out, in]` weight from its stored little-endian bytes (f32, f16 or bf16, as
    /// safetensors keep them), converting 16 rows at a time: the whole f32 copy is never made
    /// (for LLaVA-1.5-7B's `lm_head` that copy and its bf16 read were 0.8 GB at the load's peak).
    /// The values are the f32 ones a var builder would give, so the blocks are the same.
    pub fn from_stored(dtype: DType, dims: &[usize], bytes: &[u8], format: Quantize) -> Result<Self> {
        let &[out_dim, in_dim] = dims else {
            return Err(Error::Config { field: "--quantize", reason: format!("a linear weight of shape {dims:?}") });
        };
        let size = match dtype {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            _ => return Err(Error::Config { field: "--quantize", reason: format!("a {dtype:?} weight") }),
        };
        if bytes.len() != out_dim * in_dim * size || !format.fits(in_dim) {
            return Err(Error::Config {
                field: "--quantize",
                reason: format!("{} bytes for a {dtype:?} weight of shape {dims:?} in {format}", bytes.len()),
            });
        }
        let fill = |at: usize, row: &mut [f32]| {
            let bytes = &bytes[at * size..(at + row.len()) * size];
            match dtype {
                DType::F32 => row
                    .iter_mut()
                    .zip(bytes.chunks_exact(4))
                    .for_each(|(x, b)| *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                DType::F16 => row
                    .iter_mut()
                    .zip(bytes.chunks_exact(2))
                    .for_each(|(x, b)| *x = f16::from_le_bytes([b[0], b[1]]).to_f32()),
                _ => row
                    .iter_mut()
                    .zip(bytes.chunks_exact(2))
                    .for_each(|(x, b)| *x = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            }
        };
        Ok(Self::from_rows(format, out_dim, in_dim, fill))
    }

    /// The weight whose values `fill(offset, out)` writes (`out.len()` values from row-major
    /// element `offset`), quantized.
    fn from_rows(format: Quantize, out_dim: usize, in_dim: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Self {
        let blocks: Arc<dyn QuantizedType> = match format {
            Quantize::Q8_0 => Arc::new(quantize_rows::<BlockQ8_0>(out_dim, in_dim, fill)),
            Quantize::Q4K => Arc::new(quantize_rows::<BlockQ4K>(out_dim, in_dim, fill)),
        };
        Self { blocks, format, out_dim, in_dim }
    }

    /// A weight from its blocks as [`QuantWeight::bytes`] gives them (the quantized cache,
    /// [`super::quant_cache`]): checked to be `format`'s size for `[out, in]`, then copied.
    pub fn from_blocks(format: Quantize, (out_dim, in_dim): (usize, usize), bytes: &[u8]) -> Result<Self> {
        if format.blocks_bytes(out_dim, in_dim) != Some(bytes.len()) {
            return Err(Error::Config {
                field: "--quantize",
                reason: format!("{} bytes are not the {format} blocks of a [{out_dim}, {in_dim}] weight", bytes.len()),
            });
        }
        let blocks: Arc<dyn QuantizedType> = match format {
            Quantize::Q8_0 => Arc::new(blocks_from_bytes::<BlockQ8_0>(bytes)),
            Quantize::Q4K => Arc::new(blocks_from_bytes::<BlockQ4K>(bytes)),
        };
        Ok(Self { blocks, format, out_dim, in_dim })
    }

    /// `[out, in]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.out_dim, self.in_dim)
    }

    /// Bytes the blocks take.
    pub fn size_in_bytes(&self) -> usize {
        self.blocks.storage_size_in_bytes()
    }

    pub fn format(&self) -> Quantize {
        self.format
    }

    /// The blocks as GGML lays them out (what candle's `QTensor::data` gives).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `as_ptr` points at the blocks `Vec`'s buffer of `storage_size_in_bytes` bytes,
        // which lives as long as `self.blocks`, borrowed here; GGML blocks are plain old data.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr(), self.blocks.storage_size_in_bytes()) }
    }

    /// The weight back in f32 `[out, in]` (tests, comparisons).
    pub fn dequantize(&self) -> Result<Tensor> {
        let CpuStorage::F32(values) = self.blocks.dequantize(self.out_dim * self.in_dim)? else {
            unreachable!("GGML blocks dequantize to f32")
        };
        Ok(Tensor::from_vec(values, (self.out_dim, self.in_dim), &Device::Cpu)?)
    }

    /// `x Wᵀ` for `x` of shape `[..., in]`, f32 on the CPU.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }

    /// `x Wᵀ` for `rows` rows of `x` (`[rows, in]`, row-major) into `y` (`[rows, out]`): the
    /// product on slices, for the vision tower's fused kernels. The kernel is
    /// [`QuantKernel::for_rows`]'s.
    pub fn matmul_into(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        self.matmul_with(QuantKernel::for_rows(self.format, rows), x, rows, y)
    }

    /// [`QuantWeight::matmul_into`] with a chosen kernel (tests and the micro-benchmark compare
    /// them).
    pub fn matmul_with(&self, kernel: QuantKernel, x: &[f32], rows: usize, y: &mut [f32]) {
        assert!(x.len() == rows * self.in_dim && y.len() == rows * self.out_dim, "quantized matmul: shapes");
        match (kernel, self.format) {
            (QuantKernel::Blocks, _) => {
                self.blocks.matmul_t((rows, self.in_dim, self.out_dim), x, y).expect("CPU blocks multiply f32 rows")
            }
            (QuantKernel::Dequantized, _) => self.matmul_tiled(x, rows, y, TILE),
        }
    }

    /// [`QuantWeight::matmul_dequantized`] for this weight's format.
    fn matmul_tiled(&self, x: &[f32], rows: usize, y: &mut [f32], tile: (usize, usize)) {
        match self.format {
            Quantize::Q8_0 => self.matmul_dequantized::<BlockQ8_0>(x, rows, y, tile),
            Quantize::Q4K => self.matmul_dequantized::<BlockQ4K>(x, rows, y, tile),
        }
    }

    /// The blocks as the `T`s they are.
    fn blocks_as<T: GgmlType>(&self) -> &[T] {
        assert_eq!(self.blocks.dtype(), T::DTYPE, "quantized blocks read as another type");
        let ptr = self.blocks.as_ptr().cast::<T>();
        assert!(ptr.is_aligned(), "quantized blocks misaligned");
        // SAFETY: the storage is a `Vec<T>` of `storage_size_in_bytes` bytes (its dtype checked
        // above; aligned as `T`), borrowed with `self`; GGML blocks are plain old data.
        unsafe { std::slice::from_raw_parts(ptr, self.blocks.storage_size_in_bytes() / std::mem::size_of::<T>()) }
    }

    /// `x Wᵀ` with `W` dequantized one tile at a time into f32 and multiplied by gemm, the f32
    /// kernel of the unquantized layers. Tiles span `tile.0` weight rows (outputs) by `tile.1`
    /// input values (rounded down to whole blocks, at least one); each output tile accumulates
    /// over its input tiles. Only one tile's f32 values exist at a time (8 MiB at [`TILE`]).
    fn matmul_dequantized<T: GgmlType>(&self, x: &[f32], rows: usize, y: &mut [f32], tile: (usize, usize)) {
        let blocks = self.blocks_as::<T>();
        let (out_dim, in_dim, bs) = (self.out_dim, self.in_dim, T::BLCK_SIZE);
        let per_row = in_dim / bs;
        let (tile_rows, tile_blocks) = (tile.0.clamp(1, out_dim.max(1)), (tile.1 / bs).clamp(1, per_row.max(1)));
        let mut values = vec![0f32; tile_rows * tile_blocks * bs];
        for o0 in (0..out_dim).step_by(tile_rows) {
            let outs = tile_rows.min(out_dim - o0);
            for b0 in (0..per_row).step_by(tile_blocks) {
                let width = tile_blocks.min(per_row - b0) * bs;
                let w = &mut values[..outs * width];
                // Dequantize rows in parallel, ~16k values a task.
                let task_rows = (16_384 / width).max(1);
                w.par_chunks_mut(task_rows * width).enumerate().for_each(|(task, w)| {
                    for (r, w) in w.chunks_mut(width).enumerate() {
                        let at = (o0 + task * task_rows + r) * per_row + b0;
                        T::to_float(&blocks[at..at + width / bs], w);
                    }
                });
                let a = View::new(&x[b0 * bs..], rows, width, in_dim, 1);
                let w = View::rows(w, outs, width).t();
                gemm(&mut y[o0..], out_dim, a, w, b0 > 0, kernels::threads());
            }
        }
    }
}

/// How a [`QuantWeight`] multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKernel {
    /// candle's block kernel (`k_quants::matmul`): each activation row rounded to the format's
    /// `vec_dot` type (q8_0 blocks for q8_0, q8_K for q4k), then integer dot products of blocks.
    /// Reads the weights once per 16 rows, but its q8_0 dot product is one 32-value block per
    /// step, two f16 conversions a block, no register tiling.
    Blocks,
    /// DEVIATION from candle's quantized matmul: tiles of the weight dequantized to f32 and
    /// multiplied by gemm, as the f32 layers are; the activations are not rounded, so the
    /// product is the dequantized weight's in f32 (closer to the unquantized model than
    /// `Blocks`, by the activations' 8-bit rounding).
    Dequantized,
}

/// [`QuantKernel::Dequantized`]'s tile: 4096 weight rows by 512 input values (8 MiB of f32),
/// so a 7B decoder's square layers are one output tile and the input tile is gemm's own depth.
const TILE: (usize, usize) = (4096, 512);

impl QuantKernel {
    /// The kernel for a product of `rows` rows of a `format` weight: candle's below
    /// [`QuantKernel::dequantize_from_rows`] (decoding a token: one row), else dequantized
    /// (prefills, the vision tower).
    pub fn for_rows(format: Quantize, rows: usize) -> Self {
        if rows >= Self::dequantize_from_rows(format) { QuantKernel::Dequantized } else { QuantKernel::Blocks }
    }

    /// Where the dequantized tiles (a fixed cost of some 20 rows of f32 gemm on 4096 x 4096)
    /// overtake candle's kernel, measured with examples/quant_matmul.rs (4096 x 4096, 3 rounds
    /// alternated, load 2): q8_0's kernel is slow per row (tiles / blocks 1.11x at 16 rows,
    /// 0.68x at 24, 0.18x at 600), q4k's is not (1.07x at 64, 0.85x at 96, 0.62x at 600).
    pub fn dequantize_from_rows(format: Quantize) -> usize {
        match format {
            Quantize::Q8_0 => 24,
            Quantize::Q4K => 80,
        }
    }
}

/// A `[rows, in_dim]` matrix as blocks of `T`, 16 rows a task, each task's f32 values written
/// by `fill` into its own buffer.
fn quantize_rows<T: GgmlType>(rows: usize, in_dim: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Vec<T> {
    const ROWS: usize = 16;
    let mut blocks = vec![T::zeros(); rows * in_dim / T::BLCK_SIZE];
    blocks.par_chunks_mut(in_dim / T::BLCK_SIZE * ROWS).enumerate().for_each_init(
        || vec![0f32; ROWS * in_dim],
        |buf, (task, ys)| {
            let xs = &mut buf[..ys.len() * T::BLCK_SIZE];
            fill(task * ROWS * in_dim, xs);
            T::from_float(xs, ys);
        },
    );
    blocks
}

/// Blocks of `T` copied from their bytes (any alignment).
fn blocks_from_bytes<T: GgmlType>(bytes: &[u8]) -> Vec<T> {
    assert!(bytes.len().is_multiple_of(std::mem::size_of::<T>()), "whole blocks");
    let mut blocks = vec![T::zeros(); bytes.len() / std::mem::size_of::<T>()];
    // SAFETY: GGML blocks are plain old data (`repr(C)` structs of f16 and byte arrays: every
    // bit pattern is a block); `blocks` holds exactly `bytes.len()` bytes (asserted above); a
    // byte copy needs no alignment of `bytes`.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), blocks.as_mut_ptr().cast::<u8>(), bytes.len()) };
    blocks
}

impl CustomOp1 for QuantWeight {
    fn name(&self) -> &'static str {
        "quantized-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("quantized matmul: input not contiguous".into()))?;
        let mut dims = layout.dims().to_vec();
        if dims.last() != Some(&self.in_dim) {
            candle_core::bail!("quantized matmul: input {dims:?} against a weight of input width {}", self.in_dim)
        }
        let x = &storage.as_slice::<f32>()?[start..end];
        let rows = x.len() / self.in_dim;
        let mut y = vec![0f32; rows * self.out_dim];
        self.matmul_into(x, rows, &mut y);
        *dims.last_mut().expect("checked above") = self.out_dim;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

/// Quantized weights kept between loads ([`Linears::with_cache`]): the quantized cache
/// (`quant_cache::QuantCache`, which builds on this module).
pub trait QuantStore: std::fmt::Debug {
    /// `name`'s `[out, in]` blocks in `format` when the store holds them whole (recorded as
    /// used), else `None`; the caller then makes the weight through [`QuantStore::get_or`].
    fn cached(&self, name: &str, format: Quantize, dims: (usize, usize)) -> Option<QuantWeight>;

    /// `name`'s blocks from the store when it holds them, else `make`'s; either way recorded
    /// for [`QuantStore::finish`].
    fn get_or(
        &self,
        name: &str,
        format: Quantize,
        dims: (usize, usize),
        make: Box<dyn FnOnce() -> Result<QuantWeight> + '_>,
    ) -> Result<QuantWeight>;

    /// Ends the load (writes what the store lacked); the line the load says, `None` when
    /// nothing was quantized.
    fn finish(&self) -> Option<String>;
}

/// Makes a model's linear layers under one quantization, counting what it did.
#[derive(Debug)]
pub struct Linears {
    quantize: Option<Quantize>,
    /// Where the model is built (the var builders' device), and the dtype unquantized linear
    /// weights are kept in (`None`: as stored; f32 weights stay f32).
    device: Device,
    dtype: Option<DType>,
    count: Cell<QuantCount>,
    /// The checkpoint quantized weights are streamed from, when the loader gives it.
    stored: RefCell<Option<Raw>>,
    /// Where quantized weights are read from and written to, when cached.
    cache: Option<Box<dyn QuantStore>>,
}

impl Linears {
    /// Layers on the CPU, quantized as `quantize` says or f32.
    pub fn new(quantize: Option<Quantize>) -> Self {
        Self {
            quantize,
            device: Device::Cpu,
            dtype: Some(DType::F32),
            count: Cell::default(),
            stored: RefCell::new(None),
            cache: None,
        }
    }

    /// Layers as `options` say: quantized on the CPU, or on their device in their dtype.
    pub fn for_options(options: &LoadOptions) -> Result<Self> {
        let (device, dtype) = options.resolve()?;
        Ok(Self { device, dtype, ..Self::new(options.quantize) })
    }

    /// Quantized weights read from `cache` where it holds them, and written to it at
    /// [`Linears::finish_cache`].
    pub fn with_cache(self, cache: Box<dyn QuantStore>) -> Self {
        Self { cache: Some(cache), ..self }
    }

    /// Writes the cache unless the load read every weight from it; the line to say (see
    /// [`QuantStore::finish`]).
    pub fn finish_cache(&self) -> Option<String> {
        self.cache.as_ref()?.finish()
    }

    /// The `[out, in]` weight `name` in `format`: from the cache when there is one holding it,
    /// else `make`'s (recorded for the cache).
    pub fn quantized(
        &self,
        name: &str,
        format: Quantize,
        dims: (usize, usize),
        make: impl FnOnce() -> Result<QuantWeight>,
    ) -> Result<QuantWeight> {
        match &self.cache {
            Some(cache) => cache.get_or(name, format, dims, Box::new(make)),
            None => make(),
        }
    }

    /// `name`'s blocks in `format` where the cache holds them (its f32 weight need not be
    /// read), else `None`.
    pub fn cached(&self, name: &str, format: Quantize, dims: (usize, usize)) -> Option<QuantWeight> {
        match self.quantize.is_some() && format.fits(dims.1) {
            true => self.cache.as_ref()?.cached(name, format, dims),
            false => None,
        }
    }

    /// The device the model is built on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Quantized weights are read from `stored`'s bytes ([`QuantWeight::from_stored`]) rather
    /// than through the var builder's f32 copy.
    pub(crate) fn stream_from(&self, stored: Raw) {
        *self.stored.borrow_mut() = Some(stored);
    }

    /// The dtype `name` is stored in, where the loader gave its checkpoint.
    pub fn stored_dtype(&self, name: &str) -> Option<DType> {
        self.stored.borrow().as_ref()?.with(name, |dtype, _, _| dtype)
    }

    /// f32 layers, as checkpoints store them.
    pub fn f32() -> Self {
        Self::new(None)
    }

    pub fn quantize(&self) -> Option<Quantize> {
        self.quantize
    }

    /// The linear layer `vb` holds (`weight` `[out, in]`, `bias` `[out]` if `bias`): quantized
    /// when a quantization is set and `in_dim` is a multiple of its block, else f32. The f32
    /// weight read from the checkpoint is dropped as soon as it is quantized.
    pub fn linear(&self, in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Proj> {
        let b = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        let mut count = self.count.get();
        let proj = match self.quantize.filter(|q| q.fits(in_dim)) {
            Some(q) => {
                let name = format!("{}.weight", vb.prefix());
                let weight = self.quantized(&name, q, (out_dim, in_dim), || {
                    let streamed = self.stored.borrow().as_ref().and_then(|stored| {
                        stored.with(&name, |dtype, dims, bytes| match dims == [out_dim, in_dim] {
                            true => QuantWeight::from_stored(dtype, dims, bytes, q),
                            false => Err(candle_core::Error::UnexpectedShape {
                                msg: format!("shape mismatch for {name}"),
                                expected: (out_dim, in_dim).into(),
                                got: dims.into(),
                            }
                            .into()),
                        })
                    });
                    match streamed {
                        Some(weight) => weight,
                        None => QuantWeight::quantize(&vb.get((out_dim, in_dim), "weight")?, q),
                    }
                })?;
                count.quantized += 1;
                count.bytes += weight.size_in_bytes() as u64;
                Proj::Quantized { weight, bias: b }
            }
            None => {
                let name = format!("{}.weight", vb.prefix());
                let stored = self.stored_dtype(&name);
                let dtype = self.dtype.or(stored).unwrap_or(DType::F32);
                let w = vb.get_with_hints_dtype((out_dim, in_dim), "weight", Default::default(), dtype)?;
                count.kept_f32 += usize::from(self.quantize.is_some());
                count.bytes += (w.elem_count() * dtype.size_in_bytes()) as u64;
                match dtype {
                    DType::F16 | DType::BF16 => {
                        Proj::Half(candle_nn::Linear::new(w, b.map(|b| b.to_dtype(dtype)).transpose()?))
                    }
                    _ => Proj::F32(candle_nn::Linear::new(w, b)),
                }
            }
        };
        self.count.set(count);
        Ok(proj)
    }

    /// Counts a vision tower block's layers quantized to [`TOWER_FORMAT`].
    pub fn count_tower(&self, tower: QuantCount) {
        let mut count = self.count.get();
        count.tower += tower.quantized;
        count.bytes += tower.bytes;
        self.count.set(count);
    }

    /// What [`Linears::linear`] made so far.
    pub fn count(&self) -> QuantCount {
        self.count.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_size() {
        assert_eq!("q8_0".parse::<Quantize>().unwrap(), Quantize::Q8_0);
        assert_eq!("Q4K".parse::<Quantize>().unwrap(), Quantize::Q4K);
        assert!("q2".parse::<Quantize>().unwrap_err().contains("q8_0, q4k"));
        assert_eq!(Quantize::Q8_0.bytes_per_weight(), 34.0 / 32.0);
        assert_eq!(Quantize::Q4K.bytes_per_weight(), 144.0 / 256.0);
        assert!(Quantize::Q8_0.fits(576) && !Quantize::Q4K.fits(576) && !Quantize::Q8_0.fits(16));
        assert_eq!("bfloat16".parse::<DTypeChoice>().unwrap(), DTypeChoice::Bf16);
        assert!("f8".parse::<DTypeChoice>().is_err());
    }

    #[test]
    fn half_precision_is_refused_on_the_cpu() {
        assert_eq!(DTypeChoice::F32.resolve(&Device::Cpu).unwrap(), Some(DType::F32));
        if std::env::var_os("TOKENLENS_DTYPE").is_none() {
            assert_eq!(DTypeChoice::Auto.resolve(&Device::Cpu).unwrap(), Some(DType::F32));
        }
        for d in [DTypeChoice::F16, DTypeChoice::Bf16] {
            let msg = d.resolve(&Device::Cpu).unwrap_err().to_string();
            assert!(msg.contains("--dtype") && msg.contains("CPU"), "{msg}");
        }
    }

    #[test]
    fn devices_parse_and_absent_backends_are_refused_by_feature() {
        for (text, d) in [
            ("auto", DeviceChoice::Auto),
            ("CPU", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:1", DeviceChoice::Cuda(1)),
            ("metal", DeviceChoice::Metal),
        ] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), d);
        }
        assert_eq!(DeviceChoice::Cuda(1).to_string(), "cuda:1");
        assert!("cuda:x".parse::<DeviceChoice>().unwrap_err().contains("cuda:N"));
        assert!("tpu".parse::<DeviceChoice>().unwrap_err().contains("supported"));
        assert!(DeviceChoice::Cpu.resolve().unwrap().is_cpu());
        for (d, feature) in [(DeviceChoice::Cuda(0), "cuda"), (DeviceChoice::Metal, "metal")] {
            // Without the feature the message names it; with it, the device must answer.
            match d.resolve() {
                Err(e) if !d.compiled() => {
                    let msg = e.to_string();
                    assert!(msg.contains("--device") && msg.contains(feature), "{msg}");
                }
                Err(e) => assert!(e.to_string().contains("not available"), "{e}"),
                Ok(device) => assert!(!device.is_cpu()),
            }
        }
        if !cfg!(feature = "metal") {
            let options = LoadOptions { device: DeviceChoice::Metal, ..LoadOptions::default() };
            assert!(options.resolve().is_err());
        }
        if !cfg!(feature = "cuda") && std::env::var_os("TOKENLENS_DEVICE").is_none() {
            assert!(DeviceChoice::Auto.resolve().unwrap().is_cpu());
            assert_eq!(LoadOptions::default().resolve().unwrap().1, Some(DType::F32));
        }
    }

    /// A quantized layer against the f32 product; a narrow one stays f32 and is counted.
    #[test]
    fn quantized_linears_match_f32_within_their_precision() {
        let dev = Device::Cpu;
        let (i, o) = (256, 8);
        let w = Tensor::randn(0f32, 1.0, (o, i), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, o, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 3, i), &dev).unwrap();
        let narrow = Tensor::randn(0f32, 1.0, (o, 16), &dev).unwrap();
        let tensors = std::collections::HashMap::from([
            ("l.weight".to_string(), w.clone()),
            ("l.bias".to_string(), b.clone()),
            ("n.weight".to_string(), narrow),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let exact = candle_nn::Linear::new(w, Some(b)).forward(&x).unwrap();
        let scale: f32 = exact.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        let max_diff =
            |a: &Tensor, b: &Tensor| -> f32 { (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap() };
        // Against the exact product (q8_0 ~1 %, q4k ~10 % of the largest output on Gaussians).
        for (q, tol) in [(Quantize::Q8_0, 0.03), (Quantize::Q4K, 0.2)] {
            let linears = Linears::new(Some(q));
            let l = linears.linear(i, o, true, vb.pp("l")).unwrap();
            let Proj::Quantized { weight: qw, .. } = &l else { panic!("{q}: not quantized") };
            let y = l.forward(&x).unwrap();
            assert!(max_diff(&y, &exact) / scale < tol, "{q}: {} of {scale}", max_diff(&y, &exact));
            // Against f32 with the dequantized weight: only the activations' 8-bit rounding.
            let w = qw.dequantize().unwrap();
            let b = vb.pp("l").get(o, "bias").unwrap();
            let dequantized = candle_nn::Linear::new(w, Some(b)).forward(&x).unwrap();
            assert!(max_diff(&y, &dequantized) / scale < 0.02, "{q}: {}", max_diff(&y, &dequantized));
            assert!(matches!(linears.linear(16, o, false, vb.pp("n")).unwrap(), Proj::F32(_)));
            let c = linears.count();
            assert_eq!((c.quantized, c.kept_f32), (1, 1));
            let block = q.ggml().type_size() * i / q.block_size() * o;
            assert_eq!(c.bytes, (block + o * 16 * 4) as u64);
        }
    }

    /// Both kernels against the dequantized weight times `x` in f64, for odd row counts, an
    /// output width off the kernels' groups of 4, and tiles that split the weight unevenly both
    /// ways (several output and input tiles, a short last one).
    #[test]
    fn both_kernels_match_the_dequantized_product() {
        let dev = Device::Cpu;
        let (o, i) = (37, 1024);
        let w = Tensor::randn(0f32, 1.0, (o, i), &dev).unwrap();
        for q in Quantize::ALL {
            let qw = QuantWeight::quantize(&w, q).unwrap();
            let wd: Vec<f32> = qw.dequantize().unwrap().flatten_all().unwrap().to_vec1().unwrap();
            for rows in [1, 3, 8, 17, 33] {
                let x: Vec<f32> =
                    Tensor::randn(0f32, 1.0, (rows, i), &dev).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let reference: Vec<f64> = (0..rows * o)
                    .map(|at| {
                        let (r, c) = (at / o, at % o);
                        (0..i).map(|k| x[r * i + k] as f64 * wd[c * i + k] as f64).sum()
                    })
                    .collect();
                let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
                let error =
                    |y: &[f32]| y.iter().zip(&reference).fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs())) / scale;
                // Dequantized: the same product in f32, whatever the tiling.
                for tile in [TILE, (5, 1), (16, 300)] {
                    let mut y = vec![f32::NAN; rows * o];
                    qw.matmul_tiled(&x, rows, &mut y, tile);
                    assert!(error(&y) < 1e-5, "{q} {rows} rows, tile {tile:?}: {}", error(&y));
                }
                // candle's blocks: the activations rounded to 8 bits, ~1e-2.
                let mut y = vec![f32::NAN; rows * o];
                qw.matmul_with(QuantKernel::Blocks, &x, rows, &mut y);
                assert!(error(&y) < 2e-2, "{q} {rows} rows, blocks: {}", error(&y));
                let mut auto = vec![f32::NAN; rows * o];
                qw.matmul_into(&x, rows, &mut auto);
                let kernel = QuantKernel::for_rows(q, rows);
                qw.matmul_with(kernel, &x, rows, &mut y);
                assert_eq!(auto, y, "{q} {rows} rows: matmul_into is {kernel:?}");
            }
        }
    }

    /// The row-parallel quantizer writes candle's own blocks, byte for byte, and its block
    /// kernel's product is candle's `QMatMul`'s (which repacks q4k on x86: another kernel, same arithmetic up to
    /// float summation order).
    #[test]
    fn parallel_blocks_are_candles() {
        use candle_core::quantized::{QMatMul, QTensor};
        let dev = Device::Cpu;
        // 40 rows: two full 16-row tasks and a short one.
        let (o, i) = (40, 512);
        let w = Tensor::randn(0f32, 1.0, (o, i), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 33, i), &dev).unwrap();
        for q in Quantize::ALL {
            let ours = QuantWeight::quantize(&w, q).unwrap();
            let theirs = QTensor::quantize(&w, q.ggml()).unwrap();
            assert_eq!(ours.bytes(), &*theirs.data().unwrap(), "{q}");
            assert_eq!(ours.size_in_bytes(), theirs.storage_size_in_bytes());
            // candle's kernel on our blocks (`forward` may dequantize instead: the test above).
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let mut a = vec![0f32; 66 * o];
            ours.matmul_with(QuantKernel::Blocks, &xs, 66, &mut a);
            let a = Tensor::from_vec(a, (2, 33, o), &dev).unwrap();
            let b = QMatMul::from_qtensor(theirs).unwrap().forward(&x).unwrap();
            assert_eq!(ours.forward(&x).unwrap().dims(), &[2, 33, o]);
            let diff: f32 = (a - &b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            let scale: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(diff <= 1e-4 * scale, "{q}: {diff} of {scale}");
        }
        // From stored bytes (what the loader streams): the blocks of the f32 values they hold.
        let stored = |d: DType| {
            let w = w.to_dtype(d).unwrap();
            let bytes: Vec<u8> = match d {
                DType::BF16 => {
                    w.flatten_all().unwrap().to_vec1::<bf16>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect()
                }
                DType::F16 => {
                    w.flatten_all().unwrap().to_vec1::<f16>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect()
                }
                _ => w.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
            };
            (w.to_dtype(DType::F32).unwrap(), bytes)
        };
        for d in [DType::F32, DType::F16, DType::BF16] {
            let (values, bytes) = stored(d);
            for q in Quantize::ALL {
                let streamed = QuantWeight::from_stored(d, &[o, i], &bytes, q).unwrap();
                assert_eq!(streamed.bytes(), QuantWeight::quantize(&values, q).unwrap().bytes(), "{d:?} {q}");
            }
            assert!(QuantWeight::from_stored(d, &[o, i], &bytes[1..], Quantize::Q8_0).is_err());
            assert!(QuantWeight::from_stored(d, &[o * i], &bytes, Quantize::Q8_0).is_err());
        }
        // Refused: a width off the block, a non-f32 weight.
        assert!(QuantWeight::quantize(&w.narrow(1, 0, 48).unwrap(), Quantize::Q4K).is_err());
        assert!(QuantWeight::quantize(&w.to_dtype(DType::BF16).unwrap(), Quantize::Q8_0).is_err());
    }
}
