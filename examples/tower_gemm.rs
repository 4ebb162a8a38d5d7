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
    // Dense weights as `Dense` stores them: transposed, `[in, out]`.
    let weight = |out: usize, inp: usize| values(out * inp, out + inp);
    let (w_qkv, w_out, w_fc1, w_fc2) =
        (weight(3 * WIDTH, WIDTH), weight(WIDTH, WIDTH), weight(MLP, WIDTH), weight(WIDTH, MLP));
    // A head's queries, keys or values: `[PATCHES, HEAD_DIM]` columns of the
    // `[PATCHES, 3 · WIDTH]` rows.
    let part = |p: usize| View::new(&qkv[p * WIDTH..], PATCHES, HEAD_DIM, 3 * WIDTH, 1);
    // Dense layers read the `[in, out]` weight as it is, as `Dense` does, on every thread; each
    // head's two attention products run single-threaded, the heads spread over the
    // threads (a layer costs HEADS / threads of them in sequence), as `Attention::heads` does.
    let per_head = HEADS as f64 / threads as f64;
    let peak_before = fma_peak(threads);
    let products: [(&str, View, View, usize, f64); 6] = [
        ("qkv", View::rows(&x, PATCHES, WIDTH), View::rows(&w_qkv, WIDTH, 3 * WIDTH), threads, 1.0),
        ("out", View::rows(&x, PATCHES, WIDTH), View::rows(&w_out, WIDTH, WIDTH), threads, 1.0),
        ("fc1", View::rows(&x, PATCHES, WIDTH), View::rows(&w_fc1, WIDTH, MLP), threads, 1.0),
        ("fc2", View::rows(&x, PATCHES, MLP), View::rows(&w_fc2, MLP, WIDTH), threads, 1.0),
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
        // The peak on the product's own thread count: one core's chains times `t`.
        let share = peak_before
            .map_or(String::new(), |p| format!(", {:3.0} % of the FMA rate", 100.0 * gflops / (p * t as f64)));
        println!("{name:>15}: [{m}, {k}] x [{k}, {n}], {t} thread(s): {ms:7.2} ms, {gflops:5.0} GFLOP/s{share}");
        tower_ms += ms * per_layer * LAYERS as f64;
    }
    println!("the blocks' products in one tower call at these rates: {tower_ms:.0} ms");
    if let (Some(before), Some(after)) = (peak_before, fma_peak(threads)) {
        println!(
            "FMA rate, every thread at once: {:.0} GFLOP/s a thread before the products, {:.0} after",
            before, after
        );
    }
}

/// The f32 FMA rate per thread in GFLOP/s, `threads` threads running at once (they share the
/// machine as a product's threads do); `None` without FMA.
fn fma_peak(threads: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        let rates: Vec<f64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        const STEPS: usize = 50_000_000;
                        let start = Instant::now();
                        // SAFETY: FMA (and so AVX) was detected above.
                        std::hint::black_box(unsafe { fma_chains(STEPS) });
                        (STEPS * FMA_CHAINS * 16) as f64 / start.elapsed().as_secs_f64() / 1e9
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("FMA thread")).collect()
        });
        return Some(rates.iter().sum::<f64>() / threads as f64);
    }
    let _ = threads;
    None
}

/// Independent 8-lane multiply-add chains: enough to cover the FMA latency on both of a core's
/// FMA pipes (4 cycles x 2 needs 8), so the loop runs at the issue rate.
#[cfg(target_arch = "x86_64")]
const FMA_CHAINS: usize = 12;

/// `steps` rounds of one FMA on each chain; the sum keeps them from being optimised away.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,fma")]
unsafe fn fma_chains(steps: usize) -> f32 {
    use std::arch::x86_64::*;
    let (b, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-6));
    // Opaque starting values, so the compiler cannot merge or fold any chain.
    let mut acc = [_mm256_setzero_ps(); FMA_CHAINS];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = _mm256_set1_ps(std::hint::black_box(i as f32));
    }
    for _ in 0..steps {
        for a in &mut acc {
            *a = _mm256_fmadd_ps(*a, b, c);
        }
    }
    let mut lanes = [0f32; 8];
    let sum = acc.iter().fold(_mm256_setzero_ps(), |s, a| _mm256_add_ps(s, *a));
    // SAFETY: `lanes` holds 8 f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}
