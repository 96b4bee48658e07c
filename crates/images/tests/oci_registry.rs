//! containerDisks through a real `docker-registry` on 127.0.0.1: push, pull, cache hits,
//! image indexes, `oci:` layouts, and the errors a user sees.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use kuvirt_images::oci::layout::{self, Descriptor, Platform};
use kuvirt_images::oci::registry::Registry;
use kuvirt_images::oci::{
    ImageStore, ProgressMode, PullOptions, PullPolicy, PushOptions, build_container_disk, push,
};
use sha2::{Digest, Sha256};

/// A docker-registry process on a free loopback port, storing into a temp dir; killed on drop.
struct TestRegistry {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    fn start() -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut reg = TestRegistry {
            child: Some(child),
            port,
            _dir: dir,
        };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let log = fs::read_to_string(self._dir.path().join("registry.log")).unwrap();
                panic!("docker-registry exited with {status}: {log}");
            }
            if http_status(self.port, "/v2/") == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry not ready on /v2/"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status code of a plain HTTP GET, or None when nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).ok()?;
    std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()
}

/// A small real qcow2 with a recognisable byte pattern in it.
fn fake_qcow2(dir: &Path) -> PathBuf {
    let path = dir.join("fake.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg("64M")
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[0x5a; 100_000]).unwrap();
    path
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(p).unwrap()))
}

fn blob_mtimes(cache: &Path) -> Vec<(PathBuf, SystemTime)> {
    let mut v: Vec<_> = fs::read_dir(cache.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path(), e.metadata().unwrap().modified().unwrap())
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_and_cache_hits() {
    let mut reg = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let disk = fake_qcow2(work.path());
    let reference = format!("{}/kuvirt/demo:latest", reg.host());

    let pushed = push(&disk, &reference, &PushOptions::default())
        .await
        .unwrap();
    // pushing again is idempotent (blobs exist) and gives the same digest (reproducible layer)
    let again = push(&disk, &reference, &PushOptions::default())
        .await
        .unwrap();
    assert_eq!(pushed, again);

    let cache = work.path().join("cache");
    let store = ImageStore::open(&cache).unwrap();
    let pulled = store
        .fetch(&reference, &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, pushed);
    let in_image = pulled.container_disk_path(None).unwrap();
    assert_eq!(in_image, pulled.rootfs.join("disk/fake.qcow2"));
    assert_eq!(sha256_file(&in_image), sha256_file(&disk));
    assert_eq!(
        kuvirt_images::disk::image_info(&in_image).unwrap().format,
        kuvirt_images::disk::DiskFormat::Qcow2
    );
    let mtimes = blob_mtimes(&cache);
    assert!(mtimes.len() >= 2, "manifest and layer blobs are cached");

    // second pull of :latest (policy Always) only re-reads the manifest
    let second = store
        .fetch(&reference, &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(second, pulled);
    assert_eq!(blob_mtimes(&cache), mtimes);

    // no registry: a digest reference and IfNotPresent both come from the cache
    reg.stop();
    let by_digest = format!("{}/kuvirt/demo@{pushed}", reg.host());
    let offline = store
        .fetch(&by_digest, &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(offline.rootfs, pulled.rootfs);
    let if_not_present = PullOptions {
        policy: Some(PullPolicy::IfNotPresent),
        ..PullOptions::default()
    };
    let offline = store.fetch(&reference, &if_not_present).await.unwrap();
    assert_eq!(offline.rootfs, pulled.rootfs);
    // Always must ask the registry, which is gone
    let err = store
        .fetch(&reference, &PullOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("image {reference}: registry unreachable: connection refused")
    );
    // Never with an unknown reference
    let never = PullOptions {
        policy: Some(PullPolicy::Never),
        ..PullOptions::default()
    };
    let err = store
        .fetch(&format!("{}/other:v1", reg.host()), &never)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with(": not in cache and pull policy is Never"),
        "{err}"
    );
    assert_eq!(fs::read_dir(cache.join("tmp")).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_share_one_cache() {
    let reg = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let disk = fake_qcow2(work.path());
    let reference = format!("{}/kuvirt/concurrent:v1", reg.host());
    push(&disk, &reference, &PushOptions::default())
        .await
        .unwrap();
    let cache = work.path().join("cache");
    let a = ImageStore::open(&cache).unwrap();
    let b = ImageStore::open(&cache).unwrap();
    let opts = PullOptions::default();
    let (ra, rb) = tokio::join!(a.fetch(&reference, &opts), b.fetch(&reference, &opts));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.rootfs, rb.rootfs);
    assert_eq!(
        sha256_file(&ra.container_disk_path(None).unwrap()),
        sha256_file(&disk)
    );
    assert_eq!(fs::read_dir(cache.join("tmp")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(cache.join("rootfs")).unwrap().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_index_selects_linux_amd64() {
    let reg = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let disk = fake_qcow2(work.path());
    let layout_dir = work.path().join("layout");
    build_container_disk(&disk, &layout_dir, "latest")
        .await
        .unwrap();
    let amd64 = format!("{}/kuvirt/multi:amd64", reg.host());
    let digest = push(&layout_dir, &amd64, &PushOptions::default())
        .await
        .unwrap();
    let size = layout::Layout::open(&layout_dir)
        .unwrap()
        .read_blob(&digest)
        .unwrap()
        .len() as u64;

    // an index whose first entry is arm64 and second our amd64 image
    let entry = |arch: &str, digest: &str| Descriptor {
        media_type: layout::OCI_MANIFEST.to_string(),
        digest: digest.to_string(),
        size,
        platform: Some(Platform {
            architecture: arch.to_string(),
            os: "linux".to_string(),
            variant: None,
        }),
        annotations: None,
    };
    let amd = entry("amd64", &digest);
    let arm = entry("arm64", &digest);
    let index = layout::Index {
        schema_version: 2,
        media_type: Some(layout::OCI_INDEX.to_string()),
        manifests: vec![arm, amd],
        annotations: None,
    };
    let multi = format!("{}/kuvirt/multi:latest", reg.host());
    let r = Registry::new(&multi.parse().unwrap(), &Default::default(), &[]);
    r.login(oci_client::RegistryOperation::Push).await.unwrap();
    r.put_manifest(serde_json::to_vec(&index).unwrap(), layout::OCI_INDEX)
        .await
        .unwrap();

    let store = ImageStore::open(&work.path().join("cache")).unwrap();
    let pulled = store.fetch(&multi, &PullOptions::default()).await.unwrap();
    assert_eq!(pulled.manifest_digest, digest);
    assert_eq!(
        sha256_file(
            &pulled
                .container_disk_path(Some("/disk/fake.qcow2"))
                .unwrap()
        ),
        sha256_file(&disk)
    );
}

#[tokio::test]
async fn missing_image_and_unreachable_registry_read_well() {
    let reg = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(work.path()).unwrap();
    let missing = format!("{}/kuvirt/nope:latest", reg.host());
    let err = store
        .fetch(&missing, &PullOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, format!("image {missing}: not found in registry"));

    let closed = format!("127.0.0.1:{}/x:latest", free_port());
    let started = Instant::now();
    let err = store
        .fetch(&closed, &PullOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("image {closed}: registry unreachable: connection refused")
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let err = push(
        &work.path().join("absent.qcow2"),
        &closed,
        &PushOptions::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("absent.qcow2"), "{err}");
}

#[tokio::test]
async fn local_oci_layouts() {
    let work = tempfile::tempdir().unwrap();
    let disk = fake_qcow2(work.path());
    let layout_dir = work.path().join("layout");
    let built = build_container_disk(&disk, &layout_dir, "v1")
        .await
        .unwrap();
    let store = ImageStore::open(&work.path().join("cache")).unwrap();

    // one image in the layout: no tag needed
    let plain = format!("oci:{}", layout_dir.display());
    let pulled = store.fetch(&plain, &PullOptions::default()).await.unwrap();
    assert_eq!(pulled.manifest_digest, built.manifest_digest);
    let in_image = pulled.container_disk_path(None).unwrap();
    assert_eq!(sha256_file(&in_image), sha256_file(&disk));
    let meta = fs::metadata(&in_image).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o444
    );

    // a second tag: the bare reference now wants `latest`
    let other = work.path().join("other.img");
    fs::write(&other, vec![7u8; 4096]).unwrap();
    build_container_disk(&other, &layout_dir, "v2")
        .await
        .unwrap();
    let err = store
        .fetch(&plain, &PullOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("image {plain}: no manifest tagged \"latest\" in layout")
    );
    let v2 = store
        .fetch(&format!("{plain}:v2"), &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(
        v2.container_disk_path(None).unwrap(),
        v2.rootfs.join("disk/other.img")
    );
    let err = v2
        .container_disk_path(Some("/disk/fake.qcow2"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("image {plain}:v2: no file /disk/fake.qcow2 in image")
    );

    let err = store
        .fetch("oci:/tmp/nope", &PullOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, "image oci:/tmp/nope: no such layout");

    // an image without /disk/
    let empty_layout = work.path().join("empty");
    let l = layout::Layout::create(&empty_layout).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    tar.append_data(&mut h, "etc/hi", &b"hi"[..]).unwrap();
    let layer = l
        .write_blob(
            &tar.into_inner().unwrap(),
            "application/vnd.oci.image.layer.v1.tar",
        )
        .unwrap();
    let config = l.write_blob(b"{}", layout::OCI_CONFIG).unwrap();
    let manifest = layout::Manifest {
        schema_version: 2,
        media_type: Some(layout::OCI_MANIFEST.to_string()),
        config,
        layers: vec![layer],
        annotations: None,
    };
    let m = l
        .write_blob(
            &serde_json::to_vec(&manifest).unwrap(),
            layout::OCI_MANIFEST,
        )
        .unwrap();
    l.set_tag(&m, "latest").unwrap();
    let r = format!("oci:{}", empty_layout.display());
    let pulled = store.fetch(&r, &PullOptions::default()).await.unwrap();
    let err = pulled.container_disk_path(None).unwrap_err().to_string();
    assert_eq!(err, format!("image {r}: no file under /disk/"));
    assert!(pulled.file_path("/etc/hi").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_a_layout_then_pull_it() {
    let reg = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let disk = fake_qcow2(work.path());
    let layout_dir = work.path().join("layout");
    let built = build_container_disk(&disk, &layout_dir, "v3")
        .await
        .unwrap();
    let reference = format!("{}/kuvirt/fromlayout:v3", reg.host());
    let opts = PushOptions {
        source_tag: Some("v3".to_string()),
        progress: ProgressMode::Bar,
        ..PushOptions::default()
    };
    let digest = push(&layout_dir, &reference, &opts).await.unwrap();
    assert_eq!(digest, built.manifest_digest);
    let store = ImageStore::open(&work.path().join("cache")).unwrap();
    let bar = PullOptions {
        progress: ProgressMode::Bar,
        ..PullOptions::default()
    };
    let pulled = store.fetch(&reference, &bar).await.unwrap();
    assert_eq!(pulled.manifest_digest, digest);
    assert_eq!(
        sha256_file(&pulled.container_disk_path(None).unwrap()),
        sha256_file(&disk)
    );
}

/// How the fake registry answers a blob GET.
#[derive(Clone, Copy)]
enum Hostile {
    /// Streams (without a length) far more than declared, until the client hangs up.
    Endless,
    /// Says up front that the body is longer than declared.
    LongHeader,
}

/// A one-trick registry on 127.0.0.1: `/v2/` answers 200, any blob GET answers as `mode` says.
/// Returns the port and the count of body bytes it managed to send.
fn hostile_registry(mode: Hostile) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                if !path.contains("/blobs/") {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                    return;
                }
                let chunk = vec![0x5au8; 64 * 1024];
                let head = match mode {
                    Hostile::Endless => "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n".to_string(),
                    Hostile::LongHeader => format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", 1u64 << 30),
                };
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                // a cap, so that a client that never stops still ends the test (1 GiB)
                for _ in 0..(1 << 14) {
                    if conn.write_all(&chunk).is_err() {
                        return;
                    }
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (port, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_stop_at_the_declared_size() {
    use kuvirt_images::oci::cache::Cache;
    use kuvirt_images::oci::registry::progress_bar;
    for mode in [Hostile::Endless, Hostile::LongHeader] {
        let (port, sent) = hostile_registry(mode);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let reference = format!("127.0.0.1:{port}/evil/disk:latest");
        let registry = Registry::new(&reference.parse().unwrap(), &Default::default(), &[]);
        let desc = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: format!("sha256:{}", hex_sha256(&[0x5a; 1000])),
            size: 1000,
            platform: None,
            annotations: None,
        };
        let bar = progress_bar(ProgressMode::Silent, desc.size, "evil");
        let err = registry.download(&desc, &cache, &bar).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "registry: download {}: registry sent more than the 1000 bytes the manifest declares",
                desc.digest
            )
        );
        assert!(!cache.has_blob(&desc.digest));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // the client hung up long before the server's 1 GiB cap
        let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(sent < 256 << 20, "server sent {sent} bytes");
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
