//! Start-up and the sockets: the state root, the single-instance lock, the
//! Task API (ttrpc) and the control socket.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::net::UnixListener;

use crate::control::Control;
use crate::endpoint::Endpoints;
use crate::events::Publisher;
use crate::reaper::Reaper;
use crate::task::Tasks;

/// The default state root; `--root` moves it (tests use their own).
pub const DEFAULT_ROOT: &str = "/run/ironcell/ironcelld";

/// The control socket under a root.
pub fn control_socket(root: &Path) -> PathBuf {
    root.join("control.sock")
}

/// Holds the root's lock: one daemon per root.
pub struct Lock(#[allow(dead_code)] File);

pub fn lock(root: &Path) -> Result<Lock> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(root)
        .with_context(|| format!("cannot create {}", root.display()))?;
    let path = root.join("ironcelld.lock");
    let f = File::create(&path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!("ironcelld is already running for {}", root.display());
        }
        return Err(e).with_context(|| format!("cannot lock {}", path.display()));
    }
    Ok(Lock(f))
}

pub(crate) fn private_socket(path: &Path) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))
}

/// Serves until SIGTERM or SIGINT. Containers keep running when the daemon
/// stops; they are not its children's children in any sense that matters to
/// them (their stdout and stderr go straight to containerd's FIFOs).
pub async fn serve(root: PathBuf) -> Result<()> {
    let reaper = Reaper::start().context("cannot become the reaper of containers")?;
    let events = Publisher::start();
    let tasks = Arc::new(Tasks::new(
        root.clone(),
        PathBuf::from("/proc/self/exe"),
        reaper,
        events,
    ));
    let control_path = control_socket(&root);
    // Ours: the lock is held.
    let _ = fs::remove_file(&control_path);
    let endpoints = Arc::new(Endpoints::new(root.clone(), tasks.clone()));
    endpoints.restore().await;
    let control = UnixListener::bind(&control_path)
        .with_context(|| format!("cannot listen on {}", control_path.display()))?;
    private_socket(&control_path)?;
    let control = Arc::new(Control {
        tasks: tasks.clone(),
        endpoints: endpoints.clone(),
    })
    .serve(control);
    tokio::spawn(control);
    tracing::info!(control = %control_path.display(), "ironcelld serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(
        tasks = tasks.count(),
        "ironcelld stopping; containers keep running"
    );
    endpoints.shutdown().await;
    let _ = fs::remove_file(&control_path);
    Ok(())
}
