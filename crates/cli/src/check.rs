//! `ironcell check`: what this host offers the sandboxes, and which of
//! them can run here, with the reason when one cannot.

use std::path::{Path, PathBuf};

use anyhow::Result;
use ironcell_sandbox::config::{Config, Hypervisor, QemuDeviceBackend, VmConfig};
use ironcell_sandbox::host::{cgroup_mode, KvmKind};
use ironcell_sandbox::vm::hypervisor;

/// `p` itself when it names a path, else the first match in PATH.
fn find(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(p))
        .find(|c| c.is_file())
}

fn present(p: &str) -> &'static str {
    if Path::new(p).exists() {
        "present"
    } else {
        "missing"
    }
}

fn found(p: Option<PathBuf>, name: &Path) -> String {
    match p {
        Some(p) => p.display().to_string(),
        None => format!("{} (not found)", name.display()),
    }
}

/// Beside the ironcell binary, else PATH.
fn sibling(name: &str) -> Option<PathBuf> {
    ironcell_container::sealed_exe::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file())
        .or_else(|| find(Path::new(name)))
}

/// Why the vm sandbox cannot run with `vm` on this host, if it cannot.
fn vm_blocker(vm: &VmConfig, kvm: KvmKind) -> Option<String> {
    if let Err(e) = hypervisor::check_host(vm, kvm) {
        return Some(e.to_string());
    }
    for (key, p) in [("kernel", &vm.kernel), ("initrd", &vm.initrd)] {
        if !p.is_file() {
            return Some(format!(
                "the guest {key} {} is missing: run `make guest`",
                p.display()
            ));
        }
    }
    let vmm = || {
        (
            "ironcell-vmm",
            vm.vmm
                .as_deref()
                .map_or_else(|| sibling("ironcell-vmm"), find),
        )
    };
    let needed: Vec<(&str, Option<PathBuf>)> = match (vm.hypervisor, vm.qemu_device_backend) {
        (Hypervisor::IroncellVmm, _) => vec![vmm()],
        // ironcell-vmm serves QEMU's virtio-fs and vsock devices.
        (Hypervisor::Qemu, QemuDeviceBackend::IroncellVmm) => {
            vec![("qemu", find(&vm.qemu)), vmm()]
        }
        (Hypervisor::Qemu, QemuDeviceBackend::External) => vec![
            ("qemu", find(&vm.qemu)),
            ("virtiofsd", find(&vm.virtiofsd)),
            ("vhost-device-vsock", find(&vm.vhost_device_vsock)),
        ],
    };
    needed
        .into_iter()
        .find(|(_, p)| p.is_none())
        .map(|(name, _)| format!("{name} is not installed (scripts/setup.sh installs it)"))
}

pub fn run(config_path: Option<&Path>) -> Result<u8> {
    let kvm = KvmKind::detect();
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    println!("host:");
    println!("  kernel              {release}");
    println!("  /dev/kvm            {kvm}");
    println!(
        "  /dev/vhost-vsock    {} (not needed: ironcell-vmm serves vsock, for QEMU too)",
        present("/dev/vhost-vsock")
    );
    println!("  /dev/net/tun        {}", present("/dev/net/tun"));
    println!("  /dev/fuse           {}", present("/dev/fuse"));
    // A vm container joins its pod's network with a tap tied to the pod's
    // interface by tc (docs/vm.md, "Pod networking").
    match ironcell_sandbox::vm::podnet::probe() {
        Ok(()) => println!("  pod networking      yes (tap, tc ingress, u32, mirred)"),
        Err(e) => println!("  pod networking      no: {}", e.message()),
    }
    println!("  cgroups             {}", cgroup_mode());

    let config = Config::load(config_path);
    let shown = config_path
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(ironcell_sandbox::config::ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(ironcell_sandbox::config::DEFAULT_PATH));
    println!("config:");
    match &config {
        Ok(_) if shown.exists() => println!("  file                {}", shown.display()),
        Ok(_) => println!(
            "  file                {} (absent: the defaults)",
            shown.display()
        ),
        Err(e) => println!("  error               {e}"),
    }
    let vm_blocked = match &config {
        Ok(c) => {
            let vm = &c.vm;
            println!("vm sandbox:");
            println!("  hypervisor          {}", vm.hypervisor.as_str());
            let kernel_state = |p: &Path| {
                if p.is_file() {
                    "found"
                } else {
                    "missing: run make guest"
                }
            };
            println!(
                "  kernel              {} ({})",
                vm.kernel.display(),
                kernel_state(&vm.kernel)
            );
            println!(
                "  initrd              {} ({})",
                vm.initrd.display(),
                kernel_state(&vm.initrd)
            );
            match vm.hypervisor {
                Hypervisor::IroncellVmm => println!(
                    "  ironcell-vmm        {}",
                    found(
                        vm.vmm
                            .as_deref()
                            .map_or_else(|| sibling("ironcell-vmm"), find),
                        Path::new("ironcell-vmm")
                    )
                ),
                Hypervisor::Qemu => {
                    println!(
                        "  qemu                {} (accelerator {:?})",
                        found(find(&vm.qemu), &vm.qemu),
                        hypervisor::accel(vm, kvm)
                    );
                    println!(
                        "  virtiofsd           {}",
                        found(find(&vm.virtiofsd), &vm.virtiofsd)
                    );
                    println!(
                        "  vhost-device-vsock  {}",
                        found(find(&vm.vhost_device_vsock), &vm.vhost_device_vsock)
                    );
                }
            }
            vm_blocker(vm, kvm)
        }
        Err(e) => Some(e.to_string()),
    };
    println!("sandboxes:");
    println!("  namespace           yes");
    match vm_blocked {
        None => println!("  vm                  yes"),
        Some(why) => println!("  vm                  no: {why}"),
    }
    match sibling("ironcell-wasm") {
        Some(_) => println!("  wasm                yes"),
        None => {
            println!("  wasm                no: ironcell-wasm is not beside ironcell or in PATH")
        }
    }
    println!("  app-kernel          no: not built yet");
    Ok(0)
}
