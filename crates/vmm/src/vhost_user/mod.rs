//! `--vhost-user-fs` / `--vhost-user-vsock`: this VMM's virtio-fs and
//! vsock devices served to another VMM (QEMU) over vhost-user, instead of
//! to a guest of its own. One process, jailed and filtered as the VMM is,
//! takes the place of `virtiofsd` and `vhost-device-vsock` beside QEMU: the
//! same device code the guest meets under ironcell-vmm, in one process of
//! about a megabyte instead of three of several.
//!
//! Each device listens on its own socket for one frontend; once it has
//! connected, the socket's name is removed. The process ends when a
//! frontend disconnects (QEMU exited), after the devices removed what they
//! made (vsock's socket).
//!
//! - [`backend`]: one device behind the vhost-user requests.

pub mod backend;
#[cfg(test)]
mod tests;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::{BackendReqHandler, Error as VhostError};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::config::{FsConfig, VmConfig, VsockConfig};
use crate::devices::virtio::{self, EventRegistrar, VirtioDevice, QUEUE_TOKEN};
use crate::error::{Error, Result};
use backend::DeviceBackend;

/// Low token halves of a device's own sockets; the device's backend fds
/// use their fd number, which stays below.
const TOKEN_LISTENER: u32 = 0x4000_0000;
const TOKEN_FRONTEND: u32 = 0x4000_0001;

/// What to serve.
pub struct VhostUserConfig {
    /// A virtio-fs share and the socket its frontend connects to.
    pub fs: Option<(FsConfig, PathBuf)>,
    /// A vsock device and the socket its frontend connects to.
    pub vsock: Option<(VsockConfig, PathBuf)>,
    /// Confine the process as `--jail` does (docs/vmm.md).
    pub jail: bool,
    /// Install the seccomp allowlists.
    pub seccomp: bool,
}

/// One served device: its socket, then its frontend.
struct Served {
    name: &'static str,
    backend: Arc<Mutex<DeviceBackend>>,
    socket: PathBuf,
    listener: Option<UnixListener>,
    frontend: Option<BackendReqHandler<Mutex<DeviceBackend>>>,
}

fn device_error(device: &str) -> impl FnOnce(String) -> Error + '_ {
    move |reason| Error::Device {
        device: device.to_string(),
        reason,
    }
}

fn listen(path: &PathBuf) -> Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(Error::io(format!("cannot listen on {}", path.display())))
}

/// Serves the devices of `cfg` until a frontend disconnects.
pub fn serve(cfg: VhostUserConfig) -> Result<()> {
    if cfg.fs.is_none() && cfg.vsock.is_none() {
        return Err(Error::Config("nothing to serve".into()));
    }
    // The jail takes the paths the devices use by name from a VM config.
    let mut vm = VmConfig::new(PathBuf::new());
    vm.fs = cfg.fs.iter().map(|(f, _)| f.clone()).collect();
    vm.vsock = cfg.vsock.as_ref().map(|(v, _)| v.clone());
    let jail = match cfg.jail {
        true => Some(crate::jail::prepare(&mut vm)?),
        false => None,
    };
    // The devices' configs as the jail left them (socket paths absolute).
    let fs = vm.fs.pop().zip(cfg.fs.map(|(_, socket)| socket));
    let vsock = vm.vsock.zip(cfg.vsock.map(|(_, socket)| socket));
    let filters = cfg.seccomp.then(crate::seccomp::filters);
    let epoll = Arc::new(Epoll::new().map_err(Error::io("epoll_create"))?);
    let mut served = Vec::new();
    let mut worker = None;
    if let Some((fs, socket)) = fs {
        let (dev, w) = virtio::fs::Fs::new(&fs).map_err(device_error("fs"))?;
        worker = Some(w);
        // hiprio and one request queue; QEMU keeps the tag itself.
        served.push((
            "fs",
            Box::new(dev) as Box<dyn VirtioDevice>,
            socket,
            2,
            false,
        ));
    }
    if let Some((vsock, socket)) = vsock {
        let dev = virtio::vsock::Vsock::new(&vsock).map_err(device_error("vsock"))?;
        // rx and tx; the event queue is the frontend's, the CID ours.
        served.push(("vsock", Box::new(dev), socket, 2, true));
    }
    let mut devices = Vec::new();
    for (i, (name, dev, socket, rings, config_space)) in served.into_iter().enumerate() {
        let events = EventRegistrar::new(epoll.clone(), i);
        let listener = listen(&socket)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, events.token(TOKEN_LISTENER)),
            )
            .map_err(Error::io("epoll_ctl"))?;
        devices.push(Served {
            name,
            backend: Arc::new(Mutex::new(DeviceBackend::new(
                dev,
                rings,
                config_space,
                events,
            ))),
            socket,
            listener: Some(listener),
            frontend: None,
        });
    }
    // Before any thread starts: the jail's pivot_root, then the fs thread
    // with its cwd at the share's root in it.
    if let Some(w) = worker {
        let root = match jail {
            Some(j) => j.enter(&[(w.share(), w.read_only())])?.pop(),
            None => None,
        };
        w.start(filters.as_ref().map(|f| f.fs.clone()), root)
            .map_err(device_error("fs"))?;
    } else if let Some(j) = jail {
        j.enter(&[])?;
    }
    // Found now: the allowlist has no open.
    let text = ironcell_basics::text_pages::TextMappings::of_this_process();
    if let Some(f) = &filters {
        seccompiler::apply_filter(&f.vmm).map_err(|e| Error::Seccomp(e.to_string()))?;
    }
    let result = event_loop(&epoll, &mut devices, Some(text));
    for d in &devices {
        d.backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cleanup();
        if d.listener.is_some() {
            let _ = std::fs::remove_file(&d.socket);
        }
    }
    result
}

/// Serves until a frontend leaves. Once every device runs, the code that
/// set them up (`text`) leaves the resident set: from there on the process
/// only moves requests.
fn event_loop(
    epoll: &Epoll,
    devices: &mut [Served],
    mut text: Option<ironcell_basics::text_pages::TextMappings>,
) -> Result<()> {
    let mut events = vec![EpollEvent::default(); 32];
    loop {
        if text.is_some()
            && devices.iter().all(|d| {
                d.backend
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_active()
            })
        {
            if let Some(t) = text.take() {
                t.trim();
            }
        }
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("epoll_wait")(e)),
        };
        for ev in &events[..n] {
            let token = ev.data();
            let Some(d) = ((token >> 32) as usize)
                .checked_sub(1)
                .and_then(|i| devices.get_mut(i))
            else {
                continue;
            };
            let low = token as u32;
            match low {
                TOKEN_LISTENER => accept(epoll, d, token)?,
                TOKEN_FRONTEND => {
                    let Some(f) = d.frontend.as_mut() else {
                        continue;
                    };
                    match f.handle_request() {
                        Ok(()) => {}
                        Err(VhostError::Disconnected | VhostError::PartialMessage) => {
                            tracing::info!(device = d.name, "the vhost-user frontend left");
                            return Ok(());
                        }
                        // A request the device refused (the frontend was
                        // told, with REPLY_ACK): the channel itself is fine.
                        Err(
                            e @ (VhostError::InvalidParam
                            | VhostError::InvalidOperation(_)
                            | VhostError::ReqHandlerError(_)),
                        ) => {
                            tracing::warn!(device = d.name, "vhost-user request refused: {e}");
                        }
                        // A malformed message or a broken socket: nothing
                        // more can be read from this frontend.
                        Err(e) => {
                            return Err(Error::Device {
                                device: d.name.to_string(),
                                reason: format!("vhost-user request: {e}"),
                            })
                        }
                    }
                }
                q if q & QUEUE_TOKEN != 0 => d
                    .backend
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .kick((q & !QUEUE_TOKEN) as usize),
                fd => d
                    .backend
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .handle_event(fd as RawFd, ev.event_set()),
            }
        }
    }
}

/// Takes device `d`'s one frontend; its socket's name goes.
fn accept(epoll: &Epoll, d: &mut Served, token: u64) -> Result<()> {
    let Some(listener) = d.listener.take() else {
        return Ok(());
    };
    let (stream, _): (UnixStream, _) = listener
        .accept()
        .map_err(Error::io(format!("accepting on {}", d.socket.display())))?;
    let _ = epoll.ctl(
        ControlOperation::Delete,
        listener.as_raw_fd(),
        EpollEvent::default(),
    );
    drop(listener);
    let _ = std::fs::remove_file(&d.socket);
    let frontend = BackendReqHandler::from_stream(stream, d.backend.clone());
    epoll
        .ctl(
            ControlOperation::Add,
            frontend.as_raw_fd(),
            EpollEvent::new(
                EventSet::IN,
                (token & !0xffff_ffff) | u64::from(TOKEN_FRONTEND),
            ),
        )
        .map_err(Error::io("epoll_ctl"))?;
    d.frontend = Some(frontend);
    Ok(())
}
