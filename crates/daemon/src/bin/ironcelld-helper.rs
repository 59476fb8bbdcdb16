//! `ironcelld-helper`: the daemon's helper jobs (`helper.rs`) as a binary of
//! their own, which ironcelld runs from beside itself (and runs itself as
//! `ironcelld helper` when this binary is not installed).
//!
//! The processes a helper forks and leaves running (a vm container's relay,
//! a pod's namespace holder) carry the helper's binary for as long as they
//! live. This one links the sandbox library without the daemon's server,
//! wasm runtime and gRPC stacks, so each such process holds a fraction of
//! the daemon's relocated read-only data (bench/README.md, "VM pods").

use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // Run as `ironcelld-helper helper JOB ...`, the arguments of
    // `ironcelld helper JOB ...`.
    let args = match args.first() {
        Some(a) if a == "helper" => &args[1..],
        _ => &args[..],
    };
    ironcelld::helper::main(args)
}
