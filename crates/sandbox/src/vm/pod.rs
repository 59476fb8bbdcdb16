//! A pod in one VM: the containers of a CRI pod join the VM its sandbox
//! (pause) container booted.
//!
//! - **Which pod.** containerd's CRI marks each container of a pod with
//!   `io.kubernetes.cri.container-type=container` and the pod's
//!   `io.kubernetes.cri.sandbox-id`: the id of the sandbox container, whose
//!   VM the container joins ([`pod_of`]).
//! - **The share.** A container added to a running VM needs its rootfs and
//!   bind sources under the VM's share, which exists only in the mount
//!   namespace it was made in (`share.rs`): the VM's relay's, or, when no
//!   relay owns the VM, the one pinned on a file (`share_ns.rs`). A
//!   member's create opens each host path as a detached mount tree
//!   (`open_tree(2)`, in the host's mount namespace, where containerd
//!   mounted the rootfs after the share's namespace was made), enters the
//!   share's namespace from a thread of its own, and moves the trees under
//!   `<share>/<id>/` (`move_mount(2)`),
//!   whence they propagate to the device process serving the share
//!   ([`add`]). A member's delete detaches them again ([`remove`]).
//! - **Namespaces.** CRI names the pod's namespaces by the sandbox
//!   container's host pid (`/proc/<pid>/ns/ipc`, `uts`, `net`, and `pid`
//!   with `shareProcessNamespace`); that pid is the sandbox's relay (or
//!   hypervisor), and in the guest they are the pause container's
//!   ([`map_namespaces`]).

use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ironcell_basics::proc_stat::is_alive;
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};

use super::share::{self, ShareMount};
use super::share_ns;
use super::state::VmState;
use crate::{Result, SandboxError};

/// CRI's annotations on a pod's containers.
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The most host paths one container may share (its rootfs and binds).
const MAX_MOUNTS: usize = 128;

fn vm_err(what: impl std::fmt::Display) -> SandboxError {
    SandboxError::Vm(what.to_string())
}

/// The sandbox id of the CRI pod whose container `spec` is, if any.
pub fn pod_of(spec: &Spec) -> Option<String> {
    let a = spec.annotations().as_ref()?;
    if a.get(CONTAINER_TYPE).map(String::as_str) != Some("container") {
        return None;
    }
    a.get(SANDBOX_ID).filter(|s| !s.is_empty()).cloned()
}

/// Where the guest agent makes each pod's shm (`crates/agent/src/pod_shm.rs`).
const GUEST_POD_SHM: &str = "/run/ironcell/pods";

/// The pod whose `/dev/shm` a CRI container shares: the sandbox id of its
/// pod (a sandbox container's own).
pub fn shm_pod(spec: &Spec) -> Option<String> {
    let a = spec.annotations().as_ref()?;
    match a.get(CONTAINER_TYPE).map(String::as_str) {
        Some("sandbox" | "container") => a.get(SANDBOX_ID).filter(|s| !s.is_empty()).cloned(),
        _ => None,
    }
}

/// Gives `guest` the pod's shm at `/dev/shm` when `host` binds one there
/// (CRI binds the pod's shm into each of its containers) or joins the
/// pod's IPC namespace (containerd 2.x's CRI gives the containers of a
/// sandboxer's pod a tmpfs each, though they share the pod's IPC): a bind
/// of the pod's tmpfs the agent makes, in place of a tmpfs of the
/// container's own.
pub fn use_pod_shm(host: &Spec, guest: &mut Spec, pod_id: &str) -> Result<()> {
    let shares_pod_shm = ironcell_oci::joins_namespace(host, LinuxNamespaceType::Ipc)
        || host.mounts().iter().flatten().any(|m| {
            m.destination() == Path::new("/dev/shm")
                && (m.typ().as_deref() == Some("bind")
                    || m.options()
                        .iter()
                        .flatten()
                        .any(|o| o == "bind" || o == "rbind"))
        });
    if !shares_pod_shm {
        return Ok(());
    }
    let shm = oci_spec::runtime::MountBuilder::default()
        .destination("/dev/shm")
        .typ("bind")
        .source(Path::new(GUEST_POD_SHM).join(pod_id).join("shm"))
        .options(vec![
            "rbind".to_string(),
            "nosuid".to_string(),
            "nodev".to_string(),
            "noexec".to_string(),
        ])
        .build()
        .map_err(|e| vm_err(e.to_string()))?;
    let mut mounts = guest.mounts().clone().unwrap_or_default();
    for m in mounts
        .iter_mut()
        .filter(|m| m.destination() == Path::new("/dev/shm"))
    {
        *m = shm.clone();
    }
    guest.set_mounts(Some(mounts));
    Ok(())
}

/// The host cgroup a CRI container's relay joins: its `cgroupsPath` in
/// cgroupfs form, below the pod's cgroup the kubelet made, so that the VM's
/// host processes are the pod's to account and bound (the container's own
/// limits hold in the guest). None outside a CRI pod, and for the systemd
/// form (`slice:prefix:name`), whose units only systemd makes.
pub fn host_cgroup(spec: &Spec) -> Option<PathBuf> {
    let a = spec.annotations().as_ref()?;
    a.get(CONTAINER_TYPE)?;
    let path = spec.linux().as_ref()?.cgroups_path().clone()?;
    path.is_absolute().then_some(path)
}

/// Moves the calling process into the host cgroup at `path`.
pub fn join_host_cgroup(path: &Path) -> Result<()> {
    ironcell_container::cgroup::join(path, std::process::id() as i32)
        .map_err(|e| vm_err(e.to_string()))
}

/// Removes the host cgroup at `path` once the processes in it are gone
/// (a hypervisor may take a moment to end after its relay).
pub fn remove_host_cgroup(path: &Path, id: &str) {
    let Ok(cgroup) = ironcell_container::cgroup::Cgroup::open(path, false, id) else {
        return;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match cgroup.remove() {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() > deadline => {
                tracing::warn!("{e}");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The name of namespace type `t` under `/proc/<pid>/ns/`.
fn proc_name(t: LinuxNamespaceType) -> Option<&'static str> {
    Some(match t {
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Cgroup => "cgroup",
        _ => return None,
    })
}

/// Gives `guest` (a member's spec for the guest) the pod's namespaces that
/// `host` (its spec on the host) names: a path of the sandbox's relay
/// (`/proc/<relay>/ns/<t>`), or the pod's network namespace, becomes the
/// pause container's in the guest. Any other path is refused: it names
/// something of the host the guest does not have.
pub fn map_namespaces(host: &Spec, guest: &mut Spec, pod_id: &str, pod: &VmState) -> Result<()> {
    let host_ns = host
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let Some(mut linux) = guest.linux().clone() else {
        return Ok(());
    };
    let mut ns = linux.namespaces().clone().unwrap_or_default();
    for h in &host_ns {
        let Some(path) = h.path() else { continue };
        let name = proc_name(h.typ());
        let relays = name.map(|n| PathBuf::from(format!("/proc/{}/ns/{n}", pod.relay_pid)));
        let is_pods = relays.as_deref() == Some(path.as_path())
            || (h.typ() == LinuxNamespaceType::Network
                && pod.pod_network.as_deref() == Some(path.as_path()));
        let (true, Some(name)) = (is_pods, name) else {
            return Err(vm_err(format!(
                "namespace path {} is not one of pod {pod_id}'s, which is all a container in \
                 the pod's VM can join",
                path.display()
            )));
        };
        let mapped = PathBuf::from(format!("/proc/{}/ns/{name}", pod.guest_pid));
        match ns.iter_mut().find(|n| n.typ() == h.typ()) {
            Some(n) => {
                n.set_path(Some(mapped));
            }
            None => {
                let mut n = h.clone();
                n.set_path(Some(mapped));
                ns.push(n);
            }
        }
    }
    linux.set_namespaces(Some(ns));
    guest.set_linux(Some(linux));
    Ok(())
}

fn check_id(id: &str) -> Result<()> {
    ironcell_oci::validate_id(id)
        .map(|_| ())
        .map_err(|e| vm_err(format!("invalid container id: {e}")))
}

/// Runs `f` on the share of the VM that `owner` (its sandbox container's
/// record) owns, on a thread of its own in the mount namespace where the
/// share exists: the one pinned for a VM no relay owns (`share_ns`), else
/// the relay's (`relay_pid`). Err if the VM's relay or hypervisor is gone.
///
/// The thread first stops sharing the process's filesystem attributes
/// (`unshare(CLONE_FS)`): the kernel lets no thread of a multi-threaded
/// process (ironcelld) change its mount namespace otherwise. A relay is
/// entered through a pidfd, which names that process and no later one
/// that may get its pid.
fn in_share<T: Send>(owner: &VmState, f: impl FnOnce(&Path) -> Result<T> + Send) -> Result<T> {
    let gone = || vm_err(format!("the VM of pod {} is not running", owner.id));
    let pid = rustix::process::Pid::from_raw(owner.relay_pid).ok_or_else(gone)?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|_| gone())?;
    // Checked once the pidfd holds the process: the pid's process is then
    // the relay, not one that got its pid after it ended.
    if !is_alive(owner.relay_pid, owner.relay_start) {
        return Err(gone());
    }
    let ns: OwnedFd = match &owner.share_ns {
        Some(pin) => share_ns::open_pinned(pin)?.into(),
        None => pidfd,
    };
    let share = owner.run_dir.join(share::SHARE_DIR);
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_FS)
                .and_then(|()| nix::sched::setns(&ns, CloneFlags::CLONE_NEWNS))
                .map_err(|e| {
                    vm_err(format!(
                        "cannot enter the mount namespace of pod {}'s VM: {e}",
                        owner.id
                    ))
                })?;
            f(&share)
        })
        .join()
        .unwrap_or_else(|_| Err(vm_err("the share's thread panicked")))
    })
}

/// Moves the trees under `<share>/<id>/`, one per mount, or nothing on
/// error.
fn add_here(share: &Path, id: &str, mounts: &[ShareMount], trees: Vec<OwnedFd>) -> Result<()> {
    let dir = share.join(id);
    if fs::symlink_metadata(&dir).is_ok() {
        return Err(vm_err(format!(
            "container {id} is in this VM's share already"
        )));
    }
    share::set_writable(share, true)?;
    let added = (|| {
        fs::create_dir(&dir).map_err(|e| vm_err(format!("{}: {e}", dir.display())))?;
        for (m, tree) in mounts.iter().zip(trees) {
            let tree = File::from(tree);
            let is_dir = tree
                .metadata()
                .map_err(|e| vm_err(format!("share entry {}: {e}", m.name)))?
                .is_dir();
            let target = dir.join(&m.name);
            share::make_mount_point(&target, is_dir)?;
            move_mount(
                &tree,
                "",
                rustix::fs::CWD,
                &target,
                MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            )
            .map_err(|e| vm_err(format!("cannot mount share entry {}: {e}", m.name)))?;
            if m.ro {
                share::make_read_only(&target)?;
            }
        }
        Ok(())
    })();
    if added.is_err() {
        detach_all(&dir);
    }
    let _ = share::set_writable(share, false);
    added
}

/// Detaches what is mounted on each entry of `dir` and removes the entries
/// and `dir`; never recursive (an entry still mounted stays).
fn detach_all(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            if fs::remove_dir(&p).is_err() {
                let _ = fs::remove_file(&p);
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

fn remove_here(share: &Path, id: &str) -> Result<()> {
    let dir = share.join(id);
    if fs::symlink_metadata(&dir).is_err() {
        return Ok(());
    }
    share::set_writable(share, true)?;
    detach_all(&dir);
    let _ = share::set_writable(share, false);
    if dir.exists() {
        return Err(vm_err(format!(
            "cannot remove {} from the VM's share",
            dir.display()
        )));
    }
    Ok(())
}

/// Adds container `id`'s `mounts` (host paths, in this process's mount
/// namespace) to the share of the VM `owner` owns. Each is opened here as
/// a detached mount tree (`open_tree(2)`: the host's mount namespace is
/// where containerd mounted the rootfs, after the VM's namespace was
/// made), then moved into the share from the VM's namespace.
pub fn add(owner: &VmState, id: &str, mounts: &[ShareMount]) -> Result<()> {
    check_id(id)?;
    if mounts.len() > MAX_MOUNTS {
        return Err(vm_err(format!(
            "a container in a pod's VM may have at most {MAX_MOUNTS} bind mounts"
        )));
    }
    let mut trees = Vec::with_capacity(mounts.len());
    for m in mounts {
        let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
        if m.recursive {
            flags |= OpenTreeFlags::AT_RECURSIVE;
        }
        let tree = open_tree(rustix::fs::CWD, &m.source, flags)
            .map_err(|e| vm_err(format!("cannot share {}: {e}", m.source.display())))?;
        trees.push(tree);
    }
    in_share(owner, |share| add_here(share, id, mounts, trees))
}

/// Removes container `id` from the share of the VM `owner` owns (a VM
/// gone already took its share with it).
pub fn remove(owner: &VmState, id: &str) -> Result<()> {
    check_id(id)?;
    if !is_alive(owner.relay_pid, owner.relay_start) {
        return Ok(());
    }
    in_share(owner, |share| remove_here(share, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    fn pod_state() -> VmState {
        VmState {
            id: "pod".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: String::new(),
            annotations: Default::default(),
            relay_pid: 4242,
            relay_start: 1,
            run_dir: "/run/x".into(),
            hypervisor: "qemu".into(),
            ready: true,
            guest_pid: 17,
            guest_times: Default::default(),
            agent_timeout_secs: 10,
            pod_network: Some("/var/run/netns/cni-1".into()),
            pod: None,
            host_cgroup: None,
            no_relay: false,
            vm_processes: Vec::new(),
            share_ns: None,
        }
    }

    #[test]
    fn cri_containers_name_their_pod() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"abc"}}"#,
        );
        assert_eq!(pod_of(&s).as_deref(), Some("abc"));
        let s = spec(
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"abc"}}"#,
        );
        assert_eq!(pod_of(&s), None);
        assert_eq!(pod_of(&spec(r#"{"ociVersion":"1.0.2"}"#)), None);
    }

    #[test]
    fn the_pods_namespaces_become_the_pause_containers_in_the_guest() {
        let host = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[
            {"type":"ipc","path":"/proc/4242/ns/ipc"},{"type":"uts","path":"/proc/4242/ns/uts"},
            {"type":"pid","path":"/proc/4242/ns/pid"},{"type":"network","path":"/var/run/netns/cni-1"},
            {"type":"mount"}]}}"#,
        );
        let mut guest = host.clone();
        map_namespaces(&host, &mut guest, "pod", &pod_state()).unwrap();
        let ns = guest
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap();
        let path = |t| {
            ns.iter()
                .find(|n| n.typ() == t)
                .and_then(|n| n.path().clone())
        };
        assert_eq!(
            path(LinuxNamespaceType::Ipc),
            Some("/proc/17/ns/ipc".into())
        );
        assert_eq!(
            path(LinuxNamespaceType::Uts),
            Some("/proc/17/ns/uts".into())
        );
        assert_eq!(
            path(LinuxNamespaceType::Pid),
            Some("/proc/17/ns/pid".into())
        );
        assert_eq!(
            path(LinuxNamespaceType::Network),
            Some("/proc/17/ns/net".into())
        );
        assert_eq!(path(LinuxNamespaceType::Mount), None);
    }

    #[test]
    fn namespaces_of_anything_but_the_pod_are_refused() {
        for other in [
            r#"{"type":"ipc","path":"/proc/1/ns/ipc"}"#,
            r#"{"type":"network","path":"/var/run/netns/other"}"#,
            r#"{"type":"mount","path":"/proc/4242/ns/mnt"}"#,
        ] {
            let host = spec(&format!(
                r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":[{other}]}}}}"#
            ));
            let mut guest = host.clone();
            let e = map_namespaces(&host, &mut guest, "pod", &pod_state())
                .unwrap_err()
                .to_string();
            assert!(e.contains("is not one of pod pod's"), "{e}");
        }
    }

    #[test]
    fn a_pods_containers_share_its_shm() {
        let host = spec(
            r#"{"ociVersion":"1.0.2","mounts":[{"destination":"/dev/shm","type":"bind","source":"/run/c/shm","options":["rbind","ro"]}]}"#,
        );
        let mut guest = spec(
            r#"{"ociVersion":"1.0.2","mounts":[{"destination":"/dev/shm","type":"tmpfs","source":"shm"}]}"#,
        );
        use_pod_shm(&host, &mut guest, "pod1").unwrap();
        let m = &guest.mounts().as_ref().unwrap()[0];
        assert_eq!(
            m.source().as_deref(),
            Some(Path::new("/run/ironcell/pods/pod1/shm"))
        );
        assert_eq!(m.typ().as_deref(), Some("bind"));
        // A container with a tmpfs of its own keeps it.
        let own = spec(
            r#"{"ociVersion":"1.0.2","mounts":[{"destination":"/dev/shm","type":"tmpfs","source":"shm"}]}"#,
        );
        let mut g = own.clone();
        use_pod_shm(&own, &mut g, "pod1").unwrap();
        assert_eq!(g, own);
        // One in the pod's IPC namespace shares the pod's, tmpfs or not.
        let joined = spec(
            r#"{"ociVersion":"1.0.2","mounts":[{"destination":"/dev/shm","type":"tmpfs","source":"shm"}],
                "linux":{"namespaces":[{"type":"ipc","path":"/proc/7/ns/ipc"}]}}"#,
        );
        let mut g = joined.clone();
        use_pod_shm(&joined, &mut g, "pod1").unwrap();
        assert_eq!(
            g.mounts().as_ref().unwrap()[0].source().as_deref(),
            Some(Path::new("/run/ironcell/pods/pod1/shm"))
        );
    }

    /// Whether `path` is a mount point in process `pid`'s mount namespace.
    fn mounted_in(pid: u32, path: &Path) -> bool {
        fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
    }

    /// A temporary directory with a VM's run directory and share directory
    /// in it, and a rootfs to share (its `file` says "from the host").
    fn share_fixture() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("run");
        let share_dir = run_dir.join(share::SHARE_DIR);
        fs::create_dir_all(&share_dir).unwrap();
        let source = dir.path().join("rootfs");
        fs::create_dir(&source).unwrap();
        fs::write(source.join("file"), "from the host\n").unwrap();
        (dir, run_dir, share_dir, source)
    }

    /// The record of a pod's sandbox container whose VM (in `run_dir`)
    /// process `pid` stands for.
    fn owned_by(pid: u32, run_dir: &Path) -> VmState {
        let mut owner = pod_state();
        owner.relay_pid = pid as i32;
        owner.relay_start = ironcell_basics::proc_stat::ProcStat::of(pid as i32)
            .unwrap()
            .start_time;
        owner.run_dir = run_dir.to_path_buf();
        owner
    }

    /// A member's read-only rootfs from `source`.
    fn rootfs_read_only(source: &Path) -> [ShareMount; 1] {
        [ShareMount {
            name: "rootfs".into(),
            source: source.to_path_buf(),
            recursive: false,
            ro: true,
        }]
    }

    /// A member's mounts reach the share in its owner's mount namespace
    /// and no other, and leave it at its removal; a gone owner takes none.
    #[test]
    fn a_members_mounts_go_to_the_owners_mount_namespace_only() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: entering a mount namespace needs root");
            return;
        }
        let (_dir, run_dir, share_dir, source) = share_fixture();
        // The owner: a process whose mount namespace alone has the share.
        let mut owner_process = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o ro share {} && echo ready && exec sleep 100",
                share_dir.display()
            ))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(owner_process.stdout.take().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(ready, "ready\n");
        let pid = owner_process.id();
        let owner = owned_by(pid, &run_dir);
        let mounts = rootfs_read_only(&source);

        add(&owner, "c1", &mounts).unwrap();
        let entry = share_dir.join("c1").join("rootfs");
        assert!(mounted_in(pid, &entry));
        assert!(!mounted_in(std::process::id(), &entry));
        let through_owner =
            Path::new(&format!("/proc/{pid}/root")).join(entry.strip_prefix("/").unwrap());
        assert_eq!(
            fs::read_to_string(through_owner.join("file")).unwrap(),
            "from the host\n"
        );
        assert!(
            fs::write(through_owner.join("new"), "x").is_err(),
            "the entry is writable"
        );
        let twice = add(&owner, "c1", &mounts).unwrap_err().to_string();
        assert!(twice.contains("in this VM's share already"), "{twice}");
        assert!(add(&owner, "../c2", &mounts).is_err());

        remove(&owner, "c1").unwrap();
        assert!(!mounted_in(pid, &entry));
        assert!(!through_owner.parent().unwrap().exists());

        owner_process.kill().unwrap();
        owner_process.wait().unwrap();
        let gone = add(&owner, "c1", &mounts).unwrap_err().to_string();
        assert!(gone.contains("is not running"), "{gone}");
        remove(&owner, "c1").unwrap();
    }

    /// For a VM no relay owns, a member's mounts go to the namespace pinned
    /// for its share, not to its hypervisor's (which ironcell-vmm's jail
    /// makes another), and none once it is unpinned.
    #[test]
    fn a_members_mounts_go_to_the_pinned_namespace_of_a_detached_vm() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: pinning a mount namespace needs root");
            return;
        }
        let (_dir, run_dir, share_dir, source) = share_fixture();
        // The share's namespace, pinned by a maker that then ends.
        share_ns::on_own_thread(|| {
            share_ns::private_pinned_namespace(&run_dir).unwrap();
            nix::mount::mount(
                Some("share"),
                &share_dir,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .unwrap();
        });
        // The hypervisor, in a mount namespace of its own.
        let mut hypervisor = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sleep", "100"])
            .spawn()
            .unwrap();
        let pid = hypervisor.id();
        let mut owner = owned_by(pid, &run_dir);
        owner.share_ns = Some(share_ns::pin_path(&run_dir));
        let mounts = rootfs_read_only(&source);
        let entry = share_dir.join("c1").join("rootfs");
        let pinned_sees = || {
            let pin = share_ns::pin_path(&run_dir);
            share_ns::on_own_thread(|| {
                let ns = share_ns::open_pinned(&pin).unwrap();
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWNS).unwrap();
                fs::read_to_string(entry.join("file")).ok()
            })
        };

        add(&owner, "c1", &mounts).unwrap();
        assert_eq!(pinned_sees().as_deref(), Some("from the host\n"));
        assert!(
            !mounted_in(pid, &entry),
            "the entry went to the hypervisor's"
        );
        assert!(!mounted_in(std::process::id(), &entry));

        remove(&owner, "c1").unwrap();
        assert_eq!(pinned_sees(), None, "the entry outlived its removal");

        share_ns::unpin(&run_dir);
        let unpinned = add(&owner, "c1", &mounts).unwrap_err().to_string();
        assert!(
            unpinned.contains("no mount namespace is pinned"),
            "{unpinned}"
        );
        hypervisor.kill().unwrap();
        hypervisor.wait().unwrap();
    }
}
