//! A quantized layer keeps its GGML blocks and nothing else: candle's `QMatMul` repacks q4k into
//! wider x86 tiles at its first product and keeps both (LLaVA-1.5-7B under q4k: 12.5 GB instead
//! of ~6). Measured as the growth of this process's anonymous resident memory across the first
//! product (one test in this file, so no other test allocates meanwhile). Linux only.

#![cfg(target_os = "linux")]

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use tokenlens::model::quant::{QuantWeight, Quantize};

/// `RssAnon` from /proc/self/status, in bytes.
fn rss_anon() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = status.lines().find_map(|l| l.strip_prefix("RssAnon:")).unwrap();
    kb.trim().trim_end_matches("kB").trim().parse::<i64>().unwrap() * 1024
}

/// How much resident memory the first product with `layer` leaves behind.
fn first_product_growth(layer: impl Fn(&Tensor) -> Tensor, x: &Tensor) -> i64 {
    let before = rss_anon();
    let y = layer(x);
    drop(y);
    rss_anon() - before
}

#[test]
fn a_quantized_layer_keeps_only_its_blocks() {
    let dev = Device::Cpu;
    // 4096 x 4096 (a LLaVA-7B attention projection): q4k blocks 9.4 MB; tiles would add 12.6 MB.
    let (o, i) = (4096, 4096);
    let w = Tensor::randn(0f32, 0.02, (o, i), &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 64, i), &dev).unwrap();
    // Start the thread pools and scratch buffers on another layer first.
    let warm = QuantWeight::quantize(&w.narrow(0, 0, 256).unwrap(), Quantize::Q4K).unwrap();
    warm.forward(&x).unwrap();
    let ours = QuantWeight::quantize(&w, Quantize::Q4K).unwrap();
    assert_eq!(ours.size_in_bytes(), o * i / 256 * 144);
    let grown = first_product_growth(|x| ours.forward(x).unwrap(), &x);
    // The output (1 MB) and the activations' q8 rows are freed or reused; pages the allocator
    // keeps are far below the tiles' 12.6 MB.
    assert!(grown < 6 << 20, "the first product kept {grown} bytes");
    // The same measurement sees candle's repacking where candle does it (x86 with AVX2 and FMA),
    // so it would see a return to QMatMul.
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        let theirs = QMatMul::from_qtensor(QTensor::quantize(&w, Quantize::Q4K.ggml()).unwrap()).unwrap();
        let grown = first_product_growth(|x| theirs.forward(x).unwrap(), &x);
        assert!(grown > 10 << 20, "candle's QMatMul kept only {grown} bytes: did it stop repacking?");
    }
}
