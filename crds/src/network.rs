//! The VMI's network interfaces and the networks behind them.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{DhcpOptions, InterfaceState};
use crate::schema;

/// A network interface of the VMI. Set exactly one binding: masquerade or bridge.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.masquerade) ? 1 : 0) + (has(self.bridge) ? 1 : 0) + (has(self.sriov) ? 1 : 0) + (has(self.passt) ? 1 : 0) + (has(self.slirp) ? 1 : 0) + (has(self.binding) ? 1 : 0) + (has(self.macvtap) ? 1 : 0) + (has(self.passtBinding) ? 1 : 0) == 1").message("an interface sets exactly one binding: masquerade or bridge"))]
pub struct Interface {
    /// The interface's name; the network with the same name backs it.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// NAT behind the node (QEMU user networking in ironvirt); forwards the listed ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<InterfaceMasquerade>,
    /// Bridged onto a host network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<InterfaceBridge>,
    /// The NIC model: virtio (default), e1000, e1000e, rtl8139, ne2k_pci, pcnet or pcnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The MAC address, for example de:ad:00:00:be:af. Generated when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$"))]
    pub mac_address: Option<String>,
    /// Ports forwarded to the guest (masquerade). Empty forwards nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub ports: Option<Vec<Port>>,
    /// Boot order among disks and interfaces (PXE); 1 boots first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub boot_order: Option<u32>,
    /// Not supported by ironvirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::sriov")]
    pub sriov: Option<Value>,
    /// Not supported by ironvirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::passt")]
    pub passt: Option<Value>,
    /// Not supported by ironvirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::passt")]
    pub slirp: Option<Value>,
    /// Not supported by ironvirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::binding_plugin")]
    pub binding: Option<Value>,
    /// Not supported by ironvirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::macvtap")]
    pub macvtap: Option<Value>,
    /// Not supported by ironvirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::macvtap")]
    pub passt_binding: Option<Value>,
    /// Not supported by ironvirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::pci_address")]
    pub pci_address: Option<String>,
    /// Extra DHCP options. Accepted with a warning: passt's DHCP server does
    /// not send them.
    #[serde(
        rename = "dhcpOptions",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub dhcp_options: Option<DhcpOptions>,
    /// A tag for config-drive metadata. Accepted with a warning: ironvirt has
    /// no config drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The ACPI index (stable NIC naming). Accepted with a warning: not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16383))]
    pub acpi_index: Option<i32>,
    /// The link state: up (default); down and absent are accepted with a
    /// warning and not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<InterfaceState>,
}

/// Masquerade binding; it has no settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceMasquerade {}

/// Bridge binding; it has no settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceBridge {}

/// A port forwarded to the guest.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// A name for the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port number, 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// TCP (default) or UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<PortProtocol>,
}

/// A port's protocol: TCP or UDP.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortProtocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

/// A network the VMI connects to. Set exactly one source: pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.pod) || has(self.multus)").message("a network sets one source: pod"))]
pub struct Network {
    /// The network's name, referenced by an interface.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The default pod network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodNetwork>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::multus")]
    pub multus: Option<Value>,
}

/// The default pod network.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodNetwork {
    /// The guest's IPv4 network behind masquerade, in CIDR form (default 10.0.2.0/24).
    #[serde(
        rename = "vmNetworkCIDR",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub vm_network_cidr: Option<String>,
    /// The guest's IPv6 network behind masquerade, in CIDR form.
    #[serde(
        rename = "vmIPv6NetworkCIDR",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub vm_ipv6_network_cidr: Option<String>,
}
