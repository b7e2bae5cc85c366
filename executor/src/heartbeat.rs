//! The lease heartbeat: every heartbeat interval, per queue, renews the leases of the attempts
//! this executor holds (exactly the registered ones, by task and fencing token), records it as
//! alive with its lease, and learns which attempts were cancelled or lost and whether the queue
//! is paused. It also trims the finished entries the executor's writes left in the streams.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::leases::StopReason;
use crate::worker::Shared;

/// Beats until `stop` is cancelled.
pub(crate) async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let interval = shared.config.heartbeat_interval();
    loop {
        for queue in &shared.config.queues {
            let held = shared.leases.held_in(queue);
            let reply = shared
                .broker
                .renew(
                    queue,
                    &shared.executor_id,
                    &shared.host,
                    shared.config.lease(),
                    shared.config.max_deliveries,
                    &held,
                )
                .await;
            match reply {
                Ok(reply) => {
                    shared.outage.succeeded();
                    shared.set_paused(queue, reply.paused);
                    shared.leases.stop(&reply.cancelled, StopReason::Cancelled);
                    shared.leases.stop(&reply.lost, StopReason::LeaseLost);
                }
                Err(error) => {
                    shared.metrics.redis_errors.inc();
                    shared.outage.failed("heartbeat", &error);
                }
            }
        }
        // Finished entries this executor acknowledged and its writes did not trim yet (they
        // trim every so many outcomes): trimmed here, so a queue at rest keeps none for longer
        // than a beat. (Not in the writer: a timer per wait for outcomes cost it ~9 % more CPU
        // per task.)
        if shared.broker.has_untrimmed()
            && let Err(error) = shared.broker.trim_finished(&shared.executor_id).await
        {
            tracing::debug!(%error, "trimming finished entries failed; the next write or beat trims them");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}
