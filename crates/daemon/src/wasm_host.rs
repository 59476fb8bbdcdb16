//! wasm tasks in ironcelld: a task whose bundle is a WASI image runs its
//! module in the daemon itself, on one wasmtime runtime shared by every
//! task — no process, helper or cgroup per task (docs/wasm.md).
//!
//! - Create reads and checks the module; compiled modules are kept in
//!   memory by digest (and on disk under `<root>/wasm-cache`), so a second
//!   task of the same image compiles nothing.
//! - Start runs it on the host's own thread pool; its end is the task's exit.
//! - Kill sets the run's kill flag and advances the engine's epoch: the
//!   module stops at its next epoch check (a WASI call blocked in the host
//!   returns first). No ticker thread runs for a task without a time budget.
//! - A run's stdio are the task's FIFOs (or files, or /dev/null).
//! - The module dies with the daemon: a restarted daemon reports such tasks
//!   as exited with 137.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ironcell_oci::wasm::Job;
use ironcell_oci::Bundle;
use ironcell_wasm::{Exit, Program, Runtime, Spec};

use crate::error::TaskError;

/// How many compiled programs stay in memory (a map, cleared when full:
/// simple, and an image's tasks mostly come together).
const PROGRAMS_KEPT: usize = 64;

/// The shared runtime and the compiled programs.
pub struct WasmHost {
    cache_dir: std::path::PathBuf,
    runtime: OnceLock<Result<Runtime, String>>,
    programs: Mutex<HashMap<String, Program>>,
    /// The threads modules run on: a runtime's blocking pool of their own, without
    /// a cap (a module may run for ever), idle threads kept 10 s for the
    /// next task (a thread's creation costs more than a small module's run).
    pool: OnceLock<Result<tokio::runtime::Handle, String>>,
}

/// The stdio of one run (None: /dev/null).
#[derive(Default)]
pub struct WasmStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

fn bad(msg: String) -> TaskError {
    TaskError::InvalidArgument(format!("wasm: {msg}"))
}

/// A task's module as read at Create, before [`WasmHost::create`].
pub struct Module {
    job: Job,
    bytes: Vec<u8>,
    key: String,
    program: Option<Program>,
}

impl Module {
    /// Whether its compiled program is in memory already (then Create
    /// takes microseconds; otherwise it loads the on-disk cache or runs
    /// Cranelift).
    pub fn compiled(&self) -> bool {
        self.program.is_some()
    }
}

/// One task's module, between Create and its end.
pub struct WasmProc {
    job: Job,
    program: Program,
    /// A signal number once killed.
    pub kill: Arc<AtomicI32>,
    stdio: Mutex<Option<WasmStdio>>,
}

impl WasmHost {
    pub fn new(cache_dir: std::path::PathBuf) -> WasmHost {
        WasmHost {
            cache_dir,
            runtime: OnceLock::new(),
            programs: Mutex::new(HashMap::new()),
            pool: OnceLock::new(),
        }
    }

    /// The module threads' pool (made on the first run).
    pub fn pool(&self) -> Result<&tokio::runtime::Handle, TaskError> {
        self.pool
            .get_or_init(|| {
                // Multi-threaded, with one worker: WASI's blocking calls
                // (a sleep in poll_oneoff, a read of stdin) block on this
                // runtime from the module's thread (wasmtime-wasi's
                // in_tokio), and its timers and I/O need a thread that drives
                // them; a current-thread runtime nobody drives hangs them.
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .thread_name("wasm-task")
                    .max_blocking_threads(usize::MAX >> 4)
                    .thread_keep_alive(Duration::from_secs(10))
                    .build()
                    .map_err(|e| format!("cannot make the wasm thread pool: {e}"))?;
                // Kept for the daemon's life (a runtime must not be dropped
                // from async code).
                Ok(Box::leak(Box::new(rt)).handle().clone())
            })
            .as_ref()
            .map_err(|e| TaskError::Internal(e.clone()))
    }

    /// The runtime, made on the first wasm task (a daemon that never runs
    /// one never builds wasmtime's engine).
    fn runtime(&self) -> Result<&Runtime, TaskError> {
        self.runtime
            .get_or_init(|| Runtime::new(Some(self.cache_dir.clone())).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| TaskError::Internal(e.clone()))
    }

    /// Reads the module of `bundle` (a small read: done on the calling
    /// thread) and finds its compiled program in memory if it is there.
    pub fn read(&self, bundle: &Bundle) -> Result<Module, TaskError> {
        let job = Job::from_bundle(bundle).map_err(|e| bad(e.to_string()))?;
        let mut bytes = Vec::new();
        job.open_module()
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| {
                bad(format!(
                    "module {} in the rootfs: {e}",
                    job.module.display()
                ))
            })?;
        let key = self.runtime()?.key(&bytes);
        let program = self.programs.lock().unwrap().get(&key).cloned();
        Ok(Module {
            job,
            bytes,
            key,
            program,
        })
    }

    /// The task of `module`: its program compiled (and checked) unless it
    /// was in memory, which may take a while (`Module::compiled` says).
    pub fn create(&self, module: Module, stdio: WasmStdio) -> Result<WasmProc, TaskError> {
        let Module {
            job,
            bytes,
            key,
            program,
        } = module;
        let program = match program {
            Some(mut p) => {
                p.path = job.module.clone();
                p
            }
            None => {
                let rt = self.runtime()?;
                let p = rt
                    .load(&job.module, &bytes)
                    .map_err(|e| bad(e.to_string()))?;
                rt.check(&p).map_err(|e| bad(e.to_string()))?;
                let mut programs = self.programs.lock().unwrap();
                if programs.len() >= PROGRAMS_KEPT {
                    programs.clear();
                }
                programs.insert(key, p.clone());
                p
            }
        };
        Ok(WasmProc {
            job,
            program,
            kill: Arc::new(AtomicI32::new(0)),
            stdio: Mutex::new(Some(stdio)),
        })
    }

    /// Ends `proc`'s run with `signal` at its next epoch check (before its
    /// start: it never runs).
    pub fn kill(&self, proc: &WasmProc, signal: i32) {
        proc.kill.store(signal, Ordering::Relaxed);
        if let Some(Ok(rt)) = self.runtime.get() {
            rt.interrupt();
        }
    }

    /// Runs `proc` to its end (on the calling thread); returns its status.
    pub fn run(&self, proc: &WasmProc) -> u32 {
        let stdio = proc.stdio.lock().unwrap().take().unwrap_or_default();
        let mut stderr = stdio
            .stderr
            .as_ref()
            .and_then(|f| f.try_clone().ok())
            .map(File::from);
        let mut report = |msg: String| {
            tracing::info!(module = %proc.job.module.display(), "{msg}");
            if let Some(e) = stderr.as_mut() {
                let _ = writeln!(e, "ironcell: {msg}");
            }
        };
        let killed = proc.kill.load(Ordering::Relaxed);
        if killed != 0 {
            return ironcell_basics::exit_status::of_signal(killed);
        }
        let rt = match self.runtime() {
            Ok(rt) => rt,
            Err(e) => {
                report(e.to_string());
                return ironcell_basics::exit_status::CANNOT_EXECUTE;
            }
        };
        let open = |fd: Option<OwnedFd>, write: bool| -> std::io::Result<File> {
            match fd {
                Some(fd) => Ok(File::from(fd)),
                None => File::options().read(!write).write(write).open("/dev/null"),
            }
        };
        let files = open(stdio.stdin, false)
            .and_then(|i| Ok((i, open(stdio.stdout, true)?, open(stdio.stderr, true)?)));
        let (stdin, stdout, stderr_file) = match files {
            Ok(f) => f,
            Err(e) => {
                report(format!("stdio: {e}"));
                return ironcell_basics::exit_status::CANNOT_EXECUTE;
            }
        };
        let spec = Spec {
            kill: Some(proc.kill.clone()),
            stdin: Some(stdin),
            stdout: Some(stdout),
            stderr: Some(stderr_file),
            ..Spec::from_job(&proc.job)
        };
        match rt.prepare(spec, &proc.program).and_then(|p| p.run()) {
            Ok(exit) => {
                match &exit {
                    Exit::Trap(msg) => report(format!("wasm trap: {msg}")),
                    Exit::MemoryLimit(msg) => report(format!("wasm memory limit: {msg}")),
                    Exit::TimeBudget => report("wasm time budget spent".into()),
                    Exit::Code(_) | Exit::Killed(_) => {}
                }
                exit.status() as u32
            }
            Err(e) => {
                report(e.to_string());
                ironcell_basics::exit_status::CANNOT_EXECUTE
            }
        }
    }
}
