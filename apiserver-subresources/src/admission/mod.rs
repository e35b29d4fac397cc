//! ironvirt's admission webhooks: validation of VMIs, VMs, VMI ReplicaSets,
//! presets, instancetypes and preferences, and VMI defaulting (including
//! presets).
//!
//! - **Validating** (`/webhooks/validate/…`): a VMI on create is checked in
//!   full ([`ironvirt_crds::validate::vmi_spec`]: disks ↔ volumes, interfaces ↔
//!   networks, unique names and boot orders, memory and CPU, unsupported
//!   KubeVirt fields); on update its spec is immutable except for the
//!   privileged users (ironvirt's own service accounts). VMs, VMI ReplicaSets
//!   and presets are checked on create and whenever their spec changes, and
//!   so are the four `instancetype.kubevirt.io` kinds
//!   ([`ironvirt_crds::validate::instancetype`]: KubeVirt's checks on memory
//!   overcommit and CPU spread, quantities, buses, models and names).
//!   The volumes are checked against the cluster's
//!   [`VolumePolicy`](ironvirt_crds::validate::VolumePolicy) (`--host-disk-root`,
//!   `--max-volume-size`, `--max-vmi-volume-size`) for the object's namespace:
//!   hostDisk off, or confined to `<root>/<namespace>/` without links or
//!   device nodes, and capacity limits (`volumes.rs`).
//!   Rejections are a Status with code 422, reason Invalid and one cause per
//!   problem (at most 10), as Kubernetes and KubeVirt report them.
//! - **Mutating** (`/webhooks/mutate/virtualmachineinstances`, VMI create):
//!   matching presets, then defaults (machine type, firmware UUID, disk buses,
//!   memory, the pod network), then the finalizer, as one JSONPatch.
//! - **Migrations** (`migration.rs`): a VirtualMachineInstanceMigration gets
//!   the label `kubevirt.io/vmi-name` on create (mutating); it is admitted
//!   only for a running VMI that is live-migratable and has no migration in
//!   flight, read from the cluster (validating, failing closed when the
//!   cluster cannot be read); its spec never changes.
//!
//! - **Owner guard** (`owners.rs`): kube-controller-manager's garbage
//!   collector may not delete a VMI or VM whose owner (VM, VMI ReplicaSet,
//!   pool) is there with the same uid and not being deleted (its own lookup
//!   can wrongly answer "not found" after a control-plane outage).
//!
//! [`router`] serves them; [`webhook_configurations`] builds the
//! `ValidatingWebhookConfiguration` and `MutatingWebhookConfiguration` that
//! register them with kube-apiserver.

mod config;
mod http;
mod migration;
mod mutating;
mod owners;
mod presets;
mod review;
mod state;
mod uuid;
mod validating;
mod volumes;

pub use config::{
    MUTATOR_NAME, VALIDATOR_NAME, WebhookClient, WebhookEndpoint, webhook_configurations,
};
pub use http::{
    GUARD_OWNERS_PATH, MUTATE_MIGRATION_PATH, MUTATE_VMI_PATH, VALIDATE_CLUSTER_INSTANCETYPE_PATH,
    VALIDATE_CLUSTER_PREFERENCE_PATH, VALIDATE_INSTANCETYPE_PATH, VALIDATE_MIGRATION_PATH,
    VALIDATE_POOL_PATH, VALIDATE_PREFERENCE_PATH, VALIDATE_PRESET_PATH, VALIDATE_VM_PATH,
    VALIDATE_VMI_PATH, VALIDATE_VMIRS_PATH, router,
};
pub use mutating::{DEFAULT_MACHINE_TYPE, FINALIZER, Identity, Mutated, mutate_vmi};
pub use owners::GARBAGE_COLLECTOR;
pub use presets::{
    CONFLICT_ANNOTATION, EXCLUDE_ANNOTATION, MatchedPreset, PRESET_ANNOTATION_PREFIX,
    matching_presets,
};
pub use state::AdmissionState;
pub use uuid::firmware_uuid;
