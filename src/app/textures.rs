//! Textures keyed by what they show: a view change re-renders once, and an unchanged frame
//! uploads nothing.

use std::collections::HashMap;

use eframe::egui;
use egui::{ColorImage, TextureHandle, TextureOptions};
use image::RgbImage;

#[derive(Default)]
pub struct Textures {
    slots: HashMap<String, (String, TextureHandle)>,
    rebuilt_this_frame: bool,
    rebuilt_last_frame: bool,
}

impl Textures {
    pub fn begin_frame(&mut self) {
        self.rebuilt_last_frame = self.rebuilt_this_frame;
        self.rebuilt_this_frame = false;
    }

    /// The texture in `slot`, rebuilt with `make` only when `key` differs from last time.
    pub fn get(
        &mut self,
        ctx: &egui::Context,
        slot: &str,
        key: String,
        make: impl FnOnce() -> RgbImage,
    ) -> TextureHandle {
        if let Some((k, tex)) = self.slots.get(slot)
            && *k == key
        {
            return tex.clone();
        }
        let img = make();
        let size = [img.width() as usize, img.height() as usize];
        let tex = ctx.load_texture(slot, ColorImage::from_rgb(size, img.as_raw()), TextureOptions::LINEAR);
        self.slots.insert(slot.to_string(), (key, tex.clone()));
        self.rebuilt_this_frame = true;
        tex
    }

    /// The texture last made for `slot` (tests find it among a frame's shapes).
    #[cfg(test)]
    pub fn handle(&self, slot: &str) -> Option<&TextureHandle> {
        self.slots.get(slot).map(|(_, tex)| tex)
    }

    /// No texture changed in the last full frame (what is on screen is final).
    pub fn is_settled(&self) -> bool {
        !self.rebuilt_last_frame && !self.rebuilt_this_frame
    }
}
