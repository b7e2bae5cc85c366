//! The gRPC port's memory bound: a tower layer that makes every request take room in one byte
//! budget before its body is read, and keeps that room until its answer is ready.
//!
//! tonic reads a whole request into memory and decodes it before any handler runs, so limits
//! checked by handlers come too late: a client opening many streams with big `SubmitTasks`
//! would make the scheduler hold all of them at once. Here a request reserves the size its
//! gRPC message declares (the 5-byte prefix of its first frame) all at once, so partly read
//! requests never hold room that none of them can complete with; a body that finds no room
//! stops being read, so HTTP/2 flow control stops its sender (at most one connection window per
//! connection is then buffered). After [`ROOM_WAIT`] without room, or at once when a request
//! declares more than the whole budget, the call is RESOURCE_EXHAUSTED saying which flag bounds
//! it.
//!
//! The budget is `--max-submit-inflight-bytes`, raised to `--max-request-bytes` when that is
//! larger, so that any request small enough to be accepted can get in.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::future::BoxFuture;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Bytes, http};

/// Longest a request's body waits for room in the budget before the call is refused. Short,
/// because a waiting stream holds its HTTP/2 window: the other calls on its connection stall
/// with it (they are not read further until it is answered).
pub(crate) const ROOM_WAIT: Duration = Duration::from_secs(1);

/// Adds [`Budgeted`] around a service.
#[derive(Debug, Clone)]
pub(crate) struct BudgetLayer {
    /// Room left, one permit per byte.
    budget: Arc<Semaphore>,
    /// The whole budget in bytes: the most one request may take.
    bytes: usize,
}

impl BudgetLayer {
    /// A budget of `bytes` for all requests in flight on the port.
    pub(crate) fn new(bytes: usize) -> Self {
        // Room is taken in u32 permits at a time: 4 GiB is budget enough.
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Self {
            budget: Arc::new(Semaphore::new(bytes)),
            bytes,
        }
    }
}

impl<S> tower::Layer<S> for BudgetLayer {
    type Service = Budgeted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Budgeted {
            inner,
            layer: self.clone(),
        }
    }
}

/// See the module's documentation.
#[derive(Debug, Clone)]
pub(crate) struct Budgeted<S> {
    inner: S,
    layer: BudgetLayer,
}

/// The room one request holds: taken by its body as it is read, given back when both the
/// body and the call are done.
type Held = Arc<Mutex<Option<OwnedSemaphorePermit>>>;

impl<S, ResBody> tower::Service<http::Request<Body>> for Budgeted<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let held: Held = Arc::default();
        let body_held = Arc::clone(&held);
        let layer = self.layer.clone();
        let request = request.map(|inner| {
            Body::new(BudgetedBody {
                inner,
                layer,
                held: body_held,
                held_bytes: 0,
                read_bytes: 0,
                waiting: None,
            })
        });
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await;
            // The handler is done with the request (a stream's handler has returned its
            // stream): its room can go to others.
            drop(held);
            response
        })
    }
}

/// The wait for room in the budget (at most [`ROOM_WAIT`]).
type RoomWait = BoxFuture<'static, Result<OwnedSemaphorePermit, Status>>;

/// A request body that takes room in the budget for every byte it yields.
struct BudgetedBody {
    inner: Body,
    layer: BudgetLayer,
    held: Held,
    /// Bytes of room this request holds.
    held_bytes: usize,
    /// Bytes of body read so far.
    read_bytes: usize,
    /// A frame read before there was room for it, and the wait for that room.
    waiting: Option<(Frame<Bytes>, RoomWait)>,
}

impl BudgetedBody {
    fn hold(&mut self, permit: OwnedSemaphorePermit) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match held.as_mut() {
            Some(all) => all.merge(permit),
            None => *held = Some(permit),
        }
    }

    fn too_big(&self) -> Status {
        Status::resource_exhausted(format!(
            "the request is larger than the {} bytes of requests the scheduler holds at once \
             (scheduler flags --max-submit-inflight-bytes and --max-request-bytes); send \
             smaller batches",
            self.layer.bytes
        ))
    }
}

impl HttpBody for BudgetedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some((_, wait)) = this.waiting.as_mut() {
            let room = ready!(wait.as_mut().poll(cx));
            let Some((frame, _)) = this.waiting.take() else {
                return Poll::Ready(None);
            };
            return Poll::Ready(Some(room.map(|permit| {
                this.hold(permit);
                frame
            })));
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        this.read_bytes += data.len();
        if this.read_bytes <= this.held_bytes {
            return Poll::Ready(Some(Ok(frame)));
        }
        let need = match data.get(1..5) {
            // The first frame: room for the whole message its prefix declares.
            Some(&[a, b, c, d]) if this.held_bytes == 0 => {
                let declared = u32::from_be_bytes([a, b, c, d]) as usize;
                (5 + declared).max(data.len())
            }
            _ => this.read_bytes - this.held_bytes,
        };
        if this.held_bytes + need > this.layer.bytes {
            return Poll::Ready(Some(Err(this.too_big())));
        }
        this.held_bytes += need;
        // At most the budget, itself at most u32::MAX: never saturates.
        let permits = u32::try_from(need).unwrap_or(u32::MAX);
        match Arc::clone(&this.layer.budget).try_acquire_many_owned(permits) {
            Ok(permit) => {
                this.hold(permit);
                Poll::Ready(Some(Ok(frame)))
            }
            Err(TryAcquireError::Closed) => {
                Poll::Ready(Some(Err(Status::unavailable("the scheduler is stopping"))))
            }
            Err(TryAcquireError::NoPermits) => {
                let budget = Arc::clone(&this.layer.budget);
                let wait = Box::pin(async move {
                    match tokio::time::timeout(ROOM_WAIT, budget.acquire_many_owned(permits)).await
                    {
                        Ok(Ok(permit)) => Ok(permit),
                        Ok(Err(_)) => Err(Status::unavailable("the scheduler is stopping")),
                        Err(_) => Err(Status::resource_exhausted(
                            "the scheduler holds as many request bytes as it may (scheduler flag \
                             --max-submit-inflight-bytes); retry later",
                        )),
                    }
                });
                this.waiting = Some((frame, wait));
                // Poll the wait once now, so that it registers for a wake-up.
                Pin::new(this).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
