//! OOM kills in the containers' cgroups (cgroup v2, as the guest mounts
//! it): the kernel raises an inotify modify event on a cgroup's
//! `memory.events` whenever a counter in it changes, and `oom_kill` counts
//! the kills. Each increase queues the container's id for the host's
//! `GetOomEvent` long poll.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// Queued events are bounded: a host that never asks loses the oldest.
const MAX_QUEUED: usize = 1024;

struct Watched {
    id: String,
    events: PathBuf,
    kills: u64,
}

pub struct OomWatch {
    inotify: Option<Inotify>,
    watched: Mutex<HashMap<WatchDescriptor, Watched>>,
    queue: Mutex<VecDeque<String>>,
    queued: Condvar,
}

/// `oom_kill` of a cgroup v2 `memory.events` file.
pub fn oom_kills(events: &Path) -> u64 {
    std::fs::read_to_string(events)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

impl OomWatch {
    pub fn new() -> Arc<OomWatch> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC)
            .map_err(|e| tracing::warn!("no inotify, OOM kills will not be reported: {e}"))
            .ok();
        Arc::new(OomWatch {
            inotify,
            watched: Mutex::new(HashMap::new()),
            queue: Mutex::new(VecDeque::new()),
            queued: Condvar::new(),
        })
    }

    /// Watches container `id`'s memory cgroup directory (cgroup v2 only:
    /// without `memory.events` there is nothing to watch).
    pub fn watch(&self, id: &str, cgroup: &Path) {
        let events = cgroup.join("memory.events");
        let Some(inotify) = &self.inotify else { return };
        if !events.exists() {
            return;
        }
        match inotify.add_watch(&events, AddWatchFlags::IN_MODIFY) {
            Ok(wd) => {
                let kills = oom_kills(&events);
                self.lock_watched().insert(
                    wd,
                    Watched {
                        id: id.to_string(),
                        events,
                        kills,
                    },
                );
            }
            Err(e) => tracing::warn!(id, "cannot watch {}: {e}", events.display()),
        }
    }

    pub fn forget(&self, id: &str) {
        let mut w = self.lock_watched();
        let gone: Vec<WatchDescriptor> = w
            .iter()
            .filter(|(_, v)| v.id == id)
            .map(|(k, _)| *k)
            .collect();
        for wd in gone {
            w.remove(&wd);
            if let Some(i) = &self.inotify {
                let _ = i.rm_watch(wd);
            }
        }
    }

    fn lock_watched(&self) -> std::sync::MutexGuard<'_, HashMap<WatchDescriptor, Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until container `id` (any, when empty) saw an OOM kill;
    /// returns its id.
    pub fn next(&self, id: &str) -> String {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(i) = q.iter().position(|q| id.is_empty() || q == id) {
                if let Some(found) = q.remove(i) {
                    return found;
                }
            }
            q = self.queued.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn push(&self, id: String) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_QUEUED {
            q.pop_front();
        }
        q.push_back(id);
        self.queued.notify_all();
    }

    /// Starts the thread that reads the inotify events.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        if self.inotify.is_none() {
            return Ok(());
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("oom".into())
            .spawn(move || me.run())?;
        Ok(())
    }

    fn run(&self) {
        let Some(inotify) = &self.inotify else { return };
        loop {
            let events = match inotify.read_events() {
                Ok(e) => e,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("inotify: {e}; OOM kills are no longer reported");
                    return;
                }
            };
            for ev in events {
                let fired = {
                    let mut w = self.lock_watched();
                    w.get_mut(&ev.wd).and_then(|watched| {
                        let kills = oom_kills(&watched.events);
                        let more = kills > watched.kills;
                        watched.kills = kills;
                        more.then(|| watched.id.clone())
                    })
                };
                if let Some(id) = fired {
                    self.push(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_oom_kills() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.events");
        std::fs::write(
            &f,
            "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills(&f), 2);
        assert_eq!(oom_kills(&dir.path().join("none")), 0);
    }

    #[test]
    fn modified_events_file_queues_the_container() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.events");
        std::fs::write(&f, "oom_kill 0\n").unwrap();
        let w = OomWatch::new();
        w.start().unwrap();
        w.watch("c1", dir.path());
        std::fs::write(&f, "oom 1\n").unwrap();
        std::fs::write(&f, "oom_kill 1\n").unwrap();
        assert_eq!(w.next(""), "c1");
        w.forget("c1");
        assert!(w.lock_watched().is_empty());
    }

    #[test]
    fn a_waiter_for_one_container_leaves_the_others_events() {
        let w = OomWatch::new();
        w.push("a".into());
        w.push("b".into());
        assert_eq!(w.next("b"), "b");
        assert_eq!(w.next(""), "a");
        let w2 = w.clone();
        let waiter = std::thread::spawn(move || w2.next("c"));
        w.push("d".into());
        w.push("c".into());
        assert_eq!(waiter.join().unwrap(), "c");
        assert_eq!(w.next("d"), "d");
    }
}
