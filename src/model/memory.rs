//! The memory guard: before a model's weights are touched, estimate from its config alone the
//! memory it needs, compare with what is available, and refuse with a clear message, never an
//! out-of-memory kill halfway through a load.
//!
//! The estimate ([`Estimate`]): the parameter count from the config's shapes (vision tower,
//! projector or connector, decoder: embeddings, each layer's attention, MLP and norms, `lm_head`
//! unless tied; for encoders the tower, the class head and a CLIP/SigLIP text tower) times the
//! bytes each is kept in (f32: 4; the decoder's embedding table in the checkpoint's f16/bf16: 2,
//! unless tied to `lm_head`; with `--quantize`, the linear layers [`super::quant`] quantizes at
//! their format's bytes per weight); plus what one run of a VLM keeps, for [`decoder_tokens`]
//! (one image's tokens and [`TEXT_TOKENS`]): the KV cache twice (the full prefill's, kept for
//! resuming, and a reduced run's), the decoder's layer inputs (both in the cache dtype: f16
//! under `--quantize`, else f32), the tower's attention, keys and states of every layer (f32),
//! one decoder layer's attention and MLP at work; plus 256 MiB (the program, the tokenizer, the
//! allocator) and 5 %. Measured against it: LLaVA-1.5-7B's shapes under `--quantize q4k`
//! (README, Speed).
//!
//! Available: the `--memory-limit` given on the command line ([`set_limit`]), else
//! `MemAvailable` from `/proc/meminfo` (Linux). Where neither exists (other systems) the guard is
//! skipped: it can only refuse what it can measure.

use std::sync::atomic::{AtomicU64, Ordering};

use super::config::VitConfig;
use super::hf_config::{Class, resolve_section};
use super::llama::LlamaConfig;
use super::quant::{Quantize, TOWER_FORMAT};
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
    /// The dtype the weights are computed in.
    pub dtype: &'static str,
    /// The linear layers `--quantize` applies to (decoder, `lm_head` unless tied, projector).
    pub linears: Vec<LinearShape>,
    /// The vision tower's linear layers: [`TOWER_FORMAT`] under any quantization.
    pub tower_linears: Vec<LinearShape>,
    /// The quantization the weights are loaded with.
    pub quantize: Option<Quantize>,
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

    pub fn weight_bytes(&self) -> u64 {
        self.weights_with(self.quantize)
    }

    /// Weight bytes with the linear layers whose input width fits `quantize`'s blocks quantized.
    fn weights_with(&self, quantize: Option<Quantize>) -> u64 {
        let full = (self.parameters - self.half_parameters) as f64 * self.bytes_per_parameter;
        let all = full + self.half_parameters as f64 * 2.0;
        let saved = |linears: &[LinearShape], q: Quantize| -> f64 {
            let fit = linears.iter().filter(|l| q.fits(l.in_dim));
            fit.map(|l| l.weights() as f64 * (self.bytes_per_parameter - q.bytes_per_weight())).sum()
        };
        let saved = quantize.map_or(0.0, |q| saved(&self.linears, q) + saved(&self.tower_linears, TOWER_FORMAT));
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

    /// Linear layers quantized and kept f32 (input width not a multiple of the block) under the
    /// estimate's quantization; (0, 0) without one.
    pub fn quantized_layers(&self) -> (usize, usize) {
        let Some(q) = self.quantize else { return (0, 0) };
        let count = |fits: bool| self.linears.iter().filter(|l| q.fits(l.in_dim) == fits).map(|l| l.count).sum();
        (count(true), count(false))
    }

    /// "f32", or "q8_0 (161 of 161 linear layers; the rest f32)".
    pub fn format(&self) -> String {
        match self.quantize {
            None => self.dtype.to_string(),
            Some(q) => {
                let (quantized, kept) = self.quantized_layers();
                let tower: usize =
                    self.tower_linears.iter().filter(|l| TOWER_FORMAT.fits(l.in_dim)).map(|l| l.count).sum();
                let tower = if tower > 0 { format!(", the tower's {tower} {TOWER_FORMAT}") } else { String::new() };
                format!("{q}: {quantized} of {} linear layers{tower}, the rest {}", quantized + kept, self.dtype)
            }
        }
    }

    /// What a run keeps beside the weights: the KV cache twice (the full prefill's and a
    /// reduced run's) and the layer inputs in the cache dtype, the f32 activations.
    fn run_bytes(&self, quantize: Option<Quantize>) -> u64 {
        let cached = (2 * self.kv_f32_bytes + self.inputs_f32_bytes) / 4 * Self::cache_bytes(quantize);
        cached + self.activation_bytes
    }

    /// The whole estimate: weights, what a run keeps, margin.
    pub fn total(&self) -> u64 {
        self.total_with(self.quantize)
    }

    fn total_with(&self, quantize: Option<Quantize>) -> u64 {
        let base = self.weights_with(quantize) + self.run_bytes(quantize) + MARGIN_FIXED;
        base + base * MARGIN_PERCENT / 100
    }

    /// One line: "7.06 B parameters: weights 27.99 GB (f32), KV cache 0.74 GB (704 tokens, f32), …".
    pub fn summary(&self) -> String {
        let kv = if self.kv_tokens == 0 {
            String::new()
        } else {
            let dtype = if self.quantize.is_some() { "f16" } else { "f32" };
            format!(", KV cache {} ({} tokens, {dtype})", gb(self.kv_bytes()), self.kv_tokens)
        };
        format!(
            "{:.2} B parameters: weights {} ({}){kv}, a run's caches and work {}; with a 256 MiB + {MARGIN_PERCENT} % \
             margin, {} in all",
            self.parameters as f64 / 1e9,
            gb(self.weight_bytes()),
            self.format(),
            gb(self.run_bytes(self.quantize)),
            gb(self.total()),
        )
    }
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
/// tokens one image gives; `half_table`: the checkpoint stores f16/bf16 (the embedding table
/// stays in it unless tied).
pub fn vlm(
    model: &str,
    vision: &VitConfig,
    text: &LlamaConfig,
    projector: &[LinearShape],
    biases: u64,
    image_tokens: usize,
    half_table: bool,
) -> Estimate {
    let tokens = decoder_tokens(text, image_tokens);
    let mut linears = llama_linears(text);
    linears.extend_from_slice(projector);
    let projector = projector.iter().map(LinearShape::weights).sum::<u64>() + biases;
    let table = (text.vocab_size * text.hidden_size) as u64;
    let (d, i, l) = (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers);
    let shape = |in_dim, out_dim| LinearShape { in_dim, out_dim, count: l };
    Estimate {
        model: model.into(),
        parameters: vit_parameters(vision) + projector + llama_parameters(text),
        bytes_per_parameter: F32_BYTES,
        half_parameters: if half_table && !text.tie_word_embeddings { table } else { 0 },
        dtype: "f32",
        linears,
        // The fused QKV projection, the output projection, the MLP's two.
        tower_linears: vec![shape(d, 3 * d), shape(d, d), shape(d, i), shape(i, d)],
        quantize: None,
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
    Estimate {
        model: model.into(),
        parameters: vit_parameters(cfg) + head + text_tower_parameters(class, json, d),
        bytes_per_parameter: F32_BYTES,
        dtype: "f32",
        half_parameters: 0,
        linears: Vec::new(),
        tower_linears: Vec::new(),
        quantize: None,
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

/// Sets the memory the guard compares with for this process, in bytes, instead of
/// `MemAvailable` (the CLI's `--memory-limit`).
pub fn set_limit(bytes: u64) {
    LIMIT.store(bytes.max(1), Ordering::Relaxed);
}

/// What the guard compares an estimate with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Available {
    /// `--memory-limit`, in bytes.
    Limit(u64),
    /// `MemAvailable` from `/proc/meminfo`, in bytes.
    MemAvailable(u64),
    /// Neither: the guard is skipped.
    Unknown,
}

impl Available {
    /// The `--memory-limit` if one was set, else `MemAvailable`.
    pub fn now() -> Self {
        match LIMIT.load(Ordering::Relaxed) {
            0 => std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| mem_available(&m))
                .map_or(Self::Unknown, Self::MemAvailable),
            limit => Self::Limit(limit),
        }
    }
}

/// `MemAvailable` (kB) in a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses `estimate` if it does not fit in `available`, saying what it needs, what there is and
/// what would make it fit.
pub fn check(estimate: &Estimate, available: Available) -> Result<()> {
    let (have, source) = match available {
        Available::Limit(b) => (b, "the --memory-limit"),
        Available::MemAvailable(b) => (b, "available (MemAvailable)"),
        Available::Unknown => return Ok(()),
    };
    let need = estimate.total();
    if need <= have {
        return Ok(());
    }
    // Smaller formats than the one asked, with what they would need.
    let smaller: Vec<String> = Quantize::ALL
        .into_iter()
        .filter(|&q| estimate.quantize.is_none_or(|asked| q.bytes_per_weight() < asked.bytes_per_weight()))
        .filter(|&q| estimate.linears.iter().any(|l| q.fits(l.in_dim)))
        .map(|q| {
            let fits = if estimate.total_with(Some(q)) <= have { ", fits" } else { "" };
            format!("--quantize {q} ({} in all{fits})", gb(estimate.total_with(Some(q))))
        })
        .collect();
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

/// [`check`] against what is available now.
pub fn guard(estimate: &Estimate) -> Result<()> {
    check(estimate, Available::now())
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
            dtype: "f32",
            linears: vec![LinearShape { in_dim: 256, out_dim: 3_906_250, count: 1 }],
            tower_linears: Vec::new(),
            quantize: None,
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
    fn a_run_keeps_two_kv_caches_and_the_layer_inputs_in_the_cache_dtype() {
        let e = Estimate {
            model: "m".into(),
            parameters: 300_000_000,
            bytes_per_parameter: 4.0,
            // The embedding table in bf16.
            half_parameters: 100_000_000,
            dtype: "f32",
            linears: vec![LinearShape { in_dim: 256, out_dim: 500_000, count: 1 }],
            tower_linears: Vec::new(),
            quantize: None,
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
