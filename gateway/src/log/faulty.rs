//! A fault-injecting wrapper around a real [`Storage`], for the fault
//! campaign: from the Nth write (or fsync) of a segment file on, every such
//! operation fails with `EIO`, the way a dying SD card behaves. The running
//! gateway turns it on with `TIDEWELL_FAULT_EIO=write:N` or `fsync:N`; the
//! log must poison its writer and refuse data, never acknowledge it.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::storage::{DirLock, FileHandle, Storage, StorageFile};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    Write,
    Fsync,
}

/// Which operation fails, from which occurrence on (1-based).
#[derive(Debug)]
pub struct FaultPlan {
    pub op: FaultOp,
    pub from: u64,
    seen: AtomicU64,
}

impl FaultPlan {
    pub fn new(op: FaultOp, from: u64) -> FaultPlan {
        FaultPlan {
            op,
            from: from.max(1),
            seen: AtomicU64::new(0),
        }
    }

    /// Parses `write:N` or `fsync:N`.
    pub fn parse(text: &str) -> Option<FaultPlan> {
        let (op, n) = text.split_once(':')?;
        let op = match op {
            "write" => FaultOp::Write,
            "fsync" => FaultOp::Fsync,
            _ => return None,
        };
        Some(FaultPlan::new(op, n.parse().ok()?))
    }

    fn check(&self, op: FaultOp) -> io::Result<()> {
        if op == self.op && self.seen.fetch_add(1, Ordering::Relaxed) + 1 >= self.from {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

pub struct FaultyStorage {
    pub inner: Arc<dyn Storage>,
    pub plan: Arc<FaultPlan>,
}

struct FaultyFile {
    inner: FileHandle,
    plan: Arc<FaultPlan>,
}

impl StorageFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        self.plan.check(FaultOp::Write)?;
        self.inner.write_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.plan.check(FaultOp::Fsync)?;
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.inner.preallocate(len)
    }
}

impl Storage for FaultyStorage {
    fn open(&self, path: &Path, create: bool) -> io::Result<FileHandle> {
        let file = self.inner.open(path, create)?;
        if path.extension().is_some_and(|e| e == "log") {
            return Ok(Arc::new(FaultyFile {
                inner: file,
                plan: self.plan.clone(),
            }));
        }
        Ok(file)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.inner.is_dir(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn available_bytes(&self, path: &Path) -> io::Result<u64> {
        self.inner.available_bytes(path)
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<DirLock> {
        self.inner.lock_dir(dir)
    }
}
