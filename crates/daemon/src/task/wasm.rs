//! Wasm tasks: a WASI module run in the daemon itself, on the shared
//! wasmtime runtime of `crate::wasm_host`. No process of its own (it reports the
//! daemon's pid), no exec, cgroup or pause; it dies with the daemon.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use ironcell_basics::exit_status;
use ironcell_container::stats::Stats;
use ironcell_oci::Bundle;
use oci_spec::runtime::LinuxResources;

use crate::error::{Result, TaskError};
use crate::keeper::ProcKey;
use crate::reaper::Exit;
use crate::stdio;
use crate::wasm_host::{WasmHost, WasmProc, WasmStdio};

use super::backend::{
    unsupported, Announce, Backends, ExitSink, Host, Place, Spawned, TaskBackend, TaskKind,
};
use super::IoSpec;

/// Makes wasm tasks, all on one runtime.
pub struct WasmBackends {
    pub host: Arc<Host>,
    pub wasm: Arc<WasmHost>,
}

/// One wasm task.
pub struct WasmTask {
    wasm: Arc<WasmHost>,
    /// Its module; None for a task of a previous daemon (it ended with it).
    proc: Option<Arc<WasmProc>>,
    started: AtomicBool,
    /// Where the module's end goes (given by `watch`).
    on_exit: Arc<Mutex<Option<ExitSink>>>,
}

fn daemon_pid() -> i32 {
    std::process::id() as i32
}

impl WasmTask {
    /// Reports the module's end (once: later calls find no sink).
    fn exited(on_exit: &Mutex<Option<ExitSink>>, status: u32) {
        let sink = on_exit.lock().unwrap().take();
        if let Some(sink) = sink {
            sink(Exit {
                pid: daemon_pid(),
                status,
                at: SystemTime::now(),
            });
        }
    }
}

#[async_trait]
impl Backends for WasmBackends {
    /// The task's module, checked, with its stdio open.
    async fn create(
        &self,
        place: &Place,
        bundle: &Bundle,
        io: &IoSpec,
        _sandbox: Option<ironcell_sandbox::Kind>,
    ) -> Result<(Box<dyn TaskBackend>, Spawned)> {
        let bad = |e: stdio::StdioError| TaskError::InvalidArgument(e.to_string());
        if io.terminal {
            return Err(TaskError::InvalidArgument(
                "wasm: a terminal is not supported for wasm tasks in ironcelld".into(),
            ));
        }
        let stdout = stdio::open_output("stdout", &io.stdout).map_err(bad)?;
        let stderr = stdio::open_output("stderr", &io.stderr).map_err(bad)?;
        let (stdin, relay) = if io.stdin.is_empty() {
            (None, None)
        } else {
            let (fd, sink) = stdio::stdin_pipe().map_err(bad)?;
            let key = ProcKey::new(&place.namespace, &place.id, "");
            let relay = self
                .host
                .start_stdin(&key, &io.stdin, None, sink)
                .map_err(bad)?;
            (Some(fd), Some(relay))
        };
        let stdio = WasmStdio {
            stdin,
            stdout,
            stderr,
        };
        // A module whose program is in memory (the usual case: another task
        // of the same image ran before) is ready at once, here. One that
        // must be loaded from the disk cache or compiled takes milliseconds
        // to seconds: the async worker hands its other tasks over meanwhile
        // (block_in_place: the daemon's runtime is a multi-threaded one with
        // one worker, and another thread takes the worker over). A hop to
        // another thread, either way, costs more than the first case.
        let created = self.wasm.read(bundle).and_then(|module| {
            if module.compiled() {
                self.wasm.create(module, stdio)
            } else {
                tokio::task::block_in_place(|| self.wasm.create(module, stdio))
            }
        });
        match created {
            Ok(proc) => {
                let task = WasmTask {
                    wasm: self.wasm.clone(),
                    proc: Some(Arc::new(proc)),
                    started: AtomicBool::new(false),
                    on_exit: Arc::default(),
                };
                let spawned = Spawned {
                    pid: daemon_pid(),
                    stdin: relay,
                    master: None,
                };
                Ok((Box::new(task), spawned))
            }
            Err(e) => {
                if let Some(r) = relay {
                    r.close();
                }
                Err(e)
            }
        }
    }

    async fn discard(&self, _place: &Place) -> Result<()> {
        // A module runs in the daemon: it died with it, leaving nothing.
        Ok(())
    }

    fn recover(&self, _kind: TaskKind, _place: &Place) -> Result<Box<dyn TaskBackend>> {
        Ok(Box::new(WasmTask {
            wasm: self.wasm.clone(),
            proc: None,
            started: AtomicBool::new(false),
            on_exit: Arc::default(),
        }))
    }
}

#[async_trait]
impl TaskBackend for WasmTask {
    fn kind(&self) -> TaskKind {
        TaskKind::Wasm
    }

    fn outlives_daemon(&self) -> bool {
        false
    }

    fn watch(&self, _exec_id: Option<&str>, _pid: i32, on_exit: ExitSink) {
        *self.on_exit.lock().unwrap() = Some(on_exit);
    }

    /// Runs the module on the wasm host's own thread pool, not the daemon's
    /// blocking pool: a long-running module must not hold up the short
    /// blocking work of other tasks. Its end is the task's exit.
    async fn start(&self, announce: Announce<'_>) -> Result<()> {
        let Some(proc) = self.proc.clone() else {
            return Err(TaskError::FailedPrecondition(
                "the module ended with the previous daemon".into(),
            ));
        };
        self.started.store(true, Ordering::Relaxed);
        announce();
        let pool = match self.wasm.pool() {
            Ok(p) => p,
            Err(e) => {
                // As a process that could not be exec'd.
                WasmTask::exited(&self.on_exit, exit_status::CANNOT_EXECUTE);
                return Err(e);
            }
        };
        let (wasm, on_exit) = (self.wasm.clone(), self.on_exit.clone());
        pool.spawn_blocking(move || {
            let status = wasm.run(&proc);
            // Recorded right here: the sink is synchronous (a watch update,
            // the record's write, an event queued), and a hop to an async
            // worker would cost a thread wake-up per task.
            WasmTask::exited(&on_exit, status);
        });
        Ok(())
    }

    fn can_exec(&self) -> Result<()> {
        Err(unsupported("exec", "wasm"))
    }

    async fn exec(&self, _: &ProcKey, _: &str, _: &IoSpec, _: &Path) -> Result<Spawned> {
        Err(unsupported("exec", "wasm"))
    }

    async fn signal(&self, exec: Option<(&str, i32)>, signal: i32, _all: bool) -> Result<()> {
        if exec.is_some() {
            return Err(unsupported("exec", "wasm"));
        }
        if let Some(proc) = &self.proc {
            self.wasm.kill(proc, signal);
        }
        if !self.started.load(Ordering::Relaxed) {
            // Never started: it ends now, as a killed process would.
            WasmTask::exited(&self.on_exit, exit_status::of_signal(signal));
        }
        Ok(())
    }

    async fn delete(&self, _live_init: Option<i32>) -> Result<()> {
        self.on_exit.lock().unwrap().take();
        Ok(())
    }

    async fn pause(&self, pause: bool) -> Result<()> {
        Err(unsupported(if pause { "pause" } else { "resume" }, "wasm"))
    }

    async fn paused(&self) -> bool {
        false
    }

    async fn pids(&self) -> Result<Vec<i32>> {
        // The module is no process of its own.
        Ok(Vec::new())
    }

    async fn stats(&self) -> Result<Stats> {
        Err(unsupported("metrics", "wasm"))
    }

    async fn update(&self, _: LinuxResources) -> Result<()> {
        Err(unsupported("update", "wasm"))
    }

    async fn memory_cgroup(&self) -> Option<PathBuf> {
        None
    }
}
