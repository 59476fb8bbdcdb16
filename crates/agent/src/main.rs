//! `ironcell-agent`: PID 1 of a vm sandbox's guest, started from the
//! initramfs as `/init`. Run on a host (its tests), it listens on unix
//! sockets instead of vsock and is a child subreaper instead of PID 1.
//!
//! ```text
//! ironcell-agent [--control vsock:1024|unix:PATH] [--streams vsock:1025|unix:PATH]
//!                [--root DIR] [--log-level error|warn|info|debug]
//! ironcell-agent pause      (a pod's namespace holder, `pause.rs`)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use ironcell_agent::containers::Containers;
use ironcell_agent::listen::{listener, Addr};
use ironcell_agent::oom::OomWatch;
use ironcell_agent::reaper::Reaper;
use ironcell_agent::service::Agent;
use ironcell_agent::{guest, init, streams};
use ironcell_protocol::{CONTROL_PORT, STREAM_PORT};

struct Args {
    control: Addr,
    streams: Addr,
    root: PathBuf,
    level: tracing::Level,
}

fn parse_args() -> Result<Args> {
    use lexopt::prelude::*;
    let mut a = Args {
        control: Addr::Vsock(CONTROL_PORT),
        streams: Addr::Vsock(STREAM_PORT),
        root: PathBuf::from("/run/ironcell-agent"),
        level: tracing::Level::WARN,
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("control") => a.control = p.value()?.string()?.parse()?,
            Long("streams") => a.streams = p.value()?.string()?.parse()?,
            Long("root") => a.root = p.value()?.into(),
            Long("log-level") => {
                a.level = p
                    .value()?
                    .string()?
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--log-level: error, warn, info or debug"))?
            }
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(a)
}

fn serve(started_us: u64, pid1: bool) -> Result<()> {
    // The kernel hands PID 1 the words of its command line it does not
    // know: PID 1 takes no arguments.
    let args = if pid1 {
        Args {
            control: Addr::Vsock(CONTROL_PORT),
            streams: Addr::Vsock(STREAM_PORT),
            root: PathBuf::from("/run/ironcell-agent"),
            level: tracing::Level::WARN,
        }
    } else {
        parse_args()?
    };
    // The log goes to a descriptor of its own on the agent's stderr, not
    // to fd 2: the processes the engine forks run the agent's code (and
    // log) until they exec, after their fd 2 became the container's
    // stderr, and the agent's log must not end up in a container's output.
    let own_stderr = std::path::Path::new("/proc/self/fd/2");
    logging::init(Some(own_stderr), logging::LogFormat::Text, args.level)
        .or_else(|_| logging::init(None, logging::LogFormat::Text, args.level))?;
    if pid1 {
        init::setup().context("setting up the guest")?;
    } else {
        nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    }
    let reaper = Arc::new(Reaper::default());
    reaper.start().context("starting the reaper")?;
    let oom = OomWatch::new();
    oom.start().context("starting the OOM watch")?;
    let containers = Arc::new(Containers::new(&args.root, reaper, oom)?);
    streams::start(listener(&args.streams)?, containers.clone()).context("stream listener")?;
    let agent = Arc::new(Agent::new(containers, pid1, started_us));
    let _server = agent.clone().serve(listener(&args.control)?)?;
    if pid1 {
        if let Err(e) = ironcell_agent::listen::announce_ready() {
            tracing::warn!("cannot tell the host the agent is ready: {e}");
        }
    }
    eprintln!(
        "ironcell-agent {} ready ({} ms after the kernel started)",
        ironcell_agent::VERSION,
        guest::boottime_us() / 1000
    );
    loop {
        std::thread::park();
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "helper") {
        return ironcell_agent::helper::main(&args[1..]);
    }
    // The guest's init is the kernel's `/init`, which gets the words of
    // the kernel's command line the kernel does not know: never a mode.
    // The pod holder (`<path> pause`) is PID 1 of its own PID namespace.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if args.len() == 1 && args[0] == "pause" && argv0 != "/init" {
        return ironcell_agent::pause::main();
    }
    let started_us = guest::boottime_us();
    let pid1 = std::process::id() == 1;
    let result = (|| {
        if pid1 {
            init::mount_proc()?;
            init::leave_initramfs()?;
        }
        // The agent forks into containers: it runs from a sealed copy of
        // its binary, out of their reach (CVE-2019-5736).
        ironcell_container::sealed_exe::ensure_sealed().context("sealing the agent's binary")?;
        serve(started_us, pid1)
    })();
    if let Err(e) = result {
        eprintln!("ironcell-agent: {e:#}");
        if pid1 {
            init::power_off();
        }
    }
    ExitCode::FAILURE
}
