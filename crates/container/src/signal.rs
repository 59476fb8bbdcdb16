use nix::sys::signal::Signal;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown signal {0:?}")]
pub struct SignalError(pub String);

/// Parses a signal as runc does: a number, or a name with or without the
/// `SIG` prefix, in any case (`9`, `KILL`, `sigterm`). Real-time signals are
/// accepted by number and as `RTMIN+N` / `RTMAX-N`; 0 (no signal: kill(2)
/// only checks that the process exists) by number.
pub fn parse_signal(s: &str) -> Result<i32, SignalError> {
    let err = || SignalError(s.to_string());
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if (0..=libc_sigrtmax()).contains(&n) {
            Ok(n)
        } else {
            Err(err())
        };
    }
    let up = t.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let off = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('+')
                .and_then(|r| r.parse::<i32>().ok())
                .ok_or_else(err)?
        };
        let n = libc_sigrtmin() + off;
        return if n <= libc_sigrtmax() {
            Ok(n)
        } else {
            Err(err())
        };
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        let off = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('-')
                .and_then(|r| r.parse::<i32>().ok())
                .ok_or_else(err)?
        };
        let n = libc_sigrtmax() - off;
        return if n >= libc_sigrtmin() {
            Ok(n)
        } else {
            Err(err())
        };
    }
    let full = format!("SIG{name}");
    let sig = match full.as_str() {
        "SIGIOT" => Signal::SIGABRT,
        "SIGPOLL" => Signal::SIGIO,
        "SIGCLD" => Signal::SIGCHLD,
        other => other.parse::<Signal>().map_err(|_| err())?,
    };
    Ok(sig as i32)
}

// glibc reserves the first two real-time signals for itself, so SIGRTMIN is
// 34 for programs, as runc reports it.
fn libc_sigrtmin() -> i32 {
    34
}

fn libc_sigrtmax() -> i32 {
    64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse_signal("9"), Ok(9));
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("SIGKILL"), Ok(9));
        assert_eq!(parse_signal("sigterm"), Ok(15));
        assert_eq!(parse_signal("term"), Ok(15));
        assert_eq!(parse_signal("HUP"), Ok(1));
        assert_eq!(parse_signal("USR1"), Ok(10));
        assert_eq!(parse_signal("WINCH"), Ok(28));
        assert_eq!(parse_signal("RTMIN"), Ok(34));
        assert_eq!(parse_signal("RTMIN+3"), Ok(37));
        assert_eq!(parse_signal("RTMAX-1"), Ok(63));
        assert_eq!(parse_signal("40"), Ok(40));
        assert_eq!(parse_signal("0"), Ok(0));
    }

    #[test]
    fn refuses_unknown() {
        for s in ["65", "-1", "FOO", "SIGFOO", "", "RTMIN+40", "9x"] {
            assert_eq!(parse_signal(s), Err(SignalError(s.into())), "{s}");
        }
    }
}
