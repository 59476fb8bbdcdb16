//! The agent's integration tests, on the host: each test starts the real
//! `ironcell-agent` binary listening on unix sockets (control: ttrpc,
//! streams: the stdio stream protocol) with a private state root, and
//! drives it as ironcell on the host will drive it in a VM: containers from
//! the bundled test image, their stdio streams, exec'd processes, signals,
//! terminals, the freezer, statistics, updates, and hostile requests.
//!
//! After every test ([`Agent::finish`]): the agent still answers, and
//! nothing of the test's containers is left (processes under the agent,
//! cgroups `/sys/fs/cgroup/*/ironcell/<id>`, state, bundles, console
//! sockets).
//!
//! Not tested here: `GetOomEvent`. The agent watches cgroup v2's
//! `memory.events`, which this cgroup v1 host does not have; OOM kills are
//! tested in the VM, whose guest mounts cgroup v2.
//!
//! The tests need root (containers need CAP_SYS_ADMIN); without it each
//! one says loudly that it was skipped.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ironcell_protocol::agent::*;
use ironcell_protocol::agent_ttrpc::AgentClient;
use ironcell_protocol::stream::{parse_answer, read_line, StreamHeader, StreamKind};
use ironcell_protocol::ttrpc::{self, context, Code};
use serde_json::{json, Value};

/// No call or stream read of these tests may take longer.
const TIMEOUT: Duration = Duration::from_secs(20);

fn ctx() -> context::Context {
    context::with_duration(TIMEOUT)
}

/// The status code of a failed call (panics when it succeeded).
fn code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message.clone()),
        other => panic!("expected an error status, got {other:?}"),
    }
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(r: ttrpc::Result<T>, want: Code, text: &str) {
    let (c, msg) = code(r);
    assert_eq!(c, want, "status of a call that failed with {msg:?}");
    assert!(msg.contains(text), "want {text:?} in {msg:?}");
    assert!(!msg.contains('\n'), "not one line: {msg:?}");
}

/// The test image's config.json running `args`, with `edit` applied. Its
/// cgroup path is one the agent must replace with its own.
fn spec(args: &[&str], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let image = ironcell_testutil::image();
    let text = fs::read_to_string(image.join("bundle/config.json")).unwrap();
    let mut config: Value = serde_json::from_str(&text).unwrap();
    config["root"]["path"] = json!(image.join("rootfs"));
    config["process"]["args"] = json!(args);
    config["linux"]["cgroupsPath"] = json!("/not-the-agents/cgroup");
    edit(&mut config);
    serde_json::to_vec(&config).unwrap()
}

/// An OCI process (the test image's) running `args`.
fn process(args: &[&str], terminal: bool) -> Vec<u8> {
    let config: Value = serde_json::from_slice(&spec(args, |_| {})).unwrap();
    let mut p = config["process"].clone();
    p["terminal"] = json!(terminal);
    serde_json::to_vec(&p).unwrap()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `(pid, ppid)` of every process.
fn process_table() -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    out
}

/// Every process below `pid`.
fn descendants(pid: i32) -> Vec<i32> {
    let table = process_table();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            table
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// The directories container `id`'s cgroup has in each hierarchy.
fn cgroups_of(id: &str) -> Vec<PathBuf> {
    fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join("ironcell").join(id))
        .filter(|p| p.exists())
        .collect()
}

/// A cgroup v1 controller's file of container `id`.
fn cgroup_file(controller: &str, id: &str, file: &str) -> String {
    let path = Path::new("/sys/fs/cgroup")
        .join(controller)
        .join("ironcell")
        .join(id)
        .join(file);
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[track_caller]
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a stream to its end in a thread.
fn read_all(mut s: UnixStream) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        s.read_to_end(&mut v).expect("stream read");
        v
    })
}

/// Reads from `s` until `want` has appeared in what was read.
#[track_caller]
fn read_until(s: &mut UnixStream, want: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(want) {
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "end of stream before {want:?}, got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A socket with a read timeout is never restarted by the
            // kernel (socket(7)): an interrupted wait is retried here.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "reading for {want:?} (got {:?}): {e}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The stdout and stderr streams of one process, attached.
struct Output {
    stdout: UnixStream,
    stderr: UnixStream,
}

impl Output {
    /// Everything the process writes, as text, once both streams end.
    fn collect(self) -> (String, String) {
        let (o, e) = (read_all(self.stdout), read_all(self.stderr));
        let text = |v: Vec<u8>| String::from_utf8(v).unwrap();
        (text(o.join().unwrap()), text(e.join().unwrap()))
    }
}

/// One agent under test.
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    root: PathBuf,
    streams: PathBuf,
    control: PathBuf,
    client: AgentClient,
    /// The containers this test made (checked for leftovers).
    ids: Vec<String>,
    name: String,
}

impl Agent {
    /// Starts an agent, or returns None (loudly) without root.
    fn start(test: &str) -> Option<Agent> {
        if !ironcell_testutil::need_root(test) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ironcell-agent-test-")
            .tempdir()
            .unwrap();
        let (control, streams, root) = (
            dir.path().join("c.sock"),
            dir.path().join("s.sock"),
            dir.path().join("root"),
        );
        let log = fs::File::create(dir.path().join("agent.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ironcell-agent"))
            .arg("--control")
            .arg(format!("unix:{}", control.display()))
            .arg("--streams")
            .arg(format!("unix:{}", streams.display()))
            .arg("--root")
            .arg(&root)
            .arg("--log-level")
            .arg("info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ironcell-agent");
        let deadline = Instant::now() + TIMEOUT;
        let client = loop {
            if let Some(status) = child.try_wait().unwrap() {
                let log = fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
                panic!("the agent exited ({status}) before it served:\n{log}");
            }
            if let Ok(c) = ttrpc::Client::connect(&format!("unix://{}", control.display())) {
                let c = AgentClient::new(c);
                if c.check(ctx(), &ironcell_protocol::check_request()).is_ok() {
                    break c;
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the agent did not answer within {TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Some(Agent {
            child,
            dir,
            root,
            streams,
            control,
            client,
            ids: Vec::new(),
            name: test.to_string(),
        })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// A unique container id, remembered for the leftover checks.
    fn id(&mut self, prefix: &str) -> String {
        let id = ironcell_testutil::unique(prefix);
        self.ids.push(id.clone());
        id
    }

    fn create(&self, id: &str, spec_json: Vec<u8>) -> ttrpc::Result<CreateContainerResponse> {
        let req = CreateContainerRequest {
            container_id: id.into(),
            spec_json,
            ..Default::default()
        };
        self.client.create_container(ctx(), &req)
    }

    fn req(id: &str) -> ContainerRequest {
        ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        }
    }

    fn preq(id: &str, exec: &str) -> ProcessRequest {
        ProcessRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        }
    }

    fn start_container(&self, id: &str) -> ttrpc::Result<StartContainerResponse> {
        self.client.start_container(ctx(), &Self::req(id))
    }

    fn state(&self, id: &str) -> ttrpc::Result<(ContainerStatus, i32)> {
        let s = self.client.container_state(ctx(), &Self::req(id))?;
        Ok((s.status.enum_value().unwrap(), s.pid))
    }

    fn delete(&self, id: &str, force: bool) -> ttrpc::Result<Empty> {
        let req = DeleteContainerRequest {
            container_id: id.into(),
            force,
            ..Default::default()
        };
        self.client.delete_container(ctx(), &req)
    }

    fn exec(
        &self,
        id: &str,
        exec: &str,
        process_json: Vec<u8>,
    ) -> ttrpc::Result<ExecProcessResponse> {
        let req = ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            process_json,
            ..Default::default()
        };
        self.client.exec_process(ctx(), &req)
    }

    fn signal(&self, id: &str, exec: &str, signal: u32, all: bool) -> ttrpc::Result<Empty> {
        let req = SignalProcessRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            signal,
            all,
            ..Default::default()
        };
        self.client.signal_process(ctx(), &req)
    }

    fn wait(&self, id: &str, exec: &str) -> ttrpc::Result<WaitProcessResponse> {
        self.client.wait_process(ctx(), &Self::preq(id, exec))
    }

    /// Waits in a thread (on a clone of the connection).
    fn wait_in_thread(
        &self,
        id: &str,
        exec: &str,
    ) -> JoinHandle<ttrpc::Result<WaitProcessResponse>> {
        let client = self.client.clone();
        let req = Self::preq(id, exec);
        std::thread::spawn(move || client.wait_process(ctx(), &req))
    }

    fn resize(&self, id: &str, exec: &str, rows: u32, cols: u32) -> ttrpc::Result<Empty> {
        let req = ResizeTerminalRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            rows,
            cols,
            ..Default::default()
        };
        self.client.resize_terminal(ctx(), &req)
    }

    fn update(&self, id: &str, resources: &[u8]) -> ttrpc::Result<Empty> {
        let req = UpdateContainerRequest {
            container_id: id.into(),
            resources_json: resources.to_vec(),
            ..Default::default()
        };
        self.client.update_container(ctx(), &req)
    }

    /// Opens a stream connection with `line` as its header; the agent's
    /// answer, and the connection when it was `OK`.
    fn stream_raw(&self, line: &[u8]) -> Result<UnixStream, String> {
        let mut s = UnixStream::connect(&self.streams).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(line).unwrap();
        let answer = read_line(&mut s).map_err(|e| format!("no answer: {e}"))?;
        parse_answer(&answer).map(|()| s)
    }

    fn attach(&self, id: &str, exec: &str, kind: StreamKind) -> Result<UnixStream, String> {
        self.attach_as(id, exec, kind, false)
    }

    /// Attaches a stream resumably: it outlives the connection, and a
    /// later resumable attach takes it over.
    fn attach_resumable(&self, id: &str, exec: &str, kind: StreamKind) -> UnixStream {
        let s = self.attach_as(id, exec, kind, true).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s
    }

    fn attach_as(
        &self,
        id: &str,
        exec: &str,
        kind: StreamKind,
        resumable: bool,
    ) -> Result<UnixStream, String> {
        let h = StreamHeader {
            kind,
            container_id: id.into(),
            exec_id: exec.into(),
            resumable,
        };
        self.stream_raw(h.to_line().as_bytes())
    }

    /// Attaches stdout and stderr of a process without a terminal.
    fn output(&self, id: &str, exec: &str) -> Output {
        Output {
            stdout: self.attach(id, exec, StreamKind::Stdout).unwrap(),
            stderr: self.attach(id, exec, StreamKind::Stderr).unwrap(),
        }
    }

    /// Checks that the agent answers and that nothing of the test's
    /// containers is left; then stops the agent.
    fn finish(mut self) {
        let v = self
            .client
            .check(ctx(), &ironcell_protocol::check_request())
            .unwrap();
        ironcell_protocol::check_version(&v).unwrap();
        // A new connection is served too.
        let fresh = AgentClient::new(
            ttrpc::Client::connect(&format!("unix://{}", self.control.display())).unwrap(),
        );
        fresh.guest_details(ctx(), &Empty::new()).unwrap();
        let pid = self.pid();
        eventually("the agent's children to be gone", || {
            descendants(pid).is_empty()
        });
        for id in &self.ids {
            assert_eq!(
                cgroups_of(id),
                Vec::<PathBuf>::new(),
                "cgroups left of {id}"
            );
            assert_code(self.state(id), Code::NOT_FOUND, "does not exist");
        }
        for sub in ["state", "bundles", "c"] {
            let left: Vec<_> = fs::read_dir(self.root.join(sub))
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "left in the agent's {sub}: {left:?}");
        }
        self.ids.clear();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let pid = self.pid();
        if std::thread::panicking() {
            let log = fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
            eprintln!(
                "---- agent log of {} ----\n{log}---- end of agent log ----",
                self.name
            );
        }
        // Whatever a failed test left: its processes, the agent, cgroups.
        for p in descendants(pid) {
            // SAFETY: kill(2) takes plain integers and touches no memory.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for id in &self.ids {
            for cg in cgroups_of(id) {
                let _ = fs::write(cg.join("freezer.state"), "THAWED");
                let procs = fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
                for p in procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: as above.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
                let deadline = Instant::now() + Duration::from_secs(2);
                while fs::remove_dir(&cg).is_err() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

#[test]
fn version_details_and_hostile_control_clients() {
    let Some(agent) = Agent::start("version_details_and_hostile_control_clients") else {
        return;
    };
    let v = agent
        .client
        .check(ctx(), &ironcell_protocol::check_request())
        .unwrap();
    assert_eq!(
        (v.protocol_major, v.protocol_minor),
        (
            ironcell_protocol::PROTOCOL_MAJOR,
            ironcell_protocol::PROTOCOL_MINOR
        )
    );
    assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
    ironcell_protocol::check_version(&v).unwrap();
    // Another major: the agent still answers (refusing is the host's part).
    let other = CheckRequest {
        protocol_major: 99,
        ..Default::default()
    };
    assert_eq!(agent.client.check(ctx(), &other).unwrap().protocol_major, 1);

    let d = agent.client.guest_details(ctx(), &Empty::new()).unwrap();
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(d.kernel_release, release.trim());
    assert!(
        d.mem_total_kib > 0 && d.mem_available_kib <= d.mem_total_kib,
        "{d:?}"
    );
    assert!(d.online_cpus >= 1 && d.agent_rss_kib > 0, "{d:?}");
    assert!(
        d.agent_start_us > 0 && d.agent_ready_us >= d.agent_start_us,
        "{d:?}"
    );
    assert!(d.uptime_us >= d.agent_ready_us, "{d:?}");
    assert_eq!(
        (d.agent_version.as_str(), d.protocol_major),
        (env!("CARGO_PKG_VERSION"), 1)
    );

    // Clients that send half a frame, an oversized frame, garbage, or a
    // frame that is no request, and leave.
    let header = |len: u32, stream: u32, kind: u8| {
        let mut h = Vec::new();
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&stream.to_be_bytes());
        h.extend_from_slice(&[kind, 0]);
        h
    };
    let mut half = header(100, 1, 1);
    half.extend_from_slice(&[0x0a; 20]);
    let mut not_a_request = header(8, 1, 1);
    not_a_request.extend_from_slice(&[0xff; 8]);
    for bytes in [
        half,
        header(64 << 20, 1, 1),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0x00, 0x01, 0x02],
        not_a_request,
        Vec::new(),
    ] {
        let mut s = UnixStream::connect(&agent.control).unwrap();
        s.write_all(&bytes).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let _ = s.read(&mut [0u8; 256]);
    }
    // A client that sends half a frame and stays does not hold up others.
    let mut stays = UnixStream::connect(&agent.control).unwrap();
    stays.write_all(&header(100, 1, 1)[..6]).unwrap();
    // An unknown method.
    let raw = ttrpc::Client::connect(&format!("unix://{}", agent.control.display())).unwrap();
    let unknown = ttrpc::Request {
        service: "ironcell.agent.v1.Agent".into(),
        method: "Nope".into(),
        timeout_nano: TIMEOUT.as_nanos() as i64,
        ..Default::default()
    };
    assert_code(
        raw.request(unknown),
        Code::INVALID_ARGUMENT,
        "does not exist",
    );
    agent.client.guest_details(ctx(), &Empty::new()).unwrap();
    drop(stays);
    agent.finish();
}

#[test]
fn output_is_all_sent_before_wait_answers() {
    let Some(mut agent) = Agent::start("output_is_all_sent_before_wait_answers") else {
        return;
    };
    let id = agent.id("agent-out");
    const SIZE: usize = 1 << 20;
    let script = format!("head -c {SIZE} /dev/zero; echo to-stderr >&2; exit 3");
    let created = agent
        .create(&id, spec(&["sh", "-c", &script], |_| {}))
        .unwrap();
    assert!(created.pid > 0 && created.created_us > 0, "{created:?}");
    assert_eq!(
        agent.state(&id).unwrap(),
        (ContainerStatus::CREATED, created.pid)
    );
    assert!(Path::new(&format!("/proc/{}", created.pid)).exists());
    // The agent's own cgroup, not the host's path from the spec.
    assert!(!cgroups_of(&id).is_empty());
    assert!(!Path::new("/sys/fs/cgroup/pids/not-the-agents").exists());
    let procs = cgroup_file("pids", &id, "cgroup.procs");
    assert_eq!(procs, created.pid.to_string());

    let Output { mut stdout, stderr } = agent.output(&id, "");
    let stderr = read_all(stderr);
    let started = agent.start_container(&id).unwrap();
    assert!(started.started_us >= created.created_us);
    let waiter = agent.wait_in_thread(&id, "");
    // Read slowly, so that the process is long gone before its output is:
    // Wait must not answer before the last byte is sent. Once it has
    // answered, the rest must be in the socket already, up to its end.
    let mut total = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if waiter.is_finished() {
            stdout.set_nonblocking(true).unwrap();
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        panic!("Wait answered with output still unsent ({total} bytes read)")
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            break;
        }
        match stdout.read(&mut buf).unwrap() {
            0 => break,
            n => total += n,
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(total, SIZE);
    let exit = waiter.join().unwrap().unwrap();
    assert_eq!(
        (exit.exit_code, exit.signal, exit.oom_killed),
        (3, 0, false)
    );
    assert!((exit.exited_at_secs - now_secs()).abs() < 60, "{exit:?}");
    assert_eq!(
        String::from_utf8(stderr.join().unwrap()).unwrap(),
        "to-stderr\n"
    );
    // Asked again, the same answer at once.
    assert_eq!(agent.wait(&id, "").unwrap().exit_code, 3);
    assert_eq!(agent.state(&id).unwrap(), (ContainerStatus::STOPPED, 0));
    assert_code(
        agent.start_container(&id),
        Code::FAILED_PRECONDITION,
        "stopped",
    );
    agent.delete(&id, false).unwrap();
    assert!(cgroups_of(&id).is_empty());
    assert_code(agent.wait(&id, ""), Code::NOT_FOUND, "does not exist");
    agent.finish();
}

#[test]
fn streams_attached_late_lose_nothing() {
    let Some(mut agent) = Agent::start("streams_attached_late_lose_nothing") else {
        return;
    };
    let id = agent.id("agent-late");
    agent
        .create(
            &id,
            spec(&["sh", "-c", "echo early; echo warn >&2"], |_| {}),
        )
        .unwrap();
    agent.start_container(&id).unwrap();
    eventually("the container to stop", || {
        agent.state(&id).unwrap().0 == ContainerStatus::STOPPED
    });
    let waiter = agent.wait_in_thread(&id, "");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !waiter.is_finished(),
        "Wait answered before the output was sent"
    );
    let stdout = read_all(agent.attach(&id, "", StreamKind::Stdout).unwrap());
    assert_eq!(stdout.join().unwrap(), b"early\n");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !waiter.is_finished(),
        "Wait answered before stderr was sent"
    );
    let stderr = read_all(agent.attach(&id, "", StreamKind::Stderr).unwrap());
    assert_eq!(stderr.join().unwrap(), b"warn\n");
    assert_eq!(waiter.join().unwrap().unwrap().exit_code, 0);
    agent.delete(&id, false).unwrap();
    agent.finish();
}

#[test]
fn stdin_and_close_stdin() {
    let Some(mut agent) = Agent::start("stdin_and_close_stdin") else {
        return;
    };
    // The init echoes its input; the end of the host's stream is the end
    // of its input.
    let id = agent.id("agent-stdin");
    agent.create(&id, spec(&["cat"], |_| {})).unwrap();
    let mut stdin = agent.attach(&id, "", StreamKind::Stdin).unwrap();
    let out = agent.output(&id, "");
    agent.start_container(&id).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || {
            stdin.write_all(&data).unwrap();
            stdin.shutdown(Shutdown::Write).unwrap();
        })
    };
    let (o, e) = out.collect();
    writer.join().unwrap();
    assert_eq!((o.len(), e.as_str()), (data.len(), ""));
    assert!(o.as_bytes() == data);
    assert_eq!(agent.wait(&id, "").unwrap().exit_code, 0);
    agent.delete(&id, false).unwrap();

    // CloseStdin: of a process whose stdin was never attached, and of one
    // whose stdin is attached (the host's connection stays open).
    let id = agent.id("agent-close");
    agent.create(&id, spec(&["sleep", "1000"], |_| {})).unwrap();
    let init_out = agent.output(&id, "");
    agent.start_container(&id).unwrap();
    agent
        .exec(&id, "unattached", process(&["cat"], false))
        .unwrap();
    let out = agent.output(&id, "unattached");
    agent
        .client
        .close_stdin(ctx(), &Agent::preq(&id, "unattached"))
        .unwrap();
    assert_eq!(out.collect(), (String::new(), String::new()));
    assert_eq!(agent.wait(&id, "unattached").unwrap().exit_code, 0);

    agent
        .exec(&id, "attached", process(&["cat"], false))
        .unwrap();
    let mut stdin = agent.attach(&id, "attached", StreamKind::Stdin).unwrap();
    let Output { mut stdout, stderr } = agent.output(&id, "attached");
    stdout.set_read_timeout(Some(TIMEOUT)).unwrap();
    stdin.write_all(b"abc\n").unwrap();
    read_until(&mut stdout, "abc\n");
    agent
        .client
        .close_stdin(ctx(), &Agent::preq(&id, "attached"))
        .unwrap();
    let rest = read_all(stdout);
    assert_eq!(rest.join().unwrap(), b"");
    assert_eq!(read_all(stderr).join().unwrap(), b"");
    assert_eq!(agent.wait(&id, "attached").unwrap().exit_code, 0);
    // Twice is fine; the init's too.
    agent
        .client
        .close_stdin(ctx(), &Agent::preq(&id, "attached"))
        .unwrap();
    agent
        .client
        .close_stdin(ctx(), &Agent::preq(&id, ""))
        .unwrap();
    assert_code(
        agent.client.close_stdin(ctx(), &Agent::preq(&id, "nope")),
        Code::NOT_FOUND,
        "has no process nope",
    );

    agent.signal(&id, "", libc::SIGKILL as u32, false).unwrap();
    let exit = agent.wait(&id, "").unwrap();
    assert_eq!((exit.exit_code, exit.signal), (137, 9));
    assert_eq!(init_out.collect(), (String::new(), String::new()));
    agent.delete(&id, false).unwrap();
    agent.finish();
}

/// A host process that attached resumably can die and be replaced (as
/// ironcelld is after a SIGKILL): its successor takes the streams over and
/// carries on where it stopped, and the guest process sees nothing of it.
#[test]
fn resumable_streams_are_taken_over_by_the_next_host() {
    let Some(mut agent) = Agent::start("resumable_streams_are_taken_over_by_the_next_host") else {
        return;
    };
    let id = agent.id("agent-resume");
    let script = "read l; echo out $l; echo err $l >&2; sleep 0.5; \
                  echo later; echo later-err >&2; read l; echo out $l; cat; echo end";
    agent
        .create(&id, spec(&["sh", "-c", script], |_| {}))
        .unwrap();
    let attach_all = |agent: &Agent| {
        (
            agent.attach_resumable(&id, "", StreamKind::Stdin),
            agent.attach_resumable(&id, "", StreamKind::Stdout),
            agent.attach_resumable(&id, "", StreamKind::Stderr),
        )
    };
    let (mut stdin, mut stdout, mut stderr) = attach_all(&agent);
    assert!(agent
        .attach(&id, "", StreamKind::Stdout)
        .unwrap_err()
        .contains("only a resumable header takes it over"));
    agent.start_container(&id).unwrap();
    stdin.write_all(b"1\n").unwrap();
    assert_eq!(read_until(&mut stdout, "out 1\n"), "out 1\n");
    assert_eq!(read_until(&mut stderr, "err 1\n"), "err 1\n");
    // The host dies; the process writes while no host is there.
    drop((stdin, stdout, stderr));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(agent.state(&id).unwrap().0, ContainerStatus::RUNNING);
    let (mut stdin, mut stdout, mut stderr) = attach_all(&agent);
    assert_eq!(read_until(&mut stdout, "later\n"), "later\n");
    assert_eq!(read_until(&mut stderr, "later-err\n"), "later-err\n");
    // The dead host's connection did not end the input.
    stdin.write_all(b"2\n").unwrap();
    assert_eq!(read_until(&mut stdout, "out 2\n"), "out 2\n");
    // A take-over while the connection is alive closes the old one.
    let mut next = agent.attach_resumable(&id, "", StreamKind::Stdout);
    assert_eq!(read_all(stdout).join().unwrap(), b"");
    stdin.write_all(b"echoed\n").unwrap();
    assert_eq!(read_until(&mut next, "echoed\n"), "echoed\n");
    // The input ends with CloseStdin only.
    drop(stdin);
    agent
        .client
        .close_stdin(ctx(), &Agent::preq(&id, ""))
        .unwrap();
    assert_eq!(read_all(next).join().unwrap(), b"end\n");
    assert_eq!(read_all(stderr).join().unwrap(), b"");
    assert_eq!(agent.wait(&id, "").unwrap().exit_code, 0);
    // An ended output taken over ends at once; a closed input is refused.
    let ended = agent.attach_resumable(&id, "", StreamKind::Stdout);
    assert_eq!(read_all(ended).join().unwrap(), b"");
    assert!(agent
        .attach_as(&id, "", StreamKind::Stdin, true)
        .unwrap_err()
        .contains("stdin is closed"));
    agent.delete(&id, false).unwrap();

    // An exec'd process's terminal, taken over by the next host.
    let id = agent.id("agent-resume-tty");
    agent.create(&id, spec(&["sleep", "1000"], |_| {})).unwrap();
    let init_out = agent.output(&id, "");
    agent.start_container(&id).unwrap();
    let script = "read x; echo first:$x; sleep 0.5; echo meanwhile; read y; echo second:$y";
    agent
        .exec(&id, "t", process(&["sh", "-c", script], true))
        .unwrap();
    let mut tty = agent.attach_resumable(&id, "t", StreamKind::Tty);
    tty.write_all(b"a\n").unwrap();
    read_until(&mut tty, "first:a");
    drop(tty);
    std::thread::sleep(Duration::from_millis(1500));
    let mut tty = agent.attach_resumable(&id, "t", StreamKind::Tty);
    read_until(&mut tty, "meanwhile");
    tty.write_all(b"b\n").unwrap();
    let rest = String::from_utf8(read_all(tty).join().unwrap()).unwrap();
    assert!(rest.contains("second:b"), "{rest:?}");
    assert_eq!(agent.wait(&id, "t").unwrap().exit_code, 0);

    // A resumable output nobody takes over any more does not hold the
    // container's deletion.
    agent
        .exec(
            &id,
            "gone",
            process(&["sh", "-c", "echo lost; exit 3"], false),
        )
        .unwrap();
    let out = agent.attach_resumable(&id, "gone", StreamKind::Stdout);
    let err = agent.attach_resumable(&id, "gone", StreamKind::Stderr);
    drop((out, err));
    agent.delete(&id, true).unwrap();
    assert_eq!(init_out.collect(), (String::new(), String::new()));
    agent.finish();
}

/// A container that is created but not started has a process of the
/// agent's that is parked before its exec: it must hold no copy of
/// another process's stdin, or that process never sees its input end.
#[test]
fn stdin_ends_while_another_container_is_created() {
    let Some(mut agent) = Agent::start("stdin_ends_while_another_container_is_created") else {
        return;
    };
    let id = agent.id("agent-eof");
    agent.create(&id, spec(&["cat"], |_| {})).unwrap();
    let mut stdin = agent.attach(&id, "", StreamKind::Stdin).unwrap();
    let out = agent.output(&id, "");
    agent.start_container(&id).unwrap();
    let other = agent.id("agent-parked");
    agent.create(&other, spec(&["true"], |_| {})).unwrap();
    stdin.write_all(b"bye\n").unwrap();
    stdin.shutdown(Shutdown::Write).unwrap();
    let waiter = agent.wait_in_thread(&id, "");
    let (o, _) = out.collect();
    assert_eq!(o, "bye\n");
    assert_eq!(waiter.join().unwrap().unwrap().exit_code, 0);
    agent.delete(&id, false).unwrap();
    agent.delete(&other, false).unwrap();
    agent.finish();
}

#[test]
fn terminals_and_resizing() {
    let Some(mut agent) = Agent::start("terminals_and_resizing") else {
        return;
    };
    let id = agent.id("agent-tty");
    let script = "stty size; read x; stty size; echo got:$x; exit 5";
    agent
        .create(
            &id,
            spec(&["sh", "-c", script], |c| {
                c["process"]["terminal"] = json!(true)
            }),
        )
        .unwrap();
    assert!(agent
        .attach(&id, "", StreamKind::Stdout)
        .unwrap_err()
        .contains("has a terminal"));
    assert!(agent
        .attach(&id, "", StreamKind::Stdin)
        .unwrap_err()
        .contains("has a terminal"));
    let mut tty = agent.attach(&id, "", StreamKind::Tty).unwrap();
    assert!(agent
        .attach(&id, "", StreamKind::Tty)
        .unwrap_err()
        .contains("attached already"));
    agent.resize(&id, "", 40, 100).unwrap();
    agent.start_container(&id).unwrap();
    read_until(&mut tty, "40 100");
    agent.resize(&id, "", 50, 132).unwrap();
    tty.write_all(b"go\n").unwrap();
    let waiter = agent.wait_in_thread(&id, "");
    let rest = String::from_utf8(read_all(tty).join().unwrap()).unwrap();
    assert!(
        rest.contains("50 132") && rest.contains("got:go"),
        "{rest:?}"
    );
    let exit = waiter.join().unwrap().unwrap();
    assert_eq!((exit.exit_code, exit.signal), (5, 0));
    agent.delete(&id, false).unwrap();

    // An exec'd process with its own terminal.
    let id = agent.id("agent-tty-exec");
    agent.create(&id, spec(&["sleep", "1000"], |_| {})).unwrap();
    let init_out = agent.output(&id, "");
    agent.start_container(&id).unwrap();
    agent
        .exec(
            &id,
            "t",
            process(&["sh", "-c", "read x; stty size; tty"], true),
        )
        .unwrap();
    assert!(agent
        .attach(&id, "t", StreamKind::Stderr)
        .unwrap_err()
        .contains("has a terminal"));
    let mut tty = agent.attach(&id, "t", StreamKind::Tty).unwrap();
    agent.resize(&id, "t", 33, 77).unwrap();
    assert_code(
        agent.resize(&id, "t", 70_000, 1),
        Code::INVALID_ARGUMENT,
        "out of range",
    );
    assert_code(
        agent.resize(&id, "", 10, 10),
        Code::INVALID_ARGUMENT,
        "no terminal",
    );
    tty.write_all(b"\n").unwrap();
    let out = String::from_utf8(read_all(tty).join().unwrap()).unwrap();
    assert!(
        out.contains("33 77") && out.contains("/dev/pts/"),
        "{out:?}"
    );
    assert_eq!(agent.wait(&id, "t").unwrap().exit_code, 0);
    agent.delete(&id, true).unwrap();
    assert_eq!(init_out.collect(), (String::new(), String::new()));
    agent.finish();
}

#[test]
fn exec_signals_and_processes() {
    let Some(mut agent) = Agent::start("exec_signals_and_processes") else {
        return;
    };
    let id = agent.id("agent-exec");
    let init_pid = agent
        .create(&id, spec(&["sleep", "1000"], |_| {}))
        .unwrap()
        .pid;
    let init_out = agent.output(&id, "");
    assert_code(
        agent.exec(&id, "early", process(&["true"], false)),
        Code::FAILED_PRECONDITION,
        "created",
    );
    agent.start_container(&id).unwrap();
    assert_eq!(
        agent.state(&id).unwrap(),
        (ContainerStatus::RUNNING, init_pid)
    );

    let script = "echo out; echo err >&2; exit 7";
    let e1 = agent
        .exec(&id, "e1", process(&["sh", "-c", script], false))
        .unwrap();
    assert!(e1.pid > 0 && e1.pid != init_pid);
    let out = agent.output(&id, "e1");
    assert_eq!(out.collect(), ("out\n".into(), "err\n".into()));
    let exit = agent.wait(&id, "e1").unwrap();
    assert_eq!((exit.exit_code, exit.signal), (7, 0));
    // The id of a process that ended names the next one given it
    // (containerd reuses an exec id once its process was deleted).
    agent
        .exec(&id, "e1", process(&["sh", "-c", "exit 5"], false))
        .unwrap();
    let _ = agent.output(&id, "e1").collect();
    assert_eq!(agent.wait(&id, "e1").unwrap().exit_code, 5);

    let e2 = agent
        .exec(&id, "e2", process(&["sleep", "1000"], false))
        .unwrap()
        .pid;
    // A running process's id is not given again.
    assert_code(
        agent.exec(&id, "e2", process(&["true"], false)),
        Code::ALREADY_EXISTS,
        "e2",
    );
    let e2_out = agent.output(&id, "e2");
    let pids = agent
        .client
        .list_processes(ctx(), &Agent::req(&id))
        .unwrap()
        .pids;
    assert!(pids.contains(&init_pid) && pids.contains(&e2), "{pids:?}");
    assert!(!pids.contains(&e1.pid), "{pids:?}");
    agent
        .signal(&id, "e2", libc::SIGTERM as u32, false)
        .unwrap();
    let exit = agent.wait(&id, "e2").unwrap();
    assert_eq!((exit.exit_code, exit.signal), (143, 15));
    assert_eq!(e2_out.collect(), (String::new(), String::new()));
    assert_code(
        agent.signal(&id, "e2", libc::SIGTERM as u32, false),
        Code::FAILED_PRECONDITION,
        "not running",
    );
    for bad in [0, 65, u32::MAX] {
        assert_code(
            agent.signal(&id, "", bad, false),
            Code::INVALID_ARGUMENT,
            "out of range",
        );
    }
    // A real-time signal to an exec'd process that waits for it.
    let e3 = agent
        .exec(
            &id,
            "rt",
            process(
                &[
                    "sh",
                    "-c",
                    "trap 'exit 42' 40; echo ready; while :; do sleep 0.05; done",
                ],
                false,
            ),
        )
        .unwrap();
    assert!(e3.pid > 0);
    let Output { mut stdout, stderr } = agent.output(&id, "rt");
    stdout.set_read_timeout(Some(TIMEOUT)).unwrap();
    read_until(&mut stdout, "ready");
    agent.signal(&id, "rt", 40, false).unwrap();
    assert_eq!(agent.wait(&id, "rt").unwrap().exit_code, 42);
    drop((stdout, stderr));

    // Every process of the container, with `all`.
    let e4 = agent
        .exec(&id, "e4", process(&["sleep", "1000"], false))
        .unwrap()
        .pid;
    let e4_out = agent.output(&id, "e4");
    let all = agent.wait_in_thread(&id, "e4");
    agent.signal(&id, "", libc::SIGKILL as u32, true).unwrap();
    let exit = agent.wait(&id, "").unwrap();
    assert_eq!((exit.exit_code, exit.signal), (137, 9));
    assert_eq!(all.join().unwrap().unwrap().signal, 9);
    assert_eq!(init_out.collect(), (String::new(), String::new()));
    assert_eq!(e4_out.collect(), (String::new(), String::new()));
    assert!(!Path::new(&format!("/proc/{e4}")).exists());
    assert_eq!(agent.state(&id).unwrap(), (ContainerStatus::STOPPED, 0));
    assert_code(
        agent.exec(&id, "late", process(&["true"], false)),
        Code::FAILED_PRECONDITION,
        "stopped",
    );
    assert_code(
        agent.signal(&id, "", libc::SIGKILL as u32, false),
        Code::FAILED_PRECONDITION,
        "not running",
    );
    agent.delete(&id, false).unwrap();
    agent.finish();
}

#[test]
fn pause_resume_stats_update_delete() {
    let Some(mut agent) = Agent::start("pause_resume_stats_update_delete") else {
        return;
    };
    let id = agent.id("agent-life");
    let pid = agent
        .create(&id, spec(&["sleep", "1000"], |_| {}))
        .unwrap()
        .pid;
    let out = agent.output(&id, "");
    agent.start_container(&id).unwrap();

    agent
        .client
        .pause_container(ctx(), &Agent::req(&id))
        .unwrap();
    assert_eq!(agent.state(&id).unwrap(), (ContainerStatus::PAUSED, pid));
    assert_eq!(cgroup_file("freezer", &id, "freezer.state"), "FROZEN");
    assert_code(
        agent.client.pause_container(ctx(), &Agent::req(&id)),
        Code::FAILED_PRECONDITION,
        "paused",
    );
    assert_code(
        agent.exec(&id, "frozen", process(&["true"], false)),
        Code::FAILED_PRECONDITION,
        "paused",
    );
    agent
        .client
        .resume_container(ctx(), &Agent::req(&id))
        .unwrap();
    assert_eq!(agent.state(&id).unwrap(), (ContainerStatus::RUNNING, pid));
    assert_eq!(cgroup_file("freezer", &id, "freezer.state"), "THAWED");
    assert_code(
        agent.client.resume_container(ctx(), &Agent::req(&id)),
        Code::FAILED_PRECONDITION,
        "running",
    );

    let s = agent.client.stats(ctx(), &Agent::req(&id)).unwrap();
    assert!(s.pids.current >= 1, "{s:?}");
    assert!(s.memory.usage > 0, "{s:?}");
    assert_eq!(s.memory.limit, 0, "no limit: {s:?}");

    agent
        .update(
            &id,
            br#"{"pids": {"limit": 42}, "memory": {"limit": 67108864}}"#,
        )
        .unwrap();
    assert_eq!(cgroup_file("pids", &id, "pids.max"), "42");
    assert_eq!(
        cgroup_file("memory", &id, "memory.limit_in_bytes"),
        "67108864"
    );
    let s = agent.client.stats(ctx(), &Agent::req(&id)).unwrap();
    assert_eq!((s.pids.limit, s.memory.limit), (42, 67108864), "{s:?}");
    for bad in [&b"{"[..], b"\"text\"", br#"{"pids": {"limit": "many"}}"#] {
        assert_code(agent.update(&id, bad), Code::INVALID_ARGUMENT, "resources");
    }

    assert_code(
        agent.delete(&id, false),
        Code::FAILED_PRECONDITION,
        "use force",
    );
    assert_eq!(agent.state(&id).unwrap().0, ContainerStatus::RUNNING);
    // Forced, while paused: the frozen processes die too, and a Wait
    // already waiting answers.
    agent
        .client
        .pause_container(ctx(), &Agent::req(&id))
        .unwrap();
    let waiter = agent.wait_in_thread(&id, "");
    // (No way to see that the Wait has reached the agent: give it time.)
    std::thread::sleep(Duration::from_millis(200));
    agent.delete(&id, true).unwrap();
    assert_eq!(waiter.join().unwrap().unwrap().signal, 9);
    assert_eq!(out.collect(), (String::new(), String::new()));
    assert!(!Path::new(&format!("/proc/{pid}")).exists());

    // A created container is deleted without force.
    let id = agent.id("agent-created");
    let pid = agent.create(&id, spec(&["true"], |_| {})).unwrap().pid;
    agent.delete(&id, false).unwrap();
    eventually("the created container's process to end", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    agent.finish();
}

/// Deleting a container whose streams were never attached (a host that
/// went away) releases a Wait on it: its output has nowhere to go.
/// A container that joins another's PID namespace (a pod's shared one, the
/// pause container's): its processes see that container's init as PID 1,
/// its init is still the agent's to wait for, and when the init is killed
/// its other processes, which the kernel leaves running there, are killed
/// with it (else they hold its output open, and its wait never answers).
#[test]
fn a_container_in_anothers_pid_namespace_is_waited_for() {
    let Some(mut agent) = Agent::start("a_container_in_anothers_pid_namespace_is_waited_for")
    else {
        return;
    };
    let pod = agent.id("agent-pidpod");
    let created = agent
        .create(&pod, spec(&["sleep", "1000"], |_| {}))
        .unwrap();
    agent.start_container(&pod).unwrap();
    let member = agent.id("agent-pidmember");
    let pod_pid_ns = format!("/proc/{}/ns/pid", created.pid);
    agent
        .create(
            &member,
            spec(&["sh", "-c", "sleep 1000 & wait"], |c| {
                for ns in c["linux"]["namespaces"].as_array_mut().unwrap() {
                    if ns["type"] == "pid" {
                        ns["path"] = json!(pod_pid_ns);
                    }
                }
            }),
        )
        .unwrap();
    agent.start_container(&member).unwrap();
    agent
        .exec(
            &member,
            "e",
            process(&["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline"], false),
        )
        .unwrap();
    let out = agent.output(&member, "e");
    let exec = agent.wait_in_thread(&member, "e");
    let (stdout, stderr) = out.collect();
    assert_eq!(stdout.trim(), "sleep 1000", "PID 1 of the pod: {stderr}");
    assert_eq!(exec.join().unwrap().unwrap().exit_code, 0);

    let init_out = agent.output(&member, "");
    let init = agent.wait_in_thread(&member, "");
    agent.signal(&member, "", 9, false).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !init.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the member's init was never reaped: {}",
            fs::read_to_string(agent.dir.path().join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(init.join().unwrap().unwrap().signal, 9);
    init_out.collect();
    agent.delete(&member, false).unwrap();
    agent.delete(&pod, true).unwrap();
    agent.finish();
}

/// A wait for the exit only answers when the process exits, though its
/// output was never attached (a pod's holder); an ordinary wait still waits
/// for the output, which is all there once attached.
#[test]
fn a_wait_for_the_exit_only_does_not_wait_for_output() {
    let Some(mut agent) = Agent::start("a_wait_for_the_exit_only_does_not_wait_for_output") else {
        return;
    };
    let id = agent.id("agent-exitonly");
    agent
        .create(&id, spec(&["sh", "-c", "echo unread; exit 5"], |_| {}))
        .unwrap();
    let waiting = agent.wait_in_thread(&id, "");
    agent.start_container(&id).unwrap();
    let req = ProcessRequest {
        exit_only: true,
        ..Agent::preq(&id, "")
    };
    let exit = agent.client.wait_process(ctx(), &req).unwrap();
    assert_eq!((exit.exit_code, exit.signal), (5, 0));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiting.is_finished(),
        "a wait answered before the output was sent"
    );
    let (stdout, _) = agent.output(&id, "").collect();
    assert_eq!(stdout, "unread\n");
    assert_eq!(waiting.join().unwrap().unwrap().exit_code, 5);
    agent.delete(&id, false).unwrap();
    agent.finish();
}

#[test]
fn delete_releases_waits_on_unattached_processes() {
    let Some(mut agent) = Agent::start("delete_releases_waits_on_unattached_processes") else {
        return;
    };
    let id = agent.id("agent-noattach");
    agent.create(&id, spec(&["sleep", "1000"], |_| {})).unwrap();
    agent.start_container(&id).unwrap();
    agent
        .exec(&id, "e", process(&["sleep", "1000"], false))
        .unwrap();
    // The host's stdin connection is left open, and ends with the delete.
    let mut stdin = agent.attach(&id, "e", StreamKind::Stdin).unwrap();
    let init = agent.wait_in_thread(&id, "");
    let exec = agent.wait_in_thread(&id, "e");
    std::thread::sleep(Duration::from_millis(200));
    agent.delete(&id, true).unwrap();
    assert_eq!(init.join().unwrap().unwrap().signal, 9);
    assert_eq!(exec.join().unwrap().unwrap().signal, 9);
    eventually("the agent to stop reading the stdin stream", || {
        stdin.write_all(b"x").is_err()
    });
    agent.finish();
}

#[test]
fn bad_requests_are_refused() {
    let Some(mut agent) = Agent::start("bad_requests_are_refused") else {
        return;
    };
    let c = &agent.client;
    // Unknown containers and processes.
    let r = Agent::req("nope");
    let p = Agent::preq("nope", "");
    assert_code(
        agent.start_container("nope"),
        Code::NOT_FOUND,
        "container nope does not exist",
    );
    assert_code(agent.state("nope"), Code::NOT_FOUND, "does not exist");
    assert_code(
        agent.delete("nope", true),
        Code::NOT_FOUND,
        "does not exist",
    );
    assert_code(
        c.pause_container(ctx(), &r),
        Code::NOT_FOUND,
        "does not exist",
    );
    assert_code(
        c.resume_container(ctx(), &r),
        Code::NOT_FOUND,
        "does not exist",
    );
    assert_code(
        c.list_processes(ctx(), &r),
        Code::NOT_FOUND,
        "does not exist",
    );
    assert_code(c.stats(ctx(), &r), Code::NOT_FOUND, "does not exist");
    assert_code(
        agent.update("nope", b"{}"),
        Code::NOT_FOUND,
        "does not exist",
    );
    assert_code(
        agent.exec("nope", "e", process(&["true"], false)),
        Code::NOT_FOUND,
        "does not exist",
    );
    assert_code(
        agent.signal("nope", "", 9, false),
        Code::NOT_FOUND,
        "does not exist",
    );
    assert_code(
        agent.signal("nope", "e", 9, false),
        Code::NOT_FOUND,
        "does not exist",
    );
    assert_code(agent.wait("nope", ""), Code::NOT_FOUND, "does not exist");
    assert_code(
        agent.resize("nope", "", 1, 1),
        Code::NOT_FOUND,
        "does not exist",
    );
    assert_code(c.close_stdin(ctx(), &p), Code::NOT_FOUND, "does not exist");

    // Ids that are no file names.
    for bad in ["../x", "", "a/b", ".hidden", "a b", &"x".repeat(300)] {
        assert_code(
            agent.create(bad, spec(&["true"], |_| {})),
            Code::INVALID_ARGUMENT,
            "container id",
        );
        assert_code(
            agent.start_container(bad),
            Code::INVALID_ARGUMENT,
            "container id",
        );
        assert_code(agent.state(bad), Code::INVALID_ARGUMENT, "container id");
        assert_code(
            agent.delete(bad, true),
            Code::INVALID_ARGUMENT,
            "container id",
        );
        assert_code(agent.wait(bad, ""), Code::INVALID_ARGUMENT, "container id");
        assert_code(
            agent.update(bad, b"{}"),
            Code::INVALID_ARGUMENT,
            "container id",
        );
        assert_code(
            agent.signal(bad, "", 9, true),
            Code::INVALID_ARGUMENT,
            "container id",
        );
    }
    assert!(!agent.root.join("bundles/x").exists() && !agent.dir.path().join("x").exists());

    // Documents that are no spec.
    let id = agent.id("agent-bad");
    for (doc, text) in [
        (b"{".to_vec(), "config.json"),
        (b"[]".to_vec(), "config.json"),
        (b"\xff\xfe".to_vec(), "config.json"),
        (br#"{"ociVersion": 5}"#.to_vec(), "config.json"),
        (Vec::new(), "config.json"),
    ] {
        assert_code(agent.create(&id, doc), Code::INVALID_ARGUMENT, text);
    }
    let huge =
        spec(
            &["true"],
            |c| {
                c["annotations"] = json!({ "padding": "x".repeat(ironcell_protocol::MAX_DOCUMENT) })
            },
        );
    assert_code(
        agent.create(&id, huge),
        Code::INVALID_ARGUMENT,
        "more than the",
    );
    // A spec the engine refuses: nothing of it is left.
    let no_root = spec(&["true"], |c| {
        c["root"]["path"] = json!("/nonexistent/rootfs")
    });
    assert!(agent.create(&id, no_root).is_err());
    assert!(cgroups_of(&id).is_empty());
    assert_code(agent.state(&id), Code::NOT_FOUND, "does not exist");
    assert!(!agent.root.join("bundles").join(&id).exists());
    assert!(!agent.root.join("state").join(&id).exists());

    // A container, and requests about it that are wrong.
    agent.create(&id, spec(&["sleep", "1000"], |_| {})).unwrap();
    assert_code(
        agent.create(&id, spec(&["true"], |_| {})),
        Code::ALREADY_EXISTS,
        "exists already",
    );
    assert_eq!(agent.state(&id).unwrap().0, ContainerStatus::CREATED);
    let out = agent.output(&id, "");
    agent.start_container(&id).unwrap();
    assert_code(
        agent.start_container(&id),
        Code::FAILED_PRECONDITION,
        "running",
    );
    for bad in ["", "../e", "a/b", ".e"] {
        assert_code(
            agent.exec(&id, bad, process(&["true"], false)),
            Code::INVALID_ARGUMENT,
            "exec id",
        );
    }
    assert_code(agent.wait(&id, "../e"), Code::INVALID_ARGUMENT, "exec id");
    assert_code(
        agent.wait(&id, "nope"),
        Code::NOT_FOUND,
        "has no process nope",
    );
    assert_code(
        agent.signal(&id, "nope", 9, false),
        Code::NOT_FOUND,
        "has no process nope",
    );
    assert_code(
        agent.exec(&id, "e", b"{".to_vec()),
        Code::INVALID_ARGUMENT,
        "process",
    );
    assert_code(
        agent.exec(&id, "e", b"{\"cwd\": \"/\"}".to_vec()),
        Code::INVALID_ARGUMENT,
        "missing field",
    );
    assert_code(
        agent.exec(
            &id,
            "e",
            br#"{"cwd": "/", "user": {"uid": 0, "gid": 0}, "args": []}"#.to_vec(),
        ),
        Code::INVALID_ARGUMENT,
        "args",
    );
    let big = vec![b' '; ironcell_protocol::MAX_DOCUMENT + 1];
    assert_code(
        agent.exec(&id, "e", big),
        Code::INVALID_ARGUMENT,
        "more than the",
    );
    // A program that does not exist: the exec fails, the id stays free.
    assert!(agent
        .exec(&id, "e", process(&["/no/such/program"], false))
        .is_err());
    assert_code(agent.wait(&id, "e"), Code::NOT_FOUND, "has no process e");

    // Stream headers that are wrong.
    let h = |kind: &str, c: &str, e: &str| format!("IRONCELL-STREAM 1 {kind} {c} {e}\n");
    for (line, text) in [
        ("GET / HTTP/1.1\n".to_string(), "not an ironcell stream"),
        ("\n".to_string(), "not an ironcell stream"),
        ("IRONCELL-STREAM 2 stdout x -\n".to_string(), "version"),
        (h("stdio", &id, "-"), "unknown stream kind"),
        (h("stdout", "../x", "-"), "container id"),
        (h("stdout", &id, "../e"), "exec id"),
        (h("stdout", "nope", "-"), "container nope does not exist"),
        (h("stdout", &id, "nope"), "has no process nope"),
        (h("stdout", &id, "-"), "attached already"),
        (h("tty", &id, "-"), "has no terminal"),
        (format!("{}\n", "x".repeat(5000)), "line too long"),
        ("IRONCELL-STREAM \u{1b}[2J\n".to_string(), "version"),
    ] {
        let err = agent.stream_raw(line.as_bytes()).unwrap_err();
        assert!(err.contains(text), "{line:?}: want {text:?} in {err:?}");
    }
    // Half a header, and leave; no header at all, and leave.
    for partial in [&b"IRONCELL-STREAM 1 std"[..], b""] {
        let mut s = UnixStream::connect(&agent.streams).unwrap();
        s.write_all(partial).unwrap();
    }
    // stdin is attached once too; the streams that are attached still work.
    let _stdin = agent.attach(&id, "", StreamKind::Stdin).unwrap();
    assert!(agent
        .attach(&id, "", StreamKind::Stdin)
        .unwrap_err()
        .contains("attached already"));

    // An agent that is not a guest's PID 1 leaves its host's network alone.
    let iface = UpdateInterfaceRequest {
        interface: Some(Interface {
            name: "eth0".into(),
            mac: vec![2, 0, 0, 0, 0, 9],
            mtu: 1500,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    assert_code(
        agent.client.update_interface(ctx(), &iface),
        Code::FAILED_PRECONDITION,
        "guest's PID 1",
    );
    assert_code(
        agent
            .client
            .update_routes(ctx(), &UpdateRoutesRequest::default()),
        Code::FAILED_PRECONDITION,
        "guest's PID 1",
    );

    // After all of that, the container is as it was.
    agent.signal(&id, "", libc::SIGKILL as u32, false).unwrap();
    assert_eq!(agent.wait(&id, "").unwrap().signal, 9);
    assert_eq!(out.collect(), (String::new(), String::new()));
    agent.delete(&id, false).unwrap();
    agent.finish();
}

/// Several host connections at once, each creating processes and waiting
/// for them; many Waits blocked on one connection at once; then Shutdown,
/// which (on a host: the agent is not PID 1) kills every container's
/// processes and keeps serving. With threads starting and ending on every
/// side, a create or exec forked from the multi-threaded agent itself
/// hung in about one run in twenty (the cloned child waited for a lock
/// another thread held at the clone); the engine runs in a single-threaded
/// helper process since (src/helper.rs).
#[test]
fn concurrent_connections_waits_and_shutdown() {
    let Some(mut agent) = Agent::start("concurrent_connections_waits_and_shutdown") else {
        return;
    };
    let id = agent.id("agent-many");
    agent.create(&id, spec(&["sleep", "1000"], |_| {})).unwrap();
    let init_out = agent.output(&id, "");
    agent.start_container(&id).unwrap();
    let other = agent.id("agent-many-2");
    agent
        .create(&other, spec(&["sleep", "1000"], |_| {}))
        .unwrap();
    let other_out = agent.output(&other, "");
    agent.start_container(&other).unwrap();

    let agent = std::sync::Arc::new(agent);
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let agent = agent.clone();
            let id = id.clone();
            std::thread::spawn(move || {
                let address = format!("unix://{}", agent.control.display());
                let client = AgentClient::new(ttrpc::Client::connect(&address).unwrap());
                for i in 0..5 {
                    let exec = format!("w{t}-{i}");
                    let req = ExecProcessRequest {
                        container_id: id.clone(),
                        exec_id: exec.clone(),
                        process_json: process(
                            &["sh", "-c", "echo $0; exit $1", &exec, &i.to_string()],
                            false,
                        ),
                        ..Default::default()
                    };
                    client.exec_process(ctx(), &req).unwrap();
                    let out = agent.output(&id, &exec);
                    client.close_stdin(ctx(), &Agent::preq(&id, &exec)).unwrap();
                    assert_eq!(out.collect(), (format!("{exec}\n"), String::new()));
                    let exit = client
                        .wait_process(ctx(), &Agent::preq(&id, &exec))
                        .unwrap();
                    assert_eq!(exit.exit_code, i);
                }
            })
        })
        .collect();
    // Twelve Waits blocked on the one connection, while the workers run.
    let mut sleepers = Vec::new();
    for i in 0..12 {
        let exec = format!("s{i}");
        agent
            .exec(&id, &exec, process(&["sleep", "1000"], false))
            .unwrap();
        let out = agent.output(&id, &exec);
        sleepers.push((agent.wait_in_thread(&id, &exec), out));
    }
    for w in workers {
        w.join().unwrap();
    }
    agent.client.guest_details(ctx(), &Empty::new()).unwrap();
    assert!(sleepers.iter().all(|(w, _)| !w.is_finished()));

    agent.client.shutdown(ctx(), &Empty::new()).unwrap();
    for (w, out) in sleepers {
        assert_eq!(w.join().unwrap().unwrap().signal, 9);
        assert_eq!(out.collect(), (String::new(), String::new()));
    }
    for (c, out) in [(&id, init_out), (&other, other_out)] {
        assert_eq!(agent.wait(c, "").unwrap().signal, 9);
        assert_eq!(out.collect(), (String::new(), String::new()));
        assert_eq!(agent.state(c).unwrap(), (ContainerStatus::STOPPED, 0));
        agent.delete(c, false).unwrap();
    }
    let Ok(agent) = std::sync::Arc::try_unwrap(agent) else {
        panic!("a worker still holds the agent");
    };
    agent.finish();
}

/// Requests for one id in flight at once on several connections: one
/// wins, the others are told the id exists, and the winner is unharmed.
#[test]
fn racing_requests_for_one_id() {
    let Some(mut agent) = Agent::start("racing_requests_for_one_id") else {
        return;
    };
    let id = agent.id("agent-race");
    let address = format!("unix://{}", agent.control.display());
    let race =
        |call: &(dyn Fn(&AgentClient) -> ttrpc::Result<i32> + Sync)| -> Vec<ttrpc::Result<i32>> {
            let clients: Vec<_> = (0..4)
                .map(|_| AgentClient::new(ttrpc::Client::connect(&address).unwrap()))
                .collect();
            let barrier = std::sync::Barrier::new(clients.len());
            std::thread::scope(|s| {
                let runs: Vec<_> = clients
                    .iter()
                    .map(|c| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            call(c)
                        })
                    })
                    .collect();
                runs.into_iter().map(|r| r.join().unwrap()).collect()
            })
        };
    let creates = race(&|c| {
        let req = CreateContainerRequest {
            container_id: id.clone(),
            spec_json: spec(&["sleep", "1000"], |_| {}),
            ..Default::default()
        };
        c.create_container(ctx(), &req).map(|r| r.pid)
    });
    let won: Vec<i32> = creates
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert_eq!(won.len(), 1, "{creates:?}");
    for r in creates.into_iter().filter(|r| r.is_err()) {
        assert_code(r, Code::ALREADY_EXISTS, "exists already");
    }
    assert_eq!(
        agent.state(&id).unwrap(),
        (ContainerStatus::CREATED, won[0])
    );
    let init_out = agent.output(&id, "");
    agent.start_container(&id).unwrap();

    // The process outlives the race: an exited one's id may be used again.
    let execs = race(&|c| {
        let req = ExecProcessRequest {
            container_id: id.clone(),
            exec_id: "same".into(),
            process_json: process(&["sh", "-c", "echo $$; exec sleep 1000"], false),
            ..Default::default()
        };
        c.exec_process(ctx(), &req).map(|r| r.pid)
    });
    let won: Vec<i32> = execs
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert_eq!(won.len(), 1, "{execs:?}");
    for r in execs.into_iter().filter(|r| r.is_err()) {
        assert_code(r, Code::ALREADY_EXISTS, "exists already");
    }
    let output = agent.output(&id, "same");
    agent.signal(&id, "same", 9, false).unwrap();
    let (out, _) = output.collect();
    assert!(!out.trim().is_empty(), "{out:?}");
    assert_eq!(agent.wait(&id, "same").unwrap().signal, 9);
    // Exited: its id is free again (containerd's clients reuse an exec id
    // once they deleted its process), for a process of its own.
    agent
        .exec(&id, "same", process(&["sh", "-c", "exit 4"], false))
        .unwrap();
    let _ = agent.output(&id, "same").collect();
    assert_eq!(agent.wait(&id, "same").unwrap().exit_code, 4);
    agent.delete(&id, true).unwrap();
    assert_eq!(init_out.collect(), (String::new(), String::new()));
    agent.finish();
}
