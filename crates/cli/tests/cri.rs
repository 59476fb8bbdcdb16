//! Kubernetes through containerd's runc shim (issue 21): containerd 1.7's
//! CRI, driven by a client in this test as the kubelet drives it, with the
//! runtime handler `ironcell-runc`: containerd's own runc shim
//! (io.containerd.runc.v2, from containerd's directory) with this ironcell
//! as its runc binary (`BinaryName`). The same pods run through ironcelld
//! in crates/daemon/tests/cri.rs; both share testutil::kubelet.

mod common;

use common::*;
use ironcell_testutil::cri::{runc_shim_state, start_containerd_with_runc_shim, RUNC_SHIM_HANDLER};
use ironcell_testutil::kubelet::*;

fn through_the_runc_shim(test: &str, what: Pod) {
    if !need_root(test) {
        return;
    }
    let root = tempfile::Builder::new()
        .prefix("icr-")
        .tempdir_in("/tmp")
        .unwrap();
    let cgroup = PodCgroup::new("ironcell-cri-runc");
    let bins = ironcell().parent().unwrap().to_path_buf();
    let Some((c, logs)) = start_containerd_with_runc_shim(bins, root.path(), &ironcell()) else {
        return;
    };
    let _guard = CriGuard(c.socket());
    let marker = unique("kubelet-marker");
    let label = format!("containerd 1.7 + runc shim + ironcell ({test})");
    drive(
        &c,
        RUNC_SHIM_HANDLER,
        &label,
        what,
        root.path(),
        &logs,
        &cgroup,
        &marker,
    );
    assert_nothing_left(&c, &cgroup, &marker, &[runc_shim_state(root.path())]);
}

/// A pod's lifecycle as the kubelet drives it; every call well inside the
/// kubelet's timeouts, and nothing left afterwards.
#[test]
fn cri_pod_lifecycle_through_the_runc_shim() {
    through_the_runc_shim("cri_pod_lifecycle_through_the_runc_shim", Pod::Lifecycle);
}

/// Bidirectional ("rshared") and HostToContainer ("rslave") host-path
/// mounts.
#[test]
fn cri_mount_propagation_through_the_runc_shim() {
    through_the_runc_shim(
        "cri_mount_propagation_through_the_runc_shim",
        Pod::Propagation,
    );
}

/// An ExecSync'd process is confined as the container's init (seccomp,
/// capabilities, no_new_privs, user, cgroups, namespaces, rlimits...).
#[test]
fn cri_exec_is_confined_as_the_init_through_the_runc_shim() {
    through_the_runc_shim(
        "cri_exec_is_confined_as_the_init_through_the_runc_shim",
        Pod::Confinement,
    );
}

/// UpdateContainerResources: containerd's runc shim calls `ironcell update
/// --resources -`, and the new limits reach the container's cgroup.
#[test]
fn cri_update_container_resources_through_the_runc_shim() {
    if cgroup_v2_only() {
        eprintln!(
            "SKIPPED cri_update_container_resources_through_the_runc_shim: reads cgroup v1 files"
        );
        return;
    }
    through_the_runc_shim(
        "cri_update_container_resources_through_the_runc_shim",
        Pod::Update,
    );
}
