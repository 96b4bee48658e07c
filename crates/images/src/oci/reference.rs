//! Image references: a registry reference (`host:port/repo:tag`, `repo@sha256:…`, docker.io
//! defaults) or a local OCI layout (`oci:/path/to/layout[:tag]`).

use std::fmt;
use std::path::PathBuf;

use oci_client::Reference;

use super::error::{ErrorKind, ImageError};

/// Where an image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// An image in a registry.
    Registry(Reference),
    /// An image in a local OCI layout directory.
    Layout {
        /// The layout directory.
        path: PathBuf,
        /// The tag (`org.opencontainers.image.ref.name`); none means `latest` or the only image.
        tag: Option<String>,
    },
}

impl ImageRef {
    /// Parses `oci:PATH[:TAG]` or a registry reference.
    pub fn parse(s: &str) -> Result<ImageRef, ImageError> {
        let invalid = |why: &str| ImageError::new(s, ErrorKind::InvalidReference(why.to_string()));
        if let Some(rest) = s.strip_prefix("oci:") {
            // a ':' after the last '/' starts the tag
            let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
            let (path, tag) = match rest[last_slash..].rfind(':') {
                Some(i) => {
                    let (p, t) = rest.split_at(last_slash + i);
                    (p, Some(t[1..].to_string()))
                }
                None => (rest, None),
            };
            if path.is_empty() {
                return Err(invalid("empty layout path"));
            }
            if tag.as_deref() == Some("") {
                return Err(invalid("empty tag"));
            }
            return Ok(ImageRef::Layout {
                path: PathBuf::from(path),
                tag,
            });
        }
        s.parse::<Reference>()
            .map(ImageRef::Registry)
            .map_err(|e| invalid(&e.to_string().to_lowercase()))
    }

    /// Whether the reference pins content (a digest): what it names can never change.
    pub fn is_pinned(&self) -> bool {
        matches!(self, ImageRef::Registry(r) if r.digest().is_some())
    }

    /// Whether the tag is `latest` (explicitly or by default), which KubeVirt pulls `Always`.
    pub fn is_latest(&self) -> bool {
        match self {
            ImageRef::Registry(r) => {
                r.digest().is_none() && r.tag().unwrap_or("latest") == "latest"
            }
            ImageRef::Layout { .. } => false,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => write!(f, "{}", r.whole()),
            ImageRef::Layout { path, tag: None } => write!(f, "oci:{}", path.display()),
            ImageRef::Layout { path, tag: Some(t) } => write!(f, "oci:{}:{t}", path.display()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(
            ImageRef::parse("oci:/tmp/l").unwrap(),
            ImageRef::Layout {
                path: "/tmp/l".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("oci:/tmp/a:b/l:v1").unwrap(),
            ImageRef::Layout {
                path: "/tmp/a:b/l".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci:rel").unwrap(),
            ImageRef::Layout {
                path: "rel".into(),
                tag: None
            }
        );
        assert!(ImageRef::parse("oci:").is_err());
        assert!(ImageRef::parse("oci:/x:").is_err());
    }

    #[test]
    fn registries() {
        let r = ImageRef::parse("127.0.0.1:5000/kuvirt/demo:latest").unwrap();
        let ImageRef::Registry(inner) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(inner.registry(), "127.0.0.1:5000");
        assert_eq!(inner.repository(), "kuvirt/demo");
        assert!(r.is_latest() && !r.is_pinned());
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let d = format!("registry.example/ns/img@sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&d).unwrap();
        assert!(r.is_pinned() && !r.is_latest());
        let err = ImageRef::parse("UPPER/Case").unwrap_err().to_string();
        assert!(
            err.starts_with("image UPPER/Case: invalid reference"),
            "{err}"
        );
    }
}
