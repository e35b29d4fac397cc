//! A small RFB (VNC) client: connects over any byte stream, reads one full
//! framebuffer and encodes it as PNG. Used by `vnc/screenshot`.
//!
//! The client speaks RFB 3.3, 3.7 and 3.8 (RFC 6143), answering with the
//! highest version both sides know. It supports only the security type None
//! (1), which is what QEMU's VNC server offers without a password, and joins
//! as a *shared* client so a user's open VNC session stays connected. It asks
//! for 32-bit true-colour pixels (R at bit 16, G at 8, B at 0, little-endian)
//! in the Raw and CopyRect encodings plus the DesktopSize pseudo-encoding,
//! requests the whole screen and reads updates until every pixel has been
//! drawn. Memory is bounded: the client's copy of the screen costs four bytes
//! a pixel, and a framebuffer (announced or resized to) of more pixels than
//! the caller's budget ([`screenshot_within`]; [`DEFAULT_MAX_PIXELS`]) or
//! above [`MAX_DIMENSION`] in either direction is refused before anything is
//! allocated; rectangles outside the framebuffer are refused, and server
//! strings (reasons, the desktop name, clipboard text) are read in bounded
//! pieces.
//!
//! One file a step: [`messages`] holds the protocol's fixed messages and
//! version negotiation, [`conn`] the typed reads and writes, [`client`] the
//! handshake and the update loop, [`framebuffer`] the decoding of rectangles
//! into the client's copy of the screen, and [`encode`] the PNG.

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

mod client;
mod conn;
mod encode;
mod framebuffer;
mod messages;

#[cfg(test)]
mod tests;

use client::{PHASE_VERSION, capture};

/// The largest framebuffer width and height a screenshot may have.
pub const MAX_DIMENSION: u16 = 8192;

/// The pixel budget of [`screenshot`]: 4 Mi pixels (2560×1600 fits), 16 MiB
/// for the client's copy of the screen.
pub const DEFAULT_MAX_PIXELS: u64 = 4 * 1024 * 1024;

/// A screenshot of a VNC server's framebuffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screenshot {
    /// Width of the framebuffer in pixels.
    pub width: u16,
    /// Height of the framebuffer in pixels.
    pub height: u16,
    /// The framebuffer as an 8-bit RGB PNG image.
    pub png: Vec<u8>,
}

/// Why a screenshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum RfbError {
    /// The server announced a protocol version this client cannot speak
    /// (or is not an RFB server at all).
    #[error("the VNC server announced protocol version {0:?}; supported are RFB 3.3, 3.7 and 3.8")]
    UnsupportedVersion(String),
    /// The server offers no security type this client supports.
    #[error(
        "the VNC server offers only security types {offered}; only None (1) is supported, so the VNC server must not require a password"
    )]
    SecurityTypeRefused {
        /// The offered types, named, e.g. `VNC Authentication (2)`.
        offered: String,
    },
    /// The server refused the connection during the security handshake.
    #[error("the VNC server refused the connection: {reason}")]
    Refused {
        /// The server's reason.
        reason: String,
    },
    /// The framebuffer is larger than [`MAX_DIMENSION`] in some direction.
    #[error(
        "the framebuffer is {width}x{height}, larger than the supported {MAX_DIMENSION}x{MAX_DIMENSION}"
    )]
    TooLarge {
        /// Announced width.
        width: u16,
        /// Announced height.
        height: u16,
    },
    /// The framebuffer has more pixels than the screenshot's budget.
    #[error(
        "the framebuffer is {width}x{height} ({} pixels), more than the {max_pixels} pixels a screenshot may have",
        u64::from(*width) * u64::from(*height)
    )]
    OverBudget {
        /// Announced width.
        width: u16,
        /// Announced height.
        height: u16,
        /// The budget.
        max_pixels: u64,
    },
    /// A rectangle (or a CopyRect source) lies outside the framebuffer.
    #[error(
        "the VNC server sent a {width}x{height} rectangle at ({x},{y}) outside the {fb_width}x{fb_height} framebuffer"
    )]
    OutOfBounds {
        /// Left edge.
        x: u16,
        /// Top edge.
        y: u16,
        /// Rectangle width.
        width: u16,
        /// Rectangle height.
        height: u16,
        /// Framebuffer width.
        fb_width: u16,
        /// Framebuffer height.
        fb_height: u16,
    },
    /// A rectangle uses an encoding this client did not ask for.
    #[error(
        "the VNC server sent a rectangle in encoding {0}, which was not requested (supported: Raw, CopyRect, DesktopSize)"
    )]
    UnsupportedEncoding(i32),
    /// Any other violation of the protocol.
    #[error("RFB protocol error: {0}")]
    Protocol(String),
    /// The whole exchange took longer than the timeout.
    #[error("no complete screenshot within {timeout:?} (timed out {phase})")]
    Timeout {
        /// The timeout that expired.
        timeout: Duration,
        /// What the client was doing.
        phase: &'static str,
    },
    /// The server closed the connection early.
    #[error("the VNC server closed the connection {phase}")]
    Closed {
        /// What the client was doing.
        phase: &'static str,
    },
    /// Reading from or writing to the connection failed.
    #[error("I/O error talking to the VNC server: {0}")]
    Io(#[from] std::io::Error),
    /// The PNG encoder failed.
    #[error("encoding the screenshot as PNG failed: {0}")]
    Png(#[from] png::EncodingError),
}

/// Connects to an RFB server over `stream`, reads one full framebuffer and
/// returns it PNG-encoded. The whole exchange, PNG encoding included, must
/// finish within `timeout`.
///
/// The client joins as a shared client, so other VNC clients of the server
/// stay connected. The framebuffer may have at most [`DEFAULT_MAX_PIXELS`].
pub async fn screenshot<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    timeout: Duration,
) -> Result<Screenshot, RfbError> {
    screenshot_within(stream, timeout, DEFAULT_MAX_PIXELS).await
}

/// [`screenshot`] of a framebuffer of at most `max_pixels` pixels (width ×
/// height, also after a resize): a larger one is [`RfbError::OverBudget`],
/// refused before its memory is allocated.
pub async fn screenshot_within<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    timeout: Duration,
    max_pixels: u64,
) -> Result<Screenshot, RfbError> {
    let phase = Mutex::new(PHASE_VERSION);
    match tokio::time::timeout(timeout, capture(stream, &phase, max_pixels)).await {
        Ok(result) => result,
        Err(_) => Err(RfbError::Timeout {
            timeout,
            phase: *phase.lock().unwrap_or_else(|e| e.into_inner()),
        }),
    }
}
