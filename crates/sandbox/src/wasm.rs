//! The wasm sandbox: a container whose process is a WebAssembly module run
//! by wasmtime (`ironcell-wasm`), inside the same namespaces, cgroups, mounts
//! and seccomp filter as a namespace container (docs/wasm.md).
//!
//! The container's init does not exec: libcontainer runs it up to the point
//! of exec'ing the process, then hands over to [`WasmExecutor`], which runs
//! the module with WASI (the container's `/` preopened, read-only when the
//! root is) and exits with the module's status. The module is compiled on
//! the host at create (or taken from the cache under the state root), and
//! the init, a copy of the creating process, finds the compiled code in its
//! memory after pivot_root.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ironcell_container::stats::Stats;
use ironcell_container::{
    CreateOptions, Engine, ExecOptions, Executor, ExecutorError, ExecutorValidationError, Workload,
};
use ironcell_oci::{Bundle, ContainerState};
use ironcell_wasm::{Exit, Precompiled, Preopen, Runtime};
use oci_spec::runtime::{LinuxResources, Spec};

use crate::{Kind, Result, Sandbox, SandboxError};

/// The file in a container's state directory that marks it as wasm.
const KIND_FILE: &str = "ironcell-sandbox";
/// The annotation giving a wasm container a time budget, in milliseconds.
pub const TIME_BUDGET_ANNOTATION: &str = "io.ironcell.wasm.time-budget-ms";
/// runwasi's and crun's image annotation for WASI images.
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";

pub struct WasmSandbox {
    engine: Engine,
    cache: PathBuf,
}

impl WasmSandbox {
    /// Compiled modules are cached under `<state root>/.wasm-cache`.
    pub fn new(engine: Engine) -> Self {
        let cache = engine.root().join(".wasm-cache");
        WasmSandbox { engine, cache }
    }

    fn marked(&self, id: &str) -> bool {
        is_wasm_container(&self.engine, id)
    }

    fn unsupported(what: &'static str) -> SandboxError {
        SandboxError::Unsupported {
            what,
            kind: Kind::Wasm,
        }
    }
}

/// Whether `id`'s state directory under `engine` marks a wasm container.
pub(crate) fn is_wasm_container(engine: &Engine, id: &str) -> bool {
    std::fs::read_to_string(engine.dir(id).join(KIND_FILE))
        .is_ok_and(|k| k.trim() == Kind::Wasm.as_str())
}

/// Opens `path` as the container sees it: inside `root`, with `..` and
/// symbolic links (absolute ones too) resolved within it (openat2's
/// RESOLVE_IN_ROOT), so an image cannot point the host at its own files.
fn open_in_root(root: &Path, path: &Path) -> std::io::Result<File> {
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
fn entrypoint(spec: &Spec) -> Option<PathBuf> {
    let process = spec.process().as_ref()?;
    let first = process.args().as_ref()?.first()?;
    let p = Path::new(first);
    Some(if p.is_absolute() {
        p.to_path_buf()
    } else {
        process.cwd().join(p)
    })
}

/// Whether the bundle's entrypoint is a WebAssembly file.
pub(crate) fn entrypoint_is_wasm(bundle: &Bundle) -> bool {
    let Some(path) = entrypoint(&bundle.spec) else {
        return false;
    };
    let mut magic = [0u8; 4];
    open_in_root(&bundle.rootfs, &path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && ironcell_wasm::is_wasm(&magic)
}

/// Runs the module in the container's init, in place of exec.
#[derive(Clone)]
struct WasmExecutor {
    module: Precompiled,
    time_budget: Option<Duration>,
}

impl Executor for WasmExecutor {
    fn exec(&self, spec: &Spec) -> std::result::Result<(), ExecutorError> {
        let process = spec.process().as_ref().ok_or(ExecutorError::InvalidArg)?;
        let env = process
            .env()
            .iter()
            .flatten()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect();
        let read_only = spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false);
        let memory_limit = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .filter(|l| *l > 0)
            .map(|l| l as usize);
        let run = ironcell_wasm::Spec {
            module: self.module.path.clone(),
            args: process.args().clone().unwrap_or_default(),
            env,
            preopens: vec![Preopen {
                host: "/".into(),
                guest: "/".into(),
                read_only,
            }],
            memory_limit,
            time_budget: self.time_budget,
            ..Default::default()
        };
        let status = match Runtime::new(None).and_then(|rt| rt.run_precompiled(run, &self.module)) {
            Ok(exit) => {
                match &exit {
                    Exit::Trap(msg) => eprintln!("ironcell: wasm trap: {msg}"),
                    Exit::MemoryLimit(msg) => eprintln!("ironcell: wasm memory limit: {msg}"),
                    Exit::TimeBudget => eprintln!("ironcell: wasm time budget spent"),
                    Exit::Code(_) => {}
                }
                exit.status()
            }
            Err(e) => {
                eprintln!("ironcell: {e}");
                // As a shell reports a command it cannot run.
                126
            }
        };
        std::process::exit(status)
    }

    fn validate(&self, _spec: &Spec) -> std::result::Result<(), ExecutorValidationError> {
        // Checked on the host at create (Runtime::check).
        Ok(())
    }
}

impl Sandbox for WasmSandbox {
    fn kind(&self) -> Kind {
        Kind::Wasm
    }

    fn owns(&self, id: &str) -> bool {
        self.engine.exists(id) && self.marked(id)
    }

    fn ids(&self) -> Result<Vec<String>> {
        Ok(self
            .engine
            .ids()?
            .into_iter()
            .filter(|id| self.marked(id))
            .collect())
    }

    fn create(&self, id: &str, bundle: &Bundle, opts: &CreateOptions) -> Result<()> {
        let path = entrypoint(&bundle.spec)
            .ok_or_else(|| SandboxError::Wasm("config.json has no process.args".into()))?;
        let mut bytes = Vec::new();
        open_in_root(&bundle.rootfs, &path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| {
                SandboxError::Wasm(format!("module {} in the rootfs: {e}", path.display()))
            })?;
        let rt = Runtime::new(Some(self.cache.clone())).map_err(wasm_err)?;
        let module = rt.precompile_bytes(&path, &bytes).map_err(wasm_err)?;
        rt.check(&module).map_err(wasm_err)?;
        let time_budget = match bundle
            .spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(TIME_BUDGET_ANNOTATION))
        {
            Some(ms) => Some(Duration::from_millis(ms.parse().map_err(|_| {
                SandboxError::Wasm(format!(
                    "annotation {TIME_BUDGET_ANNOTATION}: {ms:?} is not a number of milliseconds"
                ))
            })?)),
            None => None,
        };
        let mut opts = opts.clone();
        opts.workload = Some(Workload(Box::new(WasmExecutor {
            module,
            time_budget,
        })));
        self.engine.create(id, bundle, &opts)?;
        if let Err(e) = std::fs::write(self.engine.dir(id).join(KIND_FILE), Kind::Wasm.as_str()) {
            let _ = self.engine.load(id).and_then(|mut c| c.delete(true));
            return Err(SandboxError::Wasm(format!(
                "cannot record {id}'s kind: {e}"
            )));
        }
        Ok(())
    }

    fn start(&self, id: &str) -> Result<()> {
        Ok(self.engine.load(id)?.start()?)
    }

    fn state(&self, id: &str) -> Result<ContainerState> {
        Ok(self.engine.load(id)?.state(Kind::Wasm.as_str()))
    }

    fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        Ok(self.engine.load(id)?.kill(signal, all)?)
    }

    fn delete(&self, id: &str, force: bool) -> Result<()> {
        Ok(self.engine.load(id)?.delete(force)?)
    }

    fn pause(&self, _id: &str) -> Result<()> {
        Err(Self::unsupported("pause"))
    }

    fn resume(&self, _id: &str) -> Result<()> {
        Err(Self::unsupported("resume"))
    }

    fn pids(&self, id: &str) -> Result<Vec<i32>> {
        Ok(self.engine.load(id)?.pids()?)
    }

    fn exec(&self, _id: &str, _opts: &ExecOptions) -> Result<i32> {
        Err(Self::unsupported("exec"))
    }

    fn stats(&self, id: &str) -> Result<Stats> {
        Ok(self.engine.load(id)?.stats()?)
    }

    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        Ok(self.engine.load(id)?.update(resources)?)
    }

    fn memory_cgroup(&self, id: &str) -> Result<Option<PathBuf>> {
        Ok(self.engine.load(id)?.memory_cgroup())
    }
}

fn wasm_err(e: ironcell_wasm::WasmError) -> SandboxError {
    SandboxError::Wasm(e.to_string())
}
