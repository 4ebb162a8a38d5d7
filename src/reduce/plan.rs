//! Plans are data: which input tokens form each output token, with what weights. This is the
//! only code that moves tokens, on both sides: an encoder's tokens between blocks, and a language
//! model's rows before layer 0 or between decoder layers (the decoder gathers its KV-cache-bound
//! hidden states and position ids through [`Plan::apply`]). Every reducer returns a [`Plan`] and
//! gets provenance (sizes, source, roles, positions) for free, and the GUI can show a plan
//! without re-running the model.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::model::TokenState;

/// How position ids are carried after pruning (matters for language models; a ViT adds its
/// position embeddings before block 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionMode {
    /// Each token keeps its original id (gaps remain); a merged token takes its anchor's.
    #[default]
    Preserve,
    /// Re-index 0..n-1.
    Compact,
}

/// One output token: the weighted mean (or sum) of `members` (input token indices).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub members: Vec<usize>,
    pub weights: Vec<f32>,
    /// The member whose position id the output token takes (a merge's destination).
    pub anchor: usize,
    /// Divide by the sum of the weights (a weighted mean); `false` keeps the weighted sum
    /// (EViT's fused token is Σ a_i x_i).
    pub normalize: bool,
}

impl Group {
    pub fn single(token: usize) -> Self {
        Self { members: vec![token], weights: vec![1.0], anchor: token, normalize: true }
    }

    /// A weighted mean anchored at `anchor`.
    pub fn mean(members: Vec<usize>, weights: Vec<f32>, anchor: usize) -> Self {
        Self { members, weights, anchor, normalize: true }
    }
}

/// What a reducer decided at one site: the output tokens as groups of input tokens. An image
/// token in a one-member group is kept (a "merge" of one row, such as a SparseVLM cluster of
/// one, is that row kept), in a larger group merged, in none dropped; special and text tokens
/// are always kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Output tokens, in order. Special tokens must come first, unchanged; text rows stay.
    pub groups: Vec<Group>,
    /// The method's importance per input token (NaN where it has none), for overlays.
    pub scores: Option<Vec<f32>>,
}

impl Plan {
    pub fn identity(num_tokens: usize) -> Self {
        Self { groups: (0..num_tokens).map(Group::single).collect(), scores: None }
    }

    /// Keeps the special tokens and `kept` (input token indices) in the given order.
    pub fn keep(num_special: usize, kept: &[usize]) -> Self {
        let groups = (0..num_special).chain(kept.iter().copied()).map(Group::single).collect();
        Self { groups, scores: None }
    }

    /// A language model's plan, in sequence order: every text row stays where it is; of the
    /// image rows, `keep` stay and each `merged` group (disjoint, image rows) becomes one row at
    /// its first member's place, the mean of its members weighted by the image tokens each
    /// carries (its size), taking that member's position id; the other image rows go.
    pub fn in_sequence(state: &TokenState, keep: &[usize], merged: Vec<Vec<usize>>) -> Self {
        let mut kept = vec![false; state.num_tokens()];
        for &i in keep {
            kept[i] = true;
        }
        let mut at: Vec<Option<Vec<usize>>> = vec![None; state.num_tokens()];
        for members in merged {
            let first = members[0];
            at[first] = Some(members);
        }
        let groups = at
            .into_iter()
            .enumerate()
            .filter_map(|(i, members)| match members {
                Some(members) => {
                    let weights = members.iter().map(|&m| state.sizes[m]).collect();
                    Some(Group::mean(members, weights, i))
                }
                None => (!state.is_image(i) || kept[i]).then(|| Group::single(i)),
            })
            .collect();
        Self { groups, scores: None }
    }

    pub fn with_scores(mut self, scores: Vec<f32>) -> Self {
        self.scores = Some(scores);
        self
    }

    pub fn is_identity(&self, num_tokens: usize) -> bool {
        self.groups.len() == num_tokens
            && self.groups.iter().enumerate().all(|(i, g)| g.members.len() == 1 && g.members[0] == i)
    }

    /// Image tokens kept as they are (one-member groups), in output order.
    pub fn kept(&self, state: &TokenState) -> Vec<usize> {
        self.groups
            .iter()
            .filter(|g| g.members.len() == 1 && state.is_image(g.members[0]))
            .map(|g| g.members[0])
            .collect()
    }

    /// The merged groups' members (groups of more than one token), in output order.
    pub fn merged(&self) -> Vec<&[usize]> {
        self.groups.iter().filter(|g| g.members.len() > 1).map(|g| g.members.as_slice()).collect()
    }

    /// Image tokens after the plan.
    pub fn output_image_tokens(&self, state: &TokenState) -> usize {
        self.groups.iter().filter(|g| state.is_image(g.anchor)).count()
    }

    /// Checks the plan against the state it will be applied to: members in range, each input
    /// token used at most once, special tokens first and untouched, text rows kept alone, one
    /// score per input token.
    pub fn validate(&self, state: &TokenState) -> std::result::Result<(), String> {
        let n = state.num_tokens();
        let mut used = vec![false; n];
        for (i, g) in self.groups.iter().enumerate() {
            if g.members.is_empty() || g.members.len() != g.weights.len() || !g.members.contains(&g.anchor) {
                return Err(format!("group {i} is malformed"));
            }
            for &m in &g.members {
                if m >= n || std::mem::replace(&mut used[m], true) {
                    return Err(format!("token {m} is out of range or used twice"));
                }
                if g.members.len() > 1 && !state.is_image(m) {
                    return Err(format!("token {m} is not an image token and is merged"));
                }
            }
        }
        if (0..state.num_special).any(|s| self.groups.get(s) != Some(&Group::single(s))) {
            return Err("special tokens must stay first and unchanged".into());
        }
        if let Some(t) = (0..n).find(|&t| !state.is_image(t) && !used[t]) {
            return Err(format!("{:?} token {t} is dropped", state.roles[t]));
        }
        if self.scores.as_ref().is_some_and(|s| s.len() != n) {
            return Err("one score per input token expected".into());
        }
        Ok(())
    }

    /// The new state: weighted means of hidden states, summed sizes, united sources, the
    /// anchors' roles.
    pub fn apply(&self, state: &TokenState, positions: PositionMode) -> Result<TokenState> {
        if let Err(reason) = self.validate(state) {
            // A malformed plan is a bug in a reducer, not bad user input.
            panic!("invalid plan: {reason}");
        }
        if self.is_identity(state.num_tokens()) {
            return Ok(state.clone());
        }
        let hidden = if self.groups.iter().all(|g| g.members.len() == 1) {
            let idx: Vec<u32> = self.groups.iter().map(|g| g.members[0] as u32).collect();
            let idx = Tensor::from_vec(idx, self.groups.len(), state.hidden.device())?;
            state.hidden.index_select(&idx, 1)?
        } else {
            let n = state.num_tokens();
            let mut w = vec![0f32; self.groups.len() * n];
            for (o, g) in self.groups.iter().enumerate() {
                let total: f32 = if g.normalize { g.weights.iter().sum() } else { 1.0 };
                for (&m, &wt) in g.members.iter().zip(&g.weights) {
                    w[o * n + m] = wt / total;
                }
            }
            let w = Tensor::from_vec(w, (1, self.groups.len(), n), state.hidden.device())?;
            w.matmul(&state.hidden)?
        };
        let mut out = state.clone();
        out.hidden = hidden;
        out.sizes = self.groups.iter().map(|g| g.members.iter().map(|&m| state.sizes[m]).sum()).collect();
        out.source = self
            .groups
            .iter()
            .map(|g| {
                let mut s: Vec<u32> = g.members.iter().flat_map(|&m| state.source[m].iter().copied()).collect();
                s.sort_unstable();
                s
            })
            .collect();
        out.roles = self.groups.iter().map(|g| state.roles[g.anchor]).collect();
        out.positions = match positions {
            PositionMode::Preserve => self.groups.iter().map(|g| state.positions[g.anchor]).collect(),
            PositionMode::Compact => (0..self.groups.len() as u32).collect(),
        };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn toy() -> TokenState {
        // CLS + 4 patches on a 2x2 grid; hidden row i = [i, 10 i].
        let h: Vec<f32> = (0..5).flat_map(|i| [i as f32, 10.0 * i as f32]).collect();
        TokenState::fresh(Tensor::from_vec(h, (1, 5, 2), &Device::Cpu).unwrap(), 1, (2, 2))
    }

    #[test]
    fn prune_keeps_rows_and_provenance() {
        let s = toy();
        let out = Plan::keep(1, &[2, 4]).apply(&s, PositionMode::Preserve).unwrap();
        assert_eq!(out.hidden.squeeze(0).unwrap().to_vec2::<f32>().unwrap(), [[0.0, 0.0], [2.0, 20.0], [4.0, 40.0]]);
        assert_eq!(out.source, vec![vec![], vec![1], vec![3]]);
        assert_eq!(out.positions, [0, 2, 4]);
        let compact = Plan::keep(1, &[2, 4]).apply(&s, PositionMode::Compact).unwrap();
        assert_eq!(compact.positions, [0, 1, 2]);
    }

    #[test]
    fn merge_is_a_size_weighted_mean() {
        let mut s = toy();
        s.sizes[3] = 3.0; // token 3 already stands for 3 patches
        let plan = Plan {
            groups: vec![
                Group::single(0),
                Group::single(1),
                Group::mean(vec![4, 3], vec![s.sizes[4], s.sizes[3]], 4),
                Group::single(2),
            ],
            scores: None,
        };
        let out = plan.apply(&s, PositionMode::Preserve).unwrap();
        let merged = out.hidden.squeeze(0).unwrap().to_vec2::<f32>().unwrap()[2].clone();
        assert_eq!(merged, [(4.0 + 3.0 * 3.0) / 4.0, (40.0 + 30.0 * 3.0) / 4.0]);
        assert_eq!(out.sizes, [1.0, 1.0, 4.0, 1.0]);
        assert_eq!(out.source[2], [2, 3]);
        assert_eq!(out.positions[2], 4);
    }

    #[test]
    fn identity_is_exact_and_bad_plans_are_caught() {
        let s = toy();
        assert!(Plan::identity(5).is_identity(5));
        let twice = Plan { groups: vec![Group::single(0), Group::single(1), Group::single(1)], scores: None };
        assert!(twice.validate(&s).is_err());
        let cls_moved = Plan::keep(0, &[1, 0]);
        assert!(cls_moved.validate(&s).is_err());
    }

    #[test]
    fn one_plan_moves_encoder_tokens_and_decoder_rows_alike() {
        use crate::model::Role::{Image, Special, Text};
        let rows = |out: &TokenState| out.hidden.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let close = |a: &[Vec<f32>], b: &[[f32; 2]]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x[0] - y[0]).abs() < 1e-5 && (x[1] - y[1]).abs() < 1e-5)
        };
        // Five rows, row i = [i, 10 i]. Keep 0 and 4, merge 3 (weight 2) with 1 (weight 1) at 3's
        // place, drop 2: by hand, the merged row is (2 * 3 + 1) / 3 = 7/3.
        let plan = Plan {
            groups: vec![Group::single(0), Group::mean(vec![3, 1], vec![2.0, 1.0], 3), Group::single(4)],
            scores: None,
        };
        let want = [[0.0, 0.0], [7.0 / 3.0, 70.0 / 3.0], [4.0, 40.0]];
        // An encoder: CLS + 4 patches.
        let enc = plan.apply(&toy(), PositionMode::Preserve).unwrap();
        assert!(close(&rows(&enc), &want), "{:?}", rows(&enc));
        assert_eq!(
            (enc.sizes, enc.source, enc.positions),
            (vec![1.0, 2.0, 1.0], vec![vec![], vec![0, 2], vec![3]], vec![0, 3, 4])
        );
        assert_eq!(enc.roles, [Special, Image, Image]);
        // A decoder: text, three image rows (the last carries image tokens 2 and 3), text.
        let dec = TokenState::sequence(
            toy().hidden,
            vec![None, Some(vec![0]), Some(vec![1]), Some(vec![2, 3]), None],
            (2, 2),
        );
        assert_eq!(dec.sizes, [1.0, 1.0, 1.0, 2.0, 1.0]);
        // A language-side method says it in sequence terms; the weights are the sizes.
        assert_eq!(Plan::in_sequence(&dec, &[], vec![vec![3, 1]]), plan);
        let out = plan.apply(&dec, PositionMode::Preserve).unwrap();
        assert!(close(&rows(&out), &want), "{:?}", rows(&out));
        assert_eq!(
            (out.sizes, out.source, out.positions),
            (vec![1.0, 3.0, 1.0], vec![vec![], vec![0, 2, 3], vec![]], vec![0, 3, 4])
        );
        assert_eq!(out.roles, [Text, Image, Text]);
        assert_eq!((plan.kept(&dec), plan.merged(), plan.output_image_tokens(&dec)), (vec![], vec![&[3, 1][..]], 1));
        assert_eq!(Plan::in_sequence(&dec, &[1, 2, 3], vec![]), Plan::identity(5));
        // Text rows are never dropped nor merged.
        assert!(Plan::keep(0, &[0, 1, 2, 3]).validate(&dec).unwrap_err().contains("Text token 4"));
        let merged_text =
            Plan { groups: vec![Group::mean(vec![0, 1], vec![1.0, 1.0], 0), Group::single(4)], scores: None };
        assert!(merged_text.validate(&dec).is_err());
    }

    #[test]
    fn an_unnormalised_group_is_a_weighted_sum() {
        let s = toy();
        let mut plan = Plan::keep(1, &[1]);
        plan.groups.push(Group { members: vec![2, 3], weights: vec![0.25, 0.5], anchor: 3, normalize: false });
        let out = plan.apply(&s, PositionMode::Preserve).unwrap();
        let fused = out.hidden.squeeze(0).unwrap().to_vec2::<f32>().unwrap()[2].clone();
        assert_eq!(fused, [0.25 * 2.0 + 0.5 * 3.0, 0.25 * 20.0 + 0.5 * 30.0]);
    }
}
