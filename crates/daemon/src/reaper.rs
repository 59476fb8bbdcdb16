//! Exit statuses of the daemon's children.
//!
//! ironcelld is a child subreaper (`PR_SET_CHILD_SUBREAPER`): a container's
//! init process, forked by a short-lived helper, is re-parented to the
//! daemon when the helper exits, and so are exec'd processes. One task reaps
//! every child on SIGCHLD (`waitpid(-1)`) and hands each exit to whoever
//! watches that pid. An exit can come before the watcher knows the pid (a
//! container whose process ends at once): such exits are kept, bounded, until
//! claimed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// Exits nobody claimed yet are kept up to this many (oldest dropped). Only
/// processes that end before the daemon learns their pid are claimed late;
/// the bound stops unrelated orphans re-parented to the daemon from piling up.
const MAX_UNCLAIMED: usize = 1024;

/// How a process ended, as containerd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    /// The exit code, or 128 + the signal that killed the process.
    pub status: u32,
    pub at: SystemTime,
}

impl Exit {
    fn from_wait(status: WaitStatus) -> Option<Exit> {
        let (pid, code) = match status {
            WaitStatus::Exited(pid, code) => (pid, code as u32),
            WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as u32),
            _ => return None,
        };
        Some(Exit {
            pid: pid.as_raw(),
            status: code,
            at: SystemTime::now(),
        })
    }
}

#[derive(Default)]
struct State {
    watchers: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: HashMap<i32, Exit>,
    order: VecDeque<i32>,
}

#[derive(Default)]
pub struct Reaper {
    state: Mutex<State>,
}

impl Reaper {
    /// Makes this process a subreaper and starts reaping on SIGCHLD. Must
    /// run inside the tokio runtime, before any child is spawned.
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let reaper = Arc::new(Reaper::default());
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    if let Some(exit) = Exit::from_wait(status) {
                        self.deliver(exit);
                    }
                }
            }
        }
    }

    fn deliver(&self, exit: Exit) {
        let mut st = self.state.lock().unwrap();
        if let Some(tx) = st.watchers.remove(&exit.pid) {
            let _ = tx.send(exit);
            return;
        }
        tracing::debug!(
            pid = exit.pid,
            status = exit.status,
            "exit of an unwatched pid"
        );
        if st.unclaimed.insert(exit.pid, exit).is_none() {
            st.order.push_back(exit.pid);
        }
        while st.order.len() > MAX_UNCLAIMED {
            if let Some(old) = st.order.pop_front() {
                st.unclaimed.remove(&old);
            }
        }
    }

    /// The exit of child `pid`, whether it already happened or not.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock().unwrap();
        if let Some(exit) = st.unclaimed.remove(&pid) {
            st.order.retain(|p| *p != pid);
            let _ = tx.send(exit);
        } else {
            st.watchers.insert(pid, tx);
        }
        rx
    }

    /// Stops watching `pid` (its process was never ours after all).
    pub fn forget(&self, pid: i32) {
        self.state.lock().unwrap().watchers.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(pid: i32) -> Exit {
        Exit {
            pid,
            status: 3,
            at: SystemTime::now(),
        }
    }

    #[test]
    fn early_exit_is_claimed_later() {
        let r = Reaper::default();
        r.deliver(exit(10));
        let mut rx = r.watch(10);
        assert_eq!(rx.try_recv().unwrap().status, 3);
        // Claimed once only.
        let mut rx = r.watch(10);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn watched_exit_is_delivered() {
        let r = Reaper::default();
        let mut rx = r.watch(11);
        assert!(rx.try_recv().is_err());
        r.deliver(exit(11));
        assert_eq!(rx.try_recv().unwrap().pid, 11);
    }

    #[test]
    fn unclaimed_exits_are_bounded() {
        let r = Reaper::default();
        for pid in 0..(MAX_UNCLAIMED as i32 + 10) {
            r.deliver(exit(pid));
        }
        let st = r.state.lock().unwrap();
        assert_eq!(st.unclaimed.len(), MAX_UNCLAIMED);
        assert!(!st.unclaimed.contains_key(&0));
    }

    #[test]
    fn wait_status_mapping() {
        let p = Pid::from_raw(5);
        assert_eq!(Exit::from_wait(WaitStatus::Exited(p, 7)).unwrap().status, 7);
        assert_eq!(
            Exit::from_wait(WaitStatus::Signaled(p, nix::sys::signal::SIGKILL, false))
                .unwrap()
                .status,
            137
        );
        assert!(Exit::from_wait(WaitStatus::StillAlive).is_none());
    }
}
