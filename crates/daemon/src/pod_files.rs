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

use std::path::{Path, PathBuf};

use ironcell_oci::Bundle;
use oci_spec::runtime::{Mount, MountBuilder, Spec};

/// The files, by where a container sees them.
const FILES: [&str; 3] = ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"];

/// What a pod's files hold, from its config.
pub struct PodFiles<'a> {
    /// `<root>/pod-files/<ns>/<pod>`.
    pub dir: PathBuf,
    /// The pod's resolv.conf, or empty for the host's.
    pub resolv_conf: &'a str,
    /// The pod's hostname, or empty for the host's.
    pub hostname: &'a str,
}

impl PodFiles<'_> {
    /// The directory of pod `id`'s files.
    pub fn dir(root: &Path, ns: &str, id: &str) -> PathBuf {
        root.join("pod-files").join(ns).join(id)
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
                    let source = self.dir.join(&file["/etc/".len()..]);
                    self.write_missing(file, &source)?;
                    added.push(self.mount(file, &source, spec));
                }
            }
        }
        if added.is_empty() {
            return Ok(false);
        }
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.extend(added);
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
}
