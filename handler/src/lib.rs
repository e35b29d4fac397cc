//! ironvirt-handler: the node agent. It turns the VMIs placed on its node into
//! libvirt domains, reports their status, and serves console and VNC streams.
//!
//! Only `libvirt` may use `unsafe`: it registers libvirt's lifecycle events,
//! which the `virt` crate does not wrap.
#![deny(unsafe_code)]

pub mod app;
pub mod console;
pub mod context;
pub mod controller;
pub mod create_plan;
pub mod domxml;
pub mod error;
pub mod events;
pub mod guestnet;
pub mod images;
pub mod libvirt;
pub mod migrate;
pub mod migration;
pub mod model;
pub mod node;
pub mod portforward;
pub mod streams;
pub mod volumes;
