//! Separable resizes that reproduce ONNX `Resize` (coordinate mode `half_pixel`, no antialias)
//! exactly: each axis becomes an interpolation matrix `[out, in]`, so a 2-D resize is
//! `Wy · X · Wxᵀ`, two matmuls.
//!
//! Out-of-range taps are clamped to the edge, as ONNX does with `exclude_outside = 0`.

use candle_core::{Device, Tensor};

use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kernel {
    /// Linear interpolation (ONNX mode `linear`).
    Linear,
    /// Keys' cubic convolution with coefficient `a` (ONNX mode `cubic`, `cubic_coeff_a`; PyTorch
    /// bicubic uses -0.75).
    Cubic { a: f64 },
}

/// Row-major `[out, in]` weights: output sample `o` is `sum_i w[o][i] * input[i]`.
pub fn interp_matrix(len_in: usize, len_out: usize, kernel: Kernel) -> Vec<f32> {
    let mut w = vec![0f64; len_out * len_in];
    let scale = len_out as f64 / len_in as f64;
    let clamp = |i: i64| i.clamp(0, len_in as i64 - 1) as usize;
    for o in 0..len_out {
        let x = (o as f64 + 0.5) / scale - 0.5;
        let x0 = x.floor();
        let t = x - x0;
        let row = &mut w[o * len_in..(o + 1) * len_in];
        match kernel {
            Kernel::Linear => {
                row[clamp(x0 as i64)] += 1.0 - t;
                row[clamp(x0 as i64 + 1)] += t;
            }
            Kernel::Cubic { a } => {
                let coeffs = cubic_coeffs(t, a);
                for (k, c) in coeffs.iter().enumerate() {
                    row[clamp(x0 as i64 - 1 + k as i64)] += c;
                }
            }
        }
    }
    w.into_iter().map(|v| v as f32).collect()
}

/// Weights of the four taps at offsets -1, 0, 1, 2 for fractional position `t`.
fn cubic_coeffs(t: f64, a: f64) -> [f64; 4] {
    let near = |x: f64| ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0; // |x| <= 1
    let far = |x: f64| ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a; // 1 < |x| < 2
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Resizes the last two dims of `x` (`[..., h, w]`) to `(out_h, out_w)`.
pub fn resize2d(x: &Tensor, out_h: usize, out_w: usize, kernel: Kernel) -> Result<Tensor> {
    let dims = x.dims();
    let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let dev: &Device = x.device();
    let wy = Tensor::from_vec(interp_matrix(h, out_h, kernel), (out_h, h), dev)?;
    let wx_t = Tensor::from_vec(interp_matrix(w, out_w, kernel), (out_w, w), dev)?.t()?;
    let rows = x.broadcast_matmul(&wx_t)?; // [..., h, out_w]
    Ok(wy.broadcast_matmul(&rows)?) // [..., out_h, out_w]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one() {
        for kernel in [Kernel::Linear, Kernel::Cubic { a: -0.75 }] {
            let w = interp_matrix(37, 16, kernel);
            for row in w.chunks(37) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn identity_when_sizes_match() {
        let w = interp_matrix(5, 5, Kernel::Cubic { a: -0.75 });
        for o in 0..5 {
            for i in 0..5 {
                assert!((w[o * 5 + i] - f32::from(u8::from(o == i))).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn linear_upsample_by_two_by_hand() {
        // half_pixel: output 0 sits at input -0.25 (clamped to input 0), output 1 at 0.25.
        let w = interp_matrix(2, 4, Kernel::Linear);
        let expect = [1.0, 0.0, 0.75, 0.25, 0.25, 0.75, 0.0, 1.0];
        for (a, b) in w.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
    }
}
