//! `containerd-shim-ironcell-v2`: the binary containerd runs for the runtime
//! `io.containerd.ironcell.v2`. It stays tiny and short-lived: no process
//! per pod remains on the host.
//!
//! - `start`: makes sure the node's ironcelld runs (starts it when it does
//!   not), tells it which containerd the task belongs to, and prints the
//!   daemon's Task API address. containerd then talks to ironcelld for the
//!   task; every task of every pod shares that one address.
//! - `delete`: containerd lost the task's connection (or cleans up after a
//!   failed start): ironcelld kills and deletes the task if it still has
//!   it; prints the protobuf `DeleteResponse` containerd reads.
//!
//! containerd passes Go-style flags (`-namespace ns -id ID ... start`).
//! `IRONCELLD_ROOT` in containerd's environment selects the daemon
//! (default /run/ironcell/ironcelld).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};
use ironcelld::control::protocol::{Reply, Request};

/// How long `start` waits for a daemon it started to listen.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a daemon killed in its start-up is started again.
const MAX_START_RESTARTS: u32 = 3;
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a request is sent to a daemon that died under it.
const MAX_ATTEMPTS: u32 = 4;

#[derive(Debug, Default, PartialEq)]
struct Flags {
    namespace: String,
    id: String,
    address: String,
    bundle: Option<String>,
    action: String,
    version: bool,
}

/// Go's flag syntax: `-name value`, `--name value`, `-name=value`; boolean
/// flags (`-debug`, `-v`) take no value.
fn parse(args: &[String]) -> Result<Flags> {
    let mut f = Flags::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            if !f.action.is_empty() {
                bail!("unexpected argument {arg:?}");
            }
            f.action = arg.clone();
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        match name {
            "debug" | "info" => continue,
            "v" | "version" => {
                f.version = true;
                continue;
            }
            _ => {}
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .with_context(|| format!("flag -{name} needs a value"))?,
        };
        match name {
            "namespace" => f.namespace = value,
            "id" => f.id = value,
            "address" => f.address = value,
            "bundle" => f.bundle = Some(value),
            // Known to containerd's shims; not needed here.
            "publish-binary" | "socket" => {}
            other => bail!("unknown flag -{other}"),
        }
    }
    Ok(f)
}

fn root() -> PathBuf {
    std::env::var_os("IRONCELLD_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(ironcelld::server::DEFAULT_ROOT))
}

/// ironcelld next to this binary, else from PATH.
fn daemon_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("IRONCELLD_BINARY") {
        return p.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("ironcelld")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("ironcelld"))
}

/// The daemon answered a request with an error.
#[derive(Debug, thiserror::Error)]
#[error("ironcelld: {0}")]
struct Refused(String);

/// One request on the daemon's control socket, one JSON reply.
fn call(conn: &UnixStream, req: &Request) -> Result<Reply> {
    conn.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut w = conn;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    w.write_all(line.as_bytes())
        .context("cannot write to ironcelld")?;
    let mut reply = String::new();
    let n = BufReader::new(conn)
        .read_line(&mut reply)
        .context("no reply from ironcelld")?;
    if n == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
            .context("no reply from ironcelld: it closed the connection");
    }
    let reply: Reply = serde_json::from_str(&reply).context("malformed reply from ironcelld")?;
    if let Some(e) = reply.error {
        return Err(Refused(e).into());
    }
    Ok(reply)
}

/// [`call`] on a daemon [`ensure_daemon`] reached or started, again while
/// the daemon dies under the request (its keeper, or this function, starts
/// the next). Every request is idempotent.
fn request(root: &Path, req: &Request) -> Result<Reply> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match ensure_daemon(root).and_then(|c| call(&c, req)) {
            Err(e) if attempts < MAX_ATTEMPTS && e.downcast_ref::<std::io::Error>().is_some() => {
                std::thread::sleep(Duration::from_millis(20));
            }
            reply => return reply,
        }
    }
}

fn connect(root: &Path) -> std::io::Result<UnixStream> {
    UnixStream::connect(root.join("control.sock"))
}

/// Connects to the daemon, starting it first when none listens. A daemon
/// the keeper is starting again at the same moment is no conflict: one of
/// the two takes the root's lock, the other exits, and the keeper does not
/// count that exit as a death.
fn ensure_daemon(root: &Path) -> Result<UnixStream> {
    if let Ok(c) = connect(root) {
        return Ok(c);
    }
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let log = root.join("ironcelld.log");
    let mut child = start_daemon(root, &log)?;
    let mut restarts = 0;
    let deadline = Instant::now() + DAEMON_START_TIMEOUT;
    loop {
        if let Ok(c) = connect(root) {
            // The daemon outlives us; its exit is not ours to collect.
            std::mem::forget(child);
            return Ok(c);
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Killed in its start-up, before it asked the keeper to
            // supervise it (which it does before it listens): nothing
            // else would start it again. A second daemon started by a
            // concurrent shim exits instead (the root's lock): then keep
            // waiting for the first one's socket.
            if status.signal().is_some() && restarts < MAX_START_RESTARTS && !daemon_runs(root) {
                restarts += 1;
                child = start_daemon(root, &log)?;
                continue;
            }
            if !status.success() && Instant::now() > deadline {
                bail!("ironcelld exited with {status}; see {}", log.display());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "ironcelld did not listen on {} within {} s; see {}",
                root.join("control.sock").display(),
                DAEMON_START_TIMEOUT.as_secs(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts `ironcelld --root root`, detached (its own session), logging to
/// `log`.
fn start_daemon(root: &Path, log: &Path) -> Result<std::process::Child> {
    let bin = daemon_binary();
    let mut cmd = Command::new(&bin);
    cmd.arg("--root")
        .arg(root)
        .arg("--log")
        .arg(log)
        .arg("--log-format")
        .arg("json")
        // Nothing else restarts a daemon the shim started: the keeper does.
        .arg("--supervised")
        // Not the bundle containerd runs the shim in: containerd removes
        // it with its task, and the daemon outlives every task.
        .current_dir("/")
        // containerd reads the shim's stdout to EOF: the daemon must not
        // hold it.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

/// Whether a daemon holds the root's lock (`ironcelld.lock`, which every
/// daemon takes first and holds until it exits).
fn daemon_runs(root: &Path) -> bool {
    let Ok(f) = std::fs::File::open(root.join("ironcelld.lock")) else {
        return false;
    };
    // SAFETY: flock on a descriptor this function owns; closing it drops
    // the lock if it was taken.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// containerd's ttrpc address: TTRPC_ADDRESS, else the gRPC address + ".ttrpc".
fn containerd_ttrpc(flags: &Flags) -> String {
    std::env::var("TTRPC_ADDRESS")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| format!("{}.ttrpc", flags.address))
}

fn start(flags: &Flags) -> Result<()> {
    let root = root();
    let req = Request::Register {
        namespace: flags.namespace.clone(),
        id: flags.id.clone(),
        containerd: containerd_ttrpc(flags),
    };
    // Registering is idempotent.
    let reply = request(&root, &req)?;
    let address = reply.address.context("ironcelld sent no address")?;
    // containerd runs `start` inside the task's bundle and, when it
    // restarts, reconnects to the address it finds there (the shim writes
    // it, as containerd's own shims do).
    let dir = flags
        .bundle
        .as_deref()
        .map(Path::new)
        .unwrap_or(Path::new("."));
    ironcell_basics::atomic_file::write(&dir.join("address"), address.as_bytes())
        .with_context(|| format!("cannot write {}", dir.join("address").display()))?;
    let mut out = std::io::stdout().lock();
    out.write_all(address.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn delete(flags: &Flags) -> Result<()> {
    let root = root();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let req = Request::Cleanup {
        namespace: flags.namespace.clone(),
        id: flags.id.clone(),
    };
    // A daemon is started when none runs: only a daemon can remove what is
    // left of the task (the keeper that reached it may have died with the
    // daemon, and nothing else would start the next).
    let (pid, status, at) = match request(&root, &req) {
        Ok(r) => (
            r.pid.unwrap_or(0),
            r.exit_status
                .unwrap_or(ironcell_basics::exit_status::KILLED),
            r.exited_at.unwrap_or(now),
        ),
        Err(e) if e.downcast_ref::<Refused>().is_some() => return Err(e),
        // No daemon could be reached or started: nothing of the task is
        // served any more.
        Err(e) => {
            eprintln!("containerd-shim-ironcell-v2 delete: {e:#}");
            (0, ironcell_basics::exit_status::KILLED, now)
        }
    };
    let resp = DeleteResponse {
        pid,
        exit_status: status,
        exited_at: MessageField::some(Timestamp {
            seconds: (at / 1_000_000_000) as i64,
            nanos: (at % 1_000_000_000) as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&resp.write_to_bytes()?)?;
    out.flush()?;
    Ok(())
}

fn run(args: &[String]) -> Result<()> {
    let flags = parse(args)?;
    if flags.version {
        println!(
            "{}:\n  Version: {}\n  Runtime: io.containerd.ironcell.v2 (served by ironcelld)",
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION")
        );
        return Ok(());
    }
    if flags.namespace.is_empty() {
        bail!("-namespace is required");
    }
    if flags.id.is_empty() {
        bail!("-id is required");
    }
    match flags.action.as_str() {
        "start" => start(&flags),
        "delete" => delete(&flags),
        "" => bail!("no action: expected start or delete"),
        other => bail!("unknown action {other:?}: expected start or delete"),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "containerd-shim-ironcell-v2: {}",
                format!("{e:#}").replace('\n', " ")
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn containerd_flags() {
        let f = parse(&args(
            "-namespace default -address /run/containerd/containerd.sock \
             -publish-binary /usr/bin/containerd -id c1 -debug start",
        ))
        .unwrap();
        assert_eq!(f.namespace, "default");
        assert_eq!(f.id, "c1");
        assert_eq!(f.address, "/run/containerd/containerd.sock");
        assert_eq!(f.action, "start");
        let f = parse(&args("--namespace=k8s.io -id=x -bundle /b delete")).unwrap();
        assert_eq!(f.namespace, "k8s.io");
        assert_eq!(f.bundle.as_deref(), Some("/b"));
        assert_eq!(f.action, "delete");
        assert!(parse(&args("-v")).unwrap().version);
    }

    #[test]
    fn bad_flags() {
        assert!(parse(&args("-namespace")).is_err());
        assert!(parse(&args("-bogus 1 start")).is_err());
        assert!(parse(&args("start delete")).is_err());
        assert!(run(&args("-namespace ns start")).is_err());
        assert!(run(&args("-namespace ns -id x explode")).is_err());
    }
}
