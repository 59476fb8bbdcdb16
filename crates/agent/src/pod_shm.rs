//! A pod's `/dev/shm` in the guest: CRI gives every container of a pod
//! the pod's shm (a bind of one directory), and processes of different
//! containers share POSIX shared memory through it. In a VM the host
//! names it as a bind from `<POD_SHM_ROOT>/<pod id>/shm`, which the agent
//! that is the guest's PID 1 makes a tmpfs of in its own mount namespace
//! when a container first names it, and removes with the pod's sandbox
//! container (the container whose id is the pod's).

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

use crate::AgentError;
use ironcell_protocol::check_id;

/// Where the pods' shm directories are in the guest.
pub const POD_SHM_ROOT: &str = "/run/ironcell/pods";

/// The tmpfs's options: /dev/shm as engines make it, 64 MiB.
const SHM_OPTIONS: &str = "mode=1777,size=65536k";

/// The pod id of a bind source naming a pod's shm, checked; None for any
/// other source.
fn pod_of(source: &Path) -> Result<Option<String>, AgentError> {
    let Ok(rest) = source.strip_prefix(POD_SHM_ROOT) else {
        return Ok(None);
    };
    let parts: Vec<_> = rest.components().collect();
    match parts.as_slice() {
        [std::path::Component::Normal(id), std::path::Component::Normal(shm)] if *shm == "shm" => {
            let id = id.to_string_lossy().into_owned();
            check_id("pod id", &id)?;
            Ok(Some(id))
        }
        _ => Err(AgentError::Invalid(format!(
            "invalid pod shm source {}",
            source.display()
        ))),
    }
}

fn dir(pod: &str) -> PathBuf {
    Path::new(POD_SHM_ROOT).join(pod).join("shm")
}

/// Makes the tmpfs of every pod shm the spec binds, where it is missing.
pub fn prepare(spec: &Spec) -> Result<(), AgentError> {
    for m in spec.mounts().iter().flatten() {
        let Some(source) = m.source().as_deref() else {
            continue;
        };
        let Some(pod) = pod_of(source)? else {
            continue;
        };
        let shm = dir(&pod);
        if shm.is_dir() {
            continue;
        }
        fs::create_dir_all(&shm)
            .map_err(AgentError::io(format!("cannot create {}", shm.display())))?;
        mount(
            Some("shm"),
            &shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(SHM_OPTIONS),
        )
        .map_err(|e| {
            AgentError::io(format!("cannot mount the shm of pod {pod}"))(std::io::Error::from(e))
        })?;
    }
    Ok(())
}

/// Removes the shm of pod `id` (the deleted container's id), if any.
pub fn remove(id: &str) {
    let shm = dir(id);
    if shm.is_dir() {
        let _ = umount2(&shm, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&shm);
        let _ = fs::remove_dir(Path::new(POD_SHM_ROOT).join(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pods_shm_is_named() {
        assert_eq!(
            pod_of(Path::new("/run/ironcell/pods/abc/shm")).unwrap(),
            Some("abc".to_string())
        );
        assert_eq!(pod_of(Path::new("/run/ironcell/share/x/m1")).unwrap(), None);
        for bad in [
            "/run/ironcell/pods/abc",
            "/run/ironcell/pods/abc/shm/x",
            "/run/ironcell/pods/../shm",
            "/run/ironcell/pods/abc/other",
        ] {
            assert!(pod_of(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
