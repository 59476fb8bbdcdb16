//! Helpers shared by ironcell's integration tests (the CLI's and the
//! daemon's): the bundled test image, unique names, process and mount
//! checks, running clients, and a private containerd.
//!
//! Test-only; never a dependency of a shipped crate.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use ironcell_basics::proc_stat::ProcStat;

pub mod containerd;
pub mod cri;
pub mod cri_stream;
pub mod kubelet;
pub mod netns;
pub mod vm;
pub mod wasm;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// True when the tests can create containers (root). Otherwise prints a
/// loud notice: these tests need root like any container runtime's.
pub fn need_root(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    eprintln!("\n!!! SKIPPED {test}: needs root (containers need CAP_SYS_ADMIN) !!!\n");
    false
}

/// The bundled test image, built once per test binary by
/// `scripts/build-test-image.sh` (a no-op when already built).
pub fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = std::env::var_os("IRONCELL_TEST_IMAGE")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("build/test-image"));
        let status = Command::new("bash")
            .arg(workspace().join("scripts/build-test-image.sh"))
            .arg(&dir)
            .status()
            .expect("run scripts/build-test-image.sh");
        assert!(status.success(), "building the test image failed");
        dir
    })
}

/// The random points of a fault-injection test: reproducible from a seed,
/// taken from `IRONCELL_FAULT_SEED` (to replay a run) or else the clock,
/// and printed.
pub struct FaultRng(u64);

impl FaultRng {
    pub fn from_env() -> FaultRng {
        let seed: u64 = std::env::var("IRONCELL_FAULT_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("fault injection seed: {seed} (IRONCELL_FAULT_SEED)");
        FaultRng(seed)
    }

    /// The seed this run replays with.
    pub fn seed(&self) -> u64 {
        self.0
    }

    /// The next number below `bound` (xorshift64: no dependency).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// A unique name for this test run.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Every process's pid.
fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Pids of processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| pid as u32 != std::process::id())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                String::from_utf8_lossy(&cmd)
                    .replace('\0', " ")
                    .contains(marker)
            })
        })
        .collect()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs `cmd` to completion with its stdout and stderr going through
/// files, not pipes: a container it creates inherits them and would hold a
/// pipe open for as long as it runs.
pub fn output_via_files(cmd: &mut Command) -> Output {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let status = cmd
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .status()
        .expect("spawn");
    Output {
        status,
        stdout: read_all(out),
        stderr: read_all(err),
    }
}

pub fn read_all(mut f: fs::File) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut v = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut v).unwrap();
    v
}

/// Lazily unmounts everything mounted below `dir` (a test daemon's private
/// storage), deepest first.
pub fn unmount_below(dir: &Path) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "grep -o ' {}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l",
            dir.display()
        ))
        .status();
}

/// Stops a test daemon with SIGTERM and reaps it.
pub fn terminate(child: &mut std::process::Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

/// Runs `cmd` with a real terminal as its stdio, the way a person at a shell
/// runs it: `script` allocates a pty and runs the command line in it. The
/// command's environment settings are passed on.
pub fn in_terminal(cmd: &Command) -> Output {
    run_in_terminal(cmd, &command_line(cmd))
}

/// [`in_terminal`], the terminal sized `rows` by `cols` before `cmd` runs.
pub fn in_sized_terminal(cmd: &Command, rows: u16, cols: u16) -> Output {
    let line = format!("stty rows {rows} cols {cols}; exec {}", command_line(cmd));
    run_in_terminal(cmd, &line)
}

/// `cmd`'s program and arguments as a shell command line.
fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| shell_quote(a.to_str().unwrap()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the shell command `line` under script(1), in `cmd`'s environment.
fn run_in_terminal(cmd: &Command, line: &str) -> Output {
    let mut script = Command::new("script");
    script
        .args(["-qefc", line, "/dev/null"])
        .stdin(Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    script.output().expect("run script(1)")
}

pub fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Runs a client command (podman, ctr, docker) and asserts it succeeded;
/// returns its stdout.
pub fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().expect("spawn client");
    assert!(
        out.status.success(),
        "{:?} {:?}: {} {}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>(),
        out.status,
        stderr(&out)
    );
    stdout(&out)
}

/// Kills, when dropped, every ironcelld process of a daemon root: the
/// keeper's children (pod holders left by a failed test), the daemon and the
/// keeper. Declare it before the containerd that uses the daemon, so that
/// containerd's own clean-up runs first.
pub struct DaemonGuard(pub PathBuf);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        // A failed test's daemon logs outlive its root, for the reader.
        if std::thread::panicking() {
            let name = self.0.file_name().unwrap_or_default().to_string_lossy();
            let keep = std::env::temp_dir().join(format!("ironcell-failed-{name}"));
            if fs::create_dir_all(&keep).is_ok() {
                for log in ["ironcelld.log", "keeper.log"] {
                    let _ = fs::copy(self.0.join(log), keep.join(log));
                }
                eprintln!("the daemon's logs are kept in {}", keep.display());
            }
        }
        // The daemon starts a new keeper when its keeper dies, and the
        // keeper a new daemon: kill everything of the root (and the
        // children of it) again until nothing comes back.
        for _ in 0..100 {
            let ours = processes_with(&format!("--root {}", self.0.display()));
            if ours.is_empty() {
                break;
            }
            let children: Vec<i32> = all_pids()
                .into_iter()
                .filter(|pid| ProcStat::of(*pid).is_some_and(|s| ours.contains(&s.parent)))
                .collect();
            for p in children.into_iter().chain(ours) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The relays (forked by ironcelld's helper jobs) of `job` (`create`: a
/// container's, `exec`: an exec'd process's) for containers under daemon
/// root `root`: their pids and command lines.
pub fn helper_relays(root: &Path, job: &str) -> Vec<(i32, String)> {
    let root = root.to_string_lossy().into_owned();
    let job = format!("\0helper\0{job}\0");
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let c = fs::read(e.path().join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&c).into_owned()))
        })
        .filter(|(_, c)| c.contains(&job) && c.contains(&root))
        .map(|(pid, c)| (pid, c.replace('\0', " ")))
        .collect()
}

/// The pid of process `pid`'s parent.
pub fn parent_of(pid: i32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// ironcelld processes of daemon root `root`: its daemons, or (with
/// `keeper`) its keeper.
pub fn ironcelld_processes(root: &Path, keeper: bool) -> Vec<i32> {
    processes_with(&format!("--root {}", root.display()))
        .into_iter()
        .filter(|p| {
            let comm = fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let cmd = fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
            // The keeper's own binary shows as "ironcelld-keepe" (comm
            // keeps 15 bytes); both run with "keeper" as first argument.
            // A helper's processes ("helper" first), such as a vm
            // container's relay, name the root too, and are neither.
            let first = cmd.split('\0').nth(1);
            matches!(comm.trim(), "ironcelld" | "ironcelld-keepe")
                && first != Some("helper")
                && (first == Some("keeper")) == keeper
        })
        .collect()
}

/// SIGKILLs the daemons of `root` (not the keeper) and waits until they are
/// gone (a supervised daemon is started again by its keeper at once).
/// Returns the pids it killed.
pub fn kill_daemon(root: &Path) -> Vec<i32> {
    kill_ironcelld(root, false)
}

/// SIGKILLs the keeper of `root` and waits until it is gone (its daemon
/// starts the next one at once). Returns the pids it killed.
pub fn kill_keeper(root: &Path) -> Vec<i32> {
    kill_ironcelld(root, true)
}

fn kill_ironcelld(root: &Path, keeper: bool) -> Vec<i32> {
    let pids = ironcelld_processes(root, keeper);
    for p in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let start = std::time::Instant::now();
    // Only the killed ones: the next may be started meanwhile.
    while ironcelld_processes(root, keeper)
        .iter()
        .any(|p| pids.contains(p))
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "ironcelld{} did not die",
            if keeper { "'s keeper" } else { "" }
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    pids
}

/// Waits until a keeper of `root` that is not one of `old` runs, at most
/// `limit`. Returns how long that took.
pub fn wait_for_new_keeper(
    root: &Path,
    old: &[i32],
    limit: std::time::Duration,
) -> std::time::Duration {
    let start = std::time::Instant::now();
    while !ironcelld_processes(root, true)
        .into_iter()
        .any(|p| !old.contains(&p))
    {
        assert!(
            start.elapsed() < limit,
            "no new keeper for {} within {limit:?}",
            root.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    start.elapsed()
}

/// Waits until a daemon of `root` that is not one of `old` serves its
/// control socket (the keeper restarts a daemon the shim started), at
/// most `limit`. Returns how long that took.
pub fn wait_for_new_daemon(
    root: &Path,
    old: &[i32],
    limit: std::time::Duration,
) -> std::time::Duration {
    let start = std::time::Instant::now();
    loop {
        let new = ironcelld_processes(root, false)
            .into_iter()
            .any(|p| !old.contains(&p));
        if new && std::os::unix::net::UnixStream::connect(root.join("control.sock")).is_ok() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "no new ironcelld for {} within {limit:?}",
            root.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Starts daemon binary `bin` on `root`, logging JSON to
/// `<root>/ironcelld.log`, as the shim would.
pub fn start_daemon(bin: &Path, root: &Path) -> std::process::Child {
    start_daemon_with(bin, root, &[])
}

/// [`start_daemon`] with more arguments.
pub fn start_daemon_with(bin: &Path, root: &Path, args: &[&OsStr]) -> std::process::Child {
    start_daemon_with_env(bin, root, args, &[])
}

/// [`start_daemon_with`] with `env` added to the daemon's environment.
pub fn start_daemon_with_env(
    bin: &Path,
    root: &Path,
    args: &[&OsStr],
    env: &[(String, std::ffi::OsString)],
) -> std::process::Child {
    Command::new(bin)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("--root")
        .arg(root)
        .arg("--log")
        .arg(root.join("ironcelld.log"))
        .arg("--log-format")
        .arg("json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ironcelld")
}

/// A shell function `snap` that prints what confines the process calling
/// it, one fact a line: credentials, capabilities, no_new_privs, seccomp,
/// cgroups, namespaces, rlimits, the LSM label and the OOM score
/// adjustment. A container's init and a process exec'd into the container
/// must print the same.
pub const CONFINEMENT_SNAPSHOT: &str = r#"snap() {
  grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Seccomp_filters):' /proc/self/status
  sed 's/^/cgroup /' /proc/self/cgroup
  for n in cgroup ipc mnt net pid time user uts; do echo "ns $n $(readlink /proc/self/ns/$n)"; done
  sed 's/^/limit /' /proc/self/limits
  echo "lsm $(cat /proc/self/attr/current 2>/dev/null)"
  echo "oom_score_adj $(cat /proc/self/oom_score_adj)"
}"#;

/// The lines in which two [`CONFINEMENT_SNAPSHOT`] outputs differ, as
/// `-init` / `+exec` pairs; empty when they agree line for line.
pub fn confinement_diff(init: &str, exec: &str) -> Vec<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (init.lines().collect(), exec.lines().collect());
    assert!(
        a.iter().any(|l| l.starts_with("Seccomp:")),
        "not a confinement snapshot: {init:?}"
    );
    let mut diff = Vec::new();
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i).copied(), b.get(i).copied());
        if x != y {
            diff.push(format!("-{}", x.unwrap_or("")));
            diff.push(format!("+{}", y.unwrap_or("")));
        }
    }
    diff
}
