//! `ironcell events`: a container's statistics and OOM kills as runc prints
//! them, one JSON object a line: `{"type":"stats","id":ID,"data":{...}}`
//! with runc's `types.Stats` field names, and `{"type":"oom","id":ID}`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ironcell_container::stats::{BlkioDeviceStat, MemoryData, Stats};
use ironcell_container::ContainerError;
use ironcell_oci::Status;
use ironcell_sandbox::{Sandbox, SandboxError, Sandboxes};
use serde_json::{json, Map, Value};

/// How often the stream looks for OOM kills and for the container's end,
/// at most (the stats interval when it is shorter).
const POLL: Duration = Duration::from_millis(200);

pub fn run(sandboxes: &Sandboxes, id: &str, once: bool, interval: Duration) -> Result<u8> {
    let backend = sandboxes.owner(id)?;
    if backend.state(id)?.status == Status::Stopped {
        bail!("container {id} is not running");
    }
    if once {
        print(&stats_event(id, &backend.stats(id)?))?;
        return Ok(0);
    }
    let oom = OomCounter::new(backend, id)?;
    let mut seen = oom.count(backend, id).unwrap_or(0);
    let mut next_stats = Instant::now() + interval;
    loop {
        // OOM kills first: the kill that ends the container is reported.
        if let Some(now) = oom.count(backend, id) {
            for _ in seen..now {
                print(&json!({ "type": "oom", "id": id }))?;
            }
            seen = seen.max(now);
        }
        match backend.state(id) {
            Ok(s) if s.status != Status::Stopped => {}
            Ok(_) | Err(SandboxError::Container(ContainerError::NotFound(_))) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= next_stats {
            match backend.stats(id) {
                Ok(s) => print(&stats_event(id, &s))?,
                // As runc: a failed read is logged and the stream goes on.
                Err(e) => tracing::error!("cannot read statistics of {id}: {e}"),
            }
            next_stats += interval;
            if next_stats < Instant::now() {
                next_stats = Instant::now() + interval;
            }
        }
        let wait = next_stats
            .saturating_duration_since(Instant::now())
            .min(POLL);
        std::thread::sleep(wait);
    }
}

fn print(event: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{event}")?;
    out.flush()?;
    Ok(())
}

/// Where a container's OOM kills are counted: its memory cgroup on the
/// host (`oom_kill` of `memory.events` on cgroup v2, of
/// `memory.oom_control` on v1), else the `oom_kill` the backend's
/// statistics carry (the vm sandbox's guest reports its own).
enum OomCounter {
    File(PathBuf),
    Stats,
}

impl OomCounter {
    fn new(backend: &dyn Sandbox, id: &str) -> Result<OomCounter> {
        Ok(match backend.memory_cgroup(id)? {
            Some(dir) if dir.join("memory.events").exists() => {
                OomCounter::File(dir.join("memory.events"))
            }
            Some(dir) => OomCounter::File(dir.join("memory.oom_control")),
            None => OomCounter::Stats,
        })
    }

    fn count(&self, backend: &dyn Sandbox, id: &str) -> Option<u64> {
        match self {
            OomCounter::File(path) => oom_kills(path),
            OomCounter::Stats => backend
                .stats(id)
                .ok()
                .and_then(|s| s.memory.stats.get("oom_kill").copied()),
        }
    }
}

/// The `oom_kill` line of `memory.oom_control` (v1) or `memory.events` (v2).
fn oom_kills(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

pub fn stats_event(id: &str, s: &Stats) -> Value {
    json!({ "type": "stats", "id": id, "data": stats_data(s) })
}

/// Inserts `v` under `k` unless it is zero (Go's `omitempty`).
fn put_nonzero(m: &mut Map<String, Value>, k: &str, v: u64) {
    if v != 0 {
        m.insert(k.into(), json!(v));
    }
}

fn put_nonempty(m: &mut Map<String, Value>, k: &str, v: &[u64]) {
    if !v.is_empty() {
        m.insert(k.into(), json!(v));
    }
}

fn memory_entry(d: &MemoryData) -> Value {
    let mut m = Map::new();
    m.insert("limit".into(), json!(d.limit));
    put_nonzero(&mut m, "usage", d.usage);
    put_nonzero(&mut m, "max", d.max_usage);
    m.insert("failcnt".into(), json!(d.fail_count));
    Value::Object(m)
}

fn blkio_entries(v: &[BlkioDeviceStat]) -> Option<Value> {
    if v.is_empty() {
        return None;
    }
    Some(Value::Array(
        v.iter()
            .map(|e| {
                let mut m = Map::new();
                put_nonzero(&mut m, "major", e.major);
                put_nonzero(&mut m, "minor", e.minor);
                if let Some(op) = e.op_type.as_deref().filter(|o| !o.is_empty()) {
                    m.insert("op".into(), json!(op));
                }
                put_nonzero(&mut m, "value", e.value);
                Value::Object(m)
            })
            .collect(),
    ))
}

/// runc's `types.Stats` (types/events.go) from the cgroup statistics.
/// What ironcell does not read is left out: `cpuset`, the PSI figures and
/// `memory.event_count`; `intel_rdt` is empty, as runc's without RDT, and
/// `network_interfaces` null, as runc's for a container it did not give
/// interfaces to.
pub fn stats_data(s: &Stats) -> Value {
    let u = &s.cpu.usage;
    let mut usage = Map::new();
    put_nonzero(&mut usage, "total", u.usage_total);
    put_nonempty(&mut usage, "percpu", &u.per_core_usage_total);
    put_nonempty(&mut usage, "percpu_kernel", &u.per_core_usage_kernel);
    put_nonempty(&mut usage, "percpu_user", &u.per_core_usage_user);
    usage.insert("kernel".into(), json!(u.usage_kernel));
    usage.insert("user".into(), json!(u.usage_user));
    let t = &s.cpu.throttling;
    let mut throttling = Map::new();
    put_nonzero(&mut throttling, "periods", t.periods);
    put_nonzero(&mut throttling, "throttledPeriods", t.throttled_periods);
    put_nonzero(&mut throttling, "throttledTime", t.throttled_time);

    let mem = &s.memory;
    let mut memory = Map::new();
    put_nonzero(&mut memory, "cache", mem.cache);
    memory.insert("usage".into(), memory_entry(&mem.memory));
    memory.insert("swap".into(), memory_entry(&mem.memswap));
    memory.insert("kernel".into(), memory_entry(&mem.kernel));
    memory.insert("kernelTCP".into(), memory_entry(&mem.kernel_tcp));
    if !mem.stats.is_empty() {
        let raw: std::collections::BTreeMap<_, _> = mem.stats.iter().collect();
        memory.insert("raw".into(), json!(raw));
    }

    let mut pids = Map::new();
    put_nonzero(&mut pids, "current", s.pids.current);
    put_nonzero(&mut pids, "limit", s.pids.limit);

    let b = &s.blkio;
    let mut blkio = Map::new();
    for (k, v) in [
        ("ioServiceBytesRecursive", &b.service_bytes),
        ("ioServicedRecursive", &b.serviced),
        ("ioQueueRecursive", &b.queued),
        ("ioServiceTimeRecursive", &b.service_time),
        ("ioWaitTimeRecursive", &b.wait_time),
        ("ioMergedRecursive", &b.merged),
        ("ioTimeRecursive", &b.time),
        ("sectorsRecursive", &b.sectors),
    ] {
        if let Some(e) = blkio_entries(v) {
            blkio.insert(k.into(), e);
        }
    }

    let hugetlb: Map<String, Value> = s
        .hugetlb
        .iter()
        .map(|(size, h)| {
            let mut m = Map::new();
            put_nonzero(&mut m, "usage", h.usage);
            put_nonzero(&mut m, "max", h.max_usage);
            m.insert("failcnt".into(), json!(h.fail_count));
            (size.clone(), Value::Object(m))
        })
        .collect();

    json!({
        "cpu": { "usage": usage, "throttling": throttling },
        "memory": memory,
        "pids": pids,
        "blkio": blkio,
        "hugetlb": hugetlb,
        "intel_rdt": {},
        "network_interfaces": null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_in_runc_shape() {
        let mut s = Stats::default();
        s.cpu.usage.usage_total = 1_000_000;
        s.cpu.usage.usage_user = 600;
        s.cpu.usage.per_core_usage_total = vec![400_000, 600_000];
        s.cpu.throttling.throttled_periods = 3;
        s.memory.memory.usage = 4096;
        s.memory.memory.limit = 64 << 20;
        s.memory.memswap.limit = 128 << 20;
        s.memory.cache = 12;
        s.memory.stats.insert("rss".into(), 2048);
        s.pids.current = 2;
        s.pids.limit = 20;
        s.blkio.service_bytes.push(BlkioDeviceStat {
            major: 8,
            minor: 0,
            op_type: Some("Read".into()),
            value: 512,
        });
        s.hugetlb.insert("2MB".into(), Default::default());
        let e = stats_event("c1", &s);
        assert_eq!(e["type"], "stats");
        assert_eq!(e["id"], "c1");
        let d = &e["data"];
        assert_eq!(d["cpu"]["usage"]["total"], 1_000_000);
        assert_eq!(d["cpu"]["usage"]["percpu"], json!([400_000, 600_000]));
        assert_eq!(d["cpu"]["usage"]["kernel"], 0, "kernel is not omitempty");
        assert_eq!(d["cpu"]["usage"]["user"], 600);
        assert_eq!(d["cpu"]["throttling"], json!({ "throttledPeriods": 3 }));
        assert_eq!(
            d["memory"]["usage"],
            json!({ "limit": 64 << 20, "usage": 4096, "failcnt": 0 })
        );
        assert_eq!(d["memory"]["swap"]["limit"], 128 << 20);
        assert_eq!(d["memory"]["cache"], 12);
        assert_eq!(d["memory"]["raw"]["rss"], 2048);
        assert_eq!(d["pids"], json!({ "current": 2, "limit": 20 }));
        assert_eq!(
            d["blkio"]["ioServiceBytesRecursive"],
            json!([{ "major": 8, "op": "Read", "value": 512 }])
        );
        assert!(d["blkio"].get("ioServicedRecursive").is_none());
        assert_eq!(d["hugetlb"]["2MB"], json!({ "failcnt": 0 }));
        assert_eq!(d["intel_rdt"], json!({}));
        assert!(d["network_interfaces"].is_null());
    }

    #[test]
    fn oom_kill_counters() {
        let tmp = tempfile::tempdir().unwrap();
        let v1 = tmp.path().join("memory.oom_control");
        std::fs::write(&v1, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(oom_kills(&v1), Some(3));
        let v2 = tmp.path().join("memory.events");
        std::fs::write(
            &v2,
            "low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills(&v2), Some(2));
        assert_eq!(oom_kills(&tmp.path().join("gone")), None);
    }
}
