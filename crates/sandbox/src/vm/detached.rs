//! A VM no relay owns: ironcelld's VM of a pod's sandbox container.
//!
//! The CLI's VM belongs to the container's relay (`relay.rs`): the
//! hypervisor and its device process die with it. ironcelld's helper (a
//! short-lived child of its keeper) creates the container with
//! [`VmSandbox::create_detached`] instead:
//!
//! - the helper joins the pod's host cgroup and network namespace and makes
//!   the share in a mount namespace of its own, as a relay would, pins that
//!   namespace on a file (`share_ns.rs`), and starts the VM's processes
//!   without tying them to its own death;
//! - the container is created in the guest with no stream attached (the
//!   agent keeps what its init writes until one is);
//! - the helper exits, and the VM's processes become children of the keeper
//!   (a subreaper). A member's create enters the share's namespace through
//!   its pin (`pod.rs`), whichever hypervisor runs the VM;
//! - the daemon carries the init as it carries a pod member's (`member.rs`):
//!   it opens the init's streams from the agent, waits for it through the
//!   agent, and stops the VM when it ends ([`VmSandbox::stop_vm`]), which
//!   unpins the namespace.
//!
//! The container's host pid (`relay_pid`) is the hypervisor's, and
//! `vm_processes` in its record lists what stopping the VM kills. They are
//! recorded as soon as they start, so a removal during the create finds
//! them.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use ironcell_basics::proc_stat::is_alive;
use ironcell_container::{ContainerError, CreateOptions};
use ironcell_oci::Bundle;

use super::guest_exec::{status_of, GuestExec, GuestLink, GuestStdio};
use super::hypervisor::Lifetime;
use super::owner::{boot_owner, undo_owner};
use super::state::{self, VmState, STATE_FILE};
use super::{kill_relay, pod, relay, share_ns, vm_err, wants_terminal, VmSandbox};
use crate::Result;

/// How long a guest asked to power off gets before its VM is killed.
const POWER_OFF_GRACE: Duration = Duration::from_secs(5);

impl VmSandbox {
    /// Creates container `id` of `bundle` in a VM of its own that no relay
    /// owns and that outlives the calling process: for a single-threaded
    /// process that exits soon after (it changes the process's cgroup and
    /// namespaces), whose parent is a subreaper that then reaps the VM's
    /// processes. The caller's caller carries the init
    /// ([`VmSandbox::attach_init`]) and stops the VM
    /// ([`VmSandbox::stop_vm`]).
    pub fn create_detached(&self, id: &str, bundle: &Bundle, opts: &CreateOptions) -> Result<()> {
        ironcell_oci::validate_id(id).map_err(ContainerError::from)?;
        if let Some(pod_id) = pod::pod_of(&bundle.spec) {
            return Err(vm_err(format!(
                "container {id} belongs to pod {pod_id}: it joins its pod's VM, which it does \
                 not own"
            )));
        }
        if opts.console_socket.is_some() {
            return Err(vm_err(
                "a VM that no relay owns has no host terminal: its init's terminal is the guest's",
            ));
        }
        let dir = self.make_dir(id)?;
        let result = self.detached_in(id, &dir, bundle, opts);
        if result.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        result
    }

    fn detached_in(
        &self,
        id: &str,
        dir: &Path,
        bundle: &Bundle,
        opts: &CreateOptions,
    ) -> Result<()> {
        let plan = self.plan_owner(id, dir, bundle, opts)?;
        let mut record = plan.record;
        record.no_relay = true;
        record.share_ns = Some(share_ns::pin_path(&plan.run_dir));
        let state_file = dir.join(STATE_FILE);
        let booted = boot_owner(
            id,
            bundle,
            &plan.config,
            plan.kvm,
            &plan.run_dir,
            Lifetime::Detached,
            |vm| {
                // A removal from here on finds the VM's processes to stop.
                record.vm_processes = vm.processes();
                if let Some((pid, start)) = record.vm_processes.last() {
                    record.relay_pid = *pid;
                    record.relay_start = *start;
                }
                let _ = state::write_json(&state_file, &record);
            },
        );
        let forked = booted.map(|b| {
            // The record holds the VM's processes and its pod network from
            // here on; an error from here on stops them through it.
            if let Some(guard) = b.network {
                guard.disarm();
            }
            let pid = record.relay_pid;
            b.vm.let_go();
            relay::Forked {
                pid,
                report: b.report,
            }
        });
        let undo = |record: &VmState| {
            kill_relay(record);
            undo_owner(id, record);
        };
        self.finish_create(id, record, forked, bundle, opts, undo)
    }

    /// Stops the VM container `id` owns without a relay, and its members'
    /// waits in it fail. Nothing for any other container.
    ///
    /// The guest is powered off through its agent first, as a relay does,
    /// so that what it still sends reaches the host (the answer to the
    /// signal that ended the init may be on its way); the VM's processes
    /// are killed if it does not go in time.
    pub fn stop_vm(&self, id: &str) -> Result<()> {
        let st = self.load(id)?;
        if !st.owns_vm_without_relay() {
            return Ok(());
        }
        if is_alive(st.relay_pid, st.relay_start)
            && self.agent(&st).and_then(|a| a.shutdown()).is_ok()
        {
            let deadline = Instant::now() + POWER_OFF_GRACE;
            while is_alive(st.relay_pid, st.relay_start) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        kill_relay(&st);
        share_ns::unpin(&st.run_dir);
        Ok(())
    }

    /// The host pids of the VM container `id` owns without a relay (none
    /// for any other container).
    pub fn vm_pids(&self, id: &str) -> Vec<i32> {
        self.load(id)
            .map(|st| st.vm_processes.iter().map(|(pid, _)| *pid).collect())
            .unwrap_or_default()
    }

    /// Whether `pid` is the hypervisor of the VM container `id` owns
    /// without a relay (and still the process that started as it).
    pub fn is_hypervisor_of(&self, id: &str, pid: i32) -> bool {
        self.load(id).is_ok_and(|st| {
            st.vm_processes
                .last()
                .is_some_and(|&(p, start)| p == pid && is_alive(p, start))
        })
    }

    /// Whether container `id` owns its VM without a relay.
    pub fn owns_detached_vm(&self, id: &str) -> bool {
        self.load(id).is_ok_and(|st| st.owns_vm_without_relay())
    }

    /// Blocks, without a deadline, until the init of container `id`, which
    /// owns its VM without a relay, has exited, whether or not anyone reads
    /// its output (a pod's holder, whose output nobody attaches); returns
    /// its exit status. Err once its VM cannot be asked (it ended).
    pub fn wait_init_exit(&self, id: &str) -> Result<u32> {
        let st = self.load(id)?;
        if !st.owns_vm_without_relay() {
            return Err(vm_err(format!(
                "container {id} does not own a VM without a relay"
            )));
        }
        let agent = self.agent(&st)?;
        Ok(status_of(&agent.wait_exit(id, "")?))
    }

    /// Opens the streams of the init of container `id`, which owns its VM
    /// without a relay, for a caller that carries it as
    /// [`VmSandbox::create_attached`]'s caller carries a member's.
    pub fn attach_init(&self, id: &str) -> Result<GuestExec> {
        let st = self.load(id)?;
        if !st.owns_vm_without_relay() {
            return Err(vm_err(format!(
                "container {id} does not own a VM without a relay"
            )));
        }
        let bundle = Bundle::load(&st.bundle).map_err(ContainerError::from)?;
        let link = GuestLink::of(&st, id, "");
        let agent = link.connect()?;
        let stdio = GuestStdio::open(&agent, id, "", wants_terminal(&bundle.spec))?;
        Ok(GuestExec {
            host_pid: st.relay_pid,
            link,
            stdio,
        })
    }
}
