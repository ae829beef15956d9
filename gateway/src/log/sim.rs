//! A simulated disk for tests: the fault model of a real one under power loss.
//!
//! Every file keeps what was written (what a running process reads back) and
//! what was synced. Directory entries (create, rename, remove) become durable
//! only with an fsync of the parent directory. [`SimDisk::crash`] returns the
//! disk as found after a power cut: synced data survives; each unsynced write
//! independently survives, vanishes, or is torn at 512-byte sector
//! granularity; unsynced directory changes are undone. It can also fail the
//! N-th operation once with EIO, lose power at the N-th operation (that and
//! every later operation fail), and write short.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::storage::{DirLock, FileHandle, Storage, StorageFile};

const SECTOR: u64 = 512;

#[derive(Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Clone, Default)]
struct Inode {
    written: Vec<u8>,
    synced: Vec<u8>,
    unsynced: Vec<Op>,
}

/// Fault settings; all off by default.
#[derive(Clone, Default, Debug)]
pub struct Faults {
    /// Operation number (1-based, counting every call) that fails once with EIO.
    pub fail_at: Option<u64>,
    /// Operation number at which the power goes: it and all later ones fail.
    pub crash_at: Option<u64>,
    /// Writes store a random non-empty prefix and report its length.
    pub short_writes: bool,
    /// Free bytes reported by `available_bytes`.
    pub available_bytes: Option<u64>,
}

#[derive(Clone, Default)]
struct Disk {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    dirs: BTreeSet<PathBuf>,
    durable_dirs: BTreeSet<PathBuf>,
    ops: u64,
    dead: bool,
    faults: Faults,
    rng: u64,
}

/// The simulated disk; clone it to share.
#[derive(Clone)]
pub struct SimDisk(Arc<Mutex<Disk>>);

struct SimFile {
    disk: SimDisk,
    inode: usize,
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated I/O error ({what})"))
}

impl Disk {
    /// Counts an operation and applies the configured faults to it.
    fn op(&mut self, what: &str) -> io::Result<()> {
        if self.dead {
            return Err(eio("power lost"));
        }
        self.ops += 1;
        if self.faults.crash_at == Some(self.ops) {
            self.dead = true;
            return Err(eio("power lost"));
        }
        if self.faults.fail_at == Some(self.ops) {
            return Err(eio(what));
        }
        Ok(())
    }

    fn next_random(&mut self) -> u64 {
        next(&mut self.rng)
    }
}

impl SimDisk {
    pub fn new(seed: u64) -> SimDisk {
        let disk = Disk {
            rng: seed.max(1),
            ..Disk::default()
        };
        SimDisk(Arc::new(Mutex::new(disk)))
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Operations counted so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// The disk as it would be found after a power cut now. The returned disk
    /// is fresh (no faults, same seed stream); this one stops working.
    pub fn crash(&self) -> SimDisk {
        let mut old = self.lock();
        old.dead = true;
        let mut disk = Disk {
            rng: old.next_random(),
            ..Disk::default()
        };
        let mut rng = old.rng;
        for inode in &old.inodes {
            let synced = survive(inode, &mut rng);
            disk.inodes.push(Inode {
                written: synced.clone(),
                synced,
                unsynced: Vec::new(),
            });
        }
        disk.durable_dirs = old.durable_dirs.clone();
        disk.dirs = old.durable_dirs.clone();
        disk.names = old.durable_names.clone();
        disk.names
            .retain(|path, _| path.parent().is_some_and(|p| disk.durable_dirs.contains(p)));
        disk.durable_names = disk.names.clone();
        SimDisk(Arc::new(Mutex::new(disk)))
    }

    /// Bytes of a file as a running process sees them (tests use it to damage files).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let disk = self.lock();
        disk.names
            .get(path)
            .map(|&i| disk.inodes[i].written.clone())
    }

    /// Replaces a file's contents, durably (for corruption tests).
    pub fn write_file(&self, path: &Path, bytes: &[u8]) {
        let mut disk = self.lock();
        if let Some(&i) = disk.names.get(path) {
            disk.inodes[i] = Inode {
                written: bytes.to_vec(),
                synced: bytes.to_vec(),
                unsynced: Vec::new(),
            };
        }
    }

    /// Removes a file durably (for corruption tests).
    pub fn delete_file(&self, path: &Path) {
        let mut disk = self.lock();
        disk.names.remove(path);
        disk.durable_names.remove(path);
    }
}

/// What survives of one file at a power cut.
fn survive(inode: &Inode, rng: &mut u64) -> Vec<u8> {
    let mut data = inode.synced.clone();
    for op in &inode.unsynced {
        let roll = next(rng) % 4;
        match op {
            Op::SetLen(len) => data.resize(*len as usize, 0),
            Op::Write(_, _) if roll == 0 => {} // lost entirely
            Op::Write(pos, bytes) if roll == 1 => apply_torn(&mut data, *pos, bytes, rng),
            Op::Write(pos, bytes) => apply(&mut data, *pos, bytes),
        }
    }
    data
}

/// xorshift64*: deterministic per seed, good enough for fault choices.
fn next(rng: &mut u64) -> u64 {
    let mut x = (*rng).max(1);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn apply(data: &mut Vec<u8>, pos: u64, bytes: &[u8]) {
    let end = pos as usize + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[pos as usize..end].copy_from_slice(bytes);
}

/// Keeps a random subset of the write's sectors; the file still grows to
/// cover the write (metadata may reach the disk before the data), with
/// zeros where sectors were lost.
fn apply_torn(data: &mut Vec<u8>, pos: u64, bytes: &[u8], rng: &mut u64) {
    let end = pos + bytes.len() as u64;
    if (data.len() as u64) < end && next(rng).is_multiple_of(2) {
        data.resize(end as usize, 0);
    }
    let mut sector_start = pos - pos % SECTOR;
    while sector_start < end {
        let from = sector_start.max(pos);
        let to = (sector_start + SECTOR).min(end);
        if next(rng).is_multiple_of(2) {
            apply(
                data,
                from,
                &bytes[(from - pos) as usize..(to - pos) as usize],
            );
        }
        sector_start += SECTOR;
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let mut disk = self.disk.lock();
        disk.op("read")?;
        let data = &disk.inodes[self.inode].written;
        let start = (pos as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        let mut disk = self.disk.lock();
        disk.op("write")?;
        let n = if disk.faults.short_writes && buf.len() > 1 {
            1 + (disk.next_random() as usize) % buf.len()
        } else {
            buf.len()
        };
        let inode = &mut disk.inodes[self.inode];
        apply(&mut inode.written, pos, &buf[..n]);
        inode.unsynced.push(Op::Write(pos, buf[..n].to_vec()));
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut disk = self.disk.lock();
        disk.op("fsync")?;
        let inode = &mut disk.inodes[self.inode];
        inode.synced = inode.written.clone();
        inode.unsynced.clear();
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let disk = self.disk.lock();
        if disk.dead {
            return Err(eio("power lost"));
        }
        Ok(disk.inodes[self.inode].written.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut disk = self.disk.lock();
        disk.op("truncate")?;
        let inode = &mut disk.inodes[self.inode];
        inode.written.resize(len as usize, 0);
        inode.unsynced.push(Op::SetLen(len));
        Ok(())
    }
}

impl Storage for SimDisk {
    fn open(&self, path: &Path, create: bool) -> io::Result<FileHandle> {
        let mut disk = self.lock();
        disk.op("open")?;
        let inode = match disk.names.get(path) {
            Some(&i) => i,
            None if create => {
                let parent_exists = path.parent().is_some_and(|p| disk.dirs.contains(p));
                if !parent_exists {
                    return Err(io::ErrorKind::NotFound.into());
                }
                disk.inodes.push(Inode::default());
                let i = disk.inodes.len() - 1;
                disk.names.insert(path.to_path_buf(), i);
                i
            }
            None => return Err(io::ErrorKind::NotFound.into()),
        };
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            inode,
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        disk.op("mkdir")?;
        for dir in path.ancestors() {
            if !dir.as_os_str().is_empty() {
                disk.dirs.insert(dir.to_path_buf());
            }
        }
        // The top of a simulated tree exists from the start, like a mount point.
        if let Some(root) = path.ancestors().last() {
            disk.durable_dirs.insert(root.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut disk = self.lock();
        disk.op("readdir")?;
        if !disk.dirs.contains(path) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let files = disk.names.keys().filter(|p| p.parent() == Some(path));
        let dirs = disk.dirs.iter().filter(|p| p.parent() == Some(path));
        Ok(files
            .chain(dirs)
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn exists(&self, path: &Path) -> bool {
        let disk = self.lock();
        disk.names.contains_key(path) || disk.dirs.contains(path)
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.lock().dirs.contains(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        disk.op("unlink")?;
        disk.names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        disk.op("rename")?;
        let inode = disk
            .names
            .remove(from)
            .ok_or(io::Error::from(io::ErrorKind::NotFound))?;
        disk.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        disk.op("fsync dir")?;
        if !disk.dirs.contains(path) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let in_dir = |p: &PathBuf| p.parent() == Some(path);
        disk.durable_names.retain(|p, _| !in_dir(p));
        let current: Vec<_> = disk
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        disk.durable_names.extend(current);
        let subdirs: Vec<_> = disk.dirs.iter().filter(|p| in_dir(p)).cloned().collect();
        disk.durable_dirs.retain(|p| !in_dir(p));
        disk.durable_dirs.extend(subdirs);
        Ok(())
    }

    fn available_bytes(&self, _path: &Path) -> io::Result<u64> {
        Ok(self.lock().faults.available_bytes.unwrap_or(u64::MAX / 2))
    }

    fn lock_dir(&self, _dir: &Path) -> io::Result<DirLock> {
        Ok(DirLock::none())
    }
}
