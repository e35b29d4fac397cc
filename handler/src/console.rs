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
//! QEMU serves the console on a UNIX socket ([`Consoles::socket_of`], in the
//! domain XML), which the hub reads and writes directly: libvirtd is not on
//! the data path. A domain whose serial port is a pty (made by an older
//! handler) is read through libvirt's console API instead, on a libvirt
//! connection of the hub's own: a blocking `virStreamRecv` occupies its
//! connection, and other calls on it would wait behind it.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use tokio::sync::{broadcast, mpsc, watch};
use virt::connect::Connect;
use virt::stream::Stream;

use crate::domxml;
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
    /// A handle on the console, to abort it from outside the reader.
    stream: Mutex<Option<ConsoleIo>>,
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
    /// Opens the console of `domain`: its socket when the domain has one,
    /// else libvirt's console stream on a new connection to `uri`; starts the
    /// reader and writer threads. Blocking.
    pub fn open(uri: &str, domain: &str) -> Result<Arc<Self>, LibvirtError> {
        let conn = Connect::open(Some(uri)).map_err(|e| LibvirtError::Unreachable {
            uri: uri.to_owned(),
            reason: e.message().to_owned(),
        })?;
        let socket = match serial_socket(&conn, domain) {
            Ok(s) => s,
            Err(e) => {
                close_quietly(conn);
                return Err(e);
            }
        };
        if let Some(path) = socket {
            close_quietly(conn);
            let io = UnixStream::connect(&path).map_err(|e| {
                LibvirtError::Call(format!("{SOCKET_NOT_READY} {}: {e}", path.display()))
            })?;
            return Self::start(domain, ConsoleIo::Socket(io), None);
        }
        let stream = match Self::attach(&conn, domain) {
            Ok(s) => s,
            Err(e) => {
                close_quietly(conn);
                return Err(e);
            }
        };
        Self::start(domain, ConsoleIo::Libvirt(stream), Some(conn))
    }

    /// Starts the reader and writer threads on `io`; `conn` is the libvirt
    /// connection behind it, closed when the reader is done.
    fn start(
        domain: &str,
        io: ConsoleIo,
        conn: Option<Connect>,
    ) -> Result<Arc<Self>, LibvirtError> {
        let (reader, writer_io) = match (io.try_clone(), io.try_clone()) {
            (Ok(r), Ok(w)) => (r, w),
            (Err(e), _) | (_, Err(e)) => {
                io.release();
                if let Some(c) = conn {
                    close_quietly(c);
                }
                return Err(LibvirtError::Call(format!("cannot share the console: {e}")));
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
            stream: Mutex::new(Some(io)),
            released,
        });
        let reader_hub = Arc::clone(&hub);
        let spawned = std::thread::Builder::new()
            .name(format!("console-r-{domain}"))
            .spawn(move || {
                let aborted = reader_hub.read_loop(&reader);
                if !aborted && reader.is_libvirt() {
                    std::thread::sleep(RELEASE_AFTER_END);
                }
                reader.release();
                if let Some(s) = reader_hub.take_stream() {
                    s.release();
                }
                if let Some(c) = conn {
                    close_quietly(c);
                }
                reader_hub.released.send_replace(true);
            });
        if let Err(e) = spawned {
            return Err(LibvirtError::Call(format!(
                "cannot start console reader: {e}"
            )));
        }
        let name = domain.to_owned();
        let spawned = std::thread::Builder::new()
            .name(format!("console-w-{domain}"))
            .spawn(move || {
                write_loop(&name, &writer_io, input_rx);
                writer_io.release();
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
    fn read_loop(&self, stream: &ConsoleIo) -> bool {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match stream.recv(&mut buf) {
                Ok(n) if n > 0 => {
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

    fn take_stream(&self) -> Option<ConsoleIo> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Aborts the console stream and waits (up to `timeout`) until the reader
    /// has closed it and its connection. Blocking.
    fn abort(&self, timeout: std::time::Duration) {
        if let Some(s) = self.take_stream() {
            s.abort(&self.domain);
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

fn write_loop(domain: &str, stream: &ConsoleIo, mut input: mpsc::Receiver<Vec<u8>>) {
    while let Some(data) = input.blocking_recv() {
        let mut rest = data.as_slice();
        while !rest.is_empty() {
            match stream.send(rest) {
                Ok(n) if n > 0 => {
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

/// Where a console's bytes go and come from.
enum ConsoleIo {
    /// QEMU's serial chardev socket.
    Socket(UnixStream),
    /// libvirt's console stream of a pty serial port.
    Libvirt(Stream),
}

impl ConsoleIo {
    fn try_clone(&self) -> Result<ConsoleIo, String> {
        match self {
            ConsoleIo::Socket(s) => s
                .try_clone()
                .map(ConsoleIo::Socket)
                .map_err(|e| e.to_string()),
            ConsoleIo::Libvirt(s) => Ok(ConsoleIo::Libvirt(s.clone())),
        }
    }

    fn is_libvirt(&self) -> bool {
        matches!(self, ConsoleIo::Libvirt(_))
    }

    /// Blocks until bytes arrive; 0 at the end.
    fn recv(&self, buf: &mut [u8]) -> Result<usize, String> {
        match self {
            ConsoleIo::Socket(s) => loop {
                match (&*s).read(buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    r => return r.map_err(|e| e.to_string()),
                }
            },
            ConsoleIo::Libvirt(s) => s
                .recv(buf)
                .map(|n| usize::try_from(n).unwrap_or(0).min(buf.len()))
                .map_err(|e| e.to_string()),
        }
    }

    /// Writes some of `data`; 0 when the console is gone.
    fn send(&self, data: &[u8]) -> Result<usize, String> {
        match self {
            ConsoleIo::Socket(s) => loop {
                match (&*s).write(data) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    r => return r.map_err(|e| e.to_string()),
                }
            },
            ConsoleIo::Libvirt(s) => s
                .send(data)
                .map(|n| usize::try_from(n).unwrap_or(data.len()).min(data.len()))
                .map_err(|e| e.to_string()),
        }
    }

    /// Ends the console for the reader and writer threads.
    fn abort(self, domain: &str) {
        match self {
            ConsoleIo::Socket(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            ConsoleIo::Libvirt(s) => {
                // abort consumes the stream (and frees it: contain a panicking free).
                let aborted =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || s.abort()));
                if let Ok(Err(e)) = aborted {
                    tracing::debug!(domain, error = %e, "aborting the console stream");
                }
            }
        }
    }

    /// Lets go of this handle (closing the socket once every handle is gone).
    fn release(self) {
        match self {
            ConsoleIo::Socket(s) => drop(s),
            ConsoleIo::Libvirt(s) => drop_quietly(s),
        }
    }
}

/// The serial console socket in `domain`'s live XML, if its serial port is one.
fn serial_socket(conn: &Connect, domain: &str) -> Result<Option<PathBuf>, LibvirtError> {
    let dom = conn
        .lookup_domain_by_name(domain)
        .map_err(map_err(domain))?;
    let xml = dom.xml_desc(0).map_err(map_err(domain));
    drop_quietly(dom);
    Ok(domxml::parse_live(&xml?).serial_socket)
}

/// The start of the error of a console socket that does not answer (yet).
const SOCKET_NOT_READY: &str = "connecting to the serial console socket";

fn remove_socket(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
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
    /// Where QEMU serves the consoles' sockets, one per VMI.
    dir: PathBuf,
    hubs: Mutex<HashMap<String, Arc<ConsoleHub>>>,
    /// Serialises opening: two openers of one console would each force the
    /// other's stream closed.
    opening: Mutex<()>,
}

impl Consoles {
    /// Consoles on `uri`, whose driver can do what `capabilities` says, with
    /// their sockets in `dir`.
    pub fn new(uri: &str, capabilities: Capabilities, dir: PathBuf) -> Self {
        Consoles {
            uri: uri.to_owned(),
            capabilities,
            dir,
            hubs: Mutex::default(),
            opening: Mutex::default(),
        }
    }

    /// The socket the serial console of VMI `uid` is to be served on, for its
    /// domain XML; None on a driver without consoles (the XML keeps a pty).
    pub fn socket_of(&self, uid: &str) -> Option<PathBuf> {
        self.capabilities
            .consoles
            .then(|| self.dir.join(format!("{uid}.sock")))
    }

    /// Makes the sockets' directory (only root may enter it: the socket is
    /// the console, unauthenticated) and removes a stale socket of `uid`.
    pub fn prepare_socket(&self, uid: &str) -> std::io::Result<Option<PathBuf>> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let Some(path) = self.socket_of(uid) else {
            return Ok(None);
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        remove_socket(&path)?;
        Ok(Some(path))
    }

    /// Removes the console socket of VMI `uid` (idempotent).
    pub fn remove_socket(&self, uid: &str) -> std::io::Result<()> {
        match self.socket_of(uid) {
            Some(path) => remove_socket(&path),
            None => Ok(()),
        }
    }

    /// The live hub of `domain`, if one is open.
    pub fn get(&self, domain: &str) -> Option<Arc<ConsoleHub>> {
        let hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        hubs.get(domain).filter(|h| !h.is_closed()).cloned()
    }

    /// The hub of `domain`, opening it if none is live. Blocking. A domain
    /// that is still starting has no pty or socket yet: that is retried for a
    /// few seconds.
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
                    if (m.contains("not yet assigned") || m.contains(SOCKET_NOT_READY))
                        && std::time::Instant::now() < deadline =>
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
