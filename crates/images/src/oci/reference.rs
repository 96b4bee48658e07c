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
        parse_registry(s).map(ImageRef::Registry).map_err(invalid)
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

/// Parses a registry reference by the distribution grammar (`[domain/]path[:tag][@digest]`,
/// docker.io's defaults), without a regex: the `oci-spec` parser compiles one that keeps about
/// 12 MiB resident in every process that ever parsed a reference, each launcher included.
fn parse_registry(s: &str) -> Result<Reference, &'static str> {
    if s.is_empty() {
        return Err("empty reference");
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    // A ':' after the last '/' starts the tag.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if !valid_name(name) {
        return Err("invalid reference format");
    }
    if tag.is_some_and(|t| !valid_tag(t)) {
        return Err("invalid tag");
    }
    if let Some(d) = digest {
        check_digest(d)?;
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > 255 {
        return Err("repository name must not be more than 255 characters");
    }
    let (tag, digest) = (tag.map(str::to_string), digest.map(str::to_string));
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t, d),
        (None, Some(d)) => Reference::with_digest(registry, repository, d),
        (t, None) => {
            Reference::with_tag(registry, repository, t.unwrap_or_else(|| "latest".into()))
        }
    })
}

/// `[domain/]component(/component)*`: the domain is optional, so a name is valid either way.
fn valid_name(name: &str) -> bool {
    let path = |p: &str| p.split('/').all(path_component);
    path(name)
        || name
            .split_once('/')
            .is_some_and(|(d, rest)| domain(d) && path(rest))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `host(.host)*(:port)?`, each host label alphanumeric with inner dashes.
fn domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|x| x.is_ascii_digit()))
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|x| word(*x) || *x == b'.' || *x == b'-')
}

/// `algorithm:hex` with the hex length of sha256, sha384 or sha512.
fn check_digest(d: &str) -> Result<(), &'static str> {
    let (algo, hex) = d.split_once(':').ok_or("invalid digest format")?;
    if hex.len() < 32 || !hex.bytes().all(|x| x.is_ascii_hexdigit()) {
        return Err("invalid digest format");
    }
    let want = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() != want {
        return Err("invalid checksum digest length");
    }
    Ok(())
}

/// The registry and repository of a valid name: the first component is a registry when it looks
/// like a host (a dot, a port or `localhost`); else docker.io, whose single names are `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut rest) = match name.split_once('/') {
        Some((d, r)) if d.contains('.') || d.contains(':') || d == "localhost" => {
            (d.to_string(), r.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".into();
    }
    if domain == "docker.io" && !rest.contains('/') {
        rest = format!("library/{rest}");
    }
    (domain, rest)
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
        for (given, registry, repository, tag) in [
            (
                "test.com:5000",
                "docker.io",
                "library/test.com",
                Some("5000"),
            ),
            (
                "localhost:5000/foo",
                "localhost:5000",
                "foo",
                Some("latest"),
            ),
            (
                "foo/foo_bar.com:8080",
                "docker.io",
                "foo/foo_bar.com",
                Some("8080"),
            ),
            (
                "index.docker.io/a/b__c-d.e:T_1.2-x",
                "docker.io",
                "a/b__c-d.e",
                Some("T_1.2-x"),
            ),
            (
                "quay.io/kubevirt/cirros-container-disk-demo",
                "quay.io",
                "kubevirt/cirros-container-disk-demo",
                Some("latest"),
            ),
        ] {
            let ImageRef::Registry(r) = ImageRef::parse(given).unwrap() else {
                panic!("{given}")
            };
            assert_eq!(
                (r.registry(), r.repository(), r.tag()),
                (registry, repository, tag),
                "{given}"
            );
        }
        let both = format!("r.io/a:v1@sha256:{}", "b".repeat(64));
        let ImageRef::Registry(r) = ImageRef::parse(&both).unwrap() else {
            panic!()
        };
        assert_eq!((r.tag(), r.digest().map(str::len)), (Some("v1"), Some(71)));
        for bad in [
            "",
            "a//b",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "a:",
            "a:-x",
            "h.io:/x",
            "h.io:5x/y",
            "a@sha256:abc",
            "a@md5:0123456789abcdef0123456789abcdef",
            "a b",
            "ä",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ImageRef::parse(&format!("a:{}", "t".repeat(129))).is_err());
        let err = ImageRef::parse("UPPER/Case").unwrap_err().to_string();
        assert!(
            err.starts_with("image UPPER/Case: invalid reference"),
            "{err}"
        );
    }
}
