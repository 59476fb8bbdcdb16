use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::{Linux, Spec};

use super::device::Device;
use super::mount::{Mount, MountOptions};
use super::symlink::Symlink;
use super::utils::default_devices;
use super::{Result, RootfsError};
use crate::error::MissingSpecError;
use crate::syscall::Syscall;
use crate::syscall::syscall::create_syscall;

/// Opens the rootfs's /dev (made if missing), refusing one that is not a
/// directory of the rootfs: a symlink (`/dev -> /etc`) is not followed.
fn open_rootfs_dev(rootfs: &Path) -> Result<File> {
    let dev = rootfs.join("dev");
    match nix::unistd::mkdir(&dev, nix::sys::stat::Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(err) => {
            return Err(RootfsError::Dev(format!(
                "cannot create {}: {err}",
                dev.display()
            )));
        }
    }
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&dev)
        .map_err(|err| {
            let what = match std::fs::read_link(&dev) {
                Ok(target) => format!("is a symlink to {}", target.display()),
                Err(_) => format!("cannot be opened as a directory: {err}"),
            };
            RootfsError::Dev(format!(
                "the rootfs's /dev ({}) {what}: refusing to create the container's device links through it",
                dev.display()
            ))
        })
}

/// Holds information about rootfs
pub struct RootFS {
    syscall: Box<dyn Syscall>,
}

impl Default for RootFS {
    fn default() -> Self {
        Self::new()
    }
}

impl RootFS {
    pub fn new() -> RootFS {
        RootFS {
            syscall: create_syscall(),
        }
    }

    pub fn mount_to_rootfs(
        &self,
        linux: &Linux,
        spec: &Spec,
        rootfs: &Path,
        cgroup_ns: bool,
    ) -> Result<()> {
        // runc's mapping (rslave by default). An unbindable root could not
        // be bind-mounted onto itself below: it is made slave here and
        // unbindable after pivot_root (adjust_root_mount_propagation).
        let flags = match linux.rootfs_propagation().as_deref() {
            Some("shared") => MsFlags::MS_SHARED,
            Some("rshared") => MsFlags::MS_SHARED | MsFlags::MS_REC,
            Some("slave" | "unbindable") => MsFlags::MS_SLAVE,
            Some("rslave" | "runbindable" | "") | None => MsFlags::MS_SLAVE | MsFlags::MS_REC,
            Some("private") => MsFlags::MS_PRIVATE,
            Some("rprivate") => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            Some(unknown) => {
                return Err(RootfsError::UnknownRootfsPropagation(unknown.to_string()));
            }
        };

        self.syscall
            .mount(None, Path::new("/"), None, flags, None)
            .map_err(|err| {
                tracing::error!(
                    ?err,
                    ?flags,
                    "failed to change the mount propagation type of the root"
                );

                err
            })?;

        let mounter = Mount::new();

        mounter.make_parent_mount_private(rootfs)?;

        tracing::debug!("mount root fs {:?}", rootfs);
        self.syscall
            .mount(
                Some(rootfs),
                rootfs,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .map_err(|err| {
                tracing::error!(?rootfs, ?err, "failed to bind mount rootfs");
                err
            })?;

        let global_options = MountOptions {
            root: rootfs,
            label: linux.mount_label().as_deref(),
            cgroup_ns,
        };

        if let Some(mounts) = spec.mounts() {
            for mount in mounts {
                mounter.setup_mount(mount, &global_options)?;
            }
        }
        Ok(())
    }

    pub fn prepare_rootfs(
        &self,
        spec: &Spec,
        rootfs: &Path,
        bind_devices: bool,
        cgroup_ns: bool,
    ) -> Result<()> {
        tracing::debug!(?rootfs, "prepare rootfs");
        let linux = spec.linux().as_ref().ok_or(MissingSpecError::Linux)?;

        self.mount_to_rootfs(linux, spec, rootfs, cgroup_ns)?;

        // The links below go into the rootfs's /dev, pinned here: one that
        // is a symlink would put them (and remove a `ptmx`) where it
        // points, on the host.
        let dev = open_rootfs_dev(rootfs)?;
        let dev_path = PathBuf::from(format!("/proc/self/fd/{}", dev.as_raw_fd()));
        let symlinker = Symlink::new();
        symlinker.setup_kcore_symlink_in(&dev_path)?;
        symlinker.setup_default_symlinks_in(&dev_path)?;

        let devicer = Device::new();
        if let Some(added_devices) = linux.devices() {
            let mut path_set = HashSet::new();
            let devices = default_devices();
            added_devices.iter().for_each(|d| {
                path_set.insert(d.path());
            });
            let default = devices.iter().filter(|d| !path_set.contains(d.path()));
            devicer.create_devices(rootfs, added_devices.iter().chain(default), bind_devices)
        } else {
            devicer.create_devices(rootfs, &default_devices(), bind_devices)
        }?;

        symlinker.setup_ptmx_in(&dev_path)?;
        Ok(())
    }

    /// Change propagation type of rootfs as specified in spec.
    pub fn adjust_root_mount_propagation(&self, linux: &Linux) -> Result<()> {
        let rootfs_propagation = linux.rootfs_propagation().as_deref();
        let flags = match rootfs_propagation {
            Some("shared" | "rshared") => Some(MsFlags::MS_SHARED),
            Some("unbindable" | "runbindable") => Some(MsFlags::MS_UNBINDABLE),
            _ => None,
        };

        if let Some(flags) = flags {
            self.syscall
                .mount(None, Path::new("/"), None, flags, None)
                .map_err(|err| {
                    tracing::error!(
                        ?err,
                        ?flags,
                        "failed to adjust the mount propagation type of the root"
                    );
                    err
                })?;
        }

        Ok(())
    }
}
