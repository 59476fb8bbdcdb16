//! One process the host asked for (a container's init or an exec'd
//! process): its stdio ends on the agent's side, the copying between them
//! and the host's stream connections, and its exit.
//!
//! A process writes into pipes (or a pty) the agent holds. Its output is
//! copied to the host once the host attaches the stream; until then it
//! waits in the pipe, so nothing is lost if the host attaches late. The
//! exit is reported ([`Process::wait`]) only once every output stream has
//! reached its end and been sent: a reader of the exit status has already
//! received everything the process wrote.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use ironcell_protocol::stream::StreamKind;
use nix::sys::socket::{shutdown, Shutdown};

use crate::AgentError;

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

/// Where each stream of a process stands.
#[derive(Default)]
struct Streams {
    stdin: Option<File>,
    /// The host's stdin connection while it is copied, for CloseStdin.
    stdin_conn: Option<Arc<File>>,
    stdout: Option<File>,
    stderr: Option<File>,
    tty: Option<Arc<File>>,
    attached: Vec<StreamKind>,
    /// Output streams still to reach their end.
    outputs_open: usize,
}

#[derive(Default)]
struct State {
    streams: Streams,
    exit: Option<Exit>,
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
        let streams = Streams {
            stdin: pipes.stdin,
            stdout: pipes.stdout,
            stderr: pipes.stderr,
            outputs_open: if terminal { 1 } else { 2 },
            tty: tty.map(Arc::new),
            ..Default::default()
        };
        Process {
            pid,
            terminal,
            state: Mutex::new(State {
                streams,
                exit: None,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the exit (from the reaper).
    pub fn exited(&self, exit: Exit) {
        let mut s = self.lock();
        if s.exit.is_none() {
            s.exit = Some(exit);
        }
        self.changed.notify_all();
    }

    pub fn exit(&self) -> Option<Exit> {
        self.lock().exit
    }

    /// Blocks until the process has exited and its output streams have all
    /// been sent to their end.
    pub fn wait(&self) -> Exit {
        let mut s = self.lock();
        loop {
            if let (Some(exit), 0) = (s.exit, s.streams.outputs_open) {
                return exit;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Connects the host's stream connection `conn` to the process's
    /// stream `kind`, and starts copying. A stream is attached once.
    /// `ready` runs once the stream is known to be free, before any byte
    /// is copied (the agent answers `OK` there).
    pub fn attach(
        self: &Arc<Self>,
        kind: StreamKind,
        conn: File,
        ready: impl FnOnce(&File) -> io::Result<()>,
    ) -> Result<(), AgentError> {
        let mut s = self.lock();
        if s.streams.attached.contains(&kind) {
            return Err(AgentError::Invalid(format!(
                "the {} stream is attached already",
                kind.as_str()
            )));
        }
        let no_stream = || {
            AgentError::Invalid(format!(
                "the process has no {} stream ({})",
                kind.as_str(),
                if self.terminal {
                    "it has a terminal"
                } else {
                    "it has no terminal"
                }
            ))
        };
        let available = match kind {
            StreamKind::Stdin => s.streams.stdin.is_some(),
            StreamKind::Stdout => s.streams.stdout.is_some(),
            StreamKind::Stderr => s.streams.stderr.is_some(),
            StreamKind::Tty => s.streams.tty.is_some(),
        };
        if !available {
            return Err(no_stream());
        }
        ready(&conn).map_err(AgentError::io("cannot answer the stream's header"))?;
        let conn = Arc::new(conn);
        match kind {
            StreamKind::Stdin => {
                let stdin = s.streams.stdin.take().ok_or_else(no_stream)?;
                s.streams.stdin_conn = Some(conn.clone());
                std::thread::spawn(move || {
                    let _ = copy(&conn, &stdin);
                    // Dropping `stdin` closes the process's input.
                });
            }
            StreamKind::Stdout | StreamKind::Stderr => {
                let out = if kind == StreamKind::Stdout {
                    s.streams.stdout.take()
                } else {
                    s.streams.stderr.take()
                }
                .ok_or_else(no_stream)?;
                let me = self.clone();
                std::thread::spawn(move || me.send_output(out, conn));
            }
            StreamKind::Tty => {
                let tty = s.streams.tty.clone().ok_or_else(no_stream)?;
                let (input_tty, input_conn) = (tty.clone(), conn.clone());
                std::thread::spawn(move || {
                    let _ = copy(&input_conn, &input_tty);
                });
                let me = self.clone();
                std::thread::spawn(move || me.send_output(tty, conn));
            }
        }
        s.streams.attached.push(kind);
        Ok(())
    }

    /// Copies one output stream to the host until its end, then marks it
    /// sent. If the host goes away, the rest is read and dropped so that
    /// the process never blocks on a full pipe.
    fn send_output(&self, out: impl ReadSource, conn: Arc<File>) {
        let mut buf = vec![0u8; 32 * 1024];
        let mut host_gone = false;
        loop {
            let n = match out.read_some(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A pty master reads EIO once every slave fd is closed.
                Err(_) => break,
            };
            if !host_gone && (&*conn).write_all(&buf[..n]).is_err() {
                host_gone = true;
            }
        }
        let _ = shutdown(conn.as_raw_fd(), Shutdown::Write);
        let mut s = self.lock();
        s.streams.outputs_open = s.streams.outputs_open.saturating_sub(1);
        self.changed.notify_all();
    }

    /// Gives up the output streams the host never attached: their
    /// container is being deleted and nobody can read them any more, so a
    /// Wait must not wait for them to be sent.
    pub fn discard_unattached(&self) {
        let mut s = self.lock();
        let mut discarded = usize::from(s.streams.stdout.take().is_some())
            + usize::from(s.streams.stderr.take().is_some());
        if self.terminal && !s.streams.attached.contains(&StreamKind::Tty) {
            s.streams.attached.push(StreamKind::Tty);
            discarded += 1;
        }
        s.streams.outputs_open = s.streams.outputs_open.saturating_sub(discarded);
        self.changed.notify_all();
    }

    /// Closes the process's input (CloseStdin): its stdin pipe, or the
    /// host's stdin connection while it is being copied.
    pub fn close_stdin(&self) {
        let mut s = self.lock();
        s.streams.stdin = None;
        if let Some(conn) = s.streams.stdin_conn.take() {
            let _ = shutdown(conn.as_raw_fd(), Shutdown::Read);
        }
    }

    /// Sets the terminal's window size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), AgentError> {
        let s = self.lock();
        let tty = s
            .streams
            .tty
            .as_ref()
            .ok_or_else(|| AgentError::Invalid("the process has no terminal".into()))?;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which
        // lives across the call; the fd is the pty master we hold.
        let rc = unsafe { libc::ioctl(tty.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc != 0 {
            return Err(AgentError::sys("TIOCSWINSZ")(nix::errno::Errno::last()));
        }
        Ok(())
    }
}

/// A readable agent-side end: a pipe's read end or the shared pty master.
trait ReadSource {
    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize>;
}

impl ReadSource for File {
    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl ReadSource for Arc<File> {
    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&**self).read(buf)
    }
}

/// Copies until the reader's end or an error on either side.
fn copy(mut from: &File, mut to: &File) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    fn exit0() -> Exit {
        Exit {
            code: 0,
            signal: 0,
            at: SystemTime::now(),
        }
    }

    #[test]
    fn wait_returns_only_after_output_is_sent() {
        let (child, pipes) = Pipes::new(false).unwrap();
        let p = Arc::new(Process::new(1, pipes, None));
        let mut out_w = File::from(child.stdout.unwrap());
        drop(child.stderr);
        out_w.write_all(b"all of it").unwrap();
        drop(out_w);
        p.exited(exit0());
        // Not attached: not drained.
        let (host_out, agent_out) = UnixStream::pair().unwrap();
        let (_host_err, agent_err) = UnixStream::pair().unwrap();
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || p.wait())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished());
        p.attach(
            StreamKind::Stdout,
            File::from(OwnedFd::from(agent_out)),
            |_| Ok(()),
        )
        .unwrap();
        p.attach(
            StreamKind::Stderr,
            File::from(OwnedFd::from(agent_err)),
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(waiter.join().unwrap().code, 0);
        let mut got = String::new();
        (&host_out).read_to_string(&mut got).unwrap();
        assert_eq!(got, "all of it");
        let (_a, b) = UnixStream::pair().unwrap();
        assert!(p
            .attach(StreamKind::Stdout, File::from(OwnedFd::from(b)), |_| Ok(()))
            .is_err());
        let (_a, b) = UnixStream::pair().unwrap();
        assert!(p
            .attach(StreamKind::Tty, File::from(OwnedFd::from(b)), |_| Ok(()))
            .is_err());
    }

    #[test]
    fn stdin_reaches_the_process_and_its_end_too() {
        let (child, pipes) = Pipes::new(false).unwrap();
        let p = Arc::new(Process::new(1, pipes, None));
        let (mut host, agent) = UnixStream::pair().unwrap();
        p.attach(StreamKind::Stdin, File::from(OwnedFd::from(agent)), |_| {
            Ok(())
        })
        .unwrap();
        host.write_all(b"input").unwrap();
        drop(host);
        let mut got = String::new();
        File::from(child.stdin.unwrap())
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "input");
    }

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
