//! Integration tests of `ironcell-vmm`: the real binary boots the project's
//! tiny test guests (tests/guests/, built here with gcc) on /dev/kvm and
//! the host side of each device is driven as a user would (disk files,
//! unix sockets, a tap device, the API socket). Without /dev/kvm every test
//! says loudly that it was skipped.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_ironcell-vmm");

fn kvm_or_skip(test: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    eprintln!("==== SKIPPED {test}: /dev/kvm does not exist on this host ====");
    false
}

/// The test guests, built once per test binary.
fn guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ironcell-vmm-guests-{}", std::process::id()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/build.sh");
        let out = Command::new("sh")
            .arg(&script)
            .arg(&dir)
            .output()
            .expect("run build.sh");
        assert!(
            out.status.success(),
            "building the test guests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn guest(name: &str) -> PathBuf {
    guests().join(format!("{name}.elf"))
}

/// `ironcell-vmm` with `args`, its stdout (the guest's serial port) and
/// stderr captured.
fn vmm(args: &[&str]) -> Command {
    let mut c = Command::new(VMM);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn run(args: &[&str]) -> Output {
    let child = vmm(args).spawn().expect("spawn ironcell-vmm");
    wait_output(child, Duration::from_secs(60))
}

/// Waits with a deadline, so a hung guest fails the test instead of CI.
fn wait_output(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "ironcell-vmm did not exit within {limit:?}; stdout:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_pass(o: &Output, name: &str) {
    let out = stdout(o);
    assert!(
        out.contains(&format!("IRONCELL-TEST PASS {name}")) && o.status.success(),
        "guest {name}: status {:?}\nstdout:\n{out}\nstderr:\n{}",
        o.status,
        stderr(o)
    );
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn hello_guest_prints_and_its_reset_exits_zero() {
    if !kvm_or_skip("hello_guest_prints_and_its_reset_exits_zero") {
        return;
    }
    let o = run(&[
        "--kernel",
        guest("hello").to_str().unwrap(),
        "--memory",
        "128",
    ]);
    assert_eq!(stdout(&o), "hello from ironcell guest\n");
    assert!(o.status.success(), "{:?} {}", o.status, stderr(&o));
    assert_eq!(stderr(&o), "", "a clean reset is silent");
}

#[test]
fn a_reset_while_other_vcpus_still_run_exits_zero_every_time() {
    if !kvm_or_skip("a_reset_while_other_vcpus_still_run_exits_zero_every_time") {
        return;
    }
    // vCPU 0 resets and its thread ends while the other three still wait
    // in KVM_RUN; the VMM then kicks those. It once kicked the ended thread
    // too, through a pthread_t freed with it: on musl a SIGSEGV in most of
    // these runs.
    for i in 0..20 {
        let o = run(&["--kernel", guest("hello").to_str().unwrap(), "--vcpus", "4"]);
        assert!(o.status.success(), "run {i}: {:?} {}", o.status, stderr(&o));
        assert_eq!(stdout(&o), "hello from ironcell guest\n");
    }
}

#[test]
fn sixty_four_bit_entry_without_pvh_note_boots() {
    if !kvm_or_skip("sixty_four_bit_entry_without_pvh_note_boots") {
        return;
    }
    let o = run(&["--kernel", guest("hello64").to_str().unwrap()]);
    assert_eq!(
        stdout(&o),
        "hello from a 64-bit ironcell guest\n",
        "{}",
        stderr(&o)
    );
    assert!(o.status.success());
}

#[test]
fn serial_output_to_a_file() {
    if !kvm_or_skip("serial_output_to_a_file") {
        return;
    }
    let dir = tempdir();
    let log = dir.path().join("serial.log");
    let o = run(&[
        "--kernel",
        guest("hello").to_str().unwrap(),
        "--serial",
        log.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "hello from ironcell guest\n"
    );
}

#[test]
fn triple_fault_exits_nonzero_with_a_one_line_reason() {
    if !kvm_or_skip("triple_fault_exits_nonzero_with_a_one_line_reason") {
        return;
    }
    let o = run(&["--kernel", guest("triple").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("triple fault"), "{err}");
}

#[test]
fn rng_guest_draws_entropy() {
    if !kvm_or_skip("rng_guest_draws_entropy") {
        return;
    }
    let o = run(&["--kernel", guest("rng").to_str().unwrap(), "--rng"]);
    assert_pass(&o, "rng");
}

#[test]
fn interrupts_reach_the_guest_through_the_ioapic() {
    if !kvm_or_skip("interrupts_reach_the_guest_through_the_ioapic") {
        return;
    }
    // The guest routes the rng's pin through the VMM's IOAPIC to a vector
    // of its own, and checks delivery, masking and unmasking.
    let o = run(&[
        "--kernel",
        guest("irq").to_str().unwrap(),
        "--rng",
        "--vcpus",
        "2",
    ]);
    assert_pass(&o, "irq");
    let out = stdout(&o);
    assert!(
        out.contains("irq: ioapic version 0x11 max entry 23"),
        "{out}"
    );
    assert!(
        out.contains("irq: interrupt delivered on pin 5 vector 0x30"),
        "{out}"
    );
    assert!(
        out.contains("irq: masked edge dropped, next one delivered after unmask"),
        "{out}"
    );
}

fn disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    let mut content = vec![0u8; 64 * 1024];
    content[..16].copy_from_slice(b"IRONCELL-DISK-0!");
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn block_guest_writes_and_reads_back() {
    if !kvm_or_skip("block_guest_writes_and_reads_back") {
        return;
    }
    let dir = tempdir();
    let img = disk(dir.path());
    let spec = format!("path={},serial=ironcell-disk0", img.display());
    let o = run(&[
        "--kernel",
        guest("block").to_str().unwrap(),
        "--block",
        &spec,
    ]);
    assert_pass(&o, "block");
    let out = stdout(&o);
    assert!(out.contains("block: capacity 128 sectors"), "{out}");
    assert!(out.contains("block: serial ironcell-disk0"), "{out}");
    assert!(
        out.contains(&format!("block: sector0 {}", hex(b"IRONCELL-DISK-0!"))),
        "{out}"
    );
    // The guest's pattern reached the file.
    let content = std::fs::read(&img).unwrap();
    assert_eq!(&content[512..528], b"IRONCELL-BLOCK-1");
    for i in 16..512usize {
        assert_eq!(
            content[512 + i],
            ((i * 7 + 3) & 0xff) as u8,
            "byte {i} of sector 1"
        );
    }
}

#[test]
fn block_guest_read_only_disk_refuses_writes() {
    if !kvm_or_skip("block_guest_read_only_disk_refuses_writes") {
        return;
    }
    let dir = tempdir();
    let img = disk(dir.path());
    let before = std::fs::read(&img).unwrap();
    let o = run(&[
        "--kernel",
        guest("block").to_str().unwrap(),
        "--block",
        &format!("path={},ro", img.display()),
    ]);
    assert_pass(&o, "block");
    assert!(stdout(&o).contains("block: read-only ok"));
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "the file is unchanged"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One `read`, retried when it is interrupted: a socket with a read
/// timeout is never restarted by the kernel (socket(7)), so a stop and
/// continue or a freeze of the test process surfaces as EINTR.
fn read_once(s: &mut UnixStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while read_once(s, &mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

fn connect_retry(path: &Path) -> UnixStream {
    let start = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if start.elapsed() > Duration::from_secs(10) => {
                panic!("connect {}: {e}", path.display())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[test]
fn vsock_guest_moves_bytes_both_ways() {
    if !kvm_or_skip("vsock_guest_moves_bytes_both_ways") {
        return;
    }
    let dir = tempdir();
    let uds = dir.path().join("v.sock");
    let host_listener = UnixListener::bind(format!("{}_5678", uds.display())).unwrap();
    let child = vmm(&[
        "--kernel",
        guest("vsock").to_str().unwrap(),
        "--vsock",
        &format!("uds={},cid=7", uds.display()),
    ])
    .spawn()
    .unwrap();

    // Host-initiated: CONNECT, OK, a line there and back.
    let mut c = connect_retry(&uds);
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"CONNECT 1234\n").unwrap();
    let ok = read_line(&mut c);
    assert!(ok.starts_with("OK ") && ok.ends_with('\n'), "{ok:?}");
    c.write_all(b"hello guest\n").unwrap();
    assert_eq!(read_line(&mut c), "HELLO GUEST\n");
    drop(c);

    // Guest-initiated: the VMM connects to <uds>_5678.
    let (mut g, _) = host_listener.accept().unwrap();
    g.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    assert_eq!(read_line(&mut g), "ping from guest\n");
    g.write_all(b"pong from host\n").unwrap();

    let o = wait_output(child, Duration::from_secs(60));
    assert_pass(&o, "vsock");
    let out = stdout(&o);
    assert!(out.contains("vsock: guest cid 7"), "{out}");
    assert!(
        out.contains("vsock: port 5678 received: pong from host"),
        "{out}"
    );
    assert!(!uds.exists(), "the VMM removed its vsock socket");
}

/// A tap device for the test, removed on drop.
struct Tap(String);

impl Tap {
    fn new(name: &str) -> Tap {
        let _ = Command::new("ip")
            .args(["tuntap", "del", "dev", name, "mode", "tap"])
            .output();
        let ok = |args: &[&str]| {
            assert!(
                Command::new("ip").args(args).status().unwrap().success(),
                "ip {args:?}"
            )
        };
        ok(&["tuntap", "add", "dev", name, "mode", "tap"]);
        ok(&["link", "set", name, "up"]);
        Tap(name.to_string())
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["tuntap", "del", "dev", &self.0, "mode", "tap"])
            .output();
    }
}

/// A raw AF_PACKET socket on `ifname` for one ethertype.
struct PacketSocket(std::os::fd::OwnedFd);

impl PacketSocket {
    fn open(ifname: &str, ethertype: u16) -> PacketSocket {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the fd is checked and then owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from(ethertype.to_be()),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a new socket nobody else owns.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0, "no interface {ifname}");
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ethertype.to_be();
        sll.sll_ifindex = index as i32;
        // SAFETY: `sll` is a valid sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 20,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        PacketSocket(owned)
    }

    fn recv(&self) -> Vec<u8> {
        use std::os::fd::AsRawFd;
        let mut buf = vec![0u8; 2048];
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(
            n > 0,
            "no frame from the guest: {}",
            std::io::Error::last_os_error()
        );
        buf.truncate(n as usize);
        buf
    }

    fn send(&self, frame: &[u8]) {
        use std::os::fd::AsRawFd;
        // SAFETY: the frame is valid for its length.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[test]
fn net_guest_exchanges_frames_with_the_tap() {
    if !kvm_or_skip("net_guest_exchanges_frames_with_the_tap") {
        return;
    }
    let tap = Tap::new("icvmmtest0");
    let sock = PacketSocket::open(&tap.0, 0x88b5);
    let child = vmm(&[
        "--kernel",
        guest("net").to_str().unwrap(),
        "--net",
        &format!("tap={},mac=02:00:00:00:00:07", tap.0),
    ])
    .spawn()
    .unwrap();
    let frame = sock.recv();
    assert_eq!(&frame[0..6], &[0xff; 6], "broadcast");
    assert_eq!(
        &frame[6..12],
        &[2, 0, 0, 0, 0, 7],
        "from the configured MAC"
    );
    assert_eq!(&frame[14..31], b"ironcell-net-test");
    let mut reply = Vec::new();
    reply.extend_from_slice(&[2, 0, 0, 0, 0, 7]);
    reply.extend_from_slice(&[2, 0, 0, 0, 0, 0x99]);
    reply.extend_from_slice(&0x88b6u16.to_be_bytes());
    reply.extend_from_slice(b"hello-from-host");
    reply.resize(60, 0);
    sock.send(&reply);
    let o = wait_output(child, Duration::from_secs(60));
    assert_pass(&o, "net");
    assert!(stdout(&o).contains("hello-from-host"), "{}", stdout(&o));
}

fn api(path: &Path, request: &str) -> serde_json::Value {
    let mut s = connect_retry(path);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    serde_json::from_str(&read_line(&mut s)).unwrap()
}

#[test]
fn api_pauses_resumes_reports_and_shuts_down() {
    if !kvm_or_skip("api_pauses_resumes_reports_and_shuts_down") {
        return;
    }
    let dir = tempdir();
    let sock = dir.path().join("api.sock");
    let uds = dir.path().join("v.sock");
    // The vsock guest waits up to 30 s for a host connection: a running
    // guest we can observe through its device.
    let child = vmm(&[
        "--kernel",
        guest("vsock").to_str().unwrap(),
        "--vsock",
        &format!("uds={}", uds.display()),
        "--api-socket",
        sock.to_str().unwrap(),
    ])
    .spawn()
    .unwrap();
    let st = api(&sock, r#"{"action":"status"}"#);
    assert_eq!(st["ok"], true);
    assert_eq!(st["state"], "running");
    assert_eq!(st["vcpus"], 1);
    assert_eq!(st["devices"][0]["type"], "vsock");
    assert_eq!(st["devices"][0]["mmio_base"], "0xd0000000");
    assert_eq!(api(&sock, "pause")["state"], "paused");
    assert_eq!(api(&sock, "status")["state"], "paused");

    // While paused the guest cannot answer a connection.
    let mut c = connect_retry(&uds);
    c.write_all(b"CONNECT 1234\n").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut b = [0u8; 1];
    let paused = read_once(&mut c, &mut b);
    assert!(
        matches!(&paused, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a paused guest answered: {paused:?}"
    );
    assert_eq!(api(&sock, "resume")["state"], "running");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    assert!(
        read_line(&mut c).starts_with("OK "),
        "the resumed guest answers"
    );

    let bad = api(&sock, "reboot");
    assert_eq!(bad["ok"], false);
    assert!(bad["error"].as_str().unwrap().contains("unknown action"));
    assert_eq!(api(&sock, "shutdown")["ok"], true);
    let o = wait_output(child, Duration::from_secs(20));
    assert!(
        o.status.success(),
        "shutdown through the API exits 0: {:?} {}",
        o.status,
        stderr(&o)
    );
    assert!(!sock.exists() && !uds.exists(), "sockets removed");
}

#[test]
fn seccomp_allowlist_is_printable_and_a_forbidden_syscall_kills() {
    let o = run(&["--print-seccomp"]);
    assert!(o.status.success());
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let vcpu: Vec<&str> = list["vcpu"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        vcpu.contains(&"ioctl(KVM_RUN | KVM_GET_REGS | KVM_SIGNAL_MSI)"),
        "{vcpu:?}"
    );
    assert!(
        !vcpu.contains(&"execve") && !vcpu.contains(&"openat"),
        "{vcpu:?}"
    );
    if !kvm_or_skip("seccomp (the kill half)") {
        return;
    }
    let child = vmm(&["--kernel", guest("hello").to_str().unwrap()])
        .env("IRONCELL_VMM_SECCOMP_SELFTEST", "1")
        .spawn()
        .unwrap();
    let o = wait_output(child, Duration::from_secs(20));
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGSYS),
        "killed by the filter: {:?}",
        o.status
    );
    // Without the filter the same syscall is harmless.
    let child = vmm(&["--kernel", guest("hello").to_str().unwrap(), "--no-seccomp"])
        .env("IRONCELL_VMM_SECCOMP_SELFTEST", "1")
        .spawn()
        .unwrap();
    assert!(wait_output(child, Duration::from_secs(20)).status.success());
}

/// Runs a command that must fail; returns its one-line error.
fn bad(args: &[&str]) -> String {
    let o = run(args);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{args:?} must fail: {:?}",
        o.status
    );
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "one line for {args:?}: {err}");
    assert!(err.starts_with("ironcell-vmm: "), "{err}");
    err
}

#[test]
fn bad_input_is_one_line_and_leaves_nothing_behind() {
    let dir = tempdir();
    let api_sock = dir.path().join("api.sock");
    let api_s = api_sock.to_str().unwrap();
    let uds = dir.path().join("v.sock");
    let vsock = format!("uds={}", uds.display());
    let notelf = dir.path().join("bzImage");
    std::fs::write(&notelf, vec![0x4d; 4096]).unwrap();
    let cfg = dir.path().join("vm.json");
    std::fs::write(&cfg, r#"{"kernel": "/k", "memroy_mib": 64}"#).unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"kernel": "#).unwrap();

    let e = bad(&[
        "--kernel",
        "/nonexistent/vmlinux",
        "--api-socket",
        api_s,
        "--vsock",
        &vsock,
    ]);
    assert!(
        e.contains("/nonexistent/vmlinux") && e.contains("No such file"),
        "{e}"
    );
    let e = bad(&[
        "--kernel",
        notelf.to_str().unwrap(),
        "--api-socket",
        api_s,
        "--vsock",
        &vsock,
    ]);
    assert!(e.contains("not an ELF file"), "{e}");
    let e = bad(&["--kernel", dir.path().to_str().unwrap()]);
    assert!(e.contains("not a regular file"), "{e}");
    let e = bad(&["--kernel", "/k", "--memory", "1"]);
    assert!(e.contains("too small"), "{e}");
    let e = bad(&["--kernel", "/k", "--vcpus", "0"]);
    assert!(e.contains("vcpus"), "{e}");
    let e = bad(&["--config", cfg.to_str().unwrap()]);
    assert!(e.contains("memroy_mib"), "{e}");
    let e = bad(&["--config", broken.to_str().unwrap()]);
    assert!(e.contains("broken.json"), "{e}");
    let e = bad(&["--config", "/nonexistent.json"]);
    assert!(e.contains("/nonexistent.json"), "{e}");
    let e = bad(&["--kernel", "/k", "--block", "path=/nonexistent.img"]);
    assert!(e.contains("/nonexistent.img"), "{e}");
    let e = bad(&["--kernel", "/k", "--bogus"]);
    assert!(e.contains("--bogus"), "{e}");
    let e = bad(&[]);
    assert!(e.contains("no kernel"), "{e}");
    assert!(!api_sock.exists() && !uds.exists(), "no socket left behind");

    if Path::new("/dev/net/tun").exists() && kvm_or_skip("bad input with a tap") {
        let tap = "icvmmbad0";
        let e = bad(&[
            "--kernel",
            notelf.to_str().unwrap(),
            "--net",
            &format!("tap={tap}"),
        ]);
        assert!(e.contains("not an ELF file"), "{e}");
        let shown = Command::new("ip")
            .args(["link", "show", tap])
            .output()
            .unwrap();
        assert!(!shown.status.success(), "the tap the VMM created is gone");
    }
}

/// A directory holding `share/hello.txt` and, next to the share,
/// `outside.txt`, which the guest must not reach.
fn fs_tree() -> (tempfile::TempDir, PathBuf) {
    let dir = tempdir();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::write(dir.path().join("outside.txt"), "SECRET\n").unwrap();
    (dir, share)
}

fn run_fs_guest(share: &Path, extra: &[&str]) -> Output {
    let kernel = guest("fs");
    let fs = format!("tag=hostshare,path={}", share.display());
    let mut args = vec!["--kernel", kernel.to_str().unwrap(), "--fs", &fs];
    args.extend_from_slice(extra);
    run(&args)
}

fn assert_fs_guest_wrote(o: &Output, dir: &Path, share: &Path) {
    assert_pass(o, "fs");
    let out = stdout(o);
    assert!(out.contains("fs: tag hostshare\n"), "{out}");
    assert!(
        out.contains("fs: hello.txt: hello from the host\n"),
        "{out}"
    );
    assert!(out.contains("fs: names stay in the share\n"), "{out}");
    assert!(out.contains("fs: wrote from-guest.txt\n"), "{out}");
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest.txt")).unwrap(),
        "written by the guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("outside.txt")).unwrap(),
        "SECRET\n"
    );
}

#[test]
fn fs_guest_reads_and_writes_the_share() {
    if !kvm_or_skip("fs_guest_reads_and_writes_the_share") {
        return;
    }
    let (dir, share) = fs_tree();
    let o = run_fs_guest(&share, &[]);
    assert_fs_guest_wrote(&o, dir.path(), &share);

    let (_dir, share) = fs_tree();
    let fs = format!("tag=hostshare,path={},ro", share.display());
    let o = run(&["--kernel", guest("fs").to_str().unwrap(), "--fs", &fs]);
    assert_pass(&o, "fs");
    assert!(stdout(&o).contains("fs: read-only ok\n"), "{}", stdout(&o));
    assert!(!share.join("from-guest.txt").exists());
}

#[test]
fn fs_and_jail_bad_input_is_one_line() {
    let (dir, share) = fs_tree();
    let missing = dir.path().join("missing");
    let e = bad(&[
        "--kernel",
        "/k",
        "--fs",
        &format!("tag=t,path={}", missing.display()),
    ]);
    assert!(
        e.contains("device fs t: cannot open") && e.contains("No such file"),
        "{e}"
    );
    let e = bad(&[
        "--kernel",
        "/k",
        "--fs",
        &format!("tag=t,path={}", share.join("hello.txt").display()),
    ]);
    assert!(e.contains("is not a directory"), "{e}");
    let long = "t".repeat(37);
    let e = bad(&[
        "--kernel",
        "/k",
        "--fs",
        &format!("tag={long},path={}", share.display()),
    ]);
    assert!(e.contains("37 bytes, at most 36"), "{e}");
    let e = bad(&["--kernel", "/k", "--fs", "path=/tmp"]);
    assert!(e.contains("no tag"), "{e}");
    let e = bad(&["--kernel", "/k", "--fs", "tag=t,path=/tmp,cache=always"]);
    assert!(e.contains("cache"), "{e}");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let e = bad(&["--kernel", "/k", "--jail", "--vsock", "uds=/v.sock"]);
        assert!(e.contains("--jail: socket /v.sock is in /"), "{e}");
    }
}

fn is_root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("==== SKIPPED {test}: the jail needs root ====");
    false
}

#[test]
fn fs_guest_works_in_the_jail() {
    if !kvm_or_skip("fs_guest_works_in_the_jail") || !is_root_or_skip("fs_guest_works_in_the_jail")
    {
        return;
    }
    // The fs thread's seccomp filter, the jail's bind mount of the share,
    // interrupts raised from the fs thread.
    let (dir, share) = fs_tree();
    let o = run_fs_guest(&share, &["--jail"]);
    assert_fs_guest_wrote(&o, dir.path(), &share);
}

/// Unmounts what a test mounted, also when it fails.
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

fn sh(cmd: &str, args: &[&Path]) {
    let st = Command::new(cmd).args(args).status().unwrap();
    assert!(st.success(), "{cmd} {args:?}");
}

/// (st_dev, st_ino) of what `path` refers to (following /proc magic links).
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[test]
fn jail_leaves_the_vmm_its_shares_and_sockets_only() {
    if !kvm_or_skip("jail_leaves_the_vmm_its_shares_and_sockets_only")
        || !is_root_or_skip("jail_leaves_the_vmm_its_shares_and_sockets_only")
    {
        return;
    }
    let (dir, share) = fs_tree();
    let ro_share = dir.path().join("ro");
    std::fs::create_dir(&ro_share).unwrap();
    // The share is a shared mount, so that mounts made under it on the host
    // after the VMM started propagate into the VMM's namespace.
    let mut mounts = Mounts(Vec::new());
    sh("mount", &[Path::new("--bind"), &share, &share]);
    mounts.0.push(share.clone());
    sh("mount", &[Path::new("--make-shared"), &share]);
    let socks = dir.path().join("sockets");
    std::fs::create_dir(&socks).unwrap();
    let uds = socks.join("v.sock");
    let api_sock = socks.join("api.sock");
    let host_listener = UnixListener::bind(format!("{}_5678", uds.display())).unwrap();
    let child = vmm(&[
        "--kernel",
        guest("vsock").to_str().unwrap(),
        "--jail",
        "--fs",
        &format!("tag=rw,path={}", share.display()),
        "--fs",
        &format!("tag=ro,path={},ro", ro_share.display()),
        "--vsock",
        &format!("uds={},cid=7", uds.display()),
        "--api-socket",
        api_sock.to_str().unwrap(),
    ])
    .spawn()
    .unwrap();
    let pid = child.id();
    // The API answers once the VMM runs, jailed.
    assert_eq!(api(&api_sock, "status")["state"], "running");
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let root = proc.join("root");

    // The root: the shares and the sockets' directory, nothing else.
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let top = socks
        .components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let mut want = vec!["fs0".to_string(), "fs1".to_string(), top];
    want.sort();
    assert_eq!(names, want);
    assert_eq!(
        file_id(&root.join("fs0").join("hello.txt")),
        file_id(&share.join("hello.txt"))
    );
    assert!(root
        .join(socks.strip_prefix("/").unwrap())
        .join("v.sock")
        .exists());
    // The jail's root and the read-only share are read-only mounts.
    for p in [root.join("planted"), root.join("fs1").join("planted")] {
        let e = std::fs::write(&p, "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{}", p.display());
    }
    // No fd of the VMM is a directory but a share's root and the /proc
    // fd the passthrough reopens files through; the fs threads' cwds are
    // their shares.
    let shares = [file_id(&share).unwrap(), file_id(&ro_share).unwrap()];
    for fd in std::fs::read_dir(proc.join("fd")).unwrap() {
        let fd = fd.unwrap().path();
        let Ok(meta) = std::fs::metadata(&fd) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let target = std::fs::read_link(&fd).unwrap();
        let id = file_id(&fd).unwrap();
        assert!(
            shares.contains(&id) || target == Path::new(&format!("/{pid}/fd")),
            "fd {} is the directory {}",
            fd.display(),
            target.display()
        );
    }
    // Every thread is filtered. A vCPU thread installs its filter first
    // thing, before it runs the guest, but the API may answer before a
    // thread just spawned has begun (it then still bears the process's
    // name): such a thread is looked at again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut fs_threads = 0;
        let mut unfiltered = Vec::new();
        for task in std::fs::read_dir(proc.join("task")).unwrap() {
            let task = task.unwrap().path();
            let comm = std::fs::read_to_string(task.join("comm")).unwrap();
            if comm.starts_with("fs-") {
                fs_threads += 1;
                assert!(
                    shares.contains(&file_id(&task.join("cwd")).unwrap()),
                    "{comm}"
                );
            }
            let status = std::fs::read_to_string(task.join("status")).unwrap();
            if !status.contains("Seccomp:\t2") {
                unfiltered.push(comm.trim().to_string());
            }
        }
        assert_eq!(fs_threads, 2);
        if unfiltered.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "threads without a seccomp filter: {unfiltered:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A mount made under the share now reaches the jailed VMM.
    let late = share.join("late");
    std::fs::create_dir(&late).unwrap();
    sh(
        "mount",
        &[
            Path::new("-t"),
            Path::new("tmpfs"),
            Path::new("late"),
            &late,
        ],
    );
    mounts.0.push(late.clone());
    std::fs::write(late.join("file"), "late\n").unwrap();
    let seen = root.join("fs0").join("late").join("file");
    let start = Instant::now();
    while !seen.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "late\n");

    // vsock through the jail: host-initiated, then guest-initiated (the
    // VMM connects to <uds>_5678 by name, in the jail's socket directory).
    let mut c = connect_retry(&uds);
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"CONNECT 1234\n").unwrap();
    assert!(read_line(&mut c).starts_with("OK "));
    c.write_all(b"hello guest\n").unwrap();
    assert_eq!(read_line(&mut c), "HELLO GUEST\n");
    drop(c);
    let (mut g, _) = host_listener.accept().unwrap();
    g.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    assert_eq!(read_line(&mut g), "ping from guest\n");
    g.write_all(b"pong from host\n").unwrap();
    let o = wait_output(child, Duration::from_secs(60));
    assert_pass(&o, "vsock");
    assert!(
        !uds.exists() && !api_sock.exists(),
        "the jailed VMM removed its sockets"
    );
}

#[test]
fn missing_dev_kvm_is_a_clear_error() {
    // A mount namespace with an empty /dev hides /dev/kvm from the VMM.
    let o = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs none /dev && exec \"$0\" --kernel \"$1\"",
            VMM,
        ])
        .arg(guest_path_for_no_kvm())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot open /dev/kvm"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Any file will do: the VMM fails before it reads the kernel.
fn guest_path_for_no_kvm() -> PathBuf {
    PathBuf::from(VMM)
}

/// The project's guest kernel (guest/, scripts/build-guest-kernel.sh):
/// `IRONCELL_GUEST_KERNEL` (set by `make test`), else built or taken from
/// the cache by the script.
fn guest_kernel() -> PathBuf {
    if let Some(k) = std::env::var_os("IRONCELL_GUEST_KERNEL") {
        return PathBuf::from(k);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = Command::new("bash")
        .arg(root.join("scripts/build-guest-kernel.sh"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "guest kernel build failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    PathBuf::from(
        String::from_utf8_lossy(&built.stdout)
            .lines()
            .last()
            .unwrap()
            .trim(),
    )
}

fn is_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

fn has_hardware_virtualization() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo.split_whitespace().any(|w| w == "vmx" || w == "svm")
}

/// Linux boot of the project's guest kernel to a test init, on 2 vCPUs with
/// an initramfs and a virtio device. Needs hardware virtualization: on a
/// PVM host an unmodified kernel cannot boot (see the next test).
#[test]
fn linux_boots_to_a_test_init() {
    if !Path::new("/dev/kvm").exists() || is_pvm_host() || !has_hardware_virtualization() {
        eprintln!(
            "==== SKIPPED linux_boots_to_a_test_init: {} — an unmodified Linux guest needs hardware virtualization (VT-x/AMD-V); see docs/vmm.md ====",
            if is_pvm_host() { "this host's /dev/kvm is PVM (kvm_pvm)" } else { "no /dev/kvm with VT-x/AMD-V" }
        );
        return;
    }
    let vmlinux = guest_kernel();
    let dir = tempdir();
    let initrd = make_test_initramfs(dir.path());
    let o = run(&[
        "--kernel",
        vmlinux.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 reboot=k panic=-1 rdinit=/init",
        "--memory",
        "256",
        "--vcpus",
        "2",
        "--rng",
    ]);
    let out = stdout(&o);
    assert!(
        out.contains("IRONCELL-LINUX-BOOT-OK cpus=2"),
        "{out}\n{}",
        stderr(&o)
    );
    assert!(
        o.status.success(),
        "reboot from the guest exits 0: {:?}",
        o.status
    );
}

/// On a PVM host the project's kernel still enters through its PVH note and
/// prints its early boot log over COM1 (our E820 map, command line and
/// memory size included) until PVM's instruction emulator meets an
/// instruction it lacks; the VMM then exits 1 with a one-line reason. This
/// checks the real vmlinux's loading path where a full boot is impossible.
#[test]
fn linux_pvh_entry_prints_its_boot_log_on_pvm() {
    if !Path::new("/dev/kvm").exists() || !is_pvm_host() {
        eprintln!("==== SKIPPED linux_pvh_entry_prints_its_boot_log_on_pvm: not a PVM host (the full boot test runs instead) ====");
        return;
    }
    let vmlinux = guest_kernel();
    let cmdline =
        "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1 ironcell-test-marker";
    let child = vmm(&[
        "--kernel",
        vmlinux.to_str().unwrap(),
        "--memory",
        "256",
        "--cmdline",
        cmdline,
        "--rng",
    ])
    .spawn()
    .unwrap();
    let o = wait_output(child, Duration::from_secs(300));
    let out = stdout(&o);
    assert!(out.contains("Linux version 6.1"), "{out}");
    assert!(
        out.contains("ironcell-test-marker virtio_mmio.device=4K@0xd0000000:5"),
        "the command line with our device: {out}"
    );
    assert!(
        out.contains("BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable"),
        "our memory map: {out}"
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("instruction emulation failed"), "{err}");
}

/// The pvm-test kernel (`scripts/build-guest-kernel.sh --variant pvm-test`,
/// guest/kernel/pvm-test/): its vmlinux from `IRONCELL_GUEST_KERNEL_PVM_TEST`
/// (set by `make test`) and the command line it needs, from the `cmdline`
/// file the build puts next to it.
fn pvm_test_kernel() -> Option<(PathBuf, String)> {
    let vmlinux = PathBuf::from(std::env::var_os("IRONCELL_GUEST_KERNEL_PVM_TEST")?);
    let file = vmlinux.with_file_name("cmdline");
    let cmdline = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (built without --variant pvm-test?)",
            file.display()
        )
    });
    Some((vmlinux, cmdline.trim().to_string()))
}

/// A newc cpio whose /init is tests/guests/linux-init.c, built with
/// `gcc -static`.
fn make_c_init_initramfs(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/linux-init.c");
    let cc = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(root.join("init"))
        .arg(&src)
        .output()
        .expect("run gcc");
    assert!(
        cc.status.success(),
        "gcc -static {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && echo init | cpio --quiet -o -H newc > {}",
            root.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    out
}

/// A running VMM whose serial output is collected as it arrives, each line
/// with the time since the start.
struct Console {
    child: Child,
    start: Instant,
    lines: std::sync::Arc<std::sync::Mutex<Vec<(Duration, String)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Console {
    fn spawn(args: &[&str]) -> Console {
        let start = Instant::now();
        let mut child = vmm(args).spawn().expect("spawn ironcell-vmm");
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                sink.lock().unwrap().push((start.elapsed(), line));
            }
        });
        Console {
            child,
            start,
            lines,
            reader: Some(reader),
        }
    }

    /// The time of the first line containing `what`, waiting up to `limit`
    /// from the start; None if the VMM exited or the time ran out first.
    fn wait_for(&mut self, what: &str, limit: Duration) -> Option<Duration> {
        loop {
            if let Some((t, _)) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(_, l)| l.contains(what))
            {
                return Some(*t);
            }
            if self.start.elapsed() > limit || self.child.try_wait().unwrap().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn text(&self) -> String {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|(t, l)| format!("[{:7.3}] {l}\n", t.as_secs_f64()))
            .collect()
    }

    /// Waits for the exit (killing the VMM after `limit` from the start):
    /// the status, the console with times, and stderr.
    fn finish(mut self, limit: Duration) -> (std::process::ExitStatus, String, String) {
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if self.start.elapsed() > limit {
                let _ = self.child.kill();
                let status = self.child.wait().unwrap();
                self.reader.take().unwrap().join().unwrap();
                panic!(
                    "ironcell-vmm did not exit within {limit:?} (killed: {status:?}):\n{}",
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.reader.take().unwrap().join().unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, self.text(), err)
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// On a PVM host the pvm-test variant of the project's kernel (test-only:
/// guest/kernel/pvm-test/, docs/pvm-host.md) boots to a test init in an
/// initramfs: init mounts proc, devtmpfs, sysfs, tmpfs and cgroup2, runs
/// getppid and fork+exec+wait loops, reads virtio-rng, answers a host
/// connection over virtio-vsock, and reboots, which ends the VMM with 0.
#[test]
fn pvm_test_kernel_boots_to_init_on_pvm() {
    const NAME: &str = "pvm_test_kernel_boots_to_init_on_pvm";
    if !Path::new("/dev/kvm").exists() || !is_pvm_host() {
        eprintln!("==== SKIPPED {NAME}: not a PVM host (the pvm-test kernel exists only for PVM hosts; linux_boots_to_a_test_init covers VT-x/AMD-V) ====");
        return;
    }
    let Some((vmlinux, variant_cmdline)) = pvm_test_kernel() else {
        eprintln!("==== SKIPPED {NAME}: IRONCELL_GUEST_KERNEL_PVM_TEST is not set (make test sets it: bash scripts/build-guest-kernel.sh --variant pvm-test | tail -n1) ====");
        return;
    };
    let dir = tempdir();
    let initrd = make_c_init_initramfs(dir.path());
    let uds = dir.path().join("v.sock");
    // init's checks go in its environment: the VMM appends its
    // virtio_mmio.device= parameters after ours, so init's arguments (what
    // follows `--`) would include them.
    let cmdline =
        format!("console=ttyS0 reboot=k panic=-1 {variant_cmdline} pvm_init_checks=rng,vsock");
    let mut vm = Console::spawn(&[
        "--kernel",
        vmlinux.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--memory",
        "128",
        "--vcpus",
        "1",
        "--rng",
        "--vsock",
        &format!("uds={}", uds.display()),
    ]);
    // Every ring-0 instruction is emulated: 34-53 s to init and 5-9 s in it
    // on the CI host while other builds ran (docs/pvm-host.md). The limit
    // only catches a hung guest.
    let limit = Duration::from_secs(180);
    let init = vm.wait_for("pvm-init: init started: pid 1", limit);
    let listening = vm.wait_for("pvm-init: vsock: cid 3 listening on port 1024", limit);
    if init.is_none() || listening.is_none() {
        let (status, out, err) = vm.finish(limit);
        panic!("init did not start or listen: {status:?}\n{out}\n{err}");
    }
    let mut c = connect_retry(&uds);
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"CONNECT 1024\n").unwrap();
    let ok = read_line(&mut c);
    assert!(ok.starts_with("OK "), "{ok:?}\n{}", vm.text());
    c.write_all(b"hello from the host\n").unwrap();
    assert_eq!(read_line(&mut c), "HELLO FROM THE HOST\n");
    drop(c);

    let (status, out, err) = vm.finish(limit);
    eprintln!(
        "{NAME}: init started {:.1} s after the VMM",
        init.unwrap().as_secs_f64()
    );
    for line in out.lines().filter(|l| l.contains("pvm-init: ")) {
        eprintln!("{NAME}: {line}");
    }
    for want in [
        "-ironcell-pvm-test",
        "ironcell.pvm_test: workarounds for PVM's instruction emulator on",
        "pvm-init: cgroup2: created a cgroup",
        "pvm-init: tmpfs: wrote and read back a file",
        "pvm-init: getppid x1000:",
        "pvm-init: fork+exec+wait x3:",
        "pvm-init: rng: read 32 bytes from /dev/hwrng",
        "pvm-init: vsock: answered 20 bytes",
        "IRONCELL-PVM-INIT DONE failures=0",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}\n{err}");
    }
    assert!(
        status.success(),
        "the guest's reboot exits 0: {status:?}\n{out}\n{err}"
    );
}

/// A newc cpio with busybox (static) and an init that reports and reboots.
fn make_test_initramfs(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static is installed by scripts/setup.sh");
    std::fs::write(
        root.join("init"),
        "#!/bin/busybox sh\n/bin/busybox mkdir -p /proc && /bin/busybox mount -t proc proc /proc\n\
         echo IRONCELL-LINUX-BOOT-OK cpus=$(/bin/busybox grep -c ^processor /proc/cpuinfo)\n/bin/busybox reboot -f\n",
    )
    .unwrap();
    Command::new("chmod")
        .args(["755", root.join("init").to_str().unwrap()])
        .status()
        .unwrap();
    let out = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc > {}",
            root.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    out
}

/// The `vendor=` value of the cpuid guest's line.
fn guest_vendor(o: &Output) -> String {
    assert_pass(o, "cpuid");
    let out = stdout(o);
    let line = out
        .lines()
        .find(|l| l.starts_with("cpuid: "))
        .unwrap_or_else(|| panic!("no cpuid line in {out:?}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("vendor="))
        .unwrap()
        .to_string()
}

/// Offsets in the cache file (arch/cpuid_cache.rs): the key, and leaf 0's
/// EBX, EDX and ECX (the vendor string).
fn cache_layout(file: &[u8]) -> (std::ops::Range<usize>, usize) {
    assert_eq!(&file[..8], b"ICCPUID1");
    let key_len = u16::from_le_bytes([file[8], file[9]]) as usize;
    let key = 10..10 + key_len;
    let count = u32::from_le_bytes(file[key.end..key.end + 4].try_into().unwrap()) as usize;
    let entries = key.end + 4;
    assert_eq!(file.len(), entries + count * 40);
    let word = |e: usize, w: usize| {
        let at = entries + e * 40 + w * 4;
        u32::from_le_bytes(file[at..at + 4].try_into().unwrap())
    };
    let leaf0 = (0..count)
        .find(|&e| word(e, 0) == 0 && word(e, 1) == 0)
        .expect("leaf 0 in the cache");
    (key, entries + leaf0 * 40)
}

/// The cache file with the executing CPU's APIC ID blanked: KVM answers
/// `KVM_GET_SUPPORTED_CPUID` with the CPUID of the CPU the ioctl ran on,
/// whose initial APIC ID (leaf 1 EBX[31:24]) and x2APIC ID (leaves 0xB
/// and 0x1F, EDX) differ between the host's CPUs. The VMM sets both per
/// vCPU (arch/cpu.rs), so two answers that differ only there are the same.
fn without_apic_ids(file: &[u8]) -> Vec<u8> {
    let (key, _) = cache_layout(file);
    let mut out = file.to_vec();
    for entry in out[key.end + 4..].chunks_exact_mut(40) {
        let function = u32::from_le_bytes(entry[..4].try_into().unwrap());
        match function {
            1 => entry[19] = 0,
            0xb | 0x1f => entry[24..28].fill(0),
            _ => {}
        }
    }
    out
}

/// Writes "IroncellTest" as leaf 0's vendor string into the cache file.
fn doctor_vendor(file: &mut [u8]) {
    let (_, leaf0) = cache_layout(file);
    // EBX, EDX, ECX are words 4, 6 and 5 of the entry.
    file[leaf0 + 16..leaf0 + 20].copy_from_slice(b"Iron");
    file[leaf0 + 24..leaf0 + 28].copy_from_slice(b"cell");
    file[leaf0 + 20..leaf0 + 24].copy_from_slice(b"Test");
}

#[test]
fn supported_cpuid_is_cached_for_the_boot_and_the_kvm_module() {
    use std::os::unix::fs::PermissionsExt;
    if !kvm_or_skip("supported_cpuid_is_cached_for_the_boot_and_the_kvm_module") {
        return;
    }
    let tmp = tempdir();
    let dir = tmp.path().join("cache");
    let file = dir.join("supported-cpuid");
    let kernel = guest("cpuid");
    let boot = |cache: &Path| {
        guest_vendor(&run(&[
            "--kernel",
            kernel.to_str().unwrap(),
            "--cpuid-cache",
            cache.to_str().unwrap(),
        ]))
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

    // Without a cache: KVM's answer. The first boot with one saves it.
    let real = guest_vendor(&run(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cpuid-cache",
        "none",
    ]));
    assert_ne!(real, "IroncellTest");
    assert_eq!(boot(&dir), real);
    let saved = std::fs::read(&file).expect("the first boot writes the cache");
    assert_eq!((mode(&dir), mode(&file)), (0o700, 0o600));

    // The next boot takes the file's answer, not KVM's.
    let mut doctored = saved.clone();
    doctor_vendor(&mut doctored);
    std::fs::write(&file, &doctored).unwrap();
    assert_eq!(boot(&dir), "IroncellTest");

    // Another boot id or KVM module: ignored and replaced.
    let (key, _) = cache_layout(&doctored);
    doctored[key.start] ^= 0x01;
    std::fs::write(&file, &doctored).unwrap();
    assert_eq!(boot(&dir), real);
    assert_eq!(
        without_apic_ids(&std::fs::read(&file).unwrap()),
        without_apic_ids(&saved)
    );

    // A file others can write is not trusted (and is replaced).
    let mut doctored = saved.clone();
    doctor_vendor(&mut doctored);
    std::fs::write(&file, &doctored).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(boot(&dir), real);
    assert_eq!(mode(&file), 0o600);

    // A malformed file is a miss, not an error.
    std::fs::write(&file, b"ICCPUID1 garbage").unwrap();
    assert_eq!(boot(&dir), real);
    assert_eq!(
        without_apic_ids(&std::fs::read(&file).unwrap()),
        without_apic_ids(&saved)
    );
}
