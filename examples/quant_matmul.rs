//! Micro-benchmark of the quantized product (`QuantWeight`): candle's block kernel, the
//! dequantized-tile kernel and the f32 gemm of the unquantized layers on one random `[out, in]`
//! weight, alternating within each round so that all three see the same machine load. Prints
//! each kernel's median and its ratio to f32's (ratios are what to compare across runs).
//!
//! cargo run --release --example quant_matmul -- [ROWS,ROWS,...] [OUT] [IN] [ROUNDS]
//! (defaults: 1,4,8,16,64,600 4096 4096 3; `RAYON_NUM_THREADS` as for tokenlens)

use std::time::Instant;

use candle_core::{Device, Tensor};
use tokenlens::model::kernels::{self, View};
use tokenlens::model::quant::{QuantKernel, QuantWeight, Quantize};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rows: Vec<usize> = args
        .first()
        .map_or("1,4,8,16,64,600", String::as_str)
        .split(',')
        .map(|r| r.parse().expect("ROWS: comma-separated counts"))
        .collect();
    let arg = |i: usize, default: usize| args.get(i).map_or(default, |a| a.parse().expect("a count"));
    let (out, inp, rounds) = (arg(1, 4096), arg(2, 4096), arg(3, 3));
    let w = Tensor::randn(0f32, 1.0, (out, inp), &Device::Cpu).unwrap();
    let wf: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
    println!("[{out}, {inp}] weight, {} threads, {rounds} rounds; median ms, ratio to f32 gemm", kernels::threads());
    for q in Quantize::ALL {
        let qw = QuantWeight::quantize(&w, q).unwrap();
        for &m in &rows {
            let x: Vec<f32> =
                Tensor::randn(0f32, 1.0, (m, inp), &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let mut y = vec![0f32; m * out];
            let mut times = [vec![], vec![], vec![]];
            for _ in 0..rounds {
                for (k, t) in times.iter_mut().enumerate() {
                    let start = Instant::now();
                    match k {
                        0 => kernels::gemm(
                            &mut y,
                            out,
                            View::rows(&x, m, inp),
                            View::rows(&wf, out, inp).t(),
                            false,
                            kernels::threads(),
                        ),
                        1 => qw.matmul_with(QuantKernel::Blocks, &x, m, &mut y),
                        _ => qw.matmul_with(QuantKernel::Dequantized, &x, m, &mut y),
                    }
                    t.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            let [f32_ms, blocks, dequantized] = times.map(median);
            println!(
                "{q:>4} {m:>4} rows: f32 {f32_ms:9.2} ms | blocks {blocks:9.2} ms {:6.2}x | dequantized {dequantized:9.2} ms {:6.2}x | dequantized/blocks {:.3}",
                blocks / f32_ms,
                dequantized / f32_ms,
                dequantized / blocks
            );
        }
    }
}
