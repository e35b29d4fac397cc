//! Merging the byte-stream frames that are already waiting into one frame.
//!
//! A serial console delivers a few bytes per read, and each hop that relays
//! a frame per read costs the next hop a message, a TLS record and, with
//! `TCP_NODELAY`, a segment. A relay that has just received a frame of a byte
//! stream (console, VNC) therefore takes the frames that are ready *now*
//! behind it and sends them as one: nothing waits for more to arrive, so no
//! latency is added. The merged frame is at most the cap (a single larger
//! frame passes unchanged), and anything that is not stream data (a close,
//! an error, the end of the stream) is never merged: it is handed back to be
//! handled after the merged frame is sent, in order.
//!
//! Only for streams whose frame boundaries carry no meaning. A port-forward's
//! UDP datagrams (one per frame) and protocols that prefix each frame with a
//! channel byte must be relayed frame by frame.

use axum::body::Bytes;

/// The largest frame [`coalesce`] builds from several frames.
pub const COALESCE_BYTES: usize = 64 * 1024;

/// How many ready items one [`coalesce`] call takes at most, skipped ones
/// included: bounds the work per frame whatever the peer sends.
pub const COALESCE_ITEMS: usize = 1024;

/// What an item that is ready now is to [`coalesce`].
#[derive(Debug, PartialEq, Eq)]
pub enum Ready<T> {
    /// Stream bytes: merged.
    Bytes(Bytes),
    /// Nothing to relay (a ping or a pong): passed over.
    Skip,
    /// Anything else (a close, an error, the end): ends the merged frame and
    /// is handed back untouched.
    Boundary(T),
}

/// An item [`coalesce`] took but did not merge; the caller handles it next.
#[derive(Debug, PartialEq, Eq)]
pub enum Held<T> {
    /// Stream bytes that would have made the frame larger than the cap: the
    /// start of the next frame.
    Bytes(Bytes),
    /// A [`Ready::Boundary`] item.
    Boundary(T),
}

/// `first`, followed by the stream bytes `ready` yields, as one frame of at
/// most `cap` bytes (or `first` alone, if it is larger). `ready` returns
/// `None` when nothing more is ready now; it is not called again after that,
/// after a boundary, or once the frame cannot grow.
///
/// Returns the frame and the item that stopped it, if one was taken and not
/// merged.
pub fn coalesce<T>(
    first: Bytes,
    cap: usize,
    mut ready: impl FnMut() -> Option<Ready<T>>,
) -> (Bytes, Option<Held<T>>) {
    let mut merged: Option<Vec<u8>> = None;
    let mut held = None;
    for _ in 0..COALESCE_ITEMS {
        let len = merged.as_ref().map_or(first.len(), Vec::len);
        if len >= cap {
            break;
        }
        match ready() {
            None => break,
            Some(Ready::Skip) => {}
            Some(Ready::Boundary(t)) => {
                held = Some(Held::Boundary(t));
                break;
            }
            Some(Ready::Bytes(b)) if b.is_empty() => {}
            Some(Ready::Bytes(b)) if len + b.len() > cap => {
                held = Some(Held::Bytes(b));
                break;
            }
            Some(Ready::Bytes(b)) => merged
                .get_or_insert_with(|| {
                    let mut v = Vec::with_capacity((len + b.len()).max(len * 4).min(cap));
                    v.extend_from_slice(&first);
                    v
                })
                .extend_from_slice(&b),
        }
    }
    (merged.map_or(first, Bytes::from), held)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    fn source(items: Vec<Ready<&'static str>>) -> impl FnMut() -> Option<Ready<&'static str>> {
        let mut q: VecDeque<_> = items.into();
        move || q.pop_front()
    }

    fn b(s: &str) -> Ready<&'static str> {
        Ready::Bytes(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn waiting_frames_are_merged_in_order() {
        let (frame, held) = coalesce(
            Bytes::from("ab"),
            64,
            source(vec![b("cd"), b("e"), b("fgh")]),
        );
        assert_eq!(&frame[..], b"abcdefgh");
        assert_eq!(held, None);
    }

    #[test]
    fn nothing_ready_leaves_the_frame_alone() {
        let first = Bytes::from("only");
        let (frame, held) = coalesce(first.clone(), 64, source(vec![]));
        assert_eq!(frame, first);
        assert_eq!(held, None);
    }

    #[test]
    fn stops_at_the_first_pending_and_asks_no_more() {
        let mut calls = 0;
        let mut items = vec![Some(b("x")), None, Some(b("late"))].into_iter();
        let (frame, held) = coalesce(Bytes::from("w"), 64, || {
            calls += 1;
            items.next().flatten()
        });
        assert_eq!(&frame[..], b"wx");
        assert_eq!(held, None);
        assert_eq!(
            calls, 2,
            "ready() was called after it said nothing was ready"
        );
    }

    #[test]
    fn pings_and_empty_frames_are_passed_over() {
        let (frame, held) = coalesce(
            Bytes::from("a"),
            64,
            source(vec![Ready::Skip, b(""), b("b"), Ready::Skip, b("c")]),
        );
        assert_eq!(&frame[..], b"abc");
        assert_eq!(held, None);
    }

    #[test]
    fn a_close_is_not_merged_and_comes_back_after_the_data() {
        let (frame, held) = coalesce(
            Bytes::from("a"),
            64,
            source(vec![b("b"), Ready::Boundary("close"), b("after")]),
        );
        assert_eq!(&frame[..], b"ab");
        assert_eq!(held, Some(Held::Boundary("close")));
    }

    #[test]
    fn the_cap_is_respected_and_the_overflow_starts_the_next_frame() {
        let (frame, held) = coalesce(
            Bytes::from("aaaa"),
            10,
            source(vec![b("bbbb"), b("ccc"), b("d")]),
        );
        assert_eq!(&frame[..], b"aaaabbbb");
        assert_eq!(held, Some(Held::Bytes(Bytes::from("ccc"))));
    }

    #[test]
    fn a_frame_that_fills_the_cap_exactly_stops_there() {
        let mut calls = 0;
        let mut items = vec![b("bbbbb"), b("c")].into_iter();
        let (frame, held) = coalesce(Bytes::from("aaaaa"), 10, || {
            calls += 1;
            items.next()
        });
        assert_eq!(&frame[..], b"aaaaabbbbb");
        assert_eq!(held, None);
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_first_frame_over_the_cap_passes_unchanged() {
        let big = Bytes::from(vec![b'x'; 100]);
        let (frame, held) = coalesce(big.clone(), 10, source(vec![b("y")]));
        assert_eq!(frame, big);
        assert_eq!(held, None);
    }

    #[test]
    fn the_default_cap_bounds_a_flood_of_small_frames() {
        let mut n = 0usize;
        let (frame, held) = coalesce(Bytes::from(vec![0u8; 100]), COALESCE_BYTES, || {
            n += 1;
            Some(Ready::<()>::Bytes(Bytes::from(vec![1u8; 100])))
        });
        assert!(frame.len() <= COALESCE_BYTES);
        assert!(frame.len() > COALESCE_BYTES - 100);
        assert_eq!(held, Some(Held::Bytes(Bytes::from(vec![1u8; 100]))));
        assert!(n <= COALESCE_ITEMS);
    }

    #[test]
    fn endless_pings_do_not_hold_the_frame_forever() {
        let mut n = 0usize;
        let (frame, held) = coalesce(Bytes::from("a"), COALESCE_BYTES, || {
            n += 1;
            Some(Ready::<()>::Skip)
        });
        assert_eq!(&frame[..], b"a");
        assert_eq!(held, None);
        assert_eq!(n, COALESCE_ITEMS);
    }
}
