//! What is kept on disk of a task (`<root>/tasks/<ns>/<id>/task.json`), so
//! that a restarted daemon finds its tasks again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keeper::ProcKey;
use crate::reaper::Exit;
use crate::time::{from_nanos, nanos};

use super::backend::TaskKind;
use super::process::{Phase, Proc};

/// A process as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ProcRecord {
    pub pid: i32,
    pub io: super::IoSpec,
    /// Its start began (with `pid` 0: it had not forked yet).
    pub started: bool,
    /// Exit status and time (nanoseconds since the epoch).
    pub exit: Option<(u32, u64)>,
    pub spec: Option<PathBuf>,
}

impl ProcRecord {
    pub fn of(p: &Proc) -> ProcRecord {
        ProcRecord {
            pid: p.pid,
            io: p.io.clone(),
            started: p.phase != Phase::Created,
            exit: p.exited().map(|e| (e.status, nanos(e.at))),
            spec: p.spec.clone(),
        }
    }

    pub fn restore(self, key: ProcKey) -> Proc {
        let mut p = Proc::new(self.io, key);
        p.pid = self.pid;
        p.phase = match (self.started, self.pid > 0) {
            (false, _) => Phase::Created,
            (true, true) => Phase::Started,
            (true, false) => Phase::Starting,
        };
        p.spec = self.spec;
        if let Some((status, at)) = self.exit {
            p.exit.send_replace(Some(Exit {
                pid: self.pid,
                status,
                at: from_nanos(at),
            }));
        }
        p
    }
}

/// A task as recorded.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct TaskRecord {
    pub namespace: String,
    pub id: String,
    pub bundle: PathBuf,
    pub containerd: Option<String>,
    pub rootfs_mounted: bool,
    /// Which backend runs it (absent from the records of older daemons).
    #[serde(default)]
    pub kind: Option<TaskKind>,
    /// Older daemons' way of saying `kind: wasm`.
    #[serde(default, skip_serializing)]
    pub wasm: bool,
    pub init: ProcRecord,
    pub execs: BTreeMap<String, ProcRecord>,
    /// The keeper containerd reached the task through when it was made
    /// ([`crate::keeper::Keeper::identity`]; absent from older records).
    #[serde(default)]
    pub keeper: Option<String>,
}

impl TaskRecord {
    pub fn kind(&self) -> TaskKind {
        match (self.kind, self.wasm) {
            (Some(k), _) => k,
            (None, true) => TaskKind::Wasm,
            (None, false) => TaskKind::Native,
        }
    }

    /// The record in task directory `dir`, if it has a readable one.
    pub fn read(dir: &Path) -> Option<TaskRecord> {
        std::fs::read(dir.join(FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Writes it into `dir` (atomically: a new file renamed over).
    pub fn write(&self, dir: &Path) {
        let path = dir.join(FILE);
        let r = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|b| ironcell_basics::atomic_file::write(&path, &b));
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot write {}", path.display());
        }
    }
}

const FILE: &str = "task.json";

/// A create in progress (`creating.json`, written before anything else is
/// made): what a daemon killed mid-create leaves for the next one to
/// clean up. A directory with a task record is a task (this file stays
/// beside it, unread); one with only this is an unfinished create.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CreatingRecord {
    pub namespace: String,
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs_mounted: bool,
}

impl CreatingRecord {
    /// The record of `dir`'s create, claimed or abandoned (`claim.rs`).
    pub fn read(dir: &Path) -> Option<CreatingRecord> {
        [CREATING, ABANDONED].iter().find_map(|name| {
            std::fs::read(dir.join(name))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
        })
    }

    /// Written in place, not renamed over: it is written once, into a new
    /// directory, and a file cut short by a crash reads as none (the
    /// directory is then removed without the container's clean-up, which
    /// had not begun: the crash came before anything else was made).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let b = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join(CREATING), b)
    }
}

/// The file of [`CreatingRecord`], which is also the create's claim
/// (`claim.rs`).
pub(super) const CREATING: &str = "creating.json";
/// The same file once a removal of the create took its claim over.
pub(super) const ABANDONED: &str = "abandoned.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_daemons_record_reads_with_its_kind() {
        let old = r#"{"namespace":"n","id":"a","bundle":"/b","containerd":null,
            "rootfs_mounted":false,"wasm":true,
            "init":{"pid":7,"io":{"stdin":"","stdout":"","stderr":"","terminal":false},
                    "started":true,"exit":null,"spec":null},
            "execs":{}}"#;
        let r: TaskRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.kind(), TaskKind::Wasm);
        let r: TaskRecord = serde_json::from_str(&old.replace("\"wasm\":true,", "")).unwrap();
        assert_eq!(r.kind(), TaskKind::Native);
        let written = serde_json::to_string(&TaskRecord {
            kind: Some(TaskKind::Wasm),
            ..r
        })
        .unwrap();
        assert!(written.contains(r#""kind":"wasm""#), "{written}");
        assert!(!written.contains("\"wasm\":"), "{written}");
    }

    #[test]
    fn a_start_that_had_not_forked_is_restored_as_starting() {
        let rec = |started, pid| ProcRecord {
            pid,
            io: Default::default(),
            started,
            exit: None,
            spec: None,
        };
        let key = || ProcKey::new("n", "a", "e");
        assert_eq!(rec(false, 0).restore(key()).phase, Phase::Created);
        assert_eq!(rec(true, 0).restore(key()).phase, Phase::Starting);
        assert_eq!(rec(true, 9).restore(key()).phase, Phase::Started);
    }
}
