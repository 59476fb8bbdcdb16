//! `ironcell-vmm`: boots one microVM and runs it until the guest stops.
//! Exit status 0 when the guest reset or powered off (or the API shut it
//! down), 1 with a one-line reason otherwise.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use vmm::config::{
    BlockConfig, CpuidCache, FsConfig, NetConfig, SerialOutput, VmConfig, VsockConfig,
};
use vmm::Vmm;

const USAGE: &str = "\
usage: ironcell-vmm --kernel PATH [options]
       ironcell-vmm --config FILE [options]
       ironcell-vmm --vhost-user-fs SOCKET --fs SPEC [--vhost-user-vsock SOCKET --vsock SPEC] [--jail]
       ironcell-vmm --print-seccomp

Boots a KVM microVM (see docs/vmm.md). Options override the config file.
  --kernel PATH        ELF kernel (vmlinux with a PVH note, or a 64-bit ELF entry)
  --initrd PATH        initial ramdisk
  --cmdline STR        kernel command line (virtio devices are appended)
  --vcpus N            vCPUs (default 1)
  --memory MIB         guest memory in MiB (default 128)
  --serial DEST        stdout (default), none, or a file path
  --config FILE        JSON config (fields: kernel, initrd, cmdline, vcpus,
                       memory_mib, serial, api_socket, block, net, fs, vsock,
                       rng, cpuid_cache, jail)
  --api-socket PATH    control socket (pause, resume, shutdown, status)
  --block SPEC         path=FILE[,ro][,serial=ID]   (repeatable)
  --net SPEC           tap=NAME[,mac=MAC]          (repeatable)
  --fs SPEC            tag=TAG,path=DIR[,ro]       (repeatable; virtio-fs share)
  --vsock SPEC         uds=PATH[,cid=N]
  --rng                add a virtio-rng device
  --cpuid-cache DIR    where the host's supported CPUID is cached (default
                       /run/ironcell-vmm for root; none: ask KVM every time)
  --jail               once set up, confine the VMM to an empty root of its own
                       (needs root; see docs/vmm.md)
  --no-seccomp         do not install the seccomp allowlists
  --print-seccomp      print the allowlists as JSON and exit
  --vhost-user-fs SOCKET     boot no VM: serve the one --fs share to a
                       vhost-user frontend (QEMU's vhost-user-fs-device)
                       that connects to SOCKET
  --vhost-user-vsock SOCKET  boot no VM: serve the --vsock device to a
                       vhost-user frontend (QEMU's vhost-user-vsock-device)
  --log PATH           log file (default stderr)
  --log-format FMT     text (default) or json
  --log-level LEVEL    error, warn (default), info, debug, trace
";

#[derive(Default)]
struct Args {
    config: Option<PathBuf>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    vcpus: Option<u8>,
    memory: Option<u32>,
    serial: Option<String>,
    api_socket: Option<PathBuf>,
    block: Vec<String>,
    net: Vec<String>,
    fs: Vec<String>,
    vsock: Option<String>,
    rng: bool,
    cpuid_cache: Option<String>,
    jail: bool,
    no_seccomp: bool,
    print_seccomp: bool,
    vhost_user_fs: Option<PathBuf>,
    vhost_user_vsock: Option<PathBuf>,
    log: Option<PathBuf>,
    log_json: bool,
    log_level: Option<String>,
}

fn string(v: OsString, flag: &str) -> Result<String> {
    v.into_string()
        .map_err(|_| anyhow::anyhow!("{flag}: value is not UTF-8"))
}

fn parse_args() -> Result<Args> {
    use lexopt::prelude::*;
    let mut a = Args::default();
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("config") => a.config = Some(p.value()?.into()),
            Long("kernel") => a.kernel = Some(p.value()?.into()),
            Long("initrd") => a.initrd = Some(p.value()?.into()),
            Long("cmdline") => a.cmdline = Some(string(p.value()?, "--cmdline")?),
            Long("vcpus") => {
                a.vcpus = Some(
                    p.value()?
                        .parse()
                        .context("--vcpus: expected a number 1..=32")?,
                )
            }
            Long("memory") => {
                a.memory = Some(
                    p.value()?
                        .parse()
                        .context("--memory: expected MiB as a number")?,
                )
            }
            Long("serial") => a.serial = Some(string(p.value()?, "--serial")?),
            Long("api-socket") => a.api_socket = Some(p.value()?.into()),
            Long("block") => a.block.push(string(p.value()?, "--block")?),
            Long("net") => a.net.push(string(p.value()?, "--net")?),
            Long("fs") => a.fs.push(string(p.value()?, "--fs")?),
            Long("vsock") => a.vsock = Some(string(p.value()?, "--vsock")?),
            Long("rng") => a.rng = true,
            Long("cpuid-cache") => a.cpuid_cache = Some(string(p.value()?, "--cpuid-cache")?),
            Long("jail") => a.jail = true,
            Long("no-seccomp") => a.no_seccomp = true,
            Long("print-seccomp") => a.print_seccomp = true,
            Long("vhost-user-fs") => a.vhost_user_fs = Some(p.value()?.into()),
            Long("vhost-user-vsock") => a.vhost_user_vsock = Some(p.value()?.into()),
            Long("log") => a.log = Some(p.value()?.into()),
            Long("log-format") => {
                a.log_json = match string(p.value()?, "--log-format")?.as_str() {
                    "json" => true,
                    "text" => false,
                    other => bail!("--log-format: unknown format {other:?} (text or json)"),
                }
            }
            Long("log-level") => a.log_level = Some(string(p.value()?, "--log-level")?),
            Short('h') | Long("help") => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            Short('V') | Long("version") => {
                println!("ironcell-vmm {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(a)
}

fn build_config(a: &Args) -> Result<VmConfig> {
    let mut cfg = match (&a.config, &a.kernel) {
        (Some(path), _) => VmConfig::from_file(path)?,
        (None, Some(k)) => VmConfig::new(k.clone()),
        (None, None) => bail!("no kernel given (--kernel PATH or --config FILE); see --help"),
    };
    if let Some(k) = &a.kernel {
        cfg.kernel = k.clone();
    }
    if let Some(i) = &a.initrd {
        cfg.initrd = Some(i.clone());
    }
    if let Some(c) = &a.cmdline {
        cfg.cmdline = c.clone();
    }
    if let Some(v) = a.vcpus {
        cfg.vcpus = v;
    }
    if let Some(m) = a.memory {
        cfg.memory_mib = m;
    }
    if let Some(s) = &a.serial {
        cfg.serial = SerialOutput::parse(s)?;
    }
    if let Some(p) = &a.api_socket {
        cfg.api_socket = Some(p.clone());
    }
    for b in &a.block {
        cfg.block.push(BlockConfig::parse(b)?);
    }
    for n in &a.net {
        cfg.net.push(NetConfig::parse(n)?);
    }
    for f in &a.fs {
        cfg.fs.push(FsConfig::parse(f)?);
    }
    if let Some(v) = &a.vsock {
        cfg.vsock = Some(VsockConfig::parse(v)?);
    }
    cfg.rng |= a.rng;
    cfg.jail |= a.jail;
    if let Some(c) = &a.cpuid_cache {
        cfg.cpuid_cache = CpuidCache::parse(c)?;
    }
    Ok(cfg)
}

/// The devices `--vhost-user-fs` and `--vhost-user-vsock` serve; options
/// of a VM of its own are refused with them.
fn vhost_user_config(a: &Args) -> Result<vmm::vhost_user::VhostUserConfig> {
    let vm_only = [
        ("--config", a.config.is_some()),
        ("--kernel", a.kernel.is_some()),
        ("--initrd", a.initrd.is_some()),
        ("--cmdline", a.cmdline.is_some()),
        ("--vcpus", a.vcpus.is_some()),
        ("--memory", a.memory.is_some()),
        ("--serial", a.serial.is_some()),
        ("--api-socket", a.api_socket.is_some()),
        ("--block", !a.block.is_empty()),
        ("--net", !a.net.is_empty()),
        ("--rng", a.rng),
    ];
    if let Some((flag, _)) = vm_only.iter().find(|(_, set)| *set) {
        bail!("{flag} boots a VM; it does not go with --vhost-user-fs or --vhost-user-vsock");
    }
    let fs = match (&a.vhost_user_fs, a.fs.as_slice()) {
        (Some(socket), [spec]) => Some((FsConfig::parse(spec)?, socket.clone())),
        (Some(_), _) => bail!("--vhost-user-fs serves exactly one --fs share"),
        (None, []) => None,
        (None, _) => bail!("--fs without --vhost-user-fs (it boots no VM)"),
    };
    let vsock = match (&a.vhost_user_vsock, &a.vsock) {
        (Some(socket), Some(spec)) => Some((VsockConfig::parse(spec)?, socket.clone())),
        (Some(_), None) => bail!("--vhost-user-vsock needs --vsock uds=PATH[,cid=N]"),
        (None, None) => None,
        (None, Some(_)) => bail!("--vsock without --vhost-user-vsock (it boots no VM)"),
    };
    Ok(vmm::vhost_user::VhostUserConfig {
        fs,
        vsock,
        jail: a.jail,
        seccomp: !a.no_seccomp,
    })
}

fn init_logging(a: &Args) -> Result<()> {
    let level: tracing::Level = match a.log_level.as_deref() {
        None => tracing::Level::WARN,
        Some(l) => l
            .parse()
            .map_err(|_| anyhow::anyhow!("--log-level: unknown level {l:?}"))?,
    };
    let format = if a.log_json {
        logging::LogFormat::Json
    } else {
        logging::LogFormat::Text
    };
    logging::init(a.log.as_deref(), format, level).with_context(|| match &a.log {
        Some(p) => format!("--log {}", p.display()),
        None => "cannot set up logging".into(),
    })
}

fn run() -> Result<i32> {
    vmm::since_start_us();
    let args = parse_args()?;
    if args.print_seccomp {
        println!(
            "{}",
            serde_json::to_string_pretty(&vmm::seccomp::allowlist())?
        );
        return Ok(0);
    }
    init_logging(&args)?;
    if args.vhost_user_fs.is_some() || args.vhost_user_vsock.is_some() {
        vmm::vhost_user::serve(vhost_user_config(&args)?)?;
        return Ok(0);
    }
    let config = build_config(&args)?;
    // Compiled at build time (build.rs): nothing to do but copy them.
    let filters = (!args.no_seccomp).then(vmm::seccomp::filters);
    let vm = Vmm::new(config, filters)?;
    let reason = vm.run()?;
    let code = reason.exit_code();
    if code == 0 {
        tracing::info!("{reason}");
    } else {
        eprintln!("ironcell-vmm: {reason}");
    }
    Ok(code)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => {
            // vCPU threads may still sit in KVM_RUN; exit the whole process.
            std::process::exit(code);
        }
        Err(e) => {
            // One line: the error and its causes.
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("ironcell-vmm: {}", msg.join(": "));
            ExitCode::from(1)
        }
    }
}
