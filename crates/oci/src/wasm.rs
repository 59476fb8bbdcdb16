//! What a WebAssembly container runs, read off its bundle: the module (the
//! entrypoint, found inside the rootfs), its arguments, environment and
//! preopened directories, and its limits. Both front ends share it: the CLI
//! hands a [`Job`] to the `ironcell-wasm` runner process, and ironcelld runs
//! it in-process. Nothing here links wasmtime.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::Bundle;

/// The annotation giving a wasm container a wall-clock time budget, in
/// milliseconds.
pub const TIME_BUDGET_ANNOTATION: &str = "io.ironcell.wasm.time-budget-ms";
/// runwasi's and crun's image annotation for WASI images (`compat` or
/// `compat-smart`).
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";

/// Why a bundle cannot run as a wasm container (one line each).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("config.json has no process.args: nothing to run")]
    NoProcess,
    #[error("annotation {TIME_BUDGET_ANNOTATION}: {0:?} is not a number of milliseconds")]
    TimeBudget(String),
    #[error("mount {dest}: source {source_path} is not an absolute path")]
    MountSource { dest: String, source_path: String },
}

/// Whether `bytes` start like WebAssembly (`\0asm`).
pub fn is_wasm(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm")
}

/// A host directory the module sees at `guest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// One wasm container's program, as its bundle describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The host path of the container's root filesystem.
    pub rootfs: PathBuf,
    /// The module, as the container sees it (resolved inside `rootfs`).
    pub module: PathBuf,
    /// argv, the program name first.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The rootfs at `/`, then the spec's bind mounts at their destinations.
    pub preopens: Vec<Preopen>,
    /// Cap on each linear memory and the cgroup's limit (bytes).
    pub memory_limit: Option<u64>,
    /// Wall-clock budget (ms), from the annotation.
    pub time_budget_ms: Option<u64>,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub no_new_privileges: bool,
    /// cgroup v1 `tasks` files the runner writes `0` into before anything
    /// else, to join its container's cgroup itself (set by the CLI; see
    /// `ironcell_container::cgroup::v1`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroup_tasks: Vec<PathBuf>,
}

impl Job {
    /// Reads the program of a wasm container off `bundle`.
    pub fn from_bundle(bundle: &Bundle) -> Result<Job, JobError> {
        let spec = &bundle.spec;
        let process = spec.process().as_ref().ok_or(JobError::NoProcess)?;
        let module = entrypoint(spec).ok_or(JobError::NoProcess)?;
        let env = process
            .env()
            .iter()
            .flatten()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect();
        let root_ro = spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false);
        let mut preopens = vec![Preopen {
            host: bundle.rootfs.clone(),
            guest: "/".into(),
            read_only: root_ro,
        }];
        for m in spec.mounts().iter().flatten() {
            let options = m.options().clone().unwrap_or_default();
            let bind = m.typ().as_deref() == Some("bind")
                || options.iter().any(|o| o == "bind" || o == "rbind");
            if !bind {
                // proc, sysfs, tmpfs, devpts...: nothing a WASI program can
                // use (docs/wasm.md).
                continue;
            }
            let dest = m.destination().to_string_lossy().into_owned();
            let Some(source) = m.source() else { continue };
            let host = if source.is_absolute() {
                source.clone()
            } else {
                return Err(JobError::MountSource {
                    dest,
                    source_path: source.display().to_string(),
                });
            };
            // A bind mount of a file cannot be a preopened directory.
            if !host.is_dir() {
                continue;
            }
            preopens.push(Preopen {
                host,
                guest: dest,
                read_only: root_ro || options.iter().any(|o| o == "ro"),
            });
        }
        let memory_limit = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .filter(|l| *l > 0)
            .map(|l| l as u64);
        let time_budget_ms = match spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(TIME_BUDGET_ANNOTATION))
        {
            Some(ms) => Some(ms.parse().map_err(|_| JobError::TimeBudget(ms.clone()))?),
            None => None,
        };
        let user = process.user();
        Ok(Job {
            rootfs: bundle.rootfs.clone(),
            module,
            args: process.args().clone().unwrap_or_default(),
            env,
            preopens,
            memory_limit,
            time_budget_ms,
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
            cgroup_tasks: Vec::new(),
        })
    }

    /// Opens the module inside the rootfs ([`open_in_root`]).
    pub fn open_module(&self) -> std::io::Result<File> {
        open_in_root(&self.rootfs, &self.module)
    }
}

/// Opens `path` as the container sees it: inside `root`, with `..` and
/// symbolic links (absolute ones too) resolved within it (openat2's
/// RESOLVE_IN_ROOT), so an image cannot point the host at its own files.
pub fn open_in_root(root: &Path, path: &Path) -> std::io::Result<File> {
    let dir = File::open(root)?;
    let rel = path.strip_prefix("/").unwrap_or(path);
    let c = std::ffi::CString::new(rel.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: open_how is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT;
    // SAFETY: openat2 reads the NUL-terminated path and the open_how of the
    // given size, both alive for the call; it returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// The container's entrypoint as the container sees it (`process.args[0]`,
/// relative to `process.cwd` when not absolute).
pub fn entrypoint(spec: &Spec) -> Option<PathBuf> {
    let process = spec.process().as_ref()?;
    let first = process.args().as_ref()?.first()?;
    let p = Path::new(first);
    Some(if p.is_absolute() {
        p.to_path_buf()
    } else {
        process.cwd().join(p)
    })
}

/// Whether the bundle is a WASI image: runwasi's variant annotation, or an
/// entrypoint that starts with WebAssembly's magic bytes.
pub fn looks_like_wasm(bundle: &Bundle) -> bool {
    let variant = bundle
        .spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(VARIANT_ANNOTATION))
        .is_some_and(|v| v == "compat" || v == "compat-smart");
    if variant {
        return true;
    }
    let Some(path) = entrypoint(&bundle.spec) else {
        return false;
    };
    let mut magic = [0u8; 4];
    open_in_root(&bundle.rootfs, &path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && is_wasm(&magic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &Path, extra: &str) -> Bundle {
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        std::fs::write(
            dir.join("config.json"),
            format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs","readonly":true}},{extra}
                "process":{{"args":["app.wasm","a"],"cwd":"/srv","env":["A=1","B"],
                "user":{{"uid":7,"gid":8,"additionalGids":[9]}},"noNewPrivileges":true}}}}"#
            ),
        )
        .unwrap();
        Bundle::load(dir).unwrap()
    }

    #[test]
    fn job_from_a_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let b = bundle(
            dir.path(),
            &format!(
                r#""mounts":[{{"destination":"/proc","type":"proc","source":"proc"}},
                {{"destination":"/data","type":"bind","source":"{}","options":["rbind"]}}],
                "linux":{{"resources":{{"memory":{{"limit":1048576}}}}}},
                "annotations":{{"{TIME_BUDGET_ANNOTATION}":"250"}},"#,
                data.display()
            ),
        );
        let job = Job::from_bundle(&b).unwrap();
        assert_eq!(job.module, Path::new("/srv/app.wasm"));
        assert_eq!(job.args, ["app.wasm", "a"]);
        assert_eq!(
            job.env,
            [("A".into(), "1".into()), ("B".into(), String::new())]
        );
        assert_eq!(job.preopens.len(), 2);
        assert_eq!(job.preopens[0].guest, "/");
        assert!(job.preopens[0].read_only);
        assert_eq!(job.preopens[1].host, data);
        // A read-only root makes every preopen read-only.
        assert!(job.preopens[1].read_only);
        assert_eq!(job.memory_limit, Some(1 << 20));
        assert_eq!(job.time_budget_ms, Some(250));
        assert_eq!(
            (job.uid, job.gid, job.additional_gids.clone()),
            (7, 8, vec![9])
        );
        assert!(job.no_new_privileges);

        let b = bundle(
            dir.path(),
            &format!(r#""annotations":{{"{TIME_BUDGET_ANNOTATION}":"soon"}},"#),
        );
        let e = Job::from_bundle(&b).unwrap_err().to_string();
        assert!(e.contains("\"soon\" is not a number"), "{e}");
    }

    #[test]
    fn entrypoints_resolve_inside_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let b = bundle(dir.path(), "");
        assert!(!looks_like_wasm(&b));
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(rootfs.join("srv")).unwrap();
        // A symbolic link to / resolves to the rootfs, not the host.
        std::fs::write(rootfs.join("m"), b"\0asm\x01\0\0\0").unwrap();
        std::os::unix::fs::symlink("/m", rootfs.join("srv/app.wasm")).unwrap();
        assert!(looks_like_wasm(&b));
        std::fs::remove_file(rootfs.join("srv/app.wasm")).unwrap();
        std::os::unix::fs::symlink("../../../../../../m", rootfs.join("srv/app.wasm")).unwrap();
        assert!(looks_like_wasm(&b));
        std::fs::write(rootfs.join("m"), b"#!/bin/sh\n").unwrap();
        assert!(!looks_like_wasm(&b));
        let b = bundle(
            dir.path(),
            &format!(r#""annotations":{{"{VARIANT_ANNOTATION}":"compat"}},"#),
        );
        assert!(looks_like_wasm(&b));
    }
}
