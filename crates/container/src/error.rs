use std::io;

use ironcell_oci::{BundleError, IdError, Status};
use libcontainer::error::LibcontainerError;
use thiserror::Error;

/// The end of the error for a signal to a stopped container (after "it is
/// stopped"): runc's words, which containerd's runc shim takes for "the
/// process has already exited" (its `checkKillError`).
pub const NOT_RUNNING: &str = " (container not running)";

/// What went wrong with a container operation, phrased for the person who
/// asked for it.
#[derive(Debug, Error)]
pub enum ContainerError {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("cannot {op} container {id}: it is {status}{hint}")]
    WrongStatus {
        op: &'static str,
        id: String,
        status: Status,
        hint: &'static str,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{what}: {msg}")]
    Engine { what: String, msg: String },
    #[error("{0}")]
    Invalid(String),
}

impl ContainerError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        ContainerError::Io {
            what: what.into(),
            source,
        }
    }

    /// Wraps a libcontainer error, flattening its chain of causes into one
    /// line (libcontainer's top-level messages alone are often too vague).
    pub(crate) fn engine(what: impl Into<String>, err: LibcontainerError) -> Self {
        ContainerError::Engine {
            what: what.into(),
            msg: chain(&err),
        }
    }
}

/// `a: b: c` from an error and its sources, skipping repeated text.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[derive(Debug, Error)]
    #[error("outer")]
    struct Outer(#[source] io::Error);

    #[test]
    fn chain_is_one_line() {
        let e = Outer(io::Error::other("inner\ndetail"));
        assert_eq!(chain(&e), "outer: inner detail");
        let _ = e.source();
    }
}
