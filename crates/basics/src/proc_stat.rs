//! The few fields of `/proc/<pid>/stat` that the runtime's crates read to
//! tell one process from another: its state, its parent, and its start
//! time (which, with the pid, names a process among all that ever ran on
//! the host, pids being reused).
//!
//! Written here rather than taken from the `procfs` crate: this crate is
//! the workspace's leaf (the musl VMM and the guest agent link it), and
//! three fields of one line do not justify its dependency tree.

use std::fs;

/// What `/proc/<pid>/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// The state letter: `R`, `S`, `D`, `Z` (a zombie), `X` (dead), ...
    pub state: char,
    /// The parent's pid.
    pub parent: i32,
    /// Clock ticks since boot when the process started.
    pub start_time: u64,
}

impl ProcStat {
    /// Reads the stat of `pid`; None once it is gone (or for pid <= 0).
    pub fn of(pid: i32) -> Option<ProcStat> {
        if pid <= 0 {
            return None;
        }
        parse(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Whether the process has ended (a zombie or dead).
    pub fn ended(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Whether `pid` is still the process that started at `start`, and has not
/// ended.
pub fn is_alive(pid: i32, start: u64) -> bool {
    ProcStat::of(pid).is_some_and(|s| s.start_time == start && !s.ended())
}

/// Parses a stat line. The command (field 2, in parentheses) may hold
/// spaces and parentheses itself: the fields are counted from the last ')'.
fn parse(stat: &str) -> Option<ProcStat> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    // starttime is field 22 of the line: the 18th after the parent (4).
    let start_time = fields.nth(17)?.parse().ok()?;
    Some(ProcStat {
        state,
        parent,
        start_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "42 (a) b (c) S 7 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                        12345 1000 100 18446744073709551615";

    #[test]
    fn fields_are_read_past_any_command_name() {
        assert_eq!(
            parse(LINE),
            Some(ProcStat {
                state: 'S',
                parent: 7,
                start_time: 12345
            })
        );
        assert_eq!(parse("42 (sh"), None);
        assert_eq!(parse("42 (sh) S 7 42"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn own_process_is_alive_and_its_start_time_is_stable() {
        let me = std::process::id() as i32;
        let stat = ProcStat::of(me).unwrap();
        assert_eq!(stat.parent, nix_getppid());
        assert_eq!(ProcStat::of(me).unwrap().start_time, stat.start_time);
        assert!(is_alive(me, stat.start_time));
        assert!(!is_alive(me, stat.start_time + 1));
        assert!(!is_alive(0, stat.start_time));
    }

    /// A process that was killed is not alive, zombie or reaped.
    #[test]
    fn a_zombie_and_a_reaped_process_are_not_alive() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let start = ProcStat::of(pid).unwrap().start_time;
        assert!(start > 0);
        assert!(is_alive(pid, start));
        child.kill().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ProcStat::of(pid).unwrap().ended() {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!is_alive(pid, start));
        child.wait().unwrap();
        assert!(!is_alive(pid, start));
    }

    fn nix_getppid() -> i32 {
        // SAFETY: getppid has no preconditions.
        unsafe { libc::getppid() }
    }
}
