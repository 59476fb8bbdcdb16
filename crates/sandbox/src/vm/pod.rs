//! A pod in one VM: the containers of a CRI pod join the VM its sandbox
//! (pause) container booted.
//!
//! - **Which pod.** containerd's CRI marks each container of a pod with
//!   `io.kubernetes.cri.container-type=container` and the pod's
//!   `io.kubernetes.cri.sandbox-id`: the id of the sandbox container, whose
//!   VM the container joins ([`pod_of`]).
//! - **The share.** A container added to a running VM needs its rootfs and
//!   bind sources under the VM's share, which exists only in the mount
//!   namespace of the VM's relay (`share.rs`). The relay serves a socket in
//!   the VM's run directory ([`serve`]): a member's create opens each host
//!   path as a detached mount tree (`open_tree(2)`, in the host's mount
//!   namespace, where containerd mounted the rootfs after the relay's
//!   namespace was made) and passes the trees over it; the relay moves them
//!   under `<share>/<id>/` (`move_mount(2)`), whence they propagate to the
//!   device process serving the share. A member's delete asks the relay to
//!   detach them again.
//! - **Namespaces.** CRI names the pod's namespaces by the sandbox
//!   container's host pid (`/proc/<pid>/ns/ipc`, `uts`, `net`, and `pid`
//!   with `shareProcessNamespace`); that pid is the sandbox's relay, and in
//!   the guest they are the pause container's ([`map_namespaces`]).

use std::fs::{self, File};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};
use serde::{Deserialize, Serialize};

use super::share::{self, ShareMount};
use super::state::VmState;
use crate::{Result, SandboxError};

/// The relay's socket for adding containers to its VM's share, in the VM's
/// run directory.
pub const SHARE_SOCKET: &str = "share.sock";

/// CRI's annotations on a pod's containers.
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The most host paths one container may share (its rootfs and binds).
const MAX_MOUNTS: usize = 128;
/// The largest request (JSON) the relay reads.
const MAX_REQUEST: usize = 64 * 1024;
/// How long either side waits for the other.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

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

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request {
    /// Adds `<share>/<id>/<name>` for each mount, in the order of the fds
    /// passed with the request.
    Add { id: String, mounts: Vec<Shared> },
    /// Detaches and removes `<share>/<id>`.
    Remove { id: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Shared {
    name: String,
    ro: bool,
}

/// Checks a name under a container's share directory: `rootfs` or
/// `m<N>`, as `share::plan` names them.
fn check_name(name: &str) -> Result<()> {
    let ok = name == "rootfs"
        || name.strip_prefix('m').is_some_and(|n| {
            !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(vm_err(format!("invalid share entry name {name:?}")))
    }
}

fn check_id(id: &str) -> Result<()> {
    ironcell_oci::validate_id(id)
        .map(|_| ())
        .map_err(|e| vm_err(format!("invalid container id: {e}")))
}

/// Serves [`SHARE_SOCKET`] in `run_dir` for the VM whose share is `share`,
/// on a thread of the calling (relay) process, for as long as it lives.
pub fn serve(run_dir: &Path, share: &Path) -> Result<()> {
    let path = run_dir.join(SHARE_SOCKET);
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| vm_err(format!("cannot listen on {}: {e}", path.display())))?;
    let share = share.to_path_buf();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let answer = match handle(&conn, &share) {
                Ok(()) => "ok\n".to_string(),
                Err(e) => format!("err {}\n", e.message().replace('\n', " ")),
            };
            let _ = (&conn).write_all(answer.as_bytes());
        }
    });
    Ok(())
}

/// Reads one request and its fds, and carries it out.
fn handle(conn: &UnixStream, share: &Path) -> Result<()> {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut fds: Vec<OwnedFd> = Vec::new();
    let n = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_MOUNTS]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| vm_err(format!("share request: {e}")))?;
        for c in msg
            .cmsgs()
            .map_err(|e| vm_err(format!("share request: {e}")))?
        {
            if let ControlMessageOwned::ScmRights(received) = c {
                for fd in received {
                    // SAFETY: the kernel just installed `fd` in this process
                    // for this message; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        msg.bytes
    };
    buf.truncate(n);
    // The rest of the request, up to the client's end of writing.
    let room = MAX_REQUEST.saturating_sub(buf.len()) as u64 + 1;
    conn.take(room)
        .read_to_end(&mut buf)
        .map_err(|e| vm_err(format!("share request: {e}")))?;
    if buf.len() > MAX_REQUEST {
        return Err(vm_err("share request: too long"));
    }
    let request: Request =
        serde_json::from_slice(&buf).map_err(|e| vm_err(format!("share request: {e}")))?;
    match request {
        Request::Add { id, mounts } => add_here(share, &id, &mounts, fds),
        Request::Remove { id } => {
            check_id(&id)?;
            remove_here(share, &id)
        }
    }
}

/// Moves the trees `fds` under `<share>/<id>/`, or nothing on error.
fn add_here(share: &Path, id: &str, mounts: &[Shared], fds: Vec<OwnedFd>) -> Result<()> {
    check_id(id)?;
    if mounts.is_empty() || mounts.len() != fds.len() {
        return Err(vm_err(format!(
            "share request: {} mounts with {} trees",
            mounts.len(),
            fds.len()
        )));
    }
    for (i, m) in mounts.iter().enumerate() {
        check_name(&m.name)?;
        if mounts[..i].iter().any(|o| o.name == m.name) {
            return Err(vm_err(format!("share request: {} twice", m.name)));
        }
    }
    let dir = share.join(id);
    if fs::symlink_metadata(&dir).is_ok() {
        return Err(vm_err(format!(
            "container {id} is in this VM's share already"
        )));
    }
    share::set_writable(share, true)?;
    let added = (|| {
        fs::create_dir(&dir).map_err(|e| vm_err(format!("{}: {e}", dir.display())))?;
        for (m, fd) in mounts.iter().zip(fds) {
            let tree = File::from(fd);
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

/// Sends `request` with `fds` to the relay of the VM in `run_dir`, and
/// reads its answer.
fn ask(run_dir: &Path, request: &Request, fds: &[RawFd]) -> Result<()> {
    let path = run_dir.join(SHARE_SOCKET);
    let conn = UnixStream::connect(&path).map_err(|e| {
        vm_err(format!(
            "the pod's VM does not take containers ({}: {e})",
            path.display()
        ))
    })?;
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let body = serde_json::to_vec(request).map_err(|e| vm_err(e.to_string()))?;
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(&body)],
        cmsgs,
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| vm_err(format!("share request: {e}")))?;
    (&conn)
        .write_all(&body[sent..])
        .and_then(|()| conn.shutdown(std::net::Shutdown::Write))
        .map_err(|e| vm_err(format!("share request: {e}")))?;
    let mut answer = String::new();
    (&conn)
        .take(4096)
        .read_to_string(&mut answer)
        .map_err(|e| vm_err(format!("share answer: {e}")))?;
    let answer = answer.trim_end();
    if answer == "ok" {
        return Ok(());
    }
    Err(vm_err(answer.strip_prefix("err ").map_or_else(
        || format!("the pod's VM did not answer ({answer:?})"),
        str::to_string,
    )))
}

/// Adds container `id`'s `mounts` (host paths, in this process's mount
/// namespace) to the share of the VM whose run directory is `run_dir`.
pub fn add(run_dir: &Path, id: &str, mounts: &[ShareMount]) -> Result<()> {
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
    let request = Request::Add {
        id: id.to_string(),
        mounts: mounts
            .iter()
            .map(|m| Shared {
                name: m.name.clone(),
                ro: m.ro,
            })
            .collect(),
    };
    let fds: Vec<RawFd> = trees.iter().map(|t| t.as_raw_fd()).collect();
    ask(run_dir, &request, &fds)
}

/// Removes container `id` from the share of the VM whose run directory is
/// `run_dir`.
pub fn remove(run_dir: &Path, id: &str) -> Result<()> {
    ask(run_dir, &Request::Remove { id: id.to_string() }, &[])
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

    #[test]
    fn share_entry_names_are_the_plans() {
        for ok in ["rootfs", "m0", "m12"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "m", "../x", "m1/..", "rootfs2", "mx", "m12345"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
