//! The ttrpc `Agent` service: each call checks its request and maps it
//! onto [`Containers`]; errors carry a status code the host can act on
//! (NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT, FAILED_PRECONDITION,
//! INTERNAL) and a one-line message.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ironcell_container::ContainerError;
use ironcell_oci::Status;
use ironcell_protocol::agent::*;
use ironcell_protocol::agent_ttrpc;
use ironcell_protocol::ttrpc::{self, Code, TtrpcContext};
use ironcell_protocol::{PROTOCOL_MAJOR, PROTOCOL_MINOR};

use crate::containers::Containers;
use crate::{guest, init, network, AgentError, VERSION};

pub struct Agent {
    containers: Arc<Containers>,
    /// PID 1 of a guest (not an agent under test on a host).
    pid1: bool,
    started_us: u64,
    ready_us: AtomicU64,
}

fn status(e: AgentError) -> ttrpc::Error {
    let code = match &e {
        AgentError::NoContainer(_) | AgentError::NoProcess(..) => Code::NOT_FOUND,
        AgentError::Exists(_) => Code::ALREADY_EXISTS,
        AgentError::Invalid(_) | AgentError::Protocol(_) => Code::INVALID_ARGUMENT,
        AgentError::NotRunning(_) => Code::FAILED_PRECONDITION,
        AgentError::Container(c) => match c {
            ContainerError::NotFound(_) => Code::NOT_FOUND,
            ContainerError::Exists(_) => Code::ALREADY_EXISTS,
            ContainerError::WrongStatus { .. } => Code::FAILED_PRECONDITION,
            ContainerError::Id(_) | ContainerError::Bundle(_) | ContainerError::Invalid(_) => {
                Code::INVALID_ARGUMENT
            }
            _ => Code::INTERNAL,
        },
        AgentError::Sys { .. } | AgentError::Io { .. } => Code::INTERNAL,
    };
    let msg = e.to_string().replace('\n', " ");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

type Reply<T> = ttrpc::Result<T>;

impl Agent {
    pub fn new(containers: Arc<Containers>, pid1: bool, started_us: u64) -> Agent {
        Agent {
            containers,
            pid1,
            started_us,
            ready_us: AtomicU64::new(0),
        }
    }

    /// Network changes are a guest's: an agent that is not PID 1 (one
    /// under test on a host) would change its host's network.
    fn guest_network(&self) -> Reply<()> {
        if self.pid1 {
            Ok(())
        } else {
            Err(status(AgentError::NotRunning(
                "the network is changed only by the agent that is a guest's PID 1".into(),
            )))
        }
    }

    /// Serves the `Agent` service on `listener` until the process ends.
    pub fn serve(self: Arc<Self>, listener: OwnedFd) -> Result<ttrpc::Server, AgentError> {
        let service = agent_ttrpc::create_agent(self.clone());
        let mut server = ttrpc::Server::new()
            .add_listener(listener.into_raw_fd())
            .map_err(|e| AgentError::Invalid(format!("ttrpc listener: {e}")))?
            .register_service(service)
            // ttrpc's start() requires min < default < max (idle threads
            // per connection; busy ones, such as a WaitProcess, are extra).
            .set_thread_count_default(2)
            .set_thread_count_min(1)
            .set_thread_count_max(8);
        server
            .start()
            .map_err(|e| AgentError::Invalid(format!("ttrpc server: {e}")))?;
        self.ready_us.store(guest::boottime_us(), Ordering::Relaxed);
        Ok(server)
    }
}

fn exit_reply(exit: crate::process::Exit, oom: bool) -> WaitProcessResponse {
    let (secs, nanos) = exit.at_secs_nanos();
    WaitProcessResponse {
        exit_code: exit.code,
        signal: exit.signal,
        exited_at_secs: secs,
        exited_at_nanos: nanos,
        oom_killed: oom,
        ..Default::default()
    }
}

fn stats_reply(s: ironcell_container::stats::Stats) -> StatsResponse {
    let cpu = CpuStats {
        usage_usec: s.cpu.usage.usage_total / 1000,
        user_usec: s.cpu.usage.usage_user / 1000,
        system_usec: s.cpu.usage.usage_kernel / 1000,
        nr_periods: s.cpu.throttling.periods,
        nr_throttled: s.cpu.throttling.throttled_periods,
        throttled_usec: s.cpu.throttling.throttled_time / 1000,
        ..Default::default()
    };
    let stat = |k: &str| s.memory.stats.get(k).copied().unwrap_or(0);
    // "No limit": u64::MAX from libcgroups on cgroup v2; on v1 the
    // kernel's own maximum, i64::MAX rounded down to a page
    // (9223372036854771712 with 4 KiB pages).
    let limit = match s.memory.memory.limit {
        l if l >= i64::MAX as u64 & !0xffff => 0,
        l => l,
    };
    let memory = MemoryStats {
        usage: s.memory.memory.usage,
        limit,
        max_usage: s.memory.memory.max_usage,
        swap_usage: s.memory.memswap.usage,
        anon: stat("anon"),
        file: stat("file"),
        kernel: stat("kernel"),
        oom_events: stat("oom"),
        oom_kill_events: stat("oom_kill"),
        max_events: stat("max"),
        ..Default::default()
    };
    let pids = PidsStats {
        current: s.pids.current,
        limit: s.pids.limit,
        ..Default::default()
    };
    let sum = |v: &[libcgroups_stat::BlkioDeviceStat], op: &str| {
        v.iter()
            .filter(|d| {
                d.op_type
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case(op))
            })
            .map(|d| d.value)
            .sum()
    };
    let io = IoStats {
        read_bytes: sum(&s.blkio.service_bytes, "read"),
        write_bytes: sum(&s.blkio.service_bytes, "write"),
        read_ios: sum(&s.blkio.serviced, "read"),
        write_ios: sum(&s.blkio.serviced, "write"),
        ..Default::default()
    };
    StatsResponse {
        cpu: Some(cpu).into(),
        memory: Some(memory).into(),
        pids: Some(pids).into(),
        io: Some(io).into(),
        ..Default::default()
    }
}

use ironcell_container::stats as libcgroups_stat;

fn status_of(s: Status) -> ContainerStatus {
    match s {
        Status::Creating => ContainerStatus::UNKNOWN,
        Status::Created => ContainerStatus::CREATED,
        Status::Running => ContainerStatus::RUNNING,
        Status::Paused => ContainerStatus::PAUSED,
        Status::Stopped => ContainerStatus::STOPPED,
    }
}

fn rows_cols(req: &ResizeTerminalRequest) -> Result<(u16, u16), AgentError> {
    let conv = |v: u32, what| {
        u16::try_from(v)
            .map_err(|_| AgentError::Invalid(format!("terminal {what} {v} is out of range")))
    };
    Ok((conv(req.rows, "rows")?, conv(req.cols, "columns")?))
}

impl agent_ttrpc::Agent for Agent {
    fn check(&self, _ctx: &TtrpcContext, req: CheckRequest) -> Reply<CheckResponse> {
        if self.pid1 {
            init::sync_clock(req.host_time_ns);
        }
        Ok(CheckResponse {
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: PROTOCOL_MINOR,
            agent_version: VERSION.to_string(),
            ..Default::default()
        })
    }

    fn guest_details(&self, _ctx: &TtrpcContext, _: Empty) -> Reply<GuestDetailsResponse> {
        let mem = guest::memory();
        Ok(GuestDetailsResponse {
            kernel_release: guest::kernel_release(),
            mem_total_kib: mem.total_kib,
            mem_available_kib: mem.available_kib,
            agent_version: VERSION.to_string(),
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: PROTOCOL_MINOR,
            agent_rss_kib: guest::own_rss_kib(),
            online_cpus: guest::online_cpus(),
            agent_start_us: self.started_us,
            agent_ready_us: self.ready_us.load(Ordering::Relaxed),
            uptime_us: guest::boottime_us(),
            ..Default::default()
        })
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> Reply<CreateContainerResponse> {
        let pid = self
            .containers
            .create(&req.container_id, &req.spec_json)
            .map_err(status)?;
        Ok(CreateContainerResponse {
            pid,
            created_us: guest::boottime_us(),
            ..Default::default()
        })
    }

    fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> Reply<StartContainerResponse> {
        self.containers.start(&req.container_id).map_err(status)?;
        Ok(StartContainerResponse {
            started_us: guest::boottime_us(),
            ..Default::default()
        })
    }

    fn container_state(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> Reply<ContainerStateResponse> {
        let s = self.containers.state(&req.container_id).map_err(status)?;
        Ok(ContainerStateResponse {
            status: status_of(s.status).into(),
            pid: s.pid,
            ..Default::default()
        })
    }

    fn delete_container(&self, _ctx: &TtrpcContext, req: DeleteContainerRequest) -> Reply<Empty> {
        self.containers
            .delete(&req.container_id, req.force)
            .map_err(status)?;
        Ok(Empty::new())
    }

    fn pause_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> Reply<Empty> {
        self.containers.pause(&req.container_id).map_err(status)?;
        Ok(Empty::new())
    }

    fn resume_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> Reply<Empty> {
        self.containers.resume(&req.container_id).map_err(status)?;
        Ok(Empty::new())
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> Reply<ListProcessesResponse> {
        let pids = self.containers.pids(&req.container_id).map_err(status)?;
        Ok(ListProcessesResponse {
            pids,
            ..Default::default()
        })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> Reply<StatsResponse> {
        let s = self.containers.stats(&req.container_id).map_err(status)?;
        Ok(stats_reply(s))
    }

    fn update_container(&self, _ctx: &TtrpcContext, req: UpdateContainerRequest) -> Reply<Empty> {
        self.containers
            .update(&req.container_id, &req.resources_json)
            .map_err(status)?;
        Ok(Empty::new())
    }

    fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> Reply<ExecProcessResponse> {
        let pid = self
            .containers
            .exec(&req.container_id, &req.exec_id, &req.process_json)
            .map_err(status)?;
        Ok(ExecProcessResponse {
            pid,
            ..Default::default()
        })
    }

    fn signal_process(&self, _ctx: &TtrpcContext, req: SignalProcessRequest) -> Reply<Empty> {
        self.containers
            .signal(&req.container_id, &req.exec_id, req.signal, req.all)
            .map_err(status)?;
        Ok(Empty::new())
    }

    fn wait_process(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> Reply<WaitProcessResponse> {
        let (exit, oom) = self
            .containers
            .wait(&req.container_id, &req.exec_id, req.exit_only)
            .map_err(status)?;
        Ok(exit_reply(exit, oom))
    }

    fn resize_terminal(&self, _ctx: &TtrpcContext, req: ResizeTerminalRequest) -> Reply<Empty> {
        let (rows, cols) = rows_cols(&req).map_err(status)?;
        self.containers
            .process(&req.container_id, &req.exec_id)
            .and_then(|p| p.resize(rows, cols))
            .map_err(status)?;
        Ok(Empty::new())
    }

    fn close_stdin(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> Reply<Empty> {
        self.containers
            .process(&req.container_id, &req.exec_id)
            .map_err(status)?
            .close_stdin();
        Ok(Empty::new())
    }

    fn get_oom_event(&self, _ctx: &TtrpcContext, req: OomEventRequest) -> Reply<OomEventResponse> {
        Ok(OomEventResponse {
            container_id: self.containers.oom.next(&req.container_id),
            ..Default::default()
        })
    }

    fn update_interface(&self, _ctx: &TtrpcContext, req: UpdateInterfaceRequest) -> Reply<Empty> {
        self.guest_network()?;
        let iface = req
            .interface
            .as_ref()
            .ok_or_else(|| AgentError::Invalid("the request names no interface".into()))
            .and_then(network::Interface::parse)
            .map_err(status)?;
        network::update_interface(&iface).map_err(status)?;
        Ok(Empty::new())
    }

    fn update_routes(&self, _ctx: &TtrpcContext, req: UpdateRoutesRequest) -> Reply<Empty> {
        self.guest_network()?;
        let routes = network::parse_routes(&req.routes).map_err(status)?;
        network::update_routes(&routes).map_err(status)?;
        Ok(Empty::new())
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _: Empty) -> Reply<Empty> {
        self.containers.kill_all();
        if self.pid1 {
            // The answer goes out first; the reset follows.
            std::thread::spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                init::power_off();
            });
        }
        Ok(Empty::new())
    }
}
