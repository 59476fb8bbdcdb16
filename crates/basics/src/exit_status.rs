//! Exit statuses as shells, runc and containerd report them: a process's own
//! exit code (0-255), or 128 plus the number of the signal that ended it.

/// The status of a process that signal `signal` ended.
pub const fn of_signal(signal: i32) -> u32 {
    128 + signal as u32
}

/// The status of a process ended by SIGKILL (137): what containerd expects
/// for a task whose real status is lost (its runtime died, or its VM).
pub const KILLED: u32 = of_signal(9);

/// Status 126: the program was found but could not be executed.
pub const CANNOT_EXECUTE: u32 = 126;

/// Status 127: the program was not found.
pub const NOT_FOUND: u32 = 127;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_statuses_are_128_plus_the_signal() {
        assert_eq!(KILLED, 137);
        assert_eq!(of_signal(15), 143);
    }
}
