//! OCI images for containerDisks and kernelBoot containers: references, layouts, the
//! content-addressed cache, registry pull/push, and containerDisk build and lookup.

pub mod auth;
pub mod cache;
pub mod containerdisk;
pub mod digest;
pub mod error;
mod fsutil;
pub mod layout;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use auth::Auth;
pub use containerdisk::{
    BuiltImage, PushOptions, build_container_disk, build_file_image, container_disk_path,
    image_file_path, push,
};
pub use error::{ErrorKind, ImageError};
pub use fsutil::write_atomic;
pub use reference::ImageRef;
pub use registry::ProgressMode;
pub use store::{ImageStore, PullOptions, PullPolicy, PulledImage};
