//! `ironcelld`: the node's sandboxer daemon (docs/daemon.md).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ironcelld::server;

const USAGE: &str = "\
usage: ironcelld [options]

Serves containerd's shim v2 Task API for every task on this node (one
daemon, every pod). containerd reaches it through containerd-shim-ironcell-v2.
  --root DIR          state and sockets (default /run/ironcell/ironcelld)
  --sandbox-socket PATH
                      containerd 2.x's sandbox controller (a proxy plugin of
                      type \"sandbox\") listens here (default ROOT/sandbox.sock);
                      its controller of VM pods beside it, -vm added to the
                      name (ROOT/sandbox-vm.sock)
  --containerd PATH   the ttrpc address of the containerd that socket serves
                      (default /run/containerd/containerd.sock.ttrpc)
  --log PATH          log file (default stderr)
  --log-format FMT    text (default) or json
  --log-level LEVEL   error, warn, info (default), debug, trace
  --supervised        the keeper starts this daemon again if it dies (the
                      shim passes it; a service manager does not need it)
";

struct Args {
    root: PathBuf,
    sandbox_socket: Option<PathBuf>,
    containerd: String,
    log: Option<PathBuf>,
    log_json: bool,
    log_level: tracing::Level,
    supervised: bool,
}

fn parse_args(args: Vec<OsString>) -> Result<Args> {
    use lexopt::prelude::*;
    let mut a = Args {
        root: PathBuf::from(server::DEFAULT_ROOT),
        sandbox_socket: None,
        containerd: server::DEFAULT_CONTAINERD.into(),
        log: None,
        log_json: false,
        log_level: tracing::Level::INFO,
        supervised: false,
    };
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next()? {
        match arg {
            Long("root") => a.root = p.value()?.into(),
            Long("sandbox-socket") => a.sandbox_socket = Some(p.value()?.into()),
            Long("containerd") => {
                let v = p.value()?.string()?;
                a.containerd = v.strip_prefix("unix://").unwrap_or(&v).to_string();
            }
            Long("log") => a.log = Some(p.value()?.into()),
            Long("log-format") => {
                a.log_json = match p.value()?.string()?.as_str() {
                    "text" => false,
                    "json" => true,
                    other => bail!("--log-format: unknown format {other:?} (text or json)"),
                }
            }
            Long("log-level") => {
                let v = p.value()?.string()?;
                a.log_level = v
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--log-level: unknown level {v:?}"))?;
            }
            Long("supervised") => a.supervised = true,
            Short('h') | Long("help") => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    if !a.root.is_absolute() {
        bail!("--root {}: must be an absolute path", a.root.display());
    }
    if let Some(s) = a.sandbox_socket.as_ref().filter(|s| !s.is_absolute()) {
        bail!("--sandbox-socket {}: must be an absolute path", s.display());
    }
    if !a.containerd.starts_with('/') {
        bail!(
            "--containerd {}: must be an absolute socket path",
            a.containerd
        );
    }
    Ok(a)
}

fn run(args: Args) -> Result<()> {
    let format = if args.log_json {
        logging::LogFormat::Json
    } else {
        logging::LogFormat::Text
    };
    logging::init(args.log.as_deref(), format, args.log_level)
        .with_context(|| format!("cannot open log {:?}", args.log))?;
    if let Some(log) = &args.log {
        // The helpers log their errors (libcontainer's detail) there too.
        std::env::set_var(ironcelld::helper::LOG_ENV, log);
    }
    let _lock = server::lock(&args.root)?;
    // Started by the shim inside a bundle that will be deleted: a daemon
    // must not hold any directory.
    std::env::set_current_dir("/").context("cannot change to /")?;
    ironcell_basics::process_memory::limit_malloc_arenas();
    // Blocking work (sandbox operations, file I/O) runs on a few threads
    // that do not linger: every thread costs its stack's touched pages.
    // One async worker: the requests' own work is short, and with two the
    // runtime woke the idle one for nearly every task it spawned (ttrpc
    // spawns one per request), a thread switch each. Six paired runs of
    // wasm_stress on the CI host: one worker was faster in five, 1177
    // against 1108 sequential tasks/s and 2400 against 2078 concurrent
    // (medians).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(8)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let controller = server::ControllerConfig {
        socket: args
            .sandbox_socket
            .unwrap_or_else(|| server::controller_socket(&args.root)),
        containerd: args.containerd,
    };
    let supervision = args.supervised.then(server::Supervision::of_this_process);
    rt.block_on(server::serve(args.root, controller, supervision))
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "helper") {
        return ironcelld::helper::main(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "keeper") {
        return ironcell_keeper::main(&args[1..]);
    }
    match parse_args(args).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            tracing::error!("{msg}");
            eprintln!("ironcelld: {msg}");
            ExitCode::FAILURE
        }
    }
}
