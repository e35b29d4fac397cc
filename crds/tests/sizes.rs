//! The operator caches every VM and VMI as a typed object (10,000 of each in
//! the scale benchmark), so the structs' inline size is memory per object. A
//! field that is usually unset and large is an `Option<Box<…>>`: 8 bytes when
//! unset instead of its whole size (docs/benchmarks.md, "Where the memory goes
//! at 10,000 VMs"). These bounds catch a new large inline field.

use std::mem::size_of;

use ironvirt_crds::vm::VirtualMachine;
use ironvirt_crds::vmi::{DomainSpec, VirtualMachineInstance, VirtualMachineInstanceStatus};

#[test]
fn cached_objects_stay_small_inline() {
    let sizes = [
        ("VirtualMachine", size_of::<VirtualMachine>(), 2048),
        (
            "VirtualMachineInstance",
            size_of::<VirtualMachineInstance>(),
            1664,
        ),
        ("DomainSpec", size_of::<DomainSpec>(), 768),
        (
            "VirtualMachineInstanceStatus",
            size_of::<VirtualMachineInstanceStatus>(),
            256,
        ),
    ];
    for (name, size, bound) in sizes {
        assert!(
            size <= bound,
            "{name} is {size} bytes inline, over its bound of {bound}: box a large, usually unset field"
        );
    }
}
