//! The content-addressed image cache: `blobs/sha256/HEX` (written through a temp file and a rename
//! once the digest checks out), `rootfs/sha256-HEX/` (an image unpacked once, keyed by its manifest
//! digest), `refs/` (which manifest a reference last resolved to). Concurrent writers of the same
//! content are harmless: the first rename wins and the others drop their copy. Whatever a pull
//! that died left in `tmp/` is swept when the cache is next opened, once it is an hour old.

use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::digest::{self, HashingReader, HashingWriter};
use super::error::{ErrorKind, KindResult};
use super::fsutil::{self, remove_any, unique_name};
use super::layout::Descriptor;
use super::unpack::{self, Compression};

/// How long an untouched entry of `tmp/` may be in use by a pull in another process: blobs
/// grow and rootfs trees fill while they are worked on, so anything older was abandoned.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// An image cache directory.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens (creating as needed) the cache at `root`.
    pub fn open(root: &Path) -> KindResult<Cache> {
        for sub in ["blobs/sha256", "rootfs", "refs", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|e| ErrorKind::io("create", &dir, e))?;
        }
        let cache = Cache {
            root: root.to_path_buf(),
        };
        cache.sweep_tmp(STALE_TMP);
        Ok(cache)
    }

    /// Removes entries of `tmp/` (interrupted downloads and unpacks) in which nothing was
    /// modified for `older_than`. Failures are logged, not returned: the cache works without.
    pub fn sweep_tmp(&self, older_than: Duration) {
        let tmp = self.root.join("tmp");
        let Ok(entries) = fs::read_dir(&tmp) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let path = entry.path();
            let stale = newest_mtime(&path)
                .is_some_and(|t| now.duration_since(t).is_ok_and(|age| age > older_than));
            if stale {
                match remove_any(&path) {
                    Ok(()) => tracing::debug!(path = %path.display(), "removed stale temp entry"),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove stale temp entry")
                    }
                }
            }
        }
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where blob `digest` lives.
    pub fn blob_path(&self, digest: &str) -> KindResult<PathBuf> {
        Ok(self
            .root
            .join("blobs/sha256")
            .join(digest::sha256_hex(digest)?))
    }

    /// Whether blob `digest` is stored (stored blobs were verified when written).
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// A writer for blob `expected`; nothing is visible until [`BlobWriter::commit`] verifies it.
    pub fn blob_writer(&self, expected: &str) -> KindResult<BlobWriter> {
        let dest = self.blob_path(expected)?;
        let tmp = self.root.join("tmp").join(unique_name("blob"));
        let file = fs::File::create(&tmp).map_err(|e| ErrorKind::io("create", &tmp, e))?;
        Ok(BlobWriter {
            inner: Some(HashingWriter::new(BufWriter::new(file))),
            tmp,
            dest,
            expected: expected.to_string(),
        })
    }

    /// Stores small bytes (a manifest) as blob `expected`.
    pub fn put_blob(&self, bytes: &[u8], expected: &str) -> KindResult<()> {
        digest::verify_bytes(bytes, expected)?;
        let dest = self.blob_path(expected)?;
        if dest.is_file() {
            return Ok(());
        }
        fsutil::write_atomic(&dest, bytes, &self.root.join("tmp"))
            .map_err(|e| ErrorKind::io("write", &dest, e))
    }

    /// A stored blob, read whole and checked again (for manifests).
    pub fn read_blob(&self, digest: &str) -> KindResult<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let bytes = fs::read(&path).map_err(|e| ErrorKind::io("read", &path, e))?;
        digest::verify_bytes(&bytes, digest)?;
        Ok(bytes)
    }

    /// Where the unpacked image with this manifest digest lives.
    pub fn rootfs_path(&self, manifest_digest: &str) -> KindResult<PathBuf> {
        let hex = digest::sha256_hex(manifest_digest)?;
        Ok(self.root.join("rootfs").join(format!("sha256-{hex}")))
    }

    /// The unpacked image, if it is there.
    pub fn rootfs(&self, manifest_digest: &str) -> Option<PathBuf> {
        self.rootfs_path(manifest_digest)
            .ok()
            .filter(|p| p.is_dir())
    }

    /// Unpacks `layers` (in order) into `rootfs/sha256-HEX/` unless already there. `open` gives
    /// each layer's bytes; every layer is checked against its digest while it is unpacked, and a
    /// failure leaves nothing behind.
    pub fn unpack(
        &self,
        manifest_digest: &str,
        layers: &[Descriptor],
        open: &dyn Fn(&Descriptor) -> KindResult<Box<dyn Read>>,
    ) -> KindResult<PathBuf> {
        let dest = self.rootfs_path(manifest_digest)?;
        if dest.is_dir() {
            return Ok(dest);
        }
        let tmp = self.root.join("tmp").join(unique_name("rootfs"));
        fs::create_dir(&tmp).map_err(|e| ErrorKind::io("create", &tmp, e))?;
        let result = (|| {
            for layer in layers {
                let compression = Compression::for_media_type(&layer.media_type)?;
                let mut reader = HashingReader::new(open(layer)?);
                unpack::apply_layer(&tmp, &mut reader, compression)?;
                let (actual, _) = reader
                    .finish()
                    .map_err(|e| ErrorKind::malformed("layer", e))?;
                if actual != layer.digest {
                    return Err(ErrorKind::DigestMismatch {
                        expected: layer.digest.clone(),
                        actual,
                    });
                }
            }
            fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| ErrorKind::io("chmod", &tmp, e))
        })();
        if let Err(e) = result {
            let _ = remove_any(&tmp);
            return Err(e);
        }
        match fs::rename(&tmp, &dest) {
            Ok(()) => Ok(dest),
            // another pull of the same image finished first: use theirs
            Err(_) if dest.is_dir() => {
                let _ = remove_any(&tmp);
                Ok(dest)
            }
            Err(e) => {
                let _ = remove_any(&tmp);
                Err(ErrorKind::io("rename", &dest, e))
            }
        }
    }

    /// The manifest digest `reference` resolved to last time, if known.
    pub fn ref_digest(&self, reference: &str) -> Option<String> {
        let text = fs::read_to_string(self.ref_path(reference)).ok()?;
        let digest = text.lines().next()?.to_string();
        digest::sha256_hex(&digest).ok()?;
        Some(digest)
    }

    /// Records that `reference` resolved to `manifest_digest`.
    pub fn set_ref(&self, reference: &str, manifest_digest: &str) -> KindResult<()> {
        let path = self.ref_path(reference);
        let text = format!("{manifest_digest}\n{reference}\n");
        fsutil::write_atomic(&path, text.as_bytes(), &self.root.join("tmp"))
            .map_err(|e| ErrorKind::io("write", &path, e))
    }

    fn ref_path(&self, reference: &str) -> PathBuf {
        let key = digest::digest_of(reference.as_bytes());
        self.root.join("refs").join(&key["sha256:".len()..])
    }
}

/// The latest modification time in a tree (symlinks not followed); None when unreadable.
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = fs::symlink_metadata(path).ok()?;
    let mut newest = meta.modified().ok()?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).ok()? {
            newest = newest.max(newest_mtime(&entry.ok()?.path())?);
        }
    }
    Some(newest)
}

/// A blob being written into the cache; dropped without commit, it leaves nothing.
pub struct BlobWriter {
    inner: Option<HashingWriter<BufWriter<fs::File>>>,
    tmp: PathBuf,
    dest: PathBuf,
    expected: String,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.inner.as_ref().map_or(0, HashingWriter::count)
    }

    /// Checks the digest and moves the blob into place.
    pub fn commit(mut self) -> KindResult<()> {
        let Some(inner) = self.inner.take() else {
            return Err(ErrorKind::malformed("blob", "already committed"));
        };
        let (buf, actual, _) = inner.finish();
        let file = buf
            .into_inner()
            .map_err(|e| ErrorKind::io("write", &self.tmp, e.into_error()))?;
        file.sync_all()
            .map_err(|e| ErrorKind::io("sync", &self.tmp, e))?;
        drop(file);
        if actual != self.expected {
            return Err(ErrorKind::DigestMismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        fs::rename(&self.tmp, &self.dest).map_err(|e| ErrorKind::io("rename", &self.dest, e))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.inner.as_mut() {
            Some(w) => w.write(buf),
            None => Err(io::Error::other("blob already committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.inner.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // after a successful commit the temp file was renamed away and this is a no-op
        let _ = fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_before_they_appear() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let good = digest::digest_of(b"hello");
        let mut w = cache.blob_writer(&good).unwrap();
        w.write_all(b"hellO").unwrap();
        assert!(matches!(w.commit(), Err(ErrorKind::DigestMismatch { .. })));
        assert!(!cache.has_blob(&good));
        let mut w = cache.blob_writer(&good).unwrap();
        w.write_all(b"hello").unwrap();
        w.commit().unwrap();
        assert!(cache.has_blob(&good));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn refs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = digest::digest_of(b"m");
        assert_eq!(cache.ref_digest("r/x:latest"), None);
        cache.set_ref("r/x:latest", &d).unwrap();
        assert_eq!(cache.ref_digest("r/x:latest"), Some(d));
    }

    #[test]
    fn bad_layer_leaves_no_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let layer = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: digest::digest_of(b"not this"),
            size: 0,
            platform: None,
            annotations: None,
        };
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "disk/x", &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let m = digest::digest_of(b"manifest");
        let err = cache
            .unpack(&m, &[layer], &|_| {
                Ok(Box::new(io::Cursor::new(tar.clone())))
            })
            .unwrap_err();
        assert!(matches!(err, ErrorKind::DigestMismatch { .. }));
        assert!(cache.rootfs(&m).is_none());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn open_sweeps_stale_temp_entries_only() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        let old = SystemTime::now() - Duration::from_secs(2 * 3600);
        let age = |p: &Path| {
            fs::File::open(p).unwrap().set_modified(old).unwrap();
        };
        // an abandoned download and an abandoned unpack, wholly old
        fs::write(tmp.join("blob.1.1.0"), b"partial").unwrap();
        age(&tmp.join("blob.1.1.0"));
        fs::create_dir_all(tmp.join("rootfs.1.1.1/disk")).unwrap();
        fs::write(tmp.join("rootfs.1.1.1/disk/d.img"), b"x").unwrap();
        for p in [
            "rootfs.1.1.1/disk/d.img",
            "rootfs.1.1.1/disk",
            "rootfs.1.1.1",
        ] {
            age(&tmp.join(p));
        }
        // a download in progress, and an unpack whose directory is old but still being filled
        fs::write(tmp.join("blob.2.2.0"), b"growing").unwrap();
        fs::create_dir_all(tmp.join("rootfs.2.2.1/disk")).unwrap();
        fs::write(tmp.join("rootfs.2.2.1/disk/d.img"), b"x").unwrap();
        for p in ["rootfs.2.2.1/disk", "rootfs.2.2.1"] {
            age(&tmp.join(p));
        }

        Cache::open(dir.path()).unwrap();
        let mut left: Vec<_> = fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["blob.2.2.0", "rootfs.2.2.1"]);
        assert!(tmp.join("rootfs.2.2.1/disk/d.img").is_file());
    }
}
