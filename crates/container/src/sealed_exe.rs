//! Running from a copy of our own binary that no container can write
//! (CVE-2019-5736).
//!
//! The processes that set a container up are clones of the runtime's own
//! process, so until they execve the container's program their
//! `/proc/<pid>/exe` is the runtime's binary. A process of the container
//! can open that link (it shares the pid namespace; an `exec` of a program
//! that is a link to `/proc/self/exe` even runs the runtime's binary inside
//! the container) and, once the runtime exits, reopen it for writing and
//! replace the binary on the host: the next `ironcell` anyone runs is the
//! attacker's.
//!
//! Every binary that forks into a container therefore calls
//! [`ensure_sealed`] first: it re-executes itself from a handle on its
//! binary that cannot be written:
//!
//! - a file opened through a private, read-only overlayfs mount of the
//!   binary's directory that is never attached to any mount tree (no upper
//!   layer, so every write is `EROFS`; nothing is copied, the pages are the
//!   original file's page cache);
//! - where overlayfs or the new mount API is missing, a sealed memfd copy
//!   (`F_SEAL_WRITE`, `F_SEAL_GROW`, `F_SEAL_SHRINK`, `F_SEAL_SEAL`), as runc
//!   and crun do.
//!
//! The re-executed process finds itself sealed and carries on. Its
//! `/proc/self/exe` names the private mount's file (or the memfd), so
//! [`current_exe`] gives the original path for finding sibling binaries.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};

/// Set on the re-executed process: the path its binary had before sealing.
const ORIGINAL_EXE_ENV: &str = "_IRONCELL_ORIGINAL_EXE";
/// overlayfs's `f_type` (linux/magic.h).
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// How a binary is kept out of a container's reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// A file on a private read-only overlayfs mount.
    ReadOnlyOverlay,
    /// A sealed memfd copy.
    Memfd,
}

/// Whether `file` (an open executable) cannot be written through any
/// path a container could reach: a memfd with a write seal, or a file on a
/// read-only overlayfs mount.
pub fn seal_of(file: &impl AsFd) -> Option<Seal> {
    if let Ok(seals) = rustix::fs::fcntl_get_seals(file) {
        if seals.contains(SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK) {
            return Some(Seal::Memfd);
        }
    }
    let fs = rustix::fs::fstatfs(file).ok()?;
    let vfs = rustix::fs::fstatvfs(file).ok()?;
    (fs.f_type as i64 == OVERLAYFS_SUPER_MAGIC
        && vfs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
    .then_some(Seal::ReadOnlyOverlay)
}

/// Whether this process runs from a sealed binary.
pub fn is_sealed() -> bool {
    File::open("/proc/self/exe")
        .map(|f| seal_of(&f).is_some())
        .unwrap_or(false)
}

/// Re-executes this process from a sealed handle on its own binary, with
/// the same arguments and environment, unless it already runs from one.
/// Returns only when it does (or with the error that prevented sealing:
/// the caller must then not fork into a container).
pub fn ensure_sealed() -> io::Result<()> {
    let exe = File::open("/proc/self/exe")?;
    if seal_of(&exe).is_some() {
        return Ok(());
    }
    let original = std::fs::read_link("/proc/self/exe")?;
    let sealed = sealed_handle(&exe, &original)?;
    if std::env::var_os(ORIGINAL_EXE_ENV).is_none() {
        // SAFETY (of set_var): called before this process starts any
        // thread; the value is read back by `current_exe` after the exec.
        std::env::set_var(ORIGINAL_EXE_ENV, &original);
    }
    let err = exec_fd(&sealed, std::env::args_os());
    Err(io::Error::new(
        err.kind(),
        format!(
            "cannot re-execute from a sealed copy of {}: {err}",
            original.display()
        ),
    ))
}

/// The path of this process's binary as it was before [`ensure_sealed`]
/// re-executed it (the sealed handle's own path means nothing outside it).
pub fn current_exe() -> io::Result<PathBuf> {
    match std::env::var_os(ORIGINAL_EXE_ENV) {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => std::env::current_exe(),
    }
}

/// A handle on `exe` (an open binary whose path was `path`) that cannot be
/// written: through a read-only overlayfs mount when the kernel offers one,
/// else a sealed memfd copy.
pub fn sealed_handle(exe: &File, path: &Path) -> io::Result<OwnedFd> {
    match overlay_handle(exe, path) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            tracing::debug!(error = %e, "read-only overlay of the binary unavailable, copying it");
            memfd_copy(exe)
        }
    }
}

/// Opens `path` through a detached read-only overlayfs mount of its
/// directory, and checks it is the file `exe` is.
///
/// overlayfs without an upper layer needs two lower ones, and they must not
/// overlap: the second is an empty tmpfs that is never attached either,
/// named through its mount fd. Kernels before 6.13 refuse a detached mount
/// as a layer; there the second layer is an empty directory made for the
/// purpose and removed at once.
fn overlay_handle(exe: &File, path: &Path) -> io::Result<OwnedFd> {
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) if path.is_absolute() => (d, n),
        _ => return Err(io::Error::other("binary path is not absolute")),
    };
    let empty = empty_tmpfs()?;
    let detached = format!("/proc/self/fd/{}", empty.as_raw_fd());
    let mnt = match read_only_overlay(dir, OsStr::new(&detached)) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
            let tmp = tempfile_dir()?;
            let m = read_only_overlay(dir, tmp.as_os_str());
            let _ = std::fs::remove_dir(&tmp);
            m?
        }
        Err(e) => return Err(e),
    };
    let fd = rustix::fs::openat(
        &mnt,
        name,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NOFOLLOW,
        rustix::fs::Mode::empty(),
    )?;
    // The path may have been replaced since this process started: only the
    // very file we run from will do.
    let (ours, theirs) = (rustix::fs::fstat(exe)?, rustix::fs::fstat(&fd)?);
    if ours.st_ino != theirs.st_ino || ours.st_size != theirs.st_size {
        return Err(io::Error::other("binary changed on disk"));
    }
    if seal_of(&fd) != Some(Seal::ReadOnlyOverlay) {
        return Err(io::Error::other("overlay mount is not read-only"));
    }
    Ok(fd)
}

/// A small read-only tmpfs that no mount tree holds.
fn empty_tmpfs() -> io::Result<OwnedFd> {
    let fs = rustix::mount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    rustix::mount::fsconfig_set_string(&fs, "size", "4k")?;
    rustix::mount::fsconfig_create(&fs)?;
    Ok(rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?)
}

/// A new empty directory of this process's own in the temporary directory.
fn tempfile_dir() -> io::Result<std::path::PathBuf> {
    let base = std::env::temp_dir();
    for n in 0..100u32 {
        let p = base.join(format!(".ironcell-sealed-{}-{n}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free name for an empty directory"))
}

/// A read-only overlayfs of `dir` over `second` (an empty layer), never
/// attached to any mount tree; its mount fd.
fn read_only_overlay(dir: &Path, second: &OsStr) -> io::Result<OwnedFd> {
    let mut lower = escape_lowerdir(dir.as_os_str());
    lower.push(":");
    lower.push(escape_lowerdir(second));
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    rustix::mount::fsconfig_set_string(&fs, "lowerdir", lower)?;
    rustix::mount::fsconfig_create(&fs)?;
    Ok(rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOSUID,
    )?)
}

/// overlayfs splits `lowerdir` at `:` and unescapes `\`.
fn escape_lowerdir(dir: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(dir.len());
    for &b in dir.as_bytes() {
        if b == b':' || b == b'\\' || b == b',' {
            out.push(b'\\');
        }
        out.push(b);
    }
    OsString::from(std::ffi::OsStr::from_bytes(&out))
}

/// A sealed in-memory copy of `exe`.
fn memfd_copy(exe: &File) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        "ironcell-sealed",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut src = exe.try_clone()?;
    let mut dst = File::from(fd);
    io::copy(&mut src, &mut dst)?;
    let fd = OwnedFd::from(dst);
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )?;
    Ok(fd)
}

/// execveat(fd, "", args, environ, AT_EMPTY_PATH); returns only on error.
fn exec_fd(fd: &OwnedFd, args: impl Iterator<Item = OsString>) -> io::Error {
    let to_c = |s: &OsStr| CString::new(s.as_bytes()).map_err(|_| io::ErrorKind::InvalidInput);
    let args: Result<Vec<CString>, _> = args.map(|a| to_c(&a)).collect();
    let env: Result<Vec<CString>, _> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            to_c(&kv)
        })
        .collect();
    let (args, env) = match (args, env) {
        (Ok(a), Ok(e)) => (a, e),
        _ => return io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in argv or environ"),
    };
    match nix::unistd::execveat(
        Some(fd.as_raw_fd()),
        c"",
        &args,
        &env,
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    ) {
        Ok(never) => match never {},
        Err(e) => io::Error::from(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn lowerdir_escapes_separators() {
        assert_eq!(
            escape_lowerdir(OsStr::new("/a:b\\c,d")),
            OsString::from("/a\\:b\\\\c\\,d")
        );
    }

    #[test]
    fn a_plain_file_is_not_sealed() {
        let f = tempfile::tempfile().unwrap();
        assert_eq!(seal_of(&f), None);
    }

    #[test]
    fn memfd_copy_is_sealed_and_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"\x7fELF not really").unwrap();
        let fd = memfd_copy(&File::open(&path).unwrap()).unwrap();
        assert_eq!(seal_of(&fd), Some(Seal::Memfd));
        let reopened = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let err = match reopened {
            Ok(mut f) => f.write_all(b"x").unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"\x7fELF not really");
    }

    #[test]
    fn overlay_handle_is_read_only_and_leaves_no_mount() {
        if !root() {
            eprintln!(
                "==== SKIPPED overlay_handle_is_read_only_and_leaves_no_mount: needs root ===="
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin:with,odd\\name");
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o755)
            .open(&path)
            .unwrap()
            .write_all(b"original")
            .unwrap();
        let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let fd = overlay_handle(&File::open(&path).unwrap(), &path).unwrap();
        assert_eq!(seal_of(&fd), Some(Seal::ReadOnlyOverlay));
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"original");
        assert_eq!(
            std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
            mounts_before,
            "the overlay must never be attached to a mount tree"
        );
    }

    #[test]
    fn overlay_handle_refuses_a_replaced_binary() {
        if !root() {
            eprintln!("==== SKIPPED overlay_handle_refuses_a_replaced_binary: needs root ====");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"one").unwrap();
        let running = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"two").unwrap();
        assert!(overlay_handle(&running, &path).is_err());
        // The copy falls back to the open file itself.
        let fd = sealed_handle(&running, &path).unwrap();
        assert_eq!(seal_of(&fd), Some(Seal::Memfd));
    }
}
