//! The relay: the host process that stands in for a process in the guest.
//!
//! podman (conmon), docker and containerd's runc shim expect a container
//! to be a host process: its pid is in state.json, it holds the stdio the
//! caller gave `create`, signals sent to it reach the container, and its
//! exit status is the container's. For a container in a VM the relay is
//! that process. It holds the caller's stdio (or a pty whose master went to
//! the console socket) and copies it to and from the agent's streams,
//! forwards the signals it receives to the guest process, and exits with
//! the guest process's status, once everything the process wrote has been
//! copied out. A container's relay also owns its VM: the hypervisor is its
//! child and dies with it, and the relay shuts the VM down when the
//! container has exited. An exec'd process gets a relay of its own.
//!
//! The relay is forked, not executed: ironcell's CLI is single-threaded
//! when it forks, and the child carries on with everything already loaded
//! (the config, the spec). It reports over a pipe once the guest process
//! exists, or why it could not be made.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use ironcell_protocol::agent::WaitProcessResponse;
use ironcell_protocol::stream::StreamKind;
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::ForkResult;

use super::agent::Agent;
use super::hypervisor::Vm;
use super::state::ExitRecord;
use crate::{Result, SandboxError};

/// How long a relay whose wait in the guest failed gives the hypervisor to
/// be seen exiting, before it blames the agent.
const HYPERVISOR_END_GRACE: Duration = Duration::from_millis(500);

/// After the guest process exited, its output streams get this long to
/// reach their end (the agent has sent everything by then; a guest that
/// holds a stream open past its process's exit does not hold the relay).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn vm_err(what: impl std::fmt::Display) -> SandboxError {
    SandboxError::Vm(what.to_string())
}

/// A VM the relay owns.
pub struct OwnedVm {
    pub vm: Vm,
    /// The VM's run directory, removed when the VM is gone.
    pub run_dir: PathBuf,
}

/// The process's stdio on the relay's side.
pub enum Stdio {
    /// The relay's own fds 0, 1 and 2, copied to and from three streams.
    Pipes {
        stdin: UnixStream,
        stdout: UnixStream,
        stderr: UnixStream,
    },
    /// A pty's slave (its master is the caller's), copied to and from the
    /// process's terminal stream.
    Tty { slave: File, conn: UnixStream },
}

/// One guest process the relay stands in for.
pub struct Relay {
    pub agent: Agent,
    pub uds: PathBuf,
    pub id: String,
    /// Empty for the container's init.
    pub exec_id: String,
    pub stdio: Stdio,
    /// Written when a container's init has exited (none for an exec).
    pub exit_file: Option<PathBuf>,
    pub vm: Option<OwnedVm>,
}

/// Opens the process's streams. With a terminal, a pty is made whose
/// master goes to `console_socket`; its slave becomes the relay's
/// controlling terminal, so that a resize of the caller's master reaches
/// the relay as SIGWINCH.
pub fn attach(
    agent: &Agent,
    id: &str,
    exec_id: &str,
    terminal: bool,
    console_socket: Option<&Path>,
) -> Result<Stdio> {
    if !terminal {
        return Ok(Stdio::Pipes {
            stdin: agent.open_stream(StreamKind::Stdin, id, exec_id)?,
            stdout: agent.open_stream(StreamKind::Stdout, id, exec_id)?,
            stderr: agent.open_stream(StreamKind::Stderr, id, exec_id)?,
        });
    }
    let socket = console_socket
        .ok_or_else(|| vm_err("the process has a terminal: --console-socket is required"))?;
    let conn = agent.open_stream(StreamKind::Tty, id, exec_id)?;
    nix::unistd::setsid().map_err(|e| vm_err(format!("setsid: {e}")))?;
    let slave = ironcell_container::send_new_pty(socket)?;
    // SAFETY: TIOCSCTTY takes an integer argument; the fd is our slave.
    unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
    if let Ok(mut t) = nix::sys::termios::tcgetattr(&slave) {
        // The guest's pty does the line discipline; this one passes bytes.
        nix::sys::termios::cfmakeraw(&mut t);
        let _ = nix::sys::termios::tcsetattr(&slave, nix::sys::termios::SetArg::TCSANOW, &t);
    }
    Ok(Stdio::Tty { slave, conn })
}

enum Event {
    Exited(Result<WaitProcessResponse>),
    Signal(i32),
}

/// The signals a relay passes on to its guest process: every catchable
/// one but SIGCHLD (its own children), SIGWINCH (a resize), SIGPIPE and
/// SIGURG (Go runtimes' internal signal, which runc does not forward).
const FORWARDED: &[i32] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTERM,
    libc::SIGCONT,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGSYS,
    libc::SIGXCPU,
    libc::SIGXFSZ,
];

/// Copies until `from` ends, then closes `to` for writing when it is a
/// socket; write errors (the reader went away) only stop the writing.
fn pump(mut from: impl Read, mut to: impl Write, shut: Option<&UnixStream>) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut writing = true;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if writing && to.write_all(&buf[..n]).is_err() {
            writing = false;
        }
    }
    if let Some(s) = shut {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
}

/// This process's fd `n`, not closed when dropped.
fn own_fd(n: i32) -> ManuallyDrop<File> {
    // SAFETY: fds 0, 1 and 2 are open for the life of the process (the
    // caller's stdio); ManuallyDrop keeps them from being closed.
    ManuallyDrop::new(unsafe { File::from_raw_fd(n) })
}

fn winsize(fd: i32) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain integers; all zeroes is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which outlives the
    // call.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

impl Relay {
    /// Stands in for the process until it exits; returns how it ended.
    pub fn run(mut self) -> ExitRecord {
        let (tx, rx) = mpsc::channel::<Event>();
        // Watched before the terminal's size is first read: a resize from
        // then on is a SIGWINCH seen, one before it is in the size read.
        let mut watched: Vec<i32> = FORWARDED.to_vec();
        watched.extend([libc::SIGCHLD, libc::SIGWINCH]);
        if let Ok(mut signals) = signal_hook::iterator::Signals::new(&watched) {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for s in signals.forever() {
                    if tx.send(Event::Signal(s)).is_err() {
                        break;
                    }
                }
            });
        }
        let mut outputs = Vec::new();
        let tty_fd = match &self.stdio {
            Stdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                let (i, o, e) = (stdin.try_clone(), stdout.try_clone(), stderr.try_clone());
                if let Ok(i) = i {
                    std::thread::spawn(move || pump(&*own_fd(0), &i, Some(&i)));
                }
                if let Ok(o) = o {
                    outputs.push(std::thread::spawn(move || pump(&o, &*own_fd(1), None)));
                }
                if let Ok(e) = e {
                    outputs.push(std::thread::spawn(move || pump(&e, &*own_fd(2), None)));
                }
                None
            }
            Stdio::Tty { slave, conn } => {
                if let (Ok(s), Ok(c)) = (slave.try_clone(), conn.try_clone()) {
                    std::thread::spawn(move || pump(&s, &c, None));
                }
                if let (Ok(s), Ok(c)) = (slave.try_clone(), conn.try_clone()) {
                    outputs.push(std::thread::spawn(move || pump(&c, &s, None)));
                }
                if let Some((rows, cols)) = winsize(slave.as_raw_fd()) {
                    let _ = self.agent.resize(&self.id, &self.exec_id, rows, cols);
                }
                Some(slave.as_raw_fd())
            }
        };

        // A connection of its own for the wait, which blocks for as long as
        // the process runs.
        match Agent::connect(&self.uds, self.agent.timeout()) {
            Ok(waiter) => {
                let (tx, id, exec) = (tx.clone(), self.id.clone(), self.exec_id.clone());
                std::thread::spawn(move || {
                    let _ = tx.send(Event::Exited(waiter.wait(&id, &exec)));
                });
            }
            Err(e) => {
                let _ = tx.send(Event::Exited(Err(e)));
            }
        }

        // From here the relay waits: what it ran to get here (the CLI's
        // parsing, the VM's start, the container's creation) leaves the
        // resident set, its code and its freed heap.
        ironcell_basics::process_memory::trim_heap();
        ironcell_basics::text_pages::TextMappings::of_this_process().trim();
        let outcome = loop {
            match rx.recv() {
                Ok(Event::Exited(Err(e))) => {
                    // A wait cut off because the hypervisor died (the
                    // agent's socket closes with it) names the VM's end as
                    // the cause, whichever of the two was seen first.
                    if let Some(owned) = &mut self.vm {
                        if owned.vm.wait_exit(HYPERVISOR_END_GRACE) {
                            break Err(vm_err(format!(
                                "the VM ended: {e}{}",
                                owned.vm.console_tail()
                            )));
                        }
                    }
                    break Err(e);
                }
                Ok(Event::Exited(r)) => break r,
                Ok(Event::Signal(libc::SIGCHLD)) => {
                    if let Some(owned) = &mut self.vm {
                        if let Err(e) = owned.vm.check_alive() {
                            break Err(vm_err(format!(
                                "the VM ended: {e}{}",
                                owned.vm.console_tail()
                            )));
                        }
                    }
                }
                Ok(Event::Signal(libc::SIGWINCH)) => {
                    if let Some((rows, cols)) = tty_fd.and_then(winsize) {
                        let _ = self.agent.resize(&self.id, &self.exec_id, rows, cols);
                    }
                }
                Ok(Event::Signal(s)) => {
                    if let Err(e) = self.agent.signal(&self.id, &self.exec_id, s, false) {
                        tracing::warn!(signal = s, "cannot forward a signal: {e}");
                    }
                }
                Err(_) => break Err(vm_err("the relay lost its wait")),
            }
        };
        let vm_ended = outcome.is_err();
        if let Some(owned) = &mut self.vm {
            if vm_ended {
                // What is left of the VM (QEMU's vhost-user backends outlive
                // it) goes now, closing the streams it held.
                owned.vm.kill();
            }
        }
        // Everything the process wrote, before its status.
        let drained = std::time::Instant::now() + DRAIN_TIMEOUT;
        for t in outputs {
            while !t.is_finished() && std::time::Instant::now() < drained {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let record = match outcome {
            Ok(w) => ExitRecord {
                code: w.exit_code,
                signal: w.signal,
                oom_killed: w.oom_killed,
                exited_at: now,
                reason: None,
            },
            // The process cannot be asked anymore: reported as killed.
            Err(e) => ExitRecord {
                code: ironcell_basics::exit_status::KILLED as i32,
                signal: libc::SIGKILL as u32,
                oom_killed: false,
                exited_at: now,
                reason: Some(e.to_string()),
            },
        };
        if let Some(f) = &self.exit_file {
            let _ = super::state::write_json(f, &record);
        }
        if let Some(owned) = self.vm.take() {
            shut_down(&self.agent, owned);
        }
        record
    }
}

/// Powers the VM off (through the agent; killed if it does not go) and
/// removes its run directory.
pub fn shut_down(agent: &Agent, mut owned: OwnedVm) {
    if agent.shutdown().is_err() || !owned.vm.wait_exit(Duration::from_secs(5)) {
        owned.vm.kill();
    }
    drop(owned.vm);
    super::remove_run_dir(&owned.run_dir);
}

/// Ends this process the way the guest process ended: by the same signal
/// (its default action, without a core file), else with its exit code.
pub fn exit_as(record: &ExitRecord) -> ! {
    if record.signal > 0 && record.signal < 65 {
        let sig = record.signal as i32;
        // SAFETY: plain system calls on this process; nothing is shared
        // with other threads that could be affected (the process is ending).
        unsafe {
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
        }
    }
    std::process::exit(record.code & 0xff)
}

/// What the forked relay tells its parent: `ok <payload>` or `err <msg>`.
pub struct Forked {
    pub pid: i32,
    /// The payload of `ok`.
    pub report: String,
}

/// Forks a relay. The child runs `setup` (which makes the guest process and
/// returns its relay and a one-line payload), reports, and stands in for
/// the process until it ends; it never returns. The parent gets the
/// child's pid and its payload once `setup` succeeded, or its error.
/// `forked` runs in the parent right after the fork (to record the child's
/// pid before the setup, which may take a while, is done).
pub fn fork(
    setup: impl FnOnce() -> Result<(Relay, String)>,
    forked: impl FnOnce(i32),
) -> Result<Forked> {
    let threads = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim() == "1"))
        })
        .unwrap_or(false);
    if !threads {
        return Err(vm_err(
            "the vm sandbox's relay can only be forked from a single-threaded process",
        ));
    }
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| vm_err(format!("pipe: {e}")))?;
    // SAFETY: the process has one thread (checked above), so the child
    // inherits no lock held by another thread.
    match unsafe { nix::unistd::fork() }.map_err(|e| vm_err(format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(r);
            // Before the relay's threads exist: they share one arena.
            ironcell_basics::process_memory::limit_malloc_arenas();
            let _ = nix::sys::signal::pthread_sigmask(
                SigmaskHow::SIG_SETMASK,
                Some(&SigSet::empty()),
                None,
            );
            let mut report = File::from(w);
            match setup() {
                Ok((relay, payload)) => {
                    let _ = writeln!(report, "ok {payload}");
                    drop(report);
                    let record = relay.run();
                    exit_as(&record)
                }
                Err(e) => {
                    let msg = e.message().replace('\n', " ");
                    let _ = writeln!(report, "err {msg}");
                    std::process::exit(1)
                }
            }
        }
        ForkResult::Parent { child } => {
            drop(w);
            forked(child.as_raw());
            let mut line = String::new();
            let _ = BufReader::new(File::from(r)).read_line(&mut line);
            let line = line.trim_end();
            if let Some(payload) = line.strip_prefix("ok ") {
                return Ok(Forked {
                    pid: child.as_raw(),
                    report: payload.to_string(),
                });
            }
            let status = nix::sys::wait::waitpid(child, None);
            match line.strip_prefix("err ") {
                Some(msg) => Err(vm_err(msg)),
                None => Err(vm_err(format!(
                    "the relay ended before it reported ({status:?})"
                ))),
            }
        }
    }
}
