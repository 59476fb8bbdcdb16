//! One process the host asked for (a container's init or an exec'd
//! process): its stdio ends on the agent's side, the copying between them
//! and the host's stream connections, and its exit.
//!
//! A process writes into pipes (or a pty) the agent holds. Its output is
//! copied to the host once the host attaches the stream; until then it
//! waits in the pipe, so nothing is lost if the host attaches late. The
//! exit is reported ([`Process::wait`]) only once every output stream has
//! reached its end and been sent: a reader of the exit status has already
//! received everything the process wrote. The streams and their copying
//! are in `stdio.rs`.

mod stdio;

use std::fs::File;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::AgentError;
use stdio::Streams;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + the signal's number.
    pub code: i32,
    /// The signal that ended it, 0 if none.
    pub signal: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn from_wait(status: nix::sys::wait::WaitStatus) -> Option<Exit> {
        use nix::sys::wait::WaitStatus::*;
        let (code, signal) = match status {
            Exited(_, c) => (c, 0),
            Signaled(_, s, _) => (
                ironcell_basics::exit_status::of_signal(s as i32) as i32,
                s as u32,
            ),
            _ => return None,
        };
        Some(Exit {
            code,
            signal,
            at: SystemTime::now(),
        })
    }

    pub fn at_secs_nanos(&self) -> (i64, u32) {
        let d = self.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        (d.as_secs() as i64, d.subsec_nanos())
    }
}

/// The agent's ends of a process's stdio, made before the process.
pub struct Pipes {
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
}

impl Pipes {
    /// Three pipes: the process's ends (its fds 0, 1 and 2) and the
    /// agent's. A process with a terminal gets none (its pty master arrives
    /// through the console socket instead).
    pub fn new(terminal: bool) -> Result<(ironcell_container::ProcessIo, Pipes), AgentError> {
        if terminal {
            return Ok((
                Default::default(),
                Pipes {
                    stdin: None,
                    stdout: None,
                    stderr: None,
                },
            ));
        }
        let pipe =
            || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(AgentError::sys("pipe"));
        let stdin = {
            let (in_r, in_w) = pipe()?;
            (in_r, File::from(in_w))
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        Ok((
            ironcell_container::ProcessIo {
                stdin: Some(stdin.0),
                stdout: Some(out_w),
                stderr: Some(err_w),
            },
            Pipes {
                stdin: Some(stdin.1),
                stdout: Some(File::from(out_r)),
                stderr: Some(File::from(err_r)),
            },
        ))
    }
}

#[derive(Default)]
struct State {
    streams: Streams,
    exit: Option<Exit>,
    /// Run once the process has exited ([`Process::on_exit`]).
    on_exit: Option<Box<dyn FnOnce() + Send>>,
}

pub struct Process {
    pub pid: i32,
    pub terminal: bool,
    state: Mutex<State>,
    changed: Condvar,
}

impl Process {
    /// A process whose agent-side ends are `pipes` (no terminal) or `tty`
    /// (the pty master).
    pub fn new(pid: i32, pipes: Pipes, tty: Option<File>) -> Process {
        let terminal = tty.is_some();
        Process {
            pid,
            terminal,
            state: Mutex::new(State {
                streams: Streams::new(pipes, tty),
                exit: None,
                on_exit: None,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_for_change<'a>(&self, s: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(s).unwrap_or_else(|p| p.into_inner())
    }

    /// Records the exit (from the reaper), and runs what waited for it.
    pub fn exited(&self, exit: Exit) {
        let hook = {
            let mut s = self.lock();
            if s.exit.is_none() {
                s.exit = Some(exit);
            }
            self.changed.notify_all();
            s.on_exit.take()
        };
        if let Some(f) = hook {
            f();
        }
    }

    /// Runs `f` once the process has exited (now, if it has), on the thread
    /// that records the exit: `f` must not block.
    pub fn on_exit(&self, f: Box<dyn FnOnce() + Send>) {
        let mut s = self.lock();
        if s.exit.is_none() {
            s.on_exit = Some(f);
            return;
        }
        drop(s);
        f();
    }

    pub fn exit(&self) -> Option<Exit> {
        self.lock().exit
    }

    /// Blocks until the process has exited.
    pub fn wait_exit(&self) -> Exit {
        let mut s = self.lock();
        loop {
            if let Some(exit) = s.exit {
                return exit;
            }
            s = self.wait_for_change(s);
        }
    }

    /// Blocks until the process has exited and its output streams have all
    /// been sent to their end.
    pub fn wait(&self) -> Exit {
        let mut s = self.lock();
        loop {
            if let (Some(exit), true) = (s.exit, s.streams.all_output_sent()) {
                return exit;
            }
            s = self.wait_for_change(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        use nix::unistd::Pid;
        let e = Exit::from_wait(WaitStatus::Exited(Pid::from_raw(5), 3)).unwrap();
        assert_eq!((e.code, e.signal), (3, 0));
        let e = Exit::from_wait(WaitStatus::Signaled(
            Pid::from_raw(5),
            Signal::SIGKILL,
            false,
        ))
        .unwrap();
        assert_eq!((e.code, e.signal), (137, 9));
        assert!(Exit::from_wait(WaitStatus::StillAlive).is_none());
    }
}
