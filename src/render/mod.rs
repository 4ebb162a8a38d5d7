//! Numbers → pictures: colormaps, heatmap-over-photo figures, text, PNG and SVG output.
//!
//! Deliberately free of egui and candle so figures can be produced (and
//! tested) headless, and the GUI and CLI export byte-identical images.
//! A figure is first a [`scene::Scene`] (plain data: every position and colour), drawn by
//! [`raster`] (PNG, the app) and [`svg`]; [`write_png_atomic`] is the only I/O.

pub mod answers;
pub mod colormap;
pub mod grid;
pub mod groups;
pub mod heat;
pub mod overlay;
pub mod png;
pub mod raster;
pub mod scene;
pub mod svg;
pub mod text;
pub mod tokens;

pub use colormap::{Colormap, UnknownColormap};
pub use grid::{GridFigure, grid_png, grid_scene, grid_svg};
pub use groups::{GroupStyle, TokenGroups, TokenGroupsError, TokenStats};
pub use heat::{Heatmap, Norm, Placement, tick_labels};
pub use overlay::{OverlayStyle, overlay, overlay_body};
pub use png::{RenderError, write_png_atomic};
pub use scene::{HeatLook, Panel, PanelContent, Scene, panel_scene};
pub use svg::panel_svg;
pub use tokens::{TokensStyle, tokens_body, tokens_overlay};
