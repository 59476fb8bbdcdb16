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
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Config, Engine, Linker, Module, Store, StoreLimits, StoreLimitsBuilder};
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

/// Whether `bytes` start like WebAssembly (`\0asm`).
pub fn is_wasm(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm")
}

/// A host directory the module sees at `guest`.
#[derive(Debug, Clone)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
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
    /// The process's own stdio when None.
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
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
}

impl Exit {
    /// The exit status a container reports for this end.
    pub fn status(&self) -> i32 {
        match self {
            Exit::Code(c) => *c,
            Exit::Trap(_) => TRAP_STATUS,
            Exit::MemoryLimit(_) => MEMORY_LIMIT_STATUS,
            Exit::TimeBudget => TIME_BUDGET_STATUS,
        }
    }
}

/// A compiled program.
pub enum Program {
    Module(Module),
    Component(Component),
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

/// The wasmtime engine, its epoch ticker and the compiled-code cache.
pub struct Runtime {
    engine: Engine,
    cache: Option<PathBuf>,
    /// The engine's compatibility hash, part of every cache key.
    engine_key: u64,
    ticker: std::sync::Once,
}

/// A module or component compiled to this engine's native code, as bytes
/// (wasmtime's serialized form): made on the host, where the cache is, and
/// loaded where it runs.
#[derive(Clone)]
pub struct Precompiled {
    pub path: PathBuf,
    pub component: bool,
    pub code: std::sync::Arc<Vec<u8>>,
}

impl Runtime {
    /// An engine with epoch interruption (for time budgets), caching compiled
    /// code under `cache` when given (created, mode 0700, when first written:
    /// a run that compiles nothing leaves nothing).
    pub fn new(cache: Option<PathBuf>) -> Result<Runtime, WasmError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // No compiler threads: the sandbox compiles in the process that
        // then clones the container's init, which must not inherit locks
        // held by other threads.
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
        })
    }

    /// Starts the thread that advances the epoch (time budgets), once, in
    /// the process that runs modules (a thread does not survive a fork).
    fn start_ticker(&self) -> Result<(), WasmError> {
        let mut result = Ok(());
        self.ticker.call_once(|| {
            // The thread holds only a weak reference to the engine.
            let weak = self.engine.weak();
            if let Err(e) = std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || loop {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => return,
                    }
                })
            {
                result = Err(WasmError::Engine(format!("epoch thread: {e}")));
            }
        });
        result
    }

    /// Where the compiled form of `bytes` is cached.
    fn cache_file(&self, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.cache.as_ref()?;
        let digest = Sha256::digest(bytes);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Some(dir.join(format!("{hex}-{:016x}.cwasm", self.engine_key)))
    }

    /// Compiles the module or component at `path` to native code, or takes
    /// it from the cache; compiles and caches it on a miss.
    pub fn precompile(&self, path: &Path) -> Result<Precompiled, WasmError> {
        let bytes = std::fs::read(path).map_err(|source| WasmError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.precompile_bytes(path, &bytes)
    }

    /// [`Runtime::precompile`] of a module already read; `path` names it.
    pub fn precompile_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Precompiled, WasmError> {
        if !is_wasm(bytes) || bytes.len() < 8 {
            return Err(WasmError::NotWasm {
                path: path.to_path_buf(),
            });
        }
        // The version/layer field: 1 for core modules; components carry a
        // layer of 1 in the upper half (wasmparser's check, written out).
        let component = bytes[6..8] == [1, 0];
        let done = |code: Vec<u8>| Precompiled {
            path: path.to_path_buf(),
            component,
            code: std::sync::Arc::new(code),
        };
        let cached = self.cache_file(bytes);
        if let Some(code) = cached.as_ref().and_then(|f| std::fs::read(f).ok()) {
            // A truncated or stale file does not load: compiled again below.
            if self.load(&done(code.clone())).is_ok() {
                return Ok(done(code));
            }
        }
        let compile_err = |e: wasmtime::Error| WasmError::Compile {
            path: path.to_path_buf(),
            msg: chain(&e),
        };
        let code = if component {
            Component::new(&self.engine, bytes)
                .and_then(|c| c.serialize())
                .map_err(compile_err)?
        } else {
            Module::new(&self.engine, bytes)
                .and_then(|m| m.serialize())
                .map_err(compile_err)?
        };
        if let Some(file) = cached {
            store_atomically(&file, &code);
        }
        Ok(done(code))
    }

    /// The program in `p`, ready to instantiate.
    fn load(&self, p: &Precompiled) -> Result<Program, WasmError> {
        let err = |e: wasmtime::Error| WasmError::Compile {
            path: p.path.clone(),
            msg: chain(&e),
        };
        // SAFETY: the bytes are wasmtime's serialized form made by this
        // runtime's engine configuration, read from this runtime's private
        // (0700) cache directory or produced by `serialize` just now;
        // wasmtime checks the header and refuses another engine's code.
        unsafe {
            if p.component {
                Component::deserialize(&self.engine, p.code.as_slice())
                    .map(Program::Component)
                    .map_err(err)
            } else {
                Module::deserialize(&self.engine, p.code.as_slice())
                    .map(Program::Module)
                    .map_err(err)
            }
        }
    }

    /// Checks that `p` can run: its imports are all WASI's, and a module
    /// exports `_start`.
    pub fn check(&self, p: &Precompiled) -> Result<(), WasmError> {
        let link_err = |e: wasmtime::Error| WasmError::Link {
            path: p.path.clone(),
            msg: chain(&e),
        };
        match self.load(p)? {
            Program::Module(module) => {
                let linker = self.module_linker().map_err(link_err)?;
                linker.instantiate_pre(&module).map_err(link_err)?;
                match module.get_export("_start") {
                    Some(wasmtime::ExternType::Func(_)) => Ok(()),
                    _ => Err(WasmError::Link {
                        path: p.path.clone(),
                        msg: "no `_start` function (not a WASI command)".into(),
                    }),
                }
            }
            Program::Component(component) => {
                let linker = self.component_linker().map_err(link_err)?;
                linker.instantiate_pre(&component).map_err(link_err)?;
                Ok(())
            }
        }
    }

    fn module_linker(&self) -> wasmtime::Result<Linker<Host>> {
        let mut linker: Linker<Host> = Linker::new(&self.engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |h: &mut Host| {
            h.p1.as_mut().expect("a module's store has WASI p1")
        })?;
        Ok(linker)
    }

    fn component_linker(&self) -> wasmtime::Result<wasmtime::component::Linker<Host>> {
        let mut linker = wasmtime::component::Linker::<Host>::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Ok(linker)
    }

    /// Runs `spec`'s module to its end (compiled here, or from the cache).
    pub fn run(&self, spec: Spec) -> Result<Exit, WasmError> {
        let p = self.precompile(&spec.module)?;
        self.run_precompiled(spec, &p)
    }

    /// Runs `p` as `spec` says (`spec.module` only names it in messages).
    pub fn run_precompiled(&self, spec: Spec, p: &Precompiled) -> Result<Exit, WasmError> {
        self.start_ticker()?;
        let program = self.load(p)?;
        let module_path = spec.module.clone();
        let link_err = |e: wasmtime::Error| WasmError::Link {
            path: module_path.clone(),
            msg: chain(&e),
        };
        let mut limits = StoreLimitsBuilder::new().trap_on_grow_failure(true);
        if let Some(m) = spec.memory_limit {
            limits = limits.memory_size(m);
        }
        if let Some(t) = spec.table_limit {
            limits = limits.table_elements(t);
        }
        let mut wasi = wasi_ctx(&spec)?;
        let (p1, p2) = match program {
            Program::Component(_) => (None, Some((wasi.build(), ResourceTable::new()))),
            Program::Module(_) => (Some(wasi.build_p1()), None),
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
        let ticks = spec
            .time_budget
            .map(|b| (b.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64)
            // No budget: a deadline no epoch reaches (the store adds it to
            // the current epoch, so not u64::MAX).
            .unwrap_or(u64::MAX / 2);
        store.set_epoch_deadline(ticks);
        let result = match program {
            Program::Module(module) => {
                let linker = self.module_linker().map_err(link_err)?;
                let instance = linker.instantiate(&mut store, &module).map_err(link_err)?;
                let start = instance
                    .get_typed_func::<(), ()>(&mut store, "_start")
                    .map_err(|_| WasmError::Link {
                        path: spec.module.clone(),
                        msg: "no `_start` function (not a WASI command)".into(),
                    })?;
                start.call(&mut store, ()).map(|()| 0)
            }
            Program::Component(component) => {
                let linker = self.component_linker().map_err(link_err)?;
                let command = wasmtime_wasi::p2::bindings::sync::Command::instantiate(
                    &mut store, &component, &linker,
                )
                .map_err(link_err)?;
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

/// How a failed call ended.
fn classify(e: wasmtime::Error) -> Exit {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return Exit::Code(exit.0);
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
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file.file_name().and_then(|n| n.to_str()).unwrap_or("cwasm"),
        std::process::id()
    ));
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    if written.is_err() || std::fs::rename(&tmp, file).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
