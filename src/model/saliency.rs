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
/// scratch buffer; a col2im scatter, split over channels, adds the taps onto the output and
/// applies bias, BatchNorm and ReLU in the same pass. The input is read through strides, so the
/// first stage takes the `[tokens, dim]` features without a transpose. Checked against
/// onnxruntime in `tests/reference.rs`.
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

    /// `x` (`[c_in, h·w]`, any strides) -> `[c_out, 2h, 2w]` row-major.
    fn forward(&self, x: View<'_>, h: usize, w: usize) -> Vec<f32> {
        let (oh, ow) = (2 * h, 2 * w);
        let mut out = vec![0f32; self.c_out * oh * ow];
        with_scratch(self.c_out * K * K * h * w, |cols| {
            let taps = View::rows(&self.taps, self.c_out * K * K, self.c_in);
            gemm(cols, h * w, taps, x, false, kernels::threads()); // [c_out·16, h·w]
            let cols = &*cols;
            // PyTorch semantics: input (iy, ix) with tap (ky, kx) lands on (2 iy - 1 + ky, 2 ix - 1 + kx);
            // the input range of each tap is computed up front so the inner loop has no branches.
            let valid = |k: usize, n: usize| (usize::from(k == 0), if k == K - 1 { n - 1 } else { n });
            out.par_chunks_mut(oh * ow).enumerate().for_each(|(co, plane)| {
                for ky in 0..K {
                    let (iy0, iy1) = valid(ky, h);
                    for kx in 0..K {
                        let (ix0, ix1) = valid(kx, w);
                        let row = &cols[((co * K + ky) * K + kx) * h * w..][..h * w];
                        for iy in iy0..iy1 {
                            let dst = &mut plane[(2 * iy + ky - 1) * ow..][..ow];
                            let src = &row[iy * w..][..w];
                            for ix in ix0..ix1 {
                                dst[2 * ix + kx - 1] += src[ix];
                            }
                        }
                    }
                }
                let (s, t) = (self.scale[co], self.shift[co]);
                for v in plane.iter_mut() {
                    *v = (*v * s + t).max(0.0);
                }
            });
        });
        out
    }
}

/// The final 1x1 convolution to one channel.
struct Project {
    weight: Vec<f32>,
    bias: f32,
}

impl Project {
    /// `x`: `[c, pixels]` -> `[pixels]`.
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let pixels = x.len() / self.weight.len();
        let mut out = vec![self.bias; pixels];
        for (&w, plane) in self.weight.iter().zip(x.chunks(pixels)) {
            for (o, &v) in out.iter_mut().zip(plane) {
                *o += w * v;
            }
        }
        out
    }
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
    /// Returns `[1, 1, out_size, out_size]` saliency in (0, 1).
    pub fn forward(&self, patch_features: &Tensor, grid: (usize, usize)) -> Result<Tensor> {
        let (rows, cols) = grid;
        let (_, n, d) = patch_features.dims3()?;
        if d != self.dim || n != rows * cols {
            return Err(Error::Config {
                field: "patch features",
                reason: format!("expected [1, {}, {}], got [1, {n}, {d}]", rows * cols, self.dim),
            });
        }
        // [tokens, dim] read as [dim, tokens] through strides.
        let mut xs = with_slice(patch_features, |f| Ok(self.stages[0].forward(View::new(f, d, n, 1, d), rows, cols)))?;
        let (mut h, mut w) = (2 * rows, 2 * cols);
        for stage in &self.stages[1..] {
            xs = stage.forward(View::rows(&xs, stage.c_in, h * w), h, w);
            (h, w) = (2 * h, 2 * w);
        }
        let logits = Tensor::from_vec(self.final_conv.forward(&xs), (1, 1, h, w), patch_features.device())?;
        let logits = resize2d(&logits, self.out_size, self.out_size, Kernel::Linear)?;
        Ok(candle_nn::ops::sigmoid(&logits)?)
    }
}
