//! The VMM's seccomp allowlists, one per thread kind, compiled with
//! seccompiler and installed once setup is done (files opened, KVM set up,
//! sockets bound). Anything else kills the whole process (SECCOMP_RET_KILL_PROCESS):
//! a VMM that a guest tricked into an unexpected syscall must not go on.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Error, Result};

/// Set in the environment, this makes the VMM thread issue a syscall outside
/// its allowlist right after installing it: the test that the filter kills.
pub const SELFTEST_ENV: &str = "IRONCELL_VMM_SECCOMP_SELFTEST";

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => { &[$((stringify!($name), libc::$name)),*] };
}

type Syscalls = &'static [(&'static str, libc::c_long)];

/// Needed by every thread: memory allocation, locks, signals, exit, logs.
const COMMON: Syscalls = syscalls!(
    SYS_brk,
    SYS_mmap,
    SYS_munmap,
    SYS_mremap,
    SYS_madvise,
    SYS_mprotect,
    SYS_futex,
    SYS_rt_sigreturn,
    SYS_rt_sigprocmask,
    SYS_sigaltstack,
    SYS_sched_yield,
    SYS_exit,
    SYS_exit_group,
    SYS_write,
    SYS_writev,
    SYS_read,
    SYS_close,
    SYS_fcntl,
    SYS_clock_gettime,
    SYS_getrandom,
    SYS_epoll_ctl,
    SYS_gettid,
    SYS_getpid,
);

/// vCPU threads: KVM_RUN and the register reads of an error report. Device
/// activation runs here too (the driver's DRIVER_OK write): it registers
/// backend fds on the event loop. Serial interrupts and IOAPIC unmasks
/// inject MSIs (KVM_SIGNAL_MSI).
const VCPU: Syscalls = syscalls!(SYS_ioctl);

/// The VMM thread: the event loop, the API socket, device backends (files,
/// tap, vsock's unix sockets), pausing vCPUs (tgkill), and cleanup at exit.
const VMM: Syscalls = syscalls!(
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_accept4,
    SYS_socket,
    SYS_connect,
    SYS_recvfrom,
    SYS_sendto,
    SYS_recvmsg,
    SYS_sendmsg,
    SYS_shutdown,
    SYS_readv,
    SYS_pread64,
    SYS_pwrite64,
    SYS_preadv,
    SYS_pwritev,
    SYS_fsync,
    SYS_fdatasync,
    SYS_lseek,
    SYS_tgkill,
    SYS_unlink,
    SYS_unlinkat,
    SYS_getsockopt,
    SYS_newfstatat,
    SYS_statx,
    SYS_fstat,
    SYS_sched_getaffinity,
    SYS_clock_nanosleep,
    SYS_nanosleep,
);

const KVM_RUN: u64 = 0xae80;
const KVM_GET_REGS: u64 = 0x8090_ae81;
const KVM_SIGNAL_MSI: u64 = 0x4020_aea5;
/// std's set_nonblocking on sockets.
const FIONBIO: u64 = 0x5421;

pub struct Filters {
    pub vcpu: BpfProgram,
    pub vmm: BpfProgram,
}

/// Thread kind → allowed syscall names, as `--print-seccomp` shows them.
pub fn allowlist() -> BTreeMap<&'static str, Vec<String>> {
    let names = |extra: Syscalls| {
        let mut v: Vec<String> = COMMON
            .iter()
            .chain(extra)
            .map(|(n, _)| n.trim_start_matches("SYS_").to_string())
            .collect();
        v.sort();
        v
    };
    let mut vcpu = names(VCPU);
    for s in vcpu.iter_mut().filter(|s| *s == "ioctl") {
        *s = "ioctl(KVM_RUN | KVM_GET_REGS | KVM_SIGNAL_MSI)".into();
    }
    let mut vmm = names(VMM);
    vmm.push("ioctl(FIONBIO | KVM_SIGNAL_MSI)".into());
    vmm.sort();
    BTreeMap::from([("vcpu", vcpu), ("vmm", vmm)])
}

fn compile(extra: Syscalls, ioctl_rules: Vec<SeccompRule>) -> Result<BpfProgram> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(extra)
        .map(|(_, nr)| (*nr, vec![]))
        .collect();
    if !ioctl_rules.is_empty() {
        rules.insert(libc::SYS_ioctl, ioctl_rules);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| Error::Seccomp(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| Error::Seccomp(e.to_string()))
}

pub fn filters() -> Result<Filters> {
    let ioctl = |req: u64| -> Result<SeccompRule> {
        let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)
            .map_err(|e| Error::Seccomp(e.to_string()))?;
        SeccompRule::new(vec![cond]).map_err(|e| Error::Seccomp(e.to_string()))
    };
    Ok(Filters {
        vcpu: compile(
            VCPU,
            vec![
                ioctl(KVM_RUN)?,
                ioctl(KVM_GET_REGS)?,
                ioctl(KVM_SIGNAL_MSI)?,
            ],
        )?,
        vmm: compile(VMM, vec![ioctl(FIONBIO)?, ioctl(KVM_SIGNAL_MSI)?])?,
    })
}

/// See `SELFTEST_ENV`. personality(0xffffffff) only queries, and is in no
/// allowlist.
pub fn selftest_forbidden_syscall() {
    tracing::warn!("{SELFTEST_ENV} is set: issuing a forbidden syscall");
    // SAFETY: personality(0xffffffff) reads the persona and changes nothing.
    unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu64) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_and_list_is_sorted() {
        let f = filters().unwrap();
        assert!(!f.vcpu.is_empty() && !f.vmm.is_empty());
        let list = allowlist();
        assert!(list["vcpu"].iter().any(|s| s.starts_with("ioctl(KVM_RUN")));
        assert!(!list["vmm"]
            .iter()
            .any(|s| s == "execve" || s == "personality"));
        assert!(list["vmm"].windows(2).all(|w| w[0] <= w[1]));
    }
}
