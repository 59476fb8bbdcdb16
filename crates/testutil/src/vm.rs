//! The vm sandbox's test setup: the guest image, a configuration file that
//! runs VMs under QEMU with TCG (how this project's hosts test the guest
//! side: their /dev/kvm is PVM), and the checks that a VM left nothing.

use std::fs;
use std::path::{Path, PathBuf};

/// The guest kernel and initramfs the tests boot.
#[derive(Debug, Clone)]
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Where QEMU's vhost-user backends are (scripts/setup.sh).
pub const TOOLS: &str = "/var/cache/ironcell/tools/bin";

/// The guest image from `IRONCELL_GUEST_KERNEL` and
/// `IRONCELL_GUEST_INITRD` (set by `make test`), else from `make guest`'s
/// default place. None, with a loud notice, when it is missing.
pub fn guest(test: &str) -> Option<Guest> {
    let pick = |env: &str, default: &str| {
        std::env::var_os(env)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default))
    };
    let g = Guest {
        kernel: pick("IRONCELL_GUEST_KERNEL", "/var/cache/ironcell/guest/vmlinux"),
        initrd: pick(
            "IRONCELL_GUEST_INITRD",
            "/var/cache/ironcell/guest/initrd.img",
        ),
    };
    for p in [&g.kernel, &g.initrd] {
        if !p.is_file() {
            eprintln!(
                "\n!!! SKIPPED {test}: no guest image at {} (run `make guest`) !!!\n",
                p.display()
            );
            return None;
        }
    }
    Some(g)
}

/// The guest that ironcell-vmm boots on a PVM host: the project's
/// test-only pvm-test kernel (`IRONCELL_GUEST_KERNEL_PVM_TEST`, set by
/// `make test`; docs/pvm-host.md) with `guest`'s initramfs, and the `[vm]`
/// lines it needs (its command line, from the `cmdline` file beside it,
/// and deadlines for PVM's slow emulator). None, with a loud notice, on
/// any other host or without that kernel.
pub fn pvm_test_guest(test: &str, guest: &Guest) -> Option<(Guest, String)> {
    let kernel = std::env::var_os("IRONCELL_GUEST_KERNEL_PVM_TEST").map(PathBuf::from);
    match kernel {
        Some(k) if k.is_file() && Path::new("/sys/module/kvm_pvm").exists() => {
            let cmdline = fs::read_to_string(k.with_file_name("cmdline")).unwrap();
            let extra = format!(
                "kernel_params = {:?}\npvm_guest = true\nboot_timeout_secs = 600\n\
                 agent_timeout_secs = 600",
                cmdline.trim()
            );
            let pvm = Guest {
                kernel: k,
                initrd: guest.initrd.clone(),
            };
            Some((pvm, extra))
        }
        _ => {
            eprintln!(
                "\n!!! SKIPPED {test} under ironcell-vmm: not a PVM host, or no pvm-test kernel \
                 (IRONCELL_GUEST_KERNEL_PVM_TEST, set by make test) !!!\n"
            );
            None
        }
    }
}

/// Whether QEMU and its vhost-user backends are installed; a loud notice
/// when not.
pub fn qemu_tools(test: &str) -> bool {
    let missing: Vec<String> = [
        PathBuf::from("/usr/bin/qemu-system-x86_64"),
        Path::new(TOOLS).join("virtiofsd"),
        Path::new(TOOLS).join("vhost-device-vsock"),
    ]
    .into_iter()
    .filter(|p| !p.is_file())
    .map(|p| p.display().to_string())
    .collect();
    if missing.is_empty() {
        return true;
    }
    eprintln!(
        "\n!!! SKIPPED {test}: {} missing (run scripts/setup.sh) !!!\n",
        missing.join(", ")
    );
    false
}

/// Writes a configuration in `dir` that boots `guest` under QEMU with TCG,
/// with `extra` lines appended to its `[vm]` section; returns its path.
pub fn qemu_config(dir: &Path, guest: &Guest, extra: &str) -> PathBuf {
    config(dir, guest, Backend::QemuTcg, extra)
}

/// A hypervisor the end-to-end tests run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// QEMU with TCG: runs on every host.
    QemuTcg,
    /// ironcell-vmm on /dev/kvm with VT-x or AMD-V.
    IroncellVmm,
}

/// The backends this host can run a stock guest under: QEMU with TCG
/// always (when installed), ironcell-vmm only with hardware
/// virtualization; a loud notice for each one skipped.
pub fn backends(test: &str) -> Vec<Backend> {
    let mut b = Vec::new();
    if qemu_tools(test) {
        b.push(Backend::QemuTcg);
    }
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    if Path::new("/dev/kvm").exists()
        && (module("kvm_intel") || module("kvm_amd"))
        && !module("kvm_pvm")
    {
        b.push(Backend::IroncellVmm);
    } else {
        eprintln!(
            "\n!!! SKIPPED {test} under ironcell-vmm: this host's /dev/kvm has no VT-x or AMD-V \
             (PVM or none); the pvm-test kernel's tests cover ironcell-vmm here !!!\n"
        );
    }
    b
}

/// Writes a configuration in `dir` that boots `guest` with `backend`,
/// with `extra` lines appended to its `[vm]` section; returns its path.
pub fn config(dir: &Path, guest: &Guest, backend: Backend, extra: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let hypervisor = match backend {
        Backend::QemuTcg => "hypervisor = \"qemu\"\nqemu_accel = \"tcg\"",
        Backend::IroncellVmm => "hypervisor = \"ironcell-vmm\"",
    };
    fs::write(
        &path,
        format!(
            "[vm]\n{hypervisor}\nkernel = {:?}\ninitrd = {:?}\nrun_dir = {:?}\n{extra}\n",
            guest.kernel,
            guest.initrd,
            dir.join("vmrun"),
        ),
    )
    .unwrap();
    path
}

/// The VM run directories below a configuration's `run_dir`.
pub fn run_dirs(config_dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(config_dir.join("vmrun"))
        .map(|e| e.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The guest image and QEMU's tools, for a test that runs VMs under QEMU
/// with TCG (root included); None, with a loud notice, when one is missing.
pub fn qemu_guest(test: &str) -> Option<Guest> {
    if !crate::need_root(test) || !qemu_tools(test) {
        return None;
    }
    guest(test)
}

/// An executable in `dir` that runs `ironcell` with `--config config
/// --sandbox vm` before its own arguments: the runtime binary for callers
/// that pass a runtime no arguments (dockerd's --add-runtime, containerd's
/// runc shim).
pub fn vm_runtime_wrapper(dir: &Path, ironcell: &Path, config: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let wrapper = dir.join("ironcell-vmtest");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} --config {} --sandbox vm \"$@\"\n",
            ironcell.display(),
            config.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

/// Asserts that no VM run directory or VM process of a configuration
/// written in `dir` is left.
pub fn assert_no_vm_left(dir: &Path) {
    assert!(run_dirs(dir).is_empty(), "VM run directories left behind");
    let marker = dir.join("vmrun");
    assert!(
        crate::processes_with(marker.to_str().unwrap()).is_empty(),
        "VM processes left behind"
    );
}
