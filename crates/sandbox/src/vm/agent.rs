//! The host's side of the agent protocol: a ttrpc client over the VM's
//! hybrid vsock socket, with a deadline on every call, and stdio stream
//! connections. Everything the agent answers is treated as untrusted: its
//! messages are bounded by ttrpc, and what they say is checked before use.

use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use ironcell_protocol::agent::*;
use ironcell_protocol::agent_ttrpc::AgentClient;
use ironcell_protocol::stream::{parse_answer, read_line, StreamHeader, StreamKind};
use ironcell_protocol::ttrpc::{self, context};
use ironcell_protocol::{check_request, check_version, hybrid, CONTROL_PORT, STREAM_PORT};

use super::podnet::PodInterface;
use crate::{Result, SandboxError};

/// A call that does not answer in time fails (the guest hangs). The
/// default; `[vm] agent_timeout_secs` sets a container's own.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Agent {
    client: AgentClient,
    uds: std::path::PathBuf,
    /// Every call's deadline but a wait's.
    timeout: Duration,
    /// The agent's protocol minor version.
    minor: u32,
}

fn vm_err(what: impl std::fmt::Display) -> SandboxError {
    SandboxError::Vm(what.to_string())
}

/// The agent's error, on one line.
fn call_err(call: &str, e: ttrpc::Error) -> SandboxError {
    match e {
        ttrpc::Error::RpcStatus(s) => {
            let msg: String = s
                .message()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(500)
                .collect();
            vm_err(format!("{call}: {msg}"))
        }
        e => vm_err(format!("{call}: the guest agent did not answer: {e}")),
    }
}

impl Agent {
    /// Connects to the agent of a running VM whose hybrid vsock socket is
    /// `uds`; `timeout` is each call's deadline.
    pub fn connect(uds: &Path, timeout: Duration) -> Result<Agent> {
        let stream = hybrid::connect(uds, CONTROL_PORT, Duration::from_secs(10)).map_err(|e| {
            vm_err(format!(
                "cannot reach the guest agent through {}: {e}",
                uds.display()
            ))
        })?;
        Self::over(stream, uds, timeout)
    }

    fn over(stream: UnixStream, uds: &Path, timeout: Duration) -> Result<Agent> {
        let client = ttrpc::Client::new(stream.into_raw_fd())
            .map_err(|e| vm_err(format!("ttrpc client: {e}")))?;
        let mut agent = Agent {
            client: AgentClient::new(client),
            uds: uds.to_path_buf(),
            timeout,
            minor: 0,
        };
        let resp = agent
            .client
            .check(agent.ctx(), &check_request())
            .map_err(|e| call_err("version check", e))?;
        check_version(&resp).map_err(vm_err)?;
        agent.minor = resp.protocol_minor;
        Ok(agent)
    }

    /// Gives the guest's NIC (the one with the pod's MAC) the pod
    /// interface's name, MTU and addresses, and the guest its routes.
    pub fn update_network(&self, pod: &PodInterface) -> Result<()> {
        if self.minor < 1 {
            return Err(vm_err(format!(
                "the guest agent speaks protocol 1.{}, and pod networking needs 1.1: rebuild the \
                 guest image (make guest)",
                self.minor
            )));
        }
        let addresses = pod
            .addresses
            .iter()
            .map(|a| IpAddress {
                address: a.ip.to_string(),
                prefix_len: a.prefix_len.into(),
                ..Default::default()
            })
            .collect();
        let req = UpdateInterfaceRequest {
            interface: Some(Interface {
                name: pod.name.clone(),
                mac: pod.mac.to_vec(),
                mtu: pod.mtu,
                addresses,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        self.client
            .update_interface(self.ctx(), &req)
            .map_err(|e| call_err("the guest's network interface", e))?;
        let routes = pod
            .routes
            .iter()
            .map(|r| Route {
                destination: r.destination.map(|d| d.ip.to_string()).unwrap_or_default(),
                destination_prefix_len: r.destination.map_or(0, |d| d.prefix_len.into()),
                gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                device: pod.name.clone(),
                ..Default::default()
            })
            .collect();
        let req = UpdateRoutesRequest {
            routes,
            ..Default::default()
        };
        self.client
            .update_routes(self.ctx(), &req)
            .map(drop)
            .map_err(|e| call_err("the guest's routes", e))
    }

    pub fn guest_details(&self) -> Result<GuestDetailsResponse> {
        self.client
            .guest_details(self.ctx(), &Empty::new())
            .map_err(|e| call_err("guest details", e))
    }

    pub fn create(&self, id: &str, spec_json: Vec<u8>) -> Result<CreateContainerResponse> {
        let req = CreateContainerRequest {
            container_id: id.into(),
            spec_json,
            ..Default::default()
        };
        self.client
            .create_container(self.ctx(), &req)
            .map_err(|e| call_err("create in the guest", e))
    }

    /// Starts the container; returns the guest's clock at its start (us).
    pub fn start(&self, id: &str) -> Result<u64> {
        self.client
            .start_container(self.ctx(), &container(id))
            .map(|r| r.started_us)
            .map_err(|e| call_err("start in the guest", e))
    }

    pub fn state(&self, id: &str) -> Result<ContainerStateResponse> {
        self.client
            .container_state(self.ctx(), &container(id))
            .map_err(|e| call_err("state in the guest", e))
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let req = DeleteContainerRequest {
            container_id: id.into(),
            force,
            ..Default::default()
        };
        self.client
            .delete_container(self.ctx(), &req)
            .map(drop)
            .map_err(|e| call_err("delete in the guest", e))
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.client
            .pause_container(self.ctx(), &container(id))
            .map(drop)
            .map_err(|e| call_err("pause in the guest", e))
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        self.client
            .resume_container(self.ctx(), &container(id))
            .map(drop)
            .map_err(|e| call_err("resume in the guest", e))
    }

    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        self.client
            .list_processes(self.ctx(), &container(id))
            .map(|r| r.pids)
            .map_err(|e| call_err("ps in the guest", e))
    }

    pub fn stats(&self, id: &str) -> Result<StatsResponse> {
        self.client
            .stats(self.ctx(), &container(id))
            .map_err(|e| call_err("statistics from the guest", e))
    }

    pub fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<()> {
        let req = UpdateContainerRequest {
            container_id: id.into(),
            resources_json,
            ..Default::default()
        };
        self.client
            .update_container(self.ctx(), &req)
            .map(drop)
            .map_err(|e| call_err("update in the guest", e))
    }

    pub fn exec(&self, id: &str, exec_id: &str, process_json: Vec<u8>) -> Result<i32> {
        let req = ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            process_json,
            ..Default::default()
        };
        self.client
            .exec_process(self.ctx(), &req)
            .map(|r| r.pid)
            .map_err(|e| call_err("exec in the guest", e))
    }

    pub fn signal(&self, id: &str, exec_id: &str, signal: i32, all: bool) -> Result<()> {
        let req = SignalProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            signal: signal as u32,
            all,
            ..Default::default()
        };
        self.client
            .signal_process(self.ctx(), &req)
            .map(drop)
            .map_err(|e| call_err("signal in the guest", e))
    }

    /// Blocks until the process has exited and its output was sent (no
    /// deadline: it may run forever).
    pub fn wait(&self, id: &str, exec_id: &str) -> Result<WaitProcessResponse> {
        self.wait_for(id, exec_id, false)
    }

    /// Waits, without a deadline, for process `exec_id` of container `id`
    /// to exit, whether or not its output was read (protocol 1.3).
    pub fn wait_exit(&self, id: &str, exec_id: &str) -> Result<WaitProcessResponse> {
        self.wait_for(id, exec_id, true)
    }

    fn wait_for(&self, id: &str, exec_id: &str, exit_only: bool) -> Result<WaitProcessResponse> {
        let req = ProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            exit_only,
            ..Default::default()
        };
        self.client
            .wait_process(context::Context::default(), &req)
            .map_err(|e| call_err("wait in the guest", e))
    }

    /// Waits for the next OOM kill of container `id`; returns its id (an
    /// agent older than protocol 1.2 may answer another container's).
    pub fn next_oom(&self, id: &str) -> Result<String> {
        let req = OomEventRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        self.client
            .get_oom_event(context::Context::default(), &req)
            .map(|r| r.container_id)
            .map_err(|e| call_err("OOM events of the guest", e))
    }

    pub fn resize(&self, id: &str, exec_id: &str, rows: u16, cols: u16) -> Result<()> {
        let req = ResizeTerminalRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            rows: rows.into(),
            cols: cols.into(),
            ..Default::default()
        };
        self.client
            .resize_terminal(self.ctx(), &req)
            .map(drop)
            .map_err(|e| call_err("terminal resize in the guest", e))
    }

    pub fn shutdown(&self) -> Result<()> {
        self.client
            .shutdown(self.ctx(), &Empty::new())
            .map(drop)
            .map_err(|e| call_err("shutdown of the guest", e))
    }

    /// Opens stream `kind` of process `exec_id` ("" for the init).
    pub fn open_stream(&self, kind: StreamKind, id: &str, exec_id: &str) -> Result<UnixStream> {
        open_stream(&self.uds, kind, id, exec_id, self.timeout)
    }

    /// Each call's deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn ctx(&self) -> context::Context {
        context::with_duration(self.timeout)
    }
}

fn container(id: &str) -> ContainerRequest {
    ContainerRequest {
        container_id: id.into(),
        ..Default::default()
    }
}

/// Opens one stdio stream through the hybrid vsock socket `uds`.
pub fn open_stream(
    uds: &Path,
    kind: StreamKind,
    id: &str,
    exec_id: &str,
    timeout: Duration,
) -> Result<UnixStream> {
    let what = || format!("{} stream of the guest process", kind.as_str());
    let mut s = hybrid::connect(uds, STREAM_PORT, Duration::from_secs(10))
        .map_err(|e| vm_err(format!("cannot open the {}: {e}", what())))?;
    let header = StreamHeader {
        kind,
        container_id: id.into(),
        exec_id: exec_id.into(),
        resumable: false,
    };
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.write_all(header.to_line().as_bytes()))
        .and_then(|()| read_line(&mut s))
        .map_err(|e| vm_err(format!("cannot open the {}: {e}", what())))
        .and_then(|line| parse_answer(&line).map_err(|e| vm_err(format!("{}: {e}", what()))))?;
    s.set_read_timeout(None)
        .map_err(|e| vm_err(format!("{}: {e}", what())))?;
    Ok(s)
}
