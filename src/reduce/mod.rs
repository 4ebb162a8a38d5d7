//! Token reducers behind one interface.
//!
//! Every method, vision-side or language-side, implements [`Reducer`]: it names the [`Site`]s
//! where it acts, what it needs recorded there, and returns a [`Plan`] (data, not action) from a
//! [`SiteView`] of what that site has. `plan.rs` applies plans to encoder tokens and decoder
//! rows alike, so provenance (sizes, source, roles, positions) is shared by all methods. Registration is one variant
//! line of the registry (`registry.rs`), for vision- and language-side methods alike; the CLI,
//! the GUI and the tests iterate over [`Method::all`].
//! The vocabulary (stage, budget, scores, kept, source) is `shared/REDUCERS.md`'s.

pub mod budget;
pub mod cls_topk;
pub mod divprune;
pub mod evit;
pub mod hiprune;
pub mod llm;
pub mod ops;
pub mod pitome;
pub mod plan;
pub mod pool;
pub mod random;
pub mod registry;
pub mod tome;

use serde::{Deserialize, Serialize};

pub use crate::model::Role;
pub use budget::Budget;
pub use plan::{Group, Plan, PositionMode};
pub use registry::{Capabilities, LanguageMethod, Method, MethodInfo, Part, Side, VisionMethod};

use crate::model::layers::AttnRecord;
use crate::model::{Needs, TokenState, Trace};
use crate::{Error, Result};

/// Where a reducer acts (REDUCERS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Between blocks of the vision encoder, from block `l` on.
    Encoder(usize),
    /// After the encoder, before the output head or language model.
    PreLlm,
    /// Inside a language model, after decoder layer `k` (vision-language models).
    Llm(usize),
}

/// A point in the forward pass where a plan can be made, in forward order: in the vision
/// encoder, then in the language model (vision-language models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    /// Between block `l`'s attention and its MLP (where ToMe merges).
    MidBlock(usize),
    /// After block `l`.
    AfterBlock(usize),
    /// After the final norm: the features the output head (or projector) reads.
    EncoderOutput,
    /// On the language model's input embeddings, before decoder layer 0 (image rows are the
    /// projected image tokens, text rows the prompt's token embeddings).
    PreLlm,
    /// On the hidden states leaving decoder layer `k`; layers `k + 1..` see the reduced rows.
    AfterLayer(usize),
}

impl Site {
    /// The stage a plan at this site belongs to.
    pub fn stage(self) -> Stage {
        match self {
            Site::MidBlock(l) | Site::AfterBlock(l) => Stage::Encoder(l),
            Site::EncoderOutput | Site::PreLlm => Stage::PreLlm,
            Site::AfterLayer(k) => Stage::Llm(k),
        }
    }
}

/// The model facts a reducer is built for, on the side it acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// Vision-encoder blocks (vision side) or decoder layers (language side).
    pub num_layers: usize,
    /// The image tokens' grid (rows, cols), raster order (SmolVLM: after the pixel shuffle).
    pub grid: (usize, usize),
    /// Leading special tokens (CLS, registers); none in a decoder's rows.
    pub num_special: usize,
    /// Image tokens in the unreduced sequence (an encoder: one per grid cell).
    pub num_image_tokens: usize,
}

impl Context {
    /// An encoder with `num_layers` blocks, its patch grid and special tokens.
    pub fn encoder(num_layers: usize, grid: (usize, usize), num_special: usize) -> Self {
        Self { num_layers, grid, num_special, num_image_tokens: grid.0 * grid.1 }
    }

    /// A language model with `num_layers` decoder layers reading `num_image_tokens` image tokens.
    pub fn decoder(num_layers: usize, num_image_tokens: usize, grid: (usize, usize)) -> Self {
        Self { num_layers, grid, num_special: 0, num_image_tokens }
    }

    pub fn num_patches(&self) -> usize {
        self.grid.0 * self.grid.1
    }

    /// `layer` if the encoder has that block, else an error naming `field`.
    pub fn check_layer(&self, field: &'static str, layer: usize) -> Result<usize> {
        if layer < self.num_layers {
            Ok(layer)
        } else {
            Err(Error::Config { field, reason: format!("layer {layer} is out of range 0..={}", self.num_layers - 1) })
        }
    }
}

/// What a reducer sees at one of its sites: what that site has.
pub struct SiteView<'a> {
    pub site: Site,
    /// The tokens now: an encoder's tokens (at [`Site::EncoderOutput`], `hidden` holds the
    /// final-norm features), or a language model's rows in order (the last is the last prompt
    /// token), whose `hidden` is the input embeddings at [`Site::PreLlm`] and the hidden states
    /// leaving layer k at [`Site::AfterLayer`]`(k)`.
    pub state: &'a TokenState,
    /// This block's or layer's attention record (what [`Reducer::needs`] asked for: a ViT block
    /// gives probabilities and keys, a decoder layer its causal probabilities `[1, heads, n, n]`,
    /// row = query); empty at [`Site::EncoderOutput`] and [`Site::PreLlm`].
    pub attn: &'a AttnRecord,
    /// The unreduced encoder run's records: attention and keys of every block. Valid for
    /// everything before the reducer's first site, where the reduced run equals the full one;
    /// empty in a language model.
    pub full_trace: &'a Trace,
    /// Per original image token, the vision tower's own importance: CLS attention at the layer
    /// the projector reads, mean over heads (attention received where the tower has no CLS),
    /// summed over the patches the token covers. Empty in an encoder.
    pub vision_saliency: &'a [f32],
}

impl SiteView<'_> {
    /// Indices of the image tokens now, in order.
    pub fn image_rows(&self) -> Vec<usize> {
        self.state.image_rows()
    }

    /// Indices of the text rows now (a language model's prompt tokens), in order.
    pub fn text_rows(&self) -> Vec<usize> {
        self.state.text_rows()
    }

    /// Tokens (rows) now.
    pub fn num_rows(&self) -> usize {
        self.state.num_tokens()
    }
}

/// `Send`: a decoder run's layers, and the reducer acting between them, run on rayon's pool
/// ([`crate::model::kernels::in_pool`]).
pub trait Reducer: Send {
    /// Sites where [`Reducer::plan`] is called, in forward order.
    fn sites(&self) -> Vec<Site>;
    /// What must be recorded at block (vision side) or decoder layer (language side) `layer`
    /// for a plan after it (computed even if no one else asks).
    fn needs(&self, _layer: usize) -> Needs {
        Needs::default()
    }
    /// ToMe's proportional attention for the blocks after a merge.
    fn proportional_attention(&self) -> bool {
        false
    }
    fn plan(&mut self, view: &SiteView<'_>) -> Result<Plan>;
    /// The image tokens left after each site, as planned when the reducer was built (language
    /// side). Sites whose count depends on the data (ToDRE's stage 2) are left out, so
    /// [`llm::layer_averaged_rows`] of this schedule is an upper bound for such methods and exact
    /// for the others.
    fn schedule(&self) -> Vec<(Site, usize)> {
        Vec::new()
    }
}

// The method registry: one line registers a method (its file describes it and builds its
// reducer; see `registry.rs`). The order is the menus'.
registry::methods! {
    vision {
        Tome(tome::TomeConfig),
        Pitome(pitome::PitomeConfig),
        Evit(evit::EvitConfig),
        ClsTopk(cls_topk::ClsTopkConfig),
        Hiprune(hiprune::HipruneConfig),
        Divprune(divprune::DivpruneConfig),
        Random(random::RandomConfig),
        Pool(pool::PoolConfig),
    }
    language {
        Fastv(llm::fastv::FastvConfig),
        TextGuided(llm::text_guided::TextGuidedConfig),
        Sparsevlm(llm::sparsevlm::SparsevlmConfig),
        Mmtok(llm::mmtok::MmtokConfig),
        Todre(llm::todre::TodreConfig),
    }
}

impl ReducerConfig {
    pub fn name(&self) -> &'static str {
        self.info().name
    }

    /// The default config of the vision-side method called `name` (a language-side name is
    /// refused with the reason).
    pub fn from_name(name: &str) -> Result<Self> {
        Method::from_name(name)?.for_encoder()
    }

    /// Sets one parameter from text (`--param k=v`): the value is read as JSON, else as a
    /// string, and the config is re-validated, so a typo or a wrong type is an error.
    pub fn set_param(&mut self, key: &str, value: &str) -> Result<()> {
        set_param_json(self, self.name(), key, value)
    }

    /// A note for the UI when the method runs differently on this encoder.
    pub fn note_for(&self, ctx: &Context) -> Option<&'static str> {
        let cls_based = matches!(self, ReducerConfig::ClsTopk(_) | ReducerConfig::Evit(_));
        (cls_based && ctx.num_special == 0).then_some(ops::NO_CLS_NOTE)
    }

    pub fn has_layer(&self) -> bool {
        self.layer(1).is_some()
    }

    /// The stage of the method's first action.
    pub fn stage(&self, ctx: &Context) -> Result<Stage> {
        let reducer = self.build(ctx.num_patches(), ctx)?;
        Ok(reducer.sites().first().map_or(Stage::PreLlm, |s| s.stage()))
    }
}

/// The config called `name` among `all` (`kind` names the list in the error).
pub(crate) fn by_name<T>(all: Vec<T>, name_of: impl Fn(&T) -> &'static str, name: &str, kind: &str) -> Result<T> {
    let names: Vec<&str> = all.iter().map(&name_of).collect();
    let list = names.join(", ");
    all.into_iter().find(|c| name_of(c) == name).ok_or_else(|| Error::Config {
        field: "reducer",
        reason: format!("unknown {kind} `{name}`; choose one of {list}"),
    })
}

/// Sets one field of a `method`-tagged config from text: the value is read as JSON, else as a
/// string, and the whole config is deserialised again, so a typo or a wrong type is an error.
pub(crate) fn set_param_json<T: Serialize + serde::de::DeserializeOwned>(
    config: &mut T,
    method: &str,
    key: &str,
    value: &str,
) -> Result<()> {
    let mut json = serde_json::to_value(&*config).expect("configs serialise");
    let parsed = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.into()));
    let obj = json.as_object_mut().expect("configs are JSON objects");
    if key == "method" || !obj.contains_key(key) {
        let known: Vec<&str> = obj.keys().map(String::as_str).filter(|k| *k != "method").collect();
        return Err(Error::Config {
            field: "param",
            reason: format!("{method} has no parameter `{key}`; it has: {}", known.join(", ")),
        });
    }
    obj.insert(key.into(), parsed);
    *config = serde_json::from_value(json)
        .map_err(|e| Error::Config { field: "param", reason: format!("{key}={value}: {e}") })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let all = ReducerConfig::defaults();
        for c in &all {
            assert_eq!(&ReducerConfig::from_name(c.name()).unwrap(), c);
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(&serde_json::from_str::<ReducerConfig>(&json).unwrap(), c, "{json}");
        }
        let mut names: Vec<_> = all.iter().map(|c| c.name()).collect();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert!(ReducerConfig::from_name("nope").is_err());
    }

    #[test]
    fn params_are_checked() {
        let mut c = ReducerConfig::from_name("evit").unwrap();
        c.set_param("layer", "5").unwrap();
        assert_eq!(c.layer(12), Some(5));
        assert!(c.set_param("layr", "5").unwrap_err().to_string().contains("no parameter `layr`"));
        assert!(c.set_param("layer", "five").is_err());
        let mut r = ReducerConfig::from_name("random").unwrap();
        r.set_param("seed", "42").unwrap();
        assert!(serde_json::to_string(&r).unwrap().contains("42"));
    }
}
