//! Random-K baseline with a fixed seed: benchmarks found random pruning hard to beat, so it
//! stands beside every method.

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::ops::patch_tokens;
use super::registry::{Part, Side, VisionMethod};
use super::{Context, MethodInfo, Plan, Reducer, Site, SiteView};
use crate::Result;

pub const INFO: MethodInfo = MethodInfo {
    name: "random",
    label: "Random",
    description: "Keeps K patches chosen uniformly at random (seeded): the baseline every method must beat.",
    paper: "baseline",
    merges: false,
    caveat: None,
    side: Side::Vision,
    acts_on: &[Part::PreLlm],
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandomConfig {
    pub seed: u64,
}

impl VisionMethod for RandomConfig {
    const INFO: MethodInfo = INFO;

    fn build(&self, keep: usize, _ctx: &Context) -> Result<Box<dyn Reducer>> {
        Ok(Box::new(Random::new(self, keep)))
    }
}

pub struct Random {
    keep: usize,
    seed: u64,
}

impl Random {
    pub fn new(cfg: &RandomConfig, keep: usize) -> Self {
        Self { keep, seed: cfg.seed }
    }
}

impl Reducer for Random {
    fn sites(&self) -> Vec<Site> {
        vec![Site::EncoderOutput]
    }

    fn plan(&mut self, view: &SiteView<'_>) -> Result<Plan> {
        let state = view.state;
        let patches = patch_tokens(state.num_special, state.num_tokens());
        // ChaCha8 is a portable, versioned stream: the same seed picks the same patches everywhere.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        let mut kept: Vec<usize> =
            rand::seq::index::sample(&mut rng, patches.len(), self.keep).into_iter().map(|i| patches[i]).collect();
        kept.sort_unstable();
        Ok(Plan::keep(state.num_special, &kept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed decides the sample, as `rand`'s `index::sample` on ChaCha8 draws it (the
    /// reference is the crate's documented stream, not our code), and seeds differ.
    #[test]
    fn the_seed_picks_rands_sample() {
        use crate::model::TokenState;
        use crate::reduce::{Context, ReducerConfig, SiteView};
        use candle_core::{DType, Device, Tensor};
        let state = TokenState::fresh(Tensor::zeros((1, 17, 2), DType::F32, &Device::Cpu).unwrap(), 1, (4, 4));
        let ctx = Context::encoder(1, (4, 4), 1);
        let (empty, attn) = (crate::model::Trace::default(), crate::model::layers::AttnRecord::default());
        let view = SiteView {
            site: Site::EncoderOutput,
            state: &state,
            attn: &attn,
            full_trace: &empty,
            vision_saliency: &[],
        };
        let kept = |seed: u64| {
            let mut cfg = ReducerConfig::from_name("random").unwrap();
            cfg.set_param("seed", &seed.to_string()).unwrap();
            let plan = cfg.build(5, &ctx).unwrap().plan(&view).unwrap();
            plan.groups[1..].iter().map(|g| g.members[0] - 1).collect::<Vec<_>>()
        };
        for seed in [0, 7] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut want = rand::seq::index::sample(&mut rng, 16, 5).into_vec();
            want.sort_unstable();
            assert_eq!(kept(seed), want, "seed {seed}");
        }
        assert_ne!(kept(0), kept(7));
    }
}
