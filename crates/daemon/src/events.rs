//! Task events, forwarded to the containerd that owns the task.
//!
//! Every task remembers the ttrpc address of its containerd (the shim's
//! `start` tells the daemon). Events go out in order through one queue: a
//! TaskExit must never overtake the TaskStart before it. A containerd that
//! is down costs a few retries, then the event is dropped with a warning
//! (containerd's runc shim does the same).

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
    /// Starts the forwarding task (inside the tokio runtime).
    pub fn start() -> Publisher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward(rx));
        Publisher { tx }
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

async fn forward(mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut clients: HashMap<String, EventsClient> = HashMap::new();
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
            let client = match clients.get(&ev.address) {
                Some(c) => c.clone(),
                None => match Client::connect(&ttrpc_address(&ev.address)).await {
                    Ok(c) => {
                        let c = EventsClient::new(c);
                        clients.insert(ev.address.clone(), c.clone());
                        c
                    }
                    Err(e) => {
                        tracing::debug!(address = %ev.address, error = %e, "cannot reach containerd");
                        continue;
                    }
                },
            };
            let ctx = ttrpc::context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
            match client.forward(ctx, &req).await {
                Ok(_) => {
                    sent = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(address = %ev.address, error = %e, "event not forwarded");
                    clients.remove(&ev.address);
                }
            }
        }
        if !sent {
            tracing::warn!(
                topic = ev.topic,
                address = %ev.address,
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
}
