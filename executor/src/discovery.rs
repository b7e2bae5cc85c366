//! Handler discovery, the executor's side: a cached view of the handlers that announced
//! themselves (`Scheduler.AnnounceHandler`, kept in Redis by the queue layer), refreshed every
//! [`REFRESH_EVERY`], and a [`HandlerSource`] that routes a task type with no handler of its
//! own to one of its live replicas.
//!
//! - **Spreading load**: each attempt goes to the replica with the fewest attempts in flight
//!   from this executor; ties rotate, so idle replicas take turns.
//! - **Dropping dead replicas**: a replica leaves the view when its announcement lapses (no
//!   heartbeat within its TTL) or is withdrawn; and at once, on this executor, when a call to it
//!   ends UNAVAILABLE (connection refused or reset). That attempt fails and is retried as usual;
//!   the replica comes back only with a heartbeat newer than the failure.
//! - **No live replica**: the source does not answer for the type, so the executor hands the
//!   task back uncharged (no attempt, no slot held), waiting 0.5 s doubling to 30 s, and the task
//!   is DEAD only after `--no-handler-retries` such bounces. An attempt whose replica vanished
//!   between the pick and the call waits up to `--discovery-wait-ms` for another, then fails and
//!   is retried with the task's backoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tarefa_queue::{AnnouncedHandler, Broker};
use tokio::sync::watch;

use crate::handler::{Handler, HandlerError, HandlerSource, TaskContext};
use crate::remote::GrpcHandler;

/// How often the view of live handlers is re-read from Redis.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// One announced address, with its connection and this executor's load on it.
struct Replica {
    /// `grpc://HOST:PORT`.
    address: String,
    /// The client, over one lazily connected channel kept while the address is announced.
    handler: GrpcHandler,
    /// Attempts this executor runs on it now.
    in_flight: AtomicUsize,
    /// Its announcement's expiry (Unix ms, Redis's clock) at the last refresh.
    expires_at_ms: AtomicU64,
    /// When set: dropped locally after a failed call, until an announcement expiring later
    /// than this shows it alive again.
    dropped_until_after: Mutex<Option<u64>>,
}

impl Replica {
    fn is_dropped(&self) -> bool {
        self.dropped_until_after
            .lock()
            .map(|d| d.is_some())
            .unwrap_or(false)
    }
}

/// Counts an attempt in flight on a replica for as long as it lives.
struct InFlight(Arc<Replica>);

impl InFlight {
    fn new(replica: Arc<Replica>) -> Self {
        replica.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(replica)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Inner {
    broker: Broker,
    /// Task type -> its live replicas.
    routes: RwLock<HashMap<String, Vec<Arc<Replica>>>>,
    /// Address -> replica, so a channel outlives refreshes.
    replicas: Mutex<HashMap<String, Arc<Replica>>>,
    /// Bumped at every refresh and local drop, to wake attempts waiting for a replica.
    version: watch::Sender<u64>,
    /// Rotates the choice among equally loaded replicas.
    cursor: AtomicUsize,
    /// How long an attempt waits for a replica of its type to be announced.
    wait: Duration,
}

/// The executor's view of announced handlers; cheap to clone.
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes = self.inner.routes.read().map(|r| r.len()).unwrap_or(0);
        f.debug_struct("Discovery")
            .field("task_types", &routes)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// A view over `broker`'s announcements; attempts of an unannounced type wait up to `wait`.
    /// Empty until [`Discovery::refresh`] runs (see [`Discovery::keep_fresh`]).
    pub fn new(broker: Broker, wait: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker,
                routes: RwLock::default(),
                replicas: Mutex::default(),
                version: watch::Sender::new(0),
                cursor: AtomicUsize::new(0),
                wait,
            }),
        }
    }

    /// Refreshes the view every [`REFRESH_EVERY`] until the task is aborted. A failed refresh
    /// (Redis down) keeps the last view and is logged once per outage.
    pub async fn keep_fresh(self) {
        let mut failing = false;
        loop {
            match self.refresh().await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("handler discovery: reading announcements again");
                }
                Ok(()) => {}
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "handler discovery: cannot read announcements; routing by the last view");
                }
                Err(_) => {}
            }
            tokio::time::sleep(REFRESH_EVERY).await;
        }
    }

    /// Re-reads the live announcements and rebuilds the routes.
    pub async fn refresh(&self) -> Result<(), tarefa_queue::Error> {
        let live = self.inner.broker.live_handlers().await?;
        self.apply(live);
        Ok(())
    }

    /// Rebuilds the routes from `live`, keeping the replicas (their connections and local
    /// drops) of addresses still announced.
    fn apply(&self, live: Vec<AnnouncedHandler>) {
        let mut routes: HashMap<String, Vec<Arc<Replica>>> = HashMap::new();
        {
            // A panic while holding the lock cannot leave the map half-updated: recover it.
            let mut replicas = self
                .inner
                .replicas
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut seen = HashMap::with_capacity(live.len());
            for handler in live {
                let address = handler.announcement.address.clone();
                let replica = match replicas.get(&address) {
                    Some(replica) => replica.clone(),
                    None => match GrpcHandler::new(&address) {
                        Ok(grpc) => {
                            tracing::info!(%address, task_types = ?handler.announcement.task_types, "handler discovered");
                            Arc::new(Replica {
                                address: address.clone(),
                                handler: grpc,
                                in_flight: AtomicUsize::new(0),
                                expires_at_ms: AtomicU64::new(0),
                                dropped_until_after: Mutex::new(None),
                            })
                        }
                        Err(error) => {
                            tracing::warn!(%address, %error, "ignoring an unusable handler announcement");
                            continue;
                        }
                    },
                };
                replica
                    .expires_at_ms
                    .store(handler.expires_at_ms, Ordering::Relaxed);
                if let Ok(mut dropped) = replica.dropped_until_after.lock()
                    && dropped.is_some_and(|at| handler.expires_at_ms > at)
                {
                    tracing::info!(%address, "handler announced itself again; routing to it");
                    *dropped = None;
                }
                for task_type in &handler.announcement.task_types {
                    routes
                        .entry(task_type.clone())
                        .or_default()
                        .push(replica.clone());
                }
                seen.insert(address, replica);
            }
            for address in replicas.keys() {
                if !seen.contains_key(address) {
                    tracing::info!(%address, "handler gone (withdrawn or no heartbeat)");
                }
            }
            *replicas = seen;
        }
        if let Ok(mut current) = self.inner.routes.write() {
            *current = routes;
        }
        self.inner.version.send_modify(|v| *v += 1);
    }

    /// The live replica of `task_type` with the fewest attempts in flight, if any.
    fn pick(&self, task_type: &str) -> Option<Arc<Replica>> {
        let routes = self.inner.routes.read().ok()?;
        let candidates: Vec<&Arc<Replica>> = routes
            .get(task_type)?
            .iter()
            .filter(|r| !r.is_dropped())
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let start = self.inner.cursor.fetch_add(1, Ordering::Relaxed) % candidates.len();
        (0..candidates.len())
            .map(|i| candidates[(start + i) % candidates.len()])
            .min_by_key(|r| r.in_flight.load(Ordering::Relaxed))
            .cloned()
    }

    /// Stops routing to `replica` on this executor until it announces itself again.
    fn drop_locally(&self, replica: &Replica) {
        let expiry = replica.expires_at_ms.load(Ordering::Relaxed);
        if let Ok(mut dropped) = replica.dropped_until_after.lock() {
            *dropped = Some(expiry);
        }
        tracing::warn!(address = %replica.address, "handler unreachable; not routing to it until it announces itself again");
        self.inner.version.send_modify(|v| *v += 1);
    }

    /// Waits (up to the discovery wait, the attempt's deadline, or its cancellation) for a live
    /// replica of the context's task type.
    async fn replica_for(&self, context: &TaskContext) -> Option<Arc<Replica>> {
        let mut changes = self.inner.version.subscribe();
        let left = Duration::from_millis(context.deadline_ms().saturating_sub(now_ms()));
        let give_up = tokio::time::sleep(self.inner.wait.min(left));
        tokio::pin!(give_up);
        loop {
            changes.mark_unchanged();
            if let Some(replica) = self.pick(context.task_type()) {
                return Some(replica);
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return None },
                () = &mut give_up => return None,
                () = context.cancelled() => return None,
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl HandlerSource for Discovery {
    /// A task type with a live replica now. One with none is not answered for: the executor
    /// hands the task back uncharged, for later or for an executor that has a handler
    /// (`--no-handler-retries`), instead of holding a slot while it waits.
    fn handler(&self, task_type: &str) -> Option<Arc<dyn Handler>> {
        self.pick(task_type)?;
        Some(Arc::new(Routed {
            discovery: self.clone(),
            task_type: task_type.into(),
        }))
    }
}

/// A task type routed by discovery.
struct Routed {
    discovery: Discovery,
    task_type: Arc<str>,
}

impl Handler for Routed {
    fn call(
        &self,
        payload: Vec<u8>,
        context: TaskContext,
    ) -> BoxFuture<'static, Result<Vec<u8>, HandlerError>> {
        let discovery = self.discovery.clone();
        let task_type = self.task_type.clone();
        Box::pin(async move {
            let Some(replica) = discovery.replica_for(&context).await else {
                return Err(HandlerError::retry(format!(
                    "no live handler for task type {task_type:?}: none announced it (or all \
                     stopped heartbeating) within {} ms; start a handler that serves it, or \
                     route it with --handler",
                    discovery.inner.wait.as_millis()
                )));
            };
            tracing::debug!(task_id = %context.task_id(), address = %replica.address, "routing to a discovered handler");
            let _in_flight = InFlight::new(replica.clone());
            let (result, unreachable) = replica
                .handler
                .call_reporting_reachability(payload, context)
                .await;
            if unreachable {
                discovery.drop_locally(&replica);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use tarefa_queue::{BrokerConfig, HandlerAnnouncement};

    use super::*;

    fn discovery() -> Discovery {
        // Connects lazily: nothing listens there, and nothing here talks to Redis.
        let broker = Broker::new(BrokerConfig::new("redis://127.0.0.1:1")).expect("broker");
        Discovery::new(broker, Duration::from_millis(10))
    }

    fn live(address: &str, types: &[&str], expires_at_ms: u64) -> AnnouncedHandler {
        AnnouncedHandler {
            announcement: HandlerAnnouncement {
                handler_id: format!("id-{address}"),
                address: address.to_owned(),
                task_types: types.iter().map(|t| (*t).to_owned()).collect(),
                queues: Vec::new(),
            },
            expires_at_ms,
        }
    }

    const A: &str = "grpc://127.0.0.1:50001";
    const B: &str = "grpc://127.0.0.1:50002";

    fn picked(discovery: &Discovery, task_type: &str) -> Option<String> {
        discovery.pick(task_type).map(|r| r.address.clone())
    }

    #[tokio::test]
    async fn idle_replicas_take_turns_and_the_least_loaded_is_picked() {
        let d = discovery();
        d.apply(vec![live(A, &["t"], 10), live(B, &["t", "u"], 10)]);
        let turns: HashSet<_> = (0..4).filter_map(|_| picked(&d, "t")).collect();
        assert_eq!(turns.len(), 2, "both idle replicas are used: {turns:?}");
        assert_eq!(picked(&d, "u").as_deref(), Some(B));
        assert_eq!(picked(&d, "nobody"), None);

        let busy = d.pick("t").expect("a replica");
        let _in_flight = InFlight::new(busy.clone());
        for _ in 0..4 {
            assert_ne!(picked(&d, "t"), Some(busy.address.clone()));
        }
    }

    #[tokio::test]
    async fn a_dropped_replica_returns_only_with_a_newer_announcement() {
        let d = discovery();
        d.apply(vec![live(A, &["t"], 10), live(B, &["t"], 10)]);
        let a = d.inner.replicas.lock().expect("replicas")[A].clone();
        d.drop_locally(&a);
        for _ in 0..4 {
            assert_eq!(picked(&d, "t").as_deref(), Some(B));
        }
        // The same announcement (no heartbeat since): still dropped.
        d.apply(vec![live(A, &["t"], 10), live(B, &["t"], 11)]);
        assert!((0..4).all(|_| picked(&d, "t").as_deref() == Some(B)));
        // A heartbeat after the drop: routed to again.
        d.apply(vec![live(A, &["t"], 12), live(B, &["t"], 12)]);
        assert!((0..4).any(|_| picked(&d, "t").as_deref() == Some(A)));
        // Withdrawn or lapsed: gone.
        d.apply(vec![live(B, &["t"], 13)]);
        assert!((0..4).all(|_| picked(&d, "t").as_deref() == Some(B)));
        d.apply(Vec::new());
        assert_eq!(picked(&d, "t"), None);
    }
}
