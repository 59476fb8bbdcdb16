//! Start-up and the sockets: the state root, the single-instance lock, the
//! Task API (ttrpc) and the control socket.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::UnixListener;

use crate::control::Control;
use crate::endpoint::Endpoints;
use crate::events::Publisher;
use crate::keeper::Keeper;
use crate::reaper::Reaper;
use crate::task::Tasks;

/// The default state root; `--root` moves it (tests use their own).
pub const DEFAULT_ROOT: &str = "/run/ironcell/ironcelld";

/// The control socket under a root.
pub fn control_socket(root: &Path) -> PathBuf {
    root.join("control.sock")
}

/// How long a starting daemon waits for the root's lock.
const LOCK_WAIT: Duration = Duration::from_secs(3);

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
    // A daemon killed a moment ago may still be exiting (its files close
    // last): wait a little before calling the root taken.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a file this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Lock(f));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
        if std::time::Instant::now() > deadline {
            bail!("ironcelld is already running for {}", root.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// containerd 2.x's sandbox controller (`controller.rs`): where it listens,
/// and the ttrpc address of the containerd it serves.
pub struct ControllerConfig {
    pub socket: PathBuf,
    pub containerd: String,
}

/// The ttrpc address of a containerd installed the usual way.
pub const DEFAULT_CONTAINERD: &str = "/run/containerd/containerd.sock.ttrpc";

/// The controller's socket under the daemon's root.
pub fn controller_socket(root: &Path) -> PathBuf {
    root.join("sandbox.sock")
}

/// The binary the helper jobs run: `ironcelld-helper` beside the daemon,
/// else the daemon itself (`ironcelld helper`).
fn helper_binary(exe: &Path) -> PathBuf {
    let own = exe.with_file_name("ironcelld-helper");
    if own.is_file() {
        own
    } else {
        exe.to_path_buf()
    }
}

/// Where the controller of VM pods listens: beside the controller's
/// socket, `-vm` added to its name (`sandbox.sock`: `sandbox-vm.sock`).
pub fn vm_controller_socket(socket: &Path) -> PathBuf {
    let name = socket
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let vm_name = match name.strip_suffix(".sock") {
        Some(stem) => format!("{stem}-vm.sock"),
        None => format!("{name}-vm"),
    };
    socket.with_file_name(vm_name)
}

/// How the keeper starts this daemon again when it dies: the command line
/// it was started with.
pub struct Supervision {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Supervision {
    /// This process's own command (its binary by absolute path) and
    /// environment.
    pub fn of_this_process() -> Supervision {
        let mut argv: Vec<String> = std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        if let (Some(first), Ok(exe)) = (argv.first_mut(), std::env::current_exe()) {
            *first = exe.to_string_lossy().into_owned();
        }
        Supervision {
            argv,
            env: std::env::vars().collect(),
        }
    }
}

/// Serves until SIGTERM or SIGINT. Containers keep running when the daemon
/// stops; they are not its children's children in any sense that matters to
/// them (their stdout and stderr go straight to containerd's FIFOs).
pub async fn serve(
    root: PathBuf,
    controller: ControllerConfig,
    supervision: Option<Supervision>,
) -> Result<()> {
    let reaper = Arc::new(Reaper::default());
    let exe = std::env::current_exe().context("cannot find ironcelld's own binary")?;
    let helper = helper_binary(&exe);
    let keeper = {
        let (root, exe, reaper) = (root.clone(), exe.clone(), reaper.clone());
        tokio::task::spawn_blocking(move || Keeper::start(&root, &exe, reaper))
            .await
            .context("keeper start")??
    };
    // Taken now: a keeper replaced from here on is seen by follow_keeper.
    let keeper_generations = keeper.generations();
    if let Some(s) = supervision {
        // Asked at every start: a keeper that outlived its own restart
        // learns it again.
        keeper
            .supervise(s.argv, s.env)
            .context("cannot ask the keeper to supervise the daemon")?;
    }
    let events = Publisher::start();
    let tasks = Arc::new(Tasks::new(
        root.clone(),
        helper,
        reaper.clone(),
        Some(keeper.clone()),
        events,
    ));
    tasks.recover().await;
    // Processes recovered from records whose keeper died with the previous
    // daemon are no longer a keeper's children.
    reaper.sweep();
    let control_path = control_socket(&root);
    // Ours: the lock is held.
    let _ = fs::remove_file(&control_path);
    let endpoints = Arc::new(Endpoints::new(
        root.clone(),
        tasks.clone(),
        Some(keeper.clone()),
    ));
    endpoints.restore().await;
    tokio::spawn(follow_keeper(
        keeper_generations,
        tasks.clone(),
        endpoints.clone(),
    ));
    for vm in [false, true] {
        let socket = match vm {
            false => controller.socket.clone(),
            true => vm_controller_socket(&controller.socket),
        };
        let made = crate::controller::Controller::new(
            tasks.clone(),
            endpoints.clone(),
            controller.containerd.clone(),
            vm,
        );
        crate::controller::serve(&socket, made)?;
    }
    let control = UnixListener::bind(&control_path)
        .with_context(|| format!("cannot listen on {}", control_path.display()))?;
    ironcell_basics::owner_only(&control_path)?;
    let control = Arc::new(Control {
        tasks: tasks.clone(),
        endpoints: endpoints.clone(),
    })
    .serve(control);
    tokio::spawn(control);
    tracing::info!(
        control = %control_path.display(),
        sandbox_controller = %controller.socket.display(),
        "ironcelld serving"
    );
    ironcell_basics::process_memory::trim_text();
    ironcell_basics::process_memory::start_idle_trimmer();
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
    // A stop on purpose is not undone by the keeper.
    if let Err(e) = keeper.unsupervise() {
        tracing::warn!(error = %format!("{e:#}"), "cannot tell the keeper this stop is on purpose");
    }
    endpoints.shutdown().await;
    let _ = fs::remove_file(&control_path);
    let _ = fs::remove_file(&controller.socket);
    Ok(())
}

/// When a lost keeper has been replaced (the processes the old one was the
/// parent of are watched through pidfds by then): the new one is told the
/// task addresses again, and the tasks containerd gave up with the old one
/// are removed if its own clean-up does not come.
async fn follow_keeper(
    mut generations: tokio::sync::watch::Receiver<u64>,
    tasks: Arc<Tasks>,
    endpoints: Arc<Endpoints>,
) {
    while generations.changed().await.is_ok() {
        let generation = *generations.borrow_and_update();
        endpoints.front_again(generation).await;
        tasks.remove_after_keeper_loss();
        tasks.pods.remove_lost().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vm_pods_controller_listens_beside_the_controller() {
        for (socket, vm) in [
            (
                "/run/ironcell/ironcelld/sandbox.sock",
                "/run/ironcell/ironcelld/sandbox-vm.sock",
            ),
            ("/run/x/controller", "/run/x/controller-vm"),
        ] {
            assert_eq!(vm_controller_socket(Path::new(socket)), Path::new(vm));
        }
    }
}
