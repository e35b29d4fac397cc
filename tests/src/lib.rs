//! Helpers shared by ironvirt's integration tests. The test bed itself (control
//! plane, clients, namespaces, guest) comes from `ironvirt-testbed`.
#![forbid(unsafe_code)]

pub mod api;
pub mod browser;
pub mod cli;
pub mod density;
pub mod domain;
pub mod e2e;
pub mod footprint;
pub mod handler;
pub mod hostdisk;
pub mod kubectl;
pub mod migration;
pub mod nodes;
pub mod operator;
pub mod outage;
pub mod registry;

pub use ironvirt_testbed::TestBed;
