//! `ironcell`: an OCI runtime command line compatible with runc's, so that
//! podman, docker and containerd's runc shim can drive it unchanged.

mod args;
mod check;
mod commands;
mod console;
mod events;
mod foreground;
mod logging;
mod update;

use std::process::ExitCode;

use crate::args::Invocation;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() -> ExitCode {
    let (global, command) = match args::parse(std::env::args_os().skip(1)) {
        Ok(Invocation::Run(g, c)) => (g, c),
        Ok(Invocation::Version) => {
            println!(
                "ironcell version {VERSION}\nspec: {}\nsandboxes: namespace, vm, wasm",
                ironcell_oci::OCI_VERSION
            );
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ironcell: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Commands that fork into a container run from a sealed copy of this
    // binary, out of the container's reach (CVE-2019-5736).
    if matches!(
        command,
        args::Command::Create(_) | args::Command::Run { .. } | args::Command::Exec(_)
    ) {
        if let Err(e) = ironcell_container::sealed_exe::ensure_sealed() {
            eprintln!("ironcell: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = logging::init(global.log.as_deref(), global.log_format, global.debug) {
        eprintln!("ironcell: {e:#}");
        return ExitCode::FAILURE;
    }
    match commands::run(&global, command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            tracing::error!("{msg}");
            eprintln!("ironcell: {msg}");
            ExitCode::FAILURE
        }
    }
}
