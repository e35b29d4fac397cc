//! Memory and CPU: guest memory, the vCPU topology and the CPU model (see
//! the choices in the module documentation of [`super`]).

use super::*;

// Memory and CPU

/// The guest memory in KiB, rounded up.
pub(super) fn memory_kib(vmi: &VirtualMachineInstance) -> Result<u64, XmlError> {
    match guest_memory_bytes(vmi).map(u64::try_from) {
        Some(Ok(bytes)) if bytes > 0 => Ok(bytes.div_ceil(1024)),
        Some(_) => Err(invalid(
            memory_field(vmi).unwrap_or("spec.domain.memory.guest"),
            "must be positive",
        )),
        None => Err(match memory_field(vmi) {
            Some(field) => invalid(field, "not a quantity such as 128Mi"),
            None => invalid(
                "spec.domain.memory.guest",
                "the guest has no memory: set memory.guest or resources.requests.memory",
            ),
        }),
    }
}

/// The field [`guest_memory_bytes`] reads, if any is set.
pub(super) fn memory_field(vmi: &VirtualMachineInstance) -> Option<&'static str> {
    let domain = &vmi.spec.domain;
    let resources = domain.resources.as_ref();
    let has = |map: Option<&BTreeMap<String, _>>| map.is_some_and(|m| m.contains_key("memory"));
    if domain.memory.as_ref().is_some_and(|m| m.guest.is_some()) {
        Some("spec.domain.memory.guest")
    } else if has(resources.and_then(|r| r.requests.as_ref())) {
        Some("spec.domain.resources.requests.memory")
    } else if has(resources.and_then(|r| r.limits.as_ref())) {
        Some("spec.domain.resources.limits.memory")
    } else {
        None
    }
}

/// The vCPU topology; every count defaults to 1.
pub(super) struct Topology {
    pub(super) sockets: u32,
    pub(super) cores: u32,
    pub(super) threads: u32,
    pub(super) vcpus: u32,
}

pub(super) fn topology(vmi: &VirtualMachineInstance) -> Result<Topology, XmlError> {
    let no_cpu = Cpu::default();
    let cpu = vmi.spec.domain.cpu.as_ref().unwrap_or(&no_cpu);
    let count = |value: Option<u32>, field: &str| match value {
        Some(0) => Err(invalid(field, "must be at least 1")),
        v => Ok(v.unwrap_or(1)),
    };
    let sockets = count(cpu.sockets, "spec.domain.cpu.sockets")?;
    let cores = count(cpu.cores, "spec.domain.cpu.cores")?;
    let threads = count(cpu.threads, "spec.domain.cpu.threads")?;
    let vcpus = sockets
        .checked_mul(cores)
        .and_then(|n| n.checked_mul(threads))
        .ok_or_else(|| invalid("spec.domain.cpu", "too many vCPUs"))?;
    Ok(Topology {
        sockets,
        cores,
        threads,
        vcpus,
    })
}

/// `<cpu>`: the model (see the module documentation) and the topology.
pub(super) fn cpu_element(
    vmi: &VirtualMachineInstance,
    host: &HostEnv,
    topology: &Topology,
) -> Result<Element, XmlError> {
    const FIELD: &str = "spec.domain.cpu.model";
    let model = vmi
        .spec
        .domain
        .cpu
        .as_ref()
        .and_then(|c| c.model.as_deref())
        .filter(|m| !m.is_empty());
    let cpu = match (host.domain_type, model) {
        (DomainType::Kvm, None | Some("host-model")) => {
            Element::new("cpu").attr("mode", "host-model")
        }
        (DomainType::Kvm, Some("host-passthrough")) => {
            Element::new("cpu").attr("mode", "host-passthrough")
        }
        (DomainType::Qemu, None | Some("host-model")) => Element::new("cpu"),
        (DomainType::Qemu, Some("host-passthrough")) => {
            return Err(unsupported(
                FIELD,
                "host-passthrough needs KVM, and this node runs guests under TCG (QEMU emulation); \
                 use host-model, a named model or none",
            ));
        }
        (domain_type, Some(named)) => {
            if !is_token(named, "._-") {
                return Err(invalid(FIELD, format!("{named:?} is not a CPU model name")));
            }
            let cpu = Element::new("cpu")
                .attr("mode", "custom")
                .attr("match", "exact");
            let cpu = match domain_type {
                DomainType::Qemu => cpu.attr("check", "none"),
                DomainType::Kvm => cpu,
            };
            cpu.child(Element::new("model").attr("fallback", "allow").text(named))
        }
    };
    let features = vmi
        .spec
        .domain
        .cpu
        .as_ref()
        .and_then(|c| c.features.as_deref())
        .unwrap_or_default();
    if !features.is_empty() && host.domain_type == DomainType::Qemu && cpu.attrs.is_empty() {
        return Err(unsupported(
            "spec.domain.cpu.features",
            "CPU features need a CPU model under TCG (QEMU emulation); set cpu.model to a named model",
        ));
    }
    let mut feature_elements = Vec::new();
    for (i, f) in features.iter().enumerate() {
        if !is_token(&f.name, "._-") {
            return Err(invalid(
                format!("spec.domain.cpu.features[{i}].name"),
                format!("{:?} is not a CPU feature name", f.name),
            ));
        }
        let policy = f.policy.map_or("require", |p| p.as_str());
        feature_elements.push(
            Element::new("feature")
                .attr("policy", policy)
                .attr("name", &f.name),
        );
    }
    Ok(cpu
        .child(
            Element::new("topology")
                .attr("sockets", topology.sockets)
                .attr("dies", 1)
                .attr("cores", topology.cores)
                .attr("threads", topology.threads),
        )
        .children(feature_elements))
}
