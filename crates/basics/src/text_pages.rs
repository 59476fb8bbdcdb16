//! The binary's start-up code dropped from a long-running process's
//! resident set.
//!
//! A long-running daemon executes a small part of its binary once it is up,
//! but the kernel maps file pages 64 KiB at a time around each fault
//! ("fault-around"), and start-up touches code and constants all over the
//! file: ironcelld sat at 4.4 MiB of mapped text. After start-up, and when
//! idle, the binary's clean mappings (its code, and its read-only data but
//! not the relocated RELRO part, which is private dirty memory) are marked
//! MADV_RANDOM (no read-ahead) and unmapped (MADV_DONTNEED: the pages stay in
//! the page cache; what runs again faults back in). Measured with
//! bench/daemon_bench.py (bench/README.md). A vm container's relay and
//! ironcell-vmm serving QEMU's devices do the same once they only wait or
//! move requests.

use std::fs;

/// The binary's mappings that may be dropped, found once (reading
/// /proc/self/smaps) and dropped later, when a seccomp allowlist may no
/// longer let the process open a file.
pub struct TextMappings(Vec<(usize, usize)>);

impl TextMappings {
    pub fn of_this_process() -> TextMappings {
        TextMappings(clean_mappings())
    }

    /// Drops the pages of these mappings from the resident set (madvise
    /// only).
    pub fn trim(&self) {
        for &(start, end) in &self.0 {
            // SAFETY: the range is a read-only, file-backed private mapping
            // of our own binary with no anonymous (copied-on-write) page,
            // as /proc/self/smaps listed it (such a mapping never changes
            // while the process runs): MADV_RANDOM only changes paging
            // hints, and MADV_DONTNEED on it only drops page-table entries
            // (the pages are read back from the file, unchanged, on the
            // next access).
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

/// This process's binary's mappings that [`TextMappings::trim`] may drop.
pub(crate) fn clean_mappings() -> Vec<(usize, usize)> {
    let (Ok(smaps), Ok(exe)) = (
        fs::read_to_string("/proc/self/smaps"),
        fs::read_link("/proc/self/exe"),
    ) else {
        return Vec::new();
    };
    clean_mappings_of(&smaps, &exe.to_string_lossy())
}

/// The address ranges of `exe`'s read-only (`r--p`, `r-xp`) mappings
/// without an anonymous page, from smaps text.
fn clean_mappings_of(smaps: &str, exe: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // The mapping being read: its range, and whether it may be dropped.
    let mut current: Option<(usize, usize, bool)> = None;
    let mut flush = |c: Option<(usize, usize, bool)>| {
        if let Some((start, end, true)) = c {
            out.push((start, end));
        }
    };
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            flush(current.take());
            let perms = f.next().unwrap_or("");
            let path = line.split_whitespace().nth(5).unwrap_or("");
            let readonly = perms == "r--p" || perms == "r-xp";
            if let (Ok(a), Ok(b), true) = (
                usize::from_str_radix(a, 16),
                usize::from_str_radix(b, 16),
                readonly && path == exe,
            ) {
                current = Some((a, b, true));
            }
        } else if let Some((_, _, ok)) = current.as_mut() {
            let kib = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(u64::MAX)
            };
            // Anonymous pages are the mapping's own copies (relocated
            // data): dropping them would lose what was written. Dirty
            // page-cache pages (a binary just written) are the file's.
            if first == "Anonymous:" && kib(line) != 0 {
                *ok = false;
            }
        }
    }
    flush(current.take());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_read_only_mappings_of_the_binary_are_dropped() {
        let smaps = "\
55550000-55560000 r--p 00000000 fd:01 1 /usr/bin/ironcelld
Rss:                  64 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
55560000-55580000 r-xp 00010000 fd:01 1 /usr/bin/ironcelld
Private_Dirty:       128 kB
Anonymous:             0 kB
55580000-55590000 r--p 00030000 fd:01 1 /usr/bin/ironcelld
Private_Dirty:       444 kB
Anonymous:           444 kB
55590000-555a0000 rw-p 00040000 fd:01 1 /usr/bin/ironcelld
Private_Dirty:         8 kB
7f000000-7f001000 r--p 00000000 fd:01 2 /usr/lib/other.so
Private_Dirty:         0 kB
";
        assert_eq!(
            clean_mappings_of(smaps, "/usr/bin/ironcelld"),
            vec![(0x5555_0000, 0x5556_0000), (0x5556_0000, 0x5558_0000)]
        );
        // The running test binary: never its RELRO (dirty) mapping.
        let own = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let clean = clean_mappings_of(&own, &exe.to_string_lossy());
        assert!(!clean.is_empty());
    }
}
