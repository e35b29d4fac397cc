//! Admission warnings: KubeVirt fields ironvirt accepts but does not act on
//! (yet). The webhooks return them in the AdmissionReview's `warnings`, which
//! kubectl prints, so that a manifest is never silently half-honoured.
//!
//! Each warning is `<field path>: <message>`, one of the constants below.

use crate::domain::InterfaceState;
use crate::vmi::{DomainSpec, EvictionStrategy, VirtualMachineInstanceSpec};
use crate::{
    VirtualMachineInstancePresetSpec, VirtualMachineInstanceReplicaSetSpec, VirtualMachineSpec,
};

/// `evictionStrategy: LiveMigrate` on a VMI that cannot live-migrate.
pub const EVICTION_STRATEGY: &str = "LiveMigrate, but the VMI cannot live-migrate (it has a network interface, a hostDisk or a TPM): draining its node waits for it; LiveMigrateIfPossible lets a drain stop it instead";
/// `priorityClassName`
pub const PRIORITY_CLASS: &str =
    "has no effect: ironvirt places VMIs without priorities or preemption";
/// Preferred node affinity, pod affinity and pod anti-affinity.
pub const SOFT_AFFINITY: &str = "has no effect: ironvirt honours only required node affinity";
/// `subdomain`
pub const SUBDOMAIN: &str = "has no effect: ironvirt creates no DNS records for VMIs";
/// `dnsPolicy` and `dnsConfig`
pub const DNS: &str =
    "has no effect: the guest takes its DNS settings from the pod network (passt)";
/// `cpu.isolateEmulatorThread: true`
pub const ISOLATE_EMULATOR_THREAD: &str = "has no effect: ironvirt pins no CPUs";
/// `cpu.maxSockets`
pub const MAX_SOCKETS: &str = "has no effect: ironvirt has no CPU hotplug";
/// `memory.maxGuest`
pub const MAX_GUEST: &str =
    "has no effect: ironvirt has no memory hotplug; the guest has memory.guest";
/// `resources.overcommitGuestOverhead: true`
pub const OVERCOMMIT: &str = "has no effect: ironvirt reserves no guest overhead anyway";
/// `ioThreadsPolicy`, `ioThreads` and `disks[].dedicatedIOThread: true`
pub const IO_THREADS: &str = "has no effect: ironvirt does not configure I/O threads";
/// `devices.logSerialConsole: true`
pub const LOG_SERIAL_CONSOLE: &str = "has no effect: ironvirt keeps no serial console log";
/// `devices.blockMultiQueue: true` and `devices.networkInterfaceMultiqueue: true`
pub const MULTIQUEUE: &str = "has no effect: ironvirt does not configure virtio multi-queue";
/// `disks[].io`
pub const DISK_IO: &str = "has no effect: ironvirt leaves the I/O mode to QEMU";
/// `disks[].tag` and `interfaces[].tag`
pub const TAG: &str = "has no effect: ironvirt's config drive does not list tagged devices yet";
/// `disks[].shareable: true`
pub const SHAREABLE: &str = "has no effect: ironvirt does not mark disks shareable";
/// `disks[].changedBlockTracking: true`
pub const CHANGED_BLOCK_TRACKING: &str = "has no effect: ironvirt has no backups";
/// `interfaces[].dhcpOptions`
pub const DHCP_OPTIONS: &str =
    "has no effect: the pod network's DHCP server (passt) sends no extra options";
/// `interfaces[].acpiIndex`
pub const ACPI_INDEX: &str = "has no effect: ironvirt sets no ACPI index";
/// `interfaces[].state` down or absent
pub const LINK_STATE: &str = "has no effect: the interface's link is always up";
/// `firmware.bootloader.efi.persistent: true`
pub const EFI_PERSISTENT: &str =
    "EFI variables last as long as the VMI (across guest reboots), not across VM restarts yet";
/// `devices.tpm.persistent: true`
pub const TPM_PERSISTENT: &str =
    "the TPM's state lasts as long as the VMI (across guest reboots), not across VM restarts yet";
/// `features.hyperv.tlbflush.direct` and `.extended`
pub const TLBFLUSH_EXTRAS: &str =
    "has no effect: libvirt 9.0 cannot pass it on (tlbflush itself is on)";
/// The pod-network interface (masquerade, else the first bridge one, or
/// KubeVirt's default interface) without `ports`: the ports are
/// [`crate::wire::DEFAULT_FORWARDED_PORTS`].
pub const DEFAULT_PORTS: &str = "none declared: the VMI is reachable (at its address on the node, and by port-forward and ssh) at TCP ports 22, 80, 443, 3389, 8080 and 8443 only, where KubeVirt forwards every port; list the ports the guest serves in a masquerade interface's ports";
/// VM `updateVolumesStrategy`
pub const UPDATE_VOLUMES_STRATEGY: &str =
    "has no effect: template changes reach the VM's next VMI, when it restarts";

/// Every message, for the compatibility table and its tests.
pub const ALL: [&str; 24] = [
    EVICTION_STRATEGY,
    PRIORITY_CLASS,
    SOFT_AFFINITY,
    SUBDOMAIN,
    DNS,
    ISOLATE_EMULATOR_THREAD,
    MAX_SOCKETS,
    MAX_GUEST,
    OVERCOMMIT,
    IO_THREADS,
    LOG_SERIAL_CONSOLE,
    MULTIQUEUE,
    DISK_IO,
    TAG,
    SHAREABLE,
    CHANGED_BLOCK_TRACKING,
    DHCP_OPTIONS,
    ACPI_INDEX,
    LINK_STATE,
    EFI_PERSISTENT,
    TPM_PERSISTENT,
    TLBFLUSH_EXTRAS,
    UPDATE_VOLUMES_STRATEGY,
    DEFAULT_PORTS,
];

/// KubeVirt annotations that change what virt-launcher does, which ironvirt
/// (no launcher pod) accepts without effect: the annotation and why.
pub const ANNOTATIONS: [(&str, &str); 3] = [
    (
        "hooks.kubevirt.io/hookSidecars",
        "has no effect: ironvirt runs no hook sidecars (there is no launcher pod); the domain is built from the spec alone",
    ),
    (
        "kubevirt.io/ignitiondata",
        "has no effect: ironvirt does not pass Ignition data to the guest; use cloudInitNoCloud",
    ),
    (
        "kubevirt.io/libvirt-log-filters",
        "has no effect: ironvirt uses the node's libvirtd and its log settings",
    ),
];

/// The warnings for the annotations at `path` (`metadata.annotations`, or
/// `spec.template.metadata.annotations`).
pub fn annotations(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    path: &str,
) -> Vec<String> {
    let Some(set) = annotations else {
        return Vec::new();
    };
    ANNOTATIONS
        .iter()
        .filter(|(name, _)| set.contains_key(*name))
        .map(|(name, why)| format!("{path}[{name}]: {why}"))
        .collect()
}

/// [`annotations`] of a VM's or VMI ReplicaSet's VMI template.
pub fn template_annotations(
    template: &crate::vmi::VirtualMachineInstanceTemplateSpec,
) -> Vec<String> {
    annotations(
        template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref()),
        "spec.template.metadata.annotations",
    )
}

/// Collects `<path>.<name>: <message>` for each set field.
struct Warnings(Vec<String>);

impl Warnings {
    fn add(&mut self, set: bool, path: &str, name: &str, message: &str) {
        if set {
            self.0.push(format!("{path}.{name}: {message}"));
        }
    }
}

/// The warnings for a VMI spec at `path` (`spec`, or `spec.template.spec`).
pub fn vmi_spec(spec: &VirtualMachineInstanceSpec, path: &str) -> Vec<String> {
    let mut w = Warnings(Vec::new());
    w.add(
        spec.eviction_strategy == Some(EvictionStrategy::LiveMigrate)
            && crate::migration::live_migratable(spec).is_some(),
        path,
        "evictionStrategy",
        EVICTION_STRATEGY,
    );
    w.add(
        spec.priority_class_name
            .as_deref()
            .is_some_and(|p| !p.is_empty()),
        path,
        "priorityClassName",
        PRIORITY_CLASS,
    );
    if let Some(a) = &spec.affinity {
        let preferred = a.node_affinity.as_ref().is_some_and(|n| {
            n.preferred_during_scheduling_ignored_during_execution
                .is_some()
        });
        w.add(
            preferred,
            path,
            "affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution",
            SOFT_AFFINITY,
        );
        w.add(
            a.pod_affinity.is_some(),
            path,
            "affinity.podAffinity",
            SOFT_AFFINITY,
        );
        w.add(
            a.pod_anti_affinity.is_some(),
            path,
            "affinity.podAntiAffinity",
            SOFT_AFFINITY,
        );
    }
    w.add(
        spec.subdomain.as_deref().is_some_and(|s| !s.is_empty()),
        path,
        "subdomain",
        SUBDOMAIN,
    );
    w.add(spec.dns_policy.is_some(), path, "dnsPolicy", DNS);
    w.add(spec.dns_config.is_some(), path, "dnsConfig", DNS);
    let devices = spec.domain.devices.as_ref();
    let ifaces = devices
        .and_then(|d| d.interfaces.as_deref())
        .unwrap_or_default();
    if ifaces.is_empty() && spec.networks.as_deref().unwrap_or_default().is_empty() {
        w.add(
            devices.and_then(|d| d.autoattach_pod_interface) != Some(false),
            &format!("{path}.domain.devices"),
            "interfaces",
            DEFAULT_PORTS,
        );
    } else if let Some(i) = crate::wire::pod_interface(ifaces) {
        w.add(
            ifaces[i].ports.as_deref().unwrap_or_default().is_empty(),
            &format!("{path}.domain.devices.interfaces[{i}]"),
            "ports",
            DEFAULT_PORTS,
        );
    }
    let mut out = w.0;
    out.extend(domain(&spec.domain, &format!("{path}.domain")));
    out
}

/// The warnings for a domain at `dpath` (shared by VMIs and presets).
pub fn domain(d: &DomainSpec, dpath: &str) -> Vec<String> {
    let mut w = Warnings(Vec::new());
    let cpu = d.cpu.as_ref();
    w.add(
        cpu.is_some_and(|c| c.isolate_emulator_thread == Some(true)),
        dpath,
        "cpu.isolateEmulatorThread",
        ISOLATE_EMULATOR_THREAD,
    );
    w.add(
        cpu.is_some_and(|c| c.max_sockets.is_some()),
        dpath,
        "cpu.maxSockets",
        MAX_SOCKETS,
    );
    w.add(
        d.memory.as_ref().is_some_and(|m| m.max_guest.is_some()),
        dpath,
        "memory.maxGuest",
        MAX_GUEST,
    );
    w.add(
        d.resources
            .as_ref()
            .is_some_and(|r| r.overcommit_guest_overhead == Some(true)),
        dpath,
        "resources.overcommitGuestOverhead",
        OVERCOMMIT,
    );
    w.add(
        d.io_threads_policy.is_some(),
        dpath,
        "ioThreadsPolicy",
        IO_THREADS,
    );
    w.add(d.io_threads.is_some(), dpath, "ioThreads", IO_THREADS);
    w.add(
        d.firmware
            .as_ref()
            .and_then(|f| f.bootloader.as_ref())
            .and_then(|b| b.efi.as_ref())
            .is_some_and(|e| e.persistent == Some(true)),
        dpath,
        "firmware.bootloader.efi.persistent",
        EFI_PERSISTENT,
    );
    if let Some(t) = d
        .features
        .as_ref()
        .and_then(|f| f.hyperv.as_ref())
        .and_then(|h| h.tlbflush.as_ref())
    {
        let p = "features.hyperv.tlbflush";
        w.add(
            t.direct.is_some(),
            dpath,
            &format!("{p}.direct"),
            TLBFLUSH_EXTRAS,
        );
        w.add(
            t.extended.is_some(),
            dpath,
            &format!("{p}.extended"),
            TLBFLUSH_EXTRAS,
        );
    }
    if let Some(dev) = &d.devices {
        let on = |b: Option<bool>| b == Some(true);
        w.add(
            dev.tpm
                .as_ref()
                .is_some_and(|t| t.enabled != Some(false) && on(t.persistent)),
            dpath,
            "devices.tpm.persistent",
            TPM_PERSISTENT,
        );
        w.add(
            on(dev.log_serial_console),
            dpath,
            "devices.logSerialConsole",
            LOG_SERIAL_CONSOLE,
        );
        w.add(
            on(dev.block_multi_queue),
            dpath,
            "devices.blockMultiQueue",
            MULTIQUEUE,
        );
        w.add(
            on(dev.network_interface_multiqueue),
            dpath,
            "devices.networkInterfaceMultiqueue",
            MULTIQUEUE,
        );
        for (i, disk) in dev.disks.iter().flatten().enumerate() {
            let p = format!("{dpath}.devices.disks[{i}]");
            w.add(
                on(disk.dedicated_io_thread),
                &p,
                "dedicatedIOThread",
                IO_THREADS,
            );
            w.add(disk.io.is_some(), &p, "io", DISK_IO);
            w.add(disk.tag.is_some(), &p, "tag", TAG);
            w.add(on(disk.shareable), &p, "shareable", SHAREABLE);
            w.add(
                on(disk.changed_block_tracking),
                &p,
                "changedBlockTracking",
                CHANGED_BLOCK_TRACKING,
            );
        }
        for (i, iface) in dev.interfaces.iter().flatten().enumerate() {
            let p = format!("{dpath}.devices.interfaces[{i}]");
            w.add(
                iface.dhcp_options.is_some(),
                &p,
                "dhcpOptions",
                DHCP_OPTIONS,
            );
            w.add(iface.tag.is_some(), &p, "tag", TAG);
            w.add(iface.acpi_index.is_some(), &p, "acpiIndex", ACPI_INDEX);
            w.add(
                matches!(
                    iface.state,
                    Some(InterfaceState::Down | InterfaceState::Absent)
                ),
                &p,
                "state",
                LINK_STATE,
            );
        }
    }
    w.0
}

/// The warnings for a VirtualMachine spec (at `spec`).
pub fn vm_spec(spec: &VirtualMachineSpec) -> Vec<String> {
    let mut w = Warnings(Vec::new());
    w.add(
        spec.update_volumes_strategy.is_some(),
        "spec",
        "updateVolumesStrategy",
        UPDATE_VOLUMES_STRATEGY,
    );
    let mut out = w.0;
    out.extend(template_annotations(&spec.template));
    if let Some(t) = &spec.template.spec {
        out.extend(vmi_spec(t, "spec.template.spec"));
    }
    out
}

/// The warnings for a VMI ReplicaSet spec (at `spec`).
pub fn vmirs_spec(spec: &VirtualMachineInstanceReplicaSetSpec) -> Vec<String> {
    let mut out = template_annotations(&spec.template);
    if let Some(t) = &spec.template.spec {
        out.extend(vmi_spec(t, "spec.template.spec"));
    }
    out
}

/// The warnings for a preset's domain (at `spec.domain`).
pub fn preset_spec(spec: &VirtualMachineInstancePresetSpec) -> Vec<String> {
    spec.domain
        .as_ref()
        .map(|d| domain(d, "spec.domain"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(yaml: &str) -> VirtualMachineInstanceSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_plain_spec_has_no_warnings() {
        let s = spec(
            "domain: {memory: {guest: 1Gi}, devices: {tpm: {}, disks: [{name: a}], interfaces: [{name: n, masquerade: {}, ports: [{port: 22}]}]}}\nnetworks: [{name: n, pod: {}}]\nevictionStrategy: None\naffinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: []}}}",
        );
        assert_eq!(vmi_spec(&s, "spec"), Vec::<String>::new());
    }

    #[test]
    fn live_migrate_is_warned_only_where_it_cannot_work() {
        let movable = spec(
            "domain: {memory: {guest: 1Gi}, devices: {autoattachPodInterface: false}}\nevictionStrategy: LiveMigrate",
        );
        assert_eq!(vmi_spec(&movable, "spec"), Vec::<String>::new());
        let with_tpm = spec(
            "domain: {memory: {guest: 1Gi}, devices: {autoattachPodInterface: false, tpm: {}}}\nevictionStrategy: LiveMigrate",
        );
        assert_eq!(
            vmi_spec(&with_tpm, "spec"),
            [format!("spec.evictionStrategy: {EVICTION_STRATEGY}")]
        );
        let if_possible = spec(
            "domain: {memory: {guest: 1Gi}, devices: {autoattachPodInterface: false, tpm: {}}}\nevictionStrategy: LiveMigrateIfPossible",
        );
        assert_eq!(vmi_spec(&if_possible, "spec"), Vec::<String>::new());
    }

    #[test]
    fn every_warned_field_is_named_with_its_message() {
        let s = spec(
            r#"
evictionStrategy: LiveMigrate
priorityClassName: high
affinity:
  nodeAffinity: {preferredDuringSchedulingIgnoredDuringExecution: []}
  podAffinity: {}
  podAntiAffinity: {}
subdomain: sub
dnsPolicy: ClusterFirst
dnsConfig: {nameservers: [1.1.1.1]}
domain:
  cpu: {isolateEmulatorThread: true, maxSockets: 4}
  memory: {guest: 1Gi, maxGuest: 4Gi}
  resources: {overcommitGuestOverhead: true}
  ioThreadsPolicy: auto
  ioThreads: {supplementalPoolThreadCount: 2}
  firmware: {bootloader: {efi: {persistent: true}}}
  features: {hyperv: {tlbflush: {direct: {}, extended: {}}}}
  devices:
    tpm: {persistent: true}
    logSerialConsole: true
    blockMultiQueue: true
    networkInterfaceMultiqueue: true
    disks:
      - {name: a, dedicatedIOThread: true, io: native, tag: t, shareable: true, changedBlockTracking: true}
    interfaces:
      - {name: n, masquerade: {}, dhcpOptions: {bootFileName: f}, tag: t, acpiIndex: 3, state: down}
"#,
        );
        let got = vmi_spec(&s, "spec");
        let want = [
            ("spec.evictionStrategy", EVICTION_STRATEGY),
            ("spec.priorityClassName", PRIORITY_CLASS),
            (
                "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution",
                SOFT_AFFINITY,
            ),
            ("spec.affinity.podAffinity", SOFT_AFFINITY),
            ("spec.affinity.podAntiAffinity", SOFT_AFFINITY),
            ("spec.subdomain", SUBDOMAIN),
            ("spec.dnsPolicy", DNS),
            ("spec.dnsConfig", DNS),
            ("spec.domain.devices.interfaces[0].ports", DEFAULT_PORTS),
            (
                "spec.domain.cpu.isolateEmulatorThread",
                ISOLATE_EMULATOR_THREAD,
            ),
            ("spec.domain.cpu.maxSockets", MAX_SOCKETS),
            ("spec.domain.memory.maxGuest", MAX_GUEST),
            ("spec.domain.resources.overcommitGuestOverhead", OVERCOMMIT),
            ("spec.domain.ioThreadsPolicy", IO_THREADS),
            ("spec.domain.ioThreads", IO_THREADS),
            (
                "spec.domain.firmware.bootloader.efi.persistent",
                EFI_PERSISTENT,
            ),
            (
                "spec.domain.features.hyperv.tlbflush.direct",
                TLBFLUSH_EXTRAS,
            ),
            (
                "spec.domain.features.hyperv.tlbflush.extended",
                TLBFLUSH_EXTRAS,
            ),
            ("spec.domain.devices.tpm.persistent", TPM_PERSISTENT),
            ("spec.domain.devices.logSerialConsole", LOG_SERIAL_CONSOLE),
            ("spec.domain.devices.blockMultiQueue", MULTIQUEUE),
            ("spec.domain.devices.networkInterfaceMultiqueue", MULTIQUEUE),
            ("spec.domain.devices.disks[0].dedicatedIOThread", IO_THREADS),
            ("spec.domain.devices.disks[0].io", DISK_IO),
            ("spec.domain.devices.disks[0].tag", TAG),
            ("spec.domain.devices.disks[0].shareable", SHAREABLE),
            (
                "spec.domain.devices.disks[0].changedBlockTracking",
                CHANGED_BLOCK_TRACKING,
            ),
            (
                "spec.domain.devices.interfaces[0].dhcpOptions",
                DHCP_OPTIONS,
            ),
            ("spec.domain.devices.interfaces[0].tag", TAG),
            ("spec.domain.devices.interfaces[0].acpiIndex", ACPI_INDEX),
            ("spec.domain.devices.interfaces[0].state", LINK_STATE),
        ];
        let want: Vec<String> = want.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        assert_eq!(got, want);
        // Every message of ALL is produced by some field.
        for m in ALL.iter().filter(|m| **m != UPDATE_VOLUMES_STRATEGY) {
            assert!(got.iter().any(|g| g.ends_with(m)), "{m} never produced");
        }
    }

    #[test]
    fn the_pod_interface_without_ports_is_warned_about_the_default_ones() {
        let warned = |yaml: &str| vmi_spec(&spec(yaml), "spec");
        let on = |path: &str| vec![format!("{path}: {DEFAULT_PORTS}")];
        // KubeVirt's default interface.
        assert_eq!(warned("domain: {}"), on("spec.domain.devices.interfaces"));
        // A masquerade interface without ports, after a bridge one.
        assert_eq!(
            warned(
                "domain: {devices: {interfaces: [{name: b, bridge: {}}, {name: m, masquerade: {}}]}}\nnetworks: [{name: m, pod: {}}]"
            ),
            on("spec.domain.devices.interfaces[1].ports")
        );
        // The first bridge interface is on the pod network without a masquerade one.
        assert_eq!(
            warned(
                "domain: {devices: {interfaces: [{name: b, bridge: {}}]}}\nnetworks: [{name: b, pod: {}}]"
            ),
            on("spec.domain.devices.interfaces[0].ports")
        );
        // Declared ports, or no pod network: nothing.
        assert!(warned("domain: {devices: {interfaces: [{name: m, masquerade: {}, ports: [{port: 80}]}]}}\nnetworks: [{name: m, pod: {}}]").is_empty());
        assert!(warned("domain: {devices: {autoattachPodInterface: false}}").is_empty());
        // The message names exactly the ports the handler forwards.
        for p in crate::wire::DEFAULT_FORWARDED_PORTS {
            assert!(DEFAULT_PORTS.contains(&format!(" {p}")), "{p}");
        }
    }

    #[test]
    fn vm_vmirs_and_preset_warnings_use_their_paths() {
        let vm: VirtualMachineSpec = serde_yaml::from_str(
            "updateVolumesStrategy: Replacement\ntemplate: {spec: {domain: {devices: {autoattachPodInterface: false}}, subdomain: s}}",
        )
        .unwrap();
        assert_eq!(
            vm_spec(&vm),
            [
                format!("spec.updateVolumesStrategy: {UPDATE_VOLUMES_STRATEGY}"),
                format!("spec.template.spec.subdomain: {SUBDOMAIN}"),
            ]
        );
        let rs: VirtualMachineInstanceReplicaSetSpec = serde_yaml::from_str(
            "selector: {matchLabels: {a: b}}\ntemplate: {spec: {domain: {devices: {autoattachPodInterface: false}}, priorityClassName: p}}",
        )
        .unwrap();
        assert_eq!(
            vmirs_spec(&rs),
            [format!(
                "spec.template.spec.priorityClassName: {PRIORITY_CLASS}"
            )]
        );
        let preset: VirtualMachineInstancePresetSpec = serde_yaml::from_str(
            "selector: {matchLabels: {a: b}}\ndomain: {ioThreadsPolicy: shared}",
        )
        .unwrap();
        assert_eq!(
            preset_spec(&preset),
            [format!("spec.domain.ioThreadsPolicy: {IO_THREADS}")]
        );
    }

    #[test]
    fn launcher_annotations_are_warned_where_they_are() {
        let hook = ANNOTATIONS[0].1;
        let vm: VirtualMachineSpec = serde_yaml::from_str(
            "template:\n  metadata: {annotations: {hooks.kubevirt.io/hookSidecars: '[]', other: x}}\n  spec: {domain: {devices: {autoattachPodInterface: false}}}",
        )
        .unwrap();
        assert_eq!(
            vm_spec(&vm),
            [format!(
                "spec.template.metadata.annotations[hooks.kubevirt.io/hookSidecars]: {hook}"
            )]
        );
        let mut set = std::collections::BTreeMap::new();
        set.insert("kubevirt.io/ignitiondata".to_owned(), "{}".to_owned());
        let w = annotations(Some(&set), "metadata.annotations");
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("metadata.annotations[kubevirt.io/ignitiondata]: has no effect"));
        assert!(annotations(None, "metadata.annotations").is_empty());
    }
}
