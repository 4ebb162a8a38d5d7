//! Numbers → pictures: colormaps, heatmap-over-photo figures, text, PNG and SVG output.
//!
//! Deliberately free of egui and candle so figures can be produced (and
//! tested) headless, and the GUI and CLI export byte-identical images.
//! A figure is first a [`scene::Scene`] (plain data: every position and colour), drawn by
//! [`raster`] (PNG, the app) and [`svg`]; [`write_png_atomic`] is the only I/O.

pub mod colormap;
pub mod grid;
pub mod overlay;
pub mod png;
pub mod raster;
pub mod scene;
pub mod svg;
pub mod text;
pub mod tokens;

pub use colormap::{Colormap, UnknownColormap};
pub use grid::{GridFigure, grid_png, grid_scene, grid_svg};
pub use overlay::{Heatmap, Norm, OverlayStyle, Placement, overlay, overlay_body, tick_labels};
pub use png::{RenderError, write_png_atomic};
pub use scene::{HeatLook, Scene, panel_scene};
pub use svg::{Panel, PanelContent, panel_svg};
pub use tokens::{GroupStyle, TokenGroups, TokenGroupsError, TokenStats, TokensStyle, tokens_body, tokens_overlay};
