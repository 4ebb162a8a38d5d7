//! Language-side reducers (REDUCERS.md 9-13): methods that act on a vision-language model's
//! decoder sequence, before layer 0 ([`Site::PreLlm`], on the projected image tokens and the
//! prompt's embeddings) or after decoder layer k ([`Site::AfterLayer`], on hidden states and
//! attention).
//!
//! # Design
//! Question: how do methods that see text, decoder hidden states and decoder attention share one
//! interface with the decoder loop, without touching it?
//! Decision: they are [`crate::reduce::Reducer`]s like the vision-side methods: a method names
//! its sites and the layers whose attention it needs, and returns a [`Plan`] from a
//! [`SiteView`] whose state is the decoder's rows (a [`crate::model::TokenState`] whose roles
//! say which rows are text and which image). `reduce/plan.rs` alone gathers hidden states,
//! position ids and rows, so provenance is kept the same way for every method. Text rows always
//! stay.

pub mod fastv;
pub mod mmtok;
pub mod ops;
pub mod sparsevlm;
pub mod text_guided;
pub mod todre;

pub use super::LlmReducerConfig;
use super::{Context, Method, Site, Stage};
use crate::{Error, Result};

/// The layer-averaged number of image rows: the mean over the `num_layers` decoder layers of the
/// image rows each layer processes, when the sequence starts with `num_image_rows` and
/// `schedule` lists the image rows left after each site (a [`Site::PreLlm`] plan counts for
/// every layer, a [`Site::AfterLayer`]`(k)` plan for layers `k + 1..`).
pub fn layer_averaged_rows(num_layers: usize, num_image_rows: usize, schedule: &[(Site, usize)]) -> f64 {
    if num_layers == 0 {
        return num_image_rows as f64;
    }
    let mut sorted = schedule.to_vec();
    sorted.sort_by_key(|&(site, _)| site);
    let total: usize = (0..num_layers)
        .map(|l| {
            let applies = |site: Site| match site {
                Site::AfterLayer(k) => k < l,
                _ => true, // before the decoder: every layer sees it
            };
            sorted.iter().rev().find(|&&(site, _)| applies(site)).map_or(num_image_rows, |&(_, n)| n)
        })
        .sum();
    total as f64 / num_layers as f64
}

impl LlmReducerConfig {
    pub fn name(&self) -> &'static str {
        self.info().name
    }

    /// The default config of the language-side method called `name`.
    pub fn from_name(name: &str) -> Result<Self> {
        match Method::from_name(name)? {
            Method::Llm(c) => Ok(c),
            Method::Vision(_) => Err(Error::Config {
                field: "reducer",
                reason: format!("`{name}` is a vision-side method, not a language-side one"),
            }),
        }
    }

    /// Sets one parameter from text (`--param k=v`), re-validating the config.
    pub fn set_param(&mut self, key: &str, value: &str) -> Result<()> {
        crate::reduce::set_param_json(self, self.name(), key, value)
    }

    /// Where the method acts, in forward order (its first site is its stage).
    pub fn sites(&self, ctx: &Context) -> Result<Vec<Site>> {
        Ok(self.build(ctx.num_image_tokens, ctx)?.sites())
    }

    /// The stage of the method's first action, in the shared vocabulary (`pre_llm` or `llm(k)`).
    pub fn stage(&self, ctx: &Context) -> Result<Stage> {
        let sites = self.sites(ctx)?;
        // SparseVLM's pre-LLM site only picks its raters; it first prunes after a layer.
        let acts = |s: &&Site| !matches!(self, LlmReducerConfig::Sparsevlm(_)) || **s != Site::PreLlm;
        Ok(sites.iter().find(acts).map_or(Stage::PreLlm, |s| s.stage()))
    }

    /// The layer-averaged image-row count a run keeping `keep` will have (an upper bound for
    /// ToDRE, whose stage 2 depends on the data); see [`layer_averaged_rows`].
    pub fn layer_averaged(&self, keep: usize, ctx: &Context) -> Result<f64> {
        let schedule = self.build(keep, ctx)?.schedule();
        Ok(layer_averaged_rows(ctx.num_layers, ctx.num_image_tokens, &schedule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_distinct_from_vision_side_and_round_trip() {
        let all = LlmReducerConfig::defaults();
        let vision: Vec<&str> = crate::reduce::ReducerConfig::defaults().iter().map(|c| c.name()).collect();
        let mut names: Vec<_> = all.iter().map(|c| c.name()).collect();
        for c in &all {
            assert_eq!(&LlmReducerConfig::from_name(c.name()).unwrap(), c);
            let json = serde_json::to_string(c).unwrap();
            assert!(json.contains(&format!("\"method\":\"{}\"", c.name())), "{json}");
            assert_eq!(&serde_json::from_str::<LlmReducerConfig>(&json).unwrap(), c, "{json}");
            assert!(!vision.contains(&c.name()), "{} is also a vision-side name", c.name());
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert!(LlmReducerConfig::from_name("tome").is_err());
        assert!(serde_json::from_str::<LlmReducerConfig>(r#"{"method":"fastv","layr":2}"#).is_err());
    }

    #[test]
    fn params_are_checked() {
        let mut c = LlmReducerConfig::from_name("fastv").unwrap();
        c.set_param("layer", "5").unwrap();
        assert_eq!(c.layer(32), Some(5));
        c.set_param("query", "text").unwrap();
        assert!(serde_json::to_string(&c).unwrap().contains(r#""query":"text""#));
        assert!(c.set_param("query", "everything").is_err());
        assert!(c.set_param("layr", "5").unwrap_err().to_string().contains("no parameter `layr`"));
        let mut m = LlmReducerConfig::from_name("mmtok").unwrap();
        m.set_param("lambda", "0.25").unwrap();
        assert_eq!(m, LlmReducerConfig::Mmtok(mmtok::MmtokConfig { lambda: 0.25, ..Default::default() }));
        assert_eq!(m.layer(32), None);
    }

    #[test]
    fn layers_move() {
        let ctx = Context::decoder(32, 576, (24, 24));
        let mut s = LlmReducerConfig::from_name("sparsevlm").unwrap();
        assert_eq!(s.layer(32), Some(2));
        s.set_layer(4, 32);
        assert_eq!(
            s.sites(&ctx).unwrap(),
            [Site::PreLlm, Site::AfterLayer(4), Site::AfterLayer(8), Site::AfterLayer(17)]
        );
        let mut f = LlmReducerConfig::from_name("fastv").unwrap();
        assert_eq!(f.sites(&ctx).unwrap(), [Site::AfterLayer(1)]);
        f.set_layer(3, 32);
        assert_eq!(f.sites(&ctx).unwrap(), [Site::AfterLayer(2)]);
        let mut t = LlmReducerConfig::from_name("todre").unwrap();
        t.set_layer(30, 32);
        assert_eq!(t.sites(&ctx).unwrap(), [Site::PreLlm, Site::AfterLayer(30)]);
        assert_eq!(LlmReducerConfig::from_name("mmtok").unwrap().sites(&ctx).unwrap(), [Site::PreLlm]);
        assert_eq!(f.stage(&ctx).unwrap(), Stage::Llm(2));
        assert_eq!(t.stage(&ctx).unwrap(), Stage::PreLlm);
        assert_eq!(s.stage(&ctx).unwrap(), Stage::Llm(4));
        // Out of range: a clear error.
        f.set_layer(33, 32);
        assert!(f.stage(&ctx).unwrap_err().to_string().contains("1..=32"));
    }

    #[test]
    fn layer_average_by_hand() {
        // 4 layers, 10 rows; 6 after layer 0, 2 after layer 2: (10 + 6 + 6 + 2) / 4 = 6.
        let s = [(Site::AfterLayer(0), 6), (Site::AfterLayer(2), 2)];
        assert_eq!(layer_averaged_rows(4, 10, &s), 6.0);
        assert_eq!(layer_averaged_rows(4, 10, &[(Site::PreLlm, 3)]), 3.0);
        assert_eq!(layer_averaged_rows(4, 10, &[]), 10.0);
        // After the last layer: nothing follows.
        assert_eq!(layer_averaged_rows(4, 10, &[(Site::AfterLayer(3), 0)]), 10.0);
    }
}

/// Hand-worked decoder views for the methods' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::Tensor;

    use crate::model::TokenState;
    use crate::model::layers::AttnRecord;

    /// Decoder rows: `image[i]` the image tokens row `i` carries (None: a text row); `hidden`
    /// one row each, `[n, d]`.
    pub fn rows(image: &[Option<Vec<u32>>], hidden: &Tensor) -> TokenState {
        let count = image.iter().flatten().count();
        TokenState::sequence(hidden.unsqueeze(0).unwrap(), image.to_vec(), (1, count))
    }

    /// A decoder layer's attention record from its probabilities `[heads, n, n]`.
    pub fn attention(probs: &Tensor) -> AttnRecord {
        AttnRecord { probs: Some(probs.unsqueeze(0).unwrap()), keys: None }
    }
}
