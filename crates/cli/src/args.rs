//! runc's command line, parsed with `lexopt`.
//!
//! ironcell is started for every step of a container's life (create, start,
//! state, kill, delete), so its own start-up shows in every engine call. A
//! derive-based parser (clap) built the whole command tree on every start and
//! alone added ~1.4 MiB of resident memory and measurable time; lexopt is a
//! small, maintained crate that only tokenizes, so the grammar lives here.
//! Global flags may come before or after the command, `--flag=value` and
//! `--flag value` both work, and short flags combine (`-dt`).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use ironcell_sandbox::Kind;
use lexopt::{Arg, Parser};

use crate::logging::LogFormat;

/// Flags every command accepts (runc's global options).
#[derive(Debug, Clone)]
pub struct Global {
    pub root: PathBuf,
    pub log: Option<PathBuf>,
    pub log_format: LogFormat,
    pub debug: bool,
    pub systemd_cgroup: bool,
    pub sandbox: Option<Kind>,
    /// The configuration file (`--config`; else IRONCELL_CONFIG, else
    /// /etc/ironcell/config.toml).
    pub config: Option<PathBuf>,
}

impl Default for Global {
    fn default() -> Self {
        Global {
            root: PathBuf::from("/run/ironcell"),
            log: None,
            log_format: LogFormat::Text,
            debug: false,
            systemd_cgroup: false,
            sandbox: None,
            config: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct CreateArgs {
    pub bundle: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub no_pivot: bool,
    pub preserve_fds: i32,
    pub id: String,
}

#[derive(Debug, Clone, Default)]
pub struct ExecArgs {
    pub console_socket: Option<PathBuf>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<String>,
    pub tty: bool,
    pub user: Option<String>,
    pub additional_gids: Vec<u32>,
    pub process: Option<PathBuf>,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub no_new_privs: bool,
    pub cap: Vec<String>,
    pub preserve_fds: i32,
    pub cgroup: Option<String>,
    pub ignore_paused: bool,
    pub id: String,
    pub command: Vec<String>,
}

/// `update`'s options, as runc's: the resources from a JSON file (or `-`,
/// stdin), or one flag per limit (each value as given, checked by
/// crate::update).
#[derive(Debug, Clone, Default)]
pub struct UpdateArgs {
    pub id: String,
    pub resources: Option<PathBuf>,
    /// (flag without dashes, value), in command-line order.
    pub flags: Vec<(String, String)>,
}

/// runc's `update` flags that take a value (runc spells the CPU weight
/// `--cpu-share`; `--cpu-shares`, docker's and podman's spelling, works too).
pub const UPDATE_FLAGS: &[&str] = &[
    "blkio-weight",
    "cpu-period",
    "cpu-quota",
    "cpu-burst",
    "cpu-share",
    "cpu-shares",
    "cpu-rt-period",
    "cpu-rt-runtime",
    "cpu-idle",
    "cpuset-cpus",
    "cpuset-mems",
    "kernel-memory",
    "kernel-memory-tcp",
    "memory",
    "memory-reservation",
    "memory-swap",
    "pids-limit",
    "l3-cache-schema",
    "mem-bw-schema",
];

#[derive(Debug)]
pub enum Command {
    Create(CreateArgs),
    Start {
        id: String,
    },
    State {
        id: String,
    },
    Kill {
        all: bool,
        id: String,
        signal: String,
    },
    Delete {
        force: bool,
        id: String,
    },
    Run {
        create: CreateArgs,
        detach: bool,
        keep: bool,
    },
    Exec(Box<ExecArgs>),
    List {
        format: String,
        quiet: bool,
    },
    Ps {
        format: String,
        id: String,
        ps_args: Vec<String>,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Update(Box<UpdateArgs>),
    Events {
        id: String,
        /// Print one stats event and exit.
        stats: bool,
        interval: std::time::Duration,
    },
    Features,
    Check,
    Spec {
        bundle: PathBuf,
    },
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    Run(Global, Command),
    Version,
    Help(&'static str),
}

pub const USAGE: &str = "\
ironcell: a secure container runtime (OCI runtime CLI, compatible with runc)

usage: ironcell [global options] COMMAND [options] [arguments]

commands:
  create    create a container (its process waits for `start`)
  start     run the user's process in a created container
  state     print the state of a container as JSON
  kill      send a signal (default SIGTERM) to a container (--all: every process)
  delete    delete a container (--force: even a running one)
  run       create and start a container; wait for it unless --detach
  exec      run another process in a running container
  list, ls  list containers (--format table|json, --quiet)
  ps        list the processes of a container (--format table|json)
  pause     freeze every process of a container
  resume    thaw a paused container
  update    change a container's resource limits (--resources FILE|-, or --memory...)
  events    print a container's stats and OOM events as JSON (--stats: once)
  features  print what this runtime supports (OCI features JSON)
  check     print what this host offers and which sandboxes can run
  spec      write a default config.json into a bundle

global options:
  --root DIR             state directory (default /run/ironcell)
  --log FILE             write logs to FILE instead of stderr
  --log-format FORMAT    text or json
  --debug                debug logging
  --systemd-cgroup       manage cgroups through systemd (needs systemd as init)
  --sandbox KIND         namespace, vm, wasm or app-kernel (default: the config.json
                         annotation io.ironcell.sandbox, else namespace)
  --config FILE          configuration file (default $IRONCELL_CONFIG, else
                         /etc/ironcell/config.toml; see docs/vm.md)
  -v, --version          print the version
  -h, --help             print this help
";

const CREATE_USAGE: &str = "\
usage: ironcell create [options] ID
       ironcell run [options] [--detach] [--keep] ID

  -b, --bundle DIR          the OCI bundle (default: the current directory)
      --console-socket PATH unix socket that receives the pty master
      --pid-file PATH       write the container process's pid here
      --no-pivot            do not use pivot_root (MS_MOVE + chroot)
      --no-new-keyring      accepted for runc compatibility
      --preserve-fds N      pass N extra file descriptors (3 and up)
  -d, --detach              (run) do not wait for the container
      --keep                (run) keep the container's state after it exits
";

const EXEC_USAGE: &str = "\
usage: ironcell exec [options] ID [COMMAND [ARG...]]

  -p, --process FILE        a process.json describing the process
  -t, --tty                 allocate a pseudo-TTY
  -d, --detach              do not wait for the process
      --pid-file PATH       write the process's pid here
      --console-socket PATH unix socket that receives the pty master
      --cwd DIR             working directory
  -e, --env KEY=VALUE       add or replace an environment variable
  -u, --user UID[:GID]      run as this user
  -g, --additional-gids GID add a supplementary group
  -c, --cap CAP             add a capability
      --no-new-privs        set no_new_privileges
      --preserve-fds N      pass N extra file descriptors
      --cgroup PATH         run in this sub-cgroup of the container
      --ignore-paused       allow exec in a paused container
";

const UPDATE_USAGE: &str = "\
usage: ironcell update [options] ID

  -r, --resources FILE|-      LinuxResources JSON (runtime-spec) from FILE or stdin;
                              unchanged values can be left out
      --memory SIZE           memory limit (bytes, or 64m, 1g...; -1: unlimited)
      --memory-reservation SIZE  soft limit
      --memory-swap SIZE      memory plus swap (-1: unlimited)
      --cpu-share(s) N        CPU weight
      --cpu-quota US          CFS quota per period (-1: unlimited)
      --cpu-period US         CFS period
      --cpu-burst US          CFS burst
      --cpu-rt-period US      realtime period
      --cpu-rt-runtime US     realtime runtime
      --cpu-idle 0|1          SCHED_IDLE for the cgroup
      --cpuset-cpus LIST      CPUs to run on (0-3,5)
      --cpuset-mems LIST      memory nodes
      --pids-limit N          maximum number of processes (-1: unlimited)
      --blkio-weight N        block IO weight, 10 to 1000
      --kernel-memory SIZE    accepted and ignored, as runc does
      --l3-cache-schema S, --mem-bw-schema S
                              Intel RDT: not supported (refused)
";

const EVENTS_USAGE: &str = "\
usage: ironcell events [--stats] [--interval DURATION] ID

      --stats                 print the container's statistics once and exit
      --interval DURATION     time between statistics (default 5s; 500ms, 1m...)

Without --stats, prints a stats event every interval and an oom event for
each OOM kill, one JSON object a line, until the container stops.
";

/// A command-line token, owned so that the parser can be asked for the
/// flag's value while the flag is matched: `-d`, `--detach`, or a value.
enum Tok {
    Flag(String),
    Value(OsString),
}

fn next(p: &mut Parser) -> Result<Option<Tok>> {
    Ok(p.next()?.map(|a| match a {
        Arg::Short(c) => Tok::Flag(format!("-{c}")),
        Arg::Long(l) => Tok::Flag(format!("--{l}")),
        Arg::Value(v) => Tok::Value(v),
    }))
}

fn string(v: OsString, what: &str) -> Result<String> {
    v.into_string()
        .map_err(|v| anyhow!("{what}: {v:?} is not valid UTF-8"))
}

fn number<T: std::str::FromStr>(v: OsString, what: &str) -> Result<T> {
    let s = string(v, what)?;
    s.parse()
        .map_err(|_| anyhow!("{what}: {s:?} is not a number"))
}

/// Parses the global flag `flag` if it is one. Returns false for others.
fn global_flag(p: &mut Parser, flag: &str, g: &mut Global) -> Result<bool> {
    match flag {
        "--root" => g.root = p.value()?.into(),
        "--log" => g.log = Some(p.value()?.into()),
        "--log-format" => {
            g.log_format = match string(p.value()?, "--log-format")?.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => bail!("--log-format: {other:?} is not text or json"),
            }
        }
        "--debug" => g.debug = true,
        "--config" => g.config = Some(p.value()?.into()),
        "--systemd-cgroup" => g.systemd_cgroup = true,
        "--sandbox" => {
            let s = string(p.value()?, "--sandbox")?;
            g.sandbox = Some(s.parse().map_err(|e| anyhow!("--sandbox: {e}"))?);
        }
        // runc's --criu and --rootless: accepted, without effect.
        "--criu" | "--rootless" => {
            p.value()?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn unexpected(flag: &str, command: &str) -> anyhow::Error {
    anyhow!("{command}: unknown option {flag} (see ironcell {command} --help)")
}

/// The next flag, handing values to `on_value` (which may stop the loop by
/// returning true). Global flags are taken care of here.
fn next_flag(
    p: &mut Parser,
    g: &mut Global,
    mut on_value: impl FnMut(OsString) -> Result<bool>,
) -> Result<Option<String>> {
    while let Some(tok) = next(p)? {
        match tok {
            Tok::Value(v) => {
                if on_value(v)? {
                    return Ok(None);
                }
            }
            Tok::Flag(f) => {
                if !global_flag(p, &f, g)? {
                    return Ok(Some(f));
                }
            }
        }
    }
    Ok(None)
}

/// Collects one positional argument (a container id); a second is an error.
fn one_value<'a>(
    slot: &'a mut Option<String>,
    command: &'a str,
) -> impl FnMut(OsString) -> Result<bool> + 'a {
    move |v| {
        if slot.is_some() {
            bail!("{command}: unexpected argument {v:?}");
        }
        *slot = Some(string(v, command)?);
        Ok(false)
    }
}

/// Parses `ironcell`'s arguments (without the program name).
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Invocation> {
    let mut p = Parser::from_args(args);
    let mut g = Global::default();
    let mut name = None;
    if let Some(f) = next_flag(&mut p, &mut g, |v| {
        name = Some(v);
        Ok(true)
    })? {
        match f.as_str() {
            "-v" | "--version" => return Ok(Invocation::Version),
            "-h" | "--help" => return Ok(Invocation::Help(USAGE)),
            _ => bail!("unknown option {f} (see ironcell --help)"),
        }
    }
    let Some(name) = name else {
        bail!("no command given (see ironcell --help)");
    };
    let name = string(name, "command")?;
    let command = match name.as_str() {
        "create" => match parse_create(&mut p, &mut g, "create", None)? {
            Some(a) => Command::Create(a),
            None => return Ok(Invocation::Help(CREATE_USAGE)),
        },
        "run" => {
            let mut detach = false;
            let mut keep = false;
            let Some(create) = parse_create(&mut p, &mut g, "run", Some((&mut detach, &mut keep)))?
            else {
                return Ok(Invocation::Help(CREATE_USAGE));
            };
            Command::Run {
                create,
                detach,
                keep,
            }
        }
        "start" | "state" | "pause" | "resume" => {
            let mut id = None;
            if let Some(f) = next_flag(&mut p, &mut g, one_value(&mut id, &name))? {
                if f == "-h" || f == "--help" {
                    return Ok(Invocation::Help(USAGE));
                }
                return Err(unexpected(&f, &name));
            }
            let id = id.with_context(|| format!("{name}: missing container id"))?;
            match name.as_str() {
                "start" => Command::Start { id },
                "state" => Command::State { id },
                "pause" => Command::Pause { id },
                _ => Command::Resume { id },
            }
        }
        "kill" => {
            let mut all = false;
            let mut pos = Vec::new();
            while let Some(f) = next_flag(&mut p, &mut g, |v| {
                pos.push(string(v, "kill")?);
                Ok(false)
            })? {
                match f.as_str() {
                    "-a" | "--all" => all = true,
                    "-h" | "--help" => {
                        return Ok(Invocation::Help(
                            "usage: ironcell kill [--all] ID [SIGNAL]\n",
                        ))
                    }
                    _ => return Err(unexpected(&f, "kill")),
                }
            }
            let mut pos = pos.into_iter();
            let id = pos.next().context("kill: missing container id")?;
            let signal = pos.next().unwrap_or_else(|| "SIGTERM".into());
            if let Some(extra) = pos.next() {
                bail!("kill: unexpected argument {extra:?}");
            }
            Command::Kill { all, id, signal }
        }
        "delete" => {
            let mut force = false;
            let mut id = None;
            while let Some(f) = next_flag(&mut p, &mut g, one_value(&mut id, "delete"))? {
                match f.as_str() {
                    "-f" | "--force" => force = true,
                    "-h" | "--help" => {
                        return Ok(Invocation::Help("usage: ironcell delete [--force] ID\n"))
                    }
                    _ => return Err(unexpected(&f, "delete")),
                }
            }
            Command::Delete {
                force,
                id: id.context("delete: missing container id")?,
            }
        }
        "exec" => match parse_exec(&mut p, &mut g)? {
            Some(e) => Command::Exec(Box::new(e)),
            None => return Ok(Invocation::Help(EXEC_USAGE)),
        },
        "list" | "ls" => {
            let mut format = "table".to_string();
            let mut quiet = false;
            let mut extra = None;
            while let Some(f) = next_flag(&mut p, &mut g, one_value(&mut extra, "list"))? {
                match f.as_str() {
                    "-f" | "--format" => format = string(p.value()?, "--format")?,
                    "-q" | "--quiet" => quiet = true,
                    "-h" | "--help" => {
                        return Ok(Invocation::Help(
                            "usage: ironcell list [--format table|json] [--quiet]\n",
                        ))
                    }
                    _ => return Err(unexpected(&f, "list")),
                }
            }
            if let Some(extra) = extra {
                bail!("list: unexpected argument {extra:?}");
            }
            Command::List { format, quiet }
        }
        "ps" => {
            let mut format = "table".to_string();
            let mut id = None;
            while let Some(f) = next_flag(&mut p, &mut g, |v| {
                id = Some(string(v, "ps")?);
                Ok(true)
            })? {
                match f.as_str() {
                    "-f" | "--format" => format = string(p.value()?, "--format")?,
                    "-h" | "--help" => {
                        return Ok(Invocation::Help(
                            "usage: ironcell ps [--format table|json] ID [PS-ARGS...]\n",
                        ))
                    }
                    _ => return Err(unexpected(&f, "ps")),
                }
            }
            let id = id.context("ps: missing container id")?;
            let ps_args = rest(&mut p, "ps")?;
            Command::Ps {
                format,
                id,
                ps_args,
            }
        }
        "update" => match parse_update(&mut p, &mut g)? {
            Some(u) => Command::Update(Box::new(u)),
            None => return Ok(Invocation::Help(UPDATE_USAGE)),
        },
        "events" => {
            let mut stats = false;
            let mut interval = std::time::Duration::from_secs(5);
            let mut id = None;
            while let Some(f) = next_flag(&mut p, &mut g, one_value(&mut id, "events"))? {
                match f.as_str() {
                    "--stats" => stats = true,
                    "--interval" => {
                        let v = string(p.value()?, "--interval")?;
                        interval = parse_duration(&v)
                            .map_err(|e| anyhow!("events: --interval {v:?}: {e}"))?;
                        if interval.is_zero() {
                            bail!("events: --interval: duration interval must be greater than 0");
                        }
                    }
                    "-h" | "--help" => return Ok(Invocation::Help(EVENTS_USAGE)),
                    _ => return Err(unexpected(&f, "events")),
                }
            }
            Command::Events {
                id: id.context("events: missing container id")?,
                stats,
                interval,
            }
        }
        "features" => {
            let mut extra = None;
            if let Some(f) = next_flag(&mut p, &mut g, one_value(&mut extra, "features"))? {
                return Err(unexpected(&f, "features"));
            }
            if let Some(extra) = extra {
                bail!("features: unexpected argument {extra:?}");
            }
            Command::Features
        }
        "check" => {
            let mut extra = None;
            if let Some(f) = next_flag(&mut p, &mut g, one_value(&mut extra, "check"))? {
                return Err(unexpected(&f, "check"));
            }
            if let Some(extra) = extra {
                bail!("check: unexpected argument {extra:?}");
            }
            Command::Check
        }
        "spec" => {
            let mut bundle = PathBuf::from(".");
            let mut extra = None;
            while let Some(f) = next_flag(&mut p, &mut g, one_value(&mut extra, "spec"))? {
                match f.as_str() {
                    "-b" | "--bundle" => bundle = p.value()?.into(),
                    "-h" | "--help" => {
                        return Ok(Invocation::Help("usage: ironcell spec [--bundle DIR]\n"))
                    }
                    _ => return Err(unexpected(&f, "spec")),
                }
            }
            if let Some(extra) = extra {
                bail!("spec: unexpected argument {extra:?}");
            }
            Command::Spec { bundle }
        }
        "help" => return Ok(Invocation::Help(USAGE)),
        other => bail!("unknown command {other:?} (see ironcell --help)"),
    };
    Ok(Invocation::Run(g, command))
}

/// Everything after the current position, verbatim (a command and its args).
fn rest(p: &mut Parser, what: &str) -> Result<Vec<String>> {
    p.raw_args()?
        .map(|a| string(a, what))
        .collect::<Result<Vec<_>>>()
}

/// `None` when help was asked for.
fn parse_create(
    p: &mut Parser,
    g: &mut Global,
    command: &str,
    mut run: Option<(&mut bool, &mut bool)>,
) -> Result<Option<CreateArgs>> {
    let mut a = CreateArgs {
        bundle: PathBuf::from("."),
        ..Default::default()
    };
    let mut id = None;
    while let Some(f) = next_flag(p, g, one_value(&mut id, command))? {
        match (f.as_str(), run.as_mut()) {
            ("-b" | "--bundle", _) => a.bundle = p.value()?.into(),
            ("--console-socket", _) => a.console_socket = Some(p.value()?.into()),
            ("--pid-file", _) => a.pid_file = Some(p.value()?.into()),
            ("--no-pivot", _) => a.no_pivot = true,
            ("--no-new-keyring", _) => {}
            ("--preserve-fds", _) => a.preserve_fds = number(p.value()?, "--preserve-fds")?,
            ("-d" | "--detach", Some((detach, _))) => **detach = true,
            ("--keep", Some((_, keep))) => **keep = true,
            ("-h" | "--help", _) => return Ok(None),
            _ => return Err(unexpected(&f, command)),
        }
    }
    a.id = id.with_context(|| format!("{command}: missing container id"))?;
    Ok(Some(a))
}

/// `None` when help was asked for.
fn parse_update(p: &mut Parser, g: &mut Global) -> Result<Option<UpdateArgs>> {
    let mut a = UpdateArgs::default();
    let mut id = None;
    while let Some(f) = next_flag(p, g, one_value(&mut id, "update"))? {
        match f.as_str() {
            "-r" | "--resources" => a.resources = Some(p.value()?.into()),
            "-h" | "--help" => return Ok(None),
            long if long
                .strip_prefix("--")
                .is_some_and(|n| UPDATE_FLAGS.contains(&n)) =>
            {
                let name = &long[2..];
                let v = string(p.value()?, long)?;
                a.flags.push((name.to_string(), v));
            }
            _ => return Err(unexpected(&f, "update")),
        }
    }
    a.id = id.context("update: missing container id")?;
    Ok(Some(a))
}

/// A duration as Go's `time.ParseDuration` reads it (runc's `--interval`):
/// numbers with units, `1m30s`, `1.5s`, `500ms`, `100us`, `10ns`, `2h`.
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {s:?} (use s, ms, m...)"))?;
        let (num, tail) = rest.split_at(num_end);
        let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("unknown unit {other:?} in duration {s:?}")),
        };
        total += n * scale;
        rest = tail;
    }
    std::time::Duration::try_from_secs_f64(total).map_err(|e| format!("{s:?}: {e}"))
}

/// `None` when help was asked for.
fn parse_exec(p: &mut Parser, g: &mut Global) -> Result<Option<ExecArgs>> {
    let mut a = ExecArgs::default();
    let mut id = None;
    while let Some(f) = next_flag(p, g, |v| {
        id = Some(string(v, "exec")?);
        Ok(true)
    })? {
        match f.as_str() {
            "--console-socket" => a.console_socket = Some(p.value()?.into()),
            "--cwd" => a.cwd = Some(p.value()?.into()),
            "-e" | "--env" => a.env.push(string(p.value()?, "--env")?),
            "-t" | "--tty" => a.tty = true,
            "-u" | "--user" => a.user = Some(string(p.value()?, "--user")?),
            "-g" | "--additional-gids" => a
                .additional_gids
                .push(number(p.value()?, "--additional-gids")?),
            "-p" | "--process" => a.process = Some(p.value()?.into()),
            "-d" | "--detach" => a.detach = true,
            "--pid-file" => a.pid_file = Some(p.value()?.into()),
            // SELinux and AppArmor labels: accepted for runc compatibility.
            "--process-label" | "--apparmor" => {
                p.value()?;
            }
            "--no-new-privs" => a.no_new_privs = true,
            "-c" | "--cap" => a.cap.push(string(p.value()?, "--cap")?),
            "--preserve-fds" => a.preserve_fds = number(p.value()?, "--preserve-fds")?,
            "--cgroup" => a.cgroup = Some(string(p.value()?, "--cgroup")?),
            "--ignore-paused" => a.ignore_paused = true,
            "-h" | "--help" => return Ok(None),
            _ => return Err(unexpected(&f, "exec")),
        }
    }
    a.id = id.context("exec: missing container id")?;
    a.command = rest(p, "exec")?;
    Ok(Some(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> (Global, Command) {
        match parse(args.iter().map(OsString::from)).unwrap() {
            Invocation::Run(g, c) => (g, c),
            other => panic!("{other:?}"),
        }
    }

    fn err(args: &[&str]) -> String {
        parse(args.iter().map(OsString::from))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn containerd_create_line() {
        let (g, c) = run(&[
            "--root",
            "/run/containerd/runc/default",
            "--log",
            "/x/log.json",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/b/init.pid",
            "--console-socket=/tmp/pty.sock",
            "c1",
        ]);
        assert_eq!(g.root, PathBuf::from("/run/containerd/runc/default"));
        assert_eq!(g.log_format, LogFormat::Json);
        let Command::Create(a) = c else { panic!() };
        assert_eq!(a.bundle, PathBuf::from("/b"));
        assert_eq!(a.pid_file, Some(PathBuf::from("/b/init.pid")));
        assert_eq!(a.console_socket, Some(PathBuf::from("/tmp/pty.sock")));
        assert_eq!(a.id, "c1");
    }

    #[test]
    fn exec_keeps_the_command_verbatim() {
        let (_, c) = run(&[
            "exec",
            "-t",
            "-e",
            "A=1",
            "--env=B=2",
            "c1",
            "ls",
            "-la",
            "--color",
        ]);
        let Command::Exec(a) = c else { panic!() };
        assert!(a.tty);
        assert_eq!(a.env, vec!["A=1", "B=2"]);
        assert_eq!(a.id, "c1");
        assert_eq!(a.command, vec!["ls", "-la", "--color"]);
    }

    #[test]
    fn run_kill_delete_ps_forms() {
        let (g, c) = run(&["run", "-d", "--keep", "-b", "/b", "--debug", "c2"]);
        assert!(g.debug, "global flags after the command");
        assert!(matches!(
            c,
            Command::Run {
                detach: true,
                keep: true,
                ..
            }
        ));
        let (_, c) = run(&["kill", "--all", "c3", "KILL"]);
        assert!(
            matches!(c, Command::Kill { all: true, ref id, ref signal } if id == "c3" && signal == "KILL")
        );
        let (_, c) = run(&["kill", "c3"]);
        assert!(matches!(c, Command::Kill { ref signal, .. } if signal == "SIGTERM"));
        let (_, c) = run(&["delete", "-f", "c4"]);
        assert!(matches!(c, Command::Delete { force: true, .. }));
        let (_, c) = run(&["ps", "--format", "json", "c5", "-o", "pid"]);
        assert!(
            matches!(c, Command::Ps { ref format, ref ps_args, .. } if format == "json" && ps_args == &["-o", "pid"])
        );
        let (g, _) = run(&["--sandbox", "namespace", "list", "-q"]);
        assert_eq!(g.sandbox, Some(Kind::Namespace));
    }

    #[test]
    fn update_and_events_forms() {
        let (_, c) = run(&["update", "--resources", "-", "c1"]);
        let Command::Update(u) = c else { panic!() };
        assert_eq!(
            (u.id.as_str(), u.resources.as_deref()),
            ("c1", Some(std::path::Path::new("-")))
        );
        let (_, c) = run(&[
            "update",
            "--memory",
            "64m",
            "--cpu-share=512",
            "--pids-limit",
            "20",
            "c2",
        ]);
        let Command::Update(u) = c else { panic!() };
        assert_eq!(
            u.flags,
            [
                ("memory".to_string(), "64m".to_string()),
                ("cpu-share".into(), "512".into()),
                ("pids-limit".into(), "20".into())
            ]
        );
        assert!(err(&["update", "--memroy", "1", "c"]).contains("--memroy"));
        assert!(err(&["update"]).contains("missing container id"));
        let (_, c) = run(&["events", "--stats", "c3"]);
        assert!(
            matches!(c, Command::Events { stats: true, interval, .. } if interval.as_secs() == 5)
        );
        let (_, c) = run(&["events", "--interval=250ms", "c3"]);
        assert!(
            matches!(c, Command::Events { stats: false, interval, .. } if interval.as_millis() == 250)
        );
        assert!(err(&["events", "--interval", "0s", "c"]).contains("greater than 0"));
        assert!(err(&["events", "--interval", "5", "c"]).contains("missing unit"));
    }

    #[test]
    fn go_durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn bad_usage_is_an_error() {
        assert!(err(&[]).contains("no command"));
        assert!(err(&["frobnicate"]).contains("unknown command"));
        assert!(err(&["start"]).contains("missing container id"));
        assert!(err(&["start", "a", "b"]).contains("start"));
        assert!(err(&["create", "--bogus", "x"]).contains("--bogus"));
        assert!(err(&["--sandbox", "kvm", "list"]).contains("unknown sandbox kind"));
        assert!(err(&["--log-format", "xml", "list"]).contains("not text or json"));
        assert!(err(&["exec", "--preserve-fds", "x", "c"]).contains("not a number"));
        assert!(matches!(
            parse([OsString::from("--version")]).unwrap(),
            Invocation::Version
        ));
    }
}
