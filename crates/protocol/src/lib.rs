//! The protocol between ironcell on the host and `ironcell-agent` in a
//! vm sandbox's guest.
//!
//! - **Control**: ttrpc over vsock port [`CONTROL_PORT`], service `Agent`
//!   ([`agent_ttrpc`], messages in [`agent`], from `proto/agent.proto`).
//!   The host's first call is `Check`; [`check_version`] refuses an agent
//!   of another major version.
//! - **Stdio**: one vsock connection per stream on [`STREAM_PORT`], opened
//!   by the host, starting with a [`stream::StreamHeader`] line; the agent
//!   answers one line before any data flows.
//! - **Readiness**: once it serves, the agent connects to the host's
//!   [`READY_PORT`] and writes [`READY_LINE`].
//! - **Transport on the host**: the hypervisor exposes the guest's vsock as
//!   a unix socket (Firecracker's hybrid vsock, served by ironcell-vmm and
//!   by vhost-device-vsock alike); [`hybrid::connect`] opens a stream to a
//!   guest port through it.
//!
//! Everything read from the other side is untrusted: the host treats the
//! guest as hostile, and the agent treats the host's requests as input to
//! be checked, never as trusted code.

pub mod hybrid;
pub mod stream;

/// Generated from `proto/agent.proto`: the messages.
#[allow(
    clippy::all,
    nonstandard_style,
    unused_imports,
    unused_mut,
    unused_results,
    missing_docs
)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/sync/agent.rs"));
}

/// Generated from `proto/agent.proto`: the ttrpc client and server.
#[allow(
    clippy::all,
    nonstandard_style,
    unused_imports,
    unused_mut,
    unused_results,
    missing_docs
)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/sync/agent_ttrpc.rs"));
}

pub use protobuf;
pub use ttrpc;

/// The agent's ttrpc service.
pub const CONTROL_PORT: u32 = 1024;
/// Stdio streams.
pub const STREAM_PORT: u32 = 1025;
/// The host's port the agent connects to once it serves ([`READY_LINE`]):
/// the host connects to the guest only after that. A host that polls the
/// guest's ports while its vsock driver starts can upset the vsock
/// backend (vhost-device-vsock loses its worker thread), so it never does.
pub const READY_PORT: u32 = 1026;
/// What the agent writes on [`READY_PORT`].
pub const READY_LINE: &str = "IRONCELL-AGENT-READY 1";
/// The host's vsock CID.
pub const HOST_CID: u32 = 2;

/// This build's protocol version. A different major is refused by both
/// sides; a higher minor only adds fields and calls.
pub const PROTOCOL_MAJOR: u32 = 1;
pub const PROTOCOL_MINOR: u32 = 3;

/// The largest OCI document (config.json, process, resources) either side
/// accepts in one request.
pub const MAX_DOCUMENT: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("the guest agent speaks protocol {agent_major}.{agent_minor} (agent {agent_version:?}), this ironcell speaks {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}: rebuild the guest image (make guest) so that they match")]
    Version {
        agent_major: u32,
        agent_minor: u32,
        agent_version: String,
    },
    #[error("malformed stream header: {0}")]
    Header(String),
    #[error("invalid {what} {value:?}: {why}")]
    Id {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

/// Checks an agent's answer to `Check`.
pub fn check_version(resp: &agent::CheckResponse) -> Result<(), ProtocolError> {
    if resp.protocol_major != PROTOCOL_MAJOR {
        return Err(ProtocolError::Version {
            agent_major: resp.protocol_major,
            agent_minor: resp.protocol_minor,
            agent_version: resp.agent_version.chars().take(64).collect(),
        });
    }
    Ok(())
}

/// A `Check` request for this build's version.
pub fn check_request() -> agent::CheckRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    agent::CheckRequest {
        protocol_major: PROTOCOL_MAJOR,
        protocol_minor: PROTOCOL_MINOR,
        host_time_ns: now,
        ..Default::default()
    }
}

/// Checks a container or exec id from the other side: 1 to 256 of
/// `[A-Za-z0-9_.-]`, not starting with `.` (they become file names).
pub fn check_id(what: &'static str, id: &str) -> Result<(), ProtocolError> {
    let bad = |why| ProtocolError::Id {
        what,
        value: id.chars().take(80).collect(),
        why,
    };
    if id.is_empty() || id.len() > 256 {
        return Err(bad("must be 1 to 256 characters"));
    }
    if id.starts_with('.') {
        return Err(bad("must not start with '.'"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(bad("may hold only letters, digits, '_', '-' and '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_major_is_refused_with_a_clear_error() {
        let ok = agent::CheckResponse {
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: PROTOCOL_MINOR + 3,
            agent_version: "x".into(),
            ..Default::default()
        };
        assert!(check_version(&ok).is_ok());
        let old = agent::CheckResponse {
            protocol_major: PROTOCOL_MAJOR + 1,
            protocol_minor: 0,
            agent_version: "9.9.9".into(),
            ..Default::default()
        };
        let e = check_version(&old).unwrap_err().to_string();
        assert!(
            e.contains("protocol 2.0") && e.contains("make guest"),
            "{e}"
        );
    }

    #[test]
    fn ids() {
        assert!(check_id("container id", "web-1.a_b").is_ok());
        for bad in ["", ".hidden", "a/b", "../x", "a b", "ä", &"x".repeat(257)] {
            assert!(check_id("container id", bad).is_err(), "{bad:?}");
        }
    }
}
