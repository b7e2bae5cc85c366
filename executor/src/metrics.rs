//! The executor's Prometheus metrics.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TaskLabels {
    pub(crate) queue: String,
    pub(crate) task_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    pub(crate) kind: String,
}

type HistogramFamily = Family<TaskLabels, Histogram, fn() -> Histogram>;

/// Counters, gauges and histograms of one executor process.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub(crate) started: Family<TaskLabels, Counter>,
    pub(crate) succeeded: Family<TaskLabels, Counter>,
    pub(crate) failed: Family<TaskLabels, Counter>,
    pub(crate) retried: Family<TaskLabels, Counter>,
    pub(crate) dead: Family<TaskLabels, Counter>,
    pub(crate) cancelled: Family<TaskLabels, Counter>,
    pub(crate) run_seconds: HistogramFamily,
    pub(crate) queue_wait_seconds: HistogramFamily,
    pub(crate) in_flight: Gauge,
    pub(crate) redis_errors: Counter,
    pub(crate) fenced_outcomes: Counter,
    pub(crate) lost_leases: Counter,
    pub(crate) reclaimed: Counter,
    pub(crate) promoted: Counter,
    pub(crate) repaired: Family<KindLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn seconds_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 300.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        macro_rules! counter_family {
            ($name:literal, $help:literal) => {{
                let family = Family::<TaskLabels, Counter>::default();
                registry.register($name, $help, family.clone());
                family
            }};
        }
        macro_rules! counter {
            ($name:literal, $help:literal) => {{
                let counter = Counter::default();
                registry.register($name, $help, counter.clone());
                counter
            }};
        }
        let started = counter_family!("tarefa_executor_started", "Attempts started");
        let succeeded = counter_family!("tarefa_executor_succeeded", "Tasks that succeeded");
        let failed = counter_family!("tarefa_executor_failed", "Attempts that failed");
        let retried = counter_family!(
            "tarefa_executor_retried",
            "Failed attempts that will be retried"
        );
        let dead = counter_family!("tarefa_executor_dead", "Tasks that went dead here");
        let cancelled = counter_family!(
            "tarefa_executor_cancelled",
            "Running tasks stopped by a cancel"
        );
        let run_seconds = Family::<TaskLabels, Histogram>::new_with_constructor(
            seconds_buckets as fn() -> Histogram,
        );
        registry.register(
            "tarefa_executor_run_seconds",
            "Handler run time per attempt",
            run_seconds.clone(),
        );
        let queue_wait_seconds = Family::<TaskLabels, Histogram>::new_with_constructor(
            seconds_buckets as fn() -> Histogram,
        );
        registry.register(
            "tarefa_executor_queue_wait_seconds",
            "Time from a task being queued to an attempt starting",
            queue_wait_seconds.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "tarefa_executor_in_flight",
            "Tasks running now",
            in_flight.clone(),
        );
        let redis_errors = counter!(
            "tarefa_executor_redis_errors",
            "Redis operations that failed"
        );
        let fenced_outcomes = counter!(
            "tarefa_executor_fenced_outcomes",
            "Outcomes rejected because the attempt had lost its lease"
        );
        let lost_leases = counter!(
            "tarefa_executor_lost_leases",
            "Running tasks whose lease was lost"
        );
        let reclaimed = counter!(
            "tarefa_executor_reclaimed",
            "Tasks taken back from vanished executors"
        );
        let promoted = counter!(
            "tarefa_executor_promoted",
            "Scheduled and retrying tasks moved into the stream"
        );
        let repaired = Family::<KindLabels, Counter>::default();
        registry.register(
            "tarefa_executor_reconciler_repairs",
            "Inconsistencies repaired by the reconciler, by kind",
            repaired.clone(),
        );
        Self {
            registry: Arc::new(registry),
            started,
            succeeded,
            failed,
            retried,
            dead,
            cancelled,
            run_seconds,
            queue_wait_seconds,
            in_flight,
            redis_errors,
            fenced_outcomes,
            lost_leases,
            reclaimed,
            promoted,
            repaired,
        }
    }

    /// Everything in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
