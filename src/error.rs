//! The library's error type: every failure a user can cause (bad image, bad weights, no network)
//! is a variant with a message that says what to do; panics are reserved for our own bugs.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("image {path:?}: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error("model file {path:?}: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("fetching the model failed: {0}")]
    Fetch(String),
    #[error("invalid config `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("{0}")]
    Render(String),
    /// The memory guard: the model would not fit (the message says what would).
    #[error("not enough memory: {0}")]
    Memory(String),
    /// Asked before what it needs is there (no image open yet).
    #[error("{0}")]
    NotReady(String),
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn weights(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Weights { path: path.into(), reason: reason.into() }
    }
    pub(crate) fn image(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Image { path: path.into(), reason: reason.into() }
    }
}
