//! Helpers shared by reducers. Token sets are small (hundreds), so selection logic works on
//! plain `Vec`s where tie-breaking and order are explicit; only the cosine matrix uses a matmul.

use candle_core::{D, Tensor};

use crate::Result;

/// Rows of a `[n, d]` tensor (a leading batch dim of 1 is dropped).
pub fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let t = if t.rank() == 3 { t.squeeze(0)? } else { t.clone() };
    Ok(t.to_vec2()?)
}

/// Keys averaged over heads (ToMe's similarity metric): `[1, heads, n, hd]` -> `[n, hd]`.
pub fn keys_mean_heads(keys: &Tensor) -> Result<Tensor> {
    Ok(keys.mean(1)?.squeeze(0)?)
}

/// Cosine similarity of every row of `a` with every row of `b`: `[n, d] x [m, d] -> [n][m]`.
pub fn cosine_matrix(a: &Tensor, b: &Tensor) -> Result<Vec<Vec<f32>>> {
    let norm = |t: &Tensor| -> Result<Tensor> { Ok(t.broadcast_div(&t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?) };
    Ok(norm(a)?.matmul(&norm(b)?.t()?)?.to_vec2()?)
}

/// Attention from the CLS query to every token, mean over heads: `[1, h, n, n]` -> `[n]`.
pub fn cls_attention_row(probs: &Tensor) -> Result<Vec<f32>> {
    Ok(probs.narrow(2, 0, 1)?.mean(1)?.flatten_all()?.to_vec1()?)
}

/// Attention each token receives, mean over heads and queries: `[1, h, n, n]` -> `[n]`
/// (the CLS-free importance REDUCERS.md prescribes for encoders without CLS).
pub fn attention_received(probs: &Tensor) -> Result<Vec<f32>> {
    Ok(probs.mean(1)?.mean(1)?.flatten_all()?.to_vec1()?)
}

/// The importance CLS-based methods use: CLS attention, or, for encoders without a CLS token
/// (SigLIP), the mean attention each token receives (REDUCERS.md's fallback). `[n]`.
pub fn cls_or_received(probs: &Tensor, num_special: usize) -> Result<Vec<f32>> {
    if num_special > 0 { cls_attention_row(probs) } else { attention_received(probs) }
}

/// What the UI says when a CLS-based method runs on an encoder without CLS.
pub const NO_CLS_NOTE: &str = "This encoder has no CLS token: tokens are scored by the mean attention they receive.";

/// Indices sorted by descending value; ties keep the lower index first (stable).
pub fn argsort_desc(values: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    idx
}

/// The `k` highest-scoring of `candidates`, returned in ascending (raster) order.
pub fn top_k_in_order(scores: &[f32], candidates: &[usize], k: usize) -> Vec<usize> {
    let sub: Vec<f32> = candidates.iter().map(|&c| scores[c]).collect();
    let mut picked: Vec<usize> = argsort_desc(&sub).into_iter().take(k).map(|i| candidates[i]).collect();
    picked.sort_unstable();
    picked
}

/// Token indices of the patch tokens (after the specials).
pub fn patch_tokens(num_special: usize, num_tokens: usize) -> Vec<usize> {
    (num_special..num_tokens).collect()
}

/// Per-token scores where only patch tokens have a value: specials get NaN.
pub fn with_special_nan(num_special: usize, patch_scores: impl IntoIterator<Item = f32>) -> Vec<f32> {
    std::iter::repeat_n(f32::NAN, num_special).chain(patch_scores).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn argsort_is_stable_and_descending() {
        assert_eq!(argsort_desc(&[0.5, 0.9, 0.5, 0.1]), [1, 0, 2, 3]);
        assert_eq!(top_k_in_order(&[0.5, 0.9, 0.5, 0.1, 0.95], &[1, 2, 3, 4], 2), [1, 4]);
    }

    #[test]
    fn cosine_by_hand() {
        let a = Tensor::new(&[[1f32, 0.0], [1.0, 1.0]], &Device::Cpu).unwrap();
        let c = cosine_matrix(&a, &a).unwrap();
        assert!((c[0][1] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert!((c[1][1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn attention_summaries_by_hand() {
        // 1 head, 2 tokens.
        let p = Tensor::new(&[[[[0.25f32, 0.75], [0.5, 0.5]]]], &Device::Cpu).unwrap();
        assert_eq!(cls_attention_row(&p).unwrap(), [0.25, 0.75]);
        assert_eq!(attention_received(&p).unwrap(), [0.375, 0.625]);
    }
}
