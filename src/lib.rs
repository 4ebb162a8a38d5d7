//! tokenlens: see inside visual-token reduction.
//!
//! The library is the one inference core that the CLI, the GUI and the tests share:
//! `model` (our own ViT with inspection points and a token state reducers can change),
//! `analysis` (attention views computed from traces), `reduce` (the methods), `render`
//! (numbers to pictures) and `session` (the single entry point callers use, for encoders and
//! vision-language models alike; `session::vlm` runs the latter). `tests/layering.rs` holds
//! these layers apart.

pub mod analysis;
pub mod app;
pub mod atomic;
pub mod cancel;
pub mod error;
pub mod export;
pub mod figures;
pub mod guard;
pub mod model;
pub mod reduce;
pub mod render;
pub mod session;

pub use cancel::Cancel;
pub use error::{Error, Result};
