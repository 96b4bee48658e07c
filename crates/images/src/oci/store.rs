//! `ImageStore`: fetch an image (registry or `oci:` layout) into the cache, unpacked once per
//! manifest digest, honouring KubeVirt's image pull policies.

use std::path::{Path, PathBuf};

use oci_client::RegistryOperation;

use super::auth::Auth;
use super::cache::Cache;
use super::containerdisk;
use super::error::{ErrorKind, ImageError, KindResult, WithImage};
use super::layout::{Descriptor, Layout};
use super::reference::ImageRef;
use super::registry::{self, ProgressMode, Registry};

/// KubeVirt's `imagePullPolicy` for containerDisks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Ask the registry every time (cheap when the image is cached: only the manifest moves).
    Always,
    /// Use the cached image for this reference if there is one.
    IfNotPresent,
    /// Never touch the network.
    Never,
}

impl PullPolicy {
    /// KubeVirt's default: `Always` for `:latest` (or no tag), else `IfNotPresent`.
    pub fn default_for(reference: &ImageRef) -> PullPolicy {
        if reference.is_latest() {
            PullPolicy::Always
        } else {
            PullPolicy::IfNotPresent
        }
    }
}

/// How to fetch.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Credentials.
    pub auth: Auth,
    /// Registries (`host:port` or `host`) spoken to over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Progress bar or not.
    pub progress: ProgressMode,
    /// Pull policy; `None` means KubeVirt's default for the reference.
    pub policy: Option<PullPolicy>,
}

/// An image present in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledImage {
    /// The reference as given.
    pub reference: String,
    /// `sha256:HEX` of the image manifest (the linux/amd64 one when the reference named an index).
    pub manifest_digest: String,
    /// The unpacked image filesystem (read-only by convention: never write into it).
    pub rootfs: PathBuf,
}

impl PulledImage {
    /// The containerDisk's disk file: `path` inside the image, or the first file under /disk/.
    pub fn container_disk_path(&self, path: Option<&str>) -> Result<PathBuf, ImageError> {
        containerdisk::disk_path_in(&self.rootfs, path).for_image(&self.reference)
    }

    /// A file inside the image (kernelBoot's `kernelPath` / `initrdPath`).
    pub fn file_path(&self, path: &str) -> Result<PathBuf, ImageError> {
        containerdisk::file_path_in(&self.rootfs, path).for_image(&self.reference)
    }
}

/// The image cache, opened on a directory.
#[derive(Clone, Debug)]
pub struct ImageStore {
    cache: Cache,
}

impl ImageStore {
    /// Opens (creating as needed) the cache directory.
    pub fn open(cache_dir: &Path) -> Result<ImageStore, ImageError> {
        let cache =
            Cache::open(cache_dir).for_image(format!("cache {}", cache_dir.display()).as_str())?;
        Ok(ImageStore { cache })
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        self.cache.root()
    }

    /// The underlying cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Makes the image available unpacked and returns where. Works for registry references and
    /// `oci:PATH[:TAG]` layouts.
    pub async fn fetch(
        &self,
        reference: &str,
        opts: &PullOptions,
    ) -> Result<PulledImage, ImageError> {
        let parsed = ImageRef::parse(reference)?;
        let (manifest_digest, rootfs) = match &parsed {
            ImageRef::Layout { path, tag } => self.fetch_layout(path, tag.clone()).await,
            ImageRef::Registry(r) => self.fetch_registry(&parsed, r, opts).await,
        }
        .for_image(reference)?;
        Ok(PulledImage {
            reference: reference.to_string(),
            manifest_digest,
            rootfs,
        })
    }

    async fn fetch_layout(
        &self,
        path: &Path,
        tag: Option<String>,
    ) -> KindResult<(String, PathBuf)> {
        let layout = Layout::open(path)?;
        let cache = self.cache.clone();
        blocking(move || {
            let (digest, manifest) = layout.image_manifest(tag.as_deref())?;
            let open = |d: &Descriptor| -> KindResult<Box<dyn std::io::Read>> {
                Ok(Box::new(layout.open_blob(&d.digest)?))
            };
            let rootfs = cache.unpack(&digest, &manifest.layers, &open)?;
            Ok((digest, rootfs))
        })
        .await
    }

    async fn fetch_registry(
        &self,
        parsed: &ImageRef,
        reference: &oci_client::Reference,
        opts: &PullOptions,
    ) -> KindResult<(String, PathBuf)> {
        let key = parsed.to_string();
        let policy = opts
            .policy
            .unwrap_or_else(|| PullPolicy::default_for(parsed));
        // a digest never changes meaning, so a cached one is good under any policy
        if let Some(d) = reference.digest()
            && let Some(rootfs) = self.cache.rootfs(d)
        {
            return Ok((d.to_string(), rootfs));
        }
        if (policy != PullPolicy::Always || parsed.is_pinned())
            && let Some(d) = self.cache.ref_digest(&key)
            && let Some(rootfs) = self.cache.rootfs(&d)
        {
            return Ok((d, rootfs));
        }
        if policy == PullPolicy::Never {
            return Err(ErrorKind::NotCached);
        }

        let registry = Registry::new(reference, &opts.auth, &opts.insecure_registries);
        registry.login(RegistryOperation::Pull).await?;
        let (bytes, digest, manifest) = registry.resolve().await?;
        self.cache.put_blob(&bytes, &digest)?;
        if let Some(rootfs) = self.cache.rootfs(&digest) {
            self.cache.set_ref(&key, &digest)?;
            return Ok((digest, rootfs));
        }
        let missing: u64 = manifest
            .layers
            .iter()
            .filter(|l| !self.cache.has_blob(&l.digest))
            .map(|l| l.size)
            .sum();
        let bar = registry::progress_bar(opts.progress, missing, &key);
        for layer in &manifest.layers {
            if !self.cache.has_blob(&layer.digest) {
                registry.download(layer, &self.cache, &bar).await?;
            }
        }
        bar.finish_and_clear();
        let cache = self.cache.clone();
        let layers = manifest.layers.clone();
        let manifest_digest = digest.clone();
        let rootfs = blocking(move || {
            let open = |d: &Descriptor| -> KindResult<Box<dyn std::io::Read>> {
                let path = cache.blob_path(&d.digest)?;
                let f = std::fs::File::open(&path).map_err(|e| ErrorKind::io("open", &path, e))?;
                Ok(Box::new(f))
            };
            cache.unpack(&manifest_digest, &layers, &open)
        })
        .await?;
        self.cache.set_ref(&key, &digest)?;
        Ok((digest, rootfs))
    }
}

/// Runs file-heavy work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> KindResult<T> + Send + 'static,
) -> KindResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ErrorKind::Io {
            context: "worker thread".to_string(),
            source: std::io::Error::other(e.to_string()),
        })?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn futures_can_be_spawned() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let opts = PullOptions::default();
        assert_send(&store.fetch("oci:/nonexistent", &opts));
        let push_opts = containerdisk::PushOptions::default();
        assert_send(&containerdisk::push(Path::new("/x"), "r/x", &push_opts));
        assert_send(&containerdisk::build_container_disk(
            Path::new("/x"),
            Path::new("/y"),
            "t",
        ));
    }
}
