//! `spec.networks[]` and `spec.domain.devices.interfaces[]`: where a NIC connects and how it binds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Extra;

/// `spec.networks[]`: exactly one of `pod`, `multus` (Go's inlined `NetworkSource`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multus: Option<MultusNetwork>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Network {
    /// KubeVirt's default network: `{name: default, pod: {}}`.
    pub fn default_pod() -> Self {
        Self {
            name: DEFAULT_NETWORK_NAME.to_owned(),
            pod: Some(PodNetwork::default()),
            ..Self::default()
        }
    }
}

/// Name of the network and interface KubeVirt adds by default.
pub const DEFAULT_NETWORK_NAME: &str = "default";

/// `networks[].pod`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodNetwork {
    /// IPv4 CIDR for the VM with masquerade binding (KubeVirt default 10.0.2.0/24).
    #[serde(
        default,
        rename = "vmNetworkCIDR",
        skip_serializing_if = "Option::is_none"
    )]
    pub vm_network_cidr: Option<String>,
    /// IPv6 CIDR for the VM with masquerade binding (KubeVirt default fd10:0:2::/120).
    #[serde(
        default,
        rename = "vmIPv6NetworkCIDR",
        skip_serializing_if = "Option::is_none"
    )]
    pub vm_ipv6_network_cidr: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `networks[].multus`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MultusNetwork {
    /// `name` or `namespace/name` of a NetworkAttachmentDefinition.
    #[serde(default)]
    pub network_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

string_enum! {
    /// Desired link state of an interface.
    InterfaceState {
        Up = "up",
        Down = "down",
        Absent = "absent",
    }
}

/// `spec.domain.devices.interfaces[]`. `name` refers to a network. Exactly one binding:
/// `bridge`, `masquerade`, `passt`, `passt_binding`, `sriov` or `binding` (a plugin).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    #[serde(default)]
    pub name: String,
    /// e1000, e1000e, igb, ne2k_pci, pcnet, rtl8139 or virtio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<InterfaceBridge>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<InterfaceMasquerade>,
    /// KubeVirt's older core passt binding (discontinued upstream in v1.3; kuvirt implements it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passt: Option<InterfacePasst>,
    /// KubeVirt's current core passt binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passt_binding: Option<InterfacePasst>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov: Option<InterfaceSRIOV>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<PluginBinding>,
    /// Only forward these ports (masquerade); empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
    /// `dddd:bb:dd.f`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
    #[serde(
        default,
        rename = "dhcpOptions",
        skip_serializing_if = "Option::is_none"
    )]
    pub dhcp_options: Option<DHCPOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acpi_index: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<InterfaceState>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The binding of an [`Interface`], for code that matches on it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InterfaceBindingRef<'a> {
    Bridge,
    Masquerade,
    /// `passt` or `passtBinding`.
    Passt,
    Sriov,
    Plugin(&'a PluginBinding),
}

impl Interface {
    /// KubeVirt's default interface with masquerade binding (see `defaults` for why masquerade).
    pub fn default_masquerade() -> Self {
        Self {
            name: DEFAULT_NETWORK_NAME.to_owned(),
            masquerade: Some(InterfaceMasquerade::default()),
            ..Self::default()
        }
    }

    /// Every binding set on this interface, in a fixed order (valid interfaces have one).
    pub fn bindings(&self) -> Vec<InterfaceBindingRef<'_>> {
        let mut out = Vec::new();
        if self.bridge.is_some() {
            out.push(InterfaceBindingRef::Bridge);
        }
        if self.masquerade.is_some() {
            out.push(InterfaceBindingRef::Masquerade);
        }
        if self.passt.is_some() || self.passt_binding.is_some() {
            out.push(InterfaceBindingRef::Passt);
        }
        if self.sriov.is_some() {
            out.push(InterfaceBindingRef::Sriov);
        }
        if let Some(p) = &self.binding {
            out.push(InterfaceBindingRef::Plugin(p));
        }
        out
    }

    /// The binding, if exactly one is set.
    pub fn binding_method(&self) -> Option<InterfaceBindingRef<'_>> {
        match self.bindings().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

/// `interfaces[].bridge`: the guest NIC is bridged to the pod interface.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct InterfaceBridge {
    #[serde(flatten)]
    pub extra: Extra,
}

/// `interfaces[].masquerade`: NAT behind the pod IP, DHCP from the launcher.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct InterfaceMasquerade {
    #[serde(flatten)]
    pub extra: Extra,
}

/// `interfaces[].passt` / `interfaces[].passtBinding`: user-mode networking through passt.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct InterfacePasst {
    #[serde(flatten)]
    pub extra: Extra,
}

/// `interfaces[].sriov`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct InterfaceSRIOV {
    #[serde(flatten)]
    pub extra: Extra,
}

/// `interfaces[].binding`: a network binding plugin by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginBinding {
    #[serde(default)]
    pub name: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `interfaces[].ports[]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// TCP (default) or UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port: i32,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `interfaces[].dhcpOptions`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DHCPOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_file_name: Option<String>,
    #[serde(
        default,
        rename = "tftpServerName",
        skip_serializing_if = "Option::is_none"
    )]
    pub tftp_server_name: Option<String>,
    #[serde(default, rename = "ntpServers", skip_serializing_if = "Vec::is_empty")]
    pub ntp_servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_options: Vec<DHCPPrivateOptions>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `dhcpOptions.privateOptions[]`: option code 224..=254 and its value.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DHCPPrivateOptions {
    #[serde(default)]
    pub option: i32,
    #[serde(default)]
    pub value: String,
    #[serde(flatten)]
    pub extra: Extra,
}
