//! A process's streams: the host's connections attached to them and the
//! copying in between. The rules a host relies on (one attach per stream,
//! or resumable attaches that take over) are the stream protocol's
//! (`ironcell_protocol::stream`).
//!
//! Every output stream is copied by one thread for its whole life, from
//! the process's end to the stream's *outlet*: the connection it writes to
//! now. A connection that breaks leaves the outlet empty. An output
//! attached once then drops the rest, so that the process never blocks on
//! a full pipe; a resumable one stops reading and waits for the connection
//! that takes it over, so that what the process writes meanwhile waits in
//! its pipe.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use ironcell_protocol::stream::StreamKind;
use nix::sys::socket::{shutdown, Shutdown};

use super::{Pipes, Process};
use crate::AgentError;

/// Where each stream of a process stands.
#[derive(Default)]
pub(super) struct Streams {
    /// The process's input pipe while its end is not given. A stream
    /// attached once takes it (its connection's end is the input's); a
    /// resumable one shares it, and only CloseStdin ends it.
    stdin: Option<Arc<File>>,
    /// The host's stdin connection while it is copied, for CloseStdin and
    /// for a take-over.
    stdin_conn: Option<Arc<File>>,
    stdout: Option<File>,
    stderr: Option<File>,
    tty: Option<Arc<File>>,
    /// Each attached stream, and whether it was attached resumably.
    attached: Vec<(StreamKind, bool)>,
    /// The connection each output being copied writes to; `None` while it
    /// has none (its last one broke).
    outlets: Vec<(StreamKind, Option<Arc<File>>)>,
    /// Output streams that reached their end.
    ended: Vec<StreamKind>,
    /// Output streams still to reach their end.
    outputs_open: usize,
    /// The container is being deleted: output that no connection takes is
    /// dropped instead of waiting for one.
    discarding: bool,
}

impl Streams {
    pub(super) fn new(pipes: Pipes, tty: Option<File>) -> Streams {
        let terminal = tty.is_some();
        Streams {
            stdin: pipes.stdin.map(Arc::new),
            stdout: pipes.stdout,
            stderr: pipes.stderr,
            outputs_open: if terminal { 1 } else { 2 },
            tty: tty.map(Arc::new),
            ..Default::default()
        }
    }

    pub(super) fn all_output_sent(&self) -> bool {
        self.outputs_open == 0
    }

    fn outlet(&mut self, kind: StreamKind) -> &mut Option<Arc<File>> {
        if let Some(i) = self.outlets.iter().position(|(k, _)| *k == kind) {
            return &mut self.outlets[i].1;
        }
        self.outlets.push((kind, None));
        &mut self.outlets.last_mut().expect("just pushed").1
    }
}

impl Process {
    /// Connects the host's stream connection `conn` to the process's
    /// stream `kind`, and starts copying. A stream is attached once, or
    /// resumably any number of times, each attach taking over from the
    /// last. `ready` runs once the stream is known to be free, before any
    /// byte is copied (the agent answers `OK` there).
    pub fn attach(
        self: &Arc<Self>,
        kind: StreamKind,
        resumable: bool,
        conn: File,
        ready: impl FnOnce(&File) -> io::Result<()>,
    ) -> Result<(), AgentError> {
        let mut s = self.lock();
        if let Some(&(_, was_resumable)) = s.streams.attached.iter().find(|(k, _)| *k == kind) {
            if resumable && was_resumable {
                return self.take_over(&mut s.streams, kind, conn, ready);
            }
            return Err(AgentError::Invalid(format!(
                "the {} stream is attached already{}",
                kind.as_str(),
                match (was_resumable, resumable) {
                    (true, false) => " (resumably: only a resumable header takes it over)",
                    (false, true) => " (once: it cannot be taken over)",
                    _ => "",
                }
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
        let streams = &mut s.streams;
        let available = match kind {
            StreamKind::Stdin => streams.stdin.is_some(),
            StreamKind::Stdout => streams.stdout.is_some(),
            StreamKind::Stderr => streams.stderr.is_some(),
            StreamKind::Tty => streams.tty.is_some(),
        };
        if !available {
            return Err(no_stream());
        }
        ready(&conn).map_err(AgentError::io("cannot answer the stream's header"))?;
        let conn = Arc::new(conn);
        match kind {
            StreamKind::Stdin => {
                let stdin = if resumable {
                    streams.stdin.clone()
                } else {
                    streams.stdin.take()
                }
                .ok_or_else(no_stream)?;
                copy_input(streams, conn, stdin);
            }
            StreamKind::Stdout | StreamKind::Stderr => {
                let out = if kind == StreamKind::Stdout {
                    streams.stdout.take()
                } else {
                    streams.stderr.take()
                }
                .ok_or_else(no_stream)?;
                *streams.outlet(kind) = Some(conn);
                let me = self.clone();
                std::thread::spawn(move || me.send_output(kind, resumable, out));
            }
            StreamKind::Tty => {
                let tty = streams.tty.clone().ok_or_else(no_stream)?;
                copy_terminal_input(conn.clone(), tty.clone());
                *streams.outlet(kind) = Some(conn);
                let me = self.clone();
                std::thread::spawn(move || me.send_output(kind, resumable, tty));
            }
        }
        streams.attached.push((kind, resumable));
        Ok(())
    }

    /// A resumable attach of a stream attached resumably before: `conn`
    /// replaces its connection, which is closed.
    fn take_over(
        &self,
        streams: &mut Streams,
        kind: StreamKind,
        conn: File,
        ready: impl FnOnce(&File) -> io::Result<()>,
    ) -> Result<(), AgentError> {
        let answered = AgentError::io("cannot answer the stream's header");
        if kind == StreamKind::Stdin {
            let stdin = streams.stdin.clone().ok_or_else(|| {
                AgentError::Invalid("the process's stdin is closed (CloseStdin)".into())
            })?;
            ready(&conn).map_err(answered)?;
            copy_input(streams, Arc::new(conn), stdin);
            return Ok(());
        }
        ready(&conn).map_err(answered)?;
        if streams.ended.contains(&kind) {
            let _ = shutdown(conn.as_raw_fd(), Shutdown::Both);
            return Ok(());
        }
        let conn = Arc::new(conn);
        if kind == StreamKind::Tty {
            if let Some(tty) = streams.tty.clone() {
                copy_terminal_input(conn.clone(), tty);
            }
        }
        if let Some(old) = streams.outlet(kind).replace(conn) {
            let _ = shutdown(old.as_raw_fd(), Shutdown::Both);
        }
        self.changed.notify_all();
        Ok(())
    }

    /// Copies one output stream to its outlet until the stream's end, then
    /// marks it sent.
    fn send_output(&self, kind: StreamKind, resumable: bool, out: impl ReadSource) {
        let mut buf = vec![0u8; 32 * 1024];
        'read: loop {
            let n = match out.read_some(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A pty master reads EIO once every slave fd is closed.
                Err(_) => break,
            };
            let mut sent = 0;
            while sent < n {
                let Some(conn) = self.outlet(kind, resumable) else {
                    continue 'read;
                };
                match (&*conn).write(&buf[sent..n]) {
                    Ok(0) => self.lose_outlet(kind, &conn),
                    Ok(k) => sent += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => self.lose_outlet(kind, &conn),
                }
            }
        }
        let mut s = self.lock();
        if let Some(conn) = s.streams.outlet(kind).take() {
            let _ = shutdown(conn.as_raw_fd(), Shutdown::Write);
        }
        s.streams.ended.push(kind);
        s.streams.outputs_open = s.streams.outputs_open.saturating_sub(1);
        self.changed.notify_all();
    }

    /// The connection output `kind` goes to now; for a resumable stream
    /// without one, the next that takes it over. `None` when the output
    /// is to be dropped.
    fn outlet(&self, kind: StreamKind, resumable: bool) -> Option<Arc<File>> {
        let mut s = self.lock();
        loop {
            if let Some(conn) = s.streams.outlet(kind).clone() {
                return Some(conn);
            }
            if !resumable || s.streams.discarding {
                return None;
            }
            s = self.wait_for_change(s);
        }
    }

    /// Empties the outlet of `kind` if it is still `conn`, which broke (a
    /// take-over may have put a new one there meanwhile).
    fn lose_outlet(&self, kind: StreamKind, conn: &Arc<File>) {
        let mut s = self.lock();
        let outlet = s.streams.outlet(kind);
        if outlet.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *outlet = None;
        }
    }

    /// Gives up the output the host can no longer take, for a container
    /// being deleted, so that a Wait does not wait for it: the streams the
    /// host never attached, and the output of resumable streams that have
    /// no connection.
    pub fn discard_unattached(&self) {
        let mut s = self.lock();
        let streams = &mut s.streams;
        let mut discarded = usize::from(streams.stdout.take().is_some())
            + usize::from(streams.stderr.take().is_some());
        if self.terminal && !streams.attached.iter().any(|(k, _)| *k == StreamKind::Tty) {
            streams.attached.push((StreamKind::Tty, false));
            discarded += 1;
        }
        streams.outputs_open = streams.outputs_open.saturating_sub(discarded);
        streams.discarding = true;
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

/// Copies the host's stdin connection `conn` into the process's input,
/// closing the connection it replaces. The copy holds the pipe until the
/// connection ends: the input ends with it unless `streams` keeps the pipe.
fn copy_input(streams: &mut Streams, conn: Arc<File>, stdin: Arc<File>) {
    if let Some(old) = streams.stdin_conn.replace(conn.clone()) {
        let _ = shutdown(old.as_raw_fd(), Shutdown::Both);
    }
    std::thread::spawn(move || {
        let _ = copy(&conn, &stdin);
    });
}

/// Copies a terminal connection's input to the pty master; its end is not
/// the terminal's.
fn copy_terminal_input(conn: Arc<File>, tty: Arc<File>) {
    std::thread::spawn(move || {
        let _ = copy(&conn, &tty);
    });
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
    use super::super::Exit;
    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, SystemTime};

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
            false,
            File::from(OwnedFd::from(agent_out)),
            |_| Ok(()),
        )
        .unwrap();
        p.attach(
            StreamKind::Stderr,
            false,
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
            .attach(
                StreamKind::Stdout,
                false,
                File::from(OwnedFd::from(b)),
                |_| Ok(())
            )
            .is_err());
        let (_a, b) = UnixStream::pair().unwrap();
        assert!(p
            .attach(
                StreamKind::Tty,
                false,
                File::from(OwnedFd::from(b)),
                |_| Ok(())
            )
            .is_err());
    }

    #[test]
    fn stdin_reaches_the_process_and_its_end_too() {
        let (child, pipes) = Pipes::new(false).unwrap();
        let p = Arc::new(Process::new(1, pipes, None));
        let (mut host, agent) = UnixStream::pair().unwrap();
        p.attach(
            StreamKind::Stdin,
            false,
            File::from(OwnedFd::from(agent)),
            |_| Ok(()),
        )
        .unwrap();
        host.write_all(b"input").unwrap();
        drop(host);
        let mut got = String::new();
        File::from(child.stdin.unwrap())
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "input");
    }

    fn conn(s: UnixStream) -> File {
        File::from(OwnedFd::from(s))
    }

    /// A connection: the host's end (reads time out) and the agent's.
    fn pair() -> (UnixStream, File) {
        let (host, agent) = UnixStream::pair().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (host, conn(agent))
    }

    /// Reads exactly `n` bytes from `s`.
    fn read_n(mut s: &UnixStream, n: usize) -> String {
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn resumable_output_waits_for_the_connection_that_takes_it_over() {
        let (child, pipes) = Pipes::new(false).unwrap();
        let p = Arc::new(Process::new(1, pipes, None));
        let mut out_w = File::from(child.stdout.unwrap());
        drop(child.stderr);
        let (first, agent) = pair();
        p.attach(StreamKind::Stdout, true, agent, |_| Ok(()))
            .unwrap();
        out_w.write_all(b"one").unwrap();
        assert_eq!(read_n(&first, 3), "one");
        // The host dies: what the process writes next waits for the next
        // connection.
        drop(first);
        out_w.write_all(b"two").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let (second, agent) = pair();
        p.attach(StreamKind::Stdout, true, agent, |_| Ok(()))
            .unwrap();
        assert_eq!(read_n(&second, 3), "two");
        // A take-over while the connection is alive closes the old one.
        let (third, agent) = pair();
        p.attach(StreamKind::Stdout, true, agent, |_| Ok(()))
            .unwrap();
        let mut rest = String::new();
        (&second).read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "");
        out_w.write_all(b"three").unwrap();
        drop(out_w);
        p.exited(exit0());
        let (_e, agent) = pair();
        p.attach(StreamKind::Stderr, false, agent, |_| Ok(()))
            .unwrap();
        assert_eq!(p.wait().code, 0);
        (&third).read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "three");
        // Taking over an output that ended gives its end at once.
        let (fourth, agent) = pair();
        p.attach(StreamKind::Stdout, true, agent, |_| Ok(()))
            .unwrap();
        (&fourth).read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "three");
    }

    #[test]
    fn resumable_stdin_ends_only_with_close_stdin() {
        let (child, pipes) = Pipes::new(false).unwrap();
        let p = Arc::new(Process::new(1, pipes, None));
        let mut input = File::from(child.stdin.unwrap());
        let (mut first, agent) = pair();
        p.attach(StreamKind::Stdin, true, agent, |_| Ok(()))
            .unwrap();
        first.write_all(b"a").unwrap();
        let mut one = [0u8; 1];
        input.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"a");
        drop(first);
        let (mut second, agent) = pair();
        p.attach(StreamKind::Stdin, true, agent, |_| Ok(()))
            .unwrap();
        second.write_all(b"b").unwrap();
        input.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"b");
        p.close_stdin();
        let mut rest = Vec::new();
        input.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        let (_third, agent) = pair();
        let err = p
            .attach(StreamKind::Stdin, true, agent, |_| Ok(()))
            .unwrap_err();
        assert!(err.to_string().contains("stdin is closed"), "{err}");
    }

    #[test]
    fn a_stream_is_attached_once_or_resumably_never_both() {
        let (_child, pipes) = Pipes::new(false).unwrap();
        let p = Arc::new(Process::new(1, pipes, None));
        let (_a, agent) = pair();
        p.attach(StreamKind::Stdout, false, agent, |_| Ok(()))
            .unwrap();
        let (_b, agent) = pair();
        let err = p
            .attach(StreamKind::Stdout, true, agent, |_| Ok(()))
            .unwrap_err();
        assert!(err.to_string().contains("cannot be taken over"), "{err}");
        let (_c, agent) = pair();
        p.attach(StreamKind::Stderr, true, agent, |_| Ok(()))
            .unwrap();
        let (_d, agent) = pair();
        let err = p
            .attach(StreamKind::Stderr, false, agent, |_| Ok(()))
            .unwrap_err();
        assert!(err.to_string().contains("attached already"), "{err}");
    }

    #[test]
    fn delete_drops_output_no_connection_takes() {
        let (child, pipes) = Pipes::new(false).unwrap();
        let p = Arc::new(Process::new(1, pipes, None));
        let mut out_w = File::from(child.stdout.unwrap());
        drop(child.stderr);
        let (host, agent) = pair();
        p.attach(StreamKind::Stdout, true, agent, |_| Ok(()))
            .unwrap();
        drop(host);
        out_w.write_all(b"nobody reads this").unwrap();
        drop(out_w);
        p.exited(exit0());
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || p.wait())
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !waiter.is_finished(),
            "the parked output was not waited for"
        );
        p.discard_unattached();
        assert_eq!(waiter.join().unwrap().code, 0);
    }
}
