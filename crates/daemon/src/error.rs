//! What a daemon operation can fail with, each error mapped to the gRPC
//! code containerd expects, and the checks of the names containerd sends.

use ironcell_container::ContainerError;
use ironcell_sandbox::SandboxError;
use thiserror::Error;

/// What a task operation can fail with; each maps to one gRPC status code
/// ([`TaskError::grpc_code`]), on the ttrpc Task API and on the gRPC
/// Sandbox controller alike.
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

impl TaskError {
    /// The gRPC status code containerd maps back to its own errors
    /// (errdefs.FromGRPC). An error of no class is UNKNOWN, as
    /// containerd's own shims answer one (errdefs.ToGRPC).
    pub fn grpc_code(&self) -> i32 {
        match self {
            TaskError::InvalidArgument(_) => 3,
            TaskError::NotFound(_) => 5,
            TaskError::AlreadyExists(_) => 6,
            TaskError::FailedPrecondition(_) => 9,
            TaskError::Unimplemented(_) => 12,
            TaskError::Internal(_) => 2,
        }
    }
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

    /// Both APIs give one error the same code, and the numbers are
    /// gRPC's.
    #[test]
    fn each_error_has_one_code_on_both_apis() {
        use protobuf::Enum;
        let cases = [
            (
                TaskError::InvalidArgument(String::new()),
                tonic::Code::InvalidArgument,
            ),
            (TaskError::NotFound(String::new()), tonic::Code::NotFound),
            (
                TaskError::AlreadyExists(String::new()),
                tonic::Code::AlreadyExists,
            ),
            (
                TaskError::FailedPrecondition(String::new()),
                tonic::Code::FailedPrecondition,
            ),
            (
                TaskError::Unimplemented(String::new()),
                tonic::Code::Unimplemented,
            ),
            (TaskError::Internal(String::new()), tonic::Code::Unknown),
        ];
        for (e, code) in cases {
            assert_eq!(e.grpc_code(), code as i32, "{e:?}");
            let ttrpc = ttrpc::Code::from_i32(e.grpc_code()).expect("a ttrpc code");
            assert_eq!(ttrpc as i32, code as i32, "{e:?}");
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
