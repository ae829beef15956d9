//! The storage seam: the few file operations the log needs.
//!
//! Production uses [`OsStorage`] (plain files, `pwrite`/`pread`, `fdatasync`,
//! directory fsync). Tests use `log::sim::SimDisk` (with the `test-hooks` feature), which keeps a
//! written and a synced copy of every file and can crash, tear writes, write
//! short and fail the N-th operation.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// A file opened through the seam. All methods take `&self`, so one handle is
/// shared by the writer (appends at positions it tracks) and readers (`pread`).
pub trait StorageFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `pos`; returns 0 at end of file.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Writes some prefix of `buf` at `pos` and returns its length (short writes happen).
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize>;
    /// Makes every completed write durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Reserves disk blocks up to `len` bytes (the file reads as zeros past
    /// its data). Overwriting reserved blocks needs no block allocation, so
    /// each `fdatasync` has less metadata to commit. Best effort.
    fn preallocate(&self, len: u64) -> io::Result<()> {
        if self.len()? < len {
            self.set_len(len)?;
        }
        Ok(())
    }

    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Loops over short writes.
    fn write_all_at(&self, mut buf: &[u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.write_at(buf, pos)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
            }
            buf = &buf[n..];
            pos += n as u64;
        }
        Ok(())
    }

    /// Fills `buf` from `pos`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.read_at(buf, pos)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf = &mut buf[n..];
            pos += n as u64;
        }
        Ok(())
    }
}

pub type FileHandle = Arc<dyn StorageFile>;

/// Directory-level operations. Creating, renaming or removing a file is durable
/// only after [`Storage::sync_dir`] on its parent.
pub trait Storage: Send + Sync {
    /// Opens an existing file; with `create`, creates it when missing.
    fn open(&self, path: &Path, create: bool) -> io::Result<FileHandle>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// File and directory names in `path`, unsorted.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn exists(&self, path: &Path) -> bool;
    fn is_dir(&self, path: &Path) -> bool;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Bytes still free for unprivileged writers on the filesystem holding `path`.
    fn available_bytes(&self, path: &Path) -> io::Result<u64>;
    /// Takes the exclusive lock of the log directory `dir` (`WouldBlock` when
    /// another process holds it).
    fn lock_dir(&self, dir: &Path) -> io::Result<DirLock>;
}

/// Held while a process writes a log directory; released on drop.
pub struct DirLock(#[allow(dead_code)] Option<File>);

impl DirLock {
    /// A lock that locks nothing, for simulated disks.
    pub fn none() -> DirLock {
        DirLock(None)
    }
}

/// Real files.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsStorage;

struct OsFile(File);

impl StorageFile for OsFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.0.read_at(buf, pos)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        self.0.write_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    #[allow(unsafe_code)] // audited: see the SAFETY comment inside
    fn preallocate(&self, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let len =
            libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a plain syscall on a file descriptor this struct owns.
        match unsafe { libc::posix_fallocate(self.0.as_raw_fd(), 0, len) } {
            0 => Ok(()),
            code => Err(io::Error::from_raw_os_error(code)),
        }
    }
}

impl Storage for OsStorage {
    fn open(&self, path: &Path, create: bool) -> io::Result<FileHandle> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(OsFile(file)))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn available_bytes(&self, path: &Path) -> io::Result<u64> {
        statvfs_available(path)
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<DirLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(".lock"))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock(Some(file))),
            Err(fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

#[allow(unsafe_code)] // audited: see the SAFETY comment inside
fn statvfs_available(path: &Path) -> io::Result<u64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `stat` is plain old data that statvfs fills in; `c_path` is a valid
    // NUL-terminated string that outlives the call.
    let stat = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut stat) != 0 {
            return Err(io::Error::last_os_error());
        }
        stat
    };
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}
