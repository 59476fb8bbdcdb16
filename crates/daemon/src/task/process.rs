//! One process of a task (its init or an exec): its state, its stdio and
//! what the keeper holds of it.

use std::fs::File;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::keeper::{Keeper, ProcKey, Slot};
use crate::reaper::Exit;
use crate::stdio::StdinRelay;

/// A process's stdio as containerd gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoSpec {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// A process's state as containerd sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

/// Where a process is in its life before it ends (its end is its exit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Made (an init) or added (an exec), not started.
    Created,
    /// An exec's Start is forking it: a second Start must wait or fail.
    Starting,
    /// Started: it runs until its exit.
    Started,
}

/// The init process or one exec'd process.
pub(super) struct Proc {
    /// The process's name at the keeper.
    pub key: ProcKey,
    pub pid: i32,
    pub io: IoSpec,
    pub phase: Phase,
    /// Its exit, once it ended; Wait subscribes to it.
    pub exit: watch::Sender<Option<Exit>>,
    pub stdin: Option<StdinRelay>,
    pub master: Option<File>,
    /// An exec's process.json (written at Exec, used at Start).
    pub spec: Option<PathBuf>,
    /// What the keeper may hold under `key` and has not been told to drop
    /// yet: the stdin relay's ends (a stdin FIFO) and the terminal's (a
    /// terminal). Told once; a process without either costs the keeper no
    /// message.
    kept: Kept,
}

#[derive(Debug, Clone, Copy, Default)]
struct Kept {
    stdin: bool,
    tty: bool,
}

impl Proc {
    pub fn new(io: IoSpec, key: ProcKey) -> Proc {
        Proc {
            kept: Kept {
                stdin: !io.stdin.is_empty(),
                tty: io.terminal,
            },
            key,
            pid: 0,
            io,
            phase: Phase::Created,
            exit: watch::channel(None).0,
            stdin: None,
            master: None,
            spec: None,
        }
    }

    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Its state for containerd (`paused`: its task is paused).
    pub fn status(&self, paused: bool) -> ProcStatus {
        match (self.exited(), self.phase, paused) {
            (Some(_), _, _) => ProcStatus::Stopped,
            (None, Phase::Created | Phase::Starting, _) => ProcStatus::Created,
            (None, Phase::Started, true) => ProcStatus::Paused,
            (None, Phase::Started, false) => ProcStatus::Running,
        }
    }

    /// Alive as far as the daemon knows: forked and not ended.
    pub fn alive(&self) -> bool {
        self.pid > 0 && self.exited().is_none()
    }

    /// Ends the process's stdin (CloseIO): the relay stops and the keeper
    /// drops its copy of the pipe.
    pub fn close_stdin(&mut self, keeper: Option<&Keeper>) {
        if let Some(s) = self.stdin.take() {
            s.close();
        }
        if let (Some(k), true) = (keeper, std::mem::take(&mut self.kept.stdin)) {
            k.release(&self.key, Slot::Stdin);
            k.release(&self.key, Slot::StdinFifo);
        }
    }

    /// The process is gone: nothing of its stdio is kept any more.
    pub fn release_io(&mut self, keeper: Option<&Keeper>) {
        self.close_stdin(keeper);
        if let (Some(k), true) = (keeper, std::mem::take(&mut self.kept.tty)) {
            k.release(&self.key, Slot::Tty);
            k.release(&self.key, Slot::TtyOut);
        }
    }
}

/// A process's view for State and Wait.
#[derive(Debug, Clone)]
pub struct ProcView {
    pub pid: i32,
    pub status: ProcStatus,
    pub io: IoSpec,
    pub exit: Option<Exit>,
}

impl ProcView {
    pub(super) fn of(p: &Proc, paused: bool) -> ProcView {
        ProcView {
            pid: p.pid,
            status: p.status(paused),
            io: p.io.clone(),
            exit: p.exited(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn status_follows_phase_pause_and_exit() {
        let mut p = Proc::new(IoSpec::default(), ProcKey::new("ns", "t", ""));
        assert_eq!(p.status(false), ProcStatus::Created);
        p.phase = Phase::Starting;
        assert_eq!(p.status(true), ProcStatus::Created);
        p.phase = Phase::Started;
        assert_eq!(p.status(false), ProcStatus::Running);
        assert_eq!(p.status(true), ProcStatus::Paused);
        assert!(!p.alive(), "no pid yet");
        p.pid = 42;
        assert!(p.alive());
        p.exit.send_replace(Some(Exit {
            pid: 42,
            status: 3,
            at: SystemTime::now(),
        }));
        assert_eq!(p.status(true), ProcStatus::Stopped);
        assert!(!p.alive());
    }
}
