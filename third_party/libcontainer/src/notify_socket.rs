use std::io::prelude::*;
use std::os::fd::FromRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::unistd::close;

pub const NOTIFY_FILE: &str = "notify.sock";

#[derive(Debug, thiserror::Error)]
pub enum NotifyListenerError {
    #[error("cannot open {path}, the notify socket's directory: {source}")]
    OpenDir {
        source: std::io::Error,
        path: PathBuf,
    },
    #[error("invalid path: {0}")]
    InvalidPath(PathBuf),
    #[error("failed to bind notify socket: {name}")]
    Bind {
        source: std::io::Error,
        name: String,
    },
    #[error("failed to connect to notify socket: {name}")]
    Connect {
        source: std::io::Error,
        name: String,
    },
    #[error("failed to accept notify listener")]
    Accept(#[source] std::io::Error),
    #[error("failed to close notify listener")]
    Close(#[source] nix::errno::Errno),
    #[error("failed to read notify listener")]
    Read(#[source] std::io::Error),
    #[error("failed to send start container")]
    SendStartContainer(#[source] std::io::Error),
    #[error("failed to read the container's answer to start")]
    ReadStartReply(#[source] std::io::Error),
    #[error("the container did not start: {0}")]
    StartFailed(String),
}

type Result<T> = std::result::Result<T, NotifyListenerError>;

pub struct NotifyListener {
    socket: UnixListener,
}

/// A path to `socket_path` short enough for a unix socket address (108
/// bytes; a container's directory can be longer): through the magic link
/// of a descriptor of its directory, `/proc/self/fd/N/<name>`. The
/// descriptor is returned too, and must outlive the path's use. (Not a
/// chdir into the directory: the working directory is shared by every
/// thread of a multi-threaded caller such as ironcelld.)
fn short_path(socket_path: &Path) -> Result<(std::fs::File, PathBuf)> {
    let workdir = socket_path
        .parent()
        .ok_or_else(|| NotifyListenerError::InvalidPath(socket_path.to_owned()))?;
    let socket_name = socket_path
        .file_name()
        .ok_or_else(|| NotifyListenerError::InvalidPath(socket_path.to_owned()))?;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(workdir)
        .map_err(|e| NotifyListenerError::OpenDir {
            source: e,
            path: workdir.to_owned(),
        })?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(socket_name);
    Ok((dir, short))
}

impl NotifyListener {
    pub fn new(socket_path: &Path) -> Result<Self> {
        tracing::debug!(?socket_path, "create notify listener");
        // A container's directory can be longer than a socket address
        // holds: bind through `short_path`.
        let (_dir, short) = short_path(socket_path)?;
        let stream = UnixListener::bind(&short).map_err(|e| NotifyListenerError::Bind {
            source: e,
            name: socket_path.display().to_string(),
        })?;

        Ok(Self { socket: stream })
    }

    /// Waits for `start`. The returned connection stays open (close-on-exec)
    /// until the payload is exec'd, so the starter learns of a failure
    /// before then (a startContainer hook) from `StartReply::fail`.
    pub fn wait_for_container_start(&self) -> Result<StartReply> {
        match self.socket.accept() {
            Ok((mut socket, _)) => {
                let mut response = String::new();
                socket
                    .read_to_string(&mut response)
                    .map_err(NotifyListenerError::Read)?;
                tracing::debug!("received: {}", response);
                Ok(StartReply { socket })
            }
            Err(e) => Err(NotifyListenerError::Accept(e))?,
        }
    }

    pub fn close(&self) -> Result<()> {
        close(self.socket.as_raw_fd()).map_err(NotifyListenerError::Close)?;
        Ok(())
    }
}

impl Clone for NotifyListener {
    fn clone(&self) -> Self {
        let fd = self.socket.as_raw_fd();
        // This is safe because we just duplicate a valid fd. Theoretically, to
        // truly clone a unix listener, we have to use dup(2) to duplicate the
        // fd, and then use from_raw_fd to create a new UnixListener. However,
        // for our purposes, fd is just an integer to pass around for the same
        // socket. Our main usage is to pass the notify_listener across process
        // boundary. Since fd tables are cloned during clone/fork calls, this
        // should be safe to use, as long as we be careful with not closing the
        // same fd in different places. If we observe an issue, we will switch
        // to `dup`.
        let socket = unsafe { UnixListener::from_raw_fd(fd) };
        Self { socket }
    }
}

/// The init's side of a `start` request: dropped (or closed by the exec of
/// the payload) when the container started, `fail`ed when it did not.
pub struct StartReply {
    socket: UnixStream,
}

impl StartReply {
    /// Tells the starter why the container will not start.
    pub fn fail(mut self, why: &str) {
        if let Err(err) = self.socket.write_all(why.as_bytes()) {
            tracing::warn!(?err, "failed to tell the starter why start failed");
        }
    }
}

pub struct NotifySocket {
    path: PathBuf,
}

impl NotifySocket {
    pub fn new<P: Into<PathBuf>>(socket_path: P) -> Self {
        Self {
            path: socket_path.into(),
        }
    }

    pub fn notify_container_start(&mut self) -> Result<()> {
        tracing::debug!("notify container start");
        let (_dir, short) = short_path(&self.path)?;
        let mut stream =
            UnixStream::connect(&short).map_err(|e| NotifyListenerError::Connect {
                source: e,
                name: self.path.display().to_string(),
            })?;
        stream
            .write_all(b"start container")
            .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
            .map_err(NotifyListenerError::SendStartContainer)?;
        // The init answers with nothing when it execs the payload (the
        // connection is close-on-exec), or with why it did not.
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .map_err(NotifyListenerError::ReadStartReply)?;
        tracing::debug!("notify finished");
        if !reply.is_empty() {
            return Err(NotifyListenerError::StartFailed(reply));
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use tempfile::tempdir;

    use super::*;

    #[test]
    /// Test that the listener can be cloned and function correctly. This test
    /// also serves as a test for the normal case.
    fn test_notify_listener_clone() {
        let tempdir = tempdir().unwrap();
        let socket_path = tempdir.path().join("notify.sock");
        // listener needs to be created first because it will create the socket.
        let listener = NotifyListener::new(&socket_path).unwrap();
        let mut socket = NotifySocket::new(socket_path.clone());
        // This is safe without race because the unix domain socket is already
        // created. It is OK for the socket to send the start notification
        // before the listener wait is called.
        let thread_handle = std::thread::spawn({
            move || {
                // We clone the listener and listen on the cloned listener to
                // make sure the cloned fd functions correctly.
                drop(listener.wait_for_container_start().unwrap());
            }
        });

        socket.notify_container_start().unwrap();
        thread_handle.join().unwrap();
    }
}
