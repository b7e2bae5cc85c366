//! The gRPC `tarefa.v1.Scheduler` service: each RPC validates, calls the queue layer, and
//! converts back. Errors become statuses in one place (`error.rs`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tarefa_proto as pb;
use tarefa_queue::events::Events;
use tarefa_queue::{Broker, SubmitBatcher};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, field};

use crate::auth::{Principal, Scope};
use crate::config::Config;
use crate::convert::{self, new_task, queue_name, task_to_proto};
use crate::error::Error;
use crate::guard::caller;
use crate::metrics::{AdminAction, Metrics};

/// How often a watcher re-reads its task even without a notification (covers notifications
/// lost while the pub/sub connection was down).
const WATCH_POLL: Duration = Duration::from_secs(1);
const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1000;
/// Most dead tasks one RetryDeadTasks call requeues.
const MAX_RETRY_DEAD: u64 = 100_000;
/// Longest a SubmitTasks batch waits for room under `--max-submit-inflight-bytes`.
const SUBMIT_ROOM_WAIT: Duration = Duration::from_secs(5);
/// Longest progress message accepted.
const MAX_PROGRESS_MESSAGE: usize = 1024;

/// The service state shared by all RPCs.
#[derive(Debug, Clone)]
pub struct SchedulerService {
    broker: Broker,
    batcher: SubmitBatcher,
    events: Events,
    config: Config,
    metrics: Metrics,
    /// Watch streams open now, bounded by `--max-watches`.
    watches: Arc<Semaphore>,
    /// Room for SubmitTasks batches in flight, in KiB (`--max-submit-inflight-bytes`).
    submit_budget: Arc<Semaphore>,
    /// Queues known to exist (read from Redis when a submit names a new one), for
    /// `--max-queues`.
    known_queues: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// A clear RESOURCE_EXHAUSTED instead of the transport's OUT_OF_RANGE (or, inside a stream, a
/// broken stream) when an answer would be larger than `limit` (`--max-request-bytes`).
fn fits(
    limit: usize,
    message: &impl prost::Message,
    field: &str,
    advice: &str,
) -> Result<(), Status> {
    let size = message.encoded_len();
    if size <= limit {
        return Ok(());
    }
    let error = Error::ResourceExhausted {
        field: field.to_owned(),
        reason: format!(
            "the answer would be {size} bytes, over the {limit} the scheduler sends (scheduler \
             flag --max-request-bytes); {advice}"
        ),
    };
    Err(error.into())
}

/// What a watch sends for `task`, `first` if it is the stream's first message and `done` if
/// its last. The payload goes with the first message only (it never changes) and the result
/// with the final one only (the stream ends there), so a watch sends each once. A message
/// over `limit` is a RESOURCE_EXHAUSTED saying why, in place of the message.
fn watch_message(
    task: &pb::Task,
    first: bool,
    done: bool,
    limit: usize,
) -> Result<pb::Task, Status> {
    let mut message = task.clone();
    if !first {
        message.payload = Vec::new();
    }
    if !done {
        message.result = Vec::new();
    }
    let advice = format!(
        "the task is {}, with a {}-byte payload and a {}-byte result: raise the limit, or keep \
         results small (executor flag --max-result-bytes) and payloads small \
         (--max-payload-bytes)",
        task.state().as_str_name().trim_start_matches("TASK_STATE_"),
        task.payload.len(),
        task.result.len(),
    );
    fits(limit, &message, "task_id", &advice).map(|()| message)
}

/// "ok" or "error", for the audit log.
fn outcome<T, E>(result: &Result<T, E>) -> &'static str {
    if result.is_ok() { "ok" } else { "error" }
}

impl SchedulerService {
    fn task_id(&self, text: &str) -> Result<tarefa_queue::TaskId, Status> {
        Ok(convert::task_id(text, &self.config)?)
    }

    /// Refuses a submit that would create a queue past `--max-queues` (every queue costs
    /// every ListQueues, /metrics scrape and dashboard refresh a few Redis calls). Only a
    /// queue this process has not seen costs a Redis read; schedulers racing may overshoot
    /// by a few.
    async fn check_new_queues<'a>(
        &self,
        queues: impl Iterator<Item = &'a str>,
    ) -> Result<(), Status> {
        let unseen: Vec<&str> = {
            let known = self
                .known_queues
                .lock()
                .map_err(|_| Status::internal("lock"))?;
            queues.filter(|q| !known.contains(*q)).collect()
        };
        if unseen.is_empty() {
            return Ok(());
        }
        let names = self.broker.queue_names().await.map_err(Error::from)?;
        let mut known = self
            .known_queues
            .lock()
            .map_err(|_| Status::internal("lock"))?;
        known.extend(names);
        for queue in unseen {
            if !known.contains(queue) {
                if known.len() >= self.config.max_queues {
                    let error = Error::ResourceExhausted {
                        field: "queue".to_owned(),
                        reason: format!(
                            "{queue:?} would be a new queue; there are {} already, the limit \
                             (scheduler flag --max-queues)",
                            known.len()
                        ),
                    };
                    self.metrics.rejected(&error);
                    return Err(error.into());
                }
                known.insert(queue.to_owned());
            }
        }
        Ok(())
    }

    /// A clear RESOURCE_EXHAUSTED instead of the transport's OUT_OF_RANGE when an answer would
    /// be larger than the scheduler sends (`--max-request-bytes`).
    fn fits(&self, message: &impl prost::Message, field: &str, advice: &str) -> Result<(), Status> {
        fits(self.config.max_request_bytes, message, field, advice)
    }

    /// Checks that `who` may do `scope` on `queue`.
    fn allow(who: &Principal, scope: Scope, queue: &str) -> Result<(), Status> {
        Ok(who.check(scope, Some(queue))?)
    }

    /// Checks an admin action; a refusal is audited here, the outcome by the caller.
    fn admin<'a>(
        &self,
        who: &'a Principal,
        action: &'static str,
        queue: &'a str,
        task_id: Option<&'a str>,
    ) -> Result<AdminAction<'a>, Status> {
        let audit = AdminAction {
            who: &who.name,
            action,
            via: "grpc",
            queue,
            task_id,
        };
        if let Err(denied) = who.check(Scope::Admin, Some(queue)) {
            self.metrics.admin_action(&audit, "denied");
            return Err(denied.into());
        }
        Ok(audit)
    }

    /// A service over `broker`. Starts the submit batcher and the event hub on this runtime.
    pub fn new(broker: Broker, config: Config, metrics: Metrics) -> Self {
        let batcher = SubmitBatcher::start(broker.clone(), 256, 4);
        let events = Events::start(&broker);
        Self {
            broker,
            batcher,
            events,
            watches: Arc::new(Semaphore::new(config.max_watches.max(1))),
            known_queues: Arc::default(),
            submit_budget: Arc::new(Semaphore::new(
                (config.max_submit_inflight_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS),
            )),
            config,
            metrics,
        }
    }

    fn span(name: &'static str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
        let span = tracing::info_span!(
            "rpc",
            otel.name = name,
            rpc.method = name,
            task_id = field::Empty,
            queue = field::Empty,
            task_type = field::Empty,
        );
        tarefa_telemetry::set_parent_from_metadata(&span, metadata);
        span
    }
}

/// The distinct (queue, task type) pairs of a batch (usually one), each with a count of 0,
/// and each task's index into them: the submitted counters are then bumped once per pair,
/// not once per task.
fn kinds_of(tasks: &[tarefa_queue::NewTask]) -> (Vec<(String, String, u64)>, Vec<usize>) {
    let mut kinds: Vec<(String, String, u64)> = Vec::new();
    let mut index: HashMap<&str, HashMap<&str, usize>> = HashMap::new();
    let mut last: Option<(&str, &str, usize)> = None;
    let kind_of = tasks
        .iter()
        .map(|t| {
            let (queue, task_type) = (t.id.queue(), t.task_type.as_str());
            if let Some((q, k, kind)) = last
                && q == queue
                && k == task_type
            {
                return kind;
            }
            let kind = *index
                .entry(queue)
                .or_default()
                .entry(task_type)
                .or_insert_with(|| {
                    kinds.push((queue.to_owned(), task_type.to_owned(), 0));
                    kinds.len() - 1
                });
            last = Some((queue, task_type, kind));
            kind
        })
        .collect();
    (kinds, kind_of)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Task, Status>> + Send>>;

#[tonic::async_trait]
impl pb::scheduler_server::Scheduler for SchedulerService {
    async fn submit_task(
        &self,
        request: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        let span = Self::span("SubmitTask", request.metadata());
        let who = caller(&request)?;
        async move {
            let traceparent = tarefa_telemetry::current_traceparent();
            let task = new_task(request.into_inner(), &self.config, None, traceparent)
                .inspect_err(|e| self.metrics.rejected(e))?;
            Self::allow(&who, Scope::Submit, task.id.queue())?;
            self.check_new_queues(std::iter::once(task.id.queue())).await?;
            let span = tracing::Span::current();
            span.record("queue", task.id.queue());
            span.record("task_type", task.task_type.as_str());
            let (queue, task_type) = (task.id.queue().to_owned(), task.task_type.clone());
            let submitted = self.batcher.submit(task).await.map_err(Error::from)?;
            // The id is Redis's (a task due now is named after its stream entry).
            span.record("task_id", field::display(&submitted.id));
            if !submitted.deduplicated {
                self.metrics.submitted(&queue, &task_type, 1);
            }
            tracing::debug!(task_id = %submitted.id, deduplicated = submitted.deduplicated, "task submitted");
            Ok(Response::new(pb::SubmitTaskResponse {
                task_id: submitted.id.to_string(),
                deduplicated: submitted.deduplicated,
            }))
        }
        .instrument(span)
        .await
    }

    async fn submit_tasks(
        &self,
        request: Request<pb::SubmitTasksRequest>,
    ) -> Result<Response<pb::SubmitTasksResponse>, Status> {
        let span = Self::span("SubmitTasks", request.metadata());
        let who = caller(&request)?;
        async move {
            let requests = request.into_inner().tasks;
            if requests.len() > self.config.max_batch {
                let error = Error::ResourceExhausted {
                    field: "tasks".to_owned(),
                    reason: format!(
                        "has {} tasks; the limit is {} (scheduler flag --max-batch)",
                        requests.len(),
                        self.config.max_batch
                    ),
                };
                self.metrics.rejected(&error);
                return Err(error.into());
            }
            // Bound the batches in flight by size: each takes about three times its size
            // while it is validated and written.
            let kib = requests
                .iter()
                .map(|r| {
                    r.payload.len()
                        + r.task_type.len()
                        + r.idempotency_key.len()
                        + r.headers
                            .iter()
                            .map(|(k, v)| k.len() + v.len())
                            .sum::<usize>()
                        + 64
                })
                .sum::<usize>()
                / 1024
                + 1;
            let budget = (self.config.max_submit_inflight_bytes / 1024).max(1);
            let busy = |reason: String| {
                let error = Error::ResourceExhausted {
                    field: "tasks".to_owned(),
                    reason,
                };
                self.metrics.rejected(&error);
                Status::from(error)
            };
            if kib > budget {
                return Err(busy(format!(
                    "the batch is about {kib} KiB; the scheduler takes at most {budget} KiB of \
                     batches at once (scheduler flag --max-submit-inflight-bytes)"
                )));
            }
            let permits = u32::try_from(kib).unwrap_or(u32::MAX);
            let _room = tokio::time::timeout(
                SUBMIT_ROOM_WAIT,
                Arc::clone(&self.submit_budget).acquire_many_owned(permits),
            )
            .await
            .map_err(|_| busy("the scheduler is busy with other large batches; retry".to_owned()))?
            .map_err(|_| Status::unavailable("the scheduler is stopping"))?;
            let traceparent = tarefa_telemetry::current_traceparent();
            let tasks = requests
                .into_iter()
                .enumerate()
                .map(|(i, r)| new_task(r, &self.config, Some(i), traceparent.clone()))
                .collect::<Result<Vec<_>, _>>()
                .inspect_err(|e| self.metrics.rejected(e))?;
            for task in &tasks {
                Self::allow(&who, Scope::Submit, task.id.queue())?;
            }
            self.check_new_queues(tasks.iter().map(|t| t.id.queue()))
                .await?;
            let (mut kinds, kind_of) = kinds_of(&tasks);
            let submitted = self.broker.submit(tasks).await.map_err(Error::from)?;
            for (&kind, s) in kind_of.iter().zip(&submitted) {
                if !s.deduplicated
                    && let Some((_, _, n)) = kinds.get_mut(kind)
                {
                    *n += 1;
                }
            }
            for (queue, task_type, n) in &kinds {
                if *n > 0 {
                    self.metrics.submitted(queue, task_type, *n);
                }
            }
            tracing::debug!(count = submitted.len(), "tasks submitted");
            Ok(Response::new(pb::SubmitTasksResponse {
                tasks: submitted
                    .into_iter()
                    .map(|s| pb::SubmitTaskResponse {
                        task_id: s.id.to_string(),
                        deduplicated: s.deduplicated,
                    })
                    .collect(),
            }))
        }
        .instrument(span)
        .await
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let who = caller(&request)?;
        let id = self.task_id(&request.get_ref().task_id)?;
        Self::allow(&who, Scope::Read, id.queue())?;
        let record = self.broker.task(&id).await.map_err(Error::from)?;
        match record {
            Some(record) => {
                let task = task_to_proto(record);
                self.fits(&task, "task_id", "the task cannot be read whole")?;
                Ok(Response::new(task))
            }
            None => Err(Status::not_found(format!("task {id} not found"))),
        }
    }

    type WatchTaskStream = WatchStream;

    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let who = caller(&request)?;
        let id = self.task_id(&request.get_ref().task_id)?;
        Self::allow(&who, Scope::Read, id.queue())?;
        let Ok(watch_permit) = Arc::clone(&self.watches).try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "too many tasks watched at once (scheduler flag --max-watches, {}); poll GetTask or retry later",
                self.config.max_watches
            )));
        };
        // Subscribe before the first read, so no change between the two is missed.
        let subscription = self.events.subscribe(&id);
        let first = self
            .broker
            .task(&id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Status::not_found(format!("task {id} not found")))?;
        let limit = self.config.max_request_bytes;
        // A first message over the limit is refused here, as GetTask refuses it, rather than
        // by the transport once the stream is open.
        let first_done = first.state.is_final();
        let first = task_to_proto(first);
        let first_message = watch_message(&first, true, first_done, limit)?;
        let (sender, receiver) = mpsc::channel(16);
        let broker = self.broker.clone();
        tokio::spawn(async move {
            // Held while the stream lives.
            let _watch_permit = watch_permit;
            if sender.send(Ok(first_message)).await.is_err() || first_done {
                return;
            }
            let mut last = first;
            loop {
                tokio::select! {
                    _ = sender.closed() => return,
                    _ = subscription.changed(WATCH_POLL) => {}
                }
                let record = match broker.task(&id).await {
                    Ok(Some(record)) => record,
                    Ok(None) => {
                        let _ = sender
                            .send(Err(Status::not_found(format!("task {id} expired"))))
                            .await;
                        return;
                    }
                    // Redis hiccup: keep watching; the client sees nothing until it is back.
                    Err(error) if error.is_unavailable() => continue,
                    Err(error) => {
                        let _ = sender.send(Err(Error::from(error).into())).await;
                        return;
                    }
                };
                let done = record.state.is_final();
                let task = task_to_proto(record);
                if task != last {
                    match watch_message(&task, false, done, limit) {
                        Ok(message) => {
                            if sender.send(Ok(message)).await.is_err() {
                                return;
                            }
                            last = task;
                        }
                        // Too big to send (a huge result): say so, and end the stream.
                        Err(status) => {
                            let _ = sender.send(Err(status)).await;
                            return;
                        }
                    }
                }
                if done {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let who = caller(&request)?;
        let id = self.task_id(&request.get_ref().task_id)?;
        let text_id = id.to_string();
        let audit = self.admin(&who, "cancel", id.queue(), Some(&text_id))?;
        let result = self.broker.cancel(&id).await.map_err(Error::from);
        self.metrics.admin_action(&audit, outcome(&result));
        let record = result?;
        tracing::info!(task_id = %id, state = %record.state, "task cancel requested");
        Ok(Response::new(task_to_proto(record)))
    }

    async fn retry_task(
        &self,
        request: Request<pb::RetryTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let who = caller(&request)?;
        let id = self.task_id(&request.get_ref().task_id)?;
        let text_id = id.to_string();
        let audit = self.admin(&who, "retry", id.queue(), Some(&text_id))?;
        let result = self.broker.retry(&id).await.map_err(Error::from);
        self.metrics.admin_action(&audit, outcome(&result));
        let record = result?;
        tracing::info!(task_id = %id, "dead task requeued");
        Ok(Response::new(task_to_proto(record)))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let who = caller(&request)?;
        let request = request.into_inner();
        let queue = queue_name(&request.queue, &self.config, "queue")?;
        Self::allow(&who, Scope::Read, &queue)?;
        let state = convert::state_from_proto(request.state)?;
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let offset = if request.page_token.is_empty() {
            0
        } else {
            convert::page_offset(&request.page_token)?
        };
        let task_type = (!request.task_type.is_empty()).then_some(request.task_type.as_str());
        let page = self
            .broker
            .list_tasks(&queue, state, task_type, offset, u64::from(page_size))
            .await
            .map_err(Error::from)?;
        let response = pb::ListTasksResponse {
            tasks: page.tasks.into_iter().map(task_to_proto).collect(),
            next_page_token: page.next_offset.map(|o| o.to_string()).unwrap_or_default(),
        };
        self.fits(&response, "page_size", "ask for fewer tasks per page")?;
        Ok(Response::new(response))
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let who = caller(&request)?;
        let names = self.broker.queue_names().await.map_err(Error::from)?;
        let mut queues = Vec::with_capacity(names.len());
        // A token limited to some queues sees only those.
        for name in names.into_iter().filter(|name| who.covers(name)) {
            let stats = self.broker.queue_stats(&name).await.map_err(Error::from)?;
            queues.push(convert::queue_to_proto(stats));
        }
        Ok(Response::new(pb::ListQueuesResponse { queues }))
    }

    async fn pause_queue(
        &self,
        request: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::Queue>, Status> {
        let who = caller(&request)?;
        let queue = queue_name(&request.get_ref().queue, &self.config, "queue")?;
        let audit = self.admin(&who, "pause", &queue, None)?;
        let result = self
            .broker
            .set_paused(&queue, true)
            .await
            .map_err(Error::from);
        self.metrics.admin_action(&audit, outcome(&result));
        result?;
        tracing::info!(%queue, "queue paused");
        let stats = self.broker.queue_stats(&queue).await.map_err(Error::from)?;
        Ok(Response::new(convert::queue_to_proto(stats)))
    }

    async fn resume_queue(
        &self,
        request: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::Queue>, Status> {
        let who = caller(&request)?;
        let queue = queue_name(&request.get_ref().queue, &self.config, "queue")?;
        let audit = self.admin(&who, "resume", &queue, None)?;
        let result = self
            .broker
            .set_paused(&queue, false)
            .await
            .map_err(Error::from);
        self.metrics.admin_action(&audit, outcome(&result));
        result?;
        tracing::info!(%queue, "queue resumed");
        let stats = self.broker.queue_stats(&queue).await.map_err(Error::from)?;
        Ok(Response::new(convert::queue_to_proto(stats)))
    }

    async fn purge_dead_tasks(
        &self,
        request: Request<pb::PurgeDeadTasksRequest>,
    ) -> Result<Response<pb::PurgeDeadTasksResponse>, Status> {
        let who = caller(&request)?;
        let queue = queue_name(&request.get_ref().queue, &self.config, "queue")?;
        let audit = self.admin(&who, "purge-dead", &queue, None)?;
        let result = self.broker.purge_dead(&queue).await.map_err(Error::from);
        self.metrics.admin_action(&audit, outcome(&result));
        let purged = result?;
        tracing::info!(%queue, purged, "dead tasks purged");
        Ok(Response::new(pb::PurgeDeadTasksResponse { purged }))
    }

    async fn retry_dead_tasks(
        &self,
        request: Request<pb::RetryDeadTasksRequest>,
    ) -> Result<Response<pb::RetryDeadTasksResponse>, Status> {
        let who = caller(&request)?;
        let queue = queue_name(&request.get_ref().queue, &self.config, "queue")?;
        let audit = self.admin(&who, "retry-dead", &queue, None)?;
        let result = self
            .broker
            .retry_dead(&queue, MAX_RETRY_DEAD)
            .await
            .map_err(Error::from);
        self.metrics.admin_action(&audit, outcome(&result));
        let retried = result?;
        tracing::info!(%queue, retried, "dead tasks requeued");
        Ok(Response::new(pb::RetryDeadTasksResponse { retried }))
    }

    async fn report_progress(
        &self,
        request: Request<pb::ReportProgressRequest>,
    ) -> Result<Response<pb::ReportProgressResponse>, Status> {
        let who = caller(&request)?;
        let request = request.into_inner();
        let id = self.task_id(&request.task_id)?;
        Self::allow(&who, Scope::Submit, id.queue())?;
        if !request.fraction.is_finite() {
            return Err(Status::invalid_argument("fraction: must be a number"));
        }
        if request.message.len() > MAX_PROGRESS_MESSAGE {
            return Err(Status::invalid_argument(format!(
                "message: must be at most {MAX_PROGRESS_MESSAGE} bytes"
            )));
        }
        let token = if request.fencing_token != 0 {
            tarefa_queue::AttemptToken::Fence(request.fencing_token)
        } else {
            tarefa_queue::AttemptToken::Attempt(request.attempt)
        };
        let recorded = self
            .broker
            .report_progress(&id, token, request.fraction, &request.message)
            .await
            .map_err(Error::from)?;
        if !recorded {
            tracing::info!(task_id = %id, attempt = request.attempt, fencing_token = request.fencing_token, "progress refused: that attempt no longer holds the task");
            return Err(Status::failed_precondition(format!(
                "task {id} is not running that attempt (attempt {}, fencing token {})",
                request.attempt, request.fencing_token
            )));
        }
        Ok(Response::new(pb::ReportProgressResponse {}))
    }

    // Handler discovery: the logic is in `handlers.rs`.

    async fn announce_handler(
        &self,
        request: Request<pb::AnnounceHandlerRequest>,
    ) -> Result<Response<pb::AnnounceHandlerResponse>, Status> {
        let response =
            crate::handlers::announce(&self.broker, &self.config, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn withdraw_handler(
        &self,
        request: Request<pb::WithdrawHandlerRequest>,
    ) -> Result<Response<pb::WithdrawHandlerResponse>, Status> {
        let response = crate::handlers::withdraw(&self.broker, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn list_handlers(
        &self,
        request: Request<pb::ListHandlersRequest>,
    ) -> Result<Response<pb::ListHandlersResponse>, Status> {
        let response = crate::handlers::list(&self.broker, request.into_inner()).await?;
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_sends_the_payload_first_the_result_last_and_refuses_what_does_not_fit() {
        let mut task = pb::Task {
            task_id: "q:01ARZ3NDEKTSV4RRFFQ69G5FAV".to_owned(),
            payload: vec![b'p'; 100],
            result: vec![b'r'; 100],
            state: pb::TaskState::Running as i32,
            ..Default::default()
        };
        let first = watch_message(&task, true, false, 1024).unwrap();
        assert_eq!((first.payload.len(), first.result.len()), (100, 0));
        let middle = watch_message(&task, false, false, 1024).unwrap();
        assert_eq!((middle.payload.len(), middle.result.len()), (0, 0));
        task.state = pb::TaskState::Succeeded as i32;
        let last = watch_message(&task, false, true, 1024).unwrap();
        assert_eq!((last.payload.len(), last.result.len()), (0, 100));
        let only = watch_message(&task, true, true, 1024).unwrap();
        assert_eq!((only.payload.len(), only.result.len()), (100, 100));

        let refused = watch_message(&task, false, true, 120).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        for part in [
            "--max-request-bytes",
            "SUCCEEDED",
            "100-byte result",
            "task_id",
        ] {
            assert!(refused.message().contains(part), "{part}: {refused:?}");
        }
    }
}
