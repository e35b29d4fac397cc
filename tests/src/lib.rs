//! Shared helpers for the integration tests live in `ironvirt-testbed`; this crate only holds tests.
#![forbid(unsafe_code)]
