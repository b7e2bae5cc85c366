//! The executor's Prometheus metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

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
    /// The per-task families, reached through [`Metrics::for_task`].
    tasks: Arc<TaskFamilies>,
    pub(crate) in_flight: Gauge,
    pub(crate) redis_errors: Counter,
    pub(crate) fenced_outcomes: Counter,
    pub(crate) lost_leases: Counter,
    pub(crate) reclaimed: Counter,
    pub(crate) promoted: Counter,
    pub(crate) repaired: Family<KindLabels, Counter>,
    pub(crate) outcomes_dropped: Counter,
    pub(crate) released: Counter,
    pub(crate) duplicate_deliveries: Counter,
}

/// The families labelled by queue and task type, with handles on their series resolved once
/// per (queue, task type) instead of once per task and metric.
struct TaskFamilies {
    started: Family<TaskLabels, Counter>,
    succeeded: Family<TaskLabels, Counter>,
    failed: Family<TaskLabels, Counter>,
    retried: Family<TaskLabels, Counter>,
    dead: Family<TaskLabels, Counter>,
    cancelled: Family<TaskLabels, Counter>,
    run_seconds: HistogramFamily,
    queue_wait_seconds: HistogramFamily,
    /// Queue, then task type.
    resolved: Mutex<HashMap<String, HashMap<String, Arc<TaskMetrics>>>>,
}

/// The metrics of one (queue, task type), shared by its tasks. Each handle is a clone of its
/// family's own series (it counts into the same one), created on first use as the family's
/// `get_or_create` would, so `/metrics` shows no series before it is first touched.
pub(crate) struct TaskMetrics {
    labels: TaskLabels,
    /// The attempt span's name, `run <task type>`.
    pub(crate) span_name: String,
    started: OnceLock<Counter>,
    succeeded: OnceLock<Counter>,
    failed: OnceLock<Counter>,
    retried: OnceLock<Counter>,
    dead: OnceLock<Counter>,
    cancelled: OnceLock<Counter>,
    run_seconds: OnceLock<Histogram>,
    queue_wait_seconds: OnceLock<Histogram>,
}

/// The handle in `cell`, taken from `family` the first time.
fn series<'a, M, C>(
    cell: &'a OnceLock<M>,
    family: &Family<TaskLabels, M, C>,
    labels: &TaskLabels,
) -> &'a M
where
    M: Clone,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    cell.get_or_init(|| family.get_or_create_owned(labels))
}

/// One task's view of its (queue, task type) metrics.
pub(crate) struct TaskSeries<'a> {
    families: &'a TaskFamilies,
    metrics: &'a TaskMetrics,
}

/// One accessor per metric: its series for this task's (queue, task type), created on first use.
macro_rules! task_series {
    ($($name:ident: $metric:ty),* $(,)?) => {
        impl TaskSeries<'_> {
            $(
                pub(crate) fn $name(&self) -> &$metric {
                    series(&self.metrics.$name, &self.families.$name, &self.metrics.labels)
                }
            )*
        }
    };
}

task_series!(
    started: Counter,
    succeeded: Counter,
    failed: Counter,
    retried: Counter,
    dead: Counter,
    cancelled: Counter,
    run_seconds: Histogram,
    queue_wait_seconds: Histogram,
);

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
        let outcomes_dropped = counter!(
            "tarefa_executor_outcomes_dropped",
            "Outcomes that could not be written (damaged record, or a write failing 5 times for another reason than an outage); the task is reclaimed when its lease runs out"
        );
        let released = counter!(
            "tarefa_executor_released",
            "Attempts handed back uncharged (no handler here, or unfinished at shutdown)"
        );
        let duplicate_deliveries = counter!(
            "tarefa_executor_duplicate_deliveries",
            "Claims delivered again while their attempt ran here, not started twice"
        );
        let repaired = Family::<KindLabels, Counter>::default();
        registry.register(
            "tarefa_executor_reconciler_repairs",
            "Inconsistencies repaired by the reclaim and reconciler passes, by kind",
            repaired.clone(),
        );
        Self {
            registry: Arc::new(registry),
            tasks: Arc::new(TaskFamilies {
                started,
                succeeded,
                failed,
                retried,
                dead,
                cancelled,
                run_seconds,
                queue_wait_seconds,
                resolved: Mutex::default(),
            }),
            in_flight,
            redis_errors,
            fenced_outcomes,
            lost_leases,
            reclaimed,
            promoted,
            repaired,
            outcomes_dropped,
            released,
            duplicate_deliveries,
        }
    }

    /// The metrics of tasks of `task_type` in `queue`: one map lookup per task instead of one
    /// label-set hash per metric touched.
    pub(crate) fn for_task(&self, queue: &str, task_type: &str) -> Arc<TaskMetrics> {
        let mut resolved = self
            .tasks
            .resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(found) = resolved.get(queue).and_then(|types| types.get(task_type)) {
            return found.clone();
        }
        let metrics = Arc::new(TaskMetrics {
            labels: TaskLabels {
                queue: queue.to_owned(),
                task_type: task_type.to_owned(),
            },
            span_name: format!("run {task_type}"),
            started: OnceLock::new(),
            succeeded: OnceLock::new(),
            failed: OnceLock::new(),
            retried: OnceLock::new(),
            dead: OnceLock::new(),
            cancelled: OnceLock::new(),
            run_seconds: OnceLock::new(),
            queue_wait_seconds: OnceLock::new(),
        });
        resolved
            .entry(queue.to_owned())
            .or_default()
            .insert(task_type.to_owned(), metrics.clone());
        metrics
    }

    /// The series of `metrics` (from [`Metrics::for_task`] on these metrics).
    pub(crate) fn series<'a>(&'a self, metrics: &'a TaskMetrics) -> TaskSeries<'a> {
        TaskSeries {
            families: &self.tasks,
            metrics,
        }
    }

    /// Everything in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
