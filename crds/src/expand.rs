//! Expanding a VM's instancetype and preference into the VMI it runs (pure).
//!
//! The instancetype owns the vCPUs and memory: a template that sets them is
//! a conflict, reported per field as KubeVirt does. The preference fills only
//! what the template leaves unset. The VM's template itself is never changed;
//! the result goes into the VMI.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;

use crate::VirtualMachine;
use crate::instancetype::{
    Matcher, PreferredCpuTopology, SpreadAcross, VirtualMachineInstancetypeSpec,
    VirtualMachinePreferenceSpec, is_namespaced_kind,
};
use crate::quantity::parse_quantity;
use crate::validate::FieldError;
use crate::vmi::{Cpu, Memory, VirtualMachineInstanceSpec};

/// VMI annotation naming a namespaced instancetype.
pub const INSTANCETYPE_ANNOTATION: &str = "kubevirt.io/instancetype-name";
/// VMI annotation naming a cluster instancetype.
pub const CLUSTER_INSTANCETYPE_ANNOTATION: &str = "kubevirt.io/cluster-instancetype-name";
/// VMI annotation naming a namespaced preference.
pub const PREFERENCE_ANNOTATION: &str = "kubevirt.io/preference-name";
/// VMI annotation naming a cluster preference.
pub const CLUSTER_PREFERENCE_ANNOTATION: &str = "kubevirt.io/cluster-preference-name";

/// The conflict message for one template field the instancetype owns.
pub fn conflict(path: &str) -> FieldError {
    FieldError::new(
        path,
        format!("VM field(s) {path} conflicts with selected instance type"),
    )
}

/// What a VM's matchers resolved to.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resolved<'a> {
    pub instancetype: Option<(&'a Matcher, &'a VirtualMachineInstancetypeSpec)>,
    pub preference: Option<(&'a Matcher, &'a VirtualMachinePreferenceSpec)>,
}

/// Template fields an instancetype always owns: set in a template whose VM
/// names an instancetype, each is a conflict (paths under `base`, e.g.
/// `spec.template.spec`). Needs no instancetype object, so admission checks it.
pub fn owned_field_conflicts(spec: &VirtualMachineInstanceSpec, base: &str) -> Vec<FieldError> {
    let d = &spec.domain;
    let mut paths = Vec::new();
    if let Some(cpu) = &d.cpu {
        for (name, v) in [
            ("sockets", cpu.sockets),
            ("cores", cpu.cores),
            ("threads", cpu.threads),
        ] {
            if v.is_some_and(|v| v != 0) {
                paths.push(format!("domain.cpu.{name}"));
            }
        }
    }
    if let Some(r) = &d.resources {
        for (kind, map) in [("requests", &r.requests), ("limits", &r.limits)] {
            for res in ["cpu", "memory"] {
                if map.as_ref().is_some_and(|m| m.contains_key(res)) {
                    paths.push(format!("domain.resources.{kind}.{res}"));
                }
            }
        }
    }
    if d.memory.as_ref().is_some_and(|m| m.guest.is_some()) {
        paths.push("domain.memory.guest".to_owned());
    }
    paths
        .iter()
        .map(|p| conflict(&format!("{base}.{p}")))
        .collect()
}

/// Template fields that conflict only when the instancetype sets them too.
fn shared_field_conflicts(
    spec: &VirtualMachineInstanceSpec,
    it: &VirtualMachineInstancetypeSpec,
    base: &str,
) -> Vec<FieldError> {
    let d = &spec.domain;
    let cpu = d.cpu.as_ref();
    let mem = d.memory.as_ref();
    let devices = d.devices.as_ref();
    let both = [
        (
            "domain.cpu.model",
            it.cpu.model.is_some() && cpu.is_some_and(|c| c.model.is_some()),
        ),
        (
            "domain.cpu.dedicatedCpuPlacement",
            it.cpu.dedicated_cpu_placement.is_some()
                && cpu.is_some_and(|c| c.dedicated_cpu_placement.is_some()),
        ),
        (
            "domain.cpu.isolateEmulatorThread",
            it.cpu.isolate_emulator_thread.is_some()
                && cpu.is_some_and(|c| c.isolate_emulator_thread.is_some()),
        ),
        (
            "domain.cpu.numa",
            it.cpu.numa.is_some() && cpu.is_some_and(|c| c.numa.is_some()),
        ),
        (
            "domain.cpu.realtime",
            it.cpu.realtime.is_some() && cpu.is_some_and(|c| c.realtime.is_some()),
        ),
        (
            "domain.cpu.maxSockets",
            it.cpu.max_sockets.is_some() && cpu.is_some_and(|c| c.max_sockets.is_some()),
        ),
        (
            "domain.memory.hugepages",
            it.memory.hugepages.is_some() && mem.is_some_and(|m| m.hugepages.is_some()),
        ),
        (
            "domain.memory.maxGuest",
            it.memory.max_guest.is_some() && mem.is_some_and(|m| m.max_guest.is_some()),
        ),
        (
            "nodeSelector",
            it.node_selector.is_some() && spec.node_selector.is_some(),
        ),
        (
            "schedulerName",
            it.scheduler_name.is_some() && spec.scheduler_name.is_some(),
        ),
        (
            "domain.ioThreadsPolicy",
            it.io_threads_policy.is_some() && d.io_threads_policy.is_some(),
        ),
        (
            "domain.devices.gpus",
            it.gpus.is_some() && devices.is_some_and(|x| x.gpus.is_some()),
        ),
        (
            "domain.devices.hostDevices",
            it.host_devices.is_some() && devices.is_some_and(|x| x.host_devices.is_some()),
        ),
        (
            "domain.launchSecurity",
            it.launch_security.is_some() && d.launch_security.is_some(),
        ),
    ];
    both.iter()
        .filter(|(_, c)| *c)
        .map(|(p, _)| conflict(&format!("{base}.{p}")))
        .collect()
}

/// Sockets, cores and threads for `guest` vCPUs as the preference asks;
/// an error when spread cannot divide them.
pub fn topology(
    guest: u32,
    pref: Option<&VirtualMachinePreferenceSpec>,
) -> Result<(u32, u32, u32), String> {
    let cpu = pref.and_then(|p| p.cpu.as_ref());
    let preferred = cpu.and_then(|c| c.preferred_cpu_topology).map_or(
        PreferredCpuTopology::Sockets,
        PreferredCpuTopology::normalized,
    );
    if guest <= 1 {
        return Ok((1, 1, 1));
    }
    Ok(match preferred {
        PreferredCpuTopology::Cores => (1, guest, 1),
        PreferredCpuTopology::Threads => (1, 1, guest),
        PreferredCpuTopology::Spread => {
            let spread = cpu.and_then(|c| c.spread_options.as_ref());
            // 0 means unset, as in KubeVirt: the default ratio is 2.
            let ratio = spread
                .and_then(|s| s.ratio)
                .filter(|r| *r > 0)
                .or(pref
                    .and_then(|p| p.prefer_spread_socket_to_core_ratio)
                    .filter(|r| *r > 0))
                .unwrap_or(2);
            let across = spread
                .and_then(|s| s.across)
                .unwrap_or(SpreadAcross::SocketsCores);
            let not_divisible = |by: String| {
                format!(
                    "{guest} vCPUs provided by the instance type are not divisible by {by} provided by the preference"
                )
            };
            match across {
                SpreadAcross::SocketsCores => {
                    if !guest.is_multiple_of(ratio) {
                        return Err(not_divisible(format!("the spread ratio of {ratio}")));
                    }
                    (guest / ratio, ratio, 1)
                }
                SpreadAcross::CoresThreads => {
                    if !guest.is_multiple_of(ratio) {
                        return Err(not_divisible(format!("the {ratio} threads per core")));
                    }
                    (1, guest / ratio, ratio)
                }
                SpreadAcross::SocketsCoresThreads => {
                    if !guest.is_multiple_of(2 * ratio) {
                        return Err(not_divisible(format!(
                            "2 threads per core times the spread ratio of {ratio}"
                        )));
                    }
                    (guest / 2 / ratio, ratio, 2)
                }
            }
        }
        // sockets (the default) and any.
        _ => (guest, 1, 1),
    })
}

/// The VMI's vCPUs as its template sets them (sockets × cores × threads).
fn template_vcpus(spec: &VirtualMachineInstanceSpec) -> Option<u32> {
    let c = spec.domain.cpu.as_ref()?;
    Some(c.sockets.unwrap_or(1) * c.cores.unwrap_or(1) * c.threads.unwrap_or(1))
}

/// Expands `r` into `spec` and `annotations` (the VMI's), or says which
/// template fields conflict; paths are under `base`.
pub fn apply(
    spec: &mut VirtualMachineInstanceSpec,
    annotations: &mut BTreeMap<String, String>,
    r: &Resolved<'_>,
    base: &str,
) -> Result<(), Vec<FieldError>> {
    let pref = r.preference.map(|(_, p)| p);
    if let Some((m, it)) = r.instancetype {
        let mut errors = owned_field_conflicts(spec, base);
        errors.extend(shared_field_conflicts(spec, it, base));
        for (k, v) in it.annotations.iter().flatten() {
            if annotations.get(k).is_some_and(|old| old != v) {
                errors.push(conflict(&format!("annotations.{k}")));
            }
        }
        let topo = topology(it.cpu.guest, pref)
            .map_err(|e| FieldError::new("instancetype.spec.cpu.guest", e));
        let (sockets, cores, threads) = match topo {
            Ok(t) => t,
            Err(e) => {
                errors.push(e);
                (1, 1, 1)
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        apply_instancetype(spec, it, (sockets, cores, threads));
        for (k, v) in it.annotations.iter().flatten() {
            annotations.insert(k.clone(), v.clone());
        }
        let key = if is_namespaced_kind(&m.kind, false) {
            INSTANCETYPE_ANNOTATION
        } else {
            CLUSTER_INSTANCETYPE_ANNOTATION
        };
        annotations.insert(key.to_owned(), m.name.clone());
    }
    if let Some((m, p)) = r.preference {
        requirements(spec, r, p)?;
        apply_preference(spec, annotations, p, base)?;
        let key = if is_namespaced_kind(&m.kind, true) {
            PREFERENCE_ANNOTATION
        } else {
            CLUSTER_PREFERENCE_ANNOTATION
        };
        annotations.insert(key.to_owned(), m.name.clone());
    }
    Ok(())
}

fn apply_instancetype(
    spec: &mut VirtualMachineInstanceSpec,
    it: &VirtualMachineInstancetypeSpec,
    (sockets, cores, threads): (u32, u32, u32),
) {
    let d = &mut spec.domain;
    let cpu = d.cpu.get_or_insert_with(Cpu::default);
    cpu.sockets = Some(sockets);
    cpu.cores = Some(cores);
    cpu.threads = Some(threads);
    if let Some(m) = &it.cpu.model {
        cpu.model = Some(m.clone());
    }
    if let Some(b) = it.cpu.dedicated_cpu_placement {
        cpu.dedicated_cpu_placement = Some(Box::new(Value::Bool(b)));
    }
    if let Some(b) = it.cpu.isolate_emulator_thread {
        cpu.isolate_emulator_thread = Some(b);
    }
    if let Some(n) = &it.cpu.numa {
        cpu.numa = Some(Box::new(n.clone()));
    }
    if let Some(rt) = &it.cpu.realtime {
        cpu.realtime = Some(Box::new(rt.clone()));
    }
    if let Some(s) = it.cpu.max_sockets {
        cpu.max_sockets = Some(s);
    }
    let mem = d.memory.get_or_insert_with(Memory::default);
    mem.guest = Some(it.memory.guest.clone());
    if let Some(h) = &it.memory.hugepages {
        mem.hugepages = Some(Box::new(h.clone()));
    }
    if let Some(m) = &it.memory.max_guest {
        mem.max_guest = Some(m.clone());
    }
    if let Some(pct) = it.memory.overcommit_percent.filter(|p| *p > 0)
        && let Some(bytes) = parse_quantity(&it.memory.guest, false)
    {
        let request = bytes - bytes * i64::from(pct.min(100)) / 100;
        d.resources
            .get_or_insert_with(Default::default)
            .requests
            .get_or_insert_with(BTreeMap::new)
            .insert("memory".to_owned(), Quantity(request.to_string()));
    }
    if let Some(p) = &it.io_threads_policy {
        d.io_threads_policy = serde_json::from_value(Value::String(p.clone())).ok();
    }
    if let Some(t) = &it.io_threads {
        d.io_threads = serde_json::from_value(t.clone()).ok();
    }
    if let Some(ls) = &it.launch_security {
        d.launch_security = Some(Box::new(ls.clone()));
    }
    if it.gpus.is_some() || it.host_devices.is_some() {
        let dev = d.devices.get_or_insert_with(Default::default);
        if let Some(g) = &it.gpus {
            dev.gpus = Some(Box::new(Value::Array(g.clone())));
        }
        if let Some(h) = &it.host_devices {
            dev.host_devices = Some(Box::new(Value::Array(h.clone())));
        }
    }
    if let Some(ns) = &it.node_selector {
        spec.node_selector = Some(ns.clone());
    }
    if let Some(s) = &it.scheduler_name {
        spec.scheduler_name = Some(Box::new(Value::String(s.clone())));
    }
}

/// The preference's requirements against the instancetype (or, without
/// one, the template).
fn requirements(
    spec: &VirtualMachineInstanceSpec,
    r: &Resolved<'_>,
    p: &VirtualMachinePreferenceSpec,
) -> Result<(), Vec<FieldError>> {
    let Some(req) = &p.requirements else {
        return Ok(());
    };
    let by = if r.instancetype.is_some() {
        "instance type"
    } else {
        "VirtualMachine"
    };
    let field = if r.instancetype.is_some() {
        "spec.instancetype"
    } else {
        "spec.template.spec.domain"
    };
    let mut errors = Vec::new();
    if let Some(cpu) = &req.cpu {
        let have = r
            .instancetype
            .map(|(_, it)| it.cpu.guest)
            .or_else(|| template_vcpus(spec))
            .unwrap_or(1);
        if have < cpu.guest {
            errors.push(FieldError::new(
                field,
                format!(
                    "failure checking preference requirements: insufficient CPU resources of {have} vCPU provided by {by}, preference requires {} vCPU",
                    cpu.guest
                ),
            ));
        }
    }
    if let Some(mem) = &req.memory {
        let have = r
            .instancetype
            .map(|(_, it)| it.memory.guest.clone())
            .or_else(|| spec.domain.memory.as_ref().and_then(|m| m.guest.clone()));
        let have_bytes = have.as_ref().and_then(|q| parse_quantity(q, false));
        let want = parse_quantity(&mem.guest, false);
        if let (Some(h), Some(w)) = (have_bytes, want)
            && h < w
        {
            errors.push(FieldError::new(
                field,
                format!(
                    "failure checking preference requirements: insufficient Memory resources of {} provided by {by}, preference requires {}",
                    have.map(|q| q.0).unwrap_or_default(),
                    mem.guest.0
                ),
            ));
        }
    }
    if let Some(arch) = &req.architecture {
        let have = spec.architecture.as_deref().unwrap_or("amd64");
        if have != arch {
            errors.push(FieldError::new(
                "spec.template.spec.architecture",
                format!(
                    "failure checking preference requirements: preference requires architecture {arch} but {have} is being requested"
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// `value` as a `T`, or an error naming the preference field.
fn typed<T: serde::de::DeserializeOwned>(value: Value, field: &str) -> Result<T, FieldError> {
    serde_json::from_value(value).map_err(|e| {
        FieldError::new(
            format!("preference.spec.{field}"),
            format!("cannot apply to the VMI: {e}"),
        )
    })
}

fn apply_preference(
    spec: &mut VirtualMachineInstanceSpec,
    annotations: &mut BTreeMap<String, String>,
    p: &VirtualMachinePreferenceSpec,
    _base: &str,
) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let d = &mut spec.domain;
    // CPU features the VM does not name.
    if let Some(features) = p
        .cpu
        .as_ref()
        .and_then(|c| c.preferred_cpu_features.as_ref())
    {
        let cpu = d.cpu.get_or_insert_with(Cpu::default);
        let list = cpu.features.get_or_insert_with(Vec::new);
        for f in features {
            if !list.iter().any(|x| x.name == f.name) {
                list.push(f.clone());
            }
        }
    }
    if let Some(dp) = &p.devices {
        let dev = d.devices.get_or_insert_with(Default::default);
        for disk in dev.disks.iter_mut().flatten() {
            if let Some(t) = disk.disk.as_mut().filter(|t| t.bus.is_none()) {
                t.bus = dp.preferred_disk_bus;
            }
            if let Some(t) = disk.cdrom.as_mut().filter(|t| t.bus.is_none()) {
                t.bus = dp.preferred_cdrom_bus;
            }
            if let Some(t) = disk.lun.as_mut().filter(|t| t.bus.is_none()) {
                t.bus = dp.preferred_lun_bus;
            }
            // A disk with no target is a disk on the preferred bus.
            if disk.disk.is_none()
                && disk.cdrom.is_none()
                && disk.lun.is_none()
                && let Some(bus) = dp.preferred_disk_bus
            {
                disk.disk = Some(crate::vmi::DiskTarget {
                    bus: Some(bus),
                    ..Default::default()
                });
            }
        }
        if let Some(model) = &dp.preferred_interface_model {
            for i in dev.interfaces.iter_mut().flatten() {
                if i.model.is_none() {
                    i.model = Some(model.clone());
                }
            }
        }
        if dev.rng.is_none()
            && let Some(rng) = &dp.preferred_rng
        {
            match typed(rng.clone(), "devices.preferredRng") {
                Ok(r) => dev.rng = Some(r),
                Err(e) => errors.push(e),
            }
        }
        for (field, slot) in [
            (
                "preferredAutoattachSerialConsole",
                &mut dev.autoattach_serial_console,
            ),
            (
                "preferredAutoattachGraphicsDevice",
                &mut dev.autoattach_graphics_device,
            ),
            (
                "preferredAutoattachPodInterface",
                &mut dev.autoattach_pod_interface,
            ),
        ] {
            if slot.is_none()
                && let Some(Value::Bool(b)) = dp.other.get(field)
            {
                *slot = Some(*b);
            }
        }
    }
    if let Some(fp) = &p.features
        && d.features.is_none()
    {
        let mut f = serde_json::Map::new();
        for (name, v) in [
            ("acpi", &fp.preferred_acpi),
            ("apic", &fp.preferred_apic),
            ("hyperv", &fp.preferred_hyperv),
            ("kvm", &fp.preferred_kvm),
            ("pvspinlock", &fp.preferred_pvspinlock),
            ("smm", &fp.preferred_smm),
        ] {
            if let Some(v) = v {
                f.insert(name.to_owned(), v.clone());
            }
        }
        if !f.is_empty() {
            match typed(Value::Object(f), "features") {
                Ok(features) => d.features = Some(features),
                Err(e) => errors.push(e),
            }
        }
    }
    if let Some(fw) = &p.firmware {
        let firmware = d.firmware.get_or_insert_with(Default::default);
        if firmware.bootloader.is_none() {
            let bootloader = if fw.preferred_use_bios == Some(true) {
                Some(
                    serde_json::json!({"bios": {"useSerial": fw.preferred_use_bios_serial.unwrap_or(false)}}),
                )
            } else if let Some(efi) = &fw.preferred_efi {
                Some(serde_json::json!({ "efi": efi }))
            } else if fw.preferred_use_efi == Some(true) {
                Some(
                    serde_json::json!({"efi": {"secureBoot": fw.preferred_use_secure_boot.unwrap_or(false)}}),
                )
            } else {
                None
            };
            if let Some(b) = bootloader {
                match typed(b, "firmware") {
                    Ok(b) => firmware.bootloader = Some(b),
                    Err(e) => errors.push(e),
                }
            }
        }
        if firmware == &crate::vmi::Firmware::default() {
            d.firmware = None;
        }
    }
    if let Some(mt) = p
        .machine
        .as_ref()
        .and_then(|m| m.preferred_machine_type.as_ref())
    {
        let machine = d.machine.get_or_insert_with(Default::default);
        if machine.machine_type.is_none() {
            machine.machine_type = Some(mt.clone());
        }
    }
    if let Some(cp) = &p.clock
        && d.clock.is_none()
    {
        let mut c = match &cp.preferred_clock_offset {
            Some(Value::Object(o)) => o.clone(),
            _ => serde_json::Map::new(),
        };
        if let Some(t) = &cp.preferred_timer {
            c.insert("timer".to_owned(), t.clone());
        }
        if !c.is_empty() {
            match typed(Value::Object(c), "clock") {
                Ok(clock) => d.clock = Some(clock),
                Err(e) => errors.push(e),
            }
        }
    }
    if spec.subdomain.is_none() {
        spec.subdomain = p.preferred_subdomain.clone();
    }
    if spec.termination_grace_period_seconds.is_none() {
        spec.termination_grace_period_seconds = p.preferred_termination_grace_period_seconds;
    }
    if spec.architecture.is_none() {
        spec.architecture = p.preferred_architecture.clone();
    }
    for (k, v) in p.annotations.iter().flatten() {
        annotations.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Where a VM's template spec is: the base of the paths its expansion reports.
pub const VM_TEMPLATE_SPEC: &str = "spec.template.spec";

/// What KubeVirt's expand subresources answer: `vm` with the instancetype and
/// preference its matchers resolved to (`it`, `pref`) expanded into
/// `spec.template` and the matchers removed, so that the VM can be created as
/// it is. A VM without matchers comes back unchanged. The template's
/// annotations gain the instancetype's own, not the `kubevirt.io/*-name` ones
/// the VM controller puts on VMIs (the expanded VM names no instancetype).
/// Errors (conflicts, unmet requirements) have paths from the VM's root.
pub fn expand_vm(
    mut vm: VirtualMachine,
    it: Option<&VirtualMachineInstancetypeSpec>,
    pref: Option<&VirtualMachinePreferenceSpec>,
) -> Result<VirtualMachine, Vec<FieldError>> {
    let it_matcher = vm.spec.instancetype.take();
    let pref_matcher = vm.spec.preference.take();
    if it_matcher.is_none() && pref_matcher.is_none() {
        return Ok(vm);
    }
    let resolved = Resolved {
        instancetype: it_matcher.as_deref().zip(it),
        preference: pref_matcher.as_deref().zip(pref),
    };
    let template = &mut vm.spec.template;
    let had_metadata = template.metadata.is_some();
    let meta = template.metadata.get_or_insert_with(Default::default);
    let before = meta.annotations.clone().unwrap_or_default();
    let mut annotations = before.clone();
    let spec = template.spec.get_or_insert_with(Default::default);
    apply(spec, &mut annotations, &resolved, VM_TEMPLATE_SPEC).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| match e.field.strip_prefix("annotations.") {
                Some(key) => conflict(&format!("spec.template.metadata.annotations.{key}")),
                None => e,
            })
            .collect::<Vec<_>>()
    })?;
    for key in [
        INSTANCETYPE_ANNOTATION,
        CLUSTER_INSTANCETYPE_ANNOTATION,
        PREFERENCE_ANNOTATION,
        CLUSTER_PREFERENCE_ANNOTATION,
    ] {
        match before.get(key) {
            Some(v) => annotations.insert(key.to_owned(), v.clone()),
            None => annotations.remove(key),
        };
    }
    meta.annotations = (!annotations.is_empty()).then_some(annotations);
    if !had_metadata && *meta == Default::default() {
        template.metadata = None;
    }
    Ok(vm)
}

#[cfg(test)]
mod tests;
