//! A task's stdio as containerd names it: FIFO paths (ctr, CRI), `file://`
//! log files, or nothing.
//!
//! stdout and stderr are handed to the container directly: the FIFO is
//! opened read-write (which never blocks, whether or not containerd has
//! opened its end yet) and becomes the process's fd 1 or 2; the daemon
//! keeps no copy, so output does not depend on the daemon staying up.
//!
//! stdin goes through a pipe and a relay thread, as in containerd's runc
//! shim: the FIFO's read side is opened blocking, so the relay waits for
//! containerd's writer; the process sees EOF when that writer closes or
//! when containerd calls CloseIO. (Handing the FIFO over directly would give
//! the process an early EOF if it read before containerd opened its end.)
//!
//! A terminal is a pty whose master the daemon receives on a console socket
//! and relays to and from the FIFOs.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StdioError {
    #[error("{what} {path}: {source}")]
    Open {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{what} {uri}: only FIFO paths and file:// URIs are supported")]
    Unsupported { what: &'static str, uri: String },
    #[error("cannot create a pipe: {0}")]
    Pipe(io::Error),
}

/// Opens an output (stdout or stderr) for the process. `None` for "".
pub fn open_output(what: &'static str, uri: &str) -> Result<Option<OwnedFd>, StdioError> {
    if uri.is_empty() {
        return Ok(None);
    }
    let fail = |source| StdioError::Open {
        what,
        path: uri.to_string(),
        source,
    };
    if let Some(path) = uri.strip_prefix("file://") {
        if let Some(dir) = Path::new(path).parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(fail)?;
        return Ok(Some(f.into()));
    }
    if uri.contains("://") {
        return Err(StdioError::Unsupported {
            what,
            uri: uri.to_string(),
        });
    }
    // Must already exist: containerd creates its FIFOs before asking.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(uri)
        .map_err(fail)?;
    Ok(Some(f.into()))
}

/// The daemon's end of a process's stdin: a relay from containerd's FIFO
/// into a pipe (or a pty master) that CloseIO or EOF closes.
#[derive(Clone)]
pub struct StdinRelay {
    path: String,
    sink: Arc<Mutex<Option<File>>>,
}

impl StdinRelay {
    /// Starts relaying `path` into `sink` on a thread of its own.
    pub fn start(path: &str, sink: File) -> StdinRelay {
        let relay = StdinRelay {
            path: path.to_string(),
            sink: Arc::new(Mutex::new(Some(sink))),
        };
        let r = relay.clone();
        std::thread::Builder::new()
            .name("stdin-relay".into())
            .spawn(move || r.run())
            .map(|_| ())
            .unwrap_or_else(|e| tracing::warn!(error = %e, "cannot start a stdin relay"));
        relay
    }

    fn run(&self) {
        // Blocks until containerd opens its end (or close() opens it).
        let mut fifo = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %self.path, error = %e, "cannot open stdin");
                self.close_sink();
                return;
            }
        };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match fifo.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut sink = self.sink.lock().unwrap();
            let written = sink.as_mut().map(|s| s.write_all(&buf[..n]).is_ok());
            if written != Some(true) {
                break;
            }
        }
        self.close_sink();
    }

    fn close_sink(&self) {
        self.sink.lock().unwrap().take();
    }

    /// Closes the process's stdin (CloseIO) and ends the relay: a relay
    /// still waiting for containerd's writer is released by opening the
    /// FIFO's write side for a moment.
    pub fn close(&self) {
        self.close_sink();
        if let Ok(f) = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&self.path)
        {
            drop(f);
        }
    }
}

/// Stdin through a pipe: returns the process's end and the relay.
pub fn stdin_pipe(path: &str) -> Result<(OwnedFd, StdinRelay), StdioError> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| StdioError::Pipe(e.into()))?;
    Ok((read, StdinRelay::start(path, File::from(write))))
}

/// Copies a pty master's output to the task's stdout until the terminal
/// closes (EIO once every process holding its other side has exited).
pub fn relay_output(master: &File, stdout: Option<OwnedFd>) -> io::Result<()> {
    let mut from = master.try_clone()?;
    let mut to = stdout.map(File::from);
    std::thread::Builder::new()
        .name("tty-relay".into())
        .spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                if let Some(out) = to.as_mut() {
                    if out.write_all(&buf[..n]).is_err() {
                        to = None;
                    }
                }
            }
        })?;
    Ok(())
}

/// Sets a pty's window size.
pub fn resize(master: &File, width: u32, height: u32) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: height.min(u16::MAX as u32) as u16,
        ws_col: width.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct that lives on this stack
    // frame; the fd is a valid open file.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn outputs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open_output("stdout", "").unwrap().is_none());
        let fifo = dir.path().join("out");
        mkfifo(&fifo);
        // A FIFO nobody reads yet opens without blocking.
        let fd = open_output("stdout", fifo.to_str().unwrap())
            .unwrap()
            .unwrap();
        File::from(fd).write_all(b"x").unwrap();
        let log = dir.path().join("logs/out.log");
        let uri = format!("file://{}", log.display());
        File::from(open_output("stdout", &uri).unwrap().unwrap())
            .write_all(b"line\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "line\n");
        let e = open_output("stdout", "binary:///usr/bin/logger").unwrap_err();
        assert!(e.to_string().contains("only FIFO paths"), "{e}");
        let e = open_output("stderr", "/nonexistent/fifo").unwrap_err();
        assert!(e.to_string().starts_with("stderr /nonexistent/fifo"), "{e}");
    }

    #[test]
    fn stdin_relay_waits_for_the_writer_and_ends_at_eof() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("in");
        mkfifo(&fifo);
        let (read, _relay) = stdin_pipe(fifo.to_str().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut w = OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(b"typed\n").unwrap();
        drop(w);
        let mut got = String::new();
        File::from(read).read_to_string(&mut got).unwrap();
        assert_eq!(got, "typed\n");
    }

    #[test]
    fn close_io_ends_stdin_before_any_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("in");
        mkfifo(&fifo);
        let (read, relay) = stdin_pipe(fifo.to_str().unwrap()).unwrap();
        relay.close();
        let mut got = Vec::new();
        File::from(read).read_to_end(&mut got).unwrap();
        assert!(got.is_empty());
    }
}
