//! A container's cgroup statistics in the form containerd's `ctr task
//! metrics` and the CRI's stats read: `io.containerd.cgroups.v1.Metrics` on
//! a cgroup v1 host, `io.containerd.cgroups.v2.Metrics` on cgroup v2.

use std::path::Path;

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use ironcell_container::stats::Stats;

/// Whether this host mounts the unified (v2) hierarchy at /sys/fs/cgroup.
pub fn unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

pub fn to_any(stats: &Stats, unified: bool) -> Any {
    if unified {
        Any {
            type_url: "io.containerd.cgroups.v2.Metrics".into(),
            value: v2_metrics(stats).write_to_bytes().unwrap_or_default(),
            ..Default::default()
        }
    } else {
        Any {
            type_url: "io.containerd.cgroups.v1.Metrics".into(),
            value: v1_metrics(stats).write_to_bytes().unwrap_or_default(),
            ..Default::default()
        }
    }
}

fn stat(stats: &Stats, key: &str) -> u64 {
    stats.memory.stats.get(key).copied().unwrap_or(0)
}

fn v1_metrics(s: &Stats) -> v1::Metrics {
    let entry = |d: &ironcell_container::stats::MemoryData| {
        MessageField::some(v1::MemoryEntry {
            limit: d.limit,
            usage: d.usage,
            max: d.max_usage,
            failcnt: d.fail_count,
            ..Default::default()
        })
    };
    v1::Metrics {
        pids: MessageField::some(v1::PidsStat {
            current: s.pids.current,
            limit: s.pids.limit,
            ..Default::default()
        }),
        cpu: MessageField::some(v1::CPUStat {
            usage: MessageField::some(v1::CPUUsage {
                total: s.cpu.usage.usage_total,
                kernel: s.cpu.usage.usage_kernel,
                user: s.cpu.usage.usage_user,
                per_cpu: s.cpu.usage.per_core_usage_total.clone(),
                ..Default::default()
            }),
            throttling: MessageField::some(v1::Throttle {
                periods: s.cpu.throttling.periods,
                throttled_periods: s.cpu.throttling.throttled_periods,
                throttled_time: s.cpu.throttling.throttled_time,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(v1::MemoryStat {
            cache: s.memory.cache,
            rss: stat(s, "rss"),
            rss_huge: stat(s, "rss_huge"),
            mapped_file: stat(s, "mapped_file"),
            dirty: stat(s, "dirty"),
            writeback: stat(s, "writeback"),
            pg_fault: stat(s, "pgfault"),
            pg_maj_fault: stat(s, "pgmajfault"),
            inactive_anon: stat(s, "inactive_anon"),
            active_anon: stat(s, "active_anon"),
            inactive_file: stat(s, "inactive_file"),
            active_file: stat(s, "active_file"),
            unevictable: stat(s, "unevictable"),
            total_cache: stat(s, "total_cache"),
            total_rss: stat(s, "total_rss"),
            usage: entry(&s.memory.memory),
            swap: entry(&s.memory.memswap),
            kernel: entry(&s.memory.kernel),
            kernel_tcp: entry(&s.memory.kernel_tcp),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn v2_metrics(s: &Stats) -> v2::Metrics {
    v2::Metrics {
        pids: MessageField::some(v2::PidsStat {
            current: s.pids.current,
            limit: s.pids.limit,
            ..Default::default()
        }),
        cpu: MessageField::some(v2::CPUStat {
            // libcgroups passes cpu.stat's microseconds through on v2.
            usage_usec: s.cpu.usage.usage_total,
            user_usec: s.cpu.usage.usage_user,
            system_usec: s.cpu.usage.usage_kernel,
            nr_periods: s.cpu.throttling.periods,
            nr_throttled: s.cpu.throttling.throttled_periods,
            throttled_usec: s.cpu.throttling.throttled_time,
            ..Default::default()
        }),
        memory: MessageField::some(v2::MemoryStat {
            anon: stat(s, "anon"),
            file: stat(s, "file"),
            kernel_stack: stat(s, "kernel_stack"),
            slab: stat(s, "slab"),
            sock: stat(s, "sock"),
            shmem: stat(s, "shmem"),
            file_mapped: stat(s, "file_mapped"),
            file_dirty: stat(s, "file_dirty"),
            inactive_anon: stat(s, "inactive_anon"),
            active_anon: stat(s, "active_anon"),
            inactive_file: stat(s, "inactive_file"),
            active_file: stat(s, "active_file"),
            unevictable: stat(s, "unevictable"),
            pgfault: stat(s, "pgfault"),
            pgmajfault: stat(s, "pgmajfault"),
            usage: s.memory.memory.usage,
            usage_limit: s.memory.memory.limit,
            max_usage: s.memory.memory.max_usage,
            swap_usage: s.memory.memswap.usage,
            swap_limit: s.memory.memswap.limit,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_hierarchies_encode() {
        let mut s = Stats::default();
        s.memory.memory.usage = 4096;
        s.memory.memory.limit = 1 << 20;
        s.pids.current = 3;
        s.cpu.usage.usage_total = 5_000_000;
        let a = to_any(&s, false);
        assert_eq!(a.type_url, "io.containerd.cgroups.v1.Metrics");
        let m = v1::Metrics::parse_from_bytes(&a.value).unwrap();
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.pids.current, 3);
        let a = to_any(&s, true);
        assert_eq!(a.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::parse_from_bytes(&a.value).unwrap();
        assert_eq!(m.memory.usage_limit, 1 << 20);
        assert_eq!(m.cpu.usage_usec, 5_000_000);
    }
}
