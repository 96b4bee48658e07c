//! The per-VM launcher: VMI spec → typed QEMU machine → argv; QMP control; consoles.

pub mod accel;
pub mod console;
pub mod machine;
pub mod qmp;
pub mod render;
pub mod vm;
