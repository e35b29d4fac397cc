//! ironvirt's test bed, driven from Rust: a real Kubernetes control plane
//! (etcd, kube-apiserver, kube-controller-manager) on 127.0.0.1 with a generated
//! PKI, a real libvirt/QEMU node, and the test guest.
//!
//! `make run` and `make test` start it through the `ironvirt-testbed` binary;
//! tests reach it with [`TestBed::shared`].
#![forbid(unsafe_code)]

pub mod controlplane;
pub mod error;
pub mod etcd;
pub mod forward;
pub mod guest;
pub mod handlers;
pub mod harness;
pub mod kubelet;
pub mod layout;
pub mod libvirt;
pub mod nodes;
pub mod nodetls;
pub mod pki;
pub mod process;

pub use error::{Error, Result};
pub use guest::Guest;
pub use harness::TestBed;
pub use layout::{ClusterInfo, Layout};
