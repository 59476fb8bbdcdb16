//! A task's stdio as containerd names it: FIFO paths (ctr, CRI), `file://`
//! log files, or nothing.
//!
//! stdout and stderr are handed to the container directly: the FIFO is
//! opened read-write (which never blocks, whether or not containerd has
//! opened its end yet) and becomes the process's fd 1 or 2; the daemon
//! keeps no copy, so output does not depend on the daemon staying up.
//!
//! stdin goes through a pipe and a relay, as in containerd's runc shim: the
//! relay waits for containerd's writer; the process sees EOF when that
//! writer closes or when containerd calls CloseIO. (Handing the FIFO over
//! directly would give the process an early EOF if it read before containerd
//! opened its end.)
//!
//! A terminal is a pty whose master the daemon receives on a console socket
//! and relays to and from the FIFOs. Relays are tasks of the daemon's async
//! runtime (epoll), not threads.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use thiserror::Error;
use tokio::io::unix::AsyncFd;

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
    #[error("stdin relay: {0}")]
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

pub(crate) use ironcell_keeper::register;

async fn read(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut g = fd.readable().await?;
        if let Ok(r) =
            g.try_io(|i| nix::unistd::read(i.get_ref().as_raw_fd(), buf).map_err(io::Error::from))
        {
            return r;
        }
    }
}

async fn write(fd: &AsyncFd<OwnedFd>, buf: &[u8]) -> io::Result<usize> {
    loop {
        let mut g = fd.writable().await?;
        if let Ok(r) = g.try_io(|i| nix::unistd::write(i.get_ref(), buf).map_err(io::Error::from)) {
            return r;
        }
    }
}

/// Copies `from` to `to` until EOF or an error on either side (EIO on a pty
/// master whose terminal closed). A failed write stops the copy.
async fn copy(from: AsyncFd<OwnedFd>, to: AsyncFd<OwnedFd>) {
    // Allocated once there is something to read: most relays (a detached
    // task's stdin) wait for ever and should cost nothing meanwhile.
    if from.readable().await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match read(&from, &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut done = 0;
        while done < n {
            match write(&to, &buf[done..n]).await {
                Ok(0) | Err(_) => return,
                Ok(m) => done += m,
            }
        }
    }
}

/// The daemon's end of a process's stdin: a relay from containerd's FIFO
/// into a pipe (or a pty master), ended by EOF or CloseIO. A task of the
/// daemon's runtime, not a thread: a detached `ctr run` leaves a FIFO that
/// nobody ever opens, and a relay waits on it for the task's lifetime.
///
/// The FIFO is opened non-blocking, which succeeds with no writer yet; epoll
/// reports it readable only once containerd's writer has sent data or has
/// come and gone (a FIFO only signals hang-up after a writer left), so the
/// process never sees an EOF before containerd opened its end.
pub struct StdinRelay {
    task: tokio::task::JoinHandle<()>,
}

/// Called when a relay ends by itself (EOF or an error), not on close().
pub type OnEnd = Box<dyn FnOnce() + Send>;

impl StdinRelay {
    /// Opens stdin FIFO `path` for a relay (non-blocking: it succeeds before
    /// containerd opens its end).
    pub fn open_fifo(path: &str) -> Result<OwnedFd, StdioError> {
        Ok(OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| StdioError::Open {
                what: "stdin",
                path: path.to_string(),
                source,
            })?
            .into())
    }

    /// Starts relaying `fifo` into `sink` (inside the tokio runtime).
    pub fn start(fifo: OwnedFd, sink: OwnedFd, on_end: OnEnd) -> Result<StdinRelay, StdioError> {
        let from = register(fifo).map_err(StdioError::Pipe)?;
        let to = register(sink).map_err(StdioError::Pipe)?;
        Ok(StdinRelay {
            task: tokio::spawn(async move {
                copy(from, to).await;
                on_end();
            }),
        })
    }

    /// Closes the process's stdin (CloseIO): the relay stops and its end of
    /// the pipe closes.
    pub fn close(self) {
        self.task.abort();
    }
}

/// A pipe for a process's stdin: (the process's end, the relay's end).
pub fn stdin_pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| StdioError::Pipe(e.into()))
}

/// Copies a pty master's output to the task's stdout until the terminal
/// closes (EIO once every process holding its other side has exited).
/// `master` stays the caller's (for resizing); the relay uses a duplicate.
pub fn relay_output(master: &File, stdout: Option<OwnedFd>) -> io::Result<()> {
    copy_output(master.try_clone()?.into(), stdout).map(drop)
}

/// Copies `from` (a pty master, a stream) to the task's `stdout` (or
/// stderr) until `from` ends; the copy's task is returned, to wait for.
pub fn copy_output(
    from: OwnedFd,
    stdout: Option<OwnedFd>,
) -> io::Result<tokio::task::JoinHandle<()>> {
    let from = register(from)?;
    match stdout {
        Some(fd) => {
            let to = register(fd)?;
            Ok(tokio::spawn(copy(from, to)))
        }
        // Nobody reads it: drained so the process never blocks. (Not copied
        // to /dev/null, which epoll refuses to watch.)
        None => Ok(tokio::spawn(drain(from))),
    }
}

/// Reads `from` until EOF or an error, keeping nothing.
async fn drain(from: AsyncFd<OwnedFd>) {
    if from.readable().await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(1..) = read(&from, &mut buf).await {}
}

/// containerd's terminal size (width, height) as a terminal's (rows,
/// columns), each bounded to what a winsize holds.
pub fn rows_cols(width: u32, height: u32) -> (u16, u16) {
    let bound = |v: u32| v.min(u16::MAX as u32) as u16;
    (bound(height), bound(width))
}

/// Sets a pty's window size.
pub fn resize(master: &File, width: u32, height: u32) -> io::Result<()> {
    let (rows, cols) = rows_cols(width, height);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
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

    #[test]
    fn a_terminal_size_is_rows_then_columns_each_bounded() {
        assert_eq!(rows_cols(101, 33), (33, 101));
        assert_eq!(rows_cols(u32::MAX, 1), (1, u16::MAX));
    }
    use std::ffi::CString;
    use std::io::Write;
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

    #[tokio::test]
    async fn stdin_relay_waits_for_the_writer_and_ends_at_eof() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("in");
        mkfifo(&fifo);
        let (read, write) = stdin_pipe().unwrap();
        let f = StdinRelay::open_fifo(fifo.to_str().unwrap()).unwrap();
        let _relay = StdinRelay::start(f, write, Box::new(|| {})).unwrap();
        // No writer yet: the relay waits instead of passing on an EOF.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut w = OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(b"typed\n").unwrap();
        drop(w);
        let got = tokio::task::spawn_blocking(move || {
            let mut got = String::new();
            File::from(read).read_to_string(&mut got).unwrap();
            got
        })
        .await
        .unwrap();
        assert_eq!(got, "typed\n");
    }

    #[tokio::test]
    async fn output_nobody_reads_is_drained_to_its_end() {
        let (read, write) = stdin_pipe().unwrap();
        let copy = copy_output(read, None).unwrap();
        let mut w = File::from(write);
        // More than a pipe holds: the writer would block if nothing read.
        let chunk = vec![b'x'; 64 * 1024];
        let written = tokio::task::spawn_blocking(move || {
            for _ in 0..4 {
                w.write_all(&chunk).unwrap();
            }
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), written)
            .await
            .expect("the output was not drained")
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), copy)
            .await
            .expect("the drain did not end at EOF")
            .unwrap();
    }

    #[tokio::test]
    async fn close_io_ends_stdin_before_any_writer() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("in");
        mkfifo(&fifo);
        let (read, write) = stdin_pipe().unwrap();
        let f = StdinRelay::open_fifo(fifo.to_str().unwrap()).unwrap();
        let relay = StdinRelay::start(f, write, Box::new(|| {})).unwrap();
        relay.close();
        let got = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            File::from(read).read_to_end(&mut got).unwrap();
            got
        })
        .await
        .unwrap();
        assert!(got.is_empty());
    }
}
