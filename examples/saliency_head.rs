//! The img-focus saliency head alone (`SaliencyDecoder::forward`) on random weights and features
//! of DINOv2-S's shapes (384 wide, 16 x 16 patches, 224 px out): a small target for `perf record`
//! and for timing head changes without the backbone. Prints the median and quartiles of the
//! calls (compare two builds by alternating them, not by bare milliseconds across runs).
//!
//! cargo run --release --example saliency_head -- [CALLS] (default 200; `RAYON_NUM_THREADS` as
//! for tokenlens)

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenlens::model::SaliencyDecoder;

fn main() {
    let calls: usize = std::env::args().nth(1).map_or(200, |a| a.parse().expect("CALLS: a count"));
    let (dim, grid, size) = (384, 16, 224);
    let dev = Device::Cpu;
    let randn = |shape: &[usize], std: f32| Tensor::randn(0f32, std, shape, &dev).unwrap();
    let mut weights = HashMap::new();
    for (i, (c_in, c_out)) in [(dim, 256), (256, 128), (128, 64)].into_iter().enumerate() {
        let n = i + 1;
        weights.insert(format!("upconv{n}.weight"), randn(&[c_in, c_out, 4, 4], (1.0 / c_in as f32).sqrt()));
        weights.insert(format!("upconv{n}.bias"), randn(&[c_out], 0.1));
        weights.insert(format!("bn{n}.weight"), randn(&[c_out], 1.0));
        weights.insert(format!("bn{n}.bias"), randn(&[c_out], 0.1));
        weights.insert(format!("bn{n}.running_mean"), randn(&[c_out], 0.1));
        weights.insert(format!("bn{n}.running_var"), (randn(&[c_out], 1.0).abs().unwrap() + 0.5).unwrap());
    }
    weights.insert("final_conv.weight".into(), randn(&[1, 64, 1, 1], 0.1));
    weights.insert("final_conv.bias".into(), randn(&[1], 0.1));
    let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
    let head = SaliencyDecoder::new(dim, size, vb).expect("the head's weights");
    let features = randn(&[1, grid * grid, dim], 1.0);

    let mut ms = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        let map = head.forward(&features, (grid, grid)).expect("a forward pass");
        ms.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(map.dims(), [1, 1, size, size]);
    }
    ms.sort_by(f64::total_cmp);
    let q = |f: f64| ms[((ms.len() - 1) as f64 * f) as usize];
    println!("saliency head, {calls} calls: median {:.2} ms (quartiles {:.2}-{:.2})", q(0.5), q(0.25), q(0.75));
}
