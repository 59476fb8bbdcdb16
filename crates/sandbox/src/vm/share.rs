//! The directory a VM shares with its guest, and the container's spec as
//! the guest sees it.
//!
//! The process that boots the VM (its relay, or ironcelld's helper) makes
//! the share in a mount namespace of its own (the VM's processes inherit
//! it): a tmpfs holding, per container, its rootfs
//! (`<id>/rootfs`) and the source of each bind mount (`<id>/m<N>`), each
//! bind-mounted there, read-only where the spec says so. Nothing else of
//! the host is in it, and since the mounts exist only in that namespace,
//! they vanish with the VM's last process, whatever kills it (for a VM no
//! relay owns, once its namespace is unpinned too: `share_ns.rs`).
//!
//! The guest mounts the share at [`GUEST_SHARE_DIR`]; the spec sent to the
//! agent names the rootfs and bind sources there.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::{LinuxNamespaceType, Mount, MountBuilder, Spec};

use crate::{Result, SandboxError};

/// The share's directory in a VM's run directory.
pub const SHARE_DIR: &str = "share";

/// Where the agent mounts the shared directory in the guest.
pub const GUEST_SHARE_DIR: &str = "/run/ironcell/share";

fn vm_err(what: impl std::fmt::Display) -> SandboxError {
    SandboxError::Vm(what.to_string())
}

fn mnt(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mount(source, target, fstype, flags, data).map_err(|e| {
        vm_err(format!(
            "cannot mount {} on {}: {e}",
            source.map_or("(none)".into(), |s| s.display().to_string()),
            target.display()
        ))
    })
}

/// Gives the calling process a mount namespace of its own, which receives
/// the host's mounts but sends none back.
pub fn private_mount_namespace() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| vm_err(format!("cannot make a mount namespace for the VM: {e}")))?;
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None,
    )
}

/// Whether a spec mount is a bind mount.
fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

fn has_option(m: &Mount, opt: &str) -> bool {
    m.options()
        .as_ref()
        .is_some_and(|o| o.iter().any(|x| x == opt))
}

/// Bind-mounts `source` on `target` (made to match its type), read-only if
/// `ro`.
fn bind(source: &Path, target: &Path, recursive: bool, ro: bool) -> Result<()> {
    let meta = fs::metadata(source)
        .map_err(|e| vm_err(format!("bind mount source {}: {e}", source.display())))?;
    if meta.is_dir() {
        fs::create_dir_all(target)
    } else {
        fs::write(target, b"")
    }
    .map_err(|e| vm_err(format!("cannot create {}: {e}", target.display())))?;
    let rec = if recursive {
        MsFlags::MS_REC
    } else {
        MsFlags::empty()
    };
    mnt(Some(source), target, None, MsFlags::MS_BIND | rec, None)?;
    if ro {
        mnt(
            None,
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | rec,
            None,
        )?;
    }
    Ok(())
}

/// The guest's tmpfs for /dev/shm (a host bind of a shm directory would
/// share nothing across the VM boundary).
fn guest_shm(m: &Mount) -> Result<Mount> {
    MountBuilder::default()
        .destination(m.destination().clone())
        .typ("tmpfs")
        .source("shm")
        .options(vec![
            "nosuid".into(),
            "noexec".into(),
            "nodev".into(),
            "mode=1777".into(),
            "size=65536k".into(),
        ])
        .build()
        .map_err(|e| vm_err(e.to_string()))
}

/// A host path a container's share directory holds: bind-mounted at
/// `<share>/<id>/<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareMount {
    /// `rootfs`, or `m<N>` for the spec's mount N.
    pub name: String,
    pub source: PathBuf,
    pub recursive: bool,
    pub ro: bool,
}

/// Container `id` of the bundle at `bundle_dir` with spec `spec` as the
/// guest sees it: its spec for the guest, and the host paths its share
/// directory must hold.
pub fn plan(id: &str, bundle_dir: &Path, spec: &Spec) -> Result<(Spec, Vec<ShareMount>)> {
    let guest_dir = Path::new(GUEST_SHARE_DIR).join(id);
    let mut guest = spec.clone();
    let mut shared = Vec::new();
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| vm_err("config.json has no root"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle_dir.join(root.path())
    };
    shared.push(ShareMount {
        name: "rootfs".into(),
        source: rootfs,
        recursive: true,
        ro: root.readonly().unwrap_or(false),
    });
    let mut groot = root.clone();
    groot.set_path(guest_dir.join("rootfs"));
    guest.set_root(Some(groot));

    let mut mounts = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !is_bind(m) {
            mounts.push(m.clone());
            continue;
        }
        if m.destination() == Path::new("/dev/shm") {
            mounts.push(guest_shm(m)?);
            continue;
        }
        let source = m.source().as_ref().ok_or_else(|| {
            vm_err(format!(
                "bind mount on {} has no source",
                m.destination().display()
            ))
        })?;
        let source = if source.is_absolute() {
            source.clone()
        } else {
            bundle_dir.join(source)
        };
        let meta = fs::metadata(&source)
            .map_err(|e| vm_err(format!("bind mount source {}: {e}", source.display())))?;
        let ft = meta.file_type();
        if ft.is_char_device() || ft.is_block_device() {
            // A device is the guest's own device of the same path.
            mounts.push(m.clone());
            continue;
        }
        let name = format!("m{i}");
        shared.push(ShareMount {
            name: name.clone(),
            source,
            recursive: has_option(m, "rbind"),
            ro: has_option(m, "ro"),
        });
        let mut gm = m.clone();
        gm.set_source(Some(guest_dir.join(&name)));
        mounts.push(gm);
    }
    guest.set_mounts(Some(mounts));
    Ok((for_guest(guest), shared))
}

/// Makes `share` (a directory) the VM's shared directory holding container
/// `id` of the bundle at `bundle_dir` with spec `spec`, in the calling
/// process's mount namespace (see [`private_mount_namespace`]), and
/// returns the spec for the guest.
pub fn prepare(share: &Path, id: &str, bundle_dir: &Path, spec: &Spec) -> Result<Spec> {
    let (guest, shared) = plan(id, bundle_dir, spec)?;
    mnt(
        Some(Path::new("ironcell-share")),
        share,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(SHARE_OPTIONS),
    )?;
    // Shared, so that the mount namespaces the VM's device processes make
    // (slaves of this one: crates/vmm/src/jail.rs) receive the binds added
    // under it later, as a container added to a running VM needs. Nothing
    // outside this namespace is its peer.
    mnt(None, share, None, MsFlags::MS_SHARED, None)?;
    let host_dir = share.join(id);
    fs::create_dir(&host_dir).map_err(|e| vm_err(format!("{}: {e}", host_dir.display())))?;
    for m in &shared {
        bind(&m.source, &host_dir.join(&m.name), m.recursive, m.ro)?;
    }
    set_writable(share, false)?;
    Ok(guest)
}

/// The share's tmpfs options.
const SHARE_OPTIONS: &str = "mode=0755,size=64k";

/// Remounts the share read-write (to add or remove a container's
/// directory) or read-only: the share itself takes no new files; the binds
/// under it keep their own flags.
pub fn set_writable(share: &Path, writable: bool) -> Result<()> {
    let ro = if writable {
        MsFlags::empty()
    } else {
        MsFlags::MS_RDONLY
    };
    mnt(
        None,
        share,
        None,
        MsFlags::MS_REMOUNT | ro | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(SHARE_OPTIONS),
    )
}

/// Makes `target` (missing) the mount point for a tree of type `dir` or
/// file.
pub fn make_mount_point(target: &Path, dir: bool) -> Result<()> {
    if dir {
        fs::create_dir(target)
    } else {
        fs::write(target, b"")
    }
    .map_err(|e| vm_err(format!("cannot create {}: {e}", target.display())))
}

/// Makes a bind mount at `target` read-only.
pub fn make_read_only(target: &Path) -> Result<()> {
    mnt(
        None,
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None,
    )
}

/// What of a host spec means nothing, or something else, in the guest:
/// hooks run on the host; namespace paths name the host's namespaces (the
/// guest makes new ones); LSM labels name host policies the guest kernel
/// does not have. And the guest mounts cgroup v2 whatever the host has: a
/// container there gets a cgroup namespace of its own, as engines give
/// every container on a v2 host, so that its /sys/fs/cgroup is its own
/// cgroup (an engine on a v1 host does not ask for one).
fn for_guest(mut spec: Spec) -> Spec {
    spec.set_hooks(None);
    if let Some(mut linux) = spec.linux().clone() {
        let mut ns: Vec<_> = linux
            .namespaces()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|mut n| {
                n.set_path(None);
                n
            })
            .collect();
        if !ns.iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup) {
            let mut cgroup = oci_spec::runtime::LinuxNamespace::default();
            cgroup.set_typ(LinuxNamespaceType::Cgroup);
            ns.push(cgroup);
        }
        linux.set_namespaces(Some(ns));
        linux.set_mount_label(None);
        spec.set_linux(Some(linux));
    }
    if let Some(mut p) = spec.process().clone() {
        p.set_apparmor_profile(None);
        p.set_selinux_label(None);
        spec.set_process(Some(p));
    }
    spec
}

/// Checks, before anything is made, that a spec can run in a VM.
pub fn check_spec(spec: &Spec) -> Result<()> {
    if let Some(h) = spec.hooks() {
        for (kind, list) in [
            ("createContainer", h.create_container()),
            ("startContainer", h.start_container()),
        ] {
            if list.as_ref().is_some_and(|l| !l.is_empty()) {
                return Err(vm_err(format!(
                    "{kind} hooks run inside the container, which the vm sandbox cannot do with \
                     host binaries; remove them or use the namespace sandbox"
                )));
            }
        }
    }
    // Device nodes the spec lists are the host's (a privileged pod gets
    // every one of them); a guest has none of the host's devices.
    if let Some(d) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .and_then(|d| d.first())
    {
        return Err(vm_err(format!(
            "host devices ({} and any others the spec lists; a privileged pod gets them all) \
             cannot be given to a container in a VM; use the namespace sandbox",
            d.path().display()
        )));
    }
    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    if ns
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_some())
    {
        return Err(vm_err(
            "joining a host user namespace is not possible in a VM",
        ));
    }
    // What a spec without these namespaces asks for is the host's; in the
    // guest it would be the guest's own, shared with its agent.
    for (typ, what) in [
        (
            LinuxNamespaceType::Pid,
            "the host's PID namespace (--pid=host, a hostPID pod)",
        ),
        (
            LinuxNamespaceType::Network,
            "the host's network (--network=host, a hostNetwork pod)",
        ),
        (
            LinuxNamespaceType::Ipc,
            "the host's IPC namespace (--ipc=host, a hostIPC pod)",
        ),
    ] {
        if !ns.iter().any(|n| n.typ() == typ) {
            return Err(vm_err(format!(
                "{what} cannot be given to a container in a VM: its spec has no {} namespace; \
                 use the namespace sandbox",
                match typ {
                    LinuxNamespaceType::Pid => "pid",
                    LinuxNamespaceType::Ipc => "ipc",
                    _ => "network",
                }
            )));
        }
    }
    Ok(())
}

/// Makes the guest container share the guest's network namespace, where
/// the agent gave eth0 the pod's interface.
pub fn use_guest_network(spec: &mut Spec) {
    if let Some(mut linux) = spec.linux().clone() {
        if let Some(ns) = linux.namespaces().clone() {
            linux.set_namespaces(Some(
                ns.into_iter()
                    .filter(|n| n.typ() != LinuxNamespaceType::Network)
                    .collect(),
            ));
        }
        spec.set_linux(Some(linux));
    }
}

/// The network namespace the spec gives the container on the host: a path
/// to join, a new one, or none (the host's).
pub enum HostNetwork {
    Join(PathBuf),
    New,
    Host,
}

pub fn host_network(spec: &Spec) -> HostNetwork {
    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| {
            ns.iter()
                .find(|n| n.typ() == LinuxNamespaceType::Network)
                .cloned()
        });
    match ns {
        Some(n) => match n.path() {
            Some(p) => HostNetwork::Join(p.clone()),
            None => HostNetwork::New,
        },
        None => HostNetwork::Host,
    }
}

/// Puts the calling process in the network namespace the container has on
/// the host: the relay stands for the container, so whatever a caller's
/// hooks set up in `/proc/<pid>/ns/net` of the container's pid lands in a
/// namespace of its own, never in the host's.
pub fn enter_network(net: &HostNetwork) -> Result<()> {
    match net {
        HostNetwork::Host => Ok(()),
        HostNetwork::New => nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| vm_err(format!("cannot make a network namespace: {e}"))),
        HostNetwork::Join(p) => {
            let f = fs::File::open(p)
                .map_err(|e| vm_err(format!("network namespace {}: {e}", p.display())))?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                vm_err(format!(
                    "cannot join network namespace {}: {e}",
                    p.display()
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn guest_spec_drops_host_only_parts() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0},"apparmorProfile":"p"},
            "hooks":{"prestart":[{"path":"/bin/true"}]},
            "linux":{"namespaces":[{"type":"network","path":"/run/netns/x"},{"type":"pid"}],"mountLabel":"l"}}"#,
        );
        let g = for_guest(s);
        assert!(g.hooks().is_none());
        assert!(g.process().as_ref().unwrap().apparmor_profile().is_none());
        let l = g.linux().as_ref().unwrap();
        assert!(l.mount_label().is_none());
        let ns = l.namespaces().as_ref().unwrap();
        assert!(ns.iter().all(|n| n.path().is_none()));
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup));
    }

    #[test]
    fn specs_a_vm_cannot_run_are_refused() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","root":{"path":"r"},
            "hooks":{"startContainer":[{"path":"/bin/true"}]}}"#,
        );
        assert!(check_spec(&s)
            .unwrap_err()
            .to_string()
            .contains("startContainer"));
        let s = spec(
            r#"{"ociVersion":"1.0.2","root":{"path":"r"},
            "linux":{"namespaces":[{"type":"user","path":"/proc/1/ns/user"}]}}"#,
        );
        assert!(check_spec(&s).is_err());
        let s = spec(
            r#"{"ociVersion":"1.0.2","root":{"path":"r"},
            "linux":{"namespaces":[{"type":"pid"},{"type":"network"},{"type":"ipc"}],
            "devices":[{"path":"/dev/kvm","type":"c","major":10,"minor":232}]}}"#,
        );
        let e = check_spec(&s).unwrap_err().to_string();
        assert!(
            e.contains("host devices (/dev/kvm") && e.contains("privileged"),
            "{e}"
        );
        let s = spec(
            r#"{"ociVersion":"1.0.2","root":{"path":"r"},"hooks":{"prestart":[{"path":"/x"}]},
            "linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/run/netns/p"},{"type":"ipc"}]}}"#,
        );
        assert!(check_spec(&s).is_ok());
        for (namespaces, want) in [
            (
                r#"[{"type":"network"},{"type":"ipc"}]"#,
                "host's PID namespace",
            ),
            (r#"[{"type":"pid"},{"type":"ipc"}]"#, "host's network"),
            (
                r#"[{"type":"pid"},{"type":"network"}]"#,
                "host's IPC namespace",
            ),
        ] {
            let s = spec(&format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"r"}},"linux":{{"namespaces":{namespaces}}}}}"#
            ));
            let e = check_spec(&s).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("namespace sandbox"), "{e}");
        }
    }

    #[test]
    fn a_container_on_the_pod_network_shares_the_guests() {
        let mut s = for_guest(spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"network","path":"/run/netns/a"},{"type":"pid"}]}}"#,
        ));
        use_guest_network(&mut s);
        let kinds: Vec<_> = s
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert_eq!(kinds, [LinuxNamespaceType::Pid, LinuxNamespaceType::Cgroup]);
    }

    #[test]
    fn host_network_follows_the_spec() {
        let join = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"network","path":"/run/netns/a"}]}}"#,
        );
        assert!(
            matches!(host_network(&join), HostNetwork::Join(p) if p == Path::new("/run/netns/a"))
        );
        let new = spec(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"network"}]}}"#);
        assert!(matches!(host_network(&new), HostNetwork::New));
        let host = spec(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"}]}}"#);
        assert!(matches!(host_network(&host), HostNetwork::Host));
    }
}
