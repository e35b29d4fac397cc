//! The client's copy of the framebuffer, and the decoding of the rectangles
//! of a FramebufferUpdate into it (Raw, CopyRect, DesktopSize).

use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::Conn;
use super::messages::{ENCODING_COPY_RECT, ENCODING_DESKTOP_SIZE, ENCODING_RAW};
use super::{MAX_DIMENSION, RfbError};

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<'_, S> {
    /// Reads one rectangle of a FramebufferUpdate into `fb`.
    pub(super) async fn rectangle(&mut self, fb: &mut Framebuffer) -> Result<(), RfbError> {
        let rect = Rect {
            x: self.u16().await?,
            y: self.u16().await?,
            width: self.u16().await?,
            height: self.u16().await?,
        };
        match self.i32().await? {
            ENCODING_RAW => {
                fb.check(&rect)?;
                let mut row = vec![0u8; usize::from(rect.width) * 4];
                for dy in 0..rect.height {
                    self.read_exact(&mut row).await?;
                    fb.put_row(rect.x, rect.y + dy, &row);
                }
            }
            ENCODING_COPY_RECT => {
                let src = Rect {
                    x: self.u16().await?,
                    y: self.u16().await?,
                    ..rect
                };
                fb.check(&rect)?;
                fb.check(&src)?;
                fb.copy(&src, &rect);
            }
            ENCODING_DESKTOP_SIZE => {
                tracing::debug!(
                    width = rect.width,
                    height = rect.height,
                    "RFB desktop resized"
                );
                fb.resize(rect.width, rect.height)?;
            }
            other => return Err(RfbError::UnsupportedEncoding(other)),
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Rect {
    pub(super) x: u16,
    pub(super) y: u16,
    pub(super) width: u16,
    pub(super) height: u16,
}

/// The client's copy of the framebuffer, as packed RGB, and which pixels the
/// server has drawn so far.
pub(super) struct Framebuffer {
    pub(super) width: u16,
    pub(super) height: u16,
    pub(super) rgb: Vec<u8>,
    drawn: Vec<bool>,
    drawn_count: usize,
    /// The most pixels the framebuffer may have, also after a resize.
    max_pixels: u64,
}

impl Framebuffer {
    pub(super) fn new(width: u16, height: u16, max_pixels: u64) -> Result<Self, RfbError> {
        if width > MAX_DIMENSION || height > MAX_DIMENSION {
            return Err(RfbError::TooLarge { width, height });
        }
        if u64::from(width) * u64::from(height) > max_pixels {
            return Err(RfbError::OverBudget {
                width,
                height,
                max_pixels,
            });
        }
        if width == 0 || height == 0 {
            return Err(RfbError::Protocol(format!(
                "the framebuffer is {width}x{height}, there is nothing to capture"
            )));
        }
        let pixels = usize::from(width) * usize::from(height);
        Ok(Framebuffer {
            width,
            height,
            rgb: zeroed(pixels * 3)?,
            drawn: zeroed(pixels)?,
            drawn_count: 0,
            max_pixels,
        })
    }

    /// Resizes to `width`×`height`: everything is undrawn again. The old
    /// buffers are freed first, so memory never holds both.
    pub(super) fn resize(&mut self, width: u16, height: u16) -> Result<(), RfbError> {
        self.rgb = Vec::new();
        self.drawn = Vec::new();
        self.drawn_count = 0;
        *self = Framebuffer::new(width, height, self.max_pixels)?;
        Ok(())
    }

    pub(super) fn complete(&self) -> bool {
        self.drawn_count == self.drawn.len()
    }

    pub(super) fn check(&self, r: &Rect) -> Result<(), RfbError> {
        if u32::from(r.x) + u32::from(r.width) > u32::from(self.width)
            || u32::from(r.y) + u32::from(r.height) > u32::from(self.height)
        {
            return Err(RfbError::OutOfBounds {
                x: r.x,
                y: r.y,
                width: r.width,
                height: r.height,
                fb_width: self.width,
                fb_height: self.height,
            });
        }
        Ok(())
    }

    pub(super) fn index(&self, x: u16, y: u16) -> usize {
        usize::from(y) * usize::from(self.width) + usize::from(x)
    }

    /// Stores one row of Raw pixels (B, G, R, unused) at (`x`, `y`), checked
    /// to lie inside the framebuffer.
    pub(super) fn put_row(&mut self, x: u16, y: u16, pixels: &[u8]) {
        let start = self.index(x, y);
        let end = start + pixels.len() / 4;
        let rgb = self.rgb[start * 3..end * 3].chunks_exact_mut(3);
        let drawn = self.drawn[start..end].iter_mut();
        for ((dst, src), drawn) in rgb.zip(pixels.chunks_exact(4)).zip(drawn) {
            dst.copy_from_slice(&[src[2], src[1], src[0]]);
            if !*drawn {
                *drawn = true;
                self.drawn_count += 1;
            }
        }
    }

    /// CopyRect: copies `src` to `dst` (same size, both checked), as if
    /// through a temporary buffer. A pixel copied from an undrawn one stays
    /// undrawn.
    pub(super) fn copy(&mut self, src: &Rect, dst: &Rect) {
        let width = usize::from(dst.width);
        // Copy rows in the order that never overwrites a source row still
        // to be copied; `copy_within` handles overlap inside a row.
        let rows: Vec<u16> = if dst.y > src.y {
            (0..dst.height).rev().collect()
        } else {
            (0..dst.height).collect()
        };
        for dy in rows {
            let s = self.index(src.x, src.y + dy);
            let d = self.index(dst.x, dst.y + dy);
            self.rgb.copy_within(s * 3..(s + width) * 3, d * 3);
            let before = self.drawn[d..d + width].iter().filter(|d| **d).count();
            self.drawn.copy_within(s..s + width, d);
            let after = self.drawn[d..d + width].iter().filter(|d| **d).count();
            self.drawn_count = self.drawn_count + after - before;
        }
    }
}

/// A zeroed vector of `len` elements, or an error instead of an abort when
/// memory is short.
pub(super) fn zeroed<T: Default + Clone>(len: usize) -> Result<Vec<T>, RfbError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|e| {
        RfbError::Io(std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            format!("framebuffer memory: {e}"),
        ))
    })?;
    v.resize(len, T::default());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(fb: &mut Framebuffer, rows: std::ops::Range<u16>) {
        for y in rows {
            let row: Vec<u8> = (0..fb.width)
                .flat_map(|x| [x as u8, y as u8, 0, 0])
                .collect();
            fb.put_row(0, y, &row);
        }
    }

    /// (red, green) of each pixel: red is the source x, green the source y.
    fn picture(fb: &Framebuffer) -> Vec<(u8, u8)> {
        fb.rgb.chunks_exact(3).map(|p| (p[2], p[1])).collect()
    }

    #[test]
    fn overlapping_copyrect_copies_as_if_through_a_temporary_buffer() {
        let mut fb = Framebuffer::new(3, 3, 9).unwrap();
        fill(&mut fb, 0..3);
        // Scroll down by one row, and right by one column.
        let src = Rect {
            x: 0,
            y: 0,
            width: 2,
            height: 2,
        };
        let dst = Rect { x: 1, y: 1, ..src };
        fb.copy(&src, &dst);
        #[rustfmt::skip]
        let want = vec![
            (0, 0), (1, 0), (2, 0),
            (0, 1), (0, 0), (1, 0),
            (0, 2), (0, 1), (1, 1),
        ];
        assert_eq!(picture(&fb), want);
        // And back up-left.
        fb.copy(&dst, &src);
        #[rustfmt::skip]
        let want = vec![
            (0, 0), (1, 0), (2, 0),
            (0, 1), (1, 1), (1, 0),
            (0, 2), (0, 1), (1, 1),
        ];
        assert_eq!(picture(&fb), want);
        assert!(fb.complete());
    }

    #[test]
    fn copying_undrawn_pixels_leaves_them_undrawn() {
        let mut fb = Framebuffer::new(2, 2, 4).unwrap();
        fill(&mut fb, 0..1);
        assert_eq!(fb.drawn_count, 2);
        let top = Rect {
            x: 0,
            y: 0,
            width: 2,
            height: 1,
        };
        let bottom = Rect { y: 1, ..top };
        // Undrawn over drawn: the top row is undrawn again.
        fb.copy(&bottom, &top);
        assert_eq!(fb.drawn_count, 0);
        fill(&mut fb, 0..1);
        fb.copy(&top, &bottom);
        assert!(fb.complete());
    }

    #[test]
    fn empty_and_oversized_framebuffers_are_refused() {
        assert!(matches!(
            Framebuffer::new(0, 10, u64::MAX),
            Err(RfbError::Protocol(_))
        ));
        assert!(matches!(
            Framebuffer::new(10, 8193, u64::MAX),
            Err(RfbError::TooLarge { .. })
        ));
        assert!(Framebuffer::new(8192, 1, u64::MAX).is_ok());
        assert!(matches!(
            Framebuffer::new(100, 100, 9_999),
            Err(RfbError::OverBudget {
                width: 100,
                height: 100,
                max_pixels: 9_999
            })
        ));
        assert!(Framebuffer::new(100, 100, 10_000).is_ok());
    }
}
