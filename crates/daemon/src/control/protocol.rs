//! The control socket's messages: one JSON request per line, one JSON
//! reply per line. The daemon (`control`) and `containerd-shim-ironcell-v2`
//! both speak them through these types.
//!
//! - `{"register":{"namespace":N,"id":I,"containerd":ADDR}}`: the shim's
//!   `start` asks for the Task API address of its containerd (ttrpc address)
//!   and namespace (`endpoint.rs`); the reply carries it.
//! - `{"cleanup":{"namespace":N,"id":I}}`: the shim's `delete` (containerd
//!   lost its connection to the task): the task is killed and deleted.
//! - `{"ping":{}}`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Register {
        namespace: String,
        id: String,
        containerd: String,
    },
    Cleanup {
        namespace: String,
        id: String,
    },
    Ping {},
}

#[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u32>,
    /// Nanoseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited_at: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        let r: Request = serde_json::from_str(
            r#"{"register":{"namespace":"default","id":"c1","containerd":"/run/c.sock.ttrpc"}}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Register {
                namespace: "default".into(),
                id: "c1".into(),
                containerd: "/run/c.sock.ttrpc".into()
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"ping":{}}"#).is_ok());
        for bad in [
            r#"{"register":{"namespace":"default"}}"#,
            r#"{"explode":{}}"#,
            r#"{"ping":{},"cleanup":{}}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }
}
