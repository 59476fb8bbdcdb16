//! The keeper as the daemon's supervisor. A daemon started by the shim (not
//! by a service manager) asks the keeper to start it again when it dies:
//! it sends its command line (`ToKeeper::Supervise`). When the daemon's
//! connection drops, or the daemon the keeper started exits, the keeper
//! starts the same command again after a short delay. A daemon that dies
//! soon after each start is crash-looping: the delay doubles each time, and
//! after [`GIVE_UP_AFTER`] such deaths in a row the keeper stops and says
//! so. A daemon that stops cleanly withdraws the request first
//! (`ToKeeper::Unsupervise`), so that a stop is not undone.
//!
//! [`Supervisor`] is the decision logic alone, driven by the keeper's loop
//! with the current time, so that it is tested without processes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A daemon that ran this long before it died was not crash-looping.
pub const STABLE: Duration = Duration::from_secs(10);
/// The delay before the first restart after a death.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Deaths in a row, each within [`STABLE`] of its start, after which the
/// keeper stops restarting the daemon.
pub const GIVE_UP_AFTER: u32 = 5;

/// How to start the daemon again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// A daemon runs (or is starting), since then.
    Running { since: Instant },
    /// The daemon died: the next one starts then.
    Waiting { until: Instant },
    /// Too many deaths in a row: nothing is restarted.
    GaveUp,
}

/// What the keeper does after it learnt of a death.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: the daemon is not supervised, or this death is known.
    Nothing,
    /// Start it again after this delay.
    Restart(Duration),
    /// It died this many times in a row soon after its start: stop.
    GiveUp(u32),
}

#[derive(Debug, Default)]
pub struct Supervisor {
    command: Option<Command>,
    state: Option<State>,
    /// Deaths in a row, each within [`STABLE`] of its start.
    crashes: u32,
    /// The daemons the keeper started (its children) not reaped yet; the
    /// last is the current one.
    children: Vec<i32>,
}

impl Supervisor {
    /// A daemon asks to be restarted with `command` when it dies (`None`:
    /// it is stopping on purpose and must not be).
    pub fn supervise(&mut self, command: Option<Command>, now: Instant) {
        match command {
            Some(c) => {
                self.command = Some(c);
                if !matches!(self.state, Some(State::Running { .. })) {
                    self.state = Some(State::Running { since: now });
                }
            }
            None => {
                self.command = None;
                self.state = None;
                self.crashes = 0;
            }
        }
    }

    pub fn is_supervising(&self) -> bool {
        self.command.is_some()
    }

    /// The daemon is gone (its connection closed, or the daemon the keeper
    /// started exited).
    pub fn lost(&mut self, now: Instant) -> Verdict {
        let since = match (&self.command, &self.state) {
            (Some(_), Some(State::Running { since })) => *since,
            _ => return Verdict::Nothing,
        };
        if now.duration_since(since) < STABLE {
            self.crashes += 1;
        } else {
            self.crashes = 0;
        }
        if self.crashes >= GIVE_UP_AFTER {
            self.state = Some(State::GaveUp);
            return Verdict::GiveUp(self.crashes);
        }
        // At most FIRST_DELAY << (GIVE_UP_AFTER - 1): 1.6 s.
        let delay = FIRST_DELAY * (1 << self.crashes);
        self.state = Some(State::Waiting { until: now + delay });
        Verdict::Restart(delay)
    }

    /// Process `pid`, a child of the keeper, exited: None when it was not a
    /// daemon the keeper started (a container's process); else what to do
    /// (the current daemon is lost; an older one's end is known already).
    /// `serving` is the daemon connected to the keeper, if any: a daemon
    /// the keeper started while another was starting elsewhere (by the
    /// shim) exits at once, the root being taken, and that is no death.
    pub fn exited(&mut self, pid: i32, serving: Option<i32>, now: Instant) -> Option<Verdict> {
        let at = self.children.iter().position(|c| *c == pid)?;
        self.children.remove(at);
        if serving.is_some_and(|s| s != pid) {
            return Some(Verdict::Nothing);
        }
        if at == self.children.len() {
            Some(self.lost(now))
        } else {
            Some(Verdict::Nothing)
        }
    }

    /// When the next daemon is due, if one is.
    pub fn due_at(&self) -> Option<Instant> {
        match self.state {
            Some(State::Waiting { until }) => Some(until),
            _ => None,
        }
    }

    /// The command to run now, if a restart is due (the keeper then reports
    /// the pid with [`Supervisor::started`]).
    pub fn due(&mut self, now: Instant) -> Option<Command> {
        match self.due_at() {
            Some(until) if until <= now => {
                self.state = Some(State::Running { since: now });
                self.command.clone()
            }
            _ => None,
        }
    }

    /// The keeper started the daemon as `pid`.
    pub fn started(&mut self, pid: i32) {
        self.children.push(pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> Command {
        Command {
            argv: vec!["/usr/bin/ironcelld".into(), "--supervised".into()],
            env: vec![("PATH".into(), "/usr/bin".into())],
            cwd: "/".into(),
        }
    }

    #[test]
    fn an_unsupervised_daemon_is_not_restarted() {
        let t = Instant::now();
        let mut s = Supervisor::default();
        assert_eq!(s.lost(t), Verdict::Nothing);
        s.supervise(Some(command()), t);
        // A clean stop withdraws the request first.
        s.supervise(None, t);
        assert_eq!(s.lost(t + STABLE), Verdict::Nothing);
        assert_eq!(s.due(t + STABLE * 2), None);
    }

    #[test]
    fn a_death_is_restarted_once_after_the_first_delay() {
        let t = Instant::now();
        let mut s = Supervisor::default();
        s.supervise(Some(command()), t);
        let died = t + STABLE * 3;
        assert_eq!(s.lost(died), Verdict::Restart(FIRST_DELAY));
        // The same death seen twice (connection closed, then the exit).
        assert_eq!(s.lost(died), Verdict::Nothing);
        assert_eq!(s.due(died), None, "not before the delay");
        assert_eq!(s.due_at(), Some(died + FIRST_DELAY));
        assert_eq!(s.due(died + FIRST_DELAY), Some(command()));
        assert_eq!(s.due(died + FIRST_DELAY), None, "started once");
        s.started(42);
        assert_eq!(s.exited(41, None, died), None, "not the daemon");
        // The restarted daemon dies at once: a crash, the delay doubles.
        let again = died + FIRST_DELAY + Duration::from_millis(10);
        assert_eq!(
            s.exited(42, None, again),
            Some(Verdict::Restart(FIRST_DELAY * 2))
        );
        assert_eq!(s.exited(42, None, again), None, "reaped once");
        // Its successor connects and dies; the older one's late exit
        // changes nothing.
        let third = again + FIRST_DELAY * 2;
        assert!(s.due(third).is_some());
        s.started(43);
        s.started(44);
        assert_eq!(s.exited(43, None, third), Some(Verdict::Nothing));
    }

    #[test]
    fn a_started_daemon_that_loses_the_root_to_another_is_no_death() {
        let t = Instant::now();
        let mut s = Supervisor::default();
        s.supervise(Some(command()), t);
        let died = t + STABLE * 3;
        assert_eq!(s.lost(died), Verdict::Restart(FIRST_DELAY));
        assert!(s.due(died + FIRST_DELAY).is_some());
        s.started(50);
        // Meanwhile the shim started daemon 60, which took the root and
        // connected; 50 exits.
        s.supervise(Some(command()), died + FIRST_DELAY);
        assert_eq!(
            s.exited(50, Some(60), died + STABLE),
            Some(Verdict::Nothing)
        );
        assert_eq!(s.due_at(), None, "nothing to restart");
        // Daemon 60's own death is one.
        assert_eq!(s.lost(died + STABLE * 3), Verdict::Restart(FIRST_DELAY));
    }

    #[test]
    fn a_crash_loop_backs_off_then_gives_up_and_a_stable_run_resets() {
        let mut now = Instant::now();
        let mut s = Supervisor::default();
        s.supervise(Some(command()), now);
        let mut delays = Vec::new();
        loop {
            now += Duration::from_millis(300);
            match s.lost(now) {
                Verdict::Restart(d) => {
                    delays.push(d.as_millis());
                    now += d;
                    assert!(s.due(now).is_some());
                }
                Verdict::GiveUp(n) => {
                    assert_eq!(n, GIVE_UP_AFTER);
                    break;
                }
                Verdict::Nothing => panic!("a supervised death was ignored"),
            }
        }
        assert_eq!(delays, [200, 400, 800, 1600]);
        assert_eq!(s.due(now + STABLE * 10), None, "gave up");
        // A daemon started by hand asks again: supervised anew, and a
        // death after a stable run starts from the first delay.
        s.supervise(Some(command()), now);
        assert_eq!(s.lost(now + STABLE), Verdict::Restart(FIRST_DELAY));
    }
}
