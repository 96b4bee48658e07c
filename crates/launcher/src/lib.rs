//! The per-VM launcher: VMI spec → typed QEMU machine → argv; QMP control; consoles.

pub mod accel;
pub mod console;
pub mod convert;
pub mod machine;
pub mod metadata;
pub mod migration;
pub mod network;
pub mod prepare;
pub mod protocol;
pub mod qmp;
pub mod render;
pub mod session;
pub mod vm;
