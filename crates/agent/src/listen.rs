//! Where the agent listens: vsock ports in a guest, unix sockets when it
//! runs on a host (its tests).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;

use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr, VsockAddr,
};

use crate::AgentError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// `vsock:PORT`: any CID.
    Vsock(u32),
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl FromStr for Addr {
    type Err = AgentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(port) = s.strip_prefix("vsock:") {
            return port
                .parse()
                .map(Addr::Vsock)
                .map_err(|_| AgentError::Invalid(format!("{s}: bad vsock port")));
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(AgentError::Invalid(format!("{s}: no path")));
            }
            return Ok(Addr::Unix(path.into()));
        }
        Err(AgentError::Invalid(format!(
            "{s}: expected vsock:PORT or unix:PATH"
        )))
    }
}

/// A listening stream socket at `addr`.
pub fn listener(addr: &Addr) -> Result<OwnedFd, AgentError> {
    let flags = SockFlag::SOCK_CLOEXEC;
    let fd = match addr {
        Addr::Vsock(port) => {
            let fd = socket(AddressFamily::Vsock, SockType::Stream, flags, None)
                .map_err(AgentError::sys("vsock socket"))?;
            bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, *port))
                .map_err(AgentError::sys("bind vsock"))?;
            fd
        }
        Addr::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let fd = socket(AddressFamily::Unix, SockType::Stream, flags, None)
                .map_err(AgentError::sys("unix socket"))?;
            let a = UnixAddr::new(path).map_err(AgentError::sys("unix socket path"))?;
            bind(fd.as_raw_fd(), &a).map_err(AgentError::sys("bind unix socket"))?;
            fd
        }
    };
    listen(&fd, Backlog::new(64).map_err(AgentError::sys("backlog"))?)
        .map_err(AgentError::sys("listen"))?;
    Ok(fd)
}

/// Tells the host the agent serves: a connection to the host's
/// [`READY_PORT`](ironcell_protocol::READY_PORT) carrying
/// [`READY_LINE`](ironcell_protocol::READY_LINE).
pub fn announce_ready() -> Result<(), AgentError> {
    use ironcell_protocol::{HOST_CID, READY_LINE, READY_PORT};
    use std::io::Write;
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(AgentError::sys("vsock socket"))?;
    nix::sys::socket::connect(fd.as_raw_fd(), &VsockAddr::new(HOST_CID, READY_PORT))
        .map_err(AgentError::sys("connect to the host's ready port"))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(format!("{READY_LINE}\n").as_bytes())
        .map_err(AgentError::io("write the ready line"))
}

/// Accepts one connection (close-on-exec: containers must not inherit it).
pub fn accept(listener: &OwnedFd) -> Result<OwnedFd, nix::Error> {
    let fd = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
    // SAFETY: accept4 just returned this fd; nothing else owns it.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!("vsock:1024".parse::<Addr>().unwrap(), Addr::Vsock(1024));
        assert_eq!(
            "unix:/a/b".parse::<Addr>().unwrap(),
            Addr::Unix("/a/b".into())
        );
        for bad in ["vsock:x", "unix:", "tcp:1", "1024"] {
            assert!(bad.parse::<Addr>().is_err(), "{bad}");
        }
    }
}
