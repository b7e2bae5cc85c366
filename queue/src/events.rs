//! Task-change notifications for `WatchTask`, over Redis pub/sub.
//!
//! Every script that changes tasks publishes, once per call, the ids it changed on the queue's
//! events channel. [`Events`] keeps one subscriber connection per process, subscribed to the
//! channels of the queues that have watchers, and wakes the watchers of each id. Notifications
//! are best-effort (pub/sub drops messages while disconnected), so watchers also re-read their
//! task on a slow timer; the notification only makes them fast.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, mpsc};

use crate::broker::Broker;
use crate::task::TaskId;

#[derive(Default)]
struct Registry {
    /// Task id (`queue:local`) -> (subscription id, waker).
    watchers: HashMap<String, Vec<(u64, Arc<Notify>)>>,
    /// Events channel -> (its queue, how many watchers it serves).
    channels: HashMap<String, (String, usize)>,
    next_id: u64,
}

enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

/// The per-process hub of task-change notifications.
#[derive(Clone)]
pub struct Events {
    registry: Arc<Mutex<Registry>>,
    commands: mpsc::UnboundedSender<Command>,
    keys: crate::keys::Keys,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

/// A watcher's registration; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    events: Events,
    task: String,
    channel: String,
    id: u64,
    notify: Arc<Notify>,
}

impl Subscription {
    /// Waits until the task may have changed, or `patience` passes.
    pub async fn changed(&self, patience: Duration) {
        let _ = tokio::time::timeout(patience, self.notify.notified()).await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut last = false;
        if let Ok(mut registry) = self.events.registry.lock() {
            if let Some(list) = registry.watchers.get_mut(&self.task) {
                list.retain(|(id, _)| *id != self.id);
                if list.is_empty() {
                    registry.watchers.remove(&self.task);
                }
            }
            if let Some((_, count)) = registry.channels.get_mut(&self.channel) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    registry.channels.remove(&self.channel);
                    last = true;
                }
            }
        }
        if last {
            let _ = self
                .events
                .commands
                .send(Command::Unsubscribe(self.channel.clone()));
        }
    }
}

impl Events {
    /// Starts the hub on the current runtime. It reconnects on its own after Redis restarts.
    pub fn start(broker: &Broker) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let events = Self {
            registry: Arc::default(),
            commands,
            keys: broker.keys.clone(),
        };
        tokio::spawn(run(
            broker.client.clone(),
            events.registry.clone(),
            receiver,
        ));
        events
    }

    /// Registers interest in `task`'s changes.
    pub fn subscribe(&self, task: &TaskId) -> Subscription {
        let channel = self.keys.events_channel(task.queue());
        let key = task.to_string();
        let notify = Arc::new(Notify::new());
        let mut first = false;
        let id = match self.registry.lock() {
            Ok(mut registry) => {
                registry.next_id += 1;
                let id = registry.next_id;
                registry
                    .watchers
                    .entry(key.clone())
                    .or_default()
                    .push((id, notify.clone()));
                let entry = registry
                    .channels
                    .entry(channel.clone())
                    .or_insert_with(|| (task.queue().to_owned(), 0));
                entry.1 += 1;
                first = entry.1 == 1;
                id
            }
            Err(_) => 0,
        };
        if first {
            let _ = self.commands.send(Command::Subscribe(channel.clone()));
        }
        Subscription {
            events: self.clone(),
            task: key,
            channel,
            id,
            notify,
        }
    }
}

async fn run(
    client: redis::Client,
    registry: Arc<Mutex<Registry>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut logged = false;
    loop {
        let pubsub = match tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
            .await
        {
            Ok(Ok(pubsub)) => pubsub,
            other => {
                if !logged {
                    let error = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    tracing::warn!(%error, "task events: cannot subscribe; watchers fall back to polling");
                    logged = true;
                }
                // Drain commands meanwhile; the registry is the source of truth on reconnect.
                let deadline = tokio::time::sleep(Duration::from_millis(500));
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        command = commands.recv() => if command.is_none() { return },
                    }
                }
                continue;
            }
        };
        if logged {
            tracing::info!("task events: subscribed again");
            logged = false;
        }
        let (mut sink, mut stream) = pubsub.split();
        let channels: Vec<String> = registry
            .lock()
            .map(|r| r.channels.keys().cloned().collect())
            .unwrap_or_default();
        if !channels.is_empty() && sink.subscribe(channels).await.is_err() {
            continue;
        }
        // Wake everyone once: they re-read, covering anything missed while disconnected.
        wake_all(&registry);
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let result = match command {
                        None => return,
                        Some(Command::Subscribe(channel)) => sink.subscribe(channel).await,
                        Some(Command::Unsubscribe(channel)) => sink.unsubscribe(channel).await,
                    };
                    if result.is_err() {
                        break;
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else { break };
                    let channel = message.get_channel_name().to_owned();
                    let payload: String = message.get_payload().unwrap_or_default();
                    if let Ok(registry) = registry.lock() {
                        let Some((queue, _)) = registry.channels.get(&channel) else { continue };
                        for local in payload.split(' ') {
                            let key = format!("{queue}:{local}");
                            for (_, notify) in registry.watchers.get(&key).into_iter().flatten() {
                                notify.notify_one();
                            }
                        }
                    }
                }
            }
        }
        wake_all(&registry);
    }
}

fn wake_all(registry: &Arc<Mutex<Registry>>) {
    if let Ok(registry) = registry.lock() {
        for (_, notify) in registry.watchers.values().flatten() {
            notify.notify_one();
        }
    }
}
