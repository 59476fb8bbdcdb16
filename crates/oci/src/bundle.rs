use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use thiserror::Error;

/// The config.json annotation that selects an ironcell sandbox kind.
pub const SANDBOX_ANNOTATION: &str = "io.ironcell.sandbox";

/// Why a bundle could not be used. Each message names the file and the part
/// of it that is wrong, on one line.
#[derive(Debug, Error)]
pub enum BundleError {
    #[error("bundle {0}: no such directory")]
    NoBundle(PathBuf),
    #[error("bundle {path}: {source}")]
    BundleIo { path: PathBuf, source: io::Error },
    #[error("{0}: no such file (is this an OCI bundle?)")]
    NoConfig(PathBuf),
    #[error("{path}: cannot read: {source}")]
    ReadConfig { path: PathBuf, source: io::Error },
    #[error("{path}: malformed JSON at line {line} column {column}: {msg}")]
    Malformed {
        path: PathBuf,
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("{path}: does not match the OCI runtime spec at line {line} column {column}: {msg}")]
    Schema {
        path: PathBuf,
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("{path}: root.path {rootfs}: no such directory")]
    NoRootfs { path: PathBuf, rootfs: PathBuf },
}

/// A loaded and checked OCI bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute path of the bundle directory.
    pub path: PathBuf,
    pub spec: Spec,
    /// Absolute path of the root filesystem.
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Loads `<dir>/config.json` and checks it. `dir` may be relative; the
    /// bundle keeps its absolute form.
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let path = match fs::canonicalize(dir) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BundleError::NoBundle(dir.to_path_buf()))
            }
            Err(source) => {
                return Err(BundleError::BundleIo {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        };
        if !path.is_dir() {
            return Err(BundleError::NoBundle(dir.to_path_buf()));
        }
        let config = path.join("config.json");
        let text = match fs::read_to_string(&config) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BundleError::NoConfig(config))
            }
            Err(source) => {
                return Err(BundleError::ReadConfig {
                    path: config,
                    source,
                })
            }
        };
        let mut spec = parse_spec(&config, &text)?;
        absolute_mount_destinations(&mut spec);
        let rootfs = check_spec(&config, &path, &spec)?;
        Ok(Bundle { path, spec, rootfs })
    }

    /// The sandbox kind named by the `io.ironcell.sandbox` annotation.
    pub fn sandbox_annotation(&self) -> Option<&str> {
        self.spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(SANDBOX_ANNOTATION))
            .map(String::as_str)
    }
}

/// Whether `spec` joins an existing namespace of type `typ` (one with a
/// path), as a pod's containers join the pod's.
pub fn joins_namespace(
    spec: &oci_spec::runtime::Spec,
    typ: oci_spec::runtime::LinuxNamespaceType,
) -> bool {
    namespaces_of(spec, typ).any(|n| n.path().is_some())
}

/// Whether `spec` gives the container a namespace of type `typ` of its own
/// (one with no path to join).
pub fn has_own_namespace(
    spec: &oci_spec::runtime::Spec,
    typ: oci_spec::runtime::LinuxNamespaceType,
) -> bool {
    namespaces_of(spec, typ).any(|n| n.path().is_none())
}

/// The entries of `spec`'s namespaces of type `typ`.
fn namespaces_of(
    spec: &oci_spec::runtime::Spec,
    typ: oci_spec::runtime::LinuxNamespaceType,
) -> impl Iterator<Item = &oci_spec::runtime::LinuxNamespace> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .filter(move |n| n.typ() == typ)
}

/// config-linux.md "Namespaces": `path` MUST be a namespace of `typ`.
/// Says why not: it cannot be opened, or it is another kind (a mistyped
/// path would otherwise fail as EINVAL from setns, naming nothing).
fn check_namespace_path(
    typ: oci_spec::runtime::LinuxNamespaceType,
    path: &Path,
) -> Result<(), String> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    use std::os::fd::AsRawFd;
    let file = fs::File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => "no such file".to_string(),
        _ => format!("cannot open it: {e}"),
    })?;
    let want = match typ {
        T::Mount => libc::CLONE_NEWNS,
        T::Cgroup => libc::CLONE_NEWCGROUP,
        T::Uts => libc::CLONE_NEWUTS,
        T::Ipc => libc::CLONE_NEWIPC,
        T::User => libc::CLONE_NEWUSER,
        T::Pid => libc::CLONE_NEWPID,
        T::Network => libc::CLONE_NEWNET,
        T::Time => libc::CLONE_NEWTIME,
    };
    // NS_GET_NSTYPE, _IO(0xb7, 0x3): the CLONE_NEW* flag of a namespace fd.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: an ioctl without arguments on a file this function owns.
    let got = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if got == -1 {
        return Err("it is not a namespace file".to_string());
    }
    if got != want {
        let kinds = [
            (libc::CLONE_NEWNS, "mount"),
            (libc::CLONE_NEWCGROUP, "cgroup"),
            (libc::CLONE_NEWUTS, "uts"),
            (libc::CLONE_NEWIPC, "ipc"),
            (libc::CLONE_NEWUSER, "user"),
            (libc::CLONE_NEWPID, "pid"),
            (libc::CLONE_NEWNET, "network"),
            (libc::CLONE_NEWTIME, "time"),
        ];
        let name = kinds
            .iter()
            .find(|(flag, _)| *flag == got)
            .map_or("another kind of", |(_, n)| n);
        return Err(format!("it is a {name} namespace"));
    }
    Ok(())
}

/// config.md "Mounts": a relative destination (a deprecated form) is
/// relative to "/"; the spec holds it in its absolute form.
fn absolute_mount_destinations(spec: &mut Spec) {
    if let Some(mut mounts) = spec.mounts().clone() {
        for m in mounts.iter_mut() {
            if !m.destination().is_absolute() {
                let abs = Path::new("/").join(m.destination());
                m.set_destination(abs);
            }
        }
        spec.set_mounts(Some(mounts));
    }
}

/// Parses config.json text, telling malformed JSON apart from JSON that does
/// not fit the runtime spec's schema.
pub fn parse_spec(path: &Path, text: &str) -> Result<Spec, BundleError> {
    // Syntax first, so that a schema message is never shown for broken JSON.
    if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
        return Err(BundleError::Malformed {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            msg: strip_position(&e),
        });
    }
    serde_json::from_str::<Spec>(text).map_err(|e| BundleError::Schema {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        msg: strip_position(&e),
    })
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// How config.json spells an enum value (`RLIMIT_NOFILE`, `SCMP_ACT_KILL`).
fn spec_name<T: serde::Serialize + std::fmt::Debug>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{v:?}"),
    }
}

/// Semantic checks the schema cannot express. Returns the absolute rootfs.
fn check_spec(config: &Path, bundle: &Path, spec: &Spec) -> Result<PathBuf, BundleError> {
    let invalid = |msg: String| BundleError::Invalid {
        path: config.to_path_buf(),
        msg,
    };
    let version = spec.version();
    if !version.starts_with("1.") {
        return Err(invalid(format!(
            "ociVersion {version:?} is not supported (want 1.x)"
        )));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root is missing".into()))?;
    if root.path().as_os_str().is_empty() {
        return Err(invalid("root.path is empty".into()));
    }
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    if !rootfs.is_dir() {
        return Err(BundleError::NoRootfs {
            path: config.to_path_buf(),
            rootfs,
        });
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process is missing".into()))?;
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return Err(invalid("process.args must name a program".into())),
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(format!(
            "process.cwd {:?} must be an absolute path",
            process.cwd()
        )));
    }
    if let Some(rlimits) = process.rlimits() {
        // config.md "POSIX process": duplicated types MUST be an error.
        let mut seen = HashSet::new();
        for r in rlimits {
            if !seen.insert(spec_name(&r.typ())) {
                return Err(invalid(format!(
                    "process.rlimits: {} listed twice",
                    spec_name(&r.typ())
                )));
            }
            if r.soft() > r.hard() {
                return Err(invalid(format!(
                    "process.rlimits: {} soft limit {} is above its hard limit {}",
                    spec_name(&r.typ()),
                    r.soft(),
                    r.hard()
                )));
            }
        }
    }
    if let Some(hooks) = spec.hooks() {
        // config.md "POSIX-platform Hooks": a path MUST be absolute and a
        // timeout MUST be greater than zero.
        let kinds = [
            ("prestart", hooks.prestart()),
            ("createRuntime", hooks.create_runtime()),
            ("createContainer", hooks.create_container()),
            ("startContainer", hooks.start_container()),
            ("poststart", hooks.poststart()),
            ("poststop", hooks.poststop()),
        ];
        for (kind, list) in kinds {
            for (i, h) in list.iter().flatten().enumerate() {
                if !h.path().is_absolute() {
                    return Err(invalid(format!(
                        "hooks.{kind}[{i}].path {:?} must be an absolute path",
                        h.path()
                    )));
                }
                if h.timeout().is_some_and(|t| t <= 0) {
                    return Err(invalid(format!(
                        "hooks.{kind}[{i}].timeout {} must be greater than zero",
                        h.timeout().unwrap_or_default()
                    )));
                }
            }
        }
    }
    if let Some(linux) = spec.linux() {
        if let Some(p) = linux.rootfs_propagation() {
            const KNOWN: [&str; 9] = [
                "",
                "shared",
                "rshared",
                "slave",
                "rslave",
                "private",
                "rprivate",
                "unbindable",
                "runbindable",
            ];
            if !KNOWN.contains(&p.as_str()) {
                return Err(invalid(format!(
                    "linux.rootfsPropagation {p:?} is not one of shared, slave, private, unbindable (or their r-forms)"
                )));
            }
        }
        if let Some(seccomp) = linux.seccomp() {
            // config-linux.md "Seccomp": an errno for an action that has
            // none MUST be an error.
            use oci_spec::runtime::LinuxSeccompAction as A;
            let takes_errno = |a: A| matches!(a, A::ScmpActErrno | A::ScmpActTrace);
            if seccomp.default_errno_ret().is_some() && !takes_errno(seccomp.default_action()) {
                return Err(invalid(format!(
                    "linux.seccomp.defaultErrnoRet is set but defaultAction {} returns no errno",
                    spec_name(&seccomp.default_action())
                )));
            }
            for (i, s) in seccomp.syscalls().iter().flatten().enumerate() {
                if s.errno_ret().is_some() && !takes_errno(s.action()) {
                    return Err(invalid(format!(
                        "linux.seccomp.syscalls[{i}].errnoRet is set but action {} returns no errno",
                        spec_name(&s.action())
                    )));
                }
            }
        }
        if let Some(namespaces) = linux.namespaces() {
            let mut seen = HashSet::new();
            for ns in namespaces {
                if !seen.insert(ns.typ()) {
                    return Err(invalid(format!(
                        "linux.namespaces: {:?} namespace listed twice",
                        ns.typ()
                    )));
                }
                if let Some(p) = ns.path() {
                    check_namespace_path(ns.typ(), p).map_err(|why| {
                        invalid(format!(
                            "linux.namespaces: {:?} namespace path {}: {why}",
                            ns.typ(),
                            p.display()
                        ))
                    })?;
                }
            }
        }
    }
    Ok(rootfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}}
    }"#;

    fn bundle_with(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("rootfs")).unwrap();
        fs::write(dir.path().join("config.json"), config).unwrap();
        dir
    }

    #[test]
    fn loads_minimal_bundle() {
        let dir = bundle_with(MINIMAL);
        let b = Bundle::load(dir.path()).unwrap();
        assert_eq!(
            b.rootfs,
            fs::canonicalize(dir.path()).unwrap().join("rootfs")
        );
        assert_eq!(b.sandbox_annotation(), None);
    }

    #[test]
    fn reads_sandbox_annotation() {
        let dir = bundle_with(&MINIMAL.replace(
            "\"root\"",
            "\"annotations\": {\"io.ironcell.sandbox\": \"wasm\"}, \"root\"",
        ));
        assert_eq!(
            Bundle::load(dir.path()).unwrap().sandbox_annotation(),
            Some("wasm")
        );
    }

    #[test]
    fn malformed_json_names_line() {
        let dir = bundle_with("{\n  \"ociVersion\": \"1.0.2\",\n  oops\n}");
        let e = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("malformed JSON at line 3"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn schema_error_names_field() {
        let dir =
            bundle_with(r#"{"ociVersion": "1.0.2", "process": {"args": "notalist", "cwd": "/"}}"#);
        let e = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("does not match the OCI runtime spec"), "{e}");
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn missing_rootfs_and_config() {
        let dir = bundle_with(&MINIMAL.replace("rootfs", "nothere"));
        let e = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("root.path") && e.contains("nothere"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = Bundle::load(empty.path()).unwrap_err().to_string();
        assert!(e.contains("config.json: no such file"), "{e}");
        let e = Bundle::load(Path::new("/definitely/not/here"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such directory"), "{e}");
    }

    #[test]
    fn relative_mount_destinations_are_relative_to_root() {
        let dir = bundle_with(&MINIMAL.replace(
            "\"root\"",
            "\"mounts\": [{\"destination\": \"data/x\", \"type\": \"tmpfs\"}], \"root\"",
        ));
        let b = Bundle::load(dir.path()).unwrap();
        let mounts = b.spec.mounts().as_ref().unwrap();
        assert_eq!(mounts[0].destination(), Path::new("/data/x"));
    }

    #[test]
    fn namespace_paths_must_be_namespaces_of_their_type() {
        use oci_spec::runtime::LinuxNamespaceType as T;
        let own = Path::new("/proc/self/ns/uts");
        assert_eq!(check_namespace_path(T::Uts, own), Ok(()));
        assert_eq!(
            check_namespace_path(T::Network, own),
            Err("it is a uts namespace".to_string())
        );
        let plain = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(
            check_namespace_path(T::Network, plain.path()),
            Err("it is not a namespace file".to_string())
        );
        assert_eq!(
            check_namespace_path(T::Network, Path::new("/no/such/ns")),
            Err("no such file".to_string())
        );
    }

    #[test]
    fn semantic_errors() {
        let cases = [
            (MINIMAL.replace("1.0.2", "0.9"), "ociVersion"),
            (MINIMAL.replace("[\"/bin/true\"]", "[]"), "process.args"),
            (MINIMAL.replace("\"cwd\": \"/\"", "\"cwd\": \"rel\""), "process.cwd"),
            (
                MINIMAL.replace(
                    "\"root\"",
                    "\"linux\": {\"namespaces\": [{\"type\": \"pid\"}, {\"type\": \"pid\"}]}, \"root\"",
                ),
                "listed twice",
            ),
            (
                MINIMAL.replace(
                    "\"root\"",
                    "\"hooks\": {\"poststop\": [{\"path\": \"/bin/true\"}, {\"path\": \"/bin/true\", \"timeout\": 0}]}, \"root\"",
                ),
                "hooks.poststop[1].timeout 0 must be greater than zero",
            ),
            (
                MINIMAL.replace(
                    "\"root\"",
                    "\"hooks\": {\"prestart\": [{\"path\": \"bin/true\"}]}, \"root\"",
                ),
                "hooks.prestart[0].path \"bin/true\" must be an absolute path",
            ),
            (
                MINIMAL.replace(
                    "\"root\"",
                    "\"linux\": {\"rootfsPropagation\": \"bogus\"}, \"root\"",
                ),
                "linux.rootfsPropagation \"bogus\"",
            ),
        ];
        for (config, want) in cases {
            let dir = bundle_with(&config);
            let e = Bundle::load(dir.path()).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
