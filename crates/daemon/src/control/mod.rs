//! The daemon's private control socket, used by `containerd-shim-ironcell-v2`:
//! one JSON request per line, one JSON reply per line.
//!
//! The messages are in [`protocol`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

pub mod protocol;

pub use protocol::{Reply, Request};

use crate::endpoint::{EndpointKey, Endpoints};
use crate::task::Tasks;
use crate::time::nanos;

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;
/// How long a shim's request waits for a lost keeper's replacement (the
/// shim waits 30 s for any reply).
const KEEPER_WAIT: Duration = Duration::from_secs(10);

pub struct Control {
    pub tasks: Arc<Tasks>,
    pub endpoints: Arc<Endpoints>,
}

impl Control {
    /// A shim's request is answered once a keeper fronts the endpoints.
    /// containerd runs the shim's `delete` when its connections through a
    /// keeper broke; answered by a daemon whose keeper is gone, a `delete`
    /// could return, the daemon die, and nothing start the next daemon
    /// (the containers it left would stay until some later shim call).
    pub async fn handle(&self, req: Request) -> Reply {
        ironcell_basics::process_memory::note_activity();
        if !matches!(req, Request::Ping {}) && !self.endpoints.wait_fronted(KEEPER_WAIT).await {
            // Answered anyway: the shim reports what fails next.
            tracing::warn!("no keeper fronts the endpoints: answering a shim without one");
        }
        match req {
            Request::Ping {} => Reply::default(),
            Request::Register {
                namespace,
                id,
                containerd,
            } => {
                let key = EndpointKey {
                    containerd,
                    namespace,
                };
                match self.endpoints.get(&key).await {
                    Ok(address) => {
                        tracing::debug!(%id, %address, "shim start");
                        Reply {
                            address: Some(address),
                            ..Default::default()
                        }
                    }
                    Err(e) => Reply {
                        error: Some(format!("{e:#}")),
                        ..Default::default()
                    },
                }
            }
            Request::Cleanup { namespace, id } => self.cleanup(&namespace, &id).await,
        }
    }

    async fn cleanup(&self, ns: &str, id: &str) -> Reply {
        let now = SystemTime::now();
        let gone = Reply {
            pid: Some(0),
            exit_status: Some(ironcell_basics::exit_status::KILLED),
            exited_at: Some(nanos(now)),
            ..Default::default()
        };
        match self.tasks.remove_given_up(ns, id).await {
            Ok(Some((pid, exit))) => Reply {
                pid: Some(pid.max(0) as u32),
                exit_status: Some(
                    exit.map(|e| e.status)
                        .unwrap_or(ironcell_basics::exit_status::KILLED),
                ),
                exited_at: Some(nanos(exit.map(|e| e.at).unwrap_or(now))),
                ..Default::default()
            },
            Ok(None) => gone,
            Err(e) => Reply {
                error: Some(e.to_string()),
                ..Default::default()
            },
        }
    }

    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let c = self.clone();
                    tokio::spawn(async move { c.connection(stream).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn connection(&self, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut line = String::new();
        loop {
            line.clear();
            let n = match (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_line(&mut line)
                .await
            {
                Ok(n) => n,
                Err(_) => return,
            };
            if n == 0 {
                return;
            }
            let reply = if line.len() > MAX_LINE {
                Reply {
                    error: Some(format!("request longer than {MAX_LINE} bytes")),
                    ..Default::default()
                }
            } else {
                match serde_json::from_str::<Request>(&line) {
                    Ok(req) => self.handle(req).await,
                    Err(e) => Reply {
                        error: Some(format!("bad request: {e}")),
                        ..Default::default()
                    },
                }
            };
            let mut out = serde_json::to_vec(&reply).unwrap_or_default();
            out.push(b'\n');
            if write.write_all(&out).await.is_err() || line.len() > MAX_LINE {
                return;
            }
        }
    }
}
