//! `ironcelld-keeper`: the keeper as a binary of its own, which ironcelld
//! starts beside itself. ironcelld falls back to running itself as
//! `ironcelld keeper` when this binary is not installed.

use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // Started as `ironcelld-keeper keeper --root R`, the same arguments as
    // `ironcelld keeper`.
    let args = match args.first() {
        Some(a) if a == "keeper" => &args[1..],
        _ => &args[..],
    };
    ironcell_keeper::main(args)
}
