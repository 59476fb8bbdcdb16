//! The VMM's seccomp allowlists, one per thread kind (rules.rs), compiled
//! with seccompiler at build time (build.rs) and installed once setup is
//! done (files opened, KVM set up, sockets bound). Anything else kills the
//! whole process (SECCOMP_RET_KILL_PROCESS): a VMM that a guest tricked
//! into an unexpected syscall must not go on.

use std::collections::BTreeMap;

use seccompiler::{sock_filter, BpfProgram};

use rules::{Ioctls, Syscalls, COMMON, FS, FS_IOCTLS, VCPU, VCPU_IOCTLS, VMM, VMM_IOCTLS};

/// Set in the environment, this makes the VMM thread issue a syscall outside
/// its allowlist right after installing it: the test that the filter kills.
pub const SELFTEST_ENV: &str = "IRONCELL_VMM_SECCOMP_SELFTEST";

// Used whole by build.rs; here for the lists and the test.
#[allow(dead_code)]
mod rules {
    include!("rules.rs");
}

/// The programs build.rs compiled from `rules`.
mod built {
    include!(concat!(env!("OUT_DIR"), "/seccomp_bpf.rs"));
}

pub struct Filters {
    pub vcpu: BpfProgram,
    pub vmm: BpfProgram,
    /// virtio-fs worker threads.
    pub fs: BpfProgram,
}

/// The vCPU, VMM and virtio-fs thread programs, as compiled at build time.
pub fn filters() -> Filters {
    let program = |insns: &[(u16, u8, u8, u32)]| -> BpfProgram {
        insns
            .iter()
            .map(|&(code, jt, jf, k)| sock_filter { code, jt, jf, k })
            .collect()
    };
    Filters {
        vcpu: program(built::VCPU_BPF),
        vmm: program(built::VMM_BPF),
        fs: program(built::FS_BPF),
    }
}

/// Thread kind → allowed syscall names, as `--print-seccomp` shows them.
pub fn allowlist() -> BTreeMap<&'static str, Vec<String>> {
    // ioctl appears with the requests compile_rules restricts it to.
    let names = |extra: Syscalls, ioctls: Ioctls| {
        let mut v: Vec<String> = COMMON
            .iter()
            .chain(extra)
            .map(|(n, _)| n.trim_start_matches("SYS_").to_string())
            .filter(|n| n != "ioctl")
            .collect();
        if !ioctls.is_empty() {
            let requests: Vec<&str> = ioctls.iter().map(|(n, _)| *n).collect();
            v.push(format!("ioctl({})", requests.join(" | ")));
        }
        v.sort();
        v
    };
    BTreeMap::from([
        ("vcpu", names(VCPU, VCPU_IOCTLS)),
        ("vmm", names(VMM, VMM_IOCTLS)),
        ("fs", names(FS, FS_IOCTLS)),
    ])
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

    fn raw(p: &BpfProgram) -> Vec<(u16, u8, u8, u32)> {
        p.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect()
    }

    /// The programs in the binary are today's rules compiled by today's
    /// seccompiler (a stale OUT_DIR or a bad build.rs would differ).
    #[test]
    fn built_programs_are_the_rules() {
        let f = filters();
        let vcpu = rules::compile_rules(VCPU, rules::VCPU_IOCTLS).unwrap();
        let vmm = rules::compile_rules(VMM, rules::VMM_IOCTLS).unwrap();
        let fs = rules::compile_rules(FS, rules::FS_IOCTLS).unwrap();
        assert_eq!(raw(&f.vcpu), raw(&vcpu));
        assert_eq!(raw(&f.vmm), raw(&vmm));
        assert_eq!(raw(&f.fs), raw(&fs));
        assert_ne!(raw(&f.vcpu), raw(&f.vmm));
        assert_ne!(raw(&f.fs), raw(&f.vmm));
    }

    #[test]
    fn list_is_sorted() {
        let f = filters();
        assert!(!f.vcpu.is_empty() && !f.vmm.is_empty());
        let list = allowlist();
        assert!(list["vcpu"].iter().any(|s| s.starts_with("ioctl(KVM_RUN")));
        assert!(!list["vmm"]
            .iter()
            .any(|s| s == "execve" || s == "personality"));
        assert!(list["vmm"].windows(2).all(|w| w[0] <= w[1]));
        assert!(list["fs"].contains(&"renameat2".to_string()));
        assert!(!list["fs"]
            .iter()
            .any(|s| s == "socket" || s == "connect" || s == "execve"));
    }
}
