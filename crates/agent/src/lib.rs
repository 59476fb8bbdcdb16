//! `ironcell-agent`: PID 1 of a vm sandbox's guest.
//!
//! Layout, from the wire down:
//! - [`service`]: the ttrpc `Agent` service (control, vsock port 1024);
//! - [`streams`]: the stdio stream listener (vsock port 1025);
//! - [`containers`]: the containers and processes the host asked for,
//!   created with ironcell's container engine (`ironcell-container`, the
//!   same code as the namespace sandbox on the host);
//! - [`process`]: one process's stdio and exit; [`reaper`]: exits of every
//!   child; [`oom`]: OOM kills seen in the containers' cgroups;
//! - [`init`]: what PID 1 mounts; [`guest`]: facts about the guest;
//!   [`listen`]: the addresses the agent listens on; [`network`]: the
//!   guest's eth0 and routes, copied from the pod's network;
//! - [`pause`]: the binary run as a pod's namespace holder (`pause`).
//!
//! Every request is input to be checked: ids, sizes and JSON documents are
//! validated before use, and a bad request gets an error, never a panic.

pub mod containers;
pub mod guest;
pub mod helper;
pub mod init;
pub mod listen;
pub mod network;
pub mod oom;
pub mod pause;
pub mod pod_shm;
pub mod process;
pub mod reaper;
pub mod service;
pub mod streams;

use ironcell_container::ContainerError;
use ironcell_protocol::ProtocolError;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("container {0} does not exist")]
    NoContainer(String),
    #[error("container {0} has no process {1}")]
    NoProcess(String, String),
    #[error("{0} exists already")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotRunning(String),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{what}: {err}")]
    Sys { what: &'static str, err: nix::Error },
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
}

impl AgentError {
    pub fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> AgentError {
        move |err| AgentError::Sys { what, err }
    }

    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
        let what = what.into();
        move |err| AgentError::Io { what, err }
    }
}
