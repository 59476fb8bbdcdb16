//! A VM's vCPUs and memory, from its configuration and what the container
//! asks for, the way Kata sizes its sandboxes: the configured `vcpus` and
//! `memory_mib` are the base the guest itself uses (its kernel, the agent),
//! and a container's limits are added on top. The container's limits are
//! also enforced inside the guest by its cgroup, so a container cannot
//! take the base from the agent.
//!
//! - vCPUs: base + ceil(quota / period) of the CPU limit, at most
//!   `max_vcpus` (unset: the host's online CPUs). A CPU limit above the
//!   host's CPUs is no error: the quota still holds inside.
//! - memory: base + the memory limit in MiB (rounded up). A total above
//!   `max_memory_mib` (unset: the host's memory) is refused: the VM could
//!   not hold what the container was promised.

use oci_spec::runtime::Spec;

use crate::config::VmConfig;
use crate::{Result, SandboxError};

const MIB: i64 = 1 << 20;

/// What a VM is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// The host's limits on one VM.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    pub cpus: u32,
    pub memory_mib: u64,
}

impl HostLimits {
    pub fn detect() -> HostLimits {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(u64::MAX, |kib| kib / 1024);
        HostLimits { cpus, memory_mib }
    }
}

/// What a VM holds: a CPU quota and period, and a memory limit in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Limits {
    quota: Option<i64>,
    period: u64,
    memory: i64,
}

/// The limits a VM must hold for `spec`: a CRI pod's sandbox container
/// carries the sum of its containers' limits in annotations (what the
/// kubelet passes in the PodSandboxConfig); any other container, its own.
fn limits(spec: &Spec) -> Limits {
    let annotations = spec.annotations().as_ref();
    let annotation = |k: &str| annotations.and_then(|a| a.get(k));
    let is_pod =
        annotation("io.kubernetes.cri.container-type").map(String::as_str) == Some("sandbox");
    if is_pod {
        let number = |k: &str| annotation(k).and_then(|v| v.trim().parse::<i64>().ok());
        return Limits {
            quota: number("io.kubernetes.cri.sandbox-cpu-quota"),
            period: number("io.kubernetes.cri.sandbox-cpu-period")
                .filter(|p| *p > 0)
                .map_or(100_000, |p| p as u64),
            memory: number("io.kubernetes.cri.sandbox-memory").unwrap_or(0),
        };
    }
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    Limits {
        quota: cpu.and_then(|c| c.quota()),
        period: cpu.and_then(|c| c.period()).unwrap_or(100_000),
        memory: resources
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .unwrap_or(0),
    }
}

/// The size of the VM of a container (or a CRI pod) with `spec`.
pub fn size(config: &VmConfig, spec: &Spec, host: HostLimits) -> Result<Size> {
    let asked = limits(spec);
    let extra_vcpus = match (asked.quota, asked.period) {
        (Some(quota), period) if quota > 0 && period > 0 => {
            (quota as u64).div_ceil(period).min(u32::MAX as u64) as u32
        }
        _ => 0,
    };
    let max_vcpus = match config.max_vcpus {
        0 => host.cpus.clamp(1, 32),
        n => n,
    };
    let vcpus = config
        .vcpus
        .saturating_add(extra_vcpus)
        .min(max_vcpus.max(config.vcpus));

    let limit = asked.memory.max(0);
    let extra_mib = (limit + MIB - 1) / MIB;
    let memory = u64::from(config.memory_mib) + extra_mib as u64;
    let max_memory = match config.max_memory_mib {
        0 => host.memory_mib,
        n => u64::from(n),
    };
    if extra_mib > 0 && memory > max_memory {
        return Err(SandboxError::Vm(format!(
            "the container's memory limit ({extra_mib} MiB) and the VM's base ([vm] memory_mib = \
             {}) come to {memory} MiB, more than a VM here may have ({max_memory} MiB{})",
            config.memory_mib,
            if config.max_memory_mib == 0 {
                ", the host's memory"
            } else {
                ", [vm] max_memory_mib"
            }
        )));
    }
    Ok(Size {
        vcpus,
        memory_mib: memory.min(u32::MAX as u64) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(resources: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","linux":{{"resources":{resources}}}}}"#
        ))
        .unwrap()
    }

    const HOST: HostLimits = HostLimits {
        cpus: 8,
        memory_mib: 16384,
    };

    #[test]
    fn no_limits_is_the_base() {
        let c = VmConfig::default();
        let s = size(&c, &spec("{}"), HOST).unwrap();
        assert_eq!(
            s,
            Size {
                vcpus: 1,
                memory_mib: 256
            }
        );
        let unlimited = spec(r#"{"cpu":{"quota":-1,"period":100000},"memory":{"limit":-1}}"#);
        assert_eq!(size(&c, &unlimited, HOST).unwrap(), s);
    }

    #[test]
    fn limits_are_added_to_the_base() {
        let c = VmConfig::default();
        // 1.5 CPUs are 2 vCPUs; 200 MiB and a byte are 201 MiB.
        let s = size(
            &c,
            &spec(r#"{"cpu":{"quota":150000,"period":100000},"memory":{"limit":209715201}}"#),
            HOST,
        )
        .unwrap();
        assert_eq!(
            s,
            Size {
                vcpus: 3,
                memory_mib: 457
            }
        );
        // No period: the kernel's default, 100 ms.
        let s = size(&c, &spec(r#"{"cpu":{"quota":50000}}"#), HOST).unwrap();
        assert_eq!(s.vcpus, 2);
    }

    #[test]
    fn vcpus_stop_at_the_host_and_memory_beyond_it_is_refused() {
        let c = VmConfig::default();
        let s = size(
            &c,
            &spec(r#"{"cpu":{"quota":6400000,"period":100000}}"#),
            HOST,
        )
        .unwrap();
        assert_eq!(s.vcpus, 8);
        let capped = VmConfig {
            max_vcpus: 3,
            ..VmConfig::default()
        };
        assert_eq!(
            size(&capped, &spec(r#"{"cpu":{"quota":6400000}}"#), HOST)
                .unwrap()
                .vcpus,
            3
        );
        let e = size(&c, &spec(r#"{"memory":{"limit":34359738368}}"#), HOST)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("32768 MiB") && e.contains("the host's memory"),
            "{e}"
        );
        let small = VmConfig {
            max_memory_mib: 512,
            ..VmConfig::default()
        };
        let e = size(&small, &spec(r#"{"memory":{"limit":536870912}}"#), HOST)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_memory_mib"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn a_pods_vm_holds_the_sum_the_kubelet_annotated() {
        let c = VmConfig::default();
        let pod = |annotations: &str| -> Spec {
            serde_json::from_str(&format!(
                r#"{{"ociVersion":"1.0.2","annotations":{{"io.kubernetes.cri.container-type":"sandbox"{annotations}}},
                "linux":{{"resources":{{"memory":{{"limit":1073741824}}}}}}}}"#
            ))
            .unwrap()
        };
        // The pause container's own limit does not count: the pod's does.
        let s = size(
            &c,
            &pod(r#","io.kubernetes.cri.sandbox-memory":"134217728","io.kubernetes.cri.sandbox-cpu-quota":"250000","io.kubernetes.cri.sandbox-cpu-period":"100000""#),
            HOST,
        )
        .unwrap();
        assert_eq!(
            s,
            Size {
                vcpus: 4,
                memory_mib: 384
            }
        );
        // A pod without limits gets the base.
        assert_eq!(
            size(&c, &pod(""), HOST).unwrap(),
            Size {
                vcpus: 1,
                memory_mib: 256
            }
        );
    }
}
