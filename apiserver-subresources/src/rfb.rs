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
//! drawn. Memory is bounded: framebuffers above
//! [`MAX_DIMENSION`]×[`MAX_DIMENSION`] and rectangles outside the framebuffer
//! are refused, and server strings (reasons, the desktop name, clipboard text)
//! are read in bounded pieces.

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// The largest framebuffer width and height a screenshot may have.
pub const MAX_DIMENSION: u16 = 8192;

const SECURITY_NONE: u8 = 1;

const ENCODING_RAW: i32 = 0;
const ENCODING_COPY_RECT: i32 = 1;
const ENCODING_DESKTOP_SIZE: i32 = -223;

const MSG_FRAMEBUFFER_UPDATE: u8 = 0;
const MSG_SET_COLOUR_MAP_ENTRIES: u8 = 1;
const MSG_BELL: u8 = 2;
const MSG_SERVER_CUT_TEXT: u8 = 3;

/// How much of a failure reason or desktop name is kept; the rest is skipped.
const MAX_TEXT: usize = 4096;

/// SetPixelFormat: 32 bpp, depth 24, little-endian, true colour, 8 bits per
/// channel, red at bit 16, green at 8, blue at 0. On the wire a pixel is then
/// the bytes B, G, R, (unused).
const SET_PIXEL_FORMAT: [u8; 20] = [
    0, 0, 0, 0, // message type, padding
    32, 24, 0, 1, // bits per pixel, depth, big-endian flag, true-colour flag
    0, 255, 0, 255, 0, 255, // red, green, blue maximum
    16, 8, 0, // red, green, blue shift
    0, 0, 0, // padding
];

/// SetEncodings: Raw, CopyRect and the DesktopSize pseudo-encoding.
const SET_ENCODINGS: [u8; 16] = {
    let raw = ENCODING_RAW.to_be_bytes();
    let copy = ENCODING_COPY_RECT.to_be_bytes();
    let size = ENCODING_DESKTOP_SIZE.to_be_bytes();
    [
        2, 0, 0, 3, // message type, padding, number of encodings
        raw[0], raw[1], raw[2], raw[3], //
        copy[0], copy[1], copy[2], copy[3], //
        size[0], size[1], size[2], size[3],
    ]
};

// What the client was doing, for timeout and connection-closed errors.
const PHASE_VERSION: &str = "while waiting for the protocol version";
const PHASE_SECURITY: &str = "during the security handshake";
const PHASE_SECURITY_RESULT: &str = "while waiting for the security result";
const PHASE_SERVER_INIT: &str = "while waiting for the ServerInit message";
const PHASE_WAITING: &str = "while waiting for a framebuffer update";
const PHASE_MESSAGE: &str = "in the middle of a server message";
const PHASE_PNG: &str = "while encoding the PNG";

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
/// stay connected.
pub async fn screenshot<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    timeout: Duration,
) -> Result<Screenshot, RfbError> {
    let phase = Mutex::new(PHASE_VERSION);
    match tokio::time::timeout(timeout, capture(stream, &phase)).await {
        Ok(result) => result,
        Err(_) => Err(RfbError::Timeout {
            timeout,
            phase: *phase.lock().unwrap_or_else(|e| e.into_inner()),
        }),
    }
}

async fn capture<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    phase: &Mutex<&'static str>,
) -> Result<Screenshot, RfbError> {
    let mut conn = Conn {
        io: BufReader::with_capacity(64 * 1024, stream),
        phase,
    };

    // ProtocolVersion.
    conn.set_phase(PHASE_VERSION);
    let mut announced = [0u8; 12];
    conn.read_exact(&mut announced).await?;
    let version = negotiate_version(&announced)?;
    tracing::debug!(
        announced = %String::from_utf8_lossy(&announced).trim_end(),
        ?version,
        "RFB version"
    );
    conn.send(version.reply()).await?;

    // Security.
    conn.set_phase(PHASE_SECURITY);
    match version {
        Version::V3_3 => match conn.u32().await? {
            0 => return Err(conn.refused().await),
            1 => {}
            other => {
                return Err(RfbError::SecurityTypeRefused {
                    offered: describe_security_types([other]),
                });
            }
        },
        Version::V3_7 | Version::V3_8 => {
            let count = conn.u8().await?;
            if count == 0 {
                return Err(conn.refused().await);
            }
            let mut offered = vec![0u8; usize::from(count)];
            conn.read_exact(&mut offered).await?;
            if !offered.contains(&SECURITY_NONE) {
                return Err(RfbError::SecurityTypeRefused {
                    offered: describe_security_types(offered.iter().map(|t| u32::from(*t))),
                });
            }
            conn.send(&[SECURITY_NONE]).await?;
            // RFC 6143 7.2.1: for None, only 3.8 sends a SecurityResult.
            if version == Version::V3_8 {
                conn.set_phase(PHASE_SECURITY_RESULT);
                if conn.u32().await? != 0 {
                    return Err(conn.refused().await);
                }
            }
        }
    }

    // ClientInit (shared) and ServerInit.
    conn.send(&[1]).await?;
    conn.set_phase(PHASE_SERVER_INIT);
    let width = conn.u16().await?;
    let height = conn.u16().await?;
    let mut server_format = [0u8; 16];
    conn.read_exact(&mut server_format).await?;
    let name_len = conn.u32().await?;
    let name = conn.text(name_len).await?;
    tracing::debug!(width, height, name, "RFB ServerInit");
    let mut fb = Framebuffer::new(width, height)?;

    let mut setup = Vec::with_capacity(SET_PIXEL_FORMAT.len() + SET_ENCODINGS.len() + 10);
    setup.extend_from_slice(&SET_PIXEL_FORMAT);
    setup.extend_from_slice(&SET_ENCODINGS);
    setup.extend_from_slice(&full_update_request(fb.width, fb.height));
    conn.send(&setup).await?;

    loop {
        conn.set_phase(PHASE_WAITING);
        let message = conn.u8().await?;
        conn.set_phase(PHASE_MESSAGE);
        match message {
            MSG_FRAMEBUFFER_UPDATE => {
                conn.skip(1).await?;
                let rects = conn.u16().await?;
                for _ in 0..rects {
                    conn.rectangle(&mut fb).await?;
                }
                if fb.complete() {
                    break;
                }
                // Partial update, or the desktop was resized: ask for all of it again.
                conn.send(&full_update_request(fb.width, fb.height)).await?;
            }
            MSG_SET_COLOUR_MAP_ENTRIES => {
                conn.skip(3).await?; // padding, first colour
                let colours = conn.u16().await?;
                conn.skip(u64::from(colours) * 6).await?;
            }
            MSG_BELL => {}
            MSG_SERVER_CUT_TEXT => {
                conn.skip(3).await?;
                let len = conn.u32().await?;
                conn.skip(u64::from(len)).await?;
            }
            other => {
                return Err(RfbError::Protocol(format!(
                    "unknown server message type {other}"
                )));
            }
        }
    }

    conn.set_phase(PHASE_PNG);
    let (width, height) = (fb.width, fb.height);
    let png = tokio::task::spawn_blocking(move || fb.into_png())
        .await
        .map_err(std::io::Error::from)??;
    Ok(Screenshot { width, height, png })
}

/// The protocol version spoken with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V3_3,
    V3_7,
    V3_8,
}

impl Version {
    fn reply(self) -> &'static [u8; 12] {
        match self {
            Version::V3_3 => b"RFB 003.003\n",
            Version::V3_7 => b"RFB 003.007\n",
            Version::V3_8 => b"RFB 003.008\n",
        }
    }
}

/// Picks the highest version both sides speak. Per RFC 6143 7.1.1, 3.4 to 3.6
/// are spoken as 3.3; anything newer than 3.8 (Apple's 3.889, RealVNC's 4.x
/// and 5.x) is answered with 3.8.
fn negotiate_version(announced: &[u8; 12]) -> Result<Version, RfbError> {
    let number = |digits: &[u8]| -> Option<u32> {
        if digits.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(digits).ok()?.parse().ok()
        } else {
            None
        }
    };
    let parsed = if announced.starts_with(b"RFB ") && announced[7] == b'.' && announced[11] == b'\n'
    {
        number(&announced[4..7]).zip(number(&announced[8..11]))
    } else {
        None
    };
    match parsed {
        Some((3, 8..) | (4.., _)) => Ok(Version::V3_8),
        Some((3, 7)) => Ok(Version::V3_7),
        Some((3, 3..=6)) => Ok(Version::V3_3),
        _ => Err(RfbError::UnsupportedVersion(
            String::from_utf8_lossy(announced).trim_end().to_owned(),
        )),
    }
}

fn security_type_name(t: u32) -> &'static str {
    match t {
        0 => "Invalid",
        1 => "None",
        2 => "VNC Authentication",
        5 => "RA2",
        6 => "RA2ne",
        16 => "Tight",
        17 => "Ultra",
        18 => "TLS",
        19 => "VeNCrypt",
        20 => "SASL",
        21 => "MD5 hash",
        22 => "xvp",
        30 => "Apple Remote Desktop",
        _ => "unknown",
    }
}

/// e.g. `VNC Authentication (2), VeNCrypt (19)`.
fn describe_security_types(types: impl IntoIterator<Item = u32>) -> String {
    types
        .into_iter()
        .map(|t| format!("{} ({t})", security_type_name(t)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// FramebufferUpdateRequest, non-incremental, for the whole screen.
fn full_update_request(width: u16, height: u16) -> [u8; 10] {
    let [w0, w1] = width.to_be_bytes();
    let [h0, h1] = height.to_be_bytes();
    [3, 0, 0, 0, 0, 0, w0, w1, h0, h1]
}

/// The connection: buffered reads, and what the client is doing right now.
struct Conn<'p, S> {
    io: BufReader<S>,
    phase: &'p Mutex<&'static str>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<'_, S> {
    fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    fn error(&self, e: std::io::Error) -> RfbError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            RfbError::Closed {
                phase: *self.phase.lock().unwrap_or_else(|e| e.into_inner()),
            }
        } else {
            RfbError::Io(e)
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), RfbError> {
        let io = self.io.get_mut();
        let result = match io.write_all(bytes).await {
            Ok(()) => io.flush().await,
            Err(e) => Err(e),
        };
        result.map_err(|e| self.error(e))
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), RfbError> {
        match self.io.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn u8(&mut self) -> Result<u8, RfbError> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b).await?;
        Ok(b[0])
    }

    async fn u16(&mut self) -> Result<u16, RfbError> {
        let mut b = [0u8; 2];
        self.read_exact(&mut b).await?;
        Ok(u16::from_be_bytes(b))
    }

    async fn u32(&mut self) -> Result<u32, RfbError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b).await?;
        Ok(u32::from_be_bytes(b))
    }

    async fn i32(&mut self) -> Result<i32, RfbError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b).await?;
        Ok(i32::from_be_bytes(b))
    }

    /// Discards `n` bytes without buffering them.
    async fn skip(&mut self, n: u64) -> Result<(), RfbError> {
        let mut left = n;
        let mut scratch = [0u8; 4096];
        while left > 0 {
            let chunk = usize::try_from(left).map_or(scratch.len(), |l| l.min(scratch.len()));
            self.read_exact(&mut scratch[..chunk]).await?;
            left -= chunk as u64;
        }
        Ok(())
    }

    /// Reads a string of `len` bytes, keeping at most [`MAX_TEXT`] of them.
    async fn text(&mut self, len: u32) -> Result<String, RfbError> {
        let keep = usize::try_from(len).map_or(MAX_TEXT, |l| l.min(MAX_TEXT));
        let mut buf = vec![0u8; keep];
        self.read_exact(&mut buf).await?;
        self.skip(u64::from(len) - keep as u64).await?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Reads the reason string that follows a security failure.
    async fn refused(&mut self) -> RfbError {
        let reason = match self.u32().await {
            Ok(len) => match self.text(len).await {
                Ok(reason) => reason,
                Err(e) => return e,
            },
            Err(e) => return e,
        };
        let reason = reason.trim();
        RfbError::Refused {
            reason: if reason.is_empty() {
                "no reason given".to_owned()
            } else {
                reason.to_owned()
            },
        }
    }

    /// Reads one rectangle of a FramebufferUpdate into `fb`.
    async fn rectangle(&mut self, fb: &mut Framebuffer) -> Result<(), RfbError> {
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
struct Rect {
    x: u16,
    y: u16,
    width: u16,
    height: u16,
}

/// The client's copy of the framebuffer, as packed RGB, and which pixels the
/// server has drawn so far.
struct Framebuffer {
    width: u16,
    height: u16,
    rgb: Vec<u8>,
    drawn: Vec<bool>,
    drawn_count: usize,
}

impl Framebuffer {
    fn new(width: u16, height: u16) -> Result<Self, RfbError> {
        if width > MAX_DIMENSION || height > MAX_DIMENSION {
            return Err(RfbError::TooLarge { width, height });
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
        })
    }

    /// Resizes to `width`×`height`: everything is undrawn again. The old
    /// buffers are freed first, so memory never holds both.
    fn resize(&mut self, width: u16, height: u16) -> Result<(), RfbError> {
        self.rgb = Vec::new();
        self.drawn = Vec::new();
        self.drawn_count = 0;
        *self = Framebuffer::new(width, height)?;
        Ok(())
    }

    fn complete(&self) -> bool {
        self.drawn_count == self.drawn.len()
    }

    fn check(&self, r: &Rect) -> Result<(), RfbError> {
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

    fn index(&self, x: u16, y: u16) -> usize {
        usize::from(y) * usize::from(self.width) + usize::from(x)
    }

    /// Stores one row of Raw pixels (B, G, R, unused) at (`x`, `y`), checked
    /// to lie inside the framebuffer.
    fn put_row(&mut self, x: u16, y: u16, pixels: &[u8]) {
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
    fn copy(&mut self, src: &Rect, dst: &Rect) {
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

    fn into_png(self) -> Result<Vec<u8>, png::EncodingError> {
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

/// A zeroed vector of `len` elements, or an error instead of an abort when
/// memory is short.
fn zeroed<T: Default + Clone>(len: usize) -> Result<Vec<T>, RfbError> {
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
    use std::future::Future;
    use tokio::io::{DuplexStream, duplex};

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// The known test picture: every pixel different.
    fn pixel(x: u16, y: u16) -> [u8; 3] {
        let (x, y) = (x as u8, y as u8);
        [10 + 60 * x, 20 + 80 * y, 200 - 30 * x - 10 * y]
    }

    fn be16(v: u16) -> [u8; 2] {
        v.to_be_bytes()
    }

    fn rect_header(x: u16, y: u16, w: u16, h: u16, encoding: i32) -> Vec<u8> {
        [be16(x), be16(y), be16(w), be16(h)]
            .concat()
            .into_iter()
            .chain(encoding.to_be_bytes())
            .collect()
    }

    /// A Raw rectangle of the test picture, pixels as B, G, R, 0.
    fn raw(x: u16, y: u16, w: u16, h: u16) -> Vec<u8> {
        let mut out = rect_header(x, y, w, h, ENCODING_RAW);
        for py in y..y + h {
            for px in x..x + w {
                let [r, g, b] = pixel(px, py);
                out.extend_from_slice(&[b, g, r, 0]);
            }
        }
        out
    }

    fn copy_rect(src_x: u16, src_y: u16, x: u16, y: u16, w: u16, h: u16) -> Vec<u8> {
        let mut out = rect_header(x, y, w, h, ENCODING_COPY_RECT);
        out.extend_from_slice(&be16(src_x));
        out.extend_from_slice(&be16(src_y));
        out
    }

    fn update(rects: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![MSG_FRAMEBUFFER_UPDATE, 0];
        out.extend_from_slice(&be16(rects.len() as u16));
        for r in rects {
            out.extend_from_slice(r);
        }
        out
    }

    fn reason(text: &str) -> Vec<u8> {
        let mut out = (text.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// The server end of an in-memory connection.
    struct Fake {
        io: DuplexStream,
    }

    impl Fake {
        async fn send(&mut self, bytes: &[u8]) {
            self.io.write_all(bytes).await.unwrap();
        }

        async fn expect(&mut self, want: &[u8]) {
            let mut got = vec![0u8; want.len()];
            self.io.read_exact(&mut got).await.unwrap();
            assert_eq!(got, want, "client sent unexpected bytes");
        }

        /// ServerInit of a `w`×`h` desktop (native format 16 bpp, which the
        /// client must override).
        async fn server_init(&mut self, w: u16, h: u16) {
            let mut msg = [be16(w), be16(h)].concat();
            msg.extend_from_slice(&[16, 16, 1, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0]);
            msg.extend_from_slice(&reason("fake desktop"));
            self.send(&msg).await;
        }

        /// The client's ClientInit, then after ServerInit its setup messages.
        async fn init(&mut self, w: u16, h: u16) {
            self.expect(&[1]).await; // shared
            self.server_init(w, h).await;
            self.expect(&SET_PIXEL_FORMAT).await;
            self.expect(&[2, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0x21])
                .await;
            self.expect_full_request(w, h).await;
        }

        async fn expect_full_request(&mut self, w: u16, h: u16) {
            let mut msg = vec![3, 0, 0, 0, 0, 0];
            msg.extend_from_slice(&be16(w));
            msg.extend_from_slice(&be16(h));
            self.expect(&msg).await;
        }

        /// 3.8 handshake with security None, up to the first update request.
        async fn handshake_38(&mut self, w: u16, h: u16) {
            self.send(b"RFB 003.008\n").await;
            self.expect(b"RFB 003.008\n").await;
            self.send(&[2, 2, 1]).await; // VNC auth, None
            self.expect(&[1]).await;
            self.send(&0u32.to_be_bytes()).await; // SecurityResult OK
            self.init(w, h).await;
        }
    }

    /// Runs `script` as the server against `screenshot`; a panic in the
    /// script fails the test.
    async fn run<F, Fut>(timeout: Duration, script: F) -> Result<Screenshot, RfbError>
    where
        F: FnOnce(Fake) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (client, server) = duplex(64 * 1024);
        let server = tokio::spawn(script(Fake { io: server }));
        let result = screenshot(client, timeout).await;
        if let Err(e) = server.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
        result
    }

    /// Decodes the PNG and returns its pixels row by row.
    fn decode(shot: &Screenshot) -> Vec<[u8; 3]> {
        let decoder = png::Decoder::new(shot.png.as_slice());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0u8; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        assert_eq!(
            (info.width, info.height),
            (u32::from(shot.width), u32::from(shot.height))
        );
        buf[..info.buffer_size()]
            .chunks_exact(3)
            .map(|p| [p[0], p[1], p[2]])
            .collect()
    }

    fn expected(w: u16, h: u16, at: impl Fn(u16, u16) -> [u8; 3]) -> Vec<[u8; 3]> {
        (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| at(x, y))
            .collect()
    }

    #[tokio::test]
    async fn rfb_38_two_raw_rectangles_and_a_copyrect() {
        let shot = run(TIMEOUT, |mut s| async move {
            s.handshake_38(4, 3).await;
            // Messages to skip before the update.
            s.send(&[MSG_BELL]).await;
            let mut cut = vec![MSG_SERVER_CUT_TEXT, 0, 0, 0];
            cut.extend_from_slice(&reason("clipboard text"));
            s.send(&cut).await;
            let mut colours = vec![MSG_SET_COLOUR_MAP_ENTRIES, 0, 0, 0, 0, 2];
            colours.extend_from_slice(&[0xff; 12]);
            s.send(&colours).await;
            // Rows 0-1, the left half of row 2, then a copy of (0,0)-(1,0)
            // to the right half of row 2.
            s.send(&update(&[
                raw(0, 0, 4, 2),
                raw(0, 2, 2, 1),
                copy_rect(0, 0, 2, 2, 2, 1),
            ]))
            .await;
        })
        .await
        .unwrap();
        assert_eq!((shot.width, shot.height), (4, 3));
        let want = expected(4, 3, |x, y| match (x, y) {
            (2, 2) => pixel(0, 0),
            (3, 2) => pixel(1, 0),
            _ => pixel(x, y),
        });
        assert_eq!(decode(&shot), want);
    }

    #[tokio::test]
    async fn rfb_33_partial_update_is_followed_by_a_new_request() {
        let shot = run(TIMEOUT, |mut s| async move {
            s.send(b"RFB 003.003\n").await;
            s.expect(b"RFB 003.003\n").await;
            s.send(&1u32.to_be_bytes()).await; // the server decides: None
            // No SecurityResult for None before 3.8.
            s.init(4, 3).await;
            s.send(&update(&[raw(0, 0, 4, 2)])).await;
            s.expect_full_request(4, 3).await;
            s.send(&update(&[raw(0, 2, 4, 1)])).await;
        })
        .await
        .unwrap();
        assert_eq!(decode(&shot), expected(4, 3, pixel));
    }

    #[tokio::test]
    async fn rfb_37_picks_none_and_expects_no_security_result() {
        let shot = run(TIMEOUT, |mut s| async move {
            s.send(b"RFB 003.007\n").await;
            s.expect(b"RFB 003.007\n").await;
            s.send(&[2, 2, 1]).await;
            s.expect(&[1]).await;
            s.init(4, 3).await;
            s.send(&update(&[raw(0, 0, 4, 3)])).await;
        })
        .await
        .unwrap();
        assert_eq!(decode(&shot), expected(4, 3, pixel));
    }

    #[tokio::test]
    async fn desktop_size_resizes_and_requests_the_new_screen() {
        let shot = run(TIMEOUT, |mut s| async move {
            s.handshake_38(2, 2).await;
            // The 2x2 screen is drawn completely, but resized in the same update.
            s.send(&update(&[
                raw(0, 0, 2, 2),
                rect_header(0, 0, 4, 3, ENCODING_DESKTOP_SIZE),
            ]))
            .await;
            s.expect_full_request(4, 3).await;
            s.send(&update(&[raw(0, 0, 4, 1), raw(0, 1, 4, 2)])).await;
        })
        .await
        .unwrap();
        assert_eq!((shot.width, shot.height), (4, 3));
        assert_eq!(decode(&shot), expected(4, 3, pixel));
    }

    #[tokio::test]
    async fn vnc_authentication_only_is_refused_by_name() {
        let err = run(TIMEOUT, |mut s| async move {
            s.send(b"RFB 003.008\n").await;
            s.expect(b"RFB 003.008\n").await;
            s.send(&[2, 2, 19]).await;
        })
        .await
        .unwrap_err();
        assert!(
            matches!(err, RfbError::SecurityTypeRefused { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("VNC Authentication (2), VeNCrypt (19)"),
            "{msg}"
        );
        assert!(msg.contains("None (1)"), "{msg}");
    }

    #[tokio::test]
    async fn rfb_33_vnc_authentication_is_refused_by_name() {
        let err = run(TIMEOUT, |mut s| async move {
            s.send(b"RFB 003.003\n").await;
            s.expect(b"RFB 003.003\n").await;
            s.send(&2u32.to_be_bytes()).await;
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("VNC Authentication (2)"), "{err}");
    }

    #[tokio::test]
    async fn server_failure_reasons_are_reported() {
        let err = run(TIMEOUT, |mut s| async move {
            s.send(b"RFB 003.008\n").await;
            s.expect(b"RFB 003.008\n").await;
            s.send(&[0]).await;
            s.send(&reason("too many connections")).await;
        })
        .await
        .unwrap_err();
        assert!(matches!(err, RfbError::Refused { .. }), "{err:?}");
        assert!(err.to_string().contains("too many connections"), "{err}");

        let err = run(TIMEOUT, |mut s| async move {
            s.send(b"RFB 003.008\n").await;
            s.expect(b"RFB 003.008\n").await;
            s.send(&[1, 1]).await;
            s.expect(&[1]).await;
            s.send(&1u32.to_be_bytes()).await;
            s.send(&reason("go away")).await;
        })
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("refused the connection: go away"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unsupported_versions_are_refused() {
        for announced in [&b"RFB 002.002\n"[..], b"HTTP/1.1 400", b"RFB 003.00x\n"] {
            let err = run(TIMEOUT, move |mut s| async move {
                s.send(announced).await;
            })
            .await
            .unwrap_err();
            assert!(matches!(err, RfbError::UnsupportedVersion(_)), "{err:?}");
            assert!(err.to_string().contains("3.8"), "{err}");
        }
    }

    #[test]
    fn version_negotiation_picks_the_highest_common_version() {
        let v = |s: &[u8; 12]| negotiate_version(s).ok();
        assert_eq!(v(b"RFB 003.008\n"), Some(Version::V3_8));
        assert_eq!(v(b"RFB 003.889\n"), Some(Version::V3_8));
        assert_eq!(v(b"RFB 005.000\n"), Some(Version::V3_8));
        assert_eq!(v(b"RFB 003.007\n"), Some(Version::V3_7));
        assert_eq!(v(b"RFB 003.005\n"), Some(Version::V3_3));
        assert_eq!(v(b"RFB 003.003\n"), Some(Version::V3_3));
        assert_eq!(v(b"RFB 003.002\n"), None);
        assert_eq!(v(b"RFB 003.008 "), None);
    }

    #[tokio::test]
    async fn too_large_framebuffer_is_refused() {
        let err = run(TIMEOUT, |mut s| async move {
            s.send(b"RFB 003.008\n").await;
            s.expect(b"RFB 003.008\n").await;
            s.send(&[1, 1]).await;
            s.expect(&[1]).await;
            s.send(&0u32.to_be_bytes()).await;
            s.expect(&[1]).await;
            s.server_init(8193, 100).await;
        })
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                RfbError::TooLarge {
                    width: 8193,
                    height: 100
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn rectangles_outside_the_framebuffer_are_refused() {
        let err = run(TIMEOUT, |mut s| async move {
            s.handshake_38(4, 3).await;
            s.send(&update(&[raw(1, 0, 4, 3)])).await;
        })
        .await
        .unwrap_err();
        assert!(matches!(err, RfbError::OutOfBounds { x: 1, .. }), "{err:?}");
        assert!(
            err.to_string().contains("outside the 4x3 framebuffer"),
            "{err}"
        );

        // A CopyRect whose source lies outside.
        let err = run(TIMEOUT, |mut s| async move {
            s.handshake_38(4, 3).await;
            s.send(&update(&[copy_rect(3, 2, 0, 0, 2, 2)])).await;
        })
        .await
        .unwrap_err();
        assert!(
            matches!(err, RfbError::OutOfBounds { x: 3, y: 2, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn unrequested_encodings_and_messages_are_errors() {
        let err = run(TIMEOUT, |mut s| async move {
            s.handshake_38(4, 3).await;
            s.send(&update(&[rect_header(0, 0, 4, 3, 16)])).await; // ZRLE
        })
        .await
        .unwrap_err();
        assert!(matches!(err, RfbError::UnsupportedEncoding(16)), "{err:?}");

        let err = run(TIMEOUT, |mut s| async move {
            s.handshake_38(4, 3).await;
            s.send(&[150]).await;
        })
        .await
        .unwrap_err();
        assert!(matches!(err, RfbError::Protocol(_)), "{err:?}");
    }

    #[tokio::test]
    async fn truncated_streams_are_reported_as_closed() {
        let err = run(TIMEOUT, |mut s| async move {
            s.handshake_38(4, 3).await;
            let whole = update(&[raw(0, 0, 4, 3)]);
            s.send(&whole[..whole.len() - 5]).await;
        })
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                RfbError::Closed {
                    phase: PHASE_MESSAGE
                }
            ),
            "{err:?}"
        );

        let err = run(TIMEOUT, |mut s| async move {
            s.send(b"RFB 003.008\n").await;
            s.expect(b"RFB 003.008\n").await;
        })
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                RfbError::Closed {
                    phase: PHASE_SECURITY
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let started = std::time::Instant::now();
        let err = run(Duration::from_millis(200), |mut s| async move {
            s.handshake_38(4, 3).await;
            // Never answer; hold the connection until the client gives up.
            let mut b = [0u8; 1];
            let _ = s.io.read(&mut b).await;
        })
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                RfbError::Timeout {
                    phase: PHASE_WAITING,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("200ms"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[cfg(test)]
mod framebuffer_tests {
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
        let mut fb = Framebuffer::new(3, 3).unwrap();
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
        let mut fb = Framebuffer::new(2, 2).unwrap();
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
            Framebuffer::new(0, 10),
            Err(RfbError::Protocol(_))
        ));
        assert!(matches!(
            Framebuffer::new(10, 8193),
            Err(RfbError::TooLarge { .. })
        ));
        assert!(Framebuffer::new(8192, 1).is_ok());
    }
}
