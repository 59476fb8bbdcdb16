//! VM pods through containerd 1.7's CRI (bench/README.md): a private
//! containerd 1.7 with the runtime handlers `ironcell-vm` (a VM a pod,
//! QEMU with TCG here) and `ironcell` (a pause container, the namespace
//! sandbox), both pods on one CNI bridge network.
//!
//! 1. Start latency, handlers taking turns: RunPodSandbox, CreateContainer
//!    and StartContainer of `/bin/true`, until ContainerStatus says it
//!    exited (timed); the pod's stop and removal (not timed).
//! 2. ExecSync latency, handlers taking turns: ExecSync of `true` in a
//!    running container of each handler (a VM pod's runs in the guest
//!    through the agent, with no host process for it).
//! 3. Host memory per VM pod at 1, 5 and 10 running pods (one `sleep`
//!    container each): the PSS (`/proc/PID/smaps_rollup`) of what ironcell
//!    runs on the host (ironcelld and its keeper, the relays, the device
//!    process serving each VM's virtio-fs and vsock), and of QEMU apart.
//!    The guest memory a device process maps (vhost-user shares the VM's
//!    RAM, a memfd, with it) is reported beside: those are the VM's pages,
//!    whose PSS is split between QEMU and the device process.
//!
//!     cargo run --release -p ironcelld --example cri_vm_bench -- [--runs N] [--pods 1,5,10]
//!
//! Needs root, `make setup` (containerd 1.7, QEMU), `make image guest`.

use std::path::Path;
use std::time::{Duration, Instant};

use ironcell_testutil::cri::{
    channel, container_config, interleave, pod_config, print_latency_table, run_container,
    start_containerd_with, vm_handler_config, CniBridge, Cri, VM_HANDLER,
};
use ironcell_testutil::vm::{qemu_config, qemu_guest};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

const HANDLERS: [&str; 2] = [VM_HANDLER, "ironcell"];

/// A pod named `name` on the CNI network.
fn pod(name: &str, logs: &Path) -> PodSandboxConfig {
    let mut pod = pod_config(name, logs);
    let ns = pod
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .expect("pod_config sets namespace options");
    ns.network = NamespaceMode::Pod as i32;
    pod
}

/// RunPodSandbox, CreateContainer and StartContainer of `command`; returns
/// the pod's and the container's ids.
async fn start(
    rt: &mut RuntimeServiceClient<Channel>,
    handler: &str,
    name: &str,
    command: &[&str],
    logs: &Path,
) -> Result<(String, String), String> {
    let pod = pod(name, logs);
    let pod_id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox: {e}"))?
        .into_inner()
        .pod_sandbox_id;
    let made = run_container(rt, &pod_id, &pod, container_config("c", command)).await;
    match made {
        Ok(id) => Ok((pod_id, id)),
        Err(e) => {
            remove(rt, &pod_id).await;
            Err(e)
        }
    }
}

async fn remove(rt: &mut RuntimeServiceClient<Channel>, pod_id: &str) {
    let _ = rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await;
    let _ = rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await;
}

/// One pod with a `/bin/true` container, from RunPodSandbox to the
/// container's exit, in milliseconds.
async fn one(
    rt: &mut RuntimeServiceClient<Channel>,
    handler: &str,
    n: usize,
    logs: &Path,
) -> Result<f64, String> {
    let began = Instant::now();
    let (pod_id, id) = start(
        rt,
        handler,
        &format!("lat-{handler}-{n}"),
        &["/bin/true"],
        logs,
    )
    .await?;
    let result = ironcell_testutil::cri::wait_exited(rt, &id, Duration::from_secs(120))
        .await
        .map(|()| began.elapsed().as_secs_f64() * 1000.0);
    remove(rt, &pod_id).await;
    result
}

/// ExecSync of `true` in container `id`, in milliseconds.
async fn exec_true(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> Result<f64, String> {
    let began = Instant::now();
    let done = rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["true".into()],
            timeout: 60,
        })
        .await
        .map_err(|e| format!("ExecSync: {e}"))?
        .into_inner();
    if done.exit_code != 0 {
        return Err(format!("ExecSync of true: exit code {}", done.exit_code));
    }
    Ok(began.elapsed().as_secs_f64() * 1000.0)
}

/// The VM handler's median over the namespace handler's.
fn print_ratio(medians: &[f64]) {
    if let [vm, namespace] = medians {
        println!(
            "ratio of medians {VM_HANDLER}/ironcell: {:.1}x",
            vm / namespace
        );
    }
}

fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The PSS (KiB) of process `pid`: its own mappings, and the shared memfd
/// mappings (a device process's view of the guest's RAM).
fn pss_split_kib(pid: i32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut own, mut guest, mut in_guest) = (0, 0, false);
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 5 && fields[0].contains('-') && fields[1].len() == 4 {
            in_guest =
                fields[1].ends_with('s') && fields.get(5).is_some_and(|n| n.starts_with("/memfd:"));
            continue;
        }
        if let Some(v) = line.strip_prefix("Pss:") {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if in_guest {
                guest += kib;
            } else {
                own += kib;
            }
        }
    }
    (own, guest)
}

/// The PSS (KiB) of ironcell's host processes for the daemon at `root`
/// whose VMs run under `vm_dir`.
struct HostMemory {
    daemon: u64,
    relays: u64,
    relay_count: usize,
    /// The device processes' own memory, and the guest memory they map.
    devices: u64,
    devices_guest: u64,
    qemu: u64,
}

fn host_memory(root: &Path, vm_dir: &Path) -> HostMemory {
    let daemon: u64 = ironcell_testutil::ironcelld_processes(root, true)
        .into_iter()
        .map(pss_kib)
        .sum();
    let relays: Vec<i32> = ironcell_testutil::processes_with(&format!("--root {}", root.display()))
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .unwrap_or_default()
                .split('\0')
                .nth(1)
                == Some("helper")
        })
        .collect();
    let marker = vm_dir.display().to_string();
    let (mut devices, mut devices_guest, mut qemu) = (0, 0, 0);
    for p in ironcell_testutil::processes_with(&marker) {
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        if comm.starts_with("qemu") {
            qemu += pss_kib(p);
        } else if !relays.contains(&p) {
            let (own, guest) = pss_split_kib(p);
            devices += own;
            devices_guest += guest;
        }
    }
    HostMemory {
        daemon,
        relays: relays.iter().map(|p| pss_kib(*p)).sum(),
        relay_count: relays.len(),
        devices,
        devices_guest,
        qemu,
    }
}

fn main() {
    let (mut runs, mut counts, mut settle) = (5usize, vec![1usize, 5, 10], 15u64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--pods" => {
                counts = args
                    .next()
                    .map(|v| v.split(',').map(|n| n.parse().expect("--pods 1,5,10")).collect())
                    .expect("--pods 1,5,10")
            }
            "--settle" => settle = args.next().and_then(|v| v.parse().ok()).expect("--settle S"),
            other => panic!(
                "unknown argument {other} (usage: cri_vm_bench [--runs N] [--pods 1,5,10] [--settle S])"
            ),
        }
    }
    let exe = std::env::current_exe().unwrap();
    let bins = exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf();
    let Some(guest) = qemu_guest("cri_vm_bench") else {
        std::process::exit(1);
    };
    let Some(net) = CniBridge::new("cri_vm_bench") else {
        std::process::exit(1);
    };
    let root = tempfile::Builder::new()
        .prefix("icd-vmbench-")
        .tempdir_in("/tmp")
        .unwrap();
    let guard = ironcell_testutil::DaemonGuard(root.path().to_path_buf());
    let vm_dir = tempfile::Builder::new()
        .prefix("icvmbench-")
        .tempdir_in("/tmp")
        .unwrap();
    let config = qemu_config(vm_dir.path(), &guest, "memory_mib = 256");
    let cri = Cri::V17 { sandbox_api: false };
    let Some((c, logs)) = start_containerd_with(
        bins,
        root.path(),
        cri,
        vm_handler_config(cri) + &net.config(cri),
        vec![("IRONCELL_CONFIG".into(), config.into_os_string())],
    ) else {
        eprintln!("cri_vm_bench: needs root and containerd 1.7 (make setup)");
        std::process::exit(1);
    };
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut memory, mut execs) = (Vec::new(), Vec::new());
    let mut results = tokio.block_on(async {
        let mut rt = RuntimeServiceClient::new(channel(c.socket()).await);
        let results = interleave(
            "cri_vm_bench",
            &HANDLERS,
            runs,
            async |h: &str, n: usize| one(&mut rt, h, n, &logs).await,
        )
        .await;
        // One running container a handler, for the execs.
        let mut running = Vec::new();
        for h in HANDLERS {
            match start(
                &mut rt,
                h,
                &format!("exec-{h}"),
                &["sleep", "100000"],
                &logs,
            )
            .await
            {
                Ok((pod_id, id)) => running.push((pod_id, id)),
                Err(e) => eprintln!("cri_vm_bench: a pod for execs, {h}: {e}"),
            }
        }
        let ids: Vec<String> = running.iter().map(|(_, id)| id.clone()).collect();
        execs = if ids.len() == HANDLERS.len() {
            interleave(
                "cri_vm_bench exec",
                &HANDLERS,
                runs * 4,
                async |h: &str, _: usize| {
                    let i = HANDLERS.iter().position(|x| *x == h).unwrap();
                    exec_true(&mut rt, &ids[i]).await
                },
            )
            .await
        } else {
            Vec::new()
        };
        for (pod_id, _) in &running {
            remove(&mut rt, pod_id).await;
        }
        let mut pods = Vec::new();
        for &count in &counts {
            while pods.len() < count {
                let name = format!("mem-{}", pods.len());
                match start(&mut rt, VM_HANDLER, &name, &["sleep", "100000"], &logs).await {
                    Ok((pod_id, _)) => pods.push(pod_id),
                    Err(e) => {
                        eprintln!("cri_vm_bench: VM pod {name}: {e}");
                        break;
                    }
                }
            }
            if pods.len() < count {
                break;
            }
            tokio::time::sleep(Duration::from_secs(settle)).await;
            memory.push((count, host_memory(root.path(), vm_dir.path())));
        }
        for p in pods {
            remove(&mut rt, &p).await;
        }
        results
    });
    let medians = print_latency_table(
        "CRI pod + container (/bin/true) through containerd 1.7 on a CNI bridge, start to exit, interleaved",
        &HANDLERS,
        &mut results,
    );
    print_ratio(&medians);
    if !execs.is_empty() {
        print_ratio(&print_latency_table(
            "CRI ExecSync of `true` in a running container, interleaved",
            &HANDLERS,
            &mut execs,
        ));
    }
    println!(
        "\nHost memory of running VM pods (one `sleep` container each), PSS after {settle} s idle\n"
    );
    println!(
        "| VM pods | ironcell per pod KiB | ironcelld + keeper | relays (count) | device processes | guest memory they map | QEMU per pod KiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (count, m) in &memory {
        let n = *count as u64;
        println!(
            "| {count} | {} | {} | {} ({}) | {} | {} | {} |",
            (m.daemon + m.relays + m.devices) / n,
            m.daemon,
            m.relays,
            m.relay_count,
            m.devices,
            m.devices_guest,
            m.qemu / n
        );
    }
    drop(c);
    drop(guard);
    drop(net);
}
