//! Helpers shared by the language-side reducers. Sequences are short (hundreds of rows), so
//! selection works on plain `Vec`s where tie-breaking and order are explicit; only the cosine
//! matrix uses a matmul.

use candle_core::{DType, Tensor};

use crate::reduce::{Plan, SiteView};
use crate::{Error, Result};

/// Layer k's attention averaged over heads, `[heads, n, n]` (or `[1, heads, n, n]`) -> `[n][n]`
/// (row = query).
pub fn attention_mean_heads(attn: &Tensor) -> Result<Vec<Vec<f32>>> {
    let attn = if attn.rank() == 4 { attn.squeeze(0)? } else { attn.clone() };
    Ok(attn.to_dtype(DType::F32)?.mean(0)?.to_vec2()?)
}

/// The attention the view carries, averaged over heads, or an error naming the method that
/// asked for it (the decoder loop must materialise it where `needs` said so).
pub fn required_attention(view: &SiteView<'_>, method: &str) -> Result<Vec<Vec<f32>>> {
    let attn = view.attn.probs.as_ref().ok_or_else(|| Error::Config {
        field: "attention",
        reason: format!("{method} needs the decoder attention at {:?}, and none was given", view.site),
    })?;
    let a = attention_mean_heads(attn)?;
    if a.len() != view.num_rows() {
        return Err(Error::Config {
            field: "attention",
            reason: format!("{method}: attention over {} rows for a sequence of {}", a.len(), view.num_rows()),
        });
    }
    Ok(a)
}

/// For every key in `keys`, the mean over `queries` of `a[q][key]` (head-averaged attention).
/// Causal zeros (a query before the key) are part of the mean. Empty `queries`: zeros.
pub fn received_from(a: &[Vec<f32>], queries: &[usize], keys: &[usize]) -> Vec<f32> {
    keys.iter()
        .map(|&k| {
            if queries.is_empty() { 0.0 } else { queries.iter().map(|&q| a[q][k]).sum::<f32>() / queries.len() as f32 }
        })
        .collect()
}

/// Cosine similarity between rows `a` and rows `b` of `hidden` (`[n, d]`, or `[1, n, d]`), as
/// `[a.len()][b.len()]`. A zero row has similarity 0 with everything (norms are floored).
pub fn cosine_rows(hidden: &Tensor, a: &[usize], b: &[usize]) -> Result<Vec<Vec<f32>>> {
    if a.is_empty() || b.is_empty() {
        return Ok(vec![Vec::new(); a.len()]);
    }
    let h = if hidden.rank() == 3 { hidden.squeeze(0)? } else { hidden.clone() };
    let h = h.to_dtype(DType::F32)?;
    let pick = |idx: &[usize]| -> Result<Tensor> {
        let ids = Tensor::new(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), h.device())?;
        let t = h.index_select(&ids, 0)?;
        let norm = t.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        Ok(t.broadcast_div(&norm)?)
    };
    Ok(pick(a)?.matmul(&pick(b)?.t()?)?.to_vec2()?)
}

/// Per row of the sequence: `values[i]` at `rows_idx[i]`, NaN elsewhere.
pub fn scores_on_rows(num_rows: usize, rows_idx: &[usize], values: &[f32]) -> Vec<f32> {
    let mut s = vec![f32::NAN; num_rows];
    for (&r, &v) in rows_idx.iter().zip(values) {
        s[r] = v;
    }
    s
}

/// The vision tower's saliency of every image row: the sum over the original tokens it carries.
pub fn row_saliency(view: &SiteView<'_>, image_rows: &[usize]) -> Result<Vec<f32>> {
    image_rows
        .iter()
        .map(|&r| {
            view.state.source[r]
                .iter()
                .map(|&t| {
                    view.vision_saliency.get(t as usize).copied().ok_or_else(|| Error::Config {
                        field: "vision_saliency",
                        reason: format!("no saliency for image token {t} (have {})", view.vision_saliency.len()),
                    })
                })
                .sum()
        })
        .collect()
}

/// A plan with `scores` keeping the image rows `keep` and merging each of the `merged` groups
/// into one row at its first member's place (see [`Plan::in_sequence`]); text rows stay.
pub fn plan(view: &SiteView<'_>, scores: Vec<f32>, keep: Vec<usize>, merged: Vec<Vec<usize>>) -> Plan {
    Plan::in_sequence(view.state, &keep, merged).with_scores(scores)
}

/// Greedy k-centre (farthest-point) on a distance over `0..n`: starting from the `seeds` (or,
/// with none, from `first`), repeatedly add the point whose distance to the nearest chosen
/// point is largest (ties: the lowest index), until `k` are chosen in all (seeds included).
/// Returns the added points in the order they were chosen (seeds excluded, `first` included).
pub fn k_centre(n: usize, k: usize, seeds: &[usize], first: usize, dist: impl Fn(usize, usize) -> f32) -> Vec<usize> {
    let mut chosen = vec![false; n];
    let mut min_dist = vec![f32::INFINITY; n];
    let mut added = Vec::new();
    let take = |c: usize, chosen: &mut Vec<bool>, min_dist: &mut Vec<f32>| {
        chosen[c] = true;
        for (j, m) in min_dist.iter_mut().enumerate() {
            *m = m.min(dist(c, j));
        }
    };
    for &s in seeds {
        take(s, &mut chosen, &mut min_dist);
    }
    let mut total = seeds.len();
    if seeds.is_empty() && k > 0 && n > 0 {
        take(first, &mut chosen, &mut min_dist);
        added.push(first);
        total = 1;
    }
    while total < k.min(n) {
        let next = (0..n).filter(|&j| !chosen[j]).fold(None, |best: Option<usize>, j| match best {
            Some(b) if min_dist[j] <= min_dist[b] => Some(b),
            _ => Some(j),
        });
        let Some(next) = next else { break };
        take(next, &mut chosen, &mut min_dist);
        added.push(next);
        total += 1;
    }
    added
}

/// Clusters `0..n` into `g` groups: `g` centres by k-centre on `1 - sim` (the first centre is
/// the point with the highest total similarity, the densest), every other point joins the
/// centre it is most similar to (ties: the earlier centre). Each group lists its centre first,
/// then its other members ascending.
pub fn cluster(sim: &[Vec<f32>], g: usize) -> Vec<Vec<usize>> {
    let n = sim.len();
    if n == 0 || g == 0 {
        return Vec::new();
    }
    let density: Vec<f32> = sim.iter().map(|r| r.iter().sum()).collect();
    let first = (0..n).fold(0, |b, i| if density[i] > density[b] { i } else { b });
    let centres = k_centre(n, g, &[], first, |a, b| 1.0 - sim[a][b]);
    let mut groups: Vec<Vec<usize>> = centres.iter().map(|&c| vec![c]).collect();
    for j in (0..n).filter(|j| !centres.contains(j)) {
        let best = (0..centres.len()).fold(0, |b, c| if sim[j][centres[c]] > sim[j][centres[b]] { c } else { b });
        groups[best].push(j);
    }
    for grp in &mut groups {
        grp[1..].sort_unstable();
    }
    groups
}

/// Indices sorted by descending value; ties keep the lower index first (stable).
pub fn argsort_desc(values: &[f32]) -> Vec<usize> {
    crate::reduce::ops::argsort_desc(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn k_centre_on_a_line() {
        let x = [0.0f32, 1.0, 2.0, 10.0, 11.0];
        let d = |a: usize, b: usize| (x[a] - x[b]).abs();
        // From 2: farthest is 11 (index 4); then min(d to 2, d to 11): 0 -> 2, 1 -> 1, 10 -> 1:
        // index 0.
        assert_eq!(k_centre(5, 3, &[], 2, d), [2, 4, 0]);
        // Seeded with {3}: farthest is 0, then 2 (min(2, 8) = 2 beats 1 -> 1, 11 -> 1).
        assert_eq!(k_centre(5, 3, &[3], 0, d), [0, 2]);
    }

    #[test]
    fn clusters_by_hand() {
        // Two tight pairs and a loner: {0, 1}, {2, 3}, {4}.
        let sim = vec![
            vec![1.0, 0.9, 0.1, 0.1, 0.0],
            vec![0.9, 1.0, 0.2, 0.1, 0.0],
            vec![0.1, 0.2, 1.0, 0.95, 0.0],
            vec![0.1, 0.1, 0.95, 1.0, 0.0],
            vec![0.0, 0.0, 0.0, 0.0, 1.0],
        ];
        // Densest: row 2 (2.25). Farthest from it: 4 (d 1.0). Then min(d to 2, d to 4): 0 -> 0.9,
        // 1 -> 0.8, 3 -> 0.05: index 0.
        let mut g = cluster(&sim, 3);
        g.sort();
        assert_eq!(g, vec![vec![0, 1], vec![2, 3], vec![4]]);
    }

    #[test]
    fn cosine_and_attention_by_hand() {
        let h = Tensor::new(&[[1f32, 0.0], [1.0, 1.0], [0.0, 0.0]], &Device::Cpu).unwrap();
        let c = cosine_rows(&h, &[0, 2], &[1]).unwrap();
        assert!((c[0][0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(c[1][0], 0.0);
        // 2 heads, 2 rows.
        let a = Tensor::new(&[[[1f32, 0.0], [0.5, 0.5]], [[1.0, 0.0], [0.1, 0.9]]], &Device::Cpu).unwrap();
        let m = attention_mean_heads(&a).unwrap();
        assert!((m[1][1] - 0.7).abs() < 1e-6);
        let r = received_from(&m, &[0, 1], &[1]);
        assert!((r[0] - 0.35).abs() < 1e-6);
    }
}
