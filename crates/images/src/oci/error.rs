//! The one error type of the OCI image code: which image, and what went wrong with it, as one line.

use std::fmt;
use std::io;
use std::path::Path;

/// An error about one image, displayed as `image REF: WHAT`.
#[derive(Debug, thiserror::Error)]
#[error("image {image}: {kind}")]
pub struct ImageError {
    /// The image reference as the user wrote it (or a rootfs path when no reference is known).
    pub image: String,
    /// What went wrong.
    pub kind: ErrorKind,
}

/// What went wrong with an image.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The reference does not parse.
    #[error("invalid reference: {0}")]
    InvalidReference(String),
    /// No TCP connection to the registry (refused, timed out, DNS).
    #[error("registry unreachable: {0}")]
    Unreachable(String),
    /// The registry does not know this repository, tag or digest.
    #[error("not found in registry")]
    NotFound,
    /// The registry refused our credentials (or asked for some).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Any other registry answer we cannot use.
    #[error("registry: {0}")]
    Registry(String),
    /// `oci:PATH` does not name an OCI image layout.
    #[error("no such layout")]
    NoLayout,
    /// The layout has no manifest for the tag.
    #[error("no manifest tagged {0:?} in layout")]
    NoTag(String),
    /// An image index without a linux/amd64 manifest.
    #[error("no linux/amd64 manifest in image index")]
    NoPlatform,
    /// A manifest, index or config that is not what the OCI spec describes.
    #[error("bad {what}: {detail}")]
    Malformed {
        /// Which document.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A blob whose content does not hash to its digest.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the manifest names.
        expected: String,
        /// The digest of what we read.
        actual: String,
    },
    /// A digest we cannot handle (only sha256 is supported).
    #[error("unsupported digest {0:?}")]
    UnsupportedDigest(String),
    /// A layer media type we cannot unpack.
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),
    /// A layer entry that would land outside the rootfs, or is otherwise unsafe.
    #[error("unsafe path in layer: {0}")]
    UnsafePath(String),
    /// A containerDisk without a file under /disk/.
    #[error("no file under /disk/")]
    NoDiskFile,
    /// A path asked for (containerDisk.path, kernelPath, initrdPath) that is not a regular file.
    #[error("no file {0} in image")]
    NoSuchFile(String),
    /// The pull policy forbids the network and the cache lacks the image.
    #[error("not in cache and pull policy is Never")]
    NotCached,
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, naming the path.
        context: String,
        /// The OS error.
        source: io::Error,
    },
}

impl ImageError {
    /// An error about `image`.
    pub fn new(image: impl fmt::Display, kind: ErrorKind) -> Self {
        ImageError {
            image: image.to_string(),
            kind,
        }
    }
}

impl ErrorKind {
    /// An I/O error while doing `what` on `path`.
    pub fn io(what: &str, path: &Path, source: io::Error) -> Self {
        ErrorKind::Io {
            context: format!("{what} {}", path.display()),
            source,
        }
    }

    /// A malformed document.
    pub fn malformed(what: &'static str, detail: impl fmt::Display) -> Self {
        ErrorKind::Malformed {
            what,
            detail: detail.to_string(),
        }
    }
}

/// Result of the inner functions, whose errors get the image name attached by the caller.
pub type KindResult<T> = Result<T, ErrorKind>;

/// Attaches an image name to an inner error.
pub(crate) trait WithImage<T> {
    fn for_image(self, image: &str) -> Result<T, ImageError>;
}

impl<T> WithImage<T> for KindResult<T> {
    fn for_image(self, image: &str) -> Result<T, ImageError> {
        self.map_err(|kind| ImageError::new(image, kind))
    }
}
