//! What this host offers the sandboxes (`ironcell check`, and the vm
//! sandbox's early refusal on hosts where its default cannot work).

use std::fmt;
use std::path::Path;

/// The kind of /dev/kvm, told from the kernel module that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// Intel VT-x (`kvm_intel`).
    Vmx,
    /// AMD-V (`kvm_amd`).
    Svm,
    /// Pagetable-based virtual machine (`kvm_pvm`): software
    /// virtualization without VT-x or AMD-V; only a guest kernel built for
    /// it (or the project's pvm-test kernel) boots.
    Pvm,
    /// /dev/kvm exists but its module is not one of the above.
    Other,
    /// No /dev/kvm.
    None,
}

impl KvmKind {
    pub fn detect() -> KvmKind {
        Self::detect_in(Path::new("/"))
    }

    /// Detection under another root (for tests).
    pub fn detect_in(root: &Path) -> KvmKind {
        if !root.join("dev/kvm").exists() {
            return KvmKind::None;
        }
        let module = |m: &str| root.join("sys/module").join(m).exists();
        if module("kvm_pvm") {
            KvmKind::Pvm
        } else if module("kvm_intel") {
            KvmKind::Vmx
        } else if module("kvm_amd") {
            KvmKind::Svm
        } else {
            KvmKind::Other
        }
    }

    /// Hardware virtualization: a stock guest kernel boots.
    pub fn is_hardware(self) -> bool {
        matches!(self, KvmKind::Vmx | KvmKind::Svm)
    }
}

impl fmt::Display for KvmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvmKind::Vmx => "VT-x (kvm_intel)",
            KvmKind::Svm => "AMD-V (kvm_amd)",
            KvmKind::Pvm => "PVM (kvm_pvm: software virtualization)",
            KvmKind::Other => "present, module unknown",
            KvmKind::None => "none (no /dev/kvm)",
        })
    }
}

/// How cgroups are mounted.
pub fn cgroup_mode() -> &'static str {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let fstype_at = |dir: &str| {
        mounts.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (pre.split_whitespace().nth(4)? == dir).then(|| post.split_whitespace().next())?
        })
    };
    match fstype_at("/sys/fs/cgroup") {
        Some("cgroup2") => "v2 (unified)",
        Some(_) if fstype_at("/sys/fs/cgroup/unified").is_some() => {
            "v1 (hybrid, with a v2 hierarchy)"
        }
        Some(_) => "v1",
        None => "none mounted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_kind_from_the_module() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(KvmKind::detect_in(root.path()), KvmKind::None);
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/kvm"), "").unwrap();
        assert_eq!(KvmKind::detect_in(root.path()), KvmKind::Other);
        for (m, k) in [
            ("kvm_amd", KvmKind::Svm),
            ("kvm_intel", KvmKind::Vmx),
            ("kvm_pvm", KvmKind::Pvm),
        ] {
            std::fs::create_dir_all(root.path().join("sys/module").join(m)).unwrap();
            assert_eq!(KvmKind::detect_in(root.path()), k);
        }
        assert!(!KvmKind::Pvm.is_hardware());
        assert!(KvmKind::Vmx.is_hardware());
    }
}
