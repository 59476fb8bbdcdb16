//! A container that owns its VM: its create planned, its VM booted and
//! the container created in it (by its relay, or by ironcelld's helper
//! for a VM no relay owns, `detached.rs`), the VM tied to the pod network,
//! and what a failed create leaves undone.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::SecondsFormat;
use ironcell_container::CreateOptions;
use ironcell_oci::Bundle;
use oci_spec::runtime::Spec;

use super::agent::Agent;
use super::hypervisor::{self, Lifetime, Nic, Plan, Vm};
use super::relay::{self, OwnedVm, Relay};
use super::state::VmState;
use super::{
    annotations_of, pod, podnet, remove_run_dir, share, share_ns, sizing, vm_err, VmSandbox,
};
use crate::config::VmConfig;
use crate::host::KvmKind;
use crate::Result;

/// A container that owns its VM, checked and planned before its VM starts.
pub(super) struct OwnerPlan {
    /// The VM's configuration, sized for the container.
    pub(super) config: VmConfig,
    pub(super) kvm: KvmKind,
    pub(super) run_dir: PathBuf,
    pub(super) record: VmState,
}

/// Removes what a failed create of a container owning its VM left on the
/// host (its VM's processes are gone by then).
pub(super) fn undo_owner(id: &str, record: &VmState) {
    remove_run_dir(&record.run_dir);
    if let Some(netns) = &record.pod_network {
        leave_pod_network(netns);
    }
    if let Some(cgroup) = &record.host_cgroup {
        pod::remove_host_cgroup(cgroup, id);
    }
}

impl VmSandbox {
    /// Checks a container that owns its VM and plans it: the VM's
    /// configuration sized for it, its run directory (made), its record.
    pub(super) fn plan_owner(
        &self,
        id: &str,
        dir: &Path,
        bundle: &Bundle,
        opts: &CreateOptions,
    ) -> Result<OwnerPlan> {
        let mut config = self.config()?.clone();
        let kvm = KvmKind::detect();
        hypervisor::check_host(&config, kvm)?;
        share::check_spec(&bundle.spec)?;
        let size = sizing::size(&config, &bundle.spec, sizing::HostLimits::detect())?;
        config.vcpus = size.vcpus;
        config.memory_mib = size.memory_mib;
        if opts.preserve_fds > 0 {
            return Err(vm_err(
                "--preserve-fds: file descriptors cannot be passed into a VM",
            ));
        }
        let run_dir = Self::run_dir(&config, dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.run_dir)
            .map_err(|e| vm_err(format!("cannot create {}: {e}", config.run_dir.display())))?;
        if run_dir.exists() {
            remove_run_dir(&run_dir);
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&run_dir)
            .map_err(|e| vm_err(format!("cannot create {}: {e}", run_dir.display())))?;

        let created = chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        let rootfs = bundle
            .spec
            .root()
            .as_ref()
            .map(|r| {
                if r.path().is_absolute() {
                    r.path().clone()
                } else {
                    bundle.path.join(r.path())
                }
            })
            .unwrap_or_else(|| bundle.path.join("rootfs"));
        let record = VmState {
            id: id.to_string(),
            bundle: bundle.path.clone(),
            rootfs,
            created,
            annotations: annotations_of(&bundle.spec),
            relay_pid: 0,
            relay_start: 0,
            run_dir: run_dir.clone(),
            hypervisor: config.hypervisor.as_str().to_string(),
            ready: false,
            guest_pid: 0,
            guest_times: Default::default(),
            agent_timeout_secs: config.agent_timeout_secs,
            pod_network: None,
            pod: None,
            host_cgroup: pod::host_cgroup(&bundle.spec),
            no_relay: false,
            vm_processes: Vec::new(),
            share_ns: None,
        };
        Ok(OwnerPlan {
            config,
            kvm,
            run_dir,
            record,
        })
    }
}

/// A VM booted for a container that owns it, the container created in it.
pub(super) struct Booted {
    pub(super) vm: Vm,
    pub(super) agent: Agent,
    /// `<guest pid> <agent start> <agent ready> <created> <joined>`, the
    /// times in microseconds of the guest's clock, joined 1 if the VM is
    /// tied to the pod network.
    pub(super) report: String,
    /// Unties the VM from the pod network on error, until disarmed.
    pub(super) network: Option<PodNetworkGuard>,
}

/// Boots container `id`'s VM and creates the container in it, from the
/// calling process: it joins the pod's host cgroup and network namespace,
/// makes the share in a mount namespace of its own (the VM's processes
/// inherit all three), and starts the VM's processes with `lifetime`;
/// `launched` sees them first. A relay's setup, or a detached create's in
/// a single-threaded process that exits soon after.
pub(super) fn boot_owner(
    id: &str,
    bundle: &Bundle,
    config: &VmConfig,
    kvm: KvmKind,
    run_dir: &Path,
    lifetime: Lifetime,
    launched: impl FnOnce(&Vm),
) -> Result<Booted> {
    if let Some(cgroup) = pod::host_cgroup(&bundle.spec) {
        pod::join_host_cgroup(&cgroup)?;
    }
    let host_network = share::host_network(&bundle.spec);
    share::enter_network(&host_network)?;
    // A namespace CNI (or podman's network backend) set up before create
    // joins the VM to its network; until the creator hands it on, an error
    // unties it again.
    let pod_network = match &host_network {
        share::HostNetwork::Join(netns) => podnet::connect(netns, POD_TAP)?.map(|iface| {
            (
                iface,
                PodNetworkGuard {
                    netns: Some(netns.clone()),
                },
            )
        }),
        _ => None,
    };
    match lifetime {
        // Nothing holds the share's namespace once the creator is gone.
        Lifetime::Detached => share_ns::private_pinned_namespace(run_dir)?,
        Lifetime::TiedToStarter => share::private_mount_namespace()?,
    }
    let share_dir = run_dir.join(share::SHARE_DIR);
    fs::create_dir(&share_dir).map_err(|e| vm_err(format!("{}: {e}", share_dir.display())))?;
    let mut guest_spec: Spec = share::prepare(&share_dir, id, &bundle.path, &bundle.spec)?;
    if let Some(pod_id) = pod::shm_pod(&bundle.spec) {
        pod::use_pod_shm(&bundle.spec, &mut guest_spec, &pod_id)?;
    }
    if pod_network.is_some() {
        share::use_guest_network(&mut guest_spec);
    }
    let spec_json = serde_json::to_vec(&guest_spec).map_err(|e| vm_err(e.to_string()))?;
    let plan = Plan {
        config,
        kvm,
        run_dir,
        share: &share_dir,
        vmm: VmSandbox::vmm_binary(config),
        nic: pod_network.as_ref().map(|(iface, _)| Nic {
            tap: POD_TAP.to_string(),
            mac: iface.mac,
        }),
    };
    let mut vm = Vm::launch(&plan, lifetime)?;
    launched(&vm);
    let deadline = Instant::now() + Duration::from_secs(config.boot_timeout_secs.into());
    let agent = vm.wait_ready(deadline).and_then(|()| {
        Agent::connect(
            &vm.vsock,
            Duration::from_secs(config.agent_timeout_secs.into()),
        )
    });
    let agent = match agent {
        Ok(a) => a,
        Err(e) => {
            let why = format!("{e}{}", vm.diagnostics());
            return Err(vm_err(format!("the VM did not boot: {why}")));
        }
    };
    let details = agent.guest_details()?;
    if let Some((iface, _)) = &pod_network {
        agent
            .update_network(iface)
            .map_err(|e| vm_err(format!("{e}{}", vm.console_tail())))?;
    }
    let created = agent
        .create(id, spec_json)
        .map_err(|e| vm_err(format!("{}{}", e.message(), vm.console_tail())))?;
    let joined = u8::from(pod_network.is_some());
    Ok(Booted {
        vm,
        agent,
        report: format!(
            "{} {} {} {} {joined}",
            created.pid, details.agent_start_us, details.agent_ready_us, created.created_us
        ),
        network: pod_network.map(|(_, guard)| guard),
    })
}

/// The container relay's setup, in the forked child: the VM booted and the
/// container created in it, its stdio.
#[allow(clippy::too_many_arguments)]
pub(super) fn container_relay(
    id: &str,
    bundle: &Bundle,
    config: &VmConfig,
    kvm: KvmKind,
    run_dir: &Path,
    exit_file: &Path,
    terminal: bool,
    console_socket: Option<&Path>,
) -> Result<(Relay, String)> {
    let booted = boot_owner(
        id,
        bundle,
        config,
        kvm,
        run_dir,
        Lifetime::TiedToStarter,
        |_| {},
    )?;
    let stdio = relay::attach(&booted.agent, id, "", terminal, console_socket)?;
    // The container's record holds the namespace from here on, and its
    // delete unties it.
    if let Some(guard) = booted.network {
        guard.disarm();
    }
    let uds = booted.vm.vsock.clone();
    Ok((
        Relay {
            agent: booted.agent,
            uds,
            id: id.to_string(),
            exec_id: String::new(),
            stdio,
            exit_file: Some(exit_file.to_path_buf()),
            vm: Some(OwnedVm {
                vm: booted.vm,
                run_dir: run_dir.to_path_buf(),
            }),
        },
        booted.report,
    ))
}

/// The tap of a VM joined to a pod's network namespace; one VM per
/// namespace.
pub const POD_TAP: &str = "tap0_ironcell";

/// Unties a VM from its pod network when dropped, unless its `netns` was
/// taken.
pub(super) struct PodNetworkGuard {
    netns: Option<PathBuf>,
}

impl PodNetworkGuard {
    /// Leaves the tie in place: a record holds the namespace now.
    pub(super) fn disarm(mut self) {
        self.netns = None;
    }
}

impl Drop for PodNetworkGuard {
    fn drop(&mut self) {
        if let Some(netns) = self.netns.take() {
            leave_pod_network(&netns);
        }
    }
}

/// Removes a VM's tap and tc from the pod network namespace at `netns`
/// (gone already: nothing to do).
pub(super) fn leave_pod_network(netns: &Path) {
    if !netns.exists() {
        return;
    }
    if let Err(e) = podnet::disconnect(netns, POD_TAP) {
        tracing::warn!("{e}");
    }
}
