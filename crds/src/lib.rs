//! API types for the `kubevirt.io/v1` kinds that ironvirt serves.
//!
//! The kinds themselves arrive with the CRD work; this crate already fixes the
//! API group and version every other component shares.
#![forbid(unsafe_code)]

/// The API group of the core kinds (VirtualMachine, VirtualMachineInstance, …).
pub const GROUP: &str = "kubevirt.io";
/// The served and stored version of [`GROUP`].
pub const VERSION: &str = "v1";
/// The API group of the aggregated subresource API.
pub const SUBRESOURCES_GROUP: &str = "subresources.kubevirt.io";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_version_match_kubevirt() {
        assert_eq!(format!("{GROUP}/{VERSION}"), "kubevirt.io/v1");
        assert!(SUBRESOURCES_GROUP.ends_with(GROUP));
    }
}
