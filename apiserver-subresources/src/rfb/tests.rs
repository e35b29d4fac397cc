//! The client against a scripted fake server over an in-memory stream.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

use super::client::{PHASE_MESSAGE, PHASE_SECURITY, PHASE_WAITING};
use super::messages::{
    ENCODING_COPY_RECT, ENCODING_DESKTOP_SIZE, ENCODING_RAW, MSG_BELL, MSG_FRAMEBUFFER_UPDATE,
    MSG_SERVER_CUT_TEXT, MSG_SET_COLOUR_MAP_ENTRIES, SET_PIXEL_FORMAT, Version, negotiate_version,
};
use super::{RfbError, Screenshot, screenshot_within};

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
    run_within(timeout, super::DEFAULT_MAX_PIXELS, script).await
}

/// [`run`] with a pixel budget of `max_pixels`.
async fn run_within<F, Fut>(
    timeout: Duration,
    max_pixels: u64,
    script: F,
) -> Result<Screenshot, RfbError>
where
    F: FnOnce(Fake) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (client, server) = duplex(64 * 1024);
    let server = tokio::spawn(script(Fake { io: server }));
    let result = screenshot_within(client, timeout, max_pixels).await;
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
async fn a_framebuffer_over_the_pixel_budget_is_refused_before_any_update() {
    // 4096x2160 against the default budget: refused after ServerInit, before
    // the client asks for (or allocates) a single pixel.
    let err = run(TIMEOUT, |mut s| async move {
        s.send(b"RFB 003.008\n").await;
        s.expect(b"RFB 003.008\n").await;
        s.send(&[1, 1]).await;
        s.expect(&[1]).await;
        s.send(&0u32.to_be_bytes()).await;
        s.expect(&[1]).await;
        s.server_init(4096, 2160).await;
        // The client hangs up instead of sending its setup.
        let mut rest = Vec::new();
        s.io.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the client sent {rest:?}");
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            RfbError::OverBudget {
                width: 4096,
                height: 2160,
                max_pixels: super::DEFAULT_MAX_PIXELS
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the framebuffer is 4096x2160 (8847360 pixels), more than the 4194304 pixels a screenshot may have"
    );
    // Exactly at the budget is fine.
    let shot = run_within(TIMEOUT, 12, |mut s| async move {
        s.handshake_38(4, 3).await;
        s.send(&update(&[raw(0, 0, 4, 3)])).await;
    })
    .await
    .unwrap();
    assert_eq!((shot.width, shot.height), (4, 3));
}

#[tokio::test]
async fn a_resize_over_the_pixel_budget_is_refused() {
    let err = run_within(TIMEOUT, 12, |mut s| async move {
        s.handshake_38(4, 3).await;
        s.send(&update(&[rect_header(0, 0, 4, 4, ENCODING_DESKTOP_SIZE)]))
            .await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            RfbError::OverBudget {
                width: 4,
                height: 4,
                max_pixels: 12
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
