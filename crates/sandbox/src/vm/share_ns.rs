//! The mount namespace of a VM's share, pinned on a file of the host's,
//! for a VM that no relay owns (`detached.rs`).
//!
//! The share lives in a mount namespace of its own (`share.rs`), which
//! lasts as long as something holds it. A relay does; the helper that
//! makes a detached VM exits. QEMU, left running, would hold it, but
//! ironcell-vmm (hypervisor or device process) jails itself in a
//! namespace of its own, a slave of the share's. So the namespace is
//! bound onto a file, `<run_dir>/pin/mnt`, as `ip netns` binds a network
//! namespace:
//!
//! - the binding is made from the host's mount namespace (the kernel
//!   lets a namespace be bound only into an older one), on a file whose
//!   mount is private (bound onto a shared mount it would propagate, and
//!   the kernel refuses that). `<run_dir>/pin` is bound onto itself and
//!   made private for that, per VM, so nothing stays on the host once the
//!   VM is removed;
//! - a pod member's create enters the namespace through the file
//!   (`pod.rs`), whatever processes the VM has;
//! - [`unpin`] ends it: the share's mounts vanish with the VM's last
//!   process, or at once if it has none left.
//!
//! The kernel does not copy a bound mount namespace into namespaces made
//! later, so no other process's namespace keeps the share alive.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, CloneFlags};

use super::{share, vm_err};
use crate::Result;

/// The directory, in a VM's run directory, that holds the pinned namespace.
const PIN_DIR: &str = "pin";

/// The file the share's mount namespace of the VM in `run_dir` is bound
/// onto.
pub fn pin_path(run_dir: &Path) -> PathBuf {
    run_dir.join(PIN_DIR).join("mnt")
}

/// Gives the calling thread a mount namespace of its own for a VM's share
/// ([`share::private_mount_namespace`]) and binds it onto
/// [`pin_path`]`(run_dir)`, which must not exist yet. The thread must not
/// share its filesystem attributes (a single-threaded process, or a thread
/// that unshared `CLONE_FS`); it ends in the new namespace, its working
/// directory at the same path as before.
pub fn private_pinned_namespace(run_dir: &Path) -> Result<()> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        vm_err(format!("cannot pin the VM's mount namespace: {what}: {e}"))
    };
    let cwd = std::env::current_dir().ok();
    let host = File::open("/proc/thread-self/ns/mnt").map_err(|e| err("the host's", &e))?;
    share::private_mount_namespace()?;
    let own = File::open("/proc/thread-self/ns/mnt").map_err(|e| err("its own", &e))?;
    setns(&host, CloneFlags::CLONE_NEWNS).map_err(|e| err("back to the host's", &e))?;
    let pinned = bind_namespace(&own, run_dir);
    let back = setns(&own, CloneFlags::CLONE_NEWNS).map_err(|e| err("back to its own", &e));
    if let Some(cwd) = cwd {
        let _ = std::env::set_current_dir(cwd);
    }
    if pinned.is_ok() && back.is_err() {
        unpin(run_dir);
    }
    pinned.and(back)
}

/// In the host's namespace: makes `<run_dir>/pin` a private mount of its
/// own and binds namespace `ns` onto the file in it; undone on error,
/// unless the directory was there already (another VM's pin).
fn bind_namespace(ns: &File, run_dir: &Path) -> Result<()> {
    let dir = run_dir.join(PIN_DIR);
    let file = pin_path(run_dir);
    let err = |p: &Path, e: &dyn std::fmt::Display| {
        vm_err(format!(
            "cannot pin the VM's mount namespace on {}: {e}",
            p.display()
        ))
    };
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| err(&dir, &e))?;
    let bound = (|| {
        mount(
            Some(&dir),
            &dir,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err(&dir, &e))?;
        mount(
            None::<&str>,
            &dir,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| err(&dir, &e))?;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
            .map_err(|e| err(&file, &e))?;
        let source = PathBuf::from(format!("/proc/self/fd/{}", ns.as_raw_fd()));
        mount(
            Some(&source),
            &file,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err(&file, &e))
    })();
    if bound.is_err() {
        unpin(run_dir);
    }
    bound
}

/// Opens the mount namespace pinned at `pin` (for `setns`). Err if nothing
/// is bound there any more.
pub fn open_pinned(pin: &Path) -> Result<File> {
    let f = File::open(pin).map_err(|e| {
        vm_err(format!(
            "{}: no mount namespace is pinned there: {e}",
            pin.display()
        ))
    })?;
    // An unpinned file is an empty regular file; a namespace's is not.
    // f_type is i64 on some targets, u32 or i32 on others.
    let is_ns = rustix::fs::fstatfs(&f).is_ok_and(|s| i128::from(s.f_type) == NSFS_MAGIC);
    if !is_ns {
        return Err(vm_err(format!(
            "{}: no mount namespace is pinned there",
            pin.display()
        )));
    }
    Ok(f)
}

/// `NSFS_MAGIC` of linux/magic.h: the file system of namespace files.
const NSFS_MAGIC: i128 = 0x6e73_6673;

/// Unbinds the namespace pinned for the VM in `run_dir`, and the pin's
/// directory; nothing if there is none.
pub fn unpin(run_dir: &Path) {
    let dir = run_dir.join(PIN_DIR);
    let file = pin_path(run_dir);
    let _ = umount2(&file, MntFlags::MNT_DETACH);
    let _ = fs::remove_file(&file);
    let _ = umount2(&dir, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&dir);
}

/// Runs `f` on a thread of its own whose filesystem attributes are its own
/// (so that it may change its mount namespace).
#[cfg(test)]
pub(super) fn on_own_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_FS).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `p` is the root of a mount, in the calling thread's view.
    fn is_mount_root(p: &Path) -> bool {
        let st = rustix::fs::statx(
            rustix::fs::CWD,
            p,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            rustix::fs::StatxFlags::BASIC_STATS,
        )
        .unwrap();
        st.stx_attributes
            .contains(rustix::fs::StatxAttributes::MOUNT_ROOT)
    }

    #[test]
    fn a_pinned_namespace_outlives_its_maker_until_unpinned() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: pinning a mount namespace needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("run");
        let marked = tmp.path().join("marked");
        fs::create_dir(&run_dir).unwrap();
        fs::create_dir(&marked).unwrap();

        // The maker's namespace gets a tmpfs the host's does not see, and
        // the maker's thread then ends.
        on_own_thread(|| {
            private_pinned_namespace(&run_dir).unwrap();
            mount(
                Some("tmpfs"),
                &marked,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
        });
        assert!(!is_mount_root(&marked), "the tmpfs leaked to the host");
        let pin = pin_path(&run_dir);
        let ns = open_pinned(&pin).expect("the namespace is pinned");
        let seen = on_own_thread(|| {
            setns(&ns, CloneFlags::CLONE_NEWNS).unwrap();
            is_mount_root(&marked)
        });
        assert!(seen, "the pinned namespace lost the maker's tmpfs");
        drop(ns);

        // A second pin on the same run directory is refused, and undoes
        // nothing of the first.
        let again = on_own_thread(|| private_pinned_namespace(&run_dir));
        assert!(again.is_err(), "a second pin was accepted");
        assert!(open_pinned(&pin).is_ok(), "a refused pin undid the first");

        unpin(&run_dir);
        assert!(!run_dir.join(PIN_DIR).exists(), "the pin stays");
        assert!(open_pinned(&pin).is_err(), "an unpinned namespace opened");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let run = run_dir.to_string_lossy().into_owned();
        assert!(
            !mounts.contains(&run),
            "mounts left under the run directory: {mounts}"
        );
        // An unpinned file is refused too.
        fs::write(tmp.path().join("plain"), b"").unwrap();
        assert!(open_pinned(&tmp.path().join("plain")).is_err());
    }
}
