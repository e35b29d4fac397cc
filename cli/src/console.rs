//! `ironctl console VMI`: the VMI's serial console in this terminal, over the
//! `console` subresource websocket. Ctrl+] disconnects.

use std::io::Read;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::args::ConsoleArgs;
use crate::client::{Ctx, WsError};
use crate::error::{Error, Result};
use crate::status::{Kind, Subject, describe};
use crate::terminal::RawMode;

/// Ctrl+], the byte that ends the session (as in virtctl and telnet).
pub const ESCAPE: u8 = 0x1d;
/// How often the session pings the server (idle connections stay open
/// through proxies, and a dead one is noticed).
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// Silence after which the connection counts as lost.
pub const DEAD_AFTER: Duration = Duration::from_secs(60);
/// How long one websocket send may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunks of terminal input in flight (each at most 4 KiB).
const INPUT_QUEUE: usize = 8;

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The user typed Ctrl+].
    Escape,
    /// Standard input ended (not a terminal).
    InputClosed,
    /// The server closed the websocket, with its reason.
    ServerClosed(Option<String>),
    /// The connection broke.
    Lost(String),
    /// A signal asked us to stop.
    Signal(&'static str),
}

/// Splits terminal input at the escape byte: the bytes to send, and whether
/// the escape was typed.
pub fn split_at_escape(input: &[u8]) -> (&[u8], bool) {
    match input.iter().position(|b| *b == ESCAPE) {
        Some(i) => (&input[..i], true),
        None => (input, false),
    }
}

/// The result of a session as ironctl's exit: Ctrl+] and end of input are
/// success; anything else fails with its reason.
pub fn outcome(vmi: &str, end: End) -> Result<()> {
    match end {
        End::Escape | End::InputClosed => Ok(()),
        End::ServerClosed(Some(reason)) => Err(Error::Session(format!(
            "the console of {vmi} was closed by the server: {reason}"
        ))),
        End::ServerClosed(None) => Err(Error::Session(format!(
            "the console of {vmi} was closed by the server"
        ))),
        End::Lost(why) => Err(Error::Session(format!(
            "the connection to the console of {vmi} was lost: {why}"
        ))),
        End::Signal(sig) => Err(Error::Session(format!(
            "the console session was ended by {sig}"
        ))),
    }
}

/// Runs `ironctl console`.
pub async fn run(ctx: &Ctx, args: &ConsoleArgs) -> Result<()> {
    let name = args.vmi.as_str();
    let subject = Subject {
        kind: Kind::Vmi,
        name,
        namespace: &ctx.namespace,
    };
    let deadline = Instant::now() + args.timeout;
    crate::vmi::wait_running(ctx, name, args.timeout).await?;
    let path = ctx.subresource_path("virtualmachineinstances", name, "console");
    // The VMI may stop being (or not yet be) running between our look and
    // the request: within --timeout, try again.
    let ws = loop {
        match ctx.open_ws(&path).await {
            Ok(ws) => break ws,
            Err(WsError::Http(f)) if matches!(f.code, 409 | 503) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(WsError::Http(f)) => return Err(Error::Api(describe(&subject, &f))),
            Err(WsError::Other(m)) => return Err(Error::Session(m)),
        }
    };
    eprintln!("Successfully connected to {name} console. The escape sequence is ^]");
    let raw = RawMode::enable()?;
    let end = session(ws).await;
    drop(raw);
    let end = end?;
    if end == End::Escape {
        eprintln!();
    }
    outcome(name, end)
}

fn read_stdin(tx: mpsc::Sender<std::io::Result<Vec<u8>>>) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 4096];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

async fn send<S>(sink: &mut S, msg: Message) -> std::result::Result<(), String>
where
    S: futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the server did not take data for {} s",
            SEND_TIMEOUT.as_secs()
        )),
    }
}

/// Relays terminal ⇄ websocket until one of the ways out.
async fn session(ws: crate::client::Ws) -> Result<End> {
    let signal_err = |e: std::io::Error| Error::Local(format!("cannot watch for signals: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut hup = signal(SignalKind::hangup()).map_err(signal_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_err)?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel(INPUT_QUEUE);
    // A plain thread: a blocked read of stdin must not keep the runtime from
    // shutting down.
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || read_stdin(tx))
        .map_err(|e| Error::Local(format!("cannot read the terminal: {e}")))?;
    let mut stdout = tokio::io::stdout();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let write_err = |e: std::io::Error| Error::Local(format!("writing to the terminal: {e}"));
    let end = loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    last_heard = Instant::now();
                    stdout.write_all(&b).await.map_err(write_err)?;
                    stdout.flush().await.map_err(write_err)?;
                }
                Some(Ok(Message::Text(t))) => {
                    last_heard = Instant::now();
                    stdout.write_all(t.as_bytes()).await.map_err(write_err)?;
                    stdout.flush().await.map_err(write_err)?;
                }
                Some(Ok(Message::Close(frame))) => {
                    let reason = frame
                        .map(|f| f.reason.to_string())
                        .filter(|r| !r.trim().is_empty());
                    break End::ServerClosed(reason);
                }
                Some(Ok(_)) => last_heard = Instant::now(),
                Some(Err(e)) => break End::Lost(e.to_string()),
                None => break End::Lost("the connection ended".into()),
            },
            input = rx.recv() => match input {
                Some(Ok(bytes)) => {
                    let (data, escape) = split_at_escape(&bytes);
                    if !data.is_empty()
                        && let Err(e) = send(&mut sink, Message::Binary(data.to_vec().into())).await
                    {
                        break End::Lost(e);
                    }
                    if escape {
                        break End::Escape;
                    }
                }
                Some(Err(e)) => return Err(Error::Local(format!("reading the terminal: {e}"))),
                None => break End::InputClosed,
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > DEAD_AFTER {
                    break End::Lost(format!("no answer for {} s", DEAD_AFTER.as_secs()));
                }
                if let Err(e) = send(&mut sink, Message::Ping(Vec::new().into())).await {
                    break End::Lost(e);
                }
            }
            _ = term.recv() => break End::Signal("SIGTERM"),
            _ = hup.recv() => break End::Signal("SIGHUP"),
            _ = int.recv() => break End::Signal("SIGINT"),
        }
    };
    if matches!(end, End::Escape | End::InputClosed | End::Signal(_)) {
        let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escape_byte_ends_input() {
        assert_eq!(split_at_escape(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(split_at_escape(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(split_at_escape(b"\x1d"), (&b""[..], true));
        assert_eq!(split_at_escape(b""), (&b""[..], false));
    }

    #[test]
    fn exits_by_how_the_session_ended() {
        assert!(outcome("v", End::Escape).is_ok());
        assert!(outcome("v", End::InputClosed).is_ok());
        let e = outcome(
            "v",
            End::ServerClosed(Some("another client took over".into())),
        )
        .unwrap_err();
        assert_eq!(
            e.line(),
            "the console of v was closed by the server: another client took over"
        );
        let e = outcome("v", End::Lost("no answer for 60 s".into())).unwrap_err();
        assert_eq!(
            e.line(),
            "the connection to the console of v was lost: no answer for 60 s"
        );
        assert!(outcome("v", End::Signal("SIGTERM")).is_err());
    }
}
