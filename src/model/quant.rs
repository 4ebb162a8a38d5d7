//! How a model is loaded: `--quantize q8_0|q4k` (quantized linear layers, candle's GGML
//! blocks) and `--dtype auto|f32|f16|bf16` (what the weights are computed in).
//!
//! What is quantized: the decoder's linear layers (q, k, v, o, gate, up, down), `lm_head` when it
//! is its own matrix, and the projector's or connector's linear layers. Each weight is read from
//! the memory-mapped checkpoint, converted to f32 and quantized at once ([`Linears::linear`]), so
//! only one layer's f32 copy exists at a time. What stays f32: token embeddings (and a
//! `lm_head` tied to them), RMSNorms, rotary tables, attention scores, softmax and
//! probabilities (the maps the views draw are f32 products of quantized q/k projections),
//! biases, the vision tower. The activations entering a quantized matmul are themselves
//! quantized on the fly (q8_0 rows for q8_0, q8_K for q4k: candle's `vec_dot` types).
//!
//! Dimensions: a block spans the input dimension (q8_0: 32 weights, q4k: 256); a layer whose
//! input width is not a multiple stays f32, and [`QuantCount`] says how many were quantized
//! (the tiny test fixtures' widths are below 32, so nothing of theirs is). A real model's
//! widths (4096, 11008, 576, 1536, ...) are multiples of 32; of 256 most are, SmolVLM-256M's
//! 576 is not (its layers stay f32 under q4k).

use std::cell::Cell;
use std::str::FromStr;
use std::sync::Mutex;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;

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
    /// The dtype computed in on `device`. The CPU computes in f32 (candle's CPU matmul has no
    /// fast f16/bf16 path and tokenlens' attention kernels are f32), so f16 and bf16 are refused
    /// there rather than silently run in f32.
    pub fn resolve(self, device: &Device) -> Result<DType> {
        match (self, device) {
            (DTypeChoice::Auto | DTypeChoice::F32, _) => Ok(DType::F32),
            (DTypeChoice::F16 | DTypeChoice::Bf16, Device::Cpu) => Err(Error::Config {
                field: "--dtype",
                reason: format!(
                    "{self} is not computed on the CPU: tokenlens computes in f32 there (candle's CPU matmul has \
                     no fast half-precision path); use --dtype auto or f32, or --quantize q8_0|q4k to save memory"
                ),
            }),
            (_, _) => Err(Error::Config {
                field: "--dtype",
                reason: format!("{self} on {device:?} is not implemented yet: tokenlens computes in f32"),
            }),
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

/// How a model is loaded ([`crate::session::Session::load_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct LoadOptions {
    /// Quantize the decoder's and projector's linear layers (vision-language models only).
    pub quantize: Option<Quantize>,
    pub dtype: DTypeChoice,
}

/// The options [`crate::session::Session::load`] uses: the CLI's `--quantize` and `--dtype`
/// for this process (the app's loads included).
static PROCESS: Mutex<LoadOptions> = Mutex::new(LoadOptions { quantize: None, dtype: DTypeChoice::Auto });

impl LoadOptions {
    /// Sets the options of every later [`crate::session::Session::load`] in this process.
    pub fn set_process(self) {
        *PROCESS.lock().unwrap_or_else(|e| e.into_inner()) = self;
    }

    pub fn process() -> Self {
        *PROCESS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// "f32", "q8_0 (linear layers), f32": for the cost panel and messages.
    pub fn describe(&self) -> String {
        match self.quantize {
            Some(q) => format!("{q} linear layers, f32 elsewhere"),
            None => "f32".into(),
        }
    }
}

/// Linear layers quantized and kept f32 at load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QuantCount {
    pub quantized: usize,
    /// Layers kept f32 because their input width is not a multiple of the block size.
    pub kept_f32: usize,
    /// Bytes the linear weights take as loaded.
    pub bytes: u64,
}

impl QuantCount {
    pub fn add(&mut self, other: QuantCount) {
        self.quantized += other.quantized;
        self.kept_f32 += other.kept_f32;
        self.bytes += other.bytes;
    }
}

/// A linear layer `y = x Wᵀ + b`, its weight in f32 or quantized (the bias stays f32).
#[derive(Debug, Clone)]
pub enum Proj {
    F32(candle_nn::Linear),
    Quantized { weight: QMatMul, bias: Option<Tensor> },
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Proj::F32(l) => l.forward(x),
            Proj::Quantized { weight, bias } => {
                // candle's quantized matmul wants a contiguous f32 input.
                let y = weight.forward(&x.contiguous()?)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }
}

/// Makes a model's linear layers under one quantization, counting what it did.
#[derive(Debug, Default)]
pub struct Linears {
    quantize: Option<Quantize>,
    count: Cell<QuantCount>,
}

impl Linears {
    pub fn new(quantize: Option<Quantize>) -> Self {
        Self { quantize, count: Cell::default() }
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
        let w = vb.get((out_dim, in_dim), "weight")?;
        let b = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        let mut count = self.count.get();
        let proj = match self.quantize.filter(|q| q.fits(in_dim)) {
            Some(q) => {
                let qt = QTensor::quantize(&w, q.ggml())?;
                count.quantized += 1;
                count.bytes += qt.storage_size_in_bytes() as u64;
                Proj::Quantized { weight: QMatMul::from_qtensor(qt)?, bias: b }
            }
            None => {
                count.kept_f32 += usize::from(self.quantize.is_some());
                count.bytes += (w.elem_count() * 4) as u64;
                Proj::F32(candle_nn::Linear::new(w, b))
            }
        };
        self.count.set(count);
        Ok(proj)
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
        assert_eq!(DTypeChoice::Auto.resolve(&Device::Cpu).unwrap(), DType::F32);
        assert_eq!(DTypeChoice::F32.resolve(&Device::Cpu).unwrap(), DType::F32);
        for d in [DTypeChoice::F16, DTypeChoice::Bf16] {
            let msg = d.resolve(&Device::Cpu).unwrap_err().to_string();
            assert!(msg.contains("--dtype") && msg.contains("CPU"), "{msg}");
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
            let Proj::Quantized { weight: QMatMul::QTensor(qt), .. } = &l else { panic!("{q}: not quantized") };
            let y = l.forward(&x).unwrap();
            assert!(max_diff(&y, &exact) / scale < tol, "{q}: {} of {scale}", max_diff(&y, &exact));
            // Against f32 with the dequantized weight: only the activations' 8-bit rounding.
            let w = qt.dequantize(&dev).unwrap();
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
}
