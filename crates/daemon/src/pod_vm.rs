//! A pod in a VM made through containerd's sandbox API (2.x's sandboxer,
//! 1.7's shim-side sandbox API): no pause container comes, so the daemon
//! makes the pod's first container itself. It is a vm container whose one
//! process is the guest agent's own binary run as `pause`
//! (`ironcell-agent pause`): the holder of the pod's namespaces in the
//! guest. Made with the sandbox library as containerd's pause container
//! would be (a helper job under the keeper, the VM's processes staying the
//! keeper's), it is the pod's sandbox container: the pod's containers join
//! its VM (`ironcell_sandbox::vm::pod`), and the pid the pod reports is its
//! hypervisor's, from which containerd builds the containers' namespace
//! paths. The holder's end stops the VM, as a pause container's ends its
//! pod.
//!
//! Its bundle (`<root>/vm-pods/<ns>/<id>/`) is written from the pod's
//! PodSandboxConfig: hostname, sysctls, cgroup, resources (the VM's size)
//! and which namespaces are the host's (refused by the vm sandbox, as for
//! a pause container). Its rootfs is an empty read-only directory; the
//! agent's binary is bound in from the guest image's directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ironcell_sandbox::{Kind, Sandboxes, VmSandbox};
use serde_json::json;

use crate::claim;
use crate::error::TaskError;
use crate::helper::{self, HelperStdio, Job};
use crate::keeper::Keeper;
use crate::pod_config::PodConfig;
use crate::reaper::Reaper;

/// The agent's binary in the guest image's directory, beside its
/// initramfs (scripts/build-guest-image.sh puts it there).
const AGENT_BINARY: &str = "ironcell-agent";
/// Where the holder's rootfs has the agent's binary.
const HOLDER_PATH: &str = "/ironcell-agent";
/// The holder's pid file and claim in its bundle.
const PID_FILE: &str = "holder.pid";
const CLAIM: &str = "creating.json";
const ABANDONED: &str = "abandoned.json";
/// How long a removal waits for a helper still booting the pod's VM.
const HELPER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs a call of the sandbox library (which blocks) on the blocking pool.
async fn on_sandboxes<T: Send + 'static>(
    root: &Path,
    f: impl FnOnce(&Sandboxes) -> Result<T, TaskError> + Send + 'static,
) -> Result<T, TaskError> {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || f(&Sandboxes::new(&root, false)))
        .await
        .map_err(|e| internal(format!("internal error: {e}")))?
}

fn internal(what: impl std::fmt::Display) -> TaskError {
    TaskError::Internal(what.to_string())
}

/// A VM pod's holder: its bundle, and the state root its container is in
/// (that of the namespace's tasks, where the pod's containers look for
/// their pod's VM).
#[derive(Debug, Clone, PartialEq)]
pub struct VmHolder {
    pub bundle: PathBuf,
    pub state_root: PathBuf,
}

impl VmHolder {
    pub fn new(root: &Path, ns: &str, id: &str) -> VmHolder {
        VmHolder {
            bundle: root.join("vm-pods").join(ns).join(id),
            state_root: root.join("containers").join(ns),
        }
    }

    /// Writes the holder's bundle for pod `id`.
    pub fn write_bundle(&self, id: &str, netns: &str, config: &PodConfig) -> Result<(), TaskError> {
        let agent = agent_binary()?;
        let rootfs = self.bundle.join("rootfs");
        let made = std::fs::create_dir_all(&rootfs)
            .and_then(|()| {
                for dir in ["proc", "dev", "sys"] {
                    std::fs::create_dir_all(rootfs.join(dir))?;
                }
                std::fs::write(rootfs.join(&HOLDER_PATH[1..]), b"")
            })
            .and_then(|()| {
                let spec = holder_spec(id, netns, config, &agent);
                let text = serde_json::to_vec_pretty(&spec).map_err(std::io::Error::other)?;
                std::fs::write(self.bundle.join("config.json"), text)?;
                std::fs::write(self.bundle.join(CLAIM), b"{}")
            });
        made.map_err(|e| {
            self.remove_bundle();
            internal(format!(
                "sandbox {id}: cannot write the pod's bundle {}: {e}",
                self.bundle.display()
            ))
        })
    }

    pub fn remove_bundle(&self) {
        let _ = std::fs::remove_dir_all(&self.bundle);
    }

    /// Boots the pod's VM with the holder running in it; returns the
    /// hypervisor's pid (the keeper's child), watched through `reaper`, and
    /// the keeper generation it was made under.
    pub async fn start(
        &self,
        id: &str,
        keeper: &Keeper,
        reaper: &Arc<Reaper>,
        exe: &Path,
    ) -> Result<(i32, u64), TaskError> {
        let pid_file = self.bundle.join(PID_FILE);
        let job = Job::Create {
            root: self.state_root.clone(),
            id: id.to_string(),
            bundle: self.bundle.clone(),
            claim: self.bundle.join(CLAIM),
            pid_file: pid_file.clone(),
            console_socket: None,
            systemd_cgroup: false,
            sandbox: Some(Kind::Vm),
            detach_vm: true,
        };
        let none = HelperStdio {
            stdin: None,
            stdout: None,
            stderr: None,
        };
        let generation = helper::run(keeper, reaper, exe, &job, none)
            .await
            .map_err(|e| internal(format!("sandbox {id}: {e:#}")))?;
        let Some(pid) = helper::read_pid_file(&pid_file) else {
            self.delete(id).await;
            return Err(internal(format!(
                "sandbox {id}: no pid in {} after the VM was made",
                pid_file.display()
            )));
        };
        reaper.expect(pid, generation);
        let owned = id.to_string();
        let started = on_sandboxes(&self.state_root, move |s| {
            s.owner(&owned)
                .and_then(|s| s.start(&owned))
                .map_err(TaskError::from)
        })
        .await;
        if let Err(e) = started {
            self.delete(id).await;
            return Err(e);
        }
        Ok((pid, generation))
    }

    /// Stops the pod's VM once its holder ends, as a pause container's end
    /// ends its pod (a container sharing the pod's PID namespace can end it
    /// with SIGTERM, as it could a pause container): on a thread of its own,
    /// waiting on the agent for as long as the VM runs. The VM's end then
    /// ends the pod (its pid is the hypervisor's). A relay that owns the VM
    /// (a pod an earlier daemon made with one) does this itself.
    pub fn stop_vm_with_holder(&self, id: &str) {
        let (root, owned) = (self.state_root.clone(), id.to_string());
        let watcher = std::thread::Builder::new()
            .name("holder-wait".into())
            .spawn(move || {
                let id = owned;
                let vm = VmSandbox::new(root, None);
                if !vm.owns_detached_vm(&id) {
                    return;
                }
                // An error: the VM ended, which ends the pod already.
                if let Ok(status) = vm.wait_init_exit(&id) {
                    tracing::info!(%id, status, "the pod's holder ended: stopping its VM");
                    if let Err(e) = vm.stop_vm(&id) {
                        tracing::warn!(%id, error = %e, "cannot stop the pod's VM");
                    }
                }
            });
        if let Err(e) = watcher {
            tracing::warn!(%id, error = %e, "cannot watch the pod's holder");
        }
    }

    /// Ends the pod: a VM no relay owns is stopped; a relay's holder (a pod
    /// an earlier daemon made with one) is asked to end (the relay then
    /// shuts the VM down). False when neither could be done.
    pub async fn kill(&self, id: &str) -> bool {
        let (owned, root) = (id.to_string(), self.state_root.clone());
        on_sandboxes(&self.state_root, move |s| {
            let vm = VmSandbox::new(root, None);
            if vm.owns_detached_vm(&owned) {
                return vm.stop_vm(&owned).map_err(TaskError::from);
            }
            s.owner(&owned)
                .and_then(|s| s.kill(&owned, libc::SIGKILL, false))
                .map_err(TaskError::from)
        })
        .await
        .is_ok()
    }

    /// Removes the holder's container (its VM, share and state) and its
    /// bundle.
    pub async fn delete(&self, id: &str) {
        let _claim = self.remove_vm(id).await;
        self.remove_bundle();
    }

    /// Removes what a start cut off by a daemon's death made (the holder's
    /// container, its VM), and renews the start's claim: the bundle is
    /// ready for the next start.
    pub async fn discard_start(&self, id: &str) -> Result<(), TaskError> {
        let claim = self.remove_vm(id).await;
        std::fs::write(self.bundle.join(CLAIM), b"{}")
            .and_then(
                |()| match std::fs::remove_file(self.bundle.join(ABANDONED)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                },
            )
            .map_err(|e| {
                internal(format!(
                    "sandbox {id}: cannot renew the claim in {}: {e}",
                    self.bundle.display()
                ))
            })?;
        drop(claim);
        Ok(())
    }

    /// Removes the holder's container (its VM, share, tap and state), if
    /// it exists. A start cut short may have left its helper booting the
    /// VM: what it makes is removed once it is done (`claim.rs`). Returns
    /// the claim taken over, locked until dropped.
    pub async fn remove_vm(&self, id: &str) -> Option<claim::TakenOver> {
        let claim = self.bundle.join(CLAIM);
        let taken = claim::take_over(&claim, &self.bundle.join(ABANDONED), HELPER_WAIT).await;
        let taken = match taken {
            Ok(t) => {
                if t.timed_out {
                    tracing::warn!(id, "a helper still boots the VM of the pod being removed");
                }
                Some(t)
            }
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot take over the pod's claim");
                None
            }
        };
        let owned = id.to_string();
        let deleted = on_sandboxes(&self.state_root, move |s| {
            s.remove(&owned).map_err(TaskError::from)
        })
        .await;
        if let Err(e) = deleted {
            tracing::warn!(id, error = %e, "cannot remove the pod's VM");
        }
        taken
    }

    /// Whether `pid` stands for pod `id` on the host: its holder's relay
    /// (by its command line, which names the bundle), or the hypervisor of
    /// a VM no relay owns (by the holder's record and its start time). A
    /// recorded pid whose process ended while no daemon watched may have
    /// been reused.
    pub fn stands_for_pod(&self, id: &str, pid: i32) -> bool {
        let mark = format!("\0--bundle\0{}\0", self.bundle.display());
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.windows(mark.len()).any(|w| w == mark.as_bytes()))
            || VmSandbox::new(self.state_root.clone(), None).is_hypervisor_of(id, pid)
    }
}

/// The agent's binary of the guest image the configuration names.
fn agent_binary() -> Result<PathBuf, TaskError> {
    let config = ironcell_sandbox::config::Config::load(None)
        .map_err(|e| TaskError::FailedPrecondition(e.to_string()))?;
    let initrd = std::fs::canonicalize(&config.vm.initrd).map_err(|e| {
        TaskError::FailedPrecondition(format!(
            "the guest's initramfs {}: {e}",
            config.vm.initrd.display()
        ))
    })?;
    let agent = initrd.with_file_name(AGENT_BINARY);
    if !agent.is_file() {
        return Err(TaskError::FailedPrecondition(format!(
            "{} is missing: a VM pod's holder is the guest image's agent \
             (scripts/build-guest-image.sh puts it beside the initramfs)",
            agent.display()
        )));
    }
    Ok(agent)
}

/// The holder's OCI spec: what containerd's CRI gives a pause container,
/// from the same PodSandboxConfig.
fn holder_spec(id: &str, netns: &str, config: &PodConfig, agent: &Path) -> serde_json::Value {
    let mut namespaces = vec![json!({"type": "mount"}), json!({"type": "uts"})];
    if !config.host_pid {
        namespaces.push(json!({"type": "pid"}));
    }
    if !config.host_ipc {
        namespaces.push(json!({"type": "ipc"}));
    }
    if !config.host_network && !netns.is_empty() {
        namespaces.push(json!({"type": "network", "path": netns}));
    }
    let mut annotations = serde_json::Map::new();
    for (k, v) in [
        ("io.kubernetes.cri.container-type", "sandbox".to_string()),
        ("io.kubernetes.cri.sandbox-id", id.to_string()),
        ("io.ironcell.sandbox", "vm".to_string()),
    ] {
        annotations.insert(k.into(), v.into());
    }
    for (k, v) in [
        ("io.kubernetes.cri.sandbox-memory", config.memory),
        ("io.kubernetes.cri.sandbox-cpu-quota", config.cpu_quota),
        ("io.kubernetes.cri.sandbox-cpu-period", config.cpu_period),
    ] {
        if v > 0 {
            annotations.insert(k.into(), v.to_string().into());
        }
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "sysctl": config.sysctls,
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    });
    if !config.cgroup_parent.is_empty() {
        linux["cgroupsPath"] = format!("{}/{id}", config.cgroup_parent).into();
    }
    json!({
        "ociVersion": "1.1.0",
        "process": {
            "user": {"uid": 65535, "gid": 65535},
            "args": [HOLDER_PATH, "pause"],
            "env": ["PATH=/"],
            "cwd": "/",
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": config.hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": HOLDER_PATH, "type": "bind", "source": agent,
             "options": ["rbind", "ro", "nosuid", "nodev"]},
        ],
        "annotations": annotations,
        "linux": linux,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holders_spec_follows_the_pods_config() {
        let config = PodConfig {
            cgroup_parent: "/kubepods/pod1".into(),
            hostname: "web".into(),
            sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
            memory: 256 << 20,
            cpu_quota: 100_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        let spec = holder_spec("p1", "/run/netns/cni-1", &config, Path::new("/a/agent"));
        let spec: oci_spec::runtime::Spec = serde_json::from_value(spec).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let kinds: Vec<String> = linux
            .namespaces()
            .iter()
            .flatten()
            .map(|n| format!("{:?}:{:?}", n.typ(), n.path()))
            .collect();
        assert!(
            kinds.contains(&"Network:Some(\"/run/netns/cni-1\")".to_string()),
            "{kinds:?}"
        );
        assert_eq!(kinds.len(), 5, "{kinds:?}");
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/kubepods/pod1/p1"))
        );
        assert_eq!(spec.hostname().as_deref(), Some("web"));
        let a = spec.annotations().as_ref().unwrap();
        assert_eq!(a["io.kubernetes.cri.container-type"], "sandbox");
        assert_eq!(
            a["io.kubernetes.cri.sandbox-memory"],
            (256u64 << 20).to_string()
        );
        assert_eq!(
            spec.process().as_ref().unwrap().args().as_ref().unwrap(),
            &["/ironcell-agent", "pause"]
        );

        // The host's namespaces are left out, for the vm sandbox to refuse.
        let host = PodConfig {
            host_network: true,
            host_pid: true,
            ..Default::default()
        };
        let spec = holder_spec("p1", "/run/netns/cni-1", &host, Path::new("/a/agent"));
        let text = spec["linux"]["namespaces"].to_string();
        assert!(!text.contains("network") && !text.contains("pid"), "{text}");
        assert!(spec["linux"].get("cgroupsPath").is_none());
    }
}
