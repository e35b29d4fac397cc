//! Parser fuzzing (issue #20): websocket frames from a hostile peer, as the
//! relays read them (tungstenite with [`ironvirt_stream::ws::client_config`],
//! the limits `ws::bounded` sets on the axum side too). Arbitrary bytes and
//! valid frame sequences mutated (truncated, bytes flipped, huge lengths)
//! never panic or hang, end in messages or an error, and never allocate much
//! beyond [`MAX_MESSAGE`]: a frame announcing 4 GiB or 2^63 bytes is an
//! error, not a buffer. Deterministic seed; `IRONVIRT_FUZZ_CASES` sets the
//! number of cases.
//!
//! One test in this binary: the allocation counter is process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use ironvirt_stream::ws::{MAX_MESSAGE, client_config};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most a case may allocate beyond what was live before it: a message
/// of [`MAX_MESSAGE`] being assembled plus its last frame, the read and
/// write buffers and the runtime.
const MAX_EXTRA: usize = 3 * MAX_MESSAGE + 1024 * 1024;

fn config() -> Config {
    let cases = std::env::var("IRONVIRT_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2000);
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x5eed_0004),
        failure_persistence: None,
        ..Config::default()
    }
}

/// One frame: FIN flag, opcode, payload; masked when sent by a client.
fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![u8::from(fin) << 7 | opcode];
    let mask_bit = u8::from(masked) << 7;
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x37, 0xfa, 0x21, 0x3d];
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A valid sequence of what the relays see: binary frames with a channel
/// byte (plain.kubevirt.io / port-forward), text, a ping, a fragmented
/// message, then a close with a reason.
fn valid_frames(masked: bool) -> Vec<u8> {
    let mut s = frame(true, 2, b"\x00console output", masked);
    s.extend(frame(true, 1, b"hello", masked));
    s.extend(frame(true, 9, b"ping", masked));
    s.extend(frame(false, 2, b"\x01first half ", masked));
    s.extend(frame(true, 0, b"second half", masked));
    s.extend(frame(true, 2, &[0u8; 300], masked));
    s.extend(frame(true, 8, b"\x03\xe8bye", masked));
    s
}

/// 64-bit and 16-bit lengths that are huge, or zero.
const LENGTHS: &[u64] = &[
    u64::MAX,
    1 << 63,
    (1 << 63) - 1,
    1 << 32,
    (1 << 32) - 1,
    1 << 21,
];

fn hostile_peer() -> impl Strategy<Value = (bool, Vec<u8>)> {
    let mutated = (
        any::<bool>(),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..4),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(server, mutations, cut, truncate)| {
            // The server role reads masked frames, as a client sends them.
            let mut s = valid_frames(server);
            for (at, how, byte) in mutations {
                if s.is_empty() {
                    break;
                }
                let i = at.index(s.len());
                match how {
                    0 => s[i] ^= byte | 1,
                    1 => s.insert(i, byte),
                    _ => s.truncate(i),
                }
            }
            if truncate {
                s.truncate(cut.index(s.len() + 1));
            }
            (server, s)
        });
    let huge = (
        any::<bool>(),
        prop::sample::select(LENGTHS.to_vec()),
        prop::sample::select(vec![0u8, 1, 2, 9]),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(server, len, opcode, tail)| {
            let mut s = vec![0x80 | opcode, u8::from(server) << 7 | 127];
            s.extend_from_slice(&len.to_be_bytes());
            if server {
                s.extend_from_slice(&[1, 2, 3, 4]);
            }
            s.extend_from_slice(&tail);
            (server, s)
        });
    prop_oneof![
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..512)),
        mutated,
        huge,
    ]
}

/// Reads every message a peer sending `bytes` produces; the peer then closes
/// its sending side and drains what is written back (pongs, close replies).
/// The number of messages read, or the first error.
fn read_all(server: bool, bytes: Vec<u8>) -> Result<usize, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let (ours, theirs) = tokio::io::duplex(16 * 1024);
        let (mut rx, mut tx) = tokio::io::split(theirs);
        let peer = async move {
            let _ = tx.write_all(&bytes).await;
            let _ = tx.shutdown().await;
            let mut sink = [0u8; 4096];
            while matches!(rx.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let role = if server { Role::Server } else { Role::Client };
        let reader = async move {
            let mut ws = WebSocketStream::from_raw_socket(ours, role, Some(client_config())).await;
            let mut messages = 0;
            while let Some(m) = ws.next().await {
                m.map_err(|e| e.to_string())?;
                messages += 1;
            }
            Ok(messages)
        };
        let reader = tokio::time::timeout(Duration::from_secs(20), reader);
        let (result, ()) = tokio::join!(reader, peer);
        result.map_err(|_| "timed out on a closed connection".to_owned())?
    })
}

#[test]
fn a_hostile_peer_gets_an_error_not_a_panic_hang_or_huge_buffer() {
    // The mutations start from frames that read.
    for server in [false, true] {
        assert_eq!(
            read_all(server, valid_frames(server)),
            Ok(6),
            "server {server}"
        );
    }
    // A message over the limit in fragments, each frame under it.
    let half = vec![0u8; MAX_MESSAGE / 2 + 1];
    let mut big = frame(false, 2, &half, false);
    big.extend(frame(false, 0, &half, false));
    big.extend(frame(true, 0, &half, false));
    assert!(read_all(false, big).is_err());

    let mut runner = TestRunner::new(config());
    let outcome = runner.run(&hostile_peer(), |(server, bytes)| {
        let announces_huge = bytes.len() >= 10
            && bytes[1] & 0x7f == 127
            && u64::from_be_bytes(bytes[2..10].try_into().unwrap_or_default()) > MAX_MESSAGE as u64;
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let result = read_all(server, bytes);
        let extra = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        prop_assert!(
            result.as_ref().is_ok() || result.as_ref().is_err_and(|e| !e.contains("timed out")),
            "{result:?}"
        );
        if announces_huge {
            prop_assert!(result.is_err(), "a huge first frame was read: {result:?}");
        }
        prop_assert!(extra <= MAX_EXTRA, "allocated {extra} bytes: {result:?}");
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
