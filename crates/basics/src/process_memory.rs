//! The memory of a long-running process (ironcelld and its keeper): one
//! malloc arena, and what a burst of requests left resident given back once
//! it is idle (free heap pages and the binary's start-up code). Requests
//! count themselves with [`note_activity`].

use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};

/// Requests served so far (every Task API and control request counts).
pub static ACTIVITY: AtomicU64 = AtomicU64::new(0);

/// Counts a request (see [`start_idle_trimmer`]).
pub fn note_activity() {
    ACTIVITY.fetch_add(1, Ordering::Relaxed);
}

/// How many consecutive idle seconds make the daemon trim its memory.
const IDLE_TRIM_SECONDS: u32 = 5;

/// Once requests stop for a while, gives back what serving them left
/// resident: free heap pages (`malloc_trim`) and the code and read-only
/// data pages that only the burst needed ([`trim_text`]). A node's daemon is
/// idle most of the time; a busy one never trims (no refaulting under load).
///
/// What runs after the pages are dropped faults them back in, 64 KiB around
/// each fault. So the check is a plain thread, not a tokio timer (an idle
/// runtime then has nothing to wake for and its threads touch no code), and
/// its loop is one function making raw system calls: after a trim only that
/// function and glibc's `syscall` come back, where `std::thread::sleep`,
/// `Instant` and the allocator's `free` brought back scattered pages worth
/// about 450 KiB.
pub fn start_idle_trimmer() {
    let spawned = std::thread::Builder::new()
        .name("trim".into())
        .stack_size(64 * 1024)
        .spawn(idle_trimmer);
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the idle trimmer");
    }
}

/// At most this many mappings are dropped (a static binary has four).
const MAX_TRIMMED: usize = 8;

fn idle_trimmer() {
    let mut trimmed_at = ACTIVITY.load(Ordering::Relaxed);
    let mut seen = trimmed_at;
    let mut idle = 0u32;
    let second = libc::timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    loop {
        // SAFETY: nanosleep reads the timespec this function owns; the
        // remainder pointer may be null.
        unsafe {
            libc::syscall(
                libc::SYS_nanosleep,
                &second as *const libc::timespec,
                std::ptr::null_mut::<libc::timespec>(),
            );
        }
        let now = ACTIVITY.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            idle = 0;
            continue;
        }
        idle = idle.saturating_add(1);
        if now == trimmed_at || idle < IDLE_TRIM_SECONDS {
            continue;
        }
        // SAFETY: malloc_trim takes an integer and only touches the
        // allocator's own state.
        unsafe {
            libc::malloc_trim(0);
        }
        // Found before anything is dropped, kept on the stack: nothing
        // after the drop allocates or frees.
        let mut ranges = [(0usize, 0usize); MAX_TRIMMED];
        let mut n = 0;
        for r in clean_mappings().into_iter().take(MAX_TRIMMED) {
            ranges[n] = r;
            n += 1;
        }
        for &(start, end) in &ranges[..n] {
            // SAFETY: as in trim_text: a read-only, file-backed private
            // mapping of our own binary without anonymous pages.
            unsafe {
                libc::syscall(libc::SYS_madvise, start, end - start, libc::MADV_RANDOM);
                libc::syscall(libc::SYS_madvise, start, end - start, libc::MADV_DONTNEED);
            }
        }
        trimmed_at = now;
    }
}

/// One malloc arena for every thread, instead of glibc's default of eight
/// per CPU: each arena a thread touched keeps its freed memory, which in a
/// daemon of many short blocking threads was most of its anonymous memory.
/// The daemon's few threads hardly contend (two arenas cost 30 KiB more at
/// 50 tasks, for nothing measurable).
pub fn limit_malloc_arenas() {
    // SAFETY: mallopt takes two integers and is called before any thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Drops the daemon's start-up code from its resident set.
///
/// A long-running daemon executes a small part of its binary once it is up,
/// but the kernel maps file pages 64 KiB at a time around each fault
/// ("fault-around"), and start-up touches code and constants all over the
/// file: ironcelld sat at 4.4 MiB of mapped text. After start-up, and when
/// idle, the binary's clean mappings (its code, and its read-only data but
/// not the relocated RELRO part, which is private dirty memory) are marked
/// MADV_RANDOM (no read-ahead) and unmapped (MADV_DONTNEED: the pages stay in
/// the page cache; what runs again faults back in). Measured with
/// bench/daemon_bench.py (bench/README.md).
pub fn trim_text() {
    for (start, end) in clean_mappings() {
        // SAFETY: the range is a read-only, file-backed private mapping of
        // our own binary with no anonymous (copied-on-write) page, as
        // /proc/self/smaps lists it: MADV_RANDOM only changes paging hints,
        // and MADV_DONTNEED on it only drops page-table entries (the pages
        // are read back from the file, unchanged, on the next access).
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// This process's binary's mappings that [`trim_text`] may drop.
fn clean_mappings() -> Vec<(usize, usize)> {
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
