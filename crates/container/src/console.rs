//! The console socket (runc's `--console-socket`): a process whose spec asks
//! for a terminal sends the master side of its new pty over this unix socket
//! (SCM_RIGHTS). The CLI listens on one for a foreground `run` / `exec`;
//! ironcelld listens on one for each task that has a terminal.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::error::ContainerError;

/// A listening socket the container's process sends its pty master to.
/// The socket file is removed when this is dropped.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Listens on a fresh socket, named after this process, inside `dir`.
    pub fn new(dir: &Path) -> Result<ConsoleSocket, ContainerError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ContainerError::io(format!("cannot create {}", dir.display()), e))?;
        Self::bind(dir.join(format!(".console-{}.sock", std::process::id())))
    }

    /// Listens on `path` (a stale socket file there is replaced).
    pub fn bind(path: PathBuf) -> Result<ConsoleSocket, ContainerError> {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| ContainerError::io(format!("cannot listen on {}", path.display()), e))?;
        Ok(ConsoleSocket { path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long the runtimes wait for a container's pty master: longer than
    /// any create takes, short enough that a lost one fails the create.
    pub const TIMEOUT: Duration = Duration::from_secs(10);

    /// Accepts the container's connection and takes the pty master from it.
    pub fn receive(&self, timeout: Duration) -> Result<File, ContainerError> {
        let fail = |what: &str, e: io::Error| ContainerError::io(what.to_string(), e);
        self.listener
            .set_nonblocking(true)
            .map_err(|e| fail("console socket", e))?;
        let deadline = Instant::now() + timeout;
        let conn = loop {
            match self.listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(ContainerError::Invalid(format!(
                            "the container did not send its terminal within {} s",
                            timeout.as_secs()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(fail("accept on console socket", e)),
            }
        };
        conn.set_nonblocking(false)
            .map_err(|e| fail("console socket", e))?;
        let mut buf = [0u8; 256];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| fail("cannot receive the pty master", e.into()))?;
        let cmsgs = msg
            .cmsgs()
            .map_err(|e| fail("cannot read the control message", e.into()))?;
        for cmsg in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the fd was just received over SCM_RIGHTS and
                    // nothing else owns it.
                    return Ok(unsafe { File::from_raw_fd(fd) });
                }
            }
        }
        Err(ContainerError::Invalid(
            "the container sent no terminal over the console socket".into(),
        ))
    }
}

/// A new pty for a process that asked for a terminal: its master is sent to
/// the console socket at `socket` (as runc's init does; the wasm sandbox's
/// runner is started on the returned slave).
pub fn send_new_pty(socket: &Path) -> Result<File, ContainerError> {
    let pty = nix::pty::openpty(None, None)
        .map_err(|e| ContainerError::io("cannot open a pty", e.into()))?;
    let conn = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        ContainerError::io(
            format!("cannot connect to console socket {}", socket.display()),
            e,
        )
    })?;
    let fds = [pty.master.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    // runc sends the pty's name as the message's data.
    let name = b"/dev/ptmx";
    nix::sys::socket::sendmsg::<()>(
        conn.as_raw_fd(),
        &[io::IoSlice::new(name)],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| ContainerError::io("cannot send the pty master", e.into()))?;
    Ok(File::from(pty.slave))
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
