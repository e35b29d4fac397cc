//! ironvirt-api: the aggregated API server for `subresources.kubevirt.io/v1`
//! (console, VNC, screenshot, VM and VMI power operations) and ironvirt's
//! admission webhooks. Stateless: any number of replicas may serve.
#![forbid(unsafe_code)]

pub mod admission;
pub mod app;
pub mod auth;
pub mod limits;
pub mod metrics;
pub mod rfb;
pub mod server;
pub mod vmops;
