//! The contract between ironvirt's components: every name that one component
//! writes and another reads. The operator, the handler, ironvirt-api and
//! ironctl take these from here and nowhere else, so a rename is one edit and
//! the compiler finds every reader.
//!
//! | what | written by | read by |
//! |---|---|---|
//! | handler Lease and its stream URL | handler | operator (liveness), ironvirt-api (dialling) |
//! | node name and schedulable labels | operator, handler | operator, users |
//! | VMI and VM finalizers | operator | operator, handler |
//! | websocket subprotocol | ironvirt-api, handler | ironctl, virtctl |
//! | handler TLS server name, ironvirt-api client CN | operator (certificates) | ironvirt-api, handler |
//! | handler identities per node (TLS name, user, node-name extra) | operator, test bed | ironvirt-api, lease policy |
//! | domain names | handler | handler, test bed |
//! | VM operations | ironvirt-api | ironctl, virtctl |

use crate::vmi::DiskBus;

/// Namespace of the handlers' per-node Leases. kube-apiserver creates it in
/// every cluster, and kubelets keep their own node Leases there.
pub const HANDLER_LEASE_NAMESPACE: &str = "kube-node-lease";

/// Prefix of a handler's Lease name; the node name follows.
pub const HANDLER_LEASE_PREFIX: &str = "ironvirt-handler-";

/// The name of the Lease the handler of `node` renews.
pub fn handler_lease_name(node: &str) -> String {
    format!("{HANDLER_LEASE_PREFIX}{node}")
}

/// Annotation on the handler Lease: the `https://host:port` where the
/// handler serves its streams (console, VNC, power operations).
pub const STREAM_URL_ANNOTATION: &str = "ironvirt.io/stream-url";

/// Label on a VMI naming the node it is placed on (KubeVirt's name).
pub const NODE_NAME_LABEL: &str = "kubevirt.io/nodeName";

/// Label on a Node: `"true"` when its handler can run VMIs (KubeVirt's name).
pub const SCHEDULABLE_LABEL: &str = "kubevirt.io/schedulable";

/// Finalizer the operator puts on every VMI: it stays until the VMI's domain
/// is gone from its node (or the node is dead).
pub const VMI_FINALIZER: &str = "kubevirt.io/foregroundDeleteVirtualMachine";

/// Finalizer the operator puts on every VM: it stays until the VM's VMI is gone.
pub const VM_FINALIZER: &str = "kubevirt.io/virtualMachineControllerFinalize";

/// The websocket subprotocol of console, VNC and port streams (KubeVirt's):
/// raw bytes in binary frames.
pub const STREAM_SUBPROTOCOL: &str = "plain.kubevirt.io";

/// The TCP ports at which a VMI is reachable (its address on the node, and
/// port-forward) when its pod-network interface declares no `ports`.
/// KubeVirt forwards every port then; ironvirt's guest network (passt) holds
/// a socket per forwarded port, so it forwards these common service ports
/// (SSH, HTTP, HTTPS, RDP and two alternative HTTP(S) ports) and warns at
/// admission.
pub const DEFAULT_FORWARDED_PORTS: [u16; 6] = [22, 80, 443, 3389, 8080, 8443];

/// The index of a VMI's interface on the pod network, the one its network
/// namespace connects: the first masquerade interface, else the first bridge
/// one; None when it has neither.
pub fn pod_interface(ifaces: &[crate::vmi::Interface]) -> Option<usize> {
    ifaces
        .iter()
        .position(|i| i.masquerade.is_some())
        .or_else(|| ifaces.iter().position(|i| i.bridge.is_some()))
}

/// The Secret holding the handlers' serving certificate: the operator issues
/// it, every handler pod mounts it (`deploy/base/handler/daemonset.yaml`).
pub const HANDLER_TLS_SECRET: &str = "ironvirt-handler-tls";

/// The DNS name in every handler's serving certificate; ironvirt-api verifies
/// it when it dials a handler.
pub const HANDLER_SERVER_NAME: &str = "ironvirt-handler";

/// The common name of ironvirt-api's client certificate, the only client a
/// handler accepts.
pub const API_CLIENT_CN: &str = "ironvirt-api";

/// The DNS name in the serving certificate of the handler of `node`
/// (`<node>.ironvirt-handler`): ironvirt-api verifies it for the VMI's
/// `status.nodeName` when it dials, so one node's handler cannot stand in for
/// another's. A node name is a DNS subdomain, so this is one too.
pub fn handler_server_name(node: &str) -> String {
    format!("{node}.{HANDLER_SERVER_NAME}")
}

/// The group of the handlers' per-node user identities (client certificates
/// with CN [`handler_user`]), as the test bed mints them.
pub const HANDLERS_GROUP: &str = "ironvirt:handlers";

/// Prefix of a handler's per-node user name; the node name follows.
pub const HANDLER_USER_PREFIX: &str = "system:ironvirt-handler:";

/// The user name of the handler of `node` when it authenticates with a
/// client certificate (CN), in group [`HANDLERS_GROUP`].
pub fn handler_user(node: &str) -> String {
    format!("{HANDLER_USER_PREFIX}{node}")
}

/// The handlers' ServiceAccount in `deploy/`, as kube-apiserver names its user.
pub const HANDLER_SERVICE_ACCOUNT: &str = "system:serviceaccount:ironvirt-system:ironvirt-handler";

/// The user-info extra key in which kube-apiserver puts the node of the pod a
/// bound ServiceAccount token was issued for.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// The node a request comes from when its user is a handler identity: the
/// handler ServiceAccount with exactly one node-name extra, or a user
/// [`handler_user`] in group [`HANDLERS_GROUP`]. `None` for every other user.
/// The ValidatingAdmissionPolicy in `deploy/base/handler/lease-policy.yaml`
/// computes the same in CEL.
pub fn handler_node<'a>(
    user: &'a str,
    groups: &[String],
    extra: &'a std::collections::BTreeMap<String, Vec<String>>,
) -> Option<&'a str> {
    let node = if user == HANDLER_SERVICE_ACCOUNT {
        match extra.get(NODE_NAME_EXTRA).map(Vec::as_slice) {
            Some([node]) => node.as_str(),
            _ => return None,
        }
    } else if groups.iter().any(|g| g == HANDLERS_GROUP) {
        user.strip_prefix(HANDLER_USER_PREFIX)?
    } else {
        return None;
    };
    (!node.is_empty()).then_some(node)
}

/// Prefix of every ironvirt libvirt domain name.
const DOMAIN_PREFIX: &str = "ironvirt-";

/// The libvirt domain name of a VMI: `ironvirt-<namespace>_<name>`. Neither a
/// namespace nor a name may hold `_`, so the split back is unambiguous.
pub fn domain_name(namespace: &str, name: &str) -> String {
    format!("{DOMAIN_PREFIX}{namespace}_{name}")
}

/// The prefix of the domain names of one namespace's VMIs.
pub fn domain_name_prefix(namespace: &str) -> String {
    format!("{DOMAIN_PREFIX}{namespace}_")
}

/// The (namespace, name) of the VMI a domain name stands for, if it is one of
/// ironvirt's.
pub fn parse_domain_name(domain: &str) -> Option<(&str, &str)> {
    let (ns, name) = domain.strip_prefix(DOMAIN_PREFIX)?.split_once('_')?;
    (!ns.is_empty() && !name.is_empty()).then_some((ns, name))
}

/// The VM power operations of the subresource API
/// (`virtualmachines/{name}/{op}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmOp {
    Start,
    Stop,
    Restart,
}

impl VmOp {
    /// Every operation, in a stable order.
    pub const ALL: [VmOp; 3] = [VmOp::Start, VmOp::Stop, VmOp::Restart];

    /// The operation a subresource name stands for.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == s)
    }

    /// The subresource's name, also the verb in messages.
    pub fn name(self) -> &'static str {
        match self {
            VmOp::Start => "start",
            VmOp::Stop => "stop",
            VmOp::Restart => "restart",
        }
    }
}

/// A disk bus as KubeVirt spells it, which is also libvirt's `<target bus=…>`.
pub fn bus_name(bus: DiskBus) -> &'static str {
    match bus {
        DiskBus::Virtio => "virtio",
        DiskBus::Sata => "sata",
        DiskBus::Scsi => "scsi",
        DiskBus::Usb => "usb",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names_round_trip() {
        let d = domain_name("tenant-a", "vm-1");
        assert_eq!(d, "ironvirt-tenant-a_vm-1");
        assert_eq!(parse_domain_name(&d), Some(("tenant-a", "vm-1")));
        assert!(d.starts_with(&domain_name_prefix("tenant-a")));
        assert_eq!(parse_domain_name("ironvirt-_x"), None);
        assert_eq!(parse_domain_name("ironvirt-ns_"), None);
        assert_eq!(parse_domain_name("other-ns_x"), None);
        assert_eq!(parse_domain_name("ironvirt-nounderscore"), None);
    }

    #[test]
    fn lease_names_carry_the_node() {
        assert_eq!(handler_lease_name("n1"), "ironvirt-handler-n1");
    }

    #[test]
    fn handler_identities_name_their_node() {
        use std::collections::BTreeMap;
        assert_eq!(handler_server_name("n1"), "n1.ironvirt-handler");
        let none = BTreeMap::new();
        let group = [HANDLERS_GROUP.to_owned()];
        let user = handler_user("n1");
        assert_eq!(handler_node(&user, &group, &none), Some("n1"));
        // The user name alone, without the group, is nobody's.
        assert_eq!(handler_node(&user, &[], &none), None);
        assert_eq!(
            handler_node("system:ironvirt-handler:", &group, &none),
            None
        );
        assert_eq!(handler_node("alice", &group, &none), None);
        let mut extra = BTreeMap::new();
        assert_eq!(handler_node(HANDLER_SERVICE_ACCOUNT, &[], &extra), None);
        extra.insert(NODE_NAME_EXTRA.to_owned(), vec!["n2".to_owned()]);
        assert_eq!(
            handler_node(HANDLER_SERVICE_ACCOUNT, &[], &extra),
            Some("n2")
        );
        // The extra counts only for the handler ServiceAccount.
        assert_eq!(
            handler_node("system:serviceaccount:x:other", &[], &extra),
            None
        );
        extra.insert(
            NODE_NAME_EXTRA.to_owned(),
            vec!["n2".to_owned(), "n3".to_owned()],
        );
        assert_eq!(handler_node(HANDLER_SERVICE_ACCOUNT, &[], &extra), None);
    }

    #[test]
    fn vm_ops_parse_their_names() {
        for op in VmOp::ALL {
            assert_eq!(VmOp::parse(op.name()), Some(op));
        }
        assert_eq!(VmOp::parse("pause"), None);
    }

    #[test]
    fn bus_names_match_the_serialized_enum() {
        for bus in [DiskBus::Virtio, DiskBus::Sata, DiskBus::Scsi, DiskBus::Usb] {
            let json = serde_json::to_value(bus).ok();
            assert_eq!(json.as_ref().and_then(|v| v.as_str()), Some(bus_name(bus)));
        }
    }
}
