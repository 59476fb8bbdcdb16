//! An exec'd process of a VM container that no relay stands in for.
//!
//! The CLI forks a relay for each exec (`relay.rs`), because its callers
//! (podman's conmon, containerd's runc shim) expect a host process. ironcelld
//! needs none: it copies the process's stdio streams and waits for it
//! through the agent itself. Across a restart of the daemon its keeper holds
//! the stream connections, so the next daemon carries on copying from them
//! and waits again through a [`GuestLink`] made from the container's state.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use ironcell_basics::exit_status;
use ironcell_protocol::agent::WaitProcessResponse;
use ironcell_protocol::stream::StreamKind;

use super::agent::Agent;
use super::state::VmState;
use crate::Result;

/// A process just exec'd in the guest, with its streams open.
pub struct GuestExec {
    /// The host process that stands for the container (its relay): the
    /// pid an engine is given, since the guest's would name an unrelated
    /// host process.
    pub host_pid: i32,
    pub link: GuestLink,
    pub stdio: GuestStdio,
}

/// The process's stdio streams (each attached once).
pub enum GuestStdio {
    /// Three streams: end the stdin stream's writing side to end the
    /// process's input.
    Pipes {
        stdin: UnixStream,
        stdout: UnixStream,
        stderr: UnixStream,
    },
    /// The terminal's stream: input one way, output the other.
    Tty(UnixStream),
}

impl GuestStdio {
    pub(super) fn open(agent: &Agent, id: &str, exec_id: &str, terminal: bool) -> Result<Self> {
        if terminal {
            return Ok(GuestStdio::Tty(agent.open_stream(
                StreamKind::Tty,
                id,
                exec_id,
            )?));
        }
        Ok(GuestStdio::Pipes {
            stdin: agent.open_stream(StreamKind::Stdin, id, exec_id)?,
            stdout: agent.open_stream(StreamKind::Stdout, id, exec_id)?,
            stderr: agent.open_stream(StreamKind::Stderr, id, exec_id)?,
        })
    }
}

/// How to reach one exec'd process through its VM's agent.
#[derive(Debug, Clone)]
pub struct GuestLink {
    uds: PathBuf,
    timeout: Duration,
    id: String,
    exec_id: String,
}

impl GuestLink {
    pub(super) fn of(st: &VmState, id: &str, exec_id: &str) -> GuestLink {
        GuestLink {
            uds: st.run_dir.join("vsock.sock"),
            timeout: st.agent_timeout(),
            id: id.to_string(),
            exec_id: exec_id.to_string(),
        }
    }

    pub(super) fn connect(&self) -> Result<Agent> {
        Agent::connect(&self.uds, self.timeout)
    }

    /// Blocks until the process has exited and the agent has sent all of
    /// its output; returns its exit status. An error means the process can
    /// no longer be asked about (its VM ended).
    pub fn wait(&self) -> Result<u32> {
        let agent = self.connect()?;
        Ok(status_of(&agent.wait(&self.id, &self.exec_id)?))
    }

    pub fn signal(&self, signal: i32) -> Result<()> {
        self.connect()?
            .signal(&self.id, &self.exec_id, signal, false)
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.connect()?.resize(&self.id, &self.exec_id, rows, cols)
    }
}

/// A guest process's exit status as the host reports one: its exit code,
/// or 128 plus the signal that ended it.
pub fn status_of(w: &WaitProcessResponse) -> u32 {
    if w.signal > 0 && w.signal < 65 {
        exit_status::of_signal(w.signal as i32)
    } else {
        (w.exit_code & 0xff) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_status_is_its_code_or_128_plus_its_signal() {
        let w = |exit_code, signal| WaitProcessResponse {
            exit_code,
            signal,
            ..Default::default()
        };
        assert_eq!(status_of(&w(0, 0)), 0);
        assert_eq!(status_of(&w(3, 0)), 3);
        assert_eq!(status_of(&w(0, 9)), 137);
        assert_eq!(status_of(&w(0, 15)), 143);
        // What a hostile agent may say stays within an exit status.
        assert_eq!(status_of(&w(-1, 0)), 255);
        assert_eq!(status_of(&w(300, 0)), 44);
        assert_eq!(status_of(&w(0, 1000)), 0);
    }
}
