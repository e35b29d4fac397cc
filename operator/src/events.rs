//! The Kubernetes Events the controllers record: a closed set of reasons,
//! spelled as KubeVirt's virt-controller spells them.

/// Why an Event is recorded. [`Reason::as_str`] is the Event's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A VM's VMI was created.
    SuccessfulCreate,
    /// A VM's VMI could not be created (invalid template, refused, name taken).
    FailedCreate,
    /// A VM's VMI failed; the next start backs off.
    FailedVmi,
    /// A VM's VMI is stopped by a stop request.
    StopRequested,
    /// A VM's VMI is stopped because the runStrategy is Halted.
    Stopping,
    /// No node qualifies for a VMI.
    FailedScheduling,
    /// A VMI's node stopped renewing its handler Lease.
    NodeUnresponsive,
    /// A VMI started migrating to another node.
    Migrating,
    /// A VMI migrated to another node.
    Migrated,
    /// A migration failed; the VMI keeps running on its source node.
    FailedMigration,
    /// A deleted migration is being aborted.
    MigrationAborting,
    /// A VMI leaves a cordoned or drained node.
    Evacuating,
}

impl Reason {
    /// Every reason, in a stable order.
    pub const ALL: [Reason; 12] = [
        Reason::SuccessfulCreate,
        Reason::FailedCreate,
        Reason::FailedVmi,
        Reason::StopRequested,
        Reason::Stopping,
        Reason::FailedScheduling,
        Reason::NodeUnresponsive,
        Reason::Migrating,
        Reason::Migrated,
        Reason::FailedMigration,
        Reason::MigrationAborting,
        Reason::Evacuating,
    ];

    /// The Event's `reason` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SuccessfulCreate => "SuccessfulCreate",
            Reason::FailedCreate => "FailedCreate",
            Reason::FailedVmi => "FailedVMI",
            Reason::StopRequested => "StopRequested",
            Reason::Stopping => "Stopping",
            Reason::FailedScheduling => "FailedScheduling",
            Reason::NodeUnresponsive => "NodeUnresponsive",
            Reason::Migrating => "Migrating",
            Reason::Migrated => "Migrated",
            Reason::FailedMigration => "FailedMigration",
            Reason::MigrationAborting => "MigrationAborting",
            Reason::Evacuating => "Evacuating",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Kubernetes Event to record, as a planner decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: Reason,
    pub message: String,
}

impl EventNote {
    /// A Normal event.
    pub fn normal(reason: Reason, message: impl Into<String>) -> Self {
        EventNote {
            warning: false,
            reason,
            message: message.into(),
        }
    }

    /// A Warning event.
    pub fn warning(reason: Reason, message: impl Into<String>) -> Self {
        EventNote {
            warning: true,
            reason,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_keep_their_wire_spelling() {
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "SuccessfulCreate",
                "FailedCreate",
                "FailedVMI",
                "StopRequested",
                "Stopping",
                "FailedScheduling",
                "NodeUnresponsive",
                "Migrating",
                "Migrated",
                "FailedMigration",
                "MigrationAborting",
                "Evacuating",
            ]
        );
    }
}
