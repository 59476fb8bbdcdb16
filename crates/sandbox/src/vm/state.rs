//! A vm container's records in its state directory (`<root>/<id>/`):
//! `vm.json`, written when its relay has been forked and again once the
//! container exists in the guest, and `exit.json`, written by the relay
//! when the container has exited.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "vm.json";
pub const EXIT_FILE: &str = "exit.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmState {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The host process that stands in for the container (state.json's
    /// pid): its relay, which holds the container's stdio and owns the VM;
    /// or, with `no_relay`, its pod VM's relay or hypervisor, or its own
    /// VM's hypervisor.
    pub relay_pid: i32,
    /// The relay's start time (/proc/<pid>/stat), telling it from a later
    /// process with the same pid.
    pub relay_start: u64,
    /// Where the VM's sockets and logs are.
    pub run_dir: PathBuf,
    pub hypervisor: String,
    /// False while the VM boots and the container is being created.
    pub ready: bool,
    /// The init's pid inside the guest.
    #[serde(default)]
    pub guest_pid: i32,
    /// The guest's boot and the container's creation, on the guest's
    /// clock (microseconds since its kernel started).
    #[serde(default)]
    pub guest_times: GuestTimes,
    /// The deadline of calls to the agent (`[vm] agent_timeout_secs` at
    /// create).
    #[serde(default = "default_agent_timeout")]
    pub agent_timeout_secs: u32,
    /// The pod network namespace the VM's tap is tied to (None: the VM
    /// has no NIC).
    #[serde(default)]
    pub pod_network: Option<PathBuf>,
    /// The sandbox container of the pod whose VM this container joined
    /// (None: the container's relay owns the VM in `run_dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The host cgroup (cgroupfs path) the relay, and with it the VM's
    /// processes, joined: a CRI pod's, where the kubelet accounts and
    /// bounds the pod's host resources. Removed at delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cgroup: Option<PathBuf>,
    /// The container has no relay of its own: the process that created it
    /// (ironcelld) carries its stdio and waits for its init through the
    /// agent. `relay_pid` and `relay_start` then name the host process
    /// that stands for it: its pod VM's relay or hypervisor, or, when it
    /// owns its VM (`vm_processes`), that VM's hypervisor.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_relay: bool,
    /// The VM's host processes as (pid, start time), the hypervisor last,
    /// when no relay owns the VM ([`super::VmSandbox::create_detached`]):
    /// what stops it. `relay_pid` is then the hypervisor's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vm_processes: Vec<(i32, u64)>,
    /// The file the share's mount namespace is bound onto, when no relay
    /// owns the VM (`share_ns.rs`): how a pod member's create reaches the
    /// share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_ns: Option<PathBuf>,
}

fn default_agent_timeout() -> u32 {
    super::agent::CALL_TIMEOUT.as_secs() as u32
}

impl VmState {
    /// Records `pid` as the relay (and its start time) in `state_file`,
    /// before the relay's setup is done: a removal meanwhile finds it.
    pub fn note_relay(&mut self, pid: i32, state_file: &Path) {
        self.relay_pid = pid;
        self.relay_start =
            ironcell_basics::proc_stat::ProcStat::of(pid).map_or(0, |s| s.start_time);
        let _ = write_json(state_file, self);
    }

    /// Whether the container owns a VM that no relay owns
    /// ([`super::VmSandbox::create_detached`]).
    pub fn owns_vm_without_relay(&self) -> bool {
        self.pod.is_none() && self.no_relay
    }

    /// The deadline of calls to this container's agent.
    pub fn agent_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.agent_timeout_secs.into())
    }
}

/// Microseconds since the guest's kernel started (CLOCK_BOOTTIME), as the
/// agent reports them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GuestTimes {
    pub agent_start_us: u64,
    pub agent_ready_us: u64,
    pub created_us: u64,
    #[serde(default)]
    pub started_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitRecord {
    /// The exit code, or 128 + the signal's number.
    pub code: i32,
    /// The signal that ended the container, 0 if none.
    pub signal: u32,
    pub oom_killed: bool,
    pub exited_at: String,
    /// Why the container ended if not by itself (the VM died, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Writes `value` as JSON to `path` atomically (a temporary file renamed
/// over it): a reader never sees half a record.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    ironcell_basics::atomic_file::write(path, &serde_json::to_vec(value)?)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<T> {
    let text = fs::read(path)?;
    serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(EXIT_FILE);
        let r = ExitRecord {
            code: 137,
            signal: 9,
            oom_killed: true,
            exited_at: "2026-01-01T00:00:00Z".into(),
            reason: Some("the VM ended".into()),
        };
        write_json(&p, &r).unwrap();
        assert_eq!(read_json::<ExitRecord>(&p).unwrap(), r);
        assert!(!dir.path().join("exit.json.tmp").exists());
    }
}
