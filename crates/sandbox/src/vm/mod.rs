//! The `vm` sandbox: each container in a microVM of its own, run by
//! `ironcell-agent` inside the guest with the same container engine as the
//! `namespace` sandbox. docs/vm.md describes the design.
//!
//! - [`hypervisor`]: starting the VM (ironcell-vmm or QEMU);
//! - [`share`]: the directory the guest mounts, and the spec it gets;
//! - [`agent`]: the agent protocol's client;
//! - [`relay`]: the host process that stands in for a guest process;
//! - [`guest_exec`]: an exec'd process without a relay, for ironcelld;
//! - `owner`: a container that owns its VM, booted by its relay or, for
//!   ironcelld, by a helper that lets the VM go (`detached`);
//! - `member`: a container joining its pod's VM, with a relay (the CLI's)
//!   or without (ironcelld's);
//! - [`state`]: a vm container's records on disk;
//! - [`podnet`]: a VM joined to a pod's network namespace (a tap tied to
//!   the CNI interface by tc);
//! - [`sizing`]: a VM's vCPUs and memory, from the configured base and the
//!   container's (or the pod's) limits;
//! - [`pod`]: a CRI pod in one VM, its containers joining the VM its
//!   sandbox container booted.
//!
//! A vm container's state directory holds `vm.json` (and `exit.json` once
//! it exited); its VM's sockets and logs are in a run directory of their
//! own under `[vm] run_dir`, whose short path keeps socket paths within
//! the 108 bytes unix sockets allow.

pub mod agent;
mod detached;
pub mod guest_exec;
pub mod hooks;
pub mod hypervisor;
mod member;
mod owner;
pub mod pod;
pub mod podnet;
pub mod relay;
pub mod share;
pub mod share_ns;
pub mod sizing;
pub mod state;

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ironcell_basics::proc_stat::{is_alive, ProcStat};
use ironcell_container::stats::Stats;
use ironcell_container::{ContainerError, CreateOptions, ExecOptions};
use ironcell_oci::{Bundle, ContainerState, Status, OCI_VERSION};
use ironcell_protocol::agent::ContainerStatus;
use oci_spec::runtime::{LinuxResources, Spec};

use crate::config::{Config, VmConfig};
use crate::{Kind, Result, Sandbox, SandboxError};
use agent::Agent;
pub use owner::POD_TAP;
use owner::{container_relay, leave_pod_network, undo_owner, OwnerPlan};
use relay::Relay;
use state::{ExitRecord, VmState, EXIT_FILE, STATE_FILE};

fn vm_err(what: impl std::fmt::Display) -> SandboxError {
    SandboxError::Vm(what.to_string())
}

pub struct VmSandbox {
    root: PathBuf,
    config_path: Option<PathBuf>,
    config: OnceLock<std::result::Result<Config, String>>,
}

/// Removes a VM's run directory: its sockets and logs, then the directory.
/// Never recursive: in the relay's mount namespace the share holds the
/// container's files.
pub fn remove_run_dir(dir: &Path) {
    share_ns::unpin(dir);
    let share = dir.join(share::SHARE_DIR);
    let _ = nix::mount::umount2(&share, nix::mount::MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&share);
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| !t.is_dir()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// An exec checked on the host, before the agent is asked.
struct PreparedExec {
    state: VmState,
    process_json: Vec<u8>,
    terminal: bool,
}

impl VmSandbox {
    pub fn new(root: PathBuf, config_path: Option<PathBuf>) -> VmSandbox {
        VmSandbox {
            root,
            config_path,
            config: OnceLock::new(),
        }
    }

    /// The configuration, loaded on first use (only vm containers need it).
    fn config(&self) -> Result<&VmConfig> {
        self.config
            .get_or_init(|| Config::load(self.config_path.as_deref()).map_err(|e| e.to_string()))
            .as_ref()
            .map(|c| &c.vm)
            .map_err(|e| SandboxError::Config(e.clone()))
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Makes container `id`'s state directory (the root too, if needed).
    fn make_dir(&self, id: &str) -> Result<PathBuf> {
        let dir = self.dir(id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| vm_err(format!("cannot create {}: {e}", self.root.display())))?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| vm_err(format!("cannot create {}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// Writes container `id`'s `vm.json`.
    fn write_record(&self, id: &str, record: &VmState) -> Result<()> {
        let state_file = self.dir(id).join(STATE_FILE);
        state::write_json(&state_file, record)
            .map_err(|e| vm_err(format!("cannot write {}: {e}", state_file.display())))
    }

    fn load(&self, id: &str) -> Result<VmState> {
        state::read_json(&self.dir(id).join(STATE_FILE)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ContainerError::NotFound(id.to_string()).into()
            } else {
                vm_err(format!("container {id}: {STATE_FILE}: {e}"))
            }
        })
    }

    fn exit_record(&self, id: &str) -> Option<ExitRecord> {
        state::read_json(&self.dir(id).join(EXIT_FILE)).ok()
    }

    /// The container's status: stopped once its relay ended (with or
    /// without an exit record), else what the agent says.
    fn status(&self, id: &str, st: &VmState) -> Result<Status> {
        if self.exit_record(id).is_some() || !is_alive(st.relay_pid, st.relay_start) {
            return Ok(Status::Stopped);
        }
        if !st.ready {
            return Ok(Status::Creating);
        }
        let guest = match self.agent(st).and_then(|a| a.state(id)) {
            Ok(g) => g,
            Err(e) => {
                // A VM that just ended: its relay records the exit at once.
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline {
                    if self.exit_record(id).is_some() || !is_alive(st.relay_pid, st.relay_start) {
                        return Ok(Status::Stopped);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                return Err(e);
            }
        };
        Ok(match guest.status.enum_value_or_default() {
            ContainerStatus::CREATED => Status::Created,
            ContainerStatus::RUNNING => Status::Running,
            ContainerStatus::PAUSED => Status::Paused,
            ContainerStatus::STOPPED => Status::Stopped,
            ContainerStatus::UNKNOWN => Status::Creating,
        })
    }

    fn agent(&self, st: &VmState) -> Result<Agent> {
        Agent::connect(&st.run_dir.join("vsock.sock"), st.agent_timeout())
    }

    /// What an exec in container `id` needs before the agent is asked: the
    /// container running (as far as the host knows), its process.
    fn prepare_exec(&self, id: &str, opts: &ExecOptions) -> Result<PreparedExec> {
        let st = self.load(id)?;
        if self.exit_record(id).is_some() || !is_alive(st.relay_pid, st.relay_start) {
            return Err(Self::wrong(id, "exec in", Status::Stopped, ", not running"));
        }
        if opts.preserve_fds > 0 {
            return Err(vm_err(
                "--preserve-fds: file descriptors cannot be passed into a VM",
            ));
        }
        let bundle = Bundle::load(&st.bundle).map_err(ContainerError::from)?;
        let process = ironcell_container::exec_process(&bundle.spec, opts)?;
        let terminal = process.terminal().unwrap_or(false);
        let process_json = serde_json::to_vec(&process).map_err(|e| vm_err(e.to_string()))?;
        Ok(PreparedExec {
            state: st,
            process_json,
            terminal,
        })
    }

    /// Starts the prepared process as `exec_id` in the guest, if the
    /// container runs there (or is paused, with `--ignore-paused`);
    /// returns its pid in the guest.
    fn exec_in(
        agent: &Agent,
        id: &str,
        exec_id: &str,
        opts: &ExecOptions,
        prepared: &PreparedExec,
    ) -> Result<i32> {
        let status = agent.state(id)?.status.enum_value_or_default();
        match status {
            ContainerStatus::RUNNING => {}
            ContainerStatus::PAUSED if opts.ignore_paused => {}
            s => {
                let status = match s {
                    ContainerStatus::CREATED => Status::Created,
                    ContainerStatus::PAUSED => Status::Paused,
                    _ => Status::Stopped,
                };
                return Err(Self::wrong(id, "exec in", status, ", not running"));
            }
        }
        agent.exec(id, exec_id, prepared.process_json.clone())
    }

    /// Execs a process named `exec_id` in container `id` without a relay:
    /// the caller (ironcelld) carries its stdio and waits for it through
    /// the returned streams and link (`guest_exec`).
    pub fn exec_attached(
        &self,
        id: &str,
        exec_id: &str,
        opts: &ExecOptions,
    ) -> Result<guest_exec::GuestExec> {
        let prepared = self.prepare_exec(id, opts)?;
        let link = guest_exec::GuestLink::of(&prepared.state, id, exec_id);
        let agent = link.connect()?;
        Self::exec_in(&agent, id, exec_id, opts, &prepared)?;
        let attached = guest_exec::GuestStdio::open(&agent, id, exec_id, prepared.terminal);
        match attached {
            Ok(stdio) => Ok(guest_exec::GuestExec {
                host_pid: prepared.state.relay_pid,
                link,
                stdio,
            }),
            Err(e) => {
                // Nobody would ever wait for it.
                let _ = agent.signal(id, exec_id, libc::SIGKILL, false);
                Err(e)
            }
        }
    }

    /// The link to exec'd process `exec_id` of container `id` (for a
    /// daemon that finds it again after a restart).
    pub fn guest_link(&self, id: &str, exec_id: &str) -> Result<guest_exec::GuestLink> {
        Ok(guest_exec::GuestLink::of(&self.load(id)?, id, exec_id))
    }

    fn wrong(id: &str, op: &'static str, status: Status, hint: &'static str) -> SandboxError {
        ContainerError::WrongStatus {
            op,
            id: id.to_string(),
            status,
            hint,
        }
        .into()
    }

    /// The run directory of the container whose state directory is `dir`.
    fn run_dir(config: &VmConfig, dir: &Path) -> PathBuf {
        let mut h = DefaultHasher::new();
        dir.hash(&mut h);
        config.run_dir.join(format!("{:016x}", h.finish()))
    }

    fn vmm_binary(config: &VmConfig) -> PathBuf {
        if let Some(p) = &config.vmm {
            return p.clone();
        }
        ironcell_container::sealed_exe::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("ironcell-vmm")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| "ironcell-vmm".into())
    }

    fn create_in(&self, id: &str, dir: &Path, bundle: &Bundle, opts: &CreateOptions) -> Result<()> {
        if let Some(pod_id) = pod::pod_of(&bundle.spec) {
            if self.owns(&pod_id) {
                return self.create_member(id, dir, bundle, opts, &pod_id);
            }
            // A VM of its own would take the pod's network from the pod.
            return Err(vm_err(format!(
                "container {id} belongs to pod {pod_id}, whose sandbox is no VM here: a pod's \
                 containers run in the VM its sandbox (pause) container boots, so the pod must \
                 be made by a handler whose pods are VMs (Sandbox = \"vm\")"
            )));
        }
        let OwnerPlan {
            config,
            kvm,
            run_dir,
            mut record,
        } = self.plan_owner(id, dir, bundle, opts)?;
        let terminal = wants_terminal(&bundle.spec);
        let state_file = dir.join(STATE_FILE);
        let setup = || {
            container_relay(
                id,
                bundle,
                &config,
                kvm,
                &run_dir,
                &dir.join(EXIT_FILE),
                terminal,
                opts.console_socket.as_deref(),
            )
        };
        let forked = relay::fork(setup, |pid| record.note_relay(pid, &state_file));
        let undo = |record: &VmState| undo_owner(id, record);
        self.finish_create(id, record, forked, bundle, opts, undo)
    }

    /// What a create does once its relay reported: the record completed and
    /// written, the pid file, the prestart and createRuntime hooks; on
    /// error (the relay's included), the relay killed and `undo` run.
    fn finish_create(
        &self,
        id: &str,
        mut record: VmState,
        forked: Result<relay::Forked>,
        bundle: &Bundle,
        opts: &CreateOptions,
        undo: impl FnOnce(&VmState),
    ) -> Result<()> {
        let forked = match forked {
            Ok(f) => f,
            Err(e) => {
                undo(&record);
                return Err(e);
            }
        };
        record.relay_pid = forked.pid;
        record.relay_start = ProcStat::of(forked.pid).map_or(0, |s| s.start_time);
        let report: Vec<u64> = forked
            .report
            .split_whitespace()
            .map(|n| n.parse().unwrap_or(0))
            .collect();
        if let [pid, agent_start_us, agent_ready_us, created_us, joined] = report[..] {
            // The relay tied the VM to the pod network the spec names.
            if joined == 1 {
                if let share::HostNetwork::Join(netns) = share::host_network(&bundle.spec) {
                    record.pod_network = Some(netns);
                }
            }
            record.guest_pid = pid as i32;
            record.guest_times = state::GuestTimes {
                agent_start_us,
                agent_ready_us,
                created_us,
                started_us: 0,
            };
        }
        record.ready = true;
        if let Err(e) = self.commit_create(id, &record, bundle, opts) {
            kill_relay(&record);
            undo(&record);
            return Err(e);
        }
        Ok(())
    }

    /// Writes a create's finished `record`, its pid file, and runs its
    /// prestart and createRuntime hooks.
    fn commit_create(
        &self,
        id: &str,
        record: &VmState,
        bundle: &Bundle,
        opts: &CreateOptions,
    ) -> Result<()> {
        self.write_record(id, record)?;
        if let Some(p) = &opts.pid_file {
            fs::write(p, record.relay_pid.to_string())
                .map_err(|e| vm_err(format!("cannot write pid file {}: {e}", p.display())))?;
        }
        let hooks = bundle.spec.hooks().as_ref();
        let state = |status| hooks::HookState {
            id,
            status,
            pid: record.relay_pid,
            bundle: &record.bundle,
            annotations: &record.annotations,
        };
        hooks::run(
            "prestart",
            hooks.and_then(|h| h.prestart().as_ref()),
            &state("created"),
        )?;
        hooks::run(
            "createRuntime",
            hooks.and_then(|h| h.create_runtime().as_ref()),
            &state("creating"),
        )
    }

    /// Runs the bundle's `kind` hooks (poststart, poststop); their failure
    /// is only a warning, as the runtime spec says.
    fn warn_hooks(&self, kind: &str, st: &VmState, status: &str) {
        let Ok(bundle) = Bundle::load(&st.bundle) else {
            return;
        };
        let list = bundle.spec.hooks().as_ref().and_then(|h| match kind {
            "poststart" => h.poststart().as_ref(),
            _ => h.poststop().as_ref(),
        });
        let state = hooks::HookState {
            id: &st.id,
            status,
            pid: st.relay_pid,
            bundle: &st.bundle,
            annotations: &st.annotations,
        };
        if let Err(e) = hooks::run(kind, list, &state) {
            tracing::warn!("{e}");
        }
    }
}

/// Whether the spec's process has a terminal.
fn wants_terminal(spec: &Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
}

/// A spec's annotations, as `vm.json` keeps them.
fn annotations_of(spec: &Spec) -> std::collections::BTreeMap<String, String> {
    spec.annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Kills a container's relay (its VM dies with it), or the processes of a
/// VM no relay owns, and waits until they are gone. A pod member without a
/// relay of its own has nothing to kill: its `relay_pid` is its pod VM's.
fn kill_relay(st: &VmState) {
    if !st.vm_processes.is_empty() {
        for (pid, start) in st.vm_processes.iter().rev() {
            kill_and_wait(*pid, *start);
        }
    } else if !st.no_relay {
        kill_and_wait(st.relay_pid, st.relay_start);
    }
}

/// Kills process `pid` (if it is still the one that started at `start`)
/// and waits until it is gone.
fn kill_and_wait(pid: i32, start: u64) {
    if !is_alive(pid, start) {
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_alive(pid, start) && Instant::now() < deadline {
        // Reaped here when it is our child (a foreground run).
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// libcgroups' statistics from the agent's answer.
fn stats_of(s: ironcell_protocol::agent::StatsResponse) -> Stats {
    let mut out = Stats::default();
    if let Some(c) = s.cpu.as_ref() {
        out.cpu.usage.usage_total = c.usage_usec * 1000;
        out.cpu.usage.usage_user = c.user_usec * 1000;
        out.cpu.usage.usage_kernel = c.system_usec * 1000;
        out.cpu.throttling.periods = c.nr_periods;
        out.cpu.throttling.throttled_periods = c.nr_throttled;
        out.cpu.throttling.throttled_time = c.throttled_usec * 1000;
    }
    if let Some(m) = s.memory.as_ref() {
        out.memory.memory.usage = m.usage;
        out.memory.memory.limit = if m.limit == 0 { u64::MAX } else { m.limit };
        out.memory.memory.max_usage = m.max_usage;
        out.memory.memswap.usage = m.swap_usage;
        for (k, v) in [
            ("anon", m.anon),
            ("file", m.file),
            ("kernel", m.kernel),
            ("oom", m.oom_events),
            ("oom_kill", m.oom_kill_events),
            ("max", m.max_events),
        ] {
            out.memory.stats.insert(k.to_string(), v);
        }
    }
    if let Some(p) = s.pids.as_ref() {
        out.pids.current = p.current;
        out.pids.limit = p.limit;
    }
    out
}

impl Sandbox for VmSandbox {
    fn kind(&self) -> Kind {
        Kind::Vm
    }

    fn owns(&self, id: &str) -> bool {
        self.dir(id).join(STATE_FILE).exists()
    }

    fn ids(&self) -> Result<Vec<String>> {
        Ok(crate::ids_with(&self.root, STATE_FILE))
    }

    fn create(&self, id: &str, bundle: &Bundle, opts: &CreateOptions) -> Result<()> {
        // The configuration's errors come before anything is made.
        self.config()?;
        let dir = self.make_dir(id)?;
        let result = self.create_in(id, &dir, bundle, opts);
        if result.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        result
    }

    fn start(&self, id: &str) -> Result<()> {
        let st = self.load(id)?;
        match self.status(id, &st)? {
            Status::Created => {}
            s => return Err(Self::wrong(id, "start", s, ", not created")),
        }
        let started_us = self.agent(&st)?.start(id)?;
        let mut st = st;
        st.guest_times.started_us = started_us;
        if let Err(e) = state::write_json(&self.dir(id).join(STATE_FILE), &st) {
            tracing::warn!("cannot record the start time of {id}: {e}");
        }
        self.warn_hooks("poststart", &st, "running");
        Ok(())
    }

    fn state(&self, id: &str) -> Result<ContainerState> {
        let st = self.load(id)?;
        let status = self.status(id, &st)?;
        Ok(ContainerState {
            oci_version: OCI_VERSION.to_string(),
            id: id.to_string(),
            pid: if status == Status::Stopped {
                0
            } else {
                st.relay_pid
            },
            status,
            bundle: st.bundle.clone(),
            rootfs: st.rootfs.clone(),
            created: st.created.clone(),
            annotations: st.annotations.clone().into_iter().collect(),
            owner: String::new(),
            sandbox: Kind::Vm.as_str().to_string(),
        })
    }

    fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let st = self.load(id)?;
        match self.status(id, &st)? {
            Status::Created | Status::Running | Status::Paused => {}
            // Nothing is left to signal.
            Status::Stopped if all => return Ok(()),
            s => return Err(Self::wrong(id, "kill", s, ironcell_container::NOT_RUNNING)),
        }
        self.agent(&st)?.signal(id, "", signal, all)
    }

    fn delete(&self, id: &str, force: bool) -> Result<()> {
        let st = self.load(id)?;
        let status = self.status(id, &st).unwrap_or(Status::Running);
        if !force && matches!(status, Status::Running | Status::Paused) {
            return Err(Self::wrong(
                id,
                "delete",
                status,
                ", stop it first or use --force",
            ));
        }
        kill_relay(&st);
        if st.pod.is_some() {
            // A member of a pod's VM: its part of the guest and of the
            // share goes; the VM stays (gone already: nothing to do).
            if st.run_dir.join("vsock.sock").exists() {
                if let Err(e) = self.agent(&st).and_then(|a| a.delete(id, true)) {
                    tracing::warn!("container {id} in its pod's VM: {e}");
                }
                let owner = st.pod.as_deref().and_then(|p| self.load(p).ok());
                if let Some(Err(e)) = owner.map(|o| pod::remove(&o, id)) {
                    tracing::warn!("container {id} in its pod's VM: {e}");
                }
            }
        } else {
            remove_run_dir(&st.run_dir);
            if let Some(netns) = &st.pod_network {
                leave_pod_network(netns);
            }
        }
        if let Some(cgroup) = &st.host_cgroup {
            pod::remove_host_cgroup(cgroup, id);
        }
        self.warn_hooks("poststop", &st, "stopped");
        let dir = self.dir(id);
        match fs::remove_dir_all(&dir) {
            // A create that failed meanwhile removed it first.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(vm_err(format!("cannot remove {}: {e}", dir.display())))
            }
            _ => Ok(()),
        }
    }

    fn pause(&self, id: &str) -> Result<()> {
        let st = self.load(id)?;
        match self.status(id, &st)? {
            Status::Running => self.agent(&st)?.pause(id),
            s => Err(Self::wrong(id, "pause", s, ", not running")),
        }
    }

    fn resume(&self, id: &str) -> Result<()> {
        let st = self.load(id)?;
        match self.status(id, &st)? {
            Status::Paused => self.agent(&st)?.resume(id),
            s => Err(Self::wrong(id, "resume", s, ", not paused")),
        }
    }

    /// The host process that stands for the container (its relay). Engines
    /// match these pids against the host's processes (`docker top` runs the
    /// host's ps over them); the guest's pids would name unrelated host
    /// processes. What runs inside is `ironcell exec ID ps`'s to show.
    fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let st = self.load(id)?;
        match self.status(id, &st)? {
            Status::Stopped => Ok(Vec::new()),
            _ => Ok(vec![st.relay_pid]),
        }
    }

    fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32> {
        // The relay is forked from a single-threaded process: the agent
        // (whose client has a thread) is asked only in the child.
        let prepared = self.prepare_exec(id, opts)?;
        let exec_id = format!(
            "exec-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        let uds = prepared.state.run_dir.join("vsock.sock");
        let setup = || {
            let agent = Agent::connect(&uds, prepared.state.agent_timeout())?;
            let pid = Self::exec_in(&agent, id, &exec_id, opts, &prepared)?;
            let stdio = relay::attach(
                &agent,
                id,
                &exec_id,
                prepared.terminal,
                opts.console_socket.as_deref(),
            )?;
            Ok((
                Relay {
                    agent,
                    uds: uds.clone(),
                    id: id.to_string(),
                    exec_id: exec_id.clone(),
                    stdio,
                    exit_file: None,
                    vm: None,
                },
                pid.to_string(),
            ))
        };
        let forked = relay::fork(setup, |_| {})?;
        if let Some(p) = &opts.pid_file {
            fs::write(p, forked.pid.to_string())
                .map_err(|e| vm_err(format!("cannot write pid file {}: {e}", p.display())))?;
        }
        Ok(forked.pid)
    }

    fn stats(&self, id: &str) -> Result<Stats> {
        let st = self.load(id)?;
        Ok(stats_of(self.agent(&st)?.stats(id)?))
    }

    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let st = self.load(id)?;
        let json = serde_json::to_vec(resources).map_err(|e| vm_err(e.to_string()))?;
        self.agent(&st)?.update(id, json)
    }

    /// OOM kills happen in the guest, whose agent reports them.
    fn memory_cgroup(&self, _id: &str) -> Result<Option<PathBuf>> {
        Ok(None)
    }

    /// The guest agent's OOM events of the container, over a connection of
    /// their own (each waits without a deadline).
    fn oom_waiter(&self, id: &str) -> Result<Option<crate::OomWaiter>> {
        let st = self.load(id)?;
        let agent = self.agent(&st)?;
        let id = id.to_string();
        Ok(Some(Box::new(move || loop {
            if agent.next_oom(&id)? == id {
                return Ok(());
            }
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cri_container_of_a_pod_without_a_vm_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        fs::write(&config, "[vm]\n").unwrap();
        let bundle = dir.path().join("bundle");
        fs::create_dir_all(bundle.join("rootfs")).unwrap();
        fs::write(
            bundle.join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "process":{"args":["/bin/true"],"cwd":"/","user":{"uid":0,"gid":0}},
            "annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"pod1"},
            "linux":{"namespaces":[{"type":"pid"},{"type":"network"}]}}"#,
        )
        .unwrap();
        let root = dir.path().join("root");
        let vm = VmSandbox::new(root.clone(), Some(config));
        let e = vm
            .create(
                "c1",
                &Bundle::load(&bundle).unwrap(),
                &CreateOptions::default(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("belongs to pod pod1, whose sandbox is no VM here"),
            "{e}"
        );
        assert!(!root.join("c1").exists());
    }
}
