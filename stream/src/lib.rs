//! The stream plumbing that ironvirt-api and the handler share.
//!
//! - [`tls`]: PEM loading, server configs, and a peer certificate's common name.
//! - [`serve`]: the one mTLS accept loop: handshake under a deadline, the
//!   client certificate turned into a request extension (or the connection
//!   refused), HTTP/1.1 and HTTP/2 with upgrades, a header-read timeout and a
//!   connection cap.
//! - [`ws`]: websockets with bounded buffers, sends with a deadline, pings and
//!   close frames with a reason.
//! - [`coalesce`]: the frames of a byte stream that are already waiting,
//!   merged into one (bounded, never waiting for more).
#![forbid(unsafe_code)]

pub mod coalesce;
pub mod serve;
pub mod tls;
pub mod ws;

pub use serve::{ServeOptions, serve};
pub use tls::{TlsError, common_name};
