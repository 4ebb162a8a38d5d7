//! The memory guard: before a model's weights are touched, estimate from its config alone the
//! memory it needs, compare with what is available, and refuse with a clear message, never an
//! out-of-memory kill halfway through a load.
//!
//! The estimate ([`Estimate`]): the parameter count from the config's shapes (vision tower,
//! projector or connector, decoder: embeddings, each layer's attention, MLP and norms, `lm_head`
//! unless tied; for encoders the tower, the class head and a CLIP/SigLIP text tower) times the
//! bytes each is kept in (f32: 4; the decoder's embedding table in the checkpoint's f16/bf16: 2,
//! unless tied to `lm_head`; with `--quantize`, the linear layers [`super::quant`] quantizes at
//! their format's bytes per weight; on a GPU under `--dtype f16|bf16`, or `auto` with a
//! half-precision checkpoint, the decoder's and projector's linear layers at 2); plus what one
//! run of a VLM keeps, for [`decoder_tokens`] (one image's tokens and [`TEXT_TOKENS`]): the KV
//! cache twice (the full prefill's, kept for resuming, and a reduced run's), the decoder's layer
//! inputs (both in the cache dtype: f16 under `--quantize`, else f32), the tower's attention,
//! keys and states of every layer (f32), one decoder layer's attention and MLP at work; plus
//! 256 MiB (the program, the tokenizer, the allocator; on a GPU its kernels and cuBLAS's
//! workspace) and 5 %. Measured against it: LLaVA-1.5-7B's shapes under `--quantize q4k`
//! (README, Speed).
//!
//! Where it lives ([`Estimate::on_device`]): on the CPU all of it is host RAM. On a GPU the
//! weights, caches and work are the device's, compared with its free memory; the host keeps the
//! mapped pages of the tensor being copied over (at most the largest, as stored) beside the
//! 256 MiB, and the default model's saliency head, which is CPU code (that model is small and
//! not guarded).
//!
//! Available ([`Budget`]): host RAM is the `--memory-limit` given on the command line
//! ([`set_limit`]), else `MemAvailable` from `/proc/meminfo` (Linux); the device's is the
//! `--device-memory-limit` ([`set_device_limit`]), else what the device reports free (CUDA:
//! `cuMemGetInfo`; Metal: the recommended working set less what is allocated). What cannot be
//! measured (other systems, a device that does not answer) is not checked: the guard can only
//! refuse what it can measure.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device};
use serde::Serialize;

use super::config::VitConfig;
use super::hf_config::{Class, resolve_section};
use super::llama::LlamaConfig;
use super::quant::{Quantize, TOWER_FORMAT, device_name};
use crate::{Error, Result};

/// Decoder tokens a run is sized for when the image's are unknown (an encoder has none).
pub const KV_TOKENS: usize = 2048;
/// Text tokens besides the image's a run is sized for: a question of a few lines and a short
/// answer (LLaVA-1.5's chat template alone is ~20).
pub const TEXT_TOKENS: usize = 128;
/// Bytes per parameter computed in f32 (every weight not quantized or kept in half precision).
pub const F32_BYTES: f64 = 4.0;
const MARGIN_FIXED: u64 = 256 << 20;
/// The margin on top of the estimate, in percent.
const MARGIN_PERCENT: u64 = 5;

/// Linear layers of one shape that `--quantize` may take: `count` layers of `in_dim` x `out_dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearShape {
    pub in_dim: usize,
    pub out_dim: usize,
    pub count: usize,
}

impl LinearShape {
    fn weights(&self) -> u64 {
        (self.in_dim * self.out_dim * self.count) as u64
    }
}

/// What loading and running a model is estimated to need.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// What is loaded, for messages ("LLaVA (llava)").
    pub model: String,
    pub parameters: u64,
    /// Bytes per parameter of what is neither quantized nor kept in half precision.
    pub bytes_per_parameter: f64,
    /// Parameters kept in the checkpoint's f16/bf16, 2 bytes each: the decoder's embedding
    /// table (unless tied to `lm_head`, which is a linear layer).
    pub half_parameters: u64,
    /// The half precision the checkpoint stores (`config.json`'s `dtype` / `torch_dtype`), if any:
    /// what `--dtype auto` keeps the linear layers in on a GPU.
    pub stored_half: Option<DType>,
    /// What the linear layers (`linears`) are kept in when not quantized: f32, or f16/bf16 on a
    /// GPU ([`super::quant::DTypeChoice::resolve`]).
    pub linear_dtype: DType,
    /// The linear layers `--quantize` and `--dtype` apply to (decoder, `lm_head` unless tied,
    /// projector).
    pub linears: Vec<LinearShape>,
    /// The vision tower's linear layers: [`TOWER_FORMAT`] under any quantization.
    pub tower_linears: Vec<LinearShape>,
    /// The quantization the weights are loaded with.
    pub quantize: Option<Quantize>,
    /// The GPU the weights, caches and work live on ("cuda:0"); `None`: the CPU, all in host RAM.
    pub device: Option<String>,
    /// The largest tensor as stored: what a GPU load holds on the host at once (its mapped pages,
    /// while it is copied over).
    pub largest_tensor_bytes: u64,
    /// Decoder tokens one run is sized for (0 for encoders).
    pub kv_tokens: usize,
    /// One run's KV cache at `kv_tokens`, at f32.
    pub kv_f32_bytes: u64,
    /// The decoder's layer inputs kept for resuming, at f32.
    pub inputs_f32_bytes: u64,
    /// What stays f32 whatever the quantization: the tower's attention, keys and states kept
    /// for the views and resumed runs, one decoder layer's attention and MLP at work.
    pub activation_bytes: u64,
}

impl Estimate {
    /// The same model loaded with `quantize`.
    pub fn with_quantize(mut self, quantize: Option<Quantize>) -> Self {
        self.quantize = quantize;
        self
    }

    /// The same model on the GPU `name` ("cuda:0"), its linear layers in `linear` (`None`: as the
    /// checkpoint stores them, `--dtype auto`); the rest stays f32 there.
    pub fn on_device(mut self, name: &str, linear: Option<DType>) -> Self {
        self.device = Some(name.to_string());
        self.linear_dtype = linear.or(self.stored_half).unwrap_or(DType::F32);
        self
    }

    /// The same model where [`super::quant::LoadOptions::resolve`] put it: on `device`, its
    /// linear layers in `linear`; unchanged on the CPU.
    pub fn placed(self, device: &Device, linear: Option<DType>) -> Self {
        if device.is_cpu() { self } else { self.on_device(&device_name(device), linear) }
    }

    /// Where the model's weights, caches and work live: "cpu" or the GPU's name.
    pub fn device_label(&self) -> &str {
        self.device.as_deref().unwrap_or("cpu")
    }

    pub fn weight_bytes(&self) -> u64 {
        self.weights_with(self.quantize, self.linear_dtype)
    }

    /// Weight bytes with the linear layers in `linear`, those whose input width fits
    /// `quantize`'s blocks quantized (from f32: quantization is CPU code).
    fn weights_with(&self, quantize: Option<Quantize>, linear: DType) -> u64 {
        let linear_bytes = linear.size_in_bytes() as f64;
        let linear_weights: u64 = self.linears.iter().map(LinearShape::weights).sum();
        let rest = self.parameters.saturating_sub(self.half_parameters + linear_weights);
        let all = rest as f64 * self.bytes_per_parameter
            + self.half_parameters as f64 * 2.0
            + linear_weights as f64 * linear_bytes;
        let saved = |linears: &[LinearShape], from: f64, q: Quantize| -> f64 {
            let fit = linears.iter().filter(|l| q.fits(l.in_dim));
            fit.map(|l| l.weights() as f64 * (from - q.bytes_per_weight())).sum()
        };
        let saved = quantize.map_or(0.0, |q| {
            saved(&self.linears, linear_bytes, q) + saved(&self.tower_linears, self.bytes_per_parameter, TOWER_FORMAT)
        });
        (all - saved) as u64
    }

    /// Bytes per cached value: the decoder keeps its KV cache and layer inputs in f16 under a
    /// quantization, else in f32 ([`super::llama::Llama::cache_dtype`]).
    fn cache_bytes(quantize: Option<Quantize>) -> u64 {
        if quantize.is_some() { 2 } else { 4 }
    }

    /// One run's KV cache as kept (f16 under a quantization, else f32).
    pub fn kv_bytes(&self) -> u64 {
        self.kv_f32_bytes / 4 * Self::cache_bytes(self.quantize)
    }

    /// What the KV cache is kept in: "f16" under a quantization, else "f32".
    pub fn kv_dtype(&self) -> &'static str {
        if self.quantize.is_some() { "f16" } else { "f32" }
    }

    /// Linear layers quantized and kept f32 (input width not a multiple of the block) under the
    /// estimate's quantization; (0, 0) without one.
    pub fn quantized_layers(&self) -> (usize, usize) {
        let Some(q) = self.quantize else { return (0, 0) };
        let count = |fits: bool| self.linears.iter().filter(|l| q.fits(l.in_dim) == fits).map(|l| l.count).sum();
        (count(true), count(false))
    }

    /// "f32", "bf16 linear layers, the rest f32" (a GPU), or "q8_0: 161 of 161 linear layers,
    /// the tower's 96 q8_0, the rest f32".
    pub fn format(&self) -> String {
        match self.quantize {
            None if self.linear_dtype == DType::F32 || self.linears.is_empty() => "f32".to_string(),
            None => format!("{} linear layers, the rest f32", self.linear_dtype.as_str()),
            Some(q) => {
                let (quantized, kept) = self.quantized_layers();
                let tower: usize =
                    self.tower_linears.iter().filter(|l| TOWER_FORMAT.fits(l.in_dim)).map(|l| l.count).sum();
                let tower = if tower > 0 { format!(", the tower's {tower} {TOWER_FORMAT}") } else { String::new() };
                format!("{q}: {quantized} of {} linear layers{tower}, the rest f32", quantized + kept)
            }
        }
    }

    /// What a run keeps beside the weights: the KV cache twice (the full prefill's and a
    /// reduced run's) and the layer inputs in the cache dtype, the f32 activations.
    fn run_bytes(&self, quantize: Option<Quantize>) -> u64 {
        let cached = (2 * self.kv_f32_bytes + self.inputs_f32_bytes) / 4 * Self::cache_bytes(quantize);
        cached + self.activation_bytes
    }

    /// The whole estimate where the model lives (the CPU's RAM or the GPU's memory): weights,
    /// what a run keeps, margin.
    pub fn total(&self) -> u64 {
        self.total_with(self.quantize, self.linear_dtype)
    }

    fn total_with(&self, quantize: Option<Quantize>, linear: DType) -> u64 {
        with_margin(self.weights_with(quantize, linear) + self.run_bytes(quantize))
    }

    /// Host RAM the load and run need: [`Estimate::total`] on the CPU; beside a GPU, the mapped
    /// pages of the tensor being copied over and the fixed margin.
    pub fn host_bytes(&self) -> u64 {
        match self.device {
            None => self.total(),
            Some(_) => with_margin(self.largest_tensor_bytes),
        }
    }

    /// One line: "7.06 B parameters: weights 27.99 GB (f32), KV cache 0.74 GB (704 tokens, f32), …".
    pub fn summary(&self) -> String {
        let kv = if self.kv_tokens == 0 {
            String::new()
        } else {
            format!(", KV cache {} ({} tokens, {})", gb(self.kv_bytes()), self.kv_tokens, self.kv_dtype())
        };
        let on = self.device.as_ref().map_or(String::new(), |d| format!(" on {d}"));
        format!(
            "{:.2} B parameters: weights {} ({}){kv}, a run's caches and work {}; with a 256 MiB + {MARGIN_PERCENT} % \
             margin, {} in all{on}",
            self.parameters as f64 / 1e9,
            gb(self.weight_bytes()),
            self.format(),
            gb(self.run_bytes(self.quantize)),
            gb(self.total()),
        )
    }

    /// The numbers `vlm.json` records under `load.memory`.
    pub fn report(&self) -> MemoryReport {
        MemoryReport {
            device: self.device_label().to_string(),
            format: self.format(),
            parameters: self.parameters,
            weight_bytes: self.weight_bytes(),
            kv_bytes: self.kv_bytes(),
            kv_dtype: self.kv_dtype(),
            kv_tokens: self.kv_tokens,
            device_bytes: self.total(),
            host_bytes: self.host_bytes(),
        }
    }
}

/// The guard's estimate as `vlm.json` writes it: bytes on the device the model runs on (the
/// CPU's RAM or a GPU's memory) and in host RAM (the same total on the CPU).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryReport {
    /// "cpu", "cuda:0", "metal:0".
    pub device: String,
    /// The weights' formats ([`Estimate::format`]).
    pub format: String,
    pub parameters: u64,
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    pub kv_dtype: &'static str,
    pub kv_tokens: usize,
    /// Weights, a run's caches and work, margin: what must fit on `device`.
    pub device_bytes: u64,
    /// What must fit in host RAM.
    pub host_bytes: u64,
}

/// `bytes` with the fixed margin and [`MARGIN_PERCENT`] on top.
fn with_margin(bytes: u64) -> u64 {
    let base = bytes + MARGIN_FIXED;
    base + base * MARGIN_PERCENT / 100
}

/// "28.25 GB" (decimal gigabytes, as `--memory-limit` takes them).
pub fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

/// Parameters of one pre-LayerNorm transformer block of width `d`, MLP width `i`.
fn vit_block(d: u64, i: u64, qkv_bias: bool) -> u64 {
    let attention = 4 * d * d + if qkv_bias { 3 * d } else { 0 } + d;
    let mlp = 2 * d * i + i + d;
    attention + mlp + 4 * d // two LayerNorms
}

/// A vision tower's parameters (`VitConfig`): patch embedding, prefix tokens, position
/// embeddings, blocks, norms.
pub fn vit_parameters(cfg: &VitConfig) -> u64 {
    let (d, i) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let p = cfg.patch_size as u64;
    let patches = (cfg.position_grid * cfg.position_grid) as u64;
    let prefix = cfg.num_prefix_tokens as u64;
    let patch = cfg.num_channels as u64 * p * p * d + if cfg.patch_bias { d } else { 0 };
    let pre_norm = if cfg.pre_norm { 2 * d } else { 0 };
    let layer_scale = if cfg.layerscale { 2 * d } else { 0 };
    let blocks = cfg.num_hidden_layers as u64 * (vit_block(d, i, cfg.qkv_bias) + layer_scale);
    patch + prefix * d + (patches + prefix) * d + pre_norm + blocks + 2 * d
}

/// A Llama decoder's parameters: embeddings, per layer attention (grouped-query) + gated MLP
/// + two RMSNorms, the final norm, and `lm_head` unless tied to the embeddings.
pub fn llama_parameters(cfg: &LlamaConfig) -> u64 {
    let (d, i, v) = (cfg.hidden_size as u64, cfg.intermediate_size as u64, cfg.vocab_size as u64);
    let q = (cfg.num_attention_heads * cfg.head_dim()) as u64;
    let kv = (cfg.kv_heads() * cfg.head_dim()) as u64;
    let attention = d * q + 2 * d * kv + q * d + if cfg.attention_bias { q + 2 * kv + d } else { 0 };
    let mlp = 3 * d * i + if cfg.mlp_bias { 2 * i + d } else { 0 };
    let layers = cfg.num_hidden_layers as u64 * (attention + mlp + 2 * d);
    let head = if cfg.tie_word_embeddings { 0 } else { v * d };
    v * d + layers + d + head
}

/// The decoder's linear layers by shape: q, k, v, o, gate, up, down per layer, and `lm_head`
/// unless tied.
pub fn llama_linears(cfg: &LlamaConfig) -> Vec<LinearShape> {
    let (d, i, n) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers);
    let (q, kv) = (cfg.num_attention_heads * cfg.head_dim(), cfg.kv_heads() * cfg.head_dim());
    let shape = |in_dim, out_dim, count| LinearShape { in_dim, out_dim, count };
    let mut all = vec![shape(d, q, n), shape(d, kv, 2 * n), shape(q, d, n), shape(d, i, 2 * n), shape(i, d, n)];
    if !cfg.tie_word_embeddings {
        all.push(shape(d, cfg.vocab_size, 1));
    }
    all
}

/// The decoder's KV cache at f32 for `tokens` tokens.
pub fn llama_kv_bytes(cfg: &LlamaConfig, tokens: usize) -> u64 {
    (2 * cfg.num_hidden_layers * cfg.kv_heads() * cfg.head_dim() * tokens * 4) as u64
}

/// The decoder tokens one run is sized for: `image_tokens` and [`TEXT_TOKENS`], within the
/// model's context.
pub fn decoder_tokens(cfg: &LlamaConfig, image_tokens: usize) -> usize {
    let tokens = image_tokens + TEXT_TOKENS;
    cfg.max_position_embeddings.map_or(tokens, |n| n.min(tokens))
}

/// Attention maps, keys and states (every layer) the tower's trace keeps for one image, at f32.
fn tower_activations(cfg: &VitConfig) -> u64 {
    let n = (cfg.position_grid * cfg.position_grid + cfg.num_prefix_tokens) as u64;
    let (layers, d) = (cfg.num_hidden_layers as u64, cfg.hidden_size as u64);
    4 * layers * (cfg.num_attention_heads as u64 * n * n + 2 * n * d)
}

/// One decoder layer at work on `tokens` rows, f32: its attention logits, their copy and the
/// probabilities; the gate, the up projection and their product.
fn decoder_work(cfg: &LlamaConfig, tokens: usize) -> u64 {
    let attention = 3 * cfg.num_attention_heads * tokens * tokens;
    4 * (attention + 3 * tokens * cfg.intermediate_size) as u64
}

/// A vision-language model: the tower, a projector or connector (`projector`: its linear
/// layers, and its parameters besides them, biases), the decoder; `image_tokens`: the decoder
/// tokens one image gives; `stored_half`: the checkpoint's f16/bf16, if it stores one (the
/// embedding table stays in it unless tied). On the CPU; [`Estimate::on_device`] moves it.
pub fn vlm(
    model: &str,
    vision: &VitConfig,
    text: &LlamaConfig,
    projector: &[LinearShape],
    biases: u64,
    image_tokens: usize,
    stored_half: Option<DType>,
) -> Estimate {
    let tokens = decoder_tokens(text, image_tokens);
    let mut linears = llama_linears(text);
    linears.extend_from_slice(projector);
    let projector = projector.iter().map(LinearShape::weights).sum::<u64>() + biases;
    let table = (text.vocab_size * text.hidden_size) as u64;
    let (d, i, l) = (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers);
    let shape = |in_dim, out_dim| LinearShape { in_dim, out_dim, count: l };
    // The fused QKV projection, the output projection, the MLP's two.
    let tower_linears = vec![shape(d, 3 * d), shape(d, d), shape(d, i), shape(i, d)];
    let largest = linears.iter().chain(&tower_linears).map(|l| l.in_dim * l.out_dim).chain([table as usize]).max();
    let stored_bytes = stored_half.map_or(4, |h| h.size_in_bytes()) as u64;
    Estimate {
        model: model.into(),
        parameters: vit_parameters(vision) + projector + llama_parameters(text),
        bytes_per_parameter: F32_BYTES,
        half_parameters: if stored_half.is_some() && !text.tie_word_embeddings { table } else { 0 },
        stored_half,
        linear_dtype: DType::F32,
        linears,
        tower_linears,
        quantize: None,
        device: None,
        largest_tensor_bytes: largest.unwrap_or(0) as u64 * stored_bytes,
        kv_tokens: tokens,
        kv_f32_bytes: llama_kv_bytes(text, tokens),
        inputs_f32_bytes: 4 * (text.num_hidden_layers * tokens * text.hidden_size) as u64,
        activation_bytes: tower_activations(vision) + decoder_work(text, tokens),
    }
}

/// A vision encoder (`model`: its architecture): the tower, its class head(s) over `num_labels`
/// classes, and (CLIP, SigLIP) the text tower and projections `config.json` describes.
pub fn encoder(model: &str, cfg: &VitConfig, num_labels: usize, class: Class, json: &serde_json::Value) -> Estimate {
    let d = cfg.hidden_size as u64;
    // DeiT with a teacher has two heads (CLS and distillation).
    let heads = if model == "DeiTForImageClassificationWithTeacher" { 2 } else { 1 };
    let head = heads * (d + 1) * num_labels as u64;
    // The largest tensor, at f32 (what an encoder checkpoint stores is not read from its config):
    // an MLP weight, a class head, a text tower's token table.
    let text_table = (json["text_config"]["vocab_size"].as_u64().unwrap_or(0))
        .saturating_mul(json["text_config"]["hidden_size"].as_u64().unwrap_or(0));
    let largest = (d * cfg.intermediate_size as u64).max(d * num_labels as u64).max(text_table);
    Estimate {
        model: model.into(),
        parameters: vit_parameters(cfg) + head + text_tower_parameters(class, json, d),
        bytes_per_parameter: F32_BYTES,
        half_parameters: 0,
        stored_half: None,
        linear_dtype: DType::F32,
        linears: Vec::new(),
        tower_linears: Vec::new(),
        quantize: None,
        device: None,
        largest_tensor_bytes: largest.saturating_mul(4),
        kv_tokens: 0,
        kv_f32_bytes: 0,
        inputs_f32_bytes: 0,
        activation_bytes: tower_activations(cfg),
    }
}

/// CLIP's and SigLIP's text tower (token and position embeddings, blocks, final norm) and
/// projections (CLIP: both towers' to `projection_dim`; SigLIP: the text head and the vision
/// tower's attention-pooling head); 0 without a `text_config`.
fn text_tower_parameters(class: Class, json: &serde_json::Value, vision_width: u64) -> u64 {
    if json.get("text_config").is_none() {
        return 0;
    }
    let Ok((_, t)) = resolve_section(class, json, "text_config") else { return 0 };
    let field = |k: &str| t[k].as_u64().unwrap_or(0);
    let (d, i) = (field("hidden_size"), field("intermediate_size"));
    let tower = (field("vocab_size") + field("max_position_embeddings")) * d
        + field("num_hidden_layers") * vit_block(d, i, true)
        + 2 * d;
    let heads = match class {
        Class::Clip => (d + vision_width) * json["projection_dim"].as_u64().unwrap_or(512),
        // The text head (d -> projection_size, default d) and the vision pooling head (a probe,
        // attention, norm and MLP); its MLP width is the vision tower's.
        _ => {
            let p = t["projection_size"].as_u64().unwrap_or(d);
            let (v, vi) =
                (vision_width, json["vision_config"]["intermediate_size"].as_u64().unwrap_or(4 * vision_width));
            d * p + p + v + 4 * v * v + 4 * v + 2 * v + 2 * v * vi + vi + v
        }
    };
    tower + heads
}

/// `--memory-limit` in bytes; 0: none given (use `MemAvailable`).
static LIMIT: AtomicU64 = AtomicU64::new(0);
/// `--device-memory-limit` in bytes; 0: none given (ask the device).
static DEVICE_LIMIT: AtomicU64 = AtomicU64::new(0);

/// Sets the host RAM the guard compares with for this process, in bytes, instead of
/// `MemAvailable` (the CLI's `--memory-limit`).
pub fn set_limit(bytes: u64) {
    LIMIT.store(bytes.max(1), Ordering::Relaxed);
}

/// Sets the GPU memory the guard compares a model placed on a GPU with, in bytes, instead of
/// what the device reports free (the CLI's `--device-memory-limit`).
pub fn set_device_limit(bytes: u64) {
    DEVICE_LIMIT.store(bytes.max(1), Ordering::Relaxed);
}

/// What the guard compares one side of an estimate with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Available {
    /// `--memory-limit`, in bytes (host RAM).
    Limit(u64),
    /// `MemAvailable` from `/proc/meminfo`, in bytes.
    MemAvailable(u64),
    /// `--device-memory-limit`, in bytes (a GPU's memory).
    DeviceLimit(u64),
    /// A CUDA device's free memory (`cuMemGetInfo`), in bytes.
    DeviceFree(u64),
    /// A Metal device's recommended working set less what it has allocated, in bytes.
    WorkingSet(u64),
    /// Nothing measured: that side is not checked.
    Unknown,
}

impl Available {
    /// Host RAM: the `--memory-limit` if one was set, else `MemAvailable`.
    pub fn now() -> Self {
        match LIMIT.load(Ordering::Relaxed) {
            0 => std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| mem_available(&m))
                .map_or(Self::Unknown, Self::MemAvailable),
            limit => Self::Limit(limit),
        }
    }

    /// `device`'s memory: the `--device-memory-limit` if one was set, else what it reports free;
    /// `Unknown` for the CPU and a device that does not answer.
    pub fn on_device(device: &Device) -> Self {
        match DEVICE_LIMIT.load(Ordering::Relaxed) {
            0 => device_free(device),
            limit => Self::DeviceLimit(limit),
        }
    }

    /// The bytes and what they are, for messages; `None` where nothing was measured.
    fn describe(self, device: &str) -> Option<(u64, String)> {
        Some(match self {
            Self::Limit(b) => (b, "the --memory-limit".into()),
            Self::MemAvailable(b) => (b, "available (MemAvailable)".into()),
            Self::DeviceLimit(b) => (b, "the --device-memory-limit".into()),
            Self::DeviceFree(b) => (b, format!("free on {device} (cuMemGetInfo)")),
            Self::WorkingSet(b) => (b, format!("left of {device}'s recommended working set")),
            Self::Unknown => return None,
        })
    }

    fn fits(self, bytes: u64) -> bool {
        self.describe("").is_some_and(|(have, _)| bytes <= have)
    }
}

/// What a GPU reports free: CUDA's `cuMemGetInfo` (through candle's device and cudarc), Metal's
/// recommended working set less what is allocated.
fn device_free(device: &Device) -> Available {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return match d.cuda_stream().context().mem_get_info() {
            Ok((free, _total)) => Available::DeviceFree(free as u64),
            Err(_) => Available::Unknown,
        };
    }
    #[cfg(feature = "metal")]
    if let Device::Metal(m) = device {
        let d = m.metal_device();
        let left = d.recommended_max_working_set_size().saturating_sub(d.current_allocated_size());
        return Available::WorkingSet(left as u64);
    }
    let _ = device;
    Available::Unknown
}

/// What the guard compares an estimate with: host RAM, and the memory of the GPU a model is
/// placed on (not read for a model on the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub host: Available,
    pub device: Available,
}

impl Budget {
    /// The host's and `device`'s memory now, or the limits the command line set.
    pub fn now(device: &Device) -> Self {
        Self { host: Available::now(), device: Available::on_device(device) }
    }
}

impl From<Available> for Budget {
    /// Host RAM alone (a model on a GPU is then checked on the host side only).
    fn from(host: Available) -> Self {
        Self { host, device: Available::Unknown }
    }
}

/// `MemAvailable` (kB) in a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses `estimate` if it does not fit in `budget` (host RAM, and on a GPU the device's
/// memory), saying what it needs, what there is and what would make it fit.
pub fn check(estimate: &Estimate, budget: impl Into<Budget>) -> Result<()> {
    let budget = budget.into();
    match &estimate.device {
        None => check_cpu(estimate, budget.host),
        Some(device) => {
            check_device(estimate, device, budget)?;
            check_host_beside(estimate, device, budget.host)
        }
    }
}

/// The --quantize formats smaller than the one asked that quantize some layer, with what the
/// model would need in host RAM under each and whether that fits `host`.
fn quantized_options(estimate: &Estimate, host: Available, flag: &str) -> Vec<String> {
    Quantize::ALL
        .into_iter()
        .filter(|&q| estimate.quantize.is_none_or(|asked| q.bytes_per_weight() < asked.bytes_per_weight()))
        .filter(|&q| estimate.linears.iter().any(|l| q.fits(l.in_dim)))
        .map(|q| {
            let need = estimate.total_with(Some(q), DType::F32);
            let fits = if host.fits(need) { ", fits" } else { "" };
            let unit = if flag.is_empty() { "in all" } else { "of host RAM" };
            format!("{flag}--quantize {q} ({} {unit}{fits})", gb(need))
        })
        .collect()
}

fn check_cpu(estimate: &Estimate, host: Available) -> Result<()> {
    let Some((have, source)) = host.describe("cpu") else { return Ok(()) };
    let need = estimate.total();
    if need <= have {
        return Ok(());
    }
    let smaller = quantized_options(estimate, host, "");
    let advice = if smaller.is_empty() {
        "Use a smaller model or free memory".to_string()
    } else {
        format!("Load it with {}, use a smaller model or free memory", smaller.join(" or "))
    };
    Err(Error::Memory(format!(
        "{} needs about {} to load and run ({}), but {} is {}. {advice}. If the estimate is wrong for this \
         machine, set the limit with --memory-limit GB",
        estimate.model,
        gb(need),
        estimate.summary(),
        gb(have),
        source,
    )))
}

/// The device side: weights, caches and work against the GPU's memory. What would fit: half
/// precision on the GPU, or the CPU with a quantization (against host RAM).
fn check_device(estimate: &Estimate, device: &str, budget: Budget) -> Result<()> {
    let Some((have, source)) = budget.device.describe(device) else { return Ok(()) };
    let need = estimate.total();
    if need <= have {
        return Ok(());
    }
    let mut options = Vec::new();
    if estimate.linear_dtype == DType::F32 && !estimate.linears.is_empty() {
        let half = estimate.total_with(None, DType::BF16);
        let fits = if half <= have { ", fits" } else { "" };
        options.push(format!("--dtype bf16 or f16 ({} on {device}{fits})", gb(half)));
    }
    options.extend(quantized_options(&Estimate { quantize: None, ..estimate.clone() }, budget.host, "--device cpu "));
    let advice = if options.is_empty() {
        format!("Use a smaller model or free memory on {device}")
    } else {
        format!("Load it with {}, use a smaller model or free memory on {device}", options.join(" or "))
    };
    Err(Error::Memory(format!(
        "{} needs about {} on {device} to load and run ({}), but {} is {}. {advice}. If the estimate is wrong \
         for this device, set its limit with --device-memory-limit GB",
        estimate.model,
        gb(need),
        estimate.summary(),
        gb(have),
        source,
    )))
}

/// The host side of a model on a GPU: the mapped pages of the tensor being copied over and the
/// fixed margin.
fn check_host_beside(estimate: &Estimate, device: &str, host: Available) -> Result<()> {
    let Some((have, source)) = host.describe("cpu") else { return Ok(()) };
    let need = estimate.host_bytes();
    if need <= have {
        return Ok(());
    }
    Err(Error::Memory(format!(
        "{} needs about {} of host RAM beside {device}'s memory (its largest tensor, {}, read while it is copied \
         over; 256 MiB + {MARGIN_PERCENT} %), but {} is {}. Free memory. If the estimate is wrong for this machine, \
         set the limit with --memory-limit GB",
        estimate.model,
        gb(need),
        gb(estimate.largest_tensor_bytes),
        gb(have),
        source,
    )))
}

/// [`check`] against what the host and `device` have now (or the limits set).
pub fn guard(estimate: &Estimate, device: &Device) -> Result<()> {
    check(estimate, Budget::now(device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(mem_available(meminfo), Some(20_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn the_margin_is_256_mib_and_five_percent() {
        // One billion parameters, all in one linear layer of input width 256.
        let e = Estimate {
            model: "m".into(),
            parameters: 1_000_000_000,
            bytes_per_parameter: 4.0,
            half_parameters: 0,
            stored_half: None,
            linear_dtype: DType::F32,
            linears: vec![LinearShape { in_dim: 256, out_dim: 3_906_250, count: 1 }],
            tower_linears: Vec::new(),
            quantize: None,
            device: None,
            largest_tensor_bytes: 0,
            kv_tokens: 0,
            kv_f32_bytes: 0,
            inputs_f32_bytes: 0,
            activation_bytes: 0,
        };
        assert_eq!(e.total(), (4_000_000_000 + (256 << 20)) * 105 / 100);
        assert!(check(&e, Available::Limit(e.total())).is_ok());
        assert!(check(&e, Available::Unknown).is_ok());
        let msg = check(&e, Available::Limit(e.total() - 1)).unwrap_err().to_string();
        // q8_0: (1e9 x 34/32 bytes + 256 MiB) x 1.05; q4k: (1e9 x 144/256 bytes + 256 MiB) x 1.05.
        assert!(
            msg.contains("Load it with --quantize q8_0 (1.40 GB in all, fits) or --quantize q4k (0.87 GB"),
            "{msg}"
        );
        let q8 = e.clone().with_quantize(Some(Quantize::Q8_0));
        assert_eq!(q8.weight_bytes(), 1_062_500_000);
        assert_eq!(q8.quantized_layers(), (1, 0));
        // Asked q8_0 and still too big: only q4k is suggested.
        let msg = check(&q8, Available::Limit(1_000_000_000)).unwrap_err().to_string();
        assert!(msg.contains("--quantize q4k (0.87 GB in all, fits)") && !msg.contains("--quantize q8_0 ("), "{msg}");
        // A width no block divides: nothing is quantized, and no format is suggested.
        let narrow =
            Estimate { linears: vec![LinearShape { in_dim: 100, out_dim: 10_000_000, count: 1 }], ..e.clone() };
        let narrow = narrow.with_quantize(Some(Quantize::Q8_0));
        assert_eq!((narrow.weight_bytes(), narrow.quantized_layers()), (4_000_000_000, (0, 1)));
        let msg = check(&narrow, Available::Limit(1)).unwrap_err().to_string();
        assert!(!msg.contains("--quantize q") && msg.contains("Use a smaller model"), "{msg}");
    }

    #[test]
    fn on_a_gpu_the_device_holds_weights_caches_and_work_and_the_host_one_tensor() {
        // One billion parameters, all in one linear layer; a bf16 checkpoint whose largest
        // tensor is that layer (2 GB as stored).
        let e = Estimate {
            model: "m".into(),
            parameters: 1_000_000_000,
            bytes_per_parameter: 4.0,
            half_parameters: 0,
            stored_half: Some(DType::BF16),
            linear_dtype: DType::F32,
            linears: vec![LinearShape { in_dim: 256, out_dim: 3_906_250, count: 1 }],
            tower_linears: Vec::new(),
            quantize: None,
            device: None,
            largest_tensor_bytes: 2_000_000_000,
            kv_tokens: 0,
            kv_f32_bytes: 0,
            inputs_f32_bytes: 0,
            activation_bytes: 0,
        };
        let f32 = e.clone().on_device("cuda:0", Some(DType::F32));
        assert_eq!((f32.total(), f32.format().as_str()), (e.total(), "f32"));
        // The host keeps the largest tensor's pages while it is copied, and the margin.
        assert_eq!(f32.host_bytes(), (2_000_000_000 + (256 << 20)) * 105 / 100);
        assert_eq!(e.host_bytes(), e.total());
        let gpu = |device| Budget { host: Available::Limit(3_000_000_000), device };
        let msg = check(&f32, gpu(Available::DeviceFree(3_000_000_000))).unwrap_err().to_string();
        // bf16: (2e9 + 256 MiB) x 1.05 = 2.38 GB on the device; the CPU's q8_0 and q4k as in
        // the test above, against the host's 3 GB.
        for needed in [
            "m needs about 4.48 GB on cuda:0",
            "in all on cuda:0), but 3.00 GB is free on cuda:0 (cuMemGetInfo)",
            "Load it with --dtype bf16 or f16 (2.38 GB on cuda:0, fits) or --device cpu --quantize q8_0 (1.40 GB of \
             host RAM, fits) or --device cpu --quantize q4k (0.87 GB of host RAM, fits)",
            "--device-memory-limit GB",
        ] {
            assert!(msg.contains(needed), "`{needed}` missing from: {msg}");
        }
        let msg = check(&f32, gpu(Available::DeviceLimit(1))).unwrap_err().to_string();
        assert!(msg.contains("0.00 GB is the --device-memory-limit") && !msg.contains("2.38 GB on cuda:0, fits"));
        // `auto`: the checkpoint's bf16.
        let auto = e.clone().on_device("cuda:0", None);
        assert_eq!((auto.weight_bytes(), auto.format().as_str()), (2_000_000_000, "bf16 linear layers, the rest f32"));
        assert!(check(&auto, gpu(Available::WorkingSet(3_000_000_000))).is_ok());
        // Already half: no --dtype advice.
        let msg = check(&auto, gpu(Available::DeviceFree(1_000_000_000))).unwrap_err().to_string();
        assert!(!msg.contains("--dtype") && msg.contains("--device cpu --quantize q4k"), "{msg}");
        // The host side beside the GPU.
        let host = Budget { host: Available::Limit(2_000_000_000), device: Available::DeviceFree(10_000_000_000) };
        let msg = check(&auto, host).unwrap_err().to_string();
        assert!(msg.contains("needs about 2.38 GB of host RAM beside cuda:0's memory"), "{msg}");
        // What is not measured is not checked; the CPU ignores the device's budget.
        assert!(check(&f32, Available::Limit(3_000_000_000)).is_ok());
        assert!(check(&e, Budget { host: Available::Unknown, device: Available::DeviceLimit(1) }).is_ok());
    }

    #[test]
    fn a_run_keeps_two_kv_caches_and_the_layer_inputs_in_the_cache_dtype() {
        let e = Estimate {
            model: "m".into(),
            parameters: 300_000_000,
            bytes_per_parameter: 4.0,
            // The embedding table in bf16.
            half_parameters: 100_000_000,
            stored_half: None,
            linear_dtype: DType::F32,
            linears: vec![LinearShape { in_dim: 256, out_dim: 500_000, count: 1 }],
            tower_linears: Vec::new(),
            quantize: None,
            device: None,
            largest_tensor_bytes: 0,
            kv_tokens: 700,
            kv_f32_bytes: 100_000_000,
            inputs_f32_bytes: 60_000_000,
            activation_bytes: 10_000_000,
        };
        // f32: 200 M parameters x 4 + 100 M x 2; the caches in f32 (2 x 100 M + 60 M) + 10 M.
        assert_eq!(e.weight_bytes(), 1_000_000_000);
        assert_eq!(e.total(), (1_000_000_000 + 270_000_000 + (256 << 20)) * 105 / 100);
        // q4k: the linear at 144/256 bytes, the caches in f16.
        let q = e.with_quantize(Some(Quantize::Q4K));
        assert_eq!(q.weight_bytes(), 1_000_000_000 - 128_000_000 * 4 + 72_000_000);
        assert_eq!(q.kv_bytes(), 50_000_000);
        assert_eq!(q.total(), (q.weight_bytes() + 130_000_000 + 10_000_000 + (256 << 20)) * 105 / 100);
        assert!(q.summary().contains("(700 tokens, f16)"), "{}", q.summary());
    }
}
