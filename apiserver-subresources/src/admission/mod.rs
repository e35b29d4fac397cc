//! ironvirt's admission webhooks: validation of VMIs, VMs, VMI ReplicaSets and
//! presets, and VMI defaulting (including presets).
