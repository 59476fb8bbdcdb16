//! Task events, forwarded to the containerd that owns the task.
//!
//! Every task remembers the ttrpc address of its containerd (the shim's
//! `start` tells the daemon). Each containerd address has a forwarder of
//! its own, which sends its events in order: a TaskExit never overtakes the
//! TaskStart before it, and a containerd that is slow or down delays only
//! its own events. A containerd that is down costs a few retries, then the
//! event is dropped with a warning (containerd's runc shim does the same).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Client, EventsClient};
use containerd_shim_protos::topics;
use tokio::sync::mpsc;

use crate::time::timestamp;

const ATTEMPTS: u32 = 3;
const RETRY_DELAY: Duration = Duration::from_millis(200);
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// One event for one containerd.
pub struct Event {
    /// containerd's ttrpc socket (a path, or a `unix://` address).
    pub address: String,
    pub namespace: String,
    pub topic: &'static str,
    pub event: Any,
}

/// containerd's typeurl names an event by its protobuf full name, without
/// the `type.googleapis.com/` prefix that `Any::pack` would add. The name is
/// a constant ([`Topic::TYPE_URL`]): asking rust-protobuf for a message's
/// descriptor builds the reflection tables of its whole file and imports,
/// 410 KiB the daemon then kept for good.
fn to_any<T: Topic>(msg: &T) -> Any {
    Any {
        type_url: T::TYPE_URL.to_string(),
        value: msg.write_to_bytes().unwrap_or_default(),
        ..Default::default()
    }
}

/// The topic and type name of each task event containerd knows.
pub trait Topic: Message {
    const TOPIC: &'static str;
    const TYPE_URL: &'static str;
}

macro_rules! topic {
    ($($t:ident => $c:ident),* $(,)?) => {
        $(impl Topic for $t {
            const TOPIC: &'static str = topics::$c;
            const TYPE_URL: &'static str = concat!("containerd.events.", stringify!($t));
        })*
    };
}

topic! {
    TaskCreate => TASK_CREATE_EVENT_TOPIC,
    TaskStart => TASK_START_EVENT_TOPIC,
    TaskExit => TASK_EXIT_EVENT_TOPIC,
    TaskDelete => TASK_DELETE_EVENT_TOPIC,
    TaskExecAdded => TASK_EXEC_ADDED_EVENT_TOPIC,
    TaskExecStarted => TASK_EXEC_STARTED_EVENT_TOPIC,
    TaskOOM => TASK_OOM_EVENT_TOPIC,
    TaskPaused => TASK_PAUSED_EVENT_TOPIC,
    TaskResumed => TASK_RESUMED_EVENT_TOPIC,
}

/// The sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Event>,
}

impl Publisher {
    /// Starts the dispatcher (inside the tokio runtime).
    pub fn start() -> Publisher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(rx));
        Publisher { tx }
    }

    /// A publisher whose events are handed to the returned receiver, for
    /// tests.
    #[cfg(test)]
    pub fn capture() -> (Publisher, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Publisher { tx }, rx)
    }

    /// Queues `event` for the containerd at `address`; a task with no
    /// known containerd publishes nothing.
    pub fn publish<T: Topic>(&self, address: Option<&str>, namespace: &str, event: T) {
        let Some(address) = address.filter(|a| !a.is_empty()) else {
            return;
        };
        tracing::debug!(topic = T::TOPIC, namespace, "event");
        let _ = self.tx.send(Event {
            address: address.to_string(),
            namespace: namespace.to_string(),
            topic: T::TOPIC,
            event: to_any(&event),
        });
    }
}

fn ttrpc_address(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("unix://{address}")
    }
}

/// Hands each event to its containerd's forwarder, starting one for an
/// address seen for the first time.
async fn dispatch(mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut forwarders: HashMap<String, mpsc::UnboundedSender<Event>> = HashMap::new();
    while let Some(ev) = rx.recv().await {
        let tx = forwarders.entry(ev.address.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(forward(ev.address.clone(), rx));
            tx
        });
        let _ = tx.send(ev);
    }
}

/// Sends one containerd's events, in order, over one connection (made
/// again after a failure).
async fn forward(address: String, mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut client: Option<EventsClient> = None;
    while let Some(ev) = rx.recv().await {
        let mut req = ForwardRequest::new();
        req.envelope = Some(Envelope {
            timestamp: Some(timestamp(SystemTime::now())).into(),
            namespace: ev.namespace.clone(),
            topic: ev.topic.to_string(),
            event: Some(ev.event.clone()).into(),
            ..Default::default()
        })
        .into();
        let mut sent = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(RETRY_DELAY).await;
            }
            let c = match &client {
                Some(c) => c.clone(),
                None => match Client::connect(&ttrpc_address(&address)).await {
                    Ok(c) => {
                        let c = EventsClient::new(c);
                        client = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        tracing::debug!(%address, error = %e, "cannot reach containerd");
                        continue;
                    }
                },
            };
            let ctx = ttrpc::context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
            match c.forward(ctx, &req).await {
                Ok(_) => {
                    sent = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(%address, error = %e, "event not forwarded");
                    client = None;
                }
            }
        }
        if !sent {
            tracing::warn!(
                topic = ev.topic,
                %address,
                "event dropped: containerd did not take it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_containerds_type_names() {
        let exit = TaskExit {
            container_id: "c".into(),
            pid: 5,
            exit_status: 3,
            ..Default::default()
        };
        let any = to_any(&exit);
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        // Every constant name is the protobuf full name (reflection, in the
        // test only).
        fn full_name<T: Topic + containerd_shim_protos::protobuf::MessageFull>() {
            assert_eq!(T::TYPE_URL, T::descriptor().full_name());
        }
        full_name::<TaskCreate>();
        full_name::<TaskStart>();
        full_name::<TaskExit>();
        full_name::<TaskDelete>();
        full_name::<TaskExecAdded>();
        full_name::<TaskExecStarted>();
        full_name::<TaskOOM>();
        full_name::<TaskPaused>();
        full_name::<TaskResumed>();
        assert_eq!(<TaskExit as Topic>::TOPIC, "/tasks/exit");
        let back =
            <TaskExit as containerd_shim_protos::protobuf::Message>::parse_from_bytes(&any.value)
                .unwrap();
        assert_eq!(back.exit_status, 3);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            ttrpc_address("/run/c.sock.ttrpc"),
            "unix:///run/c.sock.ttrpc"
        );
        assert_eq!(ttrpc_address("unix:///x"), "unix:///x");
    }

    /// A containerd that takes events, recording their topics.
    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    #[async_trait::async_trait]
    impl containerd_shim_protos::shim_async::Events for Recorder {
        async fn forward(
            &self,
            _ctx: &ttrpc::asynchronous::TtrpcContext,
            req: ForwardRequest,
        ) -> ttrpc::Result<containerd_shim_protos::api::Empty> {
            self.0.lock().unwrap().push(req.envelope.topic.clone());
            Ok(Default::default())
        }
    }

    /// One containerd that never answers does not hold back another's
    /// events, and each containerd gets its events in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_containerd_does_not_hold_back_another() {
        let dir = tempfile::tempdir().unwrap();
        // Accepts connections and never answers: each forward waits out
        // its timeout.
        let stuck = dir.path().join("stuck.sock");
        let _stuck_listener = std::os::unix::net::UnixListener::bind(&stuck).unwrap();
        let good = dir.path().join("good.sock");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let service = containerd_shim_protos::shim_async::create_events(std::sync::Arc::new(
            Recorder(seen.clone()),
        ));
        let mut server = ttrpc::asynchronous::Server::new()
            .bind(&format!("unix://{}", good.display()))
            .unwrap()
            .register_service(service);
        server.start().await.unwrap();

        let p = Publisher::start();
        let stuck = stuck.to_str().unwrap();
        let good = good.to_str().unwrap();
        p.publish(Some(stuck), "default", TaskStart::default());
        p.publish(Some(good), "default", TaskStart::default());
        p.publish(Some(stuck), "default", TaskExit::default());
        p.publish(Some(good), "default", TaskExit::default());
        let start = std::time::Instant::now();
        while seen.lock().unwrap().len() < 2 && start.elapsed() < FORWARD_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*seen.lock().unwrap(), ["/tasks/start", "/tasks/exit"]);
        assert!(
            start.elapsed() < FORWARD_TIMEOUT,
            "the events waited for the stuck containerd"
        );
        server.shutdown().await.unwrap();
    }
}
