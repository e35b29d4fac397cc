//! Websockets on the stream path: bounded buffers on both ends, sends with a
//! deadline, pings for idle sessions, and close frames that say why.
//!
//! A console or VNC session needs little buffer, and each open session holds
//! two websockets (user ↔ ironvirt-api ↔ handler). Writes queue up to
//! [`MAX_QUEUED`] bytes for a slow peer; a send that cannot finish within
//! [`SEND_TIMEOUT`] ends the session rather than grow memory.

use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use futures::{Sink, SinkExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Read and write buffer of one websocket.
pub const BUFFER: usize = 16 * 1024;
/// Bytes queued for a slow peer before writes fail.
pub const MAX_QUEUED: usize = 1024 * 1024;
/// Largest message and frame accepted.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// A write that takes longer than this ends the session.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Pings keep idle sessions alive through proxies.
pub const PING_EVERY: Duration = Duration::from_secs(30);

/// The server side of a stream (axum), with bounded buffers.
pub fn bounded(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.read_buffer_size(BUFFER)
        .write_buffer_size(BUFFER)
        .max_write_buffer_size(MAX_QUEUED)
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
}

/// The client side of a stream (tungstenite), with bounded buffers.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(BUFFER)
        .write_buffer_size(BUFFER)
        .max_write_buffer_size(MAX_QUEUED)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Sends `msg` within [`SEND_TIMEOUT`]; false when the peer is gone or too slow.
pub async fn send<S, M>(ws: &mut S, msg: M) -> bool
where
    S: Sink<M> + Unpin,
{
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, ws.send(msg)).await,
        Ok(Ok(()))
    )
}

/// A ping timer whose first tick is one period from now.
pub fn pings() -> tokio::time::Interval {
    let start = tokio::time::Instant::now() + PING_EVERY;
    tokio::time::interval_at(start, PING_EVERY)
}

/// An axum close frame with `code` and `reason`.
pub fn close_frame(code: u16, reason: &str) -> axum::extract::ws::Message {
    axum::extract::ws::Message::Close(Some(axum::extract::ws::CloseFrame {
        code,
        reason: reason.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_limits_match_the_server_side() {
        let c = client_config();
        assert_eq!(c.read_buffer_size, BUFFER);
        assert_eq!(c.write_buffer_size, BUFFER);
        assert_eq!(c.max_write_buffer_size, MAX_QUEUED);
        assert_eq!(c.max_message_size, Some(MAX_MESSAGE));
    }

    #[tokio::test]
    async fn pings_wait_a_period_first() {
        let mut p = pings();
        let first = tokio::time::timeout(Duration::from_millis(50), p.tick()).await;
        assert!(first.is_err(), "the first ping came at once");
    }

    #[tokio::test]
    async fn send_reports_a_closed_peer() {
        let (tx, rx) = futures::channel::mpsc::channel::<u8>(1);
        let mut tx = tx;
        assert!(send(&mut tx, 1).await);
        drop(rx);
        assert!(!send(&mut tx, 2).await);
    }
}
