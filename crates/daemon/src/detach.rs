//! Running a request's work to its end whatever happens to the request.
//!
//! ttrpc and gRPC drop a request's handler when containerd's connection
//! closes (a keeper that dies closes them all) or its deadline passes. An
//! operation that changes state in several steps (a process made, then
//! recorded) must not stop between two of them, so it runs on its own
//! tokio task, which a dropped handler does not cancel.

use crate::error::{Result, TaskError};

/// Runs `op` on its own task, to its end whatever happens to the caller.
pub async fn detached<T: Send + 'static>(
    op: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(op)
        .await
        .map_err(|e| TaskError::Internal(format!("a task operation failed: {e}")))?
}
