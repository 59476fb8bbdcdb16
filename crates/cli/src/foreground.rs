//! Waiting for a container process in the foreground (`run` and `exec`
//! without `--detach`): signals sent to ironcell are forwarded to the
//! process, and ironcell exits with its status (128+N when killed by signal
//! N, as a shell reports it and as runc does).

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Blocks every signal in the calling thread until dropped, so none is lost
/// between starting a process and waiting for it (a SIGCHLD that arrives
/// before the wait would otherwise be discarded).
pub struct Blocked {
    old: SigSet,
}

impl Blocked {
    pub fn new() -> Result<Blocked> {
        let mut old = SigSet::empty();
        nix::sys::signal::pthread_sigmask(
            SigmaskHow::SIG_BLOCK,
            Some(&SigSet::all()),
            Some(&mut old),
        )
        .context("cannot block signals")?;
        Ok(Blocked { old })
    }

    /// Waits for `pid` (a child of this process), forwarding signals to it.
    /// `on_winch` runs when ironcell's terminal is resized.
    pub fn wait(&self, pid: i32, on_winch: &dyn Fn()) -> Result<u8> {
        let target = Pid::from_raw(pid);
        let all = SigSet::all();
        loop {
            if let Some(code) = reap(target)? {
                return Ok(code);
            }
            let sig = all.wait().context("sigwait")?;
            match sig {
                Signal::SIGCHLD => {}
                // Go runtimes use SIGURG internally; runc does not forward it either.
                Signal::SIGURG => {}
                Signal::SIGWINCH => on_winch(),
                other => {
                    if let Err(e) = kill(target, other) {
                        tracing::warn!(%e, ?other, "cannot forward signal");
                    }
                }
            }
        }
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}

/// Reaps every exited child; returns the exit code once `target` is gone.
fn reap(target: Pid) -> Result<Option<u8>> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == target => return Ok(Some(code as u8)),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == target => {
                return Ok(Some(128u8.wrapping_add(sig as u8)))
            }
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(_) => continue,
            Err(Errno::ECHILD) => {
                anyhow::bail!("process {target} is not a child of ironcell; cannot wait for it")
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waitpid"),
        }
    }
}
