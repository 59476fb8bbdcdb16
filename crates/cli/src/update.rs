//! `ironcell update`: the new limits, from runc's `--resources` JSON or from
//! its flags, read as runc reads them.

use std::io::Read;

use anyhow::{anyhow, bail, Context, Result};
use oci_spec::runtime::LinuxResources;
use serde_json::{json, Map, Value};

use crate::args::UpdateArgs;

/// The resources `args` asks for. Values left out stay as they are.
pub fn resources(args: &UpdateArgs) -> Result<LinuxResources> {
    for (flag, _) in &args.flags {
        if matches!(flag.as_str(), "l3-cache-schema" | "mem-bw-schema") {
            bail!("update: --{flag}: Intel RDT (resctrl) is not supported by ironcell");
        }
    }
    if let Some(path) = &args.resources {
        if let Some((flag, _)) = args.flags.first() {
            bail!(
                "update: --resources cannot be combined with --{flag} (runc would ignore the flag; put it in the JSON)"
            );
        }
        let (what, text) = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("update: cannot read the resources from stdin")?;
            ("stdin".to_string(), text)
        } else {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("update: cannot read {}", path.display()))?;
            (path.display().to_string(), text)
        };
        return serde_json::from_str(&text).map_err(|e| {
            anyhow!("update: the resources in {what} are not LinuxResources JSON: {e}")
        });
    }
    from_flags(&args.flags)
}

fn uint(flag: &str, v: &str) -> Result<u64> {
    v.parse()
        .map_err(|_| anyhow!("update: --{flag} {v:?}: not a non-negative integer"))
}

fn int(flag: &str, v: &str) -> Result<i64> {
    v.parse()
        .map_err(|_| anyhow!("update: --{flag} {v:?}: not an integer"))
}

/// runc's flags, as a LinuxResources holding only what was given.
fn from_flags(flags: &[(String, String)]) -> Result<LinuxResources> {
    let mut memory = Map::new();
    let mut cpu = Map::new();
    let mut r = Map::new();
    for (flag, v) in flags {
        let f = flag.as_str();
        match f {
            "memory" | "memory-reservation" | "memory-swap" => {
                let bytes = if v == "-1" {
                    -1
                } else {
                    ram_in_bytes(v).map_err(|e| anyhow!("update: --{f}: {e}"))?
                };
                let key = match f {
                    "memory" => "limit",
                    "memory-reservation" => "reservation",
                    _ => "swap",
                };
                memory.insert(key.into(), json!(bytes));
            }
            "cpu-share" | "cpu-shares" => {
                cpu.insert("shares".into(), json!(uint(f, v)?));
            }
            "cpu-period" => {
                cpu.insert("period".into(), json!(uint(f, v)?));
            }
            "cpu-burst" => {
                cpu.insert("burst".into(), json!(uint(f, v)?));
            }
            "cpu-rt-period" => {
                cpu.insert("realtimePeriod".into(), json!(uint(f, v)?));
            }
            "cpu-quota" => {
                cpu.insert("quota".into(), json!(int(f, v)?));
            }
            "cpu-rt-runtime" => {
                cpu.insert("realtimeRuntime".into(), json!(int(f, v)?));
            }
            "cpu-idle" => {
                cpu.insert("idle".into(), json!(int(f, v)?));
            }
            "cpuset-cpus" => {
                cpu.insert("cpus".into(), json!(v));
            }
            "cpuset-mems" => {
                cpu.insert("mems".into(), json!(v));
            }
            "pids-limit" => {
                // As runc: 0 leaves the limit as it is, a negative one lifts it.
                r.insert("pids".into(), json!({ "limit": int(f, v)? }));
            }
            "blkio-weight" => {
                let w = uint(f, v)?;
                if w != 0 && !(10..=1000).contains(&w) {
                    bail!("update: --blkio-weight {w}: must be between 10 and 1000");
                }
                r.insert("blockIO".into(), json!({ "weight": w }));
            }
            "kernel-memory" | "kernel-memory-tcp" => {
                // runc 1.1 and later: obsolete, warned about and ignored.
                tracing::warn!("setting --{f} is ignored (kernel memory limits are obsolete)");
            }
            other => bail!("update: unknown option --{other}"),
        }
    }
    if !memory.is_empty() {
        r.insert("memory".into(), Value::Object(memory));
    }
    if !cpu.is_empty() {
        r.insert("cpu".into(), Value::Object(cpu));
    }
    serde_json::from_value(Value::Object(r)).map_err(|e| anyhow!("update: {e}"))
}

/// A size as docker's go-units `RAMInBytes` (and so runc) reads it: a
/// number, optionally fractional, then an optional binary unit `b`, `k`,
/// `m`, `g`, `t` or `p` (any case, with an optional `b` or `ib` after it):
/// `64m`, `1.5G`, `512KiB`, `100`.
pub fn ram_in_bytes(s: &str) -> Result<i64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let invalid = || anyhow!("invalid size {s:?} (a number of bytes, or with a unit: 64m, 1g)");
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(invalid());
    }
    let n: f64 = num.parse().map_err(|_| invalid())?;
    let unit = unit.trim_start_matches(' ').to_ascii_lowercase();
    let (prefix, rest) = match unit.chars().next() {
        Some(c @ ('k' | 'm' | 'g' | 't' | 'p')) => (Some(c), &unit[1..]),
        _ => (None, unit.as_str()),
    };
    let ok_rest = match prefix {
        Some(_) => matches!(rest, "" | "b" | "ib" | "i"),
        None => matches!(rest, "" | "b"),
    };
    if !ok_rest {
        return Err(invalid());
    }
    let mult: f64 = match prefix {
        None => 1.0,
        Some('k') => 1024.0,
        Some('m') => 1024f64.powi(2),
        Some('g') => 1024f64.powi(3),
        Some('t') => 1024f64.powi(4),
        _ => 1024f64.powi(5),
    };
    let bytes = n * mult;
    if bytes >= i64::MAX as f64 {
        bail!("size {s:?} is too large");
    }
    Ok(bytes as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(f: &[(&str, &str)]) -> Vec<(String, String)> {
        f.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn sizes_as_runc_reads_them() {
        assert_eq!(ram_in_bytes("100").unwrap(), 100);
        assert_eq!(ram_in_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(ram_in_bytes("64M").unwrap(), 64 << 20);
        assert_eq!(ram_in_bytes("64MB").unwrap(), 64 << 20);
        assert_eq!(ram_in_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(ram_in_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(ram_in_bytes("512k").unwrap(), 512 << 10);
        assert_eq!(ram_in_bytes("10b").unwrap(), 10);
        assert_eq!(ram_in_bytes("2 t").unwrap(), 2 << 40);
        for bad in ["", "m", "-1", "64x", "64mbb", ".5m", "1..2m", "64 mb x"] {
            assert!(ram_in_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_become_resources() {
        let r = from_flags(&flags(&[
            ("memory", "64m"),
            ("memory-swap", "-1"),
            ("memory-reservation", "32m"),
            ("cpu-share", "512"),
            ("cpu-quota", "-1"),
            ("cpu-period", "100000"),
            ("cpuset-cpus", "0"),
            ("pids-limit", "42"),
            ("blkio-weight", "300"),
            ("kernel-memory", "10m"),
        ]))
        .unwrap();
        let m = r.memory().as_ref().unwrap();
        assert_eq!(
            (m.limit(), m.swap(), m.reservation()),
            (Some(64 << 20), Some(-1), Some(32 << 20))
        );
        assert_eq!(m.kernel(), None, "--kernel-memory is ignored");
        let c = r.cpu().as_ref().unwrap();
        assert_eq!(
            (c.shares(), c.quota(), c.period(), c.cpus().as_deref()),
            (Some(512), Some(-1), Some(100000), Some("0"))
        );
        assert_eq!(r.pids().as_ref().unwrap().limit(), 42);
        assert_eq!(r.block_io().as_ref().unwrap().weight(), Some(300));

        let r = from_flags(&flags(&[("pids-limit", "7")])).unwrap();
        assert!(r.memory().is_none() && r.cpu().is_none() && r.block_io().is_none());
    }

    #[test]
    fn bad_flags_name_what_is_wrong() {
        let e = |f: &[(&str, &str)]| {
            resources(&UpdateArgs {
                id: "c".into(),
                resources: None,
                flags: flags(f),
            })
            .unwrap_err()
            .to_string()
        };
        assert!(e(&[("memory", "lots")]).contains("--memory: invalid size \"lots\""));
        assert!(e(&[("cpu-share", "-5")]).contains("--cpu-share \"-5\""));
        assert!(e(&[("cpu-quota", "1.5")]).contains("--cpu-quota"));
        assert!(e(&[("blkio-weight", "5")]).contains("between 10 and 1000"));
        assert!(e(&[("l3-cache-schema", "L3:0=f")]).contains("Intel RDT"));
        assert!(e(&[("mem-bw-schema", "MB:0=70")]).contains("Intel RDT"));
        let both = resources(&UpdateArgs {
            id: "c".into(),
            resources: Some("/nonexistent".into()),
            flags: flags(&[("memory", "1m")]),
        })
        .unwrap_err()
        .to_string();
        assert!(both.contains("cannot be combined with --memory"), "{both}");
        let missing = resources(&UpdateArgs {
            id: "c".into(),
            resources: Some("/nonexistent/r.json".into()),
            flags: vec![],
        })
        .unwrap_err();
        assert!(format!("{missing:#}").contains("cannot read /nonexistent/r.json"));
    }
}
