//! The per-VM launcher: VMI spec → typed QEMU machine → argv; QMP control; consoles.
