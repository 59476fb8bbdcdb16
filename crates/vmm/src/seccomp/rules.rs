// The seccomp rules of the VMM's threads. Self-contained (std, libc and
// seccompiler only): build.rs includes this file to compile the BPF
// programs at build time, and src/seccomp/mod.rs includes it for the
// allowlist that `--print-seccomp` shows and for the test that the
// programs built into the binary are these rules.

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => { &[$((stringify!($name), libc::$name)),*] };
}

pub(crate) type Syscalls = &'static [(&'static str, libc::c_long)];

macro_rules! ioctls {
    ($($name:ident),* $(,)?) => { &[$((stringify!($name), $name)),*] };
}

/// ioctl requests a thread may make, by name (for the printed allowlist).
pub(crate) type Ioctls = &'static [(&'static str, u64)];

/// Needed by every thread: memory allocation, locks, signals, exit, logs.
pub(crate) const COMMON: Syscalls = syscalls!(
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
pub(crate) const VCPU: Syscalls = syscalls!(SYS_ioctl);

/// The VMM thread: the event loop, the API socket, device backends (files,
/// tap, vsock's unix sockets), pausing vCPUs (tgkill), and cleanup at exit.
pub(crate) const VMM: Syscalls = syscalls!(
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
    SYS_tkill,
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

/// virtio-fs worker threads (devices/virtio/fs.rs), one per share: the
/// passthrough file system's calls on the share (lookups and opens by one
/// name relative to a directory fd, reopening through the /proc fd, the
/// file and directory operations; setresuid and setresgid switch the
/// thread's effective ids to the guest's for creations; umask and
/// name_to_handle_at when it imports the root), and the worker's own: its
/// channel (futex) and KVM_SIGNAL_MSI for the interrupts of completed
/// requests. No socket calls, no unlink or open by absolute path needed.
pub(crate) const FS: Syscalls = syscalls!(
    SYS_openat,
    SYS_newfstatat,
    SYS_fstat,
    SYS_statx,
    SYS_fstatfs,
    SYS_getdents64,
    SYS_lseek,
    SYS_pread64,
    SYS_preadv,
    SYS_pwrite64,
    SYS_pwritev,
    SYS_fsync,
    SYS_fdatasync,
    SYS_fallocate,
    SYS_ftruncate,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_fchownat,
    SYS_utimensat,
    SYS_mkdirat,
    SYS_mknodat,
    SYS_symlinkat,
    SYS_linkat,
    SYS_unlinkat,
    SYS_renameat2,
    SYS_readlinkat,
    SYS_dup,
    SYS_umask,
    SYS_setresuid,
    SYS_setresgid,
    SYS_name_to_handle_at,
);

pub(crate) const KVM_RUN: u64 = 0xae80;
pub(crate) const KVM_GET_REGS: u64 = 0x8090_ae81;
pub(crate) const KVM_SIGNAL_MSI: u64 = 0x4020_aea5;
/// std's set_nonblocking on sockets.
pub(crate) const FIONBIO: u64 = 0x5421;

/// Compiles the allowlist of one thread kind: COMMON plus `extra`, ioctl
/// restricted to `ioctls` (its second argument, as a 32-bit value).
pub(crate) fn compile_rules(
    extra: Syscalls,
    ioctls: Ioctls,
) -> Result<seccompiler::BpfProgram, String> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(extra)
        .map(|(_, nr)| (*nr, vec![]))
        .collect();
    if !ioctls.is_empty() {
        let conditions = ioctls
            .iter()
            .map(|(_, req)| {
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *req)
                    .and_then(|c| SeccompRule::new(vec![c]))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        rules.insert(libc::SYS_ioctl, conditions);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// The vCPU threads' ioctls.
pub(crate) const VCPU_IOCTLS: Ioctls = ioctls!(KVM_RUN, KVM_GET_REGS, KVM_SIGNAL_MSI);
/// The VMM thread's ioctls.
pub(crate) const VMM_IOCTLS: Ioctls = ioctls!(FIONBIO, KVM_SIGNAL_MSI);
/// The virtio-fs worker threads' ioctls.
pub(crate) const FS_IOCTLS: Ioctls = ioctls!(KVM_SIGNAL_MSI);
