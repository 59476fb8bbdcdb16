//! A create's claim on the container it makes.
//!
//! The claim is the task's `creating.json`, written before anything of the
//! task is made. The helper making the container holds it locked (a POSIX
//! record lock: owned by the helper process alone, not inherited by the
//! processes it forks, released when it exits) and makes nothing once the
//! file is no longer at that name. Whoever removes a create whose daemon
//! died or gave up first renames the claim to `abandoned.json`, then waits
//! for its lock:
//!
//! - a helper that locked it before is waited for, and what it made is
//!   removed after it;
//! - a helper that locks it after finds it renamed and makes nothing.
//!
//! So no helper can leave a container behind the removal, whatever the
//! order of their steps, without a look at the process table. The renamed
//! file stays until the removal is done (with the task's directory): a
//! daemon killed in the middle of it leaves the next one the record of
//! what to remove.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg};

/// A lock on the whole file.
fn whole(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// The claim as the helper holds it while it makes the container.
#[derive(Debug)]
pub struct Held {
    _file: File,
}

/// Opens the claim at `path` for locking (a write lock needs it open for
/// writing); None if it does not exist.
fn open(path: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot open {}: {e}", path.display()),
        )),
    }
}

/// Locks the claim at `path` for this process, waiting while a removal
/// holds it. Fails if the create was abandoned (the claim is no longer at
/// `path`), in which case nothing may be made.
pub fn hold(path: &Path) -> io::Result<Held> {
    let abandoned = || {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("the create was abandoned ({} is gone)", path.display()),
        )
    };
    let file = open(path)?.ok_or_else(abandoned)?;
    fcntl(file.as_raw_fd(), FcntlArg::F_SETLKW(&whole(libc::F_WRLCK)))
        .map_err(|e| io::Error::other(format!("cannot lock {}: {e}", path.display())))?;
    let held = file.metadata()?;
    let still_there =
        std::fs::metadata(path).is_ok_and(|m| m.dev() == held.dev() && m.ino() == held.ino());
    if !still_there {
        return Err(abandoned());
    }
    Ok(Held { _file: file })
}

/// A claim taken over from its create, locked (an open file description
/// lock, which another thread of the daemon cannot drop by closing some
/// other descriptor of the file) until dropped.
#[derive(Debug)]
pub struct TakenOver {
    _file: Option<File>,
    /// Whether a helper still held it when the wait ran out.
    pub timed_out: bool,
}

/// How often a take-over tries the lock while a helper holds it.
const RETRY: Duration = Duration::from_millis(10);

/// Abandons the create whose claim is at `path`, renaming it to
/// `abandoned` (a claim renamed before is taken from there), and waits, at
/// most `limit`, until no helper holds it. What the create made may be
/// removed while the result is held (unless it timed out: a helper may
/// still be making it). A claim that exists under neither name (the
/// create never began) has no helper.
pub async fn take_over(path: &Path, abandoned: &Path, limit: Duration) -> io::Result<TakenOver> {
    match std::fs::rename(path, abandoned) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot rename {}: {e}", path.display()),
            ))
        }
    }
    let Some(file) = open(abandoned)? else {
        return Ok(TakenOver {
            _file: None,
            timed_out: false,
        });
    };
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match fcntl(
            file.as_raw_fd(),
            FcntlArg::F_OFD_SETLK(&whole(libc::F_WRLCK)),
        ) {
            Ok(_) => {
                return Ok(TakenOver {
                    _file: Some(file),
                    timed_out: false,
                })
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => {}
            Err(e) => {
                return Err(io::Error::other(format!(
                    "cannot lock {}: {e}",
                    path.display()
                )))
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(TakenOver {
                _file: Some(file),
                timed_out: true,
            });
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A helper stand-in: a child process that holds the claim at `path`
    /// (a POSIX lock of its own) for `millis`, then exits.
    struct Holder(libc::pid_t);

    impl Holder {
        fn start(path: &Path, millis: u64) -> Holder {
            let file = open(path).unwrap().unwrap();
            let (r, w) = nix::unistd::pipe().unwrap();
            let lock = whole(libc::F_WRLCK);
            let pause = libc::timespec {
                tv_sec: (millis / 1000) as libc::time_t,
                tv_nsec: ((millis % 1000) * 1_000_000) as libc::c_long,
            };
            // SAFETY: the child makes only async-signal-safe system calls
            // (fcntl, write, nanosleep, _exit) on memory prepared before
            // the fork.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: as above; every pointer is to live memory.
                unsafe {
                    libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &lock);
                    libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1);
                    libc::nanosleep(&pause, std::ptr::null_mut());
                    libc::_exit(0);
                }
            }
            assert!(pid > 0);
            drop(w);
            let mut byte = [0u8; 1];
            assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut byte).unwrap(), 1);
            Holder(pid)
        }

        /// Whether it exits within `limit` (reaping it then). Its lock
        /// goes a moment before it can be reaped.
        fn ends_within(&self, limit: Duration) -> bool {
            let deadline = std::time::Instant::now() + limit;
            loop {
                let mut status = 0;
                // SAFETY: waitpid on our own child, with a valid status
                // pointer.
                if unsafe { libc::waitpid(self.0, &mut status, libc::WNOHANG) } == self.0 {
                    return true;
                }
                if std::time::Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    impl Drop for Holder {
        fn drop(&mut self) {
            // SAFETY: kill and waitpid of our own child (already reaped:
            // both fail harmlessly).
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), 0);
            }
        }
    }

    #[tokio::test]
    async fn a_take_over_waits_for_the_helper_holding_the_claim() {
        let dir = tempfile::tempdir().unwrap();
        let claim = dir.path().join("creating.json");
        let abandoned = dir.path().join("abandoned.json");
        std::fs::write(&claim, "{}").unwrap();
        let helper = Holder::start(&claim, 300);
        let taken = take_over(&claim, &abandoned, Duration::from_secs(20))
            .await
            .unwrap();
        assert!(!taken.timed_out);
        assert!(
            helper.ends_within(Duration::from_secs(1)),
            "returned while it held"
        );
        assert!(!claim.exists(), "the claim is abandoned");
        assert!(abandoned.exists(), "the record of what to remove stays");
    }

    #[tokio::test]
    async fn a_take_over_gives_up_waiting_at_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let claim = dir.path().join("creating.json");
        std::fs::write(&claim, "{}").unwrap();
        let helper = Holder::start(&claim, 30_000);
        let taken = take_over(
            &claim,
            &dir.path().join("abandoned.json"),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        assert!(taken.timed_out);
        assert!(!helper.ends_within(Duration::ZERO));
    }

    #[tokio::test]
    async fn a_helper_after_the_take_over_makes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let claim = dir.path().join("creating.json");
        std::fs::write(&claim, "{}").unwrap();
        let abandoned = dir.path().join("abandoned.json");
        // Opened before the take-over, locked after it: sees it abandoned.
        let early = open(&claim).unwrap().unwrap();
        let taken = take_over(&claim, &abandoned, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(!taken.timed_out);
        let e = hold(&claim).unwrap_err();
        assert!(e.to_string().contains("abandoned"), "{e}");
        drop(taken);
        fcntl(early.as_raw_fd(), FcntlArg::F_SETLKW(&whole(libc::F_WRLCK))).unwrap();
        assert!(!claim.exists());
        // A second take-over (a daemon killed in the first) finds it under
        // its new name.
        let again = take_over(&claim, &abandoned, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(again._file.is_some());
    }

    #[tokio::test]
    async fn a_claim_that_is_gone_has_no_helper() {
        let dir = tempfile::tempdir().unwrap();
        let taken = take_over(
            &dir.path().join("creating.json"),
            &dir.path().join("abandoned.json"),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert!(!taken.timed_out);
    }

    #[test]
    fn a_live_claim_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let claim = dir.path().join("creating.json");
        std::fs::write(&claim, "{}").unwrap();
        let _held = hold(&claim).unwrap();
    }
}
