//! Facts about the guest the host asks for (`GuestDetails`).

use std::fs;

/// CLOCK_BOOTTIME in microseconds: time since the kernel started.
pub fn boottime_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0)
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A `Key: N kB` field of a /proc file such as meminfo or status.
pub fn kib_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

pub struct Memory {
    pub total_kib: u64,
    pub available_kib: u64,
}

pub fn memory() -> Memory {
    let m = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Memory {
        total_kib: kib_field(&m, "MemTotal"),
        available_kib: kib_field(&m, "MemAvailable"),
    }
}

/// This process's resident set.
pub fn own_rss_kib() -> u64 {
    kib_field(
        &fs::read_to_string("/proc/self/status").unwrap_or_default(),
        "VmRSS",
    )
}

pub fn online_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let m = "MemTotal:        2017496 kB\nMemFree:  5 kB\nMemAvailable:    1234 kB\n";
        assert_eq!(kib_field(m, "MemTotal"), 2017496);
        assert_eq!(kib_field(m, "MemAvailable"), 1234);
        assert_eq!(kib_field(m, "Mem"), 0);
        assert_eq!(kib_field(m, "Swap"), 0);
        assert!(boottime_us() > 0);
        assert!(own_rss_kib() > 0);
    }
}
