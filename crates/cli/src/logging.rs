//! The CLI's use of the shared runc-compatible logger (crate `logging`):
//! with `--log`, warnings and errors go to that file; `--debug` adds debug
//! lines (libcontainer's included). Without `--log`, stderr only gets the
//! final one-line error and the warnings of failed poststart and poststop
//! hooks (the runtime spec makes those failures warnings), unless
//! `--debug`.

use std::path::Path;

use anyhow::{Context, Result};
pub use logging::LogFormat;

pub fn init(log: Option<&Path>, format: LogFormat, debug: bool) -> Result<()> {
    if log.is_none() && !debug {
        logging::init_stderr_warnings(&["libcontainer::hooks"]);
        return Ok(());
    }
    let max = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    };
    logging::init(log, format, max).with_context(|| match log {
        Some(path) => format!("cannot open log file {}", path.display()),
        None => "cannot set up logging".to_string(),
    })
}
