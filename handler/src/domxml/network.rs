//! Interfaces: bindings, pod networks, MACs, and the QEMU arguments that
//! connect the masquerade interface to the VMI's network namespace.

use super::*;

// Interfaces

/// NIC models and their QEMU device names.
pub(super) const NIC_MODELS: [(&str, &str); 6] = [
    ("virtio", "virtio-net-pci"),
    ("e1000", "e1000"),
    ("e1000e", "e1000e"),
    ("rtl8139", "rtl8139"),
    ("ne2k_pci", "ne2k_pci"),
    ("pcnet", "pcnet"),
];

/// How an interface reaches the network.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Binding {
    /// masquerade (or the first bridge interface of a VMI without one): the
    /// VMI's network namespace through passt.
    User,
    /// bridge (beside a masquerade interface): the libvirt network named "default".
    Bridge,
}

/// An interface, resolved.
pub(super) struct Nic {
    pub(super) name: String,
    /// Its field path, None for the auto-attached pod interface.
    pub(super) field: Option<String>,
    pub(super) binding: Binding,
    pub(super) model: &'static str,
    pub(super) device: &'static str,
    pub(super) mac: String,
    pub(super) boot_order: Option<u32>,
}

/// The interfaces of the VMI, or KubeVirt's default pod interface when it
/// lists neither interfaces nor networks.
pub(super) fn nics(vmi: &VirtualMachineInstance, id: &Identity<'_>) -> Result<Vec<Nic>, XmlError> {
    let devices = vmi.spec.domain.devices.as_ref();
    let ifaces = devices
        .and_then(|d| d.interfaces.as_deref())
        .unwrap_or_default();
    let networks = vmi.spec.networks.as_deref().unwrap_or_default();
    if ifaces.is_empty() && networks.is_empty() {
        if devices.and_then(|d| d.autoattach_pod_interface) == Some(false) {
            return Ok(Vec::new());
        }
        return Ok(vec![Nic {
            name: "default".to_owned(),
            field: None,
            binding: Binding::User,
            model: "virtio",
            device: "virtio-net-pci",
            mac: derived_mac(id.uid, "default"),
            boot_order: None,
        }]);
    }
    let mut out: Vec<Nic> = Vec::new();
    let mut masquerade: Option<&str> = None;
    let disk_names: BTreeSet<&str> = devices
        .and_then(|d| d.disks.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    for (i, iface) in ifaces.iter().enumerate() {
        let field = format!("{INTERFACES}[{i}]");
        let nic = nic(iface, &field, networks, id)?;
        if out.iter().any(|n| n.name == nic.name) {
            return Err(invalid(
                format!("{field}.name"),
                format!("another interface is named {}", nic.name),
            ));
        }
        if disk_names.contains(nic.name.as_str()) {
            return Err(invalid(
                format!("{field}.name"),
                format!(
                    "a disk is also named {}; ironvirt needs distinct disk and interface names",
                    nic.name
                ),
            ));
        }
        if nic.binding == Binding::User {
            if let Some(first) = masquerade {
                return Err(unsupported(
                    format!("{field}.masquerade"),
                    format!(
                        "interface {first} is the VMI's masquerade interface already; ironvirt connects one (the pod network)"
                    ),
                ));
            }
            masquerade = Some(iface.name.as_str());
        }
        if let Some(other) = out.iter().find(|n| n.mac == nic.mac) {
            return Err(invalid(
                format!("{field}.macAddress"),
                format!("interface {} has the same MAC {}", other.name, nic.mac),
            ));
        }
        out.push(nic);
    }
    // KubeVirt's bridge binding on the pod network gives the guest the pod's
    // address. Without a masquerade interface, the first bridge interface is
    // connected to the VMI's network namespace as masquerade is (passt hands
    // the guest the VMI's address by DHCP); other bridge interfaces use the
    // node's libvirt network "default".
    if masquerade.is_none()
        && let Some(first) = out.iter_mut().find(|n| n.binding == Binding::Bridge)
    {
        first.binding = Binding::User;
    }
    Ok(out)
}

pub(super) fn nic(
    iface: &Interface,
    field: &str,
    networks: &[Network],
    id: &Identity<'_>,
) -> Result<Nic, XmlError> {
    if !is_token(&iface.name, "_-") {
        return Err(invalid(
            format!("{field}.name"),
            "use only letters, digits, '-' and '_'",
        ));
    }
    let binding = binding(iface, field)?;
    let (j, pod) = pod_network(iface, field, networks)?;
    let model = iface.model.as_deref().unwrap_or("virtio");
    let (model, device) = NIC_MODELS
        .iter()
        .find(|(m, _)| *m == model)
        .copied()
        .ok_or_else(|| {
            invalid(
                format!("{field}.model"),
                format!(
                    "unknown model {model:?}; use one of virtio, e1000, e1000e, rtl8139, ne2k_pci, pcnet"
                ),
            )
        })?;
    let mac = match iface.mac_address.as_deref() {
        Some(mac) => normalize_mac(mac).ok_or_else(|| {
            invalid(
                format!("{field}.macAddress"),
                format!("{mac:?} is not a unicast MAC address such as 02:00:00:00:00:01"),
            )
        })?,
        None => derived_mac(id.uid, &iface.name),
    };
    // vmNetworkCIDR has no effect (the guest gets the VMI's address), but a
    // malformed one is still refused, as KubeVirt does.
    if binding == Binding::User {
        guest_nets(pod, j)?;
    }
    Ok(Nic {
        name: iface.name.clone(),
        field: Some(field.to_owned()),
        binding,
        model,
        device,
        mac,
        boot_order: iface.boot_order,
    })
}

/// The binding of an interface: masquerade or bridge; the others are refused.
pub(super) fn binding(iface: &Interface, field: &str) -> Result<Binding, XmlError> {
    let refused = [
        ("sriov", iface.sriov.is_some()),
        ("passt", iface.passt.is_some()),
        ("slirp", iface.slirp.is_some()),
        ("binding", iface.binding.is_some()),
    ];
    if let Some((name, _)) = refused.into_iter().find(|(_, set)| *set) {
        return Err(unsupported(
            format!("{field}.{name}"),
            "not supported by ironvirt; use the masquerade or bridge binding",
        ));
    }
    match (&iface.masquerade, &iface.bridge) {
        (Some(_), None) => Ok(Binding::User),
        (None, Some(_)) if iface.ports.as_ref().is_some_and(|p| !p.is_empty()) => Err(invalid(
            format!("{field}.ports"),
            "forwarding ports needs the masquerade binding",
        )),
        (None, Some(_)) => Ok(Binding::Bridge),
        _ => Err(invalid(
            field,
            "set exactly one binding: masquerade or bridge",
        )),
    }
}

/// The pod network an interface names, with its index in spec.networks.
pub(super) fn pod_network<'a>(
    iface: &Interface,
    field: &str,
    networks: &'a [Network],
) -> Result<(usize, &'a PodNetwork), XmlError> {
    let (j, network) = networks
        .iter()
        .enumerate()
        .find(|(_, n)| n.name == iface.name)
        .ok_or_else(|| {
            invalid(
                format!("{field}.name"),
                format!("no network named {}", iface.name),
            )
        })?;
    if network.multus.is_some() {
        return Err(unsupported(
            format!("spec.networks[{j}].multus"),
            "Multus networks are not supported by ironvirt yet; use pod",
        ));
    }
    let pod = network
        .pod
        .as_ref()
        .ok_or_else(|| invalid(format!("spec.networks[{j}]"), "set one source: pod"))?;
    Ok((j, pod))
}

/// The guest networks a masquerade interface's pod network asks for.
pub(super) fn guest_nets(pod: &PodNetwork, j: usize) -> Result<Vec<(IpAddr, u8)>, XmlError> {
    let base = format!("spec.networks[{j}].pod");
    let mut nets = Vec::new();
    if let Some(cidr) = &pod.vm_network_cidr {
        nets.push(guest_net(cidr, false, &format!("{base}.vmNetworkCIDR"))?);
    }
    if let Some(cidr) = &pod.vm_ipv6_network_cidr {
        nets.push(guest_net(cidr, true, &format!("{base}.vmIPv6NetworkCIDR"))?);
    }
    Ok(nets)
}

/// A guest network in CIDR form, as QEMU user networking accepts it: IPv4
/// with a prefix of 4 to 27 (room for its DHCP range), IPv6 with /64.
pub(super) fn guest_net(cidr: &str, v6: bool, field: &str) -> Result<(IpAddr, u8), XmlError> {
    let parsed = cidr.split_once('/').and_then(|(addr, prefix)| {
        let prefix: u8 = prefix.parse().ok()?;
        let addr: IpAddr = if v6 {
            IpAddr::V6(addr.parse::<Ipv6Addr>().ok()?)
        } else {
            IpAddr::V4(addr.parse::<Ipv4Addr>().ok()?)
        };
        Some((addr, prefix))
    });
    let example = if v6 { "fd10:0:2::/64" } else { "10.0.2.0/24" };
    let (addr, prefix) = parsed
        .ok_or_else(|| invalid(field, format!("{cidr:?} is not a CIDR such as {example}")))?;
    match addr {
        IpAddr::V4(_) if !(4..=27).contains(&prefix) => {
            Err(invalid(field, "the prefix length must be between 4 and 27"))
        }
        IpAddr::V6(_) if prefix != 64 => Err(unsupported(
            field,
            "QEMU user networking supports only a /64 IPv6 network",
        )),
        _ => Ok((addr, prefix)),
    }
}

/// `mac` in lower case with colons, if it is a unicast MAC.
pub(super) fn normalize_mac(mac: &str) -> Option<String> {
    let octets: Vec<u8> = mac
        .split([':', '-'])
        .map(|o| {
            if o.len() == 2 {
                u8::from_str_radix(o, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    (octets.len() == 6 && octets[0] & 1 == 0).then(|| format_mac(&octets))
}

/// A locally administered unicast MAC (`02:…`) from the VMI's uid and the
/// interface name: stable across restarts, distinct between VMIs.
pub(super) fn derived_mac(uid: &str, interface: &str) -> String {
    // FNV-1a, then the splitmix64 finalizer to spread the bits.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in uid.bytes().chain([0]).chain(interface.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    let bytes = hash.to_be_bytes();
    format_mac(&[0x02, bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]])
}

pub(super) fn format_mac(octets: &[u8]) -> String {
    octets
        .iter()
        .map(|o| format!("{o:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The passt socket the masquerade interface connects to.
pub(super) fn pod_socket<'a>(nic: &Nic, inputs: &'a DomainInputs) -> Result<&'a Path, XmlError> {
    inputs.pod_network.as_deref().ok_or_else(|| {
        unsupported(
            nic.field.as_deref().unwrap_or(INTERFACES),
            "this node has no guest network for masquerade interfaces",
        )
    })
}

/// A libvirt `<interface>` of a bridge binding: the libvirt network "default".
pub(super) fn interface_element(nic: &Nic) -> Element {
    Element::new("interface")
        .attr("type", "network")
        .child(Element::new("source").attr("network", "default"))
        .child(Element::new("mac").attr("address", &nic.mac))
        .child(Element::new("model").attr("type", nic.model))
        .child_opt(
            nic.boot_order
                .map(|o| Element::new("boot").attr("order", o)),
        )
        .child(alias(&nic.name))
}

/// The QEMU arguments of the masquerade interface: a stream netdev to passt's
/// UNIX socket, and its NIC.
pub(super) fn netdev_args(nic: &Nic, socket: &Path, address: &str) -> [String; 4] {
    let id = format!("ua-{}", nic.name);
    let netdev = format!(
        "stream,id={id},server=off,addr.type=unix,addr.path={}",
        socket.display()
    );
    let mut device = format!("{},netdev={id},mac={},{address}", nic.device, nic.mac);
    if let Some(order) = nic.boot_order {
        let _ = write!(device, ",bootindex={order}");
    }
    ["-netdev".to_owned(), netdev, "-device".to_owned(), device]
}

/// A PCI address libvirt does not hand out for the `n`-th NIC that QEMU gets
/// on its command line: libvirt places its own devices from slot 1 upwards
/// (on q35 behind root ports in slots 2 and 3 for up to 16 devices), so these
/// take slots from 0x1d downwards on the root bus. Without an address QEMU
/// would take slot 1, which libvirt gives the video device.
pub(super) fn passthrough_address(machine: &str, n: u8) -> String {
    let bus = if machine.contains("q35") {
        "pcie.0"
    } else {
        "pci.0"
    };
    format!("bus={bus},addr={:#04x}", 0x1d_u8.saturating_sub(n))
}

pub(super) fn commandline_element(args: &[String]) -> Element {
    Element::new("qemu:commandline").children(
        args.iter()
            .map(|a| Element::new("qemu:arg").attr("value", a)),
    )
}
