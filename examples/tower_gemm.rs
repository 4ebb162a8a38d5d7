//! The SigLIP tower's matrix products alone (SmolVLM-256M's shapes: 1,024 patches, width 768,
//! MLP 3,072, 12 heads of 64, 12 layers), each timed through `kernels::gemm` as the fused blocks
//! call it, on random data: what the tower's GEMMs cost with nothing around them. Prints each
//! product's median GFLOP/s and the sum over one tower call, to set beside
//! `tokenlens bench --part tower` run right after (both see the same machine).
//!
//! cargo run --release --example tower_gemm -- [CALLS] (default 20; `RAYON_NUM_THREADS` as for
//! tokenlens)

use std::time::Instant;

use tokenlens::model::kernels::{self, View};

const PATCHES: usize = 1024;
const WIDTH: usize = 768;
const MLP: usize = 3072;
const HEADS: usize = 12;
const HEAD_DIM: usize = 64;
const LAYERS: usize = 12;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Deterministic values in [-0.5, 0.5) (the rate does not depend on them).
fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 2_654_435_761 + seed) % 1000) as f32 / 1000.0 - 0.5).collect()
}

fn main() {
    let calls: usize = std::env::args().nth(1).map_or(20, |a| a.parse().expect("CALLS: a count"));
    let threads = kernels::threads();
    println!("{threads} threads, {calls} calls each; median over the calls");
    let x = values(PATCHES * MLP, 1); // a layer's input (or fc2's: the MLP's hidden states)
    let qkv = values(PATCHES * 3 * WIDTH, 2); // the fused projection's output, heads read in place
    let probs = values(PATCHES * PATCHES, 3);
    let weight = |out: usize, inp: usize| values(out * inp, out + inp);
    let (w_qkv, w_out, w_fc1, w_fc2) =
        (weight(3 * WIDTH, WIDTH), weight(WIDTH, WIDTH), weight(MLP, WIDTH), weight(WIDTH, MLP));
    // A head's queries, keys or values: `[PATCHES, HEAD_DIM]` columns of the
    // `[PATCHES, 3 · WIDTH]` rows.
    let part = |p: usize| View::new(&qkv[p * WIDTH..], PATCHES, HEAD_DIM, 3 * WIDTH, 1);
    // Dense layers read the checkpoint's `[out, in]` weight transposed, as `Dense` does, on every
    // thread; each head's two attention products run single-threaded, the heads spread over the
    // threads (a layer costs HEADS / threads of them in sequence), as `Attention::heads` does.
    let per_head = HEADS as f64 / threads as f64;
    let products: [(&str, View, View, usize, f64); 6] = [
        ("qkv", View::rows(&x, PATCHES, WIDTH), View::rows(&w_qkv, 3 * WIDTH, WIDTH).t(), threads, 1.0),
        ("out", View::rows(&x, PATCHES, WIDTH), View::rows(&w_out, WIDTH, WIDTH).t(), threads, 1.0),
        ("fc1", View::rows(&x, PATCHES, WIDTH), View::rows(&w_fc1, MLP, WIDTH).t(), threads, 1.0),
        ("fc2", View::rows(&x, PATCHES, MLP), View::rows(&w_fc2, WIDTH, MLP).t(), threads, 1.0),
        ("q·kᵀ, one head", part(0), part(1).t(), 1, per_head),
        ("p·v, one head", View::rows(&probs, PATCHES, PATCHES), part(2), 1, per_head),
    ];
    let mut tower_ms = 0.0;
    for (name, a, b, t, per_layer) in products {
        let ((m, k), (_, n)) = (a.shape(), b.shape());
        let mut y = vec![0f32; m * n];
        kernels::gemm(&mut y, n, a, b, false, t); // warm-up
        let ms = median(
            (0..calls)
                .map(|_| {
                    let start = Instant::now();
                    kernels::gemm(&mut y, n, a, b, false, t);
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect(),
        );
        let gflops = 2.0 * (m * k * n) as f64 / ms / 1e6;
        println!("{name:>15}: [{m}, {k}] x [{k}, {n}], {t} thread(s): {ms:7.2} ms, {gflops:5.0} GFLOP/s");
        tower_ms += ms * per_layer * LAYERS as f64;
    }
    println!("the blocks' products in one tower call at these rates: {tower_ms:.0} ms");
}
