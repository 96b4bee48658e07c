//! Network bindings of a VM's pod interface: the DHCP server the bridge and masquerade bindings
//! use, and the masquerade binding's set-up inside the pod's namespace.

pub mod dhcp;
pub mod masquerade;
pub mod nft;
