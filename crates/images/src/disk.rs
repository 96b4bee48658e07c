//! Disk files through `qemu-img`: copy-on-write overlays over cached images, empty disks,
//! image inspection, and KubeVirt hostDisks.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// The `qemu-img` binary used (overridable with `$KUVIRT_QEMU_IMG`).
fn qemu_img() -> std::ffi::OsString {
    std::env::var_os("KUVIRT_QEMU_IMG").unwrap_or_else(|| "qemu-img".into())
}

/// A disk image format as QEMU names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    /// Raw bytes.
    Raw,
    /// qcow2.
    Qcow2,
    /// Anything else qemu-img recognised (vmdk, vdi, …).
    Other(String),
}

impl DiskFormat {
    /// The name for `-F`, `format=` and `driver=`.
    pub fn as_str(&self) -> &str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Other(s) => s,
        }
    }

    fn from_name(name: &str) -> DiskFormat {
        match name {
            "raw" => DiskFormat::Raw,
            "qcow2" => DiskFormat::Qcow2,
            other => DiskFormat::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `qemu-img info` says about an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Its format.
    pub format: DiskFormat,
    /// Size the guest sees, in bytes.
    pub virtual_size: u64,
    /// Bytes used on the host.
    pub actual_size: Option<u64>,
    /// The backing file, as recorded in the image.
    pub backing: Option<PathBuf>,
    /// The backing file's format, as recorded in the image.
    pub backing_format: Option<DiskFormat>,
}

/// Errors from disk preparation.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// qemu-img could not be started.
    #[error("run qemu-img: {0}")]
    Spawn(io::Error),
    /// qemu-img failed; its stderr, trimmed.
    #[error("qemu-img {action} {path}: {stderr}")]
    QemuImg {
        /// What we asked for.
        action: &'static str,
        /// The image.
        path: String,
        /// What qemu-img said.
        stderr: String,
    },
    /// qemu-img's JSON did not parse.
    #[error("qemu-img info {path}: unexpected output: {detail}")]
    BadInfo {
        /// The image.
        path: String,
        /// The parse error.
        detail: String,
    },
    /// A base image an overlay must not be put on.
    #[error("disk image {path}: {why}")]
    UnsafeBase {
        /// The image.
        path: String,
        /// What is wrong (a backing file, a format other than raw or qcow2).
        why: String,
    },
    /// A hostDisk of type Disk that does not exist.
    #[error("host disk {0}: does not exist")]
    Missing(String),
    /// A hostDisk of type DiskOrCreate that does not exist and has no capacity to create it with.
    #[error("host disk {0}: missing and no capacity given to create it")]
    NoCapacity(String),
    /// A hostDisk path that exists but is not a file.
    #[error("host disk {0}: not a regular file")]
    NotAFile(String),
    /// A file operation.
    #[error("{context} {path}: {source}")]
    Io {
        /// What we did.
        context: &'static str,
        /// On what.
        path: String,
        /// Why it failed.
        source: io::Error,
    },
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

fn run(action: &'static str, path: &Path, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, DiskError> {
    let out = Command::new(qemu_img())
        .args(args)
        .output()
        .map_err(DiskError::Spawn)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        // qemu-img prefixes its messages with "qemu-img: "; we already say who is talking
        let stderr = stderr
            .strip_prefix("qemu-img: ")
            .unwrap_or(stderr)
            .to_string();
        Err(DiskError::QemuImg {
            action,
            path: shown(path),
            stderr,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct InfoJson {
    format: String,
    virtual_size: u64,
    actual_size: Option<u64>,
    backing_filename: Option<String>,
    full_backing_filename: Option<String>,
    backing_filename_format: Option<String>,
    format_specific: Option<FormatSpecific>,
}

#[derive(Deserialize)]
struct FormatSpecific {
    data: Option<FormatData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FormatData {
    data_file: Option<String>,
}

/// `qemu-img info -U --output=json PATH` (works while QEMU has the image open).
pub fn image_info(path: &Path) -> Result<ImageInfo, DiskError> {
    info_json(path).map(|(info, _)| info)
}

/// [`image_info`] and the qcow2 external data file qemu-img reports, if any.
fn info_json(path: &Path) -> Result<(ImageInfo, Option<String>), DiskError> {
    let out = run(
        "info",
        path,
        &[
            "info".as_ref(),
            "-U".as_ref(),
            "--output=json".as_ref(),
            path.as_os_str(),
        ],
    )?;
    let info: InfoJson = serde_json::from_slice(&out).map_err(|e| DiskError::BadInfo {
        path: shown(path),
        detail: e.to_string(),
    })?;
    let data_file = info
        .format_specific
        .and_then(|f| f.data)
        .and_then(|d| d.data_file);
    let info = ImageInfo {
        format: DiskFormat::from_name(&info.format),
        virtual_size: info.virtual_size,
        actual_size: info.actual_size,
        backing: info
            .full_backing_filename
            .or(info.backing_filename)
            .map(PathBuf::from),
        backing_format: info
            .backing_filename_format
            .as_deref()
            .map(DiskFormat::from_name),
    };
    Ok((info, data_file))
}

/// Creates a qcow2 `overlay` backed by `base` (its format detected, its path made canonical), so
/// the guest's writes land in the overlay and `base` (the cached image) is never written. `base`
/// must be raw or a qcow2 without a backing file, as KubeVirt requires of containerDisks.
pub fn create_overlay(base: &Path, overlay: &Path) -> Result<(), DiskError> {
    let base = fs::canonicalize(base)
        .or_else(|_| std::path::absolute(base))
        .map_err(|e| DiskError::Io {
            context: "resolve",
            path: shown(base),
            source: e,
        })?;
    // qemu-img opens a qcow2's external data file, wherever it points: look before it does
    check_qcow2_header(&base)?;
    let (info, data_file) = info_json(&base)?;
    verify_base(&base, &info, data_file.as_deref())?;
    let format = info.format;
    run(
        "create",
        overlay,
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            format.as_str().as_ref(),
            "-b".as_ref(),
            base.as_os_str(),
            overlay.as_os_str(),
        ],
    )?;
    Ok(())
}

/// qcow2's magic, `QFI\xfb`.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Bit of the qcow2 v3 `incompatible_features` field (header offset 72) saying guest data lives
/// in an external data file.
const QCOW2_EXTERNAL_DATA_FILE: u64 = 1 << 2;

/// Refuses a qcow2 whose header asks for an external data file, read from the file itself so
/// that qemu-img never gets to open that data file (cf. CVE-2024-4467). Files that are not
/// qcow2 pass.
fn check_qcow2_header(path: &Path) -> Result<(), DiskError> {
    let io_err = |e| DiskError::Io {
        context: "read header of",
        path: shown(path),
        source: e,
    };
    // a file we cannot open is left for qemu-img to report, in its words
    let Ok(file) = fs::File::open(path) else {
        return Ok(());
    };
    let mut header = Vec::with_capacity(80);
    file.take(80).read_to_end(&mut header).map_err(io_err)?;
    if header.get(..4) != Some(&QCOW2_MAGIC[..]) {
        return Ok(());
    }
    let version = be_u64(&header, 4, 4);
    if version.is_some_and(|v| v < 3) {
        return Ok(()); // version 2 has no feature bits
    }
    match be_u64(&header, 72, 8) {
        Some(features) if features & QCOW2_EXTERNAL_DATA_FILE == 0 => Ok(()),
        Some(_) => Err(unsafe_base(path, "qcow2 has an external data file".into())),
        None => Err(unsafe_base(path, "qcow2 header is truncated".into())),
    }
}

/// The big-endian number in `len` bytes at `at`, if the buffer holds them.
fn be_u64(buf: &[u8], at: usize, len: usize) -> Option<u64> {
    let bytes = buf.get(at..at + len)?;
    Some(bytes.iter().fold(0, |n, b| (n << 8) | u64::from(*b)))
}

fn unsafe_base(path: &Path, why: String) -> DiskError {
    DiskError::UnsafeBase {
        path: shown(path),
        why,
    }
}

/// KubeVirt's rule for containerDisk images: raw, or qcow2 without a backing file (a backing
/// file named inside an image could expose any host file to the guest), and without an external
/// data file (for the same reason).
fn verify_base(path: &Path, info: &ImageInfo, data_file: Option<&str>) -> Result<(), DiskError> {
    let bad = |why: String| unsafe_base(path, why);
    if let Some(d) = data_file {
        return Err(bad(format!("qcow2 has an external data file {d}")));
    }
    match (&info.format, &info.backing) {
        (DiskFormat::Raw, _) | (DiskFormat::Qcow2, None) => Ok(()),
        (DiskFormat::Qcow2, Some(b)) => Err(bad(format!("has a backing file {}", b.display()))),
        (other, _) => Err(bad(format!("unsupported format {other}"))),
    }
}

/// Creates an empty sparse qcow2 of `size_bytes` (KubeVirt's emptyDisk).
pub fn create_empty(path: &Path, size_bytes: u64) -> Result<(), DiskError> {
    let size = size_bytes.to_string();
    run(
        "create",
        path,
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            path.as_os_str(),
            size.as_ref(),
        ],
    )?;
    Ok(())
}

/// KubeVirt's `hostDisk.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostDiskType {
    /// The file must exist.
    Disk,
    /// The file is created (sparse, raw, of `capacity` bytes) when missing.
    DiskOrCreate,
}

/// Checks or creates a hostDisk file and returns its format. hostDisks are raw images, as in
/// KubeVirt (their content is the guest's, so it is never probed: a guest could write a qcow2
/// header into it).
pub fn prepare_host_disk(
    path: &Path,
    kind: HostDiskType,
    capacity: Option<u64>,
) -> Result<DiskFormat, DiskError> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => return Ok(DiskFormat::Raw),
        Ok(_) => return Err(DiskError::NotAFile(shown(path))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(DiskError::Io {
                context: "stat",
                path: shown(path),
                source: e,
            });
        }
    }
    if kind == HostDiskType::Disk {
        return Err(DiskError::Missing(shown(path)));
    }
    let capacity = capacity.ok_or_else(|| DiskError::NoCapacity(shown(path)))?;
    let io_err = |context, source| DiskError::Io {
        context,
        path: shown(path),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| io_err("create directory for", e))?;
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io_err("create", e))?;
    file.set_len(capacity).map_err(|e| io_err("size", e))?;
    Ok(DiskFormat::Raw)
}
