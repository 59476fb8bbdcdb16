//! The daemon ↔ keeper channel: a SOCK_SEQPACKET unix socket, one JSON
//! message per packet, file descriptors attached with SCM_RIGHTS. Packets
//! keep message boundaries and keep each message's fds with it.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

/// Largest packet (a spawn request with its argv and environment).
pub const MAX_PACKET: usize = 256 * 1024;
/// Most fds one message carries.
pub const MAX_FDS: usize = 8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ToKeeper {
    /// A daemon (re)connects: the keeper sends every exit not acknowledged.
    Hello {},
    /// Listen on `public` (containerd's task address) and relay its
    /// connections to the daemon's `backend` socket.
    Front { public: PathBuf, backend: PathBuf },
    /// Fork and exec `argv`; the attached fds become fds `targets[i]`.
    Spawn {
        tag: u64,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: PathBuf,
        targets: Vec<i32>,
    },
    /// The daemon has recorded the exit of `pid`: the keeper forgets it.
    Ack { pid: i32 },
    /// Keep the attached fd under `key` (replacing any), so that it stays
    /// open while no daemon runs: a process's stdin pipe, a pty master.
    Hold { key: String },
    /// Close the fd kept under `key`.
    Release { key: String },
    /// Send back (a copy of) the fd kept under `key`; the keeper keeps it.
    Fetch { key: String },
    /// Start the daemon again with this command when it dies (a daemon the
    /// shim started, which no service manager restarts).
    Supervise {
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: PathBuf,
    },
    /// The daemon stops on purpose: do not start it again.
    Unsupervise {},
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FromKeeper {
    Spawned {
        tag: u64,
        pid: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Exit {
        pid: i32,
        status: u32,
        at_nanos: u64,
    },
    /// The answer to Fetch, with the fd attached when `found`.
    Held { key: String, found: bool },
    /// The answer to Front.
    Fronted {
        public: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// Sends one message with `fds` attached.
pub fn send<T: Serialize>(sock: RawFd, msg: &T, fds: &[RawFd]) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    if bytes.len() > MAX_PACKET || fds.len() > MAX_FDS {
        return Err(std::io::Error::other("keeper message too large"));
    }
    let iov = [IoSlice::new(&bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives one message and its fds. `Ok(None)` at EOF.
pub fn recv<T: for<'de> Deserialize<'de>>(
    sock: RawFd,
    buf: &mut [u8],
) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, fds, truncated) = {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(list) = c {
                for fd in list {
                    // SAFETY: just received over SCM_RIGHTS; nothing else
                    // owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        (
            msg.bytes,
            fds,
            msg.flags
                .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC),
        )
    };
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    if truncated {
        return Err(std::io::Error::other("keeper message truncated"));
    }
    let msg = serde_json::from_slice(&buf[..n]).map_err(std::io::Error::other)?;
    Ok(Some((msg, fds)))
}

/// A connected SOCK_SEQPACKET socket to `path`.
pub fn connect(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    nix::sys::socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn messages_and_fds_cross() {
        let (a, b) = pair();
        let (r, w) = nix::unistd::pipe().unwrap();
        let msg = ToKeeper::Spawn {
            tag: 7,
            argv: vec!["/bin/true".into()],
            env: vec![],
            cwd: "/".into(),
            targets: vec![0, 1],
        };
        send(a.as_raw_fd(), &msg, &[r.as_raw_fd(), w.as_raw_fd()]).unwrap();
        send(a.as_raw_fd(), &ToKeeper::Ack { pid: 3 }, &[]).unwrap();
        let mut buf = vec![0u8; MAX_PACKET];
        let (got, fds): (ToKeeper, _) = recv(b.as_raw_fd(), &mut buf).unwrap().unwrap();
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 2);
        let (got, fds): (ToKeeper, _) = recv(b.as_raw_fd(), &mut buf).unwrap().unwrap();
        assert_eq!(got, ToKeeper::Ack { pid: 3 });
        assert!(fds.is_empty());
        drop(a);
        assert!(recv::<ToKeeper>(b.as_raw_fd(), &mut buf).unwrap().is_none());
    }

    #[test]
    fn malformed_messages_are_errors() {
        let (a, b) = pair();
        nix::unistd::write(&a, b"{\"explode\":{}}").unwrap();
        let mut buf = vec![0u8; MAX_PACKET];
        assert!(recv::<ToKeeper>(b.as_raw_fd(), &mut buf).is_err());
    }
}
