//! What a daemon operation can fail with, each error mapped to the gRPC
//! code containerd expects, and the checks of the names containerd sends.

use ironcell_container::ContainerError;
use ironcell_sandbox::SandboxError;
use thiserror::Error;

/// What a task operation can fail with; each maps to the gRPC code
/// containerd expects (see `service.rs`).
#[derive(Debug, Error)]
pub enum TaskError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
}

impl From<SandboxError> for TaskError {
    fn from(e: SandboxError) -> Self {
        let msg = e.to_string();
        match e {
            SandboxError::Container(ContainerError::NotFound(_)) => TaskError::NotFound(msg),
            SandboxError::Container(ContainerError::Exists(_)) => TaskError::AlreadyExists(msg),
            SandboxError::Container(ContainerError::WrongStatus { .. }) => {
                TaskError::FailedPrecondition(msg)
            }
            SandboxError::Container(ContainerError::Id(_))
            | SandboxError::Container(ContainerError::Bundle(_))
            | SandboxError::UnknownKind(_)
            | SandboxError::Annotation(_)
            | SandboxError::NotBuilt(_) => TaskError::InvalidArgument(msg),
            _ => TaskError::Internal(msg),
        }
    }
}

pub type Result<T, E = TaskError> = std::result::Result<T, E>;

/// A containerd namespace name is used in paths: it must be a plain name.
pub fn validate_namespace(ns: &str) -> Result<()> {
    ironcell_oci::validate_id(ns)
        .map_err(|e| TaskError::InvalidArgument(format!("namespace {ns:?}: {e}")))
}

pub(crate) fn validate_id(what: &str, id: &str) -> Result<()> {
    ironcell_oci::validate_id(id).map_err(|e| TaskError::InvalidArgument(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_plain_names() {
        for ok in ["default", "k8s.io", "moby"] {
            validate_namespace(ok).unwrap();
        }
        for bad in ["", "..", "a/b", "../etc", "x y"] {
            assert!(matches!(
                validate_namespace(bad),
                Err(TaskError::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn sandbox_errors_map_to_codes() {
        let e: TaskError = SandboxError::Container(ContainerError::NotFound("x".into())).into();
        assert!(matches!(e, TaskError::NotFound(_)));
        let e: TaskError = SandboxError::Container(ContainerError::Exists("x".into())).into();
        assert!(matches!(e, TaskError::AlreadyExists(_)));
    }
}
