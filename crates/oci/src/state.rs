use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The OCI runtime-spec version ironcell implements (what `state` reports).
pub const OCI_VERSION: &str = "1.2.0";

/// Container status as the OCI runtime spec and runc name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What `ironcell state` and `ironcell list --format json` print: the fields
/// of runc's `state` output (a superset of the OCI state), which go-runc in
/// containerd and podman decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    /// The init process's pid on the host; 0 once stopped (as runc).
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 with nanoseconds, UTC.
    pub created: String,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    pub owner: String,
    /// Which ironcell sandbox runs the container (an ironcell extension).
    #[serde(default)]
    pub sandbox: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_like_runc() {
        let s = ContainerState {
            oci_version: OCI_VERSION.into(),
            id: "c1".into(),
            pid: 42,
            status: Status::Running,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "2026-01-01T00:00:00.000000000Z".into(),
            annotations: HashMap::new(),
            owner: String::new(),
            sandbox: "namespace".into(),
        };
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["ociVersion"], "1.2.0");
        assert_eq!(v["status"], "running");
        assert_eq!(v["pid"], 42);
        assert!(v.get("annotations").is_none());
        let back: ContainerState = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
