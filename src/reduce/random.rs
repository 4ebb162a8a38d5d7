//! Random-K baseline with a fixed seed: benchmarks found random pruning hard to beat, so it
//! stands beside every method.

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::ops::patch_tokens;
use super::{MethodInfo, Plan, Reducer, Site, SiteView};
use crate::Result;

pub const INFO: MethodInfo = MethodInfo {
    name: "random",
    label: "Random",
    description: "Keeps K patches chosen uniformly at random (seeded): the baseline every method must beat.",
    paper: "baseline",
    merges: false,
    caveat: None,
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandomConfig {
    pub seed: u64,
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
