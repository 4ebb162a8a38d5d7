//! Text-guided selection in the language model's embedding space, before layer 0: FlashVLM
//! (text-guided visual token selection: explicit cross-modal similarity between projected image
//! tokens and normalised text embeddings, fused with intrinsic visual saliency by log-domain
//! weighting and temperature sharpening, plus a diversity-preserving set of background tokens)
//! and Recoverable Compression (Chen et al., 2024, "Recoverable Compression: A Multimodal Vision
//! Token Recovery Mechanism Guided by Text Information": text-similar tokens are recovered, the
//! other ones merged).
//!
//! rel_i = max over text rows t of cos(v_i, t) (decoder input embeddings). With
//! p_rel = softmax(rel / temperature) over the image rows and p_sal = saliency / sum(saliency)
//! (the vision tower's own importance, summed over the tokens a row carries), the score is the
//! log of the weighted geometric mixture (a product of experts)
//!
//! ```text
//! score_i = alpha * log p_rel_i + (1 - alpha) * log p_sal_i
//! ```
//!
//! so `alpha` = 1 is text relevance alone, 0 saliency alone, and a lower temperature sharpens
//! the relevance term. Of the `keep` rows, the top `(1 - diverse)` share by score stays, then
//! the `diverse` share is filled with background rows chosen for diversity among the rest
//! (greedy max-min cosine distance to everything selected so far, as DivPrune). With
//! `merge_rest`, `merged_tokens` of the `keep` rows are instead merged rows: the dropped rows are
//! clustered (k-centre on cosine distance, each joining its most similar centre) and averaged.
//!
//! Authors' code: FlashVLM's is not released (a repository of the same name in the stored public
//! repositories is an unrelated framework), so there is no authors'-code reference; this follows
//! the FlashVLM abstract, checked by hand-worked tests only. Recoverable Compression's code (in
//! the fork DamonZhao-sfu/RecoverableCompression of the authors' repository, `clip_encoder.py`)
//! works in CLIP space, not the language model's: a CLIP text tower embeds the question, CLS
//! similarity and text similarity each keep the outliers a LocalOutlierFactor finds, and the rest
//! are merged by k-NN clustering. The decoder view has neither the CLIP text tower nor the
//! tower's CLS similarity, so that recipe is not reproduced here; only its idea (merge the rest)
//! is kept as `merge_rest`.

use serde::{Deserialize, Serialize};

use super::ops::{cluster, cosine_rows, k_centre, plan, row_saliency, scores_on_rows};
use crate::reduce::ops::top_k_in_order;
use crate::reduce::registry::{LanguageMethod, Part, Side};
use crate::reduce::{Context, MethodInfo, Plan, Reducer, Site, SiteView};
use crate::{Error, Result};

pub const INFO: MethodInfo = MethodInfo {
    name: "text_guided",
    label: "Text-guided",
    description: "Before the LLM: keeps image tokens similar to the prompt's embeddings (fused with the tower's saliency in the log domain), a few diverse background tokens, and optionally merges the rest.",
    paper: "FlashVLM: Text-Guided Visual Token Selection for Large Multimodal Models, 2025; Chen et al., Recoverable Compression, 2024",
    merges: false,
    caveat: Some(
        "Relevance uses every prompt row (chat template included): the decoder sequence does not mark which rows are the question.",
    ),
    side: Side::Language,
    acts_on: &[Part::PreLlm],
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextGuidedConfig {
    /// Softmax temperature of the relevance term (> 0; lower = sharper).
    pub temperature: f32,
    /// Weight of text relevance against the vision saliency, in 0..=1.
    pub alpha: f32,
    /// Share of the selected rows filled with diverse background rows, in 0..=1.
    pub diverse: f32,
    /// Average the dropped rows into `merged_tokens` merged rows (they count in the budget).
    pub merge_rest: bool,
    pub merged_tokens: usize,
}

impl Default for TextGuidedConfig {
    fn default() -> Self {
        Self { temperature: 0.1, alpha: 0.5, diverse: 0.1, merge_rest: false, merged_tokens: 4 }
    }
}

impl LanguageMethod for TextGuidedConfig {
    const INFO: MethodInfo = INFO;

    fn build(&self, keep: usize, _ctx: &Context) -> Result<Box<dyn Reducer>> {
        Ok(Box::new(TextGuided::new(self, keep)?))
    }
}

pub struct TextGuided {
    cfg: TextGuidedConfig,
    keep: usize,
}

impl TextGuided {
    pub fn new(cfg: &TextGuidedConfig, keep: usize) -> Result<Self> {
        let bad = |field, reason: &str| Err(Error::Config { field, reason: reason.into() });
        if !(cfg.temperature > 0.0 && cfg.temperature.is_finite()) {
            return bad("temperature", "must be a positive number");
        }
        if !(0.0..=1.0).contains(&cfg.alpha) {
            return bad("alpha", "must be in 0..=1");
        }
        if !(0.0..=1.0).contains(&cfg.diverse) {
            return bad("diverse", "must be in 0..=1");
        }
        Ok(Self { cfg: cfg.clone(), keep })
    }
}

/// rel_i = max over text rows of cos(image row i, text row), in `view.image_rows()` order
/// (0 for every row when there is no text row).
pub fn relevance(view: &SiteView<'_>) -> Result<Vec<f32>> {
    // DEVIATION: FlashVLM compares with the question's embeddings; the decoder sequence does not
    // mark which prompt rows are the question, so every text row (chat template included) counts.
    let (image, text) = (view.image_rows(), view.text_rows());
    let cos = cosine_rows(&view.state.hidden, &image, &text)?;
    Ok(cos
        .iter()
        .map(|r| if r.is_empty() { 0.0 } else { r.iter().copied().fold(f32::NEG_INFINITY, f32::max) })
        .collect())
}

/// The fused score (module docs) from relevance and saliency, one per image row.
pub fn fused_scores(rel: &[f32], saliency: &[f32], temperature: f32, alpha: f32) -> Vec<f32> {
    let n = rel.len();
    let max = rel.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max / temperature + rel.iter().map(|r| ((r - max) / temperature).exp()).sum::<f32>().ln();
    let sal: Vec<f32> = saliency.iter().map(|s| s.max(0.0)).collect();
    let total: f32 = sal.iter().sum();
    (0..n)
        .map(|i| {
            let log_rel = rel[i] / temperature - lse;
            // No saliency at all (a tower without it): uniform.
            let p_sal = if total > 0.0 { sal[i] / total } else { 1.0 / n as f32 };
            let log_sal = p_sal.max(1e-30).ln();
            // alpha = 1 (or 0) must not let the other term's -inf in (0 * -inf = NaN).
            let term = |w: f32, x: f32| if w == 0.0 { 0.0 } else { w * x };
            term(alpha, log_rel) + term(1.0 - alpha, log_sal)
        })
        .collect()
}

impl Reducer for TextGuided {
    fn sites(&self) -> Vec<Site> {
        vec![Site::PreLlm]
    }

    fn plan(&mut self, view: &SiteView<'_>) -> Result<Plan> {
        let image = view.image_rows();
        let n = image.len();
        let rel = relevance(view)?;
        let score = fused_scores(&rel, &row_saliency(view, &image)?, self.cfg.temperature, self.cfg.alpha);
        let all_rows = scores_on_rows(view.num_rows(), &image, &score);
        if self.keep >= n {
            return Ok(plan(view, all_rows, image, Vec::new()));
        }
        let k = self.keep;
        let groups = if self.cfg.merge_rest { self.cfg.merged_tokens.min(k.saturating_sub(1)) } else { 0 };
        let selected = k - groups;
        let diverse = ((self.cfg.diverse * selected as f32).round() as usize).min(selected.saturating_sub(1));
        let local: Vec<usize> = (0..n).collect();
        let mut picked = top_k_in_order(&score, &local, selected - diverse);
        if diverse > 0 || groups > 0 {
            // DEVIATION: FlashVLM's diversity-preserving partition is not specified in the abstract;
            // the background rows are DivPrune's greedy max-min picks, seeded with the top rows.
            // Recoverable Compression's merge of the rest is done by k-centre clusters (below).
            let sim = cosine_rows(&view.state.hidden, &image, &image)?;
            picked.extend(k_centre(n, selected, &picked, 0, |a, b| 1.0 - sim[a][b]));
            let mut chosen = vec![false; n];
            picked.iter().for_each(|&i| chosen[i] = true);
            let rest: Vec<usize> = (0..n).filter(|&i| !chosen[i]).collect();
            let rest_sim: Vec<Vec<f32>> = rest.iter().map(|&a| rest.iter().map(|&b| sim[a][b]).collect()).collect();
            let merged: Vec<Vec<usize>> = cluster(&rest_sim, groups)
                .into_iter()
                .map(|g| g.into_iter().map(|i| image[rest[i]]).collect())
                .collect();
            return Ok(plan(view, all_rows, picked.into_iter().map(|i| image[i]).collect(), merged));
        }
        Ok(plan(view, all_rows, picked.into_iter().map(|i| image[i]).collect(), Vec::new()))
    }

    fn schedule(&self) -> Vec<(Site, usize)> {
        vec![(Site::PreLlm, self.keep)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::AttnRecord;
    use crate::model::{TokenState, Trace};
    use crate::reduce::llm::testing;
    use candle_core::{Device, Tensor};

    /// Rows: T(1,0) I(1,0) I(0,1) I(1,1) I(-1,0) T(0,1) — two text rows around four image rows.
    fn rows() -> TokenState {
        let h = Tensor::new(&[[1f32, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 1.0]], &Device::Cpu)
            .unwrap();
        testing::rows(&[None, Some(vec![0]), Some(vec![1]), Some(vec![2]), Some(vec![3]), None], &h)
    }

    /// The image rows kept and the merged groups.
    fn run(cfg: TextGuidedConfig, keep: usize, saliency: &[f32]) -> (Vec<usize>, Vec<Vec<usize>>) {
        let rows = rows();
        let (attn, trace) = (AttnRecord::default(), Trace::default());
        let view =
            SiteView { site: Site::PreLlm, state: &rows, attn: &attn, full_trace: &trace, vision_saliency: saliency };
        let p = TextGuided::new(&cfg, keep).unwrap().plan(&view).unwrap();
        p.validate(&rows).unwrap();
        (p.kept(&rows), p.merged().into_iter().map(<[usize]>::to_vec).collect())
    }

    #[test]
    fn relevance_by_hand() {
        let rows = rows();
        let (attn, trace) = (AttnRecord::default(), Trace::default());
        let view =
            SiteView { site: Site::PreLlm, state: &rows, attn: &attn, full_trace: &trace, vision_saliency: &[1.0; 4] };
        // Best of cos with (1,0) and (0,1): 1, 1, 1/sqrt2, max(-1, 0) = 0.
        let rel = relevance(&view).unwrap();
        let want = [1.0, 1.0, std::f32::consts::FRAC_1_SQRT_2, 0.0];
        assert!(rel.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{rel:?}");
    }

    #[test]
    fn fused_scores_by_hand() {
        // rel (1, 0), T = 0.5: log softmax = (2, 0) - ln(e^2 + 1). Saliency (1, 3): ln(1/4), ln(3/4).
        let s = fused_scores(&[1.0, 0.0], &[1.0, 3.0], 0.5, 0.25);
        let lse = (2f32.exp() + 1.0).ln();
        assert!((s[0] - (0.25 * (2.0 - lse) + 0.75 * 0.25f32.ln())).abs() < 1e-5);
        assert!((s[1] - (0.25 * (0.0 - lse) + 0.75 * 0.75f32.ln())).abs() < 1e-5);
        // alpha = 1 ignores a zero saliency; alpha = 0 ignores relevance.
        assert!(fused_scores(&[1.0, 0.0], &[0.0, 1.0], 0.5, 1.0)[0].is_finite());
        let s0 = fused_scores(&[1.0, 0.0], &[1.0, 3.0], 0.5, 0.0);
        assert!(s0[1] > s0[0]);
    }

    #[test]
    fn selection_by_hand() {
        let plain = TextGuidedConfig { diverse: 0.0, ..Default::default() };
        // Uniform saliency: the two rows with relevance 1 (rows 1 and 2).
        assert_eq!(run(plain.clone(), 2, &[1.0; 4]).0, [1, 2]);
        // Saliency alone: the most salient.
        assert_eq!(run(TextGuidedConfig { alpha: 0.0, ..plain.clone() }, 1, &[0.1, 0.2, 0.9, 0.3]).0, [3]);
        // One diverse row of three: top 2 = rows 1, 2; of the rest, (-1,0) (row 4) is farther from
        // {(1,0), (0,1)} (min distance 1) than (1,1) (min distance 1 - 1/sqrt2).
        let div = TextGuidedConfig { diverse: 0.34, ..Default::default() };
        assert_eq!(run(div, 3, &[1.0; 4]).0, [1, 2, 4]);
        // Merging the rest: 1 kept + 1 merged row of the three others; 2 image rows in all.
        let merge = TextGuidedConfig { merge_rest: true, merged_tokens: 1, ..plain };
        let (kept, merged) = run(merge, 2, &[1.0; 4]);
        assert_eq!(kept, [1]);
        assert_eq!(merged.len(), 1);
        let mut g = merged[0].clone();
        g.sort();
        assert_eq!(g, [2, 3, 4]);
        // Everything kept: identity.
        let p = run(TextGuidedConfig { merge_rest: true, ..Default::default() }, 4, &[1.0; 4]);
        assert_eq!(p, (vec![1, 2, 3, 4], vec![]));
    }
}
