//! The spine: submit over gRPC, run in executors, read the result.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use tarefa_client::SubmitOptions;
use tarefa_client::builtin::{Fib, Sleep};
use tarefa_proto::{self as pb, TaskState};
use tarefa_tests::{Harness, eventually};
use tonic::Code;

#[tokio::test]
async fn fib_90_end_to_end() -> anyhow::Result<()> {
    let h = Harness::builder().start().await?;
    let handle = h.client.submit(Fib { n: 90 }).await?;
    assert!(handle.id().starts_with("default:"), "id {}", handle.id());
    let f90 = handle.wait().await?;
    assert_eq!(f90, "2880067194370816120");
    let task = h.client.get(handle.id()).await?;
    assert_eq!(task.state(), TaskState::Succeeded);
    assert_eq!(task.attempt, 1);
    assert!(task.finished_at_ms >= task.started_at_ms && task.started_at_ms >= task.created_at_ms);
    Ok(())
}

#[tokio::test]
async fn fib_of_a_hundred_thousand_is_exact() -> anyhow::Result<()> {
    let h = Harness::builder().start().await?;
    let f = h.client.submit(Fib { n: 100_000 }).await?.wait().await?;
    assert_eq!(f.len(), 20899);
    // Its last nine digits, by an independent plain loop modulo 10^9.
    let (mut x, mut y) = (0u64, 1u64);
    for _ in 0..100_000 {
        (x, y) = (y, (x + y) % 1_000_000_000);
    }
    assert!(
        f.ends_with(&format!("{x:09}")),
        "F(100000) ends {}",
        &f[f.len() - 9..]
    );
    Ok(())
}

#[tokio::test]
async fn a_thousand_tasks_over_three_executors_each_run_once() -> anyhow::Result<()> {
    let h = Harness::builder()
        .executors(3)
        .executor_args(&["--concurrency", "8"])
        .start()
        .await?;
    h.wait_for_executors("default", 3).await;
    let handles = h
        .client
        .submit_many(
            (0..1000).map(|_| Sleep { ms: 2 }),
            &SubmitOptions::default(),
        )
        .await?;
    assert_eq!(handles.len(), 1000);
    let mut per_executor: HashMap<String, usize> = HashMap::new();
    for handle in &handles {
        let task = h.wait_final(handle.id(), Duration::from_secs(60)).await;
        assert_eq!(task.state(), TaskState::Succeeded, "task {}", task.task_id);
        assert_eq!(task.attempt, 1, "task {} ran more than once", task.task_id);
        let output: tarefa_client::builtin::SleepOutput = serde_json::from_slice(&task.result)?;
        assert_eq!(output.executor_id, task.executor_id);
        *per_executor.entry(task.executor_id).or_default() += 1;
    }
    assert_eq!(
        per_executor.len(),
        3,
        "every executor ran some: {per_executor:?}"
    );
    assert_eq!(per_executor.values().sum::<usize>(), 1000);
    let queues = h.client.list_queues().await?;
    let default = queues
        .iter()
        .find(|q| q.name == "default")
        .expect("default queue");
    assert_eq!(default.succeeded_total, 1000);
    assert_eq!(default.queued + default.running, 0);
    Ok(())
}

#[tokio::test]
async fn watch_sees_queued_running_succeeded() -> anyhow::Result<()> {
    // No executor yet, so the task is certainly seen waiting before it runs.
    let mut h = Harness::builder().executors(0).start().await?;
    let handle = h.client.submit(Sleep { ms: 600 }).await?;
    let mut stream = h.client.watch(handle.id()).await?;
    let first = stream.next().await.expect("first update")?;
    assert_eq!(first.state(), TaskState::Queued);
    h.add_executor(&[])?;
    let mut states = vec![first.state()];
    while let Some(task) = stream.next().await {
        let state = task?.state();
        if states.last() != Some(&state) {
            states.push(state);
        }
    }
    assert_eq!(
        states,
        vec![TaskState::Queued, TaskState::Running, TaskState::Succeeded]
    );
    Ok(())
}

#[tokio::test]
async fn unknown_and_malformed_ids() -> anyhow::Result<()> {
    let h = Harness::builder().executors(0).start().await?;
    let missing = h
        .client
        .get("default:01ARZ3NDEKTSV4RRFFQ69G5FAV")
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some(Code::NotFound));
    let malformed = h.client.get("nonsense").await.unwrap_err();
    assert_eq!(malformed.code(), Some(Code::InvalidArgument));
    assert!(malformed.to_string().contains("task_id"), "{malformed}");
    let empty = h.client.get("").await.unwrap_err();
    assert_eq!(empty.code(), Some(Code::InvalidArgument));
    let watch = h.client.watch("default:01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    assert_eq!(watch.err().and_then(|e| e.code()), Some(Code::NotFound));
    Ok(())
}

fn request(task_type: &str) -> pb::SubmitTaskRequest {
    pb::SubmitTaskRequest {
        task_type: task_type.to_owned(),
        payload: b"{}".to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_submits_are_rejected_with_the_field_named() -> anyhow::Result<()> {
    let h = Harness::builder()
        .executors(0)
        .scheduler_args(&["--max-payload-bytes", "1000", "--max-batch", "10"])
        .start()
        .await?;
    let expect =
        |result: Result<pb::SubmitTaskResponse, tarefa_client::Error>, code: Code, field: &str| {
            let error = result.expect_err("must be rejected");
            assert_eq!(error.code(), Some(code), "{error}");
            assert!(
                error.to_string().contains(field),
                "{error} should name {field}"
            );
        };
    expect(
        h.client.submit_raw(request("")).await,
        Code::InvalidArgument,
        "task_type",
    );
    expect(
        h.client.submit_raw(request("has space")).await,
        Code::InvalidArgument,
        "task_type",
    );
    let mut bad_queue = request("echo");
    bad_queue.queue = "no/slashes{}".to_owned();
    expect(
        h.client.submit_raw(bad_queue).await,
        Code::InvalidArgument,
        "queue",
    );
    let mut long_queue = request("echo");
    long_queue.queue = "q".repeat(65);
    expect(
        h.client.submit_raw(long_queue).await,
        Code::InvalidArgument,
        "queue",
    );
    let mut big = request("echo");
    big.payload = vec![b'x'; 1001];
    expect(
        h.client.submit_raw(big).await,
        Code::ResourceExhausted,
        "payload",
    );
    let mut both = request("echo");
    both.delay_ms = 10;
    both.run_at_ms = 10;
    expect(
        h.client.submit_raw(both).await,
        Code::InvalidArgument,
        "delay_ms",
    );
    let mut backoff = request("echo");
    backoff.backoff = Some(pb::RetryBackoff {
        initial_ms: 0,
        max_ms: 0,
        multiplier: 0.5,
    });
    expect(
        h.client.submit_raw(backoff).await,
        Code::InvalidArgument,
        "backoff.multiplier",
    );

    let too_many = h
        .client
        .submit_batch(vec![request("echo"); 11])
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Some(Code::ResourceExhausted));
    assert!(too_many.to_string().contains("tasks"), "{too_many}");
    let mixed = h
        .client
        .submit_batch(vec![request("echo"), request(""), request("echo")])
        .await
        .unwrap_err();
    assert_eq!(mixed.code(), Some(Code::InvalidArgument));
    assert!(mixed.to_string().contains("tasks[1].task_type"), "{mixed}");
    // Nothing of the rejected batch was enqueued.
    let queues = h.client.list_queues().await?;
    assert!(queues.iter().all(|q| q.submitted_total == 0), "{queues:?}");
    Ok(())
}

#[tokio::test]
async fn an_unknown_task_type_fails_naming_it() -> anyhow::Result<()> {
    // With no hand-backs allowed, a type no executor has a handler for is DEAD at once (by
    // default it is handed back for a while, for an executor that has one).
    let h = Harness::builder()
        .executor_args(&["--no-handler-retries", "0"])
        .start()
        .await?;
    let response = h.client.submit_raw(request("no.such.handler")).await?;
    let task = h
        .wait_final(&response.task_id, Duration::from_secs(20))
        .await;
    assert_eq!(task.state(), TaskState::Dead);
    assert!(
        task.last_error.contains("no.such.handler"),
        "{}",
        task.last_error
    );
    Ok(())
}

#[tokio::test]
async fn metrics_move() -> anyhow::Result<()> {
    let h = Harness::builder().start().await?;
    h.client.submit(Fib { n: 10 }).await?.wait().await?;
    let url = format!("http://{}/metrics", h.scheduler.http_addr);
    let body = eventually("metrics to show the task", Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let body = http_get(&url).await?;
            body.contains("tarefa_tasks_succeeded_total{queue=\"default\"} 1")
                .then_some(body)
        }
    })
    .await;
    assert!(
        body.contains("tarefa_scheduler_submitted_total{queue=\"default\",task_type=\"fib\"} 1"),
        "{body}"
    );
    Ok(())
}

/// A minimal HTTP/1.0 GET over a TCP socket (the tests avoid an HTTP client dependency).
pub(crate) async fn http_get(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

#[tokio::test]
async fn typed_wait_reports_a_dead_task() -> anyhow::Result<()> {
    let h = Harness::builder().start().await?;
    let options = SubmitOptions {
        max_attempts: Some(1),
        ..SubmitOptions::default()
    };
    let handle = h
        .client
        .submit_with(
            tarefa_client::builtin::Fail {
                message: "boom".to_owned(),
                permanent: false,
            },
            &options,
        )
        .await?;
    match handle.wait().await {
        Err(tarefa_client::Error::TaskFailed { state, error, .. }) => {
            assert_eq!(state, "DEAD");
            assert_eq!(error, "boom");
        }
        other => panic!("expected a dead task, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn grpc_health_and_reflection_answer() -> anyhow::Result<()> {
    let h = Harness::builder().executors(0).start().await?;
    let channel = tonic::transport::Endpoint::from_shared(h.scheduler.endpoint.clone())?
        .connect()
        .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tarefa.v1.Scheduler".to_owned(),
        })
        .await?
        .into_inner();
    assert_eq!(
        status.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await?
        .into_inner();
    let response = responses.next().await.expect("a reflection answer")?;
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"tarefa.v1.Scheduler".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    Ok(())
}

#[tokio::test]
async fn executor_metrics_move() -> anyhow::Result<()> {
    let port = tarefa_tests::free_port();
    let listen = format!("127.0.0.1:{port}");
    let h = Harness::builder()
        .executor_args(&["--metrics-listen", &listen])
        .start()
        .await?;
    h.client.submit(Fib { n: 10 }).await?.wait().await?;
    let options = SubmitOptions {
        max_attempts: Some(1),
        ..SubmitOptions::default()
    };
    let fail = tarefa_client::builtin::Fail {
        message: "no".to_owned(),
        permanent: false,
    };
    let _ = h.client.submit_with(fail, &options).await?.wait().await;
    let url = format!("http://{listen}/metrics");
    let body = eventually(
        "executor metrics to count both tasks",
        Duration::from_secs(10),
        || {
            let url = url.clone();
            async move {
                let body = http_get(&url).await?;
                (body.contains(
                    "tarefa_executor_succeeded_total{queue=\"default\",task_type=\"fib\"} 1",
                ) && body
                    .contains("tarefa_executor_dead_total{queue=\"default\",task_type=\"fail\"} 1"))
                .then_some(body)
            }
        },
    )
    .await;
    assert!(
        body.contains("tarefa_executor_run_seconds_bucket"),
        "{body}"
    );
    assert!(body.contains("tarefa_executor_in_flight 0"), "{body}");
    Ok(())
}

#[tokio::test]
async fn progress_shows_while_running() -> anyhow::Result<()> {
    let h = Harness::builder().start().await?;
    let handle = h.client.submit(Sleep { ms: 2000 }).await?;
    let mut stream = h.client.watch(handle.id()).await?;
    let mut seen_progress = None;
    while let Some(task) = stream.next().await {
        let task = task?;
        if task.state() == TaskState::Running && task.progress > 0.0 && seen_progress.is_none() {
            seen_progress = Some((task.progress, task.progress_message.clone()));
        }
    }
    let (fraction, message) = seen_progress.expect("WatchTask showed progress while running");
    assert!(fraction > 0.0 && fraction < 1.0, "{fraction}");
    assert!(message.starts_with("slept "), "{message}");
    let done = h.client.get(handle.id()).await?;
    assert_eq!((done.state(), done.progress), (TaskState::Succeeded, 1.0));
    Ok(())
}

/// A task due now runs on the fast path (no record until its outcome); its one record, written
/// with the outcome, still says everything GetTask said while it waited: type, payload,
/// headers, trace, priority, idempotency key, attempts, and when it was created, started and
/// finished. Its id names its stream entry.
#[tokio::test]
async fn a_fast_path_task_keeps_everything_it_was_submitted_with() -> anyhow::Result<()> {
    let h = Harness::builder().executors(0).start().await?;
    let options = SubmitOptions {
        idempotency_key: Some("order-42".to_owned()),
        priority: 7,
        max_attempts: Some(4),
        headers: HashMap::from([("tenant".to_owned(), "acme".to_owned())]),
        ..SubmitOptions::default()
    };
    let handle = h.client.submit_with(Fib { n: 10 }, &options).await?;
    let local = handle.id().trim_start_matches("default:");
    assert!(
        local
            .split_once('-')
            .is_some_and(|(ms, seq)| { ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok() }),
        "a task due now is named after its stream entry: {}",
        handle.id()
    );
    let waiting = h.client.get(handle.id()).await?;
    assert_eq!(waiting.state(), TaskState::Queued);
    let mut h = h;
    h.add_executor(&[])?;
    let done = h.wait_final(handle.id(), Duration::from_secs(20)).await;
    assert_eq!(done.state(), TaskState::Succeeded, "{:?}", done.errors);
    for (what, before, after) in [
        ("type", &waiting.task_type, &done.task_type),
        (
            "idempotency key",
            &waiting.idempotency_key,
            &done.idempotency_key,
        ),
        ("trace id", &waiting.trace_id, &done.trace_id),
    ] {
        assert_eq!(before, after, "{what}");
    }
    assert_eq!(done.idempotency_key, "order-42");
    assert_eq!((done.priority, done.max_attempts, done.attempt), (7, 4, 1));
    assert_eq!(done.payload, waiting.payload);
    assert_eq!(done.headers.get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(done.result, br#""55""#);
    assert_eq!(done.created_at_ms, waiting.created_at_ms);
    assert!(
        done.created_at_ms <= done.started_at_ms && done.started_at_ms <= done.finished_at_ms,
        "{} {} {}",
        done.created_at_ms,
        done.started_at_ms,
        done.finished_at_ms
    );
    // The same idempotency key answers with the same task.
    let again = h.client.submit_with(Fib { n: 10 }, &options).await?;
    assert_eq!(again.id(), handle.id());
    Ok(())
}
