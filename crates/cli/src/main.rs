//! `ironcell`: an OCI runtime command line compatible with runc's, so that
//! podman, docker and containerd's runc shim can drive it unchanged.

mod commands;
mod console;
mod foreground;
mod logging;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ironcell_sandbox::Kind;

use crate::logging::LogFormat;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Parser, Debug)]
#[command(
    name = "ironcell",
    about = "ironcell: a secure container runtime (OCI runtime CLI, compatible with runc)",
    disable_version_flag = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Root directory for the state of containers.
    #[arg(long, global = true, default_value = "/run/ironcell")]
    pub root: PathBuf,
    /// Write logs to this file instead of stderr.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Enable debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Manage cgroups through systemd (needs systemd running as init).
    #[arg(long = "systemd-cgroup", global = true)]
    pub systemd_cgroup: bool,
    /// Sandbox for new containers: namespace, vm, wasm, app-kernel
    /// (default: the config.json annotation io.ironcell.sandbox, else namespace).
    #[arg(long, global = true, value_parser = parse_kind)]
    pub sandbox: Option<Kind>,
    /// Accepted for runc compatibility; checkpointing is not supported.
    #[arg(long, global = true, hide = true)]
    pub criu: Option<String>,
    /// Accepted for runc compatibility (auto, true or false).
    #[arg(long, global = true, hide = true)]
    pub rootless: Option<String>,
    /// Print the version.
    #[arg(short = 'v', long = "version")]
    pub version: bool,
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    s.parse()
        .map_err(|e: ironcell_sandbox::SandboxError| e.to_string())
}

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Path to the OCI bundle (the directory holding config.json).
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket that receives the master of the container's pty.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// File to write the container process's pid to.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Do not use pivot_root to jail the process in the rootfs (MS_MOVE + chroot).
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,
    /// Pass N extra file descriptors (3 and up) to the container.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: i32,
    /// Container id.
    pub id: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a container (its process waits for `start`).
    Create(CreateArgs),
    /// Run the user's process in a created container.
    Start { id: String },
    /// Print the state of a container as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's init, or with --all to every process.
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container and everything it holds.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container; wait for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(short, long)]
        detach: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Run another process in a running container.
    Exec(Box<ExecArgs>),
    /// List containers.
    #[command(alias = "ls")]
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// List the processes of a container.
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        /// Arguments for ps(1) in table format (default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Print what this runtime supports, as OCI features JSON.
    Features,
    /// Write a default config.json into a bundle.
    Spec {
        #[arg(short = 'b', long, default_value = ".")]
        bundle: PathBuf,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Working directory of the new process.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Add or replace an environment variable (KEY=VALUE).
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Allocate a pseudo-TTY.
    #[arg(short, long)]
    pub tty: bool,
    /// uid[:gid] to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional gids.
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// A process.json describing the process to run.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Accepted for runc compatibility (SELinux is not supported).
    #[arg(long = "process-label")]
    pub process_label: Option<String>,
    /// Accepted for runc compatibility (AppArmor is not supported).
    #[arg(long)]
    pub apparmor: Option<String>,
    #[arg(long = "no-new-privs")]
    pub no_new_privs: bool,
    /// Add a capability to the process.
    #[arg(short, long)]
    pub cap: Vec<String>,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: i32,
    /// Run in this sub-cgroup of the container.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Allow exec in a paused container.
    #[arg(long = "ignore-paused")]
    pub ignore_paused: bool,
    pub id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.global.version {
        println!(
            "ironcell version {VERSION}\nspec: {}\nsandboxes: namespace",
            ironcell_oci::OCI_VERSION
        );
        return ExitCode::SUCCESS;
    }
    if let Err(e) = logging::init(
        cli.global.log.as_deref(),
        cli.global.log_format,
        cli.global.debug,
    ) {
        eprintln!("ironcell: {e:#}");
        return ExitCode::FAILURE;
    }
    let Some(command) = cli.command else {
        eprintln!("ironcell: no command given (see ironcell --help)");
        return ExitCode::FAILURE;
    };
    match commands::run(&cli.global, command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            tracing::error!("{msg}");
            eprintln!("ironcell: {msg}");
            ExitCode::FAILURE
        }
    }
}
