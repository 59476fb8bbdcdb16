//! The VM's configuration: a JSON file (`--config`) with the same fields as
//! the command-line flags, plus devices. Flags given on the command line
//! override the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Smallest guest the VMM accepts: the boot structures live below 1 MiB and
/// the kernel is loaded at 1 MiB.
pub const MIN_MEMORY_MIB: u32 = 2;
/// Largest guest: beyond this the identity page tables of the 64-bit entry
/// and the E820 map would need more than we give them.
pub const MAX_MEMORY_MIB: u32 = 256 * 1024;
/// The MP table must fit in the 1 KiB EBDA: 32 processor entries do.
pub const MAX_VCPUS: u8 = 32;
/// Linux's x86 COMMAND_LINE_SIZE is 2048; newer kernels allow more. We give
/// the guest one page.
pub const MAX_CMDLINE_LEN: usize = 4095;
/// One 4 KiB MMIO window per virtio device, GSIs 5..=23 on the IOAPIC.
pub const MAX_VIRTIO_DEVICES: usize = 19;
/// virtio-fs config space: the tag is a 36-byte field, NUL-padded.
pub const MAX_FS_TAG_LEN: usize = 36;

pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub kernel: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default)]
    pub serial: SerialOutput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<BlockConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
    /// Host directories shared with the guest (virtio-fs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<FsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub rng: bool,
    /// Where the host's supported CPUID is cached (arch/cpuid_cache.rs).
    #[serde(default, skip_serializing_if = "CpuidCache::is_default")]
    pub cpuid_cache: CpuidCache,
    /// Once set up, confine the VMM to an empty root of its own (jail.rs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jail: bool,
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}
fn default_vcpus() -> u8 {
    1
}
fn default_memory() -> u32 {
    128
}

/// Where the guest's COM1 output goes. In JSON, a string: `stdout`,
/// `none` or a path.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SerialOutput {
    #[default]
    Stdout,
    None,
    File(PathBuf),
}

impl SerialOutput {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "stdout" => Ok(SerialOutput::Stdout),
            "none" | "off" => Ok(SerialOutput::None),
            "" => Err(Error::Config(
                "serial: empty value (stdout, none or a path)".into(),
            )),
            path => Ok(SerialOutput::File(PathBuf::from(path))),
        }
    }
}

impl TryFrom<String> for SerialOutput {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        SerialOutput::parse(&s)
    }
}

impl From<SerialOutput> for String {
    fn from(o: SerialOutput) -> String {
        match o {
            SerialOutput::Stdout => "stdout".into(),
            SerialOutput::None => "none".into(),
            SerialOutput::File(p) => p.to_string_lossy().into_owned(),
        }
    }
}

/// The directory of the supported-CPUID cache: the default one
/// (`cpuid_cache::default_dir`), none, or a given one. In JSON, a string:
/// `default`, `none` or a path.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CpuidCache {
    #[default]
    Default,
    None,
    Dir(PathBuf),
}

impl CpuidCache {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "default" => Ok(CpuidCache::Default),
            "none" | "off" => Ok(CpuidCache::None),
            "" => Err(Error::Config(
                "cpuid_cache: empty value (a directory, default or none)".into(),
            )),
            dir => Ok(CpuidCache::Dir(PathBuf::from(dir))),
        }
    }

    fn is_default(&self) -> bool {
        *self == CpuidCache::Default
    }

    /// The directory to use, if any.
    pub fn dir(&self) -> Option<PathBuf> {
        match self {
            CpuidCache::Default => crate::arch::cpuid_cache::default_dir(),
            CpuidCache::None => None,
            CpuidCache::Dir(d) => Some(d.clone()),
        }
    }
}

impl TryFrom<String> for CpuidCache {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        CpuidCache::parse(&s)
    }
}

impl From<CpuidCache> for String {
    fn from(c: CpuidCache) -> String {
        match c {
            CpuidCache::Default => "default".into(),
            CpuidCache::None => "none".into(),
            CpuidCache::Dir(p) => p.to_string_lossy().into_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// Up to 20 bytes, answered to VIRTIO_BLK_T_GET_ID (Linux: /sys/block/vdX/serial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Name of the tap device; created (and removed at exit) when it does not exist.
    pub tap: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    #[serde(default = "default_cid")]
    pub guest_cid: u32,
    /// Host side, Firecracker's hybrid form: host connections arrive here;
    /// guest connections to port P go to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
}

fn default_cid() -> u32 {
    3
}

/// A host directory the guest mounts with `mount -t virtiofs <tag> <dir>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// At most 36 bytes (the config space field).
    pub tag: String,
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

/// Splits `key=value,flag,key=value` device options.
fn options(spec: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    spec.split(',')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (kv, None),
        })
}

impl BlockConfig {
    /// `--block path=FILE[,ro][,serial=ID]`
    pub fn parse(spec: &str) -> Result<Self> {
        let mut cfg = BlockConfig {
            path: PathBuf::new(),
            read_only: false,
            serial: None,
        };
        for (k, v) in options(spec) {
            match (k, v) {
                ("path", Some(v)) => cfg.path = PathBuf::from(v),
                ("ro", None) | ("readonly", None) => cfg.read_only = true,
                ("serial", Some(v)) => cfg.serial = Some(v.to_string()),
                _ => {
                    return Err(Error::Config(format!(
                        "--block: unknown option {k:?} in {spec:?} (path=FILE,ro,serial=ID)"
                    )))
                }
            }
        }
        Ok(cfg)
    }
}

impl NetConfig {
    /// `--net tap=NAME[,mac=MAC]`
    pub fn parse(spec: &str) -> Result<Self> {
        let mut cfg = NetConfig {
            tap: String::new(),
            mac: None,
        };
        for (k, v) in options(spec) {
            match (k, v) {
                ("tap", Some(v)) => cfg.tap = v.to_string(),
                ("mac", Some(v)) => cfg.mac = Some(v.to_string()),
                _ => {
                    return Err(Error::Config(format!(
                        "--net: unknown option {k:?} in {spec:?} (tap=NAME,mac=MAC)"
                    )))
                }
            }
        }
        Ok(cfg)
    }
}

impl FsConfig {
    /// `--fs tag=TAG,path=DIR[,ro]`
    pub fn parse(spec: &str) -> Result<Self> {
        let mut cfg = FsConfig {
            tag: String::new(),
            path: PathBuf::new(),
            read_only: false,
        };
        for (k, v) in options(spec) {
            match (k, v) {
                ("tag", Some(v)) => cfg.tag = v.to_string(),
                ("path", Some(v)) => cfg.path = PathBuf::from(v),
                ("ro", None) | ("readonly", None) => cfg.read_only = true,
                _ => {
                    return Err(Error::Config(format!(
                        "--fs: unknown option {k:?} in {spec:?} (tag=TAG,path=DIR,ro)"
                    )))
                }
            }
        }
        Ok(cfg)
    }
}

impl VsockConfig {
    /// `--vsock uds=PATH[,cid=N]`
    pub fn parse(spec: &str) -> Result<Self> {
        let mut cfg = VsockConfig {
            guest_cid: default_cid(),
            uds_path: PathBuf::new(),
        };
        for (k, v) in options(spec) {
            match (k, v) {
                ("uds", Some(v)) | ("path", Some(v)) => cfg.uds_path = PathBuf::from(v),
                ("cid", Some(v)) => {
                    cfg.guest_cid = v
                        .parse()
                        .map_err(|_| Error::Config(format!("--vsock: cid {v:?} is not a number")))?
                }
                _ => {
                    return Err(Error::Config(format!(
                        "--vsock: unknown option {k:?} in {spec:?} (uds=PATH,cid=N)"
                    )))
                }
            }
        }
        Ok(cfg)
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bad = || Error::Config(format!("net: invalid MAC address {s:?}"));
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

impl VmConfig {
    pub fn new(kernel: PathBuf) -> Self {
        VmConfig {
            kernel,
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: default_vcpus(),
            memory_mib: default_memory(),
            serial: SerialOutput::default(),
            api_socket: None,
            block: Vec::new(),
            net: Vec::new(),
            fs: Vec::new(),
            vsock: None,
            rng: false,
            cpuid_cache: CpuidCache::Default,
            jail: false,
        }
    }

    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigFile {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    pub fn virtio_device_count(&self) -> usize {
        self.block.len()
            + self.net.len()
            + self.fs.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.rng)
    }

    /// Checks everything that can be checked before touching KVM or files.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.kernel.as_os_str().is_empty() {
            return bad("no kernel given (--kernel PATH)".into());
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return bad(format!("vcpus must be 1..={MAX_VCPUS}, got {}", self.vcpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return bad(format!(
                "memory {} MiB is too small (minimum {MIN_MEMORY_MIB} MiB)",
                self.memory_mib
            ));
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return bad(format!(
                "memory {} MiB is too large (maximum {MAX_MEMORY_MIB} MiB)",
                self.memory_mib
            ));
        }
        if self.cmdline.len() > MAX_CMDLINE_LEN {
            return bad(format!(
                "cmdline is {} bytes, at most {MAX_CMDLINE_LEN} fit",
                self.cmdline.len()
            ));
        }
        if self.cmdline.contains('\0') {
            return bad("cmdline contains a NUL byte".into());
        }
        if self.virtio_device_count() > MAX_VIRTIO_DEVICES {
            return bad(format!(
                "{} virtio devices, at most {MAX_VIRTIO_DEVICES}",
                self.virtio_device_count()
            ));
        }
        for b in &self.block {
            if b.path.as_os_str().is_empty() {
                return bad("block device without a path".into());
            }
            if b.serial.as_ref().is_some_and(|s| s.len() > 20) {
                return bad(format!(
                    "block {}: serial longer than 20 bytes",
                    b.path.display()
                ));
            }
        }
        for n in &self.net {
            if n.tap.is_empty() || n.tap.len() >= libc::IFNAMSIZ {
                return bad(format!(
                    "net: tap name {:?} must be 1..{} bytes",
                    n.tap,
                    libc::IFNAMSIZ
                ));
            }
            if let Some(mac) = &n.mac {
                parse_mac(mac)?;
            }
        }
        for (i, f) in self.fs.iter().enumerate() {
            if f.tag.is_empty() {
                return bad(format!("fs {}: no tag (tag=TAG)", f.path.display()));
            }
            if f.tag.len() > MAX_FS_TAG_LEN {
                return bad(format!(
                    "fs tag {:?} is {} bytes, at most {MAX_FS_TAG_LEN} fit",
                    f.tag,
                    f.tag.len()
                ));
            }
            if f.tag.contains('\0') {
                return bad(format!("fs tag {:?} contains a NUL byte", f.tag));
            }
            if self.fs[..i].iter().any(|o| o.tag == f.tag) {
                return bad(format!("fs tag {:?} is used twice", f.tag));
            }
            if f.path.as_os_str().is_empty() {
                return bad(format!("fs {}: no directory (path=DIR)", f.tag));
            }
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid <= 2 || v.guest_cid == u32::MAX {
                return bad(format!(
                    "vsock: guest cid {} is reserved (use 3 or more)",
                    v.guest_cid
                ));
            }
            if v.uds_path.as_os_str().is_empty() {
                return bad("vsock: no unix socket path (uds=PATH)".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_defaults() {
        let c = VmConfig::from_json(
            r#"{"kernel":"/k","block":[{"path":"/d","read_only":true}],"rng":true,
                "fs":[{"tag":"rootfs","path":"/srv/share","read_only":true}],"jail":true}"#,
        )
        .unwrap();
        assert_eq!(
            c.fs,
            vec![FsConfig {
                tag: "rootfs".into(),
                path: "/srv/share".into(),
                read_only: true
            }]
        );
        assert!(c.jail);
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.memory_mib, 128);
        assert_eq!(c.serial, SerialOutput::Stdout);
        assert!(c.block[0].read_only);
        let again = VmConfig::from_json(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(c, again);
        c.validate().unwrap();
    }

    #[test]
    fn cpuid_cache_values() {
        let c = VmConfig::from_json(r#"{"kernel":"/k"}"#).unwrap();
        assert_eq!(c.cpuid_cache, CpuidCache::Default);
        let c = VmConfig::from_json(r#"{"kernel":"/k","cpuid_cache":"none"}"#).unwrap();
        assert_eq!(
            (c.cpuid_cache.clone(), c.cpuid_cache.dir()),
            (CpuidCache::None, None)
        );
        let c = VmConfig::from_json(r#"{"kernel":"/k","cpuid_cache":"/c"}"#).unwrap();
        assert_eq!(c.cpuid_cache.dir(), Some(PathBuf::from("/c")));
        let again = VmConfig::from_json(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(c, again);
        assert!(VmConfig::from_json(r#"{"kernel":"/k","cpuid_cache":""}"#).is_err());
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(VmConfig::from_json(r#"{"kernel":"/k","memroy_mib":5}"#)
            .unwrap_err()
            .to_string()
            .contains("memroy_mib"));
        let mut c = VmConfig::new("/k".into());
        c.memory_mib = 1;
        assert!(c.validate().unwrap_err().to_string().contains("too small"));
        c.memory_mib = 64;
        c.vcpus = 0;
        assert!(c.validate().is_err());
        c.vcpus = 1;
        c.vsock = Some(VsockConfig {
            guest_cid: 2,
            uds_path: "/s".into(),
        });
        assert!(c.validate().unwrap_err().to_string().contains("reserved"));
    }

    #[test]
    fn fs_shares_are_checked() {
        assert!(
            VmConfig::from_json(r#"{"kernel":"/k","fs":[{"tag":"a","path":"/d","rw":1}]}"#)
                .unwrap_err()
                .to_string()
                .contains("rw")
        );
        assert!(
            VmConfig::from_json(r#"{"kernel":"/k","fs":[{"path":"/d"}]}"#)
                .unwrap_err()
                .to_string()
                .contains("tag")
        );
        let mut c = VmConfig::new("/k".into());
        let share = |tag: &str, path: &str| FsConfig {
            tag: tag.into(),
            path: path.into(),
            read_only: false,
        };
        c.fs = vec![share(&"t".repeat(36), "/d")];
        c.validate().unwrap();
        c.fs = vec![share(&"t".repeat(37), "/d")];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("37 bytes, at most 36"), "{e}");
        c.fs = vec![share("", "/d")];
        assert!(c.validate().unwrap_err().to_string().contains("no tag"));
        c.fs = vec![share("a", "")];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no directory"));
        c.fs = vec![share("a", "/d"), share("a", "/e")];
        assert!(c.validate().unwrap_err().to_string().contains("used twice"));
        c.fs = vec![share("a\0b", "/d")];
        assert!(c.validate().unwrap_err().to_string().contains("NUL"));
    }

    #[test]
    fn device_specs() {
        let b = BlockConfig::parse("path=/x.img,ro,serial=disk0").unwrap();
        assert_eq!(
            b,
            BlockConfig {
                path: "/x.img".into(),
                read_only: true,
                serial: Some("disk0".into())
            }
        );
        assert!(BlockConfig::parse("path=/x,bogus").is_err());
        assert_eq!(
            NetConfig::parse("tap=tap0,mac=02:00:00:00:00:01")
                .unwrap()
                .tap,
            "tap0"
        );
        assert_eq!(
            VsockConfig::parse("uds=/v.sock,cid=7").unwrap().guest_cid,
            7
        );
        assert_eq!(
            FsConfig::parse("tag=share,path=/srv/x,ro").unwrap(),
            FsConfig {
                tag: "share".into(),
                path: "/srv/x".into(),
                read_only: true
            }
        );
        assert!(!FsConfig::parse("tag=s,path=/x").unwrap().read_only);
        assert!(FsConfig::parse("tag=s,path=/x,cache=always").is_err());
        assert_eq!(
            parse_mac("02:00:0a:0b:0c:ff").unwrap(),
            [2, 0, 10, 11, 12, 255]
        );
        assert!(parse_mac("02:00:0a:0b:0c").is_err());
        assert!(parse_mac("02:00:0a:0b:0c:0d:0e").is_err());
    }
}
