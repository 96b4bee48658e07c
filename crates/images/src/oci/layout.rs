//! OCI image layouts on disk (`oci-layout`, `index.json`, `blobs/sha256/HEX`) and the manifest
//! types they hold; every blob read is checked against its digest.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::{self, HashingReader};
use super::error::{ErrorKind, KindResult};
use super::fsutil;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The annotation that names a tag in a layout's index.json.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the content.
    pub media_type: String,
    /// `sha256:HEX`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform (in index entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The platform of an index entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Platform {
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker v2 schema 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// Layers, lowest first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index (OCI index or Docker manifest list; also a layout's index.json).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests.
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A manifest document as fetched: an image manifest or an index pointing at several.
#[derive(Clone, Debug, PartialEq)]
pub enum Document {
    /// One image.
    Image(Manifest),
    /// Several, one per platform.
    Index(Index),
}

impl Document {
    /// Parses manifest bytes; `media_type` (from a descriptor or Content-Type) decides when given,
    /// else the shape of the JSON does.
    pub fn parse(bytes: &[u8], media_type: Option<&str>) -> KindResult<Document> {
        let is_index = match media_type {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            _ => {
                let v: serde_json::Value = serde_json::from_slice(bytes)
                    .map_err(|e| ErrorKind::malformed("manifest", e))?;
                v.get("manifests").is_some()
            }
        };
        if is_index {
            serde_json::from_slice(bytes)
                .map(Document::Index)
                .map_err(|e| ErrorKind::malformed("image index", e))
        } else {
            serde_json::from_slice(bytes)
                .map(Document::Image)
                .map_err(|e| ErrorKind::malformed("manifest", e))
        }
    }
}

/// True for the media types of manifests and indexes.
pub fn is_manifest_type(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_LIST
    )
}

/// The linux/amd64 entry of an index; a lone entry without a platform counts too.
pub fn select_platform(index: &Index) -> KindResult<&Descriptor> {
    let found = index.manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    });
    match (found, index.manifests.as_slice()) {
        (Some(d), _) => Ok(d),
        (None, [only]) if only.platform.is_none() => Ok(only),
        _ => Err(ErrorKind::NoPlatform),
    }
}

/// The tag of an index.json entry.
pub fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations.as_ref()?.get(REF_NAME).map(String::as_str)
}

/// An OCI image layout directory.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Opens an existing layout (it must hold `oci-layout` and `index.json`).
    pub fn open(root: &Path) -> KindResult<Layout> {
        if !root.join("oci-layout").is_file() || !root.join("index.json").is_file() {
            return Err(ErrorKind::NoLayout);
        }
        Ok(Layout {
            root: root.to_path_buf(),
        })
    }

    /// Opens a layout, creating the directory, `oci-layout` and an empty `index.json` as needed.
    pub fn create(root: &Path) -> KindResult<Layout> {
        let blobs = root.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(|e| ErrorKind::io("create", &blobs, e))?;
        let layout = Layout {
            root: root.to_path_buf(),
        };
        let marker = root.join("oci-layout");
        if !marker.is_file() {
            layout.write_file(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        if !root.join("index.json").is_file() {
            layout.write_index(&Index {
                schema_version: 2,
                media_type: Some(OCI_INDEX.to_string()),
                ..Index::default()
            })?;
        }
        Ok(layout)
    }

    /// The layout directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> KindResult<PathBuf> {
        Ok(self
            .root
            .join("blobs/sha256")
            .join(digest::sha256_hex(digest)?))
    }

    /// The parsed `index.json`.
    pub fn index(&self) -> KindResult<Index> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).map_err(|e| ErrorKind::io("read", &path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| ErrorKind::malformed("index.json", e))
    }

    /// The index.json entry for `tag`; with no tag: `latest`, or the only entry.
    pub fn resolve(&self, tag: Option<&str>) -> KindResult<Descriptor> {
        let index = self.index()?;
        let wanted = tag.unwrap_or("latest");
        if let Some(d) = index.manifests.iter().find(|d| ref_name(d) == Some(wanted)) {
            return Ok(d.clone());
        }
        match (tag, index.manifests.as_slice()) {
            (None, [only]) => Ok(only.clone()),
            _ => Err(ErrorKind::NoTag(wanted.to_string())),
        }
    }

    /// The image manifest for `tag` (see [`Layout::resolve`]), going through a nested index to
    /// linux/amd64; returns its digest too.
    pub fn image_manifest(&self, tag: Option<&str>) -> KindResult<(String, Manifest)> {
        let mut desc = self.resolve(tag)?;
        for _ in 0..4 {
            let bytes = self.read_blob(&desc.digest)?;
            match Document::parse(&bytes, Some(&desc.media_type))? {
                Document::Image(m) => return Ok((desc.digest, m)),
                Document::Index(i) => desc = select_platform(&i)?.clone(),
            }
        }
        Err(ErrorKind::malformed("image index", "nested too deep"))
    }

    /// A whole blob, checked against its digest. For manifests and configs, not layers.
    pub fn read_blob(&self, digest: &str) -> KindResult<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let bytes = fs::read(&path).map_err(|e| ErrorKind::io("read blob", &path, e))?;
        digest::verify_bytes(&bytes, digest)?;
        Ok(bytes)
    }

    /// Hashes a blob from disk in a stream and fails unless it matches its digest.
    pub fn verify_blob(&self, digest: &str) -> KindResult<u64> {
        let path = self.blob_path(digest)?;
        let f = fs::File::open(&path).map_err(|e| ErrorKind::io("open blob", &path, e))?;
        let (actual, size) = HashingReader::new(f)
            .finish()
            .map_err(|e| ErrorKind::io("read blob", &path, e))?;
        if actual != digest {
            return Err(ErrorKind::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(size)
    }

    /// Opens a blob for streaming; the caller checks the digest (see [`HashingReader`]).
    pub fn open_blob(&self, digest: &str) -> KindResult<impl Read + use<>> {
        let path = self.blob_path(digest)?;
        fs::File::open(&path).map_err(|e| ErrorKind::io("open blob", &path, e))
    }

    /// Stores bytes as a blob; returns its descriptor with `media_type`.
    pub fn write_blob(&self, bytes: &[u8], media_type: &str) -> KindResult<Descriptor> {
        let digest = digest::digest_of(bytes);
        let path = self.blob_path(&digest)?;
        if !path.is_file() {
            self.write_file(&path, bytes)?;
        }
        Ok(Descriptor {
            media_type: media_type.to_string(),
            digest,
            size: bytes.len() as u64,
            platform: None,
            annotations: None,
        })
    }

    /// A fresh temp file path inside the layout (same filesystem as the blobs, for renames).
    pub fn temp_path(&self) -> PathBuf {
        self.root.join("blobs").join(fsutil::unique_name(".tmp"))
    }

    /// Moves a finished temp file into place as the blob `digest` (the caller hashed it).
    pub fn commit_blob(&self, tmp: &Path, digest: &str) -> KindResult<()> {
        let path = self.blob_path(digest)?;
        fs::rename(tmp, &path).map_err(|e| ErrorKind::io("rename", &path, e))
    }

    /// Points `tag` at `manifest` in index.json, replacing an entry with the same tag.
    pub fn set_tag(&self, manifest: &Descriptor, tag: &str) -> KindResult<()> {
        let mut index = self.index()?;
        index.manifests.retain(|d| ref_name(d) != Some(tag));
        let mut entry = manifest.clone();
        entry
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(REF_NAME.to_string(), tag.to_string());
        index.manifests.push(entry);
        self.write_index(&index)
    }

    fn write_index(&self, index: &Index) -> KindResult<()> {
        let bytes = serde_json::to_vec(index).map_err(|e| ErrorKind::malformed("index.json", e))?;
        self.write_file(&self.root.join("index.json"), &bytes)
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> KindResult<()> {
        fsutil::write_atomic(path, bytes, &self.root).map_err(|e| ErrorKind::io("write", path, e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn manifest_desc(layout: &Layout, layer: &[u8]) -> Descriptor {
        let config = layout.write_blob(b"{}", OCI_CONFIG).unwrap();
        let layer = layout.write_blob(layer, OCI_LAYER_GZIP).unwrap();
        let m = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_string()),
            config,
            layers: vec![layer],
            annotations: None,
        };
        layout
            .write_blob(&serde_json::to_vec(&m).unwrap(), OCI_MANIFEST)
            .unwrap()
    }

    #[test]
    fn tags_resolve_and_blobs_verify() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let a = manifest_desc(&layout, b"a");
        layout.set_tag(&a, "v1").unwrap();
        // one entry: no tag picks it
        assert_eq!(layout.resolve(None).unwrap().digest, a.digest);
        let b = manifest_desc(&layout, b"b");
        layout.set_tag(&b, "latest").unwrap();
        assert_eq!(layout.resolve(None).unwrap().digest, b.digest);
        assert_eq!(layout.resolve(Some("v1")).unwrap().digest, a.digest);
        assert!(matches!(
            layout.resolve(Some("v2")),
            Err(ErrorKind::NoTag(_))
        ));
        let (digest, m) = layout.image_manifest(Some("v1")).unwrap();
        assert_eq!(digest, a.digest);
        assert_eq!(m.layers.len(), 1);

        // retag replaces
        layout.set_tag(&a, "latest").unwrap();
        assert_eq!(layout.index().unwrap().manifests.len(), 2);

        // corrupt a blob: reading it fails
        let path = layout.blob_path(&m.config.digest).unwrap();
        fs::write(&path, b"{\"x\":1}").unwrap();
        assert!(matches!(
            layout.read_blob(&m.config.digest),
            Err(ErrorKind::DigestMismatch { .. })
        ));
        assert!(layout.verify_blob(&m.config.digest).is_err());
    }

    #[test]
    fn missing_layout() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Layout::open(&dir.path().join("nope")),
            Err(ErrorKind::NoLayout)
        ));
    }

    #[test]
    fn platform_selection() {
        let d = |os: &str, arch: &str| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: None,
            }),
            annotations: None,
        };
        let mut idx = Index {
            schema_version: 2,
            manifests: vec![d("linux", "arm64"), d("linux", "amd64")],
            ..Index::default()
        };
        assert_eq!(
            select_platform(&idx)
                .unwrap()
                .platform
                .as_ref()
                .unwrap()
                .architecture,
            "amd64"
        );
        idx.manifests.remove(1);
        assert!(matches!(select_platform(&idx), Err(ErrorKind::NoPlatform)));
    }
}
