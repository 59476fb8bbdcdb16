//! A container joining the running VM of its pod (`pod.rs`): its share
//! directory added to the VM's, the container made there by the agent.
//!
//! The CLI's member gets a relay that stands in for it on the host, as
//! every container it makes does ([`VmSandbox::create`]). ironcelld's gets
//! none ([`VmSandbox::create_attached`]): the daemon carries the init's
//! stdio and waits for it through the agent, as it does for an exec'd
//! process (`guest_exec.rs`), so a pod's containers add no host process to
//! its VM.

use std::path::Path;

use chrono::SecondsFormat;
use ironcell_basics::proc_stat::is_alive;
use ironcell_container::CreateOptions;
use ironcell_oci::Bundle;
use oci_spec::runtime::Spec;

use super::agent::Agent;
use super::guest_exec::{GuestExec, GuestLink, GuestStdio};
use super::relay::{self, Relay};
use super::share::{self, ShareMount};
use super::state::{self, VmState, EXIT_FILE, STATE_FILE};
use super::{annotations_of, pod, vm_err, wants_terminal, VmSandbox};
use crate::{Result, Sandbox};

/// A member checked on the host, before anything of it is made.
struct Member {
    /// The record of the pod's sandbox container, whose VM it joins.
    pod: VmState,
    /// The container's spec as the guest sees it.
    spec_json: Vec<u8>,
    /// What of the host the guest gets through the share.
    mounts: Vec<ShareMount>,
    terminal: bool,
}

impl Member {
    /// The container's record before it exists in the guest.
    fn record(&self, id: &str, bundle: &Bundle, pod_id: &str) -> VmState {
        VmState {
            id: id.to_string(),
            bundle: bundle.path.clone(),
            rootfs: self.mounts[0].source.clone(),
            created: chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true),
            annotations: annotations_of(&bundle.spec),
            relay_pid: 0,
            relay_start: 0,
            run_dir: self.pod.run_dir.clone(),
            hypervisor: self.pod.hypervisor.clone(),
            ready: false,
            guest_pid: 0,
            guest_times: Default::default(),
            agent_timeout_secs: self.pod.agent_timeout_secs,
            pod_network: None,
            pod: Some(pod_id.to_string()),
            host_cgroup: pod::host_cgroup(&bundle.spec),
            no_relay: false,
            vm_processes: Vec::new(),
            share_ns: None,
        }
    }
}

/// What of a member a create made, and its undo removes.
#[derive(Default)]
struct Made {
    /// Its part of the VM's share.
    shared: bool,
    /// The container in the guest.
    in_guest: bool,
}

/// Undoes what a member's create `made` in the VM of `pod` (never what
/// another create of the same id may have left), and its host cgroup.
fn undo_member(sandbox: &VmSandbox, id: &str, record: &VmState, pod: &VmState, made: Made) {
    if made.in_guest {
        if let Ok(a) = sandbox.agent(record) {
            let _ = a.delete(id, true);
        }
    }
    if made.shared {
        if let Err(e) = pod::remove(pod, id) {
            tracing::warn!("{e}");
        }
    }
    if let Some(cgroup) = &record.host_cgroup {
        pod::remove_host_cgroup(cgroup, id);
    }
}

impl VmSandbox {
    /// The pod whose VM a container of `spec` joins: the sandbox container
    /// its CRI annotations name, if that is a vm container of this root.
    pub fn pod_to_join(&self, spec: &Spec) -> Option<String> {
        pod::pod_of(spec).filter(|p| self.owns(p))
    }

    /// Whether container `id` has no relay (ironcelld made it and carries
    /// it); false too if it does not exist.
    pub fn runs_without_relay(&self, id: &str) -> bool {
        self.load(id).is_ok_and(|st| st.no_relay)
    }

    /// Checks that container `id` can join pod `pod_id`'s VM, and plans it.
    fn plan_member(
        &self,
        id: &str,
        bundle: &Bundle,
        preserve_fds: i32,
        pod_id: &str,
    ) -> Result<Member> {
        share::check_spec(&bundle.spec)?;
        if preserve_fds > 0 {
            return Err(vm_err(
                "--preserve-fds: file descriptors cannot be passed into a VM",
            ));
        }
        let no_vm = || {
            vm_err(format!(
                "container {id} belongs to pod {pod_id}, whose sandbox container is no VM here"
            ))
        };
        let pod = self.load(pod_id).map_err(|_| no_vm())?;
        if pod.pod.is_some() {
            return Err(no_vm());
        }
        if !pod.ready
            || self.exit_record(pod_id).is_some()
            || !is_alive(pod.relay_pid, pod.relay_start)
        {
            return Err(vm_err(format!("the VM of pod {pod_id} is not running")));
        }
        let (mut guest_spec, mounts) = share::plan(id, &bundle.path, &bundle.spec)?;
        pod::map_namespaces(&bundle.spec, &mut guest_spec, pod_id, &pod)?;
        pod::use_pod_shm(&bundle.spec, &mut guest_spec, pod_id)?;
        let spec_json = serde_json::to_vec(&guest_spec).map_err(|e| vm_err(e.to_string()))?;
        Ok(Member {
            pod,
            spec_json,
            mounts,
            terminal: wants_terminal(&bundle.spec),
        })
    }

    /// Creates container `id` in the VM of pod `pod_id` with a relay that
    /// stands in for it (the CLI's way: `relay.rs`).
    pub(super) fn create_member(
        &self,
        id: &str,
        dir: &Path,
        bundle: &Bundle,
        opts: &CreateOptions,
        pod_id: &str,
    ) -> Result<()> {
        let member = self.plan_member(id, bundle, opts.preserve_fds, pod_id)?;
        pod::add(&member.pod, id, &member.mounts)?;
        let mut record = member.record(id, bundle, pod_id);
        let state_file = dir.join(STATE_FILE);
        let (pod, spec_json) = (&member.pod, member.spec_json.clone());
        let uds = pod.run_dir.join("vsock.sock");
        let setup = || {
            if let Some(cgroup) = pod::host_cgroup(&bundle.spec) {
                pod::join_host_cgroup(&cgroup)?;
            }
            let agent = Agent::connect(&uds, pod.agent_timeout())?;
            let created = agent.create(id, spec_json)?;
            let stdio = match relay::attach(
                &agent,
                id,
                "",
                member.terminal,
                opts.console_socket.as_deref(),
            ) {
                Ok(s) => s,
                Err(e) => {
                    let _ = agent.delete(id, true);
                    return Err(e);
                }
            };
            Ok((
                Relay {
                    agent,
                    uds: uds.clone(),
                    id: id.to_string(),
                    exec_id: String::new(),
                    stdio,
                    exit_file: Some(dir.join(EXIT_FILE)),
                    vm: None,
                },
                format!(
                    "{} {} {} {} 0",
                    created.pid,
                    pod.guest_times.agent_start_us,
                    pod.guest_times.agent_ready_us,
                    created.created_us
                ),
            ))
        };
        let forked = relay::fork(setup, |pid| record.note_relay(pid, &state_file));
        let undo = |record: &VmState| {
            let made = Made {
                shared: true,
                in_guest: record.ready,
            };
            undo_member(self, id, record, &member.pod, made)
        };
        self.finish_create(id, record, forked, bundle, opts, undo)
    }

    /// Creates container `id` of `bundle` in the running VM of pod `pod_id`
    /// (as [`VmSandbox::pod_to_join`] names it), without a relay: the
    /// caller carries the init's stdio and waits for it through the
    /// returned streams and link, as for an exec'd process. The host pid it
    /// is given is the pod VM's relay's.
    pub fn create_attached(&self, id: &str, bundle: &Bundle, pod_id: &str) -> Result<GuestExec> {
        let dir = self.make_dir(id)?;
        let made = self.attach_member(id, bundle, pod_id);
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        made
    }

    fn attach_member(&self, id: &str, bundle: &Bundle, pod_id: &str) -> Result<GuestExec> {
        let member = self.plan_member(id, bundle, 0, pod_id)?;
        let mut record = member.record(id, bundle, pod_id);
        record.relay_pid = member.pod.relay_pid;
        record.relay_start = member.pod.relay_start;
        record.no_relay = true;
        // No host process of its own to account for.
        record.host_cgroup = None;
        // Written first: a removal meanwhile (a daemon that died in this
        // create) finds what to undo.
        self.write_record(id, &record)?;
        let link = GuestLink::of(&record, id, "");
        let mut made = Made::default();
        let attached = (|| {
            pod::add(&member.pod, id, &member.mounts)?;
            made.shared = true;
            let agent = link.connect()?;
            let created = agent.create(id, member.spec_json.clone())?;
            made.in_guest = true;
            let stdio = GuestStdio::open(&agent, id, "", member.terminal)?;
            record.guest_pid = created.pid;
            record.guest_times = state::GuestTimes {
                agent_start_us: member.pod.guest_times.agent_start_us,
                agent_ready_us: member.pod.guest_times.agent_ready_us,
                created_us: created.created_us,
                started_us: 0,
            };
            record.ready = true;
            self.commit_create(id, &record, bundle, &CreateOptions::default())?;
            Ok(stdio)
        })();
        match attached {
            Ok(stdio) => Ok(GuestExec {
                host_pid: record.relay_pid,
                link,
                stdio,
            }),
            Err(e) => {
                undo_member(self, id, &record, &member.pod, made);
                Err(e)
            }
        }
    }
}
