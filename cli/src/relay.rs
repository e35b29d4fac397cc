//! A byte stream (a TCP connection, or stdin and stdout) relayed over a
//! subresource websocket (binary frames), as VNC and port-forward use it.
//! One buffer each way: a read waits until its frame is sent, a frame waits
//! until it is written. Pings keep the connection alive through proxies and
//! find a dead server.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::console::{DEAD_AFTER, PING_EVERY};

/// Bytes read from the local side at once.
const CHUNK: usize = 32 * 1024;
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How a relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The local side closed (or could not be written to).
    Local,
    /// The server closed the websocket with this code and reason.
    Closed { code: u16, reason: String },
    /// The connection broke: why.
    Broken(String),
}

impl Ended {
    /// Why the server ended the stream, for a message (None when the local
    /// side ended it).
    pub fn why(&self) -> Option<String> {
        match self {
            Ended::Local => None,
            Ended::Closed { reason, .. } if !reason.trim().is_empty() => Some(reason.clone()),
            Ended::Closed { .. } => Some("closed by the server".into()),
            Ended::Broken(why) => Some(why.clone()),
        }
    }
}

/// Relays `rd`/`wr` ⇄ `ws` until either side ends.
pub async fn relay<R, W>(mut rd: R, mut wr: W, ws: crate::client::Ws) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let mut buf = vec![0u8; CHUNK];
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let sent = |r: Result<
        Result<(), tokio_tungstenite::tungstenite::Error>,
        tokio::time::error::Elapsed,
    >| match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(Ended::Broken(e.to_string())),
        Err(_) => Some(Ended::Broken(
            "the server did not take data in time".to_owned(),
        )),
    };
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
                    return Ended::Local;
                }
                Ok(n) => if let Some(e) = sent(tokio::time::timeout(
                    SEND_TIMEOUT,
                    sink.send(Message::Binary(buf[..n].to_vec().into())),
                ).await) {
                    return e;
                },
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    last_heard = Instant::now();
                    if wr.write_all(&b).await.is_err() || wr.flush().await.is_err() {
                        return Ended::Local;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    last_heard = Instant::now();
                    if wr.write_all(t.as_bytes()).await.is_err() || wr.flush().await.is_err() {
                        return Ended::Local;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let _ = wr.shutdown().await;
                    return frame.map_or(
                        Ended::Closed { code: 1005, reason: String::new() },
                        |f| Ended::Closed { code: f.code.into(), reason: f.reason.to_string() },
                    );
                }
                Some(Ok(_)) => last_heard = Instant::now(),
                Some(Err(e)) => return Ended::Broken(e.to_string()),
                None => return Ended::Broken("the connection ended".into()),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > DEAD_AFTER {
                    return Ended::Broken(format!("no answer for {} s", DEAD_AFTER.as_secs()));
                }
                if let Some(e) = sent(tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Ping(Vec::new().into()))).await) {
                    return e;
                }
            }
        }
    }
}
