//! `ironcell-agent pause`: the holder of a pod's namespaces in the guest,
//! for a pod made without a pause image (containerd's sandbox API: the
//! host runs the agent's own binary as the pod's first container). Like
//! Kubernetes' pause it does nothing but wait: it reaps what is re-parented
//! to it (it is PID 1 of the pod's PID namespace when the pod shares one)
//! and exits on SIGTERM or SIGINT.

use std::process::ExitCode;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

/// Never runs (the signals are blocked and waited for): its presence
/// makes SIGTERM and SIGINT deliverable to PID 1 of a PID namespace, to
/// which the kernel drops every signal left at its default action.
extern "C" fn deliverable(_: libc::c_int) {}

/// Waits until SIGTERM or SIGINT, reaping every child meanwhile.
pub fn main() -> ExitCode {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(s);
    }
    let action = SigAction::new(
        SigHandler::Handler(deliverable),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler does nothing, so it is async-signal-safe.
        if let Err(e) = unsafe { nix::sys::signal::sigaction(s, &action) } {
            eprintln!("ironcell-agent pause: sigaction: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        eprintln!("ironcell-agent pause: sigprocmask: {e}");
        return ExitCode::FAILURE;
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(Signal::SIGTERM | Signal::SIGINT) => return ExitCode::SUCCESS,
            Ok(_) | Err(_) => {}
        }
    }
}

fn reap() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
