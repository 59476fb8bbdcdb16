//! Exit statuses of the containers' processes.
//!
//! The keeper (`keeper/`) is their parent: it spawns the helpers that fork
//! them, reaps them, and reports each exit to the daemon, which hands it to
//! whoever watches that pid here. An exit can come before the watcher knows
//! the pid (a container whose process ends at once, or an exit the keeper
//! kept while no daemon ran): such exits are kept, bounded, until claimed.
//!
//! A keeper that dies takes the exit statuses of its children with it: they
//! are re-parented to another process, which reaps them. The daemon then
//! watches those processes without being their parent, through a pidfd,
//! and reports each end with status 137, as containerd does for a task
//! whose status is lost. Which processes those are is decided by keeper
//! *generation* (one per keeper the daemon connects to, in
//! [`Reaper::set_keeper`]): a process is known as made under the keeper of
//! a generation ([`Reaper::expect`]); when that keeper is replaced, or was
//! replaced before the process was known, it is watched through a pidfd.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ironcell_basics::exit_status;
use ironcell_basics::proc_stat::ProcStat;
use tokio::io::unix::AsyncFd;
use tokio::runtime::Handle;
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

#[derive(Default)]
struct State {
    watchers: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: HashMap<i32, Exit>,
    order: VecDeque<i32>,
    /// Watches registered by [`Reaper::expect`], claimed by `watch`.
    pending: HashMap<i32, oneshot::Receiver<Exit>>,
    /// Pids watched through a pidfd (their keeper was lost).
    orphans: HashSet<i32>,
    /// The keeper now serving, its generation, and where pidfd watches run.
    keeper: i32,
    generation: u64,
    runtime: Option<Handle>,
}

#[derive(Default)]
pub struct Reaper {
    state: Mutex<State>,
}

impl Reaper {
    /// Hands `exit` to its watcher, or keeps it until one comes.
    pub fn deliver(&self, exit: Exit) {
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
        let mut st = self.state.lock().unwrap();
        if let Some(rx) = st.pending.remove(&pid) {
            return rx;
        }
        let (tx, rx) = oneshot::channel();
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
        let mut st = self.state.lock().unwrap();
        st.watchers.remove(&pid);
        st.pending.remove(&pid);
    }

    /// The generation of the keeper now serving (0 before any).
    pub fn generation(&self) -> u64 {
        self.state.lock().unwrap().generation
    }

    /// Process `pid` was made under the keeper of `generation` (the keeper
    /// spawned it, or spawned the helper that forked it): its exit is
    /// watched from now on, and claimed by the next [`Reaper::watch`] of
    /// it. If that keeper has been replaced meanwhile, the process is
    /// watched through a pidfd at once.
    pub fn expect(self: &Arc<Self>, pid: i32, generation: u64) {
        let lost = {
            let mut st = self.state.lock().unwrap();
            if st.pending.contains_key(&pid) {
                return;
            }
            let (tx, rx) = oneshot::channel();
            if let Some(exit) = st.unclaimed.remove(&pid) {
                st.order.retain(|p| *p != pid);
                let _ = tx.send(exit);
                st.pending.insert(pid, rx);
                return;
            }
            st.watchers.insert(pid, tx);
            st.pending.insert(pid, rx);
            generation != st.generation
        };
        if lost {
            self.watch_without_parent(pid);
        }
    }

    /// The daemon is connected to keeper `pid`, a new generation, from now
    /// on; pidfd watches run on `runtime`. Every awaited process whose
    /// parent is not that keeper lost its keeper: it is watched through a
    /// pidfd (see [`Reaper::sweep`]).
    pub fn set_keeper(self: &Arc<Self>, pid: i32, runtime: Handle) {
        {
            let mut st = self.state.lock().unwrap();
            st.keeper = pid;
            st.generation += 1;
            st.runtime = Some(runtime);
        }
        self.sweep();
    }

    /// Watches every awaited process whose parent is not the keeper now
    /// serving through a pidfd, and reports its end with status 137: its
    /// own status went with the keeper that was its parent. A process
    /// already gone is reported at once: the exits its keeper sent before
    /// dying were delivered before the loss was noticed. Between a keeper's
    /// death and this call a pid could be reused; pids are allocated in
    /// sequence up to `pid_max`, so that needs the whole range to wrap in
    /// that time.
    pub fn sweep(self: &Arc<Self>) {
        let (keeper, awaited) = {
            let st = self.state.lock().unwrap();
            let awaited: Vec<i32> = st
                .watchers
                .keys()
                .filter(|pid| !st.orphans.contains(pid))
                .copied()
                .collect();
            (st.keeper, awaited)
        };
        for pid in awaited {
            if ProcStat::of(pid).map(|s| s.parent) != Some(keeper) {
                self.watch_without_parent(pid);
            }
        }
    }

    fn watch_without_parent(self: &Arc<Self>, pid: i32) {
        let runtime = {
            let mut st = self.state.lock().unwrap();
            if !st.orphans.insert(pid) {
                return;
            }
            st.runtime.clone()
        };
        let lost = move || Exit {
            pid,
            status: exit_status::KILLED,
            at: SystemTime::now(),
        };
        let Some(runtime) = runtime else {
            return self.orphan_ended(lost());
        };
        let _enter = runtime.enter();
        let watch = pidfd_open(pid).and_then(|fd| {
            // SAFETY: the OwnedFd is moved into the AsyncFd, which keeps it
            // open and unchanged until it is dropped.
            unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
        });
        match watch {
            Ok(fd) => {
                tracing::warn!(pid, "watching a process its lost keeper was the parent of");
                let reaper = self.clone();
                runtime.spawn(async move {
                    // Readable once the process has ended.
                    let _ = fd.readable().await;
                    reaper.orphan_ended(lost());
                });
            }
            Err(_) => self.orphan_ended(lost()),
        }
    }

    fn orphan_ended(&self, exit: Exit) {
        self.state.lock().unwrap().orphans.remove(&exit.pid);
        self.deliver(exit);
    }
}

/// A pidfd for `pid`: it becomes readable when the process ends, whoever
/// its parent is.
fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
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

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap()
    }

    async fn reported(rx: oneshot::Receiver<Exit>) -> Exit {
        tokio::time::timeout(std::time::Duration::from_secs(10), rx)
            .await
            .expect("the end of the process is reported")
            .unwrap()
    }

    /// This test process plays the keeper: its children are the keeper's.
    #[tokio::test]
    async fn a_process_of_a_lost_keeper_is_reported_when_it_ends() {
        let r = Arc::new(Reaper::default());
        let me = std::process::id() as i32;
        r.set_keeper(me, Handle::current());
        let mut child = sleeper();
        let pid = child.id() as i32;
        let mut rx = r.watch(pid);
        r.sweep();
        assert!(
            rx.try_recv().is_err(),
            "the keeper's own child is not an orphan"
        );
        // Another keeper now: the child's parent is not it.
        r.set_keeper(1, Handle::current());
        r.sweep();
        assert!(rx.try_recv().is_err(), "reported before it ended");
        child.wait().unwrap();
        assert_eq!(reported(rx).await.status, exit_status::KILLED);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            r.state.lock().unwrap().unclaimed.is_empty(),
            "reported once"
        );
    }

    /// A process known only after its keeper was replaced (a container's
    /// init, whose helper ran under the old keeper) is watched at once; one
    /// made under the keeper now serving is left to that keeper.
    #[tokio::test]
    async fn a_process_made_under_a_replaced_keeper_is_watched_at_once() {
        let r = Arc::new(Reaper::default());
        r.set_keeper(std::process::id() as i32, Handle::current());
        let old = r.generation();
        r.set_keeper(1, Handle::current());
        let mut current = sleeper();
        r.expect(current.id() as i32, r.generation());
        let mut late = sleeper();
        let pid = late.id() as i32;
        r.expect(pid, old);
        late.wait().unwrap();
        assert_eq!(reported(r.watch(pid)).await.status, exit_status::KILLED);
        current.wait().unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut rx = r.watch(current.id() as i32);
        assert!(rx.try_recv().is_err(), "the serving keeper reports it");
        r.deliver(Exit {
            pid: current.id() as i32,
            status: 0,
            at: SystemTime::now(),
        });
        assert_eq!(rx.try_recv().unwrap().status, 0);
        // A gone process of a replaced keeper: reported at once.
        r.expect(i32::MAX, old);
        assert_eq!(
            reported(r.watch(i32::MAX)).await.status,
            exit_status::KILLED
        );
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
}
