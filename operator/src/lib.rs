//! ironvirt's controllers, the job KubeVirt's virt-controller does:
//! VirtualMachine → VMI by runStrategy, VMI placement onto nodes, and VMI
//! ReplicaSets. Decisions are pure functions (`vm`, `placement`, `vmirs`); the
//! Kubernetes client is used only at the edges (`controller`). Names shared
//! with the other components come from [`ironvirt_crds::wire`].
#![forbid(unsafe_code)]

pub use ironvirt_crds::conditions;
pub mod certs;
pub mod context;
pub mod controller;
pub mod error;
pub mod evacuation;
pub mod events;
pub mod infer;
pub mod instancetypes;
pub mod leader;
pub mod metrics;
pub mod migration;
pub mod placement;
pub mod pool;
pub mod replicas;
pub mod vm;
pub mod vmirs;
