//! kubevirt.io/v1 API types, KubeVirt defaulting and validation. No I/O.
