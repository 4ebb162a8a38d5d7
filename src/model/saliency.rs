//! The `img-focus` saliency head: patch features `[1, dim, 16, 16]` are upsampled by three
//! transposed convolutions (kernel 4, stride 2, padding 1) each with inference-form BatchNorm and
//! ReLU (16 -> 32 -> 64 -> 128), a 1x1 convolution gives one channel, a bilinear half-pixel
//! resize brings it to the input size, and a sigmoid makes it a probability map.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::kernels::{View, gemm, with_scratch, with_slice};
use super::resize::{Kernel, resize2d};
use crate::{Error, Result};

const BN_EPS: f64 = 1e-5;

/// ConvTranspose2d (kernel 4, stride 2, padding 1) + BatchNorm (running statistics folded into
/// a scale and shift) + ReLU.
///
/// # Design
/// A GEMM computes the kernel taps (`[c_out·16, c_in] x [c_in, h·w]`, the bulk of the head's
/// ~3 GFLOPs) into a reused scratch buffer. The col2im gathers rather than scatters: an output
/// pixel of row parity `py` and column parity `px` receives exactly four taps, so each output
/// row is built from the even and odd columns as contiguous, shifted sums of tap rows
/// (vectorisable, no read-modify-write of the output), then bias, BatchNorm and ReLU are applied
/// as the two halves are interleaved. The input is read through strides, so the first stage
/// takes the `[tokens, dim]` features without a transpose.
///
/// The taps are stored grouped by kernel row `ky` (`[ky][co][kx]`), so the taps one band of
/// input rows contributes are four GEMMs, one per `ky`, each over a contiguous run of input
/// rows shifted by the row `ky` lands on. Every stage runs band by band ([`BAND`] input rows):
/// each rayon task computes its band's taps single-threaded into a buffer that stays in its
/// core's L2 and turns them into output rows at once (no halo rows are recomputed); the last
/// stage projects its rows to the one output channel as it goes, so its `[64, 2h, 2w]` output
/// is never stored. Whole-image taps for the first two stages (one threaded GEMM) took 4 and
/// 8 MB of scratch that the thread's pool then kept for the process's life; in bands the head
/// ran 0.97× their time (six alternating rounds) and `tokenlens gui`'s peak memory fell by
/// about 10 MB. Checked against onnxruntime in `tests/reference.rs` and against a direct
/// scatter ConvTranspose in the unit tests below.
struct UpStage {
    /// `[K][c_out·K][c_in]`: the kernel's taps as rows, grouped by kernel row `ky`, then output
    /// channel, then kernel column `kx`.
    taps: Vec<f32>,
    c_in: usize,
    c_out: usize,
    /// Per output channel: y = relu(conv · scale + shift), with the conv bias inside `shift`.
    scale: Vec<f32>,
    shift: Vec<f32>,
}

const K: usize = 4;

/// Input rows per task of every stage: its taps take `c_out·16·BAND·w` values (256 KB a row
/// at each of the three stages: 256 channels 16 wide, 128 by 32, 64 by 64), which with the
/// stage's kernel stays in a 1-2 MB L2.
const BAND: usize = 1;

/// The taps of a band of `rows` input rows: for kernel row `ky`, a `[c_out·K, rows·w]` block
/// (tap rows ordered by output channel, then `kx`) whose first column is input row `first[ky]`.
/// Rows outside the image are never computed and never read.
struct TapBand<'a> {
    data: &'a [f32],
    c_out: usize,
    rows: usize,
    w: usize,
    first: [isize; K],
}

impl TapBand<'_> {
    /// Tap `(ky, kx)` of output channel `co` over input row `iy` (`w` values).
    fn row(&self, ky: usize, kx: usize, co: usize, iy: usize) -> &[f32] {
        let r = (iy as isize - self.first[ky]) as usize;
        debug_assert!(r < self.rows);
        &self.data[(((ky * self.c_out + co) * K + kx) * self.rows + r) * self.w..][..self.w]
    }
}

impl UpStage {
    fn new(c_in: usize, c_out: usize, vb_conv: VarBuilder, vb_bn: VarBuilder) -> Result<Self> {
        let weight = vb_conv.get((c_in, c_out, K, K), "weight")?;
        let bias = vb_conv.get(c_out, "bias")?;
        let gamma = vb_bn.get(c_out, "weight")?;
        let beta = vb_bn.get(c_out, "bias")?;
        let mean = vb_bn.get(c_out, "running_mean")?;
        let var = vb_bn.get(c_out, "running_var")?;
        // BN(x + b) = (x + b - mean) / sqrt(var + eps) * gamma + beta = x * scale + shift
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let shift = ((beta + ((bias - mean)? * &scale)?)?).to_vec1()?;
        Self::from_weight(&weight, scale.to_vec1()?, shift)
    }

    /// From the ConvTranspose weight `[c_in, c_out, K, K]` and the folded BatchNorm.
    fn from_weight(weight: &Tensor, scale: Vec<f32>, shift: Vec<f32>) -> Result<Self> {
        let (c_in, c_out, _, _) = weight.dims4()?;
        // [c_in, c_out, ky, kx] -> [ky, c_out, kx, c_in]
        let taps = weight.permute((2, 1, 3, 0))?.contiguous()?.flatten_all()?.to_vec1()?;
        Ok(Self { taps, c_in, c_out, scale, shift })
    }

    /// The taps of kernel row `ky`: `[c_out·K, c_in]`.
    fn taps_of_row(&self, ky: usize) -> View<'_> {
        let n = self.c_out * K * self.c_in;
        View::rows(&self.taps[ky * n..][..n], self.c_out * K, self.c_in)
    }

    /// `f` on the taps of input rows `a0..a0 + rows` of `x` (`[c_in, h·w]`, any strides) as the
    /// output rows `2·a0..2·(a0 + rows)` need them, and `extra` values of scratch; both from
    /// this thread's scratch pool, the taps computed on this thread (the bands run in parallel).
    fn with_band_taps<R>(
        &self,
        x: View<'_>,
        (h, w): (usize, usize),
        (a0, rows): (usize, usize),
        extra: usize,
        f: impl FnOnce(&TapBand<'_>, &mut [f32]) -> R,
    ) -> R {
        let block = self.c_out * K * rows * w;
        with_scratch(K * block + extra, |buf| {
            let (taps, rest) = buf.split_at_mut(K * block);
            f(&self.band_taps(x, (h, w), (a0, rows), taps), rest)
        })
    }

    /// [`Self::with_band_taps`]'s taps into `buf` (`c_out·16·rows·w` values).
    fn band_taps<'a>(
        &self,
        x: View<'_>,
        (h, w): (usize, usize),
        (a0, rows): (usize, usize),
        buf: &'a mut [f32],
    ) -> TapBand<'a> {
        // Output row 2a takes ky = 1 at input row a and ky = 3 at a - 1; row 2a + 1 takes ky = 2
        // at a and ky = 0 at a + 1 (see `output_row`).
        let a0 = a0 as isize;
        let first = [a0 + 1, a0, a0, a0 - 1];
        let block = self.c_out * K * rows * w;
        for (ky, dst) in buf[..K * block].chunks_mut(block).enumerate() {
            let lo = first[ky].max(0) as usize;
            let hi = ((first[ky] + rows as isize) as usize).min(h);
            if lo >= hi {
                continue;
            }
            let skip = (lo as isize - first[ky]) as usize * w;
            gemm(&mut dst[skip..], rows * w, self.taps_of_row(ky), x.columns(lo * w, (hi - lo) * w), false, 1);
        }
        TapBand { data: buf, c_out: self.c_out, rows, w, first }
    }

    /// `x` (`[c_in, h·w]`, any strides) -> `out`: `[c_out, 2h, 2w]` row-major.
    fn forward(&self, x: View<'_>, h: usize, w: usize, out: &mut [f32]) {
        self.forward_in_bands(x, (h, w), BAND, out)
    }

    /// [`Self::forward`] with `band` input rows per task: each task computes its band's taps
    /// single-threaded into its own scratch and writes the band's output rows of every channel.
    fn forward_in_bands(&self, x: View<'_>, (h, w): (usize, usize), band: usize, out: &mut [f32]) {
        let (oh, ow) = (2 * h, 2 * w);
        // Per band, its rows of every channel's plane (disjoint slices of `out`).
        let mut bands: Vec<Vec<&mut [f32]>> = (0..h.div_ceil(band)).map(|_| Vec::with_capacity(self.c_out)).collect();
        for plane in out[..self.c_out * oh * ow].chunks_mut(oh * ow) {
            for (rows, dst) in plane.chunks_mut(2 * band * ow).zip(bands.iter_mut()) {
                dst.push(rows);
            }
        }
        bands.into_par_iter().enumerate().for_each(|(b, mut planes)| {
            let rows = planes[0].len() / (2 * ow);
            self.with_band_taps(x, (h, w), (b * band, rows), 2 * w, |taps, halves| {
                for (co, dst) in planes.iter_mut().enumerate() {
                    for (i, row) in dst.chunks_mut(ow).enumerate() {
                        self.output_row(taps, co, 2 * b * band + i, h, halves, row);
                    }
                }
            });
        });
    }

    /// Output row `oy` of channel `co` after BatchNorm and ReLU, from `taps` (which hold the
    /// input rows this output row reads; the image has `h` input rows). `halves`: scratch of
    /// `2w` values.
    fn output_row(&self, taps: &TapBand<'_>, co: usize, oy: usize, h: usize, halves: &mut [f32], row: &mut [f32]) {
        // PyTorch semantics: input (iy, ix) with tap (ky, kx) lands on (2 iy - 1 + ky, 2 ix - 1 + kx).
        // Output row 2a takes taps ky = 1 (iy = a) and ky = 3 (iy = a - 1); row 2a + 1 takes
        // ky = 2 (iy = a) and ky = 0 (iy = a + 1). Likewise column 2b takes kx = 1 (ix = b) and
        // kx = 3 (ix = b - 1); column 2b + 1 takes kx = 2 (ix = b) and kx = 0 (ix = b + 1).
        let a = oy / 2;
        let sources = match oy % 2 {
            0 => [(1, Some(a)), (3, a.checked_sub(1))],
            _ => [(2, Some(a)), (0, (a + 1 < h).then_some(a + 1))],
        };
        let (even, odd) = halves.split_at_mut(taps.w);
        even.fill(0.0);
        odd.fill(0.0);
        for (ky, iy) in sources {
            let Some(iy) = iy else { continue };
            let tap = |kx: usize| taps.row(ky, kx, co, iy);
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
    /// so this stage's `[c_out, 2h, 2w]` output (the head's largest) is never stored, and its
    /// taps are computed a band of input rows at a time.
    fn forward_projected(&self, x: View<'_>, h: usize, w: usize, project: &Project) -> Vec<f32> {
        self.forward_projected_in_bands(x, (h, w), project, BAND)
    }

    /// [`Self::forward_projected`] with `band` input rows per task.
    fn forward_projected_in_bands(
        &self,
        x: View<'_>,
        (h, w): (usize, usize),
        project: &Project,
        band: usize,
    ) -> Vec<f32> {
        let ow = 2 * w;
        let mut logits = vec![project.bias; 2 * h * ow];
        logits.par_chunks_mut(2 * band * ow).enumerate().for_each(|(b, out)| {
            let rows = out.len() / (2 * ow);
            self.with_band_taps(x, (h, w), (b * band, rows), 2 * w + ow, |taps, rest| {
                let (halves, row) = rest.split_at_mut(2 * w);
                for (i, acc) in out.chunks_mut(ow).enumerate() {
                    for (co, &weight) in project.weight.iter().enumerate() {
                        self.output_row(taps, co, 2 * b * band + i, h, halves, row);
                        for (a, &v) in acc.iter_mut().zip(&*row) {
                            *a += weight * v;
                        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Deterministic pseudo-random values in [-1, 1) (xorshift).
    fn values(n: usize, mut seed: u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// ConvTranspose2d (kernel 4, stride 2, padding 1) written as PyTorch defines it, each input
    /// pixel scattering its 16 taps, in f64; then the folded BatchNorm and ReLU. `[c_out, 2h, 2w]`.
    fn scatter_reference(
        weight: &[f32],
        x: &[f32],
        (c_in, c_out, h, w): (usize, usize, usize, usize),
        stage: &UpStage,
    ) -> Vec<f64> {
        let (oh, ow) = (2 * h, 2 * w);
        let mut out = vec![0f64; c_out * oh * ow];
        for ci in 0..c_in {
            for co in 0..c_out {
                for (iy, ix, ky, kx) in (0..h * w * K * K).map(|i| (i / (w * K * K), i / (K * K) % w, i / K % K, i % K))
                {
                    let (oy, ox) = ((2 * iy + ky) as isize - 1, (2 * ix + kx) as isize - 1);
                    if (0..oh as isize).contains(&oy) && (0..ow as isize).contains(&ox) {
                        let wv = weight[((ci * c_out + co) * K + ky) * K + kx] as f64;
                        out[(co * oh + oy as usize) * ow + ox as usize] += wv * x[(ci * h + iy) * w + ix] as f64;
                    }
                }
            }
        }
        for (co, plane) in out.chunks_mut(oh * ow).enumerate() {
            plane.iter_mut().for_each(|v| *v = (*v * stage.scale[co] as f64 + stage.shift[co] as f64).max(0.0));
        }
        out
    }

    fn random_stage(c_in: usize, c_out: usize) -> (Vec<f32>, UpStage) {
        let weight = values(c_in * c_out * K * K, 7);
        let t = Tensor::from_vec(weight.clone(), (c_in, c_out, K, K), &Device::Cpu).unwrap();
        let stage = UpStage::from_weight(&t, values(c_out, 11), values(c_out, 13)).unwrap();
        (weight, stage)
    }

    #[test]
    fn stage_matches_a_scatter_conv_transpose_in_any_band_size() {
        let (c_in, c_out, h, w) = (5, 3, 5, 6);
        let (weight, stage) = random_stage(c_in, c_out);
        let x = values(c_in * h * w, 3);
        let expected = scatter_reference(&weight, &x, (c_in, c_out, h, w), &stage);
        for band in [1, 2, 3, 5, 8] {
            let mut out = vec![f32::NAN; c_out * 4 * h * w];
            stage.forward_in_bands(View::rows(&x, c_in, h * w), (h, w), band, &mut out);
            for (i, (&got, &want)) in out.iter().zip(&expected).enumerate() {
                assert!((got as f64 - want).abs() < 1e-5, "band {band}, value {i}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn projected_stage_matches_in_any_band_size() {
        let (c_in, c_out, h, w) = (5, 3, 7, 6);
        let (weight, stage) = random_stage(c_in, c_out);
        let project = Project { weight: values(c_out, 17), bias: 0.25 };
        let x = values(c_in * h * w, 5);
        let planes = scatter_reference(&weight, &x, (c_in, c_out, h, w), &stage);
        let expected: Vec<f64> = (0..4 * h * w)
            .map(|p| {
                project.bias as f64
                    + (0..c_out).map(|co| project.weight[co] as f64 * planes[co * 4 * h * w + p]).sum::<f64>()
            })
            .collect();
        for band in [1, 2, 3, 7, 8] {
            let got = stage.forward_projected_in_bands(View::rows(&x, c_in, h * w), (h, w), &project, band);
            for (i, (&got, &want)) in got.iter().zip(&expected).enumerate() {
                assert!((got as f64 - want).abs() < 1e-5, "band {band}, value {i}: {got} vs {want}");
            }
        }
    }
}
