//! Disks and images: OCI containerDisks, qcow2 overlays, cloud-init disks, the demo guest.
pub mod cloudinit;
pub mod demo;
pub mod disk;
pub mod oci;
