//! An answer as text and tokens, and the token-level diff between two answers.

use serde::{Deserialize, Serialize};

/// A generated answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Answer {
    pub ids: Vec<u32>,
    /// Each token decoded on its own (for the diff and the per-word views).
    pub pieces: Vec<String>,
    /// The whole answer decoded (special tokens skipped).
    pub text: String,
    /// Log-probability of each token when it was chosen.
    pub logprobs: Vec<f32>,
    /// Per token, the attention of the query that chose it over the original image tokens
    /// (decoder view layer, mean over heads; null where no row carried the token).
    pub image_attention: Vec<Vec<Option<f32>>>,
    pub stopped_at_eos: bool,
}

impl Answer {
    pub fn new(
        tokenizer: &tokenizers::Tokenizer,
        ids: Vec<u32>,
        logprobs: Vec<f32>,
        image_attention: Vec<Vec<Option<f32>>>,
        stopped_at_eos: bool,
    ) -> Self {
        let decode = |ids: &[u32], skip: bool| tokenizer.decode(ids, skip).unwrap_or_default();
        let pieces = ids.iter().map(|&id| decode(&[id], false)).collect();
        Self { text: decode(&ids, true).trim().to_string(), pieces, ids, logprobs, image_attention, stopped_at_eos }
    }
}

/// One step of a token-level diff from answer `a` to answer `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DiffOp {
    /// `a[a_index] == b[b_index]`.
    Same { a: usize, b: usize },
    /// `a[a_index]` is not in `b`.
    Removed { a: usize },
    /// `b[b_index]` is not in `a`.
    Added { b: usize },
}

/// The shortest edit script between two token sequences (longest common subsequence), in order.
pub fn diff_tokens(a: &[u32], b: &[u32]) -> Vec<DiffOp> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: the LCS length of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut ops) = (0, 0, Vec::with_capacity(n.max(m)));
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push(DiffOp::Same { a: i, b: j });
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            ops.push(DiffOp::Added { b: j });
            j += 1;
        } else {
            ops.push(DiffOp::Removed { a: i });
            i += 1;
        }
    }
    ops
}

/// Index of the first token where `b` departs from `a` (None if they are equal).
pub fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    (common < a.len().max(b.len())).then_some(common)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_by_hand() {
        // a = the cat sat, b = the dog sat down
        let ops = diff_tokens(&[1, 2, 3], &[1, 4, 3, 5]);
        assert_eq!(
            ops,
            vec![
                DiffOp::Same { a: 0, b: 0 },
                DiffOp::Added { b: 1 },
                DiffOp::Removed { a: 1 },
                DiffOp::Same { a: 2, b: 2 },
                DiffOp::Added { b: 3 },
            ]
        );
        assert!(diff_tokens(&[7, 8], &[7, 8]).iter().all(|op| matches!(op, DiffOp::Same { .. })));
        assert_eq!(diff_tokens(&[], &[1]), vec![DiffOp::Added { b: 0 }]);
        assert_eq!(first_difference(&[1, 2, 3], &[1, 2, 4]), Some(2));
        assert_eq!(first_difference(&[1, 2], &[1, 2]), None);
        assert_eq!(first_difference(&[1, 2], &[1, 2, 3]), Some(2));
    }

    #[test]
    fn every_token_appears_once_on_its_side() {
        let (a, b) = ([5, 1, 5, 2, 9, 9], [1, 5, 9, 2, 5]);
        let ops = diff_tokens(&a, &b);
        let mut seen_a: Vec<usize> = ops
            .iter()
            .filter_map(|op| match *op {
                DiffOp::Same { a, .. } | DiffOp::Removed { a } => Some(a),
                DiffOp::Added { .. } => None,
            })
            .collect();
        let seen_b: Vec<usize> = ops
            .iter()
            .filter_map(|op| match *op {
                DiffOp::Same { b, .. } | DiffOp::Added { b } => Some(b),
                DiffOp::Removed { .. } => None,
            })
            .collect();
        seen_a.dedup();
        assert_eq!(seen_a, (0..a.len()).collect::<Vec<_>>());
        assert_eq!(seen_b, (0..b.len()).collect::<Vec<_>>());
        let same = ops.iter().filter(|op| matches!(op, DiffOp::Same { .. })).count();
        assert_eq!(same, 3); // LCS of the two is 3 (e.g. 1 5 9 / 1 2 5 ...)
    }
}
