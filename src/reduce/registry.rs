//! The method registry: one line registers a method, vision-side or language-side.
//!
//! # Design
//! Question: how do the CLI, the app and the tests list, name, parse and refuse methods of both
//! sides from one place, so that adding a method is one line and a model that cannot run a
//! method says so before it is asked to?
//! Decision: each method's file describes the method ([`MethodInfo`]: names, paper, the
//! [`Side`] it belongs to and the [`Part`]s of the model it acts on) and implements
//! [`VisionMethod`] or [`LanguageMethod`] on its config (its main layer and how to build its
//! reducer). The one list in `reduce/mod.rs` ([`methods!`]) makes from it the per-side configs
//! ([`ReducerConfig`], [`LlmReducerConfig`]: serde tag `method`, the sidecar format) and
//! [`Method`], either of them, with `all`, `from_name`, `info` and [`Method::refusal`]: what a
//! model with these [`Capabilities`] refuses, and why. The session refuses through the same
//! function, so the UI's greyed entries and the run's errors cannot disagree.

use serde::{Deserialize, Serialize};

use super::{Context, LlmReducerConfig, Reducer, ReducerConfig, by_name};
use crate::{Error, Result};

/// Which half of a vision-language model a method belongs to: what it needs to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Works on the vision encoder's tokens (any model with a vision encoder).
    Vision,
    /// Works on the language model's sequence (needs a language model: VLMs only).
    Language,
}

/// A part of the model where a method changes the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Between blocks of the vision encoder.
    VisionEncoder,
    /// After the encoder, before the output head or the language model's first layer.
    PreLlm,
    /// Between decoder layers of the language model.
    LanguageModel,
}

/// The one-line facts the UI shows for a method, and where it acts.
#[derive(Debug, Clone, Copy)]
pub struct MethodInfo {
    /// CLI value and config tag.
    pub name: &'static str,
    /// Legend label.
    pub label: &'static str,
    pub description: &'static str,
    pub paper: &'static str,
    /// Merges tokens (all patches stay accounted for) rather than dropping them.
    pub merges: bool,
    /// A caveat to show beside results.
    pub caveat: Option<&'static str>,
    pub side: Side,
    /// Where the method changes tokens, in forward order.
    pub acts_on: &'static [Part],
}

/// What a loaded model offers a method (default: an image encoder's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// A language model follows the vision encoder (a VLM); an image encoder has an output head.
    pub language_model: bool,
    /// Why tokens cannot be removed inside the vision encoder, where they cannot.
    pub fixed_encoder: Option<&'static str>,
    /// Whether the image is split into tiles (SmolVLM's image splitting), whose tokens are not
    /// one grid: vision-side methods need one image. None: the model never splits.
    pub split_image: Option<bool>,
}

impl Capabilities {
    /// An image encoder with its output head (ViT, DINOv2, CLIP, SigLIP).
    pub const ENCODER: Capabilities = Capabilities { language_model: false, fixed_encoder: None, split_image: None };

    /// The same model with image splitting on (`split`) or off; unchanged for a model that never
    /// splits.
    pub fn with_split_image(self, split: bool) -> Self {
        Self { split_image: self.split_image.map(|_| split), ..self }
    }
}

/// A vision-side method's config: its facts, its main encoder block and its reducer.
pub trait VisionMethod {
    const INFO: MethodInfo;
    /// The main layer (what the layer slider moves) of an encoder with `num_layers` blocks.
    fn layer(&self, _num_layers: usize) -> Option<usize> {
        None
    }
    fn set_layer(&mut self, _layer: usize) {}
    /// The reducer for a run keeping `keep` visual tokens.
    fn build(&self, keep: usize, ctx: &Context) -> Result<Box<dyn Reducer>>;
}

/// A language-side method's config: its facts, its main decoder layer and its reducer.
pub trait LanguageMethod {
    const INFO: MethodInfo;
    /// The main decoder layer (what the layer slider moves), if it has one.
    fn layer(&self, _num_layers: usize) -> Option<usize> {
        None
    }
    fn set_layer(&mut self, _layer: usize, _num_layers: usize) {}
    /// The reducer for a run keeping `keep` image tokens (`keep` is checked by the caller).
    fn build(&self, keep: usize, ctx: &Context) -> Result<Box<dyn Reducer>>;
}

/// Makes the per-side configs from the registry list (the menu order), in `reduce/mod.rs`.
macro_rules! methods {
    (
        vision { $($v:ident($vc:ty),)* }
        language { $($l:ident($lc:ty),)* }
    ) => {
        /// Every vision-side method, with its parameters. `serde` tag `method`; unknown fields
        /// are rejected.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "method", rename_all = "snake_case")]
        pub enum ReducerConfig {
            $($v($vc),)*
        }

        impl ReducerConfig {
            /// Every method with its default parameters, in menu order.
            pub fn defaults() -> Vec<ReducerConfig> {
                vec![$(ReducerConfig::$v(<$vc>::default()),)*]
            }

            pub fn info(&self) -> MethodInfo {
                match self {
                    $(ReducerConfig::$v(_) => <$vc as VisionMethod>::INFO,)*
                }
            }

            /// The method's main layer (what the layer slider moves), if it has one.
            pub fn layer(&self, num_layers: usize) -> Option<usize> {
                match self {
                    $(ReducerConfig::$v(c) => c.layer(num_layers),)*
                }
            }

            pub fn set_layer(&mut self, layer: usize) {
                match self {
                    $(ReducerConfig::$v(c) => c.set_layer(layer),)*
                }
            }

            /// Builds the reducer for a run keeping `keep` visual tokens.
            pub fn build(&self, keep: usize, ctx: &Context) -> Result<Box<dyn Reducer>> {
                match self {
                    $(ReducerConfig::$v(c) => c.build(keep, ctx),)*
                }
            }
        }

        /// Every language-side method, with its parameters. `serde` tag `method` (names
        /// distinct from the vision-side methods'); unknown fields are rejected.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "method", rename_all = "snake_case")]
        pub enum LlmReducerConfig {
            $($l($lc),)*
        }

        impl LlmReducerConfig {
            /// Every method with its default parameters, in menu order.
            pub fn defaults() -> Vec<LlmReducerConfig> {
                vec![$(LlmReducerConfig::$l(<$lc>::default()),)*]
            }

            pub fn info(&self) -> MethodInfo {
                match self {
                    $(LlmReducerConfig::$l(_) => <$lc as LanguageMethod>::INFO,)*
                }
            }

            /// The method's main decoder layer (what the layer slider moves), if it has one:
            /// FastV's K (it prunes after layer K - 1), SparseVLM's first site, ToDRE's
            /// `start_layer`.
            pub fn layer(&self, num_layers: usize) -> Option<usize> {
                match self {
                    $(LlmReducerConfig::$l(c) => c.layer(num_layers),)*
                }
            }

            /// Moves the main layer (see [`LlmReducerConfig::layer`]). SparseVLM shifts its
            /// whole schedule (its default one for `num_layers` when none is set) so that it
            /// starts at `layer`, keeping the gaps and dropping sites past `num_layers - 2`.
            pub fn set_layer(&mut self, layer: usize, num_layers: usize) {
                match self {
                    $(LlmReducerConfig::$l(c) => c.set_layer(layer, num_layers),)*
                }
            }

            fn build_unchecked(&self, keep: usize, ctx: &Context) -> Result<Box<dyn Reducer>> {
                match self {
                    $(LlmReducerConfig::$l(c) => c.build(keep, ctx),)*
                }
            }
        }
    };
}
pub(crate) use methods;

impl LlmReducerConfig {
    /// Builds the reducer for a run keeping `keep` image tokens: the image rows left after the
    /// site for FastV, text-guided and MMTok; the layer-averaged image-row count for SparseVLM
    /// (see [`LlmReducerConfig::layer_averaged`] for what it achieves when `keep` is too small);
    /// ToDRE's stage 1 count (stage 2 may drop the rest later). `keep == num_image_tokens` gives
    /// identity plans at every site.
    pub fn build(&self, keep: usize, ctx: &Context) -> Result<Box<dyn Reducer>> {
        if keep > ctx.num_image_tokens {
            return Err(Error::Config {
                field: "budget",
                reason: format!("keep {keep} of {} image tokens", ctx.num_image_tokens),
            });
        }
        self.build_unchecked(keep, ctx)
    }
}

/// A method of either side (a VLM runs both; an image encoder the vision side only). Serialised
/// as the side's config, so a sidecar reads the same whichever side wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Method {
    Vision(ReducerConfig),
    Llm(LlmReducerConfig),
}

impl Method {
    /// Every method with its default parameters, in menu order: vision side, then language side.
    pub fn all() -> Vec<Method> {
        ReducerConfig::defaults()
            .into_iter()
            .map(Method::Vision)
            .chain(LlmReducerConfig::defaults().into_iter().map(Method::Llm))
            .collect()
    }

    /// The default config of the method called `name`, of either side.
    pub fn from_name(name: &str) -> Result<Self> {
        by_name(Self::all(), Self::name, name, "method")
    }

    pub fn info(&self) -> MethodInfo {
        match self {
            Method::Vision(c) => c.info(),
            Method::Llm(c) => c.info(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.info().name
    }

    /// The legend label.
    pub fn label(&self) -> &'static str {
        self.info().label
    }

    pub fn set_param(&mut self, key: &str, value: &str) -> Result<()> {
        match self {
            Method::Vision(c) => c.set_param(key, value),
            Method::Llm(c) => c.set_param(key, value),
        }
    }

    /// Sets the method's main layer: a vision-tower block, or for a language-side method a
    /// decoder layer (FastV: K) of `decoder_layers`.
    pub fn set_layer(&mut self, layer: usize, decoder_layers: usize) {
        match self {
            Method::Vision(c) => c.set_layer(layer),
            Method::Llm(c) => c.set_layer(layer, decoder_layers),
        }
    }

    /// The method's main layer, if it has one (`tower_layers` / `decoder_layers` give defaults).
    pub fn layer(&self, tower_layers: usize, decoder_layers: usize) -> Option<usize> {
        match self {
            Method::Vision(c) => c.layer(tower_layers),
            Method::Llm(c) => c.layer(decoder_layers),
        }
    }

    /// Whether the method acts in the language model.
    pub fn is_language_side(&self) -> bool {
        self.info().side == Side::Language
    }

    /// Why a model with `caps` cannot run this method (None: it can).
    pub fn refusal(&self, caps: &Capabilities) -> Option<String> {
        let info = self.info();
        if info.side == Side::Language && !caps.language_model {
            return Some(format!(
                "{} is a language-side method: it needs a vision-language model, and this is an image encoder",
                info.name
            ));
        }
        if caps.split_image == Some(true) && info.side == Side::Vision {
            return Some(format!(
                "{} is a vision-side method and needs one image: turn image splitting off, or use a language-side method",
                info.name
            ));
        }
        let in_encoder = info.acts_on.contains(&Part::VisionEncoder);
        match caps.fixed_encoder {
            Some(why) if in_encoder => {
                let pre_llm: Vec<&str> = ReducerConfig::defaults()
                    .iter()
                    .map(ReducerConfig::info)
                    .filter(|i| !i.acts_on.contains(&Part::VisionEncoder))
                    .map(|i| i.name)
                    .collect();
                Some(format!(
                    "{} acts inside the vision tower, but {why}; on this model use a pre-LLM method ({}) or a \
                     language-side one",
                    info.name,
                    pre_llm.join(", ")
                ))
            }
            _ => None,
        }
    }

    /// [`Method::refusal`] as an error.
    pub fn check(&self, caps: &Capabilities) -> Result<()> {
        match self.refusal(caps) {
            Some(reason) => Err(Error::Config { field: "reducer", reason }),
            None => Ok(()),
        }
    }

    /// The vision-side config an image encoder runs (a language-side method is refused).
    pub fn for_encoder(self) -> Result<ReducerConfig> {
        self.check(&Capabilities::ENCODER)?;
        match self {
            Method::Vision(c) => Ok(c),
            Method::Llm(_) => unreachable!("an encoder refuses every language-side method"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_and_parts_agree_with_the_configs() {
        for m in Method::all() {
            let info = m.info();
            assert!(!info.acts_on.is_empty(), "{}", info.name);
            assert_eq!(matches!(m, Method::Llm(_)), info.side == Side::Language, "{}", info.name);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<Method>(&json).unwrap(), m, "{json}");
        }
    }

    #[test]
    fn refusals_follow_the_capabilities() {
        let smolvlm = Capabilities {
            language_model: true,
            fixed_encoder: Some("the pixel shuffle needs every patch"),
            split_image: Some(false),
        };
        let llava = Capabilities { language_model: true, fixed_encoder: None, split_image: None };
        let refused = |caps: &Capabilities| -> Vec<&str> {
            Method::all().into_iter().filter(|m| m.refusal(caps).is_some()).map(|m| m.name()).collect()
        };
        assert_eq!(refused(&smolvlm), ["tome", "pitome", "evit"]);
        assert!(refused(&llava).is_empty());
        assert_eq!(refused(&Capabilities::ENCODER), ["fastv", "text_guided", "sparsevlm", "mmtok", "todre"]);
        // A split image refuses every vision-side method, pre-LLM ones too, and nothing else.
        let vision: Vec<&str> = Method::all().into_iter().filter(|m| !m.is_language_side()).map(|m| m.name()).collect();
        assert_eq!(refused(&smolvlm.with_split_image(true)), vision);
        let why = Method::from_name("cls_topk").unwrap().refusal(&smolvlm.with_split_image(true)).unwrap();
        assert!(why.contains("turn image splitting off"), "{why}");
        // A model that never splits ignores the setting.
        assert!(refused(&llava.with_split_image(true)).is_empty());
        let why = Method::from_name("tome").unwrap().refusal(&smolvlm).unwrap();
        assert!(why.contains("pre-LLM method (cls_topk, hiprune, divprune, random, pool)"), "{why}");
        let err = Method::from_name("fastv").unwrap().for_encoder().unwrap_err().to_string();
        assert!(err.contains("language-side"), "{err}");
    }
}
