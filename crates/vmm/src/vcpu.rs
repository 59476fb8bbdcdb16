//! vCPU threads: KVM_RUN loops that hand port I/O and MMIO exits to the
//! buses, and the pause/resume handshake with the VMM thread.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Bus, BusAction};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 0xFE, or a KVM reset event).
    Reset,
    /// The guest powered off (KVM system event).
    PowerOff,
    /// A vCPU executed HLT with interrupts off and no in-kernel irqchip.
    Halted,
    /// The control API asked for a shutdown.
    Shutdown,
    /// A vCPU triple-faulted.
    TripleFault { vcpu: u8 },
    /// KVM could not emulate an instruction.
    EmulationFailure { vcpu: u8, suberror: u32, rip: u64 },
    /// Anything else that stops a vCPU.
    VcpuError { vcpu: u8, reason: String },
}

impl ExitReason {
    /// 0 for a guest that stopped on purpose, 1 for a crash.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Reset
            | ExitReason::PowerOff
            | ExitReason::Halted
            | ExitReason::Shutdown => 0,
            _ => 1,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Reset => write!(f, "guest reset"),
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Halted => write!(f, "guest halted"),
            ExitReason::Shutdown => write!(f, "shut down through the API"),
            ExitReason::TripleFault { vcpu } => write!(f, "vCPU {vcpu}: guest triple fault (KVM shutdown exit)"),
            ExitReason::EmulationFailure { vcpu, suberror, rip } => write!(
                f,
                "vCPU {vcpu}: KVM internal error {suberror} (instruction emulation failed) at rip {rip:#x}"
            ),
            ExitReason::VcpuError { vcpu, reason } => write!(f, "vCPU {vcpu}: {reason}"),
        }
    }
}

/// The first exit reason reported wins; the VMM thread wakes on the eventfd.
pub struct ExitNotifier {
    reason: Mutex<Option<ExitReason>>,
    pub evt: EventFd,
}

impl ExitNotifier {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitNotifier {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    pub fn report(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        let _ = self.evt.write(1);
    }

    pub fn take(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
}

/// Shared between the VMM thread and the vCPU threads.
pub struct VcpuControl {
    /// (state, parked vCPUs, vCPUs whose loop ended)
    state: Mutex<(RunState, usize, usize)>,
    changed: Condvar,
    /// The vCPU threads' pthread ids, as integers (a pointer on musl,
    /// which is not `Send`).
    threads: Mutex<Vec<usize>>,
}

/// Signal used to kick a vCPU out of KVM_RUN; its handler does nothing.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

pub fn install_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

impl Default for VcpuControl {
    fn default() -> Self {
        VcpuControl {
            state: Mutex::new((RunState::Running, 0, 0)),
            changed: Condvar::new(),
            threads: Mutex::new(Vec::new()),
        }
    }
}

impl VcpuControl {
    pub fn state(&self) -> RunState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn kick_all(&self) {
        for t in self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            // SAFETY: `t` is a live vCPU thread of this process: a thread
            // takes itself off this list (under the lock held here) before
            // it ends, and a detached thread's pthread_t is freed when it
            // ends (musl unmaps it: signalling it there was a SIGSEGV).
            // The signal has a no-op handler.
            unsafe { libc::pthread_kill(*t as libc::pthread_t, kick_signal()) };
        }
    }

    /// Stops every vCPU and returns once none of them runs guest code
    /// (parked, or its loop ended).
    pub fn pause(&self, vcpus: usize) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = RunState::Paused;
        // A kick can land just before a vCPU enters KVM_RUN and be lost;
        // kick again until every vCPU has parked.
        while st.1 + st.2 < vcpus {
            drop(st);
            self.kick_all();
            st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st = self
                .changed
                .wait_timeout(st, Duration::from_millis(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn resume(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = RunState::Running;
        self.changed.notify_all();
    }

    /// Registers the calling thread for kicks until the guard is dropped.
    fn enter(&self) -> Registration<'_> {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(me);
        Registration {
            control: self,
            thread: me,
        }
    }

    /// Called by a vCPU thread between runs: blocks while paused.
    fn park_if_paused(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0 == RunState::Paused {
            st.1 += 1;
            self.changed.notify_all();
            while st.0 == RunState::Paused {
                st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.1 -= 1;
        }
    }
}

/// A vCPU thread's place on the kick list. Dropped when the thread's loop
/// ends: it leaves the list, then counts as ended for `pause`.
struct Registration<'a> {
    control: &'a VcpuControl,
    thread: usize,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.control
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|t| *t != self.thread);
        let mut st = self.control.state.lock().unwrap_or_else(|e| e.into_inner());
        st.2 += 1;
        self.control.changed.notify_all();
    }
}

pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub control: Arc<VcpuControl>,
    pub exit: Arc<ExitNotifier>,
}

impl Vcpu {
    /// Registers this thread for kicks, installs `filter`, and runs until the
    /// guest stops. Never returns an error: the reason goes to `exit`.
    pub fn run(self, filter: Option<&seccompiler::BpfProgram>) {
        let control = self.control.clone();
        let _registered = control.enter();
        // `self`, with its references to the devices, goes before the
        // registration does: once this thread counts as ended, the VMM
        // thread drops the devices, and it must hold the last reference. A
        // device's Drop may remove files (the vsock socket), which the vCPU
        // filter does not allow.
        self.run_registered(filter);
    }

    fn run_registered(mut self, filter: Option<&seccompiler::BpfProgram>) {
        if let Err(e) = filter.map_or(Ok(()), |f| seccompiler::apply_filter(f)) {
            self.exit.report(ExitReason::VcpuError {
                vcpu: self.id,
                reason: format!("seccomp: {e}"),
            });
            return;
        }
        tracing::debug!("vCPU {} starts at {} us", self.id, crate::since_start_us());
        loop {
            self.control.park_if_paused();
            if let Some(reason) = self.run_once() {
                self.exit.report(reason);
                return;
            }
        }
    }

    fn run_once(&mut self) -> Option<ExitReason> {
        let id = self.id;
        match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => match self.pio.write(u64::from(port), data) {
                BusAction::Reset => Some(ExitReason::Reset),
                BusAction::None => None,
            },
            Ok(VcpuExit::IoIn(port, data)) => {
                self.pio.read(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => match self.mmio.write(addr, data) {
                BusAction::Reset => Some(ExitReason::Reset),
                BusAction::None => None,
            },
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.mmio.read(addr, data);
                None
            }
            Ok(VcpuExit::Hlt) => Some(ExitReason::Halted),
            Ok(VcpuExit::Shutdown) => Some(ExitReason::TripleFault { vcpu: id }),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Some(ExitReason::PowerOff),
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => Some(ExitReason::Reset),
                other => Some(ExitReason::VcpuError {
                    vcpu: id,
                    reason: format!("KVM system event {other}"),
                }),
            },
            Ok(VcpuExit::InternalError) => {
                // SAFETY: reading the `internal` member of the kvm_run union
                // is valid right after a KVM_EXIT_INTERNAL_ERROR exit.
                let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                Some(ExitReason::EmulationFailure {
                    vcpu: id,
                    suberror,
                    rip,
                })
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(ExitReason::VcpuError {
                vcpu: id,
                reason: format!("KVM entry failed (hardware reason {reason:#x} on host CPU {cpu})"),
            }),
            Ok(VcpuExit::Intr) => None,
            // The IOAPIC delivers edges only; no remote IRR to clear.
            Ok(VcpuExit::IoapicEoi(_)) => None,
            Ok(other) => Some(ExitReason::VcpuError {
                vcpu: id,
                reason: format!("unexpected KVM exit {other:?}"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(ExitReason::VcpuError {
                vcpu: id,
                reason: format!("KVM_RUN: {e}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_vcpu_thread_is_off_the_kick_list_and_counts_for_pause() {
        install_kick_handler().unwrap();
        let control = Arc::new(VcpuControl::default());
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
        let c = control.clone();
        // Detached, as the VMM's vCPU threads are: its pthread_t is freed
        // when it ends, so nothing may signal it afterwards.
        drop(std::thread::spawn(move || {
            let _registered = c.enter();
            entered_tx.send(()).unwrap();
            end_rx.recv().unwrap();
        }));
        entered_rx.recv().unwrap();
        assert_eq!(control.threads.lock().unwrap().len(), 1);
        // A kick of a live thread is harmless (no-op handler).
        control.kick_all();
        end_tx.send(()).unwrap();
        // pause returns once the thread's loop has ended...
        control.pause(1);
        // ...and by then it is off the list, so this kicks no one.
        assert!(control.threads.lock().unwrap().is_empty());
        assert_eq!(control.state.lock().unwrap().2, 1);
        control.kick_all();
    }
}
