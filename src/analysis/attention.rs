//! Attention views: CLS attention per layer and attention rollout (Abnar & Zuidema, 2020,
//! <https://arxiv.org/abs/2005.00928>).

use candle_core::{D, Tensor};

use crate::Result;

/// CLS-to-patch attention, mean over heads: `[1, heads, n, n]` -> one value per token after the
/// `num_special` leading tokens (the patches, in token order). Without CLS (`num_special` 0):
/// the mean attention each token receives.
pub fn cls_attention(probs: &Tensor, num_special: usize) -> Result<Vec<f32>> {
    let n = probs.dim(D::Minus1)?;
    let row = if num_special == 0 { probs.mean_keepdim(2)?.mean(1)? } else { probs.narrow(2, 0, 1)?.mean(1)? }; // [1, 1, n]
    Ok(row.narrow(2, num_special, n - num_special)?.flatten_all()?.to_vec1()?)
}

/// CLS-to-patch attention of every head: `[1, heads, n, n]` -> `[heads][patches]` (without CLS:
/// the attention each token receives from all queries).
pub fn cls_attention_heads(probs: &Tensor, num_special: usize) -> Result<Vec<Vec<f32>>> {
    let n = probs.dim(D::Minus1)?;
    let rows = if num_special == 0 { probs.mean(2)? } else { probs.narrow(2, 0, 1)?.squeeze(2)? }.squeeze(0)?; // [heads, n]
    Ok(rows.narrow(1, num_special, n - num_special)?.to_vec2()?)
}

/// Attention rollout: per layer, average heads, add the identity for the residual path and
/// renormalise rows (`0.5 A + 0.5 I`), multiply through the layers, and read the CLS row over
/// the patches. Only meaningful while no tokens were removed (square, same-size maps).
pub fn rollout(probs_per_layer: &[&Tensor], num_special: usize) -> Result<Vec<f32>> {
    let Some(first) = probs_per_layer.first() else {
        return Ok(Vec::new());
    };
    let n = first.dim(D::Minus1)?;
    let eye = Tensor::eye(n, first.dtype(), first.device())?;
    let mut joint = eye.clone();
    for probs in probs_per_layer {
        let a = ((probs.mean(1)?.squeeze(0)? * 0.5)? + (&eye * 0.5)?)?; // [n, n]
        let a = a.broadcast_div(&a.sum_keepdim(1)?)?;
        joint = a.matmul(&joint)?;
    }
    // Without CLS, the mean row: how much of every token's output each input token reaches.
    let row = if num_special == 0 { joint.mean_keepdim(0)? } else { joint.narrow(0, 0, 1)? };
    Ok(row.narrow(1, num_special, n - num_special)?.flatten_all()?.to_vec1()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rollout_of_uniform_attention_is_uniform() {
        let n = 5;
        let probs = Tensor::full(1.0f32 / n as f32, (1, 2, n, n), &Device::Cpu).unwrap();
        let r = rollout(&[&probs, &probs], 1).unwrap();
        // With U = J/n (U² = U) and M = (U + I)/2: M² = 0.75 U + 0.25 I, so CLS -> patch = 0.75/5.
        assert_eq!(r.len(), 4);
        assert!(r.iter().all(|v| (v - 0.15).abs() < 1e-6), "{r:?}");
    }

    #[test]
    fn rollout_by_hand_one_layer() {
        // One layer, one head, 2 tokens, attention [[0.2, 0.8], [0.6, 0.4]].
        let probs = Tensor::from_vec(vec![0.2f32, 0.8, 0.6, 0.4], (1, 1, 2, 2), &Device::Cpu).unwrap();
        // 0.5 A + 0.5 I = [[0.6, 0.4], [0.3, 0.7]]: rows already sum to 1; CLS -> patch = 0.4.
        let r = rollout(&[&probs], 1).unwrap();
        assert!((r[0] - 0.4).abs() < 1e-6);
        let c = cls_attention(&probs, 1).unwrap();
        assert!((c[0] - 0.8).abs() < 1e-6);
    }
}
