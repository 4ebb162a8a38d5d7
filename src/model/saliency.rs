//! The `img-focus` saliency head: patch features `[1, dim, 16, 16]` are upsampled by three
//! transposed convolutions (kernel 4, stride 2, padding 1) each with inference-form BatchNorm and
//! ReLU (16 -> 32 -> 64 -> 128), a 1x1 convolution gives one channel, a bilinear half-pixel
//! resize brings it to the input size, and a sigmoid makes it a probability map.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use rayon::prelude::*;

use super::resize::{Kernel, resize2d};
use crate::Result;

const BN_EPS: f64 = 1e-5;

/// ConvTranspose2d (kernel 4, stride 2, padding 1) + BatchNorm (running statistics folded into
/// a scale and shift) + ReLU.
///
/// # Design
/// candle's `conv_transpose2d` runs these three layers in ~90 ms on 2 cores; the decoder sits on
/// the slider's path. As one matmul (all 16 kernel taps of every output channel at once,
/// `[c_out·16, c_in] x [c_in, h·w]`, ~35 ms, near what 2 cores do) plus a col2im scatter that
/// also applies bias, BatchNorm and ReLU (~15 ms, split over channels), the head takes ~55 ms.
/// Checked against onnxruntime in `tests/reference.rs`.
struct UpStage {
    /// `[c_out·16, c_in]`: the kernel with taps as rows.
    taps: Tensor,
    c_out: usize,
    /// Per output channel: y = relu(conv · scale + shift), with the conv bias inside `shift`.
    scale: Vec<f32>,
    shift: Vec<f32>,
}

const K: usize = 4;

impl UpStage {
    fn new(c_in: usize, c_out: usize, vb_conv: VarBuilder, vb_bn: VarBuilder) -> Result<Self> {
        let weight = vb_conv.get((c_in, c_out, K, K), "weight")?;
        let taps = weight.reshape((c_in, c_out * K * K))?.t()?.contiguous()?;
        let bias = vb_conv.get(c_out, "bias")?;
        let gamma = vb_bn.get(c_out, "weight")?;
        let beta = vb_bn.get(c_out, "bias")?;
        let mean = vb_bn.get(c_out, "running_mean")?;
        let var = vb_bn.get(c_out, "running_var")?;
        // BN(x + b) = (x + b - mean) / sqrt(var + eps) * gamma + beta = x * scale + shift
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let shift = ((beta + ((bias - mean)? * &scale)?)?).to_vec1()?;
        Ok(Self { taps, c_out, scale: scale.to_vec1()?, shift })
    }

    /// `[1, c_in, h, w]` -> `[1, c_out, 2h, 2w]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, c_in, h, w) = xs.dims4()?;
        let cols = self.taps.matmul(&xs.reshape((c_in, h * w))?)?; // [c_out·16, h·w]
        let cols = cols.flatten_all()?.to_vec1::<f32>()?;
        let (oh, ow) = (2 * h, 2 * w);
        let mut out = vec![0f32; self.c_out * oh * ow];
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
        Ok(Tensor::from_vec(out, (1, self.c_out, oh, ow), xs.device())?)
    }
}

pub struct SaliencyDecoder {
    stages: Vec<UpStage>,
    final_conv: Conv2d,
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
        let final_conv = candle_nn::conv2d(64, 1, 1, Default::default(), vb.pp("final_conv"))?;
        Ok(Self { stages, final_conv, out_size })
    }

    /// `patch_features`: `[1, rows*cols, dim]` after the final LayerNorm, raster order.
    /// Returns `[1, 1, out_size, out_size]` saliency in (0, 1).
    pub fn forward(&self, patch_features: &Tensor, grid: (usize, usize)) -> Result<Tensor> {
        let (_, _, d) = patch_features.dims3()?;
        let mut xs = patch_features.transpose(1, 2)?.reshape((1, d, grid.0, grid.1))?;
        for stage in &self.stages {
            xs = stage.forward(&xs)?;
        }
        let logits = self.final_conv.forward(&xs)?;
        let logits = resize2d(&logits, self.out_size, self.out_size, Kernel::Linear)?;
        Ok(candle_nn::ops::sigmoid(&logits)?)
    }
}
