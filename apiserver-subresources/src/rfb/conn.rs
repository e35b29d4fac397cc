//! The connection: typed, buffered reads and flushed writes, with the
//! client's current phase for timeout and connection-closed errors.

use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::RfbError;
use super::messages::MAX_TEXT;

/// The connection: buffered reads, and what the client is doing right now.
pub(super) struct Conn<'p, S> {
    pub(super) io: BufReader<S>,
    pub(super) phase: &'p Mutex<&'static str>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<'_, S> {
    pub(super) fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    pub(super) fn error(&self, e: std::io::Error) -> RfbError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            RfbError::Closed {
                phase: *self.phase.lock().unwrap_or_else(|e| e.into_inner()),
            }
        } else {
            RfbError::Io(e)
        }
    }

    pub(super) async fn send(&mut self, bytes: &[u8]) -> Result<(), RfbError> {
        let io = self.io.get_mut();
        let result = match io.write_all(bytes).await {
            Ok(()) => io.flush().await,
            Err(e) => Err(e),
        };
        result.map_err(|e| self.error(e))
    }

    pub(super) async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), RfbError> {
        match self.io.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    pub(super) async fn u8(&mut self) -> Result<u8, RfbError> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b).await?;
        Ok(b[0])
    }

    pub(super) async fn u16(&mut self) -> Result<u16, RfbError> {
        let mut b = [0u8; 2];
        self.read_exact(&mut b).await?;
        Ok(u16::from_be_bytes(b))
    }

    pub(super) async fn u32(&mut self) -> Result<u32, RfbError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b).await?;
        Ok(u32::from_be_bytes(b))
    }

    pub(super) async fn i32(&mut self) -> Result<i32, RfbError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b).await?;
        Ok(i32::from_be_bytes(b))
    }

    /// Discards `n` bytes without buffering them.
    pub(super) async fn skip(&mut self, n: u64) -> Result<(), RfbError> {
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
    pub(super) async fn text(&mut self, len: u32) -> Result<String, RfbError> {
        let keep = usize::try_from(len).map_or(MAX_TEXT, |l| l.min(MAX_TEXT));
        let mut buf = vec![0u8; keep];
        self.read_exact(&mut buf).await?;
        self.skip(u64::from(len) - keep as u64).await?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Reads the reason string that follows a security failure.
    pub(super) async fn refused(&mut self) -> RfbError {
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
}
