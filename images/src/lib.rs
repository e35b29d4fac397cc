//! OCI images as ironvirt reads them, with no libvirt in sight: image
//! references ([`reference`]), the node's registry configuration — mirrors,
//! plain HTTP, custom CAs ([`registries`]) — a client per endpoint
//! ([`client_for`]), and the labels of an image's config ([`config_labels`]).
//!
//! The handler pulls containerDisks with these; the operator reads the
//! `instancetype.kubevirt.io/default-*` labels of a containerDisk image to
//! infer a VM's instancetype and preference.
#![forbid(unsafe_code)]

pub mod client;
pub mod labels;
pub mod reference;
pub mod registries;

pub use client::{CaError, client_for, reference_for, with_causes};
pub use labels::{LabelsError, config_labels, labels_of_config};
/// Registry credentials, as [`config_labels`] takes them.
pub use oci_client::secrets::RegistryAuth;
pub use reference::{ImageRef, PullPolicy};
pub use registries::{Endpoint, HostConfig, Registries};
