//! PNG output: encode in memory, then one atomic write (see [`crate::atomic`]).

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::atomic::{WriteError, write_atomic};

/// Errors from writing rendered images.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot encode PNG for {path:?}: {source}")]
    Encode { path: PathBuf, source: image::ImageError },
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Writes a PNG atomically; on any error nothing is left behind.
pub fn write_png_atomic(path: &Path, img: &RgbImage) -> Result<(), RenderError> {
    let mut bytes = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new(&mut bytes);
    image::ImageEncoder::write_image(encoder, img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .map_err(|source| RenderError::Encode { path: path.to_path_buf(), source })?;
    Ok(write_atomic(path, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn writes_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.png");
        let img = RgbImage::from_fn(7, 5, |x, y| Rgb([x as u8 * 30, y as u8 * 40, 9]));
        write_png_atomic(&path, &img).unwrap();
        assert_eq!(image::open(&path).unwrap().to_rgb8(), img);
    }
}
