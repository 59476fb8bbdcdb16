//! Starting a VM with one of the two hypervisors, behind one interface:
//! everything above it (the agent protocol over hybrid vsock, the shared
//! directory with tag [`SHARE_TAG`]) is the same for both.
//!
//! - **ironcell-vmm** (the default): one process; it serves virtio-fs
//!   itself and is jailed to the shared directory (`--jail`), and its vsock
//!   device is the hybrid socket.
//! - **QEMU** (`microvm` machine, KVM or TCG): vhost-user backends serve
//!   the shared directory and hybrid vsock: by default ironcell-vmm's own
//!   devices, in one jailed process (`--vhost-user-fs`,
//!   `--vhost-user-vsock`); with `qemu_device_backend = "external"`,
//!   virtiofsd and vhost-device-vsock. QEMU needs a shared memfd memory
//!   backend for them and modern virtio-mmio (`force-legacy=false`).
//!
//! Every process started here dies with the process that started it
//! (`PR_SET_PDEATHSIG`), unless the VM is [`Lifetime::Detached`], is in a
//! process group of its own (a terminal's signals reach only the relay,
//! which forwards them to the container), and writes its own output to a
//! log file in the VM's run directory.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ironcell_basics::proc_stat::ProcStat;
use ironcell_protocol::stream::read_line;
use ironcell_protocol::{READY_LINE, READY_PORT};

use ironcell_netlink::format_mac;

use crate::config::{Hypervisor, QemuAccel, QemuDeviceBackend, VmConfig};
use crate::host::KvmKind;
use crate::{Result, SandboxError};

/// The virtio-fs tag of the shared directory (the agent mounts it).
pub const SHARE_TAG: &str = "ironcell";
const CONSOLE_LOG: &str = "console.log";
/// The hybrid vsock socket.
const VSOCK: &str = "vsock.sock";
/// QEMU's vhost-user sockets.
const FS_BACKEND: &str = "virtiofsd.sock";
const VSOCK_BACKEND: &str = "vhost-vsock.sock";
/// The guest's vsock CID under QEMU.
const GUEST_CID: u32 = 3;

/// The guest's command line before the hypervisor's own additions.
const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// What to start.
pub struct Plan<'a> {
    pub config: &'a VmConfig,
    pub kvm: KvmKind,
    /// Sockets and logs of this VM.
    pub run_dir: &'a Path,
    /// The directory the guest mounts with tag [`SHARE_TAG`].
    pub share: &'a Path,
    /// ironcell-vmm's binary.
    pub vmm: PathBuf,
    /// The NIC, when the VM joins a pod's network.
    pub nic: Option<Nic>,
}

/// A virtio-net device on a tap of the hypervisor's network namespace
/// (where [`super::podnet::connect`] made it).
#[derive(Debug, Clone)]
pub struct Nic {
    pub tap: String,
    /// The pod interface's: the guest's eth0 answers as the pod.
    pub mac: [u8; 6],
}

/// Whether a VM's processes die with the process that starts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// They die with it: a relay's VM.
    TiedToStarter,
    /// They outlive it, and become its parent's (a subreaper's: ironcelld's
    /// keeper) once it exits; whoever created the VM stops it.
    Detached,
}

/// A started VM: the hypervisor and its helpers.
pub struct Vm {
    /// (name, process); the hypervisor is the last.
    children: Vec<(&'static str, Child)>,
    pub vsock: PathBuf,
    pub console: PathBuf,
    /// Where the agent says it is ready (hybrid vsock's `<uds>_<port>`).
    ready: UnixListener,
}

fn vm_err(what: impl std::fmt::Display) -> SandboxError {
    SandboxError::Vm(what.to_string())
}

/// Refuses, at once and with the way out, a configuration this host
/// cannot run.
pub fn check_host(config: &VmConfig, kvm: KvmKind) -> Result<()> {
    match (config.hypervisor, kvm) {
        (Hypervisor::IroncellVmm, KvmKind::None) => Err(vm_err(
            "ironcell-vmm needs /dev/kvm, which this host lacks: set [vm] hypervisor = \"qemu\" \
             (with qemu_accel = \"tcg\") in the config file",
        )),
        (Hypervisor::IroncellVmm, KvmKind::Pvm) if !config.pvm_guest => Err(vm_err(
            "this host's /dev/kvm is PVM (kvm_pvm), where ironcell-vmm cannot boot a stock guest \
             kernel: set [vm] hypervisor = \"qemu\" in the config file, or point [vm] kernel at a \
             PVM guest kernel and set pvm_guest = true",
        )),
        (Hypervisor::Qemu, k) if accel(config, k) == QemuAccel::Kvm && !k.is_hardware() => {
            Err(vm_err(format!(
                "[vm] qemu_accel = \"kvm\" needs /dev/kvm with VT-x or AMD-V; this host's is {k}: \
                 use qemu_accel = \"tcg\""
            )))
        }
        _ => Ok(()),
    }
}

/// QEMU's accelerator: the configured one, else KVM on hardware
/// virtualization, else TCG.
pub fn accel(config: &VmConfig, kvm: KvmKind) -> QemuAccel {
    config.qemu_accel.unwrap_or(if kvm.is_hardware() {
        QemuAccel::Kvm
    } else {
        QemuAccel::Tcg
    })
}

/// The host's TSC frequency in kHz, for a TCG guest: under TCG the guest
/// reads the host's TSC, and cannot calibrate it against emulated timers.
/// Measured against CLOCK_MONOTONIC_RAW over 20 ms (cpuinfo's MHz is the
/// current core clock on hosts that scale their frequency, not the TSC's).
fn host_tsc_khz() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        let raw = || {
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_RAW)
                .map(|t| t.tv_sec() as u128 * 1_000_000_000 + t.tv_nsec() as u128)
                .ok()
        };
        // SAFETY: RDTSC reads a counter; it has no memory effects.
        let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
        let (t0, c0) = (raw()?, tsc());
        std::thread::sleep(Duration::from_millis(20));
        let (t1, c1) = (raw()?, tsc());
        let ns = t1.checked_sub(t0)?;
        (ns > 0).then(|| ((c1.wrapping_sub(c0)) as u128 * 1_000_000 / ns) as u64)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// The guest kernel's command line.
pub fn cmdline(config: &VmConfig, kvm: KvmKind) -> String {
    let mut c = String::from(BASE_CMDLINE);
    match config.hypervisor {
        // ironcell-vmm ends the VM on the i8042's reset; microvm has no
        // keyboard controller, and ends on a triple fault (`-no-reboot`).
        Hypervisor::IroncellVmm => c.push_str(" reboot=k"),
        Hypervisor::Qemu => c.push_str(" reboot=t"),
    }
    if config.hypervisor == Hypervisor::Qemu && accel(config, kvm) == QemuAccel::Tcg {
        // Under TCG the kernel hangs calibrating its clocks against
        // emulated timers, and drops a TSC it finds unsynchronized between
        // vCPUs (falling back to jiffies).
        c.push_str(" tsc=reliable no_timer_check");
        if let Some(khz) = host_tsc_khz() {
            c.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    if !config.kernel_params.is_empty() {
        c.push(' ');
        c.push_str(&config.kernel_params);
    }
    c
}

/// ironcell-vmm's command line for `plan`.
pub fn vmm_command(plan: &Plan) -> Command {
    let c = plan.config;
    let mut cmd = Command::new(&plan.vmm);
    cmd.arg("--kernel")
        .arg(&c.kernel)
        .arg("--initrd")
        .arg(&c.initrd)
        .arg("--cmdline")
        .arg(cmdline(c, plan.kvm))
        .args(["--vcpus", &c.vcpus.to_string()])
        .args(["--memory", &c.memory_mib.to_string()])
        .arg("--serial")
        .arg(plan.run_dir.join(CONSOLE_LOG))
        .arg("--vsock")
        .arg(format!("uds={}", plan.run_dir.join(VSOCK).display()))
        .arg("--fs")
        .arg(format!("tag={SHARE_TAG},path={}", plan.share.display()))
        .arg("--rng")
        .arg("--jail");
    if let Some(nic) = &plan.nic {
        cmd.arg("--net")
            .arg(format!("tap={},mac={}", nic.tap, format_mac(&nic.mac)));
    }
    cmd
}

/// The processes QEMU needs, in start order: the vhost-user backends, then
/// QEMU itself. Each backend comes with the socket it creates last, which
/// QEMU must find.
pub fn qemu_commands(plan: &Plan) -> Vec<(&'static str, Command, Option<PathBuf>)> {
    let c = plan.config;
    let run = plan.run_dir;
    let fs_sock = run.join(FS_BACKEND);
    let vsock_backend = run.join(VSOCK_BACKEND);

    let mut backends = Vec::new();
    match c.qemu_device_backend {
        QemuDeviceBackend::IroncellVmm => {
            let mut devices = Command::new(&plan.vmm);
            devices
                .arg("--vhost-user-fs")
                .arg(&fs_sock)
                .arg("--fs")
                .arg(format!("tag={SHARE_TAG},path={}", plan.share.display()))
                .arg("--vhost-user-vsock")
                .arg(&vsock_backend)
                .arg("--vsock")
                .arg(format!("uds={},cid={GUEST_CID}", run.join(VSOCK).display()))
                .arg("--jail");
            backends.push(("ironcell-vmm-devices", devices, Some(vsock_backend.clone())));
        }
        QemuDeviceBackend::External => {
            let mut virtiofsd = Command::new(&c.virtiofsd);
            virtiofsd
                .arg(format!("--socket-path={}", fs_sock.display()))
                .arg(format!("--shared-dir={}", plan.share.display()))
                .args([
                    "--sandbox=namespace",
                    "--cache=auto",
                    "--announce-submounts",
                ]);
            let mut vsock = Command::new(&c.vhost_device_vsock);
            vsock.arg("--vm").arg(format!(
                "guest-cid={GUEST_CID},socket={},uds-path={}",
                vsock_backend.display(),
                run.join(VSOCK).display()
            ));
            backends.push(("virtiofsd", virtiofsd, Some(fs_sock.clone())));
            backends.push(("vhost-device-vsock", vsock, Some(vsock_backend.clone())));
        }
    }

    let mem = format!("{}M", c.memory_mib);
    let mut qemu = Command::new(&c.qemu);
    qemu.args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        // Without the PIC and PIT a TCG guest hangs in its timer setup
        // (KVM guests have kvm-clock instead).
        .args([
            "-machine",
            "microvm,acpi=off,pic=on,pit=on,rtc=on,memory-backend=mem",
        ])
        .args([
            "-accel",
            match accel(c, plan.kvm) {
                QemuAccel::Kvm => "kvm",
                QemuAccel::Tcg => "tcg",
            },
        ])
        .args(["-cpu", "max"])
        .args(["-smp", &c.vcpus.to_string()])
        .args(["-m", &mem])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        ])
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .arg("-kernel")
        .arg(&c.kernel)
        .arg("-initrd")
        .arg(&c.initrd)
        .args(["-append", &cmdline(c, plan.kvm)])
        .arg("-serial")
        .arg(format!("file:{}", run.join(CONSOLE_LOG).display()))
        .arg("-chardev")
        .arg(format!("socket,id=vsock,path={}", vsock_backend.display()))
        .args(["-device", "vhost-user-vsock-device,chardev=vsock"])
        .arg("-chardev")
        .arg(format!("socket,id=fs,path={}", fs_sock.display()))
        .args([
            "-device",
            &format!("vhost-user-fs-device,chardev=fs,tag={SHARE_TAG}"),
        ])
        .args(["-device", "virtio-rng-device"]);
    if let Some(nic) = &plan.nic {
        // The tap is persistent and ready: QEMU runs no scripts on it.
        qemu.arg("-netdev")
            .arg(format!(
                "tap,id=net0,ifname={},script=no,downscript=no",
                nic.tap
            ))
            .arg("-device")
            .arg(format!(
                "virtio-net-device,netdev=net0,mac={}",
                format_mac(&nic.mac)
            ));
    }
    backends.push(("qemu", qemu, None));
    backends
}

/// Starts `cmd` as a child in a process group of its own, its output in
/// `log`; a [`Lifetime::TiedToStarter`] child dies with this thread.
fn spawn(name: &str, mut cmd: Command, log: &Path, lifetime: Lifetime) -> Result<Child> {
    let out =
        File::create(log).map_err(|e| vm_err(format!("cannot create {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| vm_err(format!("{}: {e}", log.display())))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let tied = lifetime == Lifetime::TiedToStarter;
    // SAFETY: prctl and setpgid are async-signal-safe and touch no memory
    // of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if (tied && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0)
                || libc::setpgid(0, 0) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| {
        vm_err(format!(
            "cannot start {name} ({}): {e}",
            cmd.get_program().to_string_lossy()
        ))
    })
}

/// Waits until `path` exists (a backend's socket), while `child` lives.
fn wait_for_socket(name: &str, child: &mut Child, path: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(vm_err(format!(
                "{name} exited ({status}) before creating {}",
                path.display()
            )));
        }
        if Instant::now() > deadline {
            return Err(vm_err(format!(
                "{name} did not create {} in 10 s",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

impl Vm {
    /// Starts the VM of `plan`.
    pub fn launch(plan: &Plan, lifetime: Lifetime) -> Result<Vm> {
        check_host(plan.config, plan.kvm)?;
        for (what, p) in [
            ("kernel", &plan.config.kernel),
            ("initrd", &plan.config.initrd),
        ] {
            if !p.is_file() {
                return Err(vm_err(format!(
                    "the guest {what} {} does not exist: build the guest image with `make guest`, \
                     or set [vm] {what} in the config file",
                    p.display()
                )));
            }
        }
        let vsock = plan.run_dir.join(VSOCK);
        let ready_path = PathBuf::from(format!("{}_{READY_PORT}", vsock.display()));
        let ready = UnixListener::bind(&ready_path)
            .map_err(|e| vm_err(format!("cannot listen on {}: {e}", ready_path.display())))?;
        ready
            .set_nonblocking(true)
            .map_err(|e| vm_err(format!("{}: {e}", ready_path.display())))?;
        let mut vm = Vm {
            children: Vec::new(),
            vsock,
            console: plan.run_dir.join(CONSOLE_LOG),
            ready,
        };
        let commands = match plan.config.hypervisor {
            Hypervisor::IroncellVmm => vec![("ironcell-vmm", vmm_command(plan), None)],
            Hypervisor::Qemu => qemu_commands(plan),
        };
        for (name, cmd, socket) in commands {
            let log = plan.run_dir.join(format!("{name}.log"));
            let mut child = spawn(name, cmd, &log, lifetime)?;
            let ready = match &socket {
                Some(s) => wait_for_socket(name, &mut child, s),
                None => Ok(()),
            };
            vm.children.push((name, child));
            if let Err(e) = ready {
                let detail = vm.log_tail(name);
                vm.kill();
                return Err(vm_err(format!("{e}{detail}")));
            }
        }
        Ok(vm)
    }

    /// Waits until the agent says it serves, or `deadline`, or the VM's
    /// end.
    pub fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        loop {
            match self.ready.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    match read_line(&mut conn) {
                        Ok(l) if l == READY_LINE => return Ok(()),
                        Ok(l) => {
                            let l: String = l.chars().take(60).collect();
                            return Err(vm_err(format!(
                                "the guest sent {l:?} instead of the agent's ready line"
                            )));
                        }
                        Err(_) => continue,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(vm_err(format!("ready socket: {e}"))),
            }
            self.check_alive()
                .map_err(|e| vm_err(format!("{e} while the guest booted")))?;
            if Instant::now() >= deadline {
                return Err(vm_err("the guest agent did not start in time"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Pids of the VM's processes on the host.
    pub fn pids(&self) -> Vec<i32> {
        self.children.iter().map(|(_, c)| c.id() as i32).collect()
    }

    /// Fails with the first of the VM's processes that has exited.
    pub fn check_alive(&mut self) -> io::Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!("{name} exited ({status})")));
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for the hypervisor to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.children.last_mut().map(|(_, c)| c.try_wait()) {
                Some(Ok(Some(_))) | None => return true,
                _ if Instant::now() >= deadline => return false,
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// The VM's processes as (pid, start time), the hypervisor last.
    pub fn processes(&self) -> Vec<(i32, u64)> {
        self.children
            .iter()
            .map(|(_, c)| {
                let pid = c.id() as i32;
                let start = ProcStat::of(pid).map_or(0, |s| s.start_time);
                (pid, start)
            })
            .collect()
    }

    /// Lets the VM's processes go: this handle no longer kills them when
    /// dropped. For a [`Lifetime::Detached`] VM whose creator hands it on.
    pub fn let_go(mut self) {
        self.children.clear();
    }

    /// Kills and reaps every process of the VM.
    pub fn kill(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines the guest printed, as `; guest console: ...` for an
    /// error message (or nothing).
    pub fn console_tail(&self) -> String {
        tail(&self.console, 6)
            .map(|t| format!("; guest console: {t}"))
            .unwrap_or_default()
    }

    fn log_tail(&self, name: &str) -> String {
        let dir = self.console.parent().unwrap_or(Path::new("/"));
        tail(&dir.join(format!("{name}.log")), 4)
            .map(|t| format!("; {name} said: {t}"))
            .unwrap_or_default()
    }

    /// [`Self::console_tail`] and the hypervisor's own last words.
    pub fn diagnostics(&self) -> String {
        let name = self.children.last().map_or("hypervisor", |(n, _)| *n);
        format!("{}{}", self.log_tail(name), self.console_tail())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` non-empty lines of `path`, joined with " | " (at most
/// the last 16 KiB are read).
pub fn tail(path: &Path, lines: usize) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)))
        .ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let kept: Vec<String> = text
        .lines()
        .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
        .filter(|l| !l.trim().is_empty())
        .collect();
    if kept.is_empty() {
        return None;
    }
    Some(kept[kept.len().saturating_sub(lines)..].join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn pvm_and_missing_kvm_are_refused_with_the_way_out() {
        let c = VmConfig::default();
        let e = check_host(&c, KvmKind::Pvm).unwrap_err().to_string();
        assert!(
            e.contains("PVM") && e.contains("hypervisor = \"qemu\"") && e.contains("pvm_guest"),
            "{e}"
        );
        let e = check_host(&c, KvmKind::None).unwrap_err().to_string();
        assert!(e.contains("/dev/kvm"), "{e}");
        assert!(check_host(&c, KvmKind::Vmx).is_ok());
        let pvm = VmConfig {
            pvm_guest: true,
            ..VmConfig::default()
        };
        assert!(check_host(&pvm, KvmKind::Pvm).is_ok());
        let q = VmConfig {
            hypervisor: Hypervisor::Qemu,
            ..VmConfig::default()
        };
        assert!(check_host(&q, KvmKind::Pvm).is_ok());
        assert_eq!(accel(&q, KvmKind::Pvm), QemuAccel::Tcg);
        assert_eq!(accel(&q, KvmKind::Svm), QemuAccel::Kvm);
        let qk = VmConfig {
            qemu_accel: Some(QemuAccel::Kvm),
            ..q
        };
        assert!(check_host(&qk, KvmKind::Pvm)
            .unwrap_err()
            .to_string()
            .contains("tcg"));
    }

    #[test]
    fn commands() {
        let run = Path::new("/run/x");
        let config = VmConfig {
            kernel_params: "extra=1".into(),
            ..VmConfig::default()
        };
        let plan = Plan {
            config: &config,
            kvm: KvmKind::Vmx,
            run_dir: run,
            share: Path::new("/s"),
            vmm: "/bin/ironcell-vmm".into(),
            nic: None,
        };
        let a = args(&vmm_command(&plan));
        assert!(a.contains(&"--jail".to_string()));
        assert!(a.contains(&"tag=ironcell,path=/s".to_string()));
        assert!(a.contains(&"uds=/run/x/vsock.sock".to_string()));
        let line = &a[a.iter().position(|x| x == "--cmdline").unwrap() + 1];
        // The user's parameters come last, so that they win.
        assert!(
            line.contains(" quiet ") && line.ends_with(" extra=1"),
            "{line}"
        );

        let qconfig = VmConfig {
            hypervisor: Hypervisor::Qemu,
            qemu_accel: Some(QemuAccel::Tcg),
            ..VmConfig::default()
        };
        let qplan = Plan {
            config: &qconfig,
            ..plan
        };
        let cmds = qemu_commands(&qplan);
        let names: Vec<&str> = cmds.iter().map(|(n, ..)| *n).collect();
        assert_eq!(names, ["ironcell-vmm-devices", "qemu"]);
        let d = args(&cmds[0].1);
        for want in [
            "--jail",
            "tag=ironcell,path=/s",
            "uds=/run/x/vsock.sock,cid=3",
            "/run/x/virtiofsd.sock",
            "/run/x/vhost-vsock.sock",
        ] {
            assert!(d.contains(&want.to_string()), "{want}: {d:?}");
        }
        let external = VmConfig {
            qemu_device_backend: QemuDeviceBackend::External,
            ..qconfig.clone()
        };
        let names: Vec<&str> = qemu_commands(&Plan {
            config: &external,
            ..qplan
        })
        .iter()
        .map(|(n, ..)| *n)
        .collect();
        assert_eq!(names, ["virtiofsd", "vhost-device-vsock", "qemu"]);
        let q = args(&cmds[1].1);
        assert!(q.windows(2).any(|w| w == ["-accel", "tcg"]));
        let append = &q[q.iter().position(|x| x == "-append").unwrap() + 1];
        assert!(
            append.contains("tsc=reliable") && append.contains("no_timer_check"),
            "{append}"
        );
    }

    #[test]
    fn a_nic_reaches_both_hypervisors() {
        let nic = Nic {
            tap: "tap0_ironcell".into(),
            mac: [0x0a, 0x58, 0x0a, 0x58, 0, 5],
        };
        let config = VmConfig::default();
        let plan = Plan {
            config: &config,
            kvm: KvmKind::Vmx,
            run_dir: Path::new("/run/x"),
            share: Path::new("/s"),
            vmm: "/bin/ironcell-vmm".into(),
            nic: Some(nic),
        };
        let a = args(&vmm_command(&plan));
        assert!(
            a.windows(2)
                .any(|w| w == ["--net", "tap=tap0_ironcell,mac=0a:58:0a:58:00:05"]),
            "{a:?}"
        );
        let qconfig = VmConfig {
            hypervisor: Hypervisor::Qemu,
            ..VmConfig::default()
        };
        let cmds = qemu_commands(&Plan {
            config: &qconfig,
            ..plan
        });
        let q = args(&cmds.last().unwrap().1);
        assert!(q.windows(2).any(|w| w
            == [
                "-netdev",
                "tap,id=net0,ifname=tap0_ironcell,script=no,downscript=no"
            ]));
        assert!(q.windows(2).any(|w| w
            == [
                "-device",
                "virtio-net-device,netdev=net0,mac=0a:58:0a:58:00:05"
            ]));
        let none = Plan {
            config: &qconfig,
            kvm: KvmKind::Vmx,
            run_dir: Path::new("/run/x"),
            share: Path::new("/s"),
            vmm: "/bin/ironcell-vmm".into(),
            nic: None,
        };
        assert!(!args(&qemu_commands(&none).last().unwrap().1).contains(&"-netdev".to_string()));
    }

    #[test]
    fn tail_is_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        fs::write(&p, "a\n\nb\x1b[0m\nc\nd\n").unwrap();
        assert_eq!(tail(&p, 3).unwrap(), "b[0m | c | d");
        assert_eq!(tail(&dir.path().join("none"), 3), None);
    }
}
