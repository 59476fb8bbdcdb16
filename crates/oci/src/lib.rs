//! OCI runtime-spec plumbing shared by every ironcell sandbox: loading and
//! validating a bundle's `config.json` with errors that name what is wrong,
//! container id rules, sandbox selection by annotation, and the state JSON
//! that `ironcell state` prints (runc's shape, so containerd and podman parse
//! it unchanged).

mod bundle;
mod id;
mod state;
pub mod wasm;

pub use bundle::{has_own_namespace, joins_namespace, Bundle, BundleError, SANDBOX_ANNOTATION};
pub use id::{validate_id, IdError};
pub use state::{ContainerState, Status, OCI_VERSION};
