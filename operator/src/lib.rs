//! ironvirt's controllers, the job KubeVirt's virt-controller does:
//! VirtualMachine → VMI by runStrategy, VMI placement onto nodes, and VMI
//! ReplicaSets. Decisions are pure functions (`vm`, `placement`, `vmirs`,
//! `validate`); the Kubernetes client is used only at the edges (`controller`).
#![forbid(unsafe_code)]

pub use ironvirt_crds::conditions;
pub mod certs;
pub mod context;
pub mod controller;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod placement;
pub mod validate;
pub mod vm;
pub mod vmirs;

/// Namespace of the handlers' per-node Leases (`ironvirt-handler-<node>`).
/// kube-apiserver creates it in every cluster.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
