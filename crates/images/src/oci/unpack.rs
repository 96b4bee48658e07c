//! Applies image layers (tar, optionally gzip or zstd compressed) onto a rootfs directory:
//! whiteouts, and no entry may land outside the rootfs (no `..`, no absolute paths, symlinks
//! resolved inside the rootfs). Ownership is not kept (everything belongs to us), so files are
//! made readable and directories traversable by all: QEMU, running as another user, must read a
//! containerDisk whatever mode the image gave it. Nothing is ever writable by group or others.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use super::error::{ErrorKind, KindResult};
use super::fsutil::remove_any;

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// tar+gzip.
    Gzip,
    /// tar+zstd.
    Zstd,
}

impl Compression {
    /// The compression a layer media type implies.
    pub fn for_media_type(media_type: &str) -> KindResult<Compression> {
        let m = media_type;
        if m.ends_with("tar+gzip") || m.ends_with("tar.gzip") || m.ends_with("tar.gz") {
            Ok(Compression::Gzip)
        } else if m.ends_with("tar+zstd") {
            Ok(Compression::Zstd)
        } else if m.ends_with(".tar") || m.ends_with("diff.tar") {
            Ok(Compression::None)
        } else {
            Err(ErrorKind::UnsupportedMediaType(media_type.to_string()))
        }
    }
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const MAX_SYMLINK_HOPS: usize = 40;

/// Applies one layer read from `blob` onto `root`.
pub fn apply_layer(root: &Path, blob: &mut dyn Read, compression: Compression) -> KindResult<()> {
    let stream: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(blob)
                .map_err(|e| ErrorKind::malformed("zstd layer", e))?,
        ),
    };
    let mut archive = tar::Archive::new(stream);
    let bad_tar = |e: io::Error| ErrorKind::malformed("layer tar", e);
    let mut this_layer = HashSet::new();
    for entry in archive.entries().map_err(bad_tar)? {
        let mut entry = entry.map_err(bad_tar)?;
        let raw = entry.path().map_err(bad_tar)?.into_owned();
        apply_entry(root, &raw, &mut entry, &mut this_layer)?;
    }
    Ok(())
}

/// The path of an entry as plain names, or an error for anything that could leave the root.
fn clean_path(raw: &Path) -> KindResult<Vec<OsString>> {
    let unsafe_path = || ErrorKind::UnsafePath(raw.display().to_string());
    let mut out = Vec::new();
    for c in raw.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_path());
            }
        }
    }
    Ok(out)
}

fn apply_entry<R: Read>(
    root: &Path,
    raw: &Path,
    entry: &mut tar::Entry<'_, R>,
    this_layer: &mut HashSet<PathBuf>,
) -> KindResult<()> {
    let mut parts = clean_path(raw)?;
    let Some(name) = parts.pop() else {
        return Ok(()); // the archive's own "./"
    };
    let io_err = |what: &str, p: &Path, e| ErrorKind::io(what, p, e);
    let header = entry.header();
    let kind = header.entry_type();
    // no setuid/setgid/sticky bits, no write for group or others
    let mode = header.mode().unwrap_or(0o644) & 0o755;

    // Whiteouts delete what lower layers put there; they never create anything.
    let name_bytes = name.as_bytes();
    if name == OPAQUE {
        let dir = resolve(root, &parts, false)?;
        return clear_opaque(&dir, this_layer).map_err(|e| io_err("whiteout", &dir, e));
    }
    if let Some(target) = name_bytes.strip_prefix(WHITEOUT.as_bytes()) {
        let target = OsStr::from_bytes(target);
        if target.is_empty() || target == "." || target == ".." || target.as_bytes().contains(&b'/')
        {
            return Err(ErrorKind::UnsafePath(raw.display().to_string()));
        }
        let dir = resolve(root, &parts, false)?;
        let victim = dir.join(target);
        return remove_any(&victim).map_err(|e| io_err("whiteout", &victim, e));
    }

    let parent = resolve(root, &parts, true)?;
    let dest = parent.join(&name);
    match kind {
        EntryType::Directory => {
            match fs::symlink_metadata(&dest) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    remove_any(&dest).map_err(|e| io_err("replace", &dest, e))?;
                    fs::create_dir(&dest).map_err(|e| io_err("create", &dest, e))?;
                }
                Err(_) => fs::create_dir(&dest).map_err(|e| io_err("create", &dest, e))?,
            }
            fs::set_permissions(&dest, fs::Permissions::from_mode(dir_mode(mode)))
                .map_err(|e| io_err("chmod", &dest, e))?;
        }
        EntryType::Regular | EntryType::Continuous => {
            remove_any(&dest).map_err(|e| io_err("replace", &dest, e))?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dest)
                .map_err(|e| io_err("create", &dest, e))?;
            io::copy(entry, &mut f).map_err(|e| io_err("write", &dest, e))?;
            f.set_permissions(fs::Permissions::from_mode(file_mode(mode)))
                .map_err(|e| io_err("chmod", &dest, e))?;
        }
        EntryType::Symlink => {
            let target = entry
                .link_name()
                .map_err(|e| ErrorKind::malformed("layer tar", e))?
                .ok_or_else(|| ErrorKind::malformed("layer tar", "symlink without target"))?;
            remove_any(&dest).map_err(|e| io_err("replace", &dest, e))?;
            std::os::unix::fs::symlink(&target, &dest).map_err(|e| io_err("symlink", &dest, e))?;
        }
        EntryType::Link => {
            let target = entry
                .link_name()
                .map_err(|e| ErrorKind::malformed("layer tar", e))?
                .ok_or_else(|| ErrorKind::malformed("layer tar", "hard link without target"))?;
            let mut tparts = clean_path(&target)?;
            let tname = tparts
                .pop()
                .ok_or_else(|| ErrorKind::UnsafePath(target.display().to_string()))?;
            let source = resolve(root, &tparts, false)?.join(tname);
            remove_any(&dest).map_err(|e| io_err("replace", &dest, e))?;
            fs::hard_link(&source, &dest).map_err(|e| io_err("link", &dest, e))?;
        }
        _ => {
            tracing::debug!(path = %raw.display(), ?kind, "skipping layer entry of unsupported type");
            return Ok(());
        }
    }
    this_layer.insert(dest);
    Ok(())
}

/// A directory's mode in the rootfs: ours to fill, traversable by all.
fn dir_mode(tar_mode: u32) -> u32 {
    tar_mode | 0o700 | 0o555
}

/// A regular file's mode in the rootfs: readable by all (the tar's owner, e.g. uid 107 for a
/// KubeVirt containerDisk, is not kept).
fn file_mode(tar_mode: u32) -> u32 {
    tar_mode | 0o444
}

/// An opaque directory hides everything lower layers put in it; keep what this layer added.
fn clear_opaque(dir: &Path, this_layer: &HashSet<PathBuf>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if !this_layer.contains(&path) {
            remove_any(&path)?;
        }
    }
    Ok(())
}

/// Resolves `parts` (plain names) below `root` as if `root` were `/`: symlinks are followed but
/// can never lead outside `root` (`..` stops at `root`, absolute targets restart at `root`).
/// With `create`, missing directories are made (mode 0755). Every component must be a directory.
pub fn resolve(root: &Path, parts: &[OsString], create: bool) -> KindResult<PathBuf> {
    resolve_inner(root, parts, create, false)
}

/// Like [`resolve`] without creating anything, and the last component may be a file (a symlink
/// there is followed too, inside `root`).
pub fn resolve_file(root: &Path, parts: &[OsString]) -> KindResult<PathBuf> {
    resolve_inner(root, parts, false, true)
}

fn resolve_inner(
    root: &Path,
    parts: &[OsString],
    create: bool,
    file_last: bool,
) -> KindResult<PathBuf> {
    let shown = || {
        parts
            .iter()
            .map(|p| p.to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut done: Vec<OsString> = Vec::new();
    let mut todo: VecDeque<OsString> = parts.iter().cloned().collect();
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        if part == "." || part.is_empty() {
            continue;
        }
        if part == ".." {
            done.pop();
            continue;
        }
        let here = join(root, &done).join(&part);
        match fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(ErrorKind::UnsafePath(format!(
                        "{}: too many symlinks",
                        shown()
                    )));
                }
                let target =
                    fs::read_link(&here).map_err(|e| ErrorKind::io("readlink", &here, e))?;
                if target.is_absolute() {
                    done.clear();
                }
                let mut front: Vec<OsString> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_os_string()),
                        Component::ParentDir => Some(OsString::from("..")),
                        _ => None,
                    })
                    .collect();
                while let Some(c) = front.pop() {
                    todo.push_front(c);
                }
            }
            Ok(m) if m.is_dir() => done.push(part),
            Ok(_) if file_last && todo.is_empty() => done.push(part),
            Ok(_) => {
                return Err(ErrorKind::UnsafePath(format!(
                    "{}: {} is not a directory",
                    shown(),
                    part.to_string_lossy()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if create {
                    fs::create_dir(&here).map_err(|e| ErrorKind::io("create", &here, e))?;
                }
                done.push(part);
            }
            Err(e) => return Err(ErrorKind::io("stat", &here, e)),
        }
    }
    Ok(join(root, &done))
}

fn join(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(parts);
    p
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8]),
        Link(&'a str, &'a str),
        Hard(&'a str, &'a str),
    }

    /// Builds a tar by hand so that even paths `tar::Builder` refuses (`..`, absolute) can be written.
    fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_old();
            let (path, data): (&str, &[u8]) = match e {
                E::Dir(p) => {
                    h.set_entry_type(EntryType::Directory);
                    h.set_mode(0o755);
                    (p, b"")
                }
                E::File(p, d) => {
                    h.set_entry_type(EntryType::Regular);
                    h.set_mode(0o644);
                    (p, d)
                }
                E::Link(p, t) | E::Hard(p, t) => {
                    h.set_entry_type(if matches!(e, E::Link(..)) {
                        EntryType::Symlink
                    } else {
                        EntryType::Link
                    });
                    h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
                    (p, b"")
                }
            };
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn apply(root: &Path, entries: &[E<'_>]) -> KindResult<()> {
        apply_layer(root, &mut &tar_of(entries)[..], Compression::None)
    }

    #[test]
    fn rejects_parent_and_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let err = apply(&root, &[E::File("../escaped", b"x")]).unwrap_err();
        assert!(matches!(err, ErrorKind::UnsafePath(_)), "{err}");
        assert!(!dir.path().join("escaped").exists());
        let err = apply(&root, &[E::File("disk/../../escaped", b"x")]).unwrap_err();
        assert!(matches!(err, ErrorKind::UnsafePath(_)), "{err}");
        let err = apply(&root, &[E::File("/etc/escaped", b"x")]).unwrap_err();
        assert!(matches!(err, ErrorKind::UnsafePath(_)), "{err}");
        let err = apply(&root, &[E::Hard("x", "../outside")]).unwrap_err();
        assert!(matches!(err, ErrorKind::UnsafePath(_)), "{err}");
    }

    #[test]
    fn symlinks_cannot_lead_outside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        // a symlink to an absolute host path, and one climbing out with ..; writing through
        // them must stay inside the root
        apply(
            &root,
            &[
                E::Link("abs", outside.to_str().unwrap()),
                E::Link("rel", "../../outside"),
                E::File("abs/a", b"1"),
                E::File("rel/b", b"2"),
            ],
        )
        .unwrap();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        let inside = join(&root, &[]).join(outside.strip_prefix("/").unwrap());
        assert_eq!(fs::read(inside.join("a")).unwrap(), b"1");
        assert_eq!(fs::read(root.join("outside/b")).unwrap(), b"2");
        // a file replacing a symlink replaces the link, not its target
        apply(
            &root,
            &[E::Link("f", "/etc/hostname"), E::File("f", b"mine")],
        )
        .unwrap();
        assert!(fs::symlink_metadata(root.join("f")).unwrap().is_file());
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        apply(
            root,
            &[
                E::Dir("d"),
                E::File("d/a", b"a"),
                E::File("d/b", b"b"),
                E::Dir("o"),
                E::File("o/old", b"o"),
                E::File("top", b"t"),
            ],
        )
        .unwrap();
        apply(
            root,
            &[
                E::File("d/.wh.a", b""),
                E::File(".wh.top", b""),
                E::Dir("o"),
                E::File("o/new", b"n"),
                E::File("o/.wh..wh..opq", b""),
                E::Hard("d/c", "d/b"),
            ],
        )
        .unwrap();
        assert!(!root.join("d/a").exists());
        assert!(root.join("d/b").exists());
        assert_eq!(fs::read(root.join("d/c")).unwrap(), b"b");
        assert!(!root.join("top").exists());
        assert!(!root.join("o/old").exists());
        assert!(root.join("o/new").exists());
        assert!(!root.join("o/.wh..wh..opq").exists());
        let err = apply(root, &[E::File("d/.wh...", b"")]).unwrap_err();
        assert!(matches!(err, ErrorKind::UnsafePath(_)));
    }

    #[test]
    fn gzip_and_zstd_media_types() {
        assert_eq!(
            Compression::for_media_type("application/vnd.oci.image.layer.v1.tar+gzip").unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            Compression::for_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip")
                .unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            Compression::for_media_type("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            Compression::Zstd
        );
        assert_eq!(
            Compression::for_media_type("application/vnd.oci.image.layer.v1.tar").unwrap(),
            Compression::None
        );
        assert!(Compression::for_media_type("application/json").is_err());
    }

    #[test]
    fn zstd_layer_unpacks() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_of(&[E::Dir("disk"), E::File("disk/z.img", b"zdata")]);
        let z = ruzstd::encoding::compress_to_vec(
            &tar[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        apply_layer(dir.path(), &mut &z[..], Compression::Zstd).unwrap();
        assert_eq!(fs::read(dir.path().join("disk/z.img")).unwrap(), b"zdata");
    }

    #[test]
    fn gzip_layer_unpacks() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_of(&[E::Dir("disk"), E::File("disk/x.img", b"data")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        apply_layer(dir.path(), &mut &gz[..], Compression::Gzip).unwrap();
        assert_eq!(fs::read(dir.path().join("disk/x.img")).unwrap(), b"data");
    }

    /// A KubeVirt-style containerDisk layer: /disk owned by 107, the disk 0400 or 0600.
    #[test]
    fn modes_make_files_readable_and_nothing_writable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: EntryType, mode: u32, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(107);
            h.set_gid(107);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data).unwrap();
        };
        add("disk", EntryType::Directory, 0o700, b"");
        add("disk/disk.img", EntryType::Regular, 0o400, b"d");
        add("disk/rw.img", EntryType::Regular, 0o600, b"r");
        add("disk/open.img", EntryType::Regular, 0o666, b"o");
        add("disk/tool", EntryType::Regular, 0o4750, b"t");
        add("shut", EntryType::Directory, 0o000, b"");
        let tar = b.into_inner().unwrap();
        apply_layer(dir.path(), &mut &tar[..], Compression::None).unwrap();
        let mode = |p: &str| {
            fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("disk"), 0o755);
        assert_eq!(mode("shut"), 0o755);
        assert_eq!(mode("disk/disk.img"), 0o444);
        assert_eq!(mode("disk/rw.img"), 0o644);
        assert_eq!(mode("disk/open.img"), 0o644);
        assert_eq!(mode("disk/tool"), 0o754);
    }
}
