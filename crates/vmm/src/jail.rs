//! `--jail`: once the VM is set up, the VMM confines itself to an empty
//! root of its own, so that a VMM the guest took over reaches nothing on
//! the host's file systems but what it holds: fds (the kernel, initrd and
//! disk images, /dev/kvm, the tap, bound sockets, the /proc fd of the
//! virtio-fs passthrough), the shared directories, and the directories of
//! the sockets it still uses by name. Seccomp then narrows the syscalls.
//!
//! Two steps:
//!
//! 1. `prepare`, the first thing `Vmm::new` does, while the process has
//!    one thread (unshare affects only the calling thread, and every
//!    thread must end up in the jail): a mount namespace of the VMM's own
//!    (`unshare(CLONE_NEWNS)`), a slave of the host's, so mounts made later
//!    under a share on the host (a container added to the VM's pod) still
//!    reach the VMM, and none of the VMM's go back. With virtio-fs shares,
//!    a procfs of its own over /proc, mounted with `subset=pid`: the
//!    passthrough keeps an fd of /proc/self/fd to reopen its files, and
//!    through that fd the VMM then reaches the per-process directories
//!    only, not /proc/sys, /proc/sysrq-trigger or /proc/kcore. Socket paths
//!    in the config become absolute (the jail has no cwd of the user's).
//!
//! 2. `enter`, in `Vmm::run` once everything is open and before any other
//!    thread starts: a small tmpfs (over /dev, which nothing needs any
//!    more) becomes the new root. Each share is bind-mounted there at
//!    `/fs<i>` (recursively, read-only with `mount_setattr` for read-only
//!    shares), and each socket directory at its own path; the tmpfs is
//!    then made read-only, `pivot_root` switches to it, and the old root
//!    is detached. The fs workers then start with their cwd at `/fs<i>`.
//!
//! Why the shares are bind mounts rather than the fds opened at setup: an
//! fd of a directory of the host's root file system reaches, through
//! "..", all of that file system. At the root of a bind mount ".." stays
//! at that root, and from a directory that a rename moved out from under
//! the bind mount ".." fails (the kernel's `path_connected`), so no name
//! the guest sends, and no rename racing with it, leads out of a share.
//! The fds opened at setup are closed once the bind mounts are open.
//!
//! Mounts that reach a share later by propagation keep their own flags: a
//! read-only share is read-only in the kernel as it was at start, and by
//! the device's allowlist of requests (devices/virtio/fs.rs) for the rest.
//!
//! What stays reachable: the shares, the socket directories (put each VM's
//! sockets in a directory of its own: the VMM can connect to any socket in
//! it), the /proc/<pid> directories through the passthrough's /proc fd
//! (including other processes' `root` links; closing that needs a PID
//! namespace), and the fds listed above.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use crate::config::VmConfig;
use crate::error::{Error, Result};

/// Where the jail's root is mounted before `pivot_root` (any directory
/// that exists and that nothing resolves any more would do).
const STAGING: &str = "/dev";

fn jail_err(what: impl std::fmt::Display) -> impl FnOnce(rustix::io::Errno) -> Error {
    let what = what.to_string();
    move |e| Error::Jail(format!("{what}: {}", std::io::Error::from(e)))
}

/// A jail being set up: `prepare` ran.
#[derive(Debug)]
pub struct Jail {
    /// Directories of the sockets the VMM uses by name after setup: vsock
    /// connects to `<uds>_<port>`, and the sockets are removed at exit.
    socket_dirs: Vec<PathBuf>,
}

/// Step 1 (module doc). Must run while the process has one thread.
pub fn prepare(config: &mut VmConfig) -> Result<Jail> {
    let absolute = |p: &mut PathBuf| -> Result<()> {
        *p = std::path::absolute(&*p).map_err(|e| Error::Jail(format!("{}: {e}", p.display())))?;
        Ok(())
    };
    let mut sockets = Vec::new();
    if let Some(v) = config.vsock.as_mut() {
        absolute(&mut v.uds_path)?;
        sockets.push(v.uds_path.clone());
    }
    if let Some(a) = config.api_socket.as_mut() {
        absolute(a)?;
        sockets.push(a.clone());
    }
    let mut socket_dirs: Vec<PathBuf> = Vec::new();
    for s in &sockets {
        let dir = s.parent().unwrap_or(Path::new("/")).to_path_buf();
        if dir == Path::new("/") {
            return Err(Error::Jail(format!(
                "socket {} is in /, which the jail would have to keep whole: give the VM's sockets a directory of their own",
                s.display()
            )));
        }
        socket_dirs.push(dir);
    }
    // One bind mount per directory; one inside another is reachable already.
    socket_dirs.sort();
    socket_dirs.dedup();
    let kept = socket_dirs.clone();
    socket_dirs.retain(|d| !kept.iter().any(|k| k != d && d.starts_with(k)));

    let threads = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse::<u32>().ok())
        });
    if let Some(n @ 2..) = threads {
        return Err(Error::Jail(format!(
            "the process has {n} threads already; the jail must be set up before any is started"
        )));
    }
    // SAFETY: CLONE_NEWNS (which implies CLONE_FS) unshares only this
    // thread's mount namespace, root and cwd; the process has no other
    // thread yet (see above), and no fd table is unshared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }.map_err(
        |e| {
            Error::Jail(format!(
                "unshare(CLONE_NEWNS): {} (the jail needs root)",
                std::io::Error::from(e)
            ))
        },
    )?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )
    .map_err(jail_err("making / a slave mount"))?;
    if !config.fs.is_empty() {
        rustix::mount::mount(
            "proc",
            "/proc",
            "proc",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            c"subset=pid",
        )
        .map_err(jail_err("mounting a procfs with subset=pid on /proc"))?;
    }
    Ok(Jail { socket_dirs })
}

/// struct mount_attr (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// Sets mount attributes on the mount at `path` (and those below it when
/// `recursive`). Written here because rustix 1.1 does not implement
/// mount_setattr(2), and only it makes a mount tree read-only recursively
/// (a bind remount with MS_RDONLY changes the top mount only).
fn mount_setattr(path: &Path, attrs: u64, recursive: bool) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Jail(format!("{}: NUL in path", path.display())))?;
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `c` is a NUL-terminated path and `attr` a live struct
    // mount_attr whose size is passed along; the kernel only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(Error::Jail(format!(
            "mount_setattr on {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// The path of an fd, as a mount(2) source: /proc/self/fd/<n> resolves to
/// what the fd refers to, whatever is mounted over its old path since.
fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// `mkdir -p` of `rel` below `base` (inside the jail's tmpfs).
fn mkdirs(base: &Path, rel: &Path) -> Result<PathBuf> {
    let mut p = base.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(n) => {
                p.push(n);
                match rustix::fs::mkdir(&p, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(jail_err(format!("mkdir {}", p.display()))(e)),
                }
            }
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(Error::Jail(format!(
                    "{}: not a plain absolute path",
                    rel.display()
                )))
            }
        }
    }
    Ok(p)
}

impl Jail {
    /// Step 2 (module doc). `shares` are the roots of the virtio-fs shares
    /// as opened at setup, each with its read-only flag; returns their
    /// roots in the jail, in the same order.
    pub fn enter(self, shares: &[(BorrowedFd<'_>, bool)]) -> Result<Vec<OwnedFd>> {
        let mut dirs = Vec::new();
        for d in &self.socket_dirs {
            let fd = rustix::fs::open(
                d,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(jail_err(format!(
                "opening socket directory {}",
                d.display()
            )))?;
            dirs.push((d, fd));
        }
        let staging = Path::new(STAGING);
        rustix::mount::mount(
            "tmpfs",
            staging,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            c"mode=0755,size=1m,nr_inodes=1024",
        )
        .map_err(jail_err(format!("mounting the jail's tmpfs on {STAGING}")))?;
        let plain = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
        for (i, (fd, read_only)) in shares.iter().enumerate() {
            let target = mkdirs(staging, Path::new(&format!("fs{i}")))?;
            rustix::mount::mount_bind_recursive(fd_path(*fd), &target)
                .map_err(jail_err(format!("bind-mounting share {i}")))?;
            let ro = if *read_only { MOUNT_ATTR_RDONLY } else { 0 };
            mount_setattr(&target, plain | ro, true)?;
        }
        for (d, fd) in &dirs {
            let target = mkdirs(staging, d)?;
            rustix::mount::mount_bind(fd_path(fd.as_fd()), &target)
                .map_err(jail_err(format!("bind-mounting {}", d.display())))?;
            mount_setattr(&target, plain, false)?;
        }
        drop(dirs);
        // The skeleton is complete: no more entries in the jail's root.
        mount_setattr(staging, plain | MOUNT_ATTR_RDONLY, false)?;
        rustix::process::chdir(staging).map_err(jail_err(format!("chdir {STAGING}")))?;
        // With new_root and put_old both ".", the old root ends up mounted
        // on the new one, and is then detached (pivot_root(2), NOTES).
        rustix::process::pivot_root(".", ".").map_err(jail_err("pivot_root"))?;
        rustix::mount::unmount(".", UnmountFlags::DETACH)
            .map_err(jail_err("detaching the old root"))?;
        rustix::process::chdir("/").map_err(jail_err("chdir /"))?;
        (0..shares.len())
            .map(|i| {
                rustix::fs::open(
                    format!("/fs{i}"),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(jail_err(format!("opening /fs{i} in the jail")))
            })
            .collect()
    }
}
