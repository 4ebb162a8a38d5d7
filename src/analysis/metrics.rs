//! Fidelity: how far a reduced run's output is from the full run's.

use serde::{Deserialize, Serialize};

/// Output drift of a reduced run against the full run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Mean absolute difference of the outputs (saliency pixels or probabilities).
    pub output_l1: f64,
    /// Pearson correlation of the outputs (1 = same shape).
    pub output_pearson: f64,
    /// IoU of the top-20 % of each output (the most salient pixels, or the top classes).
    pub output_iou_top20: f64,
    /// Cosine similarity of the final CLS embeddings.
    pub cls_cosine: f64,
    /// Mean cosine similarity of final patch features over the patches a surviving token covers.
    pub patch_cosine_mean: f64,
    /// Class-like outputs: the most probable label is the full model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1_agrees: Option<bool>,
    /// Class-like outputs: KL(full || reduced) of the probabilities, in nats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_divergence: Option<f64>,
}

pub fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).sum::<f64>() / a.len().max(1) as f64
}

/// Pearson correlation; 1 when both inputs are identical (even constant), 0 when one is constant.
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    if a == b {
        return 1.0;
    }
    let n = a.len() as f64;
    let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let (ma, mb) = (mean(a), mean(b));
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (f64::from(x) - ma, f64::from(y) - mb);
        cov += dx * dy;
        va += dx * dx;
        vb += dy * dy;
    }
    if va == 0.0 || vb == 0.0 { 0.0 } else { cov / (va * vb).sqrt() }
}

/// Indices of the `fraction` largest values (ties broken by index).
fn top_set(v: &[f32], fraction: f64) -> Vec<bool> {
    let k = ((v.len() as f64 * fraction).round() as usize).max(1).min(v.len());
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&i, &j| v[j].total_cmp(&v[i]).then(i.cmp(&j)));
    let mut mask = vec![false; v.len()];
    for &i in &idx[..k] {
        mask[i] = true;
    }
    mask
}

/// IoU of the top-`fraction` regions of two maps; NaN where there is no map (an encoder without
/// an output head).
pub fn top_iou(a: &[f32], b: &[f32], fraction: f64) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let (ma, mb) = (top_set(a, fraction), top_set(b, fraction));
    let inter = ma.iter().zip(&mb).filter(|(x, y)| **x && **y).count();
    let union = ma.iter().zip(&mb).filter(|(x, y)| **x || **y).count();
    inter as f64 / union.max(1) as f64
}

/// KL(p || q) in nats for probability vectors (zero entries of p add nothing; q is floored at
/// 1e-12 so a vanished class gives a large but finite value).
pub fn kl(p: &[f32], q: &[f32]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(p, _)| **p > 0.0)
        .map(|(&p, &q)| f64::from(p) * (f64::from(p) / f64::from(q).max(1e-12)).ln())
        .sum()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na * nb) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_iou_of_no_map_is_nan_not_a_panic() {
        // `tokenlens run` on a bare encoder (no head: no output map) panicked here.
        assert!(top_iou(&[], &[], 0.2).is_nan());
        assert_eq!(top_iou(&[1.0, 0.0], &[1.0, 0.0], 0.2), 1.0);
    }

    #[test]
    fn by_hand() {
        assert_eq!(mean_abs_diff(&[1.0, 2.0], &[2.0, 2.0]), 0.5);
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&[1.0, 1.0], &[1.0, 1.0]), 1.0);
        // Top 2 of 4: {0, 1} vs {1, 2}: IoU 1/3.
        assert!((top_iou(&[4.0, 3.0, 1.0, 0.0], &[0.0, 3.0, 4.0, 1.0], 0.5) - 1.0 / 3.0).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        // KL([0.5, 0.5] || [0.25, 0.75]) = 0.5 ln 2 + 0.5 ln(2/3).
        assert!((kl(&[0.5, 0.5], &[0.25, 0.75]) - (0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln())).abs() < 1e-7);
        assert_eq!(kl(&[0.3, 0.7], &[0.3, 0.7]), 0.0);
    }
}
