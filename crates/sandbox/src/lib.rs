//! Sandboxes: the isolation a container runs in. Every front end (the
//! `ironcell` CLI now, the `ironcelld` daemon later) goes through
//! [`Sandboxes`], which picks the backend for a new container and routes
//! every later operation to the backend that owns the container's id.
//!
//! Backends: `namespace` (host namespaces and cgroups, built on the
//! `ironcell-container` engine), `vm` (a microVM per container, whose guest
//! agent runs the container with the same engine) and `wasm` (a WebAssembly
//! module run by the `ironcell-wasm` runner process). `app-kernel` is named
//! so that selecting it gives a clear "not built yet" error rather than a
//! silent fallback.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use ironcell_container::stats::Stats;
use ironcell_container::{ContainerError, CreateOptions, Engine, ExecOptions};
use ironcell_oci::{Bundle, ContainerState};
use oci_spec::runtime::LinuxResources;
use thiserror::Error;

pub mod config;
pub mod host;
mod namespace;
pub mod vm;
mod wasm;

pub use namespace::NamespaceSandbox;
pub use vm::VmSandbox;
pub use wasm::{WasmSandbox, RUNNER_ENV};

/// A sandbox family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Namespace,
    Vm,
    Wasm,
    AppKernel,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Namespace, Kind::Vm, Kind::Wasm, Kind::AppKernel];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::Vm => "vm",
            Kind::Wasm => "wasm",
            Kind::AppKernel => "app-kernel",
        }
    }

    /// Whether this build of ironcell can run this kind.
    pub fn is_built(self) -> bool {
        matches!(self, Kind::Namespace | Kind::Vm | Kind::Wasm)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = SandboxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| SandboxError::UnknownKind(s.to_string()))
    }
}

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("unknown sandbox kind {0:?} (known: namespace, vm, wasm, app-kernel)")]
    UnknownKind(String),
    #[error(
        "the {0} sandbox is not built yet in this version of ironcell (available: namespace, vm, wasm)"
    )]
    NotBuilt(Kind),
    #[error("{what} is not supported for {kind} containers")]
    Unsupported { what: &'static str, kind: Kind },
    #[error("wasm: {0}")]
    Wasm(String),
    #[error("vm: {0}")]
    Vm(String),
    #[error("{0}")]
    Config(String),
    #[error("annotation io.ironcell.sandbox: {0}")]
    Annotation(Box<SandboxError>),
    #[error(transparent)]
    Container(#[from] ContainerError),
}

/// Ids of the containers under `root` whose state directory holds the
/// file `marker` (each backend keeps a state file of its own name).
pub(crate) fn ids_with(root: &std::path::Path, marker: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().join(marker).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

impl SandboxError {
    /// The error's text without the `vm: ` prefix of [`SandboxError::Vm`]
    /// (for wrapping it again).
    pub fn message(&self) -> String {
        match self {
            SandboxError::Vm(m) => m.clone(),
            e => e.to_string(),
        }
    }
}

pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// What every backend does for the runtime CLI and the daemon.
pub trait Sandbox {
    fn kind(&self) -> Kind;
    /// Whether container `id` belongs to this backend.
    fn owns(&self, id: &str) -> bool;
    fn ids(&self) -> Result<Vec<String>>;
    fn create(&self, id: &str, bundle: &Bundle, opts: &CreateOptions) -> Result<()>;
    fn start(&self, id: &str) -> Result<()>;
    fn state(&self, id: &str) -> Result<ContainerState>;
    fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()>;
    fn delete(&self, id: &str, force: bool) -> Result<()>;
    fn pause(&self, id: &str) -> Result<()>;
    fn resume(&self, id: &str) -> Result<()>;
    fn pids(&self, id: &str) -> Result<Vec<i32>>;
    /// Starts a process in the container; returns its host pid.
    fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32>;
    /// Resource usage (cgroup statistics).
    fn stats(&self, id: &str) -> Result<Stats>;
    /// Applies new resource limits to a live container.
    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()>;
    /// The host memory cgroup where the container's OOM kills can be
    /// watched; None when the backend has none on the host (or reports OOMs
    /// itself).
    fn memory_cgroup(&self, id: &str) -> Result<Option<std::path::PathBuf>>;
    /// For a backend that reports OOM kills itself (no host memory cgroup):
    /// a blocking call that returns once per OOM kill in the container, and
    /// fails once the container is gone. None for the others.
    fn oom_waiter(&self, _id: &str) -> Result<Option<OomWaiter>> {
        Ok(None)
    }
}

/// See [`Sandbox::oom_waiter`].
pub type OomWaiter = Box<dyn FnMut() -> Result<()> + Send>;

/// Every backend under one state root.
pub struct Sandboxes {
    root: PathBuf,
    backends: Vec<Box<dyn Sandbox>>,
}

impl Sandboxes {
    pub fn new(root: impl Into<PathBuf>, systemd_cgroup: bool) -> Self {
        Self::with_config(root, systemd_cgroup, None)
    }

    /// Every backend, the vm sandbox's configuration read from `config`
    /// (`--config`) instead of its default place.
    pub fn with_config(
        root: impl Into<PathBuf>,
        systemd_cgroup: bool,
        config: Option<PathBuf>,
    ) -> Self {
        let root = root.into();
        let engine = Engine::new(root.clone(), systemd_cgroup);
        Sandboxes {
            backends: vec![
                Box::new(NamespaceSandbox::new(engine)),
                Box::new(VmSandbox::new(root.clone(), config)),
                Box::new(WasmSandbox::new(root.clone(), systemd_cgroup)),
            ],
            root,
        }
    }

    pub fn root(&self) -> &PathBuf {
        &self.root
    }

    /// Picks the kind for a new container: the command line's choice, else
    /// the bundle's `io.ironcell.sandbox` annotation, else `wasm` for a WASI
    /// image (runwasi's annotation `module.wasm.image/variant=compat`, or an
    /// entrypoint that starts with WebAssembly's magic bytes), else
    /// `namespace`.
    pub fn select(flag: Option<Kind>, bundle: &Bundle) -> Result<Kind> {
        let kind = match (flag, bundle.sandbox_annotation()) {
            (Some(k), _) => k,
            (None, Some(a)) => a
                .parse()
                .map_err(|e| SandboxError::Annotation(Box::new(e)))?,
            (None, None) if ironcell_oci::wasm::looks_like_wasm(bundle) => Kind::Wasm,
            (None, None) => Kind::Namespace,
        };
        if !kind.is_built() {
            return Err(SandboxError::NotBuilt(kind));
        }
        Ok(kind)
    }

    fn backend(&self, kind: Kind) -> Result<&dyn Sandbox> {
        self.backends
            .iter()
            .find(|b| b.kind() == kind)
            .map(|b| b.as_ref())
            .ok_or(SandboxError::NotBuilt(kind))
    }

    /// The backend that owns container `id`.
    pub fn owner(&self, id: &str) -> Result<&dyn Sandbox> {
        ironcell_oci::validate_id(id).map_err(ContainerError::from)?;
        self.backends
            .iter()
            .find(|b| b.owns(id))
            .map(|b| b.as_ref())
            .ok_or_else(|| ContainerError::NotFound(id.to_string()).into())
    }

    /// Creates a container in the sandbox `kind` picked by [`Self::select`].
    pub fn create(
        &self,
        kind: Kind,
        id: &str,
        bundle: &Bundle,
        opts: &CreateOptions,
    ) -> Result<()> {
        ironcell_oci::validate_id(id).map_err(ContainerError::from)?;
        if self.backends.iter().any(|b| b.owns(id)) || self.root.join(id).exists() {
            return Err(ContainerError::Exists(id.to_string()).into());
        }
        self.backend(kind)?.create(id, bundle, opts)
    }

    /// Ids of every container, of every kind, sorted.
    pub fn ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for b in &self.backends {
            ids.extend(b.ids()?);
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// runc's delete of an id with a directory but no state (an aborted
    /// create): removes the directory. Returns whether there was one.
    pub fn remove_stale(&self, id: &str) -> Result<bool> {
        Ok(Engine::new(self.root.clone(), false).remove_stale(id)?)
    }

    /// Removes container `id`, whatever is left of it: deleted with force
    /// (its processes killed, its state removed) when it exists; its
    /// directory alone removed when a create or delete cut short left it
    /// without state; nothing when it was never made.
    pub fn remove(&self, id: &str) -> Result<()> {
        match self.owner(id) {
            Ok(s) => s.delete(id, true),
            Err(SandboxError::Container(ContainerError::NotFound(_))) => {
                self.remove_stale(id).map(|_| ())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
        }
        assert!(matches!(
            "kvm".parse::<Kind>(),
            Err(SandboxError::UnknownKind(_))
        ));
    }

    #[test]
    fn selection_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let write = |ann: &str| {
            std::fs::write(
                dir.path().join("config.json"),
                format!(
                    r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},{ann}
                    "process":{{"args":["/bin/true"],"cwd":"/","user":{{"uid":0,"gid":0}}}}}}"#
                ),
            )
            .unwrap();
            Bundle::load(dir.path()).unwrap()
        };
        let plain = write("");
        assert_eq!(Sandboxes::select(None, &plain).unwrap(), Kind::Namespace);
        assert_eq!(Sandboxes::select(Some(Kind::Vm), &plain).unwrap(), Kind::Vm);
        let wasm = write(r#""annotations":{"io.ironcell.sandbox":"wasm"},"#);
        assert_eq!(Sandboxes::select(None, &wasm).unwrap(), Kind::Wasm);
        let ak = write(r#""annotations":{"io.ironcell.sandbox":"app-kernel"},"#);
        let e = Sandboxes::select(None, &ak).unwrap_err().to_string();
        assert!(e.contains("app-kernel sandbox is not built yet"), "{e}");
        let variant = write(r#""annotations":{"module.wasm.image/variant":"compat"},"#);
        assert_eq!(Sandboxes::select(None, &variant).unwrap(), Kind::Wasm);
        assert_eq!(
            Sandboxes::select(Some(Kind::Namespace), &wasm).unwrap(),
            Kind::Namespace
        );
        let bad = write(r#""annotations":{"io.ironcell.sandbox":"bogus"},"#);
        let e = Sandboxes::select(None, &bad).unwrap_err().to_string();
        assert!(
            e.starts_with("annotation io.ironcell.sandbox: unknown sandbox kind"),
            "{e}"
        );
    }
}
