//! Reaps every child of the agent (as PID 1 it inherits every orphan of
//! the guest; on a host it is a child subreaper) and hands the exits of
//! the processes it watches to their [`Process`].
//!
//! The container engine forks and waits for its own short-lived children
//! (the intermediate process, hooks). A reaper that called `waitpid(-1)`
//! meanwhile could take their status from under it. So every engine call
//! that forks holds the spawn lock ([`Reaper::spawn_lock`]), and the reaper
//! reaps only while it holds the lock too. A process started under the lock
//! is registered ([`Reaper::watch`]) before the lock is released, so its
//! exit is never reaped unclaimed.
//!
//! SIGCHLD arrives through signal-hook's self-pipe rather than a blocked
//! signal and a signalfd: a blocked mask would be inherited by the
//! containers' processes, which the engine forks from the agent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use crate::process::{Exit, Process};

#[derive(Default)]
pub struct Reaper {
    spawn: Mutex<()>,
    watched: Mutex<HashMap<i32, Arc<Process>>>,
}

impl Reaper {
    /// Held across every engine call that forks.
    pub fn spawn_lock(&self) -> MutexGuard<'_, ()> {
        self.spawn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `pid`'s exit to `process` when it comes.
    pub fn watch(&self, pid: i32, process: Arc<Process>) {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid, process);
    }

    /// Reaps every child that has exited.
    pub fn reap(&self) {
        let _spawning = self.spawn_lock();
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let (Some(pid), Some(exit)) = (status.pid(), Exit::from_wait(status)) else {
                continue;
            };
            let process = self
                .watched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&pid.as_raw());
            match process {
                Some(p) => p.exited(exit),
                None => tracing::debug!(pid = pid.as_raw(), "reaped an orphan"),
            }
        }
    }

    /// Starts the reaper thread.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        // Registered before the thread runs, so no SIGCHLD falls between.
        let signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGCHLD])?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                let mut signals = signals;
                me.reap();
                for _ in signals.forever() {
                    me.reap();
                }
            })?;
        Ok(())
    }
}
