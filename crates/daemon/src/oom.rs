//! OOM kills in a container's memory cgroup, for containerd's TaskOOM event.
//!
//! - cgroup v1: an eventfd registered on `memory.oom_control` through
//!   `cgroup.event_control` counts OOMs (it also fires once when the cgroup
//!   is removed, which ends the watch).
//! - cgroup v2: inotify on `memory.events`, whose `oom_kill` counter grows
//!   with each kill.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

struct Fd<T: AsFd>(T);

impl<T: AsFd> AsRawFd for Fd<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn register<T: AsFd>(t: T) -> std::io::Result<AsyncFd<Fd<T>>> {
    // SAFETY: the fd is owned by `t`, which the AsyncFd owns and keeps open
    // and unchanged until it is dropped.
    unsafe { AsyncFd::register(Fd(t)) }.map_err(|e| e.into_parts().1)
}

/// The `oom_kill` count of a v2 `memory.events` file.
pub fn oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Calls `on_oom` for each OOM kill in the memory cgroup `dir` until the
/// cgroup goes away (or the returned task is aborted). Must be called
/// inside the tokio runtime.
pub fn watch(dir: PathBuf, on_oom: impl Fn() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    let events = dir.join("memory.events");
    if events.exists() {
        return watch_v2(events, on_oom);
    }
    watch_v1(dir, on_oom)
}

/// Calls `on_oom` for each OOM kill `waiter` returns (a backend that
/// reports them itself, such as a VM's agent) until it fails (its container
/// is gone) or the returned task is aborted. The waiter blocks without a
/// deadline, so it runs on a thread of its own rather than the blocking
/// pool; that thread ends with the waiter's next return. Must be called
/// inside the tokio runtime.
pub fn watch_waiter(
    mut waiter: ironcell_sandbox::OomWaiter,
    on_oom: impl Fn() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("oom-waiter".into())
        .spawn(move || {
            while waiter().is_ok() {
                if tx.send(()).is_err() {
                    return;
                }
            }
        })?;
    Ok(tokio::spawn(async move {
        while rx.recv().await.is_some() {
            on_oom();
        }
    }))
}

fn watch_v1(dir: PathBuf, on_oom: impl Fn() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    let control = File::open(dir.join("memory.oom_control"))?;
    OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.event_control"))?
        .write_all(format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()).as_bytes())?;
    let efd = register(efd)?;
    Ok(tokio::spawn(async move {
        let _control = control;
        loop {
            let Ok(mut guard) = efd.readable().await else {
                return;
            };
            match guard.try_io(|e| e.get_ref().0.read().map_err(std::io::Error::from)) {
                Ok(Ok(_)) => {
                    if !dir.exists() {
                        return; // the cgroup was removed
                    }
                    on_oom();
                }
                Ok(Err(_)) => return,
                Err(_would_block) => continue,
            }
        }
    }))
}

fn watch_v2(
    events: PathBuf,
    on_oom: impl Fn() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    ino.add_watch(&events, AddWatchFlags::IN_MODIFY)?;
    let mut seen = oom_kills(&std::fs::read_to_string(&events)?);
    let ino = register(ino)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = ino.readable().await else {
                return;
            };
            match guard.try_io(|i| i.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(Ok(_)) => {
                    let Ok(text) = std::fs::read_to_string(&events) else {
                        return; // the cgroup was removed
                    };
                    let now = oom_kills(&text);
                    for _ in seen..now {
                        on_oom();
                    }
                    seen = seen.max(now);
                }
                Ok(Err(_)) => return,
                Err(_would_block) => continue,
            }
        }
    }))
}

/// Whether `dir` looks like a memory cgroup this module can watch.
pub fn watchable(dir: &Path) -> bool {
    dir.join("memory.events").exists() || dir.join("memory.oom_control").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_v2_oom_kills() {
        assert_eq!(
            oom_kills("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n"),
            2
        );
        assert_eq!(oom_kills("low 0\n"), 0);
        assert_eq!(oom_kills("oom_kill x\n"), 0);
    }
}
