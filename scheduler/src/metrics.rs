//! The scheduler's Prometheus metrics: what this process did (submits, rejections) plus, at
//! scrape time, every queue's depth and age read from Redis (the same for all schedulers).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most (queue, task type) series of `tarefa_scheduler_submitted`; past it, `_other_`.
pub const MAX_TASK_SERIES: usize = 1000;
/// The label value of the series that counts everything past [`MAX_TASK_SERIES`].
const OTHER: &str = "_other_";

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::error::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    queue: String,
    task_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    port: String,
    code: String,
}

/// One audited admin action. `token` is a configured name (or `anonymous`), so the series
/// are as many as the tokens, never one per caller-chosen value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminLabels {
    action: String,
    via: String,
    token: String,
    outcome: String,
}

/// Counters of this scheduler process.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    submitted: Family<TaskLabels, Counter>,
    /// Distinct series in `submitted`.
    task_series: Arc<AtomicUsize>,
    rejected: Family<CodeLabels, Counter>,
    auth_refused: Family<RefusedLabels, Counter>,
    admin_actions: Family<AdminLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh counters.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let submitted = Family::<TaskLabels, Counter>::default();
        registry.register(
            "tarefa_scheduler_submitted",
            "Tasks accepted by this scheduler",
            submitted.clone(),
        );
        let rejected = Family::<CodeLabels, Counter>::default();
        registry.register(
            "tarefa_scheduler_rejected",
            "Submits rejected by this scheduler, by gRPC status code",
            rejected.clone(),
        );
        let auth_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "tarefa_scheduler_auth_refused",
            "Calls refused for missing or insufficient credentials, by port and code",
            auth_refused.clone(),
        );
        let admin_actions = Family::<AdminLabels, Counter>::default();
        registry.register(
            "tarefa_scheduler_admin_actions",
            "Admin actions (cancel, retry, pause, resume, purge) by token and outcome",
            admin_actions.clone(),
        );
        Self {
            registry: Arc::new(registry),
            submitted,
            task_series: Arc::default(),
            rejected,
            auth_refused,
            admin_actions,
        }
    }

    pub(crate) fn submitted(&self, queue: &str, task_type: &str, n: u64) {
        let labels = TaskLabels {
            queue: queue.to_owned(),
            task_type: task_type.to_owned(),
        };
        // Callers choose queue and type names: past MAX_TASK_SERIES pairs, new ones are
        // counted together, so a client cannot grow /metrics without bound.
        let labels = if self.task_series.load(Ordering::Relaxed) < MAX_TASK_SERIES
            || self.submitted.get(&labels).is_some()
        {
            if self.submitted.get(&labels).is_none() {
                self.task_series.fetch_add(1, Ordering::Relaxed);
            }
            labels
        } else {
            TaskLabels {
                queue: OTHER.to_owned(),
                task_type: OTHER.to_owned(),
            }
        };
        self.submitted.get_or_create(&labels).inc_by(n);
    }

    pub(crate) fn rejected(&self, error: &Error) {
        self.rejected
            .get_or_create(&CodeLabels {
                code: format!("{:?}", error.code()),
            })
            .inc();
    }

    pub(crate) fn auth_refused(&self, port: &str, code: tonic::Code) {
        self.auth_refused
            .get_or_create(&RefusedLabels {
                port: port.to_owned(),
                code: format!("{code:?}"),
            })
            .inc();
    }

    /// Records an admin action in the audit log (target `tarefa::audit`) and its counter.
    pub(crate) fn admin_action(&self, action: &AdminAction<'_>, outcome: &str) {
        tracing::info!(
            target: "tarefa::audit",
            who = %action.who,
            action = action.action,
            via = action.via,
            queue = action.queue,
            task_id = action.task_id.unwrap_or(""),
            outcome,
            "admin action"
        );
        self.admin_actions
            .get_or_create(&AdminLabels {
                action: action.action.to_owned(),
                via: action.via.to_owned(),
                token: action.who.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The process counters in Prometheus text format (without the final `# EOF`).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submitted_series_are_bounded() {
        let metrics = Metrics::new();
        for i in 0..MAX_TASK_SERIES + 50 {
            metrics.submitted("q", &format!("type{i}"), 1);
        }
        metrics.submitted("q", "type0", 1);
        let text = metrics.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("tarefa_scheduler_submitted_total{"))
            .count();
        assert_eq!(series, MAX_TASK_SERIES + 1, "the cap plus _other_");
        assert!(text.contains("task_type=\"_other_\"} 50"), "{text}");
        assert!(text.contains("task_type=\"type0\"} 2"));
    }
}

/// What an audited admin action was.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdminAction<'a> {
    /// The caller's token name (or certificate identity, or `anonymous`).
    pub who: &'a str,
    /// `cancel`, `retry`, `pause`, `resume`, `purge-dead`, `retry-dead` (or the RPC's name
    /// when the gate refused it before its handler ran).
    pub action: &'a str,
    /// `grpc` or `dashboard`.
    pub via: &'static str,
    /// The queue acted on.
    pub queue: &'a str,
    /// The task acted on, if one.
    pub task_id: Option<&'a str>,
}

/// A metric name, its help, and how to read it from a queue's stats.
type Series = (
    &'static str,
    &'static str,
    fn(&tarefa_queue::QueueStats) -> u64,
);

/// Appends gauges of every queue, read from Redis, in Prometheus text format.
pub(crate) fn encode_queues(text: &mut String, stats: &[tarefa_queue::QueueStats]) {
    let gauges: [Series; 6] = [
        ("tarefa_queue_queued", "Tasks waiting in the stream", |s| {
            s.queued
        }),
        ("tarefa_queue_running", "Tasks running under a lease", |s| {
            s.running
        }),
        (
            "tarefa_queue_scheduled",
            "Tasks waiting for their run time",
            |s| s.scheduled,
        ),
        (
            "tarefa_queue_retrying",
            "Tasks waiting for a retry backoff",
            |s| s.retrying,
        ),
        ("tarefa_queue_dead", "Dead tasks kept for inspection", |s| {
            s.dead
        }),
        ("tarefa_queue_paused", "1 when the queue is paused", |s| {
            u64::from(s.paused)
        }),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(text, "# HELP {name} {help}.\n# TYPE {name} gauge");
        for s in stats {
            let _ = writeln!(text, "{name}{{queue=\"{}\"}} {}", s.name, value(s));
        }
    }
    let _ = writeln!(
        text,
        "# HELP tarefa_queue_oldest_waiting_seconds Age of the oldest task waiting in the stream.\n\
         # TYPE tarefa_queue_oldest_waiting_seconds gauge"
    );
    for s in stats {
        let _ = writeln!(
            text,
            "tarefa_queue_oldest_waiting_seconds{{queue=\"{}\"}} {}",
            s.name,
            s.oldest_waiting_ms as f64 / 1000.0
        );
    }
    let totals: [Series; 4] = [
        (
            "tarefa_tasks_submitted",
            "Tasks submitted to the queue, all schedulers",
            |s| s.submitted_total,
        ),
        (
            "tarefa_tasks_succeeded",
            "Tasks that succeeded, all executors",
            |s| s.succeeded_total,
        ),
        (
            "tarefa_attempts_failed",
            "Attempts that failed, all executors",
            |s| s.failed_total,
        ),
        (
            "tarefa_tasks_dead",
            "Tasks that went dead, all executors",
            |s| s.dead_total,
        ),
    ];
    for (name, help, value) in totals {
        let _ = writeln!(
            text,
            "# HELP {name}_total {help}.\n# TYPE {name}_total counter"
        );
        for s in stats {
            let _ = writeln!(text, "{name}_total{{queue=\"{}\"}} {}", s.name, value(s));
        }
    }
}
