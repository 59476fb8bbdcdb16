//! Exit statuses of the containers' processes.
//!
//! The keeper (`keeper/`) is their parent: it spawns the helpers that fork
//! them, reaps them, and reports each exit to the daemon, which hands it to
//! whoever watches that pid here. An exit can come before the watcher knows
//! the pid (a container whose process ends at once, or an exit the keeper
//! kept while no daemon ran): such exits are kept, bounded, until claimed.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

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
}
