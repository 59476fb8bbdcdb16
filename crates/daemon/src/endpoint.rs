//! Task API endpoints: one ttrpc socket per (containerd, namespace).
//!
//! containerd 1.6 and 1.7 send Task API requests without naming their
//! namespace, and the same task id may exist in two namespaces (or under
//! two containerds). So the shim's `start` asks for the endpoint of its
//! containerd and namespace, and the daemon listens on one socket for each
//! pair it has been asked for: every task of that namespace shares it, and
//! it names the containerd that gets the tasks' events. Endpoints are
//! listed in `endpoints.json` so that a restarted daemon serves the same
//! addresses containerd has recorded.
//!
//! The keeper owns the address containerd connects to, `<root>/t/<name>`,
//! and relays to the daemon's `<root>/b/<name>`: containerd's connections
//! outlive the daemon (see `keeper/`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use containerd_shim_protos::sandbox_async::create_sandbox;
use containerd_shim_protos::shim_async::create_task;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use crate::error::validate_namespace;
use crate::keeper::Keeper;
use crate::pod_service::PodService;
use crate::service::Service;
use crate::task::Tasks;

/// Which containerd and namespace an endpoint serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointKey {
    pub containerd: String,
    pub namespace: String,
}

/// FNV-1a: a stable short name for an endpoint's socket (the same after a
/// restart, whatever Rust's hasher does).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl EndpointKey {
    fn name(&self) -> String {
        let mut key = self.containerd.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(self.namespace.as_bytes());
        format!("{:016x}.sock", fnv1a(&key))
    }

    /// The address containerd connects to (the keeper listens there).
    fn socket(&self, root: &Path) -> PathBuf {
        root.join("t").join(self.name())
    }

    /// Where the daemon serves the endpoint behind the keeper.
    fn backend(&self, root: &Path) -> PathBuf {
        root.join("b").join(self.name())
    }
}

/// The Task service under both names containerd uses:
/// `containerd.task.v2.Task` (containerd 1.6, 1.7, and 2.x with a version 2
/// shim) and `containerd.task.v3.Task` (2.x with version 3). The messages
/// are the same.
fn task_services(service: Arc<Service>) -> HashMap<String, ttrpc::asynchronous::Service> {
    let mut all = create_task(service.clone());
    for (name, svc) in create_task(service) {
        all.insert(name.replace(".v3.", ".v2."), svc);
    }
    all
}

pub struct Endpoints {
    root: PathBuf,
    tasks: Arc<Tasks>,
    /// Owns the task addresses (None in tests: the daemon listens itself).
    keeper: Option<Arc<Keeper>>,
    servers: Mutex<HashMap<EndpointKey, (String, ttrpc::asynchronous::Server)>>,
    /// The keeper generation whose keeper fronts every endpoint.
    fronted: watch::Sender<u64>,
}

impl Endpoints {
    pub fn new(root: PathBuf, tasks: Arc<Tasks>, keeper: Option<Arc<Keeper>>) -> Endpoints {
        Endpoints {
            root,
            tasks,
            keeper,
            servers: Mutex::default(),
            fronted: watch::Sender::new(0),
        }
    }

    fn list_file(&self) -> PathBuf {
        self.root.join("endpoints.json")
    }

    /// The address of the endpoint for `key`, listening from now on.
    pub async fn get(&self, key: &EndpointKey) -> Result<String> {
        validate_namespace(&key.namespace)?;
        if key.containerd.is_empty() || key.containerd.contains('\0') {
            anyhow::bail!("invalid containerd address {:?}", key.containerd);
        }
        let mut servers = self.servers.lock().await;
        if let Some((address, _)) = servers.get(key) {
            return Ok(address.clone());
        }
        let public = key.socket(&self.root);
        // Without a keeper the daemon listens on the public address itself.
        let path = match &self.keeper {
            Some(_) => key.backend(&self.root),
            None => public.clone(),
        };
        let dir = path.parent().expect("socket path has a parent");
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let _ = std::fs::remove_file(&path);
        let listen = format!("unix://{}", path.display());
        let address = format!("unix://{}", public.display());
        let service = Arc::new(Service {
            tasks: self.tasks.clone(),
            namespace: key.namespace.clone(),
            containerd: key.containerd.clone(),
        });
        let pods = Arc::new(PodService {
            pods: self.tasks.pods.clone(),
            namespace: key.namespace.clone(),
        });
        let mut server = ttrpc::asynchronous::Server::new()
            .bind(&listen)
            .with_context(|| format!("cannot listen on {}", path.display()))?
            .register_service(task_services(service))
            .register_service(create_sandbox(pods));
        ironcell_basics::owner_only(&path)?;
        server
            .start()
            .await
            .with_context(|| format!("cannot serve {listen}"))?;
        if let Some(k) = &self.keeper {
            k.front(&public, &path).await?;
        }
        tracing::info!(%address, namespace = %key.namespace, containerd = %key.containerd, "endpoint");
        servers.insert(key.clone(), (address.clone(), server));
        let keys: Vec<&EndpointKey> = servers.keys().collect();
        let list = self.list_file();
        let data = serde_json::to_vec(&keys).map_err(std::io::Error::other);
        if let Err(e) = data.and_then(|d| ironcell_basics::atomic_file::write(&list, &d)) {
            tracing::warn!(error = %e, "cannot write {}", list.display());
        }
        Ok(address)
    }

    /// Listens again on every endpoint a previous daemon listed.
    pub async fn restore(&self) {
        let Ok(text) = std::fs::read(self.list_file()) else {
            return;
        };
        let keys: Vec<EndpointKey> = match serde_json::from_slice(&text) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed endpoints.json");
                return;
            }
        };
        for key in keys {
            if let Err(e) = self.get(&key).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot restore an endpoint");
            }
        }
    }

    /// Has the keeper of generation `generation` front every endpoint
    /// again: a keeper that replaces a lost one knows none.
    pub async fn front_again(&self, generation: u64) {
        let Some(k) = &self.keeper else { return };
        let servers = self.servers.lock().await;
        let keys: Vec<EndpointKey> = servers.keys().cloned().collect();
        for key in &keys {
            let (public, backend) = (key.socket(&self.root), key.backend(&self.root));
            match k.front(&public, &backend).await {
                Ok(()) => tracing::info!(address = %public.display(), "endpoint fronted again"),
                Err(e) => {
                    tracing::error!(address = %public.display(), error = %format!("{e:#}"), "cannot front an endpoint again")
                }
            }
        }
        self.fronted.send_replace(generation);
    }

    /// Waits, at most `limit`, until a keeper is connected and fronts every
    /// endpoint; returns whether one does. A shim that returns before
    /// that could leave a daemon no keeper would start again (its own
    /// keeper was lost) or hand containerd an address nobody listens on.
    pub async fn wait_fronted(&self, limit: std::time::Duration) -> bool {
        let Some(k) = &self.keeper else { return true };
        let mut connected = k.connected();
        let mut fronted = self.fronted.subscribe();
        let generations = k.generations();
        let ready = async {
            loop {
                // Connected first: the keeper moves the generation before
                // it says it is connected.
                let up = *connected.borrow_and_update();
                let generation = *generations.borrow();
                if up && *fronted.borrow_and_update() >= generation {
                    return;
                }
                tokio::select! {
                    r = connected.changed() => if r.is_err() { return },
                    r = fronted.changed() => if r.is_err() { return },
                }
            }
        };
        tokio::time::timeout(limit, ready).await.is_ok()
    }

    /// Stops listening and removes the sockets (the list stays).
    pub async fn shutdown(&self) {
        let mut servers = self.servers.lock().await;
        for (key, (_, mut server)) in servers.drain() {
            let _ = server.shutdown().await;
            let _ = std::fs::remove_file(key.backend(&self.root));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_differ_by_namespace_and_containerd() {
        let root = Path::new("/r");
        let a = EndpointKey {
            containerd: "/run/containerd/containerd.sock.ttrpc".into(),
            namespace: "default".into(),
        };
        let mut b = a.clone();
        b.namespace = "k8s.io".into();
        let mut c = a.clone();
        c.containerd = "/other.sock.ttrpc".into();
        assert_ne!(a.socket(root), b.socket(root));
        assert_ne!(a.socket(root), c.socket(root));
        assert_eq!(a.socket(root), a.clone().socket(root));
        // Short enough for sun_path with any reasonable root.
        assert!(a.socket(root).as_os_str().len() < 40);
    }
}
