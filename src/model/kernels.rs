//! CPU kernels for the encoder's hot path (and the decoder's element-wise steps): a strided GEMM (the `gemm` crate, as candle uses)
//! and the element-wise work around it (softmax, exact and tanh GELU, LayerNorm, bias and residual
//! epilogues) fused into single passes, with AVX2+FMA versions picked at run time.
//!
//! # Design
//! Question: the matmuls of a DINOv2-S forward are a third of candle's time; the rest is
//! element-wise passes, copies for transposes, fresh allocations and scalar `erf`/`exp`.
//! Decision: a block runs on plain `f32` slices. Heads are read in place from the fused QKV
//! output through strides (no transposes), each element-wise step is one pass fused into the
//! step before it, and `exp`/`erf`/tanh-GELU are vectorised (8 lanes).
//! Trade-off: f32 on the CPU only. On a GPU (and on the CPU when [`set_fused`] turns them off,
//! which is how the tests check that path here) the models run the same steps as candle
//! tensor ops instead ([`fused`] decides).

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Storage, Tensor};
use rayon::prelude::*;

use crate::{Error, Result};

/// A strided read-only matrix: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// Panics if the last element lies outside `data` (a programming error, not an input error).
    pub fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        if rows > 0 && cols > 0 {
            assert!((rows - 1) * rs + (cols - 1) * cs < data.len(), "matrix view out of bounds");
        }
        Self { data, rows, cols, rs, cs }
    }

    /// A row-major `[rows, cols]` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The transpose (a different reading of the same memory).
    pub fn t(self) -> Self {
        Self { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    /// Rows `start..start + len` (a shorter window on the same memory).
    pub fn row_range(self, start: usize, len: usize) -> Self {
        assert!(start + len <= self.rows, "matrix view rows out of bounds");
        if len == 0 {
            return Self { rows: 0, ..self };
        }
        Self { data: &self.data[start * self.rs..], rows: len, ..self }
    }

    /// Columns `start..start + len` (a narrower window on the same memory).
    pub fn columns(self, start: usize, len: usize) -> Self {
        assert!(start + len <= self.cols, "matrix view columns out of bounds");
        if len == 0 {
            return Self { cols: 0, ..self };
        }
        Self { data: &self.data[start * self.cs..], cols: len, ..self }
    }
}

/// `dst[i * dst_rs + j] (+)= Σ_k a[i, k] · b[k, j]`; accumulates into `dst` when `accumulate`.
/// `threads > 1` splits the output columns over the rayon pool (see [`COLUMN_BLOCK`]), the rows
/// of a matrix-vector product (see [`GEMV_ROWS`]), or else lets gemm split the work. Every split
/// gives the same bits: each output's sum runs over `k` in the same order.
pub fn gemm(dst: &mut [f32], dst_rs: usize, a: View<'_>, b: View<'_>, accumulate: bool, threads: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "gemm: inner dimensions differ");
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_rs >= n && (m - 1) * dst_rs + n <= dst.len(), "gemm: destination out of bounds");
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY (every call below): the blocks' rows or columns are disjoint, and each lies inside
    // `dst` (asserted above for the whole product), which is borrowed mutably, so it aliases
    // neither input.
    let out = SendPtr(dst.as_mut_ptr());
    if threads > 1 && n == 1 && m >= GEMV_ROWS * threads {
        // gemm computes a matrix-vector product on one thread, whatever it is given.
        in_blocks(m, m.div_ceil(threads), |first, rows| unsafe {
            gemm_raw(out.add(first * dst_rs), dst_rs, a.row_range(first, rows), b, accumulate, 1)
        });
    } else if threads > 1 && n >= COLUMN_BLOCK * threads {
        in_blocks(n, n.div_ceil(threads).next_multiple_of(16), |first, cols| unsafe {
            gemm_raw(out.add(first), dst_rs, a, b.columns(first, cols), accumulate, 1)
        });
    } else {
        unsafe { gemm_raw(out.0, dst_rs, a, b, accumulate, threads) }
    }
}

/// `f(first, len)` on each block of `block` out of `total`, the blocks in parallel.
fn in_blocks(total: usize, block: usize, f: impl Fn(usize, usize) + Sync) {
    (0..total.div_ceil(block)).into_par_iter().for_each(|i| {
        let first = i * block;
        f(first, block.min(total - first));
    });
}

/// The fewest output columns per thread for which [`gemm`] gives each thread its own columns
/// (the full depth, one gemm call without threads each) instead of letting gemm share the work.
/// gemm's own split meets the threads at a barrier for every block of the depth (512 here) and after
/// packing each block; column blocks meet once. Measured on 2 threads, alternating in one
/// process: the SigLIP tower (1,024 tokens, 768 wide) 0.96–0.99× its time, the DINOv2-S encoder
/// 0.98×, the 256M decoder's 128-token prefill 0.87–0.96×, decode unchanged. On many cores a
/// narrow product keeps gemm's split, which also divides the rows.
const COLUMN_BLOCK: usize = 128;

/// The fewest rows per thread for which [`gemm`] splits a matrix-vector product (one output
/// column) between the threads, each block one gemm call: gemm runs such a product on one thread
/// whatever it is given. The decoder's one-token steps are these (its transposed products):
/// memory-bound, yet 64 decode steps took 0.93× the time of one thread's (four alternating runs
/// on SmolVLM-256M's shapes).
const GEMV_ROWS: usize = 64;

/// A destination handed to the pool's threads, each writing its own rows or columns.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the threads that share one write disjoint elements (see `gemm`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// SAFETY: as `pointer::add`. (A method, so closures capture the wrapper, not its pointer.)
    unsafe fn add(self, count: usize) -> *mut f32 {
        unsafe { self.0.add(count) }
    }
}

/// One gemm call; `threads > 1` lets gemm split the work over the pool.
/// SAFETY: `dst` must hold `a.rows` rows of stride `dst_rs` and `b.cols` columns that nothing
/// else reads or writes during the call.
unsafe fn gemm_raw(dst: *mut f32, dst_rs: usize, a: View<'_>, b: View<'_>, accumulate: bool, threads: usize) {
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// The threads the heavy kernels use: candle's own count (`RAYON_NUM_THREADS`, else the
/// physical cores), asked once (without the variable, candle reads /proc/cpuinfo per call).
pub fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(candle_core::utils::get_num_threads)
}

/// Runs `f` on a thread of rayon's pool (directly when already on one). Called from any other
/// thread (the CLI's main thread, the app's worker), that thread would be a third beside the
/// pool's two: it runs the steps between parallel regions while the pool's threads spin and
/// yield, and each region must wake it again. On a pool thread the steps between run where the
/// next region starts, and that thread takes its share of it.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match rayon::current_thread_index() {
        Some(_) => f(),
        None => rayon::scope(|_| f()),
    }
}

static FUSED: AtomicBool = AtomicBool::new(true);

/// Whether models on `device` run these fused CPU kernels (the CPU, unless [`set_fused`] turned
/// them off) or candle's tensor ops (every other device). Decided when a model is built.
pub fn fused(device: &Device) -> bool {
    device.is_cpu() && FUSED.load(Ordering::Relaxed)
}

/// Turns the fused CPU kernels off (or on again) for models built afterwards in this process:
/// the CPU then runs the tensor-op path a GPU runs, so tests check that path on machines without
/// one. Not for users: the fused kernels are the fast path.
#[doc(hidden)]
pub fn set_fused(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}

/// The contiguous `f32` values of a CPU tensor, without copying when it is contiguous.
pub fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(Error::Config { field: "device", reason: "the encoder kernels run on the CPU only".into() });
    };
    let values = cpu.as_slice::<f32>()?;
    let (start, end) = layout.contiguous_offsets().expect("contiguous after .contiguous()");
    f(&values[start..end])
}

/// Runs `f` on a scratch buffer of `len` values from this thread's pool, so the temporaries of
/// every block reuse memory instead of faulting in fresh pages. The contents are unspecified
/// (whatever the last user left): callers overwrite before reading.
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut buf = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    POOL.with(|p| p.borrow_mut().push(buf));
    r
}

/// `m` (`rows × cols`, row-major) transposed, `cols × rows`: a dense layer's weight, once at
/// load. Each task fills a band of [`TILE`] output rows a square tile at a time through a buffer
/// on the stack, so every write is a run of [`TILE`] values (written one value at a time, the
/// band's rows, a power of two apart, would evict each other from L1).
pub fn transposed(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    assert_eq!(m.len(), rows * cols, "transposed: {} values are not {rows} x {cols}", m.len());
    let mut t = vec![0f32; m.len()];
    if rows == 0 {
        return t;
    }
    t.par_chunks_mut(TILE * rows).enumerate().for_each(|(b, band)| {
        let (first, width) = (b * TILE, band.len() / rows);
        let mut tile = [[0f32; TILE]; TILE];
        for r0 in (0..rows).step_by(TILE) {
            let height = TILE.min(rows - r0);
            for (j, row) in m[r0 * cols..].chunks(cols).take(height).enumerate() {
                for (i, &v) in row[first..first + width].iter().enumerate() {
                    tile[i][j] = v;
                }
            }
            for (i, out) in band.chunks_mut(rows).enumerate() {
                out[r0..r0 + height].copy_from_slice(&tile[i][..height]);
            }
        }
    });
    t
}

/// Rows per rayon task for an element-wise pass over rows of `width` values: enough work per
/// task (~16k values) that scheduling costs little.
fn rows_per_task(width: usize) -> usize {
    (16_384 / width.max(1)).max(1)
}

/// LayerNorm of each row of `x` (`[rows, d]`) into `out`: `(x - mean) / sqrt(var + eps) · w + b`.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    let chunk = rows_per_task(d).next_multiple_of(NORM_ROWS) * d;
    out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(out, x)| {
        for (out, x) in out.chunks_mut(NORM_ROWS * d).zip(x.chunks(NORM_ROWS * d)) {
            if x.len() == NORM_ROWS * d {
                layer_norm_rows::<NORM_ROWS>(x, w, b, eps, out);
            } else {
                for (out, x) in out.chunks_mut(d).zip(x.chunks(d)) {
                    layer_norm_rows::<1>(x, w, b, eps, out);
                }
            }
        }
    });
}

/// Rows whose LayerNorm sums run side by side.
const NORM_ROWS: usize = 8;

/// [`layer_norm`] of exactly `R` rows, their sums side by side. Each row's sum is still one
/// accumulator in order from -0.0, as `Iterator::sum` adds: the statistics stay what they were,
/// and figures re-made from older sidecars still match byte for byte (summed in lanes they moved
/// by an ulp). Interleaved, the rows' additions no longer leave the core waiting one add latency
/// per value.
#[inline(always)]
fn layer_norm_rows<const R: usize>(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    let sums = |f: &dyn Fn(usize, f32) -> f32| {
        let mut sums = [-0.0f32; R];
        for j in 0..d {
            for (r, s) in sums.iter_mut().enumerate() {
                *s += f(r, x[r * d + j]);
            }
        }
        sums.map(|s| s / d as f32)
    };
    let mean = sums(&|_, v| v);
    let var = sums(&|r, v| (v - mean[r]) * (v - mean[r]));
    for (r, (o, x)) in out.chunks_mut(d).zip(x.chunks(d)).enumerate() {
        let inv = 1.0 / (var[r] + eps).sqrt();
        for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
            *o = (x - mean[r]) * inv * w + b;
        }
    }
}

/// `x[r, c] += bias[c]` for each row, then the activation, in one pass.
pub fn bias_activation(x: &mut [f32], bias: &[f32], act: Act) {
    let d = bias.len();
    x.par_chunks_mut(rows_per_task(d) * d).for_each(|x| {
        for row in x.chunks_mut(d) {
            for (v, &b) in row.iter_mut().zip(bias) {
                *v += b;
            }
            match act {
                Act::None => {}
                Act::GeluErf => gelu_erf(row),
                Act::GeluTanh => gelu_tanh(row),
                Act::QuickGelu => row.iter_mut().for_each(|v| *v /= 1.0 + (-1.702 * *v).exp()),
            }
        }
    });
}

/// The activation applied after a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    /// Exact GELU (erf).
    GeluErf,
    /// PyTorch's tanh approximation.
    GeluTanh,
    /// `x · sigmoid(1.702 x)`.
    QuickGelu,
}

// GELU, PyTorch's tanh approximation: `x/2 · (1 + tanh(y))` with `y = √(2/π) (x + 0.044715 x³)`,
// computed as `x / (1 + e^(-2y))` (the same function: 1 + tanh y = 2 / (1 + e^(-2y))), so the
// tanh is our vectorised exp and one division, with no cancellation near tanh = -1. Against the
// formula in f64 the error is below 3.6e-7 · max(|x|, 1) over [-10, 10]
// (`tests::gelu_tanh_error_bound`).
const GELU_TANH_C: f32 = 0.797_884_6; // √(2/π)
const GELU_TANH_C3: f32 = 0.035_677_41; // √(2/π) · 0.044715

fn gelu_tanh_scalar(x: f32) -> f32 {
    let y = x * (x * x).mul_add(GELU_TANH_C3, GELU_TANH_C);
    x / (1.0 + exp_scalar(-2.0 * y))
}

/// GELU (tanh approximation) in place.
fn gelu_tanh(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F (with AVX2 and FMA) was detected at run time.
        return unsafe { x86::gelu_tanh_avx512(x) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe { x86::gelu_tanh(x) };
    }
    x.iter_mut().for_each(|v| *v = gelu_tanh_scalar(*v));
}

/// The residual epilogue: `resid[r, c] + scale[c] · (branch[r, c] + bias[c])` into `branch`
/// (`scale` absent = 1).
pub fn residual(branch: &mut [f32], bias: &[f32], scale: Option<&[f32]>, resid: &[f32]) {
    let d = bias.len();
    let chunk = rows_per_task(d) * d;
    branch.par_chunks_mut(chunk).zip(resid.par_chunks(chunk)).for_each(|(br, re)| {
        for (row, re) in br.chunks_mut(d).zip(re.chunks(d)) {
            match scale {
                Some(s) => {
                    for (((v, &b), &s), &r) in row.iter_mut().zip(bias).zip(s).zip(re) {
                        *v = r + s * (*v + b);
                    }
                }
                None => {
                    for ((v, &b), &r) in row.iter_mut().zip(bias).zip(re) {
                        *v = r + (*v + b);
                    }
                }
            }
        }
    });
}

/// Passes over fewer values than this run on the calling thread: waking the pool costs more
/// than the pass (a decode step's rows).
const SERIAL_MAX: usize = 16_384;

/// `f` over matching chunks of `out`, `a` and `b` (`chunk` values each), on the pool when the
/// work is large enough.
fn par_zip(out: &mut [f32], a: &[f32], b: &[f32], chunk: usize, f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync) {
    if out.len() <= SERIAL_MAX {
        return f(out, a, b);
    }
    out.par_chunks_mut(chunk).zip(a.par_chunks(chunk)).zip(b.par_chunks(chunk)).for_each(|((o, a), b)| f(o, a, b));
}

/// RMSNorm of each row of `x` (`[rows, d]`) into `out`: `x / sqrt(mean(x²) + eps) · w`, the
/// statistics in f32 (LLaMA's `LlamaRMSNorm`).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    par_zip(out, x, x, rows_per_task(d) * d, |out, x, _| {
        for (o, x) in out.chunks_mut(d).zip(x.chunks(d)) {
            let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / d as f32 + eps).sqrt();
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                *o = w * (x * inv);
            }
        }
    });
}

/// `out = a + b` element-wise (a residual add).
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    par_zip(out, a, b, SERIAL_MAX, |out, a, b| {
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
    });
}

/// `out = silu(gate) · up` (the SwiGLU product), `silu(g) = g / (1 + e^-g)`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    par_zip(out, gate, up, SERIAL_MAX, |out, gate, up| {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: AVX2 and FMA were detected at run time.
            return unsafe { x86::silu_mul(gate, up, out) };
        }
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + exp_scalar(-g)) * u;
        }
    });
}

/// The rotary tables of [`split_heads`]: `cos` and `sin`, `[n, head_dim / 2]` each.
pub type RopeTables<'a> = (&'a [f32], &'a [f32]);

/// A projection's output rows `x` (`[n, heads · hd]`) -> `out` (`[heads, n, hd]`), rotated in
/// the same pass when `rope` is given (rotate-half layout, as LLaMA and candle's `rope`:
/// `(x₁, x₂) -> (x₁ cos - x₂ sin, x₁ sin + x₂ cos)`).
pub fn split_heads(x: &[f32], n: usize, heads: usize, hd: usize, rope: Option<RopeTables<'_>>, out: &mut [f32]) {
    split_heads_strided(x, (heads * hd, 1), n, heads, hd, rope, out);
}

/// [`split_heads`] of a strided input: value `c` of row `t` at `x[t · rs + c · cs]` (one part of a
/// joined projection's output, rows `rs` apart; or of its transpose, `cs` = the row count).
#[allow(clippy::too_many_arguments)]
pub fn split_heads_strided(
    x: &[f32],
    (rs, cs): (usize, usize),
    n: usize,
    heads: usize,
    hd: usize,
    rope: Option<RopeTables<'_>>,
    out: &mut [f32],
) {
    let half = hd / 2;
    let last = if n == 0 || heads * hd == 0 { 0 } else { (n - 1) * rs + (heads * hd - 1) * cs + 1 };
    assert!(x.len() >= last && out.len() >= n * heads * hd, "split_heads: buffers too small");
    if let Some((cos, sin)) = rope {
        assert!(hd.is_multiple_of(2) && cos.len() >= n * half && sin.len() >= n * half, "split_heads: rotary tables");
    }
    let head = |h: usize, out: &mut [f32]| {
        // A strided row is gathered here first.
        let mut gathered = vec![0f32; if cs == 1 { 0 } else { hd }];
        for (t, o) in out.chunks_mut(hd).enumerate() {
            let at = t * rs + h * hd * cs;
            let src: &[f32] = if cs == 1 {
                &x[at..][..hd]
            } else {
                gathered.iter_mut().enumerate().for_each(|(j, g)| *g = x[at + j * cs]);
                &gathered
            };
            let Some((cos, sin)) = rope else {
                o.copy_from_slice(src);
                continue;
            };
            let (c, s) = (&cos[t * half..][..half], &sin[t * half..][..half]);
            let (x1, x2) = src.split_at(half);
            let (o1, o2) = o.split_at_mut(half);
            for i in 0..half {
                o1[i] = x1[i] * c[i] - x2[i] * s[i];
                o2[i] = x1[i] * s[i] + x2[i] * c[i];
            }
        }
    };
    let out = &mut out[..n * heads * hd];
    if out.len() <= SERIAL_MAX {
        out.chunks_mut(n * hd).enumerate().for_each(|(h, o)| head(h, o));
    } else {
        out.par_chunks_mut(n * hd).enumerate().for_each(|(h, o)| head(h, o));
    }
}

/// Causal softmax of attention logits in place: `x` holds rows of `seen` logits, `n` query rows
/// per head, query `i` at slot `past + i` (it sees keys `0..=past + i`; later keys get 0, as
/// a `-inf` mask gives). Each row is scaled by `scale` first.
pub fn causal_softmax(x: &mut [f32], n: usize, seen: usize, past: usize, scale: f32) {
    assert!(past + n <= seen && x.len().is_multiple_of(n * seen), "causal_softmax: shape");
    let rows = |x: &mut [f32], first_row: usize| {
        for (r, row) in x.chunks_mut(seen).enumerate() {
            let visible = past + (first_row + r) % n + 1;
            let (row, masked) = row.split_at_mut(visible);
            row.iter_mut().for_each(|v| *v *= scale);
            softmax_row(row, None);
            masked.fill(0.0);
        }
    };
    let chunk = rows_per_task(seen) * seen;
    if x.len() <= SERIAL_MAX {
        rows(x, 0);
    } else {
        x.par_chunks_mut(chunk).enumerate().for_each(|(i, x)| rows(x, i * chunk / seen));
    }
}

/// Softmax of one row in place, after adding `bias` (when given) to the logits.
pub fn softmax_row(row: &mut [f32], bias: Option<&[f32]>) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F (with AVX2 and FMA) was detected at run time.
        return unsafe { x86::softmax_row_avx512(row, bias) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe { x86::softmax_row(row, bias) };
    }
    softmax_row_with(row, bias, exp_shifted_scalar);
}

/// [`softmax_row`]'s passes, `exp` doing the exponentials and their sum. Inlined into the AVX2
/// and AVX-512 entries, so the bias, max and scale passes are compiled at their widths (the
/// crate's baseline is SSE2, 4 wide): the same operation on each value, so the same results.
#[inline(always)]
fn softmax_row_with(row: &mut [f32], bias: Option<&[f32]>, exp: impl FnOnce(&mut [f32], f32) -> f32) {
    if let Some(bias) = bias {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
    let max = max_lanes(row);
    if max == f32::NEG_INFINITY {
        // Every key masked: PyTorch gives NaN; keep it visible rather than inventing weights.
        row.fill(f32::NAN);
        return;
    }
    let sum = exp(row, max);
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// The largest value of `x` (NaNs ignored, as `f32::max` does; `-inf` when empty), kept in 8
/// lanes so the compiler vectorises it: a float fold in one accumulator cannot be reordered, and
/// ran one value a cycle (1.5 % of the SigLIP tower).
#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    rest.iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `x = exp(x - shift)` over `x`, one value at a time; returns the sum of the results. The
/// portable path of [`softmax_row`] (its vector entries have their own).
fn exp_shifted_scalar(x: &mut [f32], shift: f32) -> f32 {
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = exp_scalar(*v - shift);
        sum += *v;
    }
    sum
}

/// Exact GELU in place: `x · (1 + erf(x / √2)) / 2`.
fn gelu_erf(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe { x86::gelu_erf(x) };
    }
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf_scalar(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// AVX-512F as well as AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    use std::sync::OnceLock;
    static AVX512: OnceLock<bool> = OnceLock::new();
    *AVX512.get_or_init(|| avx2() && is_x86_feature_detected!("avx512f"))
}

// exp: x = n·ln2 + r with |r| <= ln2/2 (ln2 split in two parts for an exact product), then
// e^r by its Taylor polynomial of degree 7 (truncation < 6e-9 relative, under half an f32 ulp)
// and 2^n through the exponent bits. Inputs below -87.3 give 0 (softmax's masked keys).
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_LO: f32 = -87.336_55;
const EXP_HI: f32 = 88.0;
/// Taylor coefficients from r⁷/7! down to 1, in Horner order.
const EXP_P: [f32; 8] = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];

fn exp_scalar(x: f32) -> f32 {
    if x < EXP_LO {
        return 0.0;
    }
    let x = x.min(EXP_HI);
    let n = (x * LOG2E).round();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = EXP_P[0];
    for c in &EXP_P[1..] {
        p = p.mul_add(r, *c);
    }
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

// erf: the split polynomials of Njuffa's faithfully-rounded erff (the algorithm and the
// coefficients onnxruntime's MLAS uses for Erf and Gelu): for |x| < 0.921875 an odd polynomial
// x + x·P(x²); above, 1 - exp(-(t + t·Q(t))) with t = |x| clamped at 3.925 (erf = 1 in f32
// beyond). With our exp, the error against f64 erf is below 2.4e-7 absolute over [-6, 6]
// (`tests::erf_error_bound`), under 2 f32 ulps of 1.
const ERF_SPLIT: f32 = 0.921_875;
const ERF_CLAMP: f32 = 3.925;
const ERF_SMALL: [f32; 6] =
    [-5.991_049_7e-4, 4.993_396e-3, -2.676_673_4e-2, 1.128_180_3e-1, -3.761_248_6e-1, 1.283_791_5e-1];
const ERF_BIG: [f32; 7] =
    [1.729_489_3e-5, -3.832_086_8e-4, 3.883_934_4e-3, -2.425_456e-2, 1.067_778_5e-1, 6.348_467e-1, 1.287_175_1e-1];

fn erf_scalar(x: f32) -> f32 {
    let t = x.abs();
    if t < ERF_SPLIT {
        let s = x * x;
        let p = ERF_SMALL[1..].iter().fold(ERF_SMALL[0], |p, &c| p.mul_add(s, c));
        return p.mul_add(x, x);
    }
    let t = t.min(ERF_CLAMP);
    let q = ERF_BIG[1..].iter().fold(ERF_BIG[0], |p, &c| p.mul_add(t, c));
    let r = 1.0 - exp_scalar(-q.mul_add(t, t));
    r.copysign(x)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let below = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_LO));
        let x = _mm256_min_ps(_mm256_set1_ps(EXP_HI), x); // NaN stays NaN
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(LOG2E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_P[0]);
        for c in &EXP_P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        // n in [-126, 128]: clamp to keep the exponent field valid (inputs below EXP_LO are
        // zeroed afterwards).
        let n = _mm256_max_ps(_mm256_set1_ps(-126.0), n);
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        let y = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
        _mm256_andnot_ps(below, y)
    }

    /// [`exp8`] on 16 values: the same operations, so the same results.
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn exp16(x: __m512) -> __m512 {
        let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(EXP_LO));
        let x = _mm512_min_ps(_mm512_set1_ps(EXP_HI), x); // NaN stays NaN
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(LOG2E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_P[0]);
        for c in &EXP_P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let n = _mm512_max_ps(_mm512_set1_ps(-126.0), n);
        let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
        let y = _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
        _mm512_maskz_mov_ps(!below, y)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn softmax_row_avx512(row: &mut [f32], bias: Option<&[f32]>) {
        softmax_row_with(row, bias, |x, shift| exp_shifted_avx512(x, shift));
    }

    /// [`exp_shifted`] 16 values a step. The sum takes each step's two halves in turn into the
    /// same 8-lane accumulator, so it adds what the AVX2 loop adds, in its order.
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn exp_shifted_avx512(x: &mut [f32], shift: f32) -> f32 {
        let s = _mm512_set1_ps(shift);
        let mut acc = _mm256_setzero_ps();
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            // SAFETY: `c` holds exactly 16 values.
            unsafe {
                let y = exp16(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), s));
                _mm512_storeu_ps(c.as_mut_ptr(), y);
                acc = _mm256_add_ps(acc, _mm512_castps512_ps256(y));
                acc = _mm256_add_ps(acc, _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(y))));
            }
        }
        finish_exp_sum(chunks.into_remainder(), shift, acc)
    }

    /// The last values of [`exp_shifted`]: 8 at a time into `acc`, then one at a time after
    /// the lanes are summed in order.
    #[target_feature(enable = "avx2,fma")]
    fn finish_exp_sum(x: &mut [f32], shift: f32, mut acc: __m256) -> f32 {
        let s = _mm256_set1_ps(shift);
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds exactly 8 values.
            unsafe {
                let y = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), s));
                _mm256_storeu_ps(c.as_mut_ptr(), y);
                acc = _mm256_add_ps(acc, y);
            }
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 values.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        let mut sum: f32 = lanes.iter().sum();
        for v in chunks.into_remainder() {
            *v = exp_scalar(*v - shift);
            sum += *v;
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn softmax_row(row: &mut [f32], bias: Option<&[f32]>) {
        softmax_row_with(row, bias, |x, shift| exp_shifted(x, shift));
    }

    #[target_feature(enable = "avx2,fma")]
    fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
        let s = _mm256_set1_ps(shift);
        let mut acc = _mm256_setzero_ps();
        // Four vectors a step, so the cores have independent exps to run while each one's long
        // chain of dependent FMAs completes. The sum still takes the vectors one after another
        // into one accumulator, so it is the same sum.
        let mut quads = x.chunks_exact_mut(32);
        for q in &mut quads {
            // SAFETY: `q` holds exactly 32 values.
            unsafe {
                let p = q.as_mut_ptr();
                let y = [0, 8, 16, 24].map(|i| exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), s)));
                for (i, y) in [0, 8, 16, 24].into_iter().zip(y) {
                    _mm256_storeu_ps(p.add(i), y);
                    acc = _mm256_add_ps(acc, y);
                }
            }
        }
        finish_exp_sum(quads.into_remainder(), shift, acc)
    }

    #[target_feature(enable = "avx2,fma")]
    fn erf8(x: __m256) -> __m256 {
        let sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0));
        let t = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
        // Small branch: x + x·P(x²).
        let s = _mm256_mul_ps(x, x);
        let mut p = _mm256_set1_ps(ERF_SMALL[0]);
        for c in &ERF_SMALL[1..] {
            p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(*c));
        }
        let small = _mm256_fmadd_ps(p, x, x);
        // Big branch: sign · (1 - exp(-(t + t·Q(t)))).
        let tc = _mm256_min_ps(t, _mm256_set1_ps(ERF_CLAMP));
        let mut q = _mm256_set1_ps(ERF_BIG[0]);
        for c in &ERF_BIG[1..] {
            q = _mm256_fmadd_ps(q, tc, _mm256_set1_ps(*c));
        }
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_fmadd_ps(q, tc, tc)));
        let big = _mm256_or_ps(_mm256_sub_ps(_mm256_set1_ps(1.0), e), sign);
        let is_small = _mm256_cmp_ps::<_CMP_LT_OQ>(t, _mm256_set1_ps(ERF_SPLIT));
        _mm256_blendv_ps(big, small, is_small)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn gelu_erf(x: &mut [f32]) {
        let half = _mm256_set1_ps(0.5);
        let inv_sqrt2 = _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2);
        let one = _mm256_set1_ps(1.0);
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds exactly 8 values.
            unsafe {
                let v = _mm256_loadu_ps(c.as_ptr());
                let e = erf8(_mm256_mul_ps(v, inv_sqrt2));
                _mm256_storeu_ps(c.as_mut_ptr(), _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, e)));
            }
        }
        for v in chunks.into_remainder() {
            *v = 0.5 * *v * (1.0 + erf_scalar(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let one = _mm256_set1_ps(1.0);
        let len = out.len().min(gate.len()).min(up.len());
        let body = len - len % 8;
        for i in (0..body).step_by(8) {
            // SAFETY: i + 8 <= len, within all three slices.
            unsafe {
                let g = _mm256_loadu_ps(gate.as_ptr().add(i));
                let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
                let y = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up.as_ptr().add(i)));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), y);
            }
        }
        for i in body..len {
            out[i] = gate[i] / (1.0 + exp_scalar(-gate[i])) * up[i];
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn gelu_tanh(x: &mut [f32]) {
        let (c, c3) = (_mm256_set1_ps(GELU_TANH_C), _mm256_set1_ps(GELU_TANH_C3));
        let (one, minus_two) = (_mm256_set1_ps(1.0), _mm256_set1_ps(-2.0));
        let mut chunks = x.chunks_exact_mut(8);
        for ch in &mut chunks {
            // SAFETY: `ch` holds exactly 8 values.
            unsafe {
                let v = _mm256_loadu_ps(ch.as_ptr());
                let y = _mm256_mul_ps(v, _mm256_fmadd_ps(_mm256_mul_ps(v, v), c3, c));
                let e = exp8(_mm256_mul_ps(minus_two, y));
                _mm256_storeu_ps(ch.as_mut_ptr(), _mm256_div_ps(v, _mm256_add_ps(one, e)));
            }
        }
        for v in chunks.into_remainder() {
            *v = gelu_tanh_scalar(*v);
        }
    }

    /// [`gelu_tanh`] 16 values a step, through [`exp16`]: the same operations, so the same
    /// results. The last values go the AVX2 way, as they did.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn gelu_tanh_avx512(x: &mut [f32]) {
        let (c, c3) = (_mm512_set1_ps(GELU_TANH_C), _mm512_set1_ps(GELU_TANH_C3));
        let (one, minus_two) = (_mm512_set1_ps(1.0), _mm512_set1_ps(-2.0));
        let mut chunks = x.chunks_exact_mut(16);
        for ch in &mut chunks {
            // SAFETY: `ch` holds exactly 16 values.
            unsafe {
                let v = _mm512_loadu_ps(ch.as_ptr());
                let y = _mm512_mul_ps(v, _mm512_fmadd_ps(_mm512_mul_ps(v, v), c3, c));
                let e = exp16(_mm512_mul_ps(minus_two, y));
                _mm512_storeu_ps(ch.as_mut_ptr(), _mm512_div_ps(v, _mm512_add_ps(one, e)));
            }
        }
        gelu_tanh(chunks.into_remainder());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference erf in f64 (Abramowitz-Stegun would be too coarse): the Taylor series near 0,
    /// the continued fraction of erfc beyond.
    fn erf64(x: f64) -> f64 {
        let t = x.abs();
        let r = if t < 2.5 {
            let (mut term, mut sum, mut n) = (t, t, 0.0);
            while term.abs() > 1e-18 {
                n += 1.0;
                term *= -t * t / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(t) = exp(-t²)/√π · 1/(t + 1/2/(t + 1/(t + 3/2/(t + ...)))).
            let mut f = t;
            for k in (1..60).rev() {
                f = t + (k as f64 / 2.0) / f;
            }
            1.0 - (-t * t).exp() / (std::f64::consts::PI.sqrt() * f)
        };
        r.copysign(x)
    }

    #[test]
    fn erf_error_bound() {
        let xs: Vec<f32> = (-600_000..=600_000).map(|i| i as f32 * 1e-5).collect();
        let mut gelu = xs.clone();
        gelu_erf(&mut gelu);
        let (mut worst_erf, mut worst_gelu) = (0f64, 0f64);
        for (&x, &g) in xs.iter().zip(&gelu) {
            let want = erf64(f64::from(x));
            worst_erf = worst_erf.max((f64::from(erf_scalar(x)) - want).abs());
            let want_gelu = 0.5 * f64::from(x) * (1.0 + erf64(f64::from(x) / std::f64::consts::SQRT_2));
            worst_gelu = worst_gelu.max((f64::from(g) - want_gelu).abs() / f64::from(x).abs().max(1.0));
        }
        assert!(worst_erf < 2.4e-7, "erf max abs error {worst_erf:e}");
        assert!(worst_gelu < 4e-7, "gelu max error {worst_gelu:e}");
    }

    #[test]
    fn gelu_tanh_error_bound() {
        // Every length from 0 to 8 past a multiple of 8 reaches the scalar tail too.
        let xs: Vec<f32> = (-1_000_003..=1_000_000).map(|i| i as f32 * 1e-5).collect();
        let mut got = xs.clone();
        gelu_tanh(&mut got);
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let mut worst = 0f64;
        for (&x, &g) in xs.iter().zip(&got) {
            let x64 = f64::from(x);
            let want = 0.5 * x64 * (1.0 + (c * (x64 + 0.044715 * x64 * x64 * x64)).tanh());
            let scale = x64.abs().max(1.0);
            worst = worst.max((f64::from(g) - want).abs() / scale);
            worst = worst.max((f64::from(gelu_tanh_scalar(x)) - want).abs() / scale);
        }
        assert!(worst < 3.6e-7, "gelu_tanh max error {worst:e}");
        // Far tails: 0 below (PyTorch's -0.0; ours a negative of magnitude below 1e-8, as e^(-2y)
        // saturates at e^88), x above.
        let mut edges = [-1e30, -100.0, 100.0, 1e30, f32::INFINITY, f32::NAN];
        gelu_tanh(&mut edges);
        assert!(edges[..2].iter().all(|v| *v <= 0.0 && v.abs() < 1e-8), "{edges:?}");
        assert_eq!(&edges[2..5], &[100.0, 1e30, f32::INFINITY]);
        assert!(edges[5].is_nan());
    }

    #[test]
    fn layer_norm_keeps_the_in_order_sums_bit_for_bit() {
        // The statistics as one in-order sum per row (what figures from older sidecars were made
        // with): rows side by side must give the same bits, a partial last group included.
        for (d, rows) in [(384, 13), (768, 21), (7, 9), (3, 1)] {
            let mut x: Vec<f32> = (0..rows * d).map(|i| ((i * 2_654_435_761) % 10_007) as f32 / 997.0 - 5.0).collect();
            // A row of negative zeros with a -0.0 bias: the sums' starting value shows in the
            // outputs' signs.
            x[..d].fill(-0.0);
            let w: Vec<f32> = (0..d).map(|i| 1.0 + i as f32 * 0.01).collect();
            let b: Vec<f32> = (0..d).map(|i| if i % 2 == 0 { -0.0 } else { -0.3 }).collect();
            let mut out = vec![0f32; rows * d];
            layer_norm(&x, &w, &b, 1e-6, &mut out);
            for (row, got) in x.chunks(d).zip(out.chunks(d)) {
                let mean = row.iter().sum::<f32>() / d as f32;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                let inv = 1.0 / (var + 1e-6f32).sqrt();
                for (((&g, &x), &w), &b) in got.iter().zip(row).zip(&w).zip(&b) {
                    assert_eq!(g.to_bits(), ((x - mean) * inv * w + b).to_bits(), "width {d}");
                }
            }
        }
    }

    /// The AVX-512 softmax and GELU give the AVX2 ones' bits (so a figure does not depend on
    /// which the machine runs), over lengths around both widths, with masked keys and a bias.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_kernels_give_the_avx2_bits() {
        if !avx512() {
            return; // nothing to compare on this machine
        }
        for len in [1, 7, 8, 9, 15, 16, 17, 24, 31, 33, 257, 1024, 1031] {
            for seed in 0..8 {
                let mut row: Vec<f32> =
                    (0..len).map(|i| ((i * 2_654_435_761 + seed * 97) % 10_007) as f32 / 500.0 - 10.0).collect();
                if seed % 3 == 1 {
                    row[len / 2] = f32::NEG_INFINITY;
                }
                let bias: Vec<f32> = (0..len).map(|i| if i % 3 == 0 { -1e9 } else { i as f32 * 0.01 }).collect();
                let bias = (seed % 2 == 0).then_some(&bias[..]);
                let (mut wide, mut narrow) = (row.clone(), row);
                // SAFETY: AVX-512F, AVX2 and FMA were detected.
                unsafe {
                    x86::softmax_row_avx512(&mut wide, bias);
                    x86::softmax_row(&mut narrow, bias);
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&wide), bits(&narrow), "softmax, length {len}, seed {seed}");
                let mut wide: Vec<f32> = (0..len).map(|i| (i as f32 - len as f32 / 2.0) * 0.37).collect();
                let mut narrow = wide.clone();
                // SAFETY: as above.
                unsafe {
                    x86::gelu_tanh_avx512(&mut wide);
                    x86::gelu_tanh(&mut narrow);
                }
                assert_eq!(bits(&wide), bits(&narrow), "GELU, length {len}");
            }
        }
    }

    #[test]
    fn transposed_matches_the_definition() {
        for (rows, cols) in [(37, 70), (1, 5), (5, 1), (64, 33), (3, 0), (0, 4)] {
            let m: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transposed(&m, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], m[r * cols + c], "{rows} x {cols} at ({r}, {c})");
                }
            }
        }
    }

    #[test]
    fn exp_and_softmax_match_f64() {
        let mut row: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 30.0).collect();
        let want: Vec<f64> = {
            let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        softmax_row(&mut row, None);
        for (g, w) in row.iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() <= 1e-6 * w.max(1e-30) + 1e-12, "{g} vs {w}");
        }
        for x in [-100.0f32, -87.0, -20.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 20.0, 80.0] {
            let rel = (f64::from(exp_scalar(x)) - f64::from(x).exp()).abs() / f64::from(x).exp();
            assert!(x < EXP_LO || rel < 3e-7, "exp({x}): relative error {rel:e}");
        }
    }

    #[test]
    fn decoder_kernels_match_their_formulas() {
        // Lengths past SERIAL_MAX reach the pooled path, odd ones the scalar tails.
        for len in [13, 40_003] {
            let a: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.37).sin() * 12.0).collect();
            let b: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.11).cos()).collect();
            let mut out = vec![0.0; len];
            silu_mul(&a, &b, &mut out);
            for ((&g, &u), &o) in a.iter().zip(&b).zip(&out) {
                let want = f64::from(g) / (1.0 + (-f64::from(g)).exp()) * f64::from(u);
                assert!((f64::from(o) - want).abs() <= 1e-6 * want.abs().max(1.0), "silu({g}) * {u}: {o} vs {want}");
            }
            add(&a, &b, &mut out);
            assert!(out.iter().zip(a.iter().zip(&b)).all(|(&o, (&a, &b))| o == a + b));
        }
        let d = 7;
        let x: Vec<f32> = (0..3 * d).map(|i| i as f32 * 0.5 - 4.0).collect();
        let w: Vec<f32> = (0..d).map(|i| 1.0 + i as f32 * 0.1).collect();
        let mut out = vec![0.0; x.len()];
        rms_norm(&x, &w, 1e-6, &mut out);
        for (o, x) in out.chunks(d).zip(x.chunks(d)) {
            let ms = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / d as f64;
            for i in 0..d {
                let want = f64::from(x[i]) / (ms + 1e-6).sqrt() * f64::from(w[i]);
                assert!((f64::from(o[i]) - want).abs() < 1e-5, "{} vs {want}", o[i]);
            }
        }
    }

    #[test]
    fn split_heads_rotates_and_causal_softmax_masks() {
        let (n, heads, hd) = (3, 2, 4);
        let x: Vec<f32> = (0..n * heads * hd).map(|i| i as f32).collect();
        let angles: Vec<f32> = (0..n * hd / 2).map(|i| i as f32 * 0.3).collect();
        let (cos, sin): (Vec<f32>, Vec<f32>) = angles.iter().map(|a| (a.cos(), a.sin())).unzip();
        let mut out = vec![0.0; x.len()];
        split_heads(&x, n, heads, hd, Some((&cos, &sin)), &mut out);
        for h in 0..heads {
            for t in 0..n {
                let src = &x[(t * heads + h) * hd..][..hd];
                let got = &out[(h * n + t) * hd..][..hd];
                for i in 0..hd / 2 {
                    let (c, s) = (cos[t * 2 + i], sin[t * 2 + i]);
                    assert!((got[i] - (src[i] * c - src[i + 2] * s)).abs() < 1e-5);
                    assert!((got[i + 2] - (src[i] * s + src[i + 2] * c)).abs() < 1e-5);
                }
            }
        }
        split_heads(&x, n, heads, hd, None, &mut out);
        assert_eq!(&out[n * hd..][..hd], &x[hd..2 * hd], "head 1, token 0");

        // Two heads, 2 query rows after 1 cached key: row i sees keys 0..=1 + i.
        let (n, seen, past) = (2, 3, 1);
        let mut logits: Vec<f32> = (0..2 * n * seen).map(|i| (i % 5) as f32).collect();
        let raw = logits.clone();
        causal_softmax(&mut logits, n, seen, past, 0.5);
        for (r, (row, raw)) in logits.chunks(seen).zip(raw.chunks(seen)).enumerate() {
            let visible = past + r % n + 1;
            let e: Vec<f64> = raw[..visible].iter().map(|&v| (f64::from(v) * 0.5).exp()).collect();
            let sum: f64 = e.iter().sum();
            for j in 0..seen {
                let want = if j < visible { e[j] / sum } else { 0.0 };
                assert!((f64::from(row[j]) - want).abs() < 1e-6, "row {r} key {j}: {} vs {want}", row[j]);
            }
        }
    }

    #[test]
    fn strided_gemm_matches_naive() {
        let (m, k, n) = (7, 5, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32).cos()).collect(); // stored [n, k]
        let mut dst = vec![1.0; m * 4];
        gemm(&mut dst, 4, View::rows(&a, m, k), View::rows(&b, n, k).t(), false, 2);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|t| a[i * k + t] * b[j * k + t]).sum();
                assert!((dst[i * 4 + j] - want).abs() < 1e-4);
            }
            assert_eq!(dst[i * 4 + 3], 1.0, "the padding column is untouched");
        }
    }

    /// A matrix-vector product split into row blocks ([`GEMV_ROWS`]) must give one call's bits,
    /// in a packed and a strided destination, overwriting and accumulating.
    #[test]
    fn gemv_row_blocks_give_one_calls_bits() {
        let (m, k) = (2 * GEMV_ROWS + 37, 1100);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5).collect();
        let x: Vec<f32> = (0..k).map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5).collect();
        // As the decoder's transposed products ask: the weight `[m, k]` times one row of x, turned.
        let (a, x) = (View::rows(&a, m, k), View::rows(&x, 1, k).t());
        for (rs, accumulate) in [(1, false), (1, true), (3, false), (3, true)] {
            let start: Vec<f32> = (0..m * rs).map(|i| (i % 13) as f32 * 0.25).collect();
            let (mut one, mut blocks) = (start.clone(), start.clone());
            gemm(&mut one, rs, a, x, accumulate, 1);
            gemm(&mut blocks, rs, a, x, accumulate, 2);
            assert!(
                one.iter().zip(&blocks).all(|(p, q)| p.to_bits() == q.to_bits()),
                "rs {rs}, accumulate {accumulate}"
            );
            for (row, start) in blocks.chunks(rs).zip(start.chunks(rs)) {
                assert_eq!(row[1..], start[1..], "the padding is untouched");
            }
            let i = m - 1; // the last block's last output, against a plain sum
            let want: f64 = (0..k).map(|t| a.data[i * k + t] as f64 * x.data[t] as f64).sum::<f64>()
                + if accumulate { start[i * rs] as f64 } else { 0.0 };
            assert!((blocks[i * rs] as f64 - want).abs() < 1e-3, "{} vs {want}", blocks[i * rs]);
        }
    }

    /// Column blocks ([`COLUMN_BLOCK`]) must give one call's bits, in a strided destination
    /// with padding, overwriting and accumulating, over a depth of several gemm blocks.
    #[test]
    fn column_blocks_give_one_calls_bits() {
        let (m, k, n, rs) = (37, 1100, 2 * COLUMN_BLOCK + 45, 2 * COLUMN_BLOCK + 50);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5).collect();
        let b: Vec<f32> = (0..n * k).map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5).collect(); // [n, k]
        let (a, b) = (View::rows(&a, m, k), View::rows(&b, n, k).t());
        for accumulate in [false, true] {
            let start: Vec<f32> = (0..m * rs).map(|i| (i % 13) as f32 * 0.25).collect();
            let (mut one, mut blocks) = (start.clone(), start.clone());
            gemm(&mut one, rs, a, b, accumulate, 1);
            gemm(&mut blocks, rs, a, b, accumulate, 2);
            assert!(one.iter().zip(&blocks).all(|(x, y)| x.to_bits() == y.to_bits()), "accumulate {accumulate}");
            for (row, start) in blocks.chunks(rs).zip(start.chunks(rs)) {
                assert_eq!(row[n..], start[n..], "the padding columns are untouched");
            }
            let (i, j) = (m - 1, n - 1); // the last block's last output, against a plain sum
            let want: f64 = (0..k).map(|t| a.data[i * k + t] as f64 * b.data[j * k + t] as f64).sum::<f64>()
                + if accumulate { start[i * rs + j] as f64 } else { 0.0 };
            assert!((blocks[i * rs + j] as f64 - want).abs() < 1e-3, "{} vs {want}", blocks[i * rs + j]);
        }
    }
}
