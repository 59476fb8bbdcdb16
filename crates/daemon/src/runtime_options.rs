//! A runtime handler's options, as containerd's CRI passes them with each
//! task's Create: for a runtime type other than runc's, containerd sends
//! the handler's `options` table as `runtimeoptions.v1.Options`, the table
//! itself (TOML) in `config_body`. One key is ironcell's:
//!
//! ```toml
//! [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ironcell-vm.options]
//!   Sandbox = "vm"
//! ```
//!
//! which runs every container of the handler's pods in that sandbox, as the
//! `io.ironcell.sandbox` annotation does for one container.

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::CodedInputStream;
use ironcell_sandbox::Kind;

use crate::error::{Result, TaskError};

/// The type containerd gives the options of a runtime it does not know.
const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

fn bad(what: impl std::fmt::Display) -> TaskError {
    TaskError::InvalidArgument(format!("runtime options: {what}"))
}

/// The fields of `runtimeoptions.v1.Options` ironcelld reads.
#[derive(Debug, Default, PartialEq)]
struct RuntimeOptions {
    config_path: String,
    config_body: Vec<u8>,
}

/// Decodes `runtimeoptions.v1.Options` (type_url = 1, config_path = 2,
/// config_body = 3); containerd-shim-protos does not carry that message.
fn decode(bytes: &[u8]) -> Result<RuntimeOptions> {
    let mut out = RuntimeOptions::default();
    let mut input = CodedInputStream::from_bytes(bytes);
    let err = |e: containerd_shim_protos::protobuf::Error| bad(e);
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(err)? {
        match tag {
            // type_url: what the body is; only the body is read.
            10 => {
                input.read_string().map_err(err)?;
            }
            18 => out.config_path = input.read_string().map_err(err)?,
            26 => out.config_body = input.read_bytes().map_err(err)?,
            _ => {
                let wire = containerd_shim_protos::protobuf::rt::WireType::new(tag & 7)
                    .ok_or_else(|| bad(format!("invalid wire type in tag {tag}")))?;
                input.skip_field(wire).map_err(err)?;
            }
        }
    }
    Ok(out)
}

/// The sandbox kind a task's runtime options ask for, if any. Options of
/// another type (runc's, from a handler configured for the runc shim) say
/// nothing to ironcell.
pub fn sandbox_kind(options: Option<&Any>) -> Result<Option<Kind>> {
    let Some(any) = options.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
        return Ok(None);
    };
    if any.type_url.rsplit('/').next() != Some(RUNTIME_OPTIONS) {
        return Ok(None);
    }
    let opts = decode(&any.value)?;
    if !opts.config_path.is_empty() {
        return Err(bad(format!(
            "ConfigPath ({}) is not read by ironcelld; set Sandbox in the handler's options, \
             and ironcell's own settings in its config file",
            opts.config_path
        )));
    }
    let body = std::str::from_utf8(&opts.config_body).map_err(bad)?;
    let table: toml::Table = body
        .parse()
        .map_err(|e| bad(format!("{e}").trim().replace('\n', " ")))?;
    let mut kind = None;
    for (key, value) in &table {
        match (key.as_str(), value) {
            ("Sandbox", toml::Value::String(s)) => {
                let k: Kind = s.parse().map_err(|e| bad(format!("Sandbox: {e}")))?;
                kind = Some(k);
            }
            ("Sandbox", other) => {
                return Err(bad(format!("Sandbox must be a string, not {other}")));
            }
            (other, _) => {
                return Err(bad(format!(
                    "unknown option {other:?} (ironcelld knows Sandbox)"
                )));
            }
        }
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `runtimeoptions.v1.Options` as containerd encodes it.
    fn options(path: &str, body: &str) -> Any {
        let mut value = Vec::new();
        let mut field = |n: u8, v: &[u8]| {
            if !v.is_empty() {
                value.push(n << 3 | 2);
                value.push(v.len() as u8);
                value.extend_from_slice(v);
            }
        };
        field(1, b"runtimeoptions.v1.Options");
        field(2, path.as_bytes());
        field(3, body.as_bytes());
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn the_handlers_sandbox_is_read() {
        let vm = options("", "Sandbox = \"vm\"\n");
        assert_eq!(sandbox_kind(Some(&vm)).unwrap(), Some(Kind::Vm));
        assert_eq!(sandbox_kind(Some(&options("", ""))).unwrap(), None);
        assert_eq!(sandbox_kind(None).unwrap(), None);
        let runc = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![0x12, 1, b'x'],
            ..Default::default()
        };
        assert_eq!(sandbox_kind(Some(&runc)).unwrap(), None);
    }

    #[test]
    fn bad_options_are_named() {
        for (path, body, want) in [
            ("", "Sandbox = \"bogus\"", "Sandbox: unknown sandbox kind"),
            ("", "Sandbox = 3", "Sandbox must be a string"),
            ("", "BinaryName = \"x\"", "unknown option \"BinaryName\""),
            ("", "Sandbox = ", "runtime options:"),
            ("/etc/x.toml", "", "ConfigPath (/etc/x.toml)"),
        ] {
            let e = sandbox_kind(Some(&options(path, body)))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let truncated = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![0x1a, 9, b'x'],
            ..Default::default()
        };
        assert!(sandbox_kind(Some(&truncated)).is_err());
    }
}
