//! ironcell's configuration file: `/etc/ironcell/config.toml`, or the
//! file named by `--config` or `IRONCELL_CONFIG`. Every key is optional;
//! the built-in defaults work after `make` (and `make guest` for the vm
//! sandbox). A missing default file means the defaults; a file named
//! explicitly must exist. An unknown key or a bad value is a one-line error
//! naming the file, the line and the key. docs/vm.md lists every key.
//!
//! ```toml
//! [vm]
//! hypervisor = "qemu"          # or "ironcell-vmm" (the default)
//! qemu_accel = "tcg"           # or "kvm"; default: kvm on VT-x/AMD-V hosts
//! vcpus = 2
//! memory_mib = 512
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

pub const DEFAULT_PATH: &str = "/etc/ironcell/config.toml";
pub const ENV: &str = "IRONCELL_CONFIG";
/// Where `make guest` leaves the guest kernel and initramfs.
pub const DEFAULT_GUEST_DIR: &str = "/var/cache/ironcell/guest";
/// Where `scripts/setup.sh` installs virtiofsd and vhost-device-vsock.
pub const DEFAULT_TOOLS_DIR: &str = "/var/cache/ironcell/tools/bin";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("config file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub vm: VmConfig,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum Hypervisor {
    #[default]
    #[serde(rename = "ironcell-vmm")]
    IroncellVmm,
    #[serde(rename = "qemu")]
    Qemu,
}

impl Hypervisor {
    pub fn as_str(self) -> &'static str {
        match self {
            Hypervisor::IroncellVmm => "ironcell-vmm",
            Hypervisor::Qemu => "qemu",
        }
    }
}

/// What serves QEMU's virtio-fs and vsock devices (vhost-user).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum QemuDeviceBackend {
    /// ironcell-vmm's own devices, in one jailed process.
    #[default]
    #[serde(rename = "ironcell-vmm")]
    IroncellVmm,
    /// `virtiofsd` and `vhost-device-vsock` (the `virtiofsd` and
    /// `vhost_device_vsock` keys).
    #[serde(rename = "external")]
    External,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QemuAccel {
    Kvm,
    Tcg,
}

/// The `[vm]` section: how the vm sandbox starts its VMs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    pub hypervisor: Hypervisor,
    /// The guest kernel (an uncompressed vmlinux with a PVH entry).
    pub kernel: PathBuf,
    /// The initramfs holding the agent.
    pub initrd: PathBuf,
    /// The VM's base: a container's CPU and memory limits are added
    /// (vm/sizing.rs).
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The most vCPUs a VM gets (0: the host's online CPUs).
    pub max_vcpus: u32,
    /// The most memory a VM may need (0: the host's memory); a container
    /// asking for more is refused.
    pub max_memory_mib: u32,
    /// QEMU's accelerator; unset: kvm where /dev/kvm has VT-x or AMD-V,
    /// else tcg.
    pub qemu_accel: Option<QemuAccel>,
    /// `qemu-system-x86_64`, looked up in PATH unless a path.
    pub qemu: PathBuf,
    /// ironcell-vmm; unset: beside the ironcell binary, else PATH.
    pub vmm: Option<PathBuf>,
    /// What serves QEMU's virtio-fs and vsock devices.
    pub qemu_device_backend: QemuDeviceBackend,
    pub virtiofsd: PathBuf,
    pub vhost_device_vsock: PathBuf,
    /// Added to the guest kernel's command line.
    pub kernel_params: String,
    /// The kernel runs on a PVM host's /dev/kvm (a PVM guest kernel, or
    /// the project's pvm-test variant): lets ironcell-vmm start on PVM.
    pub pvm_guest: bool,
    /// How long a VM may take from its start to the agent's answer.
    pub boot_timeout_secs: u32,
    /// How long a call to the guest agent may take (creating a container
    /// or an exec'd process is real work in the guest; a wait has no
    /// deadline).
    pub agent_timeout_secs: u32,
    /// Sockets of running VMs (short paths: unix socket paths are limited
    /// to 108 bytes).
    pub run_dir: PathBuf,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            hypervisor: Hypervisor::default(),
            kernel: Path::new(DEFAULT_GUEST_DIR).join("vmlinux"),
            initrd: Path::new(DEFAULT_GUEST_DIR).join("initrd.img"),
            vcpus: 1,
            memory_mib: 256,
            max_vcpus: 0,
            max_memory_mib: 0,
            qemu_accel: None,
            qemu: "qemu-system-x86_64".into(),
            vmm: None,
            qemu_device_backend: QemuDeviceBackend::default(),
            virtiofsd: Path::new(DEFAULT_TOOLS_DIR).join("virtiofsd"),
            vhost_device_vsock: Path::new(DEFAULT_TOOLS_DIR).join("vhost-device-vsock"),
            kernel_params: String::new(),
            pvm_guest: false,
            boot_timeout_secs: 120,
            agent_timeout_secs: 30,
            run_dir: "/run/ironcell-vm".into(),
        }
    }
}

impl Config {
    /// Loads the configuration: `explicit` (`--config`), else the file
    /// named by `IRONCELL_CONFIG`, else `/etc/ironcell/config.toml` if it
    /// exists, else the defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let named = explicit.map(Path::to_path_buf).or_else(|| {
            std::env::var_os(ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        let (path, must_exist) = match named {
            Some(p) => (p, true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(Config::default())
            }
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        Config::parse(&text).map_err(|msg| ConfigError::Invalid { path, msg })
    }

    /// Parses and checks a configuration's text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| one_line(text, &e))?;
        config.vm.check()?;
        Ok(config)
    }
}

/// toml's message, with its line and column, on one line.
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line} column {col}: {msg}")
        }
        None => msg,
    }
}

impl VmConfig {
    fn check(&self) -> Result<(), String> {
        if !(1..=32).contains(&self.vcpus) {
            return Err(format!("[vm] vcpus = {}: must be 1 to 32", self.vcpus));
        }
        if !(64..=262_144).contains(&self.memory_mib) {
            return Err(format!(
                "[vm] memory_mib = {}: must be 64 to 262144",
                self.memory_mib
            ));
        }
        if self.max_vcpus != 0 && !(self.vcpus..=32).contains(&self.max_vcpus) {
            return Err(format!(
                "[vm] max_vcpus = {}: must be 0 (the host's CPUs) or vcpus ({}) to 32",
                self.max_vcpus, self.vcpus
            ));
        }
        if self.max_memory_mib != 0 && self.max_memory_mib < self.memory_mib {
            return Err(format!(
                "[vm] max_memory_mib = {}: must be 0 (the host's memory) or at least memory_mib ({})",
                self.max_memory_mib, self.memory_mib
            ));
        }
        for (key, v) in [
            ("boot_timeout_secs", self.boot_timeout_secs),
            ("agent_timeout_secs", self.agent_timeout_secs),
        ] {
            if v == 0 || v > 3600 {
                return Err(format!("[vm] {key} = {v}: must be 1 to 3600"));
            }
        }
        for (key, p) in [
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("qemu", &self.qemu),
            ("virtiofsd", &self.virtiofsd),
            ("vhost_device_vsock", &self.vhost_device_vsock),
            ("run_dir", &self.run_dir),
        ] {
            if p.as_os_str().is_empty() {
                return Err(format!("[vm] {key}: must not be empty"));
            }
        }
        if !self.run_dir.is_absolute() {
            return Err(format!(
                "[vm] run_dir = {:?}: must be an absolute path",
                self.run_dir
            ));
        }
        if self.kernel_params.chars().any(|c| c.is_control()) {
            return Err("[vm] kernel_params: must be one line".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_the_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert_eq!(Config::parse("[vm]\n").unwrap(), Config::default());
    }

    #[test]
    fn every_key_parses() {
        let c = Config::parse(
            r#"
[vm]
hypervisor = "qemu"
kernel = "/k"
initrd = "/i"
vcpus = 2
memory_mib = 512
qemu_accel = "tcg"
qemu = "/usr/bin/qemu-system-x86_64"
vmm = "/usr/local/bin/ironcell-vmm"
qemu_device_backend = "external"
virtiofsd = "/v"
vhost_device_vsock = "/h"
kernel_params = "tsc=reliable"
pvm_guest = true
boot_timeout_secs = 30
agent_timeout_secs = 300
run_dir = "/run/x"
"#,
        )
        .unwrap();
        assert_eq!(c.vm.hypervisor, Hypervisor::Qemu);
        assert_eq!(c.vm.qemu_accel, Some(QemuAccel::Tcg));
        assert_eq!(c.vm.qemu_device_backend, QemuDeviceBackend::External);
        assert_eq!((c.vm.vcpus, c.vm.memory_mib), (2, 512));
        assert!(c.vm.pvm_guest);
    }

    #[test]
    fn bad_keys_and_values_are_one_line_errors_naming_them() {
        for (text, want) in [
            ("[vm]\nvcpu = 2\n", "unknown field `vcpu`"),
            ("[vm]\nhypervisor = \"kvmtool\"\n", "kvmtool"),
            ("[vm]\nvcpus = 0\n", "vcpus = 0"),
            ("[vm]\nmemory_mib = 1\n", "memory_mib = 1"),
            ("[vm]\nvcpus = 4\nmax_vcpus = 2\n", "max_vcpus = 2"),
            ("[vm]\nmax_vcpus = 33\n", "max_vcpus = 33"),
            ("[vm]\nmax_memory_mib = 100\n", "max_memory_mib = 100"),
            ("[vm]\nqemu_accel = \"hvf\"\n", "hvf"),
            ("[vm]\nqemu_device_backend = \"vhost\"\n", "vhost"),
            ("[vm]\nrun_dir = \"rel\"\n", "run_dir"),
            ("[nvm]\n", "unknown field `nvm`"),
            ("[vm\n", "line 1"),
            ("[vm]\nvcpus = \"two\"\n", "line 2"),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e:?}");
        }
    }

    #[test]
    fn loading() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        let e = Config::load(Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("none.toml") && e.contains("No such file"), "{e}");
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[vm]\nvcpus = 3\n").unwrap();
        assert_eq!(Config::load(Some(&f)).unwrap().vm.vcpus, 3);
        std::fs::write(&f, "[vm]\nvcpus = 99\n").unwrap();
        let e = Config::load(Some(&f)).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("config file {}: [vm] vcpus", f.display())),
            "{e}"
        );
    }
}
