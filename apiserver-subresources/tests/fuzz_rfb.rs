//! Parser fuzzing (issue #20): the RFB client fed by a hostile server.
//! Arbitrary bytes, and valid server scripts mutated (truncated, bytes
//! flipped, huge lengths and sizes spliced in), never panic, never hang,
//! end in a screenshot or an error, and never allocate much more than the
//! framebuffer budget (a 4 GiB length field must not become a 4 GiB buffer).
//! Deterministic seed; `IRONVIRT_FUZZ_CASES` sets the number of cases.
//!
//! One test in this binary: the allocation counter is process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ironvirt_apiserver_subresources::rfb::{RfbError, screenshot_within};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
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
            let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                - layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The framebuffer budget of the fuzzed client, in pixels.
const MAX_PIXELS: u64 = 64 * 64;
/// The most a case may allocate beyond what was live before it: the
/// framebuffer (RGB and drawn map, 4 bytes a pixel), the 64 KiB read buffer,
/// a PNG and the runtime, with room to spare.
const MAX_EXTRA: usize = 4 * 1024 * 1024;

fn config() -> Config {
    let cases = std::env::var("IRONVIRT_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2000);
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x5eed_0003),
        failure_persistence: None,
        ..Config::default()
    }
}

fn be16(v: u16) -> [u8; 2] {
    v.to_be_bytes()
}

fn rect(x: u16, y: u16, w: u16, h: u16, encoding: i32) -> Vec<u8> {
    [be16(x), be16(y), be16(w), be16(h)]
        .concat()
        .into_iter()
        .chain(encoding.to_be_bytes())
        .collect()
}

/// A whole valid session of a 4×3 desktop for `version` (3, 7 or 8): the
/// handshake, some chatter and updates that draw every pixel.
fn valid_script(version: u8) -> Vec<u8> {
    let mut s = format!("RFB 003.00{version}\n").into_bytes();
    match version {
        3 => s.extend_from_slice(&1u32.to_be_bytes()),
        7 => s.extend_from_slice(&[2, 2, 1]),
        _ => {
            s.extend_from_slice(&[2, 2, 1]);
            s.extend_from_slice(&0u32.to_be_bytes());
        }
    }
    // ServerInit.
    s.extend_from_slice(&[be16(4), be16(3)].concat());
    s.extend_from_slice(&[16, 16, 1, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0]);
    s.extend_from_slice(&4u32.to_be_bytes());
    s.extend_from_slice(b"fake");
    // Bell, cut text, colour map entries.
    s.push(2);
    s.extend_from_slice(&[3, 0, 0, 0]);
    s.extend_from_slice(&2u32.to_be_bytes());
    s.extend_from_slice(b"hi");
    s.extend_from_slice(&[1, 0, 0, 0, 0, 1]);
    s.extend_from_slice(&[0; 6]);
    // A resize to 4×3, a raw top half, a partial update, then the rest.
    s.extend_from_slice(&[0, 0, 0, 1]);
    s.extend_from_slice(&rect(0, 0, 4, 3, -223));
    s.extend_from_slice(&[0, 0, 0, 1]);
    s.extend_from_slice(&rect(0, 0, 4, 2, 0));
    s.extend_from_slice(&[7; 4 * 2 * 4]);
    s.extend_from_slice(&[0, 0, 0, 2]);
    s.extend_from_slice(&rect(0, 2, 2, 1, 0));
    s.extend_from_slice(&[9; 2 * 4]);
    s.extend_from_slice(&rect(2, 2, 2, 1, 1));
    s.extend_from_slice(&[be16(0), be16(0)].concat());
    s
}

/// Values that make lengths and sizes huge, zero or off by one.
const SPLICES: &[&[u8]] = &[
    &[0xff, 0xff, 0xff, 0xff],
    &[0x7f, 0xff, 0xff, 0xff],
    &[0x80, 0, 0, 0],
    &[0xff, 0xff],
    &[0x20, 0x01],
    &[0, 0],
    &[0, 0, 0, 0],
    &[0xff, 0xff, 0xff, 0x21],
];

fn hostile_server() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        prop::sample::select(vec![3u8, 7, 8]),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..4),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(version, mutations, cut, truncate)| {
            let mut s = valid_script(version);
            for (at, how, byte) in mutations {
                let i = at.index(s.len());
                match how {
                    0 => s[i] ^= byte | 1,
                    1 => s.insert(i, byte),
                    _ => {
                        let splice = SPLICES[usize::from(byte) % SPLICES.len()];
                        for (j, b) in splice.iter().enumerate() {
                            if let Some(slot) = s.get_mut(i + j) {
                                *slot = *b;
                            }
                        }
                    }
                }
            }
            if truncate {
                s.truncate(cut.index(s.len() + 1));
            }
            s
        });
    let prefixed = prop::collection::vec(any::<u8>(), 0..256).prop_map(|tail| {
        let mut s = b"RFB 003.008\n".to_vec();
        s.extend_from_slice(&tail);
        s
    });
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        prefixed,
        mutated,
    ]
}

/// Runs the client against a server that sends `script`, then closes its
/// sending side and drains whatever the client writes.
fn against(script: Vec<u8>) -> Result<(), RfbError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RfbError::Io)?;
    rt.block_on(async move {
        let (client, server) = tokio::io::duplex(16 * 1024);
        let (mut rx, mut tx) = tokio::io::split(server);
        let server = async move {
            // The client may stop reading early; a failed write is fine.
            let _ = tx.write_all(&script).await;
            let _ = tx.shutdown().await;
            let mut sink = [0u8; 4096];
            while matches!(rx.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let client = screenshot_within(client, Duration::from_secs(20), MAX_PIXELS);
        let (result, ()) = tokio::join!(client, server);
        result.map(|_| ())
    })
}

#[test]
fn a_hostile_server_gets_an_error_not_a_panic_hang_or_huge_buffer() {
    // The mutations start from sessions that work.
    for version in [3, 7, 8] {
        let result = against(valid_script(version));
        assert!(result.is_ok(), "3.{version}: {result:?}");
    }
    let start = LIVE.load(Ordering::Relaxed);
    let outcomes = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    let mut runner = TestRunner::new(config());
    let outcome = runner.run(&hostile_server(), |script| {
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let result = against(script);
        let extra = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        // The server closes after its script: waiting out the timeout would
        // mean the client hangs on a closed connection.
        prop_assert!(
            !matches!(result, Err(RfbError::Timeout { .. })),
            "{result:?}"
        );
        prop_assert!(extra <= MAX_EXTRA, "allocated {extra} bytes: {result:?}");
        // How far the cases got, printed with --nocapture.
        let kind = match &result {
            Ok(_) => "screenshot".to_owned(),
            Err(e) => format!("{e:?}")
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect(),
        };
        *outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += 1;
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    println!(
        "outcomes: {:?}",
        outcomes.lock().unwrap_or_else(|e| e.into_inner())
    );
    // Nothing a session allocated outlives it.
    let leaked = LIVE.load(Ordering::Relaxed).saturating_sub(start);
    assert!(
        leaked < 64 * 1024,
        "{leaked} bytes still allocated after the cases"
    );
}
