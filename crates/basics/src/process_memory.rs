//! The memory of a long-running process (ironcelld and its keeper, a vm
//! container's relay, ironcell-vmm serving QEMU's devices): one malloc
//! arena, and what a burst of requests left resident given back once it is
//! idle (free heap pages and the binary's start-up code). Requests count
//! themselves with [`note_activity`].

use crate::text_pages::clean_mappings;
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
        trim_heap();
        // Found before anything is dropped, kept on the stack: nothing
        // after the drop allocates or frees.
        let mut ranges = [(0usize, 0usize); MAX_TRIMMED];
        let mut n = 0;
        for r in clean_mappings().into_iter().take(MAX_TRIMMED) {
            ranges[n] = r;
            n += 1;
        }
        for &(start, end) in &ranges[..n] {
            // SAFETY: as in TextMappings::trim: a read-only, file-backed private
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

/// Gives the allocator's free pages back (`malloc_trim`), once, for a
/// process that is done with a burst of work. Inlined: the idle trimmer's
/// loop must not call into code its trim drops.
#[inline(always)]
pub fn trim_heap() {
    // SAFETY: malloc_trim takes an integer and only touches the allocator's
    // own state.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops the daemon's start-up code from its resident set
/// ([`crate::text_pages`]).
pub fn trim_text() {
    crate::text_pages::TextMappings::of_this_process().trim();
}
