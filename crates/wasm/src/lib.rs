//! ironcell's WebAssembly runner: runs a container's entrypoint module with
//! wasmtime and WASI, the engine of the `wasm` sandbox (docs/wasm.md).
//!
//! - Core modules run with WASI preview 1 (`_start`), components with WASI
//!   preview 2 (`wasi:cli/run`).
//! - The process's arguments, environment, preopened directories (read-only
//!   where the mount is) and stdio come from the caller ([`Spec`]).
//! - Limits: linear memory and tables are capped by a store limiter; a time
//!   budget is enforced with epoch interruption.
//! - Compiled code is cached on disk by the module's digest and the engine's
//!   compatibility hash ([`Runtime::new`]), so a second start skips
//!   compilation.
//!
//! How a run ends is an [`Exit`], with the exit status a container reports
//! ([`Exit::status`]).

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub use ironcell_oci::wasm::{is_wasm, Preopen};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{
    Config, Engine, Linker, Module, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::cli::{InputFile, OutputFile};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// How often the epoch advances: the granularity of time budgets.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The exit status of a trapped module: 128 + SIGABRT, as a native program
/// that aborts.
pub const TRAP_STATUS: i32 = 128 + 6;
/// A module stopped at its memory limit: 128 + SIGKILL, as a container the
/// kernel's OOM killer ends.
pub const MEMORY_LIMIT_STATUS: i32 = 128 + 9;
/// A module stopped at the end of its time budget: 128 + SIGXCPU, as a
/// process over its CPU limit.
pub const TIME_BUDGET_STATUS: i32 = 128 + 24;

#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("cannot read module {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a WebAssembly module or component")]
    NotWasm { path: PathBuf },
    #[error("invalid module {path}: {msg}")]
    Compile { path: PathBuf, msg: String },
    #[error("module {path}: {msg}")]
    Link { path: PathBuf, msg: String },
    #[error("preopened directory {host}: {msg}")]
    Preopen { host: PathBuf, msg: String },
    #[error("wasm engine: {0}")]
    Engine(String),
}

/// The first error line of a wasmtime error, with its causes.
fn chain(e: &wasmtime::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// What to run, and how.
#[derive(Debug, Default)]
pub struct Spec {
    pub module: PathBuf,
    /// argv, the program name first.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub preopens: Vec<Preopen>,
    /// Cap on linear memory, per memory (bytes).
    pub memory_limit: Option<usize>,
    /// Cap on table elements, per table.
    pub table_limit: Option<usize>,
    /// Wall-clock budget of the run (epoch interruption).
    pub time_budget: Option<Duration>,
    /// Set to a signal number, then call [`Runtime::interrupt`], to end
    /// the run at its next epoch check (a call blocked in the host returns
    /// first).
    pub kill: Option<Arc<AtomicI32>>,
    /// The process's own stdio when None.
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
}

impl Spec {
    /// The run a container's job describes: its argv, environment and
    /// preopens; its memory limit caps each linear memory and, at 8 bytes an
    /// element (a function reference), each table; its time budget. stdio
    /// and the kill flag are the caller's.
    pub fn from_job(job: &ironcell_oci::wasm::Job) -> Spec {
        Spec {
            module: job.module.clone(),
            args: job.args.clone(),
            env: job.env.clone(),
            preopens: job.preopens.clone(),
            memory_limit: job.memory_limit.map(|m| m as usize),
            table_limit: job.memory_limit.map(|m| (m / 8) as usize),
            time_budget: job.time_budget_ms.map(Duration::from_millis),
            ..Default::default()
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// `proc_exit`, or the end of `_start` / `run` (0; an error result of a
    /// component's `run` is 1).
    Code(i32),
    /// A trap: unreachable, out of bounds, stack overflow...
    Trap(String),
    /// Linear memory or a table could not grow past its limit.
    MemoryLimit(String),
    /// The time budget ran out.
    TimeBudget,
    /// Ended through [`Spec::kill`] with this signal.
    Killed(i32),
}

impl Exit {
    /// The exit status a container reports for this end.
    pub fn status(&self) -> i32 {
        match self {
            Exit::Code(c) => *c,
            Exit::Trap(_) => TRAP_STATUS,
            Exit::MemoryLimit(_) => MEMORY_LIMIT_STATUS,
            Exit::TimeBudget => TIME_BUDGET_STATUS,
            Exit::Killed(sig) => 128 + sig,
        }
    }
}

/// A compiled module or component, ready to instantiate (cheap to clone).
#[derive(Clone)]
pub struct Program {
    /// Names the program in messages.
    pub path: PathBuf,
    code: Code,
}

#[derive(Clone)]
enum Code {
    Module(Module),
    Component(Component),
}

impl Program {
    pub fn is_component(&self) -> bool {
        matches!(self.code, Code::Component(_))
    }
}

/// The store's data: WASI's state and the limits.
struct Host {
    p1: Option<WasiP1Ctx>,
    p2: Option<(WasiCtx, ResourceTable)>,
    limits: StoreLimits,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (ctx, table) = self.p2.as_mut().expect("a component's store has WASI p2");
        WasiCtxView { ctx, table }
    }
}

/// A run's end asked for from outside (kill): the module stops at its next
/// epoch check.
#[derive(Debug)]
struct KilledBy(i32);

impl std::fmt::Display for KilledBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "killed by signal {}", self.0)
    }
}

impl std::error::Error for KilledBy {}

/// The wasmtime engine, its epoch ticker, the linkers and the
/// compiled-code cache. One runtime serves any number of runs, from any
/// number of threads.
pub struct Runtime {
    engine: Engine,
    cache: Option<PathBuf>,
    /// The engine's compatibility hash, part of every cache key.
    engine_key: u64,
    ticker: std::sync::Once,
    ticks: Arc<Ticks>,
    module_linker: OnceLock<Linker<Host>>,
    component_linker: OnceLock<wasmtime::component::Linker<Host>>,
}

impl Runtime {
    /// An engine with epoch interruption (for time budgets and kills),
    /// caching compiled code under `cache` when given (created, mode 0700,
    /// when first written: a run that compiles nothing leaves nothing).
    pub fn new(cache: Option<PathBuf>) -> Result<Runtime, WasmError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // No compiler threads: one module compiles on the thread that
        // asked, and a runner process stays single-threaded until it runs.
        config.parallel_compilation(false);
        let engine = Engine::new(&config).map_err(|e| WasmError::Engine(chain(&e)))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = h.finish();
        Ok(Runtime {
            engine,
            cache,
            engine_key,
            ticker: std::sync::Once::new(),
            ticks: Arc::default(),
            module_linker: OnceLock::new(),
            component_linker: OnceLock::new(),
        })
    }

    /// Counts a run that needs the epoch to advance (a time budget) until
    /// the returned guard drops; starts the ticker thread
    /// on the first such run. The thread parks while no run needs it, so an
    /// idle process (ironcelld) is not woken 100 times a second.
    fn tick_for_run(&self) -> Result<TickGuard, WasmError> {
        let mut result = Ok(());
        self.ticker.call_once(|| {
            // The thread holds only a weak reference to the engine.
            let weak = self.engine.weak();
            let ticks = self.ticks.clone();
            match std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || loop {
                    if ticks.active.load(Ordering::Acquire) == 0 {
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => return,
                    }
                }) {
                Ok(h) => {
                    let _ = self.ticks.thread.set(h.thread().clone());
                }
                Err(e) => result = Err(WasmError::Engine(format!("epoch thread: {e}"))),
            }
        });
        result?;
        self.ticks.active.fetch_add(1, Ordering::AcqRel);
        if let Some(t) = self.ticks.thread.get() {
            t.unpark();
        }
        Ok(TickGuard(self.ticks.clone()))
    }

    /// Makes every run of this runtime look at its kill flag
    /// ([`Spec::kill`]) at its next epoch check: call it after setting a
    /// flag. So a run with a kill flag but no time budget needs no ticker
    /// thread (waking one for every run of a short module cost a thread
    /// switch each in ironcelld).
    pub fn interrupt(&self) {
        self.engine.increment_epoch();
    }

    /// The cache key of `bytes`: their sha256 and the engine's hash.
    pub fn key(&self, bytes: &[u8]) -> String {
        let digest = Sha256::digest(bytes);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}-{:016x}", self.engine_key)
    }

    /// Compiles the module or component at `path`, or takes it from the
    /// cache; compiles and caches it on a miss.
    pub fn load_file(&self, path: &Path) -> Result<Program, WasmError> {
        let bytes = std::fs::read(path).map_err(|source| WasmError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.load(path, &bytes)
    }

    /// [`Runtime::load_file`] of a module already read; `path` names it.
    pub fn load(&self, path: &Path, bytes: &[u8]) -> Result<Program, WasmError> {
        if !is_wasm(bytes) || bytes.len() < 8 {
            return Err(WasmError::NotWasm {
                path: path.to_path_buf(),
            });
        }
        // The version/layer field: 1 for core modules; components carry a
        // layer of 1 in the upper half (wasmparser's check, written out).
        let component = bytes[6..8] == [1, 0];
        let program = |code| Program {
            path: path.to_path_buf(),
            code,
        };
        let cached = self
            .cache
            .as_ref()
            .map(|dir| dir.join(format!("{}.cwasm", self.key(bytes))));
        if let Some(file) = cached.as_ref().filter(|f| f.exists()) {
            // SAFETY: the file is wasmtime's serialized form made by this
            // runtime's engine configuration (its hash is in the name), in
            // this runtime's private (0700) cache directory, written whole
            // by a rename; wasmtime checks the header and refuses another
            // engine's code. A truncated or stale file fails to load and is
            // compiled again below.
            let loaded = unsafe {
                if component {
                    Component::deserialize_file(&self.engine, file).map(Code::Component)
                } else {
                    Module::deserialize_file(&self.engine, file).map(Code::Module)
                }
            };
            if let Ok(code) = loaded {
                return Ok(program(code));
            }
        }
        let compile_err = |e: wasmtime::Error| WasmError::Compile {
            path: path.to_path_buf(),
            msg: chain(&e),
        };
        let (code, serialized) = if component {
            let c = Component::new(&self.engine, bytes).map_err(compile_err)?;
            let s = cached.as_ref().and_then(|_| c.serialize().ok());
            (Code::Component(c), s)
        } else {
            let m = Module::new(&self.engine, bytes).map_err(compile_err)?;
            let s = cached.as_ref().and_then(|_| m.serialize().ok());
            (Code::Module(m), s)
        };
        if let (Some(file), Some(data)) = (cached, serialized) {
            store_atomically(&file, &data);
        }
        Ok(program(code))
    }

    /// Checks that `p` can run: its imports are all WASI's, and a module
    /// exports `_start`.
    pub fn check(&self, p: &Program) -> Result<(), WasmError> {
        let link_err = |e: wasmtime::Error| WasmError::Link {
            path: p.path.clone(),
            msg: chain(&e),
        };
        match &p.code {
            Code::Module(module) => {
                self.module_linker()
                    .map_err(link_err)?
                    .instantiate_pre(module)
                    .map_err(link_err)?;
                match module.get_export("_start") {
                    Some(wasmtime::ExternType::Func(_)) => Ok(()),
                    _ => Err(WasmError::Link {
                        path: p.path.clone(),
                        msg: "no `_start` function (not a WASI command)".into(),
                    }),
                }
            }
            Code::Component(component) => {
                self.component_linker()
                    .map_err(link_err)?
                    .instantiate_pre(component)
                    .map_err(link_err)?;
                Ok(())
            }
        }
    }

    fn module_linker(&self) -> wasmtime::Result<&Linker<Host>> {
        if let Some(l) = self.module_linker.get() {
            return Ok(l);
        }
        let mut linker: Linker<Host> = Linker::new(&self.engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |h: &mut Host| {
            h.p1.as_mut().expect("a module's store has WASI p1")
        })?;
        Ok(self.module_linker.get_or_init(|| linker))
    }

    fn component_linker(&self) -> wasmtime::Result<&wasmtime::component::Linker<Host>> {
        if let Some(l) = self.component_linker.get() {
            return Ok(l);
        }
        let mut linker = wasmtime::component::Linker::<Host>::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Ok(self.component_linker.get_or_init(|| linker))
    }

    /// Runs `spec`'s module to its end (compiled here, or from the cache).
    pub fn run(&self, spec: Spec) -> Result<Exit, WasmError> {
        let p = self.load_file(&spec.module)?;
        self.prepare(spec, &p)?.run()
    }

    /// Everything a run of `p` needs short of running it: WASI's context
    /// (the preopened directories are opened here, so a missing one is an
    /// error before the start), the store and its limits.
    pub fn prepare<'a>(&'a self, spec: Spec, p: &Program) -> Result<Prepared<'a>, WasmError> {
        let mut limits = StoreLimitsBuilder::new().trap_on_grow_failure(true);
        if let Some(m) = spec.memory_limit {
            limits = limits.memory_size(m);
        }
        if let Some(t) = spec.table_limit {
            limits = limits.table_elements(t);
        }
        let mut wasi = wasi_ctx(&spec)?;
        let (p1, p2) = match &p.code {
            Code::Component(_) => (None, Some((wasi.build(), ResourceTable::new()))),
            Code::Module(_) => (Some(wasi.build_p1()), None),
        };
        let mut store = Store::new(
            &self.engine,
            Host {
                p1,
                p2,
                limits: limits.build(),
            },
        );
        store.limiter(|h| &mut h.limits);
        let mut tick = None;
        if spec.time_budget.is_some() || spec.kill.is_some() {
            if spec.time_budget.is_some() {
                tick = Some(self.tick_for_run()?);
            }
            let kill = spec.kill.clone();
            let killed_already = kill.as_ref().is_some_and(|k| k.load(Ordering::SeqCst) != 0);
            let budget = spec.time_budget;
            let mut deadline = None;
            store.epoch_deadline_callback(move |_| {
                if let Some(sig) = kill.as_ref().map(|k| k.load(Ordering::Relaxed)) {
                    if sig != 0 {
                        return Err(KilledBy(sig).into());
                    }
                }
                if let Some(b) = budget {
                    // The budget counts from the first tick of the run.
                    let d = *deadline.get_or_insert_with(|| Instant::now() + b);
                    if Instant::now() >= d {
                        return Err(wasmtime::Trap::Interrupt.into());
                    }
                }
                Ok(UpdateDeadline::Continue(1))
            });
            // A kill whose interrupt came before this store existed moved
            // no deadline of it: the first epoch check sees the flag.
            store.set_epoch_deadline(if killed_already { 0 } else { 1 });
        } else {
            // A deadline no epoch reaches (the store adds it to the current
            // epoch, so not u64::MAX): no ticker thread for a plain run.
            store.set_epoch_deadline(u64::MAX / 2);
        }
        Ok(Prepared {
            runtime: self,
            program: p.clone(),
            store,
            _tick: tick,
        })
    }
}

/// A run ready to go ([`Runtime::prepare`]).
pub struct Prepared<'a> {
    runtime: &'a Runtime,
    program: Program,
    store: Store<Host>,
    _tick: Option<TickGuard>,
}

/// The epoch ticker's state: how many runs need it, and its thread.
#[derive(Default)]
struct Ticks {
    active: std::sync::atomic::AtomicUsize,
    thread: OnceLock<std::thread::Thread>,
}

/// One run's claim on the ticker.
struct TickGuard(Arc<Ticks>);

impl Drop for TickGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Prepared<'_> {
    /// Instantiates the program and runs it to its end.
    pub fn run(self) -> Result<Exit, WasmError> {
        let Prepared {
            runtime,
            program,
            mut store,
            _tick,
        } = self;
        let link_err = |e: wasmtime::Error| WasmError::Link {
            path: program.path.clone(),
            msg: chain(&e),
        };
        let result = match &program.code {
            Code::Module(module) => {
                let instance = instantiated(
                    runtime
                        .module_linker()
                        .map_err(link_err)?
                        .instantiate(&mut store, module),
                    link_err,
                )?;
                let instance = match instance {
                    Ok(i) => i,
                    Err(exit) => return Ok(exit),
                };
                let start = instance
                    .get_typed_func::<(), ()>(&mut store, "_start")
                    .map_err(|_| WasmError::Link {
                        path: program.path.clone(),
                        msg: "no `_start` function (not a WASI command)".into(),
                    })?;
                start.call(&mut store, ()).map(|()| 0)
            }
            Code::Component(component) => {
                let linker = runtime.component_linker().map_err(link_err)?;
                let command = instantiated(
                    wasmtime_wasi::p2::bindings::sync::Command::instantiate(
                        &mut store, component, linker,
                    ),
                    link_err,
                )?;
                let command = match command {
                    Ok(c) => c,
                    Err(exit) => return Ok(exit),
                };
                command
                    .wasi_cli_run()
                    .call_run(&mut store)
                    .map(|r| if r.is_ok() { 0 } else { 1 })
            }
        };
        Ok(match result {
            Ok(code) => Exit::Code(code),
            Err(e) => classify(e),
        })
    }
}

/// An instantiation error: a trap or a kill in a start function is the
/// run's end (Ok(Err(exit))); anything else is a link error.
fn instantiated<T>(
    r: wasmtime::Result<T>,
    link_err: impl Fn(wasmtime::Error) -> WasmError,
) -> Result<Result<T, Exit>, WasmError> {
    let e = match r {
        Ok(t) => return Ok(Ok(t)),
        Err(e) => e,
    };
    if e.downcast_ref::<wasmtime::Trap>().is_some()
        || e.downcast_ref::<KilledBy>().is_some()
        || e.downcast_ref::<I32Exit>().is_some()
    {
        return Ok(Err(classify(e)));
    }
    Err(link_err(e))
}

/// How a failed call ended.
fn classify(e: wasmtime::Error) -> Exit {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return Exit::Code(exit.0);
    }
    if let Some(k) = e.downcast_ref::<KilledBy>() {
        return Exit::Killed(k.0);
    }
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        if *trap == wasmtime::Trap::Interrupt {
            return Exit::TimeBudget;
        }
    }
    let msg = chain(&e);
    if msg.contains("forcing trap when growing") || msg.contains("forcing a memory growth failure")
    {
        return Exit::MemoryLimit(msg);
    }
    Exit::Trap(msg)
}

/// WASI's context for `spec`.
fn wasi_ctx(spec: &Spec) -> Result<WasiCtxBuilder, WasmError> {
    let mut b = WasiCtxBuilder::new();
    b.args(&spec.args).envs(&spec.env);
    match &spec.stdin {
        Some(f) => {
            b.stdin(InputFile::new(clone(f)?));
        }
        None => {
            b.inherit_stdin();
        }
    }
    match &spec.stdout {
        Some(f) => {
            b.stdout(OutputFile::new(clone(f)?));
        }
        None => {
            b.inherit_stdout();
        }
    }
    match &spec.stderr {
        Some(f) => {
            b.stderr(OutputFile::new(clone(f)?));
        }
        None => {
            b.inherit_stderr();
        }
    }
    for p in &spec.preopens {
        let perms = if p.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&p.host, &p.guest, perms)
            .map_err(|e| WasmError::Preopen {
                host: p.host.clone(),
                msg: chain(&e),
            })?;
    }
    Ok(b)
}

fn clone(f: &File) -> Result<File, WasmError> {
    f.try_clone()
        .map_err(|e| WasmError::Engine(format!("stdio: {e}")))
}

/// Writes `data` to `file` through a temporary file renamed over it:
/// concurrent starts of one module each write a whole file, and readers
/// never see a partial one. A failure only costs the next start a compile.
fn store_atomically(file: &Path, data: &[u8]) {
    let Some(dir) = file.parent() else { return };
    use std::os::unix::fs::DirBuilderExt;
    if std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .is_err()
    {
        return;
    }
    let _ = ironcell_basics::atomic_file::write_durably(file, data);
}
