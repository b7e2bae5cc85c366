//! Maintenance passes, on every executor: promote due tasks often, reclaim expired leases
//! every second or so, reconcile every `reconcile_interval_ms`. Each pass is one atomic script,
//! safe to run on every executor at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::metrics::KindLabels;
use crate::worker::Shared;

/// Runs the passes until `stop` is cancelled.
pub(crate) async fn maintain(shared: Arc<Shared>, stop: CancellationToken) {
    let reclaim_every =
        (shared.config.lease() / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let reconcile_every = Duration::from_millis(shared.config.reconcile_interval_ms.max(100));
    let mut last_reclaim = Instant::now();
    let mut last_reconcile = Instant::now();
    loop {
        let mut sleep = Duration::from_millis(200);
        for queue in &shared.config.queues {
            match shared.broker.promote(queue, 1000).await {
                Ok((promoted, next_due)) => {
                    shared.metrics.promoted.inc_by(promoted);
                    if promoted >= 1000 {
                        sleep = Duration::ZERO;
                    } else if let Some(next) = next_due {
                        sleep = sleep.min(next);
                    }
                }
                Err(error) => {
                    shared.metrics.redis_errors.inc();
                    shared.outage.failed("promote", &error);
                    sleep = Duration::from_secs(1);
                }
            }
        }
        if last_reclaim.elapsed() >= reclaim_every {
            last_reclaim = Instant::now();
            for queue in &shared.config.queues {
                reclaim_once(&shared, queue).await;
            }
        }
        if last_reconcile.elapsed() >= reconcile_every {
            last_reconcile = Instant::now();
            for queue in &shared.config.queues {
                reconcile_once(&shared, queue).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep.max(Duration::from_millis(5))) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn reclaim_once(shared: &Shared, queue: &str) {
    match shared
        .broker
        .reclaim(
            queue,
            shared.config.lease(),
            shared.config.max_deliveries,
            1000,
        )
        .await
    {
        Ok(report) => {
            if report.taken_back > 0 {
                shared.metrics.reclaimed.inc_by(report.taken_back);
                tracing::info!(%queue, reclaimed = report.taken_back, "took back tasks whose executor stopped renewing their lease");
            }
            count_repairs(
                shared,
                &[
                    ("stuck_delivery", report.requeued),
                    ("orphan_entry", report.dropped),
                ],
            );
            if report.requeued + report.dropped > 0 {
                tracing::info!(%queue, requeued = report.requeued, dropped = report.dropped, "repaired idle entries: queued again those read but never claimed, dropped those leading nowhere");
            }
        }
        Err(error) => {
            shared.metrics.redis_errors.inc();
            shared.outage.failed("reclaim", &error);
        }
    }
}

async fn reconcile_once(shared: &Shared, queue: &str) {
    let lease = shared.config.lease();
    match shared
        .broker
        .reconcile(queue, 500, (lease * 2).max(Duration::from_secs(60)))
        .await
    {
        Ok(report) => {
            count_repairs(
                shared,
                &[
                    ("running_without_lease", report.running_without_lease),
                    ("reindexed", report.reindexed),
                    ("dead_consumer", report.consumers_removed),
                ],
            );
            if report.total() > 0 {
                tracing::info!(%queue, ?report, "reconciler repaired inconsistent state");
            }
        }
        Err(error) => {
            shared.metrics.redis_errors.inc();
            shared.outage.failed("reconcile", &error);
        }
    }
}

/// Adds repairs to `tarefa_executor_reconciler_repairs_total`, by kind.
fn count_repairs(shared: &Shared, kinds: &[(&str, u64)]) {
    for &(kind, n) in kinds {
        if n > 0 {
            shared
                .metrics
                .repaired
                .get_or_create(&KindLabels {
                    kind: kind.to_owned(),
                })
                .inc_by(n);
        }
    }
}
