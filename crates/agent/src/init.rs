//! What the agent does as PID 1 of the guest before it serves: the
//! filesystems a container host needs, cgroup v2 with its controllers
//! delegated, the shared directory, and the clock.

use std::fs;
use std::path::Path;

use nix::mount::{mount, MsFlags};

use crate::AgentError;

/// The virtio-fs tag of the directory the host shares.
pub const SHARE_TAG: &str = "ironcell";
/// Where the guest mounts it; containers' roots and bind mounts live below.
pub const SHARE_DIR: &str = "/run/ironcell/share";

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), AgentError> {
    fs::create_dir_all(target).map_err(AgentError::io(format!("cannot create {target}")))?;
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(|err| AgentError::Sys { what: "mount", err })
        .map_err(|e| AgentError::Invalid(format!("cannot mount {fstype} on {target}: {e}")))
}

/// /proc, which the sealed re-execution (and everything after) needs.
pub fn mount_proc() -> Result<(), AgentError> {
    if Path::new("/proc/self").exists() {
        return Ok(());
    }
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", nosuid, None)
}

/// Where the agent runs from once off the initramfs.
const AGENT_PATH: &str = "/sbin/ironcell-agent";

/// Whether `/` is the kernel's initial rootfs (the unpacked initramfs).
fn root_is_rootfs() -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let (pre, post) = l.split_once(" - ").unwrap_or((l, ""));
            pre.split_whitespace().nth(4) == Some("/")
                && post.split_whitespace().next() == Some("rootfs")
        })
}

/// Moves PID 1 off the initramfs: the initial rootfs cannot be left with
/// pivot_root (EINVAL), which every container's setup needs, and runc's
/// alternative (MS_MOVE and chroot) is a weaker wall. So, as LinuxKit's
/// init does, the agent copies itself onto a tmpfs, moves that over `/`,
/// chroots into it and re-executes itself from there; the initramfs's copy
/// is removed (its memory is freed once this image is gone). Returns only
/// when `/` is not the rootfs.
pub fn leave_initramfs() -> Result<(), AgentError> {
    if !root_is_rootfs() {
        return Ok(());
    }
    let new = "/newroot";
    mount_fs(
        "tmpfs",
        new,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    // In a directory of its own: the sealed re-execution mounts the
    // binary's directory as an overlayfs layer, which must not overlap its
    // second, empty layer (under /tmp).
    fs::create_dir("/newroot/sbin").map_err(AgentError::io("cannot create /sbin"))?;
    fs::copy("/init", format!("/newroot{AGENT_PATH}"))
        .map_err(AgentError::io("cannot copy /init onto the tmpfs"))?;
    fs::create_dir("/newroot/tmp").map_err(AgentError::io("cannot create /tmp"))?;
    let _ = fs::remove_file("/init");
    let _ = nix::mount::umount2("/proc", nix::mount::MntFlags::MNT_DETACH);
    nix::unistd::chdir(new).map_err(AgentError::sys("chdir to the new root"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(AgentError::sys("move the new root over /"))?;
    nix::unistd::chroot(".").map_err(AgentError::sys("chroot"))?;
    nix::unistd::chdir("/").map_err(AgentError::sys("chdir /"))?;
    let args: Vec<std::ffi::CString> = std::env::args_os()
        .map(|a| std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str())))
        .collect::<Result<_, _>>()
        .map_err(|_| AgentError::Invalid("NUL in the command line".into()))?;
    let init = std::ffi::CString::new(AGENT_PATH).expect("no NUL");
    let env: Vec<std::ffi::CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(kv.as_os_str())).ok()
        })
        .collect();
    let e = nix::unistd::execve(&init, &args, &env).unwrap_err();
    Err(AgentError::sys("exec /init from the tmpfs")(e))
}

/// Everything else PID 1 mounts, and the cgroup v2 controllers enabled
/// for the containers' cgroups.
pub fn setup() -> Result<(), AgentError> {
    let secure = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("sysfs", "/sys", "sysfs", secure, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("gid=5,mode=0620,ptmxmode=0666"),
    )?;
    mount_fs("shm", "/dev/shm", "tmpfs", secure, Some("mode=1777"))?;
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mount_fs(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_fs(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        secure,
        Some("nsdelegate"),
    )?;
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    enable_controllers(Path::new("/sys/fs/cgroup"))?;
    mount_share();
    Ok(())
}

/// Delegates every controller the root cgroup has to its children.
fn enable_controllers(root: &Path) -> Result<(), AgentError> {
    let available = fs::read_to_string(root.join("cgroup.controllers"))
        .map_err(AgentError::io("cannot read cgroup.controllers"))?;
    let wanted: Vec<String> = available
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    fs::write(root.join("cgroup.subtree_control"), wanted.join(" "))
        .map_err(AgentError::io("cannot enable the cgroup controllers"))
}

/// Mounts the host's shared directory when the VM has one (a VM without a
/// virtio-fs device serves no containers with a rootfs, but still answers).
fn mount_share() {
    if let Err(e) = mount_fs(SHARE_TAG, SHARE_DIR, "virtiofs", MsFlags::empty(), None) {
        tracing::warn!("no shared directory: {e}");
    }
}

/// Takes the host's time when the guest's is more than a second off (a
/// guest without a hardware clock starts in 1970).
pub fn sync_clock(host_time_ns: i64) {
    if host_time_ns <= 0 {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    if (now - host_time_ns).abs() < 1_000_000_000 {
        return;
    }
    let ts =
        nix::sys::time::TimeSpec::new(host_time_ns / 1_000_000_000, host_time_ns % 1_000_000_000);
    if let Err(e) = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
        tracing::warn!("cannot set the clock: {e}");
    }
}

/// Ends the VM: a reset, which the hypervisor turns into its own exit.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Only reached when the reboot was refused; PID 1 must not return.
    loop {
        std::thread::park();
    }
}
