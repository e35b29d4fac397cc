//! The framebuffer as an 8-bit RGB PNG.

use super::framebuffer::Framebuffer;

impl Framebuffer {
    /// Encodes the framebuffer as PNG.
    pub(super) fn into_png(self) -> Result<Vec<u8>, png::EncodingError> {
        let mut out = Vec::new();
        let mut encoder =
            png::Encoder::new(&mut out, u32::from(self.width), u32::from(self.height));
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        // The encoder's own default is its fastest mode; zlib's default level
        // makes a text console about eight times smaller for a few milliseconds.
        encoder.set_compression(png::Compression::Default);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.rgb)?;
        writer.finish()?;
        Ok(out)
    }
}
