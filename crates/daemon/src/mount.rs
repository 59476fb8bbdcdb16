//! The task's root filesystem: containerd hands the shim the snapshot's
//! mounts (an overlay, or a bind of a directory) and the shim mounts them on
//! `<bundle>/rootfs`, as containerd's runc shim does.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MountError {
    #[error("rootfs mount {kind} {src} on {target}: {err}")]
    Mount {
        kind: String,
        src: String,
        target: String,
        err: nix::Error,
    },
    #[error("rootfs mount: {0}")]
    Invalid(String),
}

/// One mount as containerd describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Flags and the file-system data string of a mount's options, as
/// containerd's `mount.Mount` parses them.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub flags: MsFlags,
    pub data: String,
}

pub fn parse_options(options: &[String]) -> Parsed {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (clear, flag) = match o.as_str() {
            "async" => (true, MsFlags::MS_SYNCHRONOUS),
            "atime" => (true, MsFlags::MS_NOATIME),
            "bind" => (false, MsFlags::MS_BIND),
            "defaults" => (false, MsFlags::empty()),
            "dev" => (true, MsFlags::MS_NODEV),
            "diratime" => (true, MsFlags::MS_NODIRATIME),
            "dirsync" => (false, MsFlags::MS_DIRSYNC),
            "exec" => (true, MsFlags::MS_NOEXEC),
            "mand" => (false, MsFlags::MS_MANDLOCK),
            "noatime" => (false, MsFlags::MS_NOATIME),
            "nodev" => (false, MsFlags::MS_NODEV),
            "nodiratime" => (false, MsFlags::MS_NODIRATIME),
            "noexec" => (false, MsFlags::MS_NOEXEC),
            "nomand" => (true, MsFlags::MS_MANDLOCK),
            "norelatime" => (true, MsFlags::MS_RELATIME),
            "nostrictatime" => (true, MsFlags::MS_STRICTATIME),
            "nosuid" => (false, MsFlags::MS_NOSUID),
            "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC),
            "relatime" => (false, MsFlags::MS_RELATIME),
            "remount" => (false, MsFlags::MS_REMOUNT),
            "ro" => (false, MsFlags::MS_RDONLY),
            "rw" => (true, MsFlags::MS_RDONLY),
            "strictatime" => (false, MsFlags::MS_STRICTATIME),
            "suid" => (true, MsFlags::MS_NOSUID),
            "sync" => (false, MsFlags::MS_SYNCHRONOUS),
            _ => {
                data.push(o.as_str());
                continue;
            }
        };
        if clear {
            flags.remove(flag);
        } else {
            flags.insert(flag);
        }
    }
    Parsed {
        flags,
        data: data.join(","),
    }
}

fn c_path(p: &Path) -> Result<CString, MountError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| MountError::Invalid(format!("{} contains a NUL byte", p.display())))
}

/// Mounts `mounts` in order on `target`. On failure, what was mounted is
/// unmounted again.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<(), MountError> {
    c_path(target)?;
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            for _ in 0..i {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path) -> Result<(), MountError> {
    if m.source.contains('\0')
        || m.kind.contains('\0')
        || m.options.iter().any(|o| o.contains('\0'))
    {
        return Err(MountError::Invalid(
            "a mount field contains a NUL byte".into(),
        ));
    }
    let p = parse_options(&m.options);
    let fail = |err| MountError::Mount {
        kind: m.kind.clone(),
        src: m.source.clone(),
        target: target.display().to_string(),
        err,
    };
    let data = (!p.data.is_empty()).then_some(p.data.as_str());
    let fstype = (!m.kind.is_empty() && m.kind != "bind").then_some(m.kind.as_str());
    mount(Some(m.source.as_str()), target, fstype, p.flags, data).map_err(fail)?;
    // A bind mount ignores MS_RDONLY until it is remounted.
    if p.flags.contains(MsFlags::MS_BIND) && p.flags.contains(MsFlags::MS_RDONLY) {
        let flags = p.flags | MsFlags::MS_REMOUNT;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(fail(e));
        }
    }
    Ok(())
}

/// Unmounts everything mounted on `target` (stacked mounts included).
pub fn unmount_all(target: &Path) {
    for _ in 0..16 {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            Err(nix::Error::EBUSY) => {
                if umount2(target, MntFlags::MNT_DETACH).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_options_are_data() {
        let p = parse_options(&opts(&[
            "index=off",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/l1:/l2",
        ]));
        assert_eq!(p.flags, MsFlags::empty());
        assert_eq!(p.data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2");
    }

    #[test]
    fn flags_set_and_clear() {
        let p = parse_options(&opts(&["rbind", "ro", "nosuid"]));
        assert_eq!(
            p.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        );
        assert!(p.data.is_empty());
        let p = parse_options(&opts(&["ro", "rw", "nodev", "dev"]));
        assert_eq!(p.flags, MsFlags::empty());
    }

    #[test]
    fn nul_bytes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mount {
            kind: "bind".into(),
            source: "/tmp\0x".into(),
            options: vec![],
        };
        let e = mount_all(&[m], dir.path()).unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
    }
}
