//! The pod files every container of a pod sees: `/etc/hosts`,
//! `/etc/resolv.conf` and `/etc/hostname`.
//!
//! containerd's CRI writes them only on its own pause-container path. For a
//! pod made through a sandbox API, containerd 1.7 still bind-mounts them
//! into each container (from files nobody wrote), and containerd 2.x mounts
//! only those that exist, so none. For a container of a pod made here, the
//! daemon therefore writes what containerd's pause path would: the pod's
//! `resolv.conf` from its DNS config (the cluster's DNS), its hostname, and
//! copies of the host's files otherwise. A bind source the spec names that
//! is missing is written in place (1.7); a file the spec does not mount at
//! all is written in the pod's directory `<root>/pod-files/<ns>/<pod>/` and
//! bind-mounted by a mount added to the spec (2.x), unless the container
//! mounts something there itself (the kubelet's managed `/etc/hosts`).
//!
//! The pod's `/dev/shm` too. 2.x gives each container of such a pod a
//! tmpfs of its own, though they share the pod's IPC namespace, so POSIX
//! shared memory (`shm_open`) would not be shared as SysV memory is; 1.7
//! binds a directory nobody mounted a tmpfs on, so it is on the disk, with
//! no bound on what a container writes there. For a namespace pod, a
//! container that joins the pod's IPC namespace gets a bind of the pod's
//! `/dev/shm` instead: a tmpfs the daemon mounts at `<pod's
//! directory>/shm`, of the size the container's tmpfs names (or
//! containerd's default), unmounted with the pod. (A VM pod's is in its
//! guest: `ironcell_sandbox::vm::pod`.)

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ironcell_oci::Bundle;
use oci_spec::runtime::{LinuxNamespaceType, Mount, MountBuilder, Spec};

/// The files, by where a container sees them.
const FILES: [&str; 3] = ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"];

/// The size of a pod's `/dev/shm` when the container's tmpfs names none
/// (containerd's default).
const SHM_SIZE: &str = "65536k";

/// Held while a pod's `/dev/shm` is looked at and mounted: two containers
/// of a pod made at once mount one tmpfs.
static SHM_MOUNTING: Mutex<()> = Mutex::new(());

/// What a pod's files hold, from its config.
pub struct PodFiles<'a> {
    /// `<root>/pod-files/<ns>/<pod>`.
    pub dir: PathBuf,
    /// The pod's resolv.conf, or empty for the host's.
    pub resolv_conf: &'a str,
    /// The pod's hostname, or empty for the host's.
    pub hostname: &'a str,
    /// Whether the pod's `/dev/shm` is a tmpfs of the daemon's (a
    /// namespace pod's).
    pub shm: bool,
}

impl PodFiles<'_> {
    /// The directory of pod `id`'s files.
    pub fn dir(root: &Path, ns: &str, id: &str) -> PathBuf {
        root.join("pod-files").join(ns).join(id)
    }

    /// Removes pod `id`'s directory, its `/dev/shm` unmounted first.
    pub fn remove(root: &Path, ns: &str, id: &str) {
        let dir = Self::dir(root, ns, id);
        let shm = dir.join("shm");
        let _ = nix::mount::umount2(&shm, nix::mount::MntFlags::MNT_DETACH);
        if is_mount_point(&shm) {
            tracing::warn!(pod = %id, "the pod's /dev/shm is still mounted: its directory is left");
            return;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Makes the pod's directory, which others may cross but not list
    /// (0711, as the daemon's root): a container in a user namespace
    /// reaches its bind sources there.
    fn make_dir(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.dir)
    }

    /// What `file` (one of [`FILES`]) holds for this pod.
    fn content(&self, file: &str) -> Vec<u8> {
        match file {
            "/etc/resolv.conf" if !self.resolv_conf.is_empty() => {
                self.resolv_conf.as_bytes().to_vec()
            }
            "/etc/hostname" if !self.hostname.is_empty() => {
                format!("{}\n", self.hostname).into_bytes()
            }
            "/etc/hostname" => match nix::unistd::gethostname() {
                Ok(h) => format!("{}\n", h.to_string_lossy()).into_bytes(),
                Err(_) => Vec::new(),
            },
            host_file => std::fs::read(host_file).unwrap_or_default(),
        }
    }

    /// Gives the container of `bundle` the pod's files; a spec with mounts
    /// added is written back to the bundle's `config.json` (whole, then
    /// renamed), which the container is made from.
    pub fn give(&self, bundle: &mut Bundle) -> std::io::Result<()> {
        if !self.complete(&mut bundle.spec)? {
            return Ok(());
        }
        let config = bundle.path.join("config.json");
        let tmp = bundle.path.join(".config.json.ironcell");
        let json = serde_json::to_vec(&bundle.spec).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &config)
    }

    /// Gives a container's `spec` the pod's files: missing bind sources
    /// written, mounts added for the files it does not mount. Whether the
    /// spec changed (it is then to be written back).
    pub fn complete(&self, spec: &mut Spec) -> std::io::Result<bool> {
        let shm_given = self.shm && self.give_shm(spec)?;
        let mut added = Vec::new();
        for file in FILES {
            let mounted = spec
                .mounts()
                .iter()
                .flatten()
                .find(|m| m.destination() == Path::new(file));
            match mounted {
                Some(m) => {
                    if let Some(source) = m.source() {
                        self.write_missing(file, source)?;
                    }
                }
                None => {
                    self.make_dir()?;
                    let source = self.dir.join(&file["/etc/".len()..]);
                    self.write_missing(file, &source)?;
                    added.push(self.mount(file, &source, spec));
                }
            }
        }
        if added.is_empty() {
            return Ok(shm_given);
        }
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.extend(added);
        spec.set_mounts(Some(mounts));
        Ok(true)
    }

    /// Replaces the `/dev/shm` of a container that joins the pod's IPC
    /// namespace, a tmpfs of its own (2.x) or a bind of a directory on
    /// disk (1.7's, which only containerd's pause path mounts a tmpfs on),
    /// by a bind of the pod's tmpfs; whether it did.
    fn give_shm(&self, spec: &mut Spec) -> std::io::Result<bool> {
        if !ironcell_oci::joins_namespace(spec, LinuxNamespaceType::Ipc) {
            return Ok(false);
        }
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        let Some(tmpfs) = mounts.iter_mut().find(|m| {
            m.destination() == Path::new("/dev/shm")
                && match m.typ().as_deref() {
                    Some("tmpfs") => true,
                    // 1.7's bind of the pod's shm directory, on which
                    // nobody mounted a tmpfs: it would be the disk's.
                    Some("bind") => m.source().as_deref().is_some_and(|s| !is_mount_point(s)),
                    _ => false,
                }
        }) else {
            return Ok(false);
        };
        // A size as tmpfs(5) reads it (`65536k`, `64m`, `10%`), or the
        // default: the option becomes part of the daemon's mount.
        let size = tmpfs
            .options()
            .iter()
            .flatten()
            .find_map(|o| o.strip_prefix("size="))
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '%'))
            .unwrap_or(SHM_SIZE);
        self.make_dir()?;
        let shm = self.dir.join("shm");
        mount_shm(&shm, size)?;
        let options = ["rbind", "nosuid", "nodev", "noexec"];
        *tmpfs = MountBuilder::default()
            .destination("/dev/shm")
            .typ("bind")
            .source(&shm)
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
            .expect("every field of the mount is set");
        spec.set_mounts(Some(mounts));
        Ok(true)
    }

    /// Writes `file`'s content at `source` unless a file is there (an empty
    /// directory, left by a runtime that made the missing source a
    /// directory, is replaced).
    fn write_missing(&self, file: &str, source: &Path) -> std::io::Result<()> {
        if source.is_file() {
            return Ok(());
        }
        if source.is_dir() {
            std::fs::remove_dir(source)?;
        }
        if let Some(dir) = source.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Written whole, then renamed: a racing container of the same pod
        // never binds a half-written file.
        let tmp = source.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, self.content(file))?;
        std::fs::rename(&tmp, source)
    }

    /// A bind mount of `source` at `file`, read-only with the rootfs, as
    /// containerd mounts these files.
    fn mount(&self, file: &str, source: &Path, spec: &Spec) -> Mount {
        let readonly = spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false);
        let options = ["rbind", "rprivate", if readonly { "ro" } else { "rw" }];
        MountBuilder::default()
            .destination(file)
            .typ("bind")
            .source(source)
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
            .expect("every field of the mount is set")
    }
}

/// Mounts the pod's tmpfs at `shm` unless it is there.
fn mount_shm(shm: &Path, size: &str) -> std::io::Result<()> {
    use nix::mount::MsFlags;
    let _one = SHM_MOUNTING.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = std::fs::create_dir(shm) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    if is_mount_point(shm) {
        return Ok(());
    }
    nix::mount::mount(
        Some("shm"),
        shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={size}").as_str()),
    )
    .map_err(|e| std::io::Error::other(format!("cannot mount the pod's /dev/shm: {e}")))
}

/// Whether something is mounted on `dir` (it is on another device than
/// its parent).
fn is_mount_point(dir: &Path) -> bool {
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    match (dev(dir), dir.parent().and_then(dev)) {
        (Some(d), Some(parent)) => d != parent,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::SpecBuilder;

    fn destinations(spec: &Spec) -> Vec<String> {
        spec.mounts()
            .iter()
            .flatten()
            .map(|m| m.destination().display().to_string())
            .collect()
    }

    #[test]
    fn the_files_a_spec_lacks_are_written_and_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let files = PodFiles {
            dir: dir.path().join("pod"),
            resolv_conf: "nameserver 10.96.0.10\n",
            hostname: "web",
            shm: false,
        };
        // 2.x: nothing mounted; the kubelet's own /etc/hosts is kept.
        let kubelet_hosts = MountBuilder::default()
            .destination("/etc/hosts")
            .typ("bind")
            .source("/var/lib/kubelet/pods/x/etc-hosts")
            .build()
            .unwrap();
        let mut spec = SpecBuilder::default()
            .mounts(vec![kubelet_hosts.clone()])
            .build()
            .unwrap();
        assert!(files.complete(&mut spec).unwrap());
        assert_eq!(
            destinations(&spec),
            ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"]
        );
        assert_eq!(spec.mounts().as_ref().unwrap()[0], kubelet_hosts);
        let read = |name: &str| std::fs::read_to_string(files.dir.join(name)).unwrap();
        assert_eq!(read("resolv.conf"), "nameserver 10.96.0.10\n");
        assert_eq!(read("hostname"), "web\n");
        assert!(!files.dir.join("hosts").exists());
        // Twice: nothing more to do.
        assert!(!files.complete(&mut spec).unwrap());

        // 1.7: mounted from sources nobody wrote (one an empty directory).
        let missing = dir.path().join("cri/sandboxes/p");
        std::fs::create_dir_all(missing.join("hosts")).unwrap();
        let bind = |dest: &str, name: &str| {
            MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(missing.join(name))
                .build()
                .unwrap()
        };
        let mut spec = SpecBuilder::default()
            .mounts(vec![
                bind("/etc/hosts", "hosts"),
                bind("/etc/resolv.conf", "resolv.conf"),
                bind("/etc/hostname", "hostname"),
            ])
            .build()
            .unwrap();
        let host = PodFiles {
            dir: dir.path().join("host"),
            resolv_conf: "",
            hostname: "",
            shm: false,
        };
        assert!(!host.complete(&mut spec).unwrap());
        let written = |name: &str| std::fs::read(missing.join(name)).unwrap();
        assert_eq!(written("hosts"), std::fs::read("/etc/hosts").unwrap());
        assert_eq!(
            written("resolv.conf"),
            std::fs::read("/etc/resolv.conf").unwrap_or_default()
        );
        assert_eq!(
            String::from_utf8(written("hostname")).unwrap().trim(),
            nix::unistd::gethostname().unwrap().to_string_lossy()
        );
    }

    #[test]
    fn a_namespace_pods_containers_share_its_dev_shm() {
        if !ironcell_testutil::need_root("a_namespace_pods_containers_share_its_dev_shm") {
            return;
        }
        use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder};
        let root = tempfile::tempdir().unwrap();
        let files = PodFiles {
            dir: PodFiles::dir(root.path(), "k8s.io", "pod"),
            resolv_conf: "",
            hostname: "",
            shm: true,
        };
        let container = |joins_ipc: bool| {
            let mut ipc = LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Ipc)
                .build()
                .unwrap();
            if joins_ipc {
                ipc.set_path(Some("/proc/42/ns/ipc".into()));
            }
            let tmpfs = MountBuilder::default()
                .destination("/dev/shm")
                .typ("tmpfs")
                .source("shm")
                .options(vec!["nosuid".to_string(), "size=1m".to_string()])
                .build()
                .unwrap();
            SpecBuilder::default()
                .mounts(vec![tmpfs])
                .linux(
                    LinuxBuilder::default()
                        .namespaces(vec![ipc])
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap()
        };
        let shm_mount = |spec: &Spec| {
            spec.mounts()
                .iter()
                .flatten()
                .find(|m| m.destination() == Path::new("/dev/shm"))
                .cloned()
                .unwrap()
        };
        // Its own IPC namespace: its own tmpfs.
        let mut alone = container(false);
        files.complete(&mut alone).unwrap();
        assert_eq!(shm_mount(&alone).typ().as_deref(), Some("tmpfs"));
        // Two containers that join the pod's: one tmpfs of the size asked.
        let shm = files.dir.join("shm");
        for _ in 0..2 {
            let mut spec = container(true);
            assert!(files.complete(&mut spec).unwrap());
            let m = shm_mount(&spec);
            assert_eq!(
                (m.typ().as_deref(), m.source().as_deref()),
                (Some("bind"), Some(shm.as_path()))
            );
        }
        let mounted: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(shm.to_str().unwrap()))
            .map(String::from)
            .collect();
        assert_eq!(mounted.len(), 1, "{mounted:?}");
        assert!(
            mounted[0].contains(" - tmpfs ") && mounted[0].contains("size=1024k"),
            "{mounted:?}"
        );
        PodFiles::remove(root.path(), "k8s.io", "pod");
        assert!(!files.dir.exists());
        assert!(!std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(shm.to_str().unwrap()));
    }
}
