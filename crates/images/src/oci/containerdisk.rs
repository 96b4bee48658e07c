//! containerDisks: build one (an OCI layout whose single layer holds `disk/NAME`, owned 107:107
//! like KubeVirt's), push a layout or a disk to a registry, and find the disk, kernel or initrd
//! inside an unpacked image.

use std::ffi::OsString;
use std::fs;
use std::io::BufWriter;
use std::path::{Component, Path, PathBuf};

use oci_client::RegistryOperation;

use super::auth::Auth;
use super::digest::HashingWriter;
use super::error::{ErrorKind, ImageError, KindResult, WithImage};
use super::fsutil::{self, remove_any};
use super::layout::{Descriptor, Layout, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Platform};
use super::reference::ImageRef;
use super::registry::{self, ProgressMode, Registry};
use super::store::blocking;
use super::unpack;

/// KubeVirt's qemu user and group (the owner of containerDisk files).
pub const QEMU_UID: u64 = 107;

/// A containerDisk written into a layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// The layout directory.
    pub layout: PathBuf,
    /// The tag it carries in index.json.
    pub tag: String,
    /// `sha256:HEX` of its manifest.
    pub manifest_digest: String,
}

/// Writes `disk` as a containerDisk image tagged `tag` into the OCI layout `out_layout` (created
/// if needed; other tags are kept). The layer is deterministic: the same disk gives the same digest.
pub async fn build_container_disk(
    disk: &Path,
    out_layout: &Path,
    tag: &str,
) -> Result<BuiltImage, ImageError> {
    let name = disk.file_name().map(|n| n.to_string_lossy().into_owned());
    let Some(name) = name else {
        return Err(ImageError::new(
            format!("oci:{}:{tag}", out_layout.display()),
            ErrorKind::NoSuchFile(disk.display().to_string()),
        ));
    };
    build_file_image(
        &[(disk.to_path_buf(), format!("disk/{name}"))],
        out_layout,
        tag,
    )
    .await
}

/// Writes an image whose single layer holds `files` (host path, path inside the image, e.g.
/// `boot/vmlinuz`; parent directories are added) — what a kernelBoot container carries. Owned by
/// KubeVirt's qemu user, read-only, mtime 0: the same files give the same digest.
pub async fn build_file_image(
    files: &[(PathBuf, String)],
    out_layout: &Path,
    tag: &str,
) -> Result<BuiltImage, ImageError> {
    let shown = format!("oci:{}:{tag}", out_layout.display());
    let files = files.to_vec();
    let out = out_layout.to_path_buf();
    let tag_owned = tag.to_string();
    let digest = blocking(move || build_blocking(&files, &out, &tag_owned))
        .await
        .for_image(&shown)?;
    Ok(BuiltImage {
        layout: out_layout.to_path_buf(),
        tag: tag.to_string(),
        manifest_digest: digest,
    })
}

fn build_blocking(files: &[(PathBuf, String)], out: &Path, tag: &str) -> KindResult<String> {
    let mut entries = Vec::new();
    for (src, dest) in files {
        let meta = fs::metadata(src).map_err(|e| ErrorKind::io("stat", src, e))?;
        if !meta.is_file() {
            return Err(ErrorKind::NoSuchFile(src.display().to_string()));
        }
        let dest = dest.trim_start_matches('/');
        if dest.is_empty()
            || dest
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(ErrorKind::NoSuchFile(format!("/{dest}")));
        }
        entries.push((src.as_path(), dest, meta.len()));
    }
    let layout = Layout::create(out)?;
    let tmp = layout.temp_path();
    let result = write_layer(&entries, &tmp);
    let (layer_digest, layer_size, diff_id) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    layout.commit_blob(&tmp, &layer_digest)?;

    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    let config = layout.write_blob(config.to_string().as_bytes(), OCI_CONFIG)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [Descriptor {
            media_type: OCI_LAYER_GZIP.to_string(),
            digest: layer_digest,
            size: layer_size,
            platform: None,
            annotations: None,
        }],
    });
    let mut desc = layout.write_blob(manifest.to_string().as_bytes(), OCI_MANIFEST)?;
    desc.platform = Some(Platform {
        architecture: "amd64".to_string(),
        os: "linux".to_string(),
        variant: None,
    });
    layout.set_tag(&desc, tag)?;
    Ok(desc.digest)
}

/// Writes tar+gzip of the entries (host path, image path, size) and their parent directories to
/// `tmp`; returns (blob digest, blob size, diff id).
fn write_layer(entries: &[(&Path, &str, u64)], tmp: &Path) -> KindResult<(String, u64, String)> {
    let io = |e| ErrorKind::io("write layer", tmp, e);
    let file = fs::File::create(tmp).map_err(io)?;
    let compressed = HashingWriter::new(BufWriter::new(file));
    let gz = flate2::GzBuilder::new().write(compressed, flate2::Compression::fast());
    let mut tar = tar::Builder::new(HashingWriter::new(gz));

    let mut dirs = std::collections::BTreeSet::new();
    for (_, dest, _) in entries {
        let mut parent = Path::new(dest).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_path_buf());
            parent = p.parent();
        }
    }
    for d in &dirs {
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o555);
        dir.set_uid(QEMU_UID);
        dir.set_gid(QEMU_UID);
        dir.set_mtime(0);
        dir.set_size(0);
        tar.append_data(&mut dir, d, std::io::empty()).map_err(io)?;
    }

    for (src, dest, size) in entries {
        let mut file_header = tar::Header::new_gnu();
        file_header.set_entry_type(tar::EntryType::Regular);
        file_header.set_mode(0o444);
        file_header.set_uid(QEMU_UID);
        file_header.set_gid(QEMU_UID);
        file_header.set_mtime(0);
        file_header.set_size(*size);
        let file = fs::File::open(src).map_err(|e| ErrorKind::io("open", src, e))?;
        tar.append_data(&mut file_header, dest, file.take_exact(*size))
            .map_err(io)?;
    }

    let uncompressed = tar.into_inner().map_err(io)?;
    let (gz, diff_id, _) = uncompressed.finish();
    let compressed = gz.finish().map_err(io)?;
    let (buf, digest, blob_size) = compressed.finish();
    let file = buf.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok((digest, blob_size, diff_id))
}

/// Reads exactly `n` bytes or fails (a disk that changes size while we tar it must not produce a
/// corrupt archive).
trait TakeExact: std::io::Read + Sized {
    fn take_exact(self, n: u64) -> ExactReader<Self> {
        ExactReader {
            inner: self,
            left: n,
        }
    }
}
impl<R: std::io::Read> TakeExact for R {}

struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: std::io::Read> std::io::Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "disk shrank while being read",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// How to push.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Credentials.
    pub auth: Auth,
    /// Registries (`host:port` or `host`) spoken to over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Progress bar or not.
    pub progress: ProgressMode,
    /// Which tag of a source layout to push; none means `latest` or the only image.
    pub source_tag: Option<String>,
}

/// Pushes `source` to registry `reference` and returns the manifest digest. `source` is an OCI
/// layout directory, or a disk file, which is first built into a containerDisk (in a temp layout
/// next to the system temp dir, removed afterwards).
pub async fn push(
    source: &Path,
    reference: &str,
    opts: &PushOptions,
) -> Result<String, ImageError> {
    let target = match ImageRef::parse(reference)? {
        ImageRef::Registry(r) => r,
        ImageRef::Layout { .. } => {
            return Err(ImageError::new(
                reference,
                ErrorKind::InvalidReference("push needs a registry reference".to_string()),
            ));
        }
    };
    if source.is_dir() {
        let layout = Layout::open(source)
            .map_err(|k| ImageError::new(format!("oci:{}", source.display()), k))?;
        return push_layout(&layout, &target, opts)
            .await
            .for_image(reference);
    }
    let tmp = std::env::temp_dir().join(fsutil::unique_name("kuvirt-push"));
    let result = async {
        build_container_disk(source, &tmp, "latest").await?;
        let layout = Layout::open(&tmp).for_image(reference)?;
        let pushed = PushOptions {
            source_tag: None,
            ..opts.clone()
        };
        push_layout(&layout, &target, &pushed)
            .await
            .for_image(reference)
    }
    .await;
    let _ = remove_any(&tmp);
    result
}

async fn push_layout(
    layout: &Layout,
    target: &oci_client::Reference,
    opts: &PushOptions,
) -> KindResult<String> {
    let (digest, manifest) = layout.image_manifest(opts.source_tag.as_deref())?;
    let manifest_bytes = layout.read_blob(&digest)?;
    let media_type = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    let registry = Registry::new(target, &opts.auth, &opts.insecure_registries);
    registry.login(RegistryOperation::Push).await?;
    let total = manifest.layers.iter().map(|l| l.size).sum();
    let bar = registry::progress_bar(opts.progress, total, &target.whole());
    for layer in &manifest.layers {
        registry
            .upload(layer, &layout.blob_path(&layer.digest)?, &bar)
            .await?;
    }
    bar.finish_and_clear();
    registry
        .upload_bytes(
            layout.read_blob(&manifest.config.digest)?,
            &manifest.config.digest,
        )
        .await?;
    registry.put_manifest(manifest_bytes, &media_type).await?;
    Ok(digest)
}

/// The containerDisk's disk inside an unpacked image: `path` (containerDisk.path) if given, else
/// the first regular file under /disk/ by name. Errors name `rootfs` as the image; prefer
/// [`super::PulledImage::container_disk_path`], which names the reference.
pub fn container_disk_path(rootfs: &Path, path: Option<&str>) -> Result<PathBuf, ImageError> {
    disk_path_in(rootfs, path).for_image(&rootfs.display().to_string())
}

/// A regular file inside an unpacked image (kernelBoot's kernelPath/initrdPath), resolved so
/// that symlinks in the image cannot point outside it.
pub fn image_file_path(rootfs: &Path, path: &str) -> Result<PathBuf, ImageError> {
    file_path_in(rootfs, path).for_image(&rootfs.display().to_string())
}

pub(crate) fn disk_path_in(rootfs: &Path, path: Option<&str>) -> KindResult<PathBuf> {
    if let Some(p) = path {
        return file_path_in(rootfs, p);
    }
    let dir = unpack::resolve(rootfs, &[OsString::from("disk")], false)
        .map_err(|_| ErrorKind::NoDiskFile)?;
    let mut names: Vec<OsString> = match fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect(),
        Err(_) => return Err(ErrorKind::NoDiskFile),
    };
    names.sort();
    names
        .into_iter()
        .find_map(|n| {
            let rel = format!("/disk/{}", n.to_string_lossy());
            file_path_in(rootfs, &rel).ok()
        })
        .ok_or(ErrorKind::NoDiskFile)
}

pub(crate) fn file_path_in(rootfs: &Path, path: &str) -> KindResult<PathBuf> {
    let parts: Vec<OsString> = Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    let missing = || ErrorKind::NoSuchFile(path.to_string());
    if parts.is_empty() {
        return Err(missing());
    }
    let resolved = unpack::resolve_file(rootfs, &parts).map_err(|_| missing())?;
    match fs::symlink_metadata(&resolved) {
        Ok(m) if m.is_file() => Ok(resolved),
        _ => Err(missing()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_first_disk_file_and_named_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let none = disk_path_in(root, None).unwrap_err();
        assert!(matches!(none, ErrorKind::NoDiskFile));
        fs::create_dir_all(root.join("disk/sub")).unwrap();
        assert!(matches!(
            disk_path_in(root, None),
            Err(ErrorKind::NoDiskFile)
        ));
        fs::write(root.join("disk/b.qcow2"), b"b").unwrap();
        fs::write(root.join("disk/a.img"), b"a").unwrap();
        assert_eq!(disk_path_in(root, None).unwrap(), root.join("disk/a.img"));
        assert_eq!(
            disk_path_in(root, Some("/disk/b.qcow2")).unwrap(),
            root.join("disk/b.qcow2")
        );
        // symlinks resolve inside the image, never to the host
        std::os::unix::fs::symlink("/etc/hostname", root.join("boot")).unwrap();
        let err = image_file_path(root, "/boot").unwrap_err().to_string();
        assert!(err.ends_with(": no file /boot in image"), "{err}");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/hostname"), b"img").unwrap();
        assert_eq!(
            image_file_path(root, "/boot").unwrap(),
            root.join("etc/hostname")
        );
        assert!(image_file_path(root, "/../../etc/hostname").is_ok());
        assert!(image_file_path(root, "/disk").is_err());
    }
}
