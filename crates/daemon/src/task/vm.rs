//! VM tasks: containers of the vm sandbox.
//!
//! A process of a VM task has no host process of its own: a pod member's
//! init, every exec'd process, and the init of a container that owns its
//! VM (a pod's sandbox container, or a container in a VM of its own),
//! whose VM the keeper then owns (`VmSandbox::create_detached`: the daemon
//! stops it when that init ends). The daemon makes the process through
//! the VM's agent, copies its stdio streams into containerd's FIFOs, and
//! waits for it through the agent (`ironcell_sandbox::vm::guest_exec`).
//! Its pid is the VM's hypervisor's: the guest's would name an unrelated
//! host process. Where a relay owns the VM (an init with a terminal), the
//! owner's init is a native task's (the relay stands for it on the host),
//! and the pid of the rest is the relay's.
//!
//! Across a restart of the daemon, the keeper holds what a relay would
//! have: the streams' connections (output the process writes meanwhile
//! waits in them) and containerd's FIFOs (whose readers see no end). The
//! next daemon copies from them again (`recover.rs`) and waits again.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use ironcell_basics::exit_status;
use ironcell_container::stats::Stats;
use ironcell_container::ExecOptions;
use ironcell_oci::Bundle;
use ironcell_sandbox::vm::guest_exec::{GuestExec, GuestLink, GuestStdio};
use ironcell_sandbox::VmSandbox;
use oci_spec::runtime::LinuxResources;
use tokio::task::JoinHandle;

use crate::error::{Result, TaskError};
use crate::keeper::{Keeper, ProcKey, Slot};
use crate::reaper::Exit;
use crate::stdio::{self, StdinRelay};

use super::backend::{
    blocking, Announce, Backends, ExitSink, Host, Place, Spawned, TaskBackend, TaskKind,
};
use super::native::{NativeBackends, NativeTask};
use super::IoSpec;

/// After a process's exit, how long its output copies get to reach their end
/// before the exit is reported (a guest cannot hold an exit back).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The slots the keeper holds a process's copied output in: (the stream,
/// containerd's FIFO), for stdout and for stderr, or a terminal's.
const OUTPUT_SLOTS: [(Slot, Slot); 3] = [
    (Slot::Stdout, Slot::StdoutFifo),
    (Slot::Stderr, Slot::StderrFifo),
    (Slot::Tty, Slot::TtyOut),
];

/// Makes VM tasks.
pub struct VmBackends {
    pub host: Arc<Host>,
}

/// Each process's output copies still running, by exec id (empty: the
/// init).
type Copies = Arc<Mutex<HashMap<String, Outputs>>>;

/// A process's output copies, and the slots the backend itself has the keeper
/// drop once they are done (a terminal's are the registry's to drop).
#[derive(Default)]
struct Outputs {
    copies: Vec<JoinHandle<()>>,
    slots: Vec<Slot>,
}

impl Outputs {
    fn release(&self, keeper: Option<&Keeper>, key: &ProcKey) {
        if let Some(k) = keeper {
            for slot in &self.slots {
                k.release(key, *slot);
            }
        }
    }
}

/// One VM task.
pub struct VmTask {
    host: Arc<Host>,
    place: Place,
    /// The container as the sandbox library runs it: what the agent does
    /// for the whole container (start, signal, pause, stats...), and its
    /// relay's exit when it has one.
    init: NativeTask,
    /// The init has no relay: the daemon carries its stdio and waits for
    /// it, as for an exec'd process.
    guest_init: bool,
    /// The container owns a VM no relay owns: the daemon stops it when the
    /// init ends, and acknowledges its processes' exits to the keeper.
    owns_vm: bool,
    copies: Copies,
}

impl VmTask {
    fn new(host: &Arc<Host>, place: &Place, guest_init: bool, owns_vm: bool) -> VmTask {
        VmTask {
            host: host.clone(),
            place: place.clone(),
            init: NativeTask::of(host, place),
            guest_init,
            owns_vm,
            copies: Arc::default(),
        }
    }

    /// Has the exits of the VM's processes (the keeper's children since
    /// their creator, the helper, exited) acknowledged to the keeper,
    /// which keeps each until then.
    fn ack_vm_exits(&self) {
        for pid in self.sandbox().vm_pids(&self.place.id) {
            self.init.watch_exit(pid, Box::new(|_| {}));
        }
    }

    /// Whether process `exec_id` (empty: the init) is the daemon's to carry.
    fn carried(&self, exec_id: &str) -> bool {
        self.guest_init || !exec_id.is_empty()
    }

    /// Forgets process `exec_id`, which nobody will wait for: what the
    /// keeper was given of it goes.
    fn forget(&self, key: &ProcKey, exec_id: &str) {
        let outputs = self.copies.lock().unwrap().remove(exec_id);
        let keeper = self.host.keeper.as_deref();
        outputs.unwrap_or_default().release(keeper, key);
        if let Some(k) = keeper {
            for slot in [Slot::Tty, Slot::TtyOut, Slot::Stdin, Slot::StdinFifo] {
                k.release(key, slot);
            }
        }
    }

    fn sandbox(&self) -> VmSandbox {
        VmSandbox::new(self.place.state_root.clone(), None)
    }

    /// The link to process `exec_id`, from the container's state.
    async fn link(&self, exec_id: &str) -> Result<GuestLink> {
        let (sandbox, id, exec_id) = (self.sandbox(), self.place.id.clone(), exec_id.to_string());
        blocking(move || Ok(sandbox.guest_link(&id, &exec_id)?)).await
    }

    /// Has the keeper hold process `exec_id`'s output `from` and its `fifo`
    /// as `slots`; the backend drops them once the process ended (a
    /// terminal's are the registry's to drop).
    fn hold(
        &self,
        key: &ProcKey,
        exec_id: &str,
        slots: (Slot, Slot),
        from: &OwnedFd,
        fifo: Option<&OwnedFd>,
    ) {
        let Some(k) = &self.host.keeper else { return };
        k.hold(key, slots.0, from);
        if let Some(f) = fifo {
            k.hold(key, slots.1, f);
        }
        if slots.0 != Slot::Tty {
            let mut copies = self.copies.lock().unwrap();
            let outputs = copies.entry(exec_id.to_string()).or_default();
            outputs.slots.extend([slots.0, slots.1]);
        }
    }

    /// Copies process `exec_id`'s output `from` into `fifo`.
    fn copy_output(&self, exec_id: &str, from: OwnedFd, fifo: Option<OwnedFd>) -> Result<()> {
        let copy = stdio::copy_output(from, fifo)
            .map_err(|e| TaskError::Internal(format!("cannot copy a process's output: {e}")))?;
        let mut copies = self.copies.lock().unwrap();
        copies
            .entry(exec_id.to_string())
            .or_default()
            .copies
            .push(copy);
        Ok(())
    }

    /// Connects a new process's streams to containerd's stdio `io`: output
    /// copied into the FIFOs, stdin (if any) relayed into the process's
    /// input. Returns the stdin relay.
    fn connect(
        &self,
        key: &ProcKey,
        exec_id: &str,
        io: &IoSpec,
        streams: GuestStdio,
    ) -> Result<Option<StdinRelay>> {
        let bad = |e: stdio::StdioError| TaskError::InvalidArgument(e.to_string());
        let sink = match streams {
            GuestStdio::Tty(conn) => {
                let conn = OwnedFd::from(conn);
                let sink = conn
                    .try_clone()
                    .map_err(|e| TaskError::Internal(format!("terminal: {e}")))?;
                let out = stdio::open_output("stdout", &io.stdout).map_err(bad)?;
                self.hold(key, exec_id, OUTPUT_SLOTS[2], &conn, out.as_ref());
                self.copy_output(exec_id, conn, out)?;
                sink
            }
            GuestStdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                let out = stdio::open_output("stdout", &io.stdout).map_err(bad)?;
                let err = stdio::open_output("stderr", &io.stderr).map_err(bad)?;
                for (slots, from, fifo) in [
                    (OUTPUT_SLOTS[0], OwnedFd::from(stdout), out),
                    (OUTPUT_SLOTS[1], OwnedFd::from(stderr), err),
                ] {
                    self.hold(key, exec_id, slots, &from, fifo.as_ref());
                    self.copy_output(exec_id, from, fifo)?;
                }
                if io.stdin.is_empty() {
                    // No input: the process reads an end of file.
                    let _ = stdin.shutdown(std::net::Shutdown::Write);
                }
                stdin.into()
            }
        };
        if io.stdin.is_empty() {
            return Ok(None);
        }
        let relay = self
            .host
            .start_stdin(key, &io.stdin, None, sink)
            .map_err(bad)?;
        Ok(Some(relay))
    }
}

#[async_trait]
impl Backends for VmBackends {
    async fn create(
        &self,
        place: &Place,
        bundle: &Bundle,
        io: &IoSpec,
        sandbox: Option<ironcell_sandbox::Kind>,
    ) -> Result<(Box<dyn TaskBackend>, Spawned)> {
        let vm = VmSandbox::new(place.state_root.clone(), None);
        let Some(pod_id) = vm.pod_to_join(&bundle.spec) else {
            // It owns its VM: a relay does when the init's terminal must be
            // a host pty (containerd's console).
            if io.terminal {
                let (_, spawned) =
                    NativeTask::create(&self.host, place, bundle, io, sandbox, false).await?;
                return Ok((
                    Box::new(VmTask::new(&self.host, place, false, false)),
                    spawned,
                ));
            }
            return self.create_owner(place, bundle, io, sandbox).await;
        };
        let (id, made) = (place.id.clone(), bundle.clone());
        let guest: GuestExec =
            blocking(move || Ok(vm.create_attached(&id, &made, &pod_id)?)).await?;
        let task = VmTask::new(&self.host, place, true, false);
        Self::carry_init(task, place, io, guest)
    }

    fn recover(&self, kind: TaskKind, place: &Place) -> Result<Box<dyn TaskBackend>> {
        debug_assert_eq!(kind, TaskKind::Vm);
        let vm = VmSandbox::new(place.state_root.clone(), None);
        let guest_init = vm.runs_without_relay(&place.id);
        let owns_vm = vm.owns_detached_vm(&place.id);
        Ok(Box::new(VmTask::new(
            &self.host, place, guest_init, owns_vm,
        )))
    }

    async fn discard(&self, place: &Place) -> Result<()> {
        NativeBackends {
            host: self.host.clone(),
        }
        .discard(place)
        .await
    }
}

impl VmBackends {
    /// Creates a container that owns a VM no relay owns: the helper boots
    /// the VM and creates the container in it, the VM's processes staying
    /// the keeper's; the daemon then carries the init.
    async fn create_owner(
        &self,
        place: &Place,
        bundle: &Bundle,
        io: &IoSpec,
        sandbox: Option<ironcell_sandbox::Kind>,
    ) -> Result<(Box<dyn TaskBackend>, Spawned)> {
        // The helper gets no stdio: the init's comes from the agent.
        let none = IoSpec::default();
        NativeTask::create(&self.host, place, bundle, &none, sandbox, true).await?;
        let (vm, id) = (
            VmSandbox::new(place.state_root.clone(), None),
            place.id.clone(),
        );
        // On error, the registry's discard removes the container, and its
        // VM with it.
        let guest: GuestExec = blocking(move || Ok(vm.attach_init(&id)?)).await?;
        let task = VmTask::new(&self.host, place, true, true);
        Self::carry_init(task, place, io, guest)
    }

    /// Connects a carried init's streams to containerd's stdio `io`.
    fn carry_init(
        task: VmTask,
        place: &Place,
        io: &IoSpec,
        guest: GuestExec,
    ) -> Result<(Box<dyn TaskBackend>, Spawned)> {
        let key = ProcKey::new(&place.namespace, &place.id, "");
        match task.connect(&key, "", io, guest.stdio) {
            Ok(stdin) => Ok((
                Box::new(task),
                Spawned {
                    pid: guest.host_pid,
                    stdin,
                    master: None,
                },
            )),
            Err(e) => {
                // The registry's discard removes the container.
                task.forget(&key, "");
                Err(e)
            }
        }
    }
}

#[async_trait]
impl TaskBackend for VmTask {
    fn kind(&self) -> TaskKind {
        TaskKind::Vm
    }

    fn watch(&self, exec_id: Option<&str>, pid: i32, on_exit: ExitSink) {
        let exec_id = exec_id.unwrap_or_default();
        if !self.carried(exec_id) {
            // A relay's exit; the agent kills what is left in the guest.
            return self.init.watch_exit(pid, on_exit);
        }
        let stops_vm = self.owns_vm && exec_id.is_empty();
        if stops_vm {
            self.ack_vm_exits();
        }
        let (sandbox, id, exec_id) = (self.sandbox(), self.place.id.clone(), exec_id.to_string());
        let (copies, runtime) = (self.copies.clone(), tokio::runtime::Handle::current());
        let key = ProcKey::new(&self.place.namespace, &id, &exec_id);
        let keeper = self.host.keeper.clone();
        // A thread of its own, not the blocking pool's: the wait lasts as
        // long as the process runs.
        let waiter = std::thread::Builder::new()
            .name("vm-guest-wait".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let status = match sandbox.guest_link(&id, &exec_id).and_then(|l| l.wait()) {
                    Ok(status) => status,
                    Err(e) => {
                        // Its VM ended (or its container is gone): it can
                        // no longer be asked, and is reported killed.
                        tracing::warn!(%id, %exec_id, error = %e, "a wait in the guest failed");
                        exit_status::KILLED
                    }
                };
                if stops_vm {
                    // The VM ends with the container that owns it, and its
                    // pod's other containers with it.
                    if let Err(e) = sandbox.stop_vm(&id) {
                        tracing::warn!(%id, error = %e, "cannot stop the container's VM");
                    }
                }
                let at = SystemTime::now();
                // Everything the process wrote, before its status.
                let mut outputs = copies.lock().unwrap().remove(&exec_id).unwrap_or_default();
                let pending = std::mem::take(&mut outputs.copies);
                runtime.block_on(async {
                    let drained = async {
                        for copy in pending {
                            let _ = copy.await;
                        }
                    };
                    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
                });
                outputs.release(keeper.as_deref(), &key);
                on_exit(Exit { pid, status, at });
            });
        if let Err(e) = waiter {
            tracing::error!(id = %self.place.id, error = %e, "cannot wait for a guest process");
        }
    }

    async fn start(&self, announce: Announce<'_>) -> Result<()> {
        self.init.start(announce).await
    }

    async fn exec(
        &self,
        key: &ProcKey,
        exec_id: &str,
        io: &IoSpec,
        spec: &Path,
    ) -> Result<Spawned> {
        let opts = ExecOptions {
            process: Some(spec.to_path_buf()),
            tty: io.terminal,
            detach: true,
            ..Default::default()
        };
        let (sandbox, id, exec) = (self.sandbox(), self.place.id.clone(), exec_id.to_string());
        let guest: GuestExec =
            blocking(move || Ok(sandbox.exec_attached(&id, &exec, &opts)?)).await?;
        match self.connect(key, exec_id, io, guest.stdio) {
            Ok(stdin) => Ok(Spawned {
                pid: guest.host_pid,
                stdin,
                master: None,
            }),
            Err(e) => {
                // Nobody will wait for it: it goes.
                let link = guest.link;
                let _ = blocking(move || Ok(link.signal(libc::SIGKILL)?)).await;
                self.forget(key, exec_id);
                Err(e)
            }
        }
    }

    async fn reattach_stdio(
        &self,
        key: &ProcKey,
        exec_id: &str,
        io: &IoSpec,
    ) -> Option<Option<StdinRelay>> {
        if !self.carried(exec_id) {
            return None;
        }
        let keeper = self.host.keeper.as_ref()?;
        if !io.terminal {
            // Dropped once the process ended, whatever is taken back here.
            let mut copies = self.copies.lock().unwrap();
            let slots = &mut copies.entry(exec_id.to_string()).or_default().slots;
            for (stream, fifo) in &OUTPUT_SLOTS[..2] {
                slots.extend([*stream, *fifo]);
            }
        }
        let outputs = if io.terminal {
            vec![(OUTPUT_SLOTS[2], "stdout", &io.stdout)]
        } else {
            vec![
                (OUTPUT_SLOTS[0], "stdout", &io.stdout),
                (OUTPUT_SLOTS[1], "stderr", &io.stderr),
            ]
        };
        let mut sink = None;
        for (slots, what, uri) in outputs {
            let Some(from) = keeper.fetch(key, slots.0).await else {
                continue;
            };
            if io.terminal {
                sink = from.try_clone().ok();
            }
            let fifo = match keeper.fetch(key, slots.1).await {
                Some(fd) => Ok(Some(fd)),
                None => stdio::open_output(what, uri),
            };
            let copied = fifo
                .map_err(|e| TaskError::Internal(e.to_string()))
                .and_then(|fifo| self.copy_output(exec_id, from, fifo));
            if let Err(e) = copied {
                tracing::warn!(id = %self.place.id, exec_id, error = %e, "{what} not re-attached");
            }
        }
        if !io.terminal && !io.stdin.is_empty() {
            sink = keeper.fetch(key, Slot::Stdin).await;
        }
        let Some(sink) = sink.filter(|_| !io.stdin.is_empty()) else {
            return Some(None);
        };
        let fifo = keeper.fetch(key, Slot::StdinFifo).await;
        match self.host.start_stdin(key, &io.stdin, fifo, sink) {
            Ok(relay) => Some(Some(relay)),
            Err(e) => {
                tracing::warn!(id = %self.place.id, exec_id, error = %e, "stdin not re-attached");
                Some(None)
            }
        }
    }

    async fn signal(&self, exec: Option<(&str, i32)>, signal: i32, all: bool) -> Result<()> {
        let Some((exec_id, _)) = exec else {
            return self.init.signal(None, signal, all).await;
        };
        let link = self.link(exec_id).await?;
        blocking(move || Ok(link.signal(signal)?)).await
    }

    async fn resize(&self, exec_id: &str, width: u32, height: u32) -> Option<Result<()>> {
        if !self.carried(exec_id) {
            return None;
        }
        let link = match self.link(exec_id).await {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        let (rows, cols) = stdio::rows_cols(width, height);
        Some(blocking(move || Ok(link.resize(rows, cols)?)).await)
    }

    async fn delete(&self, live_init: Option<i32>) -> Result<()> {
        if !self.guest_init {
            return self.init.delete(live_init).await;
        }
        // Its pid is the pod VM's relay's or hypervisor's, whose exit is not
        // this task's to forget (a VM's owner ends its VM as it is removed,
        // and acknowledges its exits). A wait still running fails once it
        // is gone.
        self.init.remove().await
    }

    async fn pause(&self, pause: bool) -> Result<()> {
        self.init.pause(pause).await
    }

    async fn paused(&self) -> bool {
        self.init.paused().await
    }

    async fn pids(&self) -> Result<Vec<i32>> {
        self.init.pids().await
    }

    async fn stats(&self) -> Result<Stats> {
        self.init.stats().await
    }

    async fn update(&self, resources: LinuxResources) -> Result<()> {
        self.init.update(resources).await
    }

    async fn memory_cgroup(&self) -> Option<PathBuf> {
        self.init.memory_cgroup().await
    }

    async fn oom_waiter(&self) -> Option<ironcell_sandbox::OomWaiter> {
        self.init.oom_waiter().await
    }
}
