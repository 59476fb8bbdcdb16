//! One function per runc command. Each returns the process exit code.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use anyhow::{bail, Context, Result};
use ironcell_container::{parse_signal, ContainerError, CreateOptions, ExecOptions};
use ironcell_oci::{Bundle, ContainerState, Status};
use ironcell_sandbox::{Kind, SandboxError, Sandboxes};

use crate::args::{Command, CreateArgs, ExecArgs, Global};
use crate::console::Relay;
use ironcell_container::ConsoleSocket;

use crate::foreground::Blocked;

pub fn run(global: &Global, command: Command) -> Result<u8> {
    if global.systemd_cgroup && !Path::new("/run/systemd/system").exists() {
        bail!("--systemd-cgroup: systemd is not running on this host (use the cgroupfs driver)");
    }
    let sandboxes = Sandboxes::with_config(
        global.root.clone(),
        global.systemd_cgroup,
        global.config.clone(),
    );
    match command {
        Command::Create(args) => {
            ironcell_oci::validate_id(&args.id)?;
            let bundle = Bundle::load(&args.bundle)?;
            create(&sandboxes, global.sandbox, &args, &bundle, true)?;
            Ok(0)
        }
        Command::Start { id } => {
            sandboxes.owner(&id)?.start(&id)?;
            Ok(0)
        }
        Command::State { id } => {
            let state = sandboxes.owner(&id)?.state(&id)?;
            println!("{}", serde_json::to_string_pretty(&state)?);
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            let sig = parse_signal(&signal)?;
            sandboxes.owner(&id)?.kill(&id, sig, all)?;
            Ok(0)
        }
        Command::Delete { force, id } => delete(&sandboxes, &id, force),
        Command::Run {
            create: args,
            detach,
            keep,
        } => run_container(&sandboxes, global.sandbox, &args, detach, keep),
        Command::Exec(args) => exec(&sandboxes, args),
        Command::List { format, quiet } => list(&sandboxes, &format, quiet),
        Command::Ps {
            format,
            id,
            ps_args,
        } => ps(&sandboxes, &format, &id, &ps_args),
        Command::Pause { id } => {
            sandboxes.owner(&id)?.pause(&id)?;
            Ok(0)
        }
        Command::Resume { id } => {
            sandboxes.owner(&id)?.resume(&id)?;
            Ok(0)
        }
        Command::Update(args) => {
            let resources = crate::update::resources(&args)?;
            sandboxes.owner(&args.id)?.update(&args.id, &resources)?;
            Ok(0)
        }
        Command::Events {
            id,
            stats,
            interval,
        } => crate::events::run(&sandboxes, &id, stats, interval),
        Command::Features => {
            println!("{}", serde_json::to_string_pretty(&features())?);
            Ok(0)
        }
        Command::Spec { bundle } => spec(&bundle),
        Command::Check => crate::check::run(global.config.as_deref()),
    }
}

fn create(
    sandboxes: &Sandboxes,
    flag: Option<Kind>,
    args: &CreateArgs,
    bundle: &Bundle,
    detach: bool,
) -> Result<()> {
    let kind = Sandboxes::select(flag, bundle)?;
    let opts = CreateOptions {
        pid_file: args.pid_file.clone(),
        console_socket: args.console_socket.clone(),
        preserve_fds: args.preserve_fds,
        no_pivot: args.no_pivot,
        detach,
    };
    sandboxes.create(kind, &args.id, bundle, &opts)?;
    Ok(())
}

fn run_container(
    sandboxes: &Sandboxes,
    flag: Option<Kind>,
    args: &CreateArgs,
    detach: bool,
    keep: bool,
) -> Result<u8> {
    ironcell_oci::validate_id(&args.id)?;
    let bundle = Bundle::load(&args.bundle)?;
    let terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    // A foreground terminal with no console socket: ironcell holds the pty.
    let console = if !detach && terminal && args.console_socket.is_none() {
        Some(ConsoleSocket::new(sandboxes.root())?)
    } else {
        None
    };
    let mut args = args.clone();
    if let Some(c) = &console {
        args.console_socket = Some(c.path().to_path_buf());
    }
    create(sandboxes, flag, &args, &bundle, detach || console.is_some())?;
    let id = &args.id;
    let backend = sandboxes.owner(id)?;
    // Block signals before the relay's threads exist, so that they inherit
    // the mask: a SIGWINCH the kernel handed to one of them would be
    // ignored there, and the resize lost. Before start too, so that a fast
    // process's SIGCHLD is kept.
    let blocked = if detach { None } else { Some(Blocked::new()?) };
    let relay = match console.as_ref().map(|c| {
        c.receive(ironcell_container::ConsoleSocket::TIMEOUT)
            .map_err(anyhow::Error::from)
            .and_then(Relay::start)
    }) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            let _ = backend.delete(id, true);
            return Err(e);
        }
        None => None,
    };
    drop(console);
    // The init's pid, read before start: a fast process may be gone after.
    let pid = backend.state(id)?.pid;
    if let Err(e) = backend.start(id) {
        drop(blocked);
        drop(relay);
        if let Err(d) = backend.delete(id, true) {
            tracing::warn!(%d, "cleanup after failed start");
        }
        return Err(e.into());
    }
    let Some(blocked) = blocked else {
        return Ok(0);
    };
    let code = wait_foreground(blocked, pid, relay);
    if !keep {
        backend.delete(id, true)?;
    }
    code
}

fn delete(sandboxes: &Sandboxes, id: &str, force: bool) -> Result<u8> {
    match sandboxes.owner(id) {
        Ok(backend) => {
            backend.delete(id, force)?;
            Ok(0)
        }
        Err(SandboxError::Container(ContainerError::NotFound(_))) => {
            // As runc: a directory left by an aborted create has no state;
            // remove it. With --force a missing container is not an error.
            let removed = sandboxes.remove_stale(id)?;
            if force || removed {
                Ok(0)
            } else {
                Err(ContainerError::NotFound(id.to_string()).into())
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn parse_user(s: &str) -> Result<(u32, Option<u32>)> {
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid = u
        .parse()
        .with_context(|| format!("--user {s:?}: uid must be a number"))?;
    let gid = g
        .map(|g| g.parse())
        .transpose()
        .with_context(|| format!("--user {s:?}: gid must be a number"))?;
    Ok((uid, gid))
}

fn exec(sandboxes: &Sandboxes, args: Box<ExecArgs>) -> Result<u8> {
    let args = *args;
    let opts = ExecOptions {
        process: args.process,
        args: args.command,
        env: args.env,
        cwd: args.cwd,
        user: args.user.as_deref().map(parse_user).transpose()?,
        additional_gids: args.additional_gids,
        caps: args.cap,
        no_new_privs: args.no_new_privs,
        tty: args.tty,
        console_size: None,
        console_socket: args.console_socket,
        pid_file: args.pid_file,
        detach: args.detach,
        preserve_fds: args.preserve_fds,
        ignore_paused: args.ignore_paused,
        sub_cgroup: args.cgroup,
    };
    let backend = sandboxes.owner(&args.id)?;
    if opts.detach {
        backend.exec(&args.id, &opts)?;
        return Ok(0);
    }
    let terminal = match &opts.process {
        Some(p) => fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["terminal"].as_bool())
            .unwrap_or(false),
        None => opts.tty,
    };
    let mut opts = opts;
    let console = if terminal && opts.console_socket.is_none() {
        let c = ConsoleSocket::new(sandboxes.root())?;
        opts.console_socket = Some(c.path().to_path_buf());
        // The engine's "detach" only decides whether a console socket is
        // required; ironcell still waits for the process below.
        opts.detach = true;
        opts.console_size = crate::console::stdin_terminal_size();
        Some(c)
    } else {
        None
    };
    let blocked = Blocked::new()?;
    let pid = backend.exec(&args.id, &opts)?;
    let relay = match &console {
        Some(c) => Some(Relay::start(
            c.receive(ironcell_container::ConsoleSocket::TIMEOUT)?,
        )?),
        None => None,
    };
    wait_foreground(blocked, pid, relay)
}

/// Waits for a foreground process, keeping its terminal's size in step, then
/// restores the signal mask (hooks run after inherit it) and the terminal.
fn wait_foreground(blocked: Blocked, pid: i32, relay: Option<Relay>) -> Result<u8> {
    let code = blocked.wait(pid, &|| {
        if let Some(r) = &relay {
            r.resize();
        }
    });
    drop(blocked);
    if let Some(r) = relay {
        r.finish();
    }
    code
}

fn states(sandboxes: &Sandboxes) -> Result<Vec<ContainerState>> {
    let mut out = Vec::new();
    for id in sandboxes.ids()? {
        // A container deleted while we list is simply not listed.
        match sandboxes.owner(&id).and_then(|b| b.state(&id)) {
            Ok(s) => out.push(s),
            Err(SandboxError::Container(ContainerError::NotFound(_))) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Who created a container (runc's OWNER column): the owner of its state
/// directory, whatever its sandbox.
fn owner(sandboxes: &Sandboxes, id: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = fs::metadata(sandboxes.root().join(id))
        .map(|m| m.uid())
        .unwrap_or_default();
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

fn list(sandboxes: &Sandboxes, format: &str, quiet: bool) -> Result<u8> {
    let mut states = states(sandboxes)?;
    for s in &mut states {
        s.owner = owner(sandboxes, &s.id);
    }
    let mut out = io::stdout().lock();
    if quiet {
        for s in &states {
            writeln!(out, "{}", s.id)?;
        }
        return Ok(0);
    }
    match format {
        "json" => writeln!(out, "{}", serde_json::to_string(&states)?)?,
        "table" => {
            let mut rows = vec![[
                "ID".to_string(),
                "PID".into(),
                "STATUS".into(),
                "BUNDLE".into(),
                "CREATED".into(),
                "OWNER".into(),
            ]];
            for s in &states {
                rows.push([
                    s.id.clone(),
                    s.pid.to_string(),
                    s.status.to_string(),
                    s.bundle.display().to_string(),
                    s.created.clone(),
                    s.owner.clone(),
                ]);
            }
            write!(out, "{}", table(&rows))?;
        }
        other => bail!("invalid format option {other:?} (use table or json)"),
    }
    Ok(0)
}

/// Columns as runc's tabwriter lays them out (minimum width 12, padding 3).
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [12usize; N];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len() + 3);
        }
    }
    let mut s = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}", w = widths[i]));
            }
        }
        s.push('\n');
    }
    s
}

fn ps(sandboxes: &Sandboxes, format: &str, id: &str, ps_args: &[String]) -> Result<u8> {
    let backend = sandboxes.owner(id)?;
    let state = backend.state(id)?;
    // As runc: a stopped container lists what is left in its cgroup, which
    // may be nothing or gone.
    let pids = match backend.pids(id) {
        Err(_) if state.status == Status::Stopped => Vec::new(),
        r => r?,
    };
    match format {
        "json" => println!("{}", serde_json::to_string(&pids)?),
        "table" => {
            let args: Vec<String> = if ps_args.is_empty() {
                vec!["-ef".into()]
            } else {
                ps_args.to_vec()
            };
            let output = Process::new("ps")
                .args(&args)
                .output()
                .context("cannot run ps")?;
            if !output.status.success() {
                bail!(
                    "ps {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            let text = String::from_utf8_lossy(&output.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or_default();
            let col = header
                .split_whitespace()
                .position(|h| h == "PID")
                .context("ps output has no PID column")?;
            println!("{header}");
            for line in lines {
                let pid = line
                    .split_whitespace()
                    .nth(col)
                    .and_then(|p| p.parse::<i32>().ok());
                if pid.is_some_and(|p| pids.contains(&p)) {
                    println!("{line}");
                }
            }
        }
        other => bail!("invalid format option {other:?} (use table or json)"),
    }
    Ok(0)
}

fn spec(bundle: &Path) -> Result<u8> {
    let path: PathBuf = bundle.join("config.json");
    if path.exists() {
        bail!("{}: file exists, remove it first", path.display());
    }
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_hostname(Some("ironcell".into()));
    let text = serde_json::to_string_pretty(&spec)?;
    fs::write(&path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(0)
}

/// The OCI runtime features document (runtime-spec features.md).
fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": ironcell_oci::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
            "iversion", "lazytime", "loud", "mand", "noatime", "nodev", "nodiratime", "noexec",
            "noiversion", "nolazytime", "nomand", "norelatime", "nostrictatime", "nosuid",
            "nosymfollow", "private", "ratime", "rbind", "rdev", "rdiratime", "relatime",
            "remount", "rexec", "rnoatime", "rnodev", "rnodiratime", "rnoexec", "rnorelatime",
            "rnostrictatime", "rnosuid", "rnosymfollow", "ro", "rprivate", "rrelatime", "rro",
            "rrw", "rshared", "rslave", "rstrictatime", "rsuid", "rsymfollow", "runbindable",
            "rw", "shared", "silent", "slave", "strictatime", "suid", "symfollow", "sync",
            "tmpcopyup", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts", "time"],
            "capabilities": capability_names(),
            "cgroup": { "v1": true, "v2": true, "systemd": true, "systemdUser": false, "rdma": false },
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                              "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"]
            },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
            "intelRdt": { "enabled": false }
        },
        "annotations": {
            "io.ironcell.version": crate::VERSION,
            "io.ironcell.sandboxes": Kind::ALL.iter().filter(|k| k.is_built()).map(|k| k.as_str()).collect::<Vec<_>>().join(","),
        }
    })
}

fn capability_names() -> Vec<String> {
    // Every capability name the kernel headers define up to CAP_CHECKPOINT_RESTORE.
    const NAMES: [&str; 41] = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    ];
    NAMES
        .iter()
        .filter(|n| ironcell_container::parse_capability(n).is_some())
        .map(|n| n.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_like_tabwriter() {
        let t = table(&[
            ["ID".to_string(), "STATUS".to_string()],
            [
                "a-very-long-container-id".to_string(),
                "running".to_string(),
            ],
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], format!("{:<27}STATUS", "ID"));
        assert_eq!(lines[1], "a-very-long-container-id   running");
    }

    #[test]
    fn user_parsing() {
        assert_eq!(parse_user("1000").unwrap(), (1000, None));
        assert_eq!(parse_user("1000:100").unwrap(), (1000, Some(100)));
        assert!(parse_user("bob").is_err());
        assert!(parse_user("1:x").is_err());
    }

    #[test]
    fn features_lists_capabilities() {
        let f = features();
        let caps = f["linux"]["capabilities"].as_array().unwrap();
        assert!(caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        assert_eq!(
            f["annotations"]["io.ironcell.sandboxes"],
            "namespace,vm,wasm"
        );
    }
}
