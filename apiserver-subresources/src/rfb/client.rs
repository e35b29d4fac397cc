//! The client's side of the exchange: version and security handshake,
//! ClientInit/ServerInit, then framebuffer updates until every pixel has been
//! drawn.

use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};

use super::conn::Conn;
use super::framebuffer::Framebuffer;
use super::messages::{
    MSG_BELL, MSG_FRAMEBUFFER_UPDATE, MSG_SERVER_CUT_TEXT, MSG_SET_COLOUR_MAP_ENTRIES,
    SECURITY_NONE, SET_ENCODINGS, SET_PIXEL_FORMAT, Version, describe_security_types,
    full_update_request, negotiate_version,
};
use super::{RfbError, Screenshot};

// What the client was doing, for timeout and connection-closed errors.
pub(super) const PHASE_VERSION: &str = "while waiting for the protocol version";
pub(super) const PHASE_SECURITY: &str = "during the security handshake";
pub(super) const PHASE_SECURITY_RESULT: &str = "while waiting for the security result";
pub(super) const PHASE_SERVER_INIT: &str = "while waiting for the ServerInit message";
pub(super) const PHASE_WAITING: &str = "while waiting for a framebuffer update";
pub(super) const PHASE_MESSAGE: &str = "in the middle of a server message";
pub(super) const PHASE_PNG: &str = "while encoding the PNG";

pub(super) async fn capture<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    phase: &Mutex<&'static str>,
    max_pixels: u64,
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
    let mut fb = Framebuffer::new(width, height, max_pixels)?;

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
