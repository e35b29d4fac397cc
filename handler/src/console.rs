//! Serial consoles: one libvirt console stream per running domain, shared by
//! every client.
//!
//! A hub reads the guest's serial output from the moment the domain starts,
//! keeps the last [`RING_BYTES`] in a ring so a client that connects late sees
//! the boot messages, and fans live output out over a bounded broadcast
//! channel: a client that falls behind loses bytes, never grows memory. Input
//! goes through a bounded queue to a writer thread. One client writes at a
//! time; a new writer takes over from the previous one, as in KubeVirt.
//!
//! Each hub has a libvirt connection of its own: a blocking `virStreamRecv`
//! occupies its connection, and other calls on it would wait behind it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use tokio::sync::{broadcast, mpsc, watch};
use virt::connect::Connect;
use virt::stream::Stream;

use crate::libvirt::{self, Capabilities, LibvirtError, map_err};

/// Serial output kept for late clients.
pub const RING_BYTES: usize = 64 * 1024;
/// Chunks of live output a client may fall behind by before it loses some.
const BROADCAST_CHUNKS: usize = 256;
/// Input chunks queued for the guest before clients wait.
const INPUT_CHUNKS: usize = 64;
/// Largest chunk read from the console at once.
const READ_CHUNK: usize = 16 * 1024;

/// The last `cap` bytes written.
#[derive(Debug)]
pub struct Ring {
    buf: VecDeque<u8>,
    cap: usize,
}

impl Ring {
    pub fn new(cap: usize) -> Self {
        Ring {
            buf: VecDeque::with_capacity(cap.min(4096)),
            cap,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.cap {
            &data[data.len() - self.cap..]
        } else {
            data
        };
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }

    pub fn snapshot(&self) -> Vec<u8> {
        self.buf.iter().copied().collect()
    }
}

/// A domain's serial console, shared by its clients.
pub struct ConsoleHub {
    domain: String,
    ring: Mutex<Ring>,
    output: broadcast::Sender<Bytes>,
    input: mpsc::Sender<Vec<u8>>,
    writer: watch::Sender<u64>,
    closed: watch::Sender<bool>,
    /// A handle on the stream, to abort it from outside the reader.
    stream: Mutex<Option<Stream>>,
    /// True once the reader has let go of the stream and its connection.
    released: watch::Sender<bool>,
}

/// How long the reader waits after the console's end before it closes the
/// stream's connection. libvirt 9.0 deadlocks when a client connection with
/// an open console stream closes while the domain's character devices are
/// being freed (QEMU exiting): the wait lets libvirt finish stopping the
/// domain first. [`Consoles::close`] avoids the race before a destroy.
const RELEASE_AFTER_END: std::time::Duration = std::time::Duration::from_secs(2);

/// What a client gets when it attaches.
pub struct Attachment {
    /// Recent output, sent first.
    pub backlog: Vec<u8>,
    /// Live output after the backlog.
    pub output: broadcast::Receiver<Bytes>,
    /// Closes (true) when the console ends.
    pub closed: watch::Receiver<bool>,
}

impl ConsoleHub {
    /// Opens the console of `domain` on a new connection to `uri`, with reader
    /// and writer threads. Blocking.
    pub fn open(uri: &str, domain: &str) -> Result<Arc<Self>, LibvirtError> {
        let conn = Connect::open(Some(uri)).map_err(|e| LibvirtError::Unreachable {
            uri: uri.to_owned(),
            reason: e.message().to_owned(),
        })?;
        let stream = match Self::attach(&conn, domain) {
            Ok(s) => s,
            Err(e) => {
                close_quietly(conn);
                return Err(e);
            }
        };
        let (output, _) = broadcast::channel(BROADCAST_CHUNKS);
        let (input, input_rx) = mpsc::channel(INPUT_CHUNKS);
        let (writer, _) = watch::channel(0);
        let (closed, _) = watch::channel(false);
        let (released, _) = watch::channel(false);
        let hub = Arc::new(ConsoleHub {
            domain: domain.to_owned(),
            ring: Mutex::new(Ring::new(RING_BYTES)),
            output,
            input,
            writer,
            closed,
            stream: Mutex::new(Some(stream.clone())),
            released,
        });
        let reader_hub = Arc::clone(&hub);
        let reader = stream.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("console-r-{domain}"))
            .spawn(move || {
                let aborted = reader_hub.read_loop(&reader);
                if !aborted {
                    std::thread::sleep(RELEASE_AFTER_END);
                }
                drop_quietly(reader);
                if let Some(s) = reader_hub.take_stream() {
                    drop_quietly(s);
                }
                close_quietly(conn);
                reader_hub.released.send_replace(true);
            });
        if let Err(e) = spawned {
            return Err(LibvirtError::Call(format!(
                "cannot start console reader: {e}"
            )));
        }
        let writer_stream = stream;
        let name = domain.to_owned();
        let spawned = std::thread::Builder::new()
            .name(format!("console-w-{domain}"))
            .spawn(move || {
                write_loop(&name, &writer_stream, input_rx);
                drop_quietly(writer_stream);
            });
        if let Err(e) = spawned {
            return Err(LibvirtError::Call(format!(
                "cannot start console writer: {e}"
            )));
        }
        tracing::info!(domain, "serial console attached");
        Ok(hub)
    }

    fn attach(conn: &Connect, domain: &str) -> Result<Stream, LibvirtError> {
        let dom = conn
            .lookup_domain_by_name(domain)
            .map_err(map_err(domain))?;
        let stream = Stream::new(conn, 0).map_err(map_err(domain))?;
        if let Err(e) = libvirt::open_console(&dom, &stream) {
            drop_quietly(stream);
            return Err(map_err(domain)(e));
        }
        Ok(stream)
    }

    /// Reads until the console ends; true when it ended because
    /// [`ConsoleHub::abort`] took the stream away.
    fn read_loop(&self, stream: &Stream) -> bool {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match stream.recv(&mut buf) {
                Ok(n) if n > 0 => {
                    let n = usize::try_from(n).unwrap_or(0).min(buf.len());
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    // Under the ring's lock, so an attaching client sees each
                    // byte exactly once: in its backlog or live.
                    let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
                    ring.push(&chunk);
                    let _ = self.output.send(chunk);
                }
                Ok(_) => {
                    tracing::info!(domain = %self.domain, "serial console ended");
                    break;
                }
                Err(e) => {
                    tracing::info!(domain = %self.domain, error = %e, "serial console closed");
                    break;
                }
            }
        }
        self.closed.send_replace(true);
        self.stream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    fn take_stream(&self) -> Option<Stream> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Aborts the console stream and waits (up to `timeout`) until the reader
    /// has closed it and its connection. Blocking.
    fn abort(&self, timeout: std::time::Duration) {
        if let Some(s) = self.take_stream() {
            // abort consumes the stream (and frees it: contain a panicking free).
            let aborted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || s.abort()));
            if let Ok(Err(e)) = aborted {
                tracing::debug!(domain = %self.domain, error = %e, "aborting the console stream");
            }
        }
        let deadline = std::time::Instant::now() + timeout;
        while !*self.released.borrow() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Whether the console has ended (the domain stopped).
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Attaches a client.
    pub fn attach_client(&self) -> Attachment {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let output = self.output.subscribe();
        Attachment {
            backlog: ring.snapshot(),
            output,
            closed: self.closed.subscribe(),
        }
    }

    /// Makes the caller the console's writer; the previous writer sees its
    /// token go stale. Returns the caller's token.
    pub fn take_writer(&self) -> (u64, watch::Receiver<u64>) {
        let mut token = 0;
        self.writer.send_modify(|t| {
            *t += 1;
            token = *t;
        });
        (token, self.writer.subscribe())
    }

    /// Queues input for the guest; waits while the queue is full.
    pub async fn write(&self, data: Vec<u8>) -> bool {
        self.input.send(data).await.is_ok()
    }

    /// The recent output (for tests and diagnostics).
    pub fn backlog(&self) -> Vec<u8> {
        self.ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot()
    }
}

fn write_loop(domain: &str, stream: &Stream, mut input: mpsc::Receiver<Vec<u8>>) {
    while let Some(data) = input.blocking_recv() {
        let mut rest = data.as_slice();
        while !rest.is_empty() {
            match stream.send(rest) {
                Ok(n) if n > 0 => {
                    let n = usize::try_from(n).unwrap_or(rest.len()).min(rest.len());
                    rest = &rest[n..];
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::info!(domain, error = %e, "console input closed");
                    return;
                }
            }
        }
    }
}

/// Drops a libvirt object whose Drop may panic, containing the panic.
fn drop_quietly<T>(value: T) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(value)));
}

fn close_quietly(conn: Connect) {
    drop_quietly(conn);
}

/// The hubs of this handler's running domains, by domain name.
pub struct Consoles {
    uri: String,
    capabilities: Capabilities,
    hubs: Mutex<HashMap<String, Arc<ConsoleHub>>>,
    /// Serialises opening: two openers of one console would each force the
    /// other's stream closed.
    opening: Mutex<()>,
}

impl Consoles {
    /// Consoles on `uri`, whose driver can do what `capabilities` says.
    pub fn new(uri: &str, capabilities: Capabilities) -> Self {
        Consoles {
            uri: uri.to_owned(),
            capabilities,
            hubs: Mutex::default(),
            opening: Mutex::default(),
        }
    }

    /// The live hub of `domain`, if one is open.
    pub fn get(&self, domain: &str) -> Option<Arc<ConsoleHub>> {
        let hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        hubs.get(domain).filter(|h| !h.is_closed()).cloned()
    }

    /// The hub of `domain`, opening it if none is live. Blocking. A domain
    /// that is still starting has no pty yet: that is retried for a few seconds.
    pub fn ensure(&self, domain: &str) -> Result<Arc<ConsoleHub>, LibvirtError> {
        let _opening = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = self.get(domain) {
            return Ok(h);
        }
        if !self.capabilities.consoles {
            return Err(LibvirtError::Call(
                "libvirt's test driver has no serial consoles".into(),
            ));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let hub = loop {
            match ConsoleHub::open(&self.uri, domain) {
                Ok(h) => break h,
                Err(LibvirtError::Call(m))
                    if m.contains("not yet assigned") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        };
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        hubs.retain(|_, h| !h.is_closed());
        hubs.insert(domain.to_owned(), Arc::clone(&hub));
        Ok(hub)
    }

    /// Forgets the hub of a domain that is going away.
    pub fn forget(&self, domain: &str) {
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        hubs.remove(domain);
    }

    /// Closes the console of a domain about to be destroyed, and waits until
    /// its stream and connection are closed, so that libvirt does not free
    /// the domain's character devices while the stream closes (a libvirt
    /// 9.0 deadlock). Blocking.
    pub fn close(&self, domain: &str) {
        let hub = self
            .hubs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(domain);
        if let Some(hub) = hub {
            hub.abort(std::time::Duration::from_secs(5));
        }
    }

    /// How many hubs are open.
    pub fn len(&self) -> usize {
        let hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        hubs.values().filter(|h| !h.is_closed()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_bytes() {
        let mut r = Ring::new(8);
        r.push(b"hello");
        assert_eq!(r.snapshot(), b"hello");
        r.push(b" world");
        assert_eq!(r.snapshot(), b"lo world");
        r.push(b"0123456789abc");
        assert_eq!(r.snapshot(), b"56789abc");
    }
}
