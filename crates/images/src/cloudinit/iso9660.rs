//! A small ISO 9660 writer with a Joliet tree, enough for cloud-init seed disks.
//!
//! Layout: system area (16 sectors), primary volume descriptor, Joliet supplementary volume
//! descriptor, terminator, path tables (L and M, both trees), directory extents, file data.
//! The primary tree uses ISO level 1 names (`META_DAT;1`); the Joliet tree keeps the real
//! names (`meta-data`, `meta_data.json`) and is what Linux's isofs (Joliet on by default),
//! busybox `mount` and Windows show, as with `genisoimage -joliet`.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

const SECTOR: usize = 2048;
const FIRST_DESCRIPTOR: usize = 16;

/// Why an ISO image could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IsoError {
    /// A path is empty, absolute-only or has empty components.
    #[error("bad path {0:?}")]
    BadPath(String),
    /// The same path is given twice, or as both file and directory.
    #[error("duplicate path {0:?}")]
    Duplicate(String),
    /// A name does not fit Joliet (64 UCS-2 characters, no `/ * : ; ? \`).
    #[error("name {0:?} not representable in joliet")]
    BadName(String),
    /// The volume label is not 1-16 printable ASCII characters.
    #[error("bad volume id {0:?}")]
    BadVolumeId(String),
    /// The image would exceed ISO 9660's 32-bit sizes.
    #[error("image too large")]
    TooLarge,
}

/// Builds an ISO image holding `files` (`dir/sub/name`, contents) under volume id `volume_id`.
pub fn build(volume_id: &str, files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, IsoError> {
    build_at(volume_id, files, SystemTime::now())
}

/// As `build`, with a fixed timestamp (reproducible images).
pub fn build_at(
    volume_id: &str,
    files: &[(String, Vec<u8>)],
    time: SystemTime,
) -> Result<Vec<u8>, IsoError> {
    if volume_id.is_empty()
        || volume_id.len() > 16
        || !volume_id.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(IsoError::BadVolumeId(volume_id.to_string()));
    }
    let tree = Tree::new(files)?;
    let date = Date::from(time);
    let primary = TreeView::new(&tree, Naming::Primary);
    let joliet = TreeView::new(&tree, Naming::Joliet);

    // Sector allocation.
    let mut next = FIRST_DESCRIPTOR + 3;
    let mut alloc = |bytes: usize| {
        let at = next;
        next += bytes.div_ceil(SECTOR);
        at
    };
    let views = [&primary, &joliet];
    let mut tables = [(0, 0); 2];
    for (i, v) in views.iter().enumerate() {
        let size = v.path_table_size();
        tables[i] = (alloc(size), alloc(size));
    }
    let mut dir_lba = [vec![0; tree.dirs.len()], vec![0; tree.dirs.len()]];
    for (i, v) in views.iter().enumerate() {
        for &d in &v.order {
            dir_lba[i][d] = alloc(v.dir_size(d));
        }
    }
    let mut file_lba = vec![0; tree.files.len()];
    for (i, f) in tree.files.iter().enumerate() {
        file_lba[i] = alloc(f.data.len());
    }
    let total = alloc(0);
    let total32 = u32::try_from(total).map_err(|_| IsoError::TooLarge)?;
    let mut img = vec![0u8; total.checked_mul(SECTOR).ok_or(IsoError::TooLarge)?];

    let loc = Locations {
        dirs: &dir_lba,
        files: &file_lba,
        date,
    };
    for (i, v) in views.iter().enumerate() {
        let (l, m) = tables[i];
        let (lt, mt) = v.path_tables(&dir_lba[i]);
        put(&mut img, l * SECTOR, &lt);
        put(&mut img, m * SECTOR, &mt);
        for &d in &v.order {
            let extent = v.dir_extent(d, i, &loc)?;
            put(&mut img, dir_lba[i][d] * SECTOR, &extent);
        }
        let root = record(&[0], dir_lba[i][0], v.dir_size(0), true, &date)?;
        let desc = descriptor(v.naming, volume_id, total32, lt.len(), (l, m), &root, &date);
        put(&mut img, (FIRST_DESCRIPTOR + i) * SECTOR, &desc);
    }
    let mut term = vec![255u8];
    term.extend_from_slice(b"CD001\x01");
    put(&mut img, (FIRST_DESCRIPTOR + 2) * SECTOR, &term);
    for (i, f) in tree.files.iter().enumerate() {
        put(&mut img, file_lba[i] * SECTOR, f.data);
    }
    Ok(img)
}

fn put(img: &mut [u8], at: usize, data: &[u8]) {
    img[at..at + data.len()].copy_from_slice(data);
}

/// The input as a directory tree; directory 0 is the root.
struct Tree<'a> {
    dirs: Vec<DirNode>,
    files: Vec<FileNode<'a>>,
}

struct DirNode {
    name: String,
    parent: usize,
    subdirs: BTreeMap<String, usize>,
    files: Vec<usize>,
}

struct FileNode<'a> {
    name: String,
    data: &'a [u8],
}

impl<'a> Tree<'a> {
    fn new(files: &'a [(String, Vec<u8>)]) -> Result<Self, IsoError> {
        let mut tree = Tree {
            dirs: vec![DirNode {
                name: String::new(),
                parent: 0,
                subdirs: BTreeMap::new(),
                files: Vec::new(),
            }],
            files: Vec::new(),
        };
        let mut seen = BTreeMap::new();
        for (path, data) in files {
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            if parts
                .iter()
                .any(|p| p.is_empty() || *p == "." || *p == "..")
            {
                return Err(IsoError::BadPath(path.clone()));
            }
            let Some((name, dirs)) = parts.split_last() else {
                return Err(IsoError::BadPath(path.clone()));
            };
            let mut cur = 0;
            for d in dirs {
                check_joliet_name(d)?;
                cur = match tree.dirs[cur].subdirs.get(*d) {
                    Some(&i) => i,
                    None => {
                        let i = tree.dirs.len();
                        tree.dirs.push(DirNode {
                            name: (*d).to_string(),
                            parent: cur,
                            subdirs: BTreeMap::new(),
                            files: Vec::new(),
                        });
                        tree.dirs[cur].subdirs.insert((*d).to_string(), i);
                        i
                    }
                };
            }
            check_joliet_name(name)?;
            if seen.insert((cur, (*name).to_string()), ()).is_some()
                || tree.dirs[cur].subdirs.contains_key(*name)
            {
                return Err(IsoError::Duplicate(path.clone()));
            }
            tree.dirs[cur].files.push(tree.files.len());
            tree.files.push(FileNode {
                name: (*name).to_string(),
                data,
            });
        }
        // A file named like a directory created later in the list.
        for (&(dir, ref name), ()) in &seen {
            if tree.dirs[dir].subdirs.contains_key(name) {
                return Err(IsoError::Duplicate(name.clone()));
            }
        }
        Ok(tree)
    }
}

fn check_joliet_name(name: &str) -> Result<(), IsoError> {
    let bad = name.encode_utf16().count() > 64
        || name.chars().any(|c| {
            (c as u32) > 0xFFFF || c < ' ' || matches!(c, '*' | '/' | ':' | ';' | '?' | '\\')
        });
    if bad {
        return Err(IsoError::BadName(name.to_string()));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Naming {
    /// ISO 9660 level 1: `NAME8.EXT;1`, d-characters only.
    Primary,
    /// Joliet: UCS-2 big-endian, the real name.
    Joliet,
}

/// One directory entry as a tree presents it.
struct Entry {
    id: Vec<u8>,
    target: Target,
}

#[derive(Clone, Copy)]
enum Target {
    Dir(usize),
    File(usize),
}

/// A tree with the names and order of one of the two hierarchies.
struct TreeView<'t, 'a> {
    tree: &'t Tree<'a>,
    naming: Naming,
    /// Per directory: its identifier and its sorted entries.
    ids: Vec<Vec<u8>>,
    entries: Vec<Vec<Entry>>,
    /// Directories in path-table order (breadth first, siblings sorted).
    order: Vec<usize>,
}

impl<'t, 'a> TreeView<'t, 'a> {
    fn new(tree: &'t Tree<'a>, naming: Naming) -> Self {
        let mut ids = vec![vec![0u8]; tree.dirs.len()];
        let mut entries: Vec<Vec<Entry>> = Vec::with_capacity(tree.dirs.len());
        for dir in &tree.dirs {
            let mut used = Vec::new();
            let mut list = Vec::new();
            for &d in dir.subdirs.values() {
                let id = unique(name_id(&tree.dirs[d].name, naming, true), &mut used, naming);
                ids[d].clone_from(&id);
                list.push(Entry {
                    id,
                    target: Target::Dir(d),
                });
            }
            for &f in &dir.files {
                let id = unique(
                    name_id(&tree.files[f].name, naming, false),
                    &mut used,
                    naming,
                );
                list.push(Entry {
                    id,
                    target: Target::File(f),
                });
            }
            list.sort_by(|a, b| a.id.cmp(&b.id));
            entries.push(list);
        }
        let mut order = vec![0];
        let mut i = 0;
        while i < order.len() {
            for e in &entries[order[i]] {
                if let Target::Dir(d) = e.target {
                    order.push(d);
                }
            }
            i += 1;
        }
        Self {
            tree,
            naming,
            ids,
            entries,
            order,
        }
    }

    fn dir_size(&self, d: usize) -> usize {
        let mut size = 0;
        let lens = [34, 34]
            .into_iter()
            .chain(self.entries[d].iter().map(|e| record_len(e.id.len())));
        for len in lens {
            if size % SECTOR + len > SECTOR {
                size = size.div_ceil(SECTOR) * SECTOR;
            }
            size += len;
        }
        size.div_ceil(SECTOR) * SECTOR
    }

    fn dir_extent(&self, d: usize, view: usize, loc: &Locations) -> Result<Vec<u8>, IsoError> {
        let parent = self.tree.dirs[d].parent;
        let mut recs = vec![
            record(&[0], loc.dirs[view][d], self.dir_size(d), true, &loc.date)?,
            record(
                &[1],
                loc.dirs[view][parent],
                self.dir_size(parent),
                true,
                &loc.date,
            )?,
        ];
        for e in &self.entries[d] {
            recs.push(match e.target {
                Target::Dir(c) => {
                    record(&e.id, loc.dirs[view][c], self.dir_size(c), true, &loc.date)?
                }
                Target::File(f) => record(
                    &e.id,
                    loc.files[f],
                    self.tree.files[f].data.len(),
                    false,
                    &loc.date,
                )?,
            });
        }
        let mut out = Vec::with_capacity(self.dir_size(d));
        for r in recs {
            if out.len() % SECTOR + r.len() > SECTOR {
                out.resize(out.len().div_ceil(SECTOR) * SECTOR, 0);
            }
            out.extend_from_slice(&r);
        }
        out.resize(self.dir_size(d), 0);
        Ok(out)
    }

    fn path_table_size(&self) -> usize {
        self.order
            .iter()
            .map(|&d| {
                let n = self.ids[d].len();
                8 + n + n % 2
            })
            .sum()
    }

    /// The little- and big-endian path tables.
    fn path_tables(&self, lbas: &[usize]) -> (Vec<u8>, Vec<u8>) {
        let number: BTreeMap<usize, u16> = self
            .order
            .iter()
            .enumerate()
            .map(|(i, &d)| (d, u16::try_from(i + 1).unwrap_or(u16::MAX)))
            .collect();
        let (mut l, mut m) = (Vec::new(), Vec::new());
        for &d in &self.order {
            let id = &self.ids[d];
            let parent = number[&self.tree.dirs[d].parent];
            let lba = lbas[d] as u32;
            for (table, big) in [(&mut l, false), (&mut m, true)] {
                table.push(id.len() as u8);
                table.push(0);
                if big {
                    table.extend_from_slice(&lba.to_be_bytes());
                    table.extend_from_slice(&parent.to_be_bytes());
                } else {
                    table.extend_from_slice(&lba.to_le_bytes());
                    table.extend_from_slice(&parent.to_le_bytes());
                }
                table.extend_from_slice(id);
                if id.len() % 2 == 1 {
                    table.push(0);
                }
            }
        }
        (l, m)
    }
}

/// Where directories (per view) and files landed.
struct Locations<'a> {
    dirs: &'a [Vec<usize>; 2],
    files: &'a [usize],
    date: Date,
}

/// The identifier bytes of a name in one hierarchy.
fn name_id(name: &str, naming: Naming, dir: bool) -> Vec<u8> {
    match naming {
        Naming::Joliet => {
            let mut s = name.to_string();
            if !dir {
                s.push_str(";1");
            }
            s.encode_utf16().flat_map(u16::to_be_bytes).collect()
        }
        Naming::Primary => {
            let d = |s: &str, max: usize| -> String {
                s.chars()
                    .map(|c| c.to_ascii_uppercase())
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .take(max)
                    .collect()
            };
            if dir {
                return d(name, 8).into_bytes();
            }
            let (base, ext) = match name.rsplit_once('.') {
                Some((b, e)) if !b.is_empty() => (b, e),
                _ => (name, ""),
            };
            let mut s = d(base, 8);
            s.push('.');
            s.push_str(&d(ext, 3));
            s.push_str(";1");
            s.into_bytes()
        }
    }
}

/// Makes a level-1 identifier unique in its directory by replacing its tail with a number.
fn unique(id: Vec<u8>, used: &mut Vec<Vec<u8>>, naming: Naming) -> Vec<u8> {
    if naming == Naming::Joliet || !used.contains(&id) {
        used.push(id.clone());
        return id;
    }
    let text = String::from_utf8_lossy(&id).into_owned();
    let (stem, rest) = match text.find(['.', ';']) {
        Some(i) => text.split_at(i),
        None => (text.as_str(), ""),
    };
    for n in 1u32.. {
        let tag = n.to_string();
        let keep = stem.len().min(8 - tag.len().min(8));
        let cand = format!("{}{tag}{rest}", &stem[..keep]).into_bytes();
        if !used.contains(&cand) {
            used.push(cand.clone());
            return cand;
        }
    }
    id
}

fn record_len(id_len: usize) -> usize {
    let len = 33 + id_len;
    len + len % 2
}

fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

/// One directory record.
fn record(id: &[u8], lba: usize, size: usize, dir: bool, date: &Date) -> Result<Vec<u8>, IsoError> {
    let lba = u32::try_from(lba).map_err(|_| IsoError::TooLarge)?;
    let size = u32::try_from(size).map_err(|_| IsoError::TooLarge)?;
    let len = record_len(id.len());
    let mut r = Vec::with_capacity(len);
    r.push(len as u8);
    r.push(0);
    r.extend_from_slice(&both32(lba));
    r.extend_from_slice(&both32(size));
    r.extend_from_slice(&date.short());
    r.push(if dir { 2 } else { 0 });
    r.push(0);
    r.push(0);
    r.extend_from_slice(&both16(1));
    r.push(id.len() as u8);
    r.extend_from_slice(id);
    r.resize(len, 0);
    Ok(r)
}

/// A primary (type 1) or Joliet supplementary (type 2) volume descriptor.
fn descriptor(
    naming: Naming,
    volume_id: &str,
    total: u32,
    path_table_size: usize,
    tables: (usize, usize),
    root: &[u8],
    date: &Date,
) -> Vec<u8> {
    let text = |s: &str, width: usize| -> Vec<u8> {
        match naming {
            Naming::Primary => {
                let mut v = s.as_bytes().to_vec();
                v.resize(width, b' ');
                v
            }
            Naming::Joliet => {
                let mut v: Vec<u8> = s.encode_utf16().flat_map(u16::to_be_bytes).collect();
                while v.len() + 1 < width {
                    v.extend_from_slice(&[0, b' ']);
                }
                v.resize(width, 0);
                v
            }
        }
    };
    let mut d = vec![0u8; SECTOR];
    d[0] = if naming == Naming::Primary { 1 } else { 2 };
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    d[8..40].copy_from_slice(&text("LINUX", 32));
    d[40..72].copy_from_slice(&text(volume_id, 32));
    d[80..88].copy_from_slice(&both32(total));
    if naming == Naming::Joliet {
        d[88..91].copy_from_slice(b"%/E"); // UCS-2 level 3
    }
    d[120..124].copy_from_slice(&both16(1));
    d[124..128].copy_from_slice(&both16(1));
    d[128..132].copy_from_slice(&both16(SECTOR as u16));
    d[132..140].copy_from_slice(&both32(path_table_size as u32));
    d[140..144].copy_from_slice(&(tables.0 as u32).to_le_bytes());
    d[148..152].copy_from_slice(&(tables.1 as u32).to_be_bytes());
    d[156..190].copy_from_slice(root);
    d[190..318].copy_from_slice(&text("", 128));
    d[318..446].copy_from_slice(&text("", 128));
    d[446..574].copy_from_slice(&text("", 128));
    d[574..702].copy_from_slice(&text("KUVIRT", 128));
    d[702..739].copy_from_slice(&text("", 37));
    d[739..776].copy_from_slice(&text("", 37));
    d[776..813].copy_from_slice(&text("", 37));
    d[813..830].copy_from_slice(&date.long());
    d[830..847].copy_from_slice(&date.long());
    d[847..864].copy_from_slice(b"0000000000000000\0");
    d[864..881].copy_from_slice(&date.long());
    d[881] = 1;
    d
}

/// A UTC timestamp broken into calendar fields.
#[derive(Clone, Copy)]
struct Date {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl From<SystemTime> for Date {
    fn from(t: SystemTime) -> Self {
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Date {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
        }
    }
}

impl Date {
    /// The 7-byte directory record form.
    fn short(&self) -> [u8; 7] {
        let y = (self.year - 1900).clamp(0, 255) as u8;
        [
            y,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            0,
        ]
    }

    /// The 17-byte volume descriptor form.
    fn long(&self) -> [u8; 17] {
        let s = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year.clamp(0, 9999),
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second
        );
        let mut out = [0u8; 17];
        out[..16].copy_from_slice(s.as_bytes());
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn files() -> Vec<(String, Vec<u8>)> {
        vec![
            ("meta-data".into(), b"{}".to_vec()),
            ("user-data".into(), b"#cloud-config\n".to_vec()),
            ("openstack/latest/meta_data.json".into(), vec![b'x'; 5000]),
            ("openstack/latest/user_data".into(), Vec::new()),
        ]
    }

    #[test]
    fn dates_convert() {
        let d = Date::from(UNIX_EPOCH + Duration::from_secs(1_795_321_234));
        assert_eq!(&d.long()[..14], b"20261122042034");
        assert_eq!(d.short(), [126, 11, 22, 4, 20, 34, 0]);
    }

    #[test]
    fn level1_names() {
        assert_eq!(name_id("meta-data", Naming::Primary, false), b"META_DAT.;1");
        assert_eq!(
            name_id("meta_data.json", Naming::Primary, false),
            b"META_DAT.JSO;1"
        );
        assert_eq!(name_id("openstack", Naming::Primary, true), b"OPENSTAC");
        let mut used = vec![b"META_DAT.;1".to_vec()];
        assert_eq!(
            unique(b"META_DAT.;1".to_vec(), &mut used, Naming::Primary),
            b"META_DA1.;1"
        );
    }

    #[test]
    fn layout_has_descriptors_and_data() {
        let img = build_at("config-2", &files(), UNIX_EPOCH).unwrap();
        assert_eq!(img.len() % SECTOR, 0);
        let pvd = &img[16 * SECTOR..17 * SECTOR];
        assert_eq!(&pvd[..7], b"\x01CD001\x01");
        assert_eq!(&pvd[40..48], b"config-2");
        let svd = &img[17 * SECTOR..18 * SECTOR];
        assert_eq!(&svd[..7], b"\x02CD001\x01");
        assert_eq!(&svd[88..91], b"%/E");
        assert_eq!(&img[18 * SECTOR..18 * SECTOR + 7], b"\xffCD001\x01");
        let total = u32::from_le_bytes(pvd[80..84].try_into().unwrap()) as usize;
        assert_eq!(total * SECTOR, img.len());
        // The joliet names are there in UCS-2.
        let needle: Vec<u8> = "meta_data.json;1"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        assert!(img.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn rejects_bad_input() {
        let f = |p: &str| vec![(p.to_string(), Vec::new())];
        assert_eq!(
            build("cidata", &f("a//b")).unwrap_err(),
            IsoError::BadPath("a//b".into())
        );
        assert!(matches!(
            build("cidata", &f("a;b")),
            Err(IsoError::BadName(_))
        ));
        let dup = vec![("a".to_string(), Vec::new()), ("a".to_string(), Vec::new())];
        assert!(matches!(build("cidata", &dup), Err(IsoError::Duplicate(_))));
        let clash = vec![
            ("a".to_string(), Vec::new()),
            ("a/b".to_string(), Vec::new()),
        ];
        assert!(matches!(
            build("cidata", &clash),
            Err(IsoError::Duplicate(_))
        ));
        assert!(matches!(
            build("a-very-long-volume-label", &[]),
            Err(IsoError::BadVolumeId(_))
        ));
    }

    #[test]
    fn many_files_span_directory_sectors() {
        let many: Vec<(String, Vec<u8>)> = (0..200)
            .map(|i| (format!("dir/file-number-{i:03}.txt"), vec![b'a'; i]))
            .collect();
        let img = build("cidata", &many).unwrap();
        assert!(img.len() > 10 * SECTOR);
    }
}
