//! Numbers → pictures: colormaps, heatmap-over-photo figures, text, PNG output.
//!
//! Deliberately free of egui and candle so figures can be produced (and
//! tested) headless, and the GUI and CLI export byte-identical images.
//! [`overlay`] is a pure function; [`write_png_atomic`] is the only I/O.

pub mod colormap;
pub mod grid;
pub mod overlay;
pub mod png;
pub mod svg;
pub mod text;
pub mod tokens;

pub use colormap::{Colormap, UnknownColormap};
pub use grid::{GridFigure, grid_png, grid_svg};
pub use overlay::{Heatmap, Norm, OverlayStyle, Placement, overlay, overlay_body, tick_labels};
pub use png::{RenderError, write_png_atomic};
pub use svg::{Panel, PanelContent, panel_svg};
pub use tokens::{GroupStyle, TokenGroups, TokenGroupsError, TokenStats, TokensStyle, tokens_body, tokens_overlay};
