//! Network bindings of a VM's pod interface; today the DHCP server the bridge and masquerade bindings use.

pub mod dhcp;
