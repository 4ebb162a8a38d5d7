//! The `img-focus` saliency head: patch features `[1, dim, 16, 16]` are upsampled by three
//! transposed convolutions (kernel 4, stride 2, padding 1) each with inference-form BatchNorm and
//! ReLU (16 -> 32 -> 64 -> 128), a 1x1 convolution gives one channel, a bilinear half-pixel
//! resize brings it to the input size, and a sigmoid makes it a probability map.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::kernels::{self, View, gemm, with_scratch, with_slice};
use super::resize::{Kernel, resize2d};
use crate::{Error, Result};

const BN_EPS: f64 = 1e-5;

/// ConvTranspose2d (kernel 4, stride 2, padding 1) + BatchNorm (running statistics folded into
/// a scale and shift) + ReLU.
///
/// # Design
/// One GEMM computes all 16 kernel taps of every output channel at once
/// (`[c_out·16, c_in] x [c_in, h·w]`, the bulk of the head's ~3 GFLOPs), straight into a reused
/// scratch buffer. The col2im gathers rather than scatters: an output pixel of row parity `py`
/// and column parity `px` receives exactly four taps, so each output row is built from the
/// even and odd columns as contiguous, shifted sums of tap rows (vectorisable, no
/// read-modify-write of the output), then bias, BatchNorm and ReLU are applied as the two
/// halves are interleaved. The input is read through strides, so the first stage takes the
/// `[tokens, dim]` features without a transpose. Checked against onnxruntime in
/// `tests/reference.rs`.
struct UpStage {
    /// `[c_out·16, c_in]`: the kernel with taps as rows.
    taps: Vec<f32>,
    c_in: usize,
    c_out: usize,
    /// Per output channel: y = relu(conv · scale + shift), with the conv bias inside `shift`.
    scale: Vec<f32>,
    shift: Vec<f32>,
}

const K: usize = 4;

impl UpStage {
    fn new(c_in: usize, c_out: usize, vb_conv: VarBuilder, vb_bn: VarBuilder) -> Result<Self> {
        let weight = vb_conv.get((c_in, c_out, K, K), "weight")?;
        let taps = weight.reshape((c_in, c_out * K * K))?.t()?.contiguous()?.flatten_all()?.to_vec1()?;
        let bias = vb_conv.get(c_out, "bias")?;
        let gamma = vb_bn.get(c_out, "weight")?;
        let beta = vb_bn.get(c_out, "bias")?;
        let mean = vb_bn.get(c_out, "running_mean")?;
        let var = vb_bn.get(c_out, "running_var")?;
        // BN(x + b) = (x + b - mean) / sqrt(var + eps) * gamma + beta = x * scale + shift
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let shift = ((beta + ((bias - mean)? * &scale)?)?).to_vec1()?;
        Ok(Self { taps, c_in, c_out, scale: scale.to_vec1()?, shift })
    }

    /// The taps `[c_out·16, h·w]` of `x` (`[c_in, h·w]`, any strides) into `cols`.
    fn taps_of(&self, x: View<'_>, hw: usize, cols: &mut [f32]) {
        let taps = View::rows(&self.taps, self.c_out * K * K, self.c_in);
        gemm(cols, hw, taps, x, false, kernels::threads());
    }

    /// `x` (`[c_in, h·w]`, any strides) -> `out`: `[c_out, 2h, 2w]` row-major.
    fn forward(&self, x: View<'_>, h: usize, w: usize, out: &mut [f32]) {
        let (oh, ow) = (2 * h, 2 * w);
        with_scratch(self.c_out * K * K * h * w, |cols| {
            self.taps_of(x, h * w, cols);
            let cols = &*cols;
            out[..self.c_out * oh * ow].par_chunks_mut(oh * ow).enumerate().for_each(|(co, plane)| {
                let mut halves = vec![0f32; 2 * w];
                for (oy, row) in plane.chunks_mut(ow).enumerate() {
                    self.output_row(cols, co, oy, (h, w), &mut halves, row);
                }
            });
        });
    }

    /// Output row `oy` of channel `co` after BatchNorm and ReLU, from the taps `cols`
    /// (`[c_out·16, h·w]`). `halves`: scratch of `2w` values.
    fn output_row(
        &self,
        cols: &[f32],
        co: usize,
        oy: usize,
        (h, w): (usize, usize),
        halves: &mut [f32],
        row: &mut [f32],
    ) {
        // PyTorch semantics: input (iy, ix) with tap (ky, kx) lands on (2 iy - 1 + ky, 2 ix - 1 + kx).
        // Output row 2a takes taps ky = 1 (iy = a) and ky = 3 (iy = a - 1); row 2a + 1 takes
        // ky = 2 (iy = a) and ky = 0 (iy = a + 1). Likewise column 2b takes kx = 1 (ix = b) and
        // kx = 3 (ix = b - 1); column 2b + 1 takes kx = 2 (ix = b) and kx = 0 (ix = b + 1).
        let a = oy / 2;
        let sources = match oy % 2 {
            0 => [(1, Some(a)), (3, a.checked_sub(1))],
            _ => [(2, Some(a)), (0, (a + 1 < h).then_some(a + 1))],
        };
        let (even, odd) = halves.split_at_mut(w);
        even.fill(0.0);
        odd.fill(0.0);
        for (ky, iy) in sources {
            let Some(iy) = iy else { continue };
            let tap = |kx: usize| &cols[(((co * K + ky) * K + kx) * h + iy) * w..][..w];
            for ((e, o), (&t1, &t2)) in even.iter_mut().zip(odd.iter_mut()).zip(tap(1).iter().zip(tap(2))) {
                *e += t1;
                *o += t2;
            }
            for (e, &t3) in even[1..].iter_mut().zip(tap(3)) {
                *e += t3;
            }
            for (o, &t0) in odd.iter_mut().zip(&tap(0)[1..]) {
                *o += t0;
            }
        }
        let (s, t) = (self.scale[co], self.shift[co]);
        for (pair, (&e, &o)) in row.chunks_exact_mut(2).zip(even.iter().zip(odd.iter())) {
            pair[0] = (e * s + t).max(0.0);
            pair[1] = (o * s + t).max(0.0);
        }
    }

    /// The last stage with the 1x1 projection fused: `x` (`[c_in, h·w]`) -> `[2h, 2w]` logits,
    /// so this stage's `[c_out, 2h, 2w]` output (the head's largest) is never stored.
    fn forward_projected(&self, x: View<'_>, h: usize, w: usize, project: &Project) -> Vec<f32> {
        let ow = 2 * w;
        let mut logits = vec![project.bias; 2 * h * ow];
        with_scratch(self.c_out * K * K * h * w, |cols| {
            self.taps_of(x, h * w, cols);
            let cols = &*cols;
            logits.par_chunks_mut(ow).enumerate().for_each(|(oy, acc)| {
                let mut halves = vec![0f32; 2 * w];
                let mut row = vec![0f32; ow];
                for (co, &weight) in project.weight.iter().enumerate() {
                    self.output_row(cols, co, oy, (h, w), &mut halves, &mut row);
                    for (a, &v) in acc.iter_mut().zip(&row) {
                        *a += weight * v;
                    }
                }
            });
        });
        logits
    }
}

/// The final 1x1 convolution to one channel.
struct Project {
    weight: Vec<f32>,
    bias: f32,
}

pub struct SaliencyDecoder {
    stages: Vec<UpStage>,
    final_conv: Project,
    dim: usize,
    out_size: usize,
}

impl SaliencyDecoder {
    /// `vb` at `decoder`; `dim` is the encoder width, `out_size` the input image side.
    pub fn new(dim: usize, out_size: usize, vb: VarBuilder) -> Result<Self> {
        let widths = [dim, 256, 128, 64];
        let stages = (0..3)
            .map(|i| {
                UpStage::new(widths[i], widths[i + 1], vb.pp(format!("upconv{}", i + 1)), vb.pp(format!("bn{}", i + 1)))
            })
            .collect::<Result<_>>()?;
        let fc = vb.pp("final_conv");
        let final_conv = Project {
            weight: fc.get((1, 64, 1, 1), "weight")?.flatten_all()?.to_vec1()?,
            bias: fc.get(1, "bias")?.to_vec1()?[0],
        };
        Ok(Self { stages, final_conv, dim, out_size })
    }

    /// `patch_features`: `[1, rows*cols, dim]` after the final LayerNorm, raster order.
    /// Returns `[1, 1, out_size, out_size]` saliency in (0, 1), on the CPU: the head is CPU code
    /// (about 3 GFLOPs, a tenth of the backbone), so features from a GPU are copied over.
    pub fn forward(&self, patch_features: &Tensor, grid: (usize, usize)) -> Result<Tensor> {
        let patch_features = &patch_features.to_device(&candle_core::Device::Cpu)?;
        let (rows, cols) = grid;
        let (_, n, d) = patch_features.dims3()?;
        if d != self.dim || n != rows * cols {
            return Err(Error::Config {
                field: "patch features",
                reason: format!("expected [1, {}, {}], got [1, {n}, {d}]", rows * cols, self.dim),
            });
        }
        // [tokens, dim] read as [dim, tokens] through strides; the intermediate stages write
        // into reused scratch buffers.
        let (first, mid, last) = (&self.stages[0], &self.stages[1], &self.stages[2]);
        let (h, w) = (4 * rows, 4 * cols);
        let logits = with_scratch(first.c_out * h * w / 4, |x1| {
            with_slice(patch_features, |f| {
                first.forward(View::new(f, d, n, 1, d), rows, cols, x1);
                Ok(())
            })?;
            Ok::<_, Error>(with_scratch(mid.c_out * h * w, |x2| {
                mid.forward(View::rows(x1, mid.c_in, h * w / 4), h / 2, w / 2, x2);
                last.forward_projected(View::rows(x2, last.c_in, h * w), h, w, &self.final_conv)
            }))
        })?;
        let (h, w) = (2 * h, 2 * w);
        let logits = Tensor::from_vec(logits, (1, 1, h, w), &candle_core::Device::Cpu)?;
        let logits = resize2d(&logits, self.out_size, self.out_size, Kernel::Linear)?;
        Ok(candle_nn::ops::sigmoid(&logits)?)
    }
}
