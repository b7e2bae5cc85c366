//! Typed Rust producer stubs for Tarefa.
//!
//! A task type is declared once, as a serde type implementing [`TaskType`], and shared by the
//! producer (this crate) and the handler (`tarefa-executor`):
//!
//! ```no_run
//! # async fn demo() -> Result<(), tarefa_client::Error> {
//! use tarefa_client::{Client, builtin::Fib};
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let f90: String = client.submit(Fib { n: 90 }).await?.wait().await?;
//! assert_eq!(f90, "2880067194370816120");
//! # Ok(()) }
//! ```
//!
//! The untyped API ([`Client::submit_raw`], [`Client::get`], …) takes the generated proto
//! messages, for task types declared elsewhere (another language's handler).

pub mod builtin;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tarefa_proto as pb;
use tonic::transport::{Channel, Endpoint};

pub use tarefa_proto::{Task, TaskState};

/// A task type: its name, its arguments (`Self`) and its output, shared by producer and handler.
pub trait TaskType: Serialize + DeserializeOwned + Send + 'static {
    /// The name handlers are registered under, e.g. `"fib"`.
    const NAME: &'static str;
    /// What the handler returns on success.
    type Output: Serialize + DeserializeOwned + Send + 'static;
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scheduler's address is malformed or unreachable.
    #[error("cannot connect to the scheduler: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The scheduler answered with an error status (see its code and message).
    #[error("scheduler error: {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The arguments could not be encoded as JSON.
    #[error("cannot encode the task's arguments: {0}")]
    Encode(serde_json::Error),
    /// The result is not the output type's JSON.
    #[error("cannot decode the result of task {task_id}: {source}")]
    Decode {
        /// The task.
        task_id: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The task ended DEAD or CANCELLED.
    #[error("task {task_id} ended {state}: {error}")]
    TaskFailed {
        /// The task.
        task_id: String,
        /// `DEAD` or `CANCELLED`.
        state: String,
        /// Its last error.
        error: String,
    },
    /// The token cannot be sent in a header (it has control or non-ASCII characters).
    #[error("the token is not a valid header value")]
    BadToken,
    /// The watch stream ended before the task reached a final state.
    #[error("the watch of task {0} ended before the task finished")]
    WatchEnded(String),
}

impl Error {
    /// The gRPC status code when the scheduler answered with one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

/// Options of one submit; `Default` means the scheduler's defaults.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// Queue (default `default`).
    pub queue: Option<String>,
    /// Run no earlier than this from now.
    pub delay: Option<Duration>,
    /// Attempts in all.
    pub max_attempts: Option<u32>,
    /// Backoff before the second attempt.
    pub backoff_initial: Option<Duration>,
    /// Largest backoff.
    pub backoff_max: Option<Duration>,
    /// Per-attempt timeout.
    pub timeout: Option<Duration>,
    /// Deduplication key.
    pub idempotency_key: Option<String>,
    /// Stored priority.
    pub priority: i32,
    /// Metadata for the handler.
    pub headers: HashMap<String, String>,
    /// How long the result stays readable.
    pub result_ttl: Option<Duration>,
}

impl SubmitOptions {
    /// Options with `queue` set.
    pub fn queue(queue: impl Into<String>) -> Self {
        Self {
            queue: Some(queue.into()),
            ..Self::default()
        }
    }

    /// The request for a task of `task_type` with `payload`.
    pub fn request(&self, task_type: &str, payload: Vec<u8>) -> pb::SubmitTaskRequest {
        let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis() as u64);
        pb::SubmitTaskRequest {
            queue: self.queue.clone().unwrap_or_default(),
            task_type: task_type.to_owned(),
            payload,
            content_type: String::new(),
            delay_ms: ms(self.delay),
            run_at_ms: 0,
            max_attempts: self.max_attempts.unwrap_or(0),
            backoff: (self.backoff_initial.is_some() || self.backoff_max.is_some()).then(|| {
                pb::RetryBackoff {
                    initial_ms: ms(self.backoff_initial),
                    max_ms: ms(self.backoff_max),
                    multiplier: 0.0,
                }
            }),
            timeout_ms: ms(self.timeout),
            idempotency_key: self.idempotency_key.clone().unwrap_or_default(),
            priority: self.priority,
            headers: self.headers.clone(),
            result_ttl_ms: ms(self.result_ttl),
        }
    }
}

/// How to reach a scheduler that wants TLS or a token. `Default` is plain, anonymous.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// Sent with every call as `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// PEM CA certificate(s) to trust for an `https://` scheduler (else the system's roots).
    pub ca_cert_pem: Option<Vec<u8>>,
    /// PEM client certificate and key, for a scheduler that wants mTLS.
    pub client_identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the scheduler's certificate must be valid for, when not the URL's host.
    pub tls_domain: Option<String>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("ca_cert_pem", &self.ca_cert_pem.is_some())
            .field("client_identity_pem", &self.client_identity_pem.is_some())
            .field("tls_domain", &self.tls_domain)
            .finish()
    }
}

impl ConnectOptions {
    /// Options with `TAREFA_TOKEN` as the token, when set.
    pub fn from_env() -> Self {
        Self {
            token: std::env::var("TAREFA_TOKEN").ok().filter(|t| !t.is_empty()),
            ..Self::default()
        }
    }
}

/// A connection to a scheduler. Cheap to clone: clones share one HTTP/2 connection.
#[derive(Clone)]
pub struct Client {
    inner: pb::scheduler_client::SchedulerClient<Channel>,
    /// `Bearer <token>`, ready to send.
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<hidden>"),
            )
            .finish_non_exhaustive()
    }
}

/// A submitted task whose output is `O`.
#[derive(Debug, Clone)]
pub struct TaskHandle<O> {
    task_id: String,
    deduplicated: bool,
    client: Client,
    output: PhantomData<fn() -> O>,
}

impl<O: DeserializeOwned> TaskHandle<O> {
    /// The task's id.
    pub fn id(&self) -> &str {
        &self.task_id
    }

    /// True when an earlier submit had the same idempotency key.
    pub fn deduplicated(&self) -> bool {
        self.deduplicated
    }

    /// Waits for the task to finish and decodes its output; a DEAD or CANCELLED task is
    /// [`Error::TaskFailed`].
    pub async fn wait(&self) -> Result<O, Error> {
        let task = self.client.wait(&self.task_id).await?;
        serde_json::from_slice(&task.result).map_err(|source| Error::Decode {
            task_id: self.task_id.clone(),
            source,
        })
    }
}

impl Client {
    /// Connects to the scheduler at `endpoint` (e.g. `http://127.0.0.1:50051`), failing after
    /// 5 s. Requests time out after 30 s (watches do not). Sends `TAREFA_TOKEN` when set.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self, Error> {
        Self::connect_with(endpoint, ConnectOptions::from_env()).await
    }

    /// Connects with a token and/or TLS: an `https://` endpoint is TLS (with `options`' CA
    /// or the system's roots, and a client certificate for mTLS).
    pub async fn connect_with(
        endpoint: impl Into<String>,
        options: ConnectOptions,
    ) -> Result<Self, Error> {
        let endpoint = endpoint.into();
        let mut builder = Endpoint::from_shared(endpoint.clone())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false);
        if endpoint.starts_with("https://") {
            use tonic::transport::{Certificate, ClientTlsConfig, Identity};
            let mut tls = ClientTlsConfig::new();
            tls = match &options.ca_cert_pem {
                Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &options.client_identity_pem {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = &options.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            builder = builder.tls_config(tls)?;
        }
        let channel = builder.connect().await?;
        let mut client = Self::from_channel(channel);
        client.authorization = match options.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| Error::BadToken)?,
            ),
            None => None,
        };
        Ok(client)
    }

    /// A client over an existing channel.
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            inner: pb::scheduler_client::SchedulerClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024),
            authorization: None,
        }
    }

    /// The same connection, sending `token` with every call.
    pub fn with_token(mut self, token: &str) -> Result<Self, Error> {
        self.authorization = Some(
            format!("Bearer {token}")
                .parse()
                .map_err(|_| Error::BadToken)?,
        );
        Ok(self)
    }

    /// `message` as a request with the trace context and the token.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        tarefa_telemetry::inject_into_metadata(request.metadata_mut());
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    /// The generated client, for anything this API does not cover.
    pub fn raw(&self) -> pb::scheduler_client::SchedulerClient<Channel> {
        self.inner.clone()
    }

    /// Submits a typed task with the scheduler's defaults.
    pub async fn submit<T: TaskType>(&self, args: T) -> Result<TaskHandle<T::Output>, Error> {
        self.submit_with(args, &SubmitOptions::default()).await
    }

    /// Submits a typed task with `options`.
    pub async fn submit_with<T: TaskType>(
        &self,
        args: T,
        options: &SubmitOptions,
    ) -> Result<TaskHandle<T::Output>, Error> {
        let payload = serde_json::to_vec(&args).map_err(Error::Encode)?;
        let response = self.submit_raw(options.request(T::NAME, payload)).await?;
        Ok(TaskHandle {
            task_id: response.task_id,
            deduplicated: response.deduplicated,
            client: self.clone(),
            output: PhantomData,
        })
    }

    /// Submits many typed tasks of one type in one call.
    pub async fn submit_many<T: TaskType>(
        &self,
        args: impl IntoIterator<Item = T>,
        options: &SubmitOptions,
    ) -> Result<Vec<TaskHandle<T::Output>>, Error> {
        let tasks = args
            .into_iter()
            .map(|a| {
                serde_json::to_vec(&a)
                    .map(|payload| options.request(T::NAME, payload))
                    .map_err(Error::Encode)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let response = self.submit_batch(tasks).await?;
        Ok(response
            .into_iter()
            .map(|r| TaskHandle {
                task_id: r.task_id,
                deduplicated: r.deduplicated,
                client: self.clone(),
                output: PhantomData,
            })
            .collect())
    }

    /// Submits one untyped task.
    pub async fn submit_raw(
        &self,
        task: pb::SubmitTaskRequest,
    ) -> Result<pb::SubmitTaskResponse, Error> {
        let mut message = self.request(task);
        message.set_timeout(Duration::from_secs(30));
        Ok(self.inner.clone().submit_task(message).await?.into_inner())
    }

    /// Submits many untyped tasks in one call.
    pub async fn submit_batch(
        &self,
        tasks: Vec<pb::SubmitTaskRequest>,
    ) -> Result<Vec<pb::SubmitTaskResponse>, Error> {
        let mut message = self.request(pb::SubmitTasksRequest { tasks });
        message.set_timeout(Duration::from_secs(30));
        Ok(self
            .inner
            .clone()
            .submit_tasks(message)
            .await?
            .into_inner()
            .tasks)
    }

    /// Reads a task.
    pub async fn get(&self, task_id: &str) -> Result<pb::Task, Error> {
        let message = self.request(pb::GetTaskRequest {
            task_id: task_id.to_owned(),
        });
        Ok(self.inner.clone().get_task(message).await?.into_inner())
    }

    /// The task now, then on every change, ending after a final state.
    pub async fn watch(
        &self,
        task_id: &str,
    ) -> Result<impl Stream<Item = Result<pb::Task, Error>> + use<>, Error> {
        let message = self.request(pb::WatchTaskRequest {
            task_id: task_id.to_owned(),
        });
        let stream = self.inner.clone().watch_task(message).await?.into_inner();
        Ok(stream.map(|item| item.map_err(Error::from)))
    }

    /// Waits for the task to reach a final state; DEAD or CANCELLED is [`Error::TaskFailed`].
    /// Survives a dropped watch (a scheduler restart) by watching again.
    pub async fn wait(&self, task_id: &str) -> Result<pb::Task, Error> {
        let mut retries = 0;
        loop {
            let mut stream = match self.watch(task_id).await {
                Ok(stream) => stream,
                Err(error) if retries < 30 && error.code() == Some(tonic::Code::Unavailable) => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            while let Some(item) = stream.next().await {
                let task = match item {
                    Ok(task) => task,
                    Err(error) if error.code() == Some(tonic::Code::Unavailable) => break,
                    Err(error) => return Err(error),
                };
                match task.state() {
                    pb::TaskState::Succeeded => return Ok(task),
                    state @ (pb::TaskState::Dead | pb::TaskState::Cancelled) => {
                        return Err(Error::TaskFailed {
                            task_id: task.task_id.clone(),
                            state: state
                                .as_str_name()
                                .trim_start_matches("TASK_STATE_")
                                .to_owned(),
                            error: task.last_error.clone(),
                        });
                    }
                    _ => {}
                }
            }
            retries += 1;
            if retries > 30 {
                return Err(Error::WatchEnded(task_id.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Cancels a task.
    pub async fn cancel(&self, task_id: &str) -> Result<pb::Task, Error> {
        let message = self.request(pb::CancelTaskRequest {
            task_id: task_id.to_owned(),
        });
        Ok(self.inner.clone().cancel_task(message).await?.into_inner())
    }

    /// Requeues a DEAD or CANCELLED task.
    pub async fn retry(&self, task_id: &str) -> Result<pb::Task, Error> {
        let message = self.request(pb::RetryTaskRequest {
            task_id: task_id.to_owned(),
        });
        Ok(self.inner.clone().retry_task(message).await?.into_inner())
    }

    /// Lists tasks of a queue in a state.
    pub async fn list_tasks(
        &self,
        list: pb::ListTasksRequest,
    ) -> Result<pb::ListTasksResponse, Error> {
        Ok(self
            .inner
            .clone()
            .list_tasks(self.request(list))
            .await?
            .into_inner())
    }

    /// Lists the queues with their counts.
    pub async fn list_queues(&self) -> Result<Vec<pb::Queue>, Error> {
        Ok(self
            .inner
            .clone()
            .list_queues(self.request(pb::ListQueuesRequest {}))
            .await?
            .into_inner()
            .queues)
    }

    /// Pauses a queue.
    pub async fn pause(&self, queue: &str) -> Result<pb::Queue, Error> {
        let message = self.request(pb::PauseQueueRequest {
            queue: queue.to_owned(),
        });
        Ok(self.inner.clone().pause_queue(message).await?.into_inner())
    }

    /// Resumes a queue.
    pub async fn resume(&self, queue: &str) -> Result<pb::Queue, Error> {
        let message = self.request(pb::ResumeQueueRequest {
            queue: queue.to_owned(),
        });
        Ok(self.inner.clone().resume_queue(message).await?.into_inner())
    }

    /// Deletes a queue's DEAD tasks; returns how many.
    pub async fn purge_dead(&self, queue: &str) -> Result<u64, Error> {
        let message = self.request(pb::PurgeDeadTasksRequest {
            queue: queue.to_owned(),
        });
        Ok(self
            .inner
            .clone()
            .purge_dead_tasks(message)
            .await?
            .into_inner()
            .purged)
    }

    /// Requeues every dead task of a queue; returns how many.
    pub async fn retry_dead(&self, queue: &str) -> Result<u64, Error> {
        let message = self.request(pb::RetryDeadTasksRequest {
            queue: queue.to_owned(),
        });
        Ok(self
            .inner
            .clone()
            .retry_dead_tasks(message)
            .await?
            .into_inner()
            .retried)
    }

    /// Reports a running attempt's progress (for handlers outside an executor).
    pub async fn report_progress(
        &self,
        task_id: &str,
        attempt: u32,
        fraction: f64,
        message: &str,
    ) -> Result<(), Error> {
        let message = self.request(pb::ReportProgressRequest {
            task_id: task_id.to_owned(),
            attempt,
            fraction,
            message: message.to_owned(),
            fencing_token: 0,
        });
        self.inner.clone().report_progress(message).await?;
        Ok(())
    }

    /// Reports progress for the attempt holding `fencing_token` (`ExecuteRequest.fencing_token`):
    /// unlike the attempt number, it never repeats for a task, so a report from an earlier run
    /// is never taken for the current one's.
    pub async fn report_progress_fenced(
        &self,
        task_id: &str,
        fencing_token: u64,
        fraction: f64,
        message: &str,
    ) -> Result<(), Error> {
        let message = self.request(pb::ReportProgressRequest {
            task_id: task_id.to_owned(),
            attempt: 0,
            fraction,
            message: message.to_owned(),
            fencing_token,
        });
        self.inner.clone().report_progress(message).await?;
        Ok(())
    }
}
