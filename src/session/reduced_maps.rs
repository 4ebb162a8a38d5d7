//! The reduced model's own attention views, on the patch grid: what CLS attention, rollout and
//! token norms look like inside a run whose tokens were pruned or merged.
//!
//! Each block attends over the tokens it was given; the values go back to the original patches
//! through each token's provenance (`TokenState::source`):
//! - attention is a probability mass, so a merged token's share is split evenly over the
//!   patches it stands for (the grid's total equals the tokens' total);
//! - a norm belongs to the token, so each of its patches shows it;
//! - rollout propagates the CLS row back through every block and every plan: a token formed
//!   from earlier tokens passes its share to them in proportion to the patches each brings
//!   (ToMe's size-weighted mean; EViT's fused token is weighted by attention instead, which
//!   this approximates by size).
//!
//! Patches no token carries are NaN (drawn as "no value").

use std::sync::{Arc, OnceLock};

use candle_core::Tensor;

use crate::Result;
use crate::analysis::attention;

/// The attention views of a reduced run, per original patch (raster order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReducedMaps {
    /// Per layer, CLS-to-patch attention averaged over heads.
    pub cls_attention: Vec<Vec<f32>>,
    /// Per layer and head.
    pub cls_attention_heads: Vec<Vec<Vec<f32>>>,
    /// Attention rollout through all layers and plans.
    pub rollout: Vec<f32>,
    /// Per layer, the L2 norm of the token carrying each patch after the block.
    pub token_norms: Vec<Vec<f32>>,
}

/// What one block of a run saw: its attention probabilities `[1, heads, n, n]` with the
/// sources of the `n` tokens it attended over, and its output hidden states `[1, m, d]` with
/// their sources. Holds the tensors (shared, not copied); the maps are made from them only when
/// asked ([`LazyMaps::get`]).
pub(crate) struct BlockSeen {
    pub probs: Tensor,
    pub sources: Vec<Vec<u32>>,
    pub after: Tensor,
    pub after_sources: Vec<Vec<u32>>,
}

impl BlockSeen {
    /// `probs` over tokens with `sources`; `after`: the block's output hidden states `[1, m, d]`
    /// with `after_sources`.
    pub fn new(probs: Tensor, sources: Vec<Vec<u32>>, after: &Tensor, after_sources: Vec<Vec<u32>>) -> Result<Self> {
        Ok(Self { probs, sources, after: after.clone(), after_sources })
    }
}

/// A reduced run's attention views, computed on first use: a slider move pays nothing for them
/// while the view shows the full model's maps. Clones share the blocks and the result.
#[derive(Clone)]
pub struct LazyMaps(Arc<Pending>);

struct Pending {
    blocks: Vec<BlockSeen>,
    num_special: usize,
    num_patches: usize,
    maps: OnceLock<ReducedMaps>,
}

impl LazyMaps {
    /// The views of `blocks` (one per layer, in order) over `num_patches` patches, once asked.
    pub(crate) fn new(blocks: Vec<BlockSeen>, num_special: usize, num_patches: usize) -> Self {
        Self(Arc::new(Pending { blocks, num_special, num_patches, maps: OnceLock::new() }))
    }

    /// The maps, computed on the first call.
    pub fn get(&self) -> Result<&ReducedMaps> {
        let p = &*self.0;
        if let Some(maps) = p.maps.get() {
            return Ok(maps);
        }
        let maps = reduced_maps(&p.blocks, p.num_special, p.num_patches)?;
        Ok(p.maps.get_or_init(|| maps))
    }
}

impl std::fmt::Debug for LazyMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyMaps").field("layers", &self.0.blocks.len()).field("maps", &self.0.maps.get()).finish()
    }
}

/// The views of `blocks` (one per layer, in order) over a grid of `num_patches` patches.
fn reduced_maps(blocks: &[BlockSeen], num_special: usize, num_patches: usize) -> Result<ReducedMaps> {
    let mut maps = ReducedMaps::default();
    let mut mean_rows = Vec::with_capacity(blocks.len());
    for b in blocks {
        let s = num_special;
        let patch_sources = &b.sources[s..];
        maps.cls_attention.push(spread_mass(&attention::cls_attention(&b.probs, s)?, patch_sources, num_patches));
        maps.cls_attention_heads.push(
            attention::cls_attention_heads(&b.probs, s)?
                .iter()
                .map(|head| spread_mass(head, patch_sources, num_patches))
                .collect(),
        );
        let norms = b.after.sqr()?.sum(2)?.sqrt()?.flatten_all()?.to_vec1::<f32>()?;
        maps.token_norms.push(spread_copy(&norms[s..], &b.after_sources[s..], num_patches));
        mean_rows.push(b.probs.mean(1)?.squeeze(0)?.to_vec2::<f32>()?);
    }
    let chain: Vec<Attended<'_>> =
        mean_rows.iter().zip(blocks).map(|(a, b)| (a.as_slice(), b.sources.as_slice())).collect();
    maps.rollout = rollout_through(&chain, num_special, num_patches);
    Ok(maps)
}

/// Per patch, the value of the token carrying it divided by the patches that token carries
/// (NaN where no token does). `values[t]` and `sources[t]`: patch tokens only.
pub fn spread_mass(values: &[f32], sources: &[Vec<u32>], num_patches: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; num_patches];
    for (v, src) in values.iter().zip(sources) {
        for &p in src {
            out[p as usize] = v / src.len() as f32;
        }
    }
    out
}

/// Per patch, the value of the token carrying it (NaN where no token does).
pub fn spread_copy(values: &[f32], sources: &[Vec<u32>], num_patches: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; num_patches];
    for (&v, src) in values.iter().zip(sources) {
        for &p in src {
            out[p as usize] = v;
        }
    }
    out
}

/// One block's head-mean attention (`n × n`) and the sources of its `n` tokens.
pub type Attended<'a> = (&'a [Vec<f32>], &'a [Vec<u32>]);

/// Attention rollout (`0.5 A + 0.5 I`, rows renormalised) through blocks whose token sets
/// change: `chain[l]` = (block `l`'s head-mean attention `n_l × n_l`, its tokens' sources, the
/// `num_special` special tokens first with empty sources). The CLS row (without CLS: the mean
/// row) of the last block is carried back to block 0's tokens, which are the specials and then
/// every patch in raster order; a token made of earlier tokens passes each of them its share
/// in proportion to the patches it brings. Equals [`attention::rollout`] when nothing changes.
pub fn rollout_through(chain: &[Attended<'_>], num_special: usize, num_patches: usize) -> Vec<f32> {
    let Some(&(last, _)) = chain.last() else { return Vec::new() };
    let n = last.len();
    let mut r: Vec<f64> = if num_special > 0 {
        (0..n).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect()
    } else {
        vec![1.0 / n as f64; n]
    };
    for l in (0..chain.len()).rev() {
        let (a, sources) = chain[l];
        // r <- r · (0.5 A + 0.5 I) / rowsum
        let mut next = vec![0.0f64; a.len()];
        for (i, row) in a.iter().enumerate() {
            if r[i] == 0.0 {
                continue;
            }
            let norm = 0.5 * row.iter().map(|&v| f64::from(v)).sum::<f64>() + 0.5;
            let w = r[i] / norm;
            for (j, &v) in row.iter().enumerate() {
                next[j] += w * 0.5 * f64::from(v);
            }
            next[i] += w * 0.5;
        }
        r = next;
        if l == 0 {
            break;
        }
        // Back through the plan between block l-1 and block l.
        let earlier = chain[l - 1].1;
        if earlier != sources {
            r = back_through_plan(&r, sources, earlier, num_special, num_patches);
        }
    }
    r[num_special..].iter().map(|&v| v as f32).collect()
}

/// Carries `r` (over tokens with `sources`) back to the earlier tokens (`earlier`): specials
/// map to themselves; a token passes its value to the earlier tokens holding its patches, in
/// proportion to how many of its patches each holds.
fn back_through_plan(
    r: &[f64],
    sources: &[Vec<u32>],
    earlier: &[Vec<u32>],
    num_special: usize,
    num_patches: usize,
) -> Vec<f64> {
    let mut owner = vec![usize::MAX; num_patches];
    for (o, src) in earlier.iter().enumerate() {
        for &p in src {
            owner[p as usize] = o;
        }
    }
    let mut back = vec![0.0f64; earlier.len()];
    back[..num_special].copy_from_slice(&r[..num_special]);
    for (t, src) in sources.iter().enumerate().skip(num_special) {
        for &p in src {
            if let Some(slot) = back.get_mut(owner[p as usize]) {
                *slot += r[t] / src.len() as f64;
            }
        }
    }
    back
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_merged_token_spreads_its_mass_and_copies_its_norm() {
        // Tokens: patch 0 alone, patches 1+3 merged; patch 2 dropped.
        let sources = vec![vec![0], vec![1, 3]];
        let mass = spread_mass(&[0.2, 0.6], &sources, 4);
        assert_eq!(&mass[..2], &[0.2, 0.3]);
        assert!(mass[2].is_nan());
        assert_eq!(mass[3], 0.3);
        let norm = spread_copy(&[5.0, 7.0], &sources, 4);
        assert_eq!((norm[0], norm[1], norm[3]), (5.0, 7.0, 7.0));
    }

    #[test]
    fn rollout_through_unchanged_tokens_is_the_plain_rollout() {
        let a = vec![0.2f32, 0.5, 0.3, 0.1, 0.6, 0.3, 0.3, 0.3, 0.4];
        let b = vec![0.5f32, 0.25, 0.25, 0.2, 0.2, 0.6, 0.1, 0.8, 0.1];
        let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), (1, 1, 3, 3), &Device::Cpu).unwrap();
        let plain = attention::rollout(&[&t(&a), &t(&b)], 1).unwrap();
        let rows = |v: &[f32]| v.chunks(3).map(<[f32]>::to_vec).collect::<Vec<_>>();
        let (ra, rb) = (rows(&a), rows(&b));
        let sources = vec![vec![], vec![0], vec![1]];
        let through = rollout_through(&[(&ra, &sources), (&rb, &sources)], 1, 2);
        for (x, y) in plain.iter().zip(&through) {
            assert!((x - y).abs() < 1e-6, "{plain:?} vs {through:?}");
        }
    }

    #[test]
    fn rollout_through_a_merge_by_hand() {
        // Block 0: CLS + patches 0, 1 (3 tokens), identity attention (Ã = I).
        // Block 1: CLS + one token merging patches 0 and 1; A = [[0.4, 0.6], [0.5, 0.5]].
        // Ã1 = (0.5 A + 0.5 I) = [[0.7, 0.3], [0.25, 0.75]]: CLS row (0.7, 0.3); the merged
        // token's 0.3 goes half to each patch: 0.15, 0.15.
        let eye: Vec<Vec<f32>> = (0..3).map(|i| (0..3).map(|j| if i == j { 1.0 } else { 0.0 }).collect()).collect();
        let a1 = vec![vec![0.4f32, 0.6], vec![0.5, 0.5]];
        let s0 = vec![vec![], vec![0], vec![1]];
        let s1 = vec![vec![], vec![0, 1]];
        let r = rollout_through(&[(&eye, &s0), (&a1, &s1)], 1, 2);
        assert!((r[0] - 0.15).abs() < 1e-7 && (r[1] - 0.15).abs() < 1e-7, "{r:?}");
    }
}
