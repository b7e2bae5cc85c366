//! The outcome writer: group commit for outcomes. Every outcome waiting at that moment goes in
//! one script call per queue; each attempt is finished (lease registration, turn and span
//! dropped) once its outcome is in Redis, or is known to be moot.
//!
//! A failed write is retried, and what a failure may cost is bounded: while Redis is
//! unreachable everything is retried with backoff (leases survive the outage, see
//! `reclaim.lua`); an outcome that fails for any other reason (a script error on a damaged key)
//! is retried on its own, apart from the others, and dropped after
//! [`MAX_DETERMINISTIC_FAILURES`] tries with an ERROR: its lease then runs out and the task is
//! reclaimed. One bad outcome never holds up the rest.

use std::sync::Arc;
use std::time::Duration;

use tarefa_queue::{Completion, Written};
use tokio::sync::mpsc;

use crate::attempt::Finished;
use crate::worker::Shared;

/// Most outcomes written by one script call.
pub(crate) const OUTCOME_BATCH: usize = 256;
/// Tries for an outcome whose write fails for another reason than Redis being unreachable.
pub(crate) const MAX_DETERMINISTIC_FAILURES: u32 = 5;

/// An outcome still to write, with how often its write failed for a reason other than an
/// outage.
struct Unwritten {
    finished: Finished,
    failures: u32,
}

/// Writes outcomes until every sender (the readers and every attempt) is gone and nothing is
/// left to write.
pub(crate) async fn write_outcomes(shared: Arc<Shared>, mut receiver: mpsc::Receiver<Finished>) {
    let mut waiting: Vec<Unwritten> = Vec::new();
    let mut incoming = Vec::with_capacity(OUTCOME_BATCH);
    let mut delay = Duration::from_millis(50);
    let mut closed = false;
    loop {
        if waiting.is_empty() {
            if closed || receiver.recv_many(&mut incoming, OUTCOME_BATCH).await == 0 {
                return;
            }
            // Group commit: let the attempts that are about to finish (woken with this one)
            // hand over their outcomes too, so a script call carries a batch. One yield costs
            // microseconds, never a timer's millisecond.
            if incoming.len() < OUTCOME_BATCH {
                tokio::task::yield_now().await;
            }
        }
        while waiting.len() + incoming.len() < OUTCOME_BATCH {
            match receiver.try_recv() {
                Ok(item) => incoming.push(item),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        waiting.extend(incoming.drain(..).map(|finished| Unwritten {
            finished,
            failures: 0,
        }));
        // Outcomes that already failed on their own go alone, so they cannot fail the others.
        let (suspects, healthy): (Vec<_>, Vec<_>) =
            waiting.drain(..).partition(|item| item.failures > 0);
        let mut groups: Vec<Vec<Unwritten>> = suspects.into_iter().map(|s| vec![s]).collect();
        if !healthy.is_empty() {
            groups.push(healthy);
        }
        let mut outage = false;
        for group in groups {
            let completions: Vec<&Completion> =
                group.iter().map(|item| &item.finished.completion).collect();
            let results = shared
                .broker
                .complete(&shared.executor_id, &completions)
                .await;
            for (mut item, result) in group.into_iter().zip(results) {
                match result {
                    Ok(written) => {
                        shared.outage.succeeded();
                        finish(&shared, item.finished, written);
                    }
                    Err(error) if error.is_unavailable() => {
                        outage = true;
                        shared.metrics.redis_errors.inc();
                        shared.outage.failed("write outcomes", &error);
                        waiting.push(item);
                    }
                    Err(error) => {
                        shared.metrics.redis_errors.inc();
                        item.failures += 1;
                        if item.failures >= MAX_DETERMINISTIC_FAILURES {
                            shared.metrics.outcomes_dropped.inc();
                            item.finished.span.in_scope(|| {
                                tracing::error!(%error, tries = item.failures, "outcome cannot be written; dropping it (the task's lease will run out and it will be reclaimed): check this task's keys in Redis");
                            });
                        } else {
                            item.finished.span.in_scope(|| {
                                tracing::warn!(%error, tries = item.failures, "outcome write failed; retrying it on its own");
                            });
                            waiting.push(item);
                        }
                    }
                }
            }
        }
        if waiting.is_empty() {
            delay = Duration::from_millis(50);
        } else {
            // Back off before trying again; an outage backs off further.
            tokio::time::sleep(delay).await;
            delay = if outage {
                (delay * 2).min(Duration::from_secs(2))
            } else {
                Duration::from_millis(50)
            };
        }
    }
}

/// The end of an attempt whose outcome was written (or rejected): logs what needs saying in
/// its span, then drops its lease registration, turn and span.
fn finish(shared: &Shared, finished: Finished, written: Written) {
    match written {
        Written::Recorded | Written::AlreadyRecorded => {}
        Written::Fenced => {
            shared.metrics.fenced_outcomes.inc();
            finished.span.in_scope(|| {
                tracing::warn!("outcome rejected: this attempt had lost its lease to a newer one");
            });
        }
        Written::DamagedRecord => {
            shared.metrics.outcomes_dropped.inc();
            finished.span.in_scope(|| {
                tracing::error!("outcome not recorded: the task's record in Redis is damaged; it will be buried when its lease runs out");
            });
        }
    }
    drop(finished);
}
